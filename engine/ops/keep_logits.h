// The trimmers' keep logits in one pass on the CPU (the packed inference
// path, pruning/packed.cpp): a token trimmer's over packed rows, and a head
// trimmer's for each example.
//
// The token trimmer's equations are pruning/token_trimmer.h's; for example
// b, whose kept tokens are rows
// at[b] .. at[b+1] of x (R, d), and its summary of the other modality c_b:
//
//   h_i = GELU(W_loc LN_x(x_i) + b_loc)                      (d_t) per row
//   g   = mean of h_i over the example's rows                (d_t)
//   u   = GELU(W_x LN_c(c_b) + b_x)                          (d_t) none without cross-modal input
//   s_i = b_2 + w_2 . GELU(W_1h h_i + W_1g g + W_1u u + b_1)  the keep logit
//
// Op by op, a small model's trimmer (d_t of 10 to 16) spends most of its
// time between its products: each step is a pass of its own over every
// row, with a tensor for its result, and the products are too narrow to
// fill a GEMM's tiles. Here a row's d_t outputs are one to four vectors of
// registers (the weights transposed, so each input updates every output
// at once), for several rows side by side; only h is kept between the
// pass that makes it and the pass that reads it.
#pragma once
#include <cstdint>
#include <vector>

namespace st::cpu {

// Raw views of a token trimmer's parameters, as its layers hold them.
struct TokenTrimmerParams {
  int d = 0, d_c = 0, d_t = 0;  // token width, width of the other modality's summary, trimmer width
  bool cross_modal = true;      // false: no u, and W_1 is (d_t, 2 d_t)
  const float *ln_x_weight = nullptr, *ln_x_bias = nullptr;
  float ln_x_eps = 1e-5f;
  const float *ln_c_weight = nullptr, *ln_c_bias = nullptr;
  float ln_c_eps = 1e-5f;
  const float *local_weight = nullptr, *local_bias = nullptr;  // (d_t, d), (d_t)
  const float *cross_weight = nullptr, *cross_bias = nullptr;  // (d_t, d_c), (d_t)
  const float *mlp1_weight = nullptr, *mlp1_bias = nullptr;    // (d_t, views d_t): columns [h | g | u], (d_t)
  const float *mlp2_weight = nullptr, *mlp2_bias = nullptr;    // (1, d_t), (1)
};

// Whether keep_logits handles a trimmer this wide: d_t up to 4 vectors
// (64 floats with AVX-512, 32 with AVX). Wider trimmers (METER-base's d_t
// is 192) keep the op-by-op path, where they are a small part of the work.
bool keep_logits_fit(int d_t);

// The weights as keep_logits reads them: each matrix transposed, (inputs,
// ld) with a row holding every output for one input, zero-padded to ld, a
// whole number of vectors; biases padded the same way. A copy: it keeps the
// values the parameters had when it was made.
struct TokenTrimmerWeights {
  int d = 0, d_c = 0, d_t = 0, ld = 0;
  bool cross_modal = true;
  float ln_x_eps = 0, ln_c_eps = 0, mlp2_bias = 0;
  std::vector<float> ln_x_weight, ln_x_bias, ln_c_weight, ln_c_bias;  // (d), (d_c)
  std::vector<float> local, cross;                                  // (d, ld), (d_c, ld)
  std::vector<float> mlp1_h, mlp1_g, mlp1_u;                        // (d_t, ld) each
  std::vector<float> local_bias, cross_bias, mlp1_bias, mlp2_weight;  // (ld) each
};
TokenTrimmerWeights token_trimmer_weights(const TokenTrimmerParams& p);

// out (R) = the keep logit of every row of x (R, d). at (B + 1): example
// b's rows; c (B, d_c): each example's summary of the other modality (unread
// without cross-modal input). An example without rows gets none.
void keep_logits(float* out, const float* x, const int32_t* at, int B, const float* c, const TokenTrimmerWeights& w);

// A head trimmer (pruning/head_trimmer.h), for each of B rows of q (B, q_width):
//   r = W_2 GELU(W_1 LN(q) + b_1) + b_2      (H)
struct HeadTrimmerParams {
  int q_width = 0, hidden = 0, heads = 0;
  const float *ln_weight = nullptr, *ln_bias = nullptr;
  float ln_eps = 1e-5f;
  const float *fc1_weight = nullptr, *fc1_bias = nullptr;  // (hidden, q_width), (hidden)
  const float *fc2_weight = nullptr, *fc2_bias = nullptr;  // (heads, hidden), (heads)
};

// hidden up to 4 vectors, heads up to one.
bool head_logits_fit(int hidden, int heads);

// As TokenTrimmerWeights: fc1 (q_width, ld_hidden), fc2 (hidden, ld_heads), transposed and padded.
struct HeadTrimmerWeights {
  int q_width = 0, hidden = 0, heads = 0, ld_hidden = 0, ld_heads = 0;
  float ln_eps = 0;
  std::vector<float> ln_weight, ln_bias, fc1, fc1_bias, fc2, fc2_bias;
};
HeadTrimmerWeights head_trimmer_weights(const HeadTrimmerParams& p);

// out (B, H): the head logits of every row of q (B, q_width).
void head_logits(float* out, const float* q, int B, const HeadTrimmerWeights& w);

}  // namespace st::cpu
