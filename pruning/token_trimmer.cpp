#include "pruning/token_trimmer.h"

namespace st {

TokenTrimmer::TokenTrimmer(int d, int d_c, int d_t, bool cross_modal_, Rng& rng)
    : cross_modal(cross_modal_),
      ln_x(d, 1e-5f),
      ln_c(d_c, 1e-5f),
      local(d, d_t, rng),
      cross(d_c, d_t, rng),
      mlp1((cross_modal_ ? 3 : 2) * d_t, d_t, rng),
      mlp2(d_t, 1, rng) {
  // Start by keeping every token (logit +3, sigmoid 0.95): training begins at
  // full capacity, where the curriculum's target starts too.
  mlp2.bias.data()[0] = 3.0f;
}

Tensor TokenTrimmer::logits(const Tensor& x, const Tensor& keep, const Tensor& c) const {
  const int64_t b = x.dim(0), n = x.dim(1), dt = width();
  Tensor h = local.forward(ln_x.forward(x), Activation::Gelu);              // (B, N, d_t)
  Tensor spread = Tensor::zeros({b, n, dt}, DType::F32, x.device());                     // broadcasts a (B, 1, d_t) to every token
  Tensor g = spread + reshape(masked_mean(h, keep), {b, 1, dt});             // (B, N, d_t)
  std::vector<Tensor> views = {h, g};
  if (cross_modal) views.push_back(spread + reshape(cross.forward(ln_c.forward(c), Activation::Gelu), {b, 1, dt}));
  Tensor s = mlp2.forward(mlp1.forward(concat(views, -1), Activation::Gelu));  // (B, N, 1)
  return reshape(s, {b, n});
}

void TokenTrimmer::name(NamedParams& p, const std::string& prefix) {
  ln_x.name(p, prefix + ".ln_x");
  local.name(p, prefix + ".local");
  if (cross_modal) {
    ln_c.name(p, prefix + ".ln_c");
    cross.name(p, prefix + ".cross");
  }
  mlp1.name(p, prefix + ".mlp1");
  mlp2.name(p, prefix + ".mlp2");
}

Tensor next_token_mask(const Tensor& keep, const Tensor& logits, float tau, float theta, Rng* noise) {
  const int64_t n = logits.dim(1);
  std::vector<float> first(size_t(n), 0.0f);
  first[0] = 1.0f;
  Tensor e0 = Tensor::from_vector(first, {1, n}).to(logits.device());  // (1, N): the class token
  Tensor hard = gumbel_sigmoid_st(theta == 0 ? logits : logits - theta, tau, noise);  // (B, N) 0/1
  return keep * (hard * (1.0f - e0) + e0);
}

}  // namespace st
