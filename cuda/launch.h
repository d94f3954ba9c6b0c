// Shared by the kernel files (cuda/*.cu): the stream and cuBLAS handle
// every kernel uses, launch sizes, and the block-wide reductions.
#pragma once
#include <cstdint>
#include <string>

#include "cuda/check.h"

namespace st::cuda {

cudaStream_t stream();    // cuda/runtime.cu
cublasHandle_t cublas();  // on stream(), in the math mode of set_math()

// Scratch buffers come from the caching allocator (cuda/runtime.h). Freeing
// one right after queueing its kernels is safe: whatever reuses it is
// queued on the same stream, behind them.
void* device_alloc(size_t bytes);
void device_free(void* ptr, size_t bytes);

constexpr int kThreads = 256;  // threads per block of the element-wise kernels

// Blocks of `threads` that cover n elements, one element a thread. Kernels
// loop with a grid stride, so capping the grid keeps huge n correct.
inline unsigned blocks_for(int64_t n, int threads = kThreads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return unsigned(blocks < 1 ? 1 : blocks > 65535 * 8 ? 65535 * 8 : blocks);
}

// One block per row: rows must fit the grid's x dimension.
inline unsigned row_blocks(int64_t rows) {
  if (rows > 2147483647) throw DeviceError("a row kernel was given " + std::to_string(rows) + " rows (at most 2^31 - 1)");
  return unsigned(rows);
}

#ifdef __CUDACC__
// for (i = this thread's first; i < n; i += every thread of the grid)
#define GRID_STRIDE_LOOP(i, n)                                                           \
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < int64_t(n); \
       i += int64_t(blockDim.x) * gridDim.x)

__device__ inline float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}
__device__ inline float warp_max(float v) {
  for (int offset = 16; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Sum (or max) of one value per thread over the whole block; every thread
// gets the result. blockDim.x must be a multiple of 32 (at most 1024).
__device__ inline float block_sum(float v) {
  __shared__ float partial[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v = warp_sum(v);
  __syncthreads();  // partial[] may still be read by a previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = lane < warps ? partial[lane] : 0.0f;
  return warp_sum(v);
}
__device__ inline float block_max(float v) {
  __shared__ float partial[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = lane < warps ? partial[lane] : -INFINITY;
  return warp_max(v);
}

// block_sum in double, for the reductions whose CPU twins add in double
// (whole-tensor sums, the losses): terms that nearly cancel stay accurate.
__device__ inline double block_sum_double(double v) {
  __shared__ double partial[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = lane < warps ? partial[lane] : 0.0;
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}
#endif

}  // namespace st::cuda
