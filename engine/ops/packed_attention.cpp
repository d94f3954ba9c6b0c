// Attention over packed variable-length segments, the inner phase of the
// packed inference path (pruning/packed.cpp): one job per (example, kept
// head), spread over the threads. A job is softmax(Q_h K_h^T) V_h on its
// example's rows: n queries, m keys, head size k.
//
// Two ways to run a job:
// - short segments of narrow heads (m <= 64 keys, k <= 32 columns: a small
//   model's, or a trimmed one's): a direct kernel whose scores and outputs
//   stay in vector registers;
// - the rest: two GEMMs around a row softmax, the (n, m) score matrix in a
//   per-thread buffer. At k = 64 (METER-base) the GEMMs were faster than
//   the direct kernel, for 64 x 64 and for 20 x 60 jobs alike.
// A GEMM call packs both operands into panels before it multiplies, which
// pays off for large products; for a 16 x 16 x 10 job it took twice as long
// as the direct kernel, and a small model runs thousands of such jobs per
// batch.
#include <algorithm>
#include <array>
#include <limits>
#include <utility>
#include <vector>

#include "engine/gemm.h"
#include "engine/ops/common.h"
#include "engine/ops/vec.h"
#include "engine/ops/vector_math.h"

namespace st {
namespace cpu {

// --- the direct kernel for short segments

// The direct kernel's sizes: m <= 64 keys and k <= 32 columns, in vectors.
constexpr int kMaxKeyBlocks = 64 / kLanes, kMaxColumnBlocks = 32 / kLanes;

// Query rows computed together: independent FMA chains hide their latency,
// as many as their scores or outputs (the larger) fit in three quarters of
// the vector registers, at most four. AVX-512 (32 registers) always takes
// four; AVX2 (16) takes four rows of up to 24 keys and one row of more than 48.
template <int MB, int KB>
constexpr int rows_at_once() {
  return std::clamp(kVectorRegisters * 3 / 4 / std::max(MB, KB), 1, 4);
}

// One job, m <= kLanes MB keys and k <= kLanes KB columns:
//   q (n rows, stride d), k and v (m rows, stride d) -> ctx (n rows, stride d), k columns each.
// Kt (k, kLanes MB) holds K transposed and Vp (m, kLanes KB) holds V, both
// zero-padded to whole vectors. Rows are taken R at a time; past the last
// row, the last row is computed again and not written. The softmax's 1 / sum
// scales the outputs (k values per row) rather than the weights (m values).
template <int MB, int KB>
static void attend_short(float* ctx, const float* q, const float* kx, const float* vx, int64_t n, int64_t m,
                         int64_t k, int64_t d) {
  constexpr int64_t mp = MB * kLanes, kp = KB * kLanes;
  alignas(64) float Kt[kp * mp];  // (k, mp)
  alignas(64) float Vp[mp * kp];  // (m, kp)
  for (int64_t c = 0; c < k; c++) {
    for (int64_t j = 0; j < m; j++) Kt[c * mp + j] = kx[j * d + c];
    for (int64_t j = m; j < mp; j++) Kt[c * mp + j] = 0.0f;
  }
  for (int64_t j = 0; j < m; j++)
    for (int b = 0; b < KB; b++) {
      const int cols = int(std::clamp<int64_t>(k - b * kLanes, 0, kLanes));
      store_vec(Vp + j * kp + b * kLanes, load_first(vx + j * d + b * kLanes, cols));
    }
  constexpr int R = rows_at_once<MB, KB>();
  const Vec lane = lane_index();
  const Vec minus_inf = Vec{} - std::numeric_limits<float>::infinity();
  const float keys_in_last = float(m - (MB - 1) * kLanes);  // real keys in the last vector of scores
  alignas(64) float p[R][mp];  // exp(s - max) of the rows in flight
  for (int64_t i0 = 0; i0 < n; i0 += R) {
    // scores s[r] = q_r K^T, (rows, mp)
    Vec s[R][MB] = {};
    for (int64_t c = 0; c < k; c++)
      for (int b = 0; b < MB; b++) {
        const Vec kc = load_vec(Kt + c * mp + b * kLanes);
        for (int r = 0; r < R; r++) s[r][b] += q[std::min(i0 + r, n - 1) * d + c] * kc;
      }
    float inv_sum[R];
    for (int r = 0; r < R; r++) {
      Vec mx = lane < keys_in_last ? s[r][MB - 1] : minus_inf;
      for (int b = 0; b + 1 < MB; b++) mx = vmax(mx, s[r][b]);
      const float row_max = lanes_max(mx);
      // A padded score is set to the max, so that its exponential is 1, not
      // the exp(-inf) that would send libmvec's expf down its slow path; the
      // sum leaves it out, and the products below never reach it.
      s[r][MB - 1] = lane < keys_in_last ? s[r][MB - 1] : Vec{} + row_max;
      for (int b = 0; b < MB; b++) store_vec(p[r] + b * kLanes, s[r][b] - row_max);
    }
    vexp_in_place(p[0], R * mp);  // the rows in flight in one call: they are contiguous
    for (int r = 0; r < R; r++) {
      const Vec last = load_vec(p[r] + (MB - 1) * kLanes);
      Vec sum = lane < keys_in_last ? last : Vec{};
      for (int b = 0; b + 1 < MB; b++) sum += load_vec(p[r] + b * kLanes);
      inv_sum[r] = 1.0f / lanes_sum(sum);
    }
    // outputs o[r] = p_r V / sum_r, (rows, kp)
    Vec o[R][KB] = {};
    for (int64_t j = 0; j < m; j++)
      for (int b = 0; b < KB; b++) {
        const Vec vj = load_vec(Vp + j * kp + b * kLanes);
        for (int r = 0; r < R; r++) o[r][b] += p[r][j] * vj;
      }
    for (int64_t r = 0; r < std::min<int64_t>(R, n - i0); r++)
      for (int b = 0; b < KB; b++)
        store_first(ctx + (i0 + r) * d + b * kLanes, o[r][b] * inv_sum[r],
                    int(std::clamp<int64_t>(k - b * kLanes, 0, kLanes)));
  }
}

using ShortKernel = void (*)(float*, const float*, const float*, const float*, int64_t, int64_t, int64_t, int64_t);

static bool is_short(int64_t m, int64_t k) { return m <= kMaxKeyBlocks * kLanes && k <= kMaxColumnBlocks * kLanes; }

// [key vectors - 1][column vectors - 1]: attend_short<MB, KB> for every size it takes
template <int... MB>
constexpr auto make_short_table(std::integer_sequence<int, MB...>) {
  using Row = std::array<ShortKernel, kMaxColumnBlocks>;
  auto row = []<int M, int... KB>(std::integer_sequence<int, KB...>) { return Row{attend_short<M + 1, KB + 1>...}; };
  return std::array<Row, kMaxKeyBlocks>{row.template operator()<MB>(std::make_integer_sequence<int, kMaxColumnBlocks>{})...};
}
static constexpr auto kShortKernels = make_short_table(std::make_integer_sequence<int, kMaxKeyBlocks>{});

// the direct kernel for m keys and k columns (is_short(m, k))
static ShortKernel short_kernel(int64_t m, int64_t k) {
  return kShortKernels[size_t((m + kLanes - 1) / kLanes - 1)][size_t((k + kLanes - 1) / kLanes - 1)];
}

// --- the GEMM path for the rest

// s (rows, cols) -> softmax of each row, in place
static void softmax_rows_in_place(float* s, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; r++) {
    float* row = s + r * cols;
    float m = row[0];
    for (int64_t j = 1; j < cols; j++) m = std::max(m, row[j]);
#pragma omp simd
    for (int64_t j = 0; j < cols; j++) row[j] -= m;
    vexp_in_place(row, cols);
    float sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < cols; j++) sum += row[j];
    const float inv = 1.0f / sum;
    for (int64_t j = 0; j < cols; j++) row[j] *= inv;
  }
}

static void attend_long(float* ctx, const float* q, const float* kx, const float* vx, int64_t n, int64_t m,
                        int64_t k, int64_t d) {
  thread_local std::vector<float> scores;
  scores.resize(size_t(n * m));
  sgemm(false, true, int(n), int(m), int(k), 1.0f, q, int(d), kx, int(d), 0.0f, scores.data(),
        int(m));  // (n, m) = Q_h K_h^T
  softmax_rows_in_place(scores.data(), n, m);
  sgemm(false, false, int(n), int(k), int(m), 1.0f, scores.data(), int(m), vx, int(d), 0.0f, ctx,
        int(d));  // (n, k) = A V_h
}

void packed_attention_forward(float* ctx, const float* q, const float* k, const float* v, const int32_t* q_at,
                              const int32_t* k_at, const float* head_keep, int B, int H, int head_dim) {
  const int64_t d = int64_t(H) * head_dim;
  std::vector<std::pair<int, int>> jobs;  // (example, head)
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++)
      if (!head_keep || head_keep[int64_t(b) * H + h] != 0.0f) jobs.push_back({b, h});
  // The same size rule as the projections around it: below it a parallel
  // region costs more than it saves.
  const bool threads = use_threads(2 * (int64_t(q_at[B]) + k_at[B]) * d * d, 4'000'000);
  parallel_jobs(int64_t(jobs.size()), threads, [&](int64_t j) {
    const auto [b, h] = jobs[size_t(j)];
    const int64_t n = q_at[b + 1] - q_at[b], m = k_at[b + 1] - k_at[b];
    if (n == 0) return;
    float* out = ctx + q_at[b] * d + h * head_dim;
    if (m == 0) {  // nothing to attend to
      for (int64_t r = 0; r < n; r++) std::fill_n(out + r * d, head_dim, 0.0f);
      return;
    }
    const float* qh = q + q_at[b] * d + h * head_dim;
    const float *kh = k + k_at[b] * d + h * head_dim, *vh = v + k_at[b] * d + h * head_dim;
    if (is_short(m, head_dim)) short_kernel(m, head_dim)(out, qh, kh, vh, n, m, head_dim, d);
    else attend_long(out, qh, kh, vh, n, m, head_dim, d);
  });
}

}  // namespace cpu
}  // namespace st
