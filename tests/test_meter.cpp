// The METER model: configs, shapes, modes, loading. The comparison with
// PyTorch is in test_meter_torch.cpp.
#include <doctest/doctest.h>

#include <map>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "engine/error.h"
#include "engine/memory.h"
#include "engine/optim.h"
#include "layers/meter.h"
#include "tests/meter_batch.h"
#include "tests/support.h"
#include "weights/format.h"

using st::Tensor;

namespace {

st::MeterConfig tiny() { return st::load_meter_config("configs/meter-tiny.json"); }

std::string temp_path(const char* tag) {
  static int counter = 0;
  return (std::filesystem::temp_directory_path() /
          ("smarttrim_meter_" + std::to_string(::getpid()) + "_" + tag + std::to_string(counter++) + ".st"))
      .string();
}

}  // namespace

TEST_CASE("meter config: both shipped configs load; meter-base has METER's sizes") {
  st::MeterConfig base = st::load_meter_config("configs/meter-base.json");
  CHECK(base.hidden_size == 768);
  CHECK(base.num_heads == 12);
  CHECK(base.ffn_size == 3072);
  CHECK(base.vit_layers == 11);
  CHECK(base.text_layers == 12);
  CHECK(base.num_cross_layers == 6);
  CHECK(base.vit_patch_size == 16);
  CHECK(base.vocab_size == 50265);
  st::MeterConfig t = tiny();
  // to_json and back gives the same config
  st::MeterConfig again = st::meter_config_from_json(t.to_json(), "round trip");
  CHECK(again.to_json() == t.to_json());
}

TEST_CASE("meter config: a typo, a missing key, a bad value are errors that name the problem") {
  const std::string good = tiny().to_json();
  auto expect = [](const std::string& text, const std::string& phrase) {
    std::string msg;
    try {
      st::meter_config_from_json(text, "config 'x.json'");
    } catch (const st::FormatError& e) {
      msg = e.what();
    }
    INFO(msg);
    CHECK(msg.find("config 'x.json'") != std::string::npos);
    CHECK(msg.find(phrase) != std::string::npos);
  };
  auto replace = [&](const std::string& from, const std::string& to) {
    std::string s = good;
    size_t at = s.find(from);
    REQUIRE(at != std::string::npos);
    return s.replace(at, from.size(), to);
  };
  expect("{", "not valid JSON");
  expect("[]", "not a JSON object");
  expect(replace("\"hidden_size\"", "\"hiden_size\""), "unknown key 'hiden_size'");
  expect(replace("\"architecture\": \"meter\"", "\"architecture\": \"blip\""), "'architecture' must be");
  expect(replace("\"num_heads\": 4", "\"num_heads\": 5"), "'num_heads' (5) must divide 'hidden_size' (64)");
  expect(replace("\"vit_image_size\": 32", "\"vit_image_size\": 30"), "multiple of 'vit_patch_size'");
  expect(replace("\"nlvr2\": true", "\"nlvr2\": 1"), "'nlvr2' must be true or false");
  expect(replace("\"ffn_size\": 128", "\"ffn_size\": -3"), "'ffn_size' must be a non-negative integer");
  expect(replace("\"ffn_size\": 128,", ""), "missing key 'ffn_size'");
  CHECK_THROWS_AS(st::load_meter_config("configs/no-such-config.json"), st::FormatError);
}

TEST_CASE("meter: shapes of every output, and eval mode is deterministic") {
  st::MeterConfig c = tiny();
  st::Meter model(c, 7);
  st::testing::MeterBatch b = st::testing::make_meter_batch(c, {9, 6, 4}, 9, 1);
  st::Context eval;
  st::MeterFeatures f = model.forward(b.ids, b.mask, b.image, eval);
  const int64_t n = c.image_tokens();
  CHECK(f.text.shape() == st::Shape{3, 9, c.hidden_size});
  CHECK(f.image.shape() == st::Shape{3, n, c.hidden_size});
  CHECK(f.cls.shape() == st::Shape{3, 2 * c.hidden_size});
  CHECK(model.vqa_logits(f.cls).shape() == st::Shape{3, c.vqa_answers});
  CHECK(model.snli_logits(f.cls).shape() == st::Shape{3, 3});
  CHECK(model.itm_logits(f.cls).shape() == st::Shape{3, 2});
  CHECK(model.rank_logits(f.cls).shape() == st::Shape{3, 1});
  CHECK(model.nlvr2_forward(b.ids, b.mask, b.image, b.image, eval).shape() == st::Shape{3, 2});
  CHECK(model.forward(b.ids, b.mask, b.image, eval).cls.to_vector() == f.cls.to_vector());

  // Padding does not leak: changing a padded token's id changes nothing.
  Tensor ids2 = b.ids.clone();
  ids2.ints()[2 * 9 + 7] = 57;
  CHECK(model.forward(ids2, b.mask, b.image, eval).cls.to_vector() == f.cls.to_vector());
}

TEST_CASE("meter: training mode applies dropout from the context's RNG") {
  st::MeterConfig c = tiny();
  st::Meter model(c, 7);
  st::testing::MeterBatch b = st::testing::make_meter_batch(c, {9, 6, 4}, 9, 2);
  st::Rng r1(5), r2(5), r3(6);
  st::Context t1{true, &r1}, t2{true, &r2}, t3{true, &r3}, eval;
  std::vector<float> a = model.forward(b.ids, b.mask, b.image, t1).cls.to_vector();
  CHECK(model.forward(b.ids, b.mask, b.image, t2).cls.to_vector() == a);  // same seed, same masks
  CHECK(model.forward(b.ids, b.mask, b.image, t3).cls.to_vector() != a);
  CHECK(model.forward(b.ids, b.mask, b.image, eval).cls.to_vector() != a);
  st::Context no_rng{true, nullptr};
  CHECK_THROWS_AS(model.forward(b.ids, b.mask, b.image, no_rng), st::ArgumentError);
}

TEST_CASE("meter: every parameter gets a gradient from the summed task losses") {
  st::MeterConfig c = tiny();
  st::Meter model(c, 3);
  st::testing::MeterBatch b = st::testing::make_meter_batch(c, {9, 6, 4}, 9, 4);
  st::Context eval;
  st::MeterFeatures f = model.forward(b.ids, b.mask, b.image, eval);
  Tensor targets = Tensor::full({3, c.vqa_answers}, 0.3f);
  Tensor labels = Tensor::from_ints({0, 1, 1}, {3});
  Tensor loss = st::vqa_loss(model.vqa_logits(f.cls), targets) + st::cross_entropy(model.snli_logits(f.cls), labels) +
                st::cross_entropy(model.itm_logits(f.cls), labels) + st::sum_all(model.rank_logits(f.cls)) +
                st::cross_entropy(model.nlvr2_forward(b.ids, b.mask, b.image, b.image, eval), labels);
  loss.backward();
  for (const auto& [name, p] : model.params().list) {
    INFO(name);
    REQUIRE(p->grad().defined());
    double norm = 0;
    for (float g : p->grad().to_vector()) norm += double(g) * g;
    if (name.find("token_type_embeddings") == std::string::npos) CHECK(norm > 0);
  }
}

TEST_CASE("meter: save, load, and the loader's complaints") {
  st::MeterConfig c = tiny();
  st::Meter a(c, 11), b2(c, 12);
  const std::string path = temp_path("ok");
  a.save(path);
  {
    st::weights::WeightsFile file(path);
    CHECK(st::meter_config_of(file).to_json() == c.to_json());
    b2.load(file);
  }
  for (size_t i = 0; i < a.params().list.size(); i++)
    CHECK(a.params().list[i].second->to_vector() == b2.params().list[i].second->to_vector());

  auto complaint = [&](const std::vector<std::pair<std::string, Tensor>>& tensors) {
    const std::string bad = temp_path("bad");
    st::weights::save(bad, tensors, {{"config", c.to_json()}});
    std::string msg;
    try {
      st::weights::WeightsFile file(bad);
      st::Meter m(st::meter_config_of(file));
      m.load(file);
    } catch (const st::FormatError& e) {
      msg = e.what();
    }
    std::remove(bad.c_str());
    return msg;
  };
  std::vector<std::pair<std::string, Tensor>> all;
  for (const auto& [name, t] : a.params().list) all.emplace_back(name, *t);

  auto missing = all;
  missing.erase(missing.begin() + 5);
  CHECK(complaint(missing).find("missing '" + all[5].first + "'") != std::string::npos);

  auto extra = all;
  extra.emplace_back("mlm_score.bias", Tensor::zeros({4}));
  CHECK(complaint(extra).find("unexpected 'mlm_score.bias'") != std::string::npos);

  auto reshaped = all;
  reshaped[0].second = Tensor::zeros({3, 3});
  CHECK(complaint(reshaped).find("'" + all[0].first + "' is F32(3, 3), the config wants F32") != std::string::npos);

  // no config in the metadata
  const std::string bare = temp_path("bare");
  st::weights::save(bare, all, {});
  {
    st::weights::WeightsFile file(bare);
    CHECK_THROWS_AS(st::meter_config_of(file), st::FormatError);
  }
  std::remove(bare.c_str());
  std::remove(path.c_str());
}

TEST_CASE("meter: a file without trimmers fills a model with trimmers only when asked, trimmers kept as initialised") {
  st::MeterConfig plain = tiny();
  st::MeterConfig trimmed = st::load_meter_config("configs/meter-tiny-smarttrim.json");
  REQUIRE(!plain.trim.enabled);
  st::Meter a(plain, 11), b(trimmed, 12), fresh(trimmed, 12);
  const std::string path = temp_path("plain");
  a.save(path);
  {
    st::weights::WeightsFile file(path);
    CHECK_THROWS_AS(b.load(file), st::FormatError);  // by default every parameter must be in the file
    const int initial = b.load(file, st::Meter::Trimmers::MayBeMissing);
    int trimmer_params = 0;
    for (size_t i = 0; i < b.params().list.size(); i++) {
      const auto& [name, t] = b.params().list[i];
      if (st::is_trimmer_parameter(name)) {
        trimmer_params++;
        CHECK(t->to_vector() == fresh.params().list[i].second->to_vector());
      }
    }
    CHECK(initial == trimmer_params);
    CHECK(initial > 0);
    std::map<std::string, const Tensor*> loaded;
    for (const auto& [name, t] : b.params().list) loaded[name] = t;
    for (const auto& [name, t] : a.params().list) CHECK(t->to_vector() == loaded.at(name)->to_vector());
  }
  std::remove(path.c_str());
}

TEST_CASE("meter: the position table re-grids to a new image size") {
  st::MeterConfig c = tiny();
  st::Meter model(c, 5);
  st::testing::MeterBatch b = st::testing::make_meter_batch(c, {9, 6, 4}, 9, 6);
  const int bigger = c.vit_image_size + 2 * c.vit_patch_size;
  st::Rng rng(9);
  Tensor image = Tensor::randn({3, 3, bigger, bigger}, rng);
  st::Context eval;
  CHECK_THROWS_AS(model.forward(b.ids, b.mask, image, eval), st::ShapeError);
  model.set_image_size(bigger);
  CHECK(model.image_size() == bigger);
  CHECK(model.config().vit_image_size == bigger);
  st::MeterFeatures f = model.forward(b.ids, b.mask, image, eval);
  const int64_t g = bigger / c.vit_patch_size;
  CHECK(f.image.dim(1) == g * g + 1);
  CHECK_THROWS_AS(model.set_image_size(bigger + 1), st::ArgumentError);
}

TEST_CASE("meter: smarttrim inspect checks a model file against its config") {
  const std::string exe = st::testing::smarttrim_binary();
  st::MeterConfig c = tiny();
  st::Meter model(c, 1);
  const std::string path = temp_path("inspect");
  model.save(path);
  auto [status, out] = st::testing::run_command(exe + " inspect " + path);
  INFO(out);
  CHECK(status == 0);
  CHECK(out.find("matches its config: METER, " + std::to_string(model.parameter_count()) + " parameters") !=
        std::string::npos);
  CHECK(out.find("vit_model.visual.conv1.weight  F32  (48, 3, 8, 8)") != std::string::npos);

  // the same tensors under a config with one more answer
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const auto& [name, t] : model.params().list) tensors.emplace_back(name, *t);
  st::MeterConfig other = c;
  other.vqa_answers += 1;
  st::weights::save(path, tensors, {{"config", other.to_json()}});
  st::testing::CommandResult bad = st::testing::run_command(exe + " inspect " + path);
  INFO(bad.output);
  CHECK(bad.status == 1);
  CHECK(bad.output.find("does not fit the model config: 'vqa_classifier.3.weight' is F32(13, 128), the config wants "
                        "F32(14, 128)") != std::string::npos);
  CHECK(std::count(bad.output.begin(), bad.output.end(), '\n') == 1);
  std::remove(path.c_str());
}

TEST_CASE("meter: a repeated training step makes no system allocations") {
  st::MeterConfig c = tiny();
  st::Meter model(c, 2);
  st::testing::MeterBatch b = st::testing::make_meter_batch(c, {9, 6, 4}, 9, 3);
  std::vector<std::pair<std::string, Tensor>> named;
  for (const auto& [name, t] : model.params().list) named.emplace_back(name, *t);
  st::AdamW opt(st::decay_groups(named, 1e-4f, 0.01f));
  Tensor targets = Tensor::full({3, c.vqa_answers}, 0.2f);
  st::Rng rng(1);
  st::Context train{true, &rng};
  auto step = [&] {
    st::MeterFeatures f = model.forward(b.ids, b.mask, b.image, train);
    st::vqa_loss(model.vqa_logits(f.cls), targets).backward();
    opt.step();
    opt.zero_grad();
  };
  step();
  step();
  const uint64_t before = st::memory::host_stats().system_allocs;
  step();
  CHECK(st::memory::host_stats().system_allocs == before);
}

TEST_CASE("meter config: the optional initializer_range scales the init of every weight matrix") {
  st::MeterConfig c = tiny();
  CHECK(c.to_json().find("initializer_range") == std::string::npos);  // METER's default 0.02 is not written
  st::MeterConfig wide = c;
  wide.initializer_range = 0.1f;
  CHECK(st::meter_config_from_json(wide.to_json(), "test").initializer_range == 0.1f);
  st::Meter a(c, 5), b(wide, 5);
  for (size_t i = 0; i < a.params().list.size(); i++) {
    const auto& [name, t] = a.params().list[i];
    const std::vector<float> x = t->to_vector(), y = b.params().list[i].second->to_vector();
    const bool matrix = t->rank() >= 2 && name.size() > 6 && name.substr(name.size() - 6) == "weight";
    for (size_t j = 0; j < x.size(); j++) CHECK(y[j] == doctest::Approx(matrix ? 5 * x[j] : x[j]));
  }
  std::string negative = wide.to_json();
  const size_t at = negative.find("\"initializer_range\": ");
  REQUIRE(at != std::string::npos);
  negative.insert(at + 21, "-");
  CHECK_THROWS_WITH_AS(st::meter_config_from_json(negative, "test"), doctest::Contains("initializer_range"),
                       st::FormatError);
}
