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
#include <unordered_map>
#include <utility>
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

// A graph recorded on one thread and finished later, on any thread: the
// sharded training step records each shard's forward pass, waits for every
// shard's (the cost loss needs the whole batch), then runs the backward passes.
std::vector<Node> take_tape();          // this thread's tape, which is left empty
void put_tape(std::vector<Node> tape);  // becomes this thread's tape, which must be empty

// Gradients of leaves (parameters) kept apart from the leaves. While a
// LeafGradientScope is alive on a thread, the backward passes run there add
// each leaf's gradient into its LeafGradients instead of the leaf's own grad,
// so threads can run backward passes over the same parameters at once and
// add their parts afterwards, in an order that does not depend on timing.
class LeafGradients {
 public:
  // Each leaf's grad += its part here (a leaf without one takes the part as
  // it is); the parts are then gone.
  void add_to_leaves();
  size_t size() const { return parts_.size(); }

 private:
  friend Tensor& grad_buffer(const Tensor& t);
  Tensor& part_of(const Tensor& leaf);  // zero-filled on first use
  std::vector<std::pair<Tensor, Tensor>> parts_;  // (leaf, its gradient part), in the order first reached
  std::unordered_map<const TensorImpl*, size_t> index_;
};

class LeafGradientScope {
 public:
  explicit LeafGradientScope(LeafGradients& into);
  ~LeafGradientScope();
  LeafGradientScope(const LeafGradientScope&) = delete;
  LeafGradientScope& operator=(const LeafGradientScope&) = delete;

 private:
  LeafGradients* previous_;
};

}  // namespace st
