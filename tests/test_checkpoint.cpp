// Training checkpoints (weights/checkpoint.h): resuming is bit-identical to
// not stopping, the loader lists every problem and changes nothing when it
// finds one, a failed save leaves no file, and the file is a strict
// safetensors file that `smarttrim inspect` reads.
#include <doctest/doctest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "engine/error.h"
#include "engine/optim.h"
#include "layers/meter.h"
#include "tests/support.h"
#include "weights/checkpoint.h"
#include "weights/format.h"

namespace fs = std::filesystem;
using st::Tensor;

namespace {

st::MeterConfig tiny() { return st::load_meter_config("configs/meter-tiny.json"); }

// A unique path under the temp dir; the file and its .tmp are removed after.
struct TempPath {
  std::string path;
  TempPath() {
    static int counter = 0;
    std::random_device rd;
    path = (fs::temp_directory_path() / ("smarttrim_checkpoint_" + std::to_string(::getpid()) + "_" +
                                         std::to_string(rd()) + "_" + std::to_string(counter++) + ".st"))
               .string();
  }
  ~TempPath() {
    std::error_code ec;
    fs::remove_all(path, ec);
    fs::remove_all(path + ".tmp", ec);
  }
};

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

struct Batch {
  Tensor ids, mask, image, targets;
};

// Three examples with 9, 6 and 4 real tokens, and soft VQA targets.
Batch make_batch(const st::MeterConfig& c, uint64_t seed) {
  st::Rng rng(seed);
  const int b = 3, t = 9;
  const int lengths[b] = {9, 6, 4};
  std::vector<int32_t> ids(b * t);
  std::vector<float> mask(b * t);
  Tensor u = Tensor::uniform({b * t}, rng, 0.0f, 1.0f);
  for (int i = 0; i < b; i++)
    for (int j = 0; j < t; j++) {
      const bool real = j < lengths[i];
      const int32_t word = 3 + int32_t(u.data()[i * t + j] * float(c.vocab_size - 3)) % (c.vocab_size - 3);
      ids[size_t(i * t + j)] = !real ? c.pad_token_id : j == 0 ? 0 : j == lengths[i] - 1 ? 2 : word;
      mask[size_t(i * t + j)] = real ? 1.0f : 0.0f;
    }
  Tensor image = Tensor::randn({b, 3, c.vit_image_size, c.vit_image_size}, rng);
  Tensor targets = Tensor::uniform({b, c.vqa_answers}, rng, 0.0f, 1.0f);
  return {Tensor::from_ints(ids, {b, t}), Tensor::from_vector(mask, {b, t}), image, targets};
}

std::vector<std::pair<std::string, Tensor>> handles(const st::Meter& model) {
  std::vector<std::pair<std::string, Tensor>> named;
  for (const auto& [name, t] : model.params().list) named.emplace_back(name, *t);
  return named;
}

// A model, its optimizer and the run's state: what a training loop holds.
struct Run {
  st::Meter model;
  st::AdamW opt;
  st::checkpoint::TrainingState state;

  Run(const st::MeterConfig& c, uint64_t seed)
      : model(c, seed), opt(st::decay_groups(handles(model), 1e-3f, 0.01f)) {
    state.rng = st::Rng(seed + 1000);
  }
  const st::checkpoint::NamedTensors& params() const { return model.params().list; }

  // One training step with dropout and a warm-up + cosine schedule (so the
  // restored step count matters); returns the loss.
  float step(const Batch& b) {
    st::Context train{true, &state.rng};
    st::MeterFeatures f = model.forward(b.ids, b.mask, b.image, train);
    Tensor loss = st::vqa_loss(model.vqa_logits(f.cls), b.targets);
    const float value = loss.item();
    loss.backward();
    opt.step(st::lr_schedule(state.step, 2, 8, st::Decay::Cosine));
    opt.zero_grad();
    state.step++;
    return value;
  }
  void save(const std::string& path) { st::checkpoint::save(path, params(), opt, state, model.config().to_json()); }
};

// Every parameter and moment value, and the optimizer's step count.
struct Snapshot {
  std::vector<std::vector<float>> values;
  int64_t steps = 0;
  explicit Snapshot(Run& r) {
    for (const auto& [name, t] : r.params()) values.push_back(t->to_vector());
    for (const Tensor& m : r.opt.first_moments()) values.push_back(m.to_vector());
    for (const Tensor& v : r.opt.second_moments()) values.push_back(v.to_vector());
    steps = r.opt.steps();
  }
  bool operator==(const Snapshot& o) const { return values == o.values && steps == o.steps; }
};

using Tensors = std::vector<std::pair<std::string, Tensor>>;
using Metadata = std::map<std::string, std::string>;

// Copies a weights file to `to`, letting `edit` change its tensors and metadata.
void rewrite(const std::string& from, const std::string& to, const std::function<void(Tensors&, Metadata&)>& edit) {
  st::weights::WeightsFile f(from);
  Tensors tensors;
  for (const auto& e : f.entries()) tensors.emplace_back(e.name, f.get(e.name));
  Metadata meta = f.metadata();
  edit(tensors, meta);
  st::weights::save(to, tensors, meta);
}

// The load fails with a FormatError naming the file and every phrase, and
// changes neither the run nor the file.
void expect_refused(Run& r, const std::string& path, const std::vector<std::string>& phrases) {
  const Snapshot before(r);
  const std::string bytes = read_bytes(path);
  const uint64_t seed = r.state.rng.seed, offset = r.state.rng.offset;
  std::string msg;
  try {
    r.state = st::checkpoint::load(path, r.params(), r.opt);
  } catch (const st::FormatError& e) {
    msg = e.what();
  }
  INFO(msg);
  CHECK(msg.find("checkpoint '" + path + "'") != std::string::npos);
  for (const std::string& p : phrases) CHECK_MESSAGE(msg.find(p) != std::string::npos, p);
  CHECK(Snapshot(r) == before);
  CHECK(r.state.rng.seed == seed);
  CHECK(r.state.rng.offset == offset);
  CHECK(read_bytes(path) == bytes);
}

}  // namespace

TEST_CASE("checkpoint: resuming from a checkpoint trains bit for bit as if the run never stopped") {
  const st::MeterConfig c = tiny();
  REQUIRE(c.dropout > 0.0f);  // so the restored RNG matters
  const Batch batch = make_batch(c, 7);
  TempPath ckpt;

  Run a(c, 1);
  std::vector<float> losses_a;
  for (int i = 0; i < 3; i++) losses_a.push_back(a.step(batch));
  a.state.extra["curriculum"] = "{\"stage\": 2}";
  a.save(ckpt.path);
  for (int i = 0; i < 3; i++) losses_a.push_back(a.step(batch));

  Run b(c, 2);  // another init, another RNG: everything must come from the file
  CHECK_FALSE(Snapshot(a) == Snapshot(b));
  b.state = st::checkpoint::load(ckpt.path, b.params(), b.opt);
  CHECK(b.state.step == 3);
  CHECK(b.opt.steps() == 3);
  CHECK(b.state.extra.at("curriculum") == "{\"stage\": 2}");
  CHECK(b.state.extra.size() == 1);
  std::vector<float> losses_b;
  for (int i = 0; i < 3; i++) losses_b.push_back(b.step(batch));

  for (int i = 0; i < 3; i++) {
    INFO("step " << i + 4 << ": " << losses_a[size_t(3 + i)] << " vs " << losses_b[size_t(i)]);
    CHECK(losses_a[size_t(3 + i)] == losses_b[size_t(i)]);
  }
  CHECK(Snapshot(a) == Snapshot(b));
  CHECK(a.state.rng.seed == b.state.rng.seed);
  CHECK(a.state.rng.offset == b.state.rng.offset);
  CHECK(a.state.step == b.state.step);
}

TEST_CASE("checkpoint: read_info gives the run's state and config without a model") {
  const st::MeterConfig c = tiny();
  TempPath ckpt;
  Run a(c, 3);
  a.step(make_batch(c, 4));
  a.state.step = 41;  // the loop's step may run ahead of the optimizer's (gradient accumulation)
  a.state.rng.offset = 0xFFFFFFFFFFFFFFF0ull;
  a.state.rng.seed = 0xFFFFFFFFFFFFFFFFull;
  a.state.extra = {{"curriculum", "stage 3"}, {"trimmer", "{}"}, {"empty", ""}};
  a.save(ckpt.path);

  const st::checkpoint::Info info = st::checkpoint::read_info(ckpt.path);
  CHECK(info.state.step == 41);
  CHECK(info.optimizer_steps == 1);
  CHECK(info.state.rng.seed == 0xFFFFFFFFFFFFFFFFull);
  CHECK(info.state.rng.offset == 0xFFFFFFFFFFFFFFF0ull);
  CHECK(info.state.extra == a.state.extra);
  CHECK(st::meter_config_from_json(info.model_config, "checkpoint").to_json() == c.to_json());

  // The optimizer's count is restored separately from the loop's step.
  Run b(c, 5);
  b.state = st::checkpoint::load(ckpt.path, b.params(), b.opt);
  CHECK(b.state.step == 41);
  CHECK(b.opt.steps() == 1);
}

TEST_CASE("checkpoint: the loader lists every problem and changes nothing") {
  const st::MeterConfig c = tiny();
  const Batch batch = make_batch(c, 7);
  TempPath good, bad;
  Run a(c, 1);
  a.step(batch);
  a.save(good.path);

  Run r(c, 9);  // the target of every failed load: trained, so its moments and step count are not zeros
  r.step(batch);
  r.step(batch);
  const std::string first = r.params().front().first;
  const std::string last = r.params().back().first;

  SUBCASE("missing tensors") {
    rewrite(good.path, bad.path, [&](Tensors& t, Metadata&) {
      std::erase_if(t, [&](const auto& e) { return e.first == first || e.first == "optimizer.v." + last; });
    });
    expect_refused(r, bad.path, {"missing '" + first + "'", "missing 'optimizer.v." + last + "'"});
  }
  SUBCASE("an unexpected tensor") {
    rewrite(good.path, bad.path, [&](Tensors& t, Metadata&) { t.emplace_back("stray", Tensor::zeros({2})); });
    expect_refused(r, bad.path, {"unexpected 'stray'"});
  }
  SUBCASE("a wrong shape and a wrong dtype") {
    rewrite(good.path, bad.path, [&](Tensors& t, Metadata&) {
      for (auto& [name, v] : t) {
        if (name == first) v = Tensor::zeros({1, 2});
        if (name == "optimizer.m." + last) v = Tensor::zeros(v.shape(), st::DType::I32);
      }
    });
    expect_refused(r, bad.path,
                   {"'" + first + "' is F32(1, 2), the model wants F32" + st::to_string(r.params().front().second->shape()),
                    "'optimizer.m." + last + "' is I32"});
  }
  SUBCASE("bad and missing metadata") {
    rewrite(good.path, bad.path, [&](Tensors&, Metadata& m) {
      m["kind"] = "weights";
      m["step"] = "12x";
      m["optimizer_steps"] = "-1";
      m["rng_offset"] = "18446744073709551616";  // 2^64
      m.erase("rng_seed");
      m.erase("model_config");
    });
    expect_refused(r, bad.path,
                   {"metadata 'kind' is 'weights', expected 'checkpoint'", "metadata 'step' is '12x'",
                    "metadata 'optimizer_steps' is '-1'", "metadata 'rng_offset' is '18446744073709551616'",
                    "metadata 'rng_seed' is missing", "metadata 'model_config' is missing"});
    std::string msg;
    try {
      st::checkpoint::read_info(bad.path);
    } catch (const st::FormatError& e) {
      msg = e.what();
    }
    CHECK(msg.find("metadata 'rng_seed' is missing") != std::string::npos);
  }
  SUBCASE("a step count beyond int64") {
    rewrite(good.path, bad.path, [&](Tensors&, Metadata& m) { m["step"] = "9223372036854775808"; });
    expect_refused(r, bad.path, {"metadata 'step' is '9223372036854775808'"});
  }
  SUBCASE("a model file is not a checkpoint") {
    a.model.save(bad.path);
    expect_refused(r, bad.path, {"metadata 'kind' is missing", "missing 'optimizer.m." + first + "'"});
  }
  SUBCASE("a model with fewer or more parameters") {
    st::MeterConfig smaller = c, larger = c;
    smaller.num_cross_layers = c.num_cross_layers - 1;
    larger.num_cross_layers = c.num_cross_layers + 1;
    Run s(smaller, 9), l(larger, 9);
    CHECK(s.params().size() < r.params().size());
    CHECK(l.params().size() > r.params().size());
    expect_refused(s, good.path, {"unexpected '"});
    expect_refused(l, good.path, {"missing '"});
  }
  SUBCASE("a file that is not a weights file at all") {
    { std::ofstream(bad.path) << "not a checkpoint"; }
    const Snapshot before(r);
    CHECK_THROWS_AS(st::checkpoint::load(bad.path, r.params(), r.opt), st::FormatError);
    CHECK_THROWS_AS(st::checkpoint::load(bad.path + ".absent", r.params(), r.opt), st::FormatError);
    CHECK(Snapshot(r) == before);
  }
  SUBCASE("an optimizer that does not hold exactly the named parameters") {
    st::checkpoint::NamedTensors fewer(r.params().begin(), r.params().end() - 1);
    const Snapshot before(r);
    CHECK_THROWS_WITH_AS(st::checkpoint::load(good.path, fewer, r.opt), doctest::Contains("not among the named"),
                         st::ArgumentError);
    // a named parameter the optimizer does not update
    Tensors all = handles(r.model);
    st::AdamW partial(st::decay_groups({all.begin(), all.end() - 1}, 1e-3f, 0.01f));
    CHECK_THROWS_WITH_AS(st::checkpoint::load(good.path, r.params(), partial),
                         doctest::Contains(("'" + last + "' is not in the optimizer").c_str()), st::ArgumentError);
    CHECK(Snapshot(r) == before);
  }
}

TEST_CASE("checkpoint: save refuses bad arguments and a failed save leaves no file") {
  const st::MeterConfig c = tiny();
  Run a(c, 1);
  TempPath p;
  auto nothing_there = [&](const std::string& path) {
    CHECK_FALSE(fs::exists(path));
    CHECK_FALSE(fs::exists(path + ".tmp"));
  };

  SUBCASE("a directory that does not exist") {
    const std::string path = p.path + "/no_such_dir/ckpt.st";
    CHECK_THROWS_AS(a.save(path), st::Error);
    nothing_there(path);
    nothing_there(p.path);
  }
  SUBCASE("reserved extra keys") {
    for (const char* key : {"kind", "step", "rng_seed", "model_config", "format", "config"}) {
      a.state.extra = {{key, "x"}};
      CHECK_THROWS_WITH_AS(a.save(p.path), doctest::Contains("reserved"), st::ArgumentError);
      nothing_there(p.path);
    }
  }
  SUBCASE("parameters the optimizer does not match") {
    st::checkpoint::NamedTensors fewer(a.params().begin() + 1, a.params().end());
    CHECK_THROWS_WITH_AS(st::checkpoint::save(p.path, fewer, a.opt, a.state, "{}"),
                         doctest::Contains("not among the named"), st::ArgumentError);
    st::checkpoint::NamedTensors renamed = a.params();
    renamed[0].first = "optimizer.m.x";
    CHECK_THROWS_WITH_AS(st::checkpoint::save(p.path, renamed, a.opt, a.state, "{}"),
                         doctest::Contains("reserved 'optimizer.'"), st::ArgumentError);
    st::checkpoint::NamedTensors twice = a.params();
    twice.push_back({"again", twice[0].second});
    CHECK_THROWS_WITH_AS(st::checkpoint::save(p.path, twice, a.opt, a.state, "{}"),
                         doctest::Contains("same tensor"), st::ArgumentError);
    nothing_there(p.path);
  }
  SUBCASE("a failed save over an earlier checkpoint keeps it") {
    a.save(p.path);
    const std::string before = read_bytes(p.path);
    fs::create_directory(p.path + ".tmp");  // the temporary file cannot be created
    a.state.step = 5;
    CHECK_THROWS_AS(a.save(p.path), st::Error);
    CHECK(read_bytes(p.path) == before);
    CHECK(st::checkpoint::read_info(p.path).state.step == 0);
  }
}

TEST_CASE("checkpoint: a strict safetensors file that smarttrim inspect reads") {
  const st::MeterConfig c = tiny();
  Run a(c, 1);
  a.step(make_batch(c, 2));
  TempPath p;
  a.save(p.path);

  const auto check = st::testing::run_command(st::testing::python_interpreter() + " weights/stformat.py --check '" +
                                              p.path + "'");
  INFO(check.output);
  CHECK(check.status == 0);
  CHECK(check.output.find("ok: " + std::to_string(3 * a.params().size()) + " tensors") != std::string::npos);

  const auto inspect = st::testing::run_command(st::testing::smarttrim_binary() + " inspect '" + p.path + "'");
  INFO(inspect.output);
  CHECK(inspect.status == 0);
  CHECK(inspect.output.find("kind: checkpoint") != std::string::npos);
  CHECK(inspect.output.find("optimizer.v." + a.params().back().first) != std::string::npos);
}
