// What the benchmarks share: the clock, and the device they run on
// (--device cpu|cuda), with a wait for the GPU's queued work so that a timed
// run includes all of it.
#pragma once
#include <chrono>
#include <cstdio>
#include <cstring>

#include "engine/tensor.h"
#ifdef SMARTTRIM_CUDA
#include "cuda/runtime.h"
#endif

namespace st::bench {

inline double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Reads "--device cpu|cuda" at argv[i] (advancing i past the value); false if argv[i] is not that option.
inline bool parse_device(int argc, char** argv, int& i, Device& device) {
  if (std::strcmp(argv[i], "--device") != 0 || i + 1 >= argc) return false;
  if (!std::strcmp(argv[i + 1], "cpu")) device = Device::CPU;
  else if (!std::strcmp(argv[i + 1], "cuda")) device = Device::CUDA;
  else return false;
  i++;
  return true;
}

// Whether `device` can run here; if not, says why (as `program`).
inline bool device_usable(Device device, const char* program) {
  if (device == Device::CPU) return true;
#ifdef SMARTTRIM_CUDA
  if (cuda::device_count() > 0) return true;
  std::fprintf(stderr, "%s: --device cuda: no GPU is available on this machine\n", program);
#else
  std::fprintf(stderr, "%s: --device cuda: this build has no CUDA backend\n", program);
#endif
  return false;
}

// Waits for the GPU's queued work, so a run's time includes it.
inline void finish_queued_work(Device device) {
#ifdef SMARTTRIM_CUDA
  if (device == Device::CUDA) cuda::synchronize();
#else
  (void)device;
#endif
}

}  // namespace st::bench
