// Reverse-mode automatic differentiation with a define-by-run tape.
//
// Each op that has an input requiring gradients appends one Node to the
// tape: its output and a closure that, given the output's gradient,
// accumulates the inputs' gradients (dinp += ..., as in llm.c). backward()
// walks the tape from the end; recording order is a topological order, so
// every node sees its output's complete gradient before it runs.
//
// backward() consumes the tape: afterwards the graph is freed and only leaf
// tensors (parameters, inputs created with requires_grad) keep their grads,
// which accumulate over calls until zero_grad().
#pragma once
#include <functional>
#include <vector>

#include "engine/tensor.h"

namespace st {

struct Node {
  const char* op;
  Tensor out;
  std::function<void(const Tensor& grad_out)> backward;
};

// Grad mode is per thread. NoGrad turns recording off for a scope.
bool grad_enabled();
class NoGrad {
 public:
  NoGrad();
  ~NoGrad();
  NoGrad(const NoGrad&) = delete;
  NoGrad& operator=(const NoGrad&) = delete;

 private:
  bool previous_;
};

// True when an op with these inputs must be recorded.
bool needs_grad(std::initializer_list<const Tensor*> inputs);

// Records `out` as produced by `op`. Call only when needs_grad(...) is true.
void record(const char* op, Tensor& out, std::function<void(const Tensor& grad_out)> backward);

// The gradient buffer of t, created zero-filled on first use; backward
// kernels add into it.
Tensor& grad_buffer(const Tensor& t);

void backward(const Tensor& root);  // root must hold exactly one value
size_t tape_size();
void clear_tape();  // drops a recorded graph without running it

}  // namespace st
