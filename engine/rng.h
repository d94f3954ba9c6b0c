// Counter-based random numbers (Philox4x32-10, Salmon et al., SC'11).
//
// A draw is a pure function of (seed, index): element i of a tensor filled
// from offset o is philox_uniform(seed, o + i). The CPU and a GPU kernel can
// therefore produce the same noise in any order, and the whole state of a
// run's generator is two integers (checkpointed with the model).
#pragma once
#include <array>
#include <cstdint>

namespace st {

// Four 32-bit outputs for one 128-bit counter under a 64-bit key.
std::array<uint32_t, 4> philox4x32(uint64_t counter, uint64_t key);

// Uniform in the open interval (0, 1): never 0 or 1, so log(u) and
// log(1 - u) are finite (the Gumbel noise needs both).
float philox_uniform(uint64_t seed, uint64_t index);

// The generator of a run: a seed and the index of the next unused draw.
struct Rng {
  uint64_t seed = 0;
  uint64_t offset = 0;

  explicit Rng(uint64_t seed_ = 0) : seed(seed_) {}
  // Reserves n consecutive draws and returns the index of the first.
  uint64_t take(uint64_t n) {
    uint64_t first = offset;
    offset += n;
    return first;
  }
  float uniform() { return philox_uniform(seed, take(1)); }
  float normal();  // standard normal (Box-Muller on two draws)
  // The normal of two uniform draws u1, u2, as normal() makes it.
  static float box_muller(float u1, float u2);
  // A generator of its own for stream k, a function of (seed, offset, k)
  // only; this one does not move. For work split in parts that draw at once
  // (the sharded training step); the caller then take()s one draw, so the
  // next split differs.
  Rng split(uint64_t stream) const;
};

}  // namespace st
