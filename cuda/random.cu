// Dropout and the Gumbel-sigmoid straight-through mask on the GPU. Draw i
// is philox_uniform_at(seed, offset + i), the function the CPU uses
// (engine/philox.h), so both devices draw the same noise for a seed.
#include "cuda/launch.h"
#include "engine/kernels.h"
#include "engine/philox.h"

namespace st::cuda {
namespace {

__global__ void dropout_kernel(float* out, const float* x, float p, float scale, uint64_t seed, uint64_t offset,
                               int64_t n) {
  GRID_STRIDE_LOOP(i, n) out[i] = philox_uniform_at(seed, offset + uint64_t(i)) < p ? 0.0f : x[i] * scale;
}

__global__ void dropout_backward_kernel(float* dx, const float* dout, float p, float scale, uint64_t seed,
                                        uint64_t offset, int64_t n) {
  GRID_STRIDE_LOOP(i, n) {
    if (philox_uniform_at(seed, offset + uint64_t(i)) >= p) dx[i] += dout[i] * scale;
  }
}

// The soft relaxation y = sigmoid((s + L) / tau), L = log u - log(1 - u), as engine/ops/random.cpp.
__device__ inline float gumbel_soft(float s, float tau, bool noise, uint64_t seed, uint64_t index) {
  float L = 0.0f;
  if (noise) {
    const float u = philox_uniform_at(seed, index);
    L = logf(u) - log1pf(-u);
  }
  return 1.0f / (1.0f + expf(-(s + L) / tau));
}

__global__ void gumbel_forward_kernel(float* mask, const float* logits, float tau, bool noise, uint64_t seed,
                                      uint64_t offset, int64_t n) {
  GRID_STRIDE_LOOP(i, n) mask[i] = gumbel_soft(logits[i], tau, noise, seed, offset + uint64_t(i)) > 0.5f ? 1.0f : 0.0f;
}

// Straight-through: d mask / d s := d y / d s = y (1 - y) / tau.
__global__ void gumbel_backward_kernel(float* dlogits, const float* dmask, const float* logits, float tau, bool noise,
                                       uint64_t seed, uint64_t offset, int64_t n) {
  GRID_STRIDE_LOOP(i, n) {
    const float y = gumbel_soft(logits[i], tau, noise, seed, offset + uint64_t(i));
    dlogits[i] += dmask[i] * y * (1.0f - y) / tau;
  }
}

}  // namespace

void dropout_forward(float* out, const float* x, float p, uint64_t seed, uint64_t offset, int64_t n) {
  if (n == 0) return;
  dropout_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(out, x, p, 1.0f / (1.0f - p), seed, offset, n);
  CUDA_CHECK_LAUNCH("dropout_kernel");
}

void dropout_backward(float* dx, const float* dout, float p, uint64_t seed, uint64_t offset, int64_t n) {
  if (n == 0) return;
  dropout_backward_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(dx, dout, p, 1.0f / (1.0f - p), seed, offset, n);
  CUDA_CHECK_LAUNCH("dropout_backward_kernel");
}

void gumbel_sigmoid_st_forward(float* mask, const float* logits, float tau, bool noise, uint64_t seed,
                               uint64_t offset, int64_t n) {
  if (n == 0) return;
  gumbel_forward_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(mask, logits, tau, noise, seed, offset, n);
  CUDA_CHECK_LAUNCH("gumbel_forward_kernel");
}

void gumbel_sigmoid_st_backward(float* dlogits, const float* dmask, const float* logits, float tau, bool noise,
                                uint64_t seed, uint64_t offset, int64_t n) {
  if (n == 0) return;
  gumbel_backward_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(dlogits, dmask, logits, tau, noise, seed, offset,
                                                                  n);
  CUDA_CHECK_LAUNCH("gumbel_backward_kernel");
}

}  // namespace st::cuda
