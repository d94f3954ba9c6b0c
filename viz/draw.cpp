#include "viz/draw.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "engine/error.h"

namespace st {

namespace {

// The part of the rectangle (x, y, w, h) inside the image, as [x0, x1) x [y0, y1).
struct Span {
  int x0, y0, x1, y1;
  bool empty() const { return x0 >= x1 || y0 >= y1; }
};
Span clip(const Image& image, int x, int y, int w, int h) {
  return {std::max(x, 0), std::max(y, 0), std::min(x + std::max(w, 0), image.width),
          std::min(y + std::max(h, 0), image.height)};
}

uint8_t* pixel_ptr(Image& image, int x, int y) { return &image.pixels[(size_t(y) * image.width + x) * 3]; }

}  // namespace

Image blank_canvas(int width, int height, Rgb background) {
  if (width < 0 || height < 0)
    throw ArgumentError("blank_canvas: negative size " + std::to_string(width) + "x" + std::to_string(height));
  Image image{width, height, std::vector<uint8_t>(size_t(width) * height * 3)};
  fill_rect(image, 0, 0, width, height, background);
  return image;
}

Rgb pixel_at(const Image& image, int x, int y) { return {image.at(x, y, 0), image.at(x, y, 1), image.at(x, y, 2)}; }

void set_pixel(Image& image, int x, int y, Rgb color) { fill_rect(image, x, y, 1, 1, color); }

void fill_rect(Image& image, int x, int y, int w, int h, Rgb color) {
  const Span s = clip(image, x, y, w, h);
  if (s.empty()) return;
  for (int py = s.y0; py < s.y1; ++py)
    for (int px = s.x0; px < s.x1; ++px) {
      uint8_t* p = pixel_ptr(image, px, py);
      p[0] = color.r, p[1] = color.g, p[2] = color.b;
    }
}

void blend_rect(Image& image, int x, int y, int w, int h, Rgb color, float alpha) {
  if (!(alpha >= 0.0f && alpha <= 1.0f)) throw ArgumentError("blend_rect: alpha must be in [0, 1]");
  const Span s = clip(image, x, y, w, h);
  if (s.empty()) return;
  const uint8_t target[3] = {color.r, color.g, color.b};
  for (int py = s.y0; py < s.y1; ++py)
    for (int px = s.x0; px < s.x1; ++px) {
      uint8_t* p = pixel_ptr(image, px, py);
      for (int c = 0; c < 3; ++c) p[c] = uint8_t(std::lround(p[c] + alpha * (int(target[c]) - int(p[c]))));
    }
}

void outline_rect(Image& image, int x, int y, int w, int h, Rgb color, int thickness) {
  const int t = std::min({thickness, w, h});
  if (t <= 0) return;
  fill_rect(image, x, y, w, t, color);          // top
  fill_rect(image, x, y + h - t, w, t, color);  // bottom
  fill_rect(image, x, y, t, h, color);          // left
  fill_rect(image, x + w - t, y, t, h, color);  // right
}

Image upscale(const Image& source, int scale) {
  if (scale < 1) throw ArgumentError("upscale: scale must be >= 1, got " + std::to_string(scale));
  Image out = blank_canvas(source.width * scale, source.height * scale, colors::kBlack);
  paste(out, source, 0, 0, scale);
  return out;
}

void paste(Image& dest, const Image& source, int x, int y, int scale) {
  if (scale < 1) throw ArgumentError("paste: scale must be >= 1, got " + std::to_string(scale));
  const Span s = clip(dest, x, y, source.width * scale, source.height * scale);
  if (s.empty()) return;
  for (int py = s.y0; py < s.y1; ++py) {
    const int sy = (py - y) / scale;
    for (int px = s.x0; px < s.x1; ++px) {
      const int sx = (px - x) / scale;
      uint8_t* p = pixel_ptr(dest, px, py);
      for (int c = 0; c < 3; ++c) p[c] = source.at(sx, sy, c);
    }
  }
}

}  // namespace st
