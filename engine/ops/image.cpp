// Image ops: the ViT patch embedding (a conv whose stride equals its
// kernel, done as "cut into patches" + one GEMM) and the bicubic resize used
// to interpolate position embeddings to a new image size.
#include <cmath>

#include "engine/gemm.h"
#include "engine/ops/bicubic.h"
#include "engine/ops/common.h"

namespace st {
namespace cpu {

// patches[(b, py, px), (c, y, x)] = image[b, c, py*p + y, px*p + x]
void patches_from_image(float* patches, const float* image, int B, int C, int H, int W, int p) {
  int gh = H / p, gw = W / p;
  int64_t cols = int64_t(C) * p * p;
  parallel_for(int64_t(B) * gh, use_threads(int64_t(B) * C * H * W, 1 << 15), [&](int64_t b_py) {
    const int64_t b = b_py / gh, py = b_py % gh;
    for (int px = 0; px < gw; px++) {
      float* row = patches + ((b * gh + py) * gw + px) * cols;
      for (int c = 0; c < C; c++)
        for (int y = 0; y < p; y++) {
          const float* src = image + ((b * C + c) * H + py * p + y) * W + px * p;
          float* dst = row + (int64_t(c) * p + y) * p;
          // A patch row is short (8 to 32 floats): an inline vector loop, not a memcpy call per row.
#pragma omp simd
          for (int x = 0; x < p; x++) dst[x] = src[x];
        }
    }
  });
}

// Patches do not overlap, so each image pixel receives exactly one value.
void patches_to_image_add(float* dimage, const float* dpatches, int B, int C, int H, int W, int p) {
  int gh = H / p, gw = W / p;
  int64_t cols = int64_t(C) * p * p;
  parallel_for(int64_t(B) * gh, use_threads(int64_t(B) * C * H * W, 1 << 15), [&](int64_t b_py) {
    const int64_t b = b_py / gh, py = b_py % gh;
    for (int px = 0; px < gw; px++) {
      const float* row = dpatches + ((b * gh + py) * gw + px) * cols;
      for (int c = 0; c < C; c++)
        for (int y = 0; y < p; y++) {
          float* dst = dimage + ((b * C + c) * H + py * p + y) * W + px * p;
          const float* src = row + (int64_t(c) * p + y) * p;
          for (int x = 0; x < p; x++) dst[x] += src[x];
        }
    }
  });
}

// One axis of the resize: for each output position, 4 clamped source
// indices and their weights (engine/ops/bicubic.h).
static void resize_taps(int in, int out, std::vector<int>& idx, std::vector<float>& wts) {
  idx.resize(size_t(out) * 4);
  wts.resize(size_t(out) * 4);
  for (int o = 0; o < out; o++) bicubic_taps(in, out, o, &idx[size_t(o) * 4], &wts[size_t(o) * 4]);
}

// grid (H, W, C) -> out (out_h, out_w, C): along W first, then along H.
void bicubic_resize_forward(float* out, const float* grid, int H, int W, int C, int out_h, int out_w) {
  std::vector<int> ix, iy;
  std::vector<float> wx, wy;
  resize_taps(W, out_w, ix, wx);
  resize_taps(H, out_h, iy, wy);
  std::vector<float> rows(size_t(H) * size_t(out_w) * size_t(C), 0.0f);  // (H, out_w, C)
  for (int y = 0; y < H; y++)
    for (int x = 0; x < out_w; x++)
      for (int k = 0; k < 4; k++) {
        const float* src = grid + (int64_t(y) * W + ix[size_t(x) * 4 + size_t(k)]) * C;
        float* dst = rows.data() + (int64_t(y) * out_w + x) * C;
        for (int c = 0; c < C; c++) dst[c] += wx[size_t(x) * 4 + size_t(k)] * src[c];
      }
  for (int y = 0; y < out_h; y++)
    for (int x = 0; x < out_w; x++) {
      float* dst = out + (int64_t(y) * out_w + x) * C;
      for (int c = 0; c < C; c++) dst[c] = 0.0f;
      for (int k = 0; k < 4; k++) {
        const float* src = rows.data() + (int64_t(iy[size_t(y) * 4 + size_t(k)]) * out_w + x) * C;
        for (int c = 0; c < C; c++) dst[c] += wy[size_t(y) * 4 + size_t(k)] * src[c];
      }
    }
}

}  // namespace cpu

// image (B, C, H, W), weight (D, C, p, p) -> (B, P, D), P = (H/p)(W/p)
Tensor patch_embed(const Tensor& image, const Tensor& weight) {
  const char* op = "patch_embed";
  Device dev = common_device(op, {&image, &weight});
  require_f32(op, image, "image");
  require_f32(op, weight, "weight");
  if (image.rank() != 4 || weight.rank() != 4 || weight.dim(1) != image.dim(1) || weight.dim(2) != weight.dim(3) ||
      weight.dim(2) == 0 || image.dim(2) % weight.dim(2) != 0 || image.dim(3) % weight.dim(2) != 0)
    shape_error(op, "expects image (B, C, H, W) and weight (D, C, p, p) with p dividing H and W, got image " +
                        to_string(image.shape()) + " and weight " + to_string(weight.shape()));
  int B = int(image.dim(0)), C = int(image.dim(1)), H = int(image.dim(2)), W = int(image.dim(3));
  int D = int(weight.dim(0)), p = int(weight.dim(2));
  int P = (H / p) * (W / p), cols = C * p * p;
  Tensor patches = Tensor::empty({int64_t(B) * P, cols}, DType::F32, dev);
  ST_KERNEL(dev, patches_from_image)(patches.data(), image.data(), B, C, H, W, p);
  Tensor out = Tensor::empty({B, P, D}, DType::F32, dev);
  // out (B*P, D) = patches (B*P, cols) @ weight^T (cols, D)
  ST_KERNEL(dev, gemm)(false, true, B * P, D, cols, 1.0f, patches.data(), cols, weight.data(), cols, 0.0f,
                       out.data(), D);
  if (needs_grad({&image, &weight})) {
    record(op, out, [dev, image, weight, patches, B, C, H, W, D, p, P, cols](const Tensor& dout) {
      if (weight.requires_grad())  // dW (D, cols) += dout^T (D, B*P) @ patches (B*P, cols)
        ST_KERNEL(dev, gemm)(true, false, D, cols, B * P, 1.0f, dout.data(), D, patches.data(), cols, 1.0f,
              grad_buffer(weight).data(), cols);
      if (image.requires_grad()) {  // dpatches (B*P, cols) = dout (B*P, D) @ W (D, cols), then fold back
        Tensor dpatches = Tensor::empty({int64_t(B) * P, cols}, DType::F32, dev);
        ST_KERNEL(dev, gemm)(false, false, B * P, cols, D, 1.0f, dout.data(), D, weight.data(), cols, 0.0f,
                             dpatches.data(), cols);
        ST_KERNEL(dev, patches_to_image_add)(grad_buffer(image).data(), dpatches.data(), B, C, H, W, p);
      }
    });
  }
  return out;
}

Tensor bicubic_resize(const Tensor& grid, int out_h, int out_w) {
  const char* op = "bicubic_resize";
  Device dev = common_device(op, {&grid});
  require_f32(op, grid, "grid");
  if (grid.rank() != 3 || grid.dim(0) == 0 || grid.dim(1) == 0 || out_h <= 0 || out_w <= 0)
    shape_error(op, "expects a non-empty grid (H, W, C) and a positive size, got " + to_string(grid.shape()) +
                        " -> " + std::to_string(out_h) + "x" + std::to_string(out_w));
  int H = int(grid.dim(0)), W = int(grid.dim(1)), C = int(grid.dim(2));
  Tensor out = Tensor::empty({out_h, out_w, C}, DType::F32, dev);
  ST_KERNEL(dev, bicubic_resize_forward)(out.data(), grid.data(), H, W, C, out_h, out_w);
  return out;  // forward-only: resizing happens once, when weights are loaded
}

}  // namespace st
