// The CUDA packed attention (cuda/packed_attention.cu) against the CPU
// kernel (engine/ops/packed_attention.cpp) on random inputs of odd sizes:
// segments shorter than, equal to and longer than the kernel's 64-row tiles,
// self- and cross-attention, head masks, examples without keys or without
// queries, and every head_dim the kernel compiles for (plus two that are not
// a tile width). Skipped where there is no GPU.
#include <doctest/doctest.h>

#ifdef SMARTTRIM_CUDA

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "cuda/runtime.h"
#include "engine/kernels.h"
#include "engine/tensor.h"

using st::Device;
using st::Tensor;

namespace {

constexpr float kSentinel = 12345.0f;  // ctx before the call: dropped heads must keep it

struct Problem {
  std::vector<int> q_rows, k_rows;  // per example
  int H = 3, head_dim = 16;
  bool mask = false;  // drop some heads per example
};

std::vector<int32_t> offsets(const std::vector<int>& rows) {
  std::vector<int32_t> at(rows.size() + 1, 0);
  for (size_t b = 0; b < rows.size(); b++) at[b + 1] = at[b] + rows[b];
  return at;
}

// Runs both kernels on the same random inputs and checks the outputs.
//
// Tolerance: every ctx entry is a convex combination of entries of v
// (|v| up to about 4), so rounding errors scale with the output's overall
// magnitude, not with the entry itself; we take max |gpu - cpu| over the
// kept columns divided by max(1, max |cpu|), the floor 1 keeping entries
// near zero from inflating it. Both devices compute in float32 and differ
// only in summation order (64-key tiles with online rescaling against a full
// softmax, and a different GEMM), which is a few 1e-7 here; 1e-5 leaves a
// tenfold margin, while a wrong row, head or rescale is off by ~0.1.
void check_problem(const Problem& p, uint64_t seed) {
  const int B = int(p.q_rows.size()), H = p.H, hd = p.head_dim, d = H * hd;
  const std::vector<int32_t> q_at = offsets(p.q_rows), k_at = offsets(p.k_rows);
  const int64_t Tq = q_at[size_t(B)], Tk = k_at[size_t(B)];
  st::Rng rng(seed);
  // q as the model gives it, scaled by 1/sqrt(head_dim); the factor 2 makes
  // the scores spread about 2, so the softmax is neither flat nor one-hot.
  Tensor q = Tensor::randn({Tq, d}, rng, 2.0f / std::sqrt(float(hd)));
  Tensor k = Tensor::randn({Tk, d}, rng), v = Tensor::randn({Tk, d}, rng);

  std::vector<float> keep(size_t(B) * H, 1.0f);
  if (p.mask)
    for (int b = 0; b < B; b++)
      for (int h = 0; h < H; h++) keep[size_t(b) * H + h] = rng.uniform() < 0.6f ? 1.0f : 0.0f;
  if (p.mask && B >= 2) {  // one example keeps every head, one drops them all
    std::fill_n(keep.begin(), H, 1.0f);
    std::fill_n(keep.begin() + H, H, 0.0f);
  }
  auto kept = [&](int b, int h) { return keep[size_t(b) * H + h] != 0.0f; };
  // The packed path leaves a dropped head's q, k and v columns unwritten:
  // NaN there checks that neither kernel reads them.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++) {
      if (kept(b, h)) continue;
      for (int r = q_at[size_t(b)]; r < q_at[size_t(b) + 1]; r++) std::fill_n(q.data() + int64_t(r) * d + h * hd, hd, nan);
      for (int r = k_at[size_t(b)]; r < k_at[size_t(b) + 1]; r++) {
        std::fill_n(k.data() + int64_t(r) * d + h * hd, hd, nan);
        std::fill_n(v.data() + int64_t(r) * d + h * hd, hd, nan);
      }
    }

  std::vector<float> cpu(size_t(Tq * d), kSentinel);
  st::cpu::packed_attention_forward(cpu.data(), q.data(), k.data(), v.data(), q_at.data(), k_at.data(),
                                    p.mask ? keep.data() : nullptr, B, H, hd);

  Tensor gq = q.to(Device::CUDA), gk = k.to(Device::CUDA), gv = v.to(Device::CUDA);
  Tensor gq_at = Tensor::from_ints(q_at, {B + 1}).to(Device::CUDA);
  Tensor gk_at = Tensor::from_ints(k_at, {B + 1}).to(Device::CUDA);
  Tensor gkeep = Tensor::from_vector(keep, {B, H}).to(Device::CUDA);
  Tensor gctx = Tensor::full({Tq, d}, kSentinel, Device::CUDA);
  st::cuda::packed_attention_forward(gctx.data(), gq.data(), gk.data(), gv.data(), gq_at.ints(), gk_at.ints(),
                                     p.mask ? gkeep.data() : nullptr, B, H, hd);
  const std::vector<float> gpu = gctx.to_vector();  // waits for the kernel; a fault inside it throws here

  double max_diff = 0.0, max_ref = 0.0;
  int64_t bad_dropped = 0, bad_zero = 0, not_finite = 0;
  for (int b = 0; b < B; b++)
    for (int r = q_at[size_t(b)]; r < q_at[size_t(b) + 1]; r++)
      for (int c = 0; c < d; c++) {
        const size_t i = size_t(int64_t(r) * d + c);
        if (!kept(b, c / hd)) {  // not written, on either device
          bad_dropped += gpu[i] != kSentinel || cpu[i] != kSentinel;
        } else if (p.k_rows[size_t(b)] == 0) {  // no keys: exact zeros
          bad_zero += gpu[i] != 0.0f || cpu[i] != 0.0f;
        } else if (!std::isfinite(gpu[i]) || !std::isfinite(cpu[i])) {
          not_finite++;
        } else {
          max_diff = std::max(max_diff, std::fabs(double(gpu[i]) - double(cpu[i])));
          max_ref = std::max(max_ref, std::fabs(double(cpu[i])));
        }
      }
  INFO("B " << B << ", H " << H << ", head_dim " << hd << std::string(p.mask ? ", masked" : ", every head") << ", Tq " << Tq
            << ", Tk " << Tk);
  CHECK(bad_dropped == 0);
  CHECK(bad_zero == 0);
  CHECK(not_finite == 0);
  CHECK(max_diff / std::max(1.0, max_ref) <= 1e-5);
}

// 64 is the kernel's tile: 1 and 7 fit in part of one, 64 exactly, 65 and 70
// spill one row or a few into a second, 130 takes three.
const std::vector<int> kLengths = {1, 7, 33, 70, 64, 65, 130};
const std::vector<int> kHeadDims = {16, 32, 64, 128, 24, 100};  // the four widths compiled, and two padded ones

}  // namespace

TEST_CASE("cuda packed attention: self-attention matches the CPU kernel, with and without a head mask" *
          doctest::skip(st::cuda::device_count() == 0)) {
  uint64_t seed = 1;
  for (int hd : kHeadDims)
    for (bool mask : {false, true}) {
      Problem p;
      p.q_rows = p.k_rows = kLengths;
      p.H = 3, p.head_dim = hd, p.mask = mask;
      check_problem(p, seed++);
    }
}

TEST_CASE("cuda packed attention: cross-attention, examples without keys and without queries" *
          doctest::skip(st::cuda::device_count() == 0)) {
  uint64_t seed = 100;
  for (int hd : kHeadDims)
    for (bool mask : {false, true}) {
      Problem p;
      p.q_rows = {7, 1, 70, 33, 0, 5, 130, 12};
      p.k_rows = {33, 0, 70, 1, 9, 130, 65, 0};  // examples 1 and 7 attend to nothing, example 4 asks nothing
      p.H = 3, p.head_dim = hd, p.mask = mask;
      check_problem(p, seed++);
    }
}

// With 800 (example, head) pairs the grid gets one slot per pair on an
// H100/H200 (132 SMs, one to three blocks each), so a block walks every query
// tile of its segment in turn: the loop the small cases above never take.
TEST_CASE("cuda packed attention: a large batch, where a block loops over its segment's query tiles" *
          doctest::skip(st::cuda::device_count() == 0)) {
  st::Rng lengths(7);
  Problem p;
  for (int b = 0; b < 400; b++) {
    p.q_rows.push_back(int(lengths.uniform() * 200.0f));  // 0 .. 199
    p.k_rows.push_back(int(lengths.uniform() * 150.0f));
  }
  p.H = 2;
  uint64_t seed = 200;
  for (int hd : {64, 128})
    for (bool mask : {false, true}) {
      p.head_dim = hd, p.mask = mask;
      check_problem(p, seed++);
    }
}

TEST_CASE("cuda packed attention: a head_dim above 128 is refused with a DeviceError" *
          doctest::skip(st::cuda::device_count() == 0)) {
  const int H = 1, hd = 129;
  Tensor x = Tensor::full({2, H * hd}, 1.0f, Device::CUDA), ctx = Tensor::full({2, H * hd}, 0.0f, Device::CUDA);
  Tensor at = Tensor::from_ints({0, 2}, {2}).to(Device::CUDA);
  std::string message;
  try {
    st::cuda::packed_attention_forward(ctx.data(), x.data(), x.data(), x.data(), at.ints(), at.ints(), nullptr, 1, H,
                                       hd);
  } catch (const st::DeviceError& e) {
    message = e.what();
  }
  CHECK(message.find("head_dim 129") != std::string::npos);
}

#endif  // SMARTTRIM_CUDA
