// The weight w_ij of the masked softmax's mask gradient (engine/ops/softmax.cpp
// explains the rule), for both backends:
//   kept key (M_j != 0):  e / S            with e = exp(a - m)
//   dropped key:          e / (S + e), computed as 1 / (1 + S exp(m - a)),
//                         the same number but finite when e would overflow
//                         (a dropped key scoring far above the kept ones).
#pragma once
#include <cmath>

#include "engine/host_device.h"

namespace st::cpu {

ST_HOST_DEVICE inline float mask_gradient_weight(float a, float m, float S, float M) {
  return M != 0.0f ? expf(a - m) / S : 1.0f / (1.0f + S * expf(m - a));
}

}  // namespace st::cpu
