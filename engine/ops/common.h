// Shared by the op files: argument checks that name the op and the shapes,
// and small shape helpers. The kernel dispatch (ST_KERNEL) is in engine/kernels.h.
#pragma once
#include <string>

#include "engine/kernels.h"
#include "engine/ops.h"
#include "engine/parallel.h"

namespace st {

[[noreturn]] inline void shape_error(const char* op, const std::string& what) {
  throw ShapeError(std::string(op) + ": " + what);
}

// Every tensor defined, float32 unless said otherwise, and on one device.
inline Device common_device(const char* op, std::initializer_list<const Tensor*> ts) {
  const Tensor* first = nullptr;
  for (const Tensor* t : ts) {
    if (!t->defined()) throw ArgumentError(std::string(op) + ": an input tensor is undefined");
    if (!first) first = t;
    if (t->device() != first->device())
      throw DeviceError(std::string(op) + ": tensors on different devices: " + first->describe() +
                        " and " + t->describe());
  }
  return first->device();
}

inline void require_f32(const char* op, const Tensor& t, const char* role) {
  if (t.dtype() != DType::F32)
    throw ArgumentError(std::string(op) + ": " + role + " must be f32, got " + t.describe());
}
inline void require_i32(const char* op, const Tensor& t, const char* role) {
  if (t.dtype() != DType::I32)
    throw ArgumentError(std::string(op) + ": " + role + " must be i32, got " + t.describe());
}

// Normalises a possibly negative axis against a rank.
inline int resolve_axis(const char* op, int axis, int rank) {
  int a = axis < 0 ? axis + rank : axis;
  if (a < 0 || a >= rank)
    shape_error(op, "axis " + std::to_string(axis) + " out of range for rank " + std::to_string(rank));
  return a;
}

// Number of rows when the last dim is the row: (..., n) -> prod(...).
inline int64_t rows_of(const Tensor& x) { return x.rank() == 0 ? 1 : x.numel() / x.dim(-1); }

}  // namespace st
