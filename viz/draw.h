// Tiny raster helpers on st::Image (8-bit RGB, see data/image.h) for the
// figures in viz/overlay.h: canvases, filled / blended / outlined
// rectangles, and pasting an image with an integer nearest-neighbour
// upscale. Every drawing call clips to the destination, so callers can draw
// near the edges without checking bounds. Text lives in viz/font.h.
#pragma once
#include <cstdint>

#include "data/image.h"

namespace st {

struct Rgb {
  uint8_t r = 0, g = 0, b = 0;
  bool operator==(const Rgb&) const = default;
};

namespace colors {
constexpr Rgb kBlack{0, 0, 0};
constexpr Rgb kWhite{255, 255, 255};
constexpr Rgb kGrey{128, 128, 128};
constexpr Rgb kLightGrey{185, 185, 185};
constexpr Rgb kDarkBlue{20, 50, 140};
constexpr Rgb kRed{200, 30, 30};
}  // namespace colors

// A width x height image filled with `background`. Throws ArgumentError for
// a negative size.
Image blank_canvas(int width, int height, Rgb background);

// The colour of pixel (x, y); the pixel must be inside the image.
Rgb pixel_at(const Image& image, int x, int y);
// Sets one pixel; does nothing outside the image.
void set_pixel(Image& image, int x, int y, Rgb color);

// The w x h rectangle with its top-left corner at (x, y), clipped.
void fill_rect(Image& image, int x, int y, int w, int h, Rgb color);
// Moves every pixel of the rectangle `alpha` of the way toward `color`:
// p' = round(p + alpha * (color - p)) per channel; alpha in [0, 1].
void blend_rect(Image& image, int x, int y, int w, int h, Rgb color, float alpha);
// The rectangle's border, `thickness` pixels wide, drawn inside it.
void outline_rect(Image& image, int x, int y, int w, int h, Rgb color, int thickness = 1);

// `source` upscaled by `scale` (each pixel becomes a scale x scale block).
Image upscale(const Image& source, int scale);
// Draws `source`, upscaled by `scale`, with its top-left corner at (x, y).
void paste(Image& dest, const Image& source, int x, int y, int scale = 1);

}  // namespace st
