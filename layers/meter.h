// METER (Dou et al., 2022): a CLIP ViT and a RoBERTa encoder, a bridge into
// a shared width, and a co-attention encoder in which the text stream and the
// image stream each read the other's previous layer; poolers and task heads.
//
//   t = W_t RoBERTa(ids) + type[0]           (B, T, d)
//   v = W_v ViT(image)   + type[image_type]  (B, N, d)   N = 1 + G*G
//   for each co-attention layer i:  t, v = TextLayer_i(t, v), ImageLayer_i(v, t)
//   cls = [tanh(P_t t_0) ; tanh(P_v v_0)]    (B, 2d)
//
// Every parameter carries METER's own checkpoint name, so a file written by
// weights/convert_meter.py loads without a mapping table.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "layers/encoders.h"
#include "layers/meter_config.h"

namespace st {
namespace weights {
class WeightsFile;
}

// Linear(in, 2d) -> LayerNorm -> GELU -> Linear(2d, out): METER's VQA, SNLI-VE
// and NLVR2 classifiers. Names: prefix.0, prefix.1, prefix.3 (nn.Sequential indices).
struct Classifier {
  Linear fc1, fc2;
  LayerNorm norm;
  Classifier() = default;
  Classifier(int in, int hidden, int out, float eps, Rng& rng);
  Tensor forward(const Tensor& x) const { return fc2.forward(gelu(norm.forward(fc1.forward(x)))); }
  void name(NamedParams& p, const std::string& prefix);
};

// The co-attention encoder's outputs for one (image, text) pair.
struct MeterFeatures {
  Tensor text;   // (B, T, d)
  Tensor image;  // (B, N, d)
  Tensor cls;    // (B, 2d): pooled text ; pooled image
};

class Meter {
 public:
  explicit Meter(const MeterConfig& config, uint64_t seed = 0);
  Meter(const Meter&) = delete;  // params() points into this object
  Meter& operator=(const Meter&) = delete;

  const MeterConfig& config() const { return config_; }
  const NamedParams& params() const { return params_; }
  int64_t parameter_count() const;
  int image_size() const { return vit_.image_size(); }
  // Fit the position table to another image size (bicubic, as METER does).
  // It becomes a new tensor: do this before handing the parameters to an optimizer.
  void set_image_size(int size) {
    vit_.resize_positions(size);
    config_.vit_image_size = size;
  }

  // The uni-modal encoders and the bridge (without the token types).
  Tensor encode_text(const Tensor& ids, const Tensor& mask, const Context& ctx) const;  // -> (B, T, d)
  Tensor encode_image(const Tensor& image, const Context& ctx) const;                  // -> (B, N, d)
  // Token types, co-attention layers and poolers. text (B, T, d) with mask (B, T); image (B, N, d).
  MeterFeatures fuse(const Tensor& text, const Tensor& text_mask, const Tensor& image, int image_type,
                     const Context& ctx) const;
  // All of it: ids i32 (B, T), mask (B, T) 0/1, image (B, 3, S, S).
  MeterFeatures forward(const Tensor& ids, const Tensor& mask, const Tensor& image, const Context& ctx,
                        int image_type = 1) const;

  // Heads: cls (B, 2d) -> logits. Each throws ArgumentError when the config has no such head.
  Tensor vqa_logits(const Tensor& cls) const;    // (B, answers)
  Tensor snli_logits(const Tensor& cls) const;   // (B, 3)
  Tensor itm_logits(const Tensor& cls) const;    // (B, 2)
  Tensor rank_logits(const Tensor& cls) const;   // (B, 1)
  Tensor nlvr2_logits(const Tensor& cls_image1, const Tensor& cls_image2) const;  // (B, 2)
  // NLVR2's two passes share the text encoding: (image1, type 1) and (image2, type 2).
  Tensor nlvr2_forward(const Tensor& ids, const Tensor& mask, const Tensor& image1, const Tensor& image2,
                       const Context& ctx) const;

  // Names and shapes in the file must match the config exactly: missing,
  // unexpected and mis-shaped tensors are one FormatError that lists them.
  void check(const weights::WeightsFile& file) const;
  void load(const weights::WeightsFile& file);  // check, then copy every parameter
  // A model built from a file's config and filled from it (no random init).
  static std::unique_ptr<Meter> from_file(const weights::WeightsFile& file);
  // Writes every parameter and the config (metadata "config") atomically.
  void save(const std::string& path) const;

 private:
  MeterConfig config_;
  ClipVit vit_;
  RobertaText text_;
  Linear text_transform_, image_transform_;
  Embedding token_types_;
  std::vector<BertCrossLayer> text_layers_, image_layers_;
  Linear text_pooler_, image_pooler_;
  Classifier vqa_, nlvr2_, snli_;
  Linear itm_, rank_;
  NamedParams params_;
};

// The model a weights file describes: its metadata "config", then load().
// Throws FormatError naming the file when the config is missing or wrong.
MeterConfig meter_config_of(const weights::WeightsFile& file);

// METER's VQA loss: BCE-with-logits against soft scores, mean over all
// entries, times the number of answers. logits/targets (B, A) -> (1).
Tensor vqa_loss(const Tensor& logits, const Tensor& soft_targets);

}  // namespace st
