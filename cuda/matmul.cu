// Matrix products through cuBLAS, and the bias kernels of linear.
//
// cuBLAS is column-major; our tensors are row-major. A row-major (R, C)
// buffer is the column-major (C, R) matrix, its transpose, so
//   C = op(A) op(B)   (row-major, M x N)
// is computed as the column-major product
//   C^T = op(B)^T op(A)^T   (N x M),
// which is cublasSgemm with the operands swapped and the same transpose flags.
#include "cuda/column_sums.h"
#include "cuda/launch.h"
#include "engine/kernels.h"

namespace st::cuda {
namespace {

cublasOperation_t op_of(bool transpose) { return transpose ? CUBLAS_OP_T : CUBLAS_OP_N; }

__global__ void add_bias_rows_kernel(float* y, const float* bias, int64_t rows, int n) {
  GRID_STRIDE_LOOP(i, rows * n) y[i] += bias[i % n];
}

// dbias[j] += dy[r, j], for cuda/column_sums.h
struct BiasGradient {
  const float* dy;
  int n;
  __device__ void operator()(int64_t r, int64_t j, float* s) const { s[0] += dy[r * n + j]; }
};

}  // namespace

void gemm(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb,
          float beta, float* C, int ldc) {
  if (M == 0 || N == 0) return;
  CUBLAS_CHECK(cublasSgemm(cublas(), op_of(tb), op_of(ta), N, M, K, &alpha, B, ldb, A, lda, &beta, C, ldc));
}

void gemm_batched(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda, int64_t stride_a,
                  const float* B, int ldb, int64_t stride_b, float beta, float* C, int ldc, int64_t stride_c,
                  int batch) {
  if (M == 0 || N == 0 || batch == 0) return;
  CUBLAS_CHECK(cublasSgemmStridedBatched(cublas(), op_of(tb), op_of(ta), N, M, K, &alpha, B, ldb, stride_b, A, lda,
                                         stride_a, &beta, C, ldc, stride_c, batch));
}

void add_bias_rows(float* y, const float* bias, int64_t rows, int n) {
  if (rows * n == 0) return;
  add_bias_rows_kernel<<<blocks_for(rows * n), kThreads, 0, stream()>>>(y, bias, rows, n);
  CUDA_CHECK_LAUNCH("add_bias_rows_kernel");
}

void sum_columns_add(float* dbias, const float* dy, int64_t rows, int n) {
  if (n == 0) return;
  column_sums_add<1>({{dbias}}, rows, n, BiasGradient{dy, n});
}

}  // namespace st::cuda
