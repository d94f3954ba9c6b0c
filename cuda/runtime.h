// The CUDA runtime seam: device discovery, a caching device allocator, the
// stream every kernel runs on, the cuBLAS handle, and copies. Every CUDA
// call is checked; a failure throws st::DeviceError that names the call,
// the file and the line (cuda/check.h).
#pragma once
#include <cstddef>
#include <string>

#include "engine/tensor.h"

namespace st::cuda {

int device_count();              // 0 when there is no GPU or no driver
std::string device_name(int i);  // "NVIDIA H100 80GB HBM3"

void* device_alloc(size_t bytes);
void device_free(void* ptr, size_t bytes);
void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes);
void fill_zero(void* ptr, size_t bytes);  // device memory
void synchronize();                       // waits for every kernel queued so far

struct MemoryStats {
  size_t in_use = 0, peak = 0, cached = 0;
};
MemoryStats memory_stats();

// How float32 GEMMs run: TF32 tensor cores (the default; about 1e-3
// relative error) or exact float32 (for the tests that hold the GPU to the
// CPU within 1e-5).
enum class Math { TF32, F32 };
void set_math(Math math);
Math math();

}  // namespace st::cuda
