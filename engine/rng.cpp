#include "engine/rng.h"

#include <cmath>

#include "engine/philox.h"

namespace st {

std::array<uint32_t, 4> philox4x32(uint64_t counter, uint64_t key) {
  const Philox4 r = philox4x32_10(counter, key);
  return {r.v[0], r.v[1], r.v[2], r.v[3]};
}

float philox_uniform(uint64_t seed, uint64_t index) { return philox_uniform_at(seed, index); }

float Rng::box_muller(float u1, float u2) {
  return std::sqrt(-2.0f * std::log(u1)) * std::cos(6.283185307179586f * u2);
}

float Rng::normal() {
  const float u1 = uniform(), u2 = uniform();
  return box_muller(u1, u2);
}

Rng Rng::split(uint64_t stream) const {
  // The key of the stream is the draw at `offset`; the stream picks the
  // counter under that key.
  const Philox4 at = philox4x32_10(offset, seed);
  const Philox4 key = philox4x32_10(stream, (uint64_t(at.v[0]) << 32) | at.v[1]);
  return Rng((uint64_t(key.v[0]) << 32) | key.v[1]);
}

}  // namespace st
