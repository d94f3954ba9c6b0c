// Rows of a small matrix times a small weight matrix, straight from and
// into the rows where they live, on the CPU: the inner step of the
// kernels that replace tiny GEMMs in the packed inference path of a small
// model (head_projection.cpp).
//
// y[r, cols] = (init + x[r, inputs] . Wt[inputs, cols]) * scale, with Wt the
// weights transposed (inputs, outputs) so that a row of it is contiguous
// across output columns. A step takes R rows of x and V vectors of kLanes
// output columns (up to 4): R x V independent sums in vector registers, half
// of them (16 with AVX-512, 8 with AVX2), each weight vector loaded once and
// used for R rows, each x value broadcast once and used for V vectors. With
// that many sums in flight the FMAs overlap instead of waiting on one another.
#pragma once
#include <cstdint>

#include "engine/ops/vec.h"

namespace st::cpu::rows {

constexpr int kMaxInputs = 256;         // the widest x the callers accept
constexpr int kSums = kVectorRegisters / 2;  // a step's sums in registers
constexpr int kVectors = 4;                  // a step's largest V
constexpr int kRows = kSums / kVectors;      // its largest R when V > 2
// With one or two vectors of columns (a single kept head at AVX-512) kRows
// rows would leave too few sums in flight to keep the FMA units busy: such
// steps take twice as many rows.
constexpr int kMaxRows = kSums / 2;
inline int rows_at_once(int V) { return V <= 2 ? kMaxRows : kRows; }

inline int blocks(int64_t n) { return int((n + kLanes - 1) / kLanes); }

// Which inputs a step sums over: spans [begin, end) of x's columns, which are also Wt's rows.
struct Inputs {
  static constexpr int kMax = kMaxInputs / 2;  // spans are separated by gaps, so at most half the inputs
  int64_t begin[kMax], end[kMax];
  int n = 0;
  void add(int64_t b, int64_t e) {
    if (n > 0 && end[n - 1] == b) end[n - 1] = e;  // adjacent spans: one
    else begin[n] = b, end[n] = e, n++;
  }
};

// Where a step's V vectors of output columns come from and go: vector v is
// columns wt_col[v] .. + kLanes of Wt, and its first `count[v]` values go to
// columns y_col[v] .. of y.
struct Columns {
  int64_t wt_col[kVectors], y_col[kVectors];
  int count[kVectors];
};

// Columns for V vectors of a dense output (n_out columns in all), starting at vector v0:
// the same columns of Wt and of y.
Columns dense_columns(int v0, int V, int64_t n_out);

// The steps over rows begin .. end of x (stride ld_x) into y (stride ld_y), rows_at_once(V) at a time,
// the last block smaller; init: V vectors (a bias, or zeros).
void over_rows(int64_t begin, int64_t end, float* y, int64_t ld_y, const float* x, int64_t ld_x, const float* Wt,
               int64_t ld_wt, const Inputs& in, const Columns& cols, int V, const Vec* init, float scale);

// Wt (cols, ld_wt) = rows first .. first + count of W (rows, cols), transposed.
void transpose_rows(float* Wt, int64_t ld_wt, const float* W, int64_t cols, int64_t first, int64_t count);

}  // namespace st::cpu::rows
