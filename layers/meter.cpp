#include "layers/meter.h"

#include <algorithm>
#include <cstring>
#include <set>

#include "engine/error.h"
#include "weights/format.h"

namespace st {

Classifier::Classifier(int in, int hidden, int out, float eps, Rng& rng)
    : fc1(in, hidden, rng), fc2(hidden, out, rng), norm(hidden, eps) {}

void Classifier::name(NamedParams& p, const std::string& prefix) {
  fc1.name(p, prefix + ".0");
  norm.name(p, prefix + ".1");
  fc2.name(p, prefix + ".3");
}

Meter::Meter(const MeterConfig& c, uint64_t seed) : config_(c) {
  Rng rng(seed);
  const int d = c.hidden_size;
  vit_ = ClipVit(c, rng);
  text_ = RobertaText(c, rng);
  text_transform_ = Linear(c.text_width, d, rng);
  image_transform_ = Linear(c.vit_width, d, rng);
  token_types_ = Embedding(c.num_token_types, d, rng);
  for (int i = 0; i < c.num_cross_layers; i++) {
    text_layers_.emplace_back(d, c.num_heads, c.ffn_size, c.cross_layer_norm_eps, c.dropout, rng);
    image_layers_.emplace_back(d, c.num_heads, c.ffn_size, c.cross_layer_norm_eps, c.dropout, rng);
  }
  text_pooler_ = Linear(d, d, rng);
  image_pooler_ = Linear(d, d, rng);
  if (c.vqa_answers > 0) vqa_ = Classifier(2 * d, 2 * d, c.vqa_answers, c.head_layer_norm_eps, rng);
  if (c.nlvr2) nlvr2_ = Classifier(4 * d, 2 * d, 2, c.head_layer_norm_eps, rng);
  if (c.snli) snli_ = Classifier(2 * d, 2 * d, 3, c.head_layer_norm_eps, rng);
  if (c.itm) itm_ = Linear(2 * d, 2, rng);
  if (c.rank) rank_ = Linear(2 * d, 1, rng);
  if (c.trim.enabled) {
    const TrimConfig& t = c.trim;
    const bool g = t.cross_modal_guidance;
    const int w = c.vit_width, tw = c.text_width, div = t.width_divisor;
    // the cross-modal summary c: the text's first token for the ViT, the image's
    // mean patch embedding for the text encoder, the other stream's first token in fusion
    for (size_t i = 0; i < t.vit_token_layers.size(); i++) vit_token_trimmers_.emplace_back(w, tw, w / div, g, rng);
    for (size_t i = 0; i < t.text_token_layers.size(); i++) text_token_trimmers_.emplace_back(tw, w, tw / div, g, rng);
    for (size_t i = 0; i < t.cross_token_layers.size(); i++) {
      cross_text_token_trimmers_.emplace_back(d, d, d / div, g, rng);
      cross_image_token_trimmers_.emplace_back(d, d, d / div, g, rng);
    }
    for (size_t i = 0; i < t.cross_head_layers.size(); i++)
      cross_head_trimmers_.push_back({HeadTrimmer(d, d / div, c.num_heads, rng), HeadTrimmer(2 * d, d / div, c.num_heads, rng),
                                      HeadTrimmer(d, d / div, c.num_heads, rng), HeadTrimmer(2 * d, d / div, c.num_heads, rng)});
  }

  // METER's checkpoint names, in the order of its state_dict.
  NamedParams& p = params_;
  text_transform_.name(p, "cross_modal_text_transform");
  image_transform_.name(p, "cross_modal_image_transform");
  token_types_.name(p, "token_type_embeddings");
  vit_.name(p, "vit_model.visual");
  text_.name(p, "text_transformer");
  for (int i = 0; i < c.num_cross_layers; i++) image_layers_[size_t(i)].name(p, "cross_modal_image_layers." + std::to_string(i));
  for (int i = 0; i < c.num_cross_layers; i++) text_layers_[size_t(i)].name(p, "cross_modal_text_layers." + std::to_string(i));
  image_pooler_.name(p, "cross_modal_image_pooler.dense");
  text_pooler_.name(p, "cross_modal_text_pooler.dense");
  if (c.itm) itm_.name(p, "itm_score.fc");
  if (c.vqa_answers > 0) vqa_.name(p, "vqa_classifier");
  if (c.nlvr2) nlvr2_.name(p, "nlvr2_classifier");
  if (c.snli) snli_.name(p, "snli_classifier");
  if (c.rank) rank_.name(p, "rank_output");
  if (c.trim.enabled) {
    const TrimConfig& t = c.trim;
    auto site = [](const char* kind, int layer) { return std::string("smarttrim.") + kind + "." + std::to_string(layer); };
    for (size_t i = 0; i < t.vit_token_layers.size(); i++) vit_token_trimmers_[i].name(p, site("vit_tokens", t.vit_token_layers[i]));
    for (size_t i = 0; i < t.text_token_layers.size(); i++) text_token_trimmers_[i].name(p, site("text_tokens", t.text_token_layers[i]));
    for (size_t i = 0; i < t.cross_token_layers.size(); i++) {
      cross_text_token_trimmers_[i].name(p, site("cross_text_tokens", t.cross_token_layers[i]));
      cross_image_token_trimmers_[i].name(p, site("cross_image_tokens", t.cross_token_layers[i]));
    }
    for (size_t i = 0; i < t.cross_head_layers.size(); i++) {
      const int l = t.cross_head_layers[i];
      cross_head_trimmers_[i].text_self.name(p, site("cross_text_self_heads", l));
      cross_head_trimmers_[i].text_cross.name(p, site("cross_text_cross_heads", l));
      cross_head_trimmers_[i].image_self.name(p, site("cross_image_self_heads", l));
      cross_head_trimmers_[i].image_cross.name(p, site("cross_image_cross_heads", l));
    }
  }
  // Every backbone weight matrix and embedding table was drawn from N(0, 0.02);
  // scaling draws them from N(0, initializer_range) with the same Rng stream.
  if (c.initializer_range != 0.02f)
    for (auto& [name, t] : params_.list)
      if (!is_trimmer_parameter(name) && t->rank() >= 2 && name.size() >= 6 &&
          name.compare(name.size() - 6, 6, "weight") == 0)
        for (int64_t i = 0; i < t->numel(); i++) t->data()[i] *= c.initializer_range / 0.02f;
}

int64_t Meter::parameter_count() const {
  int64_t n = 0;
  for (const auto& [name, t] : params_.list) n += t->numel();
  return n;
}

Tensor Meter::encode_text(const Tensor& ids, const Tensor& mask, const Context& ctx) const {
  return text_transform_.forward(text_.forward(ids, mask, ctx));
}

Meter::ImageTokens Meter::image_tokens(const Tensor& image) const {
  ImageTokens t;
  t.patches = vit_.patches(image);
  t.tokens = vit_.embed(t.patches);
  return t;
}

Tensor Meter::encode_image(const ImageTokens& image, const Context& ctx) const {
  return image_transform_.forward(vit_.encode(image.tokens, ctx));
}

MeterFeatures Meter::fuse(const Tensor& text, const Tensor& text_mask, const Tensor& image, int image_type,
                          const Context& ctx) const {
  if (image_type < 1 || image_type >= config_.num_token_types)
    throw ArgumentError("METER: image token type " + std::to_string(image_type) + " is not in [1, " +
                        std::to_string(config_.num_token_types) + ")");
  auto type_row = [&](int type) {  // (1, d)
    return token_types_.forward(Tensor::from_ints({type}, {1}).to(text.device()));
  };
  Tensor t = text + type_row(0);            // (B, T, d)
  Tensor v = image + type_row(image_type);  // (B, N, d)
  Tensor image_mask = Tensor::ones({image.dim(0), image.dim(1)}, image.device());
  for (size_t i = 0; i < text_layers_.size(); i++) {
    Tensor t_next = text_layers_[i].forward(t, v, text_mask, image_mask, Tensor(), Tensor(), ctx);
    Tensor v_next = image_layers_[i].forward(v, t, image_mask, text_mask, Tensor(), Tensor(), ctx);
    t = t_next, v = v_next;  // both read the previous layer's outputs
  }
  Tensor cls = concat({tanh(text_pooler_.forward(first_token(t))), tanh(image_pooler_.forward(first_token(v)))}, -1);
  MeterFeatures out;
  out.text = t, out.image = v, out.cls = cls;
  return out;
}

MeterFeatures Meter::forward(const Tensor& ids, const Tensor& mask, const Tensor& image, const Context& ctx,
                             int image_type, const TrimOptions* trim) const {
  return forward(ids, mask, image_tokens(image), ctx, image_type, trim);
}

MeterFeatures Meter::forward(const Tensor& ids, const Tensor& mask, const ImageTokens& image, const Context& ctx,
                             int image_type, const TrimOptions* trim) const {
  if (config_.trim.enabled && trim && trim->active) return forward_trimmed(ids, mask, image, ctx, image_type, *trim);
  return fuse(encode_text(ids, mask, ctx), mask, encode_image(image, ctx), image_type, ctx);
}

namespace {
void require_head(bool present, const char* head) {
  if (!present) throw ArgumentError(std::string("METER: this model has no ") + head + " head");
}
}  // namespace

Tensor Meter::vqa_logits(const Tensor& cls) const {
  require_head(config_.vqa_answers > 0, "VQA");
  return vqa_.forward(cls);
}
Tensor Meter::snli_logits(const Tensor& cls) const {
  require_head(config_.snli, "SNLI-VE");
  return snli_.forward(cls);
}
Tensor Meter::itm_logits(const Tensor& cls) const {
  require_head(config_.itm, "image-text matching");
  return itm_.forward(cls);
}
Tensor Meter::rank_logits(const Tensor& cls) const {
  require_head(config_.rank, "retrieval rank");
  return rank_.forward(cls);
}
Tensor Meter::nlvr2_logits(const Tensor& cls1, const Tensor& cls2) const {
  require_head(config_.nlvr2, "NLVR2");
  return nlvr2_.forward(concat({cls1, cls2}, -1));  // (B, 4d)
}

Tensor Meter::nlvr2_forward(const Tensor& ids, const Tensor& mask, const Tensor& image1, const Tensor& image2,
                            const Context& ctx, const TrimOptions* trim) const {
  MeterFeatures a = forward(ids, mask, image1, ctx, 1, trim);
  MeterFeatures b = forward(ids, mask, image2, ctx, 2, trim);
  return nlvr2_logits(a.cls, b.cls);
}

Tensor vqa_loss(const Tensor& logits, const Tensor& soft_targets) {
  return bce_with_logits(logits, soft_targets) * float(logits.dim(-1));
}

// --- weights

MeterConfig meter_config_of(const weights::WeightsFile& file) {
  auto it = file.metadata().find("config");
  if (it == file.metadata().end())
    throw FormatError("weights file '" + file.path() + "': no model config in its metadata");
  return meter_config_from_json(it->second, "weights file '" + file.path() + "': config");
}

void Meter::check(const weights::WeightsFile& file, Trimmers trimmers) const {
  std::vector<std::string> problems;
  std::set<std::string> expected;
  for (const auto& [name, tensor] : params_.list) {
    expected.insert(name);
    if (!file.contains(name)) {
      if (trimmers == Trimmers::MayBeMissing && is_trimmer_parameter(name)) continue;
      problems.push_back("missing '" + name + "'");
      continue;
    }
    const weights::Entry& e = file.entry(name);
    if (e.dtype != DType::F32 || e.shape != tensor->shape()) {
      problems.push_back("'" + name + "' is " + weights::dtype_tag(e.dtype) + to_string(e.shape) + ", the config wants F32" +
                         to_string(tensor->shape()));
      continue;
    }
  }
  for (const weights::Entry& e : file.entries())
    if (!expected.count(e.name)) problems.push_back("unexpected '" + e.name + "'");
  if (!problems.empty()) {
    std::string msg = "weights file '" + file.path() + "' does not fit the model config: ";
    const size_t shown = std::min<size_t>(problems.size(), 8);
    for (size_t i = 0; i < shown; i++) msg += (i ? "; " : "") + problems[i];
    if (problems.size() > shown) msg += "; and " + std::to_string(problems.size() - shown) + " more";
    throw FormatError(msg);
  }
}

int Meter::load(const weights::WeightsFile& file, Trimmers trimmers) {
  check(file, trimmers);
  // Copied into the existing buffers, so an optimizer holding these parameters stays valid.
  int kept_initial = 0;
  for (auto& [name, tensor] : params_.list) {
    if (!file.contains(name)) {  // a trimmer check() let through
      kept_initial++;
      continue;
    }
    Tensor values = file.get(name);
    tensor->copy_from(values);
  }
  return kept_initial;
}

std::unique_ptr<Meter> Meter::from_file(const weights::WeightsFile& file) {
  MeterConfig config = meter_config_of(file);
  std::unique_ptr<Meter> model;
  {
    SkipInit skip;
    model = std::make_unique<Meter>(config);
  }
  model->load(file);
  return model;
}

void Meter::save(const std::string& path) const {
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const auto& [name, tensor] : params_.list) tensors.emplace_back(name, *tensor);
  weights::save(path, tensors, {{"config", config_.to_json()}});
}

}  // namespace st
