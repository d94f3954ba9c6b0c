// The XModal-aware token trimmer (SMARTTRIM.md section 3). Before a layer,
// it gives every token a keep logit from three views of it:
//
//   h_i = GELU(W_loc LN(x_i) + b_loc)                (B, N, d_t)  the token itself
//   g   = sum_i M_i h_i / sum_i M_i                  (B, d_t)     its modality, over kept tokens
//   u   = GELU(W_x LN(c) + b_x)                      (B, d_t)     the other modality (c: (B, d_c))
//   s_i = w_2 . GELU(W_1 [h_i ; g ; u] + b_1) + b_2  (B, N)       the keep logit
//
// then the cumulative mask M' = M * mask(s) with mask() the Gumbel-sigmoid
// straight-through estimator in training (hard 0/1 forward, sigmoid slope
// backward) and 1[s > theta] at inference. The first token (class token,
// <s>) is always kept; a token once dropped stays dropped.
#pragma once
#include "layers/basic.h"

namespace st {

struct TokenTrimmer {
  bool cross_modal = true;  // ablation switch: without u, W_1 reads [h_i ; g]
  LayerNorm ln_x, ln_c;
  Linear local, cross, mlp1, mlp2;

  TokenTrimmer() = default;
  // d: width of the tokens, d_c: width of the cross-modal summary c, d_t: trimmer width
  TokenTrimmer(int d, int d_c, int d_t, bool cross_modal, Rng& rng);

  // x (B, N, d), keep (B, N) the mask so far, c (B, d_c) -> keep logits (B, N)
  Tensor logits(const Tensor& x, const Tensor& keep, const Tensor& c) const;
  void name(NamedParams& p, const std::string& prefix);

  int width() const { return int(local.weight.dim(0)); }
};

// The new cumulative mask from logits (B, N): keep * hard(logits - theta),
// first token forced to 1. noise != nullptr draws Gumbel noise (training);
// nullptr gives the deterministic threshold (evaluation, the parity test).
Tensor next_token_mask(const Tensor& keep, const Tensor& logits, float tau, float theta, Rng* noise);

}  // namespace st
