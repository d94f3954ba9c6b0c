// Philox4x32-10 (Salmon et al., SC'11), written once for the CPU and the
// GPU: a CUDA kernel calls the same functions, so both devices draw the
// same numbers for the same (seed, index).
#pragma once
#include <cstdint>

#include "engine/host_device.h"

namespace st {

struct Philox4 {
  uint32_t v[4];
};

// Four 32-bit outputs for one 128-bit counter (the low 64 bits given) under a 64-bit key.
ST_HOST_DEVICE inline Philox4 philox4x32_10(uint64_t counter, uint64_t key) {
  // Round constants from the Philox paper.
  const uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;
  const uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  uint32_t c0 = uint32_t(counter), c1 = uint32_t(counter >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = uint32_t(key), k1 = uint32_t(key >> 32);
  for (int round = 0; round < 10; round++) {
    uint64_t p0 = uint64_t(M0) * c0, p1 = uint64_t(M1) * c2;
    uint32_t n0 = uint32_t(p1 >> 32) ^ c1 ^ k0, n1 = uint32_t(p1);
    uint32_t n2 = uint32_t(p0 >> 32) ^ c3 ^ k1, n3 = uint32_t(p0);
    c0 = n0, c1 = n1, c2 = n2, c3 = n3;
    k0 += W0, k1 += W1;
  }
  return {{c0, c1, c2, c3}};
}

// A word of a block as a uniform: its top 24 bits, centred in their bucket,
// (0.5 .. 2^24-0.5) / 2^24.
ST_HOST_DEVICE inline float uniform_from_bits(uint32_t bits) {
  return (float(bits >> 8) + 0.5f) * (1.0f / 16777216.0f);
}

// Uniform in the open interval (0, 1): never 0 or 1, so log(u) and
// log(1 - u) are finite (the Gumbel noise needs both). Draw `index` of the
// stream `seed`: word index % 4 of the block for counter index / 4.
ST_HOST_DEVICE inline float philox_uniform_at(uint64_t seed, uint64_t index) {
  return uniform_from_bits(philox4x32_10(index / 4, seed).v[index % 4]);
}

// Consecutive draws of one stream, each block of four computed once
// (philox_uniform_at computes a whole block for every draw).
class PhiloxDraws {
 public:
  ST_HOST_DEVICE PhiloxDraws(uint64_t seed, uint64_t first) : seed_(seed), next_(first) {}
  // Draw `first`, then first + 1, ...: philox_uniform_at(seed, index) for each.
  ST_HOST_DEVICE float next() {
    if (next_ / 4 != block_index_) block_index_ = next_ / 4, block_ = philox4x32_10(block_index_, seed_);
    return uniform_from_bits(block_.v[next_++ % 4]);
  }

 private:
  uint64_t seed_, next_;
  uint64_t block_index_ = ~uint64_t(0);  // none yet
  Philox4 block_{};
};

}  // namespace st
