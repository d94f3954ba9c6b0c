// The two uni-modal encoders METER starts from.
#pragma once
#include <vector>

#include "layers/blocks.h"
#include "layers/meter_config.h"

namespace st {

// CLIP's visual tower as METER uses it. Names under "vit_model.visual.".
//   x = [class; patches(image) W_conv] + pos     (B, 1 + G*G, W)
//   x = ln_pre(x); x = blocks(x); x = ln_post(x)  (ln_post on every token, not only the class token)
struct ClipVit {
  int patch = 0;
  Tensor conv1_weight;          // (W, 3, p, p), no bias
  Tensor class_embedding;       // (W)
  Tensor positional_embedding;  // (1 + G*G, W)
  LayerNorm ln_pre, ln_post;
  std::vector<ViTBlock> blocks;

  ClipVit() = default;
  ClipVit(const MeterConfig& c, Rng& rng);
  int image_size() const;  // the size the position table fits: p * G
  // Re-grid the position table for another image size with bicubic
  // interpolation (class row unchanged), as METER does when it fine-tunes at
  // a new resolution. The result is a new leaf parameter.
  void resize_positions(int image_size);
  // image (B, 3, S, S) with S == image_size() -> (B, 1 + G*G, W)
  Tensor forward(const Tensor& image, const Context& ctx) const;
  Tensor patches(const Tensor& image) const;     // (B, G*G, W): the patch embedding alone
  Tensor embed(const Tensor& patches) const;     // -> (B, 1 + G*G, W): class token, positions, ln_pre
  Tensor encode(const Tensor& tokens, const Context& ctx) const;  // embed's output -> blocks, ln_post
  void name(NamedParams& p, const std::string& prefix);
};

// RoBERTa's encoder. Names under "text_transformer.".
//   pos_i = pad + cumsum(ids != pad)_i for real tokens, pad for padding
//   x = LN(word[ids] + position[pos] + type[0]); x = layers(x, mask)
struct RobertaText {
  int pad_token_id = 1;
  float dropout = 0;
  Embedding word, position, token_type;
  LayerNorm norm;
  std::vector<BertLayer> layers;

  RobertaText() = default;
  RobertaText(const MeterConfig& c, Rng& rng);
  // ids i32 (B, T), mask (B, T) 1 for real tokens -> (B, T, T_width)
  Tensor forward(const Tensor& ids, const Tensor& mask, const Context& ctx) const;
  Tensor embed(const Tensor& ids, const Context& ctx) const;  // the embeddings, before the layers
  void name(NamedParams& p, const std::string& prefix);
};

// RoBERTa's position ids: i32 (B, T) from ids i32 (B, T).
Tensor roberta_position_ids(const Tensor& ids, int pad_token_id);

}  // namespace st
