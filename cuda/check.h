// Error checks for every CUDA runtime and cuBLAS call and every kernel
// launch. A failure throws st::DeviceError naming the call, the file and
// the line, e.g.
//   cudaMalloc(&ptr, bytes) failed at cuda/runtime.cu:61: out of memory
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>

#include "engine/error.h"

namespace st::cuda {

inline void check(cudaError_t status, const char* call, const char* file, int line) {
  if (status == cudaSuccess) return;
  // Clear the runtime's last error, or the next launch check would report this
  // failure as its own (a sticky error, a fault in a kernel, stays anyway).
  cudaGetLastError();
  throw DeviceError(std::string(call) + " failed at " + file + ":" + std::to_string(line) + ": " +
                    cudaGetErrorString(status));
}

inline void check(cublasStatus_t status, const char* call, const char* file, int line) {
  if (status != CUBLAS_STATUS_SUCCESS)
    throw DeviceError(std::string(call) + " failed at " + file + ":" + std::to_string(line) + ": " +
                      cublasGetStatusString(status));
}

// After a <<<...>>> launch: a bad configuration is reported here, a fault
// inside the kernel at the next synchronising call.
inline void check_launch(const char* kernel, const char* file, int line) {
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess)
    throw DeviceError(std::string("launch of ") + kernel + " failed at " + file + ":" + std::to_string(line) + ": " +
                    cudaGetErrorString(status));
}

}  // namespace st::cuda

#define CUDA_CHECK(call) ::st::cuda::check((call), #call, __FILE__, __LINE__)
#define CUBLAS_CHECK(call) ::st::cuda::check((call), #call, __FILE__, __LINE__)
#define CUDA_CHECK_LAUNCH(kernel) ::st::cuda::check_launch((kernel), __FILE__, __LINE__)
