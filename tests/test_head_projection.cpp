// The row-by-row head projections (engine/ops/head_projection.cpp) against
// a float64 loop, on random inputs of odd sizes: heads of 1 and 2 vectors
// with partial last vectors, outputs over one and two groups of four
// vectors, segments of 0 to 9 rows (row blocks of 4 and their tails),
// examples keeping no head, one, several adjacent and several apart.
// A dropped head's columns of y must be left unwritten (into the heads) and
// its columns of x never read (out of the heads: they hold NaN).
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "engine/error.h"
#include "engine/ops/head_projection.h"
#include "engine/rng.h"

namespace {

constexpr float kSentinel = 12345.0f;

struct Problem {
  std::vector<int32_t> at{0};
  std::vector<float> keep;  // (B, H)
  int B = 0, H = 0, k = 0;
};

Problem make_problem(const std::vector<int>& rows, int H, int k, uint64_t seed) {
  Problem p;
  p.B = int(rows.size()), p.H = H, p.k = k;
  for (int n : rows) p.at.push_back(p.at.back() + n);
  for (int b = 0; b < p.B; b++)
    for (int h = 0; h < H; h++) p.keep.push_back((b * 5 + h * 3 + int(seed)) % 4 == 0 ? 0.0f : 1.0f);
  for (int h = 0; h < H; h++) p.keep[size_t(h)] = 0.0f;                  // example 0 keeps no head
  for (int h = 0; h < H; h++) p.keep[size_t(H + h)] = h == 1 ? 1.0f : 0.0f;  // example 1 keeps one
  return p;
}

std::vector<float> draw(st::Rng& rng, int64_t n) {
  std::vector<float> x(static_cast<size_t>(n));
  for (float& v : x) v = 2.0f * rng.uniform() - 1.0f + (rng.uniform() < 0.5f ? 0.25f : -0.25f);  // away from 0
  return x;
}

// max |got - want| / max |want| of project_into_heads; INFINITY if a dropped head's column was written.
double into_error(const std::vector<int>& rows, int H, int k, int d_in, uint64_t seed) {
  const Problem p = make_problem(rows, H, k, seed);
  const int64_t R = p.at.back(), d = int64_t(H) * k;
  st::Rng rng(seed);
  const std::vector<float> x = draw(rng, R * d_in), W = draw(rng, d * d_in), bias = draw(rng, d);
  const float scale = 0.37f;
  std::vector<float> y(size_t(R * d), kSentinel);
  st::cpu::project_into_heads(y.data(), x.data(), st::cpu::into_heads_weights(W.data(), bias.data(), H, k, d_in), scale,
                              p.at.data(), p.keep.data(), p.B);
  double diff = 0, size = 0;
  for (int b = 0; b < p.B; b++)
    for (int64_t r = p.at[size_t(b)]; r < p.at[size_t(b + 1)]; r++)
      for (int h = 0; h < H; h++)
        for (int c = h * k; c < (h + 1) * k; c++) {
          const float got = y[size_t(r * d + c)];
          if (p.keep[size_t(b * H + h)] == 0.0f) {
            if (got != kSentinel) return INFINITY;
            continue;
          }
          double want = bias[size_t(c)];
          for (int j = 0; j < d_in; j++) want += double(x[size_t(r * d_in + j)]) * W[size_t(c * d_in + j)];
          want *= scale;
          if (!std::isfinite(got)) return INFINITY;
          diff = std::max(diff, std::fabs(got - want)), size = std::max(size, std::fabs(want));
        }
  return size == 0 ? diff : diff / size;
}

// The same for project_out_of_heads; a dropped head's inputs are NaN, so reading one shows.
double out_error(const std::vector<int>& rows, int H, int k, int d_out, uint64_t seed) {
  const Problem p = make_problem(rows, H, k, seed);
  const int64_t R = p.at.back(), d = int64_t(H) * k;
  st::Rng rng(seed + 100);
  std::vector<float> x = draw(rng, R * d);
  const std::vector<float> W = draw(rng, d_out * d), bias = draw(rng, d_out);
  for (int b = 0; b < p.B; b++)
    for (int64_t r = p.at[size_t(b)]; r < p.at[size_t(b + 1)]; r++)
      for (int h = 0; h < H; h++)
        if (p.keep[size_t(b * H + h)] == 0.0f)
          for (int c = h * k; c < (h + 1) * k; c++) x[size_t(r * d + c)] = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> y(size_t(R * d_out), kSentinel);
  st::cpu::project_out_of_heads(y.data(), x.data(), st::cpu::out_of_heads_weights(W.data(), bias.data(), H, k, d_out),
                                p.at.data(), p.keep.data(), p.B);
  double diff = 0, size = 0;
  for (int b = 0; b < p.B; b++)
    for (int64_t r = p.at[size_t(b)]; r < p.at[size_t(b + 1)]; r++)
      for (int o = 0; o < d_out; o++) {
        double want = bias[size_t(o)];
        for (int h = 0; h < H; h++)
          if (p.keep[size_t(b * H + h)] != 0.0f)
            for (int c = h * k; c < (h + 1) * k; c++) want += double(x[size_t(r * d + c)]) * W[size_t(o * d + c)];
        const float got = y[size_t(r * d_out + o)];
        if (!std::isfinite(got)) return INFINITY;
        diff = std::max(diff, std::fabs(got - want)), size = std::max(size, std::fabs(want));
      }
  return size == 0 ? diff : diff / size;
}

}  // namespace

TEST_CASE("head projections: the row-by-row kernels against a float64 loop on odd sizes") {
  const std::vector<int> rows = {3, 5, 0, 1, 9, 4, 7, 2, 6};
  struct Case {
    int H, k, d;  // heads, columns per head, d_in (into) and d_out (out)
  };
  for (const Case& c : {Case{4, 16, 64}, Case{3, 10, 37}, Case{5, 21, 45}, Case{2, 32, 70}, Case{6, 7, 128},
                        Case{1, 13, 256}}) {
    CAPTURE(c.H);
    CAPTURE(c.k);
    CAPTURE(c.d);
    for (uint64_t seed : {1, 2}) {
      CHECK(into_error(rows, c.H, c.k, c.d, seed) < 1e-5);
      if (c.d <= 128) CHECK(out_error(rows, c.H, c.k, c.d, seed) < 1e-5);
    }
  }
}

TEST_CASE("head projections: sizes past the kernels' limits are refused, not overrun") {
  CHECK(st::cpu::head_projection_fits(64, 16, 64));
  CHECK(st::cpu::head_projection_fits(256, 32, 128));
  CHECK_FALSE(st::cpu::head_projection_fits(257, 16, 64));  // inputs
  CHECK_FALSE(st::cpu::head_projection_fits(64, 33, 64));   // head size
  CHECK_FALSE(st::cpu::head_projection_fits(64, 16, 129));  // outputs
  CHECK_FALSE(st::cpu::head_projection_fits(768, 64, 768));  // METER-base: the per-head GEMMs
  std::vector<float> buf(768 * 768, 1.0f);
  CHECK_THROWS_AS(st::cpu::into_heads_weights(buf.data(), buf.data(), 12, 64, 768), st::ShapeError);
  CHECK_THROWS_AS(st::cpu::out_of_heads_weights(buf.data(), buf.data(), 12, 64, 768), st::ShapeError);
}

TEST_CASE("head projections: the laid-out weights are a copy, made once and reused") {
  // The packed path makes them when a PackedMeter is made and uses them for
  // every batch; they must not read W again, and a new copy sees new values.
  const std::vector<int32_t> at = {0, 3, 5};
  const std::vector<float> keep = {1, 0, 1, 1};  // B 2, H 2
  const int H = 2, k = 3, d = 6;
  std::vector<float> x(5 * d), W(d * d), bias(d, 0.5f), y(5 * d);
  for (size_t i = 0; i < x.size(); i++) x[i] = 0.1f * float(i % 7) - 0.2f;
  for (size_t i = 0; i < W.size(); i++) W[i] = 0.05f * float(i % 5) + 0.1f;
  auto made = [&](bool into) {
    return into ? st::cpu::into_heads_weights(W.data(), bias.data(), H, k, d)
                : st::cpu::out_of_heads_weights(W.data(), bias.data(), H, k, d);
  };
  auto row0 = [&](bool into, const st::cpu::HeadWeights& w) {
    if (into) st::cpu::project_into_heads(y.data(), x.data(), w, 1.0f, at.data(), keep.data(), 2);
    else st::cpu::project_out_of_heads(y.data(), x.data(), w, at.data(), keep.data(), 2);
    return y[0];
  };
  for (bool into : {true, false}) {
    CAPTURE(into);
    const st::cpu::HeadWeights before = made(into);
    const float y_before = row0(into, before);
    for (float& w : W) w *= 2.0f;
    CHECK(row0(into, before) == y_before);  // the copy keeps the old values
    const float after = row0(into, made(into));
    CHECK(after - 0.5f == doctest::Approx(2.0f * (y_before - 0.5f)));  // y = bias + 2 x W
    for (float& w : W) w *= 0.5f;
  }
}
