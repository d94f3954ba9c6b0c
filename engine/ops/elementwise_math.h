// The formulas of the element-wise ops, for one element, written once for
// both backends: engine/ops/elementwise.cpp loops over them on the CPU and
// cuda/elementwise.cu calls them from its kernels.
#pragma once
#include <cmath>

#include "engine/kernels.h"
#include "engine/ops/vector_math.h"
#include "engine/host_device.h"

namespace st::cpu {

ST_HOST_DEVICE inline float apply(Binary op, float a, float b) {
  switch (op) {
    case Binary::Add: return a + b;
    case Binary::Sub: return a - b;
    case Binary::Mul: return a * b;
    case Binary::Div: return a / b;
  }
  return 0.0f;
}

// d(a op b)/da and /db times the upstream gradient.
ST_HOST_DEVICE inline void partials(Binary op, float a, float b, float g, float& ga, float& gb) {
  switch (op) {
    case Binary::Add: ga = g, gb = g; break;
    case Binary::Sub: ga = g, gb = -g; break;
    case Binary::Mul: ga = g * b, gb = g * a; break;
    case Binary::Div: ga = g / b, gb = -g * a / (b * b); break;
  }
}
// Each partial on its own, for loops that compute only one of them.
ST_HOST_DEVICE inline float partial_a(Binary op, float a, float b, float g) {
  float ga = 0.0f, gb = 0.0f;
  partials(op, a, b, g, ga, gb);
  return ga;
}
ST_HOST_DEVICE inline float partial_b(Binary op, float a, float b, float g) {
  float ga = 0.0f, gb = 0.0f;
  partials(op, a, b, g, ga, gb);
  return gb;
}

// expf and erff are the functions vector_math.h declares vectorisable on the CPU.
ST_HOST_DEVICE inline float sigmoid_of(float x) { return 1.0f / (1.0f + expf(-x)); }

ST_HOST_DEVICE inline float unary(Unary op, float x) {
  switch (op) {
    case Unary::Exp: return expf(x);
    case Unary::Log: return logf(x);
    case Unary::Tanh: return tanhf(x);
    case Unary::Sigmoid: return sigmoid_of(x);
    case Unary::Gelu: return gelu_of(x);
    case Unary::QuickGelu: return x * sigmoid_of(1.702f * x);
    case Unary::Silu: return x * sigmoid_of(x);
    case Unary::Relu: return x > 0.0f ? x : 0.0f;
  }
  return 0.0f;
}

// dy/dx, given x and y = f(x) (whichever is cheaper to use).
ST_HOST_DEVICE inline float unary_derivative(Unary op, float x, float y) {
  constexpr float kInvSqrt2Pi = 0.39894228040143268f;
  switch (op) {
    case Unary::Exp: return y;
    case Unary::Log: return 1.0f / x;
    case Unary::Tanh: return 1.0f - y * y;
    case Unary::Sigmoid: return y * (1.0f - y);
    case Unary::Gelu: return 0.5f * (1.0f + erff(x * kInvSqrt2)) + x * kInvSqrt2Pi * expf(-0.5f * x * x);
    case Unary::QuickGelu: {
      float s = sigmoid_of(1.702f * x);
      return s + 1.702f * x * s * (1.0f - s);
    }
    case Unary::Silu: {
      float s = sigmoid_of(x);
      return s + x * s * (1.0f - s);
    }
    case Unary::Relu: return x > 0.0f ? 1.0f : 0.0f;
  }
  return 0.0f;
}

}  // namespace st::cpu
