// Sixteen floats as one value, for kernels that hold their working set in
// vector registers (engine/ops/packed_attention.cpp, layernorm.cpp).
//
// A GCC/Clang vector type: arithmetic works lane by lane, a scalar operand is
// broadcast to every lane, `a < b ? x : y` selects lane by lane, and the
// compiler maps it to one zmm register with AVX-512, two ymm with AVX2, or
// four xmm with plain x86-64. Loads and stores go through memcpy, so the
// pointers need no alignment.
#pragma once
#include <cstring>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace st::cpu {

typedef float Vec16 __attribute__((vector_size(64)));
constexpr int kLanes = 16;

inline Vec16 load16(const float* p) {
  Vec16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store16(float* p, Vec16 v) { std::memcpy(p, &v, sizeof v); }

// The first n (0 <= n <= 16) floats at p, the other lanes 0; touches only
// p[0 .. n). With AVX-512 one masked load (masked-off lanes cannot fault);
// else a loop over the n floats. A call to memcpy for a row of a
// small head (10 to 16 floats) took longer than the arithmetic on it.
inline Vec16 load_first(const float* p, int n) {
#if defined(__AVX512F__)
  return (Vec16)_mm512_maskz_loadu_ps(__mmask16((1u << n) - 1u), p);
#else
  Vec16 v{};
  for (int i = 0; i < n; i++) v[i] = p[i];
  return v;
#endif
}
// Writes the first n lanes of v to p[0 .. n), nothing past them.
inline void store_first(float* p, Vec16 v, int n) {
#if defined(__AVX512F__)
  _mm512_mask_storeu_ps(p, __mmask16((1u << n) - 1u), (__m512)v);
#else
  for (int i = 0; i < n; i++) p[i] = v[i];
#endif
}

inline Vec16 vmax(Vec16 a, Vec16 b) { return a > b ? a : b; }

// The max and the sum of all 16 lanes, as halving trees: four dependent
// steps, where a loop over the lanes (what a compiler makes of a reduction
// it may not reorder) takes fifteen.
inline float lanes_max(Vec16 v) {
  v = vmax(v, __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7));
  v = vmax(v, __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11));
  v = vmax(v, __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13));
  v = vmax(v, __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14));
  return v[0];
}
inline float lanes_sum(Vec16 v) {
  v += __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
  v += __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11);
  v += __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
  v += __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
  return v[0];
}

}  // namespace st::cpu
