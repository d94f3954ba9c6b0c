// The taps of a bicubic resize along one axis, for both backends
// (engine/ops/image.cpp, cuda/image.cu): PyTorch's bicubic with
// align_corners=False, src = (dst + 0.5) * in / out - 0.5.
#pragma once
#include <cmath>

#include "engine/host_device.h"

namespace st::cpu {

// Keys' cubic convolution kernel with a = -0.75 (PyTorch's bicubic):
// weights of the 4 taps at distances 1+t, t, 1-t, 2-t.
ST_HOST_DEVICE inline void cubic_weights(float t, float w[4]) {
  const float a = -0.75f;
  auto near = [a](float x) { return ((a + 2.0f) * x - (a + 3.0f)) * x * x + 1.0f; };          // |x| <= 1
  auto far = [a](float x) { return ((a * x - 5.0f * a) * x + 8.0f * a) * x - 4.0f * a; };  // 1 < |x| < 2
  w[0] = far(t + 1.0f);
  w[1] = near(t);
  w[2] = near(1.0f - t);
  w[3] = far(2.0f - t);
}

// Output position o of `out` along an axis of `in`: 4 source indices
// (clamped to the edge) and their weights.
ST_HOST_DEVICE inline void bicubic_taps(int in, int out, int o, int idx[4], float w[4]) {
  const float scale = float(in) / float(out);
  const float src = (float(o) + 0.5f) * scale - 0.5f;
  const float f = floorf(src);
  cubic_weights(src - f, w);
  for (int k = 0; k < 4; k++) {
    const int i = int(f) - 1 + k;
    idx[k] = i < 0 ? 0 : i > in - 1 ? in - 1 : i;
  }
}

}  // namespace st::cpu
