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

PassCounts<double> counts_of_example(const PassCounts<Tensor>& n, int64_t b) {
  auto at = [b](const Tensor& t) { return double(t.to_vector()[size_t(b)]); };
  auto all = [&](const std::vector<Tensor>& v) {
    std::vector<double> out;
    for (const Tensor& t : v) out.push_back(at(t));
    return out;
  };
  PassCounts<double> e;
  e.vit_tokens = all(n.vit_tokens), e.text_tokens = all(n.text_tokens);
  e.text_out = at(n.text_out), e.image_out = at(n.image_out);
  e.cross_text_tokens = all(n.cross_text_tokens), e.cross_image_tokens = all(n.cross_image_tokens);
  e.text_self_heads = all(n.text_self_heads), e.text_cross_heads = all(n.text_cross_heads);
  e.image_self_heads = all(n.image_self_heads), e.image_cross_heads = all(n.image_cross_heads);
  e.vit_scored = all(n.vit_scored), e.text_scored = all(n.text_scored);
  e.cross_text_scored = all(n.cross_text_scored), e.cross_image_scored = all(n.cross_image_scored);
  return e;
}

double full_flops(const MeterConfig& c, int text_tokens, Task task) {
  const double pass = pass_flops(c, full_counts(c, text_tokens), /*with_trimmers=*/false);
  return (task == Task::NLVR2 ? 2.0 : 1.0) * pass + head_flops(c, task);
}

PassCounts<double> fewest_counts(const MeterConfig& c, int text_tokens) {
  const TrimConfig& t = c.trim;
  PassCounts<double> n = full_counts(c, text_tokens);
  // Walks one stream's layers: from a trimmer site on, the stream keeps only its first token.
  auto stream = [](std::vector<double>& tokens, std::vector<double>& scored, const std::vector<int>& sites) {
    double kept = tokens.empty() ? 0 : tokens.front();
    for (size_t l = 0; l < tokens.size(); l++) {
      if (TrimConfig::site(sites, int(l)) >= 0) {
        scored.push_back(kept);
        kept = 1;
      }
      tokens[l] = kept;
    }
  };
  if (!t.enabled) return n;
  stream(n.vit_tokens, n.vit_scored, t.vit_token_layers);
  stream(n.text_tokens, n.text_scored, t.text_token_layers);
  if (!n.vit_tokens.empty()) n.image_out = n.vit_tokens.back();
  if (!n.text_tokens.empty()) n.text_out = n.text_tokens.back();
  n.cross_text_tokens.assign(n.cross_text_tokens.size(), n.text_out);
  n.cross_image_tokens.assign(n.cross_image_tokens.size(), n.image_out);
  stream(n.cross_text_tokens, n.cross_text_scored, t.cross_token_layers);
  stream(n.cross_image_tokens, n.cross_image_scored, t.cross_token_layers);
  for (int l : t.cross_head_layers)
    for (auto* heads : {&n.text_self_heads, &n.text_cross_heads, &n.image_self_heads, &n.image_cross_heads})
      (*heads)[size_t(l)] = 1;
  return n;
}

double lowest_flops_ratio(const MeterConfig& c, int text_tokens, Task task) {
  const double pass = pass_flops(c, fewest_counts(c, text_tokens), /*with_trimmers=*/true);
  return ((task == Task::NLVR2 ? 2.0 : 1.0) * pass + head_flops(c, task)) / full_flops(c, text_tokens, task);
}

}  // namespace st
