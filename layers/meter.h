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
#include "pruning/cost.h"
#include "pruning/head_trimmer.h"
#include "pruning/token_trimmer.h"

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

// How the trimmers run in a forward pass (SMARTTRIM.md section 5).
struct TrimOptions {
  bool active = true;          // false: full capacity (the self-distillation teacher), no trimmer runs
  Rng* noise = nullptr;        // Gumbel noise for training; nullptr: deterministic, keep iff logit > threshold
  float token_threshold = 0;   // theta for tokens
  float head_threshold = 0;    // theta for heads
};

// The co-attention encoder's outputs for one (image, text) pair.
struct MeterFeatures {
  Tensor text;   // (B, T, d)
  Tensor image;  // (B, N, d)
  Tensor cls;    // (B, 2d): pooled text ; pooled image
  // With active trimmers: what each example kept, layer by layer.
  bool trimmed = false;
  PassCounts<Tensor> counts;          // (B,) each; differentiable through the masks
  Tensor text_keep, image_keep;       // (B, T), (B, N): the masks after the last trimmer
  std::vector<Tensor> image_keep_at;  // (B, N): entering each ViT block, then each co-attention layer
  std::vector<Tensor> text_keep_at;   // (B, T): entering each text layer, then each co-attention layer
  std::vector<Tensor> head_keep_at;   // (B, H) per co-attention layer with head trimmers: text MSA, text MCA,
                                      // image MSA, image MCA
};

// Every trimmer parameter's name starts with "smarttrim." (the rest are METER's own names).
inline bool is_trimmer_parameter(const std::string& name) { return name.rfind("smarttrim.", 0) == 0; }

class Meter {
 public:
  explicit Meter(const MeterConfig& config, uint64_t seed = 0);
  Meter(const Meter&) = delete;  // params() points into this object
  Meter& operator=(const Meter&) = delete;

  const MeterConfig& config() const { return config_; }
  const NamedParams& params() const { return params_; }  // trimmers' names start with "smarttrim."
  Device device() const { return params_.list.front().second->device(); }  // where its weights are (all on one)
  int64_t parameter_count() const;
  int image_size() const { return vit_.image_size(); }
  // Fit the position table to another image size (bicubic, as METER does).
  // It becomes a new tensor: do this before handing the parameters to an optimizer.
  void set_image_size(int size) {
    vit_.resize_positions(size);
    config_.vit_image_size = size;
  }

  // An image's tokens at the ViT's input. No trimmer and no dropout acts
  // before them, so the student and teacher passes of a SmartTrim training
  // step compute them once and share them (their gradients then add up
  // before the patch embedding's backward, which runs once).
  struct ImageTokens {
    Tensor patches;  // (B, G*G, W): the patch embedding alone
    Tensor tokens;   // (B, 1 + G*G, W): class token, positions, ln_pre
  };
  ImageTokens image_tokens(const Tensor& image) const;  // image (B, 3, S, S)

  // The uni-modal encoders and the bridge (without the token types).
  Tensor encode_text(const Tensor& ids, const Tensor& mask, const Context& ctx) const;  // -> (B, T, d)
  Tensor encode_image(const ImageTokens& image, const Context& ctx) const;             // -> (B, N, d)
  // Token types, co-attention layers and poolers. text (B, T, d) with mask (B, T); image (B, N, d).
  MeterFeatures fuse(const Tensor& text, const Tensor& text_mask, const Tensor& image, int image_type,
                     const Context& ctx) const;
  // All of it: ids i32 (B, T), mask (B, T) 0/1, image (B, 3, S, S). With a
  // config that has trimmers and trim->active, the masked SmartTrim pass
  // (pruning/masked_forward.cpp); otherwise plain METER.
  MeterFeatures forward(const Tensor& ids, const Tensor& mask, const Tensor& image, const Context& ctx,
                        int image_type = 1, const TrimOptions* trim = nullptr) const;
  MeterFeatures forward(const Tensor& ids, const Tensor& mask, const ImageTokens& image, const Context& ctx,
                        int image_type = 1, const TrimOptions* trim = nullptr) const;

  // Heads: cls (B, 2d) -> logits. Each throws ArgumentError when the config has no such head.
  Tensor vqa_logits(const Tensor& cls) const;    // (B, answers)
  Tensor snli_logits(const Tensor& cls) const;   // (B, 3)
  Tensor itm_logits(const Tensor& cls) const;    // (B, 2)
  Tensor rank_logits(const Tensor& cls) const;   // (B, 1)
  Tensor nlvr2_logits(const Tensor& cls_image1, const Tensor& cls_image2) const;  // (B, 2)
  // NLVR2's two passes, (image1, type 1) and (image2, type 2), then the head.
  Tensor nlvr2_forward(const Tensor& ids, const Tensor& mask, const Tensor& image1, const Tensor& image2,
                       const Context& ctx, const TrimOptions* trim = nullptr) const;

  // Names and shapes in the file must match the config exactly: missing,
  // unexpected and mis-shaped tensors are one FormatError that lists them.
  // Trimmers::MayBeMissing lets a file without trimmers (a converted METER
  // checkpoint, a model trained at full capacity) fill a model that has them:
  // the trimmers keep their initial values, ready for SmartTrim fine-tuning.
  enum class Trimmers { Required, MayBeMissing };
  void check(const weights::WeightsFile& file, Trimmers trimmers = Trimmers::Required) const;
  // check, then copy every parameter the file has; returns how many kept their initial values.
  int load(const weights::WeightsFile& file, Trimmers trimmers = Trimmers::Required);
  // A model built from a file's config and filled from it (no random init).
  static std::unique_ptr<Meter> from_file(const weights::WeightsFile& file);
  // Writes every parameter and the config (metadata "config") atomically.
  void save(const std::string& path) const;

 private:
  MeterFeatures forward_trimmed(const Tensor& ids, const Tensor& mask, const ImageTokens& image, const Context& ctx,
                                int image_type, const TrimOptions& trim) const;
  friend class PackedMeter;  // the inference path reads the same weights

  MeterConfig config_;
  ClipVit vit_;
  RobertaText text_;
  Linear text_transform_, image_transform_;
  Embedding token_types_;
  std::vector<BertCrossLayer> text_layers_, image_layers_;
  Linear text_pooler_, image_pooler_;
  Classifier vqa_, nlvr2_, snli_;
  Linear itm_, rank_;
  // SmartTrim's trimmers, one per site of config_.trim's lists (empty without trimmers).
  std::vector<TokenTrimmer> vit_token_trimmers_, text_token_trimmers_;
  std::vector<TokenTrimmer> cross_text_token_trimmers_, cross_image_token_trimmers_;
  struct CrossHeadTrimmers {
    HeadTrimmer text_self, text_cross, image_self, image_cross;
  };
  std::vector<CrossHeadTrimmers> cross_head_trimmers_;
  NamedParams params_;
};

// The model a weights file describes: its metadata "config", then load().
// Throws FormatError naming the file when the config is missing or wrong.
MeterConfig meter_config_of(const weights::WeightsFile& file);

// METER's VQA loss: BCE-with-logits against soft scores, mean over all
// entries, times the number of answers. logits/targets (B, A) -> (1).
Tensor vqa_loss(const Tensor& logits, const Tensor& soft_targets);

}  // namespace st
