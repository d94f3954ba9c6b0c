// The CUDA backend against the CPU: every op forward and backward on random
// inputs of odd sizes (the ggml test-backend-ops habit), then the whole
// meter-tiny model's logits and gradients, SmartTrim's masked pass, an
// AdamW step, and determinism. Every case is skipped on a machine without
// a GPU (and the file is empty in a build without CUDA).
//
// Tolerances: float32 with TF32 off, 1e-5 relative for the ops (the error is
// max |gpu - cpu| / max |cpu|, tests/compare.h); whole models sum thousands
// of such differences and are held to 1e-4; with TF32 on, 1e-3 for a GEMM.
#ifdef SMARTTRIM_CUDA
#include <doctest/doctest.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "cuda/runtime.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "layers/meter.h"
#include "pruning/train.h"
#include "tests/compare.h"
#include "tests/cuda_checks.h"
#include "tests/meter_batch.h"

using st::Device;
using st::Tensor;
using st::testing::ExactMath;
using st::testing::kNoGpu;

namespace {

// How an input of a case is drawn: values away from 0 (never zeros), or
// positive (for log and div), or a 0/1 mask with some of each.
enum class Draw { Signed, Positive, Mask };

struct Input {
  st::Shape shape;
  Draw draw = Draw::Signed;
  bool grad = true;
};

Tensor draw(const Input& in, st::Rng& rng) {
  std::vector<float> v(size_t(st::numel(in.shape)));
  for (size_t i = 0; i < v.size(); i++) {
    const float u = rng.uniform();
    if (in.draw == Draw::Mask) v[i] = u > 0.4f ? 1.0f : 0.0f;  // about 60% kept
    else if (in.draw == Draw::Positive) v[i] = 0.5f + 1.5f * u;
    else v[i] = (u < 0.5f ? -1.0f : 1.0f) * (0.1f + 1.9f * rng.uniform());
  }
  return Tensor::from_vector(v, in.shape);
}

struct OpCase {
  std::string name;
  std::vector<Input> inputs;
  std::function<Tensor(const std::vector<Tensor>&)> op;
  double tolerance = 1e-5;
};

// Runs one case on both devices: the output, then the gradient of
// sum(out * R) (R random, so every output element matters) for every input.
void check_case(const OpCase& c) {
  INFO("op: " << c.name);
  ExactMath exact;
  st::Rng rng(11);
  std::vector<Tensor> cpu_in, gpu_in;
  for (const Input& in : c.inputs) {
    Tensor x = draw(in, rng);
    Tensor y = x.to(Device::CUDA);
    if (in.grad) x.set_requires_grad(), y.set_requires_grad();
    cpu_in.push_back(x), gpu_in.push_back(y);
  }
  // One device at a time: backward() consumes the whole (per-thread) tape.
  Tensor out_cpu = c.op(cpu_in);
  Tensor weights = draw({out_cpu.shape()}, rng);
  if (out_cpu.requires_grad()) st::sum_all(out_cpu * weights).backward();
  Tensor out_gpu = c.op(gpu_in);
  REQUIRE(out_gpu.device() == Device::CUDA);
  CHECK(st::testing::relative_error(out_gpu.to(Device::CPU), out_cpu) < c.tolerance);
  if (!out_cpu.requires_grad()) return;
  st::sum_all(out_gpu * weights.to(Device::CUDA)).backward();
  for (size_t i = 0; i < c.inputs.size(); i++) {
    if (!c.inputs[i].grad) continue;
    INFO("gradient of input " << i);
    REQUIRE(gpu_in[i].grad().defined());
    CHECK(st::testing::relative_error(gpu_in[i].grad().to(Device::CPU), cpu_in[i].grad()) < c.tolerance);
  }
}

Tensor ints_on(const std::vector<int32_t>& v, const st::Shape& s, Device d) { return Tensor::from_ints(v, s).to(d); }

std::vector<OpCase> op_cases() {
  using V = const std::vector<Tensor>&;
  const Draw P = Draw::Positive, M = Draw::Mask;
  std::vector<OpCase> cases = {
      {"add", {{{5, 7, 13}}, {{5, 7, 13}}}, [](V x) { return x[0] + x[1]; }},
      {"add, broadcast row", {{{5, 7, 13}}, {{13}}}, [](V x) { return x[0] + x[1]; }},
      {"sub, broadcast middle", {{{5, 7, 13}}, {{5, 1, 13}}}, [](V x) { return x[0] - x[1]; }},
      {"mul, broadcast both", {{{5, 1, 13}}, {{1, 7, 1}}}, [](V x) { return x[0] * x[1]; }},
      {"div", {{{3, 7, 11}}, {{3, 7, 11}, P}}, [](V x) { return x[0] / x[1]; }},
      {"affine", {{{9, 17}}}, [](V x) { return 2.5f - x[0] * 0.75f; }},
      {"exp", {{{7, 19}}}, [](V x) { return st::exp(x[0]); }},
      {"log", {{{7, 19}, P}}, [](V x) { return st::log(x[0]); }},
      {"tanh", {{{7, 19}}}, [](V x) { return st::tanh(x[0]); }},
      {"sigmoid", {{{7, 19}}}, [](V x) { return st::sigmoid(x[0]); }},
      {"gelu", {{{7, 19}}}, [](V x) { return st::gelu(x[0]); }},
      {"quick_gelu", {{{7, 19}}}, [](V x) { return st::quick_gelu(x[0]); }},
      {"silu", {{{7, 19}}}, [](V x) { return st::silu(x[0]); }},
      {"relu", {{{7, 19}}}, [](V x) { return st::relu(x[0]); }},
      {"sum_last", {{{3, 5, 37}}}, [](V x) { return st::sum_last(x[0]); }},
      {"mean_last", {{{3, 5, 37}}}, [](V x) { return st::mean_last(x[0]); }},
      {"sum_all", {{{3, 5, 1001}}}, [](V x) { return st::sum_all(x[0]); }},
      {"mean_all", {{{7, 333}}}, [](V x) { return st::mean_all(x[0]); }},
      {"masked_mean", {{{3, 11, 9}}, {{3, 11}, M}}, [](V x) { return st::masked_mean(x[0], x[1]); }},
      {"softmax", {{{5, 3, 77}}}, [](V x) { return st::softmax(x[0]); }},
      {"softmax, long rows", {{{3, 3001}}}, [](V x) { return st::softmax(x[0]); }},
      {"log_softmax", {{{5, 3, 77}}}, [](V x) { return st::log_softmax(x[0]); }},
      {"masked_softmax", {{{3, 2, 5, 13}}, {{3, 13}, M}}, [](V x) { return st::masked_softmax(x[0], x[1]); }},
      {"masked_softmax, an example with every key dropped", {{{3, 4, 13}}},
       [](V x) {
         std::vector<float> m(3 * 13, 1.0f);
         for (int j = 0; j < 13; j++) m[size_t(13 + j)] = 0.0f;  // example 1 keeps nothing
         for (int j = 0; j < 13; j += 3) m[size_t(26 + j)] = 0.0f;
         return st::masked_softmax(x[0], Tensor::from_vector(m, {3, 13}).to(x[0].device()));
       }},
      {"mul, one input without a gradient", {{{5, 7, 13}}, {{7, 13}, Draw::Signed, false}},
       [](V x) { return x[0] * x[1]; }},
      {"layernorm", {{{3, 7, 45}}, {{45}}, {{45}}}, [](V x) { return st::layernorm(x[0], x[1], x[2]); }},
      {"matmul", {{{7, 13}}, {{13, 5}}}, [](V x) { return st::matmul(x[0], x[1]); }},
      {"matmul a^T b^T", {{{13, 7}}, {{5, 13}}}, [](V x) { return st::matmul(x[0], x[1], true, true); }},
      {"matmul batched", {{{3, 2, 7, 9}}, {{3, 2, 9, 5}}}, [](V x) { return st::matmul(x[0], x[1]); }},
      {"matmul batched b^T", {{{3, 7, 9}}, {{3, 5, 9}}}, [](V x) { return st::matmul(x[0], x[1], false, true); }},
      {"matmul shared b", {{{3, 7, 9}}, {{9, 5}}}, [](V x) { return st::matmul(x[0], x[1]); }},
      {"matmul a^T shared b", {{{3, 9, 7}}, {{9, 5}}}, [](V x) { return st::matmul(x[0], x[1], true, false); }},
      {"linear", {{{3, 7, 19}}, {{11, 19}}, {{11}}}, [](V x) { return st::linear(x[0], x[1], x[2]); }},
      {"linear_act gelu", {{{3, 7, 19}}, {{11, 19}}, {{11}}},
       [](V x) { return st::linear_act(x[0], x[1], x[2], st::Activation::Gelu); }},
      {"linear_act quick_gelu, no bias", {{{5, 23}}, {{13, 23}}},
       [](V x) { return st::linear_act(x[0], x[1], Tensor(), st::Activation::QuickGelu); }},
      {"add_layernorm", {{{3, 7, 45}}, {{3, 7, 45}}, {{45}}, {{45}}},
       [](V x) { return st::add_layernorm(x[0], x[1], x[2], x[3]); }},
      // Many rows: the bias and LayerNorm parameter gradients are column sums
      // in several parts (cuda/column_sums.h; 16448 rows reach its 256-part
      // limit, with an empty last part). The CPU adds thousands of rows one
      // after another in float, so the two orders differ by up to ~1e-5.
      {"linear, many rows", {{{4097, 37}}, {{19, 37}}, {{19}}}, [](V x) { return st::linear(x[0], x[1], x[2]); },
       1e-4},
      {"layernorm, many rows", {{{16448, 9}}, {{9}}, {{9}}}, [](V x) { return st::layernorm(x[0], x[1], x[2]); },
       1e-4},
      {"permute_0213", {{{3, 5, 7, 9}}}, [](V x) { return st::permute_0213(x[0]); }},
      {"split_heads, merge_heads", {{{3, 5, 12}}},
       [](V x) { return st::merge_heads(st::split_heads(x[0], 3) * 1.5f); }},
      {"concat", {{{3, 5, 7}}, {{3, 2, 7}}}, [](V x) { return st::concat({x[0], x[1]}, 1); }},
      {"split", {{{3, 9, 5}}},
       [](V x) {
         std::vector<Tensor> parts = st::split(x[0], {2, 7}, 1);
         return parts[1] * 2.0f;
       }},
      {"gather_rows, repeated rows", {{{7, 13}}},
       [](V x) { return st::gather_rows(x[0], ints_on({3, 0, 6, 3, 3, 1}, {6}, x[0].device())); }},
      {"embedding", {{{11, 13}}},
       [](V x) { return st::embedding(ints_on({1, 10, 1, 4, 0, 7}, {2, 3}, x[0].device()), x[0]); }},
      {"dropout", {{{5, 7, 13}}},
       [](V x) {
         st::Rng rng(3);
         return st::dropout(x[0], 0.3f, rng, true);
       }},
      {"gumbel_sigmoid_st, noise", {{{5, 37}}},
       [](V x) {
         st::Rng rng(4);
         return st::gumbel_sigmoid_st(x[0] * 3.0f, 0.7f, &rng) * x[0];
       }},
      {"gumbel_sigmoid_st, no noise", {{{5, 37}}},
       [](V x) { return st::gumbel_sigmoid_st(x[0] * 3.0f, 0.7f, nullptr) * x[0]; }},
      {"patch_embed", {{{2, 3, 12, 8}}, {{5, 3, 4, 4}}}, [](V x) { return st::patch_embed(x[0], x[1]); }},
      {"bicubic_resize", {{{5, 7, 3}, Draw::Signed, false}}, [](V x) { return st::bicubic_resize(x[0], 9, 4); }},
      {"cross_entropy", {{{5, 23}}},
       [](V x) { return st::cross_entropy(x[0], ints_on({3, 0, 22, 7, 3}, {5}, x[0].device())); }},
      {"bce_with_logits", {{{5, 23}}, {{5, 23}, P}},
       [](V x) { return st::bce_with_logits(x[0], x[1] * 0.5f); }},
      {"kl_div", {{{5, 23}}, {{5, 23}}},
       [](V x) { return st::kl_div(st::log_softmax(x[0]), st::softmax(x[1])); }},
      {"mse", {{{5, 23}}, {{5, 23}}}, [](V x) { return st::mse(x[0], x[1]); }},
  };
  return cases;
}

st::MeterConfig tiny() { return st::load_meter_config("configs/meter-tiny.json"); }

// The summed VQA loss of a batch and the model's parameter gradients, on `device`.
struct Pass {
  Tensor logits, loss;
  std::vector<Tensor> grads;
};
Pass meter_pass(st::Meter& model, const st::testing::MeterBatch& b, Device device, const st::TrimOptions* trim) {
  st::Context eval;
  st::MeterFeatures f = model.forward(b.ids.to(device), b.mask.to(device), b.image.to(device), eval, 1, trim);
  Pass p;
  p.logits = model.vqa_logits(f.cls);
  Tensor targets = Tensor::full(p.logits.shape(), 0.3f, device);
  p.loss = st::vqa_loss(p.logits, targets);
  for (const auto& [name, t] : model.params().list) t->zero_grad();
  p.loss.backward();
  for (const auto& [name, t] : model.params().list)
    p.grads.push_back(t->grad().defined() ? t->grad().to(Device::CPU) : Tensor());
  p.logits = p.logits.to(Device::CPU);
  return p;
}

// Each gradient is held to its own scale, but to at least 1e-6 of the
// largest: a key bias's gradient is zero in exact arithmetic (a softmax
// ignores a shift of a whole row of scores), so both devices give rounding
// noise there (about 1e-12) that has no scale of its own.
void check_same_pass(const st::Meter& model, const Pass& gpu, const Pass& cpu, double tolerance) {
  CHECK(st::testing::relative_error(gpu.logits, cpu.logits) < tolerance);
  double largest = 0;
  for (const Tensor& g : cpu.grads)
    if (g.defined()) largest = std::max(largest, st::testing::max_abs(g));
  for (size_t i = 0; i < cpu.grads.size(); i++) {
    INFO("gradient of " << model.params().list[i].first);
    REQUIRE(gpu.grads[i].defined() == cpu.grads[i].defined());
    if (!cpu.grads[i].defined()) continue;
    const double scale = std::max(st::testing::max_abs(cpu.grads[i]), 1e-6 * largest);
    CHECK(st::testing::max_abs(gpu.grads[i] - cpu.grads[i]) / scale < tolerance);
  }
}

}  // namespace

TEST_CASE("cuda: every op, forward and backward, against the CPU" * doctest::skip(kNoGpu)) {
  for (const OpCase& c : op_cases()) check_case(c);
}

TEST_CASE("cuda: a GEMM with TF32 stays within 1e-3 of the CPU" * doctest::skip(kNoGpu)) {
  st::cuda::set_math(st::cuda::Math::TF32);
  st::Rng rng(5);
  Tensor a = Tensor::randn({67, 129}, rng), b = Tensor::randn({129, 45}, rng);
  Tensor want = st::matmul(a, b), got = st::matmul(a.to(Device::CUDA), b.to(Device::CUDA));
  CHECK(st::testing::relative_error(got.to(Device::CPU), want) < 1e-3);
}

TEST_CASE("cuda: an AdamW step moves the parameters as on the CPU" * doctest::skip(kNoGpu)) {
  st::Rng rng(6);
  Tensor w_cpu = Tensor::randn({37, 11}, rng).set_requires_grad();
  Tensor w_gpu = w_cpu.to(Device::CUDA).set_requires_grad();
  Tensor target = Tensor::randn({37, 11}, rng);
  st::AdamW opt_cpu({{"w", {w_cpu}, 1e-2f, 0.1f}}), opt_gpu({{"w", {w_gpu}, 1e-2f, 0.1f}});
  for (int step = 0; step < 3; step++) {
    opt_cpu.zero_grad(), opt_gpu.zero_grad();
    st::mse(w_cpu, target).backward();
    st::mse(w_gpu, target.to(Device::CUDA)).backward();
    opt_cpu.step(), opt_gpu.step();
  }
  CHECK(st::testing::relative_error(w_gpu.to(Device::CPU), w_cpu) < 1e-5);
}

TEST_CASE("cuda: meter-tiny's logits and every gradient match the CPU" * doctest::skip(kNoGpu)) {
  ExactMath exact;
  st::MeterConfig c = tiny();
  st::Meter cpu_model(c, 7), gpu_model(c, 7);
  st::move_parameters(gpu_model.params(), Device::CUDA);
  st::testing::MeterBatch b = st::testing::make_meter_batch(c, {9, 6, 4}, 9, 1);
  Pass want = meter_pass(cpu_model, b, Device::CPU, nullptr);
  Pass got = meter_pass(gpu_model, b, Device::CUDA, nullptr);
  check_same_pass(cpu_model, got, want, 1e-4);
}

TEST_CASE("cuda: SmartTrim's masked pass (noise off and with noise) matches the CPU" * doctest::skip(kNoGpu)) {
  ExactMath exact;
  st::MeterConfig c = st::load_meter_config("configs/meter-tiny-smarttrim.json");
  st::Meter cpu_model(c, 9), gpu_model(c, 9);
  st::move_parameters(gpu_model.params(), Device::CUDA);
  st::testing::MeterBatch b = st::testing::make_meter_batch(c, {9, 6, 4, 8}, 9, 2);
  st::TrimOptions deterministic;
  check_same_pass(cpu_model, meter_pass(gpu_model, b, Device::CUDA, &deterministic),
                  meter_pass(cpu_model, b, Device::CPU, &deterministic), 1e-4);
  st::Rng noise_cpu(21), noise_gpu(21);  // the same Philox stream on both devices
  st::TrimOptions noisy_cpu, noisy_gpu;
  noisy_cpu.noise = &noise_cpu, noisy_gpu.noise = &noise_gpu;
  check_same_pass(cpu_model, meter_pass(gpu_model, b, Device::CUDA, &noisy_gpu),
                  meter_pass(cpu_model, b, Device::CPU, &noisy_cpu), 1e-4);
}

TEST_CASE("cuda: two identical training steps give the same bits" * doctest::skip(kNoGpu)) {
  st::MeterConfig c = tiny();
  std::vector<float> losses[2];
  for (int run = 0; run < 2; run++) {
    st::Meter model(c, 5);
    st::move_parameters(model.params(), Device::CUDA);
    std::vector<Tensor> params;
    for (const auto& [name, t] : model.params().list) params.push_back(*t);
    st::AdamW opt(st::decay_groups([&] {
      std::vector<std::pair<std::string, Tensor>> named;
      for (const auto& [name, t] : model.params().list) named.emplace_back(name, *t);
      return named;
    }(), 1e-3f, 0.01f, ""));
    st::testing::MeterBatch b = st::testing::make_meter_batch(c, {9, 6, 4}, 9, 3);
    st::Rng dropout(8);
    for (int step = 0; step < 3; step++) {
      st::Context train{true, &dropout};
      st::MeterFeatures f = model.forward(b.ids.to(Device::CUDA), b.mask.to(Device::CUDA), b.image.to(Device::CUDA), train);
      Tensor logits = model.vqa_logits(f.cls);
      Tensor loss = st::vqa_loss(logits, Tensor::full(logits.shape(), 0.3f, Device::CUDA));
      opt.zero_grad();
      loss.backward();
      st::clip_grad_norm(params, 1.0f);
      opt.step();
      losses[run].push_back(loss.item());
    }
  }
  CHECK(losses[0] == losses[1]);
}

TEST_CASE("cuda: SmartTrim training steps follow the CPU's, and a GPU checkpoint resumes on the CPU" *
          doctest::skip(kNoGpu)) {
  ExactMath exact;
  const st::MeterConfig c = st::load_meter_config("configs/meter-tiny-smarttrim.json");
  st::TrainOptions o;
  o.task = st::Task::VQA;
  o.total_steps = 6;
  o.curriculum.goal = 0.5;
  o.batch_shards = 1;  // the GPU runs one shard; the CPU's shards would draw other noise
  st::SmartTrimTrainer cpu(c, o, 3, 4), gpu(c, o, 3, 4);
  gpu.move_to(Device::CUDA);
  st::testing::MeterBatch mb = st::testing::make_meter_batch(c, {9, 6, 4, 8}, 9, 5);
  st::Rng rng(6);
  const st::TrainBatch batch{mb.ids, mb.mask, mb.image, Tensor(), Tensor::uniform({4, c.vqa_answers}, rng, 0, 1)};
  for (int step = 0; step < 3; step++) {
    const st::StepLog want = cpu.step(batch), got = gpu.step(batch);
    INFO("step " << step);
    CHECK(got.loss == doctest::Approx(want.loss).epsilon(1e-4));
    CHECK(got.ratio_mean == doctest::Approx(want.ratio_mean).epsilon(1e-4));
  }
  const std::string path = (std::filesystem::temp_directory_path() / "smarttrim_cuda_checkpoint.st").string();
  gpu.save_checkpoint(path);
  std::unique_ptr<st::SmartTrimTrainer> resumed = st::SmartTrimTrainer::from_checkpoint(path);
  std::filesystem::remove(path);
  CHECK(resumed->device() == Device::CPU);
  CHECK(resumed->step(batch).loss == doctest::Approx(cpu.step(batch).loss).epsilon(1e-4));
}

#endif  // SMARTTRIM_CUDA
