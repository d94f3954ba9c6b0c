#include "pruning/head_trimmer.h"

#include <algorithm>

namespace st {

HeadTrimmer::HeadTrimmer(int q_width, int hidden, int heads, Rng& rng)
    : ln(q_width, 1e-5f), fc1(q_width, hidden, rng), fc2(hidden, heads, rng) {
  for (int h = 0; h < heads; h++) fc2.bias.data()[h] = 3.0f;  // start with every head kept, as the token trimmer does
}

Tensor HeadTrimmer::logits(const Tensor& x, const Tensor& keep, const Tensor& other, const Tensor& other_keep) const {
  Tensor q = masked_mean(x, keep);                                               // (B, d)
  if (other.defined()) q = concat({q, masked_mean(other, other_keep)}, -1);       // (B, 2d)
  return fc2.forward(fc1.forward(ln.forward(q), Activation::Gelu));              // (B, H)
}

void HeadTrimmer::name(NamedParams& p, const std::string& prefix) {
  ln.name(p, prefix + ".ln");
  fc1.name(p, prefix + ".fc1");
  fc2.name(p, prefix + ".fc2");
}

// Row i's arg-max head (the first of equal ones), for rows of h logits.
static int64_t best_head(const float* row, int64_t h) { return std::max_element(row, row + h) - row; }

Tensor head_mask(const Tensor& logits, float tau, float theta, Rng* noise) {
  const int64_t b = logits.dim(0), h = logits.dim(1);
  std::vector<float> best(size_t(b * h), 0.0f);  // one-hot of each row's arg-max (a constant)
  std::vector<float> values = logits.to_vector();
  for (int64_t i = 0; i < b; i++) best[size_t(i * h + best_head(values.data() + i * h, h))] = 1.0f;
  Tensor top = Tensor::from_vector(best, {b, h}).to(logits.device());
  Tensor hard = gumbel_sigmoid_st(theta == 0 ? logits : logits - theta, tau, noise);
  return hard * (1.0f - top) + top;
}

Tensor kept_heads(const Tensor& logits, float theta) {
  const int64_t b = logits.dim(0), h = logits.dim(1);
  Tensor z = Tensor::empty({b, h});
  for (int64_t i = 0; i < b; i++) {
    const float* row = logits.data() + i * h;
    const int64_t best = best_head(row, h);
    for (int64_t j = 0; j < h; j++) z.data()[i * h + j] = j == best || row[j] > theta ? 1.0f : 0.0f;
  }
  return z;
}

}  // namespace st
