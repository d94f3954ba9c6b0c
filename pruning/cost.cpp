#include "pruning/cost.h"

namespace st {

double head_flops(const MeterConfig& c, Task task) {
  const double d2 = 2.0 * c.hidden_size;  // the pooled pair
  switch (task) {
    case Task::None: return 0;
    case Task::VQA: return 2.0 * d2 * d2 + 2.0 * d2 * c.vqa_answers;
    case Task::SNLI: return 2.0 * d2 * d2 + 2.0 * d2 * 3;
    case Task::ITM: return 2.0 * d2 * 2;
    case Task::Rank: return 2.0 * d2 * 1;
    case Task::NLVR2: return 2.0 * (2.0 * d2) * d2 + 2.0 * d2 * 2;
  }
  return 0;
}

PassCounts<double> full_counts(const MeterConfig& c, int text_tokens) {
  PassCounts<double> n;
  const double image_tokens = c.image_tokens(), text = text_tokens;
  n.vit_tokens.assign(size_t(c.vit_layers), image_tokens);
  n.text_tokens.assign(size_t(c.text_layers), text);
  n.text_out = text;
  n.image_out = image_tokens;
  n.cross_text_tokens.assign(size_t(c.num_cross_layers), text);
  n.cross_image_tokens.assign(size_t(c.num_cross_layers), image_tokens);
  for (auto* heads : {&n.text_self_heads, &n.text_cross_heads, &n.image_self_heads, &n.image_cross_heads})
    heads->assign(size_t(c.num_cross_layers), double(c.num_heads));
  return n;
}

double full_flops(const MeterConfig& c, int text_tokens, Task task) {
  const double pass = pass_flops(c, full_counts(c, text_tokens), /*with_trimmers=*/false);
  return (task == Task::NLVR2 ? 2.0 : 1.0) * pass + head_flops(c, task);
}

}  // namespace st
