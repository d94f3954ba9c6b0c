// The Fashion-MNIST VQA / NLVR2 data set (see fashion.h for what it is).
// Reading order: the IDX reader, names and colours, scenes and rendering,
// VQA questions, NLVR2 statements, then the generator that writes it all.
#include "data/fashion.h"

#include <zlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "engine/error.h"
#include "engine/files.h"

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;  // keeps fields in the order the formats list them

namespace st::data {

// ---------------------------------------------------------------------------
// IDX files (http://yann.lecun.com/exdb/mnist/): a big-endian header, magic
// 0x00000801 (labels: count) or 0x00000803 (images: count, rows, cols),
// then one unsigned byte per label or pixel.

namespace {

constexpr uint32_t kLabelsMagic = 0x00000801;
constexpr uint32_t kImagesMagic = 0x00000803;
constexpr int kPixelsPerImage = kFashionSide * kFashionSide;

// The whole decompressed file. zlib reads an uncompressed file as it is.
std::vector<uint8_t> read_gzip(const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec))
    throw FormatError("Fashion-MNIST file '" + path +
                      "' is missing (install Debian's dataset-fashion-mnist, or name the folder that holds it)");
  gzFile file = gzopen(path.c_str(), "rb");
  if (!file) throw FormatError("cannot open '" + path + "': " + std::strerror(errno));
  gzbuffer(file, 1 << 18);
  std::vector<uint8_t> bytes;
  const size_t chunk = size_t(1) << 22;
  for (;;) {
    const size_t have = bytes.size();
    bytes.resize(have + chunk);
    const int n = gzread(file, bytes.data() + have, unsigned(chunk));
    bytes.resize(have + size_t(std::max(n, 0)));
    // A corrupt stream fails here; a truncated one ends early with an error set.
    int code = Z_OK;
    const char* message = gzerror(file, &code);
    if (n < 0 || (code != Z_OK && code != Z_STREAM_END)) {
      const std::string reason = message ? message : "unknown zlib error";
      gzclose(file);
      throw FormatError("'" + path + "' is truncated or not a valid gzip file: " + reason);
    }
    if (n == 0) break;
  }
  gzclose(file);
  return bytes;
}

uint32_t big_endian_u32(const std::vector<uint8_t>& b, size_t at) {
  return uint32_t(b[at]) << 24 | uint32_t(b[at + 1]) << 16 | uint32_t(b[at + 2]) << 8 | uint32_t(b[at + 3]);
}

// The payload of an IDX file after checking its header and its length.
std::vector<uint8_t> read_idx(const std::string& path, uint32_t magic, int64_t* count) {
  std::vector<uint8_t> bytes = read_gzip(path);
  const size_t header = magic == kImagesMagic ? 16 : 8;
  if (bytes.size() < 4)
    throw FormatError("'" + path + "' is too short for an IDX file (" + std::to_string(bytes.size()) + " bytes)");
  const uint32_t found = big_endian_u32(bytes, 0);
  if (found != magic) {
    char text[96];
    std::snprintf(text, sizeof text, "wrong magic number 0x%08x (expected 0x%08x)", found, magic);
    throw FormatError("'" + path + "' is not an IDX " + (magic == kImagesMagic ? "image" : "label") +
                      " file: " + text);
  }
  if (bytes.size() < header)
    throw FormatError("'" + path + "' is truncated inside its IDX header (" + std::to_string(bytes.size()) + " bytes)");
  *count = big_endian_u32(bytes, 4);
  size_t item_bytes = 1;
  if (magic == kImagesMagic) {
    const uint32_t rows = big_endian_u32(bytes, 8), cols = big_endian_u32(bytes, 12);
    if (rows != uint32_t(kFashionSide) || cols != uint32_t(kFashionSide))
      throw FormatError("'" + path + "' holds " + std::to_string(rows) + "x" + std::to_string(cols) +
                        " images; Fashion-MNIST's are 28x28");
    item_bytes = kPixelsPerImage;
  }
  const size_t expected = header + size_t(*count) * item_bytes;
  if (bytes.size() != expected)
    throw FormatError("'" + path + "' has " + std::to_string(bytes.size()) + " bytes; its header (" +
                      std::to_string(*count) + " items) needs " + std::to_string(expected) +
                      (bytes.size() < expected ? " (truncated)" : ""));
  bytes.erase(bytes.begin(), bytes.begin() + long(header));
  return bytes;
}

}  // namespace

FashionMnist load_fashion_mnist(const std::string& dir, bool train) {
  const std::string prefix = (fs::path(dir) / (train ? "train" : "t10k")).string();
  const std::string images_path = prefix + "-images-idx3-ubyte.gz";
  const std::string labels_path = prefix + "-labels-idx1-ubyte.gz";
  FashionMnist data;
  int64_t image_count = 0, label_count = 0;
  data.labels = read_idx(labels_path, kLabelsMagic, &label_count);
  data.pixels = read_idx(images_path, kImagesMagic, &image_count);
  if (image_count != label_count)
    throw FormatError("'" + images_path + "' holds " + std::to_string(image_count) + " images but '" +
                      labels_path + "' " + std::to_string(label_count) + " labels");
  for (size_t i = 0; i < data.labels.size(); i++)
    if (data.labels[i] >= kFashionClasses)
      throw FormatError("'" + labels_path + "': label " + std::to_string(data.labels[i]) + " of item " +
                        std::to_string(i) + " is outside 0..9");
  return data;
}

// ---------------------------------------------------------------------------
// Names. Fashion-MNIST's classes are T-shirt/top, Trouser, Pullover, Dress,
// Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot; we use one short word each
// ("t-shirt" is t - shirt to WordPiece). None starts with a vowel, so "a" is
// always the right article.

namespace {

constexpr const char* kClassNames[kFashionClasses] = {"t-shirt", "trouser", "pullover", "dress", "coat",
                                                      "sandal",  "shirt",   "sneaker",  "bag",   "boot"};
constexpr const char* kClassPlurals[kFashionClasses] = {"t-shirts", "trousers", "pullovers", "dresses", "coats",
                                                        "sandals",  "shirts",   "sneakers",  "bags",    "boots"};
constexpr const char* kColourNames[kFashionColours] = {"white", "red", "green", "blue", "yellow"};
// Pure primaries so colours are told apart by channel, never by shade.
constexpr Rgb kColourRgb[kFashionColours] = {{255, 255, 255}, {255, 0, 0}, {0, 255, 0}, {0, 0, 255}, {255, 255, 0}};
constexpr const char* kNumberWords[] = {"zero", "one", "two", "three", "four"};

void check_index(int value, int size, const char* what) {
  if (value < 0 || value >= size)
    throw ArgumentError(std::string(what) + " " + std::to_string(value) + " is outside 0.." + std::to_string(size - 1));
}

}  // namespace

const char* class_name(int cls) {
  check_index(cls, kFashionClasses, "class");
  return kClassNames[cls];
}
const char* class_plural(int cls) {
  check_index(cls, kFashionClasses, "class");
  return kClassPlurals[cls];
}
const char* colour_name(int colour) {
  check_index(colour, kFashionColours, "colour");
  return kColourNames[colour];
}
Rgb colour_rgb(int colour) {
  check_index(colour, kFashionColours, "colour");
  return kColourRgb[colour];
}
const char* file_name(FashionFile file) { return file == FashionFile::Train ? "train" : "t10k"; }

std::vector<std::string> fashion_answers() {
  std::vector<std::string> answers = {"yes", "no"};
  for (int n = 0; n <= kGridCells * kGridCells; n++) answers.push_back(std::to_string(n));
  for (const char* name : kClassNames) answers.push_back(name);
  for (const char* name : kColourNames) answers.push_back(name);
  return answers;
}

std::vector<std::string> fashion_vocabulary() {
  std::vector<std::string> tokens = {"[CLS]", "[PAD]", "[SEP]", "[UNK]", "[MASK]", "?", "-", ",", "."};
  // Every word of the question and statement templates below (a test checks it).
  const char* words[] = {"is",    "there",   "a",        "what",   "colour", "the",   "how",     "many",
                         "are",   "more",    "fewer",    "than",   "to",     "left",  "right",   "of",
                         "above", "below",   "image",    "images", "both",   "contain", "contains", "neither",
                         "exactly", "in",    "total",    "objects", "yes",   "no"};
  tokens.insert(tokens.end(), std::begin(words), std::end(words));
  for (const char* w : kNumberWords) tokens.push_back(w);
  for (int n = 0; n <= 9; n++) tokens.push_back(std::to_string(n));
  for (const char* name : kClassNames) tokens.push_back(name);
  for (const char* name : kClassPlurals) tokens.push_back(name);
  for (const char* name : kColourNames) tokens.push_back(name);
  tokens.push_back("t");  // of "t-shirt", which WordPiece reads as t - shirt
  // Single characters and their "##" continuations, so a word typed by hand
  // is spelled in pieces rather than lost to [UNK].
  for (char c = 'a'; c <= 'z'; c++) tokens.push_back(std::string(1, c));
  for (const char* p = "!\"#$%&'()*+/:;<=>@[\\]^_`{|}~"; *p; p++) tokens.push_back(std::string(1, *p));
  for (char c = 'a'; c <= 'z'; c++) tokens.push_back("##" + std::string(1, c));
  for (char c = '0'; c <= '9'; c++) tokens.push_back("##" + std::string(1, c));
  // Drop duplicates and the hyphenated names ("t-shirt" never reaches
  // WordPiece whole: the basic tokenizer splits it at the "-").
  std::vector<std::string> unique;
  std::set<std::string> seen;
  for (auto& t : tokens)
    if ((t.size() == 1 || t.find('-') == std::string::npos) && seen.insert(t).second) unique.push_back(t);
  return unique;
}

// ---------------------------------------------------------------------------
// Scenes

int Scene::count(int cls) const {
  return int(std::count_if(items.begin(), items.end(), [&](const Item& i) { return i.cls == cls; }));
}
int Scene::count(int cls, int colour) const {
  return int(std::count_if(items.begin(), items.end(), [&](const Item& i) { return i.cls == cls && i.colour == colour; }));
}
const Scene::Item* Scene::at(int row, int col) const {
  for (const Item& i : items)
    if (i.row == row && i.col == col) return &i;
  return nullptr;
}

ScenePool make_scene_pool(const FashionMnist& images, FashionFile file, int64_t first, int64_t end) {
  if (first < 0 || end > images.size() || first >= end)
    throw ArgumentError("scene pool [" + std::to_string(first) + ", " + std::to_string(end) +
                        ") is empty or outside the " + std::to_string(images.size()) + " images of the file");
  ScenePool pool;
  pool.images = &images;
  pool.file = file;
  pool.first = first;
  pool.end = end;
  pool.by_class.resize(kFashionClasses);
  for (int64_t i = first; i < end; i++) pool.by_class[images.labels[size_t(i)]].push_back(i);
  for (int c = 0; c < kFashionClasses; c++)
    if (pool.by_class[c].empty())
      throw ArgumentError("scene pool [" + std::to_string(first) + ", " + std::to_string(end) + ") has no " +
                          kClassNames[c]);
  return pool;
}

namespace {

// Uniform in 0..n-1 (n > 0).
int64_t below(Rng& rng, int64_t n) { return std::min(int64_t(double(rng.uniform()) * double(n)), n - 1); }
bool coin(Rng& rng, float p_true = 0.5f) { return rng.uniform() < p_true; }
template <typename T>
const T& pick(Rng& rng, const std::vector<T>& v) {
  return v[size_t(below(rng, int64_t(v.size())))];
}

void check_image_size(int image_size) {
  if (image_size < kGridCells * kFashionSide || image_size > 4096)
    throw ArgumentError("image_size " + std::to_string(image_size) + " must be in " +
                        std::to_string(kGridCells * kFashionSide) + "..4096 (three 28-pixel photographs a side)");
}

}  // namespace

// A whole multiple of 28 pixels, so that on larger canvases items still fill
// most of their cell, as at the default 96 (28 of 32 pixels).
int item_side(int image_size) { return kFashionSide * std::max(1, image_size / 96); }

Scene random_scene(const ScenePool& pool, int image_size, Rng& rng) {
  check_image_size(image_size);
  Scene scene;
  scene.image_size = image_size;
  scene.source = pool.file;
  // A third sparse, a third in between, a third crowded.
  const float density = rng.uniform();
  const int n = density < 1.0f / 3 ? 1 + int(below(rng, 2)) : density < 2.0f / 3 ? 3 + int(below(rng, 3))
                                                                                 : 6 + int(below(rng, 4));
  // At most four classes per scene, so the same class often appears twice or more.
  const int k = 1 + int(below(rng, std::min(n, 4)));
  std::array<int, kFashionClasses> classes;
  for (int c = 0; c < kFashionClasses; c++) classes[c] = c;
  for (int i = 0; i < k; i++) std::swap(classes[i], classes[i + below(rng, kFashionClasses - i)]);
  std::array<int, kGridCells * kGridCells> cells;
  for (int c = 0; c < int(cells.size()); c++) cells[c] = c;
  for (int i = 0; i < n; i++) std::swap(cells[i], cells[i + below(rng, int(cells.size()) - i)]);
  std::sort(cells.begin(), cells.begin() + n);  // reading order

  const int cell = image_size / kGridCells;
  const int slack = cell - item_side(image_size);  // the jitter that keeps a photograph inside its cell
  for (int i = 0; i < n; i++) {
    Scene::Item item;
    item.row = cells[i] / kGridCells;
    item.col = cells[i] % kGridCells;
    item.cls = classes[below(rng, k)];
    item.colour = int(below(rng, kFashionColours));
    item.x = item.col * cell + int(below(rng, slack + 1));
    item.y = item.row * cell + int(below(rng, slack + 1));
    item.source_index = pick(rng, pool.by_class[item.cls]);
    scene.items.push_back(item);
  }
  return scene;
}

Image render_scene(const Scene& scene, const FashionMnist& images) {
  check_image_size(scene.image_size);
  const int scale = item_side(scene.image_size) / kFashionSide;  // whole-pixel enlargement
  const int side = kFashionSide * scale;
  Image image;
  image.width = image.height = scene.image_size;
  image.pixels.assign(size_t(scene.image_size) * scene.image_size * 3, 0);
  for (const Scene::Item& item : scene.items) {
    if (item.source_index < 0 || item.source_index >= images.size())
      throw ArgumentError("scene item's source_index " + std::to_string(item.source_index) + " is outside the " +
                          std::to_string(images.size()) + " images");
    if (item.x < 0 || item.y < 0 || item.x + side > scene.image_size || item.y + side > scene.image_size)
      throw ArgumentError("scene item at (" + std::to_string(item.x) + ", " + std::to_string(item.y) +
                          ") does not fit the canvas");
    const Rgb tint = colour_rgb(item.colour);
    const uint8_t* grey = images.image(item.source_index);
    for (int y = 0; y < side; y++)
      for (int x = 0; x < side; x++) {
        const int g = grey[(y / scale) * kFashionSide + x / scale];  // nearest neighbour
        uint8_t* out = &image.pixels[(size_t(item.y + y) * scene.image_size + item.x + x) * 3];
        out[0] = uint8_t((g * tint.r + 127) / 255);
        out[1] = uint8_t((g * tint.g + 127) / 255);
        out[2] = uint8_t((g * tint.b + 127) / 255);
      }
  }
  return image;
}

// ---------------------------------------------------------------------------
// VQA questions: one function per type; each returns nothing when the scene
// does not allow that type (no unique reference, no neighbour, ...).

namespace {

struct Asker {
  const Scene& scene;
  Rng& rng;
  std::array<int, kFashionClasses> counts{};
  std::vector<int> present, absent;

  Asker(const Scene& s, Rng& r) : scene(s), rng(r) {
    for (const auto& item : s.items) counts[item.cls]++;
    for (int c = 0; c < kFashionClasses; c++) (counts[c] > 0 ? present : absent).push_back(c);
  }

  static Question make(std::string text, const char* type, const char* answer_type, std::string answer) {
    return Question{std::move(text), type, answer_type, std::move(answer)};
  }
  static std::string yes_no(bool b) { return b ? "yes" : "no"; }

  // "bag" when it is the only bag, "red bag" when it is the only red bag, else nothing.
  std::optional<std::string> unique_name(const Scene::Item& item) const {
    if (counts[item.cls] == 1) return std::string(kClassNames[item.cls]);
    if (scene.count(item.cls, item.colour) == 1)
      return std::string(kColourNames[item.colour]) + " " + kClassNames[item.cls];
    return std::nullopt;
  }

  std::optional<Question> existence() {
    const bool want_yes = coin(rng);
    if (coin(rng)) {  // "is there a bag?"
      const int cls = want_yes ? pick(rng, present) : pick(rng, absent);
      return make(std::string("is there a ") + kClassNames[cls] + "?", "existence", "yes/no", yes_no(want_yes));
    }
    // "is there a red bag?"
    int cls, colour;
    if (want_yes) {
      const Scene::Item& item = pick(rng, scene.items);
      cls = item.cls, colour = item.colour;
    } else {
      // Half the time a present class in a colour it does not have: the
      // question cannot be answered from the class alone.
      std::vector<std::pair<int, int>> missing, missing_of_present;
      for (int c = 0; c < kFashionClasses; c++)
        for (int k = 0; k < kFashionColours; k++)
          if (scene.count(c, k) == 0) (counts[c] > 0 ? missing_of_present : missing).push_back({c, k});
      const auto& from = !missing_of_present.empty() && coin(rng) ? missing_of_present : missing;
      std::tie(cls, colour) = pick(rng, from);
    }
    return make(std::string("is there a ") + kColourNames[colour] + " " + kClassNames[cls] + "?", "existence",
                "yes/no", yes_no(want_yes));
  }

  std::optional<Question> attribute() {
    std::vector<const Scene::Item*> single;  // the only item of its class
    for (const auto& item : scene.items)
      if (counts[item.cls] == 1) single.push_back(&item);
    if (single.empty()) return std::nullopt;
    const Scene::Item& item = *pick(rng, single);
    return make(std::string("what colour is the ") + kClassNames[item.cls] + "?", "attribute", "other",
                kColourNames[item.colour]);
  }

  std::optional<Question> counting() {
    const int cls = !absent.empty() && coin(rng, 0.2f) ? pick(rng, absent) : pick(rng, present);
    return make(std::string("how many ") + kClassPlurals[cls] + " are there?", "counting", "number",
                std::to_string(counts[cls]));
  }

  std::optional<Question> spatial() {
    struct Direction {
      int drow, dcol;
      const char* words;
    };
    static constexpr Direction kDirections[] = {
        {0, -1, "to the left of"}, {0, 1, "to the right of"}, {-1, 0, "above"}, {1, 0, "below"}};
    struct Candidate {
      std::string reference;
      const Direction* direction;
      int answer;
    };
    std::vector<Candidate> candidates;
    for (const auto& item : scene.items) {
      const auto name = unique_name(item);
      if (!name) continue;
      for (const Direction& d : kDirections)
        if (const Scene::Item* next = scene.at(item.row + d.drow, item.col + d.dcol))
          candidates.push_back({*name, &d, next->cls});
    }
    if (candidates.empty()) return std::nullopt;
    const Candidate& c = pick(rng, candidates);
    return make(std::string("what is ") + c.direction->words + " the " + c.reference + "?", "spatial", "other",
                kClassNames[c.answer]);
  }

  std::optional<Question> comparison() {
    const bool more = coin(rng), want_yes = coin(rng);
    // Ordered pairs of different classes, at least one of them present.
    std::vector<std::pair<int, int>> by_answer[2];
    for (int a = 0; a < kFashionClasses; a++)
      for (int b = 0; b < kFashionClasses; b++)
        if (a != b && (counts[a] > 0 || counts[b] > 0)) {
          const bool yes = more ? counts[a] > counts[b] : counts[a] < counts[b];
          by_answer[yes].push_back({a, b});
        }
    const bool answer = by_answer[want_yes].empty() ? !want_yes : want_yes;
    const auto [a, b] = pick(rng, by_answer[answer]);
    return make(std::string("are there ") + (more ? "more " : "fewer ") + kClassPlurals[a] + " than " +
                    kClassPlurals[b] + "?",
                "comparison", "yes/no", yes_no(answer));
  }
};

}  // namespace

std::vector<Question> ask_questions(const Scene& scene, int count, Rng& rng) {
  std::vector<Question> questions;
  if (scene.items.empty()) return questions;
  Asker asker(scene, rng);
  std::set<std::string> asked;
  // A few tries per question: a type may not fit the scene, or repeat a question.
  for (int attempt = 0; int(questions.size()) < count && attempt < 20 * count; attempt++) {
    std::optional<Question> q;
    switch (below(rng, 5)) {
      case 0: q = asker.existence(); break;
      case 1: q = asker.attribute(); break;
      case 2: q = asker.counting(); break;
      case 3: q = asker.spatial(); break;
      default: q = asker.comparison(); break;
    }
    if (q && asked.insert(q->text).second) questions.push_back(std::move(*q));
  }
  return questions;
}

// ---------------------------------------------------------------------------
// NLVR2 statements about a (left, right) pair of scenes.

namespace {

struct Statement {
  enum Kind { CountCompare, ObjectCompare, BothContain, NeitherContains, ExactlyOneContains, TotalCount, kKinds };
  Kind kind = CountCompare;
  int cls = 0, colour = 0, number = 1;
  bool left_first = true;  // "the left image ... than the right image"
  bool more = true;        // more, or fewer

  static Statement random(Rng& rng) {
    Statement s;
    s.kind = Kind(below(rng, kKinds));
    s.cls = int(below(rng, kFashionClasses));
    s.colour = int(below(rng, kFashionColours));
    s.number = 1 + int(below(rng, 4));
    s.left_first = coin(rng);
    s.more = coin(rng);
    return s;
  }

  const char* type() const {
    static constexpr const char* kTypes[] = {"count_compare", "object_compare",       "both_contain",
                                             "neither_contains", "exactly_one_contains", "total_count"};
    return kTypes[kind];
  }

  std::string text() const {
    const std::string first = left_first ? "left" : "right", second = left_first ? "right" : "left";
    const std::string relation = more ? "more " : "fewer ";
    switch (kind) {
      case CountCompare:
        return "the " + first + " image contains " + relation + kClassPlurals[cls] + " than the " + second + " image.";
      case ObjectCompare:
        return "the " + first + " image contains " + relation + "objects than the " + second + " image.";
      case BothContain: return std::string("both images contain a ") + kClassNames[cls] + ".";
      case NeitherContains: return std::string("neither image contains a ") + kClassNames[cls] + ".";
      case ExactlyOneContains:
        return std::string("exactly one image contains a ") + kColourNames[colour] + " " + kClassNames[cls] + ".";
      default:
        if (number == 1) return std::string("there is exactly one ") + kClassNames[cls] + " in total.";
        return std::string("there are exactly ") + kNumberWords[number] + " " + kClassPlurals[cls] + " in total.";
    }
  }

  bool holds(const Scene& left, const Scene& right) const {
    const Scene& a = left_first ? left : right;
    const Scene& b = left_first ? right : left;
    auto compare = [&](int x, int y) { return more ? x > y : x < y; };
    switch (kind) {
      case CountCompare: return compare(a.count(cls), b.count(cls));
      case ObjectCompare: return compare(int(a.items.size()), int(b.items.size()));
      case BothContain: return left.count(cls) > 0 && right.count(cls) > 0;
      case NeitherContains: return left.count(cls) == 0 && right.count(cls) == 0;
      case ExactlyOneContains: return (left.count(cls, colour) > 0) != (right.count(cls, colour) > 0);
      default: return left.count(cls) + right.count(cls) == number;
    }
  }
};

// One NLVR2 set: a sentence with `pairs` (1 or 2) image pairs; with two, one
// pair makes it true and the other false, the true one first or second at random.
struct StatementSet {
  Statement statement;
  std::vector<std::pair<Scene, Scene>> pairs;
  std::vector<bool> labels;
};

StatementSet make_statement_set(const ScenePool& pool, int image_size, int pairs, Rng& rng) {
  for (int attempt = 0; attempt < 100; attempt++) {
    StatementSet set;
    set.statement = Statement::random(rng);
    const bool true_first = coin(rng);
    for (int p = 0; p < pairs; p++) {
      const bool want = (p == 0) == true_first;
      // Rejection sampling: scenes are cheap (no pixels until they are kept).
      for (int tries = 0; tries < 2000; tries++) {
        Scene left = random_scene(pool, image_size, rng);
        Scene right = random_scene(pool, image_size, rng);
        if (set.statement.holds(left, right) == want) {
          set.pairs.push_back({std::move(left), std::move(right)});
          set.labels.push_back(want);
          break;
        }
      }
    }
    if (int(set.pairs.size()) == pairs) return set;
  }
  throw Error("NLVR2 generation: no image pair fits the drawn statements (this is a bug)");
}

}  // namespace

// ---------------------------------------------------------------------------
// The generator

namespace {

// Each scene (or NLVR2 set) draws from its own stream: a key made from the
// seed and what is being made, and a counter range of 2^32 draws per index.
Rng stream(uint64_t seed, uint64_t purpose, int64_t index) {
  auto splitmix = [](uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
  };
  Rng rng(splitmix(seed ^ splitmix(purpose)));
  rng.offset = uint64_t(index) << 32;
  return rng;
}

// Runs body(i) for i in [0, n) on several threads, in chunks, calling
// chunk_done(stop) from the calling thread after each chunk (for progress);
// the first exception a body throws is rethrown here. Each body ends in
// writing PNGs, and every write waits for an fsync (write_file_atomically),
// so we run at least 8 threads even on fewer cores: while some wait on the
// disk, others encode. What is made does not depend on the thread count.
template <typename Body, typename ChunkDone>
void parallel_for(int64_t n, Body body, ChunkDone chunk_done) {
  const int64_t chunk = 256;
  int threads = 8;
#ifdef _OPENMP
  threads = std::max(threads, omp_get_max_threads());
#endif
  for (int64_t start = 0; start < n; start += chunk) {
    const int64_t stop = std::min(n, start + chunk);
    std::exception_ptr error;
    std::atomic<bool> failed{false};
#pragma omp parallel for schedule(dynamic, 4) num_threads(threads)
    for (int64_t i = start; i < stop; i++) {
      if (failed.load()) continue;
      try {
        body(i);
      } catch (...) {
#pragma omp critical(fashion_error)
        if (!error) error = std::current_exception();
        failed = true;
      }
    }
    if (error) std::rethrow_exception(error);
    chunk_done(stop);
  }
}

json scene_json(const Scene& scene) {
  json items = json::array();
  for (const auto& item : scene.items)
    items.push_back({{"class", kClassNames[item.cls]},
                     {"class_id", item.cls},
                     {"colour", kColourNames[item.colour]},
                     {"row", item.row},
                     {"col", item.col},
                     {"x", item.x},
                     {"y", item.y},
                     {"source_index", item.source_index}});
  return {{"image_size", scene.image_size},
          {"item_side", item_side(scene.image_size)},
          {"source_file", file_name(scene.source)},
          {"items", std::move(items)}};
}

void write_json(const std::string& path, const json& value) { write_file_atomically(path, value.dump()); }

json info_json() {
  return {{"description", "Fashion VQA: scenes of Fashion-MNIST photographs, made by smarttrim data fashion"},
          {"url", "https://github.com/zalandoresearch/fashion-mnist"},
          {"version", "1.0"},
          {"contributor", "smarttrim; photographs by Zalando Research (Fashion-MNIST)"}};
}
json license_json() { return {{"name", "MIT"}, {"url", "https://opensource.org/licenses/MIT"}}; }

void check_options(const FashionOptions& o) {
  if (o.out.empty()) throw ArgumentError("fashion data set: no output directory given");
  check_image_size(o.image_size);
  const std::pair<const char*, int> sizes[] = {{"train_images", o.train_images}, {"val_images", o.val_images},
                                               {"test_images", o.test_images},   {"nlvr2_train", o.nlvr2_train},
                                               {"nlvr2_dev", o.nlvr2_dev},       {"nlvr2_test", o.nlvr2_test}};
  for (const auto& [name, value] : sizes)
    if (value <= 0 || value > 100'000'000)
      throw ArgumentError(std::string("fashion data set: ") + name + " must be in 1..100000000 (got " +
                          std::to_string(value) + ")");
  if (o.questions_per_image <= 0 || o.questions_per_image > 999)
    throw ArgumentError("fashion data set: questions_per_image must be in 1..999 (got " +
                        std::to_string(o.questions_per_image) + ")");
}

void make_directory(const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir))
    throw ArgumentError("cannot create the output directory '" + dir.string() + "': " +
                        (ec ? ec.message() : std::string("a file is in the way")));
}

std::string readme_text(const FashionOptions& o, const FashionSummary& s) {
  auto split_line = [](const FashionSummary::VqaSplit& v) {
    return "- " + v.name + ": " + std::to_string(v.images) + " images, " + std::to_string(v.questions) + " questions\n";
  };
  std::string text =
      "# Fashion VQA and NLVR2 (demo data)\n\n"
      "Scenes of real clothes photographs on a 3x3 grid, with questions in the VQA v2\n"
      "format (vqa/) and true/false statements about image pairs in the NLVR2 format\n"
      "(nlvr2/). Made by `smarttrim data fashion` with seed " + std::to_string(o.seed) + " at " +
      std::to_string(o.image_size) + "x" + std::to_string(o.image_size) + " pixels; data/fashion.h describes\n"
      "the scenes, the question templates and the layout.\n\n";
  for (const auto& v : s.vqa) text += split_line(v);
  for (const auto& n : s.nlvr2) text += "- nlvr2 " + n.name + ": " + std::to_string(n.examples) + " examples\n";
  text +=
      "\nProvenance: the photographs are Fashion-MNIST by Zalando Research\n"
      "(https://github.com/zalandoresearch/fashion-mnist, MIT licence), read from\n"
      "Debian's dataset-fashion-mnist package (" + o.source_dir + ").\n"
      "Training scenes use only its training file; val/dev and test scenes only the\n"
      "first and second halves of its t10k file.\n";
  return text;
}

// Progress over all the images of a run, reported from the calling thread.
struct Progress {
  const FashionProgress& callback;
  int64_t total = 0;
  int64_t done = 0;
  void set(int64_t images_done) {
    done = images_done;
    if (callback) callback(done, total);
  }
};

// What one split is made from and where its images go.
struct Split {
  const char* name;           // train, val, test (VQA) or train, dev, test (NLVR2)
  const ScenePool* pool;      // the photographs it may use
  int examples;               // VQA images, or NLVR2 examples
  uint64_t purpose;           // its random streams (stream())
  int64_t first_image_id = 0;  // VQA only
};

std::string coco_file_name(const Split& split, int64_t image_id) {
  char name[96];
  std::snprintf(name, sizeof name, "COCO_fashion_%s_%012lld.png", split.name, static_cast<long long>(image_id));
  return name;
}

struct VqaImage {
  Scene scene;
  std::vector<Question> questions;
};

// The scenes and questions of a VQA split, its PNGs written on the way.
std::vector<VqaImage> make_vqa_images(const FashionOptions& o, const Split& split, const fs::path& out,
                                      Progress& progress) {
  std::vector<VqaImage> images(size_t(split.examples));
  const int64_t done_before = progress.done;
  parallel_for(
      split.examples,
      [&](int64_t i) {
        Rng rng = stream(o.seed, split.purpose, i);
        VqaImage& image = images[size_t(i)];
        image.scene = random_scene(*split.pool, o.image_size, rng);
        image.questions = ask_questions(image.scene, o.questions_per_image, rng);
        save_png((out / "vqa" / "images" / coco_file_name(split, split.first_image_id + i)).string(),
                 render_scene(image.scene, *split.pool->images));
      },
      [&](int64_t stop) { progress.set(done_before + stop); });
  return images;
}

// {split}_questions.json, {split}_annotations.json and {split}_scenes.json.
FashionSummary::VqaSplit write_vqa_documents(const Split& split, const std::vector<VqaImage>& images,
                                             const fs::path& out) {
  const std::string subtype = std::string("fashion_") + split.name;
  FashionSummary::VqaSplit summary;
  summary.name = split.name;
  json questions = json::array(), annotations = json::array(), scenes = json::array();
  for (size_t i = 0; i < images.size(); i++) {
    const int64_t image_id = split.first_image_id + int64_t(i);
    json scene = scene_json(images[i].scene);
    scene["image_id"] = image_id;
    scene["file_name"] = "images/" + coco_file_name(split, image_id);
    scenes.push_back(std::move(scene));
    summary.images++;
    for (size_t k = 0; k < images[i].questions.size(); k++) {
      const Question& q = images[i].questions[k];
      const int64_t question_id = image_id * 1000 + int64_t(k);  // VQA v2's numbering
      questions.push_back({{"image_id", image_id}, {"question", q.text}, {"question_id", question_id}});
      // Ten annotators who all agree: the answer is never ambiguous.
      json answers = json::array();
      for (int a = 1; a <= 10; a++)
        answers.push_back({{"answer", q.answer}, {"answer_confidence", "yes"}, {"answer_id", a}});
      annotations.push_back({{"question_id", question_id},
                             {"image_id", image_id},
                             {"question_type", q.question_type},
                             {"answer_type", q.answer_type},
                             {"multiple_choice_answer", q.answer},
                             {"answers", std::move(answers)}});
      summary.questions++;
      summary.question_types[q.question_type]++;
      summary.answer_types[q.answer_type]++;
      summary.yes += q.answer == "yes";
      summary.no += q.answer == "no";
    }
  }
  const std::string prefix = (out / "vqa" / split.name).string();
  write_json(prefix + "_scenes.json", {{"info", info_json()}, {"split", split.name}, {"scenes", std::move(scenes)}});
  write_json(prefix + "_questions.json", {{"info", info_json()},
                                          {"task_type", "Open-Ended"},
                                          {"data_type", "fashion"},
                                          {"data_subtype", subtype},
                                          {"license", license_json()},
                                          {"questions", std::move(questions)}});
  write_json(prefix + "_annotations.json", {{"info", info_json()},
                                            {"data_type", "fashion"},
                                            {"data_subtype", subtype},
                                            {"license", license_json()},
                                            {"annotations", std::move(annotations)}});
  return summary;
}

// "train-17-1": set 17, pair 1; the example is "train-17-1-0", its images "train-17-1-img0.png" and "-img1.png".
std::string nlvr2_stem(const Split& split, size_t set, size_t pair) {
  return std::string(split.name) + "-" + std::to_string(set) + "-" + std::to_string(pair);
}

// The statement sets of an NLVR2 split (two examples each; an odd count
// leaves the last with one), their PNGs written on the way.
std::vector<StatementSet> make_nlvr2_sets(const FashionOptions& o, const Split& split, const fs::path& out,
                                          Progress& progress) {
  std::vector<StatementSet> sets(size_t(split.examples + 1) / 2);
  const fs::path dir = out / "nlvr2" / "images" / split.name;
  const int64_t done_before = progress.done;
  parallel_for(
      int64_t(sets.size()),
      [&](int64_t i) {
        Rng rng = stream(o.seed, split.purpose, i);
        const int pairs = int(std::min<int64_t>(2, split.examples - 2 * i));
        sets[size_t(i)] = make_statement_set(*split.pool, o.image_size, pairs, rng);
        for (int p = 0; p < pairs; p++) {
          const std::string stem = nlvr2_stem(split, size_t(i), size_t(p));
          const auto& [left, right] = sets[size_t(i)].pairs[size_t(p)];
          save_png((dir / (stem + "-img0.png")).string(), render_scene(left, *split.pool->images));
          save_png((dir / (stem + "-img1.png")).string(), render_scene(right, *split.pool->images));
        }
      },
      // two images an example, two examples a set
      [&](int64_t stop) { progress.set(done_before + 2 * std::min<int64_t>(split.examples, 2 * stop)); });
  return sets;
}

// {split}.json (JSON Lines) and {split}_scenes.json.
FashionSummary::Nlvr2Split write_nlvr2_documents(const Split& split, const std::vector<StatementSet>& sets,
                                                 const fs::path& out) {
  FashionSummary::Nlvr2Split summary;
  summary.name = split.name;
  std::string lines;
  json scenes = json::array();
  for (size_t i = 0; i < sets.size(); i++) {
    const StatementSet& set = sets[i];
    for (size_t p = 0; p < set.pairs.size(); p++) {
      const std::string stem = nlvr2_stem(split, i, p);
      const std::string image_stem = "images/" + std::string(split.name) + "/" + stem;
      lines += json{{"identifier", stem + "-0"},
                    {"sentence", set.statement.text()},
                    {"label", set.labels[p] ? "True" : "False"},
                    {"left_url", image_stem + "-img0.png"},
                    {"right_url", image_stem + "-img1.png"},
                    {"statement_type", set.statement.type()}}
                   .dump() +
               "\n";
      for (int side = 0; side < 2; side++) {
        json scene = scene_json(side == 0 ? set.pairs[p].first : set.pairs[p].second);
        scene["file_name"] = image_stem + "-img" + std::to_string(side) + ".png";
        scenes.push_back(std::move(scene));
      }
      summary.examples++;
      summary.true_labels += set.labels[p];
      summary.statement_types[set.statement.type()]++;
    }
  }
  write_file_atomically((out / "nlvr2" / (summary.name + ".json")).string(), lines);
  write_json((out / "nlvr2" / (summary.name + "_scenes.json")).string(),
             {{"split", split.name}, {"scenes", std::move(scenes)}});
  return summary;
}

void write_summary(const FashionOptions& o, const FashionSummary& s, const fs::path& out) {
  json vqa = json::object(), nlvr2 = json::object();
  for (const auto& v : s.vqa)
    vqa[v.name] = {{"images", v.images},
                   {"questions", v.questions},
                   {"yes", v.yes},
                   {"no", v.no},
                   {"question_types", v.question_types},
                   {"answer_types", v.answer_types}};
  for (const auto& n : s.nlvr2)
    nlvr2[n.name] = {{"examples", n.examples}, {"true", n.true_labels}, {"statement_types", n.statement_types}};
  const json summary = {{"dataset", "fashion"},
                        {"seed", s.seed},
                        {"image_size", s.image_size},
                        {"questions_per_image", o.questions_per_image},
                        {"source", {{"name", "Fashion-MNIST (Zalando Research), MIT licence"}, {"dir", o.source_dir}}},
                        {"vqa", std::move(vqa)},
                        {"nlvr2", std::move(nlvr2)},
                        {"answers", s.answers},
                        {"vocab_size", s.vocab_size},
                        {"images_written", s.images_written}};
  write_file_atomically((out / "summary.json").string(), summary.dump(2) + "\n");
}

}  // namespace

FashionSummary generate_fashion_dataset(const FashionOptions& options, const FashionProgress& progress) {
  // Check everything before writing anything.
  check_options(options);
  const FashionMnist train_file = load_fashion_mnist(options.source_dir, true);
  const FashionMnist t10k_file = load_fashion_mnist(options.source_dir, false);
  const int64_t half = t10k_file.size() / 2;
  const ScenePool train_pool = make_scene_pool(train_file, FashionFile::Train, 0, train_file.size());
  const ScenePool val_pool = make_scene_pool(t10k_file, FashionFile::T10k, 0, half);
  const ScenePool test_pool = make_scene_pool(t10k_file, FashionFile::T10k, half, t10k_file.size());

  Split vqa[3] = {{"train", &train_pool, options.train_images, 1},
                  {"val", &val_pool, options.val_images, 2},
                  {"test", &test_pool, options.test_images, 3}};
  vqa[0].first_image_id = 1;  // ids count on across the splits, so each is unique
  for (int s = 1; s < 3; s++) vqa[s].first_image_id = vqa[s - 1].first_image_id + vqa[s - 1].examples;
  const Split nlvr2[3] = {{"train", &train_pool, options.nlvr2_train, 4},
                          {"dev", &val_pool, options.nlvr2_dev, 5},
                          {"test", &test_pool, options.nlvr2_test, 6}};

  const fs::path out(options.out);
  make_directory(out / "vqa" / "images");
  for (const Split& split : nlvr2) make_directory(out / "nlvr2" / "images" / split.name);

  Progress images_done{progress};
  for (int s = 0; s < 3; s++) images_done.total += vqa[s].examples + 2 * int64_t(nlvr2[s].examples);
  images_done.set(0);

  // Pixels first (every PNG, in parallel), then the documents from what
  // each index produced, in index order.
  std::vector<VqaImage> vqa_images[3];
  std::vector<StatementSet> nlvr2_sets[3];
  for (int s = 0; s < 3; s++) vqa_images[s] = make_vqa_images(options, vqa[s], out, images_done);
  for (int s = 0; s < 3; s++) nlvr2_sets[s] = make_nlvr2_sets(options, nlvr2[s], out, images_done);

  FashionSummary summary;
  summary.seed = options.seed;
  summary.image_size = options.image_size;
  summary.answers = fashion_answers();
  summary.images_written = images_done.done;
  const std::vector<std::string> vocabulary = fashion_vocabulary();
  summary.vocab_size = int64_t(vocabulary.size());
  std::string vocab_txt;
  for (const auto& token : vocabulary) vocab_txt += token + "\n";
  write_file_atomically((out / "vocab.txt").string(), vocab_txt);
  for (int s = 0; s < 3; s++) summary.vqa.push_back(write_vqa_documents(vqa[s], vqa_images[s], out));
  for (int s = 0; s < 3; s++) summary.nlvr2.push_back(write_nlvr2_documents(nlvr2[s], nlvr2_sets[s], out));
  write_file_atomically((out / "README.md").string(), readme_text(options, summary));
  write_summary(options, summary, out);  // last: its presence says the data set is complete
  return summary;
}

}  // namespace st::data
