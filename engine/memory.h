// A caching allocator for host memory. Training and inference loops ask for
// the same sizes step after step; freed blocks are kept in size classes and
// handed out again, so the hot path does not call the system allocator. A
// few blocks per class stay with the thread that freed them, so threads
// working side by side rarely wait for the shared cache's lock.
// Blocks are 64-byte aligned (one cache line, one AVX-512 vector).
#pragma once
#include <cstddef>
#include <cstdint>

namespace st::memory {

void* host_alloc(size_t bytes);
void host_free(void* ptr, size_t bytes);  // bytes: the size given to host_alloc

struct Stats {
  size_t in_use = 0;       // bytes handed out and not yet freed (rounded to size class)
  size_t peak = 0;         // high-water mark of in_use
  size_t cached = 0;       // bytes held in the free lists
  uint64_t requests = 0;   // host_alloc calls
  uint64_t system_allocs = 0;  // of those, how many reached the system allocator
};
Stats host_stats();
void host_reset_peak();
// Returns the cached blocks to the system: the shared cache's and the calling
// thread's (each thread keeps up to 8 freed blocks per size class of its own).
void host_release_cache();

// The size class a request is served from: exact multiples of 64 bytes up
// to 64 KiB, then 4 classes per power of two (at most 25% waste), so slowly
// varying sizes (packed batches) still reuse blocks.
size_t size_class(size_t bytes);

}  // namespace st::memory
