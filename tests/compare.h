// How tests compare a tensor with a reference: one scale-free number.
#pragma once
#include <algorithm>
#include <cmath>
#include <limits>

#include "engine/tensor.h"

namespace st::testing {

inline double max_abs(const Tensor& x) {
  double m = 0;
  for (float v : x.to_vector()) m = std::max(m, std::fabs(double(v)));
  return m;
}

// max |got - want| / max |want| (the plain max difference when want is all
// zeros). A shape mismatch or a non-finite value is infinitely wrong, so a
// NaN can never slip through a `< tolerance` check.
inline double relative_error(const Tensor& got, const Tensor& want) {
  constexpr double kWrong = std::numeric_limits<double>::infinity();
  if (got.shape() != want.shape()) return kWrong;
  std::vector<float> a = got.to_vector(), b = want.to_vector();
  double diff = 0, scale = 0;
  for (size_t i = 0; i < a.size(); i++) {
    if (!std::isfinite(a[i]) || !std::isfinite(b[i])) return kWrong;
    diff = std::max(diff, std::fabs(double(a[i]) - double(b[i])));
    scale = std::max(scale, std::fabs(double(b[i])));
  }
  return scale == 0 ? diff : diff / scale;
}

}  // namespace st::testing
