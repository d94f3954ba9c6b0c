// The curriculum of the keep-ratio target (SMARTTRIM.md section 8): start
// at full capacity and fall linearly to the goal over the first fraction p
// of training, then hold.
//
//   rho_target(t) = 1 - (1 - rho*) min(1, t / (p T))
#pragma once
#include <algorithm>
#include <cstdint>

namespace st {

struct Curriculum {
  double goal = 0.5;      // rho*: 1.5x -> 0.67, 2x -> 0.5, 3x -> 0.33
  double fraction = 0.5;  // p
  bool enabled = true;    // ablation: false holds the goal from the first step

  // The target at step t (0-based) of total_steps.
  double target(int64_t step, int64_t total_steps) const {
    if (!enabled || fraction <= 0 || total_steps <= 0) return goal;
    const double progress = std::min(1.0, double(step) / (fraction * double(total_steps)));
    return 1.0 - (1.0 - goal) * progress;
  }
};

}  // namespace st
