// One vector register of floats as one value, for kernels that hold their
// working set in registers (engine/ops/packed_attention.cpp, layernorm.cpp,
// row_products.cpp).
//
// A GCC/Clang vector type as wide as the build's registers: 16 floats
// (zmm) with AVX-512, 8 (ymm) with AVX, 4 (xmm) otherwise. Arithmetic works
// lane by lane, a scalar operand is broadcast to every lane, `a < b ? x : y`
// selects lane by lane. The kernels are written in kLanes and size their
// blocks from it, so each build gets code that fits its registers: a 16-float
// type on an AVX2 build is two ymm per value, its arrays spill to the stack,
// and the attention kernel ran several times slower than at 8 floats. Loads
// and stores go through memcpy, so the pointers need no alignment.
#pragma once
#include <cstring>
#include <utility>

#if defined(__AVX512F__) || defined(__AVX__)
#include <immintrin.h>
#endif

namespace st::cpu {

#if defined(__AVX512F__)
constexpr int kLanes = 16;
constexpr int kVectorRegisters = 32;
#elif defined(__AVX__)
constexpr int kLanes = 8;
constexpr int kVectorRegisters = 16;
#else
constexpr int kLanes = 4;
constexpr int kVectorRegisters = 16;
#endif
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));

inline Vec load_vec(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store_vec(float* p, Vec v) { std::memcpy(p, &v, sizeof v); }

// 0, 1, ..., kLanes - 1
inline Vec lane_index() {
  Vec v;
  for (int i = 0; i < kLanes; i++) v[i] = float(i);
  return v;
}

#if defined(__AVX__) && !defined(__AVX512F__)
// Lane i of the mask is all ones when i < n: the mask AVX's maskload and
// maskstore take (a float compare: AVX without AVX2 has no integer one).
inline __m256i first_lanes_mask(int n) {
  return _mm256_castps_si256(
      _mm256_cmp_ps(_mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_ps(float(n)), _CMP_LT_OQ));
}
#endif

// The first n (0 <= n <= kLanes) floats at p, the other lanes 0; touches
// only p[0 .. n). With AVX-512 or AVX one masked load (masked-off lanes
// cannot fault); else a loop over the n floats. A call to memcpy for a row
// of a small head (10 to 16 floats) took longer than the arithmetic on it.
inline Vec load_first(const float* p, int n) {
#if defined(__AVX512F__)
  return (Vec)_mm512_maskz_loadu_ps(__mmask16((1u << n) - 1u), p);
#elif defined(__AVX__)
  return (Vec)_mm256_maskload_ps(p, first_lanes_mask(n));
#else
  Vec v{};
  for (int i = 0; i < n; i++) v[i] = p[i];
  return v;
#endif
}
// Writes the first n lanes of v to p[0 .. n), nothing past them.
inline void store_first(float* p, Vec v, int n) {
#if defined(__AVX512F__)
  _mm512_mask_storeu_ps(p, __mmask16((1u << n) - 1u), (__m512)v);
#elif defined(__AVX__)
  _mm256_maskstore_ps(p, first_lanes_mask(n), (__m256)v);
#else
  for (int i = 0; i < n; i++) p[i] = v[i];
#endif
}

inline Vec vmax(Vec a, Vec b) { return a > b ? a : b; }

// v with lanes i and i ^ S exchanged (S a power of two below kLanes): S =
// kLanes / 2 swaps the halves, S = 1 neighbours. A reduction over the lanes
// is log2(kLanes) such steps.
template <int S, int... I>
inline Vec swap_lanes(Vec v, std::integer_sequence<int, I...>) {
  return __builtin_shufflevector(v, v, (I ^ S)...);
}
template <int S>
inline Vec swap_lanes(Vec v) {
  return swap_lanes<S>(v, std::make_integer_sequence<int, kLanes>{});
}

// The max and the sum of all lanes, as halving trees: log2(kLanes)
// dependent steps, where a loop over the lanes (what a compiler makes of a
// reduction it may not reorder) takes kLanes - 1.
template <int S = kLanes / 2>
inline float lanes_max(Vec v) {
  v = vmax(v, swap_lanes<S>(v));
  if constexpr (S > 1) return lanes_max<S / 2>(v);
  else return v[0];
}
template <int S = kLanes / 2>
inline float lanes_sum(Vec v) {
  v += swap_lanes<S>(v);
  if constexpr (S > 1) return lanes_sum<S / 2>(v);
  else return v[0];
}

}  // namespace st::cpu
