// Attention over packed variable-length segments, the inner phase of the
// packed inference path (pruning/packed.cpp): one job per (example, kept
// head), each two small GEMMs around a row softmax, spread over the threads.
// The (n, m) score matrix of a job lives in a per-thread buffer.
#include <algorithm>
#include <vector>

#include "engine/gemm.h"
#include "engine/ops/common.h"
#include "engine/ops/vector_math.h"

namespace st {
namespace cpu {

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
    const int64_t n = q_at[b + 1] - q_at[b], m = k_at[b + 1] - k_at[b], qr = q_at[b], kr = k_at[b];
    if (n == 0) return;
    if (m == 0) {  // nothing to attend to
      for (int64_t r = 0; r < n; r++) std::fill_n(ctx + (qr + r) * d + h * head_dim, head_dim, 0.0f);
      return;
    }
    thread_local std::vector<float> scores;
    scores.resize(size_t(n * m));
    sgemm(false, true, int(n), int(m), head_dim, 1.0f, q + qr * d + h * head_dim, int(d), k + kr * d + h * head_dim,
          int(d), 0.0f, scores.data(), int(m));  // (n, m) = Q_h K_h^T
    softmax_rows_in_place(scores.data(), n, m);
    sgemm(false, false, int(n), head_dim, int(m), 1.0f, scores.data(), int(m), v + kr * d + h * head_dim, int(d),
          0.0f, ctx + qr * d + h * head_dim, int(d));  // (n, k) = A V_h
  });
}

}  // namespace cpu
}  // namespace st
