// The AdamW update on the GPU, one thread per parameter; the formula of
// cpu::adamw_update (engine/optim.cpp).
#include "cuda/launch.h"
#include "engine/kernels.h"

namespace st::cuda {
namespace {

__global__ void adamw_kernel(float* w, float* m, float* v, const float* g, int64_t n, float lr, float decay,
                             float beta1, float beta2, float c1, float c2, float eps) {
  GRID_STRIDE_LOOP(i, n) {
    m[i] = beta1 * m[i] + (1.0f - beta1) * g[i];
    v[i] = beta2 * v[i] + (1.0f - beta2) * g[i] * g[i];
    w[i] = w[i] * decay - lr * (m[i] / c1) / (sqrtf(v[i] / c2) + eps);
  }
}

}  // namespace

void adamw_update(float* w, float* m, float* v, const float* g, int64_t n, float lr, float decay, float beta1,
                  float beta2, float c1, float c2, float eps) {
  if (n == 0) return;
  adamw_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(w, m, v, g, n, lr, decay, beta1, beta2, c1, c2, eps);
  CUDA_CHECK_LAUNCH("adamw_kernel");
}

}  // namespace st::cuda
