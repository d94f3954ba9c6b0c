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

constexpr int kMaxHeadBlocks = 32 / kLanes, kMaxOutputBlocks = 128 / kLanes;  // k <= 32, d_out <= 128

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

HeadWeights into_heads_weights(const float* W, const float* bias, int H, int k, int d_in) {
  require_fit("project_into_heads", d_in, k, int64_t(H) * k);
  HeadWeights w;
  w.H = H, w.k = k, w.d_in = d_in, w.d_out = H * k;
  const int64_t kp = int64_t(blocks(k)) * kLanes;  // a head's columns in whole vectors
  w.ld_wt = H * kp;
  w.wt.assign(size_t(d_in * w.ld_wt), 0.0f);
  w.bias.assign(size_t(w.ld_wt), 0.0f);
  for (int h = 0; h < H; h++) {  // head h's rows of W become columns h kp .. of Wt
    transpose_rows(w.wt.data() + h * kp, w.ld_wt, W, d_in, int64_t(h) * k, k);
    std::copy_n(bias + int64_t(h) * k, k, w.bias.data() + h * kp);
  }
  return w;
}

HeadWeights out_of_heads_weights(const float* W, const float* bias, int H, int k, int d_out) {
  const int64_t d_in = int64_t(H) * k;
  require_fit("project_out_of_heads", d_in, k, d_out);
  HeadWeights w;
  w.H = H, w.k = k, w.d_in = int(d_in), w.d_out = d_out;
  w.ld_wt = int64_t(blocks(d_out)) * kLanes;
  w.wt.assign(size_t(d_in * w.ld_wt), 0.0f);
  w.bias.assign(size_t(w.ld_wt), 0.0f);
  transpose_rows(w.wt.data(), w.ld_wt, W, d_in, 0, d_out);
  std::copy_n(bias, d_out, w.bias.data());
  return w;
}

void project_into_heads(float* y, const float* x, const HeadWeights& w, float scale, const int32_t* at,
                        const float* keep, int B) {
  const int H = w.H, k = w.k, d_in = w.d_in, KB = blocks(k);
  const int64_t kp = int64_t(KB) * kLanes, ld_y = int64_t(H) * k;
  const bool threads = use_threads(2 * int64_t(at[B]) * d_in * ld_y, 4'000'000);
  parallel_jobs(B, threads, [&](int64_t b) {
    // The vectors of the heads b keeps, kVectors at a time.
    Inputs all;
    all.add(0, d_in);
    Columns cols{};
    Vec init[kVectors];
    int V = 0;
    auto flush = [&] {
      if (V > 0) over_rows(at[b], at[b + 1], y, ld_y, x, d_in, w.wt.data(), w.ld_wt, all, cols, V, init, scale);
      V = 0;
    };
    for (int h = 0; h < H; h++) {
      if (keep[b * H + h] == 0.0f) continue;
      for (int kb = 0; kb < KB; kb++) {
        cols.wt_col[V] = h * kp + kb * kLanes;
        cols.y_col[V] = int64_t(h) * k + kb * kLanes;
        cols.count[V] = int(std::min<int64_t>(kLanes, k - kb * kLanes));
        init[V] = load_vec(w.bias.data() + cols.wt_col[V]);
        if (++V == kVectors) flush();
      }
    }
    flush();
  });
}

void project_out_of_heads(float* y, const float* x, const HeadWeights& w, const int32_t* at, const float* keep,
                          int B) {
  const int H = w.H, k = w.k, d_in = w.d_in, d_out = w.d_out, DB = blocks(d_out);
  const bool threads = use_threads(2 * int64_t(at[B]) * d_in * d_out, 4'000'000);
  parallel_jobs(B, threads, [&](int64_t b) {
    Inputs kept;  // the columns of the heads b keeps
    for (int h = 0; h < H; h++)
      if (keep[b * H + h] != 0.0f) kept.add(int64_t(h) * k, int64_t(h + 1) * k);
    for (int v0 = 0; v0 < DB; v0 += kVectors) {  // kVectors vectors of outputs at a time
      const int V = std::min(kVectors, DB - v0);
      const Columns cols = dense_columns(v0, V, d_out);
      Vec init[kVectors];
      for (int v = 0; v < V; v++) init[v] = load_vec(w.bias.data() + cols.wt_col[v]);
      over_rows(at[b], at[b + 1], y, d_out, x, d_in, w.wt.data(), w.ld_wt, kept, cols, V, init, 1.0f);
    }
  });
}

}  // namespace st::cpu
