// Losses. Each returns one value (shape (1)) and its backward scales by the
// upstream gradient dloss. Reductions follow PyTorch's defaults so numbers
// can be compared with the reference implementations.
#include <cmath>
#include <limits>

#include "engine/ops/common.h"

namespace st {
namespace cpu {

static float row_logsumexp(const float* x, int C) {
  float m = -std::numeric_limits<float>::infinity();
  for (int c = 0; c < C; c++) m = std::max(m, x[c]);
  float s = 0.0f;
  for (int c = 0; c < C; c++) s += std::exp(x[c] - m);
  return m + std::log(s);
}

// mean_b (logsumexp(z_b) - z_b[t_b])
void cross_entropy_forward(float* loss, const float* logits, const int32_t* targets, int B, int C) {
  double total = 0.0;
  for (int b = 0; b < B; b++) {
    const float* z = logits + int64_t(b) * C;
    total += row_logsumexp(z, C) - z[targets[b]];
  }
  *loss = float(total / B);
}

// dz_b = (softmax(z_b) - onehot(t_b)) / B
void cross_entropy_backward(float* dlogits, float dloss, const float* logits, const int32_t* targets, int B, int C) {
  for (int b = 0; b < B; b++) {
    const float* z = logits + int64_t(b) * C;
    float lse = row_logsumexp(z, C), g = dloss / float(B);
    for (int c = 0; c < C; c++) dlogits[int64_t(b) * C + c] += g * (std::exp(z[c] - lse) - (c == targets[b]));
  }
}

// mean_i max(x,0) - x t + log(1 + exp(-|x|)), the stable form of
// -[t log sigmoid(x) + (1 - t) log(1 - sigmoid(x))]
void bce_with_logits_forward(float* loss, const float* logits, const float* targets, int64_t n) {
  double total = 0.0;
  for (int64_t i = 0; i < n; i++) {
    float x = logits[i];
    total += std::max(x, 0.0f) - x * targets[i] + std::log1p(std::exp(-std::fabs(x)));
  }
  *loss = float(total / double(n));
}

// dx = (sigmoid(x) - t) / n,  dt = -x / n
void bce_with_logits_backward(float* dlogits, float* dtargets, float dloss, const float* logits, const float* targets,
                              int64_t n) {
  float g = dloss / float(n);
  for (int64_t i = 0; i < n; i++) {
    if (dlogits) dlogits[i] += g * (1.0f / (1.0f + std::exp(-logits[i])) - targets[i]);
    if (dtargets) dtargets[i] -= g * logits[i];
  }
}

// sum_{b,c} p (log p - logq) / B, with 0 log 0 = 0
void kl_div_forward(float* loss, const float* logq, const float* p, int B, int C) {
  double total = 0.0;
  for (int64_t i = 0; i < int64_t(B) * C; i++)
    if (p[i] > 0.0f) total += p[i] * (std::log(p[i]) - logq[i]);
  *loss = float(total / B);
}

// dlogq = -p / B,  dp = (log p + 1 - logq) / B   (p > 0)
void kl_div_backward(float* dlogq, float* dp, float dloss, const float* logq, const float* p, int B, int C) {
  float g = dloss / float(B);
  for (int64_t i = 0; i < int64_t(B) * C; i++) {
    if (dlogq) dlogq[i] -= g * p[i];
    if (dp && p[i] > 0.0f) dp[i] += g * (std::log(p[i]) + 1.0f - logq[i]);
  }
}

void mse_forward(float* loss, const float* a, const float* b, int64_t n) {
  double total = 0.0;
  for (int64_t i = 0; i < n; i++) total += double(a[i] - b[i]) * double(a[i] - b[i]);
  *loss = float(total / double(n));
}

void mse_backward(float* da, float* db, float dloss, const float* a, const float* b, int64_t n) {
  float g = 2.0f * dloss / float(n);
  for (int64_t i = 0; i < n; i++) {
    if (da) da[i] += g * (a[i] - b[i]);
    if (db) db[i] -= g * (a[i] - b[i]);
  }
}

}  // namespace cpu

static float upstream(const Tensor& dloss) { return dloss.item(); }

Tensor cross_entropy(const Tensor& logits, const Tensor& targets) {
  const char* op = "cross_entropy";
  Device dev = common_device(op, {&logits, &targets});
  require_f32(op, logits, "logits");
  require_i32(op, targets, "targets");
  if (logits.rank() != 2 || targets.rank() != 1 || targets.dim(0) != logits.dim(0) || logits.dim(0) == 0 ||
      logits.dim(1) == 0)
    shape_error(op, "expects logits (B, C) and targets (B) with B, C > 0, got " + to_string(logits.shape()) + " and " +
                        to_string(targets.shape()));
  int B = int(logits.dim(0)), C = int(logits.dim(1));
  std::vector<int32_t> t = targets.to_ints();
  for (int b = 0; b < B; b++)
    if (t[size_t(b)] < 0 || t[size_t(b)] >= C)
      throw ArgumentError("cross_entropy: target " + std::to_string(t[size_t(b)]) + " of example " +
                          std::to_string(b) + " is not a class in [0, " + std::to_string(C) + ")");
  Tensor loss = Tensor::empty({1}, DType::F32, dev);
  ST_KERNEL(dev, cross_entropy_forward)(loss.data(), logits.data(), targets.ints(), B, C);
  if (needs_grad({&logits})) {
    record(op, loss, [logits, targets, B, C, dev](const Tensor& dloss) {
      ST_KERNEL(dev, cross_entropy_backward)(grad_buffer(logits).data(), upstream(dloss), logits.data(),
                                             targets.ints(), B, C);
    });
  }
  return loss;
}

// The two operands of an element-wise loss must have the same, non-empty shape.
static Device same_shape_operands(const char* op, const Tensor& a, const Tensor& b) {
  Device dev = common_device(op, {&a, &b});
  require_f32(op, a, "first operand");
  require_f32(op, b, "second operand");
  if (a.shape() != b.shape() || a.numel() == 0)
    shape_error(op, "operands must have the same non-empty shape, got " + to_string(a.shape()) + " and " +
                        to_string(b.shape()));
  return dev;
}

Tensor bce_with_logits(const Tensor& logits, const Tensor& targets) {
  const char* op = "bce_with_logits";
  Device dev = same_shape_operands(op, logits, targets);
  Tensor loss = Tensor::empty({1}, DType::F32, dev);
  ST_KERNEL(dev, bce_with_logits_forward)(loss.data(), logits.data(), targets.data(), logits.numel());
  if (needs_grad({&logits, &targets})) {
    record(op, loss, [logits, targets, dev](const Tensor& dloss) {
      float* dx = logits.requires_grad() ? grad_buffer(logits).data() : nullptr;
      float* dt = targets.requires_grad() ? grad_buffer(targets).data() : nullptr;
      ST_KERNEL(dev, bce_with_logits_backward)(dx, dt, upstream(dloss), logits.data(), targets.data(), logits.numel());
    });
  }
  return loss;
}

Tensor kl_div(const Tensor& student_log_probs, const Tensor& teacher_probs) {
  const char* op = "kl_div";
  Device dev = same_shape_operands(op, student_log_probs, teacher_probs);
  if (student_log_probs.rank() != 2) shape_error(op, "expects (B, C), got " + to_string(student_log_probs.shape()));
  int B = int(student_log_probs.dim(0)), C = int(student_log_probs.dim(1));
  Tensor loss = Tensor::empty({1}, DType::F32, dev);
  ST_KERNEL(dev, kl_div_forward)(loss.data(), student_log_probs.data(), teacher_probs.data(), B, C);
  if (needs_grad({&student_log_probs, &teacher_probs})) {
    record(op, loss, [student_log_probs, teacher_probs, B, C, dev](const Tensor& dloss) {
      float* dq = student_log_probs.requires_grad() ? grad_buffer(student_log_probs).data() : nullptr;
      float* dp = teacher_probs.requires_grad() ? grad_buffer(teacher_probs).data() : nullptr;
      ST_KERNEL(dev, kl_div_backward)(dq, dp, upstream(dloss), student_log_probs.data(), teacher_probs.data(), B, C);
    });
  }
  return loss;
}

Tensor mse(const Tensor& a, const Tensor& b) {
  const char* op = "mse";
  Device dev = same_shape_operands(op, a, b);
  Tensor loss = Tensor::empty({1}, DType::F32, dev);
  ST_KERNEL(dev, mse_forward)(loss.data(), a.data(), b.data(), a.numel());
  if (needs_grad({&a, &b})) {
    record(op, loss, [a, b, dev](const Tensor& dloss) {
      float* da = a.requires_grad() ? grad_buffer(a).data() : nullptr;
      float* db = b.requires_grad() ? grad_buffer(b).data() : nullptr;
      ST_KERNEL(dev, mse_backward)(da, db, upstream(dloss), a.data(), b.data(), a.numel());
    });
  }
  return loss;
}

}  // namespace st
