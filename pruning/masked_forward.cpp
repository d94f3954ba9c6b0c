// SmartTrim's training pass over METER (SMARTTRIM.md section 5): tensors
// stay rectangular, (B, N, d), and 0/1 masks say what each example keeps.
//
//   before a layer with a token trimmer:  M <- M * mask(s(x, M, c)), first token kept
//   before a co-attention layer with head trimmers: z (B, H) per MSA and MCA
//   every layer:                          x <- M * layer(x; keys masked by M, heads by z) + (1 - M) * x
//
// A dropped token is never attended to again and carries its state
// unchanged, so with noise off this computes exactly what the packed
// inference path (pruning/packed.h) computes after removing the tokens.
// Kept counts are sums of the straight-through masks, so the cost model
// differentiates through them.
#include "engine/error.h"
#include "layers/meter.h"

namespace st {

namespace {

// x_out = M * updated + (1 - M) * x, per token. keep (B, N); x, updated (B, N, d).
Tensor carry(const Tensor& keep, const Tensor& updated, const Tensor& x) {
  Tensor m = reshape(keep, {keep.dim(0), keep.dim(1), 1});
  return m * updated + (1.0f - m) * x;
}

}  // namespace

MeterFeatures Meter::forward_trimmed(const Tensor& ids, const Tensor& mask, const ImageTokens& image,
                                     const Context& ctx, int image_type, const TrimOptions& opt) const {
  const TrimConfig& tc = config_.trim;
  const MeterConfig& c = config_;
  if (ids.rank() != 2 || mask.shape() != ids.shape())
    throw ShapeError("METER: expects ids (B, T) and mask (B, T), got " + to_string(ids.shape()) + " and " +
                     to_string(mask.shape()));
  MeterFeatures out;
  out.trimmed = true;
  PassCounts<Tensor>& n = out.counts;
  auto token_mask = [&](const TokenTrimmer& trimmer, const Tensor& x, const Tensor& keep, const Tensor& summary) {
    return next_token_mask(keep, trimmer.logits(x, keep, summary), tc.tau, opt.token_threshold, opt.noise);
  };

  // --- text encoder; its trimmers read the image's mean patch embedding
  const Tensor& patches = image.patches;  // (B, G*G, W)
  Tensor t = text_.embed(ids, ctx);      // (B, T, Tw)
  Tensor keep_t = mask;                  // padding is dropped from the start
  Tensor image_summary;  // (B, W)
  if (!text_token_trimmers_.empty())
    image_summary = masked_mean(patches, Tensor::ones({patches.dim(0), patches.dim(1)}, patches.device()));
  for (int l = 0; l < c.text_layers; l++) {
    if (int s = TrimConfig::site(tc.text_token_layers, l); s >= 0) {
      n.text_scored.push_back(sum_last(keep_t));
      keep_t = token_mask(text_token_trimmers_[size_t(s)], t, keep_t, image_summary);
    }
    out.text_keep_at.push_back(keep_t);
    n.text_tokens.push_back(sum_last(keep_t));
    t = carry(keep_t, text_.layers[size_t(l)].forward(t, keep_t, ctx), t);
  }
  n.text_out = sum_last(keep_t);
  Tensor text_first = first_token(t);  // (B, Tw): the ViT trimmers' cross-modal summary

  // --- image encoder
  Tensor v = image.tokens;  // (B, N, W)
  Tensor keep_v = Tensor::ones({v.dim(0), v.dim(1)}, v.device());
  for (int l = 0; l < c.vit_layers; l++) {
    if (int s = TrimConfig::site(tc.vit_token_layers, l); s >= 0) {
      n.vit_scored.push_back(sum_last(keep_v));
      keep_v = token_mask(vit_token_trimmers_[size_t(s)], v, keep_v, text_first);
    }
    out.image_keep_at.push_back(keep_v);
    n.vit_tokens.push_back(sum_last(keep_v));
    v = carry(keep_v, vit_.blocks[size_t(l)].forward(v, keep_v, ctx), v);
  }
  v = vit_.ln_post.forward(v);
  n.image_out = sum_last(keep_v);

  // --- bridge and co-attention
  auto type_row = [&](int type) { return token_types_.forward(Tensor::from_ints({type}, {1}).to(ids.device())); };
  t = text_transform_.forward(t) + type_row(0);           // (B, T, d)
  v = image_transform_.forward(v) + type_row(image_type);  // (B, N, d)
  const Tensor all_heads = Tensor::full({ids.dim(0)}, float(c.num_heads), ids.device());
  for (int l = 0; l < c.num_cross_layers; l++) {
    if (int s = TrimConfig::site(tc.cross_token_layers, l); s >= 0) {
      n.cross_text_scored.push_back(sum_last(keep_t));
      n.cross_image_scored.push_back(sum_last(keep_v));
      Tensor next_t = token_mask(cross_text_token_trimmers_[size_t(s)], t, keep_t, first_token(v));
      Tensor next_v = token_mask(cross_image_token_trimmers_[size_t(s)], v, keep_v, first_token(t));
      keep_t = next_t, keep_v = next_v;
    }
    Tensor z_ts, z_tc, z_vs, z_vc;  // head masks (B, H); undefined: every head
    if (int s = TrimConfig::site(tc.cross_head_layers, l); s >= 0) {
      const CrossHeadTrimmers& h = cross_head_trimmers_[size_t(s)];
      auto heads = [&](const Tensor& logits) { return head_mask(logits, tc.tau, opt.head_threshold, opt.noise); };
      z_ts = heads(h.text_self.logits(t, keep_t));
      z_tc = heads(h.text_cross.logits(t, keep_t, v, keep_v));
      z_vs = heads(h.image_self.logits(v, keep_v));
      z_vc = heads(h.image_cross.logits(v, keep_v, t, keep_t));
      for (const Tensor& z : {z_ts, z_tc, z_vs, z_vc}) out.head_keep_at.push_back(z);
    }
    auto kept = [&](const Tensor& z) { return z.defined() ? sum_last(z) : all_heads; };
    n.text_self_heads.push_back(kept(z_ts));
    n.text_cross_heads.push_back(kept(z_tc));
    n.image_self_heads.push_back(kept(z_vs));
    n.image_cross_heads.push_back(kept(z_vc));
    out.text_keep_at.push_back(keep_t);
    out.image_keep_at.push_back(keep_v);
    n.cross_text_tokens.push_back(sum_last(keep_t));
    n.cross_image_tokens.push_back(sum_last(keep_v));
    Tensor t_next = text_layers_[size_t(l)].forward(t, v, keep_t, keep_v, z_ts, z_tc, ctx);
    Tensor v_next = image_layers_[size_t(l)].forward(v, t, keep_v, keep_t, z_vs, z_vc, ctx);
    t = carry(keep_t, t_next, t);  // both read the previous layer's outputs
    v = carry(keep_v, v_next, v);
  }
  out.text = t, out.image = v;
  out.text_keep = keep_t, out.image_keep = keep_v;
  out.cls = concat({tanh(text_pooler_.forward(first_token(t))), tanh(image_pooler_.forward(first_token(v)))}, -1);
  return out;
}

}  // namespace st
