// The CPU packed attention (engine/ops/packed_attention.cpp) against a
// float64 loop, on random inputs of odd sizes: segments and heads on both
// sides of the direct kernel's limits (64 keys, 32 columns) (so both of its paths run), partial
// vectors, one-row and empty segments, cross-attention (other keys than
// queries) and head masks, whose dropped heads must be left unwritten.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "engine/kernels.h"
#include "engine/rng.h"

namespace {

constexpr float kSentinel = 12345.0f;  // ctx before the call: dropped heads must keep it

std::vector<int32_t> offsets(const std::vector<int>& rows) {
  std::vector<int32_t> at(rows.size() + 1, 0);
  for (size_t b = 0; b < rows.size(); b++) at[b + 1] = at[b] + rows[b];
  return at;
}

// max |got - want| / max |want| over every written entry; dropped heads must hold the sentinel.
double attention_error(const std::vector<int>& q_rows, const std::vector<int>& k_rows, int H, int head_dim,
                       bool mask, uint64_t seed) {
  const int B = int(q_rows.size());
  const int64_t d = int64_t(H) * head_dim;
  const std::vector<int32_t> q_at = offsets(q_rows), k_at = offsets(k_rows);
  st::Rng rng(seed);
  auto draw = [&](int64_t n) {
    std::vector<float> x(static_cast<size_t>(n));
    for (float& v : x) v = 2.0f * rng.uniform() - 1.0f + (rng.uniform() < 0.5f ? 0.25f : -0.25f);  // away from 0
    return x;
  };
  const std::vector<float> q = draw(q_at[B] * d), k = draw(k_at[B] * d), v = draw(k_at[B] * d);
  std::vector<float> keep(size_t(B * H), 1.0f);
  if (mask)
    for (size_t i = 0; i < keep.size(); i++) keep[i] = (i * 7 + seed) % 3 == 0 ? 0.0f : 1.0f;
  std::vector<float> ctx(size_t(q_at[B] * d), kSentinel);
  st::cpu::packed_attention_forward(ctx.data(), q.data(), k.data(), v.data(), q_at.data(), k_at.data(),
                                    mask ? keep.data() : nullptr, B, H, head_dim);
  double diff = 0, scale = 0;
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++)
      for (int i = q_at[b]; i < q_at[b + 1]; i++) {
        const float* out = ctx.data() + i * d + h * head_dim;
        if (keep[size_t(b * H + h)] == 0.0f) {
          for (int c = 0; c < head_dim; c++)
            if (out[c] != kSentinel) return INFINITY;
          continue;
        }
        std::vector<double> s;
        double mx = -INFINITY;
        for (int j = k_at[b]; j < k_at[b + 1]; j++) {
          double dot = 0;
          for (int c = 0; c < head_dim; c++) dot += double(q[size_t(i * d + h * head_dim + c)]) * k[size_t(j * d + h * head_dim + c)];
          s.push_back(dot), mx = std::max(mx, dot);
        }
        double sum = 0;
        for (double& x : s) sum += (x = std::exp(x - mx));
        for (int c = 0; c < head_dim; c++) {
          double want = 0;
          for (size_t j = 0; j < s.size(); j++) want += s[j] / sum * v[size_t((k_at[b] + int(j)) * d + h * head_dim + c)];
          if (!std::isfinite(out[c])) return INFINITY;
          diff = std::max(diff, std::fabs(out[c] - want));
          scale = std::max(scale, std::fabs(want));
        }
      }
  return scale == 0 ? diff : diff / scale;
}

}  // namespace

TEST_CASE("packed attention: the CPU kernel against a float64 loop, short and long segments, every head size") {
  struct Case {
    std::vector<int> q_rows, k_rows;
    int H, head_dim;
    bool mask;
  };
  const std::vector<Case> cases = {
      {{16, 17, 9}, {16, 17, 9}, 4, 10, false},   // METER-tiny's text: one vector of keys, a partial vector of columns
      {{17, 5, 1}, {17, 5, 1}, 4, 12, true},      // its ViT, head mask
      {{7, 13, 3}, {29, 2, 33}, 3, 16, false},    // cross-attention, keys on both sides of 16 and 32
      {{5, 64, 11}, {64, 64, 48}, 2, 32, true},   // the direct kernel's largest size
      {{3, 65, 20}, {65, 12, 70}, 2, 16, false},  // past 64 keys: the GEMM path, next to short jobs
      {{9, 4}, {9, 100}, 3, 33, false},           // past 32 columns: the GEMM path
      {{20, 7}, {60, 7}, 2, 64, true},            // METER-base heads: the GEMM path
      {{1, 0, 6}, {1, 3, 0}, 3, 20, true},        // one row, no queries, no keys
      {{1, 0, 6}, {1, 3, 0}, 2, 40, false},       // the same on the GEMM path
      {{31, 18}, {47, 63}, 5, 1, false},          // one column
      {{6, 21, 44}, {6, 21, 44}, 2, 31, false},   // every partial vector
  };
  for (size_t i = 0; i < cases.size(); i++) {
    const Case& c = cases[i];
    CAPTURE(i);
    CHECK(attention_error(c.q_rows, c.k_rows, c.H, c.head_dim, c.mask, 11 + i) < 1e-5);
  }
}
