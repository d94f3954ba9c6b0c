// The CUDA runtime seam: device discovery, a caching device allocator, and
// copies. Every CUDA call is checked; a failure throws st::DeviceError that
// names the call, the file and the line.
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

struct MemoryStats {
  size_t in_use = 0, peak = 0, cached = 0;
};
MemoryStats memory_stats();

}  // namespace st::cuda
