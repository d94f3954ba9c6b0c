// Shared by the GPU suites (tests/test_cuda*.cpp): whether to skip them,
// and exact float32 GEMMs for the length of a test.
#pragma once
#ifdef SMARTTRIM_CUDA
#include "cuda/runtime.h"

namespace st::testing {

// doctest::skip(kNoGpu): every GPU case is skipped on a machine without one.
inline const bool kNoGpu = cuda::device_count() == 0;

// Exact float32 GEMMs while a test runs; TF32 again afterwards.
struct ExactMath {
  ExactMath() { cuda::set_math(cuda::Math::F32); }
  ~ExactMath() { cuda::set_math(cuda::Math::TF32); }
};

}  // namespace st::testing
#endif
