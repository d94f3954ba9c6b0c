// SmartTrim training (pruning/objective.h, pruning/train.h): the objective's
// pieces against hand computation, the cost's straight-through path into
// the trimmers, the optimizer's parameter groups, a short run on a
// synthetic VQA task that reaches its FLOPs target while the loss falls,
// and runs that repeat and resume bit for bit.
#include <doctest/doctest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <omp.h>

#include "engine/error.h"
#include "layers/meter.h"
#include "pruning/objective.h"
#include "pruning/train.h"

namespace fs = std::filesystem;
using st::Tensor;

namespace {

st::MeterConfig tiny_trim() { return st::load_meter_config("configs/meter-tiny-smarttrim.json"); }

// A unique path under the temp dir; the file and its .tmp are removed after.
struct TempPath {
  std::string path;
  TempPath() {
    static int counter = 0;
    std::random_device rd;
    path = (fs::temp_directory_path() / ("smarttrim_train_" + std::to_string(::getpid()) + "_" + std::to_string(rd()) +
                                         "_" + std::to_string(counter++) + ".st"))
               .string();
  }
  ~TempPath() {
    std::error_code ec;
    fs::remove_all(path, ec);
    fs::remove_all(path + ".tmp", ec);
  }
};

// --- the synthetic task
//
// "Quadrants": a noise image (3, 32, 32) with one bright 8x8 square, aligned
// to the patch grid, somewhere in one of its four quadrants. Two questions:
//   <s> where </s>         -> the quadrant, answers 0..3
//   <s> is-in q </s>       -> yes (4) when the square is in quadrant q, else no (5)
// each with 0-3 filler words before </s> that carry no information (so
// lengths, and each example's unpruned FLOPs, differ). The answer needs the
// image and the text; most patches and the filler words are redundant.
constexpr int kWhere = 10, kIsIn = 11, kQuadrantWord = 20, kFillerWord = 30;
constexpr int kTextLength = 8;

struct Example {
  std::vector<int32_t> words;  // without padding
  int quadrant = 0;
  int answer = 0;
};

// Draws one image into px (3, S, S) and its question.
Example draw_example(const st::MeterConfig& c, float* px, st::Rng& rng) {
  const int s = c.vit_image_size, p = c.vit_patch_size, half = c.vit_grid() / 2;
  auto pick = [&](int n) { return int(rng.uniform() * float(n)) % n; };
  Example e;
  e.quadrant = pick(4);
  const int row = (e.quadrant / 2) * half + pick(half), col = (e.quadrant % 2) * half + pick(half);
  for (int ch = 0; ch < 3; ch++)
    for (int y = row * p; y < (row + 1) * p; y++)
      for (int x = col * p; x < (col + 1) * p; x++) px[(size_t(ch) * s + y) * s + x] = 2.0f;
  e.words = {0};
  if (rng.uniform() < 0.5f) {
    e.words.push_back(kWhere);
    e.answer = e.quadrant;
  } else {
    const int asked = pick(4);
    e.words.push_back(kIsIn);
    e.words.push_back(kQuadrantWord + asked);
    e.answer = asked == e.quadrant ? 4 : 5;
  }
  for (int f = pick(4); f > 0; f--) e.words.push_back(kFillerWord + pick(c.vocab_size - kFillerWord));
  e.words.push_back(2);
  return e;
}

// A batch of b examples. VQA: soft targets (one answer, score 1); SNLI: the
// label quadrant % 3; NLVR2: a second image, label 1 when both squares share a quadrant.
st::TrainBatch quadrant_batch(const st::MeterConfig& c, st::Task task, int b, st::Rng& rng) {
  const int s = c.vit_image_size;
  const size_t image_size = size_t(3) * s * s;
  std::vector<int32_t> ids(size_t(b * kTextLength), c.pad_token_id);
  std::vector<float> mask(size_t(b * kTextLength), 0.0f), soft(size_t(b * c.vqa_answers), 0.0f);
  std::vector<int32_t> labels(static_cast<size_t>(b));
  st::TrainBatch batch;
  batch.image = Tensor::randn({b, 3, s, s}, rng, 0.5f);
  if (task == st::Task::NLVR2) batch.image2 = Tensor::randn({b, 3, s, s}, rng, 0.5f);
  for (int i = 0; i < b; i++) {
    const Example e = draw_example(c, batch.image.data() + size_t(i) * image_size, rng);
    for (size_t j = 0; j < e.words.size(); j++) {
      ids[size_t(i * kTextLength) + j] = e.words[j];
      mask[size_t(i * kTextLength) + j] = 1.0f;
    }
    soft[size_t(i * c.vqa_answers + e.answer)] = 1.0f;
    labels[size_t(i)] = e.quadrant % 3;
    if (task == st::Task::NLVR2) {
      Example other = draw_example(c, batch.image2.data() + size_t(i) * image_size, rng);
      labels[size_t(i)] = other.quadrant == e.quadrant ? 1 : 0;
    }
  }
  batch.ids = Tensor::from_ints(ids, {b, kTextLength});
  batch.mask = Tensor::from_vector(mask, {b, kTextLength});
  batch.targets =
      task == st::Task::VQA ? Tensor::from_vector(soft, {b, c.vqa_answers}) : Tensor::from_ints(labels, {b});
  return batch;
}

// The batch of step i of a run: a pure function of (seed, i), so a resumed run sees the same data.
st::TrainBatch batch_at(const st::MeterConfig& c, st::Task task, int b, uint64_t seed, int64_t i) {
  st::Rng rng(seed * 1000003u + uint64_t(i));
  return quadrant_batch(c, task, b, rng);
}

// --- references in double precision

std::vector<double> softmax_d(const std::vector<float>& z, size_t row, size_t n, double temperature) {
  double m = -1e300, sum = 0;
  for (size_t c = 0; c < n; c++) m = std::max(m, z[row * n + c] / temperature);
  std::vector<double> p(n);
  for (size_t c = 0; c < n; c++) sum += p[c] = std::exp(z[row * n + c] / temperature - m);
  for (double& v : p) v /= sum;
  return p;
}

double sigmoid_d(double x) { return 1.0 / (1.0 + std::exp(-x)); }

bool starts_with(const std::string& s, const char* prefix) { return s.rfind(prefix, 0) == 0; }

double squared_norm(const Tensor& t) {
  double sq = 0;
  for (float v : t.to_vector()) sq += double(v) * v;
  return sq;
}

// Every number a step reports, for bit-for-bit comparisons.
std::vector<double> numbers(const st::StepLog& l) {
  std::vector<double> out = {double(l.loss),      double(l.task_loss), double(l.teacher_loss), double(l.distill_loss),
                             double(l.cost_loss), double(l.grad_norm), double(l.lr_scale),     l.target,
                             l.ratio_mean,        l.ratio_std};
  for (const auto* v : {&l.vit_tokens, &l.text_tokens, &l.cross_text_tokens, &l.cross_image_tokens, &l.text_self_heads,
                        &l.text_cross_heads, &l.image_self_heads, &l.image_cross_heads})
    out.insert(out.end(), v->begin(), v->end());
  return out;
}

std::vector<std::vector<float>> parameter_values(const st::Meter& m) {
  std::vector<std::vector<float>> out;
  for (const auto& [name, t] : m.params().list) out.push_back(t->to_vector());
  return out;
}

}  // namespace

// --- the objective's pieces

TEST_CASE("smarttrim train: softmax self-distillation is T^2 KL(teacher || student), the teacher detached") {
  const std::vector<float> zs = {0.3f, -1.2f, 2.0f, 0.0f, 0.5f, -0.5f}, zt = {1.0f, 0.1f, -0.7f, 2.5f, -1.0f, 0.2f};
  for (double temperature : {1.0, 2.0}) {
    CAPTURE(temperature);
    Tensor s = Tensor::from_vector(zs, {2, 3}), t = Tensor::from_vector(zt, {2, 3});
    s.set_requires_grad();
    t.set_requires_grad();
    Tensor loss = st::distillation_loss(st::Task::SNLI, s, t, float(temperature));
    double want = 0;
    std::vector<double> dwant(6);
    for (size_t b = 0; b < 2; b++) {
      std::vector<double> p = softmax_d(zt, b, 3, temperature), q = softmax_d(zs, b, 3, temperature);
      for (size_t c = 0; c < 3; c++) {
        want += temperature * temperature * p[c] * (std::log(p[c]) - std::log(q[c])) / 2.0;
        dwant[b * 3 + c] = temperature * (q[c] - p[c]) / 2.0;  // T^2 * (q - p) / (T B)
      }
    }
    CHECK(loss.item() == doctest::Approx(want).epsilon(1e-5));
    loss.backward();
    const std::vector<float> ds = s.grad().to_vector();
    for (size_t i = 0; i < 6; i++) CHECK(ds[i] == doctest::Approx(dwant[i]).epsilon(1e-4));
    CHECK_FALSE(t.grad().defined());  // the teacher is only a target
  }
  // NLVR2 and ITM use the same softmax distillation
  Tensor s = Tensor::from_vector({0.2f, -0.4f}, {1, 2}), t = Tensor::from_vector({-1.0f, 1.0f}, {1, 2});
  CHECK(st::distillation_loss(st::Task::NLVR2, s, t).item() == st::distillation_loss(st::Task::ITM, s, t).item());
  CHECK_THROWS_AS(st::distillation_loss(st::Task::Rank, s, t), st::ArgumentError);
  CHECK_THROWS_AS(st::distillation_loss(st::Task::SNLI, s, Tensor::zeros({1, 3})), st::ShapeError);
}

TEST_CASE("smarttrim train: VQA self-distillation is BCE(sigmoid(z_S), sigmoid(z_T)), the teacher detached") {
  const std::vector<float> zs = {0.3f, -1.2f, 2.0f, 0.0f, 0.5f, -3.5f}, zt = {1.0f, 0.1f, -0.7f, 2.5f, -1.0f, 0.2f};
  Tensor s = Tensor::from_vector(zs, {2, 3}), t = Tensor::from_vector(zt, {2, 3});
  s.set_requires_grad();
  t.set_requires_grad();
  Tensor loss = st::distillation_loss(st::Task::VQA, s, t);
  double want = 0;
  for (size_t i = 0; i < 6; i++) {
    const double q = sigmoid_d(zt[i]), p = sigmoid_d(zs[i]);
    want -= (q * std::log(p) + (1 - q) * std::log(1 - p)) / 6.0;  // mean over every entry
  }
  CHECK(loss.item() == doctest::Approx(want).epsilon(1e-5));
  loss.backward();
  const std::vector<float> ds = s.grad().to_vector();
  for (size_t i = 0; i < 6; i++)
    CHECK(ds[i] == doctest::Approx((sigmoid_d(zs[i]) - sigmoid_d(zt[i])) / 6.0).epsilon(1e-4));
  CHECK_FALSE(t.grad().defined());
}

TEST_CASE("smarttrim train: the cost loss is the squared gap of the batch's mean ratio") {
  Tensor rho = Tensor::from_vector({0.5f, 0.7f, 0.9f}, {3});
  rho.set_requires_grad();
  Tensor loss = st::cost_loss(rho, 0.6);
  CHECK(loss.item() == doctest::Approx(0.01).epsilon(1e-5));  // (0.7 - 0.6)^2
  loss.backward();
  for (float g : rho.grad().to_vector()) CHECK(g == doctest::Approx(2.0 * 0.1 / 3).epsilon(1e-5));  // 2 (mean - t) / B
  CHECK(st::cost_loss(Tensor::from_vector({0.2f, 0.4f}, {2}), 0.3).item() == doctest::Approx(0.0).scale(1));
}

TEST_CASE("smarttrim train: task losses are METER's") {
  Tensor z = Tensor::from_vector({0.3f, -1.2f, 2.0f, 0.0f, 0.5f, -0.5f}, {2, 3});
  Tensor soft = Tensor::from_vector({1.0f, 0.0f, 0.3f, 0.0f, 0.6f, 0.0f}, {2, 3});
  Tensor labels = Tensor::from_ints({2, 0}, {2});
  CHECK(st::task_loss(st::Task::VQA, z, soft).item() == st::vqa_loss(z, soft).item());
  CHECK(st::task_loss(st::Task::SNLI, z, labels).item() == st::cross_entropy(z, labels).item());
  CHECK_THROWS_AS(st::task_loss(st::Task::Rank, z, labels), st::ArgumentError);
}

TEST_CASE("smarttrim train: the FLOPs ratio of each example is its pruned over its unpruned FLOPs") {
  const st::MeterConfig c = tiny_trim();
  st::Meter model(c, 4);
  st::Rng data(3), noise(5);
  st::TrainBatch b = quadrant_batch(c, st::Task::NLVR2, 5, data);
  st::Context eval;
  st::TrimOptions trim;
  trim.noise = &noise;  // noisy masks: the examples keep different amounts
  st::MeterFeatures f1 = model.forward(b.ids, b.mask, b.image, eval, 1, &trim);
  st::MeterFeatures f2 = model.forward(b.ids, b.mask, b.image2, eval, 2, &trim);
  const std::vector<float> mask = b.mask.to_vector();

  Tensor vqa = st::flops_ratio(c, {f1.counts}, b.mask, st::Task::VQA);
  Tensor nlvr2 = st::flops_ratio(c, {f1.counts, f2.counts}, b.mask, st::Task::NLVR2);
  REQUIRE(vqa.shape() == st::Shape{5});
  std::vector<float> rv = vqa.to_vector(), rn = nlvr2.to_vector();
  std::vector<double> lengths;
  for (size_t i = 0; i < 5; i++) {
    int real = 0;
    for (size_t j = 0; j < size_t(kTextLength); j++) real += mask[i * kTextLength + j] > 0;
    lengths.push_back(real);
    const double one = st::pass_flops(c, st::counts_of_example(f1.counts, int64_t(i)), true);
    const double two = st::pass_flops(c, st::counts_of_example(f2.counts, int64_t(i)), true);
    CHECK(rv[i] == doctest::Approx((one + st::head_flops(c, st::Task::VQA)) / st::full_flops(c, real, st::Task::VQA))
                       .epsilon(1e-5));
    CHECK(rn[i] ==
          doctest::Approx((one + two + st::head_flops(c, st::Task::NLVR2)) / st::full_flops(c, real, st::Task::NLVR2))
              .epsilon(1e-5));
    CHECK(rv[i] > 0.2f);
    CHECK(rv[i] < 1.05f);
  }
  CHECK(*std::min_element(lengths.begin(), lengths.end()) < *std::max_element(lengths.begin(), lengths.end()));
  CHECK_THROWS_AS(st::flops_ratio(c, {f1.counts}, b.mask, st::Task::NLVR2), st::ArgumentError);
  CHECK_THROWS_AS(st::flops_ratio(c, {f1.counts, f2.counts}, b.mask, st::Task::VQA), st::ArgumentError);
}

TEST_CASE("smarttrim train: the cost loss alone reaches every trimmer through the straight-through masks") {
  const st::MeterConfig c = tiny_trim();
  st::Meter model(c, 6);
  st::Rng data(1), noise(2);
  st::TrainBatch b = quadrant_batch(c, st::Task::VQA, 6, data);
  st::Context eval;
  st::TrimOptions trim;
  trim.noise = &noise;
  st::MeterFeatures f = model.forward(b.ids, b.mask, b.image, eval, 1, &trim);
  Tensor rho = st::flops_ratio(c, {f.counts}, b.mask, st::Task::VQA);
  const double mean = [&] {
    double s = 0;
    for (float r : rho.to_vector()) s += r;
    return s / 6;
  }();
  const double target = mean - 0.2;  // asks for less compute
  st::cost_loss(rho, target).backward();

  int trimmers = 0;
  for (const auto& [name, t] : model.params().list) {
    CAPTURE(name);
    if (starts_with(name, "smarttrim.")) {
      trimmers++;
      REQUIRE(t->grad().defined());
      CHECK(squared_norm(t->grad()) > 0);
      // less compute: the keep logits' final biases must move down, so their gradient is positive
      if (name.find("_tokens.") != std::string::npos && name.find(".mlp2.bias") != std::string::npos)
        CHECK(t->grad().to_vector()[0] > 0);
    }
    if (starts_with(name, "vqa_classifier.")) CHECK_FALSE(t->grad().defined());  // the head does not see the cost
  }
  CHECK(trimmers > 0);
}

TEST_CASE("smarttrim train: the objective adds its weighted terms; switches drop them") {
  const st::MeterConfig c = tiny_trim();
  st::Meter model(c, 2);
  st::Rng data(4), noise(7);
  st::TrainBatch b = quadrant_batch(c, st::Task::VQA, 4, data);
  st::Context eval;
  st::TrimOptions student, teacher;
  student.noise = &noise;
  teacher.active = false;
  st::MeterFeatures fs = model.forward(b.ids, b.mask, b.image, eval, 1, &student);
  st::MeterFeatures ft = model.forward(b.ids, b.mask, b.image, eval, 1, &teacher);
  Tensor zs = model.vqa_logits(fs.cls), zt = model.vqa_logits(ft.cls);

  st::ObjectiveWeights w;
  w.alpha = 0.5f, w.lambda_sd = 0.25f, w.lambda_cost = 3.0f;
  st::ObjectiveTerms all = st::smarttrim_objective(c, st::Task::VQA, zs, zt, b.targets, {fs.counts}, b.mask, 0.7, w);
  CHECK(all.task.item() == st::vqa_loss(zs, b.targets).item());
  CHECK(all.teacher_task.item() == st::vqa_loss(zt, b.targets).item());
  CHECK(all.distill.item() == st::distillation_loss(st::Task::VQA, zs, zt).item());
  CHECK(all.cost.item() == st::cost_loss(st::flops_ratio(c, {fs.counts}, b.mask, st::Task::VQA), 0.7).item());
  const double sum =
      double(all.task.item()) + 0.5 * all.teacher_task.item() + 0.25 * all.distill.item() + 3.0 * all.cost.item();
  CHECK(all.total.item() == doctest::Approx(sum).epsilon(1e-6));

  w.self_distillation = false;
  st::ObjectiveTerms no_sd = st::smarttrim_objective(c, st::Task::VQA, zs, zt, b.targets, {fs.counts}, b.mask, 0.7, w);
  CHECK_FALSE(no_sd.distill.defined());
  CHECK(no_sd.total.item() ==
        doctest::Approx(double(all.task.item()) + 0.5 * all.teacher_task.item() + 3.0 * all.cost.item()).epsilon(1e-6));
  // no teacher at all: the student's task and the cost
  st::ObjectiveTerms alone =
      st::smarttrim_objective(c, st::Task::VQA, zs, Tensor(), b.targets, {fs.counts}, b.mask, 0.7, w);
  CHECK_FALSE(alone.teacher_task.defined());
  CHECK(alone.total.item() == doctest::Approx(double(all.task.item()) + 3.0 * all.cost.item()).epsilon(1e-6));
  st::clear_tape();
}

// --- the optimizer and the trainer

TEST_CASE("smarttrim train: every parameter is in exactly one group; the trimmers' group learns faster") {
  const st::MeterConfig c = tiny_trim();
  st::TrainOptions o;
  o.lr = 2e-4f;
  o.trimmer_lr_multiplier = 10;
  st::SmartTrimTrainer trainer(c, o, 1, 2);
  std::map<const st::TensorImpl*, std::string> group_of;
  std::map<const st::TensorImpl*, int> times;
  std::map<std::string, const st::ParamGroup*> by_name;
  for (const st::ParamGroup& g : trainer.optimizer().groups()) {
    by_name[g.name] = &g;
    for (const Tensor& p : g.params) {
      group_of[p.impl()] = g.name;
      times[p.impl()]++;
    }
  }
  REQUIRE(by_name.size() == 3);
  CHECK(group_of.size() == trainer.model().params().list.size());
  for (const auto& [name, t] : trainer.model().params().list) {
    CAPTURE(name);
    REQUIRE(times.count(t->impl()) == 1);
    CHECK(times[t->impl()] == 1);
    const std::string& g = group_of[t->impl()];
    if (starts_with(name, "smarttrim.")) CHECK(g == "trimmers");
    else CHECK(g == (t->rank() <= 1 ? "no_decay" : "decay"));
  }
  CHECK(by_name["trimmers"]->lr == doctest::Approx(2e-3));
  CHECK(by_name["decay"]->lr == doctest::Approx(2e-4));
  CHECK(by_name["no_decay"]->lr == doctest::Approx(2e-4));
  CHECK(by_name["trimmers"]->lr > by_name["decay"]->lr);
  CHECK(by_name["decay"]->weight_decay == doctest::Approx(0.01));
  CHECK(by_name["no_decay"]->weight_decay == 0.0f);

  // without trimmers there is no trimmer group
  st::SmartTrimTrainer plain(st::load_meter_config("configs/meter-tiny.json"), o, 1, 2);
  for (const st::ParamGroup& g : plain.optimizer().groups()) CHECK(g.name != "trimmers");
}

TEST_CASE("smarttrim train: the curriculum switch holds the goal from the first step") {
  const st::MeterConfig c = tiny_trim();
  st::TrainOptions o;
  o.total_steps = 10;
  o.curriculum = {0.6, 0.5, true};
  st::SmartTrimTrainer on(c, o, 1, 2);
  CHECK(on.target() == 1.0);
  o.curriculum.enabled = false;
  st::SmartTrimTrainer off(c, o, 1, 2);
  CHECK(off.target() == 0.6);
  st::StepLog log = off.step(batch_at(c, st::Task::VQA, 2, 1, 0));
  CHECK(log.target == 0.6);
  CHECK(log.step == 0);
  CHECK(off.step_count() == 1);
}

TEST_CASE("smarttrim train: the noise-free fraction turns the mask noise off for the last steps") {
  const st::MeterConfig c = tiny_trim();
  st::TrainOptions o;
  o.total_steps = 4;
  o.dropout = false;  // the run's Rng then feeds the mask noise alone
  o.curriculum = {0.5, 0.5, true};
  auto losses = [&](float noise_free_fraction, uint64_t run_seed) {
    o.noise_free_fraction = noise_free_fraction;
    st::SmartTrimTrainer t(c, o, 1, run_seed);  // the same model, another run seed
    std::vector<float> out;
    for (int64_t i = 0; i < o.total_steps; i++) out.push_back(t.step(batch_at(c, st::Task::VQA, 4, 9, i)).task_loss);
    return out;
  };
  // with noise the run seed matters from the first step; without, not at all
  const std::vector<float> noisy_a = losses(0, 2), noisy_b = losses(0, 3);
  CHECK(noisy_a[0] != noisy_b[0]);
  CHECK(losses(1, 2) == losses(1, 3));
  // half: the first two steps are the noisy run's, the last two are not
  const std::vector<float> half = losses(0.5f, 2);
  CHECK(half[0] == noisy_a[0]);
  CHECK(half[1] == noisy_a[1]);
  CHECK(half[2] != noisy_a[2]);
}

TEST_CASE("smarttrim train: options survive their JSON form exactly") {
  st::TrainOptions o;
  o.task = st::Task::NLVR2;
  o.total_steps = 1234;
  o.lr = 3.3e-5f;
  o.trimmer_lr_multiplier = 7.5f;
  o.weight_decay = 0.013f;
  o.trimmer_weight_decay = 0.001f;
  o.warmup_fraction = 0.07f;
  o.clip_norm = 0.3f;
  o.adam = {0.85f, 0.97f, 1e-7f};
  o.objective = {0.7f, 0.3f, 4.0f, 2.0f, false};
  o.curriculum = {1.0 / 3, 0.4, false};
  o.dropout = false;
  o.noise_free_fraction = 0.25f;
  const st::TrainOptions r = st::train_options_from_json(st::train_options_to_json(o), "test");
  CHECK(st::train_options_to_json(r) == st::train_options_to_json(o));
  CHECK(r.task == o.task);
  CHECK(r.total_steps == o.total_steps);
  CHECK(r.lr == o.lr);
  CHECK(r.adam.eps == o.adam.eps);
  CHECK(r.objective.self_distillation == false);
  CHECK(r.curriculum.goal == o.curriculum.goal);
  CHECK(r.dropout == false);
  CHECK(r.noise_free_fraction == 0.25f);
  CHECK_THROWS_AS(st::train_options_from_json("{\"task\": \"vqa\"}", "test"), st::FormatError);
  CHECK_THROWS_AS(st::train_options_from_json("not json", "test"), st::FormatError);
}

TEST_CASE("smarttrim train: SNLI and NLVR2 steps (softmax heads, NLVR2's two passes)") {
  const st::MeterConfig c = tiny_trim();
  for (st::Task task : {st::Task::SNLI, st::Task::NLVR2}) {
    st::TrainOptions o;
    o.task = task;
    o.total_steps = 4;
    st::SmartTrimTrainer trainer(c, o, 3, 4);
    for (int64_t i = 0; i < 2; i++) {
      st::StepLog log = trainer.step(batch_at(c, task, 4, 9, i));
      INFO(log.line());
      CHECK(std::isfinite(log.loss));
      CHECK(log.task_loss > 0);
      CHECK(log.teacher_loss > 0);
      CHECK(log.distill_loss >= 0);
      CHECK(log.ratio_mean > 0.2);
      CHECK(log.ratio_mean < 1.05);
      CHECK(log.cross_image_tokens.size() == size_t(c.num_cross_layers));
      CHECK(log.text_self_heads.size() == size_t(c.num_cross_layers));
    }
  }
  st::TrainOptions o;
  o.task = st::Task::NLVR2;
  st::SmartTrimTrainer trainer(c, o, 3, 4);
  st::TrainBatch no_second = batch_at(c, st::Task::VQA, 2, 9, 0);
  no_second.targets = Tensor::from_ints({0, 1}, {2});
  CHECK_THROWS_AS(trainer.step(no_second), st::ArgumentError);
  // a malformed batch fails after the forward passes: the tape is left empty, the step count unchanged
  st::TrainOptions vqa;
  st::SmartTrimTrainer t2(c, vqa, 3, 4);
  st::TrainBatch wrong = batch_at(c, st::Task::VQA, 2, 9, 0);
  wrong.targets = Tensor::zeros({2, c.vqa_answers + 1});
  CHECK_THROWS_AS(t2.step(wrong), st::ShapeError);
  CHECK(st::tape_size() == 0);
  CHECK(t2.step_count() == 0);
  CHECK(std::isfinite(t2.step(batch_at(c, st::Task::VQA, 2, 9, 0)).loss));
}

TEST_CASE("smarttrim train: student and teacher from shared image tokens get the gradients of separate passes") {
  st::MeterConfig c = tiny_trim();
  c.dropout = 0;
  st::Meter model(c, 3);
  const st::TrainBatch b = batch_at(c, st::Task::VQA, 5, 4, 0);
  const st::Context eval{false, nullptr};
  st::TrimOptions student, teacher;
  teacher.active = false;
  st::Rng rng(9);
  const Tensor weights = Tensor::randn({5, int64_t(c.vqa_answers)}, rng);
  auto loss = [&](const st::MeterFeatures& f) { return st::sum_all(model.vqa_logits(f.cls) * weights); };
  auto gradients = [&](const Tensor& total) {
    st::backward(total);
    std::vector<std::vector<float>> g;
    for (const auto& [name, t] : model.params().list) {
      g.push_back(t->grad().defined() ? t->grad().to_vector() : std::vector<float>(size_t(t->numel()), 0.0f));
      t->zero_grad();
    }
    return g;
  };
  const Tensor apart = loss(model.forward(b.ids, b.mask, b.image, eval, 1, &student)) +
                       loss(model.forward(b.ids, b.mask, b.image, eval, 1, &teacher));
  const float apart_value = apart.item();
  const auto apart_grads = gradients(apart);
  const st::Meter::ImageTokens tokens = model.image_tokens(b.image);
  const Tensor shared = loss(model.forward(b.ids, b.mask, tokens, eval, 1, &student)) +
                        loss(model.forward(b.ids, b.mask, tokens, eval, 1, &teacher));
  CHECK(shared.item() == apart_value);  // the same forward values
  const auto shared_grads = gradients(shared);
  size_t p = 0;
  for (const auto& [name, t] : model.params().list) {
    CAPTURE(name);
    float scale = 0, worst = 0;
    for (size_t i = 0; i < apart_grads[p].size(); i++) {
      scale = std::max(scale, std::fabs(apart_grads[p][i]));
      worst = std::max(worst, std::fabs(apart_grads[p][i] - shared_grads[p][i]));
    }
    CHECK(worst <= 1e-5f * scale + 1e-7f);  // only the order of the patch embedding's sums differs
    p++;
  }
}

// --- steps that must not depend on how a batch is split or padded

// Trainers made by make_a and make_b (lr -> trainer, from the same seeds)
// stepping on batch_a and batch_b must take the same step: with lr 0 the
// same losses and gradient norms; with a real lr the parameters move alike.
// AdamW's first step is about lr sign(g), so a gradient that rounds
// differently near 0 moves its parameter by a little less than lr; the
// tolerance allows 2% of lr.
template <class MakeA, class MakeB>
void check_same_steps(const MakeA& make_a, const MakeB& make_b, const st::TrainBatch& batch_a,
                      const st::TrainBatch& batch_b, bool trimming) {
  {
    st::SmartTrimTrainer one = make_a(0.0f), two = make_b(0.0f);
    for (int step = 0; step < 2; step++) {
      const st::StepLog a = one.step(batch_a), b = two.step(batch_b);
      INFO(a.line() << "\n" << b.line());
      const std::vector<double> na = numbers(a), nb = numbers(b);
      REQUIRE(na.size() == nb.size());
      for (size_t i = 0; i < na.size(); i++) CHECK(nb[i] == doctest::Approx(na[i]).epsilon(1e-5));
      CHECK(b.trimmer_grad_norm == doctest::Approx(a.trimmer_grad_norm).epsilon(1e-5));
      CHECK(a.grad_norm > 0);
      if (trimming) CHECK(a.trimmer_grad_norm > 0);
    }
  }
  const float lr = 1e-3f;
  st::SmartTrimTrainer one = make_a(lr), two = make_b(lr);
  const auto before = parameter_values(one.model());
  one.step(batch_a);
  two.step(batch_b);
  const auto a = parameter_values(one.model()), b = parameter_values(two.model());
  size_t moved = 0, total = 0;
  for (size_t p = 0; p < a.size(); p++)
    for (size_t i = 0; i < a[p].size(); i++) {
      CHECK(std::fabs(a[p][i] - b[p][i]) <= 0.02f * lr);
      moved += std::fabs(a[p][i] - before[p][i]) > 0.5f * lr;
      total++;
    }
  CHECK(moved > total / 2);  // the step did move most parameters
}

TEST_CASE("smarttrim train: a batch split into shards takes the step of the whole batch") {
  st::MeterConfig with_trimmers = tiny_trim(), without = tiny_trim();
  with_trimmers.dropout = without.dropout = 0;  // the shards draw their noise apart: the test draws none
  without.trim = st::TrimConfig{};
  struct Case {
    const char* name;
    const st::MeterConfig* config;
    st::Task task;
  };
  for (const Case& k : {Case{"VQA", &with_trimmers, st::Task::VQA}, Case{"NLVR2", &with_trimmers, st::Task::NLVR2},
                        Case{"VQA without trimmers", &without, st::Task::VQA}}) {
    CAPTURE(k.name);
    const st::MeterConfig& c = *k.config;
    st::TrainOptions o;
    o.task = k.task;
    o.total_steps = 4;
    o.noise_free_fraction = 1;  // masks by the inference rule, with their straight-through gradients
    o.curriculum = {0.5, 0.5, false};
    auto trainer = [&](int shards, float lr) {
      st::TrainOptions with = o;
      with.batch_shards = shards;
      with.lr = lr;
      return st::SmartTrimTrainer(c, with, 5, 6);
    };
    // 7 examples: shards of 2, 2 and 3
    const st::TrainBatch batch = batch_at(c, k.task, 7, 4, 0);
    check_same_steps([&](float lr) { return trainer(1, lr); }, [&](float lr) { return trainer(3, lr); }, batch, batch,
                     c.trim.enabled);
  }
}

TEST_CASE("smarttrim train: padding a batch wider does not change its step") {
  // The loader pads a batch to its longest text; any wider padding must give the same step.
  st::MeterConfig c = tiny_trim();
  c.dropout = 0;  // dropout's draws depend on the tensors' sizes
  st::TrainOptions o;
  o.total_steps = 4;
  o.noise_free_fraction = 1;
  o.curriculum = {0.5, 0.5, false};
  for (st::Task task : {st::Task::VQA, st::Task::NLVR2}) {
    CAPTURE(int(task));
    o.task = task;
    const st::TrainBatch tight = batch_at(c, task, 5, 3, 0);
    st::TrainBatch wide = tight;
    const int64_t B = tight.ids.dim(0), T = tight.ids.dim(1), W = T + 6;
    std::vector<int32_t> ids(size_t(B * W), int32_t(c.pad_token_id));
    std::vector<float> mask(size_t(B * W), 0.0f);
    for (int64_t b = 0; b < B; b++)
      for (int64_t j = 0; j < T; j++) {
        ids[size_t(b * W + j)] = tight.ids.ints()[b * T + j];
        mask[size_t(b * W + j)] = tight.mask.data()[b * T + j];
      }
    wide.ids = Tensor::from_ints(ids, {B, W});
    wide.mask = Tensor::from_vector(mask, {B, W});
    auto trainer = [&](float lr) {
      st::TrainOptions with = o;
      with.lr = lr;
      return st::SmartTrimTrainer(c, with, 5, 6);
    };
    check_same_steps(trainer, trainer, tight, wide, true);
  }
}

TEST_CASE("smarttrim train: the number of shards is an option the checkpoint keeps; 0 means one per thread") {
  const st::MeterConfig c = tiny_trim();
  st::TrainOptions o;
  CHECK(o.batch_shards == 0);
  st::SmartTrimTrainer t(c, o, 1, 2);
  CHECK(t.options().batch_shards == omp_get_max_threads());
  o.batch_shards = 3;
  const st::TrainOptions back = st::train_options_from_json(st::train_options_to_json(o), "test");
  CHECK(back.batch_shards == 3);
  nlohmann::json older = nlohmann::json::parse(st::train_options_to_json(o));
  older.erase("batch_shards");
  CHECK(st::train_options_from_json(older.dump(), "test").batch_shards == 1);  // runs from before shards were one
  o.batch_shards = -1;
  CHECK_THROWS_AS(st::SmartTrimTrainer(c, o, 1, 2), st::ArgumentError);
}

// --- training runs

TEST_CASE("smarttrim train: a short run on synthetic VQA meets its FLOPs target while the loss falls") {
  st::MeterConfig c = tiny_trim();
  c.dropout = 0;  // a short run learns faster without it
  st::TrainOptions o;
  o.task = st::Task::VQA;
  o.total_steps = 120;
  o.lr = 1e-3f;  // a model trained from scratch
  o.trimmer_lr_multiplier = 10;
  o.curriculum = {0.6, 0.5, true};
  st::SmartTrimTrainer trainer(c, o, 1, 101);
  std::vector<st::StepLog> logs;
  for (int64_t i = 0; i < o.total_steps; i++) logs.push_back(trainer.step(batch_at(c, st::Task::VQA, 16, 8, i)));

  const size_t k = 10, n = logs.size();
  double first = 0, last = 0, last_teacher = 0, ratio = 0, spread = 0;
  for (size_t i = 0; i < k; i++) {
    first += logs[i].task_loss / double(k);
    last += logs[n - 1 - i].task_loss / double(k);
    last_teacher += logs[n - 1 - i].teacher_loss / double(k);
    ratio += logs[n - 1 - i].ratio_mean / double(k);
    spread += logs[n - 1 - i].ratio_std / double(k);
  }
  std::string trace;
  for (size_t i : {size_t(0), size_t(30), size_t(60), n - 1}) {
    trace += '\n';
    trace += logs[i].line();
  }
  INFO(trace);
  INFO("task loss: first " << first << ", last " << last << "; FLOPs ratio at the end " << ratio << " (target 0.6)");
  CHECK(logs.front().target == 1.0);
  CHECK(logs.back().target == doctest::Approx(0.6));
  CHECK(std::fabs(ratio - 0.6) < 0.05);
  CHECK(last < 0.5 * first);
  // Predicting each answer's marginal frequency (1/8 for 0..4, 3/8 for no)
  // scores 5 H(1/8) + H(3/8) = 2.55 under METER's loss: below that, the
  // student uses the question.
  CHECK(last < 2.5);
  CHECK(last_teacher < 0.5 * first);
  CHECK(spread > 0.01);  // the constraint is on the mean: examples still differ
}

TEST_CASE("smarttrim train: a run repeats bit for bit from its seed, and resumes from a checkpoint bit for bit") {
  const st::MeterConfig c = tiny_trim();
  REQUIRE(c.dropout > 0);  // dropout and the Gumbel noise share each shard's Rng
  st::TrainOptions o;
  o.total_steps = 6;
  o.lr = 1e-3f;
  o.curriculum = {0.5, 0.5, true};
  o.batch_shards = 3;  // 4 examples: shards of 1, 1 and 2
  auto batch = [&](int64_t i) { return batch_at(c, st::Task::VQA, 4, 3, i); };

  st::SmartTrimTrainer a(c, o, 11, 12), b(c, o, 11, 12);
  std::vector<std::vector<double>> logs_a, logs_b;
  TempPath ckpt;
  for (int64_t i = 0; i < 3; i++) logs_a.push_back(numbers(a.step(batch(i))));
  a.save_checkpoint(ckpt.path);
  for (int64_t i = 3; i < 6; i++) logs_a.push_back(numbers(a.step(batch(i))));
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);  // the same shards, run one after another: the same run
  for (int64_t i = 0; i < 6; i++) logs_b.push_back(numbers(b.step(batch(i))));
  omp_set_num_threads(threads);
  CHECK(logs_a == logs_b);
  CHECK(parameter_values(a.model()) == parameter_values(b.model()));

  SUBCASE("from the checkpoint alone") {
    std::unique_ptr<st::SmartTrimTrainer> r = st::SmartTrimTrainer::from_checkpoint(ckpt.path);
    CHECK(r->step_count() == 3);
    CHECK(r->options().lr == o.lr);
    for (int64_t i = 3; i < 6; i++) CHECK(numbers(r->step(batch(i))) == logs_a[size_t(i)]);
    CHECK(parameter_values(r->model()) == parameter_values(a.model()));
    CHECK(r->rng().offset == a.rng().offset);
  }
  SUBCASE("into a trainer with other weights, another seed and other options") {
    st::TrainOptions other = o;
    other.lr = 5e-4f;
    other.curriculum.goal = 0.9;
    st::SmartTrimTrainer r(c, other, 99, 98);
    r.resume(ckpt.path);
    CHECK(r.step_count() == 3);
    CHECK(r.options().lr == o.lr);
    CHECK(r.options().curriculum.goal == 0.5);
    for (const st::ParamGroup& g : r.optimizer().groups())
      CHECK(g.lr == (g.name == "trimmers" ? o.lr * o.trimmer_lr_multiplier : o.lr));
    for (int64_t i = 3; i < 6; i++) CHECK(numbers(r.step(batch(i))) == logs_a[size_t(i)]);
    CHECK(parameter_values(r.model()) == parameter_values(a.model()));
  }
  SUBCASE("a model with another config is refused, and nothing changes") {
    st::MeterConfig wider = c;
    wider.trim.tau = 0.5f;
    st::SmartTrimTrainer r(wider, o, 99, 98);
    const auto before = parameter_values(r.model());
    CHECK_THROWS_AS(r.resume(ckpt.path), st::ArgumentError);
    CHECK(r.step_count() == 0);
    CHECK(parameter_values(r.model()) == before);
  }
}

TEST_CASE("smarttrim train: a model without trimmers trains at full capacity on L_task alone, and resumes") {
  st::MeterConfig c = tiny_trim();
  c.trim = st::TrimConfig{};  // no trimmers
  REQUIRE_FALSE(c.trim.enabled);
  c.dropout = 0;
  st::TrainOptions o;
  o.task = st::Task::VQA;
  o.total_steps = 80;
  o.lr = 1e-3f;
  o.batch_shards = 1;  // the whole batch in one pass (the test above runs shards)
  st::SmartTrimTrainer trainer(c, o, 1, 101);
  std::vector<st::StepLog> logs;
  TempPath ckpt;
  for (int64_t i = 0; i < o.total_steps; i++) {
    if (i == 40) trainer.save_checkpoint(ckpt.path);
    logs.push_back(trainer.step(batch_at(c, st::Task::VQA, 16, 8, i)));
    CHECK(logs.back().loss == logs.back().task_loss);  // nothing else in the objective
    CHECK(logs.back().teacher_loss == 0);
    CHECK(logs.back().ratio_mean == 1.0);
  }
  double first = 0, last = 0;
  for (size_t i = 0; i < 10; i++) first += logs[i].task_loss / 10, last += logs[logs.size() - 1 - i].task_loss / 10;
  INFO("task loss: first " << first << ", last " << last);
  CHECK(last < 0.5 * first);
  // the loss the step reports is METER's task loss of the same model on the same batch
  std::unique_ptr<st::SmartTrimTrainer> resumed = st::SmartTrimTrainer::from_checkpoint(ckpt.path);
  for (int64_t i = 40; i < o.total_steps; i++)
    CHECK(numbers(resumed->step(batch_at(c, st::Task::VQA, 16, 8, i))) == numbers(logs[size_t(i)]));
}
