// Image decoding, PIL-compatible resizing, cropping and normalisation
// (data/image.h). Reference images come from PIL through
// tests/image_reference.py; pixels travel both ways as raw RGB files in a
// temporary directory, so the comparison never depends on a JPEG decoder.
#include <doctest/doctest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "data/image.h"
#include "engine/error.h"
#include "tests/support.h"

namespace fs = std::filesystem;
using st::Image;
using st::testing::TempDir;
using st::ResizeFilter;

namespace {

std::string script() { return (fs::path(__FILE__).parent_path() / "image_reference.py").string(); }

void python(const std::string& args) {
  auto r = st::testing::run_command(st::testing::python_interpreter() + " " + script() + " " + args);
  INFO(r.output);
  REQUIRE(r.status == 0);
}

void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  REQUIRE(f.good());
}

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  REQUIRE(f.good());
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

// A deterministic stand-in for a photograph: smooth lighting gradients and
// soft blobs (the low frequencies of a scene), sensor-like noise, and hard
// edges from an opaque disc and a bar (where ringing of bicubic filters and
// clamping show up).
Image synthetic_photo(int w, int h, uint32_t seed) {
  Image img{w, h, std::vector<uint8_t>(size_t(w) * h * 3)};
  uint32_t state = seed;
  auto noise = [&state] {  // an LCG; its top bits are uniform enough here
    state = state * 1664525u + 1013904223u;
    return int(state >> 24) - 128;
  };
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      const double u = double(x) / w, v = double(y) / h;
      for (int c = 0; c < 3; ++c) {
        double val = 60 + 120 * u * (c == 0) + 110 * v * (c == 1) + 80 * (1 - u) * (c == 2) +
                     40 * std::sin(9 * u + 2 * c) * std::cos(7 * v - c);
        const double dx = u - 0.6, dy = v - 0.4;
        if (dx * dx + dy * dy < 0.04) val = c == 0 ? 250 : 15;  // a red disc
        if (x > w / 5 && x < w / 5 + 6) val = 255 * (c != 1);   // a thin magenta bar
        val += noise() / 16.0;
        img.pixels[(size_t(y) * w + x) * 3 + c] = uint8_t(std::clamp(std::lround(val), 0L, 255L));
      }
    }
  return img;
}

int max_diff(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  REQUIRE(a.size() == b.size());
  int worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(int(a[i]) - int(b[i])));
  return worst;
}

// Resizes `img` here and with PIL; returns the largest difference.
int compare_with_pil(const TempDir& dir, const Image& img, int w, int h, ResizeFilter filter) {
  const std::string name = filter == ResizeFilter::Bicubic ? "bicubic" : "bilinear";
  write_bytes(dir / "in.rgb", img.pixels);
  python("resize " + (dir / "in.rgb") + " " + std::to_string(img.width) + " " + std::to_string(img.height) + " " +
         std::to_string(w) + " " + std::to_string(h) + " " + name + " " + (dir / "out.rgb"));
  const Image ours = st::resize(img, w, h, filter);
  CHECK(ours.width == w);
  CHECK(ours.height == h);
  return max_diff(ours.pixels, read_bytes(dir / "out.rgb"));
}

void check_format_error(const std::string& path, const std::string& what) {
  try {
    st::load_image(path);
    FAIL("no FormatError for " << what);
  } catch (const st::FormatError& e) {
    const std::string msg = e.what();
    INFO(what << ": " << msg);
    CHECK(msg.find(path) != std::string::npos);
  }
}

}  // namespace

TEST_CASE("image: decode PNG, BMP and JPEG written by PIL") {
  TempDir dir;
  const Image src = synthetic_photo(37, 23, 1);  // odd sizes: row padding in BMP
  write_bytes(dir / "src.rgb", src.pixels);
  for (const char* ext : {"png", "bmp"}) {
    python("save " + (dir / "src.rgb") + " 37 23 " + (dir / (std::string("a.") + ext)));
    const Image img = st::load_image(dir / (std::string("a.") + ext));
    CHECK(img.width == 37);
    CHECK(img.height == 23);
    CHECK(img.pixels == src.pixels);  // lossless formats round-trip exactly
  }
  SUBCASE("JPEG is close to PIL's decode, not exact: stb and libjpeg round differently") {
    python("save " + (dir / "src.rgb") + " 37 23 " + (dir / "a.jpg"));
    python("decode " + (dir / "a.jpg") + " " + (dir / "pil.rgb"));
    const Image img = st::load_image(dir / "a.jpg");
    REQUIRE(img.width == 37);
    REQUIRE(img.height == 23);
    const auto ref = read_bytes(dir / "pil.rgb");
    REQUIRE(ref.size() == img.pixels.size());
    double total = 0;
    for (size_t i = 0; i < img.pixels.size(); ++i) total += std::abs(int(img.pixels[i]) - int(ref[i]));
    MESSAGE("JPEG: mean |stb - PIL| = " << total / double(img.pixels.size()) << ", max " << max_diff(img.pixels, ref));
    CHECK(total / double(img.pixels.size()) < 2.0);
  }
  SUBCASE("grey and RGBA PNGs come out as RGB") {
    python("save " + (dir / "src.rgb") + " 37 23 " + (dir / "g.png") + " grey");
    const Image g = st::load_image(dir / "g.png");
    REQUIRE(g.pixels.size() == size_t(37 * 23 * 3));
    for (size_t p = 0; p < size_t(37 * 23); ++p) {
      CHECK(g.pixels[p * 3] == g.pixels[p * 3 + 1]);
      CHECK(g.pixels[p * 3] == g.pixels[p * 3 + 2]);
    }
    python("save " + (dir / "src.rgb") + " 37 23 " + (dir / "rgba.png") + " rgba");
    CHECK(st::load_image(dir / "rgba.png").pixels == src.pixels);  // alpha dropped, colour intact
  }
}

TEST_CASE("image: resize matches PIL within 2 levels, both filters, up and down") {
  TempDir dir;
  const Image img = synthetic_photo(257, 191, 7);
  struct Size { int w, h; };
  // Shrinks (antialiased), enlargements, mixed, odd and tiny targets, and a
  // pass that keeps its size (PIL skips it).
  const Size sizes[] = {{64, 48}, {100, 151}, {13, 7}, {1, 1}, {300, 211}, {517, 383}, {400, 90}, {257, 100}, {50, 191}};
  for (ResizeFilter f : {ResizeFilter::Bilinear, ResizeFilter::Bicubic})
    for (const Size& s : sizes) {
      INFO((f == ResizeFilter::Bicubic ? "bicubic " : "bilinear ") << s.w << "x" << s.h);
      CHECK(compare_with_pil(dir, img, s.w, s.h, f) <= 2);
    }
}

TEST_CASE("image: resize of a real photograph matches PIL") {
  // The only photograph found on the development machine (a circuit board,
  // from the Rust embedded book); skipped where it is absent.
  const std::string photo =
      std::string(std::getenv("HOME") ? std::getenv("HOME") : "/root") +
      "/.rustup/toolchains/stable-x86_64-unknown-linux-gnu/share/doc/rust/html/embedded-book/assets/f3.jpg";
  if (!fs::exists(photo)) {
    MESSAGE("no photograph at " << photo << "; skipped");
    return;
  }
  TempDir dir;
  const Image img = st::load_image(photo);
  REQUIRE(img.width > 100);
  for (ResizeFilter f : {ResizeFilter::Bilinear, ResizeFilter::Bicubic}) {
    CHECK(compare_with_pil(dir, img, 224, 224, f) <= 2);
    CHECK(compare_with_pil(dir, img, 385, 97, f) <= 2);
    CHECK(compare_with_pil(dir, img, img.width * 3 / 2 + 1, img.height + 3, f) <= 2);
  }
}

TEST_CASE("image: unreadable files are FormatErrors naming the file") {
  TempDir dir;
  check_format_error(dir / "missing.png", "missing file");
  write_bytes(dir / "empty.png", {});
  check_format_error(dir / "empty.png", "empty file");
  std::vector<uint8_t> random(4000);
  uint32_t s = 12345;
  for (auto& b : random) b = uint8_t((s = s * 1103515245u + 12345u) >> 16);
  write_bytes(dir / "random.jpg", random);
  check_format_error(dir / "random.jpg", "random bytes");

  const Image src = synthetic_photo(64, 64, 3);
  write_bytes(dir / "src.rgb", src.pixels);
  for (const char* ext : {"png", "jpg", "bmp"}) {
    const std::string full = dir / (std::string("full.") + ext);
    python("save " + (dir / "src.rgb") + " 64 64 " + full);
    const auto bytes = read_bytes(full);
    for (size_t keep : {bytes.size() / 2, bytes.size() - 10, size_t(20)}) {
      const std::string cut = dir / ("cut" + std::to_string(keep) + "." + ext);
      write_bytes(cut, std::vector<uint8_t>(bytes.begin(), bytes.begin() + long(keep)));
      check_format_error(cut, std::string("truncated ") + ext + " at " + std::to_string(keep) + " bytes");
    }
  }
  // A directory is not a file.
  check_format_error(dir.path.string(), "directory");
}

TEST_CASE("image: center crop and normalisation of known pixels") {
  Image img{5, 4, std::vector<uint8_t>(5 * 4 * 3)};
  for (int y = 0; y < 4; ++y)
    for (int x = 0; x < 5; ++x)
      for (int c = 0; c < 3; ++c) img.pixels[(size_t(y) * 5 + x) * 3 + c] = uint8_t(100 * c + 10 * y + x);

  // (5 - 2) / 2 = 1.5 rounds to 2 (half to even), (4 - 3) / 2 = 0.5 rounds to 0: torchvision's offsets.
  const Image crop = st::center_crop(img, 2, 3);
  CHECK(crop.width == 2);
  CHECK(crop.height == 3);
  CHECK(crop.at(0, 0, 0) == 2);
  CHECK(crop.at(1, 2, 2) == 200 + 20 + 3);
  CHECK_THROWS_AS(st::center_crop(img, 6, 2), st::ArgumentError);

  const st::Tensor t = st::to_tensor(img, st::kClipNormalization);
  REQUIRE(t.shape() == st::Shape{3, 4, 5});
  const auto v = t.to_vector();
  // Pixel (x=3, y=2): channel values 23, 123, 223.
  const double expect[3] = {(23 / 255.0 - 0.48145466) / 0.26862954, (123 / 255.0 - 0.4578275) / 0.26130258,
                            (223 / 255.0 - 0.40821073) / 0.27577711};
  for (int c = 0; c < 3; ++c) CHECK(v[size_t(c) * 20 + 2 * 5 + 3] == doctest::Approx(expect[c]).epsilon(1e-5));
  const auto w = st::to_tensor(img, st::kImageNetNormalization).to_vector();
  CHECK(w[0] == doctest::Approx((0 / 255.0 - 0.485) / 0.229).epsilon(1e-5));
  CHECK(w[2 * 20 + 19] == doctest::Approx((234 / 255.0 - 0.406) / 0.225).epsilon(1e-5));
}

TEST_CASE("image: METER's CLIP preprocessing matches PIL resize + center crop") {
  TempDir dir;
  for (auto [w, h] : {std::pair{257, 191}, std::pair{150, 301}, std::pair{99, 99}}) {
    INFO(w << "x" << h);
    const Image img = synthetic_photo(w, h, uint32_t(w * h));
    write_bytes(dir / "in.rgb", img.pixels);
    python("shorter_crop " + (dir / "in.rgb") + " " + std::to_string(w) + " " + std::to_string(h) + " 224 " +
           (dir / "out.rgb"));
    const auto ref = read_bytes(dir / "out.rgb");
    const st::Tensor t = st::clip_preprocess(img, 224);
    REQUIRE(t.shape() == st::Shape{3, 224, 224});
    const auto v = t.to_vector();
    const size_t plane = 224 * 224;
    double worst = 0;
    for (int c = 0; c < 3; ++c)
      for (size_t p = 0; p < plane; ++p) {
        const double e = (ref[p * 3 + c] / 255.0 - st::kClipNormalization.mean[c]) / st::kClipNormalization.std[c];
        worst = std::max(worst, std::abs(v[c * plane + p] - e) * st::kClipNormalization.std[c] * 255.0);
      }
    CHECK(worst <= 2.01);  // in pixel levels
  }
}

TEST_CASE("image: save_png round-trips, and a failed write leaves no file") {
  TempDir dir;
  Image image;
  image.width = 7;
  image.height = 5;
  for (int i = 0; i < 7 * 5 * 3; i++) image.pixels.push_back(uint8_t(i * 37 + 11));
  st::save_png(dir / "a.png", image);
  const Image back = st::load_image(dir / "a.png");
  CHECK(back.width == 7);
  CHECK(back.height == 5);
  CHECK(back.pixels == image.pixels);
  CHECK_FALSE(fs::exists(dir / "a.png.tmp"));
  CHECK_THROWS_AS(st::save_png(dir / "missing/b.png", image), st::Error);
  CHECK_FALSE(fs::exists(dir / "missing/b.png.tmp"));
  image.pixels.pop_back();
  CHECK_THROWS_AS(st::save_png(dir / "c.png", image), st::ArgumentError);
  CHECK_FALSE(fs::exists(dir / "c.png"));
}
