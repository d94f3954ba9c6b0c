#include "cuda/runtime.h"

#include <cstring>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "cuda/check.h"
#include "cuda/launch.h"
#include "engine/memory.h"

namespace st::cuda {
namespace {

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

Math g_math = Math::TF32;

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

// One stream for every kernel, cuBLAS call and copy, so they run in the
// order the host issued them. It is a blocking stream: it also waits for
// work on the legacy default stream, and that stream for it.
cudaStream_t stream() {
  static cudaStream_t s = [] {
    if (device_count() == 0) throw DeviceError("a CUDA kernel was requested but no GPU is available");
    cudaStream_t created;
    CUDA_CHECK(cudaStreamCreate(&created));
    return created;
  }();
  return s;
}

cublasHandle_t cublas() {
  static cublasHandle_t h = [] {
    cublasHandle_t created;
    CUBLAS_CHECK(cublasCreate(&created));
    CUBLAS_CHECK(cublasSetStream(created, stream()));
    CUBLAS_CHECK(cublasSetMathMode(created, g_math == Math::TF32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
    return created;
  }();
  return h;
}

void set_math(Math m) {
  g_math = m;
  if (device_count() > 0)
    CUBLAS_CHECK(cublasSetMathMode(cublas(), m == Math::TF32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
}
Math math() { return g_math; }

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
    if (cudaMalloc(&ptr, cls) != cudaSuccess) {
      // Out of memory with blocks of other sizes cached: give them back and try once more.
      cudaGetLastError();
      CUDA_CHECK(cudaStreamSynchronize(stream()));  // no queued kernel may still use them
      for (auto& [size, blocks] : c.free_blocks)
        for (void* block : blocks) CUDA_CHECK(cudaFree(block));
      c.free_blocks.clear();
      c.stats.cached = 0;
      CUDA_CHECK(cudaMalloc(&ptr, cls));
    }
  }
  c.stats.in_use += cls;
  if (c.stats.in_use > c.stats.peak) c.stats.peak = c.stats.in_use;
  return ptr;
}

// A freed block may still be read by a queued kernel; that is safe because
// every later use of the block is queued on the same stream behind it.
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
  if (dst_device == Device::CPU && src_device == Device::CPU) {
    std::memcpy(dst, src, bytes);
    return;
  }
  cudaMemcpyKind kind = dst_device == Device::CPU ? cudaMemcpyDeviceToHost
                        : src_device == Device::CPU ? cudaMemcpyHostToDevice
                                                    : cudaMemcpyDeviceToDevice;
  CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, kind, stream()));
  // The host may read (or free) its side as soon as this returns.
  if (kind != cudaMemcpyDeviceToDevice) CUDA_CHECK(cudaStreamSynchronize(stream()));
}

void fill_zero(void* ptr, size_t bytes) { CUDA_CHECK(cudaMemsetAsync(ptr, 0, bytes, stream())); }

void synchronize() { CUDA_CHECK(cudaStreamSynchronize(stream())); }

MemoryStats memory_stats() {
  DeviceCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  return c.stats;
}

}  // namespace st::cuda
