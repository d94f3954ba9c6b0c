// Single-precision matrix multiply on the CPU, row-major.
//
//   C = alpha * op(A) * op(B) + beta * C
//
// op(A) is (M, K): A itself (M, K) when trans_a is false, or A^T when A is
// stored (K, M). op(B) is (K, N) likewise. lda/ldb/ldc are row strides in
// elements. beta == 0 means C is write-only (its old contents, even NaN,
// are ignored).
//
// The implementation is a blocked GEMM in the BLIS style: panels of A and B
// are packed into contiguous buffers and a register-tiled micro-kernel
// (AVX-512, AVX2+FMA, or portable C, chosen at run time) computes each tile.
// OpenMP threads split the work; the packing buffers are reused per thread,
// so a call does not allocate after the first one at a given size.
#pragma once
#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

namespace st {

void sgemm(bool trans_a, bool trans_b, int M, int N, int K,
           float alpha, const float* A, int lda, const float* B, int ldb,
           float beta, float* C, int ldc);

// `batch` independent products; matrix i starts at A + i*stride_a etc.
// A stride of 0 reuses one matrix for every batch entry (a shared weight).
void sgemm_batched(bool trans_a, bool trans_b, int M, int N, int K,
                   float alpha, const float* A, int lda, int64_t stride_a,
                   const float* B, int ldb, int64_t stride_b,
                   float beta, float* C, int ldc, int64_t stride_c,
                   int batch);

// Weights packed once, for inference. A product x W^T packs W into the
// micro-kernel's panels on every call; for a small model that is a large
// share of the work (each linear layer's rows are few), and the same
// weights are packed again at every layer of every batch. A PrepackedWeights
// holds W^T already packed. While a PrepackedWeights::Use is alive on a
// thread, every sgemm on that thread whose B operand is one of the added
// matrices (the same pointer, trans_b, K, N and ldb) reads those panels
// instead of packing B. The panels are a copy: they hold W's values as they
// were when added, so an owner must not let the weights change while it
// uses them.
class PrepackedWeights {
 public:
  PrepackedWeights();
  ~PrepackedWeights();
  PrepackedWeights(const PrepackedWeights&) = delete;
  PrepackedWeights& operator=(const PrepackedWeights&) = delete;

  // op(B) = B^T with B (N, ldb): the W of x W^T, N outputs of K inputs.
  // Products too large for one block of the kernel (K > its KC, N > its NC)
  // are left out; they pack B as usual, which costs little next to them.
  void add(const float* B, int K, int N, int ldb);
  size_t count() const;  // matrices held

  class Use {  // sgemm on this thread reads the panels while this is alive
   public:
    explicit Use(const PrepackedWeights* weights);  // nullptr: none
    ~Use();
    Use(const Use&) = delete;
    Use& operator=(const Use&) = delete;

   private:
    const PrepackedWeights* previous_;
  };

  struct Matrix;  // one packed W^T (gemm.cpp)
  const Matrix* find(const float* B, bool trans_b, int K, int N, int ldb) const;

 private:
  std::vector<std::unique_ptr<Matrix>> matrices_;
  std::unordered_map<const float*, std::vector<const Matrix*>> by_pointer_;
};

// Multiply-add FLOPs (2 M N K per product) executed by sgemm and
// sgemm_batched since the last reset, for benchmarks' GFLOP/s. Per thread.
uint64_t sgemm_flops();
void sgemm_reset_flops();

// Name of the micro-kernel the dispatcher picked ("avx512", "avx2", "generic").
const char* sgemm_kernel_name();

// Testing / benchmarking hook: selects the micro-kernel by name ("avx512",
// "avx2", "generic"; "auto" or nullptr restores the best one the CPU runs).
// Returns false, and leaves the best supported kernel active, when the name
// is unknown or the CPU lacks the instructions. The environment variable
// SMARTTRIM_GEMM_KERNEL does the same once, at the first call. Not meant to
// be called while another thread is inside sgemm.
bool sgemm_force_kernel(const char* name);

}  // namespace st
