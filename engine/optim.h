// AdamW with parameter groups, global-norm gradient clipping, and learning
// rate schedules (linear warm-up, then linear or cosine decay).
#pragma once
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace st {

struct ParamGroup {
  std::string name;            // "trimmers", "backbone", "no_decay", ...
  std::vector<Tensor> params;  // leaves with requires_grad
  float lr = 1e-4f;            // base learning rate, scaled by the schedule each step
  float weight_decay = 0.01f;  // decoupled: p -= lr * wd * p
};

struct AdamWConfig {
  float beta1 = 0.9f, beta2 = 0.98f, eps = 1e-8f;
};

class AdamW {
 public:
  AdamW(std::vector<ParamGroup> groups, AdamWConfig config = {});
  // One update with the gradients accumulated so far; lr_scale multiplies
  // every group's lr (the schedule's value). Parameters without a gradient
  // are skipped, as in PyTorch.
  void step(float lr_scale = 1.0f);
  void zero_grad();
  int64_t steps() const { return step_; }
  std::vector<ParamGroup>& groups() { return groups_; }
  // Moments per parameter, in group order (for checkpoints).
  std::vector<Tensor>& first_moments() { return m_; }
  std::vector<Tensor>& second_moments() { return v_; }
  void set_steps(int64_t s) { step_ = s; }
  // Moves the moments to `device` in place, to follow parameters moved there.
  void move_to(Device device);

 private:
  std::vector<ParamGroup> groups_;
  AdamWConfig config_;
  std::vector<Tensor> m_, v_;
  int64_t step_ = 0;
};

// Splits named parameters into a decayed group and a no-decay group: biases,
// LayerNorm weights and every other 1-D tensor get no weight decay.
std::vector<ParamGroup> decay_groups(const std::vector<std::pair<std::string, Tensor>>& named, float lr,
                                     float weight_decay, const std::string& prefix = "");

// Scales all gradients so their joint L2 norm is at most max_norm.
// Returns the norm before clipping.
float clip_grad_norm(const std::vector<Tensor>& params, float max_norm);

enum class Decay { Linear, Cosine, Constant };
// Multiplier of the base lr at `step` (0-based) of `total`: rises linearly
// from 0 over warmup steps (step / warmup), then decays to 0 at `total`
// (or stays at 1): the usual warm-up schedules of BERT-style fine-tuning.
float lr_schedule(int64_t step, int64_t warmup, int64_t total, Decay decay);

}  // namespace st
