// Images for the vision encoders: decoding (PNG, JPEG, BMP through
// stb_image), resizing the way PIL's Image.resize does (so preprocessing
// matches what METER and BLIP were trained with), center cropping, and
// normalisation into the float (3, H, W) tensor the ViT reads.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace st {

// 8-bit RGB, row-major, pixels interleaved: pixel (x, y) channel c is
// pixels[(y * width + x) * 3 + c].
struct Image {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> pixels;

  uint8_t at(int x, int y, int c) const { return pixels[(size_t(y) * width + x) * 3 + c]; }
};

// Decodes a PNG, JPEG or BMP file (grey and alpha are converted to RGB; alpha
// is dropped). Throws FormatError naming the file when it is missing, empty,
// or not a decodable image.
Image load_image(const std::string& path);
// The same from bytes already in memory; `name` is used in error messages.
Image decode_image(const uint8_t* data, size_t size, const std::string& name);

enum class ResizeFilter { Bilinear, Bicubic };

// Resizes to width x height like PIL's Image.resize: separable (horizontal
// pass first, each pass rounded to 8 bits), the filter widened by the scale
// factor when shrinking (antialiasing). Bicubic uses a = -0.5, as PIL does.
Image resize(const Image& image, int width, int height, ResizeFilter filter);

// Scales so the shorter side becomes `shorter` (the longer side keeps the
// aspect ratio, truncated as torchvision's Resize(int) does).
Image resize_shorter_side(const Image& image, int shorter, ResizeFilter filter);

// The centered width x height window, placed as torchvision's CenterCrop does
// (offsets round((W - w) / 2)). The window must fit inside the image.
Image center_crop(const Image& image, int width, int height);

struct Normalization {
  std::array<float, 3> mean;
  std::array<float, 3> std;
};
// CLIP's statistics (METER's and BLIP's image towers) and ImageNet's.
constexpr Normalization kClipNormalization{{0.48145466f, 0.4578275f, 0.40821073f},
                                           {0.26862954f, 0.26130258f, 0.27577711f}};
constexpr Normalization kImageNetNormalization{{0.485f, 0.456f, 0.406f}, {0.229f, 0.224f, 0.225f}};

// (3, H, W) float tensor of (pixel / 255 - mean[c]) / std[c].
Tensor to_tensor(const Image& image, const Normalization& norm);

// Writes an 8-bit RGB PNG through stb_image_write, atomically (engine/files.h).
// Throws st::Error naming the file when it cannot be written.
void save_png(const std::string& path, const Image& image);

// METER's CLIP preprocessing: bicubic resize of the shorter side to `size`,
// center crop to size x size, CLIP normalisation. Gives (3, size, size).
Tensor clip_preprocess(const Image& image, int size);

}  // namespace st
