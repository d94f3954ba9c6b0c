// The kernels: plain functions on raw buffers, no autograd, no Tensor.
// engine/kernel_list.inc is the backend interface: the CPU kernels
// (namespace st::cpu, engine/ops/) and the CUDA kernels (namespace
// st::cuda, cuda/) are declared from that one list, so the two backends
// have the same functions with the same signatures, and the ops pick one by
// device (ST_KERNEL, at the end of this file).
//
// Conventions, as in llm.c: `_forward` writes its outputs; `_backward`
// ADDS into the gradients it is given (dinp += ...), and skips any that
// are null (inputs that need no gradient). Pointers are host memory for
// st::cpu and device memory for st::cuda.
#pragma once
#include <cstdint>
#include <string>

#include "engine/error.h"
#include "engine/tensor.h"

namespace st::cpu {

enum class Binary { Add, Sub, Mul, Div };
enum class Unary { Exp, Log, Tanh, Sigmoid, Gelu, QuickGelu, Silu, Relu };

// Broadcast geometry of out = a (op) b, with size-1 dims already coalesced:
// `rank` dims of sizes `size`, and element strides of a and b (0 where broadcast).
struct Broadcast {
  static constexpr int kMaxRank = 8;
  int rank = 0;
  int64_t size[kMaxRank] = {};
  int64_t stride_a[kMaxRank] = {};
  int64_t stride_b[kMaxRank] = {};
  int64_t numel() const;
};
#include "engine/kernel_list.inc"

}  // namespace st::cpu

#ifdef SMARTTRIM_CUDA
namespace st::cuda {
using cpu::Binary;
using cpu::Broadcast;
using cpu::Unary;
#include "engine/kernel_list.inc"
}  // namespace st::cuda
#endif

namespace st {

// The dispatch seam: the kernel of `name` for a device, st::cpu::<name> or
// st::cuda::<name> (the same signature, from engine/kernel_list.inc). In a
// build without CUDA, asking for a GPU kernel is a DeviceError, not a crash.
#ifdef SMARTTRIM_CUDA
#define ST_KERNEL(device, name) ((device) == ::st::Device::CUDA ? ::st::cuda::name : ::st::cpu::name)
#else
inline void require_cpu(Device d, const char* kernel) {
  if (d != Device::CPU)
    throw DeviceError(std::string(kernel) + ": this build has no CUDA backend (nvcc was not found at build time)");
}
#define ST_KERNEL(device, name) (::st::require_cpu((device), #name), ::st::cpu::name)
#endif

}  // namespace st
