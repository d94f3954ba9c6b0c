// Softmax, log-softmax and the multiplicative masked softmax over the last
// dimension. Rows are independent, so every kernel runs rows in parallel.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "engine/ops/common.h"
#include "engine/ops/masked_softmax_math.h"
#include "engine/ops/vector_math.h"

namespace st {
namespace cpu {

void softmax_forward(float* out, const float* x, int64_t rows, int64_t n) {
  parallel_for(rows, use_threads(rows * n, 1 << 14), [&](int64_t r) {
    const float* xr = x + r * n;
    float* yr = out + r * n;
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t i = 0; i < n; i++) m = std::max(m, xr[i]);
#pragma omp simd
    for (int64_t i = 0; i < n; i++) yr[i] = xr[i] - m;
    vexp_in_place(yr, n);
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < n; i++) s += yr[i];
    float inv = 1.0f / s;
    for (int64_t i = 0; i < n; i++) yr[i] *= inv;
  });
}

// dx = y * (g - sum_j g_j y_j)
void softmax_backward(float* dx, const float* dout, const float* out, int64_t rows, int64_t n) {
  parallel_for(rows, use_threads(rows * n, 1 << 14), [&](int64_t r) {
    const float* g = dout + r * n;
    const float* y = out + r * n;
    float dot = 0.0f;
    for (int64_t i = 0; i < n; i++) dot += g[i] * y[i];
    for (int64_t i = 0; i < n; i++) dx[r * n + i] += y[i] * (g[i] - dot);
  });
}

void log_softmax_forward(float* out, const float* x, int64_t rows, int64_t n) {
  parallel_for(rows, use_threads(rows * n, 1 << 14), [&](int64_t r) {
    const float* xr = x + r * n;
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t i = 0; i < n; i++) m = std::max(m, xr[i]);
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < n; i++) s += vexp(xr[i] - m);
    float lse = m + std::log(s);
    for (int64_t i = 0; i < n; i++) out[r * n + i] = xr[i] - lse;
  });
}

// dx = g - softmax * sum_j g_j, with softmax = exp(out)
void log_softmax_backward(float* dx, const float* dout, const float* out, int64_t rows, int64_t n) {
  parallel_for(rows, use_threads(rows * n, 1 << 14), [&](int64_t r) {
    const float* g = dout + r * n;
    float gs = 0.0f;
    for (int64_t i = 0; i < n; i++) gs += g[i];
    for (int64_t i = 0; i < n; i++) dx[r * n + i] += g[i] - std::exp(out[r * n + i]) * gs;
  });
}

// One row of the masked softmax: e_j = exp(a_j - m) into e, m = the max
// over kept keys (M_j != 0) and S = sum_j M_j e_j; S == 0 means no key is
// kept (e is then 0). A dropped key may score above m: its exponent is
// clamped to 0 to stay finite, and M_j = 0 zeroes it. The exponentials
// have a loop of their own because GCC vectorises a loop that calls expf
// only when it compares nothing.
struct RowStats {
  float m, S;
};
static inline RowStats masked_row_exp(float* e, const float* a, const float* M, int Nk) {
  float m = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : m)
  for (int j = 0; j < Nk; j++) m = M[j] != 0.0f ? std::max(m, a[j]) : m;
  if (m == -std::numeric_limits<float>::infinity()) {
    std::fill_n(e, Nk, 0.0f);
    return {m, 0.0f};
  }
#pragma omp simd
  for (int j = 0; j < Nk; j++) e[j] = std::min(a[j] - m, 0.0f);
  vexp_in_place(e, Nk);
  float S = 0.0f;
#pragma omp simd reduction(+ : S)
  for (int j = 0; j < Nk; j++) S += M[j] * e[j];
  return {m, S};
}

// A_ij = M_j exp(a_ij - m_i) / S_i
void masked_softmax_forward(float* out, const float* scores, const float* mask, int B, int64_t R, int Nk) {
  parallel_for(int64_t(B) * R, use_threads(int64_t(B) * R * Nk, 1 << 14), [&](int64_t row) {
    const float* M = mask + (row / R) * Nk;
    float* A = out + row * Nk;
    const auto [m, S] = masked_row_exp(A, scores + row * Nk, M, Nk);
    const float inv = S > 0.0f ? 1.0f / S : 0.0f;
#pragma omp simd
    for (int j = 0; j < Nk; j++) A[j] *= M[j] * inv;
  });
}

// With dot_i = sum_l g_il A_il and e_ij = exp(a_ij - m_i):
//   da_ij += A_ij (g_ij - dot_i)
//   dM_j  += sum_i w_ij (g_ij - dot_i),  w_ij = e_ij / S_i          (M_j != 0: the exact derivative)
//                                        w_ij = e_ij / (S_i + e_ij) (M_j == 0)
// The mask term runs over every key, kept or not: it is how the task loss
// tells a dropped token that it would have been useful. At M_j = 0 the exact
// derivative e_ij / S_i grows as the exponential of how far key j's score is
// above the kept keys' (1e12 and more in training), and one such key would
// swamp every other gradient. A dropped key is scored instead by the weight
// it would have if it were added back, e_ij / (S_i + e_ij): never above 1,
// like a kept key's, and the same sign.
void masked_softmax_backward(float* dscores, float* dmask, const float* dout, const float* out,
                             const float* scores, const float* mask, int B, int64_t R, int Nk) {
  // One thread per example: all R rows of example b add into the same dM[b].
  parallel_for(B, use_threads(int64_t(B) * R * Nk, 1 << 14), [&](int64_t b) {
    const float* M = mask + int64_t(b) * Nk;
    thread_local std::vector<float> row_buffer;  // one row's exponentials
    row_buffer.resize(size_t(Nk));
    float* e = row_buffer.data();
    for (int64_t r = 0; r < R; r++) {
      int64_t row = int64_t(b) * R + r;
      const float* g = dout + row * Nk;
      const float* A = out + row * Nk;
      float dot = 0.0f;
      for (int j = 0; j < Nk; j++) dot += g[j] * A[j];
      if (dscores)
        for (int j = 0; j < Nk; j++) dscores[row * Nk + j] += A[j] * (g[j] - dot);
      if (dmask) {
        const float* a = scores + row * Nk;
        const auto [m, S] = masked_row_exp(e, a, M, Nk);
        if (S == 0.0f) continue;
        float* dM = dmask + int64_t(b) * Nk;
#pragma omp simd
        for (int j = 0; j < Nk; j++) e[j] = m - a[j];
        vexp_in_place(e, Nk);  // exp(m - a_ij)
#pragma omp simd
        for (int j = 0; j < Nk; j++) dM[j] += mask_gradient_weight_of(S * e[j], M[j]) * (g[j] - dot);
      }
    }
  });
}

}  // namespace cpu

static Tensor row_softmax(const char* op, bool log_space, const Tensor& x) {
  Device dev = common_device(op, {&x});
  require_f32(op, x, "x");
  if (x.rank() == 0 || x.dim(-1) == 0) shape_error(op, "needs a non-empty last dimension, got " + to_string(x.shape()));
  int64_t rows = rows_of(x), n = x.dim(-1);
  Tensor out = Tensor::empty(x.shape(), DType::F32, dev);
  if (log_space) ST_KERNEL(dev, log_softmax_forward)(out.data(), x.data(), rows, n);
  else ST_KERNEL(dev, softmax_forward)(out.data(), x.data(), rows, n);
  if (needs_grad({&x})) {
    record(op, out, [x, out, rows, n, log_space, dev](const Tensor& dout) {
      if (log_space) ST_KERNEL(dev, log_softmax_backward)(grad_buffer(x).data(), dout.data(), out.data(), rows, n);
      else ST_KERNEL(dev, softmax_backward)(grad_buffer(x).data(), dout.data(), out.data(), rows, n);
    });
  }
  return out;
}

Tensor softmax(const Tensor& x) { return row_softmax("softmax", false, x); }
Tensor log_softmax(const Tensor& x) { return row_softmax("log_softmax", true, x); }

Tensor masked_softmax(const Tensor& scores, const Tensor& mask) {
  const char* op = "masked_softmax";
  Device dev = common_device(op, {&scores, &mask});
  require_f32(op, scores, "scores");
  require_f32(op, mask, "mask");
  if (scores.rank() < 2 || mask.rank() != 2 || mask.dim(0) != scores.dim(0) || mask.dim(1) != scores.dim(-1))
    shape_error(op, "expects scores (B, ..., Nk) and mask (B, Nk), got scores " + to_string(scores.shape()) +
                        " and mask " + to_string(mask.shape()));
  int B = int(scores.dim(0)), Nk = int(scores.dim(-1));
  int64_t R = B && Nk ? scores.numel() / (int64_t(B) * Nk) : 0;
  Tensor out = Tensor::empty(scores.shape(), DType::F32, dev);
  ST_KERNEL(dev, masked_softmax_forward)(out.data(), scores.data(), mask.data(), B, R, Nk);
  if (needs_grad({&scores, &mask})) {
    record(op, out, [scores, mask, out, B, R, Nk, dev](const Tensor& dout) {
      float* ds = scores.requires_grad() ? grad_buffer(scores).data() : nullptr;
      float* dm = mask.requires_grad() ? grad_buffer(mask).data() : nullptr;
      ST_KERNEL(dev, masked_softmax_backward)(ds, dm, dout.data(), out.data(), scores.data(), mask.data(), B, R, Nk);
    });
  }
  return out;
}

}  // namespace st
