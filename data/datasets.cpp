#include "data/datasets.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "engine/error.h"
#include "engine/files.h"

namespace st::data {

using json = nlohmann::json;

namespace {

// ---------------------------------------------------------------- reading JSON with clear errors
//
// `where` is the start of every message: "VQA questions 'q.json'",
// "NLVR2 'dev.json' line 7", "VQA annotations 'a.json': annotations[3]".

[[noreturn]] void fail(const std::string& where, const std::string& what) {
  throw FormatError(where + ": " + what);
}

std::string in_quotes(const std::string& s) { return "\"" + s + "\""; }

json parse_json(const std::string& text, const std::string& where) {
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    fail(where, std::string("invalid JSON (") + e.what() + ")");
  }
}

const json& require(const json& object, const char* key, const std::string& where) {
  if (!object.is_object()) fail(where, std::string("expected a JSON object, got ") + object.type_name());
  auto it = object.find(key);
  if (it == object.end()) fail(where, "missing key " + in_quotes(key));
  return *it;
}

std::string get_string(const json& value, const char* key, const std::string& where) {
  if (!value.is_string())
    fail(where, in_quotes(key) + " must be a string, got " + value.type_name());
  return value.get<std::string>();
}

std::string require_string(const json& object, const char* key, const std::string& where) {
  return get_string(require(object, key, where), key, where);
}

// An optional string member: "" when absent; a value of another type is an error.
std::string optional_string(const json& object, const char* key, const std::string& where) {
  auto it = object.find(key);
  return it == object.end() ? std::string() : get_string(*it, key, where);
}

int64_t require_int(const json& object, const char* key, const std::string& where) {
  const json& v = require(object, key, where);
  if (!v.is_number_integer()) fail(where, in_quotes(key) + " must be an integer, got " + v.type_name());
  if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max()))
    fail(where, in_quotes(key) + " is out of range");
  return v.get<int64_t>();
}

const json& require_array(const json& object, const char* key, const std::string& where) {
  const json& v = require(object, key, where);
  if (!v.is_array()) fail(where, in_quotes(key) + " must be an array, got " + v.type_name());
  return v;
}

// Calls f(object, where) for every non-blank line of a JSON Lines file.
template <typename F>
void for_each_jsonl_line(const std::string& path, const std::string& kind, F f) {
  const std::string text = read_file(path);
  size_t start = 0;
  int64_t line_number = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(start, end - start);
    start = end + 1;
    ++line_number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;  // blank (or the final newline)
    const std::string where = kind + " '" + path + "' line " + std::to_string(line_number);
    const json object = parse_json(line, where);
    if (!object.is_object()) fail(where, std::string("expected a JSON object, got ") + object.type_name());
    f(object, where);
  }
}

bool file_exists(const std::string& path) {
  std::error_code ec;
  return std::filesystem::is_regular_file(path, ec);
}

std::string join(const std::string& dir, const std::string& name) {
  return (std::filesystem::path(dir) / name).string();
}

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

std::string trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && is_space(s[b])) ++b;
  while (e > b && is_space(s[e - 1])) --e;
  return s.substr(b, e - b);
}

std::string ascii_lower(std::string s) {
  for (char& c : s)
    if (c >= 'A' && c <= 'Z') c = char(c - 'A' + 'a');
  return s;
}

}  // namespace

// ---------------------------------------------------------------- VQA v2

std::string normalize_answer(const std::string& answer) {
  std::string out;
  out.reserve(answer.size());
  bool pending_space = false;
  for (char c : answer) {
    if (is_space(c)) {
      pending_space = !out.empty();  // a space only between words
      continue;
    }
    if (pending_space) out += ' ';
    pending_space = false;
    out += (c >= 'A' && c <= 'Z') ? char(c - 'A' + 'a') : c;
  }
  return out;
}

std::string coco_image_path(const std::string& image_dir, const std::string& data_subtype, int64_t image_id) {
  char id[32];
  std::snprintf(id, sizeof id, "%012" PRId64, image_id);
  const std::string stem = join(image_dir, "COCO_" + data_subtype + "_" + id);
  if (!file_exists(stem + ".jpg") && file_exists(stem + ".png")) return stem + ".png";
  return stem + ".jpg";
}

namespace {

// The annotators' answers counted: most frequent first, ties by string.
std::vector<std::pair<std::string, int>> count_answers(const json& answers, const std::string& where) {
  std::map<std::string, int> counts;
  for (size_t k = 0; k < answers.size(); ++k)
    ++counts[normalize_answer(require_string(answers[k], "answer", where + ": answers[" + std::to_string(k) + "]"))];
  std::vector<std::pair<std::string, int>> sorted(counts.begin(), counts.end());  // by string
  std::stable_sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
  return sorted;
}

}  // namespace

VqaSet load_vqa(const std::string& questions_json, const std::string& annotations_json,
                const std::string& image_dir) {
  VqaSet set;
  const std::string qwhere = "VQA questions '" + questions_json + "'";
  const json questions_file = parse_json(read_file(questions_json), qwhere);
  set.data_subtype = require_string(questions_file, "data_subtype", qwhere);
  const json& questions = require_array(questions_file, "questions", qwhere);

  std::unordered_map<int64_t, size_t> by_question_id;  // question_id -> index in set.examples
  set.examples.reserve(questions.size());
  for (size_t i = 0; i < questions.size(); ++i) {
    const std::string where = qwhere + ": questions[" + std::to_string(i) + "]";
    VqaExample ex;
    ex.question_id = require_int(questions[i], "question_id", where);
    ex.image_id = require_int(questions[i], "image_id", where);
    ex.question = require_string(questions[i], "question", where);
    if (ex.image_id < 0) fail(where, "negative image_id " + std::to_string(ex.image_id));
    if (!by_question_id.emplace(ex.question_id, i).second)
      fail(qwhere, "question_id " + std::to_string(ex.question_id) + " appears twice");
    set.examples.push_back(std::move(ex));
  }

  if (!annotations_json.empty()) {
    set.has_answers = true;
    const std::string awhere = "VQA annotations '" + annotations_json + "'";
    const json annotations_file = parse_json(read_file(annotations_json), awhere);
    const json& annotations = require_array(annotations_file, "annotations", awhere);
    std::vector<bool> annotated(set.examples.size(), false);
    for (size_t j = 0; j < annotations.size(); ++j) {
      const json& a = annotations[j];
      const std::string where = awhere + ": annotations[" + std::to_string(j) + "]";
      const int64_t question_id = require_int(a, "question_id", where);
      auto it = by_question_id.find(question_id);
      if (it == by_question_id.end())
        fail(where, "question_id " + std::to_string(question_id) + " has no question in '" + questions_json + "'");
      if (annotated[it->second]) fail(where, "question_id " + std::to_string(question_id) + " is annotated twice");
      annotated[it->second] = true;
      VqaExample& ex = set.examples[it->second];
      const int64_t image_id = require_int(a, "image_id", where);
      if (image_id != ex.image_id)
        fail(where, "question_id " + std::to_string(question_id) + " has image_id " + std::to_string(image_id) +
                        " here but " + std::to_string(ex.image_id) + " in '" + questions_json + "'");
      ex.question_type = optional_string(a, "question_type", where);
      ex.answer_type = optional_string(a, "answer_type", where);
      ex.multiple_choice_answer = normalize_answer(require_string(a, "multiple_choice_answer", where));
      ex.answer_counts = count_answers(require_array(a, "answers", where), where);
    }
    for (size_t i = 0; i < set.examples.size(); ++i)
      if (!annotated[i])
        fail(awhere, "question_id " + std::to_string(set.examples[i].question_id) + " (from '" + questions_json +
                         "') has no annotation");
  }

  // One stat per image, not per question (about five questions share an image).
  std::unordered_map<int64_t, std::pair<std::string, bool>> images;  // image_id -> (path, exists)
  for (VqaExample& ex : set.examples) {
    auto it = images.find(ex.image_id);
    if (it == images.end()) {
      std::string path = coco_image_path(image_dir, set.data_subtype, ex.image_id);
      const bool exists = file_exists(path);
      it = images.emplace(ex.image_id, std::make_pair(std::move(path), exists)).first;
    }
    ex.image_path = it->second.first;
    if (!it->second.second) ++set.missing_images;
  }
  return set;
}

float vqa_soft_score(int count) { return std::min(1.0f, float(count) / 3.0f); }

float vqa_accuracy(const VqaExample& example, const std::string& predicted) {
  const std::string answer = normalize_answer(predicted);
  for (const auto& [a, count] : example.answer_counts)
    if (a == answer) return vqa_soft_score(count);
  return 0.0f;
}

AnswerVocab::AnswerVocab(std::vector<std::string> answers) : answers_(std::move(answers)) {
  for (size_t i = 0; i < answers_.size(); ++i)
    if (!classes_.emplace(answers_[i], int64_t(i)).second)
      throw ArgumentError("AnswerVocab: the answer " + in_quotes(answers_[i]) + " appears twice");
}

AnswerVocab AnswerVocab::build(const std::vector<VqaExample>& examples, int min_count, int64_t max_answers) {
  if (min_count < 1) throw ArgumentError("AnswerVocab::build: min_count must be at least 1");
  if (max_answers < 0) throw ArgumentError("AnswerVocab::build: max_answers must be >= 0 (0: no cap)");
  std::unordered_map<std::string, int64_t> counts;
  for (const VqaExample& ex : examples)
    if (!ex.multiple_choice_answer.empty()) ++counts[ex.multiple_choice_answer];
  std::vector<std::pair<std::string, int64_t>> kept;
  for (const auto& [answer, count] : counts)
    if (count >= min_count) kept.emplace_back(answer, count);
  std::sort(kept.begin(), kept.end(), [](const auto& a, const auto& b) {
    return a.second != b.second ? a.second > b.second : a.first < b.first;
  });
  if (max_answers > 0 && int64_t(kept.size()) > max_answers) kept.resize(size_t(max_answers));
  std::vector<std::string> answers;
  answers.reserve(kept.size());
  for (auto& [answer, count] : kept) answers.push_back(std::move(answer));
  return AnswerVocab(std::move(answers));
}

void AnswerVocab::save(const std::string& path) const {
  std::string text;
  try {
    text = json(answers_).dump(1) + "\n";
  } catch (const json::exception& e) {  // an answer that is not valid UTF-8
    throw ArgumentError("AnswerVocab::save '" + path + "': " + e.what());
  }
  write_file_atomically(path, text);
}

AnswerVocab AnswerVocab::load(const std::string& path) {
  const std::string where = "answer list '" + path + "'";
  const json list = parse_json(read_file(path), where);
  if (!list.is_array()) fail(where, std::string("expected a JSON list of strings, got ") + list.type_name());
  std::vector<std::string> answers;
  answers.reserve(list.size());
  for (size_t i = 0; i < list.size(); ++i) {
    if (!list[i].is_string())
      fail(where, "entry " + std::to_string(i) + " must be a string, got " + list[i].type_name());
    answers.push_back(list[i].get<std::string>());
  }
  try {
    return AnswerVocab(std::move(answers));
  } catch (const ArgumentError& e) {
    fail(where, e.what());
  }
}

const std::string& AnswerVocab::answer(int64_t index) const {
  if (index < 0 || index >= size())
    throw ArgumentError("AnswerVocab::answer: index " + std::to_string(index) + " outside [0, " +
                        std::to_string(size()) + ")");
  return answers_[size_t(index)];
}

int64_t AnswerVocab::index(const std::string& answer) const {
  auto it = classes_.find(answer);
  return it == classes_.end() ? -1 : it->second;
}

std::vector<std::pair<int32_t, float>> AnswerVocab::sparse_soft_scores(const VqaExample& example) const {
  std::vector<std::pair<int32_t, float>> scores;
  for (const auto& [answer, count] : example.answer_counts) {
    const int64_t c = index(answer);
    if (c >= 0) scores.emplace_back(int32_t(c), vqa_soft_score(count));
  }
  std::sort(scores.begin(), scores.end());
  return scores;
}

std::vector<float> AnswerVocab::soft_scores(const VqaExample& example) const {
  std::vector<float> row(size_t(size()), 0.0f);  // (answers)
  for (const auto& [c, score] : sparse_soft_scores(example)) row[size_t(c)] = score;
  return row;
}

// ---------------------------------------------------------------- NLVR2

Nlvr2Set load_nlvr2(const std::string& jsonl, const std::string& image_dir) {
  Nlvr2Set set;
  for_each_jsonl_line(jsonl, "NLVR2", [&](const json& obj, const std::string& where) {
    Nlvr2Example ex;
    ex.identifier = require_string(obj, "identifier", where);
    ex.sentence = require_string(obj, "sentence", where);

    const json& label = require(obj, "label", where);
    if (label.is_boolean()) {
      ex.label = label.get<bool>() ? 1 : 0;
    } else if (label.is_string() && ascii_lower(label.get<std::string>()) == "true") {
      ex.label = 1;
    } else if (label.is_string() && ascii_lower(label.get<std::string>()) == "false") {
      ex.label = 0;
    } else {
      fail(where, "\"label\" must be \"True\" or \"False\", got " + label.dump());
    }

    std::string folder = image_dir;
    if (auto it = obj.find("directory"); it != obj.end()) {
      if (it->is_number_integer()) {
        folder = join(image_dir, std::to_string(it->get<int64_t>()));
      } else if (it->is_string() && !it->get<std::string>().empty()) {
        folder = join(image_dir, it->get<std::string>());
      } else {
        fail(where, "\"directory\" must be a number or a non-empty string, got " + it->dump());
      }
    }

    // "dev-850-0-0" -> pair "dev-850-0": the last "-N" numbers the sentence, not the images.
    const size_t dash = ex.identifier.rfind('-');
    if (dash == std::string::npos || dash == 0 || dash + 1 == ex.identifier.size())
      fail(where, "identifier " + in_quotes(ex.identifier) + " does not end in \"-N\"");
    const std::string pair = ex.identifier.substr(0, dash);
    ex.image_path = join(folder, pair + "-img0.png");
    ex.image2_path = join(folder, pair + "-img1.png");
    if (!file_exists(ex.image_path) || !file_exists(ex.image2_path)) ++set.missing_images;
    set.examples.push_back(std::move(ex));
  });
  return set;
}

// ---------------------------------------------------------------- SNLI-VE

std::optional<int32_t> snli_ve_label(const std::string& gold_label) {
  if (gold_label == "contradiction") return kContradiction;
  if (gold_label == "neutral") return kNeutral;
  if (gold_label == "entailment") return kEntailment;
  return std::nullopt;
}

const char* snli_ve_label_name(int32_t label) {
  switch (label) {
    case kContradiction: return "contradiction";
    case kNeutral: return "neutral";
    case kEntailment: return "entailment";
  }
  throw ArgumentError("snli_ve_label_name: label " + std::to_string(label) + " is not 0, 1 or 2");
}

SnliVeSet load_snli_ve(const std::string& jsonl, const std::string& image_dir) {
  SnliVeSet set;
  std::unordered_map<std::string, bool> exists;  // image path -> exists (many hypotheses share an image)
  for_each_jsonl_line(jsonl, "SNLI-VE", [&](const json& obj, const std::string& where) {
    SnliVeExample ex;
    const char* id_key = nullptr;
    for (const char* key : {"Flikr30kID", "Flickr30kID", "Flickr30K_ID"})
      if (obj.contains(key)) {
        id_key = key;
        break;
      }
    if (!id_key) fail(where, "missing key \"Flikr30kID\" (or \"Flickr30kID\", \"Flickr30K_ID\")");
    const json& id = obj[id_key];
    if (id.is_number_integer()) {
      ex.image_id = std::to_string(id.get<int64_t>());
    } else if (id.is_string() && !id.get<std::string>().empty()) {
      ex.image_id = id.get<std::string>();
    } else {
      fail(where, in_quotes(id_key) + " must be a non-empty string or an integer, got " + id.dump());
    }
    ex.premise = optional_string(obj, "sentence1", where);
    ex.hypothesis = trim(require_string(obj, "sentence2", where));
    const std::string gold = require_string(obj, "gold_label", where);
    const std::optional<int32_t> label = snli_ve_label(gold);
    if (!label) fail(where, "\"gold_label\" must be contradiction, neutral or entailment, got " + in_quotes(gold));
    ex.label = *label;

    const bool has_extension = ex.image_id.size() > 4 && ex.image_id.compare(ex.image_id.size() - 4, 4, ".jpg") == 0;
    ex.image_path = join(image_dir, has_extension ? ex.image_id : ex.image_id + ".jpg");
    auto it = exists.find(ex.image_path);
    if (it == exists.end()) it = exists.emplace(ex.image_path, file_exists(ex.image_path)).first;
    if (!it->second) ++set.missing_images;
    set.examples.push_back(std::move(ex));
  });
  return set;
}

}  // namespace st::data
