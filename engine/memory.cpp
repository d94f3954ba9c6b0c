#include "engine/memory.h"

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>

namespace st::memory {
namespace {

using FreeLists = std::unordered_map<size_t, std::vector<void*>>;  // size class -> blocks

// Counters shared by every thread; atomics, so the per-thread fast path takes no lock.
struct Counters {
  std::atomic<size_t> in_use{0}, peak{0}, cached{0};
  std::atomic<uint64_t> requests{0}, system_allocs{0};
};

struct SharedCache {
  std::mutex mutex;
  FreeLists free_blocks;
  Counters counters;
};

SharedCache& shared() {
  static SharedCache* c = new SharedCache;  // never destroyed: tensors may outlive static destructors
  return *c;
}

// Each thread keeps a few freed blocks per size class for itself, so the
// threads of a parallel pass (the packed path runs one per thread) do not
// queue on the shared lock for every small tensor. Past kPerThread blocks of
// a class, a freed block goes to the shared cache, where a thread that
// allocates what another frees (a data loader) finds it again.
constexpr size_t kPerThread = 8;

// Set once a thread's cache is gone: tensors with static storage may still be
// freed after it (at exit), and then go straight to the shared cache.
thread_local bool t_cache_gone = false;

struct ThreadCache {
  FreeLists free_blocks;
  ~ThreadCache() {  // a thread that ends hands its blocks to the shared cache
    SharedCache& s = shared();
    std::lock_guard<std::mutex> lock(s.mutex);
    for (auto& [cls, blocks] : free_blocks)
      s.free_blocks[cls].insert(s.free_blocks[cls].end(), blocks.begin(), blocks.end());
    t_cache_gone = true;
  }
};

// This thread's free lists, or null once they are gone.
FreeLists* local() {
  if (t_cache_gone) return nullptr;
  thread_local ThreadCache c;
  return &c.free_blocks;
}

void* pop(FreeLists& lists, size_t cls) {
  auto it = lists.find(cls);
  if (it == lists.end() || it->second.empty()) return nullptr;
  void* p = it->second.back();
  it->second.pop_back();
  return p;
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
  const size_t cls = size_class(bytes);
  SharedCache& s = shared();
  Counters& n = s.counters;
  n.requests++;
  FreeLists* mine = local();
  void* ptr = mine ? pop(*mine, cls) : nullptr;
  if (!ptr) {
    std::lock_guard<std::mutex> lock(s.mutex);
    ptr = pop(s.free_blocks, cls);
  }
  if (ptr) {
    n.cached -= cls;
  } else {
    ptr = std::aligned_alloc(64, cls);
    if (!ptr) throw std::bad_alloc();
    n.system_allocs++;
  }
  const size_t in_use = n.in_use += cls;
  size_t peak = n.peak.load();
  while (in_use > peak && !n.peak.compare_exchange_weak(peak, in_use)) {
  }
  return ptr;
}

void host_free(void* ptr, size_t bytes) {
  if (!ptr) return;
  const size_t cls = size_class(bytes);
  SharedCache& s = shared();
  s.counters.in_use -= cls;
  s.counters.cached += cls;
  if (FreeLists* mine = local()) {
    std::vector<void*>& blocks = (*mine)[cls];
    if (blocks.size() < kPerThread) {
      blocks.push_back(ptr);
      return;
    }
  }
  std::lock_guard<std::mutex> lock(s.mutex);
  s.free_blocks[cls].push_back(ptr);
}

Stats host_stats() {
  const Counters& n = shared().counters;
  Stats out;
  out.in_use = n.in_use, out.peak = n.peak, out.cached = n.cached;
  out.requests = n.requests, out.system_allocs = n.system_allocs;
  return out;
}

void host_reset_peak() {
  Counters& n = shared().counters;
  n.peak = n.in_use.load();
}

void host_release_cache() {
  SharedCache& s = shared();
  auto release = [&](FreeLists& lists) {
    for (auto& [cls, blocks] : lists) {
      for (void* p : blocks) std::free(p);
      s.counters.cached -= cls * blocks.size();
    }
    lists.clear();
  };
  if (FreeLists* mine = local()) release(*mine);
  std::lock_guard<std::mutex> lock(s.mutex);
  release(s.free_blocks);
}

}  // namespace st::memory
