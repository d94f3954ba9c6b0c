// The weights file format (weights/format.h): round trips, 64-byte
// alignment, one hand-crafted bad file per validation rule, random bytes and
// every truncation of a valid file, and a cross-check with a Python reader
// that uses only struct + json + torch.frombuffer.
#include <doctest/doctest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tests/support.h"
#include "weights/format.h"

namespace fs = std::filesystem;
using st::Tensor;
using st::weights::WeightsFile;

namespace {

// A unique path under the temp dir; the file (and its .tmp) removed after.
struct TempPath {
  std::string path;
  TempPath() {
    static int counter = 0;
    std::random_device rd;
    path = (fs::temp_directory_path() / ("smarttrim_weights_" + std::to_string(::getpid()) + "_" +
                                         std::to_string(rd()) + "_" + std::to_string(counter++) + ".st"))
               .string();
  }
  ~TempPath() {
    std::error_code ec;
    fs::remove(path, ec);
    fs::remove(path + ".tmp", ec);
  }
};

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), std::streamsize(bytes.size()));
}

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

std::string u64le(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; i++) s[size_t(i)] = char((v >> (8 * i)) & 0xff);
  return s;
}

// A file from a header text and a data region, by hand.
std::string craft(const std::string& header, const std::string& data = std::string()) {
  return u64le(header.size()) + header + data;
}

// Opening `bytes` must throw a FormatError whose message names the file and contains `phrase`.
void expect_format_error(const std::string& bytes, const std::string& phrase) {
  TempPath t;
  write_bytes(t.path, bytes);
  std::string msg;
  try {
    WeightsFile f(t.path);
  } catch (const st::FormatError& e) {
    msg = e.what();
  }
  INFO("message: " << msg);
  CHECK(msg.find(phrase) != std::string::npos);
  CHECK(msg.find(t.path) != std::string::npos);
}

const std::string kMeta = R"("__metadata__":{"format":"smarttrim","format_version":"1"})";

std::vector<std::pair<std::string, Tensor>> sample_tensors() {
  std::vector<float> a(3 * 5 * 7);
  for (size_t i = 0; i < a.size(); i++) a[i] = float(i) * 0.25f - 3.0f;
  std::vector<int32_t> b = {1, -2, 3, 2147483647, -2147483647 - 1, 0, 42};
  return {{"layer.w", Tensor::from_vector(a, {3, 5, 7})},
          {"ids", Tensor::from_ints(b, {7})},
          {"scalar", Tensor::from_vector({3.5f}, {})},
          {"empty", Tensor::zeros({2, 0, 3})},
          {"bias", Tensor::from_vector({1.0f, -1.0f, 0.5f}, {1, 3})}};
}


}  // namespace

TEST_CASE("weights: round trip of f32, i32, 0-d and empty tensors with metadata") {
  TempPath t;
  auto tensors = sample_tensors();
  std::map<std::string, std::string> meta = {{"config", R"({"hidden": 768, "layers": 12})"}, {"note", "hello"}};
  st::weights::save(t.path, tensors, meta);
  CHECK(!fs::exists(t.path + ".tmp"));

  WeightsFile f(t.path);
  CHECK(f.metadata().at("format") == "smarttrim");
  CHECK(f.metadata().at("format_version") == "1");
  CHECK(f.metadata().at("config") == meta["config"]);
  CHECK(f.metadata().at("note") == "hello");
  CHECK(f.entries().size() == tensors.size());
  for (const auto& [name, orig] : tensors) {
    REQUIRE(f.contains(name));
    Tensor got = f.get(name);
    CHECK(got.shape() == orig.shape());
    CHECK(got.dtype() == orig.dtype());
    if (orig.dtype() == st::DType::F32) CHECK(got.to_vector() == orig.to_vector());
    else CHECK(got.to_ints() == orig.to_ints());
  }
  // entries are in file order
  for (size_t i = 1; i < f.entries().size(); i++) CHECK(f.entries()[i - 1].offset <= f.entries()[i].offset);
  CHECK(!f.contains("nope"));
  CHECK_THROWS_AS(f.get("nope"), st::ArgumentError);

  // saving again over an existing file replaces it
  st::weights::save(t.path, {{"x", Tensor::from_ints({5}, {1})}}, {});
  WeightsFile g(t.path);
  CHECK(g.entries().size() == 1);
  CHECK(g.get("x").to_ints() == std::vector<int32_t>{5});
}

TEST_CASE("weights: aligned tensors that tile the data region, as safetensors requires (raw header)") {
  TempPath t;
  st::weights::save(t.path, sample_tensors(), {{"k", "v"}});
  std::string bytes = read_bytes(t.path);
  REQUIRE(bytes.size() >= 8);
  uint64_t len = 0;
  for (int i = 0; i < 8; i++) len |= uint64_t(uint8_t(bytes[size_t(i)])) << (8 * i);
  CHECK((8 + len) % 64 == 0);
  REQUIRE(8 + len <= bytes.size());
  auto h = nlohmann::json::parse(bytes.substr(8, len));
  REQUIRE(h.is_object());
  std::vector<std::pair<uint64_t, uint64_t>> ranges;  // every entry, padding included
  int tensors = 0, paddings = 0;
  for (auto it = h.begin(); it != h.end(); ++it) {
    if (it.key() == "__metadata__") {
      for (auto m = it.value().begin(); m != it.value().end(); ++m) CHECK(m.value().is_string());
      continue;
    }
    uint64_t b = it.value()["data_offsets"][0].get<uint64_t>();
    uint64_t e = it.value()["data_offsets"][1].get<uint64_t>();
    ranges.push_back({b, e});
    if (it.key().rfind("__padding_", 0) == 0) {
      paddings++;
      CHECK(it.value()["dtype"] == "U8");
      CHECK(it.value()["shape"] == nlohmann::json::array({e - b}));
      CHECK(bytes.substr(8 + len + b, e - b) == std::string(e - b, '\0'));
      continue;
    }
    tensors++;
    if (e > b) CHECK((8 + len + b) % 64 == 0);
  }
  CHECK(tensors == 5);
  CHECK(paddings > 0);  // the sample has sizes that are not multiples of 64
  std::sort(ranges.begin(), ranges.end());
  uint64_t cursor = 0;
  for (auto [b, e] : ranges) {
    CHECK(b == cursor);
    cursor = e;
  }
  CHECK(8 + len + cursor == bytes.size());

  WeightsFile f(t.path);  // padding entries are not tensors
  CHECK(f.entries().size() == 5);
}

TEST_CASE("weights: a padding entry of another dtype is refused") {
  std::string data(64, '\0');
  expect_format_error(craft(R"({"__padding_0__": {"dtype": "F32", "shape": [16], "data_offsets": [0, 64]}})", data),
                      "a padding entry must have dtype U8");
}

TEST_CASE("weights: save refuses bad arguments and leaves no file") {
  TempPath t;
  CHECK_THROWS_AS(st::weights::save(t.path, {{"a", Tensor()}}, {}), st::ArgumentError);
  CHECK_THROWS_AS(st::weights::save(t.path, {{"a", Tensor::ones({1})}, {"a", Tensor::ones({1})}}, {}),
                  st::ArgumentError);
  CHECK_THROWS_AS(st::weights::save(t.path, {{"__metadata__", Tensor::ones({1})}}, {}), st::ArgumentError);
  CHECK_THROWS_AS(st::weights::save(t.path, {{"__padding_0__", Tensor::ones({1})}}, {}), st::ArgumentError);
  CHECK_THROWS_AS(st::weights::save(t.path, {}, {{"format", "other"}}), st::ArgumentError);
  CHECK(!fs::exists(t.path));
  CHECK(!fs::exists(t.path + ".tmp"));
  // a directory that does not exist: an error, and nothing left behind
  std::string bad = t.path + "_nodir/file.st";
  CHECK_THROWS_AS(st::weights::save(bad, {{"a", Tensor::ones({1})}}, {}), st::Error);
  CHECK(!fs::exists(bad + ".tmp"));
}

TEST_CASE("weights: missing, empty and short files") {
  TempPath t;
  std::string msg;
  try {
    WeightsFile f(t.path);
  } catch (const st::FormatError& e) {
    msg = e.what();
  }
  CHECK(msg.find("cannot open") != std::string::npos);
  CHECK(msg.find(t.path) != std::string::npos);
  expect_format_error("", "empty file");
  expect_format_error("abc", "too short");
  expect_format_error(std::string(7, '\0'), "too short");
}

TEST_CASE("weights: header length past the end, or absurd") {
  expect_format_error(u64le(100) + "{}", "past the end of the file");
  expect_format_error(u64le(uint64_t(1) << 62) + "{}", "absurd");
  expect_format_error(u64le(~uint64_t(0)), "absurd");
}

TEST_CASE("weights: header not JSON, or not an object") {
  expect_format_error(craft("{\"a\": "), "not valid JSON");
  expect_format_error(craft("\xff\xfe garbage"), "not valid JSON");
  expect_format_error(craft(""), "not valid JSON");
  expect_format_error(craft("[1, 2, 3]"), "not a JSON object");
  expect_format_error(craft("\"text\"   "), "not a JSON object");
}

TEST_CASE("weights: entries missing fields or with the wrong JSON types") {
  const std::string data(64, '\0');
  expect_format_error(craft(R"({"w": {"shape": [2], "data_offsets": [0, 8]}})", data), "missing 'dtype'");
  expect_format_error(craft(R"({"w": {"dtype": "F32", "data_offsets": [0, 8]}})", data), "missing 'shape'");
  expect_format_error(craft(R"({"w": {"dtype": "F32", "shape": [2]}})", data), "missing 'data_offsets'");
  expect_format_error(craft(R"({"w": 5})", data), "entry is not an object");
  expect_format_error(craft(R"({"w": {"dtype": 1, "shape": [2], "data_offsets": [0, 8]}})", data),
                      "'dtype' has the wrong type");
  expect_format_error(craft(R"({"w": {"dtype": "F32", "shape": 2, "data_offsets": [0, 8]}})", data),
                      "'shape' has the wrong type");
  expect_format_error(craft(R"({"w": {"dtype": "F32", "shape": [2.5], "data_offsets": [0, 8]}})", data),
                      "'shape' has the wrong type");
  expect_format_error(craft(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0]}})", data),
                      "'data_offsets' has the wrong type");
  expect_format_error(craft(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 8]}})", data),
                      "'data_offsets' has the wrong type");
  expect_format_error(craft(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": "0-8"}})", data),
                      "'data_offsets' has the wrong type");
}

TEST_CASE("weights: unknown dtype, negative dims, bad offsets and sizes") {
  const std::string data(64, '\0');
  expect_format_error(craft(R"({"w": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]}})", data),
                      "unknown dtype 'F16'");
  expect_format_error(craft(R"({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})", data),
                      "negative dimension");
  expect_format_error(craft(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}})", data),
                      "end 0 < begin 8");
  expect_format_error(craft(R"({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", data),
                      "!= numel * dtype size");
  // a shape whose numel overflows 64 bits is a size mismatch, not a crash
  expect_format_error(
      craft(R"({"w": {"dtype": "I32", "shape": [4294967296, 4294967296, 2], "data_offsets": [0, 0]}})", data),
      "!= numel * dtype size");
  expect_format_error(craft(R"({"w": {"dtype": "F32", "shape": [32], "data_offsets": [0, 128]}})", data),
                      "passes the end of the file");
  expect_format_error(craft(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [18446744073709551612, 18446744073709551615]}})", data),
                      "!= numel * dtype size");
  expect_format_error(
      craft(R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                "v": {"dtype": "I32", "shape": [4], "data_offsets": [12, 28]}})",
            data),
      "overlap");
  // a zero-size tensor anywhere inside the data overlaps nothing
  TempPath ok;
  write_bytes(ok.path, craft(R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                                 "e": {"dtype": "F32", "shape": [0], "data_offsets": [8, 8]}})",
                             std::string(16, '\0')));
  WeightsFile f(ok.path);
  CHECK(f.entries().size() == 2);
  CHECK(f.get("e").numel() == 0);
}

TEST_CASE("weights: __metadata__ must be an object of strings") {
  expect_format_error(craft(R"({"__metadata__": ["a"]})"), "__metadata__ is not an object of strings");
  expect_format_error(craft(R"({"__metadata__": {"format": "smarttrim", "n": 1}})"),
                      "__metadata__ is not an object of strings");
  expect_format_error(craft("{" + kMeta.substr(0, kMeta.size() - 1) + R"(,"x": {"y": "z"}}})"),
                      "__metadata__ is not an object of strings");
}

TEST_CASE("weights: every truncation of a valid file and random bytes throw FormatError") {
  TempPath good;
  st::weights::save(good.path, sample_tensors(), {{"config", "{}"}});
  std::string bytes = read_bytes(good.path);
  { WeightsFile f(good.path); }  // the whole file is fine
  TempPath t;
  int failures = 0;
  for (size_t n = 0; n < bytes.size(); n++) {
    write_bytes(t.path, bytes.substr(0, n));
    bool format_error = false;
    try {
      WeightsFile f(t.path);
    } catch (const st::FormatError&) {
      format_error = true;
    }
    if (!format_error) failures++;
  }
  CHECK(failures == 0);

  std::mt19937 gen(1234);
  for (int trial = 0; trial < 300; trial++) {
    size_t n = gen() % 300;
    std::string junk(n, '\0');
    for (char& c : junk) c = char(gen() & 0xff);
    if (trial % 3 == 1 && n >= 8) {  // a plausible length in front of the junk
      std::string len = u64le(n - 8);
      junk.replace(0, 8, len);
    }
    if (trial % 3 == 2 && n >= 8) {  // a plausible length and a JSON-looking start
      junk.replace(0, 8, u64le(n - 8));
      junk.replace(8, std::min<size_t>(n - 8, 2), std::string("{\"").substr(0, std::min<size_t>(n - 8, 2)));
    }
    write_bytes(t.path, junk);
    bool format_error = false;
    try {
      WeightsFile f(t.path);
    } catch (const st::FormatError&) {
      format_error = true;
    }
    CHECK(format_error);
  }
}

TEST_CASE("weights: a Python reader (struct + json + torch.frombuffer) agrees") {
  TempPath t;
  auto tensors = sample_tensors();
  st::weights::save(t.path, tensors, {{"config", "{\"a\": 1}"}});
  // One line per tensor in name order: "name dtype shape sum"; then the metadata config.
  const std::string script =
      "import struct, json, sys, torch\n"
      "b = open(sys.argv[1], 'rb').read()\n"
      "n = struct.unpack('<Q', b[:8])[0]; h = json.loads(b[8:8 + n]); base = 8 + n\n"
      "assert base % 64 == 0\n"
      "for k in sorted(h):\n"
      "  if k == '__metadata__' or k.startswith('__padding_'): continue\n"
      "  e = h[k]; s, t = e['data_offsets']; assert t == s or s % 64 == 0\n"
      "  dt = {'F32': torch.float32, 'I32': torch.int32}[e['dtype']]\n"
      "  x = torch.frombuffer(bytearray(b[base + s:base + t]), dtype=dt) if t > s else torch.zeros(0, dtype=dt)\n"
      "  x = x.reshape(e['shape'])\n"
      "  print(k, e['dtype'], list(x.shape), '%.6f' % x.double().sum().item())\n"
      "print('config', h['__metadata__']['config'])\n";
  TempPath py;
  write_bytes(py.path, script);
  auto [status, out] = st::testing::run_command(st::testing::python_interpreter() + " " + py.path + " " + t.path);
  INFO("python output:\n" << out);
  REQUIRE(status == 0);

  std::map<std::string, Tensor> by_name(tensors.begin(), tensors.end());
  std::string expected;
  char line[256];
  for (const auto& [name, x] : by_name) {
    double sum = 0;
    if (x.dtype() == st::DType::F32)
      for (float v : x.to_vector()) sum += v;
    else
      for (int32_t v : x.to_ints()) sum += v;
    std::string shape = "[";
    for (size_t i = 0; i < x.shape().size(); i++) shape += (i ? ", " : "") + std::to_string(x.shape()[i]);
    shape += "]";
    std::snprintf(line, sizeof line, "%s %s %s %.6f\n", name.c_str(), st::weights::dtype_tag(x.dtype()),
                  shape.c_str(), sum);
    expected += line;
  }
  expected += "config {\"a\": 1}\n";
  CHECK(out == expected);
}

TEST_CASE("weights: smarttrim inspect") {
  const std::string exe = st::testing::smarttrim_binary();
  TempPath t;
  st::weights::save(t.path, sample_tensors(), {{"note", "hi"}});
  auto [status, out] = st::testing::run_command(exe + " inspect " + t.path);
  INFO(out);
  CHECK(status == 0);
  CHECK(out.find("note: hi") != std::string::npos);
  CHECK(out.find("layer.w  F32  (3, 5, 7)  420 bytes") != std::string::npos);
  CHECK(out.find("total: 5 tensors") != std::string::npos);
  CHECK(out.find("\nok\n") != std::string::npos);

  write_bytes(t.path, u64le(100) + "{}");
  st::testing::CommandResult bad = st::testing::run_command(exe + " inspect " + t.path);
  CHECK(bad.status == 1);
  CHECK(bad.output.rfind("smarttrim: weights file '", 0) == 0);
  CHECK(std::count(bad.output.begin(), bad.output.end(), '\n') == 1);

  st::testing::CommandResult no_file = st::testing::run_command(exe + " inspect");
  CHECK(no_file.status == 2);
  CHECK(no_file.output.find("usage") != std::string::npos);
}

TEST_CASE("weights: a file we write passes the safetensors library's rules (weights/stformat.py --check)") {
  TempPath t;
  st::weights::save(t.path, sample_tensors(), {{"note", "x"}});
  auto [status, out] = st::testing::run_command(st::testing::python_interpreter() + " weights/stformat.py --check " + t.path);
  INFO(out);
  CHECK(status == 0);
  CHECK(out.find("ok: 5 tensors") != std::string::npos);

  // and the checker is not a rubber stamp: a gap between two tensors breaks the tiling rule
  std::string data(128, '\0');
  write_bytes(t.path, craft(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},)"
                            R"( "b": {"dtype": "F32", "shape": [1], "data_offsets": [64, 68]}})",
                            data.substr(0, 68)));
  CHECK(st::testing::run_command(st::testing::python_interpreter() + " weights/stformat.py --check " + t.path).status == 1);
}
