// The row-product step: see row_products.h.
#include "engine/ops/row_products.h"

#include <algorithm>

namespace st::cpu::rows {

namespace {

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
        // Only a build for AVX-512 has a register that holds 16 floats.
#if defined(__AVX512F__)
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

}  // namespace

// The steps over rows begin .. end, kRows at a time, the last block smaller.

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

Columns dense_columns(int v0, int V, int64_t n_out) {
  Columns cols{};
  for (int v = 0; v < V; v++) {
    cols.wt_col[v] = cols.y_col[v] = int64_t(v0 + v) * kLanes;
    cols.count[v] = int(std::min<int64_t>(kLanes, n_out - cols.y_col[v]));
  }
  return cols;
}

}  // namespace st::cpu::rows
