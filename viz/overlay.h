// Pictures of what the token trimmers kept (SMARTTRIM.md; the paper's
// qualitative figures): an image with its dropped patches darkened, and a
// figure of one image under several questions, one column per trimmer
// layer, with the question's kept and dropped text tokens under each row.
//
// Patches are the ViT's: an image of H x W pixels with patch size p has a
// (H/p) x (W/p) grid, masks are row-major over that grid, 1 = kept. The
// class token is not a patch; callers strip it from the trimmer's mask.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "data/image.h"
#include "viz/draw.h"

namespace st {

// A dropped patch is blended this far toward kDroppedColor: 70% toward a
// dark red, so a dropped patch of black background shows too.
constexpr float kDroppedDarkening = 0.7f;
constexpr Rgb kDroppedColor{96, 16, 16};
// Grid lines are the first pixel row and column of every patch cell (plus the
// image's right and bottom edges), blended this far toward white. Pixels
// inside a kept cell, off those lines, are exactly the upscaled source.
constexpr float kGridLightening = 0.45f;

struct PatchOverlayOptions {
  bool grid = true;         // drawn only where a cell is at least 4 pixels wide
  bool kept_count = false;  // "kept/total" in the top-left corner
};

// `image` upscaled by `scale` (nearest neighbour) with every patch whose
// `kept` entry is 0 darkened. Throws ArgumentError when the image is not a
// whole number of patches, `kept` does not have one entry per patch, or scale < 1.
Image patch_overlay(const Image& image, int patch, const std::vector<uint8_t>& kept, int scale,
                    const PatchOverlayOptions& options = {});

// One row of overlay_figure: one question asked about the figure's image.
struct OverlayRow {
  // Drawn above the row, wrapped; e.g. "what color is the cat? -> white (3.1 GFLOPs)".
  std::string title;
  // The question's text tokens as the tokenizer gave them (RoBERTa's "Ġ" is
  // dropped when drawn; see printable_token).
  std::vector<std::string> tokens;
  // Which tokens were kept, each mask tokens.size() long, 1 = kept. Either
  // empty (every token shown as kept), one mask (e.g. the last co-attention
  // layer's), or one mask per layer, in the order of layer_names; then one
  // line is drawn for each layer that dropped a token, labelled with its name.
  std::vector<std::vector<uint8_t>> token_kept;
  // One column per trimmer layer, e.g. "vit 1", "cross 0", "cross 1".
  std::vector<std::string> layer_names;
  // Per layer, the kept-patch mask over the grid (row-major, 1 = kept).
  std::vector<std::vector<uint8_t>> patch_kept;
};

struct OverlayFigureOptions {
  std::string title;   // drawn once at the top when not empty
  int scale = 2;       // image upscale in every cell
  int text_scale = 1;  // font scale of every label
};

// Layout constants of overlay_figure, in pixels at text_scale 1 (the margin
// and gaps scale with text_scale).
constexpr int kFigureMargin = 8;
constexpr int kFigureCellGap = 6;

// Rows = questions; columns = the original image, then one patch_overlay
// per layer (with the layer's name above it and "kept/total" below), then
// the row's token lines. The figure is
//   2 * margin + columns * image.width * scale + (columns - 1) * gap
// pixels wide, where columns = 1 + the largest layer count of any row, and
// as tall as its rows need. Throws ArgumentError when a row's masks do not
// match its layers, tokens or the image's patch grid.
Image overlay_figure(const Image& image, int patch, const std::vector<OverlayRow>& rows,
                     const OverlayFigureOptions& options = {});

}  // namespace st
