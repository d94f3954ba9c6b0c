// Decoding through stb_image and PIL-compatible resampling. The resampler
// follows the arithmetic of PIL's Image.resize (coefficient windows, their
// normalisation, an 8-bit intermediate between the two passes) so that a
// model sees the same pixels here as in its Python training pipeline.
#include "data/image.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>

#include "engine/error.h"
#include "engine/files.h"

// The single translation unit holding stb_image's implementation. Its code
// is third-party and not warning-clean under -Wall -Wextra, so its warnings
// are silenced here only.
#define STB_IMAGE_IMPLEMENTATION
#define STBI_NO_STDIO  // we read files ourselves, to report missing/empty files clearly
#define STBI_ONLY_PNG
#define STBI_ONLY_JPEG
#define STBI_ONLY_BMP
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wall"
#pragma GCC diagnostic ignored "-Wextra"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#include <stb/stb_image.h>
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STBI_WRITE_NO_STDIO  // written to memory, then to disk atomically
#include <stb/stb_image_write.h>
#pragma GCC diagnostic pop

namespace st {

namespace {

[[noreturn]] void fail(const std::string& name, const std::string& what) {
  throw FormatError("image '" + name + "': " + what);
}

bool is_jpeg(const uint8_t* data, size_t size) {
  return size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF;
}

// stb_image pads a JPEG whose entropy-coded data stops early with zeros and
// reports success, so a truncated download would silently become a grey
// smear. A complete JPEG ends with the EOI marker (FF D9), possibly followed
// by a little padding or trailer junk, so look for it near the end.
bool jpeg_has_end_marker(const uint8_t* data, size_t size) {
  const size_t window = std::min<size_t>(size, 4096);
  for (size_t i = size - 1; i + window >= size && i >= 1; --i)
    if (data[i - 1] == 0xFF && data[i] == 0xD9) return true;
  return false;
}

uint32_t le32(const uint8_t* p) { return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24; }

// stb_image also reads past the end of a BMP as zeros. For the uncompressed
// layouts (nearly every BMP) the pixel array's size follows from the header,
// so a short file can be told apart from a complete one.
bool bmp_is_truncated(const uint8_t* data, size_t size) {
  if (size < 34 || data[0] != 'B' || data[1] != 'M' || le32(data + 14) < 40) return false;
  const uint32_t compression = le32(data + 30);
  if (compression != 0 && compression != 3) return false;  // RLE: length not known upfront
  const int64_t width = int32_t(le32(data + 18)), height = int32_t(le32(data + 22));
  const int64_t bpp = int64_t(data[28]) | int64_t(data[29]) << 8;
  const int64_t stride = (width * bpp + 31) / 32 * 4;
  const int64_t need = int64_t(le32(data + 10)) + stride * (height < 0 ? -height : height);
  return width > 0 && need > int64_t(size);
}

}  // namespace

Image decode_image(const uint8_t* data, size_t size, const std::string& name) {
  if (size == 0) fail(name, "the file is empty");
  if (size > size_t(INT32_MAX)) fail(name, "the file is too large to decode");
  int w = 0, h = 0, channels_in_file = 0;
  // Ask for 3 channels: stb converts grey, grey+alpha and RGBA to RGB.
  std::unique_ptr<stbi_uc, void (*)(void*)> decoded(
      stbi_load_from_memory(data, int(size), &w, &h, &channels_in_file, 3), stbi_image_free);
  if (!decoded) {
    const char* reason = stbi_failure_reason();
    fail(name, std::string("cannot decode (") + (reason ? reason : "unknown reason") + ")");
  }
  if (is_jpeg(data, size) && !jpeg_has_end_marker(data, size))
    fail(name, "truncated JPEG (no end-of-image marker)");
  if (bmp_is_truncated(data, size)) fail(name, "truncated BMP (pixel data shorter than its header says)");
  Image img;
  img.width = w;
  img.height = h;
  img.pixels.assign(decoded.get(), decoded.get() + size_t(w) * h * 3);
  return img;
}

Image load_image(const std::string& path) {
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "rb"), std::fclose);
  if (!f) fail(path, std::string("cannot open: ") + std::strerror(errno));
  std::vector<uint8_t> bytes;
  uint8_t buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f.get())) > 0) bytes.insert(bytes.end(), buf, buf + n);
  if (std::ferror(f.get())) fail(path, "read error");
  return decode_image(bytes.data(), bytes.size(), path);
}

namespace {

// PIL's filters, as functions of the distance in (scaled) input pixels.
double bilinear(double x) {
  x = std::fabs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}

double bicubic(double x) {
  const double a = -0.5;  // PIL's choice (Keys' Catmull-Rom); OpenCV uses -0.75
  x = std::fabs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
  return 0.0;
}

// For every output position, the first input index and the normalised
// weights of the inputs it reads.
struct Taps {
  std::vector<int> first;
  std::vector<int> count;
  std::vector<float> weights;  // out_size * max_count
  int max_count = 0;
};

Taps compute_taps(int in_size, int out_size, ResizeFilter filter) {
  double (*kernel)(double) = filter == ResizeFilter::Bicubic ? bicubic : bilinear;
  const double base_support = filter == ResizeFilter::Bicubic ? 2.0 : 1.0;
  const double scale = double(in_size) / out_size;
  // Shrinking widens the filter by the scale so every input pixel is
  // averaged in (antialiasing); enlarging keeps the filter as it is.
  const double filter_scale = std::max(scale, 1.0);
  const double support = base_support * filter_scale;
  Taps t;
  t.max_count = int(std::ceil(support)) * 2 + 1;
  t.first.resize(out_size);
  t.count.resize(out_size);
  t.weights.assign(size_t(out_size) * t.max_count, 0.0f);
  std::vector<double> w(t.max_count);
  for (int o = 0; o < out_size; ++o) {
    const double center = (o + 0.5) * scale;
    // Truncation toward zero, then clamping, exactly as PIL bounds its window.
    int lo = std::max(int(center - support + 0.5), 0);
    int hi = std::min(int(center + support + 0.5), in_size);
    int n = std::min(hi - lo, t.max_count);
    double total = 0.0;
    for (int i = 0; i < n; ++i) {
      w[i] = kernel((i + lo - center + 0.5) / filter_scale);
      total += w[i];
    }
    for (int i = 0; i < n; ++i) t.weights[size_t(o) * t.max_count + i] = float(total != 0.0 ? w[i] / total : 0.0);
    t.first[o] = lo;
    t.count[o] = n;
  }
  return t;
}

// Round half up and clamp to 8 bits, as PIL's fixed-point clip8 does.
inline uint8_t to_u8(float v) {
  float r = std::floor(v + 0.5f);
  return uint8_t(std::clamp(r, 0.0f, 255.0f));
}

Image resize_horizontal(const Image& in, int out_w, ResizeFilter filter) {
  const Taps t = compute_taps(in.width, out_w, filter);
  Image out{out_w, in.height, std::vector<uint8_t>(size_t(out_w) * in.height * 3)};
#pragma omp parallel for schedule(static)
  for (int y = 0; y < in.height; ++y) {
    const uint8_t* row = &in.pixels[size_t(y) * in.width * 3];
    uint8_t* dst = &out.pixels[size_t(y) * out_w * 3];
    for (int o = 0; o < out_w; ++o) {
      const float* w = &t.weights[size_t(o) * t.max_count];
      const uint8_t* src = row + size_t(t.first[o]) * 3;
      float acc[3] = {0, 0, 0};
      for (int i = 0; i < t.count[o]; ++i)
        for (int c = 0; c < 3; ++c) acc[c] += w[i] * src[i * 3 + c];
      for (int c = 0; c < 3; ++c) dst[o * 3 + c] = to_u8(acc[c]);
    }
  }
  return out;
}

Image resize_vertical(const Image& in, int out_h, ResizeFilter filter) {
  const Taps t = compute_taps(in.height, out_h, filter);
  const size_t stride = size_t(in.width) * 3;
  Image out{in.width, out_h, std::vector<uint8_t>(stride * out_h)};
#pragma omp parallel for schedule(static)
  for (int o = 0; o < out_h; ++o) {
    const float* w = &t.weights[size_t(o) * t.max_count];
    uint8_t* dst = &out.pixels[size_t(o) * stride];
    for (size_t x = 0; x < stride; ++x) {
      float acc = 0.0f;
      for (int i = 0; i < t.count[o]; ++i) acc += w[i] * in.pixels[size_t(t.first[o] + i) * stride + x];
      dst[x] = to_u8(acc);
    }
  }
  return out;
}

void check_image(const Image& image, const char* op) {
  if (image.width <= 0 || image.height <= 0 ||
      image.pixels.size() != size_t(image.width) * image.height * 3)
    throw ArgumentError(std::string(op) + ": malformed image " + std::to_string(image.width) + "x" +
                        std::to_string(image.height) + " with " + std::to_string(image.pixels.size()) +
                        " bytes");
}

}  // namespace

Image resize(const Image& image, int width, int height, ResizeFilter filter) {
  check_image(image, "resize");
  if (width <= 0 || height <= 0)
    throw ArgumentError("resize: target size " + std::to_string(width) + "x" + std::to_string(height) +
                        " must be positive");
  // Like PIL, a pass whose size does not change is skipped, not run as identity.
  Image out = image;
  if (width != out.width) out = resize_horizontal(out, width, filter);
  if (height != out.height) out = resize_vertical(out, height, filter);
  return out;
}

Image resize_shorter_side(const Image& image, int shorter, ResizeFilter filter) {
  check_image(image, "resize_shorter_side");
  if (shorter <= 0) throw ArgumentError("resize_shorter_side: size must be positive, got " + std::to_string(shorter));
  const int w = image.width, h = image.height;
  if (w <= h) return resize(image, shorter, int(int64_t(shorter) * h / w), filter);
  return resize(image, int(int64_t(shorter) * w / h), shorter, filter);
}

Image center_crop(const Image& image, int width, int height) {
  check_image(image, "center_crop");
  if (width <= 0 || height <= 0 || width > image.width || height > image.height)
    throw ArgumentError("center_crop: window " + std::to_string(width) + "x" + std::to_string(height) +
                        " does not fit in a " + std::to_string(image.width) + "x" +
                        std::to_string(image.height) + " image");
  // Python's round() (half to even), which is what torchvision uses.
  const int left = int(std::nearbyint((image.width - width) / 2.0));
  const int top = int(std::nearbyint((image.height - height) / 2.0));
  Image out{width, height, std::vector<uint8_t>(size_t(width) * height * 3)};
  for (int y = 0; y < height; ++y)
    std::memcpy(&out.pixels[size_t(y) * width * 3], &image.pixels[(size_t(top + y) * image.width + left) * 3],
                size_t(width) * 3);
  return out;
}

Tensor to_tensor(const Image& image, const Normalization& norm) {
  check_image(image, "to_tensor");
  const size_t plane = size_t(image.width) * image.height;
  std::vector<float> values(plane * 3);
  for (int c = 0; c < 3; ++c) {
    // Same order of operations as ToTensor then Normalize: scale to [0,1] first.
    const float mean = norm.mean[c], inv_std = 1.0f / norm.std[c];
    for (size_t p = 0; p < plane; ++p) values[c * plane + p] = (image.pixels[p * 3 + c] / 255.0f - mean) * inv_std;
  }
  return Tensor::from_vector(values, {3, image.height, image.width});
}

Tensor clip_preprocess(const Image& image, int size) {
  return to_tensor(center_crop(resize_shorter_side(image, size, ResizeFilter::Bicubic), size, size),
                   kClipNormalization);
}

void save_png(const std::string& path, const Image& image) {
  if (image.width <= 0 || image.height <= 0 || image.pixels.size() != size_t(image.width) * image.height * 3)
    throw ArgumentError("save_png '" + path + "': the image has no pixels or the wrong number of them");
  std::string png;
  auto append = [](void* context, void* data, int size) {
    static_cast<std::string*>(context)->append(static_cast<const char*>(data), size_t(size));
  };
  if (!stbi_write_png_to_func(append, &png, image.width, image.height, 3, image.pixels.data(), image.width * 3))
    throw Error("save_png '" + path + "': the PNG encoder failed");
  write_file_atomically(path, png);
}

}  // namespace st
