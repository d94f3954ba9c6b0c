#include "apps/task_data.h"

#include <filesystem>

#include "engine/error.h"
#include "weights/format.h"

namespace fs = std::filesystem;

namespace st::app {

Task parse_task(const std::string& name, const cli::Args& args) {
  if (name == "vqa") return Task::VQA;
  if (name == "nlvr2") return Task::NLVR2;
  if (name == "snli") return Task::SNLI;
  args.fail("--task must be vqa, nlvr2 or snli, not '" + name + "'");
}

const char* task_name(Task task) {
  switch (task) {
    case Task::VQA: return "vqa";
    case Task::NLVR2: return "nlvr2";
    case Task::SNLI: return "snli";
    default: return "other";
  }
}

void add_tokenizer_options(cli::Args& args) {
  args.option("vocab", "FILE", "the tokenizer: BERT's vocab.txt (WordPiece) or RoBERTa's vocab.json (BPE)").required();
  args.option("merges", "FILE", "RoBERTa's merges.txt, with a vocab.json");
}

std::unique_ptr<data::Tokenizer> load_tokenizer(const cli::Args& args) {
  const std::string vocab = args.text("vocab");
  if (fs::path(vocab).extension() == ".json") {
    if (!args.has("merges")) args.fail("a BPE vocabulary (" + vocab + ") needs --merges merges.txt");
    return std::make_unique<data::BpeTokenizer>(vocab, args.text("merges"));
  }
  if (args.has("merges")) args.fail("--merges goes with a BPE vocab.json, not with " + vocab);
  return std::make_unique<data::WordPieceTokenizer>(vocab);
}

void add_data_options(cli::Args& args, const std::string& default_split) {
  args.option("task", "NAME", "vqa, nlvr2 or snli", "vqa");
  args.option("data", "DIR", "a data set directory in the usual layout (see below)");
  args.option("split", "NAME", "which split of --data", default_split);
  args.option("questions", "FILE", "VQA v2 questions JSON (instead of --data)");
  args.option("annotations", "FILE", "VQA v2 annotations JSON (instead of --data)");
  args.option("jsonl", "FILE", "NLVR2 or SNLI-VE JSON Lines (instead of --data)");
  args.option("images", "DIR", "the image folder (instead of --data)");
  args.option("batch", "N", "examples per batch", "32");
  args.option("max-text-len", "N", "texts are cut to N tokens, specials included (a batch is as wide as its longest)", "32");
  args.option("workers", "N", "image decoding threads", "1");
  args.epilog(
      "data layout of --data DIR --split S:\n"
      "  vqa    DIR/S_questions.json, DIR/S_annotations.json, DIR/images/COCO_<subtype>_<12-digit id>.jpg|png\n"
      "  nlvr2  DIR/S.json (JSON Lines), DIR/images/S/<identifier less its last -N>-img0.png, -img1.png\n"
      "  snli   DIR/snli_ve_S.jsonl, DIR/images/<Flickr30k id>.jpg\n"
      "`smarttrim data fashion --out DIR` writes DIR/vqa and DIR/nlvr2 in these layouts.");
}

TaskData load_task_data(const cli::Args& args) { return load_task_data(args, args.text("split")); }

TaskData load_task_data(const cli::Args& args, const std::string& split) {
  TaskData d;
  d.task = parse_task(args.text("task"), args);
  const bool from_dir = args.has("data");
  const std::string dir = args.text_or("data", "");
  auto in_dir = [&](const std::string& name) { return (fs::path(dir) / name).string(); };
  auto need = [&](const char* option) {
    if (!args.has(option)) args.fail(std::string("give --data DIR, or --") + option);
    return args.text(option);
  };
  if (d.task == Task::VQA) {
    const std::string questions = from_dir ? in_dir(split + "_questions.json") : need("questions");
    std::string annotations = from_dir ? in_dir(split + "_annotations.json") : args.text_or("annotations", "");
    if (from_dir && !fs::exists(annotations)) annotations = "";  // a test split: questions only
    d.where = questions;
    d.vqa = data::load_vqa(questions, annotations, from_dir ? in_dir("images") : need("images"));
  } else if (d.task == Task::NLVR2) {
    d.where = from_dir ? in_dir(split + ".json") : need("jsonl");
    d.nlvr2 = data::load_nlvr2(d.where, from_dir ? in_dir("images/" + split) : need("images"));
  } else {
    d.where = from_dir ? in_dir("snli_ve_" + split + ".jsonl") : need("jsonl");
    d.snli = data::load_snli_ve(d.where, from_dir ? in_dir("images") : need("images"));
  }
  if (d.size() == 0) throw FormatError(d.where + ": no examples");
  return d;
}

int64_t TaskData::size() const {
  switch (task) {
    case Task::VQA: return int64_t(vqa.examples.size());
    case Task::NLVR2: return int64_t(nlvr2.examples.size());
    default: return int64_t(snli.examples.size());
  }
}

int64_t TaskData::missing_images() const {
  return task == Task::VQA ? vqa.missing_images : task == Task::NLVR2 ? nlvr2.missing_images : snli.missing_images;
}

std::string TaskData::text(int64_t i) const {
  switch (task) {
    case Task::VQA: return vqa.examples[size_t(i)].question;
    case Task::NLVR2: return nlvr2.examples[size_t(i)].sentence;
    default: return snli.examples[size_t(i)].hypothesis;
  }
}

data::ExampleSource TaskData::source(const data::AnswerVocab& answers) const {
  switch (task) {
    case Task::VQA: return data::vqa_source(vqa, answers);
    case Task::NLVR2: return data::nlvr2_source(nlvr2);
    default: return data::snli_ve_source(snli);
  }
}

double TaskData::score(int64_t i, int64_t predicted, const data::AnswerVocab& answers) const {
  switch (task) {
    case Task::VQA: return data::vqa_accuracy(vqa.examples[size_t(i)], answers.answer(predicted));
    case Task::NLVR2: return nlvr2.examples[size_t(i)].label == predicted ? 1.0 : 0.0;
    default: return snli.examples[size_t(i)].label == predicted ? 1.0 : 0.0;
  }
}

std::string TaskData::category(int64_t i) const {
  return task == Task::VQA ? vqa.examples[size_t(i)].question_type : "";
}

void add_model_options(cli::Args& args) {
  args.option("model", "FILE", "model weights (written by `smarttrim train` or weights/convert_meter.py)").required();
  args.option("answers", "FILE", "the VQA answer list; default: answers.json next to the model");
}

std::unique_ptr<Meter> load_model(const cli::Args& args) {
  return Meter::from_file(weights::WeightsFile(args.text("model")));
}

data::AnswerVocab load_answers(const cli::Args& args, const MeterConfig& config) {
  const std::string path = args.has("answers")
                               ? args.text("answers")
                               : (fs::path(args.text("model")).parent_path() / "answers.json").string();
  if (!fs::exists(path))
    throw ArgumentError("no answer list: give --answers FILE (looked for " + path + ")");
  data::AnswerVocab answers = data::AnswerVocab::load(path);
  if (answers.size() != config.vqa_answers)
    throw ArgumentError("the answer list " + path + " has " + std::to_string(answers.size()) +
                        " answers, the model's VQA head " + std::to_string(config.vqa_answers));
  return answers;
}

void check_fits(const MeterConfig& c, const data::Tokenizer& tokenizer, int max_text_len, Task task,
                const data::AnswerVocab* answers) {
  std::vector<std::string> problems;
  if (tokenizer.special().pad != c.pad_token_id)
    problems.push_back("the tokenizer pads with id " + std::to_string(tokenizer.special().pad) +
                       ", the model with pad_token_id " + std::to_string(c.pad_token_id));
  if (tokenizer.vocab_size() > c.vocab_size)
    problems.push_back("the tokenizer has " + std::to_string(tokenizer.vocab_size()) + " tokens, the model's vocab_size is " +
                       std::to_string(c.vocab_size));
  if (max_text_len < 2 || max_text_len + c.pad_token_id + 1 > c.max_text_positions)
    problems.push_back("a text length of " + std::to_string(max_text_len) + " does not fit max_text_positions " +
                       std::to_string(c.max_text_positions) + " (at most " +
                       std::to_string(c.max_text_positions - c.pad_token_id - 1) + ")");
  if (task == Task::VQA && answers && answers->size() != c.vqa_answers)
    problems.push_back("the data has " + std::to_string(answers->size()) + " answers, the model's VQA head " +
                       std::to_string(c.vqa_answers));
  if (task == Task::NLVR2 && !c.nlvr2) problems.push_back("the model has no NLVR2 head");
  if (task == Task::SNLI && !c.snli) problems.push_back("the model has no SNLI-VE head");
  if (task == Task::VQA && c.vqa_answers == 0) problems.push_back("the model has no VQA head");
  if (problems.empty()) return;
  std::string msg = "the model does not fit its inputs: ";
  for (size_t i = 0; i < problems.size(); i++) msg += (i ? "; " : "") + problems[i];
  throw ArgumentError(msg);
}

data::LoaderOptions loader_options(const MeterConfig& config, const cli::Args& args) {
  data::LoaderOptions o;
  o.batch_size = int(args.integer("batch"));
  o.max_text_len = int(args.integer("max-text-len"));
  // A batch is as wide as its longest text: short questions (the demo's are
  // about 8 tokens) would otherwise run the text stream over 32 positions.
  o.padding = data::Padding::Longest;
  o.workers = int(args.integer("workers"));
  o.image_size = config.vit_image_size;
  if (o.batch_size < 1) args.fail("--batch must be at least 1");
  if (o.workers < 0) args.fail("--workers must be 0 or more");
  return o;
}

}  // namespace st::app
