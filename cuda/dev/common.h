// Shared by the dev drivers (cuda/dev/*.cu): error checks that end the
// program with the call, file and line, buffers in and out of the GPU, a
// timer, and the few runtime pieces the library's kernels call (each driver
// #includes the library's .cu file it compares against, so it builds alone:
// nvcc -I. cuda/dev/NAME.cu, no other file of the project to link).
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CHECK_CUDA(call)                                                                                      \
  do {                                                                                                        \
    cudaError_t err_ = (call);                                                                                \
    if (err_ != cudaSuccess) {                                                                                \
      std::fprintf(stderr, "%s failed at %s:%d: %s\n", #call, __FILE__, __LINE__, cudaGetErrorString(err_)); \
      std::exit(1);                                                                                           \
    }                                                                                                         \
  } while (0)

// After a <<<...>>> launch: a bad configuration shows here, a fault inside
// the kernel at the next synchronising call (which CHECK_CUDA also checks).
#define CHECK_LAUNCH(kernel)                                                                         \
  do {                                                                                               \
    cudaError_t err_ = cudaGetLastError();                                                           \
    if (err_ != cudaSuccess) {                                                                       \
      std::fprintf(stderr, "launch of %s failed at %s:%d: %s\n", kernel, __FILE__, __LINE__,        \
                   cudaGetErrorString(err_));                                                        \
      std::exit(1);                                                                                  \
    }                                                                                                \
  } while (0)

// The runtime the library's kernels expect (cuda/runtime.cu has the real
// one): the default stream, and scratch memory straight from cudaMalloc.
namespace st::cuda {
cudaStream_t stream() { return nullptr; }
void* device_alloc(size_t bytes) {
  void* ptr = nullptr;
  CHECK_CUDA(cudaMalloc(&ptr, std::max<size_t>(bytes, 1)));
  return ptr;
}
void device_free(void* ptr, size_t) { CHECK_CUDA(cudaFree(ptr)); }
}  // namespace st::cuda

namespace dev {

constexpr double kHbmBytesPerSecond = 3.35e12;  // H100 SXM HBM3
constexpr double kFp32FlopsPerSecond = 67e12;   // H100 SXM FP32 FMA

inline float* alloc(size_t count) { return static_cast<float*>(st::cuda::device_alloc(count * sizeof(float))); }

inline float* to_device(const std::vector<float>& host) {
  float* ptr = alloc(host.size());
  CHECK_CUDA(cudaMemcpy(ptr, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice));
  return ptr;
}

inline std::vector<float> to_host(const float* ptr, size_t count) {
  std::vector<float> host(count);
  CHECK_CUDA(cudaMemcpy(host.data(), ptr, count * sizeof(float), cudaMemcpyDeviceToHost));
  return host;
}

// max |got - want| and max |want| over an output; a value that is not finite
// (an unwritten NaN) makes the error infinite.
struct MaxError {
  double diff = 0.0, ref = 0.0;
  void add(float got, double want) {
    diff = std::isfinite(got) ? std::max(diff, std::fabs(double(got) - want)) : INFINITY;
    ref = std::max(ref, std::fabs(want));
  }
  double relative() const { return ref > 0.0 ? diff / ref : diff; }
};

// Milliseconds per call of launch(): a few warm-up calls, then `repeats` back to back.
template <class F>
float time_ms(int repeats, F launch) {
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  for (int i = 0; i < 3; i++) launch();
  CHECK_CUDA(cudaEventRecord(start));
  for (int i = 0; i < repeats; i++) launch();
  CHECK_CUDA(cudaEventRecord(stop));
  CHECK_CUDA(cudaEventSynchronize(stop));
  float ms = 0.0f;
  CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
  CHECK_CUDA(cudaEventDestroy(start));
  CHECK_CUDA(cudaEventDestroy(stop));
  return ms / float(repeats);
}

// The command line every driver takes: [version (0: every one)] [repeats].
// Exits 2 with the usage when either is out of range.
struct Args {
  int only = 0, repeats = 20;
};
inline Args parse_args(int argc, char** argv, int versions) {
  Args a;
  if (argc > 1) a.only = std::atoi(argv[1]);
  if (argc > 2) a.repeats = std::atoi(argv[2]);
  if (argc > 3 || a.only < 0 || a.only > versions || a.repeats < 1) {
    std::fprintf(stderr, "usage: %s [version 1..%d, 0 for all] [repeats >= 1]\n", argv[0], versions);
    std::exit(2);
  }
  return a;
}

// "device: NAME, N SMs, its peak memory bandwidth" on one line (the
// bandwidth from the memory clock and bus width, when the driver gives them).
inline void print_device() {
  int device = 0;
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDevice(&device));
  CHECK_CUDA(cudaGetDeviceProperties(&prop, device));
  std::printf("device: %s, %d SMs", prop.name, prop.multiProcessorCount);
  int mem_khz = 0;
  if (cudaDeviceGetAttribute(&mem_khz, cudaDevAttrMemoryClockRate, device) != cudaSuccess) {
    mem_khz = 0;
    (void)cudaGetLastError();  // not sticky, but clear it
  }
  if (mem_khz > 0 && prop.memoryBusWidth > 0)  // 2 transfers a clock over the bus
    std::printf(", %.0f GB/s peak memory bandwidth (memory clock x bus width)",
                2.0 * mem_khz * 1e3 * (prop.memoryBusWidth / 8.0) * 1e-9);
  std::printf("\n");
}

}  // namespace dev
