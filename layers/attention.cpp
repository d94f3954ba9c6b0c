#include "layers/attention.h"

#include <cmath>

#include "engine/error.h"

namespace st {

Attention::Attention(int d, int heads_, bool fused_, float dropout_, Rng& rng)
    : heads(heads_), dropout(dropout_), fused(fused_), out(d, d, rng) {
  if (d % heads != 0) throw ArgumentError("Attention: " + std::to_string(heads) + " heads do not divide width " +
                                          std::to_string(d));
  if (fused) {
    in_proj_weight = parameter({3 * d, d}, rng, 0.02f);
    in_proj_bias = Tensor::zeros({3 * d}).set_requires_grad();
  } else {
    query = Linear(d, d, rng);
    key = Linear(d, d, rng);
    value = Linear(d, d, rng);
  }
}

Tensor Attention::forward(const Tensor& x, const Tensor& memory, const Tensor& key_keep, const Tensor& head_keep,
                          const Context& ctx) const {
  const int64_t batch = x.dim(0), d = x.dim(-1);
  const float scale = 1.0f / std::sqrt(float(d / heads));
  Tensor q, k, v;  // (B, N, d)
  if (fused) {
    std::vector<Tensor> w = split(in_proj_weight, {d, d, d}, 0);  // W_q, W_k, W_v: (d, d) each
    std::vector<Tensor> b = split(in_proj_bias, {d, d, d}, 0);
    if (x.same_as(memory)) {  // self-attention: one GEMM for all three
      std::vector<Tensor> qkv = split(linear(x, in_proj_weight, in_proj_bias), {d, d, d}, -1);
      q = qkv[0], k = qkv[1], v = qkv[2];
    } else {
      q = linear(x, w[0], b[0]);
      k = linear(memory, w[1], b[1]);
      v = linear(memory, w[2], b[2]);
    }
  } else {
    q = query.forward(x), k = key.forward(memory), v = value.forward(memory);
  }
  Tensor qh = split_heads(q * scale, heads);   // (B, H, Nq, k)
  Tensor kh = split_heads(k, heads);           // (B, H, Nk, k)
  Tensor vh = split_heads(v, heads);           // (B, H, Nk, k)
  Tensor scores = matmul(qh, kh, false, true);  // (B, H, Nq, Nk)
  Tensor probs = key_keep.defined() ? masked_softmax(scores, key_keep) : softmax(scores);
  probs = ctx.drop(probs, dropout);
  Tensor heads_out = matmul(probs, vh);  // (B, H, Nq, k)
  if (head_keep.defined()) heads_out = heads_out * reshape(head_keep, {batch, heads, 1, 1});
  return out.forward(merge_heads(heads_out));  // (B, Nq, d)
}

}  // namespace st
