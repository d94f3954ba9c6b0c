// The weight w_ij of the masked softmax's mask gradient (engine/ops/softmax.cpp
// explains the rule), for both backends. With e = exp(a - m):
//   kept key (M_j != 0):  e / S
//   dropped key:          e / (S + e)
// Both are 1 / (d + S t) with t = exp(m - a), d = 0 for a kept key and 1 for
// a dropped one: one exponential, and finite where e would overflow (a
// dropped key scoring far above the kept ones: t -> 0, w -> 1).
#pragma once
#include <cmath>

#include "engine/host_device.h"

namespace st::cpu {

// w from St = S exp(m - a): the CPU computes the exponentials in a loop of
// their own, since GCC vectorises a loop that calls expf only when it
// compares nothing.
ST_HOST_DEVICE inline float mask_gradient_weight_of(float St, float M) { return 1.0f / (float(M == 0.0f) + St); }

ST_HOST_DEVICE inline float mask_gradient_weight(float a, float m, float S, float M) {
  return mask_gradient_weight_of(S * expf(m - a), M);
}

}  // namespace st::cpu
