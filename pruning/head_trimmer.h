// The modal-adaptive head trimmer (SMARTTRIM.md section 4): one logit per
// head of an attention module, from what the module is about to read.
//
//   MSA: q = masked_mean(X, M_x)                         (B, d)
//   MCA: q = [masked_mean(X, M_x) ; masked_mean(Y, M_y)] (B, 2d), Y the other stream
//   r   = W_2 GELU(W_1 LN(q) + b_1) + b_2                (B, H)
//
// The head mask z multiplies each head's output before the output
// projection. At least one head stays: the one with the highest logit.
#pragma once
#include "layers/basic.h"

namespace st {

struct HeadTrimmer {
  LayerNorm ln;
  Linear fc1, fc2;

  HeadTrimmer() = default;
  HeadTrimmer(int q_width, int hidden, int heads, Rng& rng);

  // x (B, N, d) with keep (B, N); for MCA also other (B, M, d) with other_keep (B, M). -> (B, H)
  Tensor logits(const Tensor& x, const Tensor& keep, const Tensor& other = Tensor(),
                const Tensor& other_keep = Tensor()) const;
  void name(NamedParams& p, const std::string& prefix);
};

// Hard head mask (B, H) from logits: hard(logits - theta), the arg-max head forced to 1.
Tensor head_mask(const Tensor& logits, float tau, float theta, Rng* noise);

// The inference rule (B, H), no noise and no gradient: keep iff logit > theta,
// and each row's arg-max head whatever its logit.
Tensor kept_heads(const Tensor& logits, float theta);

}  // namespace st
