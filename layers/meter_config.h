// The METER model's sizes, read from a config file (configs/meter-*.json) or
// from the "config" entry of a weights file's metadata. One flat JSON object;
// every key below is required and no other key is allowed, so a typo is an
// error instead of a silent default. The optional object "smarttrim" places
// the trimmers (pruning/trim_config.h); every one of its keys is required too.
#pragma once
#include <string>

#include "pruning/trim_config.h"

namespace st {

struct MeterConfig {
  // co-attention (fusion) encoder and the bridge into it
  int hidden_size = 0;          // d
  int num_heads = 0;            // heads of every co-attention MSA and MCA
  int ffn_size = 0;             // f
  int num_cross_layers = 0;     // METER: 6
  float cross_layer_norm_eps = 0;  // METER: 1e-12 (a RobertaConfig default)
  int num_token_types = 0;      // 2, or 3 when NLVR2 gives the second image its own type

  // CLIP ViT image encoder
  int vit_width = 0;
  int vit_heads = 0;
  int vit_layers = 0;           // METER keeps 11 of CLIP's 12 blocks
  int vit_ffn_size = 0;
  int vit_patch_size = 0;
  int vit_image_size = 0;       // the size the position-embedding table was made for
  float vit_layer_norm_eps = 0;

  // RoBERTa text encoder
  int text_width = 0;
  int text_heads = 0;
  int text_layers = 0;
  int text_ffn_size = 0;
  int vocab_size = 0;
  int max_text_positions = 0;   // roberta-base: 514 (positions start after the padding id)
  int text_type_vocab_size = 0; // roberta-base: 1
  int pad_token_id = 0;         // RoBERTa: 1
  float text_layer_norm_eps = 0;

  // task heads (each optional)
  float head_layer_norm_eps = 0;
  int vqa_answers = 0;          // 0: no VQA head
  bool nlvr2 = false;
  bool snli = false;
  bool itm = false;
  bool rank = false;            // retrieval fine-tuning's rank_output

  float dropout = 0;            // text encoder and co-attention layers (CLIP has none)
  // Optional (BERT's name): the std of the normal init of every weight matrix
  // and embedding table. 0.02 is BERT's and METER's; narrow models trained
  // from scratch learn faster with about 1/sqrt(width).
  float initializer_range = 0.02f;

  TrimConfig trim;              // SmartTrim's trimmers; trim.enabled is false without "smarttrim"

  int vit_grid() const { return vit_image_size / vit_patch_size; }
  int image_tokens() const { return vit_grid() * vit_grid() + 1; }

  std::string to_json() const;  // the file format, one key per line
};

// Parse and check; `where` names the source in error messages
// ("config 'configs/meter-tiny.json'"). Throws FormatError.
MeterConfig meter_config_from_json(const std::string& text, const std::string& where);
MeterConfig load_meter_config(const std::string& path);

}  // namespace st
