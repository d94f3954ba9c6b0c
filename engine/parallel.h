// When an op's loop runs on every thread, and how it is split.
//
// Each op decides from the size of its work whether waking the other threads
// pays. A loop that stays on one thread must not enter an OpenMP region at
// all: entering one costs about 0.26 us even when its `if` clause turns the
// threads off, and about 0.45 us inside another region (OpenMP builds a team
// of one for it), which is more than a small op's own work. Inside a parallel
// region (the packed path runs a whole pass on each thread) every loop stays
// on its thread.
#pragma once
#include <omp.h>

#include <cstdint>

namespace st {

// Whether `work` is above the caller's `threshold` and other threads are free to share it.
inline bool use_threads(int64_t work, int64_t threshold) {
  return work > threshold && omp_get_max_threads() > 1 && !omp_in_parallel();
}

// body(begin, end) over contiguous ranges that cover [0, n): one range per
// thread when `threads`, else a single call with (0, n).
template <class Body>
void parallel_ranges(int64_t n, bool threads, const Body& body) {
  if (!threads) {
    body(int64_t(0), n);
    return;
  }
#pragma omp parallel
  {
    const int64_t t = omp_get_thread_num(), count = omp_get_num_threads();
    body(n * t / count, n * (t + 1) / count);
  }
}

// body(i) for every i in [0, n), in equal contiguous shares when `threads`.
template <class Body>
void parallel_for(int64_t n, bool threads, const Body& body) {
  parallel_ranges(n, threads, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; i++) body(i);
  });
}

// f(i) for every i in [0, n), vectorised (`omp simd`), in equal contiguous
// shares when `threads`.
template <class F>
void simd_for(int64_t n, bool threads, const F& f) {
  parallel_ranges(n, threads, [&](int64_t begin, int64_t end) {
#pragma omp simd
    for (int64_t i = begin; i < end; i++) f(i);
  });
}

// body(i) for jobs of uneven cost: handed out one at a time when `threads`.
template <class Body>
void parallel_jobs(int64_t n, bool threads, const Body& body) {
  if (!threads) {
    for (int64_t i = 0; i < n; i++) body(i);
    return;
  }
#pragma omp parallel for schedule(dynamic)
  for (int64_t i = 0; i < n; i++) body(i);
}

}  // namespace st
