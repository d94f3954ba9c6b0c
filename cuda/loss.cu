// Losses. Each forward writes one value: a single block adds every term
// in double (as the CPU does), in a fixed order. The
// backward passes are element-wise. Reductions match engine/ops/loss.cpp.
#include "cuda/launch.h"
#include "engine/kernels.h"

namespace st::cuda {
namespace {

constexpr int kSumThreads = 1024;

// *out = scale * sum_{i < n} term(i), one block.
template <class Term>
__global__ void sum_terms_kernel(float* out, int64_t n, double scale, Term term) {
  double partial = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) partial += term(i);
  const double total = block_sum_double(partial);
  if (threadIdx.x == 0) *out = float(total * scale);
}

template <class Term>
void sum_terms(float* out, int64_t n, double scale, Term term, const char* name) {
  sum_terms_kernel<<<1, kSumThreads, 0, stream()>>>(out, n, scale, term);
  CUDA_CHECK_LAUNCH(name);
}

__device__ inline float row_logsumexp(const float* z, int C) {
  float m = -INFINITY;
  for (int c = 0; c < C; c++) m = fmaxf(m, z[c]);
  float s = 0.0f;
  for (int c = 0; c < C; c++) s += expf(z[c] - m);
  return m + logf(s);
}

// logsumexp(z_b) - z_b[t_b] for row b
struct CrossEntropyTerm {
  const float* logits;
  const int32_t* targets;
  int C;
  __device__ double operator()(int64_t b) const {
    const float* z = logits + b * C;
    return double(row_logsumexp(z, C) - z[targets[b]]);
  }
};

__global__ void row_logsumexp_kernel(float* lse, const float* logits, int B, int C) {
  GRID_STRIDE_LOOP(b, B) lse[b] = row_logsumexp(logits + b * C, C);
}

// dz_b = (softmax(z_b) - onehot(t_b)) dloss / B
__global__ void cross_entropy_backward_kernel(float* dlogits, float g, const float* logits, const float* lse,
                                              const int32_t* targets, int B, int C) {
  GRID_STRIDE_LOOP(i, int64_t(B) * C) {
    const int64_t b = i / C, c = i % C;
    dlogits[i] += g * (expf(logits[i] - lse[b]) - (c == targets[b] ? 1.0f : 0.0f));
  }
}

// max(x, 0) - x t + log(1 + exp(-|x|))
struct BceTerm {
  const float* logits;
  const float* targets;
  __device__ double operator()(int64_t i) const {
    const float x = logits[i];
    return double(fmaxf(x, 0.0f) - x * targets[i] + log1pf(expf(-fabsf(x))));
  }
};

__global__ void bce_backward_kernel(float* dlogits, float* dtargets, float g, const float* logits,
                                    const float* targets, int64_t n) {
  GRID_STRIDE_LOOP(i, n) {
    if (dlogits) dlogits[i] += g * (1.0f / (1.0f + expf(-logits[i])) - targets[i]);
    if (dtargets) dtargets[i] -= g * logits[i];
  }
}

// p (log p - log q), with 0 log 0 = 0
struct KlTerm {
  const float* logq;
  const float* p;
  __device__ double operator()(int64_t i) const { return p[i] > 0.0f ? double(p[i] * (logf(p[i]) - logq[i])) : 0.0; }
};

__global__ void kl_backward_kernel(float* dlogq, float* dp, float g, const float* logq, const float* p, int64_t n) {
  GRID_STRIDE_LOOP(i, n) {
    if (dlogq) dlogq[i] -= g * p[i];
    if (dp && p[i] > 0.0f) dp[i] += g * (logf(p[i]) + 1.0f - logq[i]);
  }
}

struct SquaredDifference {
  const float* a;
  const float* b;
  __device__ double operator()(int64_t i) const { return double(a[i] - b[i]) * double(a[i] - b[i]); }
};

__global__ void mse_backward_kernel(float* da, float* db, float g, const float* a, const float* b, int64_t n) {
  GRID_STRIDE_LOOP(i, n) {
    if (da) da[i] += g * (a[i] - b[i]);
    if (db) db[i] -= g * (a[i] - b[i]);
  }
}

}  // namespace

void cross_entropy_forward(float* loss, const float* logits, const int32_t* targets, int B, int C) {
  sum_terms(loss, B, 1.0 / B, CrossEntropyTerm{logits, targets, C}, "cross_entropy (sum_terms_kernel)");
}

void cross_entropy_backward(float* dlogits, float dloss, const float* logits, const int32_t* targets, int B, int C) {
  if (int64_t(B) * C == 0) return;
  float* lse = static_cast<float*>(device_alloc(size_t(B) * sizeof(float)));  // (B)
  row_logsumexp_kernel<<<blocks_for(B), kThreads, 0, stream()>>>(lse, logits, B, C);
  CUDA_CHECK_LAUNCH("row_logsumexp_kernel");
  cross_entropy_backward_kernel<<<blocks_for(int64_t(B) * C), kThreads, 0, stream()>>>(dlogits, dloss / float(B),
                                                                                      logits, lse, targets, B, C);
  CUDA_CHECK_LAUNCH("cross_entropy_backward_kernel");
  device_free(lse, size_t(B) * sizeof(float));
}

void bce_with_logits_forward(float* loss, const float* logits, const float* targets, int64_t n) {
  sum_terms(loss, n, 1.0 / double(n), BceTerm{logits, targets}, "bce_with_logits (sum_terms_kernel)");
}

void bce_with_logits_backward(float* dlogits, float* dtargets, float dloss, const float* logits, const float* targets,
                              int64_t n) {
  if (n == 0) return;
  bce_backward_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(dlogits, dtargets, dloss / float(n), logits, targets,
                                                               n);
  CUDA_CHECK_LAUNCH("bce_backward_kernel");
}

void kl_div_forward(float* loss, const float* logq, const float* p, int B, int C) {
  sum_terms(loss, int64_t(B) * C, 1.0 / B, KlTerm{logq, p}, "kl_div (sum_terms_kernel)");
}

void kl_div_backward(float* dlogq, float* dp, float dloss, const float* logq, const float* p, int B, int C) {
  const int64_t n = int64_t(B) * C;
  if (n == 0) return;
  kl_backward_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(dlogq, dp, dloss / float(B), logq, p, n);
  CUDA_CHECK_LAUNCH("kl_backward_kernel");
}

void mse_forward(float* loss, const float* a, const float* b, int64_t n) {
  sum_terms(loss, n, 1.0 / double(n), SquaredDifference{a, b}, "mse (sum_terms_kernel)");
}

void mse_backward(float* da, float* db, float dloss, const float* a, const float* b, int64_t n) {
  if (n == 0) return;
  mse_backward_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(da, db, 2.0f * dloss / float(n), a, b, n);
  CUDA_CHECK_LAUNCH("mse_backward_kernel");
}

}  // namespace st::cuda
