// Blocked single-precision GEMM (row-major), BLIS style.
//
//   C (M x N) = alpha * op(A) (M x K) * op(B) (K x N) + beta * C
//
// The five loops around the micro-kernel, and where each block lives
// (AVX-512 kernel: MR x NR = 14 x 32, MC = 56, KC = 1024, NC = 3072):
//
//   for jc in N step NC            B panel  op(B)[pc:pc+KC, jc:jc+NC]: 12 MiB
//     for pc in K step KC            -> L3 (packed once, shared by threads)
//       pack B panel  -> Bp : NC/NR micro-panels, each KC x NR, row by row
//       for ic in M step MC          A block  op(A)[ic:ic+MC, pc:pc+KC]:
//         pack A block -> Ap            224 KiB -> L2 (1 MiB per core)
//         for jr in NC step NR       B micro-panel (KC x NR, 128 KiB, L2)
//           for ir in MC step MR     A micro-panel (KC x MR,  56 KiB, L1/L2)
//             micro-kernel: C[ir:ir+MR, jr:jr+NR] += Ap_ir * Bp_jr
//
// Textbook BLIS keeps the B micro-panel in L1 (KC ~ 256 here). Measured on
// Zen 5 (48 KiB L1d, 1 MiB L2) a much deeper KC is faster: one k step needs
// 128 + 56 bytes for 28 FMAs (14 cycles), which L2 supplies with ease, while
// every KC block costs a full read-modify-write of the C tile and a kernel
// call. KC = 1024 also makes K = 768 a single block (K is cut into equal
// blocks, see gemm_thread). MC is small (4 micro-panels) so that the A block
// stays in L2 next to the streaming B micro-panel.
//
// The micro-kernel keeps the whole MR x NR tile of C in vector registers for
// the KC-long loop: every step loads one row of the B micro-panel (NR floats
// = NR/16 zmm loads), broadcasts MR values of A and issues MR*NR/16 FMAs.
// Packing makes both operands contiguous and aligned whatever the transpose
// flags and leading dimensions are, so one kernel serves all four cases, and
// zero-pads the edges so the kernel never reads outside the packed buffers.
//
// Threads (OpenMP): all threads pack the shared B panel cooperatively, then
// each one takes a contiguous share of the rows of C (whole MR tiles), packs
// its own A blocks into a private buffer and runs the jr/ir loops. When M is
// too small to share (few MR tiles), threads split the NR micro-panels of the
// B panel instead; each then packs only the B micro-panels it uses itself.
#include "engine/gemm.h"

#include <omp.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define ST_GEMM_X86 1
#else
#define ST_GEMM_X86 0
#endif

namespace st {
namespace {

// ---------------------------------------------------------------------------
// Kernel descriptor: the register tile, the cache blocks, and the functions.
// ---------------------------------------------------------------------------

// Computes C[0:m, 0:n] = alpha * (Ap * Bp) + beta * C for one tile, where Ap
// is a packed KC x MR micro-panel and Bp a packed KC x NR micro-panel
// (m <= MR, n <= NR: edge tiles). beta == 0 must not read C.
using MicroKernel = void (*)(int kc, const float* a, const float* b, float* c,
                             int64_t ldc, int m, int n, float alpha, float beta);

// The same tile with A read where it is stored, not packed: row r of the
// tile is a + r * lda, its k-th value a[r * lda + k] (A not transposed).
using MicroKernelDirect = void (*)(int kc, const float* a, int64_t lda,
                                   const float* b, float* c, int64_t ldc,
                                   int m, int n, float alpha, float beta);

// Packs op(A)[0:mc, 0:kc] (A already offset to the block's first element)
// into ceil(mc/MR) micro-panels of kc x MR, zero-padding the last one.
using PackA = void (*)(bool trans, const float* A, int64_t lda, int mc, int kc,
                       float* dst);
// Packs op(B)[0:kc, 0:nc] into ceil(nc/NR) micro-panels of kc x NR.
using PackB = void (*)(bool trans, const float* B, int64_t ldb, int kc, int nc,
                       float* dst);

struct Kernel {
  const char* name;
  int MR, NR;  // register tile of C
  int MC, KC, NC;  // cache blocks (MC multiple of MR, NC multiple of NR)
  MicroKernel micro;
  PackA pack_a;
  PackB pack_b;
  bool (*supported)();
  MicroKernelDirect micro_direct = nullptr;  // where the kernel has one
};

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// ---------------------------------------------------------------------------
// Packing (portable C; templated on the tile so the inner loops have
// compile-time trip counts and vectorise).
// ---------------------------------------------------------------------------

// Ap micro-panel layout: Ap[k * MR + r] = op(A)(i0 + r, k).
template <int MR>
void pack_a_generic(bool trans, const float* A, int64_t lda, int mc, int kc,
                    float* dst) {
  for (int i0 = 0; i0 < mc; i0 += MR, dst += int64_t(MR) * kc) {
    const int m = std::min(MR, mc - i0);
    if (trans) {
      // op(A)(i, k) = A[k * lda + i]: row k of the panel is contiguous in A.
      for (int k = 0; k < kc; ++k) {
        const float* src = A + int64_t(k) * lda + i0;
        float* d = dst + int64_t(k) * MR;
        for (int r = 0; r < m; ++r) d[r] = src[r];
        for (int r = m; r < MR; ++r) d[r] = 0.0f;
      }
    } else {
      // op(A)(i, k) = A[i * lda + k]: read each of the m rows contiguously,
      // write it with stride MR (a transpose into the panel).
      for (int r = 0; r < m; ++r) {
        const float* src = A + int64_t(i0 + r) * lda;
        for (int k = 0; k < kc; ++k) dst[int64_t(k) * MR + r] = src[k];
      }
      for (int r = m; r < MR; ++r)
        for (int k = 0; k < kc; ++k) dst[int64_t(k) * MR + r] = 0.0f;
    }
  }
}

// Bp micro-panel layout: Bp[k * NR + j] = op(B)(k, j0 + j).
template <int NR>
void pack_b_generic(bool trans, const float* B, int64_t ldb, int kc, int nc,
                    float* dst) {
  for (int j0 = 0; j0 < nc; j0 += NR, dst += int64_t(NR) * kc) {
    const int n = std::min(NR, nc - j0);
    if (!trans) {
      // op(B)(k, j) = B[k * ldb + j]: each panel row is a contiguous copy.
      for (int k = 0; k < kc; ++k) {
        const float* src = B + int64_t(k) * ldb + j0;
        float* d = dst + int64_t(k) * NR;
        if (n == NR) {
          for (int j = 0; j < NR; ++j) d[j] = src[j];
        } else {
          for (int j = 0; j < n; ++j) d[j] = src[j];
          for (int j = n; j < NR; ++j) d[j] = 0.0f;
        }
      }
    } else {
      // op(B)(k, j) = B[j * ldb + k]: read rows of B, write with stride NR.
      for (int j = 0; j < n; ++j) {
        const float* src = B + int64_t(j0 + j) * ldb;
        for (int k = 0; k < kc; ++k) dst[int64_t(k) * NR + j] = src[k];
      }
      for (int k = 0; k < kc; ++k)
        for (int j = n; j < NR; ++j) dst[int64_t(k) * NR + j] = 0.0f;
    }
  }
}

// Edge tiles of the non-masking kernels are computed into a local MR x NR
// buffer and merged here.
inline void merge_tile(const float* t, int ldt, float* c, int64_t ldc, int m,
                       int n, float alpha, float beta) {
  for (int i = 0; i < m; ++i) {
    float* ci = c + i * ldc;
    const float* ti = t + i * ldt;
    if (beta == 0.0f) {
      for (int j = 0; j < n; ++j) ci[j] = alpha * ti[j];
    } else {
      for (int j = 0; j < n; ++j) ci[j] = alpha * ti[j] + beta * ci[j];
    }
  }
}

// ---------------------------------------------------------------------------
// Portable micro-kernel: 4 x 8 tile. 32 accumulators fit the 16 SSE
// registers of baseline x86-64 (8 xmm) with room for B and A; the compiler
// vectorises the j loop.
// ---------------------------------------------------------------------------
constexpr int kGenMR = 4, kGenNR = 8;

void micro_generic(int kc, const float* a, const float* b, float* c,
                   int64_t ldc, int m, int n, float alpha, float beta) {
  float acc[kGenMR][kGenNR] = {};
  for (int k = 0; k < kc; ++k, a += kGenMR, b += kGenNR) {
    for (int r = 0; r < kGenMR; ++r) {
      const float ar = a[r];
      for (int j = 0; j < kGenNR; ++j) acc[r][j] += ar * b[j];
    }
  }
  merge_tile(&acc[0][0], kGenNR, c, ldc, m, n, alpha, beta);
}

bool always_supported() { return true; }

#if ST_GEMM_X86
// ---------------------------------------------------------------------------
// AVX2 + FMA micro-kernel: 6 x 16 tile = 6 x 2 ymm accumulators (12 of the
// 16 ymm registers), 2 for the B row, 1 for the broadcast A value. 12
// independent FMA chains cover the 2-pipe x 4-cycle FMA latency. Edge tiles:
// the row count is a template parameter and the columns are handled with
// AVX's maskload/maskstore, as in the AVX-512 kernel below.
// ---------------------------------------------------------------------------
constexpr int kAvx2MR = 6, kAvx2NR = 16;

// Lane i is all ones when i < n (n may be negative or past 8).
__attribute__((target("avx2"))) inline __m256i avx2_first_lanes(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// DIRECT: A is read where it is stored (row r at a + r * lda) instead of
// from a packed micro-panel; the arithmetic is the same.
template <int ROWS, bool DIRECT = false>
__attribute__((target("avx2,fma"))) void micro_avx2_tile(
    int kc, const float* a, int64_t lda, const float* b, float* c,
    int64_t ldc, int n, float alpha, float beta) {
  __m256 acc[ROWS][2];
#pragma GCC unroll 8
  for (int r = 0; r < ROWS; ++r) {
    acc[r][0] = _mm256_setzero_ps();
    acc[r][1] = _mm256_setzero_ps();
  }
#pragma GCC unroll 4
  for (int k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_load_ps(b);
    const __m256 b1 = _mm256_load_ps(b + 8);
#pragma GCC unroll 8
    for (int r = 0; r < ROWS; ++r) {
      const __m256 ar = _mm256_broadcast_ss(DIRECT ? a + r * lda : a + r);
      acc[r][0] = _mm256_fmadd_ps(ar, b0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(ar, b1, acc[r][1]);
    }
    a += DIRECT ? 1 : kAvx2MR;
    b += kAvx2NR;
  }
  const __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
  if (n == kAvx2NR) {
#pragma GCC unroll 8
    for (int r = 0; r < ROWS; ++r) {
      float* cr = c + r * ldc;
      __m256 x0 = _mm256_mul_ps(acc[r][0], va);
      __m256 x1 = _mm256_mul_ps(acc[r][1], va);
      if (beta != 0.0f) {  // beta == 0 never reads C (it may hold NaN)
        x0 = _mm256_fmadd_ps(_mm256_loadu_ps(cr), vb, x0);
        x1 = _mm256_fmadd_ps(_mm256_loadu_ps(cr + 8), vb, x1);
      }
      _mm256_storeu_ps(cr, x0);
      _mm256_storeu_ps(cr + 8, x1);
    }
  } else {
    const __m256i m0 = avx2_first_lanes(n), m1 = avx2_first_lanes(n - 8);
#pragma GCC unroll 8
    for (int r = 0; r < ROWS; ++r) {
      float* cr = c + r * ldc;
      __m256 x0 = _mm256_mul_ps(acc[r][0], va);
      __m256 x1 = _mm256_mul_ps(acc[r][1], va);
      if (beta != 0.0f) {
        x0 = _mm256_fmadd_ps(_mm256_maskload_ps(cr, m0), vb, x0);
        x1 = _mm256_fmadd_ps(_mm256_maskload_ps(cr + 8, m1), vb, x1);
      }
      _mm256_maskstore_ps(cr, m0, x0);
      _mm256_maskstore_ps(cr + 8, m1, x1);
    }
  }
}

using Avx2TileFn = void (*)(int, const float*, int64_t, const float*, float*,
                            int64_t, int, float, float);
template <bool DIRECT, std::size_t... I>
constexpr auto make_avx2_table(std::index_sequence<I...>) {
  return std::array<Avx2TileFn, sizeof...(I)>{
      {&micro_avx2_tile<int(I) + 1, DIRECT>...}};
}
constexpr auto kAvx2Table =
    make_avx2_table<false>(std::make_index_sequence<kAvx2MR>{});
constexpr auto kAvx2DirectTable =
    make_avx2_table<true>(std::make_index_sequence<kAvx2MR>{});

void micro_avx2(int kc, const float* a, const float* b, float* c, int64_t ldc,
                int m, int n, float alpha, float beta) {
  kAvx2Table[m - 1](kc, a, 0, b, c, ldc, n, alpha, beta);
}

void micro_avx2_direct(int kc, const float* a, int64_t lda, const float* b,
                       float* c, int64_t ldc, int m, int n, float alpha,
                       float beta) {
  kAvx2DirectTable[m - 1](kc, a, lda, b, c, ldc, n, alpha, beta);
}

// AVX2 packing. As with AVX-512 below, the transposing cases (A not
// transposed, B transposed) are done in 8 x 8 blocks transposed in
// registers; element by element, the stores of a B panel's 16 rows went
// 64 bytes apart through a panel larger than L1, and packing took over a
// quarter as long as the products it fed (METER-base at batch 1, x W^T).

// In-register transpose of an 8 x 8 block: r[i] lane j -> r[j] lane i.
__attribute__((target("avx2"))) inline void transpose8x8(__m256 r[8]) {
  __m256 t[8];
  // 1. Interleave row pairs: t[2i] = a0 b0 a1 b1 | a4 b4 a5 b5, t[2i+1] the rest.
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  // 2. Within each 128-bit half, r[4i+j] = column j (and j+4) of rows 4i..4i+3.
#pragma GCC unroll 2
  for (int i = 0; i < 2; ++i) {
    r[4 * i + 0] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    r[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    r[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    r[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  // 3. Join the halves: column j from rows 0..3 and 4..7.
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
    t[j] = _mm256_permute2f128_ps(r[j], r[4 + j], 0x20);
    t[4 + j] = _mm256_permute2f128_ps(r[j], r[4 + j], 0x31);
  }
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) r[i] = t[i];
}

// The first `width` (<= 8) lanes of v to dst, a row of a panel whose rows
// are `width` apart or more. Short of the panel's last row (`last`) all 8
// are stored: any extra lanes land at the start of the next row, which is
// written after this one. An AVX2 masked store is much
// slower than a plain one on some CPUs (AMD Zen 2 and 3).
__attribute__((target("avx2"))) inline void store_panel_row(float* dst, __m256 v, int width, bool last) {
  if (width == 8 || !last) _mm256_storeu_ps(dst, v);
  else _mm256_maskstore_ps(dst, avx2_first_lanes(width), v);
}

// Writes the transpose of `rows` (<= 8) stored rows src[r * ld + k], k in
// [0, kc), into dst[k * stride + r] for r < width (<= 8, <= stride), rows
// >= `rows` as zeros; the panel's rows are written in order.
__attribute__((target("avx2"))) void transpose_rows_into_panel_avx2(
    const float* src, int64_t ld, int rows, int kc, float* dst, int stride, int width) {
  for (int k0 = 0; k0 < kc; k0 += 8) {
    const int kn = std::min(8, kc - k0);
    const __m256i load_mask = avx2_first_lanes(kn);
    __m256 r[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i)
      r[i] = i >= rows ? _mm256_setzero_ps()
             : kn == 8 ? _mm256_loadu_ps(src + i * ld + k0)
                       : _mm256_maskload_ps(src + i * ld + k0, load_mask);
    transpose8x8(r);
    for (int c = 0; c < kn; ++c)
      store_panel_row(dst + int64_t(k0 + c) * stride, r[c], width, k0 + c == kc - 1);
  }
}

__attribute__((target("avx2"))) void pack_a_avx2(bool trans, const float* A, int64_t lda, int mc, int kc,
                                                 float* dst) {
  constexpr int MR = kAvx2MR;
  for (int i0 = 0; i0 < mc; i0 += MR, dst += int64_t(MR) * kc) {
    const int m = std::min(MR, mc - i0);
    if (trans) {  // each panel row is m contiguous floats of A, zero-padded
      const __m256i lm = avx2_first_lanes(m);
      for (int k = 0; k < kc; ++k)
        store_panel_row(dst + int64_t(k) * MR, _mm256_maskload_ps(A + k * lda + i0, lm), MR, k == kc - 1);
    } else {  // rows of A become columns of the panel
      transpose_rows_into_panel_avx2(A + i0 * lda, lda, m, kc, dst, MR, MR);
    }
  }
}

__attribute__((target("avx2"))) void pack_b_avx2(bool trans, const float* B, int64_t ldb, int kc, int nc,
                                                 float* dst) {
  constexpr int NR = kAvx2NR;
  for (int j0 = 0; j0 < nc; j0 += NR, dst += int64_t(NR) * kc) {
    const int n = std::min(NR, nc - j0);
    if (!trans) {  // each panel row is n contiguous floats of B, zero-padded
      const __m256i m0 = avx2_first_lanes(n), m1 = avx2_first_lanes(n - 8);
      for (int k = 0; k < kc; ++k) {
        const float* src = B + k * ldb + j0;
        _mm256_store_ps(dst + int64_t(k) * NR, n >= 8 ? _mm256_loadu_ps(src) : _mm256_maskload_ps(src, m0));
        _mm256_store_ps(dst + int64_t(k) * NR + 8,
                        n >= 16 ? _mm256_loadu_ps(src + 8) : _mm256_maskload_ps(src + 8, m1));
      }
    } else {  // rows of B become columns of the panel, 8 at a time, each half a panel row
      for (int h = 0; h < 2; ++h)
        transpose_rows_into_panel_avx2(B + (j0 + 8 * h) * ldb, ldb, std::clamp(n - 8 * h, 0, 8), kc,
                                       dst + 8 * h, NR, 8);
    }
  }
}

bool avx2_supported() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

// ---------------------------------------------------------------------------
// AVX-512 micro-kernel: 14 x 32 tile = 14 x 2 zmm accumulators (28 of the 32
// zmm registers) + 2 for the B row; A is broadcast straight from memory into
// the FMA ({1to16} operand), so no register is needed for it. Per k step:
// 2 loads of B, 14 broadcasts, 28 FMAs -> with 2 FMA pipes the loop is
// FMA-bound (14 cycles) and the 28 independent chains hide the FMA latency.
// Edge tiles: the row count is a template parameter (no wasted rows) and the
// columns are handled with AVX-512 masks (n <= 16 uses one zmm column).
// ---------------------------------------------------------------------------
constexpr int kAvx512MR = 14, kAvx512NR = 32;

// DIRECT: A is read where it is stored (row r at a + r * lda) instead of
// from a packed micro-panel; the arithmetic is the same.
template <int ROWS, int NV, bool DIRECT = false>
__attribute__((target("avx512f"))) void micro_avx512_tile(
    int kc, const float* a, int64_t lda, const float* b, float* c,
    int64_t ldc, int n, float alpha, float beta) {
  __m512 acc[ROWS][NV];
#pragma GCC unroll 16
  for (int r = 0; r < ROWS; ++r) {
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  }
  // C is touched only after the k loop; start fetching it now.
#pragma GCC unroll 16
  for (int r = 0; r < ROWS; ++r) {
    _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc + 16), _MM_HINT_T0);
  }
#pragma GCC unroll 2
  for (int k = 0; k < kc; ++k) {
    __m512 bv[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) bv[v] = _mm512_load_ps(b + 16 * v);
#pragma GCC unroll 16
    for (int r = 0; r < ROWS; ++r) {
      const __m512 ar = _mm512_set1_ps(DIRECT ? a[r * lda] : a[r]);
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v)
        acc[r][v] = _mm512_fmadd_ps(ar, bv[v], acc[r][v]);
    }
    a += DIRECT ? 1 : kAvx512MR;
    b += kAvx512NR;
  }
  // Column masks: all 16 lanes for full vectors, the first n % 16 otherwise.
  __mmask16 mask[NV];
#pragma GCC unroll 2
  for (int v = 0; v < NV; ++v) {
    const int left = n - 16 * v;
    mask[v] = left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1u);
  }
  const __m512 va = _mm512_set1_ps(alpha);
  if (beta == 0.0f) {  // write-only: never read C (it may hold NaN)
#pragma GCC unroll 16
    for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v)
        _mm512_mask_storeu_ps(c + r * ldc + 16 * v, mask[v],
                              _mm512_mul_ps(acc[r][v], va));
  } else {
    const __m512 vb = _mm512_set1_ps(beta);
#pragma GCC unroll 16
    for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) {
        float* cp = c + r * ldc + 16 * v;
        const __m512 old = _mm512_mul_ps(_mm512_maskz_loadu_ps(mask[v], cp), vb);
        _mm512_mask_storeu_ps(cp, mask[v], _mm512_fmadd_ps(acc[r][v], va, old));
      }
  }
}

using TileFn = void (*)(int, const float*, int64_t, const float*, float*,
                        int64_t, int, float, float);
template <bool DIRECT, std::size_t... I>
constexpr auto make_avx512_table(std::index_sequence<I...>) {
  // [rows - 1][column vectors - 1]
  return std::array<std::array<TileFn, 2>, sizeof...(I)>{
      {{{&micro_avx512_tile<int(I) + 1, 1, DIRECT>,
         &micro_avx512_tile<int(I) + 1, 2, DIRECT>}}...}};
}
constexpr auto kAvx512Table =
    make_avx512_table<false>(std::make_index_sequence<kAvx512MR>{});
constexpr auto kAvx512DirectTable =
    make_avx512_table<true>(std::make_index_sequence<kAvx512MR>{});

void micro_avx512(int kc, const float* a, const float* b, float* c,
                  int64_t ldc, int m, int n, float alpha, float beta) {
  kAvx512Table[m - 1][n > 16](kc, a, 0, b, c, ldc, n, alpha, beta);
}

void micro_avx512_direct(int kc, const float* a, int64_t lda, const float* b,
                         float* c, int64_t ldc, int m, int n, float alpha,
                         float beta) {
  kAvx512DirectTable[m - 1][n > 16](kc, a, lda, b, c, ldc, n, alpha, beta);
}

// AVX-512 packing. The transposing cases (A not transposed, B transposed:
// the panel's rows are columns of the stored matrix) dominate small products
// such as the attention ones, where packing is a third of the work when done
// element by element; here 16 x 16 blocks are transposed in registers.

// GCC 12's AVX-512 shuffle intrinsics use a self-initialised "undefined"
// vector that trips a false -Wmaybe-uninitialized (GCC bug 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// In-register transpose of a 16 x 16 block: r[i] lane j -> r[j] lane i.
__attribute__((target("avx512f"))) inline void transpose16x16(__m512 r[16]) {
  __m512 t[16];
  // 1. Interleave row pairs: t[2i] lane L = a[4L] b[4L] a[4L+1] b[4L+1], ...
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  // 2. Within each 128-bit lane L, r[4i+j] = column 4L+j of rows 4i..4i+3.
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    r[4 * i + 0] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  // 3. Transpose the 4 x 4 grid of 128-bit lanes of r[j], r[4+j], r[8+j],
  //    r[12+j] (two rounds of lane shuffles).
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
    const __m512 u0 = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x88);
    const __m512 u1 = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xDD);
    const __m512 u2 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x88);
    const __m512 u3 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xDD);
    t[j] = _mm512_shuffle_f32x4(u0, u2, 0x88);
    t[8 + j] = _mm512_shuffle_f32x4(u0, u2, 0xDD);
    t[4 + j] = _mm512_shuffle_f32x4(u1, u3, 0x88);
    t[12 + j] = _mm512_shuffle_f32x4(u1, u3, 0xDD);
  }
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) r[i] = t[i];
}

inline __mmask16 first_lanes(int n) {
  return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1u);
}

// Writes the transpose of `rows` (<= 16) stored rows src[r * ld + k],
// k in [0, kc), into dst[k * width + r] for r < 16 clipped to `width`'s
// mask; rows >= `rows` are written as zeros.
__attribute__((target("avx512f"))) void transpose_rows_into_panel(
    const float* src, int64_t ld, int rows, int kc, float* dst, int width,
    __mmask16 store_mask) {
  for (int k0 = 0; k0 < kc; k0 += 16) {
    const int kn = std::min(16, kc - k0);
    const __mmask16 load_mask = first_lanes(kn);
    __m512 r[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) {
      if (i < rows) {
        // Up to 16 rows are read side by side, more streams than the
        // hardware prefetcher follows: fetch a few lines ahead ourselves.
        _mm_prefetch(reinterpret_cast<const char*>(src + i * ld + k0 + 64),
                     _MM_HINT_T0);
        r[i] = _mm512_maskz_loadu_ps(load_mask, src + i * ld + k0);
      } else {
        r[i] = _mm512_setzero_ps();
      }
    }
    transpose16x16(r);
    for (int c = 0; c < kn; ++c)
      _mm512_mask_storeu_ps(dst + int64_t(k0 + c) * width, store_mask, r[c]);
  }
}

__attribute__((target("avx512f"))) void pack_a_avx512(
    bool trans, const float* A, int64_t lda, int mc, int kc, float* dst) {
  constexpr int MR = kAvx512MR;
  for (int i0 = 0; i0 < mc; i0 += MR, dst += int64_t(MR) * kc) {
    const int m = std::min(MR, mc - i0);
    if (trans) {  // each panel row is m contiguous floats of A, zero-padded
      const __mmask16 lm = first_lanes(m);
      for (int k = 0; k < kc; ++k)
        _mm512_mask_storeu_ps(dst + int64_t(k) * MR, first_lanes(MR),
                              _mm512_maskz_loadu_ps(lm, A + k * lda + i0));
    } else {  // rows of A become columns of the panel
      transpose_rows_into_panel(A + i0 * lda, lda, m, kc, dst, MR,
                                first_lanes(MR));
    }
  }
}

__attribute__((target("avx512f"))) void pack_b_avx512(
    bool trans, const float* B, int64_t ldb, int kc, int nc, float* dst) {
  constexpr int NR = kAvx512NR;
  for (int j0 = 0; j0 < nc; j0 += NR, dst += int64_t(NR) * kc) {
    const int n = std::min(NR, nc - j0);
    if (!trans) {  // each panel row is n contiguous floats of B, zero-padded
      const __mmask16 m0 = first_lanes(n), m1 = first_lanes(std::max(0, n - 16));
      for (int k = 0; k < kc; ++k) {
        const float* src = B + k * ldb + j0;
        _mm512_store_ps(dst + int64_t(k) * NR, _mm512_maskz_loadu_ps(m0, src));
        _mm512_store_ps(dst + int64_t(k) * NR + 16,
                        _mm512_maskz_loadu_ps(m1, src + 16));
      }
    } else {  // rows of B become columns of the panel, 16 at a time
      for (int h = 0; h < 2; ++h)
        transpose_rows_into_panel(B + (j0 + 16 * h) * ldb, ldb,
                                  std::max(0, std::min(16, n - 16 * h)), kc,
                                  dst + 16 * h, NR, first_lanes(16));
    }
  }
}

#pragma GCC diagnostic pop

bool avx512_supported() { return __builtin_cpu_supports("avx512f"); }
#endif  // ST_GEMM_X86

// Best first. Blocking sizes (floats), see the comment at the top of the
// file. AVX-512 values tuned by measurement on the development machine (AMD
// EPYC Zen 5, 2 cores; MC in 28..336, KC in 256..1536, NC in 768..3072 on
// the three large model shapes; within noise: KC 768-1536, MC 28-84). AVX2
// values tuned the same way on an AMD EPYC without AVX-512 (2 cores, 32 KiB
// L1d, 512 KiB L2): against OpenBLAS in the same run of bench_gemm, mean
// ratio over its three large shapes, 1 and 2 threads, three runs each: MC 48
// KC 768 1.03, MC 96 KC 512 0.98, MC 48 KC 384 0.91, the textbook MC 144 KC
// 256 0.88. Deep K blocks win here as on Zen 5. The generic values follow the
// textbook rule (B micro-panel ~ L1, A block ~ half of L2) and were not tuned.
// The blocks can be overridden at compile time for tuning
// (-DST_GEMM_MC=..., -DST_GEMM_AVX2_KC=... etc.).
#ifndef ST_GEMM_MC
#define ST_GEMM_MC 56
#endif
#ifndef ST_GEMM_KC
#define ST_GEMM_KC 1024
#endif
#ifndef ST_GEMM_NC
#define ST_GEMM_NC 3072
#endif
#ifndef ST_GEMM_AVX2_MC
#define ST_GEMM_AVX2_MC 48
#endif
#ifndef ST_GEMM_AVX2_KC
#define ST_GEMM_AVX2_KC 768
#endif
const Kernel kKernels[] = {
#if ST_GEMM_X86
    {"avx512", kAvx512MR, kAvx512NR, /*MC=*/ST_GEMM_MC, /*KC=*/ST_GEMM_KC, /*NC=*/ST_GEMM_NC,
     micro_avx512, pack_a_avx512, pack_b_avx512,
     avx512_supported, micro_avx512_direct},
    {"avx2", kAvx2MR, kAvx2NR, /*MC=*/ST_GEMM_AVX2_MC, /*KC=*/ST_GEMM_AVX2_KC, /*NC=*/3072,
     micro_avx2, pack_a_avx2, pack_b_avx2,
     avx2_supported, micro_avx2_direct},
#endif
    {"generic", kGenMR, kGenNR, /*MC=*/128, /*KC=*/256, /*NC=*/2048,
     micro_generic, pack_a_generic<kGenMR>, pack_b_generic<kGenNR>,
     always_supported},
};

const Kernel* best_kernel() {
  for (const Kernel& k : kKernels)
    if (k.supported()) return &k;
  return &kKernels[std::size(kKernels) - 1];
}

// Looks a kernel up by name; nullptr when unknown or not supported here.
const Kernel* find_kernel(const char* name) {
  for (const Kernel& k : kKernels)
    if (std::strcmp(k.name, name) == 0) return k.supported() ? &k : nullptr;
  return nullptr;
}

std::atomic<const Kernel*> g_kernel{nullptr};

const Kernel* kernel_from_env() {
  const char* env = std::getenv("SMARTTRIM_GEMM_KERNEL");
  if (env == nullptr || *env == '\0' || std::strcmp(env, "auto") == 0)
    return best_kernel();
  if (const Kernel* k = find_kernel(env)) return k;
  const Kernel* best = best_kernel();
  std::fprintf(stderr,
               "smarttrim: SMARTTRIM_GEMM_KERNEL=%s is unknown or not "
               "supported by this CPU; using %s\n",
               env, best->name);
  return best;
}

const Kernel& active_kernel() {
  const Kernel* k = g_kernel.load(std::memory_order_acquire);
  if (k == nullptr) {
    static const Kernel* const from_env = kernel_from_env();  // once
    const Kernel* expected = nullptr;
    g_kernel.compare_exchange_strong(expected, from_env);
    k = g_kernel.load(std::memory_order_acquire);
  }
  return *k;
}

// ---------------------------------------------------------------------------
// Packing buffers: one A buffer and one B buffer per thread, 64-byte aligned,
// grown on demand and kept for the next call (no allocation in steady state).
// The B buffer of the thread that calls sgemm is the shared panel of its
// parallel region; each worker packs A into its own.
// ---------------------------------------------------------------------------
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  ~AlignedBuffer() { std::free(data_); }

  float* get(std::size_t n) {
    if (n > capacity_) {
      std::free(data_);
      const std::size_t bytes = std::size_t(round_up(int64_t(n * sizeof(float)), 64));
      data_ = static_cast<float*>(std::aligned_alloc(64, bytes));
      if (data_ == nullptr) {
        capacity_ = 0;
        throw std::bad_alloc();
      }
      capacity_ = n;
    }
    return data_;
  }

 private:
  float* data_ = nullptr;
  std::size_t capacity_ = 0;
};

thread_local AlignedBuffer tls_pack_a;
thread_local AlignedBuffer tls_pack_b;

// ---------------------------------------------------------------------------
// The blocked algorithm.
// ---------------------------------------------------------------------------
struct Problem {
  bool ta, tb;
  int M, N, K;
  float alpha;
  const float* A;
  int64_t lda;
  const float* B;
  int64_t ldb;
  float beta;
  float* C;
  int64_t ldc;

  // Address of op(A)(i, k) / op(B)(k, j).
  const float* a_at(int i, int k) const {
    return ta ? A + int64_t(k) * lda + i : A + int64_t(i) * lda + k;
  }
  const float* b_at(int k, int j) const {
    return tb ? B + int64_t(j) * ldb + k : B + int64_t(k) * ldb + j;
  }
};

// C = beta * C (K == 0 or alpha == 0: nothing to multiply).
void scale_c(const Problem& p) {
  if (p.beta == 1.0f) return;
  for (int i = 0; i < p.M; ++i) {
    float* c = p.C + i * p.ldc;
    if (p.beta == 0.0f)
      std::fill(c, c + p.N, 0.0f);
    else
      for (int j = 0; j < p.N; ++j) c[j] *= p.beta;
  }
}

inline void barrier(int nth) {
  // Guarded: an orphaned barrier with one thread would bind to an enclosing
  // parallel region (e.g. sgemm_batched's) and deadlock it.
  if (nth > 1) {
#pragma omp barrier
  }
}

// Up to this many columns of C a product reads A unpacked (gemm_thread).
#ifndef ST_GEMM_DIRECT_A_MAX_N
#define ST_GEMM_DIRECT_A_MAX_N 128
#endif
constexpr int kDirectAMaxN = ST_GEMM_DIRECT_A_MAX_N;

// K is cut into equal blocks of at most KC (K = 768 with KC = 512 gives
// 2 x 384, not 512 + 256): a short last block would pay the full cost of
// reading and writing C for little work. Returns the block length, rounded
// up to 8; a packed B micro-panel is NR x this long (PrepackedWeights too).
int k_block_size(int K, int KC) {
  const int k_blocks = (K + KC - 1) / KC;
  return int(round_up((K + k_blocks - 1) / k_blocks, 8));
}

// Body run by each of the nth threads (tid = 0..nth-1). split_m: threads
// share the rows of C (and the whole packed B panel); otherwise they share
// the NR micro-panels of each B panel and do all rows.
// packed_b: op(B) already packed (PrepackedWeights, one K and N block), or
// nullptr to pack it here.
void gemm_thread(const Kernel& kr, const Problem& p, float* bpack,
                 const float* packed_b, int tid, int nth, bool split_m) {
  const int MR = kr.MR, NR = kr.NR;
  float* apack = tls_pack_a.get(
      std::size_t(round_up(std::min(kr.MC, p.M), MR)) * kr.KC);

  const int k_blocks = (p.K + kr.KC - 1) / kr.KC;
  const int kc_block = k_block_size(p.K, kr.KC);
  // Micro-panel j of the packed B panel starts at j * panel_stride, sized
  // for the largest kc: with the split over micro-panels, threads do not
  // wait for each other, so one may pack the (shorter) last K block while
  // another still reads the previous one; fixed slots keep them disjoint.
  const int64_t panel_stride = int64_t(NR) * kc_block;

  // A narrow product reads A where it is stored: packing A costs as much
  // as a few column panels' worth of multiplying, and a narrow B has few
  // panels to spread that over (N = 64: two). The rows of A are contiguous
  // in k only when A is not transposed; one K block keeps each A row's
  // reads within a few cache lines per panel.
  const bool direct_a = kr.micro_direct && !p.ta && k_blocks == 1 &&
                        p.N <= kDirectAMaxN;

  // This thread's rows [i_begin, i_end), in whole MR tiles.
  const int m_tiles = (p.M + MR - 1) / MR;
  const int i_begin = split_m ? int(int64_t(tid) * m_tiles / nth) * MR : 0;
  const int i_end =
      split_m ? std::min(p.M, int(int64_t(tid + 1) * m_tiles / nth) * MR) : p.M;

  for (int jc = 0; jc < p.N; jc += kr.NC) {
    const int nc = std::min(kr.NC, p.N - jc);
    const int n_panels = (nc + NR - 1) / NR;
    // Micro-panels this thread packs (and, when !split_m, also computes).
    const int q0 = int(int64_t(tid) * n_panels / nth);
    const int q1 = int(int64_t(tid + 1) * n_panels / nth);

    for (int pc = 0; pc < p.K; pc += kc_block) {
      const int kc = std::min(kc_block, p.K - pc);
      // Only the first K block applies the caller's beta; the later ones
      // accumulate onto it.
      const float beta = pc == 0 ? p.beta : 1.0f;

      const float* panel = packed_b ? packed_b : bpack;
      if (!packed_b)
        for (int q = q0; q < q1; ++q)
          kr.pack_b(p.tb, p.b_at(pc, jc + q * NR), p.ldb, kc,
                    std::min(NR, nc - q * NR), bpack + q * panel_stride);
      if (split_m) barrier(nth);  // the whole panel is needed by everyone

      const int jp0 = split_m ? 0 : q0, jp1 = split_m ? n_panels : q1;
      if (jp1 > jp0) {
        for (int ic = i_begin; ic < i_end; ic += kr.MC) {
          const int mc = std::min(kr.MC, i_end - ic);
          if (!direct_a) kr.pack_a(p.ta, p.a_at(ic, pc), p.lda, mc, kc, apack);
          for (int jp = jp0; jp < jp1; ++jp) {
            const int j = jp * NR;
            const int n = std::min(NR, nc - j);
            const float* bp = panel + int64_t(jp) * panel_stride;
            float* c = p.C + int64_t(ic) * p.ldc + jc + j;
            for (int ir = 0; ir < mc; ir += MR) {
              const int m = std::min(MR, mc - ir);
              if (direct_a)
                kr.micro_direct(kc, p.a_at(ic + ir, pc), p.lda, bp,
                                c + ir * p.ldc, p.ldc, m, n, p.alpha, beta);
              else
                kr.micro(kc, apack + int64_t(ir) * kc, bp, c + ir * p.ldc,
                         p.ldc, m, n, p.alpha, beta);
            }
          }
        }
      }
      if (split_m) barrier(nth);  // before the panel is overwritten
    }
    // Split over micro-panels: the next B panel may be divided differently
    // (narrower last jc block), so slots change owner; wait for everyone.
    if (!split_m) barrier(nth);
  }
}

// Below this many flops a second thread costs more (wake-up, barriers, a
// second A packing) than it saves.
constexpr double kParallelMinFlops = 4.0e6;

int threads_for(double flops) {
  if (omp_in_parallel()) return 1;
  const int nth = omp_get_max_threads();
  if (nth <= 1 || flops < kParallelMinFlops) return 1;
  return nth;
}

// The packed panels of a product's B and the kernel they were packed for,
// when the calling thread uses a PrepackedWeights that holds that B.
struct Prepacked {
  const Kernel* kernel = nullptr;
  const float* panels = nullptr;
};

void gemm_run(const Problem& p, int nth, Prepacked pre = {}) {
  if (p.M <= 0 || p.N <= 0) return;
  if (p.K <= 0 || p.alpha == 0.0f) {
    scale_c(p);
    return;
  }
  // Panels packed for another kernel (sgemm_force_kernel since) are of no use.
  if (pre.kernel != &active_kernel()) pre = {};
  const Kernel& kr = active_kernel();
  float* bpack = pre.panels ? nullptr
                            : tls_pack_b.get(std::size_t(kr.KC) *
                                             round_up(std::min(kr.NC, p.N), kr.NR));
  if (nth <= 1) {
    gemm_thread(kr, p, bpack, pre.panels, 0, 1, true);
    return;
  }
  // Split rows unless there are too few MR tiles to go round.
  const int m_tiles = (p.M + kr.MR - 1) / kr.MR;
  const int n_tiles = (std::min(p.N, kr.NC) + kr.NR - 1) / kr.NR;
  const bool split_m = m_tiles >= 4 * nth || m_tiles >= n_tiles;
#pragma omp parallel num_threads(nth)
  gemm_thread(kr, p, bpack, pre.panels, omp_get_thread_num(),
              omp_get_num_threads(), split_m);
}

thread_local const PrepackedWeights* tls_prepacked = nullptr;

}  // namespace

// One W^T in the panels of the kernel that was active when it was added:
// the layout gemm_thread packs for a single K and N block, micro-panel q
// (NR columns) at q * NR * round_up(K, 8).
struct PrepackedWeights::Matrix {
  const float* B;
  int K, N, ldb;
  const Kernel* kernel;
  std::unique_ptr<float, decltype(&std::free)> panels{nullptr, &std::free};
};

PrepackedWeights::PrepackedWeights() = default;
PrepackedWeights::~PrepackedWeights() = default;

void PrepackedWeights::add(const float* B, int K, int N, int ldb) {
  const Kernel& kr = active_kernel();
  if (K <= 0 || N <= 0 || K > kr.KC || N > kr.NC || find(B, true, K, N, ldb)) return;
  auto m = std::make_unique<Matrix>();
  m->B = B, m->K = K, m->N = N, m->ldb = ldb, m->kernel = &kr;
  const int64_t panel_stride = int64_t(kr.NR) * k_block_size(K, kr.KC);  // K <= KC: one block
  const int64_t n_panels = (N + kr.NR - 1) / kr.NR;
  const size_t bytes = size_t(round_up(n_panels * panel_stride * int64_t(sizeof(float)), 64));
  m->panels.reset(static_cast<float*>(std::aligned_alloc(64, bytes)));
  if (!m->panels) throw std::bad_alloc();
  for (int64_t q = 0; q < n_panels; ++q)
    kr.pack_b(true, B + q * kr.NR * int64_t(ldb), ldb, K, int(std::min<int64_t>(kr.NR, N - q * kr.NR)),
              m->panels.get() + q * panel_stride);
  by_pointer_[B].push_back(m.get());
  matrices_.push_back(std::move(m));
}

size_t PrepackedWeights::count() const { return matrices_.size(); }

const PrepackedWeights::Matrix* PrepackedWeights::find(const float* B, bool trans_b, int K, int N, int ldb) const {
  if (!trans_b) return nullptr;
  const auto it = by_pointer_.find(B);
  if (it == by_pointer_.end()) return nullptr;
  for (const Matrix* m : it->second)
    if (m->K == K && m->N == N && m->ldb == ldb) return m;
  return nullptr;
}

PrepackedWeights::Use::Use(const PrepackedWeights* weights) : previous_(tls_prepacked) { tls_prepacked = weights; }
PrepackedWeights::Use::~Use() { tls_prepacked = previous_; }

static thread_local uint64_t flops_done = 0;
uint64_t sgemm_flops() { return flops_done; }
void sgemm_reset_flops() { flops_done = 0; }

void sgemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha,
           const float* A, int lda, const float* B, int ldb, float beta,
           float* C, int ldc) {
  if (M > 0 && N > 0 && K > 0) flops_done += 2ull * uint64_t(M) * uint64_t(N) * uint64_t(K);
  const Problem p{trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb,
                  beta, C, ldc};
  Prepacked pre;
  if (tls_prepacked)
    if (const PrepackedWeights::Matrix* m = tls_prepacked->find(B, trans_b, K, N, ldb))
      pre = {m->kernel, m->panels.get()};
  gemm_run(p, threads_for(2.0 * M * N * K), pre);
}

void sgemm_batched(bool trans_a, bool trans_b, int M, int N, int K,
                   float alpha, const float* A, int lda, int64_t stride_a,
                   const float* B, int ldb, int64_t stride_b, float beta,
                   float* C, int ldc, int64_t stride_c, int batch) {
  if (batch <= 0 || M <= 0 || N <= 0) return;
  if (K > 0) flops_done += 2ull * uint64_t(M) * uint64_t(N) * uint64_t(K) * uint64_t(batch);
  auto entry = [&](int i) {
    return Problem{trans_a, trans_b, M, N, K, alpha, A + i * stride_a, lda,
                   B + i * stride_b, ldb, beta, C + i * stride_c, ldc};
  };
  const double flops = 2.0 * M * N * K;
  const int nth = threads_for(flops * batch);
  if (nth > 1 && batch >= nth) {
    // One whole product per thread at a time: no barriers, no sharing.
#pragma omp parallel for num_threads(nth) schedule(static)
    for (int i = 0; i < batch; ++i) gemm_run(entry(i), 1);
  } else {
    for (int i = 0; i < batch; ++i) gemm_run(entry(i), threads_for(flops));
  }
}

const char* sgemm_kernel_name() { return active_kernel().name; }

bool sgemm_force_kernel(const char* name) {
  if (name == nullptr || std::strcmp(name, "auto") == 0) {
    g_kernel.store(best_kernel(), std::memory_order_release);
    return true;
  }
  const Kernel* k = find_kernel(name);
  g_kernel.store(k != nullptr ? k : best_kernel(), std::memory_order_release);
  return k != nullptr;
}

}  // namespace st
