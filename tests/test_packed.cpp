// Parity: the masked training pass (noise off) and the packed inference path
// compute the same logits, and the packed path's executed FLOPs equal the
// cost model's count for every example.
#include <doctest/doctest.h>

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "engine/kernels.h"
#include "engine/ops/head_projection.h"
#include "engine/ops/keep_logits.h"
#include "engine/ops/vec.h"
#include "layers/meter.h"
#include "pruning/packed.h"
#include "tests/compare.h"
#include "tests/meter_batch.h"
#include "tests/packed_checks.h"

using st::Tensor;

using st::testing::check_same_counts;
using st::testing::sharpen_trimmers;

TEST_CASE("packed: masked and packed passes agree, and the executed FLOPs equal the cost model, per example") {
  // The shipped placement, the plain model, and variants that exercise the
  // other code paths: text-encoder trimmers, trimmers without cross-modal
  // guidance, and co-attention heads of 40 columns, past the row-by-row head
  // projections' sizes (engine/ops/head_projection.h), so one GEMM per head;
  // and a model too large to have its weights laid out once (packed.h) whose
  // heads still fit the row-by-row projections, which then lay out the
  // weights they read at each call.
  st::MeterConfig shipped = st::load_meter_config("configs/meter-tiny-smarttrim.json");
  st::MeterConfig text_trimmers = shipped, unguided = shipped, wide_heads = shipped, not_small = shipped;
  text_trimmers.trim.text_token_layers = {1};
  unguided.trim.cross_modal_guidance = false;
  wide_heads.hidden_size = 80, wide_heads.num_heads = 2;
  not_small.hidden_size = 128, not_small.num_heads = 8, not_small.ffn_size = 2048, not_small.vit_image_size = 64;
  REQUIRE(st::cpu::head_projection_fits(shipped.hidden_size, shipped.hidden_size / shipped.num_heads,
                                        shipped.hidden_size));
  REQUIRE_FALSE(st::cpu::head_projection_fits(80, 40, 80));
  const std::vector<std::pair<const char*, st::MeterConfig>> configs = {
      {"meter-tiny-smarttrim", shipped},
      {"meter-tiny", st::load_meter_config("configs/meter-tiny.json")},
      {"with text-encoder trimmers", text_trimmers},
      {"without cross-modal guidance", unguided},
      {"with heads of 40 columns", wide_heads},
      {"too large to lay out its weights once", not_small}};
  for (const auto& [name, c] : configs) {
    INFO(name);
    st::Meter model(c, 21);
    sharpen_trimmers(model, 2000.0f, 0.5f);
    st::testing::MeterBatch b = st::testing::make_meter_batch(c, {9, 4, 7, 9, 2}, 9, 5);
    st::Context eval;
    st::TrimOptions trim;  // noise off, theta 0
    st::NoGrad no_grad;
    st::PackedMeter packed(model);
    CHECK(packed.weights_prepared() == (name != std::string("too large to lay out its weights once")));
    if (!packed.weights_prepared())
      REQUIRE(st::cpu::head_projection_fits(c.hidden_size, c.hidden_size / c.num_heads, c.hidden_size));
    for (st::Task task : {st::Task::VQA, st::Task::NLVR2}) {
      const bool nlvr2 = task == st::Task::NLVR2;
      st::MeterFeatures f1 = model.forward(b.ids, b.mask, b.image, eval, 1, &trim);
      Tensor want;
      std::vector<st::MeterFeatures> passes = {f1};
      if (nlvr2) {
        passes.push_back(model.forward(b.ids, b.mask, b.image2, eval, 2, &trim));
        want = model.nlvr2_logits(f1.cls, passes[1].cls);
      } else {
        want = model.vqa_logits(f1.cls);
      }
      st::PackedOutput got = packed.run(task, b.ids, b.mask, b.image, nlvr2 ? b.image2 : Tensor(), {});
      CHECK(st::testing::relative_error(got.logits, want) < 1e-5);
      CHECK(st::testing::relative_error(got.cls, f1.cls) < 1e-5);
      if (!c.trim.enabled) continue;
      // every example's executed FLOPs are the cost model's count of what it kept
      std::vector<double> kept_image;
      for (int64_t e = 0; e < 5; e++) {
        double model_flops = st::head_flops(c, task);
        for (size_t p = 0; p < passes.size(); p++) {
          st::PassCounts<double> n = st::counts_of_example(passes[p].counts, e);
          check_same_counts(got.counts[p * 5 + size_t(e)], n);
          model_flops += st::pass_flops(c, n, true);
        }
        CHECK(got.flops[size_t(e)] == model_flops);
        kept_image.push_back(got.counts[size_t(e)].cross_image_tokens.front());
      }
      if (c.trim.has_head_trimmers()) {  // the head trimmers did drop some heads: the masked projections ran
        double heads_dropped = 0;
        for (int64_t e = 0; e < 5; e++)
          for (const auto* heads : {&got.counts[size_t(e)].text_self_heads, &got.counts[size_t(e)].image_cross_heads})
            for (double kept : *heads) heads_dropped += c.num_heads - kept;
        CHECK(heads_dropped > 0);
      }
      if (!c.trim.text_token_layers.empty()) {  // the text trimmer did drop something
        double text_dropped = 0;
        for (int64_t e = 0; e < 5; e++)
          text_dropped += got.counts[size_t(e)].text_scored[0] - got.counts[size_t(e)].text_tokens.back();
        CHECK(text_dropped > 0);
      }
      // the kept positions it reports are the masked pass's keep masks at the same layers
      for (size_t p = 0; p < passes.size(); p++)
        for (size_t i = 0; i < got.kept.size() / passes.size(); i++) {
          const st::KeptTokens& k = got.kept[p * (got.kept.size() / passes.size()) + i];
          const bool image = k.stream == "vit" || k.stream == "cross-image";
          const size_t at = size_t(k.layer) + (k.stream.rfind("cross", 0) == 0 ? size_t(image ? c.vit_layers : c.text_layers) : 0);
          const Tensor mask = image ? passes[p].image_keep_at.at(at) : passes[p].text_keep_at.at(at);
          for (int64_t e = 0; e < 5; e++) {
            std::vector<int32_t> want_positions;
            for (int64_t j = 0; j < mask.dim(1); j++)
              if (mask.data()[e * mask.dim(1) + j] != 0.0f) want_positions.push_back(int32_t(j));
            CHECK(k.positions.at(size_t(e)) == want_positions);
          }
        }
      // the batch really is ragged: examples keep different numbers of image tokens
      CHECK(*std::min_element(kept_image.begin(), kept_image.end()) <
            *std::max_element(kept_image.begin(), kept_image.end()));
    }
  }
}

TEST_CASE("packed: with its trimmers off a trimmed model runs at full capacity, and pays only for real tokens") {
  st::MeterConfig c = st::load_meter_config("configs/meter-tiny-smarttrim.json");
  st::Meter model(c, 8);
  st::testing::MeterBatch b = st::testing::make_meter_batch(c, {9, 3, 6}, 9, 2);
  st::Context eval;
  st::NoGrad no_grad;
  st::PackedMeter::Options full;
  full.trimmers = false;
  st::PackedOutput got = st::PackedMeter(model).run(st::Task::SNLI, b.ids, b.mask, b.image, full);
  CHECK(st::testing::relative_error(got.logits, model.snli_logits(model.forward(b.ids, b.mask, b.image, eval).cls)) < 1e-5);
  const int lengths[] = {9, 3, 6};
  for (int e = 0; e < 3; e++) CHECK(got.flops[size_t(e)] == st::full_flops(c, lengths[e], st::Task::SNLI));
}

TEST_CASE("packed: trimmers that keep nothing they may drop execute the cost model's lowest ratio") {
  // theta = +huge: every token trimmer keeps only the first token and every
  // head trimmer its one best head, which is what fewest_counts assumes.
  st::MeterConfig c = st::load_meter_config("configs/meter-tiny-smarttrim.json");
  c.trim.text_token_layers = {1};
  st::Meter model(c, 17);
  const std::vector<int> lengths = {9, 4, 7, 2};
  st::testing::MeterBatch b = st::testing::make_meter_batch(c, lengths, 9, 4);
  st::NoGrad no_grad;
  st::PackedMeter::Options fewest;
  fewest.token_threshold = fewest.head_threshold = 1e30f;
  for (st::Task task : {st::Task::VQA, st::Task::NLVR2}) {
    const bool nlvr2 = task == st::Task::NLVR2;
    st::PackedOutput got = st::PackedMeter(model).run(task, b.ids, b.mask, b.image, nlvr2 ? b.image2 : Tensor(), fewest);
    for (size_t e = 0; e < lengths.size(); e++) {
      check_same_counts(got.counts[e], st::fewest_counts(c, lengths[e]));
      const double ratio = got.flops[e] / st::full_flops(c, lengths[e], task);
      CHECK(ratio == doctest::Approx(st::lowest_flops_ratio(c, lengths[e], task)).epsilon(1e-12));
      CHECK(ratio < 0.5);  // meter-tiny's trimmers sit early enough to cut most of the work
    }
  }
}

TEST_CASE("packed: the fixed-ratio top-k baseline keeps ceil(ratio * n) tokens of every example and every head") {
  st::MeterConfig c = st::load_meter_config("configs/meter-tiny-smarttrim.json");
  st::Meter model(c, 13);
  st::testing::MeterBatch b = st::testing::make_meter_batch(c, {9, 3, 6, 8}, 9, 3);
  st::PackedMeter::Options topk;
  topk.keep_ratio = 0.4f;
  st::PackedOutput got = st::PackedMeter(model).run(st::Task::VQA, b.ids, b.mask, b.image, topk);
  REQUIRE(!got.kept.empty());
  for (int64_t e = 0; e < 4; e++) {
    const st::PassCounts<double>& n = got.counts[size_t(e)];
    CHECK(n.vit_tokens[1] == std::ceil(0.4 * n.vit_scored[0]));
    for (size_t l = 0; l < n.cross_image_scored.size(); l++) {
      CHECK(n.cross_image_tokens[l] == std::ceil(0.4 * n.cross_image_scored[l]));
      CHECK(n.cross_text_tokens[l] == std::ceil(0.4 * n.cross_text_scored[l]));
      CHECK(n.text_self_heads[l] == c.num_heads);
      CHECK(n.image_cross_heads[l] == c.num_heads);
    }
    for (const st::KeptTokens& k : got.kept) CHECK(k.positions.at(size_t(e)).front() == 0);  // the class token stays
  }
  // the survivors are the highest-scoring tokens: a higher ratio keeps a superset at the first trimmer
  topk.keep_ratio = 0.7f;
  st::PackedOutput more = st::PackedMeter(model).run(st::Task::VQA, b.ids, b.mask, b.image, topk);
  for (int64_t e = 0; e < 4; e++)
    CHECK(std::includes(more.kept[0].positions[size_t(e)].begin(), more.kept[0].positions[size_t(e)].end(),
                        got.kept[0].positions[size_t(e)].begin(), got.kept[0].positions[size_t(e)].end()));
}

TEST_CASE("packed: a batch split by examples across threads gives what one pass over it gives") {
  // 9 ragged examples with 2 or 3 threads: PackedMeter hands each thread a
  // share of the examples; with one thread it runs one pass over the batch.
  st::MeterConfig c = st::load_meter_config("configs/meter-tiny-smarttrim.json");
  st::Meter model(c, 5);
  sharpen_trimmers(model, 50.0f, 0.0f);
  const std::vector<int> lengths{12, 3, 7, 12, 5, 9, 4, 11, 6};
  st::testing::MeterBatch b = st::testing::make_meter_batch(c, lengths, 12, 4);
  st::Rng rng(9);
  const Tensor image2 = Tensor::randn(b.image.shape(), rng);
  st::NoGrad no_grad;
  const st::PackedMeter packed(model);
  const int threads = omp_get_max_threads();
  for (st::Task task : {st::Task::VQA, st::Task::NLVR2}) {
    omp_set_num_threads(1);
    const st::PackedOutput one = packed.run(task, b.ids, b.mask, b.image, image2, {});
    for (int split : {2, 3}) {
      omp_set_num_threads(split);
      const st::PackedOutput got = packed.run(task, b.ids, b.mask, b.image, image2, {});
      CHECK(st::testing::relative_error(got.logits, one.logits) < 1e-6);
      CHECK(got.flops == one.flops);
      REQUIRE(got.counts.size() == one.counts.size());
      for (size_t i = 0; i < one.counts.size(); i++) check_same_counts(got.counts[i], one.counts[i]);
      REQUIRE(got.kept.size() == one.kept.size());
      for (size_t i = 0; i < one.kept.size(); i++) CHECK(got.kept[i].positions == one.kept[i].positions);
    }
  }
  omp_set_num_threads(threads);
}

TEST_CASE("packed: NLVR2 without a fitting second image batch, or on a model without its head, is refused") {
  st::MeterConfig c = st::load_meter_config("configs/meter-tiny-smarttrim.json");
  st::Meter model(c, 4);
  st::testing::MeterBatch b = st::testing::make_meter_batch(c, {5, 3}, 6, 2);
  const st::PackedMeter packed(model);
  CHECK_THROWS_AS(packed.run(st::Task::NLVR2, b.ids, b.mask, b.image, {}), st::ShapeError);
  st::Rng rng(2);
  const Tensor smaller = Tensor::randn({2, 3, c.vit_image_size / 2, c.vit_image_size / 2}, rng);
  CHECK_THROWS_AS(packed.run(st::Task::NLVR2, b.ids, b.mask, b.image, smaller, {}), st::ShapeError);
  c.nlvr2 = false;
  st::Meter no_head(c, 4);
  CHECK_THROWS_AS(st::PackedMeter(no_head).run(st::Task::NLVR2, b.ids, b.mask, b.image, b.image2, {}), st::ArgumentError);
}

TEST_CASE("packed: stage times name every stage of the pass once, in order, and change nothing computed") {
  st::MeterConfig c = st::load_meter_config("configs/meter-tiny-smarttrim.json");
  st::Meter model(c, 6);
  sharpen_trimmers(model, 50.0f, 0.0f);
  st::testing::MeterBatch b = st::testing::make_meter_batch(c, {9, 4, 7, 9, 2, 6}, 9, 5);
  st::NoGrad no_grad;
  const st::PackedMeter packed(model);
  auto names = [](const st::StageTimes& t) {
    std::vector<std::string> out;
    for (const auto& [name, s] : t.seconds) out.push_back(name);
    return out;
  };
  const std::vector<std::string> trimmed = {
      "patch embedding", "text embeddings", "text layer 0", "text layer 1", "ViT embeddings", "ViT block 0",
      "ViT token trimmer 1", "ViT block 1", "bridge", "co-attention token trimmers 0", "head trimmers 0",
      "co-attention layer 0", "co-attention token trimmers 1", "head trimmers 1", "co-attention layer 1",
      "poolers", "task head"};
  const int threads = omp_get_max_threads();
  for (int split : {1, 2}) {  // one pass, and the batch split by examples across two threads
    INFO("threads " << split);
    omp_set_num_threads(split);
    for (bool trimmers : {true, false}) {
      for (st::Task task : {st::Task::VQA, st::Task::NLVR2}) {
        const bool nlvr2 = task == st::Task::NLVR2;
        st::PackedMeter::Options plain;
        plain.trimmers = trimmers;
        st::PackedMeter::Options timed = plain;
        st::StageTimes times;
        timed.stage_times = &times;
        const Tensor image2 = nlvr2 ? b.image2 : Tensor();
        const st::PackedOutput want = packed.run(task, b.ids, b.mask, b.image, image2, plain);
        const st::PackedOutput got = packed.run(task, b.ids, b.mask, b.image, image2, timed);
        CHECK(st::testing::relative_error(got.logits, want.logits) == 0);
        CHECK(got.flops == want.flops);
        std::vector<std::string> expected;
        for (const std::string& name : trimmed)
          if (trimmers || name.find("trimmer") == std::string::npos) expected.push_back(name);
        CHECK(names(times) == expected);
        for (const auto& [name, s] : times.seconds) CHECK(times.of(name) == s);
        for (const auto& [name, s] : times.seconds) CHECK(s >= 0.0);
        CHECK(times.of("no such stage") == 0.0);
        const double once = times.total();
        CHECK(once > 0.0);
        packed.run(task, b.ids, b.mask, b.image, image2, timed);  // a second run adds to the same stages
        CHECK(names(times) == expected);
        CHECK(times.total() > once);
      }
    }
  }
  omp_set_num_threads(threads);
}

TEST_CASE("packed: the keep-logit kernel against the token trimmer's own forward, 1 to 4 vectors wide") {
  // Examples of unequal lengths, one of them without rows (the kernel's
  // business; the packed path always keeps a first token), and enough rows
  // for whole blocks of rows and leftovers. The trimmer's own forward reads
  // them padded to N with a mask.
  const std::vector<int64_t> lengths = {1, 11, 0, 23, 9};
  const int64_t B = int64_t(lengths.size()), N = 23, d = 37, d_c = 29;
  const int L = st::cpu::kLanes;
  for (int d_t : {5, L + 3, 3 * L - 1, 4 * L})
    for (bool cross_modal : {true, false}) {
      CAPTURE(d_t);
      CAPTURE(cross_modal);
      st::Rng rng(uint64_t(100 + d_t));
      st::TokenTrimmer tr(int(d), int(d_c), d_t, cross_modal, rng);
      tr.ln_x.weight = Tensor::randn({d}, rng), tr.ln_x.bias = Tensor::randn({d}, rng);  // not 1 and 0
      if (cross_modal) tr.ln_c.weight = Tensor::randn({d_c}, rng), tr.ln_c.bias = Tensor::randn({d_c}, rng);
      tr.ln_x.eps = 1e-3f, tr.ln_c.eps = 1e-4f;

      Tensor x = Tensor::randn({B, N, d}, rng), c = Tensor::randn({B, d_c}, rng);
      std::vector<float> mask(size_t(B * N), 0.0f), packed;
      std::vector<int32_t> at = {0};
      for (int64_t b = 0; b < B; b++) {
        for (int64_t i = 0; i < lengths[size_t(b)]; i++) {
          mask[size_t(b * N + i)] = 1.0f;
          packed.insert(packed.end(), x.data() + (b * N + i) * d, x.data() + (b * N + i + 1) * d);
        }
        at.push_back(at.back() + int32_t(lengths[size_t(b)]));
      }
      st::NoGrad no_grad;
      const Tensor want = tr.logits(x, Tensor::from_vector(mask, {B, N}), c);  // (B, N)

      st::cpu::TokenTrimmerParams p;
      p.d = int(d), p.d_c = int(d_c), p.d_t = d_t, p.cross_modal = cross_modal;
      p.ln_x_weight = tr.ln_x.weight.data(), p.ln_x_bias = tr.ln_x.bias.data(), p.ln_x_eps = tr.ln_x.eps;
      p.ln_c_weight = tr.ln_c.weight.data(), p.ln_c_bias = tr.ln_c.bias.data(), p.ln_c_eps = tr.ln_c.eps;
      p.local_weight = tr.local.weight.data(), p.local_bias = tr.local.bias.data();
      p.cross_weight = tr.cross.weight.data(), p.cross_bias = tr.cross.bias.data();
      p.mlp1_weight = tr.mlp1.weight.data(), p.mlp1_bias = tr.mlp1.bias.data();
      p.mlp2_weight = tr.mlp2.weight.data(), p.mlp2_bias = tr.mlp2.bias.data();
      REQUIRE(st::cpu::keep_logits_fit(d_t));
      const st::cpu::TokenTrimmerWeights w = st::cpu::token_trimmer_weights(p);
      std::vector<float> got(size_t(at.back()), NAN);
      st::cpu::keep_logits(got.data(), packed.data(), at.data(), int(B), c.data(), w);

      std::vector<float> want_packed;
      for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < lengths[size_t(b)]; i++) want_packed.push_back(want.data()[b * N + i]);
      const int64_t R = int64_t(got.size());
      CHECK(st::testing::relative_error(Tensor::from_vector(got, {R}), Tensor::from_vector(want_packed, {R})) < 1e-5);
    }
  CHECK_FALSE(st::cpu::keep_logits_fit(4 * L + 1));
  st::cpu::TokenTrimmerParams too_wide;
  too_wide.d_t = 4 * L + 1;
  CHECK_THROWS_AS(st::cpu::token_trimmer_weights(too_wide), st::ArgumentError);
}

TEST_CASE("packed: the head-logit kernel against the head trimmer's own forward, MSA and MCA") {
  const int64_t B = 13, d = 19;  // a block of rows and leftovers
  const int L = st::cpu::kLanes;
  for (int hidden : {3, L + 1, 4 * L})
    for (int heads : {1, 5, L})
      for (bool cross : {false, true}) {
        CAPTURE(hidden);
        CAPTURE(heads);
        CAPTURE(cross);
        st::Rng rng(uint64_t(7 * hidden + heads));
        const int q_width = int(cross ? 2 * d : d);
        st::HeadTrimmer tr(q_width, hidden, heads, rng);
        tr.ln.weight = Tensor::randn({q_width}, rng), tr.ln.bias = Tensor::randn({q_width}, rng), tr.ln.eps = 1e-3f;
        Tensor x = Tensor::randn({B, 1, d}, rng), y = Tensor::randn({B, 1, d}, rng), one = Tensor::ones({B, 1});
        st::NoGrad no_grad;
        const Tensor want = cross ? tr.logits(x, one, y, one) : tr.logits(x, one);  // (B, H); the means of one row
        const Tensor q = cross ? st::concat({st::reshape(x, {B, d}), st::reshape(y, {B, d})}, -1) : st::reshape(x, {B, d});

        st::cpu::HeadTrimmerParams p;
        p.q_width = q_width, p.hidden = hidden, p.heads = heads;
        p.ln_weight = tr.ln.weight.data(), p.ln_bias = tr.ln.bias.data(), p.ln_eps = tr.ln.eps;
        p.fc1_weight = tr.fc1.weight.data(), p.fc1_bias = tr.fc1.bias.data();
        p.fc2_weight = tr.fc2.weight.data(), p.fc2_bias = tr.fc2.bias.data();
        REQUIRE(st::cpu::head_logits_fit(hidden, heads));
        Tensor got = Tensor::full({B, heads}, NAN);
        st::cpu::head_logits(got.data(), q.data(), int(B), st::cpu::head_trimmer_weights(p));
        CHECK(st::testing::relative_error(got, want) < 1e-5);
      }
  CHECK_FALSE(st::cpu::head_logits_fit(4 * L + 1, 4));
  CHECK_FALSE(st::cpu::head_logits_fit(16, L + 1));
  st::cpu::HeadTrimmerParams too_many;
  too_many.hidden = 8, too_many.heads = L + 1;
  CHECK_THROWS_AS(st::cpu::head_trimmer_weights(too_many), st::ArgumentError);
}

TEST_CASE("packed: the row kernels (segment means, GELU-dots, column gathers and scatters) against plain loops") {
  st::Rng rng(31);
  const int64_t d = 13, ld = 23, c0 = 5, cols = 11;
  const std::vector<int32_t> at = {0, 3, 3, 10, 17};  // four examples, the second without rows
  Tensor x = Tensor::randn({17, d}, rng);
  std::vector<float> mean(4 * d);
  st::cpu::segment_mean_forward(mean.data(), x.data(), at.data(), 4, d);
  for (int64_t b = 0; b < 4; b++)
    for (int64_t j = 0; j < d; j++) {
      double want = 0;
      for (int64_t r = at[size_t(b)]; r < at[size_t(b + 1)]; r++) want += x.data()[r * d + j];
      if (at[size_t(b + 1)] > at[size_t(b)]) want /= double(at[size_t(b + 1)] - at[size_t(b)]);
      CHECK(std::fabs(mean[size_t(b * d + j)] - want) < 1e-5);
    }

  // b + w . gelu(a[r]) in float64, for a (rows, n)
  auto gelu_dot = [](const Tensor& a, const Tensor& w, const Tensor& b, int64_t r, int64_t n) {
    double sum = b.data()[0];
    for (int64_t j = 0; j < n; j++) {
      const double v = a.data()[r * n + j];
      sum += w.data()[j] * 0.5 * v * (1 + std::erf(v / std::sqrt(2.0)));
    }
    return sum;
  };
  std::vector<float> dots(17);
  Tensor w = Tensor::randn({d}, rng), b = Tensor::randn({1}, rng);
  st::cpu::gelu_dot_rows(dots.data(), x.data(), w.data(), b.data(), 17, int(d));
  for (int64_t r = 0; r < 17; r++) CHECK(dots[size_t(r)] == doctest::Approx(gelu_dot(x, w, b, r, d)).epsilon(1e-5));
  {  // enough rows for the threads to share them
    const int64_t rows = 4099, n = 19;
    Tensor a = Tensor::randn({rows, n}, rng), wn = Tensor::randn({n}, rng);
    std::vector<float> got(static_cast<size_t>(rows));
    st::cpu::gelu_dot_rows(got.data(), a.data(), wn.data(), b.data(), rows, int(n));
    double worst = 0;
    for (int64_t r = 0; r < rows; r++) worst = std::max(worst, std::fabs(got[size_t(r)] - gelu_dot(a, wn, b, r, n)));
    CHECK(worst < 1e-4);
  }

  const std::vector<int32_t> rows = {8, 0, 15, 3, 11};  // distinct, out of order
  const int64_t n = int64_t(rows.size());
  Tensor wide = Tensor::randn({17, ld}, rng);
  std::vector<float> taken(size_t(n * cols));
  st::cpu::gather_columns(taken.data(), wide.data(), ld, c0, rows.data(), n, cols);
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = 0; j < cols; j++) CHECK(taken[size_t(i * cols + j)] == wide.data()[rows[size_t(i)] * ld + c0 + j]);

  Tensor src = Tensor::randn({n, cols}, rng), bias = Tensor::randn({cols}, rng);
  for (bool accumulate : {false, true})
    for (bool with_bias : {false, true}) {
      CAPTURE(accumulate);
      CAPTURE(with_bias);
      Tensor out = wide.clone();
      st::cpu::scatter_columns(out.data(), ld, c0, src.data(), rows.data(), n, cols,
                               with_bias ? bias.data() : nullptr, 0.75f, accumulate);
      for (int64_t r = 0; r < 17; r++)
        for (int64_t j = 0; j < ld; j++) {
          const auto hit = std::find(rows.begin(), rows.end(), int32_t(r));
          float want = wide.data()[r * ld + j];
          if (hit != rows.end() && j >= c0 && j < c0 + cols) {
            const int64_t i = hit - rows.begin();
            const float value = (src.data()[i * cols + j - c0] + (with_bias ? bias.data()[j - c0] : 0.0f)) * 0.75f;
            want = accumulate ? want + value : value;
          }
          CHECK(out.data()[r * ld + j] == doctest::Approx(want).epsilon(1e-6));
        }
    }
}
