// The gathers and scatters of the packed inference path (pruning/packed.cpp):
// means over each example's segment of rows, and column blocks read from or
// written to a chosen set of rows (the examples that keep one head). They
// have no gradient: the packed path runs only at inference.
#include <algorithm>
#include <vector>

#include "engine/ops/common.h"

namespace st {
namespace cpu {

void segment_mean_forward(float* out, const float* x, const int32_t* at, int64_t B, int64_t d) {
  parallel_for(B, use_threads(int64_t(at[B]) * d, 1 << 15), [&](int64_t b) {
    float* o = out + b * d;
    std::fill_n(o, d, 0.0f);
    for (int64_t r = at[b]; r < at[b + 1]; r++)
      for (int64_t j = 0; j < d; j++) o[j] += x[r * d + j];
    const float inv = 1.0f / float(std::max<int64_t>(1, at[b + 1] - at[b]));
    for (int64_t j = 0; j < d; j++) o[j] *= inv;
  });
}

// GELU over the whole buffer first (a temporary the size of a): a
// row-by-row GELU would leave each row's last n % 16 elements to the scalar
// erff, whose last bits differ from the vector one the masked pass uses.
void gelu_dot_rows(float* out, const float* a, const float* w, const float* b, int64_t rows, int n) {
  thread_local std::vector<float> scratch;
  scratch.resize(size_t(rows * n));
  float* g = scratch.data();  // this thread's buffer, which the other threads read below
  unary_forward(Unary::Gelu, g, a, rows * n);
  parallel_for(rows, use_threads(rows * n, 1 << 15), [&](int64_t r) {
    const float* gr = g + r * n;
    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
    for (int j = 0; j < n; j++) dot += w[j] * gr[j];
    out[r] = b[0] + dot;
  });
}

void gather_columns(float* out, const float* x, int64_t ld, int64_t c0, const int32_t* rows, int64_t n,
                    int64_t cols) {
  parallel_for(n, use_threads(n * cols, 1 << 15), [&](int64_t i) {
    std::copy_n(x + int64_t(rows[i]) * ld + c0, cols, out + i * cols);
  });
}

void scatter_columns(float* out, int64_t ld, int64_t c0, const float* src, const int32_t* rows, int64_t n,
                     int64_t cols, const float* bias, float scale, bool accumulate) {
  parallel_for(n, use_threads(n * cols, 1 << 15), [&](int64_t i) {
    float* o = out + int64_t(rows[i]) * ld + c0;
    const float* s = src + i * cols;
    for (int64_t j = 0; j < cols; j++) {
      const float value = (s[j] + (bias ? bias[j] : 0.0f)) * scale;
      o[j] = accumulate ? o[j] + value : value;
    }
  });
}

}  // namespace cpu
}  // namespace st
