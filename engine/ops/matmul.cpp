// Matrix products on top of the GEMM kernel (engine/gemm.h on the CPU, cuBLAS on the GPU).
//
// For C = op(A) op(B) the gradients are again GEMMs, written here with the
// transpose flags rather than with copies:
//   dA = dC op(B)^T   (A stored (M, K))      dA = op(B) dC^T   (A stored (K, M))
//   dB = op(A)^T dC   (B stored (K, N))      dB = dC^T op(A)   (B stored (N, K))
#include "engine/gemm.h"
#include "engine/ops/common.h"

namespace st {
namespace cpu {

void gemm(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb,
          float beta, float* C, int ldc) {
  sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void gemm_batched(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda, int64_t stride_a,
                  const float* B, int ldb, int64_t stride_b, float beta, float* C, int ldc, int64_t stride_c,
                  int batch) {
  sgemm_batched(ta, tb, M, N, K, alpha, A, lda, stride_a, B, ldb, stride_b, beta, C, ldc, stride_c, batch);
}

void add_bias_rows(float* y, const float* bias, int64_t rows, int n) {
  parallel_for(rows, use_threads(rows * n, 1 << 15), [&](int64_t r) {
#pragma omp simd
    for (int i = 0; i < n; i++) y[r * n + i] += bias[i];
  });
}

void sum_columns_add(float* dbias, const float* dy, int64_t rows, int n) {
  parallel_ranges(n, use_threads(rows * n, 1 << 15), [&](int64_t lo, int64_t hi) {
    for (int64_t r = 0; r < rows; r++)
      for (int64_t i = lo; i < hi; i++) dbias[i] += dy[r * n + i];
  });
}

}  // namespace cpu

namespace {

// Geometry of a (possibly batched) product C (batch, M, N) = op(A) op(B).
struct Product {
  int batch, M, N, K;
  int64_t stride_a, stride_b;  // 0 when one matrix serves every batch entry
  bool ta, tb;
};

// C[i] (+)= op(A[i]) op(B[i]) for every batch entry; `beta` 1 accumulates.
// A shared output (stride_c == 0) must not be written by parallel entries.
void gemm_batch(Device dev, bool ta, bool tb, int M, int N, int K, const float* A, int64_t sa, const float* B,
                int64_t sb, float beta, float* C, int64_t sc, int batch) {
  int lda = ta ? M : K, ldb = tb ? K : N;
  if (sc == 0) {
    for (int i = 0; i < batch; i++)
      ST_KERNEL(dev, gemm)(ta, tb, M, N, K, 1.0f, A + i * sa, lda, B + i * sb, ldb, i == 0 ? beta : 1.0f, C, N);
    return;
  }
  ST_KERNEL(dev, gemm_batched)(ta, tb, M, N, K, 1.0f, A, lda, sa, B, ldb, sb, beta, C, N, sc, batch);
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b, bool ta, bool tb) {
  const char* op = "matmul";
  Device dev = common_device(op, {&a, &b});
  require_f32(op, a, "a");
  require_f32(op, b, "b");
  auto fail = [&](const std::string& why) {
    shape_error(op, why + ": a " + to_string(a.shape()) + (ta ? "^T" : "") + ", b " + to_string(b.shape()) +
                        (tb ? "^T" : ""));
  };
  if (a.rank() < 2 || b.rank() < 2) fail("both operands need at least 2 dims");
  Product p;
  p.ta = ta, p.tb = tb;
  p.M = int(ta ? a.dim(-1) : a.dim(-2));
  p.K = int(ta ? a.dim(-2) : a.dim(-1));
  int kb = int(tb ? b.dim(-1) : b.dim(-2));
  p.N = int(tb ? b.dim(-2) : b.dim(-1));
  if (kb != p.K) fail("inner dimensions differ (" + std::to_string(p.K) + " vs " + std::to_string(kb) + ")");
  Shape lead_a(a.shape().begin(), a.shape().end() - 2), lead_b(b.shape().begin(), b.shape().end() - 2);
  Shape out_shape;
  if (b.rank() == 2 && !ta) {
    // (..., M, K) @ (K, N): all leading rows of a form one tall matrix.
    p.batch = 1;
    p.M = int(numel(lead_a) * a.dim(-2));
    p.stride_a = p.stride_b = 0;
    out_shape = lead_a;
  } else if (lead_b.empty() || lead_a.empty() || lead_a == lead_b) {
    out_shape = lead_a.empty() ? lead_b : lead_a;
    p.batch = int(numel(out_shape));
    p.stride_a = lead_a.empty() ? 0 : int64_t(p.M) * p.K;
    p.stride_b = lead_b.empty() ? 0 : int64_t(p.K) * p.N;
  } else {
    fail("leading (batch) dims must be equal");
  }
  int rows_m = int(ta ? a.dim(-1) : a.dim(-2));
  out_shape.push_back(rows_m);
  out_shape.push_back(p.N);
  Tensor out = Tensor::empty(out_shape, DType::F32, dev);
  int64_t sc = int64_t(p.M) * p.N;
  gemm_batch(dev, ta, tb, p.M, p.N, p.K, a.data(), p.stride_a, b.data(), p.stride_b, 0.0f, out.data(), sc, p.batch);
  if (needs_grad({&a, &b})) {
    record(op, out, [dev, a, b, p, sc](const Tensor& dout) {
      const float* dC = dout.data();
      if (a.requires_grad()) {
        float* dA = grad_buffer(a).data();
        if (!p.ta) gemm_batch(dev, false, !p.tb, p.M, p.K, p.N, dC, sc, b.data(), p.stride_b, 1.0f, dA, p.stride_a, p.batch);
        else gemm_batch(dev, p.tb, true, p.K, p.M, p.N, b.data(), p.stride_b, dC, sc, 1.0f, dA, p.stride_a, p.batch);
      }
      if (b.requires_grad()) {
        float* dB = grad_buffer(b).data();
        if (!p.tb) gemm_batch(dev, !p.ta, false, p.K, p.N, p.M, a.data(), p.stride_a, dC, sc, 1.0f, dB, p.stride_b, p.batch);
        else gemm_batch(dev, true, p.ta, p.N, p.K, p.M, dC, sc, a.data(), p.stride_a, 1.0f, dB, p.stride_b, p.batch);
      }
    });
  }
  return out;
}

// y = x w^T + b: x (..., in), w (out, in), b (out) -> y (..., out)
static void check_linear(const char* op, const Tensor& x, const Tensor& w, const Tensor& b) {
  require_f32(op, x, "x");
  require_f32(op, w, "weight");
  if (x.rank() < 1 || w.rank() != 2 || w.dim(1) != x.dim(-1) || (b.defined() && b.shape() != Shape{w.dim(0)}))
    shape_error(op, "x " + to_string(x.shape()) + " needs weight (out, " + (x.rank() ? std::to_string(x.dim(-1)) : "?") +
                        ") and bias (out), got weight " + to_string(w.shape()) + " and bias " +
                        (b.defined() ? to_string(b.shape()) : "none"));
}

// The gradients of y = x w^T + b from dy (rows, out), added to x's, w's and b's.
static void linear_backward(Device dev, const Tensor& x, const Tensor& w, const Tensor& b, const float* dy,
                            int64_t rows, int in, int n_out) {
  if (x.requires_grad())  // dx (rows, in) += dy (rows, out) @ w (out, in)
    ST_KERNEL(dev, gemm)(false, false, int(rows), in, n_out, 1.0f, dy, n_out, w.data(), in, 1.0f,
                         grad_buffer(x).data(), in);
  if (w.requires_grad())  // dw (out, in) += dy^T (out, rows) @ x (rows, in)
    ST_KERNEL(dev, gemm)(true, false, n_out, in, int(rows), 1.0f, dy, n_out, x.data(), in, 1.0f,
                         grad_buffer(w).data(), in);
  if (b.defined() && b.requires_grad()) ST_KERNEL(dev, sum_columns_add)(grad_buffer(b).data(), dy, rows, n_out);
}

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b) {
  const char* op = "linear";
  Device dev = b.defined() ? common_device(op, {&x, &w, &b}) : common_device(op, {&x, &w});
  check_linear(op, x, w, b);
  int in = int(w.dim(1)), n_out = int(w.dim(0));
  int64_t rows = rows_of(x);
  Shape out_shape = x.shape();
  out_shape.back() = n_out;
  Tensor y = Tensor::empty(out_shape, DType::F32, dev);
  ST_KERNEL(dev, gemm)(false, true, int(rows), n_out, in, 1.0f, x.data(), in, w.data(), in, 0.0f, y.data(), n_out);
  if (b.defined()) ST_KERNEL(dev, add_bias_rows)(y.data(), b.data(), rows, n_out);
  if (needs_grad({&x, &w, &b}))
    record(op, y, [dev, x, w, b, rows, in, n_out](const Tensor& dy) {
      linear_backward(dev, x, w, b, dy.data(), rows, in, n_out);
    });
  return y;
}

Tensor linear_act(const Tensor& x, const Tensor& w, const Tensor& b, Activation act) {
  const char* op = "linear_act";
  Device dev = b.defined() ? common_device(op, {&x, &w, &b}) : common_device(op, {&x, &w});
  check_linear(op, x, w, b);
  const cpu::Unary unary = act == Activation::Gelu ? cpu::Unary::Gelu : cpu::Unary::QuickGelu;
  int in = int(w.dim(1)), n_out = int(w.dim(0));
  int64_t rows = rows_of(x);
  Shape out_shape = x.shape();
  out_shape.back() = n_out;
  // pre = x w^T + b, kept for the backward pass; y = act(pre)
  Tensor pre = Tensor::empty(out_shape, DType::F32, dev), y = Tensor::empty(out_shape, DType::F32, dev);
  ST_KERNEL(dev, gemm)(false, true, int(rows), n_out, in, 1.0f, x.data(), in, w.data(), in, 0.0f, pre.data(), n_out);
  ST_KERNEL(dev, bias_act_forward)(unary, y.data(), pre.data(), b.defined() ? b.data() : nullptr, rows, n_out);
  if (needs_grad({&x, &w, &b}))
    record(op, y, [dev, x, w, b, pre, y, unary, rows, in, n_out](const Tensor& dy) {
      Tensor dpre = Tensor::zeros(pre.shape(), DType::F32, dev);
      ST_KERNEL(dev, unary_backward)(unary, dpre.data(), dy.data(), pre.data(), y.data(), pre.numel());
      linear_backward(dev, x, w, b, dpre.data(), rows, in, n_out);
    });
  return y;
}

}  // namespace st
