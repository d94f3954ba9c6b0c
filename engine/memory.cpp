#include "engine/memory.h"

#include <cstdlib>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>

namespace st::memory {
namespace {

struct HostCache {
  std::mutex mutex;  // data loaders may allocate from other threads
  std::unordered_map<size_t, std::vector<void*>> free_blocks;  // size class -> blocks
  Stats stats;
};

HostCache& cache() {
  static HostCache* c = new HostCache;  // never destroyed: tensors may outlive static destructors
  return *c;
}

}  // namespace

size_t size_class(size_t bytes) {
  if (bytes == 0) bytes = 1;
  if (bytes <= 65536) return (bytes + 63) / 64 * 64;
  size_t pow2 = 65536;
  while (pow2 * 2 < bytes) pow2 *= 2;  // pow2 < bytes <= 2*pow2
  size_t step = pow2 / 4;
  return (bytes + step - 1) / step * step;
}

void* host_alloc(size_t bytes) {
  size_t cls = size_class(bytes);
  HostCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  c.stats.requests++;
  void* ptr = nullptr;
  auto it = c.free_blocks.find(cls);
  if (it != c.free_blocks.end() && !it->second.empty()) {
    ptr = it->second.back();
    it->second.pop_back();
    c.stats.cached -= cls;
  } else {
    ptr = std::aligned_alloc(64, cls);
    if (!ptr) throw std::bad_alloc();
    c.stats.system_allocs++;
  }
  c.stats.in_use += cls;
  if (c.stats.in_use > c.stats.peak) c.stats.peak = c.stats.in_use;
  return ptr;
}

void host_free(void* ptr, size_t bytes) {
  if (!ptr) return;
  size_t cls = size_class(bytes);
  HostCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  c.free_blocks[cls].push_back(ptr);
  c.stats.in_use -= cls;
  c.stats.cached += cls;
}

Stats host_stats() {
  HostCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  return c.stats;
}

void host_reset_peak() {
  HostCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  c.stats.peak = c.stats.in_use;
}

void host_release_cache() {
  HostCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  for (auto& [cls, blocks] : c.free_blocks)
    for (void* p : blocks) std::free(p);
  c.free_blocks.clear();
  c.stats.cached = 0;
}

}  // namespace st::memory
