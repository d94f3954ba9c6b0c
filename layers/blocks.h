// Transformer blocks, each as its equations:
//
//   ViTBlock (CLIP, pre-LN):      x = x + Attn(LN1(x));  x = x + W2 QuickGELU(W1 LN2(x))
//   BertLayer (post-LN):          a = LN(x + Attn(x));   y = LN(a + W2 GELU(W1 a))
//   BertCrossLayer (post-LN):     a = LN(x + Attn(x));   c = LN(a + CrossAttn(a, other));
//                                 y = LN(c + W2 GELU(W1 c))
//
// Dropout (BERT-style, training only) follows each residual branch and the
// attention probabilities. Parameter names are METER's (see name()).
#pragma once
#include "layers/attention.h"

namespace st {

// BERT's attention module: attention, then LN(x + dropout(out)).
// Names: prefix.self.{query,key,value}, prefix.output.dense, prefix.output.LayerNorm.
struct BertAttention {
  Attention attn;
  LayerNorm norm;
  float dropout = 0;
  BertAttention() = default;
  BertAttention(int d, int heads, float eps, float dropout, Rng& rng);
  Tensor forward(const Tensor& x, const Tensor& memory, const Tensor& key_keep, const Tensor& head_keep,
                 const Context& ctx) const;
  void name(NamedParams& p, const std::string& prefix);
};

// BERT's feed-forward: LN(x + dropout(W2 GELU(W1 x))).
// Names: intermediate.dense, output.dense, output.LayerNorm (under the layer's prefix).
struct BertFeedForward {
  Linear intermediate, output;
  LayerNorm norm;
  float dropout = 0;
  BertFeedForward() = default;
  BertFeedForward(int d, int ffn, float eps, float dropout, Rng& rng);
  Tensor forward(const Tensor& x, const Context& ctx) const;
  void name(NamedParams& p, const std::string& prefix);
};

struct BertLayer {
  BertAttention attention;
  BertFeedForward ffn;
  BertLayer() = default;
  BertLayer(int d, int heads, int ffn, float eps, float dropout, Rng& rng);
  // x (B, N, d), keep (B, N) -> (B, N, d)
  Tensor forward(const Tensor& x, const Tensor& keep, const Context& ctx) const;
  void name(NamedParams& p, const std::string& prefix);
};

// One stream's half of a METER co-attention layer.
struct BertCrossLayer {
  BertAttention attention, crossattention;
  BertFeedForward ffn;
  BertCrossLayer() = default;
  BertCrossLayer(int d, int heads, int ffn, float eps, float dropout, Rng& rng);
  // x (B, N, d) this stream, other (B, M, d) the other stream; keeps (B, N) and (B, M);
  // self_heads / cross_heads (B, H) head masks or undefined.
  Tensor forward(const Tensor& x, const Tensor& other, const Tensor& keep, const Tensor& other_keep,
                 const Tensor& self_heads, const Tensor& cross_heads, const Context& ctx) const;
  void name(NamedParams& p, const std::string& prefix);
};

// CLIP's residual attention block. Names: attn.in_proj_weight, attn.in_proj_bias,
// attn.out_proj, ln_1, mlp.c_fc, mlp.c_proj, ln_2.
struct ViTBlock {
  LayerNorm ln_1, ln_2;
  Attention attn;
  Linear c_fc, c_proj;
  ViTBlock() = default;
  ViTBlock(int d, int heads, int ffn, float eps, Rng& rng);
  Tensor forward(const Tensor& x, const Tensor& keep, const Context& ctx) const;  // (B, N, d)
  void name(NamedParams& p, const std::string& prefix);
};

}  // namespace st
