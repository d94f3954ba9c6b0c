// Multi-head attention, self or cross, with SmartTrim's two masks.
//
//   Q = x W_q + b_q,  K = m W_k + b_k,  V = m W_v + b_v     (m = x for self-attention)
//   A_h = masked_softmax(Q_h K_h^T / sqrt(k), key_keep)     per head h
//   O   = concat_h (z_h * A_h V_h) W_o + b_o                z_h: the head mask
//
// key_keep (B, Nk) is 1 for a key that may be attended to (0: padding, or a
// token a trimmer dropped); it enters the softmax multiplicatively, so its
// gradient is defined (SMARTTRIM.md section 5). head_keep (B, H) zeroes a
// head's output before the output projection. Either may be undefined.
#pragma once
#include "layers/basic.h"

namespace st {

struct Attention {
  int heads = 0;
  float dropout = 0;  // on the attention probabilities (BERT); 0 for CLIP
  // Either separate projections (BERT: query, key, value) or one fused
  // (CLIP: in_proj_weight (3d, d), in_proj_bias (3d)); `fused` says which.
  bool fused = false;
  Linear query, key, value;
  Tensor in_proj_weight, in_proj_bias;
  Linear out;

  Attention() = default;
  Attention(int d, int heads, bool fused, float dropout, Rng& rng);

  // x (B, Nq, d), memory (B, Nk, d) -> (B, Nq, d)
  Tensor forward(const Tensor& x, const Tensor& memory, const Tensor& key_keep, const Tensor& head_keep,
                 const Context& ctx) const;
  Tensor self(const Tensor& x, const Tensor& key_keep, const Tensor& head_keep, const Context& ctx) const {
    return forward(x, x, key_keep, head_keep, ctx);
  }
};

}  // namespace st
