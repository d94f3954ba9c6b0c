// The softmax family: one block per row, three passes over the row (max,
// sum of exponentials, write), the row's statistics shared through
// block_max and block_sum.
#include "cuda/launch.h"
#include "engine/kernels.h"
#include "engine/ops/masked_softmax_math.h"

namespace st::cuda {
namespace {

constexpr int kRowThreads = 128;

__global__ void softmax_kernel(float* out, const float* x, int64_t n) {
  const float* xr = x + int64_t(blockIdx.x) * n;
  float* yr = out + int64_t(blockIdx.x) * n;
  float m = -INFINITY;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) m = fmaxf(m, xr[i]);
  m = block_max(m);
  float s = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += expf(xr[i] - m);
  const float inv = 1.0f / block_sum(s);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) yr[i] = expf(xr[i] - m) * inv;
}

// dx = y * (g - sum_j g_j y_j)
__global__ void softmax_backward_kernel(float* dx, const float* dout, const float* out, int64_t n) {
  const int64_t r = blockIdx.x;
  float dot = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) dot += dout[r * n + i] * out[r * n + i];
  dot = block_sum(dot);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) dx[r * n + i] += out[r * n + i] * (dout[r * n + i] - dot);
}

__global__ void log_softmax_kernel(float* out, const float* x, int64_t n) {
  const float* xr = x + int64_t(blockIdx.x) * n;
  float m = -INFINITY;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) m = fmaxf(m, xr[i]);
  m = block_max(m);
  float s = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += expf(xr[i] - m);
  const float lse = m + logf(block_sum(s));
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) out[int64_t(blockIdx.x) * n + i] = xr[i] - lse;
}

// dx = g - softmax * sum_j g_j, with softmax = exp(out)
__global__ void log_softmax_backward_kernel(float* dx, const float* dout, const float* out, int64_t n) {
  const int64_t r = blockIdx.x;
  float gs = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) gs += dout[r * n + i];
  gs = block_sum(gs);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) dx[r * n + i] += dout[r * n + i] - expf(out[r * n + i]) * gs;
}

// Row statistics of the masked softmax (as engine/ops/softmax.cpp):
// m = max over kept keys (M_j != 0), S = sum_k M_k exp(a_k - m); S == 0 when no key is kept.
__device__ inline void masked_row_stats(const float* a, const float* M, int Nk, float& m, float& S) {
  m = -INFINITY;
  for (int j = threadIdx.x; j < Nk; j += blockDim.x)
    if (M[j] != 0.0f) m = fmaxf(m, a[j]);
  m = block_max(m);
  S = 0.0f;
  if (m == -INFINITY) return;  // the same for every thread: no key kept
  for (int j = threadIdx.x; j < Nk; j += blockDim.x)
    if (M[j] != 0.0f) S += M[j] * expf(a[j] - m);
  S = block_sum(S);
}

// A_ij = M_j exp(a_ij - m_i) / S_i: one block per row of scores (B*R rows).
__global__ void masked_softmax_kernel(float* out, const float* scores, const float* mask, int64_t R, int Nk) {
  const int64_t row = blockIdx.x;
  const float* a = scores + row * Nk;
  const float* M = mask + (row / R) * Nk;
  float m, S;
  masked_row_stats(a, M, Nk, m, S);
  const float inv = S > 0.0f ? 1.0f / S : 0.0f;
  for (int j = threadIdx.x; j < Nk; j += blockDim.x) out[row * Nk + j] = M[j] != 0.0f ? M[j] * expf(a[j] - m) * inv : 0.0f;
}

// Per row, with dot_i = sum_l g_il A_il:
//   da_ij += A_ij (g_ij - dot_i)
//   w_ij (g_ij - dot_i) into the scratch row, w from engine/ops/masked_softmax_math.h
//   (0 when no key is kept)
__global__ void masked_softmax_backward_rows(float* dscores, float* mask_terms, const float* dout, const float* out,
                                             const float* scores, const float* mask, int64_t R, int Nk) {
  const int64_t row = blockIdx.x;
  const float* g = dout + row * Nk;
  const float* A = out + row * Nk;
  const float* a = scores + row * Nk;
  const float* M = mask + (row / R) * Nk;
  float dot = 0.0f;
  for (int j = threadIdx.x; j < Nk; j += blockDim.x) dot += g[j] * A[j];
  dot = block_sum(dot);
  if (dscores)
    for (int j = threadIdx.x; j < Nk; j += blockDim.x) dscores[row * Nk + j] += A[j] * (g[j] - dot);
  if (mask_terms) {
    float m, S;
    masked_row_stats(a, M, Nk, m, S);
    for (int j = threadIdx.x; j < Nk; j += blockDim.x)
      mask_terms[row * Nk + j] = S == 0.0f ? 0.0f : cpu::mask_gradient_weight(a[j], m, S, M[j]) * (g[j] - dot);
  }
}

// dM[b, j] += sum_r mask_terms[b, r, j], in row order (no atomics: the same bits every run).
__global__ void sum_mask_terms(float* dmask, const float* mask_terms, int B, int64_t R, int Nk) {
  GRID_STRIDE_LOOP(t, int64_t(B) * Nk) {
    const int64_t b = t / Nk, j = t % Nk;
    float sum = 0.0f;
    for (int64_t r = 0; r < R; r++) sum += mask_terms[(b * R + r) * Nk + j];
    dmask[t] += sum;
  }
}

}  // namespace

void softmax_forward(float* out, const float* x, int64_t rows, int64_t n) {
  if (rows * n == 0) return;
  softmax_kernel<<<row_blocks(rows), kRowThreads, 0, stream()>>>(out, x, n);
  CUDA_CHECK_LAUNCH("softmax_kernel");
}

void softmax_backward(float* dx, const float* dout, const float* out, int64_t rows, int64_t n) {
  if (rows * n == 0) return;
  softmax_backward_kernel<<<row_blocks(rows), kRowThreads, 0, stream()>>>(dx, dout, out, n);
  CUDA_CHECK_LAUNCH("softmax_backward_kernel");
}

void log_softmax_forward(float* out, const float* x, int64_t rows, int64_t n) {
  if (rows * n == 0) return;
  log_softmax_kernel<<<row_blocks(rows), kRowThreads, 0, stream()>>>(out, x, n);
  CUDA_CHECK_LAUNCH("log_softmax_kernel");
}

void log_softmax_backward(float* dx, const float* dout, const float* out, int64_t rows, int64_t n) {
  if (rows * n == 0) return;
  log_softmax_backward_kernel<<<row_blocks(rows), kRowThreads, 0, stream()>>>(dx, dout, out, n);
  CUDA_CHECK_LAUNCH("log_softmax_backward_kernel");
}

void masked_softmax_forward(float* out, const float* scores, const float* mask, int B, int64_t R, int Nk) {
  if (int64_t(B) * R * Nk == 0) return;
  masked_softmax_kernel<<<row_blocks(int64_t(B) * R), kRowThreads, 0, stream()>>>(out, scores, mask, R, Nk);
  CUDA_CHECK_LAUNCH("masked_softmax_kernel");
}

void masked_softmax_backward(float* dscores, float* dmask, const float* dout, const float* out, const float* scores,
                             const float* mask, int B, int64_t R, int Nk) {
  const int64_t rows = int64_t(B) * R;
  if (rows * Nk == 0) return;
  // (B, R, Nk) scratch: each row's share of dM, summed over R afterwards.
  const size_t bytes = dmask ? size_t(rows) * size_t(Nk) * sizeof(float) : 0;
  float* mask_terms = dmask ? static_cast<float*>(device_alloc(bytes)) : nullptr;
  masked_softmax_backward_rows<<<row_blocks(rows), kRowThreads, 0, stream()>>>(dscores, mask_terms, dout, out, scores,
                                                                            mask, R, Nk);
  CUDA_CHECK_LAUNCH("masked_softmax_backward_rows");
  if (dmask) {
    sum_mask_terms<<<blocks_for(int64_t(B) * Nk), kThreads, 0, stream()>>>(dmask, mask_terms, B, R, Nk);
    CUDA_CHECK_LAUNCH("sum_mask_terms");
    device_free(mask_terms, bytes);
  }
}

}  // namespace st::cuda
