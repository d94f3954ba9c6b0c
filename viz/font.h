// A small bitmap font for labels in figures: one hand-drawn 5x9 glyph per
// printable ASCII character (32..126). Rows 0..6 hold capitals and digits
// (row 6 is the baseline row), rows 2..6 the lower-case x-height, rows 7..8
// the descenders of g j p q y , ; _. Each glyph is stored as 9 bit rows;
// bit 4 of a row is the leftmost column. Characters advance 6 pixels (one
// blank column between glyphs); lines are 11 pixels apart. Everything
// scales by an integer factor.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "viz/draw.h"

namespace st {

constexpr int kGlyphWidth = 5;
constexpr int kGlyphHeight = 9;
constexpr int kGlyphAdvance = 6;  // pixels from one character to the next, at scale 1
constexpr int kLineHeight = 11;   // pixels from one text line to the next, at scale 1

using GlyphRows = std::array<uint8_t, kGlyphHeight>;

// The bit rows of `c`; characters outside 32..126 are drawn as '?'.
const GlyphRows& glyph_rows(char c);
// Whether the glyph of `c` sets pixel (col, row), col < kGlyphWidth, row < kGlyphHeight.
bool glyph_pixel(char c, int col, int row);

// Width in pixels of `text` drawn at `scale`: text.size() * kGlyphAdvance * scale
// (the trailing blank column of the last character included).
int text_width(std::string_view text, int scale = 1);

struct TextStyle {
  Rgb color = colors::kBlack;
  int scale = 1;
  bool strikethrough = false;  // a line through the x-height (row 4), for dropped tokens
};

// Draws `text` with the top-left of its first glyph cell at (x, y); clipped
// to the image. One line: '\n' is drawn as '?' like any other non-printable.
void draw_text(Image& image, int x, int y, std::string_view text, const TextStyle& style);

// A token as the font can draw it: RoBERTa's word-start marker "Ġ" (U+0120)
// is dropped and any other non-ASCII UTF-8 sequence becomes one '?'.
std::string printable_token(std::string_view token);

}  // namespace st
