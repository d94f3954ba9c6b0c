#include "pruning/objective.h"

#include <cmath>

#include "engine/error.h"
#include "layers/meter.h"

namespace st {

namespace {

const char* task_name(Task task) {
  switch (task) {
    case Task::None: return "none";
    case Task::VQA: return "VQA";
    case Task::SNLI: return "SNLI";
    case Task::ITM: return "ITM";
    case Task::Rank: return "Rank";
    case Task::NLVR2: return "NLVR2";
  }
  return "?";
}

bool softmax_head(Task task) { return task == Task::SNLI || task == Task::ITM || task == Task::NLVR2; }

}  // namespace

Tensor flops_ratio(const MeterConfig& config, const std::vector<PassCounts<Tensor>>& passes, const Tensor& text_mask,
                   Task task) {
  const size_t want = task == Task::NLVR2 ? 2 : 1;
  if (passes.size() != want)
    throw ArgumentError(std::string("flops_ratio: task ") + task_name(task) + " has " + std::to_string(want) +
                        " pass(es), got counts of " + std::to_string(passes.size()));
  if (text_mask.rank() != 2)
    throw ShapeError("flops_ratio: expects text_mask (B, T), got " + to_string(text_mask.shape()));
  const int64_t b = text_mask.dim(0), t = text_mask.dim(1);

  // Numerator (B,): what the trimmed passes execute, trimmers included, plus the head.
  Tensor executed = pass_flops(config, passes[0], /*with_trimmers=*/true);
  for (size_t i = 1; i < passes.size(); i++) executed = executed + pass_flops(config, passes[i], true);
  executed = executed + float(head_flops(config, task));
  if (executed.rank() != 1 || executed.dim(0) != b)
    throw ShapeError("flops_ratio: counts give FLOPs " + to_string(executed.shape()) + ", the text mask " +
                     to_string(text_mask.shape()));

  // Denominator (B,): the unpruned model on each example's real tokens (a constant).
  const std::vector<float> mask = text_mask.to_vector();
  std::vector<float> full(static_cast<size_t>(b));
  for (int64_t i = 0; i < b; i++) {
    double real = 0;
    for (int64_t j = 0; j < t; j++) real += mask[size_t(i * t + j)];
    full[size_t(i)] = float(full_flops(config, int(std::lround(real)), task));
  }
  return executed / Tensor::from_vector(full, {b}).to(executed.device());
}

Tensor cost_loss(const Tensor& rho, double target) {
  if (rho.rank() != 1) throw ShapeError("cost_loss: expects rho (B,), got " + to_string(rho.shape()));
  Tensor gap = mean_all(rho) - float(target);  // (1)
  return gap * gap;
}

Tensor task_loss(Task task, const Tensor& logits, const Tensor& targets) {
  if (task == Task::VQA) return vqa_loss(logits, targets);
  if (softmax_head(task)) return cross_entropy(logits, targets);
  throw ArgumentError(std::string("task_loss: no classification loss for task ") + task_name(task));
}

Tensor distillation_loss(Task task, const Tensor& student_logits, const Tensor& teacher_logits, float temperature) {
  if (student_logits.shape() != teacher_logits.shape())
    throw ShapeError("distillation_loss: student logits " + to_string(student_logits.shape()) + " and teacher logits " +
                     to_string(teacher_logits.shape()) + " differ");
  const Tensor teacher = detach(teacher_logits);  // the teacher is a target here, not trained by L_SD
  if (task == Task::VQA) return bce_with_logits(student_logits, sigmoid(teacher));
  if (!softmax_head(task))
    throw ArgumentError(std::string("distillation_loss: no distillation for task ") + task_name(task));
  if (!(temperature > 0)) throw ArgumentError("distillation_loss: temperature must be > 0");
  const float inv = 1.0f / temperature;
  Tensor kl = kl_div(log_softmax(student_logits * inv), softmax(teacher * inv));
  return temperature == 1.0f ? kl : kl * (temperature * temperature);
}

ObjectiveTerms separable_terms(const MeterConfig& config, Task task, const Tensor& student_logits,
                               const Tensor& teacher_logits, const Tensor& targets,
                               const std::vector<PassCounts<Tensor>>& student_passes, const Tensor& text_mask,
                               const ObjectiveWeights& w) {
  ObjectiveTerms out;
  out.task = task_loss(task, student_logits, targets);
  out.rho = flops_ratio(config, student_passes, text_mask, task);
  if (teacher_logits.defined()) {
    out.teacher_task = task_loss(task, teacher_logits, targets);
    if (w.self_distillation) out.distill = distillation_loss(task, student_logits, teacher_logits, w.temperature);
  }
  return out;
}

Tensor separable_loss(const ObjectiveTerms& t, const ObjectiveWeights& w) {
  Tensor total = t.task;
  if (t.teacher_task.defined() && w.alpha != 0) total = total + t.teacher_task * w.alpha;
  if (t.distill.defined()) total = total + t.distill * w.lambda_sd;
  return total;
}

ObjectiveTerms smarttrim_objective(const MeterConfig& config, Task task, const Tensor& student_logits,
                                   const Tensor& teacher_logits, const Tensor& targets,
                                   const std::vector<PassCounts<Tensor>>& student_passes, const Tensor& text_mask,
                                   double target, const ObjectiveWeights& w) {
  ObjectiveTerms out = separable_terms(config, task, student_logits, teacher_logits, targets, student_passes,
                                       text_mask, w);
  out.cost = cost_loss(out.rho, target);
  out.total = separable_loss(out, w) + out.cost * w.lambda_cost;
  return out;
}

Tensor shard_objective(const ObjectiveTerms& shard, double share, double cost_slope, const ObjectiveWeights& w) {
  return separable_loss(shard, w) * float(share) + sum_all(shard.rho) * float(double(w.lambda_cost) * cost_slope);
}

}  // namespace st
