// out[j] += sum over rows r of term(r, j): the column sums behind a bias
// gradient (dbias = sum_r dy[r, :]) and LayerNorm's dweight and dbias.
//
// One thread per column walking every row would leave most of the GPU idle
// (768 columns are 3 blocks). Instead, in two stages, both in a fixed order
// (no atomics, so the bits are the same every run):
//   1. grid (column tiles, parts): each block adds a chunk of rows for its
//      kThreads columns into partial[part, term, column];
//   2. one thread per (term, column) adds the parts in order into out.
// Term is a functor term(r, j, s) that adds its kTerms values for element
// (r, j) into s[0 .. kTerms).
#pragma once
#include <algorithm>
#include <array>

#include "cuda/launch.h"

namespace st::cuda {

template <int kTerms>
struct ColumnOutputs {
  float* out[kTerms];  // null: that term is not wanted
};

template <int kTerms, class Term>
__global__ void partial_column_sums_kernel(float* partial, int64_t rows, int n, int64_t chunk, Term term) {
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= n) return;
  const int64_t r0 = int64_t(blockIdx.y) * chunk, r1 = r0 + chunk < rows ? r0 + chunk : rows;
  float s[kTerms] = {};
  for (int64_t r = r0; r < r1; r++) term(r, j, s);
  for (int t = 0; t < kTerms; t++) partial[(int64_t(blockIdx.y) * kTerms + t) * n + j] = s[t];
}

template <int kTerms>
__global__ void add_column_partials_kernel(ColumnOutputs<kTerms> outs, const float* partial, int64_t parts, int n) {
  GRID_STRIDE_LOOP(i, int64_t(kTerms) * n) {
    const int t = int(i / n);
    const int64_t j = i % n;
    if (!outs.out[t]) continue;
    float s = 0.0f;
    for (int64_t p = 0; p < parts; p++) s += partial[(p * kTerms + t) * n + j];
    outs.out[t][j] += s;
  }
}

template <int kTerms, class Term>
void column_sums_add(ColumnOutputs<kTerms> outs, int64_t rows, int n, Term term) {
  if (rows == 0 || n == 0) return;
  // About 64 rows a block, at most 256 parts: enough blocks to fill the GPU,
  // few enough that stage 2 stays short.
  const int64_t parts = std::clamp<int64_t>((rows + 63) / 64, 1, 256);
  const int64_t chunk = (rows + parts - 1) / parts;
  const size_t bytes = size_t(parts) * kTerms * size_t(n) * sizeof(float);
  float* partial = static_cast<float*>(device_alloc(bytes));
  const dim3 grid{unsigned((n + kThreads - 1) / kThreads), unsigned(parts)};
  partial_column_sums_kernel<kTerms><<<grid, kThreads, 0, stream()>>>(partial, rows, n, chunk, term);
  CUDA_CHECK_LAUNCH("partial_column_sums_kernel");
  add_column_partials_kernel<kTerms><<<blocks_for(int64_t(kTerms) * n), kThreads, 0, stream()>>>(outs, partial, parts, n);
  CUDA_CHECK_LAUNCH("add_column_partials_kernel");
  device_free(partial, bytes);
}

}  // namespace st::cuda
