#include "engine/optim.h"

#include <cmath>

#include "engine/error.h"
#include "engine/kernels.h"
#include "engine/ops.h"
#include "engine/parallel.h"

namespace st {

namespace cpu {
// Per element, with bias corrections c1 = 1 - beta1^t, c2 = 1 - beta2^t:
//   p -= lr * wd * p                      (decoupled decay, before the moment step)
//   m = beta1 m + (1 - beta1) g,  v = beta2 v + (1 - beta2) g^2
//   p -= lr * (m / c1) / (sqrt(v / c2) + eps)
void adamw_update(float* w, float* m, float* v, const float* g, int64_t n, float lr, float decay, float beta1,
                  float beta2, float c1, float c2, float eps) {
  simd_for(n, use_threads(n, 1 << 16), [&](int64_t i) {
    m[i] = beta1 * m[i] + (1.0f - beta1) * g[i];
    v[i] = beta2 * v[i] + (1.0f - beta2) * g[i] * g[i];
    w[i] = w[i] * decay - lr * (m[i] / c1) / (std::sqrt(v[i] / c2) + eps);
  });
}
}  // namespace cpu

AdamW::AdamW(std::vector<ParamGroup> groups, AdamWConfig config) : groups_(std::move(groups)), config_(config) {
  for (const ParamGroup& g : groups_)
    for (const Tensor& p : g.params) {
      if (!p.defined() || !p.requires_grad() || !p.is_leaf())
        throw ArgumentError("AdamW: group '" + g.name + "' holds a tensor that is not a trainable leaf");
      m_.push_back(Tensor::zeros(p.shape(), DType::F32, p.device()));
      v_.push_back(Tensor::zeros(p.shape(), DType::F32, p.device()));
    }
}

// One step of every parameter that has a gradient (cpu::adamw_update).
void AdamW::step(float lr_scale) {
  step_++;
  const float b1 = config_.beta1, b2 = config_.beta2;
  const float c1 = 1.0f - std::pow(b1, float(step_)), c2 = 1.0f - std::pow(b2, float(step_));
  size_t slot = 0;
  for (ParamGroup& g : groups_) {
    const float lr = g.lr * lr_scale, decay = 1.0f - lr * g.weight_decay;
    for (Tensor& p : g.params) {
      Tensor grad = p.grad();
      float* m = m_[slot].data();
      float* v = v_[slot].data();
      slot++;
      if (!grad.defined()) continue;
      ST_KERNEL(p.device(), adamw_update)(p.data(), m, v, grad.data(), p.numel(), lr, decay, b1, b2, c1, c2,
                                          config_.eps);
    }
  }
}

void AdamW::move_to(Device device) {
  for (Tensor& m : m_) m.move_to(device);
  for (Tensor& v : v_) v.move_to(device);
}

void AdamW::zero_grad() {
  for (ParamGroup& g : groups_)
    for (Tensor& p : g.params) p.zero_grad();
}

std::vector<ParamGroup> decay_groups(const std::vector<std::pair<std::string, Tensor>>& named, float lr,
                                     float weight_decay, const std::string& prefix) {
  ParamGroup decayed{prefix + "decay", {}, lr, weight_decay};
  ParamGroup plain{prefix + "no_decay", {}, lr, 0.0f};
  for (const auto& [name, p] : named) (p.rank() <= 1 ? plain : decayed).params.push_back(p);
  return {decayed, plain};
}

float clip_grad_norm(const std::vector<Tensor>& params, float max_norm) {
  double sq = 0.0;
  Tensor device_sq;  // GPU gradients: their squares summed on the GPU, read back once
  for (const Tensor& p : params) {
    Tensor g = p.grad();
    if (!g.defined()) continue;
    if (g.device() != Device::CPU) {
      NoGrad no_grad;
      Tensor s = sum_all(g * g);
      device_sq = device_sq.defined() ? device_sq + s : s;
      continue;
    }
    const float* d = g.data();
    for (int64_t i = 0, n = g.numel(); i < n; i++) sq += double(d[i]) * d[i];
  }
  if (device_sq.defined()) sq += double(device_sq.item());
  float norm = float(std::sqrt(sq));
  if (norm > max_norm && norm > 0.0f) {
    float scale = max_norm / (norm + 1e-6f);
    for (const Tensor& p : params) {
      Tensor g = p.grad();
      if (!g.defined()) continue;
      ST_KERNEL(g.device(), scale_shift_forward)(g.data(), g.data(), scale, 0.0f, g.numel());  // in place
    }
  }
  return norm;
}

float lr_schedule(int64_t step, int64_t warmup, int64_t total, Decay decay) {
  if (total <= 0 || warmup < 0) throw ArgumentError("lr_schedule: needs total > 0 and warmup >= 0");
  if (step < warmup) return float(step) / float(warmup);
  if (decay == Decay::Constant) return 1.0f;
  if (step >= total) return 0.0f;
  float progress = float(step - warmup) / float(std::max<int64_t>(1, total - warmup));
  if (decay == Decay::Linear) return 1.0f - progress;
  return 0.5f * (1.0f + std::cos(3.14159265358979f * progress));
}

}  // namespace st
