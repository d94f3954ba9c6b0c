#include "engine/tensor.h"

#include <cstring>

#include "engine/autograd.h"
#include "engine/memory.h"
#include "engine/parallel.h"
#include "engine/philox.h"
#ifdef SMARTTRIM_CUDA
#include "cuda/runtime.h"
#endif

namespace st {

std::string to_string(const Shape& s) {
  std::string out = "(";
  for (size_t i = 0; i < s.size(); i++) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + ")";
}

const char* name(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }
const char* name(DType t) { return t == DType::F32 ? "f32" : "i32"; }
size_t dtype_size(DType) { return 4; }

int64_t numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) {
    if (d < 0) throw ShapeError("negative dimension in shape " + to_string(s));
    n *= d;
  }
  return n;
}

Storage::Storage(size_t bytes_, Device device_) : bytes(bytes_), device(device_) {
  if (device == Device::CPU) {
    data = memory::host_alloc(bytes);
  } else {
#ifdef SMARTTRIM_CUDA
    data = cuda::device_alloc(bytes);
#else
    throw DeviceError("this build has no CUDA backend (nvcc was not found at build time)");
#endif
  }
}

Storage::~Storage() {
  if (device == Device::CPU) {
    memory::host_free(data, bytes);
  } else {
#ifdef SMARTTRIM_CUDA
    cuda::device_free(data, bytes);
#endif
  }
}

// --- creation ---------------------------------------------------------------

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  Tensor t;
  t.impl_ = std::make_shared<TensorImpl>();
  t.impl_->shape = shape;
  t.impl_->dtype = dtype;
  t.impl_->storage = std::make_shared<Storage>(size_t(st::numel(shape)) * dtype_size(dtype), device);
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
#ifdef SMARTTRIM_CUDA
  if (device == Device::CUDA) {
    cuda::fill_zero(t.impl_->storage->data, t.impl_->storage->bytes);
    return t;
  }
#endif
  std::memset(t.impl_->storage->data, 0, t.impl_->storage->bytes);
  return t;
}

Tensor Tensor::full(const Shape& shape, float value, Device device) {
  if (device != Device::CPU) return full(shape, value).to(device);
  Tensor t = empty(shape);
  float* p = t.data();
  for (int64_t i = 0, n = t.numel(); i < n; i++) p[i] = value;
  return t;
}

Tensor Tensor::from_vector(const std::vector<float>& values, const Shape& shape) {
  if (int64_t(values.size()) != st::numel(shape))
    throw ShapeError("from_vector: " + std::to_string(values.size()) + " values for shape " + to_string(shape));
  Tensor t = empty(shape);
  if (!values.empty()) std::memcpy(t.data(), values.data(), values.size() * sizeof(float));
  return t;
}

Tensor Tensor::from_ints(const std::vector<int32_t>& values, const Shape& shape) {
  if (int64_t(values.size()) != st::numel(shape))
    throw ShapeError("from_ints: " + std::to_string(values.size()) + " values for shape " + to_string(shape));
  Tensor t = empty(shape, DType::I32);
  if (!values.empty()) std::memcpy(t.ints(), values.data(), values.size() * sizeof(int32_t));
  return t;
}

// Element i is the normal of draws first + 2i and first + 2i + 1, what a
// loop of rng.normal() gives, on any number of threads and with each Philox
// block computed once, not once per draw: a METER-base's random
// initialisation took 22 to 30 s.
Tensor Tensor::randn(const Shape& shape, Rng& rng, float stddev) {
  Tensor t = empty(shape);
  float* p = t.data();
  const int64_t n = t.numel();
  const uint64_t first = rng.take(2 * uint64_t(n)), seed = rng.seed;
  parallel_ranges(n, use_threads(n, 1 << 14), [&](int64_t begin, int64_t end) {
    PhiloxDraws draws(seed, first + 2 * uint64_t(begin));
    for (int64_t i = begin; i < end; i++) {
      const float u1 = draws.next(), u2 = draws.next();
      p[i] = stddev * Rng::box_muller(u1, u2);
    }
  });
  return t;
}

Tensor Tensor::uniform(const Shape& shape, Rng& rng, float low, float high) {
  Tensor t = empty(shape);
  float* p = t.data();
  const int64_t n = t.numel();
  const uint64_t first = rng.take(uint64_t(n)), seed = rng.seed;
  parallel_ranges(n, use_threads(n, 1 << 14), [&](int64_t begin, int64_t end) {
    PhiloxDraws draws(seed, first + uint64_t(begin));  // draw first + i for element i
    for (int64_t i = begin; i < end; i++) p[i] = low + (high - low) * draws.next();
  });
  return t;
}

static thread_local bool skip_init = false;
SkipInit::SkipInit() : previous_(skip_init) { skip_init = true; }
SkipInit::~SkipInit() { skip_init = previous_; }

Tensor parameter(const Shape& shape, Rng& rng, float stddev) {
  Tensor t = skip_init ? Tensor::empty(shape)
             : stddev == 0.0f ? Tensor::zeros(shape)
                              : Tensor::randn(shape, rng, stddev);
  t.set_requires_grad(true);
  return t;
}

// --- description ------------------------------------------------------------

static TensorImpl& checked(const std::shared_ptr<TensorImpl>& impl) {
  if (!impl) throw ArgumentError("use of an undefined tensor");
  return *impl;
}

const Shape& Tensor::shape() const { return checked(impl_).shape; }
int64_t Tensor::numel() const { return st::numel(shape()); }
DType Tensor::dtype() const { return checked(impl_).dtype; }
Device Tensor::device() const { return checked(impl_).storage->device; }

int64_t Tensor::dim(int axis) const {
  int r = rank();
  int a = axis < 0 ? axis + r : axis;
  if (a < 0 || a >= r)
    throw ShapeError("dim(" + std::to_string(axis) + ") of a tensor of shape " + to_string(shape()));
  return shape()[size_t(a)];
}

std::string Tensor::describe() const {
  if (!impl_) return "undefined";
  return std::string(name(dtype())) + to_string(shape()) + " " + name(device());
}

// --- data -------------------------------------------------------------------

static void require_dtype(const Tensor& t, DType want, const char* what) {
  if (t.dtype() != want)
    throw ArgumentError(std::string(what) + ": tensor is " + t.describe() + ", expected " + name(want));
}

float* Tensor::data() {
  require_dtype(*this, DType::F32, "data()");
  return static_cast<float*>(impl_->storage->data);
}
const float* Tensor::data() const {
  require_dtype(*this, DType::F32, "data()");
  return static_cast<const float*>(impl_->storage->data);
}
int32_t* Tensor::ints() {
  require_dtype(*this, DType::I32, "ints()");
  return static_cast<int32_t*>(impl_->storage->data);
}
const int32_t* Tensor::ints() const {
  require_dtype(*this, DType::I32, "ints()");
  return static_cast<const int32_t*>(impl_->storage->data);
}

void* Tensor::raw_data() { return checked(impl_).storage->data; }
const void* Tensor::raw_data() const { return checked(impl_).storage->data; }
size_t Tensor::nbytes() const { return size_t(numel()) * dtype_size(dtype()); }

std::vector<float> Tensor::to_vector() const {
  Tensor host = to(Device::CPU);
  const float* p = host.data();
  return std::vector<float>(p, p + numel());
}

std::vector<int32_t> Tensor::to_ints() const {
  Tensor host = to(Device::CPU);
  const int32_t* p = host.ints();
  return std::vector<int32_t>(p, p + numel());
}

float Tensor::item() const {
  if (numel() != 1) throw ShapeError("item() of a tensor of shape " + to_string(shape()) + " (needs one value)");
  return to_vector()[0];
}

Tensor Tensor::to(Device target) const {
  if (device() == target) return *this;
  Tensor out = empty(shape(), dtype(), target);
#ifdef SMARTTRIM_CUDA
  cuda::copy_bytes(out.impl_->storage->data, target, impl_->storage->data, device(), impl_->storage->bytes);
#endif
  return out;
}

void Tensor::move_to(Device target) {
  if (device() == target) return;
  Tensor moved = to(target);
  impl_->storage = moved.impl_->storage;
  if (impl_->grad.defined()) impl_->grad.move_to(target);
}

void Tensor::copy_from(const Tensor& src) {
  if (src.shape() != shape() || src.dtype() != dtype())
    throw ArgumentError("copy_from: " + src.describe() + " into " + describe() + " (shape and dtype must match)");
  if (nbytes() == 0) return;
  if (device() == Device::CPU && src.device() == Device::CPU) {
    std::memcpy(impl_->storage->data, src.impl_->storage->data, nbytes());
    return;
  }
#ifdef SMARTTRIM_CUDA
  cuda::copy_bytes(impl_->storage->data, device(), src.impl_->storage->data, src.device(), nbytes());
#endif
}

Tensor Tensor::clone() const {
  Tensor out = empty(shape(), dtype(), device());
  if (device() == Device::CPU) {
    std::memcpy(out.impl_->storage->data, impl_->storage->data, impl_->storage->bytes);
  } else {
#ifdef SMARTTRIM_CUDA
    cuda::copy_bytes(out.impl_->storage->data, device(), impl_->storage->data, device(), impl_->storage->bytes);
#endif
  }
  return out;
}

Tensor Tensor::slice_batch(int64_t begin, int64_t end) const {
  if (rank() == 0 || begin < 0 || end < begin || end > dim(0))
    throw ArgumentError("slice_batch: entries [" + std::to_string(begin) + ", " + std::to_string(end) + ") of " +
                        describe());
  Shape part = shape();
  part[0] = end - begin;
  Tensor out = empty(part, dtype(), device());
  const size_t per = dim(0) ? nbytes() / size_t(dim(0)) : 0;
  const char* from = static_cast<const char*>(impl_->storage->data) + size_t(begin) * per;
  if (out.nbytes() == 0) return out;
  if (device() == Device::CPU) {
    std::memcpy(out.impl_->storage->data, from, out.nbytes());
  } else {
#ifdef SMARTTRIM_CUDA
    cuda::copy_bytes(out.impl_->storage->data, device(), from, device(), out.nbytes());
#endif
  }
  return out;
}

Tensor Tensor::view_as_shape(const Shape& new_shape) const {
  if (st::numel(new_shape) != numel())
    throw ShapeError("reshape: cannot view " + to_string(shape()) + " as " + to_string(new_shape));
  Tensor t;
  t.impl_ = std::make_shared<TensorImpl>();
  t.impl_->shape = new_shape;
  t.impl_->dtype = dtype();
  t.impl_->storage = impl_->storage;
  return t;
}

// --- autograd ---------------------------------------------------------------

bool Tensor::requires_grad() const { return checked(impl_).requires_grad; }
bool Tensor::is_leaf() const { return checked(impl_).is_leaf; }
Tensor Tensor::grad() const { return checked(impl_).grad; }
void Tensor::zero_grad() { checked(impl_).grad = Tensor(); }

Tensor& Tensor::set_requires_grad(bool on) {
  TensorImpl& t = checked(impl_);
  if (!t.is_leaf) throw ArgumentError("set_requires_grad: only leaf tensors can change it, not an op's output");
  if (on && t.dtype != DType::F32) throw ArgumentError("set_requires_grad: integer tensors have no gradient");
  t.requires_grad = on;
  return *this;
}

void Tensor::backward() const { st::backward(*this); }

}  // namespace st
