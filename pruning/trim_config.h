// Where SmartTrim's trimmers sit and how they decide (SMARTTRIM.md sections
// 2-5). Part of a model config as the optional object "smarttrim"; a config
// without it is the plain model. Layer indices are 0-based: a token trimmer
// "before layer l" decides which tokens enter layer l.
#pragma once
#include <string>
#include <vector>

namespace st {

struct TrimConfig {
  bool enabled = false;                 // false: no "smarttrim" object, no trimmers
  std::vector<int> vit_token_layers;    // token trimmers before these ViT blocks
  std::vector<int> text_token_layers;   // ... before these RoBERTa layers
  std::vector<int> cross_token_layers;  // ... before these co-attention layers, in both streams
  std::vector<int> cross_head_layers;   // head trimmers on the MSA and MCA of these co-attention layers
  int width_divisor = 4;                // trimmer width d_t = d / width_divisor (SMARTTRIM.md: d/4)
  bool cross_modal_guidance = true;     // ablation: false drops the cross-modal input u
  float tau = 1.0f;                     // Gumbel-sigmoid temperature

  // Index of `layer` in one of the lists above (the trimmer at that site), or -1.
  static int site(const std::vector<int>& layers, int layer) {
    for (size_t i = 0; i < layers.size(); i++)
      if (layers[i] == layer) return int(i);
    return -1;
  }

  bool has_token_trimmers() const {
    return !vit_token_layers.empty() || !text_token_layers.empty() || !cross_token_layers.empty();
  }
  bool has_head_trimmers() const { return !cross_head_layers.empty(); }
};

// The defaults of SMARTTRIM.md section 2 for METER: token trimmers before
// ViT blocks 3 .. L_v - 1 and before every co-attention layer; head trimmers
// on every co-attention MSA and MCA.
TrimConfig default_meter_trim_config(int vit_layers, int cross_layers);

}  // namespace st
