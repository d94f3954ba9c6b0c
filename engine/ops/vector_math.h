// expf and erff that vectorise. The activations (GELU, QuickGELU, sigmoid)
// and softmax spend most of their time in these two functions, one element
// at a time. glibc's libmvec has SIMD versions of both (erff since 2.35);
// declaring the scalar functions with `omp declare simd` lets the compiler
// call those from loops marked `#pragma omp simd` (4 floats per call at the
// baseline x86-64 ISA instead of 1). Where libmvec lacks them, the same
// loops call the scalar functions. Results differ from the scalar ones by
// at most a few units in the last place.
#pragma once
#include <cmath>
#include <cstdint>

#include "engine/host_device.h"

#if defined(__x86_64__) && defined(__GLIBC__) && defined(_OPENMP) && !defined(__clang__)
#if __GLIBC_PREREQ(2, 35)
#pragma omp declare simd notinbranch
extern "C" float expf(float) noexcept;
#pragma omp declare simd notinbranch
extern "C" float erff(float) noexcept;
#endif
#endif

namespace st::cpu {
inline float vexp(float x) { return ::expf(x); }

// x[j] = exp(x[j]) for j < n, vectorised to the end. A `#pragma omp simd`
// loop leaves its last n % 16 elements to one expf call each, and attention
// rows are short (the demo's questions have about 8 tokens, its images 37,
// fewer once trimmed): most of such a row would be that remainder. It is
// done instead as one more whole vector, over a copy padded with zeros.
// simdlen(16): GCC would pick 8 floats (it prefers 256-bit vectors even
// with AVX-512); at AVX-512 this calls libmvec's 16-float expf instead,
// which gives the same bits as its 8-float one for every float (checked
// exhaustively) and is faster (0.23 against 0.32 ns per element here).
inline void vexp_in_place(float* x, int64_t n) {
  constexpr int64_t kWidth = 16;  // floats per libmvec call at AVX-512 (a multiple of the narrower ISAs')
  const int64_t body = n - n % kWidth;
#pragma omp simd simdlen(16)
  for (int64_t j = 0; j < body; j++) x[j] = vexp(x[j]);
  if (body == n) return;
  alignas(64) float tail[kWidth] = {};
  for (int64_t j = body; j < n; j++) tail[j - body] = x[j];
#pragma omp simd simdlen(16)
  for (int64_t j = 0; j < kWidth; j++) tail[j] = vexp(tail[j]);
  for (int64_t j = body; j < n; j++) x[j] = tail[j - body];
}
// GELU in its exact form, x Phi(x) = 0.5 x (1 + erf(x / sqrt 2)); the gelu op
// on both devices and the fused loops of the packed path share it.
inline constexpr float kInvSqrt2 = 0.70710678118654752f;
ST_HOST_DEVICE inline float gelu_of(float x) { return 0.5f * x * (1.0f + erff(x * kInvSqrt2)); }
}  // namespace st::cpu
