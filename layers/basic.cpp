#include "layers/basic.h"

#include "engine/error.h"

namespace st {

Tensor Context::drop(const Tensor& x, float p) const {
  if (!training || p == 0) return x;
  if (!rng) throw ArgumentError("dropout in training mode needs an Rng in the Context");
  return dropout(x, p, *rng, true);
}

Linear::Linear(int in, int out, Rng& rng, float stddev)
    : weight(parameter({out, in}, rng, stddev)), bias(Tensor::zeros({out}).set_requires_grad()) {}

void move_parameters(const NamedParams& params, Device device) {
  for (const auto& [name, t] : params.list) t->move_to(device);
}

void Linear::name(NamedParams& p, const std::string& prefix) {
  p.add(prefix + ".weight", weight);
  p.add(prefix + ".bias", bias);
}

LayerNorm::LayerNorm(int d, float eps_)
    : weight(Tensor::ones({d}).set_requires_grad()), bias(Tensor::zeros({d}).set_requires_grad()), eps(eps_) {}

void LayerNorm::name(NamedParams& p, const std::string& prefix) {
  p.add(prefix + ".weight", weight);
  p.add(prefix + ".bias", bias);
}

Embedding::Embedding(int vocab, int d, Rng& rng, float stddev) : weight(parameter({vocab, d}, rng, stddev)) {}

void Embedding::name(NamedParams& p, const std::string& prefix) { p.add(prefix + ".weight", weight); }

Tensor first_token(const Tensor& x) {
  if (x.rank() != 3) throw ShapeError("first_token: expects (B, N, d), got " + to_string(x.shape()));
  const int64_t b = x.dim(0), n = x.dim(1), d = x.dim(2);
  if (n == 1) return reshape(x, {b, d});
  return reshape(split(x, {1, n - 1}, 1)[0], {b, d});
}

}  // namespace st
