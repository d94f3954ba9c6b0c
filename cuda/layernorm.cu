// LayerNorm over the last dim: one block per row. Two passes for the
// variance, as on the CPU (the one-pass formula cancels when |mean| >> std).
#include "cuda/launch.h"
#include "engine/kernels.h"

namespace st::cuda {
namespace {

constexpr int kRowThreads = 128;

__global__ void layernorm_kernel(float* out, float* mean, float* rstd, const float* x, const float* weight,
                                 const float* bias, int n, float eps) {
  const int64_t r = blockIdx.x;
  const float* xr = x + r * n;
  float s = 0.0f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) s += xr[i];
  const float m = block_sum(s) / float(n);
  float v = 0.0f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) v += (xr[i] - m) * (xr[i] - m);
  const float inv = rsqrtf(block_sum(v) / float(n) + eps);
  for (int i = threadIdx.x; i < n; i += blockDim.x) out[r * n + i] = (xr[i] - m) * inv * weight[i] + bias[i];
  if (threadIdx.x == 0) mean[r] = m, rstd[r] = inv;
}

// With xhat = (x - mean) rstd and dxhat = dy w:
//   dx += rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat))
__global__ void layernorm_dx_kernel(float* dx, const float* dout, const float* x, const float* weight,
                                    const float* mean, const float* rstd, int n) {
  const int64_t r = blockIdx.x;
  const float* g = dout + r * n;
  const float* xr = x + r * n;
  const float mu = mean[r], s = rstd[r];
  float a = 0.0f, b = 0.0f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const float dxhat = g[i] * weight[i];
    a += dxhat;
    b += dxhat * (xr[i] - mu) * s;
  }
  const float mean_dxhat = block_sum(a) / float(n);
  const float mean_dxhat_xhat = block_sum(b) / float(n);
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const float xhat = (xr[i] - mu) * s;
    dx[r * n + i] += s * (g[i] * weight[i] - mean_dxhat - xhat * mean_dxhat_xhat);
  }
}

// dw += sum_rows dy xhat, db += sum_rows dy: one thread per column, rows in order.
__global__ void layernorm_dparams_kernel(float* dweight, float* dbias, const float* dout, const float* x,
                                         const float* mean, const float* rstd, int64_t rows, int n) {
  GRID_STRIDE_LOOP(i, n) {
    float dw = 0.0f, db = 0.0f;
    for (int64_t r = 0; r < rows; r++) {
      const float g = dout[r * n + i];
      dw += g * (x[r * n + i] - mean[r]) * rstd[r];
      db += g;
    }
    if (dweight) dweight[i] += dw;
    if (dbias) dbias[i] += db;
  }
}

}  // namespace

void layernorm_forward(float* out, float* mean, float* rstd, const float* x, const float* weight, const float* bias,
                       int64_t rows, int n, float eps) {
  if (rows == 0 || n == 0) return;
  layernorm_kernel<<<row_blocks(rows), kRowThreads, 0, stream()>>>(out, mean, rstd, x, weight, bias, n, eps);
  CUDA_CHECK_LAUNCH("layernorm_kernel");
}

void layernorm_backward(float* dx, float* dweight, float* dbias, const float* dout, const float* x,
                        const float* weight, const float* mean, const float* rstd, int64_t rows, int n) {
  if (rows == 0 || n == 0) return;
  if (dx) {
    layernorm_dx_kernel<<<row_blocks(rows), kRowThreads, 0, stream()>>>(dx, dout, x, weight, mean, rstd, n);
    CUDA_CHECK_LAUNCH("layernorm_dx_kernel");
  }
  if (dweight || dbias) {
    layernorm_dparams_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(dweight, dbias, dout, x, mean, rstd, rows, n);
    CUDA_CHECK_LAUNCH("layernorm_dparams_kernel");
  }
}

}  // namespace st::cuda
