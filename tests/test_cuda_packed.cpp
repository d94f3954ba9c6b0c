// Packed inference on the GPU (pruning/packed.cpp with the CUDA kernels)
// against the CPU: the row kernels it adds (segment means, column gathers
// and scatters) on random inputs of odd sizes, then whole passes of a
// trimmed meter-tiny: the same logits, the same kept tokens and heads, the
// same executed FLOPs per example, and agreement with the GPU's own masked
// training pass. Skipped where there is no GPU.
//
// Tolerances: the row kernels move or average a few values, 1e-6; whole
// passes with exact float32 GEMMs sum thousands of rounding differences, 1e-4
// as in tests/test_cuda.cpp. The trimmers are sharpened so that no decision
// sits near its threshold: the kept sets must be identical, not close.
#include <doctest/doctest.h>

#ifdef SMARTTRIM_CUDA

#include <algorithm>
#include <vector>

#include "cuda/runtime.h"
#include "engine/kernels.h"
#include "layers/meter.h"
#include "pruning/packed.h"
#include "tests/compare.h"
#include "tests/cuda_checks.h"
#include "tests/meter_batch.h"
#include "tests/packed_checks.h"

using st::Device;
using st::Tensor;
using st::testing::ExactMath;
using st::testing::kNoGpu;

namespace {

Tensor ints_on_gpu(const std::vector<int32_t>& v) {
  return Tensor::from_ints(v, {int64_t(v.size())}).to(Device::CUDA);
}

st::testing::MeterBatch on_gpu(const st::testing::MeterBatch& b) {
  st::testing::MeterBatch g = b;
  g.ids = b.ids.to(Device::CUDA), g.mask = b.mask.to(Device::CUDA);
  g.image = b.image.to(Device::CUDA), g.image2 = b.image2.to(Device::CUDA);
  return g;
}

}  // namespace

TEST_CASE("cuda: the packed path's row kernels (means, GELU-dots, gathers, scatters) match the CPU" *
          doctest::skip(kNoGpu)) {
  st::Rng rng(41);
  const int64_t d = 37, ld = 53, c0 = 9, cols = 29;
  // segments of 0, 1, 70 and 5 rows: an empty one, and one longer than a block of threads
  const std::vector<int32_t> at = {0, 0, 1, 71, 76};
  const int64_t B = 4, R = 76;
  Tensor x = Tensor::randn({R, d}, rng);
  std::vector<float> want(size_t(B * d));
  st::cpu::segment_mean_forward(want.data(), x.data(), at.data(), B, d);
  Tensor got = Tensor::empty({B, d}, st::DType::F32, Device::CUDA);
  Tensor gx = x.to(Device::CUDA);
  st::cuda::segment_mean_forward(got.data(), gx.data(), ints_on_gpu(at).ints(), B, d);
  CHECK(st::testing::relative_error(got.to(Device::CPU), Tensor::from_vector(want, {B, d})) < 1e-6);

  // rows of 37 (more than a warp's 32 lanes) and of 5 (fewer)
  for (int64_t n : {d, int64_t(5)}) {
    Tensor a = Tensor::randn({R, n}, rng), w = Tensor::randn({n}, rng), b = Tensor::randn({1}, rng);
    std::vector<float> dots(static_cast<size_t>(R));
    st::cpu::gelu_dot_rows(dots.data(), a.data(), w.data(), b.data(), R, int(n));
    Tensor gdots = Tensor::empty({R}, st::DType::F32, Device::CUDA);
    Tensor ga = a.to(Device::CUDA), gw = w.to(Device::CUDA), gb = b.to(Device::CUDA);
    st::cuda::gelu_dot_rows(gdots.data(), ga.data(), gw.data(), gb.data(), R, int(n));
    CHECK(st::testing::relative_error(gdots.to(Device::CPU), Tensor::from_vector(dots, {R})) < 1e-6);
  }

  const std::vector<int32_t> rows = {70, 2, 41, 0, 75, 13, 58};  // distinct, out of order
  const int64_t n = int64_t(rows.size());
  Tensor wide = Tensor::randn({R, ld}, rng), gwide = wide.to(Device::CUDA);
  Tensor grows = ints_on_gpu(rows);
  std::vector<float> taken(size_t(n * cols));
  st::cpu::gather_columns(taken.data(), wide.data(), ld, c0, rows.data(), n, cols);
  Tensor gtaken = Tensor::empty({n, cols}, st::DType::F32, Device::CUDA);
  st::cuda::gather_columns(gtaken.data(), gwide.data(), ld, c0, grows.ints(), n, cols);
  CHECK(st::testing::relative_error(gtaken.to(Device::CPU), Tensor::from_vector(taken, {n, cols})) == 0.0);

  Tensor src = Tensor::randn({n, cols}, rng), bias = Tensor::randn({cols}, rng);
  Tensor gsrc = src.to(Device::CUDA), gbias = bias.to(Device::CUDA);
  for (bool accumulate : {false, true})
    for (bool with_bias : {false, true}) {
      CAPTURE(accumulate);
      CAPTURE(with_bias);
      Tensor out = wide.clone(), gout = gwide.clone();
      st::cpu::scatter_columns(out.data(), ld, c0, src.data(), rows.data(), n, cols,
                               with_bias ? bias.data() : nullptr, 0.625f, accumulate);
      st::cuda::scatter_columns(gout.data(), ld, c0, gsrc.data(), grows.ints(), n, cols,
                                with_bias ? gbias.data() : nullptr, 0.625f, accumulate);
      CHECK(st::testing::relative_error(gout.to(Device::CPU), out) < 1e-6);
    }
}

TEST_CASE("cuda: packed inference gives the CPU's logits, kept tokens, heads and FLOPs" * doctest::skip(kNoGpu)) {
  ExactMath exact;
  st::MeterConfig c = st::load_meter_config("configs/meter-tiny-smarttrim.json");
  st::Meter cpu_model(c, 21), gpu_model(c, 21);
  st::testing::sharpen_trimmers(cpu_model, 2000.0f, 0.5f);
  st::testing::sharpen_trimmers(gpu_model, 2000.0f, 0.5f);
  st::move_parameters(gpu_model.params(), Device::CUDA);
  const st::testing::MeterBatch b = st::testing::make_meter_batch(c, {9, 4, 7, 9, 2, 6, 8}, 9, 5);
  const st::testing::MeterBatch g = on_gpu(b);
  st::PackedMeter cpu(cpu_model), gpu(gpu_model);
  st::PackedMeter::Options trimmed, full, top_k;
  full.trimmers = false;
  top_k.keep_ratio = 0.6f;
  for (const auto& [name, opt] : {std::pair{"trimmed", trimmed}, std::pair{"full capacity", full},
                                  std::pair{"top-k", top_k}})
    for (st::Task task : {st::Task::VQA, st::Task::NLVR2}) {
      INFO(name << (task == st::Task::NLVR2 ? ", NLVR2" : ", VQA"));
      const bool nlvr2 = task == st::Task::NLVR2;
      st::PackedOutput want = cpu.run(task, b.ids, b.mask, b.image, nlvr2 ? b.image2 : Tensor(), opt);
      st::PackedOutput got = gpu.run(task, g.ids, g.mask, g.image, nlvr2 ? g.image2 : Tensor(), opt);
      REQUIRE(got.logits.device() == Device::CUDA);
      CHECK(st::testing::relative_error(got.logits.to(Device::CPU), want.logits) < 1e-4);
      CHECK(st::testing::relative_error(got.cls.to(Device::CPU), want.cls) < 1e-4);
      CHECK(got.flops == want.flops);
      REQUIRE(got.counts.size() == want.counts.size());
      for (size_t i = 0; i < got.counts.size(); i++) st::testing::check_same_counts(got.counts[i], want.counts[i]);
      REQUIRE(got.kept.size() == want.kept.size());
      for (size_t i = 0; i < got.kept.size(); i++) CHECK(got.kept[i].positions == want.kept[i].positions);
    }
}

TEST_CASE("cuda: on the GPU the masked pass and the packed pass agree" * doctest::skip(kNoGpu)) {
  ExactMath exact;
  st::MeterConfig c = st::load_meter_config("configs/meter-tiny-smarttrim.json");
  st::Meter model(c, 21);  // the model and batch of the CPU's parity test (tests/test_packed.cpp): a ragged result
  st::testing::sharpen_trimmers(model, 2000.0f, 0.5f);
  st::move_parameters(model.params(), Device::CUDA);
  const st::testing::MeterBatch g = on_gpu(st::testing::make_meter_batch(c, {9, 4, 7, 9, 2}, 9, 5));
  st::NoGrad no_grad;
  st::Context eval;
  st::TrimOptions trim;  // noise off, theta 0
  st::MeterFeatures f = model.forward(g.ids, g.mask, g.image, eval, 1, &trim);
  st::PackedOutput got = st::PackedMeter(model).run(st::Task::VQA, g.ids, g.mask, g.image, {});
  CHECK(st::testing::relative_error(got.logits.to(Device::CPU), model.vqa_logits(f.cls).to(Device::CPU)) < 1e-4);
  std::vector<double> kept_image;
  for (int64_t e = 0; e < 5; e++) {
    st::PassCounts<double> n = st::counts_of_example(f.counts, e);
    st::testing::check_same_counts(got.counts[size_t(e)], n);
    kept_image.push_back(n.cross_image_tokens.front());
  }
  // the batch really is ragged: examples keep different numbers of image tokens
  CHECK(*std::min_element(kept_image.begin(), kept_image.end()) <
        *std::max_element(kept_image.begin(), kept_image.end()));
}

TEST_CASE("cuda: stage times on the GPU change nothing computed and add up" * doctest::skip(kNoGpu)) {
  st::MeterConfig c = st::load_meter_config("configs/meter-tiny-smarttrim.json");
  st::Meter model(c, 6);
  st::testing::sharpen_trimmers(model, 50.0f, 0.0f);
  st::move_parameters(model.params(), Device::CUDA);
  const st::testing::MeterBatch g = on_gpu(st::testing::make_meter_batch(c, {9, 4, 7}, 9, 5));
  st::NoGrad no_grad;
  const st::PackedMeter packed(model);
  st::StageTimes times;
  st::PackedMeter::Options timed;
  timed.stage_times = &times;
  const st::PackedOutput want = packed.run(st::Task::VQA, g.ids, g.mask, g.image, {});
  const st::PackedOutput got = packed.run(st::Task::VQA, g.ids, g.mask, g.image, timed);
  CHECK(st::testing::relative_error(got.logits.to(Device::CPU), want.logits.to(Device::CPU)) == 0);
  CHECK(got.flops == want.flops);
  REQUIRE(!times.seconds.empty());
  CHECK(times.seconds.front().first == "patch embedding");
  CHECK(times.seconds.back().first == "task head");
  for (const auto& [name, s] : times.seconds) CHECK(s >= 0.0);
  CHECK(times.total() > 0.0);
}

TEST_CASE("cuda: packed inference refuses inputs on another device than the model" * doctest::skip(kNoGpu)) {
  st::MeterConfig c = st::load_meter_config("configs/meter-tiny-smarttrim.json");
  st::Meter model(c, 3);
  st::move_parameters(model.params(), Device::CUDA);
  const st::testing::MeterBatch b = st::testing::make_meter_batch(c, {5, 4}, 6, 7);
  CHECK_THROWS_AS(st::PackedMeter(model).run(st::Task::VQA, b.ids, b.mask, b.image, {}), st::DeviceError);
}

#endif  // SMARTTRIM_CUDA
