// The Fashion-MNIST VQA / NLVR2 generator (data/fashion.h): the IDX reader
// on the real files and on broken ones, rendering, determinism, held-out
// separation, and the written files read back as VQA v2 and NLVR2 with every
// answer and label recomputed from the scene it describes by a solver written
// here, independently of the generator's templates.
#include <doctest/doctest.h>

#include <zlib.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "data/fashion.h"
#include "data/image.h"
#include "data/tokenizer.h"
#include "engine/error.h"
#include "engine/files.h"
#include "engine/rng.h"
#include "tests/support.h"

namespace fs = std::filesystem;
using nlohmann::json;
using st::data::FashionFile;
using st::data::FashionMnist;
using st::data::FashionOptions;
using st::data::Scene;
using st::testing::TempDir;

namespace {

using st::testing::format_error;
using st::testing::argument_error;

const std::string kSource = st::data::kFashionMnistDir;

// The real files, read once for the whole suite.
const FashionMnist& t10k() {
  static const FashionMnist data = st::data::load_fashion_mnist(kSource, false);
  return data;
}

// text itself when it contains part, so CHECK(e == contains(e, part)) shows both when it fails.
std::string contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos ? text : "(a text containing \"" + part + "\")";
}

std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream f(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(f, line);) lines.push_back(line);
  return lines;
}

// A small data set made once: 60 / 30 / 30 VQA images, NLVR2 20 / 11 / 10
// (dev odd, so its last set has one pair).
FashionOptions small_options(const std::string& out, uint64_t seed) {
  FashionOptions o;
  o.out = out;
  o.seed = seed;
  o.train_images = 60;
  o.val_images = 30;
  o.test_images = 30;
  o.questions_per_image = 5;
  o.nlvr2_train = 20;
  o.nlvr2_dev = 11;
  o.nlvr2_test = 10;
  return o;
}

struct Generated {
  TempDir dir;
  st::data::FashionSummary summary;
  std::vector<std::pair<int64_t, int64_t>> progress;
  Generated() {
    summary = st::data::generate_fashion_dataset(
        small_options(dir.path.string(), 7), [&](int64_t done, int64_t total) { progress.push_back({done, total}); });
  }
  std::string operator/(const std::string& name) const { return dir / name; }
};
const Generated& generated() {
  static Generated g;
  return g;
}

// --- an independent reading of the scenes and the text ---------------------

int class_of(const std::string& word) {  // singular or plural; -1 if neither
  for (int c = 0; c < st::data::kFashionClasses; c++)
    if (word == st::data::class_name(c) || word == st::data::class_plural(c)) return c;
  return -1;
}
int colour_of(const std::string& word) {
  for (int k = 0; k < st::data::kFashionColours; k++)
    if (word == st::data::colour_name(k)) return k;
  return -1;
}

Scene scene_from_json(const json& j) {
  Scene s;
  s.image_size = j.at("image_size");
  s.source = j.at("source_file") == "train" ? FashionFile::Train : FashionFile::T10k;
  for (const auto& i : j.at("items")) {
    Scene::Item item;
    item.cls = class_of(i.at("class"));
    CHECK(item.cls == i.at("class_id").get<int>());
    item.colour = colour_of(i.at("colour"));
    item.row = i.at("row");
    item.col = i.at("col");
    item.x = i.at("x");
    item.y = i.at("y");
    item.source_index = i.at("source_index");
    s.items.push_back(item);
  }
  return s;
}

// The items a description ("bag" or "red bag") names.
std::vector<const Scene::Item*> matching(const Scene& s, const std::string& description) {
  std::vector<const Scene::Item*> found;
  const auto space = description.find(' ');
  const int colour = space == std::string::npos ? -1 : colour_of(description.substr(0, space));
  const int cls = class_of(space == std::string::npos ? description : description.substr(space + 1));
  REQUIRE(cls >= 0);
  for (const auto& item : s.items)
    if (item.cls == cls && (colour < 0 || item.colour == colour)) found.push_back(&item);
  return found;
}
int count(const Scene& s, int cls) {
  return int(std::count_if(s.items.begin(), s.items.end(), [&](const Scene::Item& i) { return i.cls == cls; }));
}

// The answer to a question, worked out from the scene alone.
std::string solve(const Scene& s, const std::string& q) {
  std::smatch m;
  if (std::regex_match(q, m, std::regex("is there a (.+)\\?"))) return matching(s, m[1]).empty() ? "no" : "yes";
  if (std::regex_match(q, m, std::regex("what colour is the (.+)\\?"))) {
    auto items = matching(s, m[1]);
    REQUIRE(items.size() == 1);  // asked only about a single item
    return st::data::colour_name(items[0]->colour);
  }
  if (std::regex_match(q, m, std::regex("how many (.+) are there\\?"))) return std::to_string(count(s, class_of(m[1])));
  if (std::regex_match(q, m, std::regex("what is (to the left of|to the right of|above|below) the (.+)\\?"))) {
    auto items = matching(s, m[2]);
    REQUIRE(items.size() == 1);  // the reference names exactly one item
    const int drow = m[1] == "above" ? -1 : m[1] == "below" ? 1 : 0;
    const int dcol = m[1] == "to the left of" ? -1 : m[1] == "to the right of" ? 1 : 0;
    for (const auto& item : s.items)
      if (item.row == items[0]->row + drow && item.col == items[0]->col + dcol) return st::data::class_name(item.cls);
    FAIL("no item next to the reference: " << q);
  }
  if (std::regex_match(q, m, std::regex("are there (more|fewer) (.+) than (.+)\\?"))) {
    const int a = count(s, class_of(m[2])), b = count(s, class_of(m[3]));
    CHECK((a > 0 || b > 0));  // never about two absent classes
    return (m[1] == "more" ? a > b : a < b) ? "yes" : "no";
  }
  FAIL("a question the solver does not know: " << q);
  return "";
}

bool judge(const Scene& left, const Scene& right, const std::string& sentence) {
  std::smatch m;
  auto present = [](const Scene& s, const std::string& d) { return !matching(s, d).empty(); };
  if (std::regex_match(sentence, m, std::regex("the (left|right) image contains (more|fewer) (.+) than the (left|right) image\\."))) {
    const Scene& a = m[1] == "left" ? left : right;
    const Scene& b = m[4] == "left" ? left : right;
    CHECK(m[1] != m[4]);
    const int x = m[3] == "objects" ? int(a.items.size()) : count(a, class_of(m[3]));
    const int y = m[3] == "objects" ? int(b.items.size()) : count(b, class_of(m[3]));
    return m[2] == "more" ? x > y : x < y;
  }
  if (std::regex_match(sentence, m, std::regex("both images contain a (.+)\\.")))
    return present(left, m[1]) && present(right, m[1]);
  if (std::regex_match(sentence, m, std::regex("neither image contains a (.+)\\.")))
    return !present(left, m[1]) && !present(right, m[1]);
  if (std::regex_match(sentence, m, std::regex("exactly one image contains a (.+)\\.")))
    return present(left, m[1]) != present(right, m[1]);
  if (std::regex_match(sentence, m, std::regex("there (is|are) exactly (one|two|three|four) (.+) in total\\."))) {
    const std::map<std::string, int> numbers = {{"one", 1}, {"two", 2}, {"three", 3}, {"four", 4}};
    return count(left, class_of(m[3])) + count(right, class_of(m[3])) == numbers.at(m[2]);
  }
  FAIL("a statement the solver does not know: " << sentence);
  return false;
}

json read_json(const std::string& path) { return json::parse(st::read_file(path)); }

// Every file under dir, by path relative to it.
std::map<std::string, std::string> all_files(const fs::path& dir) {
  std::map<std::string, std::string> files;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) files[fs::relative(e.path(), dir).string()] = st::read_file(e.path().string());
  return files;
}

void gzip_to(const std::string& path, const std::string& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  REQUIRE(f != nullptr);
  REQUIRE(gzwrite(f, bytes.data(), unsigned(bytes.size())) == int(bytes.size()));
  gzclose(f);
}

}  // namespace

TEST_CASE("fashion: the IDX files read with their sizes and labels") {
  const FashionMnist train = st::data::load_fashion_mnist(kSource, true);
  CHECK(train.size() == 60000);
  CHECK(t10k().size() == 10000);
  for (const FashionMnist* f : {&train, &t10k()}) {
    CHECK(f->pixels.size() == size_t(f->size()) * 28 * 28);
    std::vector<int> per_class(10, 0);
    for (uint8_t label : f->labels) {
      REQUIRE(label < 10);
      per_class[label]++;
    }
    for (int n : per_class) CHECK(n == f->size() / 10);  // Fashion-MNIST is balanced
  }
  // A photograph is a bright object on black: corners dark, the middle not.
  const uint8_t* first = t10k().image(0);
  CHECK(first[0] == 0);
  CHECK(*std::max_element(first, first + 28 * 28) > 100);
}

TEST_CASE("fashion: a missing, truncated or corrupt IDX file is a FormatError naming it") {
  TempDir dir;
  const std::string images = dir / "t10k-images-idx3-ubyte.gz", labels = dir / "t10k-labels-idx1-ubyte.gz";
  auto load = [&] { st::data::load_fashion_mnist(dir.path.string(), false); };

  std::string e = format_error(load);  // nothing there yet
  CHECK(e == contains(e, labels));
  CHECK(e == contains(e, "missing"));

  const std::string real_images = st::read_file(kSource + "/t10k-images-idx3-ubyte.gz");
  const std::string real_labels = st::read_file(kSource + "/t10k-labels-idx1-ubyte.gz");
  st::write_file_atomically(labels, real_labels);

  SUBCASE("truncated gzip stream") {
    st::write_file_atomically(images, real_images.substr(0, real_images.size() / 2));
    e = format_error(load);
    CHECK(e == contains(e, images));
    CHECK(e == contains(e, "truncated"));
  }
  SUBCASE("corrupt gzip data") {
    std::string broken = real_images;
    for (size_t i = 1000; i < 1100; i++) broken[i] = char(~broken[i]);
    st::write_file_atomically(images, broken);
    e = format_error(load);
    CHECK(e == contains(e, images));
  }
  SUBCASE("not gzip and no IDX magic") {
    st::write_file_atomically(images, std::string(4000, 'x'));
    e = format_error(load);
    CHECK(e == contains(e, images));
    CHECK(e == contains(e, "magic"));
  }
  SUBCASE("wrong magic inside a valid gzip file") {
    std::string header = {0, 0, 8, 1, 0, 0, 0, 1};  // a labels header where images belong
    gzip_to(images, header + "x");
    e = format_error(load);
    CHECK(e == contains(e, images));
    CHECK(e == contains(e, "magic"));
  }
  SUBCASE("a valid gzip of a truncated IDX payload") {
    std::string header = {0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28};  // two images, one given
    gzip_to(images, header + std::string(28 * 28, '\0'));
    e = format_error(load);
    CHECK(e == contains(e, images));
    CHECK(e == contains(e, "truncated"));
  }
  SUBCASE("image and label counts differ") {
    std::string header = {0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 28, 0, 0, 0, 28};
    gzip_to(images, header + std::string(28 * 28, '\0'));
    e = format_error(load);
    CHECK(e == contains(e, images));
    CHECK(e == contains(e, "10000 labels"));
  }
}

TEST_CASE("fashion: rendering puts each tinted photograph in its cell on black") {
  const FashionMnist& images = t10k();
  Scene scene;
  scene.image_size = 96;
  scene.source = FashionFile::T10k;
  // cell (0, 0) untinted at offset (1, 2); cell (1, 2) red at offset (4, 0).
  scene.items.push_back({images.labels[0], 0, 0, 0, 1, 2, 0});
  scene.items.push_back({images.labels[1], 1, 1, 2, 2 * 32 + 4, 32, 1});
  const st::Image image = st::data::render_scene(scene, images);
  REQUIRE(image.width == 96);
  REQUIRE(image.height == 96);
  for (int y = 0; y < 96; y++)
    for (int x = 0; x < 96; x++) {
      int r = 0, g = 0, b = 0;  // what the pixel must be
      for (const auto& item : scene.items)
        if (x >= item.x && x < item.x + 28 && y >= item.y && y < item.y + 28) {
          const int grey = images.image(item.source_index)[(y - item.y) * 28 + (x - item.x)];
          r = grey;
          g = item.colour == 0 ? grey : 0;  // white keeps the grey photograph; red keeps only red
          b = item.colour == 0 ? grey : 0;
          CHECK(x / 32 == item.col);  // inside its own cell
          CHECK(y / 32 == item.row);
        }
      if (image.at(x, y, 0) != r || image.at(x, y, 1) != g || image.at(x, y, 2) != b)
        FAIL("pixel (" << x << ", " << y << ") is wrong");
    }
  // Yellow is red + green; tints scale the grey value.
  CHECK(st::data::colour_rgb(4).r == 255);
  CHECK(st::data::colour_rgb(4).g == 255);
  CHECK(st::data::colour_rgb(4).b == 0);
}

TEST_CASE("fashion: random scenes keep items inside distinct cells and vary in density") {
  const auto pool = st::data::make_scene_pool(t10k(), FashionFile::T10k, 0, 5000);
  for (int size : {96, 100, 224}) {
    CAPTURE(size);
    const int cell = size / 3, side = st::data::item_side(size);
    CHECK(side == (size == 224 ? 56 : 28));
    int sparse = 0, crowded = 0;
    for (int i = 0; i < 600; i++) {
      st::Rng rng(11);
      rng.offset = uint64_t(i) << 20;
      const Scene s = st::data::random_scene(pool, size, rng);
      REQUIRE(!s.items.empty());
      REQUIRE(s.items.size() <= 9);
      sparse += s.items.size() <= 2;
      crowded += s.items.size() >= 6;
      std::set<int> cells, classes;
      for (const auto& item : s.items) {
        CHECK(cells.insert(item.row * 3 + item.col).second);
        classes.insert(item.cls);
        CHECK(item.x >= item.col * cell);
        CHECK(item.x + side <= item.col * cell + cell);
        CHECK(item.y >= item.row * cell);
        CHECK(item.y + side <= item.row * cell + cell);
        CHECK(t10k().labels[size_t(item.source_index)] == item.cls);  // the photograph shows its class
        CHECK(item.source_index < 5000);
      }
      CHECK(classes.size() <= 4);
    }
    CHECK(sparse > 150);
    CHECK(crowded > 150);
  }
}

TEST_CASE("fashion: on a larger canvas a photograph is enlarged by whole pixels") {
  Scene scene;
  scene.image_size = 200;  // cells of 66 pixels; items of 56
  scene.items.push_back({t10k().labels[2], 3, 1, 1, 70, 67, 2});  // blue, middle cell
  const st::Image image = st::data::render_scene(scene, t10k());
  const uint8_t* grey = t10k().image(2);
  for (int y = 0; y < 200; y++)
    for (int x = 0; x < 200; x++) {
      const bool inside = x >= 70 && x < 70 + 56 && y >= 67 && y < 67 + 56;
      const int expected = inside ? grey[((y - 67) / 2) * 28 + (x - 70) / 2] : 0;
      if (image.at(x, y, 0) != 0 || image.at(x, y, 1) != 0 || image.at(x, y, 2) != expected)
        FAIL("pixel (" << x << ", " << y << ") is wrong");
    }
  scene.items[0].x = 150;  // 150 + 56 > 200
  CHECK(argument_error([&] { st::data::render_scene(scene, t10k()); }) != "");
}

TEST_CASE("fashion: answers are right and yes/no questions balanced over many scenes") {
  const auto pool = st::data::make_scene_pool(t10k(), FashionFile::T10k, 0, 5000);
  std::map<std::string, std::map<std::string, int>> answers;  // question type -> answer -> count
  for (int i = 0; i < 3000; i++) {
    st::Rng rng(5);
    rng.offset = uint64_t(i) << 20;
    const Scene s = st::data::random_scene(pool, 96, rng);
    for (const auto& q : st::data::ask_questions(s, 4, rng)) {
      INFO(q.text);
      REQUIRE(solve(s, q.text) == q.answer);
      answers[q.question_type][q.answer]++;
      CHECK(q.answer_type == (q.answer == "yes" || q.answer == "no" ? "yes/no"
                              : q.question_type == "counting"        ? "number"
                                                                     : "other"));
    }
  }
  REQUIRE(answers.size() == 5);
  for (const char* type : {"existence", "comparison"}) {
    const double yes = answers[type]["yes"], no = answers[type]["no"];
    INFO(type << ": " << yes << " yes, " << no << " no");
    CHECK(yes / (yes + no) > 0.42);
    CHECK(yes / (yes + no) < 0.58);
  }
  CHECK(answers["counting"]["0"] > 0);  // zero is a possible count
  CHECK(answers["attribute"].size() == 5);  // every colour is asked for
}

TEST_CASE("fashion: generation is deterministic from the seed") {
  const auto first = all_files(generated().dir.path);
  TempDir again, other;
  st::data::generate_fashion_dataset(small_options(again.path.string(), 7));
  st::data::generate_fashion_dataset(small_options(other.path.string(), 8));
  const auto same = all_files(again.path);
  REQUIRE(first.size() == same.size());
  for (const auto& [name, bytes] : first) {
    INFO(name);
    REQUIRE(same.count(name));
    CHECK(same.at(name) == bytes);
  }
  const auto different = all_files(other.path);
  CHECK(different.at("vqa/train_questions.json") != first.at("vqa/train_questions.json"));
  CHECK(different.at("nlvr2/train.json") != first.at("nlvr2/train.json"));
  CHECK(different.at("vqa/images/COCO_fashion_train_000000000001.png") !=
        first.at("vqa/images/COCO_fashion_train_000000000001.png"));
  CHECK(different.at("vocab.txt") == first.at("vocab.txt"));  // the vocabulary does not depend on the seed
}

TEST_CASE("fashion: the VQA files parse as VQA v2 and every answer fits its scene") {
  const Generated& g = generated();
  const char* splits[] = {"train", "val", "test"};
  std::set<int64_t> image_ids_all;
  int64_t yes = 0, no = 0;
  for (int s = 0; s < 3; s++) {
    const std::string split = splits[s], subtype = "fashion_" + split;
    const json questions = read_json(g / ("vqa/" + split + "_questions.json"));
    const json annotations = read_json(g / ("vqa/" + split + "_annotations.json"));
    const json scenes = read_json(g / ("vqa/" + split + "_scenes.json"));
    CHECK(questions.at("data_type") == "fashion");
    CHECK(questions.at("data_subtype") == subtype);
    CHECK(annotations.at("data_subtype") == subtype);
    CHECK(questions.contains("info"));
    REQUIRE(questions.at("questions").size() == annotations.at("annotations").size());
    CHECK(int64_t(questions.at("questions").size()) == g.summary.vqa[size_t(s)].questions);

    std::map<int64_t, Scene> scene_of;
    std::set<int64_t> image_ids;
    for (const auto& j : scenes.at("scenes")) {
      const int64_t id = j.at("image_id");
      CHECK(image_ids_all.insert(id).second);  // image ids are unique across splits
      image_ids.insert(id);
      const Scene scene = scene_from_json(j);
      scene_of[id] = scene;
      char name[64];
      std::snprintf(name, sizeof name, "COCO_%s_%012lld.png", subtype.c_str(), static_cast<long long>(id));
      CHECK(j.at("file_name") == std::string("images/") + name);
      // Held-out separation: train only from the training file, val from
      // the first half of t10k, test from the second half.
      CHECK(scene.source == (split == "train" ? FashionFile::Train : FashionFile::T10k));
      for (const auto& item : scene.items) {
        if (split == "val") CHECK(item.source_index < 5000);
        if (split == "test") CHECK(item.source_index >= 5000);
      }
      // The PNG shows exactly that scene.
      if (split != "train") {
        const st::Image png = st::load_image(g / ("vqa/images/" + std::string(name)));
        CHECK(png.pixels == st::data::render_scene(scene, t10k()).pixels);
      } else {
        CHECK(fs::file_size(g / ("vqa/images/" + std::string(name))) > 0);
      }
    }
    CHECK(int64_t(image_ids.size()) == g.summary.vqa[size_t(s)].images);

    std::set<int64_t> question_ids;
    for (size_t i = 0; i < questions.at("questions").size(); i++) {
      const json& q = questions.at("questions")[i];
      const json& a = annotations.at("annotations")[i];
      const int64_t qid = q.at("question_id"), image_id = q.at("image_id");
      CHECK(question_ids.insert(qid).second);
      CHECK(a.at("question_id") == qid);
      CHECK(a.at("image_id") == image_id);
      REQUIRE(image_ids.count(image_id));
      const std::string text = q.at("question"), answer = a.at("multiple_choice_answer");
      INFO(text);
      CHECK(solve(scene_of.at(image_id), text) == answer);
      const auto& all = g.summary.answers;
      CHECK(std::find(all.begin(), all.end(), answer) != all.end());
      const std::string answer_type = a.at("answer_type");
      CHECK((answer_type == "yes/no" || answer_type == "number" || answer_type == "other"));
      CHECK(a.at("question_type").is_string());
      REQUIRE(a.at("answers").size() == 10);
      for (int k = 0; k < 10; k++) {
        CHECK(a.at("answers")[size_t(k)].at("answer") == answer);
        CHECK(a.at("answers")[size_t(k)].at("answer_id") == k + 1);
        CHECK(a.at("answers")[size_t(k)].at("answer_confidence") == "yes");
      }
      yes += answer == "yes";
      no += answer == "no";
    }
  }
  INFO(yes << " yes, " << no << " no");
  CHECK(double(yes) / double(yes + no) > 0.35);
  CHECK(double(yes) / double(yes + no) < 0.65);
}

TEST_CASE("fashion: the NLVR2 files parse as NLVR2 and every label fits its images") {
  const Generated& g = generated();
  const std::pair<const char*, int> splits[] = {{"train", 20}, {"dev", 11}, {"test", 10}};
  for (const auto& [split, examples] : splits) {
    const json scenes = read_json(g / ("nlvr2/" + std::string(split) + "_scenes.json"));
    std::map<std::string, Scene> scene_of;
    for (const auto& j : scenes.at("scenes")) scene_of[j.at("file_name")] = scene_from_json(j);
    const auto lines = read_lines(g / ("nlvr2/" + std::string(split) + ".json"));
    REQUIRE(int(lines.size()) == examples);
    int true_labels = 0;
    std::map<std::string, std::set<std::string>> labels_of_sentence;
    for (const auto& line : lines) {
      const json ex = json::parse(line);  // JSON Lines: one object per line
      const std::string id = ex.at("identifier"), sentence = ex.at("sentence"), label = ex.at("label");
      INFO(id << ": " << sentence);
      CHECK(std::regex_match(id, std::regex(std::string(split) + "-[0-9]+-[0-9]+-0")));
      REQUIRE((label == "True" || label == "False"));
      true_labels += label == "True";
      labels_of_sentence[id.substr(0, id.rfind('-', id.rfind('-') - 1))].insert(label);
      const std::string stem = id.substr(0, id.rfind('-'));
      std::vector<Scene> pair;
      for (const char* side : {"-img0.png", "-img1.png"}) {
        const std::string file = "images/" + std::string(split) + "/" + stem + side;
        REQUIRE(fs::exists(g / ("nlvr2/" + file)));
        REQUIRE(scene_of.count(file));
        pair.push_back(scene_of.at(file));
        CHECK(pair.back().source == (std::string(split) == "train" ? FashionFile::Train : FashionFile::T10k));
        for (const auto& item : pair.back().items) {
          if (std::string(split) == "dev") CHECK(item.source_index < 5000);
          if (std::string(split) == "test") CHECK(item.source_index >= 5000);
        }
      }
      CHECK(judge(pair[0], pair[1], sentence) == (label == "True"));
    }
    // Each sentence has one true and one false pair (an odd count's last sentence, one pair).
    CHECK(true_labels >= examples / 2);
    CHECK(true_labels <= (examples + 1) / 2);
    const std::string lone_set = std::string(split) + "-" + std::to_string(examples / 2);
    for (const auto& [set, labels] : labels_of_sentence)
      CHECK((labels.size() == 2 || (examples % 2 == 1 && set == lone_set)));
    CHECK(g.summary.nlvr2.size() == 3);
  }
}

TEST_CASE("fashion: every question and statement is whole words of vocab.txt") {
  const Generated& g = generated();
  const auto vocab = read_lines(g / "vocab.txt");
  REQUIRE(vocab.size() > 5);
  CHECK(vocab[0] == "[CLS]");  // ids 0..3 where RoBERTa has <s> <pad> </s> <unk>
  CHECK(vocab[1] == "[PAD]");
  CHECK(vocab[2] == "[SEP]");
  CHECK(vocab[3] == "[UNK]");
  CHECK(vocab[4] == "[MASK]");
  CHECK(std::set<std::string>(vocab.begin(), vocab.end()).size() == vocab.size());
  const st::data::WordPieceTokenizer tokenizer(g / "vocab.txt");
  CHECK(tokenizer.special().pad == 1);

  std::vector<std::string> texts = g.summary.answers;
  for (const char* split : {"train", "val", "test"}) {
    const json questions = read_json(g / ("vqa/" + std::string(split) + "_questions.json"));
    for (const auto& q : questions.at("questions")) texts.push_back(q.at("question"));
  }
  for (const char* split : {"train", "dev", "test"})
    for (const auto& line : read_lines(g / ("nlvr2/" + std::string(split) + ".json")))
      texts.push_back(json::parse(line).at("sentence"));
  // Every template word, including the ones this small sample may not use.
  for (int c = 0; c < 10; c++) {
    texts.push_back(st::data::class_name(c));
    texts.push_back(st::data::class_plural(c));
  }
  texts.push_back("zero one two three four");
  for (const auto& text : texts) {
    INFO(text);
    for (const auto& word : tokenizer.basic_tokenize(text)) {
      INFO(word);
      const auto ids = tokenizer.word_piece(word);
      REQUIRE(ids.size() == 1);  // one whole-word token, so certainly not [UNK]
      CHECK(ids[0] != tokenizer.special().unk);
    }
  }
  // A word the vocabulary lacks is spelled in pieces, not lost.
  const auto jacket = tokenizer.tokenize("jacket");
  CHECK(std::find(jacket.begin(), jacket.end(), tokenizer.special().unk) == jacket.end());
}

TEST_CASE("fashion: summary, README and progress describe what was made") {
  const Generated& g = generated();
  const json summary = read_json(g / "summary.json");
  CHECK(summary.at("seed") == 7);
  CHECK(summary.at("vqa").at("val").at("images") == 30);
  CHECK(summary.at("nlvr2").at("dev").at("examples") == 11);
  CHECK(summary.at("answers").size() == g.summary.answers.size());
  int64_t by_type = 0;
  for (const auto& [type, n] : summary.at("vqa").at("train").at("question_types").items()) by_type += n.get<int64_t>();
  CHECK(by_type == summary.at("vqa").at("train").at("questions").get<int64_t>());
  const std::string readme = st::read_file(g / "README.md");
  CHECK(readme == contains(readme, "Zalando Research"));
  CHECK(readme == contains(readme, "MIT"));
  CHECK(g.summary.images_written == 60 + 30 + 30 + 2 * (20 + 11 + 10));
  REQUIRE(!g.progress.empty());
  CHECK(g.progress.back().first == g.progress.back().second);
  CHECK(g.progress.back().second == g.summary.images_written);
  for (size_t i = 1; i < g.progress.size(); i++) CHECK(g.progress[i].first >= g.progress[i - 1].first);
}

TEST_CASE("fashion: bad options are one clear error and write nothing") {
  TempDir dir;
  const std::string out = dir / "out";
  FashionOptions o = small_options(out, 1);

  SUBCASE("no output directory") {
    o.out = "";
    CHECK(argument_error([&] { st::data::generate_fashion_dataset(o); }) != "");
  }
  SUBCASE("sizes that are not positive") {
    o.val_images = 0;
    const std::string e = argument_error([&] { st::data::generate_fashion_dataset(o); });
    CHECK(e == contains(e, "val_images"));
    o.val_images = 10;
    o.nlvr2_test = -3;
    CHECK(argument_error([&] { st::data::generate_fashion_dataset(o); }) != "");
    o.nlvr2_test = 10;
    o.questions_per_image = 0;
    CHECK(argument_error([&] { st::data::generate_fashion_dataset(o); }) != "");
  }
  SUBCASE("a canvas too small for three photographs a side") {
    o.image_size = 80;
    CHECK(argument_error([&] { st::data::generate_fashion_dataset(o); }) != "");
  }
  SUBCASE("a missing source folder") {
    o.source_dir = dir / "nowhere";
    const std::string e = format_error([&] { st::data::generate_fashion_dataset(o); });
    CHECK(e == contains(e, dir / "nowhere"));
  }
  SUBCASE("an output directory that cannot be created") {
    st::write_file_atomically(dir / "file", "x");
    o.out = dir / "file/out";
    const std::string e = argument_error([&] { st::data::generate_fashion_dataset(o); });
    CHECK(e == contains(e, "cannot create"));
  }
  CHECK(!fs::exists(out));
}

TEST_CASE("fashion: an existing output directory is written over") {
  TempDir dir;
  st::write_file_atomically(dir / "unrelated.txt", "kept");
  FashionOptions o = small_options(dir.path.string(), 3);
  o.train_images = o.val_images = o.test_images = 5;
  o.nlvr2_train = o.nlvr2_dev = o.nlvr2_test = 2;
  st::data::generate_fashion_dataset(o);
  o.seed = 4;
  st::data::generate_fashion_dataset(o);
  CHECK(read_json(dir / "summary.json").at("seed") == 4);
  CHECK(st::read_file(dir / "unrelated.txt") == "kept");
  for (const auto& e : fs::recursive_directory_iterator(dir.path))
    CHECK(e.path().extension() != ".tmp");  // no temporary file is left behind
}
