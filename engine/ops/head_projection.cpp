// Attention's projections when examples drop heads: see head_projection.h.
//
// Both projections are y[r] += x[r] (n) . Wt (n, columns) over some of the
// columns, Wt the weights transposed so that a row of it is contiguous
// across output columns. The inner step takes R rows of x (up to 4) and V
// vectors of 16 output columns (up to 4): R x V independent sums in vector
// registers, each weight vector loaded once and used for R rows, each x
// value broadcast once and used for V vectors.
//
// Transposing a weight matrix took longer than comparing it with a copy,
// so each thread keeps the transposed copies it made and remakes one only
// when the weights' values changed.
#include "engine/ops/head_projection.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/error.h"
#include "engine/ops/vec16.h"
#include "engine/parallel.h"

namespace st::cpu {

namespace {

constexpr int kMaxInputs = 256, kMaxHeadBlocks = 2, kMaxOutputBlocks = 8;  // d_in, k <= 32, d_out <= 128
constexpr int kRows = 4, kVectors = 4;  // the inner step's largest R and V: 16 sums in flight

int blocks(int64_t n) { return int((n + kLanes - 1) / kLanes); }

// Which inputs the inner step sums over: spans [begin, end) of x's
// columns, which are also Wt's rows (the kept heads' columns, for O).
struct Inputs {
  static constexpr int kMax = kMaxInputs / 2;  // spans are separated by gaps, so at most half the inputs
  int64_t begin[kMax], end[kMax];
  int n = 0;
  void add(int64_t b, int64_t e) {
    if (n > 0 && end[n - 1] == b) end[n - 1] = e;  // adjacent heads: one span
    else begin[n] = b, end[n] = e, n++;
  }
};

// Where the inner step's V vectors of output columns come from and go:
// vector v is columns wt_col[v] .. + 16 of Wt, and its first `count[v]`
// values go to columns y_col[v] .. of y.
struct Columns {
  int64_t wt_col[kVectors], y_col[kVectors];
  int count[kVectors];
};

// y[i, cols] = (init + x_i[inputs] . Wt[inputs, cols]) * scale for the R rows x_i = x + i ld_x;
// init: one vector per output vector (a bias).
template <int R, int V>
void rows_times_columns(float* y, int64_t ld_y, const float* x, int64_t ld_x, const float* Wt, int64_t ld_wt,
                        const Inputs& in, const Columns& cols, const Vec16* init, float scale) {
  Vec16 acc[R][V];
  for (int i = 0; i < R; i++)
    for (int v = 0; v < V; v++) acc[i][v] = init[v];
  for (int s = 0; s < in.n; s++)
    for (int64_t j = in.begin[s]; j < in.end[s]; j++) {
      Vec16 w[V];
      for (int v = 0; v < V; v++) {
        w[v] = load16(Wt + j * ld_wt + cols.wt_col[v]);
        // Keeps w[v] in a register: otherwise GCC folds the load into each
        // of the R multiply-adds, and R times the loads outrun the FMAs.
        asm("" : "+v"(w[v]));
      }
      for (int i = 0; i < R; i++) {
        const float xi = x[i * ld_x + j];
        for (int v = 0; v < V; v++) acc[i][v] += xi * w[v];
      }
    }
  for (int i = 0; i < R; i++)
    for (int v = 0; v < V; v++) {
      float* to = y + i * ld_y + cols.y_col[v];
      if (cols.count[v] == kLanes) {
        store16(to, acc[i][v] * scale);
      } else {  // a head's or the outputs' last, partial vector
        alignas(64) float out[kLanes];
        store16(out, acc[i][v] * scale);
        for (int c = 0; c < cols.count[v]; c++) to[c] = out[c];
      }
    }
}

using StepKernel = void (*)(float*, int64_t, const float*, int64_t, const float*, int64_t, const Inputs&,
                            const Columns&, const Vec16*, float);

// The inner step for R rows (1..4) and V vectors (1..4).
StepKernel step_kernel(int64_t R, int V) {
  static const StepKernel by_size[kRows][kVectors] = {
      {rows_times_columns<1, 1>, rows_times_columns<1, 2>, rows_times_columns<1, 3>, rows_times_columns<1, 4>},
      {rows_times_columns<2, 1>, rows_times_columns<2, 2>, rows_times_columns<2, 3>, rows_times_columns<2, 4>},
      {rows_times_columns<3, 1>, rows_times_columns<3, 2>, rows_times_columns<3, 3>, rows_times_columns<3, 4>},
      {rows_times_columns<4, 1>, rows_times_columns<4, 2>, rows_times_columns<4, 3>, rows_times_columns<4, 4>},
  };
  return by_size[R - 1][V - 1];
}

// The step over rows begin .. end, kRows at a time, the last block smaller.
void over_rows(int64_t begin, int64_t end, float* y, int64_t ld_y, const float* x, int64_t ld_x, const float* Wt,
               int64_t ld_wt, const Inputs& in, const Columns& cols, int V, const Vec16* init, float scale) {
  for (int64_t r = begin; r < end; r += kRows) {
    const int64_t R = std::min<int64_t>(kRows, end - r);
    step_kernel(R, V)(y + r * ld_y, ld_y, x + r * ld_x, ld_x, Wt, ld_wt, in, cols, init, scale);
  }
}

// Wt (cols, ld_wt) = W (rows, cols) transposed, for rows first .. first + count; in 8 x 8 tiles,
// which keeps both the reads and the writes within a few cache lines.
void transpose_rows(float* Wt, int64_t ld_wt, const float* W, int64_t cols, int64_t first, int64_t count) {
  constexpr int64_t kTile = 8;
  for (int64_t r0 = first; r0 < first + count; r0 += kTile)
    for (int64_t c0 = 0; c0 < cols; c0 += kTile)
      for (int64_t c = c0; c < std::min(c0 + kTile, cols); c++)
        for (int64_t r = r0; r < std::min(r0 + kTile, first + count); r++) Wt[c * ld_wt + (r - first)] = W[r * cols + c];
}

// W (rows, cols) transposed by make(Wt) into a zero-filled (cols, ld_wt) buffer: this thread's
// copy from an earlier call while W holds the same values, else a new one.
struct TransposedCopy {
  std::vector<float> source, Wt;  // W's values when Wt was made; Wt
  int64_t rows = 0, ld_wt = 0;
};
using TransposedCopies = std::unordered_map<const float*, TransposedCopy>;  // by W; one per kernel and thread

template <class Make>
const float* transposed(TransposedCopies& copies, const float* W, int64_t rows, int64_t cols, int64_t ld_wt,
                        const Make& make) {
  if (copies.size() > 256) copies.clear();  // bounds what models made and dropped leave behind
  TransposedCopy& c = copies[W];
  const size_t n = size_t(rows * cols);
  if (c.rows != rows || c.ld_wt != ld_wt || c.source.size() != n ||
      std::memcmp(c.source.data(), W, n * sizeof(float)) != 0) {
    c.source.assign(W, W + n);
    c.Wt.assign(size_t(cols * ld_wt), 0.0f);
    c.rows = rows, c.ld_wt = ld_wt;
    make(c.Wt.data());
  }
  return c.Wt.data();
}

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
  const float* wt =
      transposed(copies, W, d_out, d_in, ld_wt, [&](float* Wt) { transpose_rows(Wt, ld_wt, W, d_in, 0, d_out); });
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
      Columns cols{};
      Vec16 init[kVectors];
      for (int v = 0; v < V; v++) {
        cols.wt_col[v] = cols.y_col[v] = int64_t(v0 + v) * kLanes;
        cols.count[v] = int(std::min<int64_t>(kLanes, d_out - cols.y_col[v]));
        init[v] = load16(bp + cols.wt_col[v]);
      }
      over_rows(at[b], at[b + 1], y, d_out, x, d_in, wt, ld_wt, kept, cols, V, init, 1.0f);
    }
  });
}

}  // namespace st::cpu
