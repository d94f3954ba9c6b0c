// Reductions: row sums and the masked mean. A row is one block (or one
// thread when rows are short and many); partial sums are combined in a
// fixed order, so a run gives the same bits every time.
#include "cuda/launch.h"
#include "engine/kernels.h"

namespace st::cuda {
namespace {

constexpr int kRowThreads = 256;

// out[r] = scale * sum_i x[r, i]: one block per row. Each thread adds in
// double (a whole-tensor sum is one long row), and so does the block.
__global__ void sum_rows_kernel(float* out, const float* x, int64_t n, float scale) {
  const float* xr = x + int64_t(blockIdx.x) * n;
  double partial = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) partial += xr[i];
  const double total = block_sum_double(partial);
  if (threadIdx.x == 0) out[blockIdx.x] = float(total * scale);
}

__global__ void sum_rows_backward_kernel(float* dx, const float* dout, int64_t rows, int64_t n, float scale) {
  GRID_STRIDE_LOOP(i, rows * n) dx[i] += dout[i / n] * scale;
}

// out[b, j] = sum_i M[b, i] x[b, i, j] / S_b: one thread per (b, j).
__global__ void masked_mean_kernel(float* out, const float* x, const float* mask, int B, int N, int d) {
  GRID_STRIDE_LOOP(t, int64_t(B) * d) {
    const int64_t b = t / d, j = t % d;
    float sum = 0.0f, S = 0.0f;
    for (int i = 0; i < N; i++) {
      const float m = mask[b * N + i];
      S += m;
      if (m != 0.0f) sum += m * x[(b * N + i) * d + j];
    }
    out[t] = S != 0.0f ? sum / S : 0.0f;
  }
}

__global__ void mask_sums_kernel(float* S, const float* mask, int B, int N) {
  GRID_STRIDE_LOOP(b, B) {
    float s = 0.0f;
    for (int i = 0; i < N; i++) s += mask[b * N + i];
    S[b] = s;
  }
}

// dx[b, i, j] += M[b, i] g[b, j] / S_b
__global__ void masked_mean_dx_kernel(float* dx, const float* dout, const float* mask, const float* S, int B, int N,
                                      int d) {
  GRID_STRIDE_LOOP(t, int64_t(B) * N * d) {
    const int64_t j = t % d, bi = t / d, b = bi / N;
    if (S[b] != 0.0f) dx[t] += mask[bi] * dout[b * d + j] / S[b];
  }
}

// dM[b, i] += g[b] . (x[b, i] - out[b]) / S_b
__global__ void masked_mean_dmask_kernel(float* dmask, const float* dout, const float* x, const float* out,
                                         const float* S, int B, int N, int d) {
  GRID_STRIDE_LOOP(bi, int64_t(B) * N) {
    const int64_t b = bi / N;
    if (S[b] == 0.0f) continue;
    float dot = 0.0f;
    for (int j = 0; j < d; j++) dot += dout[b * d + j] * (x[bi * d + j] - out[b * d + j]);
    dmask[bi] += dot / S[b];
  }
}

}  // namespace

void sum_rows_forward(float* out, const float* x, int64_t rows, int64_t n, float scale) {
  if (rows == 0) return;
  sum_rows_kernel<<<row_blocks(rows), kRowThreads, 0, stream()>>>(out, x, n, scale);
  CUDA_CHECK_LAUNCH("sum_rows_kernel");
}

void sum_rows_backward(float* dx, const float* dout, int64_t rows, int64_t n, float scale) {
  if (rows * n == 0) return;
  sum_rows_backward_kernel<<<blocks_for(rows * n), kThreads, 0, stream()>>>(dx, dout, rows, n, scale);
  CUDA_CHECK_LAUNCH("sum_rows_backward_kernel");
}

void masked_mean_forward(float* out, const float* x, const float* mask, int B, int N, int d) {
  if (int64_t(B) * d == 0) return;
  masked_mean_kernel<<<blocks_for(int64_t(B) * d), kThreads, 0, stream()>>>(out, x, mask, B, N, d);
  CUDA_CHECK_LAUNCH("masked_mean_kernel");
}

void masked_mean_backward(float* dx, float* dmask, const float* dout, const float* x, const float* mask,
                          const float* out, int B, int N, int d) {
  if (int64_t(B) * N * d == 0) return;
  float* S = static_cast<float*>(device_alloc(size_t(B) * sizeof(float)));  // (B) mask sums
  mask_sums_kernel<<<blocks_for(B), kThreads, 0, stream()>>>(S, mask, B, N);
  CUDA_CHECK_LAUNCH("mask_sums_kernel");
  if (dx) {
    masked_mean_dx_kernel<<<blocks_for(int64_t(B) * N * d), kThreads, 0, stream()>>>(dx, dout, mask, S, B, N, d);
    CUDA_CHECK_LAUNCH("masked_mean_dx_kernel");
  }
  if (dmask) {
    masked_mean_dmask_kernel<<<blocks_for(int64_t(B) * N), kThreads, 0, stream()>>>(dmask, dout, x, out, S, B, N, d);
    CUDA_CHECK_LAUNCH("masked_mean_dmask_kernel");
  }
  device_free(S, size_t(B) * sizeof(float));
}

}  // namespace st::cuda
