#include "engine/autograd.h"

#include <cstring>

#include "engine/kernels.h"
#include "engine/parallel.h"

namespace st {
namespace {
thread_local bool g_grad_enabled = true;
thread_local std::vector<Node> g_tape;
thread_local LeafGradients* g_leaf_gradients = nullptr;  // set by a LeafGradientScope
}  // namespace

bool grad_enabled() { return g_grad_enabled; }
NoGrad::NoGrad() : previous_(g_grad_enabled) { g_grad_enabled = false; }
NoGrad::~NoGrad() { g_grad_enabled = previous_; }

bool needs_grad(std::initializer_list<const Tensor*> inputs) {
  if (!g_grad_enabled) return false;
  for (const Tensor* t : inputs)
    if (t && t->defined() && t->requires_grad()) return true;
  return false;
}

void record(const char* op, Tensor& out, std::function<void(const Tensor&)> backward) {
  out.impl()->requires_grad = true;
  out.impl()->is_leaf = false;
  g_tape.push_back(Node{op, out, std::move(backward)});
}

Tensor& grad_buffer(const Tensor& t) {
  if (g_leaf_gradients && t.is_leaf()) return g_leaf_gradients->part_of(t);
  Tensor& g = t.impl()->grad;
  if (!g.defined()) g = Tensor::zeros(t.shape(), DType::F32, t.device());
  return g;
}

void backward(const Tensor& root) {
  if (root.numel() != 1)
    throw ShapeError("backward: the root must hold one value, got shape " + to_string(root.shape()));
  if (!root.requires_grad())
    throw ArgumentError("backward: the root does not depend on any tensor that requires grad");
  // d root / d root = 1. A leaf root keeps accumulating like any leaf.
  Tensor& seed = root.impl()->grad;
  if (!seed.defined()) seed = Tensor::ones(root.shape(), root.device());
  else ST_KERNEL(root.device(), scale_shift_forward)(seed.data(), seed.data(), 1.0f, 1.0f, 1);  // += 1, on its device
  // Move the tape out first: a failing closure must not leave a half-run graph behind.
  std::vector<Node> tape = std::move(g_tape);
  g_tape.clear();
  for (auto it = tape.rbegin(); it != tape.rend(); ++it) {
    Tensor grad_out = it->out.impl()->grad;
    if (!grad_out.defined()) continue;  // not on a path from the root
    it->backward(grad_out);
    it->out.impl()->grad = Tensor();  // intermediate grads are not kept
  }
}

size_t tape_size() { return g_tape.size(); }
void clear_tape() { g_tape.clear(); }

std::vector<Node> take_tape() {
  std::vector<Node> tape = std::move(g_tape);
  g_tape.clear();
  return tape;
}

void put_tape(std::vector<Node> tape) {
  if (!g_tape.empty()) throw ArgumentError("put_tape: this thread has a recorded graph already");
  g_tape = std::move(tape);
}

Tensor& LeafGradients::part_of(const Tensor& leaf) {
  auto [it, added] = index_.try_emplace(leaf.impl(), parts_.size());
  if (added) parts_.emplace_back(leaf, Tensor::zeros(leaf.shape(), DType::F32, leaf.device()));
  return parts_[it->second].second;
}

// Each part goes to a different leaf, so on the CPU the parts are shared out among the threads.
void LeafGradients::add_to_leaves() {
  int64_t elements = 0;
  bool on_cpu = true;
  for (const auto& [leaf, part] : parts_) elements += part.numel(), on_cpu = on_cpu && part.device() == Device::CPU;
  parallel_jobs(int64_t(parts_.size()), on_cpu && use_threads(elements, 1 << 16), [&](int64_t i) {
    auto& [leaf, part] = parts_[size_t(i)];
    Tensor& g = leaf.impl()->grad;
    if (!g.defined()) g = part;
    else ST_KERNEL(g.device(), scale_backward)(g.data(), part.data(), 1.0f, g.numel());  // g += part
  });
  parts_.clear();
  index_.clear();
}

LeafGradientScope::LeafGradientScope(LeafGradients& into) : previous_(g_leaf_gradients) { g_leaf_gradients = &into; }
LeafGradientScope::~LeafGradientScope() { g_leaf_gradients = previous_; }

}  // namespace st
