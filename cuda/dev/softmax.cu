// Dev driver for the row softmax and the multiplicative masked softmax,
// forward (the llm.c dev/cuda habit): numbered kernel versions, each checked
// against a double-precision CPU reference on odd lengths and an all-masked
// row, then timed at attention-like shapes.
//
// Build and run from the repository root (it includes the library's
// cuda/softmax.cu and cuda/dev/common.h, and needs nothing else to link):
//   nvcc -O3 -std=c++20 -arch=sm_90 -I. cuda/dev/softmax.cu -o build/dev_softmax && build/dev_softmax [version] [repeats]
//   build/dev_softmax          # every version, 20 timed repeats
//   build/dev_softmax 3        # version 3 only
//   build/dev_softmax 3 100    # version 3, 100 timed repeats
// It exits 1 if any version run does not match the reference.
//
// The ops, as engine/ops/softmax.cpp, over rows of Nk scores:
//   softmax   y_j = exp(x_j - m) / sum_k exp(x_k - m), m = max_k x_k
//   masked    scores (B, R, Nk), mask M (B, Nk) shared by the R rows of an
//             example (R = heads x queries in attention):
//             A_ij = M_j exp(a_ij - m_i) / sum_k M_k exp(a_ik - m_i), m_i the
//             max over the kept keys (M_j != 0); a row with no key kept is zeros.
//
// Versions:
//   1  the library's kernels (cuda/softmax.cu, included): one block of 128
//      threads per row, three passes over the row (max, sum of exps, write),
//      each statistic through block_max / block_sum (shared memory, two
//      __syncthreads). The row is read three times and each exp computed twice.
//   2  one warp per row, 8 rows to a block of 256, and an online max and sum:
//      each lane keeps a running (m, s) over its elements in one pass,
//      rescaling s when m grows, then the 32 pairs are merged by shuffles. Then
//      one write pass. The row is read twice (the second time mostly from the
//      cache), no shared memory, no __syncthreads; still two exps an element
//      (one in the online pass, one in the write). Any length.
//   3  one warp per row with the row in registers (kPer floats a lane) for
//      Nk <= 1024: one read, warp_max, the exps computed once and kept, warp_sum,
//      one write. Longer rows fall back to version 2.
//
// Timed: B 32 examples, R = 12 heads x 577 queries, rows of 577 keys (image
// tokens: 221,568 rows, 511 MB each way) and 12 x 40 rows of 40 (text).
// Work counted: the bytes the op has to move, each once: the scores read and
// the output written (and the mask, B Nk floats, read). The fraction printed
// is of an H100 SXM's ~3.35 TB/s of HBM3 bandwidth.
//
// Status: compiled, and checked on the CPU under a host emulation of the
// kernels (threads as fibers, shuffles and __syncthreads enforced); not yet
// run on a GPU, so no timing here has been measured.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <type_traits>
#include <vector>

// Version 1 is the library's code itself (cuda/softmax.cu, and its warp_sum
// and warp_max from cuda/launch.h, which versions 2 and 3 use too).
#include "cuda/softmax.cu"
#include "cuda/dev/common.h"

using st::cuda::warp_max;
using st::cuda::warp_sum;

constexpr int kWarpThreads = 256;  // versions 2 and 3: 8 warps a block, one row a warp
constexpr int kWarpsPerBlock = kWarpThreads / 32;
constexpr int kMaxCached = 1024;   // the longest row version 3 keeps in registers (32 floats a lane)

// ---------------------------------------------------------------------------
// CPU reference, in double, for one row of n: mask nullptr for the plain softmax.

void reference_row(double* out, const float* a, const float* mask, int n) {
  double m = -INFINITY;
  for (int j = 0; j < n; j++)
    if (!mask || mask[j] != 0.0f) m = std::max(m, double(a[j]));
  if (m == -INFINITY) {  // no key kept
    for (int j = 0; j < n; j++) out[j] = 0.0;
    return;
  }
  double sum = 0.0;
  for (int j = 0; j < n; j++) {
    const double keep = mask ? mask[j] : 1.0;
    out[j] = keep != 0.0 ? keep * std::exp(a[j] - m) : 0.0;
    sum += out[j];
  }
  for (int j = 0; j < n; j++) out[j] /= sum;
}

// ---------------------------------------------------------------------------
// Version 2: a warp per row, online max and sum. Grid ceil(rows / 8), block 256.
// kMasked false: the plain softmax (mask unused, every key kept with weight 1).

// A lane's running pair over the keys it has seen: m their max, s = sum M_j exp(a_j - m).
// Empty: m = -inf, s = 0. A larger score rescales s to the new max: one exp a key.
__device__ __forceinline__ void online_add(float& m, float& s, float a, float keep) {
  if (a > m) {
    s = s * expf(m - a) + keep;  // from empty: 0 * exp(-inf) = 0
    m = a;
  } else {
    s += keep * expf(a - m);
  }
}

// Two pairs merged into (m, s). Both empty stays empty (and avoids exp(-inf + inf) = NaN).
__device__ __forceinline__ void online_merge(float& m, float& s, float m2, float s2) {
  const float mx = fmaxf(m, m2);
  if (mx == -INFINITY) return;
  s = s * expf(m - mx) + s2 * expf(m2 - mx);
  m = mx;
}

template <bool kMasked>
__global__ void softmax_warp_online(float* out, const float* x, const float* mask, int64_t rows, int64_t R, int n) {
  const int lane = threadIdx.x % 32;
  const int64_t row = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (row >= rows) return;  // the whole warp leaves together, so every shuffle below has its 32 lanes
  const float* xr = x + row * n;
  const float* M = kMasked ? mask + (row / R) * n : nullptr;
  float m = -INFINITY, s = 0.0f;
#pragma unroll 4
  for (int j = lane; j < n; j += 32) {
    const float keep = kMasked ? M[j] : 1.0f;
    if (keep != 0.0f) online_add(m, s, xr[j], keep);
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, offset), s2 = __shfl_xor_sync(0xffffffffu, s, offset);
    online_merge(m, s, m2, s2);
  }
  // The lanes' pairs can differ in the last bit (a fused multiply-add taken in
  // the other order); lane 0's scales the whole row.
  m = __shfl_sync(0xffffffffu, m, 0);
  s = __shfl_sync(0xffffffffu, s, 0);
  const float inv = s > 0.0f ? 1.0f / s : 0.0f;  // s == 0: no key kept
  for (int j = lane; j < n; j += 32) {
    const float keep = kMasked ? M[j] : 1.0f;
    out[row * n + j] = keep != 0.0f ? keep * expf(xr[j] - m) * inv : 0.0f;
  }
}

// ---------------------------------------------------------------------------
// Version 3: a warp per row, the row in registers (n <= 32 kPer). Grid
// ceil(rows / 8), block 256. Lane l holds elements l, l + 32, l + 64, ...: each
// of the warp's loads reads 32 consecutive floats (coalesced). The loops are
// unrolled, so the arrays' indices are constants and they stay in registers.

template <int kPer, bool kMasked>
__global__ void softmax_warp_regs(float* out, const float* x, const float* mask, int64_t rows, int64_t R, int n) {
  const int lane = threadIdx.x % 32;
  const int64_t row = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (row >= rows) return;  // whole warps only
  const float* xr = x + row * n;
  const float* M = kMasked ? mask + (row / R) * n : nullptr;
  float v[kPer], keep[kPer];  // the scores (then their weighted exps) and the mask
  float m = -INFINITY;
#pragma unroll
  for (int c = 0; c < kPer; c++) {
    const int j = c * 32 + lane;
    keep[c] = j < n ? (kMasked ? M[j] : 1.0f) : 0.0f;  // past the end: as a dropped key
    v[c] = j < n ? xr[j] : 0.0f;
    if (keep[c] != 0.0f) m = fmaxf(m, v[c]);
  }
  m = warp_max(m);  // -inf: no key kept, and then every keep is 0, so no exp(-inf + inf) below
  float s = 0.0f;
#pragma unroll
  for (int c = 0; c < kPer; c++) {
    v[c] = keep[c] != 0.0f ? keep[c] * expf(v[c] - m) : 0.0f;
    s += v[c];
  }
  s = warp_sum(s);
  const float inv = s > 0.0f ? 1.0f / s : 0.0f;
#pragma unroll
  for (int c = 0; c < kPer; c++) {
    const int j = c * 32 + lane;
    if (j < n) out[row * n + j] = v[c] * inv;
  }
}

// Calls f(per) with per a compile-time constant (std::integral_constant): the
// floats of the row a lane holds, n <= 32 per. Needs n <= 1024.
template <class F>
void with_row_length(int n, F f) {
  if (n <= 32) f(std::integral_constant<int, 1>{});
  else if (n <= 64) f(std::integral_constant<int, 2>{});
  else if (n <= 128) f(std::integral_constant<int, 4>{});
  else if (n <= 256) f(std::integral_constant<int, 8>{});
  else if (n <= 512) f(std::integral_constant<int, 16>{});
  else if (n <= 768) f(std::integral_constant<int, 24>{});
  else f(std::integral_constant<int, 32>{});
}

// ---------------------------------------------------------------------------

struct Case {
  const char* name;  // nullptr: a correctness check only, not timed
  int B;
  int64_t R;  // rows per example
  int Nk;
};

struct Problem {
  int B = 0;
  int64_t R = 0, rows = 0;
  int Nk = 0;
  std::vector<float> scores, mask;  // (B, R, Nk), (B, Nk)
  float *d_scores = nullptr, *d_mask = nullptr, *d_out = nullptr;
};

// Scores uniform in [-6, 6]. Masks: example 0 keeps no key (all its rows must
// come out zero), example 1 keeps exactly one (its rows: 1 there, 0 elsewhere),
// the others drop about 30% of the keys and keep the rest at 1 or at a soft
// weight in (0.05, 1), as the training's relaxed masks do.
Problem make_problem(const Case& s, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> uni(0.0f, 1.0f);
  Problem p;
  p.B = s.B, p.R = s.R, p.Nk = s.Nk, p.rows = int64_t(s.B) * s.R;
  p.scores.resize(size_t(p.rows) * size_t(p.Nk));
  for (auto& v : p.scores) v = 12.0f * uni(gen) - 6.0f;
  p.mask.assign(size_t(p.B) * size_t(p.Nk), 0.0f);
  for (int b = 1; b < p.B; b++)
    for (int j = 0; j < p.Nk; j++) {
      float& M = p.mask[size_t(b) * p.Nk + j];
      const float u = uni(gen);
      if (b == 1) M = j == p.Nk / 2 ? 1.0f : 0.0f;
      else if (u < 0.3f) M = 0.0f;
      else if (u < 0.65f) M = 1.0f;
      else M = 0.05f + 0.95f * uni(gen);
    }
  const size_t bytes = p.scores.size() * sizeof(float), mask_bytes = p.mask.size() * sizeof(float);
  CHECK_CUDA(cudaMalloc(&p.d_scores, bytes));
  CHECK_CUDA(cudaMalloc(&p.d_out, bytes));
  CHECK_CUDA(cudaMalloc(&p.d_mask, std::max<size_t>(mask_bytes, 1)));
  CHECK_CUDA(cudaMemcpy(p.d_scores, p.scores.data(), bytes, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(p.d_mask, p.mask.data(), mask_bytes, cudaMemcpyHostToDevice));
  return p;
}

void free_problem(Problem& p) {
  for (float* ptr : {p.d_scores, p.d_mask, p.d_out}) CHECK_CUDA(cudaFree(ptr));
}

// One launch of one version: the plain softmax (masked false) over all B R
// rows, or the masked one.
void run_version(int version, bool masked, const Problem& p) {
  if (p.rows == 0 || p.Nk == 0) return;
  if (version == 1) {
    // the library's launchers
    if (masked) st::cuda::masked_softmax_forward(p.d_out, p.d_scores, p.d_mask, p.B, p.R, p.Nk);
    else st::cuda::softmax_forward(p.d_out, p.d_scores, p.rows, p.Nk);
    return;
  }
  const unsigned grid = unsigned((p.rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
  if (version == 3 && p.Nk <= kMaxCached) {
    with_row_length(p.Nk, [&](auto per) {
      if (masked) softmax_warp_regs<per, true><<<grid, kWarpThreads>>>(p.d_out, p.d_scores, p.d_mask, p.rows, p.R, p.Nk);
      else softmax_warp_regs<per, false><<<grid, kWarpThreads>>>(p.d_out, p.d_scores, p.d_mask, p.rows, p.R, p.Nk);
    });
    CHECK_LAUNCH("softmax_warp_regs");
  } else {  // version 2, and version 3 on rows too long for registers
    if (masked) softmax_warp_online<true><<<grid, kWarpThreads>>>(p.d_out, p.d_scores, p.d_mask, p.rows, p.R, p.Nk);
    else softmax_warp_online<false><<<grid, kWarpThreads>>>(p.d_out, p.d_scores, p.d_mask, p.rows, p.R, p.Nk);
    CHECK_LAUNCH("softmax_warp_online");
  }
}

// The relative error max_j |gpu - ref| / max_j |ref| of each row checked, the
// largest over the rows (row by row, so a row of small probabilities counts as
// much as a row with one kept key at 1; a row with no key kept: max_j |gpu|,
// which must be 0). The rows checked: all when there are at most 2^22
// elements, else every 7th and the last (to stay quick). A value that is not
// finite (an unwritten NaN) makes the error infinite.
double check_version(bool masked, const Problem& p) {
  const size_t n = size_t(p.Nk);
  std::vector<float> out(size_t(p.rows) * n);
  CHECK_CUDA(cudaMemcpy(out.data(), p.d_out, out.size() * sizeof(float), cudaMemcpyDeviceToHost));
  const int64_t step = out.size() <= (size_t(1) << 22) ? 1 : 7;
  std::vector<int64_t> rows;
  for (int64_t row = 0; row < p.rows; row += step) rows.push_back(row);
  if (rows.back() != p.rows - 1) rows.push_back(p.rows - 1);
  std::vector<double> ref(n);
  double worst = 0.0;
  for (int64_t row : rows) {
    const float* M = masked ? p.mask.data() + size_t(row / p.R) * n : nullptr;
    reference_row(ref.data(), p.scores.data() + size_t(row) * n, M, p.Nk);
    const float* got = out.data() + size_t(row) * n;
    double max_diff = 0.0, max_ref = 0.0;
    for (size_t j = 0; j < n; j++) {
      if (!std::isfinite(got[j])) return INFINITY;
      max_diff = std::max(max_diff, std::fabs(got[j] - ref[j]));
      max_ref = std::max(max_ref, std::fabs(ref[j]));
    }
    worst = std::max(worst, max_ref > 0.0 ? max_diff / max_ref : max_diff);
  }
  return worst;
}

int main(int argc, char** argv) {
  const auto [only, repeats] = dev::parse_args(argc, argv, 3);
  const double kPeak = dev::kHbmBytesPerSecond;
  const double kTol = 1e-5;
  dev::print_device();

  const Case cases[] = {
      {nullptr, 3, 5, 1},     // one key: 1, or 0 where masked
      {nullptr, 4, 33, 37},   // odd, a part-full last block of rows (132 rows)
      {nullptr, 3, 3, 100},   // the other register sizes: 4 a lane
      {nullptr, 3, 5, 250},   // 8 a lane
      {nullptr, 3, 3, 300},   // 16 a lane
      {nullptr, 3, 17, 577},  // odd, the image-token length
      {nullptr, 5, 9, 1001},  // odd, near the register limit (32 a lane)
      {nullptr, 3, 7, 1500},  // over it: version 3 falls back to version 2
      {"attention-like, image tokens: B 32, R 12 x 577 (heads x queries)", 32, 12 * 577, 577},
      {"attention-like, text tokens: B 32, R 12 x 40", 32, 12 * 40, 40},
  };
  bool all_ok = true;
  std::printf("\nchecks: relative error max|gpu - ref| / max|ref| of each row against double, the worst row, <= %.0e;"
              " example 0 keeps no key, example 1 one\n", kTol);
  for (const Case& s : cases) {
    Problem p = make_problem(s, 42);
    const size_t elems = size_t(p.rows) * size_t(p.Nk);
    const double bytes = 2.0 * 4.0 * double(elems), masked_bytes = bytes + 4.0 * double(p.mask.size());
    if (s.name)
      std::printf("\n%s: %lld rows of %d, %.1f MB\n", s.name, (long long)p.rows, p.Nk, bytes * 1e-6);
    for (int version = 1; version <= 3; version++) {
      if (only && version != only) continue;
      double err[2];
      bool ok[2];
      for (int masked = 0; masked < 2; masked++) {
        // correctness first, into an output full of NaNs, so unwritten elements show
        CHECK_CUDA(cudaMemset(p.d_out, 0xff, elems * sizeof(float)));
        run_version(version, masked == 1, p);
        CHECK_CUDA(cudaDeviceSynchronize());
        err[masked] = check_version(masked == 1, p);
        ok[masked] = err[masked] <= kTol;
        all_ok = all_ok && ok[masked];
      }
      if (!s.name) {
        std::printf("  B %d x R %3lld x Nk %4d  version %d: softmax %.2e %s  masked %.2e %s\n", p.B, (long long)p.R,
                    p.Nk, version, err[0], ok[0] ? "ok" : "MISMATCH", err[1], ok[1] ? "ok" : "MISMATCH");
        continue;
      }
      for (int masked = 0; masked < 2; masked++) {
        const float ms = dev::time_ms(repeats, [&] { run_version(version, masked == 1, p); });
        const double bw = (masked ? masked_bytes : bytes) / (double(ms) * 1e-3);
        std::printf("  version %d %-7s: %9.2f us  %7.1f GB/s  %5.1f%% of 3.35 TB/s  error %.2e %s\n", version,
                    masked ? "masked" : "softmax", ms * 1e3, bw * 1e-9, 100.0 * bw / kPeak, err[masked],
                    ok[masked] ? "ok" : "MISMATCH");
      }
    }
    free_problem(p);
  }
  std::printf("\n%s\n", all_ok ? "all versions match the reference" : "SOME VERSION DOES NOT MATCH");
  return all_ok ? 0 : 1;
}
