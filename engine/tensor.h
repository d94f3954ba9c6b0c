// Tensor: a shape, a dtype, a device and a reference-counted buffer.
//
// Tensors are contiguous and row-major, always. There are no strides: an op
// that needs a transpose either takes a flag (matmul) or makes an explicit
// copy (permute_0213). A Tensor is a cheap handle; copies share the buffer.
//
// Autograd state lives here too (requires_grad, grad) but the machinery that
// records and replays operations is in autograd.h.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/error.h"
#include "engine/rng.h"

namespace st {

enum class Device { CPU, CUDA };
enum class DType { F32, I32 };  // float32 values; int32 indices (token ids, targets, gather rows)

const char* name(Device d);
const char* name(DType t);
size_t dtype_size(DType t);
int64_t numel(const Shape& s);

// A block of memory on one device, returned to its allocator's cache when
// the last tensor using it goes away.
struct Storage {
  void* data = nullptr;
  size_t bytes = 0;
  Device device = Device::CPU;
  Storage(size_t bytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
};

struct TensorImpl;

class Tensor {
 public:
  Tensor() = default;  // undefined: defined() is false

  // --- creation
  static Tensor empty(const Shape& shape, DType dtype = DType::F32, Device device = Device::CPU);
  static Tensor zeros(const Shape& shape, DType dtype = DType::F32, Device device = Device::CPU);
  static Tensor full(const Shape& shape, float value, Device device = Device::CPU);
  static Tensor ones(const Shape& shape, Device device = Device::CPU) { return full(shape, 1.0f, device); }
  static Tensor from_vector(const std::vector<float>& values, const Shape& shape);
  static Tensor from_ints(const std::vector<int32_t>& values, const Shape& shape);
  static Tensor randn(const Shape& shape, Rng& rng, float stddev = 1.0f);
  static Tensor uniform(const Shape& shape, Rng& rng, float low, float high);

  // --- description
  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const;
  int rank() const { return int(shape().size()); }
  int64_t dim(int axis) const;  // negative axes count from the end
  int64_t numel() const;
  DType dtype() const;
  Device device() const;
  std::string describe() const;  // "f32(2, 3, 5) cpu"

  // --- data (a device pointer for CUDA tensors)
  float* data();
  const float* data() const;
  int32_t* ints();
  const int32_t* ints() const;
  void* raw_data();              // the buffer, whatever the dtype (files, copies)
  const void* raw_data() const;
  size_t nbytes() const;         // numel * dtype size
  std::vector<float> to_vector() const;    // copy to host (f32 only)
  std::vector<int32_t> to_ints() const;    // copy to host (i32 only)
  float item() const;                      // the one value of a 1-element f32 tensor
  Tensor to(Device device) const;          // a copy on another device (or this tensor)
  Tensor clone() const;                    // a copy that shares nothing, not recorded for autograd
  // A copy of entries [begin, end) of the first dimension (a batch's
  // examples), on the same device, not recorded for autograd.
  Tensor slice_batch(int64_t begin, int64_t end) const;
  // Moves the buffer to another device in place: every handle that shares
  // this tensor (a model's and an optimizer's) sees the move. Its gradient
  // moves with it.
  void move_to(Device device);
  // Copies src's values into this buffer (same shape and dtype; any two devices).
  void copy_from(const Tensor& src);

  // --- autograd
  bool requires_grad() const;
  Tensor& set_requires_grad(bool on = true);  // only on leaves (tensors no op produced)
  bool is_leaf() const;
  Tensor grad() const;  // undefined until a backward pass reaches this tensor
  void zero_grad();     // drops the accumulated gradient
  void backward() const;  // this must hold one value; see autograd.h

  // Same buffer, new shape (numel must match). Internal: ops use reshape().
  Tensor view_as_shape(const Shape& shape) const;

  TensorImpl* impl() const { return impl_.get(); }
  bool same_as(const Tensor& other) const { return impl_ == other.impl_; }

 private:
  std::shared_ptr<TensorImpl> impl_;
};

struct TensorImpl {
  Shape shape;
  DType dtype = DType::F32;
  std::shared_ptr<Storage> storage;
  bool requires_grad = false;
  bool is_leaf = true;
  Tensor grad;
};

// A parameter: a leaf that requires gradients, drawn from N(0, stddev^2)
// (zeros when stddev is 0).
Tensor parameter(const Shape& shape, Rng& rng, float stddev);

// Inside this scope parameter() leaves values uninitialised and draws
// nothing: for models whose weights are about to come from a file, so a
// METER-base is not filled with 300M random numbers first. Per thread.
class SkipInit {
 public:
  SkipInit();
  ~SkipInit();
  SkipInit(const SkipInit&) = delete;
  SkipInit& operator=(const SkipInit&) = delete;

 private:
  bool previous_;
};

}  // namespace st
