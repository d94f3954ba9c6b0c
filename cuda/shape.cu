// Data movement: the head permute, block copies, and row gathers. One
// thread per element copied.
#include "cuda/launch.h"
#include "engine/kernels.h"

namespace st::cuda {
namespace {

// out[a, c, b, :] (+)= x[a, b, c, :], thread per element of x
__global__ void permute_0213_kernel(float* out, const float* x, int64_t A, int64_t B, int64_t C, int64_t D,
                                    bool accumulate) {
  GRID_STRIDE_LOOP(i, A * B * C * D) {
    const int64_t d = i % D, c = (i / D) % C, b = (i / (D * C)) % B, a = i / (D * C * B);
    const int64_t o = ((a * C + c) * B + b) * D + d;
    if (accumulate) out[o] += x[i];
    else out[o] = x[i];
  }
}

__global__ void copy_blocks_kernel(float* dst, int64_t dst_stride, const float* src, int64_t src_stride,
                                   int64_t outer, int64_t len, bool accumulate) {
  GRID_STRIDE_LOOP(i, outer * len) {
    const int64_t o = i / len, j = i % len;
    if (accumulate) dst[o * dst_stride + j] += src[o * src_stride + j];
    else dst[o * dst_stride + j] = src[o * src_stride + j];
  }
}

__global__ void gather_rows_kernel(float* out, const float* x, const int32_t* index, int64_t n, int64_t d) {
  GRID_STRIDE_LOOP(i, n * d) out[i] = x[int64_t(index[i / d]) * d + i % d];
}

// Indices may repeat (a token id used twice): one thread per column walks
// the rows in order and adds, so repeated rows never race.
__global__ void scatter_add_rows_kernel(float* dx, const float* dout, const int32_t* index, int64_t n, int64_t d) {
  GRID_STRIDE_LOOP(j, d) {
    for (int64_t r = 0; r < n; r++) dx[int64_t(index[r]) * d + j] += dout[r * d + j];
  }
}

}  // namespace

void permute_0213(float* out, const float* x, int64_t A, int64_t B, int64_t C, int64_t D, bool accumulate) {
  const int64_t n = A * B * C * D;
  if (n == 0) return;
  permute_0213_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(out, x, A, B, C, D, accumulate);
  CUDA_CHECK_LAUNCH("permute_0213_kernel");
}

void copy_blocks(float* dst, int64_t dst_stride, const float* src, int64_t src_stride, int64_t outer, int64_t len,
                 bool accumulate) {
  if (outer * len == 0) return;
  copy_blocks_kernel<<<blocks_for(outer * len), kThreads, 0, stream()>>>(dst, dst_stride, src, src_stride, outer,
                                                                        len, accumulate);
  CUDA_CHECK_LAUNCH("copy_blocks_kernel");
}

void gather_rows_forward(float* out, const float* x, const int32_t* index, int64_t n, int64_t d) {
  if (n * d == 0) return;
  gather_rows_kernel<<<blocks_for(n * d), kThreads, 0, stream()>>>(out, x, index, n, d);
  CUDA_CHECK_LAUNCH("gather_rows_kernel");
}

void gather_rows_backward(float* dx, const float* dout, const int32_t* index, int64_t n, int64_t d) {
  if (n * d == 0) return;
  scatter_add_rows_kernel<<<blocks_for(d), kThreads, 0, stream()>>>(dx, dout, index, n, d);
  CUDA_CHECK_LAUNCH("scatter_add_rows_kernel");
}

}  // namespace st::cuda
