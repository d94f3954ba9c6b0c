// Ops that draw random numbers: dropout and the Gumbel-sigmoid
// straight-through mask. Neither stores its noise: draw i is
// philox_uniform(seed, offset + i), so the backward pass draws it again.
#include <cmath>

#include "engine/ops/common.h"

namespace st {
namespace cpu {

void dropout_forward(float* out, const float* x, float p, uint64_t seed, uint64_t offset, int64_t n) {
  float scale = 1.0f / (1.0f - p);
  parallel_for(n, use_threads(n, 1 << 14), [&](int64_t i) {
    out[i] = philox_uniform(seed, offset + uint64_t(i)) < p ? 0.0f : x[i] * scale;
  });
}

void dropout_backward(float* dx, const float* dout, float p, uint64_t seed, uint64_t offset, int64_t n) {
  float scale = 1.0f / (1.0f - p);
  parallel_for(n, use_threads(n, 1 << 14), [&](int64_t i) {
    if (philox_uniform(seed, offset + uint64_t(i)) >= p) dx[i] += dout[i] * scale;
  });
}

// The soft relaxation y = sigmoid((s + L) / tau) of element i.
static inline float gumbel_soft(float s, float tau, bool noise, uint64_t seed, uint64_t index) {
  float L = 0.0f;
  if (noise) {
    float u = philox_uniform(seed, index);
    L = std::log(u) - std::log1p(-u);
  }
  return 1.0f / (1.0f + std::exp(-(s + L) / tau));
}

void gumbel_sigmoid_st_forward(float* mask, const float* logits, float tau, bool noise, uint64_t seed,
                               uint64_t offset, int64_t n) {
  parallel_for(n, use_threads(n, 1 << 14), [&](int64_t i) {
    mask[i] = gumbel_soft(logits[i], tau, noise, seed, offset + uint64_t(i)) > 0.5f ? 1.0f : 0.0f;
  });
}

// Straight-through: d mask / d s := d y / d s = y (1 - y) / tau.
void gumbel_sigmoid_st_backward(float* dlogits, const float* dmask, const float* logits, float tau, bool noise,
                                uint64_t seed, uint64_t offset, int64_t n) {
  parallel_for(n, use_threads(n, 1 << 14), [&](int64_t i) {
    float y = gumbel_soft(logits[i], tau, noise, seed, offset + uint64_t(i));
    dlogits[i] += dmask[i] * y * (1.0f - y) / tau;
  });
}

}  // namespace cpu

Tensor dropout(const Tensor& x, float p, Rng& rng, bool training) {
  const char* op = "dropout";
  Device dev = common_device(op, {&x});
  require_f32(op, x, "x");
  if (!(p >= 0.0f && p < 1.0f)) throw ArgumentError("dropout: p must be in [0, 1), got " + std::to_string(p));
  if (!training || p == 0.0f) return x;
  uint64_t seed = rng.seed, offset = rng.take(uint64_t(x.numel()));
  Tensor out = Tensor::empty(x.shape(), DType::F32, dev);
  ST_KERNEL(dev, dropout_forward)(out.data(), x.data(), p, seed, offset, x.numel());
  if (needs_grad({&x})) {
    record(op, out, [x, p, seed, offset, dev](const Tensor& dout) {
      ST_KERNEL(dev, dropout_backward)(grad_buffer(x).data(), dout.data(), p, seed, offset, x.numel());
    });
  }
  return out;
}

Tensor gumbel_sigmoid_st(const Tensor& logits, float tau, Rng* rng) {
  const char* op = "gumbel_sigmoid_st";
  Device dev = common_device(op, {&logits});
  require_f32(op, logits, "logits");
  if (!(tau > 0.0f)) throw ArgumentError("gumbel_sigmoid_st: temperature must be positive, got " + std::to_string(tau));
  bool noise = rng != nullptr;
  uint64_t seed = noise ? rng->seed : 0, offset = noise ? rng->take(uint64_t(logits.numel())) : 0;
  Tensor mask = Tensor::empty(logits.shape(), DType::F32, dev);
  ST_KERNEL(dev, gumbel_sigmoid_st_forward)(mask.data(), logits.data(), tau, noise, seed, offset, logits.numel());
  if (needs_grad({&logits})) {
    record(op, mask, [logits, tau, noise, seed, offset, dev](const Tensor& dmask) {
      ST_KERNEL(dev, gumbel_sigmoid_st_backward)(grad_buffer(logits).data(), dmask.data(), logits.data(), tau, noise,
                                                 seed, offset, logits.numel());
    });
  }
  return mask;
}

}  // namespace st
