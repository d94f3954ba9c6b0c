// ST_HOST_DEVICE marks a small function that both backends compile: the
// CPU kernels call it from C++, the CUDA kernels from device code.
#pragma once

#ifdef __CUDACC__
#define ST_HOST_DEVICE __host__ __device__
#else
#define ST_HOST_DEVICE
#endif
