// SmartTrim: trimmers, masks, the cost model, the curriculum. The packed
// inference path and training are in their own suites.
#include <doctest/doctest.h>

#include <cmath>

#include "engine/gemm.h"
#include "engine/rng.h"
#include "layers/meter.h"
#include "pruning/cost.h"
#include "pruning/curriculum.h"
#include "tests/compare.h"
#include "tests/meter_batch.h"

using st::Tensor;

namespace {

st::MeterConfig tiny_trim() { return st::load_meter_config("configs/meter-tiny-smarttrim.json"); }

// Sets the final bias of every token trimmer (and head trimmer) of a model to `bias`.
void bias_trimmers(st::Meter& m, float token_bias, float head_bias) {
  for (const auto& [name, t] : m.params().list) {
    if (name.rfind("smarttrim.", 0) != 0) continue;
    const bool token = name.find("_tokens.") != std::string::npos;
    if (token && name.find(".mlp2.bias") != std::string::npos) t->data()[0] = token_bias;
    if (!token && name.find(".fc2.bias") != std::string::npos)
      for (int64_t i = 0; i < t->numel(); i++) t->data()[i] = head_bias;
  }
}

}  // namespace

TEST_CASE("smarttrim: trimmers that keep everything change nothing") {
  st::MeterConfig c = tiny_trim();
  st::Meter model(c, 3);
  bias_trimmers(model, 100.0f, 100.0f);
  st::testing::MeterBatch b = st::testing::make_meter_batch(c, {9, 5, 7}, 9, 1);
  st::Context eval;
  st::TrimOptions trim;  // no noise
  st::MeterFeatures plain = model.forward(b.ids, b.mask, b.image, eval);
  st::MeterFeatures masked = model.forward(b.ids, b.mask, b.image, eval, 1, &trim);
  REQUIRE(masked.trimmed);
  CHECK(st::testing::relative_error(masked.cls, plain.cls) < 1e-5);
  CHECK(masked.image_keep.to_vector() == std::vector<float>(size_t(3 * c.image_tokens()), 1.0f));
  CHECK(masked.text_keep.to_vector() == b.mask.to_vector());  // padding stays dropped, nothing else
  // the full counts, and the cost model's FLOPs, with the trimmers' own work on top
  for (int i = 0; i < 3; i++) {
    st::PassCounts<double> full = st::full_counts(c, b.lengths[size_t(i)]);
    CHECK(masked.counts.image_out.to_vector()[size_t(i)] == full.image_out);
    CHECK(masked.counts.text_out.to_vector()[size_t(i)] == full.text_out);
  }
}

TEST_CASE("smarttrim: trimmers biased to drop keep the first token, and fewer tokens and heads") {
  st::MeterConfig c = tiny_trim();
  st::Meter model(c, 3);
  bias_trimmers(model, -100.0f, -100.0f);
  st::testing::MeterBatch b = st::testing::make_meter_batch(c, {9, 5, 7}, 9, 1);
  st::Context eval;
  st::TrimOptions trim;
  st::MeterFeatures f = model.forward(b.ids, b.mask, b.image, eval, 1, &trim);
  std::vector<float> kv = f.image_keep.to_vector(), kt = f.text_keep.to_vector();
  const int64_t n = c.image_tokens();
  for (int i = 0; i < 3; i++) {
    CHECK(kv[size_t(i * n)] == 1.0f);
    CHECK(kt[size_t(i * 9)] == 1.0f);
    float sum_v = 0, sum_t = 0;
    for (int64_t j = 0; j < n; j++) sum_v += kv[size_t(i * n + j)];
    for (int j = 0; j < 9; j++) sum_t += kt[size_t(i * 9 + j)];
    CHECK(sum_v == 1.0f);
    CHECK(sum_t == 1.0f);
  }
  for (const Tensor& z : f.head_keep_at)  // exactly one head (the arg-max) survives
    for (int i = 0; i < 3; i++) {
      float kept = 0;
      for (int h = 0; h < c.num_heads; h++) kept += z.to_vector()[size_t(i * c.num_heads + h)];
      CHECK(kept == 1.0f);
    }
}

TEST_CASE("smarttrim: the cost model equals the FLOPs the plain model's GEMMs execute") {
  // One example without padding: the plain forward runs exactly the work the
  // model counts (every token, every head), through the GEMM's own counter.
  for (const char* name : {"configs/meter-tiny.json", "configs/meter-tiny-smarttrim.json"}) {
    st::MeterConfig c = st::load_meter_config(name);
    st::Meter model(c, 1);
    st::testing::MeterBatch b = st::testing::make_meter_batch(c, {7}, 7, 2);
    st::Context eval;
    st::NoGrad no_grad;
    st::sgemm_reset_flops();
    st::MeterFeatures f = model.forward(b.ids, b.mask, b.image, eval);
    model.vqa_logits(f.cls);
    CHECK(double(st::sgemm_flops()) == st::full_flops(c, 7, st::Task::VQA));
    st::sgemm_reset_flops();
    model.nlvr2_forward(b.ids, b.mask, b.image, b.image, eval);
    CHECK(double(st::sgemm_flops()) == st::full_flops(c, 7, st::Task::NLVR2));
  }
}

TEST_CASE("smarttrim: the cost model by hand on a small configuration") {
  st::MeterConfig c = st::load_meter_config("configs/meter-tiny.json");
  // d 64, 4 heads (k 16), f 128; ViT W 48, 4 heads (k 12), f 192, patch 8, 16 patches + class;
  // text 40 wide, 4 heads (k 10), f 80; 2 layers everywhere.
  st::PassCounts<double> n = st::full_counts(c, 5);
  n.cross_image_tokens = {10, 6};
  n.cross_text_tokens = {5, 3};
  n.text_self_heads = {4, 2};
  n.text_cross_heads = {3, 1};
  n.image_self_heads = {4, 4};
  n.image_cross_heads = {2, 2};
  double want = 0;
  want += 2.0 * 16 * (3 * 8 * 8) * 48;                                   // patch embedding
  for (int l = 0; l < 2; l++) want += 8.0 * 48 * 12 * 17 * 4 + 4.0 * 12 * 17 * 17 * 4 + 4.0 * 17 * 48 * 192;  // ViT
  for (int l = 0; l < 2; l++) want += 8.0 * 40 * 10 * 5 * 4 + 4.0 * 10 * 5 * 5 * 4 + 4.0 * 5 * 40 * 80;       // text
  want += 2.0 * 5 * 40 * 64 + 2.0 * 17 * 48 * 64;                         // bridge
  auto msa = [](double tokens, double heads) { return 8.0 * 64 * 16 * tokens * heads + 4.0 * 16 * tokens * tokens * heads; };
  auto mca = [](double tokens, double other, double heads) {
    return 4.0 * 64 * 16 * tokens * heads + 4.0 * 64 * 16 * other * heads + 4.0 * 16 * tokens * other * heads;
  };
  want += msa(5, 4) + mca(5, 10, 3) + 4.0 * 5 * 64 * 128 + msa(10, 4) + mca(10, 5, 2) + 4.0 * 10 * 64 * 128;
  want += msa(3, 2) + mca(3, 6, 1) + 4.0 * 3 * 64 * 128 + msa(6, 4) + mca(6, 3, 2) + 4.0 * 6 * 64 * 128;
  want += 2 * 2.0 * 64 * 64;  // poolers
  CHECK(st::pass_flops(c, n, false) == want);
  // the Tensor version (what the cost loss uses) agrees
  st::PassCounts<Tensor> nt;
  auto one = [](double v) { return Tensor::from_vector({float(v)}, {1}); };
  for (double v : n.vit_tokens) nt.vit_tokens.push_back(one(v));
  for (double v : n.text_tokens) nt.text_tokens.push_back(one(v));
  nt.text_out = one(n.text_out), nt.image_out = one(n.image_out);
  for (size_t i = 0; i < 2; i++) {
    nt.cross_text_tokens.push_back(one(n.cross_text_tokens[i]));
    nt.cross_image_tokens.push_back(one(n.cross_image_tokens[i]));
    nt.text_self_heads.push_back(one(n.text_self_heads[i]));
    nt.text_cross_heads.push_back(one(n.text_cross_heads[i]));
    nt.image_self_heads.push_back(one(n.image_self_heads[i]));
    nt.image_cross_heads.push_back(one(n.image_cross_heads[i]));
  }
  CHECK(st::pass_flops(c, nt, false).item() == doctest::Approx(want).epsilon(1e-6));
}

TEST_CASE("smarttrim: the trimmers' own cost by hand") {
  // meter-tiny-smarttrim: a ViT token trimmer before layer 1 (d 48, d_t 12, c from the 40-wide text),
  // token trimmers in both streams before co-attention layers 0 and 1 (d 64, d_t 16), and head
  // trimmers on the four attention modules of both co-attention layers (hidden 16, 4 heads).
  st::MeterConfig c = st::load_meter_config("configs/meter-tiny-smarttrim.json");
  st::PassCounts<double> n = st::full_counts(c, 5);
  n.vit_scored = {17};
  n.cross_text_scored = {5, 3};
  n.cross_image_scored = {17, 9};
  // per scored row: local 2 d d_t, W_1 on h 2 d_t^2, w_2 2 d_t; per example: W_1 on g 2 d_t^2, and with
  // cross-modal guidance W_1 on u 2 d_t^2 and u itself 2 d_c d_t
  auto trimmers = [](bool guided) {
    auto token = [&](double rows, double d, double dt, double dc) {
      return rows * (2 * d * dt + 2 * dt * dt + 2 * dt) + 2 * dt * dt + (guided ? 2 * dt * dt + 2 * dc * dt : 0);
    };
    double total = token(17, 48, 12, 40);
    for (double rows : {5.0, 3.0, 17.0, 9.0}) total += token(rows, 64, 16, 64);
    return total + 2 * (2 * (2 * 64 * 16 + 2 * 16 * 4) + 2 * (2 * 128 * 16 + 2 * 16 * 4));  // MSA and MCA, both streams, 2 layers
  };
  CHECK(st::pass_flops(c, n, true) - st::pass_flops(c, n, false) == trimmers(true));
  c.trim.cross_modal_guidance = false;  // no u: W_1 reads [h ; g], and there is no W_x
  CHECK(st::pass_flops(c, n, true) - st::pass_flops(c, n, false) == trimmers(false));
}

TEST_CASE("smarttrim: curriculum values") {
  st::Curriculum cur{0.5, 0.5, true};
  CHECK(cur.target(0, 100) == 1.0);
  CHECK(cur.target(25, 100) == doctest::Approx(0.75));
  CHECK(cur.target(50, 100) == doctest::Approx(0.5));
  CHECK(cur.target(99, 100) == doctest::Approx(0.5));
  st::Curriculum third{1.0 / 3, 0.2, true};
  CHECK(third.target(10, 100) == doctest::Approx(1.0 - (2.0 / 3) * 0.5));
  st::Curriculum off{0.5, 0.5, false};
  CHECK(off.target(0, 100) == 0.5);
}

namespace {

// The soft relaxation the straight-through masks differentiate, with the same noise draws:
// y_i = sigmoid((s_i - theta + L_i) / tau), L_i = log U_i - log(1 - U_i), U_i = philox(seed, offset + i).
std::vector<double> soft_relaxation(const std::vector<double>& s, float tau, float theta, uint64_t seed,
                                    uint64_t offset) {
  std::vector<double> y(s.size());
  for (size_t i = 0; i < s.size(); i++) {
    const double u = st::philox_uniform(seed, offset + i);
    const double noise = std::log(u) - std::log1p(-u);
    y[i] = 1.0 / (1.0 + std::exp(-(s[i] - theta + noise) / tau));
  }
  return y;
}

}  // namespace

TEST_CASE("smarttrim: straight-through gradients of the token and head masks against the soft relaxation") {
  const int64_t b = 3, n = 7, h = 5;
  const float tau = 0.7f, theta = 0.3f;
  st::Rng data(11);
  Tensor keep = Tensor::ones({b, n});
  keep.data()[4] = 0, keep.data()[n + 2] = 0, keep.data()[2 * n + 6] = 0;  // tokens dropped earlier
  Tensor weights = Tensor::randn({b, n}, data);

  SUBCASE("token mask: keep * (hard * (1 - e0) + e0)") {
    Tensor logits = Tensor::randn({b, n}, data, 2.0f).set_requires_grad();
    st::Rng noise(5);
    st::sum_all(st::next_token_mask(keep, logits, tau, theta, &noise) * weights).backward();
    std::vector<float> grad = logits.grad().to_vector();
    // d/ds_i of sum_j w_j keep_j y_j(s) (first token fixed), by central differences in double
    auto loss = [&](const std::vector<double>& s) {
      std::vector<double> y = soft_relaxation(s, tau, theta, 5, 0);
      double total = 0;
      for (int64_t i = 0; i < b * n; i++)
        total += double(weights.data()[i]) * keep.data()[i] * (i % n == 0 ? 1.0 : y[size_t(i)]);
      return total;
    };
    std::vector<double> s(logits.data(), logits.data() + b * n);
    for (int64_t i = 0; i < b * n; i++) {
      const double eps = 1e-5;
      std::vector<double> up = s, down = s;
      up[size_t(i)] += eps, down[size_t(i)] -= eps;
      const double fd = (loss(up) - loss(down)) / (2 * eps);
      CHECK(grad[size_t(i)] == doctest::Approx(fd).epsilon(1e-4).scale(1e-3));
    }
  }
  SUBCASE("head mask: hard * (1 - top) + top, top the arg-max head") {
    Tensor logits = Tensor::randn({b, h}, data, 2.0f).set_requires_grad();
    Tensor w = Tensor::randn({b, h}, data);
    st::Rng noise(8);
    st::sum_all(st::head_mask(logits, tau, theta, &noise) * w).backward();
    std::vector<float> grad = logits.grad().to_vector();
    std::vector<double> s(logits.data(), logits.data() + b * h);
    std::vector<int64_t> top(static_cast<size_t>(b));
    for (int64_t r = 0; r < b; r++)
      top[size_t(r)] = std::max_element(s.begin() + r * h, s.begin() + (r + 1) * h) - (s.begin() + r * h);
    auto loss = [&](const std::vector<double>& x) {
      std::vector<double> y = soft_relaxation(x, tau, theta, 8, 0);
      double total = 0;
      for (int64_t i = 0; i < b * h; i++) total += double(w.data()[i]) * (i % h == top[size_t(i / h)] ? 1.0 : y[size_t(i)]);
      return total;
    };
    for (int64_t i = 0; i < b * h; i++) {
      const double eps = 1e-5;
      std::vector<double> up = s, down = s;
      up[size_t(i)] += eps, down[size_t(i)] -= eps;
      CHECK(grad[size_t(i)] == doctest::Approx((loss(up) - loss(down)) / (2 * eps)).epsilon(1e-4).scale(1e-3));
    }
  }
}

TEST_CASE("smarttrim: the task loss reaches every trimmer through the straight-through masks") {
  st::MeterConfig c = tiny_trim();
  st::Meter model(c, 4);
  st::testing::MeterBatch b = st::testing::make_meter_batch(c, {9, 6, 8}, 9, 3);
  st::Rng noise(2);
  st::TrimOptions trim;
  trim.noise = &noise;
  st::Context eval;
  st::MeterFeatures f = model.forward(b.ids, b.mask, b.image, eval, 1, &trim);
  st::cross_entropy(model.snli_logits(f.cls), Tensor::from_ints({0, 2, 1}, {3})).backward();
  for (const auto& [name, p] : model.params().list) {
    if (name.rfind("smarttrim.", 0) != 0 || name.find("bias") == std::string::npos) continue;
    INFO(name);
    REQUIRE(p->grad().defined());
    double norm = 0;
    for (float g : p->grad().to_vector()) norm += double(g) * g;
    CHECK(norm > 0);
  }
}
