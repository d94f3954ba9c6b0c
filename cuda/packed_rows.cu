// The gathers and scatters of the packed inference path, the CUDA twins of
// engine/ops/packed_rows.cpp. One thread per output element; the segment
// mean's thread walks its example's rows in order, so the sum is the same
// on every run.
#include "cuda/launch.h"
#include "engine/kernels.h"

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
