// What train, eval, infer, viz and bench share: reading the model, its
// tokenizer and a data set from the command line, and checking that they fit
// each other before any work starts.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "apps/cli.h"
#include "data/datasets.h"
#include "data/loader.h"
#include "data/tokenizer.h"
#include "layers/meter.h"
#include "pruning/cost.h"

namespace st::app {

Task parse_task(const std::string& name, const cli::Args& args);  // vqa, nlvr2, snli
const char* task_name(Task task);

// --vocab FILE [--merges FILE]: vocab.txt is BERT's WordPiece; vocab.json with
// merges.txt is RoBERTa's byte-level BPE (METER's own text encoder).
void add_tokenizer_options(cli::Args& args);
std::unique_ptr<data::Tokenizer> load_tokenizer(const cli::Args& args);

// --task, --data DIR --split NAME, or the files themselves:
//   vqa:   DIR/{split}_questions.json, DIR/{split}_annotations.json (optional), DIR/images/
//   nlvr2: DIR/{split}.json, DIR/images/{split}/
//   snli:  DIR/snli_ve_{split}.jsonl, DIR/images/
//   --questions/--annotations/--images (VQA) or --jsonl/--images (NLVR2, SNLI-VE) instead of --data.
void add_data_options(cli::Args& args, const std::string& default_split);

// One split of a data set, loaded (images are decoded later, by the loader).
struct TaskData {
  Task task = Task::VQA;
  std::string where;  // for messages: the files it came from
  data::VqaSet vqa;
  data::Nlvr2Set nlvr2;
  data::SnliVeSet snli;
  int64_t size() const;
  int64_t missing_images() const;
  std::string text(int64_t i) const;          // the question, sentence or hypothesis
  data::ExampleSource source(const data::AnswerVocab& answers) const;
  // The score of predicting class `predicted` for example i: VQA accuracy
  // (min(1, annotators / 3)), or 1/0 for a label.
  double score(int64_t i, int64_t predicted, const data::AnswerVocab& answers) const;
  std::string category(int64_t i) const;      // VQA's question_type; "" otherwise
};
TaskData load_task_data(const cli::Args& args);
// Another split of --data DIR (the same task); needs --data.
TaskData load_task_data(const cli::Args& args, const std::string& split);

// The model: --model FILE (weights with their config) and --answers FILE.
void add_model_options(cli::Args& args);
std::unique_ptr<Meter> load_model(const cli::Args& args);

// The VQA answer list of a model: --answers FILE, or answers.json next to the model.
data::AnswerVocab load_answers(const cli::Args& args, const MeterConfig& config);

// Every way the tokenizer, the answers and the config can disagree, as one
// ArgumentError: pad id, vocabulary size, text length, answer count.
void check_fits(const MeterConfig& config, const data::Tokenizer& tokenizer, int max_text_len, Task task,
                const data::AnswerVocab* answers);

// The loader options a model reads: its image size, METER's text length.
data::LoaderOptions loader_options(const MeterConfig& config, const cli::Args& args);

}  // namespace st::app
