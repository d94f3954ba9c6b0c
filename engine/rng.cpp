#include "engine/rng.h"

#include <cmath>

namespace st {

std::array<uint32_t, 4> philox4x32(uint64_t counter, uint64_t key) {
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
  return {c0, c1, c2, c3};
}

float philox_uniform(uint64_t seed, uint64_t index) {
  uint32_t bits = philox4x32(index / 4, seed)[index % 4];
  // 24 random bits, centred in their bucket: (0.5 .. 2^24-0.5) / 2^24.
  return (float(bits >> 8) + 0.5f) * (1.0f / 16777216.0f);
}

float Rng::normal() {
  float u1 = uniform(), u2 = uniform();
  return std::sqrt(-2.0f * std::log(u1)) * std::cos(6.283185307179586f * u2);
}

}  // namespace st
