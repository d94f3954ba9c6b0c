// The row-product step: see row_products.h.
#include "engine/ops/row_products.h"

#include <algorithm>
#include <array>
#include <utility>

namespace st::cpu::rows {

namespace {

// y[i, cols] = (init + x_i[inputs] . Wt[inputs, cols]) * scale for the R rows x_i = x + i ld_x;
// init: one vector per output vector (a bias).
template <int R, int V>
void rows_times_columns(float* y, int64_t ld_y, const float* x, int64_t ld_x, const float* Wt, int64_t ld_wt,
                        const Inputs& in, const Columns& cols, const Vec* init, float scale) {
  Vec acc[R][V];
  for (int i = 0; i < R; i++)
    for (int v = 0; v < V; v++) acc[i][v] = init[v];
  for (int s = 0; s < in.n; s++)
    for (int64_t j = in.begin[s]; j < in.end[s]; j++) {
      Vec w[V];
      for (int v = 0; v < V; v++) {
        w[v] = load_vec(Wt + j * ld_wt + cols.wt_col[v]);
        // Keeps w[v] in a register: otherwise GCC folds the load into each
        // of the R multiply-adds, and R times the loads outrun the FMAs.
#if defined(__x86_64__) || defined(__i386__)
        asm("" : "+v"(w[v]));
#endif
      }
      for (int i = 0; i < R; i++) {
        const float xi = x[i * ld_x + j];
        for (int v = 0; v < V; v++) acc[i][v] += xi * w[v];
      }
    }
  for (int i = 0; i < R; i++)
    for (int v = 0; v < V; v++) {
      float* to = y + i * ld_y + cols.y_col[v];
      if (cols.count[v] == kLanes) store_vec(to, acc[i][v] * scale);
      else store_first(to, acc[i][v] * scale, cols.count[v]);  // a head's or the outputs' last, partial vector
    }
}

using StepKernel = void (*)(float*, int64_t, const float*, int64_t, const float*, int64_t, const Inputs&,
                            const Columns&, const Vec*, float);

// The inner step for R rows and V vectors (R x V <= kSums sums in registers).
template <int... R>
constexpr auto make_step_table(std::integer_sequence<int, R...>) {
  using Row = std::array<StepKernel, kVectors>;
  return std::array<Row, sizeof...(R)>{
      {Row{rows_times_columns<R + 1, 1>, rows_times_columns<R + 1, 2>,
           R < kRows ? rows_times_columns<std::min(R + 1, kRows), 3> : nullptr,
           R < kRows ? rows_times_columns<std::min(R + 1, kRows), 4> : nullptr}...}};
}
constexpr auto kSteps = make_step_table(std::make_integer_sequence<int, kMaxRows>{});

StepKernel step_kernel(int64_t R, int V) { return kSteps[size_t(R - 1)][size_t(V - 1)]; }

}  // namespace

// The steps over rows begin .. end, rows_at_once(V) at a time, the last block smaller.

void over_rows(int64_t begin, int64_t end, float* y, int64_t ld_y, const float* x, int64_t ld_x, const float* Wt,
               int64_t ld_wt, const Inputs& in, const Columns& cols, int V, const Vec* init, float scale) {
  const int64_t at_once = rows_at_once(V);
  for (int64_t r = begin; r < end; r += at_once) {
    const int64_t R = std::min<int64_t>(at_once, end - r);
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

Columns dense_columns(int v0, int V, int64_t n_out) {
  Columns cols{};
  for (int v = 0; v < V; v++) {
    cols.wt_col[v] = cols.y_col[v] = int64_t(v0 + v) * kLanes;
    cols.count[v] = int(std::min<int64_t>(kLanes, n_out - cols.y_col[v]));
  }
  return cols;
}

}  // namespace st::cpu::rows
