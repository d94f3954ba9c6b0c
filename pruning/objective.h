// SmartTrim's training objective (SMARTTRIM.md sections 6, 7 and 9):
//
//   L = L_task(z_S) + alpha L_task(z_T) + lambda_SD L_SD(z_S, z_T) + lambda_cost L_cost
//
// z_S: logits of the trimmed student pass (noisy hard masks), z_T: logits of
// the full-capacity teacher pass with the same weights. L_cost pulls the
// batch's mean FLOPs ratio to the curriculum's target; each example's own
// ratio is free, so easy inputs can keep less than hard ones.
#pragma once
#include <vector>

#include "engine/ops.h"
#include "layers/meter_config.h"
#include "pruning/cost.h"

namespace st {

// rho_b = (sum over passes of pass_flops(counts, with trimmers) + head_flops(task))
//         / full_flops(real text tokens of b, task)                         -> (B,)
// passes: the student's counts, one PassCounts per (image, text) pass (NLVR2: two),
// each count (B,) and differentiable through the straight-through masks.
// text_mask (B, T) 0/1: its row sums are the real text tokens, the unpruned
// model's denominator. The ratio includes the trimmers' own FLOPs, so it can
// slightly exceed 1 when nothing is dropped.
Tensor flops_ratio(const MeterConfig& config, const std::vector<PassCounts<Tensor>>& passes, const Tensor& text_mask,
                   Task task);

// L_cost = (mean_b rho_b - target)^2: rho (B,) -> (1).
Tensor cost_loss(const Tensor& rho, double target);

// The task losses of METER's fine-tuning:
//   VQA: vqa_loss (BCE-with-logits on soft scores, times the number of answers), targets f32 (B, answers);
//   SNLI, ITM, NLVR2: cross-entropy, targets i32 (B).
Tensor task_loss(Task task, const Tensor& logits, const Tensor& targets);

// Self-distillation from the teacher's logits, which are detached here:
//   softmax heads (SNLI, NLVR2, ITM): T^2 KL(softmax(z_T/T) || softmax(z_S/T)), averaged over the batch;
//   the sigmoid VQA head:              BCE(sigmoid(z_S), sigmoid(z_T)), averaged over every entry.
Tensor distillation_loss(Task task, const Tensor& student_logits, const Tensor& teacher_logits,
                         float temperature = 1.0f);

// The weights of the terms and the ablation switch of self-distillation.
struct ObjectiveWeights {
  float alpha = 1.0f;             // the teacher's own task loss
  float lambda_sd = 1.0f;         // self-distillation
  float lambda_cost = 2.0f;       // the FLOPs constraint
  float temperature = 1.0f;       // T of the softmax distillation
  bool self_distillation = true;  // ablation: false drops L_SD
};

// The terms of one step; every loss is (1).
struct ObjectiveTerms {
  Tensor total;
  Tensor task;          // L_task(z_S)
  Tensor teacher_task;  // L_task(z_T); undefined without a teacher
  Tensor distill;       // L_SD; undefined when switched off or without a teacher
  Tensor cost;          // L_cost
  Tensor rho;           // (B,) the per-example FLOPs ratio
};

// The whole objective. teacher_logits may be undefined (no teacher pass:
// alpha = 0 and self-distillation off); then both teacher terms are absent.
ObjectiveTerms smarttrim_objective(const MeterConfig& config, Task task, const Tensor& student_logits,
                                   const Tensor& teacher_logits, const Tensor& targets,
                                   const std::vector<PassCounts<Tensor>>& student_passes, const Tensor& text_mask,
                                   double target, const ObjectiveWeights& weights);

// --- a batch split into shards (the sharded training step)
//
// Every term but L_cost is a mean of what each example contributes on its
// own; L_cost = (mean_b rho_b - target)^2 needs the whole batch. Each shard
// computes its own terms; once every shard's rho is known, shard k's part
//   (n_k / B) (L_task + alpha L_task(z_T) + lambda_SD L_SD)(shard k) + lambda_cost g sum_{b in k} rho_b,
// with the number g = dL_cost / drho_b = 2 (mean_b rho_b - target) / B of
// the whole batch, has the gradient of L with respect to shard k's tensors.
// The parts' gradients add up to L's; their values do not (L_cost enters
// linearly), so the step logs L from the terms.

// task, teacher_task, distill and rho of smarttrim_objective; cost and total undefined.
ObjectiveTerms separable_terms(const MeterConfig& config, Task task, const Tensor& student_logits,
                               const Tensor& teacher_logits, const Tensor& targets,
                               const std::vector<PassCounts<Tensor>>& student_passes, const Tensor& text_mask,
                               const ObjectiveWeights& weights);

// L_task + alpha L_task(z_T) + lambda_SD L_SD: L without its cost term -> (1).
Tensor separable_loss(const ObjectiveTerms& terms, const ObjectiveWeights& weights);

// Shard k's part of L, as above: share = n_k / B, cost_slope = g -> (1).
Tensor shard_objective(const ObjectiveTerms& shard, double share, double cost_slope, const ObjectiveWeights& weights);

}  // namespace st
