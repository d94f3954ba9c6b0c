#include "viz/overlay.h"

#include <algorithm>
#include <string_view>

#include "engine/error.h"
#include "viz/font.h"

namespace st {

namespace {

constexpr Rgb kBackground = colors::kWhite;
constexpr Rgb kTitleColor = colors::kBlack;
constexpr Rgb kLabelColor{90, 90, 90};
constexpr Rgb kKeptTokenColor = colors::kDarkBlue;
constexpr Rgb kDroppedTokenColor = colors::kLightGrey;
constexpr Rgb kRuleColor{210, 210, 210};

struct Grid {
  int cols, rows;
  size_t cells() const { return size_t(cols) * size_t(rows); }
};

Grid patch_grid(const Image& image, int patch, const char* caller) {
  if (patch < 1 || image.width <= 0 || image.height <= 0 || image.width % patch || image.height % patch)
    throw ArgumentError(std::string(caller) + ": a " + std::to_string(image.width) + "x" +
                        std::to_string(image.height) + " image is not a whole number of " + std::to_string(patch) +
                        "-pixel patches");
  return {image.width / patch, image.height / patch};
}

int count_kept(const std::vector<uint8_t>& mask) {
  return int(std::count_if(mask.begin(), mask.end(), [](uint8_t k) { return k != 0; }));
}

// Everything overlay_figure draws goes through these, with a null canvas in
// the measuring pass: layout and drawing are one piece of code, so the
// height measured is the height drawn.
void text_at(Image* canvas, int x, int y, std::string_view text, const TextStyle& style) {
  if (canvas) draw_text(*canvas, x, y, text, style);
}

struct Word {
  std::string text;
  TextStyle style;
};

// Lays `words` out from (x, y), one space apart, starting a new line at
// `indent_x` when the next word would cross `right`. Returns the y below the
// last line.
int flow_words(Image* canvas, const std::vector<Word>& words, int x, int indent_x, int y, int right, int scale) {
  const int space = kGlyphAdvance * scale;
  int cursor = x;
  for (const Word& word : words) {
    const int w = text_width(word.text, scale);
    if (cursor > indent_x && cursor + w > right) cursor = indent_x, y += kLineHeight * scale;
    text_at(canvas, cursor, y, word.text, word.style);
    cursor += w + space;
  }
  return y + kLineHeight * scale;
}

std::vector<Word> split_words(const std::string& text, const TextStyle& style) {
  std::vector<Word> words;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find(' ', start);
    if (end == std::string::npos) end = text.size();
    if (end > start) words.push_back({text.substr(start, end - start), style});
    start = end + 1;
  }
  return words;
}

// A label cut to at most `width` pixels, so it never runs into the next cell.
std::string fit(const std::string& label, int width, int scale) {
  const size_t max_chars = size_t(std::max(0, width / (kGlyphAdvance * scale)));
  return label.size() <= max_chars ? label : label.substr(0, max_chars);
}

struct Layout {
  int scale, ts;  // image scale, text scale
  int margin, gap;
  int cell_w, cell_h;
  int width;
  int x_of_column(int column) const { return margin + column * (cell_w + gap); }
};

void check_row(const OverlayRow& row, size_t row_index, const Grid& grid) {
  const std::string where = "overlay_figure: row " + std::to_string(row_index) + ": ";
  if (row.patch_kept.size() != row.layer_names.size())
    throw ArgumentError(where + std::to_string(row.layer_names.size()) + " layer names but " +
                        std::to_string(row.patch_kept.size()) + " patch masks");
  for (const auto& mask : row.patch_kept)
    if (mask.size() != grid.cells())
      throw ArgumentError(where + "a patch mask has " + std::to_string(mask.size()) + " entries, the grid " +
                          std::to_string(grid.cells()));
  if (row.token_kept.size() > 1 && row.token_kept.size() != row.layer_names.size())
    throw ArgumentError(where + "token masks must be none, one, or one per layer; got " +
                        std::to_string(row.token_kept.size()));
  for (const auto& mask : row.token_kept)
    if (mask.size() != row.tokens.size())
      throw ArgumentError(where + "a token mask has " + std::to_string(mask.size()) + " entries for " +
                          std::to_string(row.tokens.size()) + " tokens");
}

// The token lines of a row, each a label and a mask (empty mask = all kept).
std::vector<std::pair<std::string, std::vector<uint8_t>>> token_lines(const OverlayRow& row) {
  std::vector<std::pair<std::string, std::vector<uint8_t>>> lines;
  if (row.token_kept.size() > 1) {
    for (size_t l = 0; l < row.token_kept.size(); ++l)
      if (count_kept(row.token_kept[l]) < int(row.tokens.size()))
        lines.push_back({row.layer_names[l], row.token_kept[l]});
  } else if (row.token_kept.size() == 1) {
    lines.push_back({"text", row.token_kept[0]});
  }
  if (lines.empty()) lines.push_back({"text", {}});
  return lines;
}

// Draws (or, with a null canvas, only measures) one row from y; returns the y below it.
int draw_row(Image* canvas, const Image& image, int patch, const OverlayRow& row, const Layout& g, int y) {
  const int ts = g.ts;
  const int right = g.width - g.margin;
  if (!row.title.empty())
    y = flow_words(canvas, split_words(row.title, {kTitleColor, ts, false}), g.margin, g.margin, y, right, ts);

  // Column labels, the cells, and the kept counts under the layers.
  const TextStyle label{kLabelColor, ts, false};
  text_at(canvas, g.x_of_column(0), y, fit("image", g.cell_w, ts), label);
  for (size_t l = 0; l < row.layer_names.size(); ++l)
    text_at(canvas, g.x_of_column(int(l) + 1), y, fit(row.layer_names[l], g.cell_w, ts), label);
  y += kLineHeight * ts;
  if (canvas) {
    paste(*canvas, image, g.x_of_column(0), y, g.scale);
    for (size_t l = 0; l < row.patch_kept.size(); ++l)
      paste(*canvas, patch_overlay(image, patch, row.patch_kept[l], g.scale), g.x_of_column(int(l) + 1), y);
  }
  y += g.cell_h + 2 * ts;
  for (size_t l = 0; l < row.patch_kept.size(); ++l) {
    const auto& mask = row.patch_kept[l];
    const std::string count = std::to_string(count_kept(mask)) + "/" + std::to_string(mask.size()) + " kept";
    text_at(canvas, g.x_of_column(int(l) + 1), y, fit(count, g.cell_w, ts), label);
  }
  if (!row.patch_kept.empty()) y += kLineHeight * ts;

  // Token lines: kept tokens bright, dropped ones pale and struck through;
  // wrapped lines hang under the first token, after the label.
  for (const auto& [name, mask] : token_lines(row)) {
    const std::string prefix = name + ":";
    const int indent = g.margin + text_width(prefix, ts) + kGlyphAdvance * ts;
    text_at(canvas, g.margin, y, prefix, label);
    std::vector<Word> words;
    for (size_t t = 0; t < row.tokens.size(); ++t) {
      const bool kept = mask.empty() || mask[t];
      words.push_back({printable_token(row.tokens[t]),
                       kept ? TextStyle{kKeptTokenColor, ts, false} : TextStyle{kDroppedTokenColor, ts, true}});
    }
    y = flow_words(canvas, words, indent, indent, y, right, ts);
  }
  return y;
}

int draw_figure(Image* canvas, const Image& image, int patch, const std::vector<OverlayRow>& rows,
                const OverlayFigureOptions& options, const Layout& g) {
  int y = g.margin;
  if (!options.title.empty())
    y = flow_words(canvas, split_words(options.title, {kTitleColor, g.ts, false}), g.margin, g.margin, y,
                   g.width - g.margin, g.ts) +
        g.gap;
  for (size_t r = 0; r < rows.size(); ++r) {
    if (r > 0) {  // a thin rule between questions, a gap either side
      y += g.gap;
      if (canvas) fill_rect(*canvas, g.margin, y, g.width - 2 * g.margin, 1, kRuleColor);
      y += g.gap;
    }
    y = draw_row(canvas, image, patch, rows[r], g, y);
  }
  return y + g.margin;
}

}  // namespace

Image patch_overlay(const Image& image, int patch, const std::vector<uint8_t>& kept, int scale,
                    const PatchOverlayOptions& options) {
  const Grid grid = patch_grid(image, patch, "patch_overlay");
  if (kept.size() != grid.cells())
    throw ArgumentError("patch_overlay: " + std::to_string(kept.size()) + " mask entries for a " +
                        std::to_string(grid.cols) + "x" + std::to_string(grid.rows) + " patch grid");
  Image out = upscale(image, scale);
  const int cell = patch * scale;
  for (int gy = 0; gy < grid.rows; ++gy)
    for (int gx = 0; gx < grid.cols; ++gx)
      if (!kept[size_t(gy) * grid.cols + gx])
        blend_rect(out, gx * cell, gy * cell, cell, cell, kDroppedColor, kDroppedDarkening);
  if (options.grid && cell >= 4) {
    for (int gx = 0; gx < grid.cols; ++gx)
      blend_rect(out, gx * cell, 0, 1, out.height, colors::kWhite, kGridLightening);
    for (int gy = 0; gy < grid.rows; ++gy) blend_rect(out, 0, gy * cell, out.width, 1, colors::kWhite, kGridLightening);
    blend_rect(out, out.width - 1, 0, 1, out.height, colors::kWhite, kGridLightening);
    blend_rect(out, 0, out.height - 1, out.width, 1, colors::kWhite, kGridLightening);
  }
  if (options.kept_count) {
    const std::string count = std::to_string(count_kept(kept)) + "/" + std::to_string(kept.size());
    fill_rect(out, 1, 1, text_width(count) + 2, kGlyphHeight + 2, colors::kBlack);
    draw_text(out, 2, 2, count, {colors::kWhite, 1, false});
  }
  return out;
}

Image overlay_figure(const Image& image, int patch, const std::vector<OverlayRow>& rows,
                     const OverlayFigureOptions& options) {
  const Grid grid = patch_grid(image, patch, "overlay_figure");
  if (options.scale < 1 || options.text_scale < 1)
    throw ArgumentError("overlay_figure: scale and text_scale must be >= 1");
  size_t layers = 0;
  for (size_t r = 0; r < rows.size(); ++r) {
    check_row(rows[r], r, grid);
    layers = std::max(layers, rows[r].layer_names.size());
  }
  Layout g{};
  g.scale = options.scale, g.ts = options.text_scale;
  g.margin = kFigureMargin * g.ts, g.gap = kFigureCellGap * g.ts;
  g.cell_w = image.width * g.scale, g.cell_h = image.height * g.scale;
  const int columns = 1 + int(layers);
  g.width = 2 * g.margin + columns * g.cell_w + (columns - 1) * g.gap;

  const int height = draw_figure(nullptr, image, patch, rows, options, g);
  Image canvas = blank_canvas(g.width, height, kBackground);
  draw_figure(&canvas, image, patch, rows, options, g);
  return canvas;
}

}  // namespace st
