// Element-wise ops: broadcasting binary arithmetic, scalar affine maps, and
// the activations. Forward and backward kernels side by side, then the ops.
#include <cmath>

#include "engine/ops/common.h"
#include "engine/ops/elementwise_math.h"

namespace st {
namespace cpu {

int64_t Broadcast::numel() const {
  int64_t n = 1;
  for (int i = 0; i < rank; i++) n *= size[i];
  return n;
}

// Offsets of a and b for the outer index `o` (all dims but the last).
static inline void outer_offsets(const Broadcast& g, int64_t o, int64_t& off_a, int64_t& off_b) {
  off_a = 0, off_b = 0;
  for (int i = g.rank - 2; i >= 0; i--) {
    int64_t idx = o % g.size[i];
    o /= g.size[i];
    off_a += idx * g.stride_a[i];
    off_b += idx * g.stride_b[i];
  }
}

// One op over the rows of a broadcast. The op is a template argument, so the
// inner loops carry no switch and vectorise; the common stride patterns
// (both operands contiguous along the last dimension, or one of them a
// single value there) get loops of their own.
template <Binary Op>
static void binary_rows(float* out, const float* a, const float* b, const Broadcast& g) {
  const int64_t inner = g.rank ? g.size[g.rank - 1] : 1;
  const int64_t sa = g.rank ? g.stride_a[g.rank - 1] : 0, sb = g.rank ? g.stride_b[g.rank - 1] : 0;
  const int64_t outer = g.numel() / (inner ? inner : 1);
  parallel_for(outer, use_threads(g.numel(), 1 << 15), [&](int64_t o) {
    int64_t off_a, off_b;
    outer_offsets(g, o, off_a, off_b);
    float* y = out + o * inner;
    const float* pa = a + off_a;
    const float* pb = b + off_b;
    if (sa == 1 && sb == 1) {
#pragma omp simd
      for (int64_t i = 0; i < inner; i++) y[i] = apply(Op, pa[i], pb[i]);
    } else if (sa == 1 && sb == 0) {
      const float vb = pb[0];
#pragma omp simd
      for (int64_t i = 0; i < inner; i++) y[i] = apply(Op, pa[i], vb);
    } else if (sa == 0 && sb == 1) {
      const float va = pa[0];
#pragma omp simd
      for (int64_t i = 0; i < inner; i++) y[i] = apply(Op, va, pb[i]);
    } else {
      for (int64_t i = 0; i < inner; i++) y[i] = apply(Op, pa[i * sa], pb[i * sb]);
    }
  });
}

void binary_forward(Binary op, float* out, const float* a, const float* b, const Broadcast& g) {
  switch (op) {
    case Binary::Add: return binary_rows<Binary::Add>(out, a, b, g);
    case Binary::Sub: return binary_rows<Binary::Sub>(out, a, b, g);
    case Binary::Mul: return binary_rows<Binary::Mul>(out, a, b, g);
    case Binary::Div: return binary_rows<Binary::Div>(out, a, b, g);
  }
}

// The gradients of one op over the rows of a broadcast, with the same
// stride patterns as the forward. A contiguous operand's gradient is a
// vectorised loop; a single-value operand's is a sum, kept in the order the
// elements come so that its value does not depend on the vector width.
template <Binary Op>
static void binary_backward_rows(float* da, float* db, const float* dout, const float* a, const float* b,
                                 const Broadcast& g) {
  const int64_t inner = g.rank ? g.size[g.rank - 1] : 1;
  const int64_t sa = g.rank ? g.stride_a[g.rank - 1] : 0, sb = g.rank ? g.stride_b[g.rank - 1] : 0;
  const int64_t outer = g.numel() / (inner ? inner : 1);
  // A broadcast operand receives sums from many output elements; those
  // writes would race, so such passes run on one thread.
  bool a_full = true, b_full = true;
  for (int i = 0; i < g.rank; i++) {
    if (g.stride_a[i] == 0 && g.size[i] > 1) a_full = false;
    if (g.stride_b[i] == 0 && g.size[i] > 1) b_full = false;
  }
  const bool parallel = (!da || a_full) && (!db || b_full) && use_threads(g.numel(), 1 << 15);
  parallel_for(outer, parallel, [&](int64_t o) {
    int64_t off_a, off_b;
    outer_offsets(g, o, off_a, off_b);
    const float* gy = dout + o * inner;
    const float *pa = a + off_a, *pb = b + off_b;
    float *ga = da ? da + off_a : nullptr, *gb = db ? db + off_b : nullptr;
    if (sa == 1 && sb == 1) {
      if (ga) {
#pragma omp simd
        for (int64_t i = 0; i < inner; i++) ga[i] += partial_a(Op, pa[i], pb[i], gy[i]);
      }
      if (gb) {
#pragma omp simd
        for (int64_t i = 0; i < inner; i++) gb[i] += partial_b(Op, pa[i], pb[i], gy[i]);
      }
    } else if (sa == 1 && sb == 0) {
      const float vb = pb[0];
      if (ga) {
#pragma omp simd
        for (int64_t i = 0; i < inner; i++) ga[i] += partial_a(Op, pa[i], vb, gy[i]);
      }
      if (gb) {
        float sum = gb[0];
        for (int64_t i = 0; i < inner; i++) sum += partial_b(Op, pa[i], vb, gy[i]);
        gb[0] = sum;
      }
    } else if (sa == 0 && sb == 1) {
      const float va = pa[0];
      if (gb) {
#pragma omp simd
        for (int64_t i = 0; i < inner; i++) gb[i] += partial_b(Op, va, pb[i], gy[i]);
      }
      if (ga) {
        float sum = ga[0];
        for (int64_t i = 0; i < inner; i++) sum += partial_a(Op, va, pb[i], gy[i]);
        ga[0] = sum;
      }
    } else {
      for (int64_t i = 0; i < inner; i++) {
        if (ga) ga[i * sa] += partial_a(Op, pa[i * sa], pb[i * sb], gy[i]);
        if (gb) gb[i * sb] += partial_b(Op, pa[i * sa], pb[i * sb], gy[i]);
      }
    }
  });
}

void binary_backward(Binary op, float* da, float* db, const float* dout, const float* a, const float* b,
                     const Broadcast& g) {
  switch (op) {
    case Binary::Add: return binary_backward_rows<Binary::Add>(da, db, dout, a, b, g);
    case Binary::Sub: return binary_backward_rows<Binary::Sub>(da, db, dout, a, b, g);
    case Binary::Mul: return binary_backward_rows<Binary::Mul>(da, db, dout, a, b, g);
    case Binary::Div: return binary_backward_rows<Binary::Div>(da, db, dout, a, b, g);
  }
}

void scale_shift_forward(float* out, const float* x, float scale, float shift, int64_t n) {
  simd_for(n, use_threads(n, 1 << 16), [=](int64_t i) { out[i] = scale * x[i] + shift; });
}

void scale_backward(float* dx, const float* dout, float scale, int64_t n) {
  simd_for(n, use_threads(n, 1 << 16), [=](int64_t i) { dx[i] += scale * dout[i]; });
}

// One loop per op, so the op is a constant inside it and the loop vectorises
// (with libmvec's expf and erff, see vector_math.h).
template <Unary op>
static void unary_forward_loop(float* out, const float* x, int64_t n) {
  simd_for(n, use_threads(n, 1 << 14), [=](int64_t i) { out[i] = unary(op, x[i]); });
}

template <Unary op>
static void unary_backward_loop(float* dx, const float* dout, const float* x, const float* out, int64_t n) {
  simd_for(n, use_threads(n, 1 << 14), [=](int64_t i) { dx[i] += dout[i] * unary_derivative(op, x[i], out[i]); });
}

// Two loops, the bias row by row and then the activation over the whole
// buffer at once: a row-by-row activation would leave each row's last
// n % 16 elements to the scalar erff and expf, which differ from the vector
// ones in the last bits, and the fused op must give the unfused ops' values.
// (On the GPU it is one pass.)
template <Unary op>
static void bias_act_loop(float* out, float* y, const float* bias, int64_t rows, int n) {
  if (bias) add_bias_rows(y, bias, rows, n);
  unary_forward_loop<op>(out, y, rows * n);
}

void bias_act_forward(Unary op, float* out, float* y, const float* bias, int64_t rows, int n) {
  switch (op) {
    case Unary::Gelu: return bias_act_loop<Unary::Gelu>(out, y, bias, rows, n);
    case Unary::QuickGelu: return bias_act_loop<Unary::QuickGelu>(out, y, bias, rows, n);
    default: throw ArgumentError("bias_act_forward: compiled for GELU and QuickGELU only");
  }
}

// The run-time op picks the loop compiled for it.
void unary_forward(Unary op, float* out, const float* x, int64_t n) {
  switch (op) {
    case Unary::Exp: return unary_forward_loop<Unary::Exp>(out, x, n);
    case Unary::Log: return unary_forward_loop<Unary::Log>(out, x, n);
    case Unary::Tanh: return unary_forward_loop<Unary::Tanh>(out, x, n);
    case Unary::Sigmoid: return unary_forward_loop<Unary::Sigmoid>(out, x, n);
    case Unary::Gelu: return unary_forward_loop<Unary::Gelu>(out, x, n);
    case Unary::QuickGelu: return unary_forward_loop<Unary::QuickGelu>(out, x, n);
    case Unary::Silu: return unary_forward_loop<Unary::Silu>(out, x, n);
    case Unary::Relu: return unary_forward_loop<Unary::Relu>(out, x, n);
  }
}

void unary_backward(Unary op, float* dx, const float* dout, const float* x, const float* out, int64_t n) {
  switch (op) {
    case Unary::Exp: return unary_backward_loop<Unary::Exp>(dx, dout, x, out, n);
    case Unary::Log: return unary_backward_loop<Unary::Log>(dx, dout, x, out, n);
    case Unary::Tanh: return unary_backward_loop<Unary::Tanh>(dx, dout, x, out, n);
    case Unary::Sigmoid: return unary_backward_loop<Unary::Sigmoid>(dx, dout, x, out, n);
    case Unary::Gelu: return unary_backward_loop<Unary::Gelu>(dx, dout, x, out, n);
    case Unary::QuickGelu: return unary_backward_loop<Unary::QuickGelu>(dx, dout, x, out, n);
    case Unary::Silu: return unary_backward_loop<Unary::Silu>(dx, dout, x, out, n);
    case Unary::Relu: return unary_backward_loop<Unary::Relu>(dx, dout, x, out, n);
  }
}

}  // namespace cpu

// --- ops ----------------------------------------------------------------------

// The broadcast geometry of a and b, NumPy rules, with the result shape.
static cpu::Broadcast broadcast_plan(const char* op, const Shape& sa, const Shape& sb, Shape& out_shape) {
  size_t rank = std::max(sa.size(), sb.size());
  out_shape.assign(rank, 1);
  std::vector<int64_t> da(rank, 1), db(rank, 1);
  for (size_t i = 0; i < sa.size(); i++) da[rank - sa.size() + i] = sa[i];
  for (size_t i = 0; i < sb.size(); i++) db[rank - sb.size() + i] = sb[i];
  for (size_t i = 0; i < rank; i++) {
    if (da[i] != db[i] && da[i] != 1 && db[i] != 1)
      shape_error(op, "shapes " + to_string(sa) + " and " + to_string(sb) + " do not broadcast");
    out_shape[i] = da[i] == 1 ? db[i] : da[i];
  }
  // Contiguous strides, 0 along broadcast dims; then drop size-1 dims and
  // merge neighbours that are contiguous in both operands.
  std::vector<int64_t> st_a(rank), st_b(rank);
  int64_t ra = 1, rb = 1;
  for (size_t i = rank; i-- > 0;) {
    st_a[i] = da[i] == 1 ? 0 : ra;
    st_b[i] = db[i] == 1 ? 0 : rb;
    ra *= da[i], rb *= db[i];
  }
  cpu::Broadcast g;
  for (size_t i = 0; i < rank; i++) {
    if (out_shape[i] == 1) continue;
    if (g.rank > 0 && g.stride_a[g.rank - 1] == st_a[i] * out_shape[i] &&
        g.stride_b[g.rank - 1] == st_b[i] * out_shape[i]) {
      g.size[g.rank - 1] *= out_shape[i];
      g.stride_a[g.rank - 1] = st_a[i];
      g.stride_b[g.rank - 1] = st_b[i];
      continue;
    }
    if (g.rank == cpu::Broadcast::kMaxRank) shape_error(op, "too many broadcast dimensions");
    g.size[g.rank] = out_shape[i];
    g.stride_a[g.rank] = st_a[i];
    g.stride_b[g.rank] = st_b[i];
    g.rank++;
  }
  return g;
}

static Tensor binary_op(const char* op_name, cpu::Binary op, const Tensor& a, const Tensor& b) {
  Device dev = common_device(op_name, {&a, &b});
  require_f32(op_name, a, "a");
  require_f32(op_name, b, "b");
  Shape out_shape;
  cpu::Broadcast g = broadcast_plan(op_name, a.shape(), b.shape(), out_shape);
  Tensor out = Tensor::empty(out_shape, DType::F32, dev);
  ST_KERNEL(dev, binary_forward)(op, out.data(), a.data(), b.data(), g);
  if (needs_grad({&a, &b})) {
    record(op_name, out, [op, a, b, g, dev](const Tensor& dout) {
      float* da = a.requires_grad() ? grad_buffer(a).data() : nullptr;
      float* db = b.requires_grad() ? grad_buffer(b).data() : nullptr;
      ST_KERNEL(dev, binary_backward)(op, da, db, dout.data(), a.data(), b.data(), g);
    });
  }
  return out;
}

Tensor add(const Tensor& a, const Tensor& b) { return binary_op("add", cpu::Binary::Add, a, b); }
Tensor sub(const Tensor& a, const Tensor& b) { return binary_op("sub", cpu::Binary::Sub, a, b); }
Tensor mul(const Tensor& a, const Tensor& b) { return binary_op("mul", cpu::Binary::Mul, a, b); }
Tensor div(const Tensor& a, const Tensor& b) { return binary_op("div", cpu::Binary::Div, a, b); }

// out = scale * x + shift
static Tensor affine(const char* op_name, const Tensor& x, float scale, float shift) {
  Device dev = common_device(op_name, {&x});
  require_f32(op_name, x, "x");
  Tensor out = Tensor::empty(x.shape(), DType::F32, dev);
  ST_KERNEL(dev, scale_shift_forward)(out.data(), x.data(), scale, shift, x.numel());
  if (needs_grad({&x})) {
    record(op_name, out, [x, scale, dev](const Tensor& dout) {
      ST_KERNEL(dev, scale_backward)(grad_buffer(x).data(), dout.data(), scale, x.numel());
    });
  }
  return out;
}

Tensor add_scalar(const Tensor& x, float s) { return affine("add_scalar", x, 1.0f, s); }
Tensor mul_scalar(const Tensor& x, float s) { return affine("mul_scalar", x, s, 0.0f); }

Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
Tensor operator+(const Tensor& x, float s) { return add_scalar(x, s); }
Tensor operator-(const Tensor& x, float s) { return add_scalar(x, -s); }
Tensor operator*(const Tensor& x, float s) { return mul_scalar(x, s); }
Tensor operator*(float s, const Tensor& x) { return mul_scalar(x, s); }
Tensor operator-(const Tensor& x) { return mul_scalar(x, -1.0f); }
Tensor operator-(float s, const Tensor& x) { return add_scalar(mul_scalar(x, -1.0f), s); }

static Tensor unary_op(const char* op_name, cpu::Unary op, const Tensor& x) {
  Device dev = common_device(op_name, {&x});
  require_f32(op_name, x, "x");
  Tensor out = Tensor::empty(x.shape(), DType::F32, dev);
  ST_KERNEL(dev, unary_forward)(op, out.data(), x.data(), x.numel());
  if (needs_grad({&x})) {
    record(op_name, out, [op, x, out, dev](const Tensor& dout) {
      ST_KERNEL(dev, unary_backward)(op, grad_buffer(x).data(), dout.data(), x.data(), out.data(), x.numel());
    });
  }
  return out;
}

Tensor exp(const Tensor& x) { return unary_op("exp", cpu::Unary::Exp, x); }
Tensor log(const Tensor& x) { return unary_op("log", cpu::Unary::Log, x); }
Tensor tanh(const Tensor& x) { return unary_op("tanh", cpu::Unary::Tanh, x); }
Tensor sigmoid(const Tensor& x) { return unary_op("sigmoid", cpu::Unary::Sigmoid, x); }
Tensor gelu(const Tensor& x) { return unary_op("gelu", cpu::Unary::Gelu, x); }
Tensor quick_gelu(const Tensor& x) { return unary_op("quick_gelu", cpu::Unary::QuickGelu, x); }
Tensor silu(const Tensor& x) { return unary_op("silu", cpu::Unary::Silu, x); }
Tensor relu(const Tensor& x) { return unary_op("relu", cpu::Unary::Relu, x); }

}  // namespace st
