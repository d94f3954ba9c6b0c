// Figures (viz/): the bitmap font, the raster helpers, the kept-patch
// overlays and the overlay figure, and viz/plots.py run on small synthetic
// evaluation files.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "data/image.h"
#include "engine/error.h"
#include "tests/support.h"
#include "viz/draw.h"
#include "viz/font.h"
#include "viz/overlay.h"

namespace fs = std::filesystem;
using st::Image;
using st::Rgb;
using st::testing::TempDir;

namespace {

// A deterministic image whose every pixel differs from its neighbours, so a
// misplaced copy shows.
Image pattern_image(int w, int h) {
  Image img{w, h, std::vector<uint8_t>(size_t(w) * h * 3)};
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int c = 0; c < 3; ++c) img.pixels[(size_t(y) * w + x) * 3 + c] = uint8_t((x * 7 + y * 13 + c * 71) % 256);
  return img;
}

// Pixels of `canvas` that differ from `background`, as (x, y) pairs.
std::set<std::pair<int, int>> ink(const Image& canvas, Rgb background) {
  std::set<std::pair<int, int>> set;
  for (int y = 0; y < canvas.height; ++y)
    for (int x = 0; x < canvas.width; ++x)
      if (!(st::pixel_at(canvas, x, y) == background)) set.insert({x, y});
  return set;
}

std::string plots_script() { return (fs::path(__FILE__).parent_path().parent_path() / "viz" / "plots.py").string(); }

st::testing::CommandResult run_plots(const std::string& args) {
  return st::testing::run_command(st::testing::python_interpreter() + " " + plots_script() + " " + args);
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path);
  f << text;
  REQUIRE(f.good());
}

std::string eval_json(const std::string& method, double accuracy, double gflops_mean, double ratio,
                      const std::string& extra = "") {
  std::string per_example = "[";
  for (int i = 0; i < 20; ++i) per_example += (i ? ", " : "") + std::to_string(gflops_mean * (0.8 + 0.02 * i));
  per_example += "]";
  return "{\"method\": \"" + method + "\", \"accuracy\": " + std::to_string(accuracy) +
         ", \"gflops_mean\": " + std::to_string(gflops_mean) + ", \"flops_ratio_mean\": " + std::to_string(ratio) +
         ", \"examples\": 20, \"latency_ms_batch1\": 3.5, \"throughput_batch32\": 900.0, \"gflops\": " + per_example +
         ", \"flops_ratio\": [0.5]" + extra + "}";
}

}  // namespace

TEST_CASE("viz: a glyph sets exactly the pixels designed for it") {
  // 'A' as drawn in viz/font.cpp.
  const st::GlyphRows a = {0b01110, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001, 0, 0};
  CHECK(st::glyph_rows('A') == a);
  CHECK(st::glyph_pixel('A', 0, 1));
  CHECK_FALSE(st::glyph_pixel('A', 0, 0));
  CHECK_FALSE(st::glyph_pixel('A', 5, 3));  // outside the cell

  const int scale = 3, x0 = 4, y0 = 2;
  Image canvas = st::blank_canvas(40, 40, st::colors::kWhite);
  st::draw_text(canvas, x0, y0, "A", {st::colors::kRed, scale, false});
  for (int y = 0; y < canvas.height; ++y)
    for (int x = 0; x < canvas.width; ++x) {
      const int col = (x - x0) / scale, row = (y - y0) / scale;
      const bool designed = x >= x0 && y >= y0 && st::glyph_pixel('A', col, row);
      CHECK((st::pixel_at(canvas, x, y) == (designed ? st::colors::kRed : st::colors::kWhite)));
    }
}

TEST_CASE("viz: text width is characters x advance x scale, and the ink stays inside it") {
  CHECK(st::text_width("", 2) == 0);
  CHECK(st::text_width("cat", 1) == 3 * st::kGlyphAdvance);
  CHECK(st::text_width("what color?", 2) == 11 * st::kGlyphAdvance * 2);
  Image canvas = st::blank_canvas(200, 40, st::colors::kWhite);
  st::draw_text(canvas, 10, 5, "Wg|@_", {st::colors::kBlack, 2, false});
  for (auto [x, y] : ink(canvas, st::colors::kWhite)) {
    CHECK(x >= 10);
    CHECK(x < 10 + st::text_width("Wg|@_", 2));
    CHECK(y >= 5);
    CHECK(y < 5 + st::kGlyphHeight * 2);
  }
}

TEST_CASE("viz: every printable glyph but space has ink, and no two glyphs are the same") {
  std::set<st::GlyphRows> seen;
  for (int c = 32; c <= 126; ++c) {
    const st::GlyphRows& rows = st::glyph_rows(char(c));
    bool any = false;
    for (uint8_t r : rows) any = any || r != 0;
    INFO("character " << char(c));
    CHECK(any == (c != ' '));
    CHECK(seen.insert(rows).second);
  }
  CHECK(st::glyph_rows('\n') == st::glyph_rows('?'));
  CHECK(st::glyph_rows(char(0xC4)) == st::glyph_rows('?'));
}

TEST_CASE("viz: strikethrough draws one line through the x-height") {
  Image plain = st::blank_canvas(60, 20, st::colors::kWhite);
  Image struck = plain;
  st::draw_text(plain, 0, 0, "ab", {st::colors::kBlack, 1, false});
  st::draw_text(struck, 0, 0, "ab", {st::colors::kBlack, 1, true});
  for (int x = 0; x < st::text_width("ab") - 1; ++x) CHECK((st::pixel_at(struck, x, 4) == st::colors::kBlack));
  for (int y = 0; y < 20; ++y)
    if (y != 4)
      for (int x = 0; x < 60; ++x) CHECK((st::pixel_at(struck, x, y) == st::pixel_at(plain, x, y)));
}

TEST_CASE("viz: printable_token drops RoBERTa's word marker and replaces other non-ASCII") {
  CHECK(st::printable_token("\xC4\xA0"
                            "cat") == "cat");
  CHECK(st::printable_token("caf\xC3\xA9!") == "caf?!");
  CHECK(st::printable_token("a\tb") == "a?b");
  CHECK(st::printable_token("##ing") == "##ing");
}

TEST_CASE("viz: rectangles are clipped, blended and outlined as specified") {
  Image canvas = st::blank_canvas(10, 8, Rgb{200, 100, 0});
  CHECK(canvas.pixels.size() == 10u * 8u * 3u);
  st::fill_rect(canvas, -3, -3, 5, 5, st::colors::kBlack);  // clipped to (0,0)-(2,2)
  CHECK((st::pixel_at(canvas, 1, 1) == st::colors::kBlack));
  CHECK((st::pixel_at(canvas, 2, 2) == Rgb{200, 100, 0}));
  st::blend_rect(canvas, 5, 5, 100, 100, st::colors::kWhite, 0.5f);
  CHECK((st::pixel_at(canvas, 9, 7) == Rgb{228, 178, 128}));  // 200+27.5, 100+77.5, 0+127.5, rounded
  CHECK((st::pixel_at(canvas, 4, 4) == Rgb{200, 100, 0}));
  CHECK_THROWS_AS(st::blend_rect(canvas, 0, 0, 1, 1, st::colors::kWhite, 1.5f), st::ArgumentError);

  Image box = st::blank_canvas(6, 6, st::colors::kWhite);
  st::outline_rect(box, 1, 1, 4, 4, st::colors::kRed);
  CHECK(ink(box, st::colors::kWhite).size() == 12u);  // the 4x4 border, its 2x2 inside untouched
  CHECK((st::pixel_at(box, 2, 2) == st::colors::kWhite));

  const Image src = pattern_image(3, 2);
  const Image big = st::upscale(src, 4);
  REQUIRE(big.width == 12);
  REQUIRE(big.height == 8);
  for (int y = 0; y < 8; ++y)
    for (int x = 0; x < 12; ++x) CHECK((st::pixel_at(big, x, y) == st::pixel_at(src, x / 4, y / 4)));
  Image dest = st::blank_canvas(5, 5, st::colors::kWhite);
  st::paste(dest, src, 3, 4, 2);  // mostly off the canvas
  CHECK((st::pixel_at(dest, 4, 4) == st::pixel_at(src, 0, 0)));
  CHECK((st::pixel_at(dest, 2, 4) == st::colors::kWhite));
}

TEST_CASE("viz: patch_overlay keeps kept patches and darkens dropped ones") {
  const int patch = 16, scale = 2, cell = patch * scale;
  const Image image = pattern_image(96, 64);  // a 6 x 4 grid, not square
  std::vector<uint8_t> kept(24);
  for (size_t i = 0; i < kept.size(); ++i) kept[i] = (i * 5 + i / 6) % 3 != 0;

  for (bool grid : {false, true}) {
    CAPTURE(grid);
    const Image out = st::patch_overlay(image, patch, kept, scale, {grid, false});
    REQUIRE(out.width == 96 * scale);
    REQUIRE(out.height == 64 * scale);
    for (int y = 0; y < out.height; ++y)
      for (int x = 0; x < out.width; ++x) {
        const bool on_grid_line = x % cell == 0 || y % cell == 0 || x == out.width - 1 || y == out.height - 1;
        if (grid && on_grid_line) continue;
        const bool is_kept = kept[size_t(y / cell) * 6 + size_t(x / cell)];
        for (int c = 0; c < 3; ++c) {
          const int source = image.at(x / scale, y / scale, c);
          const int toward = c == 0 ? st::kDroppedColor.r : c == 1 ? st::kDroppedColor.g : st::kDroppedColor.b;
          const int expected = is_kept ? source : int(std::lround(source + st::kDroppedDarkening * (toward - source)));
          if (out.at(x, y, c) != expected) {
            FAIL_CHECK("pixel (" << x << ", " << y << ") channel " << c << ": " << int(out.at(x, y, c))
                                 << " != " << expected);
            return;
          }
        }
      }
    if (grid) CHECK(out.at(0, 0, 0) > image.at(0, 0, 0));  // grid lines lighten
  }
  CHECK_THROWS_AS(st::patch_overlay(image, patch, std::vector<uint8_t>(36, 1), scale), st::ArgumentError);
  CHECK_THROWS_AS(st::patch_overlay(pattern_image(90, 64), patch, kept, scale), st::ArgumentError);
  CHECK_THROWS_AS(st::patch_overlay(image, patch, kept, 0), st::ArgumentError);
}

TEST_CASE("viz: the overlay figure's size follows from its rows and columns") {
  const Image image = pattern_image(96, 96);
  const int patch = 16, grid = 36;
  auto row = [&](int layers) {
    st::OverlayRow r;
    r.title = "what color is the cat? -> white (1.23 GFLOPs)";
    r.tokens = {"<s>",
                "what",
                "\xC4\xA0"
                "color",
                "\xC4\xA0is",
                "\xC4\xA0the",
                "\xC4\xA0"
                "cat",
                "?",
                "</s>"};
    for (int l = 0; l < layers; ++l) {
      r.layer_names.push_back(l == 0 ? "vit 1" : "cross " + std::to_string(l - 1));
      std::vector<uint8_t> patches(grid, 1), tokens(r.tokens.size(), 1);
      for (int p = 0; p < grid; p += l + 2) patches[size_t(p)] = 0;
      if (l > 0) tokens[4] = 0;
      r.patch_kept.push_back(patches);
      r.token_kept.push_back(tokens);
    }
    return r;
  };
  st::OverlayFigureOptions options;
  options.scale = 2;
  const auto h = [&](int rows, int layers) {
    const Image fig = st::overlay_figure(image, patch, std::vector<st::OverlayRow>(size_t(rows), row(layers)), options);
    const int columns = 1 + layers;
    CHECK(fig.width == 2 * st::kFigureMargin + columns * 96 * 2 + (columns - 1) * st::kFigureCellGap);
    CHECK(fig.pixels.size() == size_t(fig.width) * fig.height * 3);
    return fig.height;
  };
  const int one = h(1, 3), two = h(2, 3), three = h(3, 3);
  CHECK(one >= 2 * st::kFigureMargin + 96 * 2);
  CHECK(three - two == two - one);  // every row adds the same height
  CHECK(two > one);
  h(2, 1);

  // The original image sits, upscaled, in the first column of the first row.
  const Image fig = st::overlay_figure(image, patch, {row(3)}, options);
  const Image big = st::upscale(image, 2);
  int found_at = -1;
  for (int y = 0; y + big.height <= fig.height && found_at < 0; ++y) {
    bool same = true;
    for (int x = 0; x < big.width && same; ++x)
      same = st::pixel_at(fig, st::kFigureMargin + x, y) == st::pixel_at(big, x, 0);
    if (same) found_at = y;
  }
  REQUIRE(found_at >= 0);
  for (int y = 0; y < big.height; ++y)
    for (int x = 0; x < big.width; x += 7)
      CHECK((st::pixel_at(fig, st::kFigureMargin + x, found_at + y) == st::pixel_at(big, x, y)));

  st::OverlayRow bad = row(2);
  bad.patch_kept.pop_back();
  CHECK_THROWS_AS(st::overlay_figure(image, patch, {bad}, options), st::ArgumentError);
  bad = row(2);
  bad.token_kept[1].pop_back();
  CHECK_THROWS_AS(st::overlay_figure(image, patch, {bad}, options), st::ArgumentError);
}

TEST_CASE("viz: a figure survives save_png and load_image unchanged") {
  TempDir dir;
  st::OverlayRow r{"is there a dog?", {"is", "there", "a", "dog", "?"}, {{1, 1, 0, 1, 0}}, {"cross 2"}, {{1, 0, 1, 0}}};
  const Image fig = st::overlay_figure(pattern_image(32, 32), 16, {r}, {"title", 3, 2});
  st::save_png(dir / "fig.png", fig);
  const Image back = st::load_image(dir / "fig.png");
  CHECK(back.width == fig.width);
  CHECK(back.height == fig.height);
  CHECK(back.pixels == fig.pixels);
}

TEST_CASE("viz: plots.py draws the FLOPs histogram and the accuracy-FLOPs trade-off") {
  TempDir dir;
  write_text(dir / "full.json", eval_json("full", 0.70, 10.0, 1.0, ", \"label\": \"METER (full)\""));
  write_text(dir / "t50.json", eval_json("smarttrim", 0.69, 5.0, 0.5, ", \"target\": 0.5"));
  write_text(dir / "t30.json", eval_json("smarttrim", 0.66, 3.0, 0.3, ", \"target\": 0.3"));
  write_text(dir / "th1.json", eval_json("theta_sweep", 0.68, 4.0, 0.4, ", \"token_threshold\": 0.4"));
  write_text(dir / "th2.json", eval_json("theta_sweep", 0.64, 2.5, 0.25, ", \"token_threshold\": 0.6"));
  write_text(dir / "k1.json", eval_json("topk", 0.62, 5.0, 0.5, ", \"keep_ratio\": 0.5"));
  write_text(dir / "k2.json", eval_json("topk", 0.55, 3.0, 0.3, ", \"keep_ratio\": 0.3"));
  const std::string all = dir / "full.json " + dir / "t50.json " + dir / "t30.json " + dir / "th1.json " +
                          dir / "th2.json " + dir / "k1.json " + dir / "k2.json";
  for (const std::string kind : {"histogram", "tradeoff"}) {
    CAPTURE(kind);
    const std::string png = dir / (kind + ".png");
    const auto r = run_plots(kind + " --out " + png + " " +
                             (kind == "histogram" ? dir / "full.json " + dir / "t50.json " + dir / "t30.json" : all));
    INFO(r.output);
    REQUIRE(r.status == 0);
    const Image plot = st::load_image(png);
    CHECK(plot.width >= 400);
    CHECK(plot.height >= 300);
    CHECK(plot.width < 4000);
  }
}

TEST_CASE("viz: plots.py names the file and key it cannot use, and writes nothing") {
  TempDir dir;
  write_text(dir / "ok.json", eval_json("smarttrim", 0.69, 5.0, 0.5));
  std::string no_accuracy = eval_json("smarttrim", 0.69, 5.0, 0.5);
  no_accuracy.replace(no_accuracy.find("\"accuracy\""), 10, "\"accuracz\"");
  write_text(dir / "broken.json", no_accuracy);
  write_text(dir / "bad.json", "{\"accuracy\": ");

  const std::string png = dir / "out.png";
  auto r = run_plots("tradeoff --out " + png + " " + dir / "ok.json " + dir / "broken.json");
  CHECK(r.status == 1);
  CHECK(r.output.find("'accuracy'") != std::string::npos);
  CHECK(r.output.find("broken.json") != std::string::npos);
  CHECK(r.output.find("Traceback") == std::string::npos);

  r = run_plots("histogram --out " + png + " " + dir / "bad.json");
  CHECK(r.status == 1);
  CHECK(r.output.find("bad.json") != std::string::npos);
  r = run_plots("histogram --out " + png + " " + dir / "missing.json");
  CHECK(r.status == 1);
  CHECK(r.output.find("missing.json") != std::string::npos);

  r = run_plots("scatter --out " + png + " " + dir / "ok.json");
  CHECK(r.status == 2);
  CHECK(r.output.find("usage") != std::string::npos);
  r = run_plots("tradeoff " + dir / "ok.json");  // no --out
  CHECK(r.status == 2);

  // Nothing but the inputs is left: no PNG and no temporary file.
  int files = 0;
  for (const auto& entry : fs::directory_iterator(dir.path)) files += entry.path().extension() == ".json" ? 0 : 1;
  CHECK(files == 0);
}
