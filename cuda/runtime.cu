#include "cuda/runtime.h"

#include <cuda_runtime.h>

#include <mutex>
#include <unordered_map>
#include <vector>

#include "engine/memory.h"

namespace st::cuda {
namespace {

void check(cudaError_t status, const char* call, const char* file, int line) {
  if (status != cudaSuccess)
    throw DeviceError(std::string(call) + " failed at " + file + ":" + std::to_string(line) + ": " +
                      cudaGetErrorString(status));
}
#define CUDA_CHECK(call) check((call), #call, __FILE__, __LINE__)

// cudaMalloc synchronises the device and is slow: freed blocks are kept in
// the same size classes as host memory and reused.
struct DeviceCache {
  std::mutex mutex;
  std::unordered_map<size_t, std::vector<void*>> free_blocks;
  MemoryStats stats;
};
DeviceCache& cache() {
  static DeviceCache* c = new DeviceCache;
  return *c;
}

}  // namespace

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

std::string device_name(int i) {
  cudaDeviceProp prop;
  CUDA_CHECK(cudaGetDeviceProperties(&prop, i));
  return prop.name;
}

void* device_alloc(size_t bytes) {
  size_t cls = memory::size_class(bytes);
  DeviceCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  void* ptr = nullptr;
  auto it = c.free_blocks.find(cls);
  if (it != c.free_blocks.end() && !it->second.empty()) {
    ptr = it->second.back();
    it->second.pop_back();
    c.stats.cached -= cls;
  } else {
    if (device_count() == 0) throw DeviceError("a CUDA tensor was requested but no GPU is available");
    CUDA_CHECK(cudaMalloc(&ptr, cls));
  }
  c.stats.in_use += cls;
  if (c.stats.in_use > c.stats.peak) c.stats.peak = c.stats.in_use;
  return ptr;
}

void device_free(void* ptr, size_t bytes) {
  if (!ptr) return;
  size_t cls = memory::size_class(bytes);
  DeviceCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  c.free_blocks[cls].push_back(ptr);
  c.stats.in_use -= cls;
  c.stats.cached += cls;
}

void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes) {
  cudaMemcpyKind kind = dst_device == Device::CPU ? (src_device == Device::CPU ? cudaMemcpyHostToHost : cudaMemcpyDeviceToHost)
                                                  : (src_device == Device::CPU ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToDevice);
  CUDA_CHECK(cudaMemcpy(dst, src, bytes, kind));
}

MemoryStats memory_stats() {
  DeviceCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  return c.stats;
}

}  // namespace st::cuda
