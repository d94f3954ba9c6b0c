// LayerNorm over the last dim: one block per row. Two passes for the
// variance, as on the CPU (the one-pass formula cancels when |mean| >> std).
#include "cuda/column_sums.h"
#include "cuda/launch.h"
#include "engine/kernels.h"

namespace st::cuda {
namespace {

constexpr int kRowThreads = 128;

// With a residual, the row first becomes x + residual, written to `sum`
// (the backward pass normalises it) and read back from there: each thread
// reads only what it wrote, so no barrier is needed between.
__global__ void layernorm_kernel(float* out, float* mean, float* rstd, const float* x, const float* weight,
                                 const float* bias, int n, float eps, const float* residual, float* sum) {
  const int64_t r = blockIdx.x;
  if (residual)
    for (int i = threadIdx.x; i < n; i += blockDim.x) sum[r * n + i] = x[r * n + i] + residual[r * n + i];
  const float* xr = residual ? sum + r * n : x + r * n;
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

// dw[j] += dy[r, j] xhat[r, j] and db[j] += dy[r, j], for cuda/column_sums.h
struct LayerNormParamGradients {
  const float *dout, *x, *mean, *rstd;
  int n;
  __device__ void operator()(int64_t r, int64_t j, float* s) const {
    const float g = dout[r * n + j];
    s[0] += g * (x[r * n + j] - mean[r]) * rstd[r];
    s[1] += g;
  }
};

void layernorm_dparams(float* dweight, float* dbias, const float* dout, const float* x, const float* mean,
                       const float* rstd, int64_t rows, int n) {
  column_sums_add<2>({{dweight, dbias}}, rows, n, LayerNormParamGradients{dout, x, mean, rstd, n});
}

}  // namespace

void layernorm_forward(float* out, float* mean, float* rstd, const float* x, const float* weight, const float* bias,
                       int64_t rows, int n, float eps) {
  if (rows == 0 || n == 0) return;
  layernorm_kernel<<<row_blocks(rows), kRowThreads, 0, stream()>>>(out, mean, rstd, x, weight, bias, n, eps, nullptr,
                                                                    nullptr);
  CUDA_CHECK_LAUNCH("layernorm_kernel");
}

void add_layernorm_forward(float* out, float* sum, float* mean, float* rstd, const float* x, const float* r,
                           const float* weight, const float* bias, int64_t rows, int n, float eps) {
  if (rows == 0 || n == 0) return;
  layernorm_kernel<<<row_blocks(rows), kRowThreads, 0, stream()>>>(out, mean, rstd, x, weight, bias, n, eps, r, sum);
  CUDA_CHECK_LAUNCH("layernorm_kernel");
}

void layernorm_backward(float* dx, float* dweight, float* dbias, const float* dout, const float* x,
                        const float* weight, const float* mean, const float* rstd, int64_t rows, int n) {
  if (rows == 0 || n == 0) return;
  if (dx) {
    layernorm_dx_kernel<<<row_blocks(rows), kRowThreads, 0, stream()>>>(dx, dout, x, weight, mean, rstd, n);
    CUDA_CHECK_LAUNCH("layernorm_dx_kernel");
  }
  if (dweight || dbias) layernorm_dparams(dweight, dbias, dout, x, mean, rstd, rows, n);
}

}  // namespace st::cuda
