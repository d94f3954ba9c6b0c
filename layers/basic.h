// The smallest layers: Linear, LayerNorm, Embedding; how a model names its
// parameters; and the forward context (training or eval, and the RNG that
// dropout draws from).
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "engine/ops.h"
#include "engine/rng.h"
#include "engine/tensor.h"

namespace st {

// Every parameter of a model under its checkpoint name, in a fixed order.
// The names are the ones the original PyTorch model uses, so a converted file
// can be compared with its source checkpoint name by name.
struct NamedParams {
  std::vector<std::pair<std::string, Tensor*>> list;
  void add(const std::string& name, Tensor& t) { list.emplace_back(name, &t); }
};

// Moves every parameter to `device` in place (Tensor::move_to), so an
// optimizer already holding them keeps working; move its state too (AdamW::move_to).
void move_parameters(const NamedParams& params, Device device);

// What a forward pass needs besides its inputs.
struct Context {
  bool training = false;  // dropout on
  Rng* rng = nullptr;     // dropout's randomness; required when training with dropout > 0
  Tensor drop(const Tensor& x, float p) const;
};

struct Linear {
  Tensor weight;  // (out, in), as PyTorch stores it
  Tensor bias;    // (out)
  Linear() = default;
  Linear(int in, int out, Rng& rng, float stddev = 0.02f);
  Tensor forward(const Tensor& x) const { return linear(x, weight, bias); }  // (..., in) -> (..., out)
  // act(x W^T + b), the bias and the activation in one pass
  Tensor forward(const Tensor& x, Activation act) const { return linear_act(x, weight, bias, act); }
  void name(NamedParams& p, const std::string& prefix);  // prefix.weight, prefix.bias
};

struct LayerNorm {
  Tensor weight, bias;  // (d)
  float eps = 1e-5f;
  LayerNorm() = default;
  LayerNorm(int d, float eps);
  Tensor forward(const Tensor& x) const { return layernorm(x, weight, bias, eps); }
  // LayerNorm(x + residual), the sum and the normalisation in one pass (Add & Norm)
  Tensor forward(const Tensor& x, const Tensor& residual) const {
    return add_layernorm(x, residual, weight, bias, eps);
  }
  void name(NamedParams& p, const std::string& prefix);
};

struct Embedding {
  Tensor weight;  // (V, d)
  Embedding() = default;
  Embedding(int vocab, int d, Rng& rng, float stddev = 0.02f);
  Tensor forward(const Tensor& ids) const { return embedding(ids, weight); }  // i32 (...) -> (..., d)
  void name(NamedParams& p, const std::string& prefix);  // prefix.weight
};

// (B, N, d) -> (B, d): the first token of every example (a class token).
Tensor first_token(const Tensor& x);

}  // namespace st
