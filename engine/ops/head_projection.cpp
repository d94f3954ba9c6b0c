// Attention's projections when examples drop heads: see head_projection.h.
//
// Both are row products (row_products.h) over some of the columns: into
// the heads, the kept heads' output columns of all inputs; out of them,
// all outputs from the kept heads' input columns.
#include "engine/ops/head_projection.h"

#include <algorithm>
#include <string>
#include <vector>

#include "engine/error.h"
#include "engine/ops/row_products.h"
#include "engine/parallel.h"

namespace st::cpu {

namespace {

using namespace rows;

constexpr int kMaxHeadBlocks = 2, kMaxOutputBlocks = 8;  // k <= 32, d_out <= 128

void require_fit(const char* kernel, int64_t d_in, int64_t k, int64_t d_out) {
  if (!head_projection_fits(d_in, k, d_out))
    throw ShapeError(std::string(kernel) + ": " + std::to_string(d_in) + " inputs, heads of " + std::to_string(k) +
                     " and " + std::to_string(d_out) + " outputs are past the direct kernels' sizes");
}

}  // namespace

bool head_projection_fits(int64_t d_in, int64_t k, int64_t d_out) {
  return d_in >= 1 && k >= 1 && d_out >= 1 && d_in <= kMaxInputs && blocks(k) <= kMaxHeadBlocks &&
         blocks(d_out) <= kMaxOutputBlocks;
}

void project_into_heads(float* y, const float* x, const float* W, const float* bias, float scale,
                        const int32_t* at, const float* keep, int B, int H, int k, int d_in) {
  require_fit("project_into_heads", d_in, k, int64_t(H) * k);
  const int KB = blocks(k);
  const int64_t kp = int64_t(KB) * kLanes, ld_wt = H * kp, ld_y = int64_t(H) * k;
  // Wt (d_in, H kp): head h's rows of W transposed into columns h kp .., zero-padded to whole
  // vectors; bias_p: the bias, padded the same way.
  thread_local TransposedCopies copies;
  forget_if_many(copies);
  const float* wt = transposed(copies, W, ld_y, d_in, ld_wt, [&](float* Wt) {
    for (int h = 0; h < H; h++) transpose_rows(Wt + h * kp, ld_wt, W, d_in, int64_t(h) * k, k);
  });
  std::vector<float> bias_p(size_t(ld_wt), 0.0f);
  for (int h = 0; h < H; h++) std::copy_n(bias + int64_t(h) * k, k, bias_p.data() + h * kp);
  const float* bp = bias_p.data();
  const bool threads = use_threads(2 * int64_t(at[B]) * d_in * ld_y, 4'000'000);
  parallel_jobs(B, threads, [&](int64_t b) {
    // The vectors of the heads b keeps, kVectors at a time.
    Inputs all;
    all.add(0, d_in);
    Columns cols{};
    Vec16 init[kVectors];
    int V = 0;
    auto flush = [&] {
      if (V > 0) over_rows(at[b], at[b + 1], y, ld_y, x, d_in, wt, ld_wt, all, cols, V, init, scale);
      V = 0;
    };
    for (int h = 0; h < H; h++) {
      if (keep[b * H + h] == 0.0f) continue;
      for (int kb = 0; kb < KB; kb++) {
        cols.wt_col[V] = h * kp + kb * kLanes;
        cols.y_col[V] = int64_t(h) * k + kb * kLanes;
        cols.count[V] = int(std::min<int64_t>(kLanes, k - kb * kLanes));
        init[V] = load16(bp + cols.wt_col[V]);
        if (++V == kVectors) flush();
      }
    }
    flush();
  });
}

void project_out_of_heads(float* y, const float* x, const float* W, const float* bias, const int32_t* at,
                          const float* keep, int B, int H, int k, int d_out) {
  const int64_t d_in = int64_t(H) * k;
  require_fit("project_out_of_heads", d_in, k, d_out);
  const int DB = blocks(d_out);
  const int64_t ld_wt = int64_t(DB) * kLanes;
  // Wt (H k, ld_wt): W transposed, zero-padded to whole vectors of outputs.
  thread_local TransposedCopies copies;
  forget_if_many(copies);
  const float* wt = transposed(copies, W, d_out, d_in);
  std::vector<float> bias_p(size_t(ld_wt), 0.0f);
  std::copy_n(bias, d_out, bias_p.data());
  const float* bp = bias_p.data();
  const bool threads = use_threads(2 * int64_t(at[B]) * d_in * d_out, 4'000'000);
  parallel_jobs(B, threads, [&](int64_t b) {
    Inputs kept;  // the columns of the heads b keeps
    for (int h = 0; h < H; h++)
      if (keep[b * H + h] != 0.0f) kept.add(int64_t(h) * k, int64_t(h + 1) * k);
    for (int v0 = 0; v0 < DB; v0 += kVectors) {  // kVectors vectors of outputs at a time
      const int V = std::min(kVectors, DB - v0);
      const Columns cols = dense_columns(v0, V, d_out);
      Vec16 init[kVectors];
      for (int v = 0; v < V; v++) init[v] = load16(bp + cols.wt_col[v]);
      over_rows(at[b], at[b + 1], y, d_out, x, d_in, wt, ld_wt, kept, cols, V, init, 1.0f);
    }
  });
}

}  // namespace st::cpu
