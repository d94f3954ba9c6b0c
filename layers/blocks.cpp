#include "layers/blocks.h"

namespace st {

BertAttention::BertAttention(int d, int heads, float eps, float dropout_, Rng& rng)
    : attn(d, heads, /*fused=*/false, dropout_, rng), norm(d, eps), dropout(dropout_) {}

Tensor BertAttention::forward(const Tensor& x, const Tensor& memory, const Tensor& key_keep,
                              const Tensor& head_keep, const Context& ctx) const {
  return norm.forward(x, ctx.drop(attn.forward(x, memory, key_keep, head_keep, ctx), dropout));
}

void BertAttention::name(NamedParams& p, const std::string& prefix) {
  attn.query.name(p, prefix + ".self.query");
  attn.key.name(p, prefix + ".self.key");
  attn.value.name(p, prefix + ".self.value");
  attn.out.name(p, prefix + ".output.dense");
  norm.name(p, prefix + ".output.LayerNorm");
}

BertFeedForward::BertFeedForward(int d, int ffn, float eps, float dropout_, Rng& rng)
    : intermediate(d, ffn, rng), output(ffn, d, rng), norm(d, eps), dropout(dropout_) {}

Tensor BertFeedForward::forward(const Tensor& x, const Context& ctx) const {
  Tensor h = intermediate.forward(x, Activation::Gelu);  // (B, N, f)
  return norm.forward(x, ctx.drop(output.forward(h), dropout));
}

void BertFeedForward::name(NamedParams& p, const std::string& prefix) {
  intermediate.name(p, prefix + ".intermediate.dense");
  output.name(p, prefix + ".output.dense");
  norm.name(p, prefix + ".output.LayerNorm");
}

BertLayer::BertLayer(int d, int heads, int ffn_size, float eps, float dropout, Rng& rng)
    : attention(d, heads, eps, dropout, rng), ffn(d, ffn_size, eps, dropout, rng) {}

Tensor BertLayer::forward(const Tensor& x, const Tensor& keep, const Context& ctx) const {
  return ffn.forward(attention.forward(x, x, keep, Tensor(), ctx), ctx);
}

void BertLayer::name(NamedParams& p, const std::string& prefix) {
  attention.name(p, prefix + ".attention");
  ffn.name(p, prefix);
}

BertCrossLayer::BertCrossLayer(int d, int heads, int ffn_size, float eps, float dropout, Rng& rng)
    : attention(d, heads, eps, dropout, rng),
      crossattention(d, heads, eps, dropout, rng),
      ffn(d, ffn_size, eps, dropout, rng) {}

Tensor BertCrossLayer::forward(const Tensor& x, const Tensor& other, const Tensor& keep, const Tensor& other_keep,
                               const Tensor& self_heads, const Tensor& cross_heads, const Context& ctx) const {
  Tensor a = attention.forward(x, x, keep, self_heads, ctx);                  // MSA   (B, N, d)
  Tensor c = crossattention.forward(a, other, other_keep, cross_heads, ctx);  // MCA   (B, N, d)
  return ffn.forward(c, ctx);                                                 // FFN   (B, N, d)
}

void BertCrossLayer::name(NamedParams& p, const std::string& prefix) {
  attention.name(p, prefix + ".attention");
  crossattention.name(p, prefix + ".crossattention");
  ffn.name(p, prefix);
}

ViTBlock::ViTBlock(int d, int heads, int ffn, float eps, Rng& rng)
    : ln_1(d, eps), ln_2(d, eps), attn(d, heads, /*fused=*/true, 0.0f, rng), c_fc(d, ffn, rng), c_proj(ffn, d, rng) {}

Tensor ViTBlock::forward(const Tensor& x, const Tensor& keep, const Context& ctx) const {
  Tensor h = x + attn.self(ln_1.forward(x), keep, Tensor(), ctx);
  return h + c_proj.forward(c_fc.forward(ln_2.forward(h), Activation::QuickGelu));
}

void ViTBlock::name(NamedParams& p, const std::string& prefix) {
  p.add(prefix + ".attn.in_proj_weight", attn.in_proj_weight);
  p.add(prefix + ".attn.in_proj_bias", attn.in_proj_bias);
  attn.out.name(p, prefix + ".attn.out_proj");
  ln_1.name(p, prefix + ".ln_1");
  c_fc.name(p, prefix + ".mlp.c_fc");
  c_proj.name(p, prefix + ".mlp.c_proj");
  ln_2.name(p, prefix + ".ln_2");
}

}  // namespace st
