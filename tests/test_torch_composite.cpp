// End-to-end check against PyTorch: an attention block with a key keep-mask,
// masked-mean pooling, a classifier and cross-entropy; the gradients of every
// parameter, of the input and of the mask; then three AdamW steps.
//
// tests/torch_composite.py computes the reference in float64 and writes it
// (with the inputs and initial weights) to a binary file; its format is
// described at the top of that script. The interpreter is /usr/bin/python3
// (Debian's python3-torch) unless SMARTTRIM_PYTHON names another.
#include <doctest/doctest.h>

#include "tests/support.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "engine/ops.h"
#include "engine/optim.h"

namespace fs = std::filesystem;

namespace {

using TensorMap = std::map<std::string, st::Tensor>;

constexpr int kHeads = 3, kHeadSize = 4;

// Same split as the script: matrices are decayed, biases and LayerNorm
// parameters are not; bk is frozen in both (see the script for why).
const std::vector<std::string> kMatrices = {"Wq", "Wk", "Wv", "Wo", "W1", "W2", "Wc"};
const std::vector<std::string> kVectors = {"ln1_w", "ln1_b", "bq", "bv", "bo", "ln2_w", "ln2_b", "b1", "b2", "bc"};
const std::vector<std::string> kAllParams = {"ln1_w", "ln1_b", "Wq", "bq", "Wk", "bk", "Wv", "bv", "Wo",
                                             "bo",    "ln2_w", "ln2_b", "W1", "b1", "W2", "b2", "Wc", "bc"};

// A fresh directory under the system temp dir, removed with everything in it.
struct TempDir {
  fs::path path;
  TempDir() {
    std::random_device rd;
    path = fs::temp_directory_path() /
           ("smarttrim_torch_composite_" + std::to_string(::getpid()) + "_" + std::to_string(rd()));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

// Runs a shell command; returns its exit code (-1 when it did not exit
// normally) and fills `output` with its stdout and stderr.

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// Reads the script's file: u32 count; per tensor u32 name length, name,
// u32 rank, i64 dims, f32 values (little-endian, as on every host we build for).
TensorMap read_tensors(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw st::FormatError("cannot open " + file.string());
  auto read = [&](void* dst, size_t bytes) {
    in.read(static_cast<char*>(dst), std::streamsize(bytes));
    if (!in) throw st::FormatError("truncated reference file " + file.string());
  };
  uint32_t count = 0;
  read(&count, 4);
  TensorMap tensors;
  for (uint32_t t = 0; t < count; t++) {
    uint32_t name_length = 0, rank = 0;
    read(&name_length, 4);
    std::string name(name_length, '\0');
    read(name.data(), name_length);
    read(&rank, 4);
    st::Shape shape(rank);
    read(shape.data(), rank * sizeof(int64_t));
    std::vector<float> values(size_t(st::numel(shape)));
    read(values.data(), values.size() * sizeof(float));
    tensors[name] = st::Tensor::from_vector(values, shape);
  }
  return tensors;
}

const st::Tensor& at(const TensorMap& m, const std::string& name) {
  auto it = m.find(name);
  if (it == m.end()) throw st::ArgumentError("reference file has no tensor '" + name + "'");
  return it->second;
}

// The block of the brief, from the parameters in `p`; returns logits (B, C).
st::Tensor logits_of(const TensorMap& p, const st::Tensor& x, const st::Tensor& mask) {
  using namespace st;
  Tensor h = layernorm(x, at(p, "ln1_w"), at(p, "ln1_b"));
  Tensor q = split_heads(linear(h, at(p, "Wq"), at(p, "bq")), kHeads);
  Tensor k = split_heads(linear(h, at(p, "Wk"), at(p, "bk")), kHeads);
  Tensor v = split_heads(linear(h, at(p, "Wv"), at(p, "bv")), kHeads);
  Tensor scores = matmul(q, k, false, true) * (1.0f / std::sqrt(float(kHeadSize)));
  Tensor attention = masked_softmax(scores, mask);
  Tensor x1 = x + linear(merge_heads(matmul(attention, v)), at(p, "Wo"), at(p, "bo"));
  Tensor hidden = gelu(linear(layernorm(x1, at(p, "ln2_w"), at(p, "ln2_b")), at(p, "W1"), at(p, "b1")));
  Tensor x2 = x1 + linear(hidden, at(p, "W2"), at(p, "b2"));
  return linear(masked_mean(x2, mask), at(p, "Wc"), at(p, "bc"));
}

// CHECKs max |ours - ref| <= rel_tol * max(1, max |ref|), naming the tensor
// and printing the max absolute and relative errors.
void compare(const std::string& name, const st::Tensor& ours, const st::Tensor& ref, double rel_tol) {
  INFO("tensor " << name);
  REQUIRE_MESSAGE(ours.defined(), name << ": our tensor is undefined (no gradient reached it?)");
  REQUIRE_MESSAGE(ours.shape() == ref.shape(),
                  name << ": shape " << st::to_string(ours.shape()) << " vs reference " << st::to_string(ref.shape()));
  std::vector<float> a = ours.to_vector(), b = ref.to_vector();
  double max_abs = 0, max_rel = 0, ref_scale = 0;
  for (size_t i = 0; i < a.size(); i++) {
    double err = std::fabs(double(a[i]) - double(b[i]));
    max_abs = std::max(max_abs, err);
    max_rel = std::max(max_rel, err / std::max(1e-6, std::fabs(double(b[i]))));
    ref_scale = std::max(ref_scale, std::fabs(double(b[i])));
  }
  const double bound = rel_tol * std::max(1.0, ref_scale);
  MESSAGE(name << ": max abs err " << max_abs << ", max rel err " << max_rel << " (bound " << bound
               << ", max |ref| " << ref_scale << ")");
  CHECK_MESSAGE(max_abs <= bound, name << ": max abs err " << max_abs << " exceeds " << bound);
}

}  // namespace

TEST_CASE("torch reference: attention block, loss, gradients and three AdamW steps") {
  const fs::path script = fs::path(__FILE__).parent_path() / "torch_composite.py";
  REQUIRE_MESSAGE(fs::exists(script), "reference script not found at " << script.string()
                                                                       << " (run the tests from the repository root)");
  const std::string python = st::testing::python_interpreter();

  TempDir dir;
  const fs::path ref_file = dir.path / "reference.bin";
  auto [status, output] = st::testing::run_command(shell_quote(python) + " " + shell_quote(script.string()) + " " +
                                                   shell_quote(ref_file.string()));
  REQUIRE_MESSAGE(status == 0, "the PyTorch reference script failed (exit code " << status << "):\n" << output);
  if (!output.empty()) MESSAGE("reference script says: " << output);
  const TensorMap ref = read_tensors(ref_file);

  // Inputs and trainable copies of the initial weights.
  st::Tensor x = at(ref, "x").clone();
  x.set_requires_grad();
  st::Tensor mask = at(ref, "mask").clone();
  mask.set_requires_grad();
  std::vector<int32_t> target_values;
  for (float t : at(ref, "targets").to_vector()) target_values.push_back(int32_t(std::lround(t)));
  const st::Tensor targets = st::Tensor::from_ints(target_values, {int64_t(target_values.size())});
  TensorMap params;
  for (const std::string& name : kAllParams) {
    params[name] = at(ref, "init/" + name).clone();
    params[name].set_requires_grad();
  }

  constexpr double kTol = 1e-4, kParamTol = 2e-4;

  // --- forward and backward at the initial weights
  st::Tensor logits = logits_of(params, x, mask);
  st::Tensor loss = st::cross_entropy(logits, targets);
  loss.backward();
  compare("logits", logits, at(ref, "logits"), kTol);
  compare("loss", loss, at(ref, "loss"), kTol);
  for (const std::string& name : kAllParams) compare("grad/" + name, params[name].grad(), at(ref, "grad/" + name), kTol);
  compare("grad/x", x.grad(), at(ref, "grad/x"), kTol);
  compare("grad/mask", mask.grad(), at(ref, "grad/mask"), kTol);

  // --- three AdamW steps, each after a fresh forward/backward
  auto group = [&](const std::string& name, const std::vector<std::string>& names, float lr, float wd) {
    st::ParamGroup g{name, {}, lr, wd};
    for (const std::string& n : names) g.params.push_back(params[n]);
    return g;
  };
  st::AdamW optimizer({group("matrices", kMatrices, 1e-2f, 0.1f), group("vectors", kVectors, 2e-2f, 0.0f)},
                      st::AdamWConfig{0.9f, 0.98f, 1e-8f});
  std::vector<float> losses = {loss.item()};
  optimizer.step();
  for (int step = 1; step < 3; step++) {
    optimizer.zero_grad();
    st::Tensor l = st::cross_entropy(logits_of(params, x, mask), targets);
    l.backward();
    losses.push_back(l.item());
    optimizer.step();
  }
  {
    st::NoGrad no_grad;
    losses.push_back(st::cross_entropy(logits_of(params, x, mask), targets).item());
  }
  compare("losses (before each step, after the last)", st::Tensor::from_vector(losses, {int64_t(losses.size())}),
          at(ref, "losses"), kTol);
  for (const std::string& name : kAllParams) compare("final/" + name, params[name], at(ref, "final/" + name), kParamTol);
}
