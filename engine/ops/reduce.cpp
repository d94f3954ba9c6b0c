// Sums and means over the last dimension or over everything, and the masked
// mean over tokens that the trimmers use for their global features.
#include "engine/ops/common.h"

namespace st {
namespace cpu {

void sum_rows_forward(float* out, const float* x, int64_t rows, int64_t n, float scale) {
  parallel_for(rows, rows > 1 && use_threads(rows * n, 1 << 15), [&](int64_t r) {
    double s = 0.0;  // long rows (a whole-tensor sum) lose digits in float
    for (int64_t i = 0; i < n; i++) s += x[r * n + i];
    out[r] = float(s * scale);
  });
}

void sum_rows_backward(float* dx, const float* dout, int64_t rows, int64_t n, float scale) {
  parallel_for(rows, use_threads(rows * n, 1 << 15), [&](int64_t r) {
    float g = dout[r] * scale;
    for (int64_t i = 0; i < n; i++) dx[r * n + i] += g;
  });
}

// out[b] = sum_i M[b,i] x[b,i] / S_b,  S_b = sum_i M[b,i]   (zeros when S_b = 0)
void masked_mean_forward(float* out, const float* x, const float* mask, int B, int N, int d) {
  parallel_for(B, use_threads(int64_t(B) * N * d, 1 << 15), [&](int64_t b) {
    float* y = out + int64_t(b) * d;
    for (int j = 0; j < d; j++) y[j] = 0.0f;
    float S = 0.0f;
    for (int i = 0; i < N; i++) {
      float m = mask[int64_t(b) * N + i];
      S += m;
      if (m == 0.0f) continue;
      const float* xi = x + (int64_t(b) * N + i) * d;
      for (int j = 0; j < d; j++) y[j] += m * xi[j];
    }
    float inv = S != 0.0f ? 1.0f / S : 0.0f;
    for (int j = 0; j < d; j++) y[j] *= inv;
  });
}

// dx[b,i] += M[b,i] g[b] / S_b
// dM[b,i] += g[b] . (x[b,i] - out[b]) / S_b
void masked_mean_backward(float* dx, float* dmask, const float* dout, const float* x, const float* mask,
                          const float* out, int B, int N, int d) {
  parallel_for(B, use_threads(int64_t(B) * N * d, 1 << 15), [&](int64_t b) {
    float S = 0.0f;
    for (int i = 0; i < N; i++) S += mask[int64_t(b) * N + i];
    if (S == 0.0f) return;
    float inv = 1.0f / S;
    const float* g = dout + int64_t(b) * d;
    const float* y = out + int64_t(b) * d;
    for (int i = 0; i < N; i++) {
      const float* xi = x + (int64_t(b) * N + i) * d;
      float m = mask[int64_t(b) * N + i];
      if (dx) {
        float* dxi = dx + (int64_t(b) * N + i) * d;
        for (int j = 0; j < d; j++) dxi[j] += m * inv * g[j];
      }
      if (dmask) {
        float dot = 0.0f;
        for (int j = 0; j < d; j++) dot += g[j] * (xi[j] - y[j]);
        dmask[int64_t(b) * N + i] += dot * inv;
      }
    }
  });
}

}  // namespace cpu

static Tensor sum_rows(const char* op, const Tensor& x, int64_t rows, int64_t n, float scale,
                       const Shape& out_shape) {
  Device dev = common_device(op, {&x});
  require_f32(op, x, "x");
  Tensor out = Tensor::empty(out_shape, DType::F32, dev);
  ST_KERNEL(dev, sum_rows_forward)(out.data(), x.data(), rows, n, scale);
  if (needs_grad({&x})) {
    record(op, out, [x, rows, n, scale, dev](const Tensor& dout) {
      ST_KERNEL(dev, sum_rows_backward)(grad_buffer(x).data(), dout.data(), rows, n, scale);
    });
  }
  return out;
}

static Shape drop_last(const char* op, const Tensor& x) {
  if (x.rank() == 0) shape_error(op, "needs at least one dimension, got a scalar");
  Shape s = x.shape();
  s.pop_back();
  return s;
}

Tensor sum_last(const Tensor& x) {
  Shape s = drop_last("sum_last", x);
  return sum_rows("sum_last", x, rows_of(x), x.dim(-1), 1.0f, s);
}

Tensor mean_last(const Tensor& x) {
  Shape s = drop_last("mean_last", x);
  if (x.dim(-1) == 0) shape_error("mean_last", "mean over an empty dimension, shape " + to_string(x.shape()));
  return sum_rows("mean_last", x, rows_of(x), x.dim(-1), 1.0f / float(x.dim(-1)), s);
}

Tensor sum_all(const Tensor& x) { return sum_rows("sum_all", x, 1, x.numel(), 1.0f, {1}); }

Tensor mean_all(const Tensor& x) {
  if (x.numel() == 0) shape_error("mean_all", "mean of an empty tensor " + to_string(x.shape()));
  return sum_rows("mean_all", x, 1, x.numel(), 1.0f / float(x.numel()), {1});
}

Tensor masked_mean(const Tensor& x, const Tensor& mask) {
  const char* op = "masked_mean";
  Device dev = common_device(op, {&x, &mask});
  require_f32(op, x, "x");
  require_f32(op, mask, "mask");
  if (x.rank() != 3 || mask.rank() != 2 || mask.dim(0) != x.dim(0) || mask.dim(1) != x.dim(1))
    shape_error(op, "expects x (B, N, d) and mask (B, N), got x " + to_string(x.shape()) + " and mask " +
                        to_string(mask.shape()));
  int B = int(x.dim(0)), N = int(x.dim(1)), d = int(x.dim(2));
  Tensor out = Tensor::empty({B, d}, DType::F32, dev);
  ST_KERNEL(dev, masked_mean_forward)(out.data(), x.data(), mask.data(), B, N, d);
  if (needs_grad({&x, &mask})) {
    record(op, out, [x, mask, out, B, N, d, dev](const Tensor& dout) {
      float* dx = x.requires_grad() ? grad_buffer(x).data() : nullptr;
      float* dm = mask.requires_grad() ? grad_buffer(mask).data() : nullptr;
      ST_KERNEL(dev, masked_mean_backward)(dx, dm, dout.data(), x.data(), mask.data(), out.data(), B, N, d);
    });
  }
  return out;
}

}  // namespace st
