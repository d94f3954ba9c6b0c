// The fine-tuning data sets of METER and SmartTrim, read from the files their
// authors publish: VQA v2, NLVR2 and SNLI-VE. Loading reads only the text
// files and checks that each image file exists (cheap); no image is decoded
// here. Decoding happens per batch in data/loader.h, which skips an example
// whose image is missing or broken instead of failing.
//
// Every malformed input (invalid JSON, a missing key, a value of the wrong
// type, an unknown label, ids that do not join) is a st::FormatError whose
// message names the file and, for JSON Lines, the line (counted from 1).
//
// VQA v2 (https://visualqa.org), three pieces:
//   questions JSON   {"data_subtype": "train2014", "questions": [
//                      {"image_id": 458752, "question": "What is this photo taken looking through?",
//                       "question_id": 458752000}, ...]}
//   annotations JSON {"annotations": [{"question_id": 458752000, "image_id": 458752,
//                      "question_type": "what is this", "answer_type": "other",
//                      "multiple_choice_answer": "net",
//                      "answers": [{"answer": "net", "answer_confidence": "maybe", "answer_id": 1}, ...x10]}]}
//                    (absent for the test splits)
//   images           <image_dir>/COCO_train2014_000000458752.jpg  (COCO_<data_subtype>_<12-digit id>);
//                    a .png with the same stem is accepted too (the demo data set writes PNGs)
//
// NLVR2 (https://lil.nlp.cornell.edu/nlvr), JSON Lines, one example a line:
//   {"identifier": "dev-850-0-0", "sentence": "There are two dogs.", "label": "True"}
//   images <image_dir>/dev-850-0-img0.png and -img1.png (the identifier less its last "-N");
//   the train split adds "directory": 61 and keeps the pair in <image_dir>/61/.
//
// SNLI-VE (https://github.com/necla-ml/SNLI-VE), JSON Lines:
//   {"Flikr30kID": "2248275918.jpg", "sentence1": "...", "sentence2": "Two men are outside.",
//    "gold_label": "entailment", ...}
//   image <image_dir>/2248275918.jpg. The hypothesis is sentence2, the premise is the image.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace st::data {

// ---------------------------------------------------------------- VQA v2

// Light normalisation of an answer: ASCII letters lower-cased, every run of
// whitespace (space, tab, CR, LF) made one space, and leading and trailing
// whitespace removed ("  Red\tCar " -> "red car"). Nothing else: the
// official VQA evaluation also strips punctuation, maps number words to
// digits ("two" -> "2"), drops articles and fixes contractions ("dont" ->
// "don't"); ViLT and METER apply that before building their answer list.
// Accuracies computed here are therefore close to, not equal to, the
// official ones when answers differ in those ways.
std::string normalize_answer(const std::string& answer);

struct VqaExample {
  int64_t question_id = 0;
  int64_t image_id = 0;
  std::string question;
  std::string image_path;  // the .jpg path, or the .png one when only that exists
  // From the annotations (empty when none were given):
  std::string question_type;
  std::string answer_type;
  std::string multiple_choice_answer;  // normalize_answer()'d
  // The annotators' answers, normalize_answer()'d and counted: most frequent
  // first, ties by string. 10 annotators in the real files.
  std::vector<std::pair<std::string, int>> answer_counts;
};

struct VqaSet {
  std::string data_subtype;  // "train2014", "val2014", "test2015"
  std::vector<VqaExample> examples;  // in the questions file's order
  bool has_answers = false;          // annotations were given
  int64_t missing_images = 0;        // examples whose image file does not exist
};

// The COCO image of image_id: <image_dir>/COCO_<subtype>_<12-digit id>.jpg,
// or the .png of the same stem when the .jpg does not exist and it does.
std::string coco_image_path(const std::string& image_dir, const std::string& data_subtype,
                            int64_t image_id);

// Questions joined to their annotations by question_id. annotations_json
// may be "" (test splits: no answers). A question_id given twice, an
// annotation with no question, a question with no annotation, or an
// annotation whose image_id differs from its question's, is a FormatError
// naming the file and the id.
VqaSet load_vqa(const std::string& questions_json, const std::string& annotations_json,
                const std::string& image_dir);

// VQA's soft score of an answer that `count` annotators gave: min(1, count / 3).
// (ViLT's and METER's training targets step 0.3 per annotator instead:
// 0, 0.3, 0.6, 0.9, then 1 from four on.)
float vqa_soft_score(int count);

// The accuracy of one predicted answer (normalize_answer()'d first):
// min(1, annotators who gave it / 3). The official metric averages this
// over the ten leave-one-annotator-out subsets of nine, which differs when
// exactly 1..3 annotators agree (3 of 10: 0.9 there, 1.0 here).
float vqa_accuracy(const VqaExample& example, const std::string& predicted);

// The answers METER's VQA head classifies over, one class per answer.
class AnswerVocab {
 public:
  AnswerVocab() = default;
  // The answers in class order; a duplicate is an ArgumentError.
  explicit AnswerVocab(std::vector<std::string> answers);

  // From training examples: every multiple_choice_answer seen at least
  // min_count times (the empty answer never), most frequent first, ties by
  // string, at most max_answers of them (0: no cap). This is the rule of
  // ViLT's and METER's write_vqa.py (min_count 9 over train + val), except
  // that they keep first-seen order: to load their checkpoints' VQA head,
  // load their answer list with load() instead.
  static AnswerVocab build(const std::vector<VqaExample>& examples, int min_count = 1,
                           int64_t max_answers = 0);

  // A JSON list of strings, ["yes", "no", "2", ...]; written atomically.
  // load() throws FormatError naming the file for anything else (or duplicates).
  void save(const std::string& path) const;
  static AnswerVocab load(const std::string& path);

  int64_t size() const { return int64_t(answers_.size()); }
  const std::vector<std::string>& answers() const { return answers_; }
  const std::string& answer(int64_t index) const;  // ArgumentError outside [0, size)
  // The class of an answer as spelled (callers normalise); -1 when absent.
  int64_t index(const std::string& answer) const;

  // Soft targets of one example, (size()): vqa_soft_score(count) for each
  // answer of the vocabulary the annotators gave, 0 elsewhere.
  std::vector<float> soft_scores(const VqaExample& example) const;
  // The same, sparse: (class, score) for the nonzero entries, by class.
  std::vector<std::pair<int32_t, float>> sparse_soft_scores(const VqaExample& example) const;

 private:
  std::vector<std::string> answers_;
  std::unordered_map<std::string, int64_t> classes_;  // answer -> its class
};

// ---------------------------------------------------------------- NLVR2

struct Nlvr2Example {
  std::string identifier;   // "dev-850-0-0"
  std::string sentence;
  std::string image_path;   // ".../dev-850-0-img0.png" (left)
  std::string image2_path;  // ".../dev-850-0-img1.png" (right)
  int32_t label = 0;        // "True" -> 1, "False" -> 0
};

struct Nlvr2Set {
  std::vector<Nlvr2Example> examples;  // in file order
  int64_t missing_images = 0;          // examples with at least one image file missing
};

// label: the string "True" or "False" (any case) or a JSON boolean;
// "directory": a number or a string.
Nlvr2Set load_nlvr2(const std::string& jsonl, const std::string& image_dir);

// ---------------------------------------------------------------- SNLI-VE

// METER's class order for SNLI-VE: label2id in zdou0830/METER,
// meter/utils/write_snli.py ({'contradiction': 0, 'neutral': 1, 'entailment': 2}).
enum SnliVeLabel : int32_t { kContradiction = 0, kNeutral = 1, kEntailment = 2 };
std::optional<int32_t> snli_ve_label(const std::string& gold_label);  // nullopt for anything else
const char* snli_ve_label_name(int32_t label);                        // ArgumentError outside 0..2

struct SnliVeExample {
  std::string image_id;    // as written in the file, "2248275918.jpg" or "2248275918"
  std::string premise;     // sentence1 (the image's caption) when present; not the model's input
  std::string hypothesis;  // sentence2, trimmed of surrounding whitespace (METER strips it)
  std::string image_path;  // <image_dir>/<id>.jpg
  int32_t label = 0;       // SnliVeLabel
};

struct SnliVeSet {
  std::vector<SnliVeExample> examples;  // in file order
  int64_t missing_images = 0;
};

// The image id key is "Flikr30kID" (sic, as the real files spell it),
// "Flickr30kID" or "Flickr30K_ID" (METER's), a string or an integer.
SnliVeSet load_snli_ve(const std::string& jsonl, const std::string& image_dir);

}  // namespace st::data
