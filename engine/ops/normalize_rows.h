// LayerNorm of R rows side by side, in vector registers: the body of the
// layernorm kernels (layernorm.cpp), and of the fused kernels that
// normalise a row before they project it (keep_logits.cpp).
#pragma once
#include <cmath>

#include "engine/ops/vec.h"

namespace st::cpu {

// R rows at once: out = (x - mean) / sqrt(var + eps) * w + b; mean and
// 1/std of each. A row of a small model (40 to 64 wide) is a few vectors,
// so each row is a short chain of dependent steps (a sum, its lanes, the
// variance, its lanes, a square root), and one row at a time leaves the
// core waiting on them; R rows side by side keep R chains in flight. Each
// row's arithmetic is the same whatever R is: the sums run over whole
// vectors and then their lanes (vec.h), the last n % kLanes elements one
// by one (a compiler's own reduction would end each sum with a chain of
// kLanes - 1 steps).
template <int R>
inline void normalize_rows(float* out, float* mean, float* rstd, const float* x, const float* weight,
                           const float* bias, int n, float eps) {
  const int body = n - n % kLanes;
  float m[R], s[R];
  Vec lanes[R] = {};
  for (int i = 0; i < body; i += kLanes)
    for (int r = 0; r < R; r++) lanes[r] += load_vec(x + r * n + i);
  for (int r = 0; r < R; r++) {
    m[r] = lanes_sum(lanes[r]);
    for (int i = body; i < n; i++) m[r] += x[r * n + i];
    m[r] /= float(n);
    lanes[r] = Vec{};  // two passes: the one-pass formula cancels badly when |mean| >> std
  }
  for (int i = 0; i < body; i += kLanes)
    for (int r = 0; r < R; r++) {
      const Vec c = load_vec(x + r * n + i) - m[r];
      lanes[r] += c * c;
    }
  for (int r = 0; r < R; r++) {
    float v = lanes_sum(lanes[r]);
    for (int i = body; i < n; i++) v += (x[r * n + i] - m[r]) * (x[r * n + i] - m[r]);
    v /= float(n);
    s[r] = 1.0f / std::sqrt(v + eps);
  }
  for (int r = 0; r < R; r++) {
    const float* xr = x + r * n;
    float* o = out + r * n;
    const float mr = m[r], sr = s[r];
#pragma omp simd
    for (int i = 0; i < n; i++) o[i] = (xr[i] - mr) * sr * weight[i] + bias[i];
    mean[r] = mr;
    rstd[r] = sr;
  }
}

}  // namespace st::cpu
