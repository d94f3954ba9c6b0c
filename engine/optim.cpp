#include "engine/optim.h"

#include <cmath>
#include <vector>

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

// One step of every parameter that has a gradient (cpu::adamw_update). Most
// of METER's parameters are too small to split, so on the CPU the tensors
// themselves are shared out among the threads; each element's update is the
// same whichever thread makes it.
void AdamW::step(float lr_scale) {
  step_++;
  const float b1 = config_.beta1, b2 = config_.beta2;
  const float c1 = 1.0f - std::pow(b1, float(step_)), c2 = 1.0f - std::pow(b2, float(step_));
  struct Update {
    Tensor* p;
    float* m;
    float* v;
    float lr, decay;
  };
  std::vector<Update> updates;
  int64_t elements = 0;
  bool on_cpu = true;
  size_t slot = 0;
  for (ParamGroup& g : groups_) {
    const float lr = g.lr * lr_scale, decay = 1.0f - lr * g.weight_decay;
    for (Tensor& p : g.params) {
      float* m = m_[slot].data();
      float* v = v_[slot].data();
      slot++;
      if (!p.grad().defined()) continue;
      updates.push_back({&p, m, v, lr, decay});
      elements += p.numel();
      on_cpu = on_cpu && p.device() == Device::CPU;
    }
  }
  parallel_jobs(int64_t(updates.size()), on_cpu && use_threads(elements, 1 << 16), [&](int64_t i) {
    const Update& u = updates[size_t(i)];
    ST_KERNEL(u.p->device(), adamw_update)(u.p->data(), u.m, u.v, u.p->grad().data(), u.p->numel(), u.lr, u.decay,
                                           b1, b2, c1, c2, config_.eps);
  });
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

namespace {
// sum of d[i]^2 in double, in eight interleaved partial sums (so the loop
// vectorises; the order is fixed, so the result is too)
double sum_of_squares(const float* d, int64_t n) {
  double part[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; j++) part[j] += double(d[i + j]) * d[i + j];
  double sq = 0;
  for (; i < n; i++) sq += double(d[i]) * d[i];
  for (double p : part) sq += p;
  return sq;
}
}  // namespace

// The gradients' global L2 norm; where it is above max_norm, every gradient
// is scaled by max_norm / norm. On the CPU each tensor's sum of squares is
// taken on some thread and the sums are added in parameter order, so the
// norm does not depend on the number of threads.
float clip_grad_norm(const std::vector<Tensor>& params, float max_norm) {
  std::vector<Tensor> grads;
  int64_t elements = 0;
  bool on_cpu = true;
  for (const Tensor& p : params)
    if (Tensor g = p.grad(); g.defined()) {
      grads.push_back(g);
      elements += g.numel();
      on_cpu = on_cpu && g.device() == Device::CPU;
    }
  const int64_t n = int64_t(grads.size());
  const bool threads = on_cpu && use_threads(elements, 1 << 16);
  std::vector<double> squares(grads.size(), 0.0);
  parallel_jobs(n, threads, [&](int64_t i) {
    const Tensor& g = grads[size_t(i)];
    if (g.device() == Device::CPU) squares[size_t(i)] = sum_of_squares(g.data(), g.numel());
  });
  double sq = 0.0;
  Tensor device_sq;  // GPU gradients: their squares summed on the GPU, read back once
  for (int64_t i = 0; i < n; i++) {
    const Tensor& g = grads[size_t(i)];
    if (g.device() == Device::CPU) {
      sq += squares[size_t(i)];
      continue;
    }
    NoGrad no_grad;
    Tensor s = sum_all(g * g);
    device_sq = device_sq.defined() ? device_sq + s : s;
  }
  if (device_sq.defined()) sq += double(device_sq.item());
  const float norm = float(std::sqrt(sq));
  if (norm > max_norm && norm > 0.0f) {
    const float scale = max_norm / (norm + 1e-6f);
    parallel_jobs(n, threads, [&](int64_t i) {
      Tensor& g = grads[size_t(i)];
      ST_KERNEL(g.device(), scale_shift_forward)(g.data(), g.data(), scale, 0.0f, g.numel());  // in place
    });
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
