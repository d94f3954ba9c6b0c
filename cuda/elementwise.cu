// Element-wise kernels: broadcasting binary arithmetic, scalar affine maps
// and the activations, one thread per element. The per-element formulas
// are the CPU's own (engine/ops/elementwise_math.h).
#include "cuda/launch.h"
#include "engine/kernels.h"
#include "engine/ops/elementwise_math.h"

namespace st::cuda {
namespace {

// Element `i` of the output, in row-major order over g.size, reads a and b at these offsets.
__device__ inline void offsets_of(const Broadcast& g, int64_t i, int64_t& off_a, int64_t& off_b) {
  off_a = 0, off_b = 0;
  for (int d = g.rank - 1; d >= 0; d--) {
    const int64_t idx = i % g.size[d];
    i /= g.size[d];
    off_a += idx * g.stride_a[d];
    off_b += idx * g.stride_b[d];
  }
}

__global__ void binary_forward_kernel(Binary op, float* out, const float* a, const float* b, Broadcast g, int64_t n) {
  GRID_STRIDE_LOOP(i, n) {
    int64_t off_a, off_b;
    offsets_of(g, i, off_a, off_b);
    out[i] = cpu::apply(op, a[off_a], b[off_b]);
  }
}

// The gradient of one operand. Its elements are indexed by the output dims
// where its stride is not 0 ("kept"); the dims where it is broadcast
// ("summed") each add one output element's partial into it. One thread per
// operand element loops over the summed dims itself, so there are no
// atomics and the sum has the same order on every run.
struct OperandGrad {
  int kept_rank = 0, summed_rank = 0;
  int64_t kept_size[Broadcast::kMaxRank], summed_size[Broadcast::kMaxRank];
  // strides of the output (contiguous), a and b along those dims
  int64_t kept_out[Broadcast::kMaxRank], kept_a[Broadcast::kMaxRank], kept_b[Broadcast::kMaxRank];
  int64_t summed_out[Broadcast::kMaxRank], summed_a[Broadcast::kMaxRank], summed_b[Broadcast::kMaxRank];
  int64_t kept_n = 1, summed_n = 1;
};

OperandGrad plan_operand_grad(const Broadcast& g, bool of_a) {
  OperandGrad p;
  int64_t out_stride = 1;
  int64_t out_strides[Broadcast::kMaxRank];
  for (int d = g.rank - 1; d >= 0; d--) out_strides[d] = out_stride, out_stride *= g.size[d];
  for (int d = 0; d < g.rank; d++) {
    const bool broadcast = (of_a ? g.stride_a[d] : g.stride_b[d]) == 0 && g.size[d] > 1;
    if (broadcast) {
      const int j = p.summed_rank++;
      p.summed_size[j] = g.size[d], p.summed_out[j] = out_strides[d];
      p.summed_a[j] = g.stride_a[d], p.summed_b[j] = g.stride_b[d];
      p.summed_n *= g.size[d];
    } else {
      const int j = p.kept_rank++;
      p.kept_size[j] = g.size[d], p.kept_out[j] = out_strides[d];
      p.kept_a[j] = g.stride_a[d], p.kept_b[j] = g.stride_b[d];
      p.kept_n *= g.size[d];
    }
  }
  return p;
}

__global__ void binary_backward_kernel(Binary op, bool of_a, float* dst, const float* dout, const float* a,
                                       const float* b, OperandGrad p) {
  GRID_STRIDE_LOOP(t, p.kept_n) {
    int64_t out0 = 0, a0 = 0, b0 = 0, rest = t;
    for (int d = p.kept_rank - 1; d >= 0; d--) {
      const int64_t idx = rest % p.kept_size[d];
      rest /= p.kept_size[d];
      out0 += idx * p.kept_out[d], a0 += idx * p.kept_a[d], b0 += idx * p.kept_b[d];
    }
    float sum = 0.0f;
    for (int64_t s = 0; s < p.summed_n; s++) {
      int64_t o = out0, ia = a0, ib = b0, r = s;
      for (int d = p.summed_rank - 1; d >= 0; d--) {
        const int64_t idx = r % p.summed_size[d];
        r /= p.summed_size[d];
        o += idx * p.summed_out[d], ia += idx * p.summed_a[d], ib += idx * p.summed_b[d];
      }
      float ga, gb;
      cpu::partials(op, a[ia], b[ib], dout[o], ga, gb);
      sum += of_a ? ga : gb;
    }
    dst[of_a ? a0 : b0] += sum;
  }
}

__global__ void scale_shift_kernel(float* out, const float* x, float scale, float shift, int64_t n) {
  GRID_STRIDE_LOOP(i, n) out[i] = scale * x[i] + shift;
}

__global__ void scale_backward_kernel(float* dx, const float* dout, float scale, int64_t n) {
  GRID_STRIDE_LOOP(i, n) dx[i] += scale * dout[i];
}

__global__ void unary_forward_kernel(Unary op, float* out, const float* x, int64_t n) {
  GRID_STRIDE_LOOP(i, n) out[i] = cpu::unary(op, x[i]);
}

// y[r, j] += bias[j], out = op(y): thread per element
__global__ void bias_act_kernel(Unary op, float* out, float* y, const float* bias, int64_t rows, int n) {
  GRID_STRIDE_LOOP(i, rows * n) {
    const float pre = y[i] + (bias ? bias[i % n] : 0.0f);
    y[i] = pre;
    out[i] = cpu::unary(op, pre);
  }
}

__global__ void unary_backward_kernel(Unary op, float* dx, const float* dout, const float* x, const float* out,
                                      int64_t n) {
  GRID_STRIDE_LOOP(i, n) dx[i] += dout[i] * cpu::unary_derivative(op, x[i], out[i]);
}

}  // namespace

void binary_forward(Binary op, float* out, const float* a, const float* b, const Broadcast& g) {
  const int64_t n = g.numel();
  if (n == 0) return;
  binary_forward_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(op, out, a, b, g, n);
  CUDA_CHECK_LAUNCH("binary_forward_kernel");
}

void binary_backward(Binary op, float* da, float* db, const float* dout, const float* a, const float* b,
                     const Broadcast& g) {
  if (g.numel() == 0) return;
  for (const bool of_a : {true, false}) {
    float* dst = of_a ? da : db;
    if (!dst) continue;
    const OperandGrad p = plan_operand_grad(g, of_a);
    binary_backward_kernel<<<blocks_for(p.kept_n), kThreads, 0, stream()>>>(op, of_a, dst, dout, a, b, p);
    CUDA_CHECK_LAUNCH("binary_backward_kernel");
  }
}

void scale_shift_forward(float* out, const float* x, float scale, float shift, int64_t n) {
  if (n == 0) return;
  scale_shift_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(out, x, scale, shift, n);
  CUDA_CHECK_LAUNCH("scale_shift_kernel");
}

void scale_backward(float* dx, const float* dout, float scale, int64_t n) {
  if (n == 0) return;
  scale_backward_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(dx, dout, scale, n);
  CUDA_CHECK_LAUNCH("scale_backward_kernel");
}

void unary_forward(Unary op, float* out, const float* x, int64_t n) {
  if (n == 0) return;
  unary_forward_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(op, out, x, n);
  CUDA_CHECK_LAUNCH("unary_forward_kernel");
}

void bias_act_forward(Unary op, float* out, float* y, const float* bias, int64_t rows, int n) {
  if (rows * n == 0) return;
  bias_act_kernel<<<blocks_for(rows * n), kThreads, 0, stream()>>>(op, out, y, bias, rows, n);
  CUDA_CHECK_LAUNCH("bias_act_kernel");
}

void unary_backward(Unary op, float* dx, const float* dout, const float* x, const float* out, int64_t n) {
  if (n == 0) return;
  unary_backward_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(op, dx, dout, x, out, n);
  CUDA_CHECK_LAUNCH("unary_backward_kernel");
}

}  // namespace st::cuda
