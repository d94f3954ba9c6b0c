#include "pruning/trim_config.h"

namespace st {

TrimConfig default_meter_trim_config(int vit_layers, int cross_layers) {
  TrimConfig c;
  c.enabled = true;
  for (int l = 3; l < vit_layers; l++) c.vit_token_layers.push_back(l);
  for (int l = 0; l < cross_layers; l++) {
    c.cross_token_layers.push_back(l);
    c.cross_head_layers.push_back(l);
  }
  return c;
}

}  // namespace st
