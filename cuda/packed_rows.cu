// The gathers and scatters of the packed inference path, the CUDA twins of
// engine/ops/packed_rows.cpp. One thread per output element; the segment
// mean's thread walks its example's rows in order, so the sum is the same
// on every run.
#include "cuda/launch.h"
#include "engine/kernels.h"
#include "engine/ops/vector_math.h"

namespace st::cuda {
namespace {

// out[b, j] = mean over rows r of segment b of x[r, j]; thread per (b, j)
__global__ void segment_mean_kernel(float* out, const float* x, const int32_t* at, int64_t B, int64_t d) {
  GRID_STRIDE_LOOP(i, B * d) {
    const int64_t b = i / d, j = i % d, first = at[b], last = at[b + 1];
    float sum = 0.0f;
    for (int64_t r = first; r < last; r++) sum += x[r * d + j];
    out[i] = last > first ? sum / float(last - first) : 0.0f;
  }
}

// out[r] = b + w . gelu(a[r]): a warp per row, its lanes striding the row
__global__ void gelu_dot_rows_kernel(float* out, const float* a, const float* w, const float* b, int64_t rows,
                                     int n) {
  const int64_t r = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const bool row = r < rows;  // the last block's spare warps still join the warp sum, with zeros
  const int lane = threadIdx.x % 32;
  float dot = 0.0f;
  for (int j = lane; row && j < n; j += 32) dot += w[j] * cpu::gelu_of(a[r * n + j]);
  dot = warp_sum(dot);
  if (row && lane == 0) out[r] = b[0] + dot;
}

__global__ void gather_columns_kernel(float* out, const float* x, int64_t ld, int64_t c0, const int32_t* rows,
                                      int64_t n, int64_t cols) {
  GRID_STRIDE_LOOP(i, n * cols) out[i] = x[int64_t(rows[i / cols]) * ld + c0 + i % cols];
}

__global__ void scatter_columns_kernel(float* out, int64_t ld, int64_t c0, const float* src, const int32_t* rows,
                                       int64_t n, int64_t cols, const float* bias, float scale, bool accumulate) {
  GRID_STRIDE_LOOP(i, n * cols) {
    const int64_t j = i % cols;
    const float value = (src[i] + (bias ? bias[j] : 0.0f)) * scale;
    float* o = out + int64_t(rows[i / cols]) * ld + c0 + j;
    *o = accumulate ? *o + value : value;
  }
}

}  // namespace

void segment_mean_forward(float* out, const float* x, const int32_t* at, int64_t B, int64_t d) {
  if (B * d == 0) return;
  segment_mean_kernel<<<blocks_for(B * d), kThreads, 0, stream()>>>(out, x, at, B, d);
  CUDA_CHECK_LAUNCH("segment_mean_kernel");
}

void gelu_dot_rows(float* out, const float* a, const float* w, const float* b, int64_t rows, int n) {
  if (rows == 0) return;
  constexpr int kWarps = kThreads / 32;
  gelu_dot_rows_kernel<<<unsigned((rows + kWarps - 1) / kWarps), kThreads, 0, stream()>>>(out, a, w, b, rows, n);
  CUDA_CHECK_LAUNCH("gelu_dot_rows_kernel");
}

void gather_columns(float* out, const float* x, int64_t ld, int64_t c0, const int32_t* rows, int64_t n,
                    int64_t cols) {
  if (n * cols == 0) return;
  gather_columns_kernel<<<blocks_for(n * cols), kThreads, 0, stream()>>>(out, x, ld, c0, rows, n, cols);
  CUDA_CHECK_LAUNCH("gather_columns_kernel");
}

void scatter_columns(float* out, int64_t ld, int64_t c0, const float* src, const int32_t* rows, int64_t n,
                     int64_t cols, const float* bias, float scale, bool accumulate) {
  if (n * cols == 0) return;
  scatter_columns_kernel<<<blocks_for(n * cols), kThreads, 0, stream()>>>(out, ld, c0, src, rows, n, cols, bias,
                                                                         scale, accumulate);
  CUDA_CHECK_LAUNCH("scatter_columns_kernel");
}

}  // namespace st::cuda
