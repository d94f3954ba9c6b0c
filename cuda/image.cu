// Images: patches in and out of (B, C, H, W) images, and the bicubic
// resize of a position-embedding grid. One thread per element.
#include "cuda/launch.h"
#include "engine/kernels.h"
#include "engine/ops/bicubic.h"

namespace st::cuda {
namespace {

// Patch element (row, col) with row = (b, py, px) and col = (c, y, x) sits at
// image[b, c, py*p + y, px*p + x]; patches do not overlap, so the backward
// pass has exactly one patch element per pixel and no races.
__device__ inline int64_t pixel_of(int64_t i, int C, int H, int W, int p) {
  const int gh = H / p, gw = W / p;
  const int64_t cols = int64_t(C) * p * p;
  const int64_t row = i / cols, col = i % cols;
  const int64_t b = row / (gh * gw), py = (row / gw) % gh, px = row % gw;
  const int64_t c = col / (p * p), y = (col / p) % p, x = col % p;
  return ((b * C + c) * H + py * p + y) * W + px * p + x;
}

__global__ void patches_from_image_kernel(float* patches, const float* image, int64_t n, int C, int H, int W, int p) {
  GRID_STRIDE_LOOP(i, n) patches[i] = image[pixel_of(i, C, H, W, p)];
}

__global__ void patches_to_image_kernel(float* dimage, const float* dpatches, int64_t n, int C, int H, int W, int p) {
  GRID_STRIDE_LOOP(i, n) dimage[pixel_of(i, C, H, W, p)] += dpatches[i];
}

// out[y, x, c] = sum_k wy_k sum_l wx_l grid[iy_k, ix_l, c], the inner sum
// along W first as on the CPU.
__global__ void bicubic_kernel(float* out, const float* grid, int H, int W, int C, int out_h, int out_w) {
  GRID_STRIDE_LOOP(i, int64_t(out_h) * out_w * C) {
    const int c = int(i % C), x = int((i / C) % out_w), y = int(i / (int64_t(C) * out_w));
    int ix[4], iy[4];
    float wx[4], wy[4];
    cpu::bicubic_taps(W, out_w, x, ix, wx);
    cpu::bicubic_taps(H, out_h, y, iy, wy);
    float sum = 0.0f;
    for (int k = 0; k < 4; k++) {
      float row = 0.0f;
      for (int l = 0; l < 4; l++) row += wx[l] * grid[(int64_t(iy[k]) * W + ix[l]) * C + c];
      sum += wy[k] * row;
    }
    out[i] = sum;
  }
}

}  // namespace

void patches_from_image(float* patches, const float* image, int B, int C, int H, int W, int p) {
  const int64_t n = int64_t(B) * C * (H / p) * p * (W / p) * p;
  if (n == 0) return;
  patches_from_image_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(patches, image, n, C, H, W, p);
  CUDA_CHECK_LAUNCH("patches_from_image_kernel");
}

void patches_to_image_add(float* dimage, const float* dpatches, int B, int C, int H, int W, int p) {
  const int64_t n = int64_t(B) * C * (H / p) * p * (W / p) * p;
  if (n == 0) return;
  patches_to_image_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(dimage, dpatches, n, C, H, W, p);
  CUDA_CHECK_LAUNCH("patches_to_image_kernel");
}

void bicubic_resize_forward(float* out, const float* grid, int H, int W, int C, int out_h, int out_w) {
  const int64_t n = int64_t(out_h) * out_w * C;
  if (n == 0) return;
  bicubic_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(out, grid, H, W, C, out_h, out_w);
  CUDA_CHECK_LAUNCH("bicubic_kernel");
}

}  // namespace st::cuda
