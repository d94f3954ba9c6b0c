// LayerNorm over the last dimension: y = (x - mean) / sqrt(var + eps) * w + b.
#include <algorithm>
#include <cmath>

#include "engine/ops/common.h"
#include "engine/ops/normalize_rows.h"

namespace st {
namespace cpu {

constexpr int kRowsAtOnce = 4;

// Rows first .. first + count (count <= kRowsAtOnce) of x (rows, n).
static void normalize_block(float* out, float* mean, float* rstd, const float* x, const float* weight,
                            const float* bias, int64_t first, int64_t count, int n, float eps) {
  out += first * n, x += first * n, mean += first, rstd += first;
  if (count == kRowsAtOnce) return normalize_rows<kRowsAtOnce>(out, mean, rstd, x, weight, bias, n, eps);
  for (int64_t r = 0; r < count; r++)
    normalize_rows<1>(out + r * n, mean + r, rstd + r, x + r * n, weight, bias, n, eps);
}

void layernorm_forward(float* out, float* mean, float* rstd, const float* x, const float* weight,
                       const float* bias, int64_t rows, int n, float eps) {
  const int64_t blocks = (rows + kRowsAtOnce - 1) / kRowsAtOnce;
  parallel_for(blocks, use_threads(rows * n, 1 << 14), [&](int64_t blk) {
    const int64_t first = blk * kRowsAtOnce;
    normalize_block(out, mean, rstd, x, weight, bias, first, std::min<int64_t>(kRowsAtOnce, rows - first), n, eps);
  });
}

void add_layernorm_forward(float* out, float* sum, float* mean, float* rstd, const float* x, const float* r,
                           const float* weight, const float* bias, int64_t rows, int n, float eps) {
  const int64_t blocks = (rows + kRowsAtOnce - 1) / kRowsAtOnce;
  parallel_for(blocks, use_threads(rows * n, 1 << 14), [&](int64_t blk) {
    const int64_t first = blk * kRowsAtOnce, count = std::min<int64_t>(kRowsAtOnce, rows - first);
    float* s = sum + first * n;
#pragma omp simd
    for (int64_t i = 0; i < count * n; i++) s[i] = x[first * n + i] + r[first * n + i];
    normalize_block(out, mean, rstd, sum, weight, bias, first, count, n, eps);
  });
}

// With xhat = (x - mean) * rstd and dxhat = dy * w:
//   dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
//   dw += sum_rows dy * xhat,  db += sum_rows dy
void layernorm_backward(float* dx, float* dweight, float* dbias, const float* dout, const float* x,
                        const float* weight, const float* mean, const float* rstd, int64_t rows, int n) {
  const bool parallel = use_threads(rows * n, 1 << 14);
  if (dx) {
    parallel_for(rows, parallel, [&](int64_t r) {
      const float* g = dout + r * n;
      const float* xr = x + r * n;
      float mu = mean[r], s = rstd[r];
      float mean_dxhat = 0.0f, mean_dxhat_xhat = 0.0f;
#pragma omp simd reduction(+ : mean_dxhat, mean_dxhat_xhat)
      for (int i = 0; i < n; i++) {
        float dxhat = g[i] * weight[i];
        mean_dxhat += dxhat;
        mean_dxhat_xhat += dxhat * (xr[i] - mu) * s;
      }
      mean_dxhat /= float(n);
      mean_dxhat_xhat /= float(n);
#pragma omp simd
      for (int i = 0; i < n; i++) {
        float xhat = (xr[i] - mu) * s;
        dx[r * n + i] += s * (g[i] * weight[i] - mean_dxhat - xhat * mean_dxhat_xhat);
      }
    });
  }
  if (dweight || dbias) {
    // Each thread owns a slice of the columns, so the sums over rows do not race.
    parallel_ranges(n, parallel, [&](int64_t lo, int64_t hi) {
      for (int64_t r = 0; r < rows; r++) {
        const float* g = dout + r * n;
        const float* xr = x + r * n;
        for (int64_t i = lo; i < hi; i++) {
          if (dweight) dweight[i] += g[i] * (xr[i] - mean[r]) * rstd[r];
          if (dbias) dbias[i] += g[i];
        }
      }
    });
  }
}

}  // namespace cpu

static void check_layernorm(const char* op, const Tensor& x, const Tensor& weight, const Tensor& bias, float eps) {
  require_f32(op, x, "x");
  if (x.rank() == 0 || weight.shape() != Shape{x.dim(-1)} || bias.shape() != Shape{x.dim(-1)})
    shape_error(op, "x " + to_string(x.shape()) + " needs weight and bias of shape (" +
                        (x.rank() ? std::to_string(x.dim(-1)) : "?") + "), got " + to_string(weight.shape()) +
                        " and " + to_string(bias.shape()));
  if (!(eps > 0.0f)) throw ArgumentError(std::string(op) + ": eps must be positive, got " + std::to_string(eps));
}

Tensor layernorm(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps) {
  const char* op = "layernorm";
  Device dev = common_device(op, {&x, &weight, &bias});
  check_layernorm(op, x, weight, bias, eps);
  int64_t rows = rows_of(x);
  int n = int(x.dim(-1));
  Tensor out = Tensor::empty(x.shape(), DType::F32, dev);
  Tensor mean = Tensor::empty({rows}, DType::F32, dev), rstd = Tensor::empty({rows}, DType::F32, dev);
  ST_KERNEL(dev, layernorm_forward)(out.data(), mean.data(), rstd.data(), x.data(), weight.data(), bias.data(),
                                    rows, n, eps);
  if (needs_grad({&x, &weight, &bias})) {
    record(op, out, [x, weight, bias, mean, rstd, rows, n, dev](const Tensor& dout) {
      float* dx = x.requires_grad() ? grad_buffer(x).data() : nullptr;
      float* dw = weight.requires_grad() ? grad_buffer(weight).data() : nullptr;
      float* db = bias.requires_grad() ? grad_buffer(bias).data() : nullptr;
      ST_KERNEL(dev, layernorm_backward)(dx, dw, db, dout.data(), x.data(), weight.data(), mean.data(),
                                         rstd.data(), rows, n);
    });
  }
  return out;
}

Tensor add_layernorm(const Tensor& x, const Tensor& residual, const Tensor& weight, const Tensor& bias, float eps) {
  const char* op = "add_layernorm";
  Device dev = common_device(op, {&x, &residual, &weight, &bias});
  check_layernorm(op, x, weight, bias, eps);
  require_f32(op, residual, "residual");
  if (residual.shape() != x.shape())
    shape_error(op, "x " + to_string(x.shape()) + " and residual " + to_string(residual.shape()) + " must match");
  int64_t rows = rows_of(x);
  int n = int(x.dim(-1));
  Tensor out = Tensor::empty(x.shape(), DType::F32, dev), sum = Tensor::empty(x.shape(), DType::F32, dev);
  Tensor mean = Tensor::empty({rows}, DType::F32, dev), rstd = Tensor::empty({rows}, DType::F32, dev);
  ST_KERNEL(dev, add_layernorm_forward)(out.data(), sum.data(), mean.data(), rstd.data(), x.data(), residual.data(),
                                        weight.data(), bias.data(), rows, n, eps);
  if (needs_grad({&x, &residual, &weight, &bias})) {
    record(op, out, [x, residual, weight, bias, sum, mean, rstd, rows, n, dev](const Tensor& dout) {
      // The gradient of the sum reaches both addends unchanged.
      const bool to_sum = x.requires_grad() || residual.requires_grad();
      Tensor dsum = to_sum ? Tensor::zeros(x.shape(), DType::F32, dev) : Tensor();
      float* dw = weight.requires_grad() ? grad_buffer(weight).data() : nullptr;
      float* db = bias.requires_grad() ? grad_buffer(bias).data() : nullptr;
      ST_KERNEL(dev, layernorm_backward)(to_sum ? dsum.data() : nullptr, dw, db, dout.data(), sum.data(),
                                         weight.data(), mean.data(), rstd.data(), rows, n);
      for (const Tensor* t : {&x, &residual})
        if (t->requires_grad()) ST_KERNEL(dev, scale_backward)(grad_buffer(*t).data(), dsum.data(), 1.0f, t->numel());
    });
  }
  return out;
}

}  // namespace st
