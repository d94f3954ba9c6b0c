#include "layers/encoders.h"

#include <cmath>

#include "engine/error.h"

namespace st {

namespace {
void check_image(const Tensor& image, int size);
}

ClipVit::ClipVit(const MeterConfig& c, Rng& rng)
    : patch(c.vit_patch_size),
      conv1_weight(parameter({c.vit_width, 3, c.vit_patch_size, c.vit_patch_size}, rng, 0.02f)),
      class_embedding(parameter({c.vit_width}, rng, 1.0f / std::sqrt(float(c.vit_width)))),
      positional_embedding(parameter({c.image_tokens(), c.vit_width}, rng, 1.0f / std::sqrt(float(c.vit_width)))),
      ln_pre(c.vit_width, c.vit_layer_norm_eps),
      ln_post(c.vit_width, c.vit_layer_norm_eps) {
  for (int i = 0; i < c.vit_layers; i++)
    blocks.emplace_back(c.vit_width, c.vit_heads, c.vit_ffn_size, c.vit_layer_norm_eps, rng);
}

int ClipVit::image_size() const {
  const int grid = int(std::lround(std::sqrt(double(positional_embedding.dim(0) - 1))));
  return grid * patch;
}

void ClipVit::resize_positions(int size) {
  if (size <= 0 || size % patch != 0)
    throw ArgumentError("image size " + std::to_string(size) + " is not a positive multiple of the patch size " +
                        std::to_string(patch));
  if (size == image_size()) return;
  NoGrad no_grad;
  const int64_t g = image_size() / patch, g2 = size / patch, w = positional_embedding.dim(1);
  std::vector<Tensor> rows = split(positional_embedding, {1, g * g}, 0);  // class row, grid rows
  Tensor grid = bicubic_resize(reshape(rows[1], {g, g, w}), int(g2), int(g2));  // (G2, G2, W)
  positional_embedding = concat({rows[0], reshape(grid, {g2 * g2, w})}, 0).clone().set_requires_grad();
}

namespace {
void check_image(const Tensor& image, int size) {
  if (image.rank() != 4 || image.dim(1) != 3 || image.dim(2) != size || image.dim(3) != size)
    throw ShapeError("image encoder: expects images (B, 3, " + std::to_string(size) + ", " + std::to_string(size) +
                     "), got " + to_string(image.shape()) + " (resize the position table for another size)");
}
}  // namespace

Tensor ClipVit::patches(const Tensor& image) const {
  check_image(image, image_size());
  return patch_embed(image, conv1_weight);  // (B, G*G, W)
}

Tensor ClipVit::embed(const Tensor& patch_tokens) const {
  const int64_t batch = patch_tokens.dim(0), w = conv1_weight.dim(0);
  Tensor cls = Tensor::zeros({batch, 1, w}, DType::F32, patch_tokens.device()) +
               reshape(class_embedding, {1, 1, w});                                 // (B, 1, W)
  Tensor x = concat({cls, patch_tokens}, 1) + positional_embedding;                 // (B, 1+G*G, W)
  return ln_pre.forward(x);
}

Tensor ClipVit::forward(const Tensor& image, const Context& ctx) const { return encode(embed(patches(image)), ctx); }

Tensor ClipVit::encode(const Tensor& tokens, const Context& ctx) const {
  Tensor x = tokens;
  for (const ViTBlock& b : blocks) x = b.forward(x, Tensor(), ctx);
  return ln_post.forward(x);
}

void ClipVit::name(NamedParams& p, const std::string& prefix) {
  p.add(prefix + ".conv1.weight", conv1_weight);
  p.add(prefix + ".class_embedding", class_embedding);
  p.add(prefix + ".positional_embedding", positional_embedding);
  ln_pre.name(p, prefix + ".ln_pre");
  for (size_t i = 0; i < blocks.size(); i++) blocks[i].name(p, prefix + ".transformer.resblocks." + std::to_string(i));
  ln_post.name(p, prefix + ".ln_post");
}

RobertaText::RobertaText(const MeterConfig& c, Rng& rng)
    : pad_token_id(c.pad_token_id),
      dropout(c.dropout),
      word(c.vocab_size, c.text_width, rng),
      position(c.max_text_positions, c.text_width, rng),
      token_type(c.text_type_vocab_size, c.text_width, rng),
      norm(c.text_width, c.text_layer_norm_eps) {
  for (int i = 0; i < c.text_layers; i++)
    layers.emplace_back(c.text_width, c.text_heads, c.text_ffn_size, c.text_layer_norm_eps, c.dropout, rng);
}

Tensor roberta_position_ids(const Tensor& ids, int pad) {
  Tensor host = ids.to(Device::CPU);
  Tensor pos = Tensor::empty(ids.shape(), DType::I32);
  const int64_t t = ids.dim(-1), rows = ids.numel() / std::max<int64_t>(t, 1);
  for (int64_t r = 0; r < rows; r++) {
    int32_t count = 0;
    for (int64_t i = 0; i < t; i++) {
      const int32_t id = host.ints()[r * t + i];
      pos.ints()[r * t + i] = id == pad ? pad : pad + ++count;
    }
  }
  return pos.to(ids.device());
}

Tensor RobertaText::embed(const Tensor& ids, const Context& ctx) const {
  Tensor pos = roberta_position_ids(ids, pad_token_id);
  if (ids.dim(1) + pad_token_id >= position.weight.dim(0))
    throw ShapeError("text encoder: " + std::to_string(ids.dim(1)) + " tokens need more than the " +
                     std::to_string(position.weight.dim(0)) + " position embeddings");
  Tensor types = Tensor::zeros(ids.shape(), DType::I32, ids.device());
  Tensor x = word.forward(ids) + position.forward(pos) + token_type.forward(types);  // (B, T, Tw)
  return ctx.drop(norm.forward(x), dropout);
}

Tensor RobertaText::forward(const Tensor& ids, const Tensor& mask, const Context& ctx) const {
  if (ids.rank() != 2 || mask.shape() != ids.shape())
    throw ShapeError("text encoder: expects ids (B, T) and mask (B, T), got " + to_string(ids.shape()) + " and " +
                     to_string(mask.shape()));
  Tensor x = embed(ids, ctx);
  for (const BertLayer& layer : layers) x = layer.forward(x, mask, ctx);
  return x;
}

void RobertaText::name(NamedParams& p, const std::string& prefix) {
  word.name(p, prefix + ".embeddings.word_embeddings");
  position.name(p, prefix + ".embeddings.position_embeddings");
  token_type.name(p, prefix + ".embeddings.token_type_embeddings");
  norm.name(p, prefix + ".embeddings.LayerNorm");
  for (size_t i = 0; i < layers.size(); i++) layers[i].name(p, prefix + ".encoder.layer." + std::to_string(i));
}

}  // namespace st
