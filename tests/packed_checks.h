// Shared by the packed-path tests (CPU and GPU): trimmers whose decisions
// sit far from the threshold, and a field-by-field comparison of what two
// passes kept.
#pragma once
#include <doctest/doctest.h>

#include <string>

#include "layers/meter.h"
#include "pruning/cost.h"

namespace st::testing {

// Random trimmers decide near logit 0, where rounding could flip a decision
// between two paths (or two devices); scaling their last layer spreads the
// logits far from 0, and the token bias shifts them so that roughly half survive.
inline void sharpen_trimmers(Meter& m, float scale, float token_bias) {
  for (const auto& [name, t] : m.params().list) {
    if (name.rfind("smarttrim.", 0) != 0) continue;
    if (name.find(".mlp2.weight") != std::string::npos || name.find(".fc2.weight") != std::string::npos)
      for (int64_t i = 0; i < t->numel(); i++) t->data()[i] *= scale;
    if (name.find(".mlp2.bias") != std::string::npos) t->data()[0] = token_bias;
  }
}

inline void check_same_counts(const PassCounts<double>& a, const PassCounts<double>& b) {
  CHECK(a.vit_tokens == b.vit_tokens);
  CHECK(a.text_tokens == b.text_tokens);
  CHECK(a.text_out == b.text_out);
  CHECK(a.image_out == b.image_out);
  CHECK(a.cross_text_tokens == b.cross_text_tokens);
  CHECK(a.cross_image_tokens == b.cross_image_tokens);
  CHECK(a.text_self_heads == b.text_self_heads);
  CHECK(a.text_cross_heads == b.text_cross_heads);
  CHECK(a.image_self_heads == b.image_self_heads);
  CHECK(a.image_cross_heads == b.image_cross_heads);
  CHECK(a.vit_scored == b.vit_scored);
  CHECK(a.text_scored == b.text_scored);
  CHECK(a.cross_text_scored == b.cross_text_scored);
  CHECK(a.cross_image_scored == b.cross_image_scored);
}

}  // namespace st::testing
