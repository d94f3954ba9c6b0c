// Every differentiable operation of the engine, in one list.
//
// Each op checks its arguments (a ShapeError/DeviceError/ArgumentError that
// names the op and the shapes), runs a forward kernel for the tensors'
// device, and, when an input requires grad, records a backward closure on
// the tape (autograd.h). The kernels themselves are plain functions in
// engine/kernels.h, one file per idea under engine/ops/.
//
// Shapes: B batch, N tokens, H heads, k head size, d width, C classes.
#pragma once
#include <vector>

#include "engine/autograd.h"
#include "engine/rng.h"
#include "engine/tensor.h"

namespace st {

// --- shape ------------------------------------------------------------------
Tensor reshape(const Tensor& x, const Shape& shape);  // one -1 may be inferred; shares the buffer
Tensor detach(const Tensor& x);                       // same values, no gradient path
Tensor permute_0213(const Tensor& x);                 // (A, B, C, D) -> (A, C, B, D), a copy
Tensor split_heads(const Tensor& x, int heads);       // (B, N, H*k) -> (B, H, N, k)
Tensor merge_heads(const Tensor& x);                  // (B, H, N, k) -> (B, N, H*k)
Tensor concat(const std::vector<Tensor>& xs, int axis);
std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int axis);
Tensor gather_rows(const Tensor& x, const Tensor& index);  // x (R, d), index i32 (n) -> (n, d)
Tensor embedding(const Tensor& ids, const Tensor& table);  // ids i32 (...), table (V, d) -> (..., d)

// --- matrix products --------------------------------------------------------
// op(a) @ op(b), op = transpose of the last two dims when the flag is set.
// a (..., M, K) with b (K, N): one GEMM over all leading rows (a Linear).
// a (..., M, K) with b (..., K, N), equal leading dims: batched GEMM.
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a = false, bool trans_b = false);
// x (..., in) @ w^T + b: w (out, in) as PyTorch stores it; bias optional.
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b = Tensor());
// act(x @ w^T + b) with the bias and the activation in one pass over the
// output (an FFN's first layer, a trimmer's hidden layer). The same values
// as act(linear(x, w, b)).
enum class Activation { Gelu, QuickGelu };
Tensor linear_act(const Tensor& x, const Tensor& w, const Tensor& b, Activation act);

// --- element-wise, broadcasting ---------------------------------------------
// Shapes broadcast as in NumPy (align on the right, size-1 dims stretch):
// a bias (d) over (B, N, d), a mask (B, N, 1) over (B, N, d), ...
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor add_scalar(const Tensor& x, float s);
Tensor mul_scalar(const Tensor& x, float s);
Tensor operator+(const Tensor& a, const Tensor& b);
Tensor operator-(const Tensor& a, const Tensor& b);
Tensor operator*(const Tensor& a, const Tensor& b);
Tensor operator/(const Tensor& a, const Tensor& b);
Tensor operator+(const Tensor& x, float s);
Tensor operator-(const Tensor& x, float s);
Tensor operator*(const Tensor& x, float s);
Tensor operator*(float s, const Tensor& x);
Tensor operator-(float s, const Tensor& x);  // s - x, e.g. 1 - mask
Tensor operator-(const Tensor& x);

// --- element-wise, unary ----------------------------------------------------
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor tanh(const Tensor& x);
Tensor sigmoid(const Tensor& x);
Tensor gelu(const Tensor& x);        // x * Phi(x), the exact (erf) GELU of BERT/RoBERTa
Tensor quick_gelu(const Tensor& x);  // x * sigmoid(1.702 x), CLIP's
Tensor silu(const Tensor& x);        // x * sigmoid(x)
Tensor relu(const Tensor& x);

// --- reductions -------------------------------------------------------------
Tensor sum_last(const Tensor& x);   // (..., n) -> (...)
Tensor mean_last(const Tensor& x);  // (..., n) -> (...)
Tensor sum_all(const Tensor& x);    // -> (1)
Tensor mean_all(const Tensor& x);   // -> (1)
// sum_i M_i x_i / sum_i M_i: x (B, N, d), mask (B, N) -> (B, d). Gradient reaches the mask.
Tensor masked_mean(const Tensor& x, const Tensor& mask);

// --- normalisation and probabilities ----------------------------------------
Tensor softmax(const Tensor& x);      // over the last dim
Tensor log_softmax(const Tensor& x);  // over the last dim
// Multiplicative masked softmax (SMARTTRIM.md 5):
//   A_ij = M_j exp(a_ij - m_i) / sum_k M_k exp(a_ik - m_i)
// scores (B, ..., Nk), mask (B, Nk) shared by every row of example b.
// The gradient reaches both the scores and the mask (the token trimmer's
// straight-through path). A row whose keys are all masked gives zeros.
Tensor masked_softmax(const Tensor& scores, const Tensor& mask);
Tensor layernorm(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps = 1e-5f);
// layernorm(x + residual) with the sum and the normalisation in one pass (a
// post-LN block's "Add & Norm"). The same values as layernorm(x + residual).
Tensor add_layernorm(const Tensor& x, const Tensor& residual, const Tensor& weight, const Tensor& bias,
                     float eps = 1e-5f);

// --- randomness -------------------------------------------------------------
// Inverted dropout: zeroes with probability p, scales the rest by 1/(1-p).
// Identity when !training or p == 0. Draws numel values from rng.
Tensor dropout(const Tensor& x, float p, Rng& rng, bool training);
// Gumbel-sigmoid with the straight-through estimator (SMARTTRIM.md 5):
//   y = sigmoid((s + L) / tau), L = log U - log(1 - U), U ~ Uniform(0, 1)
//   forward 1[y > 0.5], backward dy/ds.
// rng == nullptr: no noise (L = 0).
Tensor gumbel_sigmoid_st(const Tensor& logits, float tau, Rng* rng);

// --- images -----------------------------------------------------------------
// Non-overlapping patch embedding (a conv with stride = kernel, no bias).
// image (B, C, H, W), weight (D, C, p, p) -> (B, (H/p)*(W/p), D), patches in row-major order.
Tensor patch_embed(const Tensor& image, const Tensor& weight);
// Bicubic resize of a grid (H, W, C) -> (out_h, out_w, C), matching
// torch.nn.functional.interpolate(mode="bicubic", align_corners=False).
// Forward-only (position-embedding interpolation at load time).
Tensor bicubic_resize(const Tensor& grid, int out_h, int out_w);

// --- losses (all return shape (1)) -------------------------------------------
Tensor cross_entropy(const Tensor& logits, const Tensor& targets);  // (B, C), i32 (B); mean over B
Tensor bce_with_logits(const Tensor& logits, const Tensor& targets);  // soft targets in [0,1]; mean over all
// sum_c p_c (log p_c - logq_c), averaged over B: PyTorch's kl_div(logq, p, reduction="batchmean").
Tensor kl_div(const Tensor& student_log_probs, const Tensor& teacher_probs);
Tensor mse(const Tensor& a, const Tensor& b);  // mean over all elements

}  // namespace st
