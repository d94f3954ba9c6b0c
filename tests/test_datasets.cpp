// The data set readers (data/datasets.h) and the batching loader
// (data/loader.h), on tiny fixtures written into a temporary directory:
// JSON and JSON Lines files in the real formats, PNG images of random
// pixels, and a WordPiece vocabulary. Every expected value is worked out by
// hand in the comments.
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <numeric>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "data/datasets.h"
#include "data/image.h"
#include "data/loader.h"
#include "data/tokenizer.h"
#include "engine/error.h"
#include "tests/support.h"

using st::Image;
using st::Tensor;
using st::testing::TempDir;
using namespace st::data;

namespace {

using st::testing::format_error;

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << text;
  REQUIRE(f.good());
}

Image random_image(int w, int h, uint32_t seed) {
  std::mt19937 gen(seed);
  Image img{w, h, std::vector<uint8_t>(size_t(w) * h * 3)};
  for (uint8_t& p : img.pixels) p = uint8_t(gen() & 0xFF);
  return img;
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

bool same(const Tensor& a, const Tensor& b) {
  if (a.defined() != b.defined()) return false;
  if (!a.defined()) return true;
  return a.shape() == b.shape() && a.dtype() == b.dtype() &&
         std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}

bool same(const LoadedBatch& a, const LoadedBatch& b) {
  return a.indices == b.indices && a.skipped == b.skipped && a.epoch == b.epoch && a.number == b.number &&
         same(a.batch.ids, b.batch.ids) && same(a.batch.mask, b.batch.mask) && same(a.batch.image, b.batch.image) &&
         same(a.batch.image2, b.batch.image2) && same(a.batch.targets, b.batch.targets);
}

// Row i of a (B, 3, S, S) batch as its own (3, S, S) tensor.
Tensor image_row(const Tensor& images, int64_t i) {
  const int64_t s = images.dim(2), n = 3 * s * s;
  std::vector<float> v(images.data() + i * n, images.data() + (i + 1) * n);
  return Tensor::from_vector(v, {3, s, s});
}

// ids [CLS]=0 [PAD]=1 [SEP]=2 [UNK]=3 [MASK]=4 what=5 color=6 is=7 the=8
// car=9 ?=10 there=11 are=12 two=13 dogs=14 .=15 a=16 man=17 sleeps=18
const char* kVocab =
    "[CLS]\n[PAD]\n[SEP]\n[UNK]\n[MASK]\nwhat\ncolor\nis\nthe\ncar\n?\nthere\nare\ntwo\ndogs\n.\na\nman\nsleeps\n";

const std::vector<std::string> kTexts = {
    "what color is the car?", "there are two dogs.", "a man sleeps.", "what is the man?", "two cars",
    "the dogs are there.",    "what?",               "a car",          "is there a man?",  "dogs",
};

// A directory with a vocabulary and n PNGs of different sizes; specs pair them with texts and labels.
struct Fixture {
  TempDir dir;
  WordPieceTokenizer tokenizer;
  std::vector<std::string> images;

  explicit Fixture(int n) : tokenizer((write_text(dir / "vocab.txt", kVocab), dir / "vocab.txt")) {
    for (int i = 0; i < n; ++i) {
      images.push_back(dir / ("img" + std::to_string(i) + ".png"));
      st::save_png(images.back(), random_image(7 + 3 * (i % 5), 9 + (7 * i) % 11, uint32_t(100 + i)));
    }
  }

  std::vector<ExampleSpec> specs() const {
    std::vector<ExampleSpec> out;
    for (size_t i = 0; i < images.size(); ++i)
      out.push_back({kTexts[i % kTexts.size()], images[i], images[(i + 1) % images.size()], int32_t(i % 3), {}});
    return out;
  }
};

// Every batch until the end.
std::vector<LoadedBatch> drain(Loader& loader) {
  std::vector<LoadedBatch> out;
  while (auto b = loader.next()) out.push_back(std::move(*b));
  return out;
}

// A VQA fixture: 3 questions on images 1 (a PNG), 2 (a .jpg) and 3 (missing).
struct VqaFiles {
  TempDir dir;
  std::string questions = dir / "questions.json", annotations = dir / "annotations.json";
  std::string images = dir / "images";

  static std::string answers(const std::vector<std::string>& list) {
    std::string s = "[";
    for (size_t k = 0; k < list.size(); ++k) {
      if (k) s += ",";
      s += "{\"answer\": \"";
      s += list[k];
      s += "\", \"answer_confidence\": \"yes\", \"answer_id\": ";
      s += std::to_string(k + 1);
      s += "}";
    }
    return s + "]";
  }

  VqaFiles() {
    std::filesystem::create_directories(images);
    write_text(questions, R"({"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": "train2014",
      "questions": [
        {"image_id": 1, "question": "What color is the car?", "question_id": 1000},
        {"image_id": 2, "question": "Are there two dogs?", "question_id": 2000},
        {"image_id": 1, "question": "What is the man?", "question_id": 1001}]})");
    write_text(annotations, std::string(R"({"annotations": [
      {"question_id": 2000, "image_id": 2, "question_type": "are there", "answer_type": "yes/no",
       "multiple_choice_answer": "yes", "answers": )") +
                                answers({"yes", "yes", "yes", "yes", "yes", "yes", "yes", "yes", "no", "yes"}) + R"(},
      {"question_id": 1000, "image_id": 1, "question_type": "what color is the", "answer_type": "other",
       "multiple_choice_answer": " White", "answers": )" +
                                answers({"red", "Red", " RED ", "blue", "yellow", "yellow", "white", "WHITE",
                                         "white ", "white"}) +
                                R"(},
      {"question_id": 1001, "image_id": 1, "question_type": "what is the", "answer_type": "other",
       "multiple_choice_answer": "sleeping", "answers": )" +
                                answers({"sleeping", "sleeping", "sleeping", "asleep", "asleep", "sleeping",
                                         "sleeping", "resting", "sleeping", "sleeping"}) +
                                "}]}");
    st::save_png(images + "/COCO_train2014_000000000001.png", random_image(12, 10, 1));
    st::save_png(images + "/COCO_train2014_000000000002.jpg", random_image(10, 16, 2));  // PNG bytes, decoded by content
  }
};

}  // namespace

// ---------------------------------------------------------------- VQA v2

TEST_CASE("datasets: normalize_answer lower-cases ASCII, trims and collapses whitespace") {
  CHECK(normalize_answer("  Red\tCar \n") == "red car");
  CHECK(normalize_answer("YES") == "yes");
  CHECK(normalize_answer("") == "");
  CHECK(normalize_answer(" \t ") == "");
  CHECK(normalize_answer("Café  Noir") == "café noir");  // only ASCII letters change case
  CHECK(normalize_answer("don't, 2") == "don't, 2");      // punctuation and numbers are left alone
}

TEST_CASE("datasets: VQA joins questions and annotations, counts answers and finds the images") {
  VqaFiles f;
  const VqaSet set = load_vqa(f.questions, f.annotations, f.images);
  CHECK(set.data_subtype == "train2014");
  CHECK(set.has_answers);
  REQUIRE(set.examples.size() == 3);
  // The questions file's order, whatever the annotations' order.
  const VqaExample& car = set.examples[0];
  CHECK(car.question_id == 1000);
  CHECK(car.image_id == 1);
  CHECK(car.question == "What color is the car?");
  CHECK(car.question_type == "what color is the");
  CHECK(car.answer_type == "other");
  CHECK(car.multiple_choice_answer == "white");
  // white x4, red x3 (three spellings), yellow x2, blue x1.
  using Counts = std::vector<std::pair<std::string, int>>;
  CHECK(car.answer_counts == Counts{{"white", 4}, {"red", 3}, {"yellow", 2}, {"blue", 1}});
  CHECK(set.examples[1].question_id == 2000);
  CHECK(set.examples[1].answer_counts == Counts{{"yes", 9}, {"no", 1}});
  CHECK(set.examples[2].answer_counts == Counts{{"sleeping", 7}, {"asleep", 2}, {"resting", 1}});
  // Image 1 exists only as a PNG, image 2 as a JPEG name.
  CHECK(car.image_path == f.images + "/COCO_train2014_000000000001.png");
  CHECK(set.examples[1].image_path == f.images + "/COCO_train2014_000000000002.jpg");
  CHECK(set.missing_images == 0);
  CHECK(coco_image_path(f.images, "val2014", 393225) == f.images + "/COCO_val2014_000000393225.jpg");

  // Without annotations (a test split): questions only; a missing image is counted, not an error.
  std::filesystem::remove(f.images + "/COCO_train2014_000000000001.png");
  const VqaSet test = load_vqa(f.questions, "", f.images);
  CHECK_FALSE(test.has_answers);
  CHECK(test.examples.size() == 3);
  CHECK(test.examples[0].answer_counts.empty());
  CHECK(test.examples[0].multiple_choice_answer.empty());
  CHECK(test.examples[0].image_path == f.images + "/COCO_train2014_000000000001.jpg");  // neither exists: .jpg
  CHECK(test.missing_images == 2);  // questions 1000 and 1001 share the missing image 1
}

TEST_CASE("datasets: VQA soft scores and accuracy are min(1, annotators / 3)") {
  VqaFiles f;
  const VqaSet set = load_vqa(f.questions, f.annotations, f.images);
  const VqaExample& car = set.examples[0];
  CHECK(vqa_soft_score(0) == 0.0f);
  CHECK(vqa_soft_score(1) == doctest::Approx(1.0 / 3));
  CHECK(vqa_soft_score(2) == doctest::Approx(2.0 / 3));
  CHECK(vqa_soft_score(3) == 1.0f);
  CHECK(vqa_soft_score(10) == 1.0f);

  // A vocabulary that has red, blue and white but not yellow.
  const AnswerVocab vocab({"blue", "no", "red", "white", "yes"});
  const std::vector<float> row = vocab.soft_scores(car);  // (5)
  REQUIRE(row.size() == 5);
  CHECK(row[0] == doctest::Approx(1.0 / 3));  // blue x1
  CHECK(row[1] == 0.0f);                      // no: not given
  CHECK(row[2] == 1.0f);                      // red x3
  CHECK(row[3] == 1.0f);                      // white x4
  CHECK(row[4] == 0.0f);
  using Sparse = std::vector<std::pair<int32_t, float>>;
  CHECK(vocab.sparse_soft_scores(car) == Sparse{{0, 1.0f / 3}, {2, 1.0f}, {3, 1.0f}});
  CHECK(vocab.soft_scores(set.examples[1])[1] == doctest::Approx(1.0 / 3));  // no x1
  CHECK(vocab.soft_scores(set.examples[1])[4] == 1.0f);                      // yes x9

  CHECK(vqa_accuracy(car, "white") == 1.0f);
  CHECK(vqa_accuracy(car, "  RED ") == 1.0f);  // normalised first
  CHECK(vqa_accuracy(car, "yellow") == doctest::Approx(2.0 / 3));
  CHECK(vqa_accuracy(car, "blue") == doctest::Approx(1.0 / 3));
  CHECK(vqa_accuracy(car, "purple") == 0.0f);
  CHECK(vqa_accuracy(set.examples[2], "asleep") == doctest::Approx(2.0 / 3));
}

TEST_CASE("datasets: answer vocabulary order, min_count, cap, save and load") {
  std::vector<VqaExample> examples(10);
  const char* mca[] = {"yes", "no", "yes", "2", "no", "red", "yes", "2", "no", ""};
  for (int i = 0; i < 10; ++i) examples[size_t(i)].multiple_choice_answer = mca[i];
  // Counts: yes 3, no 3, 2 2, red 1 (the empty answer never counts). Most
  // frequent first, ties by string: "no" < "yes".
  using V = std::vector<std::string>;
  CHECK(AnswerVocab::build(examples).answers() == V{"no", "yes", "2", "red"});
  CHECK(AnswerVocab::build(examples, 2).answers() == V{"no", "yes", "2"});
  CHECK(AnswerVocab::build(examples, 3).answers() == V{"no", "yes"});
  CHECK(AnswerVocab::build(examples, 4).answers() == V{});
  CHECK(AnswerVocab::build(examples, 1, 3).answers() == V{"no", "yes", "2"});
  CHECK_THROWS_AS(AnswerVocab::build(examples, 0), st::ArgumentError);

  const AnswerVocab vocab = AnswerVocab::build(examples);
  CHECK(vocab.size() == 4);
  CHECK(vocab.index("yes") == 1);
  CHECK(vocab.index("red") == 3);
  CHECK(vocab.index("maybe") == -1);
  CHECK(vocab.answer(2) == "2");
  CHECK_THROWS_AS(vocab.answer(4), st::ArgumentError);
  CHECK_THROWS_AS(AnswerVocab({"a", "b", "a"}), st::ArgumentError);

  TempDir dir;
  vocab.save(dir / "answers.json");
  CHECK_FALSE(std::filesystem::exists(dir / "answers.json.tmp"));
  const AnswerVocab loaded = AnswerVocab::load(dir / "answers.json");
  CHECK(loaded.answers() == vocab.answers());
  CHECK(loaded.index("2") == 2);

  write_text(dir / "object.json", R"({"answers": ["a"]})");
  write_text(dir / "number.json", R"(["a", 2])");
  write_text(dir / "dup.json", R"(["a", "b", "a"])");
  write_text(dir / "cut.json", R"(["a", "b)");
  CHECK(contains(format_error([&] { AnswerVocab::load(dir / "object.json"); }), dir / "object.json"));
  CHECK(contains(format_error([&] { AnswerVocab::load(dir / "number.json"); }), "entry 1 must be a string"));
  CHECK(contains(format_error([&] { AnswerVocab::load(dir / "dup.json"); }), "appears twice"));
  CHECK(contains(format_error([&] { AnswerVocab::load(dir / "cut.json"); }), "invalid JSON"));
  CHECK(contains(format_error([&] { AnswerVocab::load(dir / "absent.json"); }), dir / "absent.json"));
}

TEST_CASE("datasets: malformed VQA files are FormatErrors naming the file and the id") {
  VqaFiles f;
  const std::string q = f.dir / "q.json", a = f.dir / "a.json";
  auto questions_error = [&](const std::string& text) {
    write_text(q, text);
    return format_error([&] { load_vqa(q, "", f.images); });
  };
  auto annotations_error = [&](const std::string& text) {
    write_text(a, text);
    return format_error([&] { load_vqa(f.questions, a, f.images); });
  };
  const std::string good_q = R"({"image_id": 1, "question": "Why?", "question_id": 5})";

  std::string e = questions_error(R"({"data_subtype": "train2014", "questions": [)" + good_q);  // truncated
  CHECK(contains(e, q));
  CHECK(contains(e, "invalid JSON"));
  CHECK(contains(questions_error(""), "invalid JSON"));
  CHECK(contains(questions_error(R"({"questions": []})"), "missing key \"data_subtype\""));
  CHECK(contains(questions_error(R"({"data_subtype": "x"})"), "missing key \"questions\""));
  CHECK(contains(questions_error(R"({"data_subtype": "x", "questions": {}})"), "\"questions\" must be an array"));
  CHECK(contains(questions_error(R"([1, 2])"), "expected a JSON object"));
  e = questions_error(R"({"data_subtype": "x", "questions": [)" + good_q +
                      R"(, {"image_id": 1, "question": "Why?", "question_id": "6"}]})");
  CHECK(contains(e, q));
  CHECK(contains(e, "questions[1]"));
  CHECK(contains(e, "\"question_id\" must be an integer, got string"));
  CHECK(contains(questions_error(R"({"data_subtype": "x", "questions": [{"image_id": 1, "question_id": 5}]})"),
                 "missing key \"question\""));
  CHECK(contains(questions_error(R"({"data_subtype": "x", "questions": [{"image_id": 1.5, "question": "?", "question_id": 5}]})"),
                 "\"image_id\" must be an integer"));
  CHECK(contains(questions_error(R"({"data_subtype": "x", "questions": [{"image_id": -1, "question": "?", "question_id": 5}]})"),
                 "negative image_id"));
  CHECK(contains(questions_error(R"({"data_subtype": "x", "questions": [)" + good_q + "," + good_q + "]}"),
                 "question_id 5 appears twice"));
  CHECK(contains(format_error([&] { load_vqa(f.dir / "absent.json", "", f.images); }), f.dir / "absent.json"));

  // Annotations, against the three questions of VqaFiles (1000, 2000, 1001).
  auto ann = [](int64_t qid, int64_t iid, const std::string& answers = R"([{"answer": "x"}])") {
    return R"({"question_id": )" + std::to_string(qid) + R"(, "image_id": )" + std::to_string(iid) +
           R"(, "multiple_choice_answer": "x", "answers": )" + answers + "}";
  };
  const std::string all = ann(1000, 1) + "," + ann(2000, 2) + "," + ann(1001, 1);
  CHECK(annotations_error(R"({"annotations": [)" + all + "]}").empty());  // the control: this one loads
  e = annotations_error(R"({"annotations": [)" + all + "," + ann(7777, 1) + "]}");
  CHECK(contains(e, a));
  CHECK(contains(e, "question_id 7777 has no question"));
  e = annotations_error(R"({"annotations": [)" + ann(1000, 1) + "," + ann(1001, 1) + "]}");
  CHECK(contains(e, a));
  CHECK(contains(e, "question_id 2000"));
  CHECK(contains(e, "has no annotation"));
  CHECK(contains(annotations_error(R"({"annotations": [)" + all + "," + ann(1000, 1) + "]}"), "annotated twice"));
  CHECK(contains(annotations_error(R"({"annotations": [)" + ann(1000, 3) + "]}"), "has image_id 3 here but 1"));
  e = annotations_error(R"({"annotations": [)" + ann(1000, 1, R"([{"answer": "x"}, {"answers": "y"}])") + "]}");
  CHECK(contains(e, "annotations[0]: answers[1]: missing key \"answer\""));
  CHECK(contains(annotations_error(R"({"annotations": [)" + ann(1000, 1, R"("x")") + "]}"),
                 "\"answers\" must be an array"));
  CHECK(contains(annotations_error(R"({"annotations": [{"question_id": 1000, "image_id": 1, "answers": []}]})"),
                 "missing key \"multiple_choice_answer\""));
  CHECK(contains(annotations_error(R"({"annotations": [)" + ann(1000, 1).substr(0, 40)), "invalid JSON"));
  CHECK(contains(annotations_error(R"({"annotation": []})"), "missing key \"annotations\""));
}

// ---------------------------------------------------------------- NLVR2

TEST_CASE("datasets: NLVR2 resolves image pairs with and without \"directory\" and reads labels") {
  TempDir dir;
  const std::string images = dir / "images";
  std::filesystem::create_directories(images + "/61");
  st::save_png(images + "/dev-850-0-img0.png", random_image(5, 5, 1));
  st::save_png(images + "/dev-850-0-img1.png", random_image(5, 5, 2));
  st::save_png(images + "/61/train-10171-0-img0.png", random_image(5, 5, 3));
  // train-10171-0-img1.png and everything of test1-3-2 are missing.
  write_text(dir / "dev.json",
             "{\"identifier\": \"dev-850-0-0\", \"sentence\": \"There are two dogs.\", \"label\": \"True\"}\r\n"
             "\n"
             "{\"identifier\": \"dev-850-0-3\", \"sentence\": \"A man sleeps.\", \"label\": \"False\"}\n"
             "{\"identifier\": \"train-10171-0-1\", \"sentence\": \"s\", \"label\": \"false\", \"directory\": 61}\n"
             "{\"identifier\": \"test1-3-2-0\", \"sentence\": \"t\", \"label\": true, \"directory\": \"7\"}\n");
  const Nlvr2Set set = load_nlvr2(dir / "dev.json", images);
  REQUIRE(set.examples.size() == 4);
  CHECK(set.examples[0].identifier == "dev-850-0-0");
  CHECK(set.examples[0].sentence == "There are two dogs.");
  CHECK(set.examples[0].label == 1);
  CHECK(set.examples[0].image_path == images + "/dev-850-0-img0.png");
  CHECK(set.examples[0].image2_path == images + "/dev-850-0-img1.png");
  CHECK(set.examples[1].label == 0);
  CHECK(set.examples[1].image_path == images + "/dev-850-0-img0.png");  // same pair, another sentence
  CHECK(set.examples[2].label == 0);
  CHECK(set.examples[2].image_path == images + "/61/train-10171-0-img0.png");
  CHECK(set.examples[2].image2_path == images + "/61/train-10171-0-img1.png");
  CHECK(set.examples[3].label == 1);
  CHECK(set.examples[3].image2_path == images + "/7/test1-3-2-img1.png");
  CHECK(set.missing_images == 2);
}

TEST_CASE("datasets: malformed NLVR2 lines are FormatErrors naming the file and the line") {
  TempDir dir;
  const std::string path = dir / "bad.jsonl";
  const std::string good = R"({"identifier": "dev-1-0-0", "sentence": "s", "label": "True"})";
  auto error_of = [&](const std::string& bad_line) {
    write_text(path, good + "\n" + good + "\n" + bad_line + "\n" + good + "\n");
    return format_error([&] { load_nlvr2(path, dir / "images"); });
  };
  CHECK(error_of(good).empty());  // the control
  std::string e = error_of(R"({"identifier": "dev-1-0-0", "sentence": "s", "label": "True")");  // truncated
  CHECK(contains(e, path));
  CHECK(contains(e, "line 3"));
  CHECK(contains(e, "invalid JSON"));
  CHECK(contains(error_of("not json"), "line 3: invalid JSON"));
  CHECK(contains(error_of("[1, 2]"), "line 3: expected a JSON object, got array"));
  CHECK(contains(error_of(R"({"identifier": "dev-1-0-0", "label": "True"})"), "line 3: missing key \"sentence\""));
  CHECK(contains(error_of(R"({"identifier": "dev-1-0-0", "sentence": "s"})"), "missing key \"label\""));
  CHECK(contains(error_of(R"({"identifier": 5, "sentence": "s", "label": "True"})"),
                 "\"identifier\" must be a string, got number"));
  CHECK(contains(error_of(R"({"identifier": "dev-1-0-0", "sentence": "s", "label": "maybe"})"),
                 "\"label\" must be \"True\" or \"False\", got \"maybe\""));
  CHECK(contains(error_of(R"({"identifier": "dev-1-0-0", "sentence": "s", "label": 1})"), "\"label\" must be"));
  CHECK(contains(error_of(R"({"identifier": "dev1", "sentence": "s", "label": "True"})"), "does not end in \"-N\""));
  CHECK(contains(error_of(R"({"identifier": "dev-", "sentence": "s", "label": "True"})"), "does not end in \"-N\""));
  CHECK(contains(error_of(R"({"identifier": "dev-1-0-0", "sentence": "s", "label": "True", "directory": [1]})"),
                 "\"directory\" must be"));
  CHECK(contains(format_error([&] { load_nlvr2(dir / "absent.json", dir.path.string()); }), dir / "absent.json"));
  write_text(path, "");
  CHECK(load_nlvr2(path, dir.path.string()).examples.empty());  // an empty file is an empty set
}

// ---------------------------------------------------------------- SNLI-VE

TEST_CASE("datasets: SNLI-VE labels follow METER's order; every spelling of the image id is read") {
  CHECK(snli_ve_label("contradiction") == 0);
  CHECK(snli_ve_label("neutral") == 1);
  CHECK(snli_ve_label("entailment") == 2);
  CHECK_FALSE(snli_ve_label("-").has_value());
  CHECK_FALSE(snli_ve_label("Entailment").has_value());
  CHECK(std::string(snli_ve_label_name(1)) == "neutral");
  CHECK_THROWS_AS(snli_ve_label_name(3), st::ArgumentError);

  TempDir dir;
  st::save_png(dir / "2248275918.jpg", random_image(6, 4, 9));
  write_text(dir / "ve.jsonl",
             R"({"Flikr30kID": "2248275918.jpg", "sentence1": "Two men talk.", "sentence2": " Two men are outside. ", "gold_label": "entailment", "pairID": "1"})"
             "\n"
             R"({"Flickr30kID": "2248275918", "sentence2": "Nobody is there.", "gold_label": "contradiction"})"
             "\n"
             R"({"Flickr30K_ID": 77, "sentence2": "They are brothers.", "gold_label": "neutral"})"
             "\n");
  const SnliVeSet set = load_snli_ve(dir / "ve.jsonl", dir.path.string());
  REQUIRE(set.examples.size() == 3);
  CHECK(set.examples[0].image_id == "2248275918.jpg");
  CHECK(set.examples[0].image_path == dir / "2248275918.jpg");
  CHECK(set.examples[0].hypothesis == "Two men are outside.");
  CHECK(set.examples[0].premise == "Two men talk.");
  CHECK(set.examples[0].label == kEntailment);
  CHECK(set.examples[1].image_path == dir / "2248275918.jpg");
  CHECK(set.examples[1].label == kContradiction);
  CHECK(set.examples[2].image_id == "77");
  CHECK(set.examples[2].image_path == dir / "77.jpg");
  CHECK(set.examples[2].label == kNeutral);
  CHECK(set.missing_images == 1);  // 77.jpg

  auto error_of = [&](const std::string& line) {
    write_text(dir / "bad.jsonl", line + "\n");
    return format_error([&] { load_snli_ve(dir / "bad.jsonl", dir.path.string()); });
  };
  std::string e = error_of(R"({"Flikr30kID": "1.jpg", "sentence2": "s", "gold_label": "-"})");
  CHECK(contains(e, dir / "bad.jsonl"));
  CHECK(contains(e, "line 1"));
  CHECK(contains(e, "\"gold_label\" must be contradiction, neutral or entailment, got \"-\""));
  CHECK(contains(error_of(R"({"Flikr30kID": "1.jpg", "gold_label": "neutral"})"), "missing key \"sentence2\""));
  CHECK(contains(error_of(R"({"sentence2": "s", "gold_label": "neutral"})"), "missing key \"Flikr30kID\""));
  CHECK(contains(error_of(R"({"Flikr30kID": true, "sentence2": "s", "gold_label": "neutral"})"),
                 "must be a non-empty string or an integer"));
  CHECK(contains(error_of(R"({"Flikr30kID": "1.jpg", "sentence2": "s", "gold_label": 2})"),
                 "\"gold_label\" must be a string"));
  CHECK(contains(error_of(R"({"Flikr30kID": "1.jpg", "sentence2": "s")"), "line 1: invalid JSON"));
}

// ---------------------------------------------------------------- any bytes

TEST_CASE("datasets: truncated, empty and random files are FormatErrors, never a crash") {
  TempDir dir;
  const std::string path = dir / "input";
  const std::string questions =
      R"({"data_subtype": "val2014", "questions": [{"image_id": 1, "question": "Why?", "question_id": 5}]})";
  const std::string nlvr2 = "{\"identifier\": \"dev-1-0-0\", \"sentence\": \"s\", \"label\": \"True\"}\n"
                            "{\"identifier\": \"dev-2-0-1\", \"sentence\": \"t\", \"label\": \"False\"}\n";
  const std::string snli = "{\"Flikr30kID\": \"1.jpg\", \"sentence2\": \"s\", \"gold_label\": \"neutral\"}\n"
                           "{\"Flikr30kID\": \"2.jpg\", \"sentence2\": \"t\", \"gold_label\": \"entailment\"}\n";
  const std::string answers = R"(["yes", "no", "2"])";
  // Each reader on `bytes`: loads (true) or throws FormatError (false); anything else fails the test.
  auto loads = [&](int which, const std::string& bytes) {
    write_text(path, bytes);
    try {
      switch (which) {
        case 0: load_vqa(path, "", dir.path.string()); break;
        case 1: load_nlvr2(path, dir.path.string()); break;
        case 2: load_snli_ve(path, dir.path.string()); break;
        default: AnswerVocab::load(path); break;
      }
      return true;
    } catch (const st::FormatError& e) {
      CHECK(contains(e.what(), path));
      return false;
    }
  };
  const std::string files[] = {questions, nlvr2, snli, answers};
  for (int which = 0; which < 4; ++which) {
    CAPTURE(which);
    const std::string& good = files[which];
    CHECK(loads(which, good));
    // Every strict prefix: a JSON document is incomplete; JSON Lines load when cut at a line's end.
    for (size_t n = 0; n < good.size(); ++n) {
      const bool at_line_end = n == 0 || good[n - 1] == '\n' || good[n] == '\n';  // a whole line, with or without its newline
      const bool ok = loads(which, good.substr(0, n));
      CHECK(ok == ((which == 1 || which == 2) && at_line_end));
    }
    std::mt19937 gen(static_cast<uint32_t>(which));
    for (int trial = 0; trial < 50; ++trial) {
      std::string bytes(gen() % 200, '\0');
      for (char& c : bytes) c = char(gen() & 0xFF);
      CHECK_FALSE(loads(which, bytes + "x"));  // the last line is never valid JSON
    }
  }
}

// ---------------------------------------------------------------- the loader

TEST_CASE("loader: batches hold the tokenized text, clip_preprocess'd images and the labels") {
  Fixture f(5);
  LoaderOptions o;
  o.batch_size = 2;
  o.image_size = 8;
  o.max_text_len = 6;
  o.shuffle = false;
  const std::vector<ExampleSpec> specs = f.specs();
  for (int workers : {0, 1}) {
    o.workers = workers;
    Loader loader(source_from_specs(specs), f.tokenizer, o);
    CHECK(loader.size() == 5);
    std::vector<LoadedBatch> batches = drain(loader);
    REQUIRE(batches.size() == 3);  // 2, 2, 1
    CHECK(batches[2].indices == std::vector<int64_t>{4});
    CHECK_FALSE(loader.next().has_value());  // and it stays ended
    for (const LoadedBatch& lb : batches) {
      const st::TrainBatch& b = lb.batch;
      const int64_t rows = int64_t(lb.indices.size());
      CHECK(lb.epoch == 0);
      CHECK(b.ids.shape() == st::Shape{rows, 6});
      CHECK(b.ids.dtype() == st::DType::I32);
      CHECK(b.mask.shape() == st::Shape{rows, 6});
      CHECK(b.image.shape() == st::Shape{rows, 3, 8, 8});
      CHECK_FALSE(b.image2.defined());
      CHECK(b.targets.shape() == st::Shape{rows});
      CHECK(b.targets.dtype() == st::DType::I32);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t i = lb.indices[size_t(r)];
        CHECK(i == lb.number * 2 + r);
        const Encoding enc = f.tokenizer.encode_padded(specs[size_t(i)].text, 6);
        CHECK(std::vector<int32_t>(b.ids.ints() + r * 6, b.ids.ints() + r * 6 + 6) == enc.ids);
        for (int t = 0; t < 6; ++t) CHECK(b.mask.data()[r * 6 + t] == float(enc.mask[size_t(t)]));
        CHECK(same(image_row(b.image, r), st::clip_preprocess(st::load_image(f.images[size_t(i)]), 8)));
        CHECK(b.targets.ints()[r] == int32_t(i % 3));
      }
    }
  }
  // "what color is the car?" cut to 6: [CLS] what color is the [SEP]; "what?" padded with [PAD] = 1.
  Loader loader(source_from_specs(specs), f.tokenizer, o);
  const LoadedBatch first = *loader.next();
  CHECK(std::vector<int32_t>(first.batch.ids.ints(), first.batch.ids.ints() + 6) ==
        std::vector<int32_t>{0, 5, 6, 7, 8, 2});
  CHECK(std::vector<int32_t>(first.batch.ids.ints() + 6, first.batch.ids.ints() + 12) ==
        std::vector<int32_t>{0, 11, 12, 13, 14, 2});
}

TEST_CASE("loader: padding to the longest row of each batch") {
  Fixture f(3);
  std::vector<ExampleSpec> specs = f.specs();
  specs[0].text = "dogs";          // [CLS] dogs [SEP]: 3
  specs[1].text = "a man sleeps.";  // [CLS] a man sleeps . [SEP]: 6
  specs[2].text = "what?";          // 4
  LoaderOptions o;
  o.batch_size = 2;
  o.image_size = 4;
  o.shuffle = false;
  o.padding = Padding::Longest;
  o.max_text_len = 0;  // no limit
  Loader loader(source_from_specs(specs), f.tokenizer, o);
  const LoadedBatch a = *loader.next();
  CHECK(a.batch.ids.shape() == st::Shape{2, 6});
  CHECK(a.batch.ids.to_ints() == std::vector<int32_t>{0, 14, 2, 1, 1, 1, 0, 16, 17, 18, 15, 2});
  CHECK(a.batch.mask.to_vector() == std::vector<float>{1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1});
  const LoadedBatch b = *loader.next();
  CHECK(b.batch.ids.shape() == st::Shape{1, 4});
  // With a limit, the longest row is cut to it.
  o.max_text_len = 4;
  Loader cut(source_from_specs(specs), f.tokenizer, o);
  CHECK(cut.next()->batch.ids.to_ints() == std::vector<int32_t>{0, 14, 2, 1, 0, 16, 17, 2});
}

TEST_CASE("loader: VQA soft-score targets and NLVR2's second image") {
  VqaFiles v;
  const VqaSet set = load_vqa(v.questions, v.annotations, v.images);
  const AnswerVocab vocab({"blue", "no", "red", "white", "yes"});
  TempDir dir;
  write_text(dir / "vocab.txt", kVocab);
  WordPieceTokenizer tok(dir / "vocab.txt");
  LoaderOptions o;
  o.batch_size = 3;
  o.image_size = 6;
  o.max_text_len = 8;
  o.shuffle = false;
  Loader loader(vqa_source(set, vocab), tok, o);
  const LoadedBatch b = *loader.next();
  CHECK(b.batch.targets.shape() == st::Shape{3, 5});
  CHECK(b.batch.targets.dtype() == st::DType::F32);
  const std::vector<float> t = b.batch.targets.to_vector();
  const float third = 1.0f / 3;
  CHECK(t == std::vector<float>{third, 0, 1, 1, 0,     // white x4, red x3, blue x1
                                0, third, 0, 0, 1,     // yes x9, no x1
                                0, 0, 0, 0, 0});       // sleeping is not in the vocabulary
  CHECK(same(image_row(b.batch.image, 1), st::clip_preprocess(st::load_image(set.examples[1].image_path), 6)));
  CHECK_THROWS_AS(vqa_source(set, AnswerVocab()), st::ArgumentError);

  Fixture f(4);
  Nlvr2Set pairs;
  for (int i = 0; i < 4; ++i)
    pairs.examples.push_back({"id-" + std::to_string(i), kTexts[size_t(i)], f.images[size_t(i)],
                              f.images[size_t(3 - i)], int32_t(i % 2)});
  o.batch_size = 4;
  Loader nlvr2(nlvr2_source(pairs), f.tokenizer, o);
  const LoadedBatch n = *nlvr2.next();
  REQUIRE(n.batch.image2.defined());
  CHECK(n.batch.image2.shape() == st::Shape{4, 3, 6, 6});
  for (int i = 0; i < 4; ++i) {
    CHECK(same(image_row(n.batch.image, i), st::clip_preprocess(st::load_image(f.images[size_t(i)]), 6)));
    CHECK(same(image_row(n.batch.image2, i), st::clip_preprocess(st::load_image(f.images[size_t(3 - i)]), 6)));
  }
  CHECK(n.batch.targets.to_ints() == std::vector<int32_t>{0, 1, 0, 1});
}

TEST_CASE("loader: shuffling visits a permutation each epoch and depends on seed and epoch") {
  for (int64_t n : {1, 2, 10, 97}) {
    std::vector<int64_t> order = shuffled_order(n, 7, 3);
    std::sort(order.begin(), order.end());
    std::vector<int64_t> expected(static_cast<size_t>(n));
    std::iota(expected.begin(), expected.end(), int64_t(0));
    CHECK(order == expected);
  }
  CHECK(shuffled_order(50, 1, 0) == shuffled_order(50, 1, 0));
  CHECK(shuffled_order(50, 1, 0) != shuffled_order(50, 2, 0));
  CHECK(shuffled_order(50, 1, 0) != shuffled_order(50, 1, 1));
  CHECK(shuffled_order(50, 1, 1) != shuffled_order(50, 2, 0));  // not merely seed + epoch

  Fixture f(10);
  auto epochs_of = [&](uint64_t seed) {
    LoaderOptions o;
    o.batch_size = 3;
    o.image_size = 4;
    o.max_text_len = 8;
    o.seed = seed;
    o.epochs = 2;
    Loader loader(source_from_specs(f.specs()), f.tokenizer, o);
    std::vector<std::vector<int64_t>> visits(2);
    for (const LoadedBatch& b : drain(loader)) {
      CHECK(b.indices.size() <= 3);
      visits[size_t(b.epoch)].insert(visits[size_t(b.epoch)].end(), b.indices.begin(), b.indices.end());
    }
    return visits;
  };
  const auto a = epochs_of(1);
  for (const auto& epoch : a) {
    CHECK(epoch == shuffled_order(10, 1, &epoch - &a[0]));
    CHECK(std::set<int64_t>(epoch.begin(), epoch.end()).size() == 10);
  }
  CHECK(a[0] != a[1]);
  CHECK(epochs_of(1) == a);
  CHECK(epochs_of(2) != a);
}

TEST_CASE("loader: drop_last, and cycling for ever") {
  Fixture f(5);
  LoaderOptions o;
  o.batch_size = 2;
  o.image_size = 4;
  o.max_text_len = 8;
  o.shuffle = false;
  o.drop_last = true;
  o.epochs = 2;
  {
    Loader loader(source_from_specs(f.specs()), f.tokenizer, o);
    std::vector<LoadedBatch> batches = drain(loader);
    REQUIRE(batches.size() == 4);  // 2 + 2 per epoch; the lone 5th example is dropped
    CHECK(batches[2].indices == std::vector<int64_t>{0, 1});
    CHECK(batches[2].epoch == 1);
    CHECK(batches[3].number == 3);
  }
  o.drop_last = false;
  o.epochs = 0;
  o.workers = 2;
  Loader forever(source_from_specs(f.specs()), f.tokenizer, o);
  std::vector<int64_t> epochs;
  for (int i = 0; i < 10; ++i) epochs.push_back(forever.next()->epoch);
  CHECK(epochs == std::vector<int64_t>{0, 0, 0, 1, 1, 1, 2, 2, 2, 3});
}

TEST_CASE("loader: skipped missing and corrupt images are counted and the batches filled with the next") {
  Fixture f(8);
  std::vector<ExampleSpec> specs = f.specs();
  specs[1].image = f.dir / "absent.png";
  write_text(f.dir / "corrupt.png", "\x89PNG\r\n\x1a\n this is not the rest of a PNG");
  specs[4].image = f.dir / "corrupt.png";
  for (int workers : {0, 1, 3}) {
    CAPTURE(workers);
    LoaderOptions o;
    o.batch_size = 3;
    o.image_size = 4;
    o.max_text_len = 8;
    o.shuffle = false;
    o.workers = workers;
    o.epochs = 2;
    o.max_skip_messages = 3;
    Loader loader(source_from_specs(specs), f.tokenizer, o);
    std::vector<LoadedBatch> batches = drain(loader);
    REQUIRE(batches.size() == 4);  // 6 good examples an epoch: two full batches of 3
    CHECK(batches[0].indices == std::vector<int64_t>{0, 2, 3});
    CHECK(batches[0].skipped == std::vector<int64_t>{1});
    CHECK(batches[1].indices == std::vector<int64_t>{5, 6, 7});
    CHECK(batches[1].skipped == std::vector<int64_t>{4});
    CHECK(batches[2].indices == std::vector<int64_t>{0, 2, 3});
    CHECK(batches[1].batch.ids.dim(0) == 3);
    CHECK(loader.skipped() == 4);
    const std::vector<std::string> messages = loader.skip_messages();
    REQUIRE(messages.size() == 3);
    CHECK(contains(messages[0], "example 1"));
    CHECK(contains(messages[0], "absent.png"));
    CHECK(contains(messages[1], "example 4"));
    CHECK(contains(messages[1], "corrupt.png"));
  }
  // At the end of an epoch the last batch comes out shorter instead.
  specs[7].image = f.dir / "absent.png";
  LoaderOptions o;
  o.batch_size = 3;
  o.image_size = 4;
  o.max_text_len = 8;
  o.shuffle = false;
  Loader loader(source_from_specs(specs), f.tokenizer, o);
  std::vector<LoadedBatch> batches = drain(loader);
  REQUIRE(batches.size() == 2);
  CHECK(batches[1].indices == std::vector<int64_t>{5, 6});
  CHECK(batches[1].batch.image.dim(0) == 2);
}

TEST_CASE("loader: an epoch with nothing loadable is an error, not a hang") {
  Fixture f(4);
  std::vector<ExampleSpec> specs = f.specs();
  for (ExampleSpec& s : specs) s.image = f.dir / "absent.png";
  for (int workers : {0, 2}) {
    LoaderOptions o;
    o.batch_size = 2;
    o.image_size = 4;
    o.max_text_len = 8;
    o.epochs = 0;  // for ever
    o.workers = workers;
    Loader loader(source_from_specs(specs), f.tokenizer, o);
    const std::string e = format_error([&] { loader.next(); });
    CHECK(contains(e, "every example of epoch 0 was skipped"));
    CHECK(contains(e, "absent.png"));
    CHECK_THROWS_AS(loader.next(), st::FormatError);  // and again
  }
}

TEST_CASE("loader: the same batches for 0, 1 and 3 workers, with or without the cache") {
  Fixture f(13);
  std::vector<ExampleSpec> specs = f.specs();
  specs[5].image = f.dir / "absent.png";
  specs[9].image2 = f.dir / "absent.png";
  auto run = [&](int workers, size_t cache_bytes) {
    LoaderOptions o;
    o.batch_size = 4;
    o.image_size = 8;
    o.max_text_len = 7;
    o.seed = 42;
    o.epochs = 3;
    o.workers = workers;
    o.prefetch = 2;
    o.cache_bytes = cache_bytes;
    Loader loader(source_from_specs(specs, 0, /*two_images=*/true), f.tokenizer, o);
    std::vector<LoadedBatch> batches = drain(loader);
    CHECK(loader.skipped() == 6);
    return batches;
  };
  const std::vector<LoadedBatch> reference = run(0, 0);
  REQUIRE(reference.size() == 9);  // 11 good examples an epoch: 4 + 4 + 3
  for (auto [workers, cache] : std::vector<std::pair<int, size_t>>{{1, 0}, {3, 0}, {0, 1 << 20}, {3, 1 << 20}, {3, 300}}) {
    CAPTURE(workers);
    CAPTURE(cache);
    const std::vector<LoadedBatch> other = run(workers, cache);
    REQUIRE(other.size() == reference.size());
    for (size_t i = 0; i < other.size(); ++i) CHECK(same(other[i], reference[i]));
  }
}

TEST_CASE("loader: errors other than FormatError reach next() as the same exception, after the batches before") {
  Fixture f(9);
  const std::vector<ExampleSpec> specs = f.specs();
  for (int workers : {0, 1, 3}) {
    CAPTURE(workers);
    ExampleSource source = source_from_specs(specs);
    auto inner = source.get;
    source.get = [inner](int64_t i) {
      if (i == 5) throw st::ArgumentError("example 5 is broken on purpose");
      return inner(i);
    };
    LoaderOptions o;
    o.batch_size = 2;
    o.image_size = 4;
    o.max_text_len = 8;
    o.shuffle = false;
    o.workers = workers;
    Loader loader(source, f.tokenizer, o);
    CHECK(loader.next()->indices == std::vector<int64_t>{0, 1});
    CHECK(loader.next()->indices == std::vector<int64_t>{2, 3});
    std::string message;
    try {
      loader.next();
    } catch (const st::ArgumentError& e) {
      message = e.what();
    }
    CHECK(message == "example 5 is broken on purpose");
    CHECK_THROWS_AS(loader.next(), st::ArgumentError);
    CHECK(loader.skipped() == 0);
  }
  // A score outside the answer list is the caller's bug, not a bad file.
  std::vector<ExampleSpec> vqa = specs;
  vqa[0].scores = {{3, 1.0f}};
  LoaderOptions o;
  o.image_size = 4;
  o.max_text_len = 8;
  Loader loader(source_from_specs(vqa, 3), f.tokenizer, o);
  CHECK_THROWS_AS(loader.next(), st::ArgumentError);
}

TEST_CASE("loader: the destructor stops the workers mid-epoch without hanging") {
  Fixture f(6);
  std::vector<ExampleSpec> specs;
  for (int copy = 0; copy < 40; ++copy)
    for (const ExampleSpec& s : f.specs()) specs.push_back(s);
  const auto start = std::chrono::steady_clock::now();
  for (int workers : {1, 3}) {
    for (int taken : {0, 1, 3}) {
      LoaderOptions o;
      o.batch_size = 4;
      o.image_size = 32;
      o.max_text_len = 8;
      o.epochs = 0;
      o.workers = workers;
      o.prefetch = 2;
      Loader loader(source_from_specs(specs), f.tokenizer, o);
      for (int i = 0; i < taken; ++i) CHECK(loader.next()->indices.size() == 4);
    }  // ~Loader with workers decoding and a full queue
  }
  {
    // Destroyed while the assembler waits for a worker stuck in a slow example.
    ExampleSource source = source_from_specs(specs);
    auto inner = source.get;
    source.get = [inner](int64_t i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      return inner(i);
    };
    LoaderOptions o;
    o.batch_size = 8;
    o.image_size = 8;
    o.max_text_len = 8;
    o.workers = 2;
    Loader loader(source, f.tokenizer, o);
  }
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(20));
}

TEST_CASE("loader: bad options and empty sources are ArgumentErrors") {
  Fixture f(3);
  const ExampleSource source = source_from_specs(f.specs());
  auto make = [&](auto change) {
    LoaderOptions o;
    o.image_size = 4;
    o.max_text_len = 8;
    change(o);
    Loader loader(source, f.tokenizer, o);
  };
  CHECK_THROWS_AS(make([](LoaderOptions& o) { o.batch_size = 0; }), st::ArgumentError);
  CHECK_THROWS_AS(make([](LoaderOptions& o) { o.image_size = 0; }), st::ArgumentError);
  CHECK_THROWS_AS(make([](LoaderOptions& o) { o.max_text_len = 1; }), st::ArgumentError);
  CHECK_THROWS_AS(make([](LoaderOptions& o) { o.max_text_len = 0; }), st::ArgumentError);  // Fixed needs a length
  CHECK_THROWS_AS(make([](LoaderOptions& o) { o.workers = -1; }), st::ArgumentError);
  CHECK_THROWS_AS(make([](LoaderOptions& o) { o.prefetch = 0; }), st::ArgumentError);
  CHECK_THROWS_AS(make([](LoaderOptions& o) { o.epochs = -1; }), st::ArgumentError);
  CHECK_NOTHROW(make([](LoaderOptions& o) {
    o.padding = Padding::Longest;
    o.max_text_len = 0;
  }));
  LoaderOptions o;
  o.max_text_len = 8;
  CHECK_THROWS_AS(Loader(source_from_specs({}), f.tokenizer, o), st::ArgumentError);
  // drop_last with fewer examples than a batch would give nothing, for ever.
  o.batch_size = 4;
  o.drop_last = true;
  o.image_size = 4;
  Loader loader(source, f.tokenizer, o);
  CHECK_THROWS_AS(loader.next(), st::ArgumentError);
}
