// Batches for training and evaluation, decoded in the background.
//
// A data set reaches the loader as an ExampleSource: how many examples it
// has and a function that describes example i cheaply (its text, its image
// paths and its target). The loader does the expensive part on worker
// threads: tokenizing, decoding each image and preprocessing it the way
// METER does (st::clip_preprocess), then stacks rows into a TrainBatch:
//
//   ids     i32 (B, T)        the tokenizer's ids, padded with its pad id
//   mask    f32 (B, T)        1 on real tokens
//   image   f32 (B, 3, S, S)
//   image2  f32 (B, 3, S, S)  NLVR2's right image; undefined otherwise
//   targets f32 (B, A)        VQA soft scores over the answer list, or
//           i32 (B)           NLVR2 / SNLI-VE class labels
//
//   Loader loader(vqa_source(set, vocab), tokenizer, {.batch_size = 32, .image_size = 384});
//   while (auto b = loader.next()) trainer.step(b->batch);   // b->indices: the examples
//
// How it runs. Each epoch visits the examples in a fixed order: 0..N-1, or
// a permutation drawn from (seed, epoch) when shuffling. Workers decode the
// examples of that order a little ahead of the consumer (one batch plus one
// example per worker), results are put back in order, and one assembler
// thread cuts them into batches and stacks them; up to `prefetch` stacked
// batches wait for next(). Because batches are cut in order, the sequence of
// batches (indices and contents) is the same for any number of workers, 0
// included (0: everything happens inside next(), on the caller's thread).
//
// Skipping. An example whose description or image throws st::FormatError (a
// missing or undecodable image: st::load_image's errors) is skipped: the
// batch takes the next example instead, and only the last batch of an epoch
// may come out shorter. skipped() counts them and skip_messages() keeps the
// first few messages. Any other exception (ArgumentError, std::bad_alloc,
// ...) is fatal: next() rethrows that same exception, after the batches
// before it, and again on every later call. An epoch in which every example
// is skipped is a FormatError (rather than a loop for ever).
//
// Threads. Decoding threads run their OpenMP regions (the resize) on one
// thread each, so W workers use about W cores. The destructor stops and
// joins every thread, mid-epoch or not; it waits at most for the images
// being decoded at that moment.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "data/datasets.h"
#include "data/tokenizer.h"
#include "pruning/train.h"

namespace st::data {

// What the loader needs to know about one example; cheap to make.
struct ExampleSpec {
  std::string text;
  std::string image;   // path of the image file
  std::string image2;  // the second image's path (NLVR2); unused when the source has one image
  int32_t label = 0;   // the class (NLVR2, SNLI-VE); unused for soft targets
  std::vector<std::pair<int32_t, float>> scores;  // VQA: (answer class, soft score), the nonzero ones
};

struct ExampleSource {
  int64_t size = 0;                          // N examples, numbered 0..N-1
  std::function<ExampleSpec(int64_t)> get;   // called from several threads at once: must be thread-safe
  int64_t num_answers = 0;                   // > 0: targets f32 (B, num_answers) from scores; 0: i32 labels
  bool two_images = false;                   // NLVR2: image2 is loaded into TrainBatch::image2
};

// Sources for the three data sets. They copy what they need, so the set and
// the vocabulary need not outlive them.
ExampleSource vqa_source(const VqaSet& set, const AnswerVocab& vocab);  // text: the question
ExampleSource nlvr2_source(const Nlvr2Set& set);                        // text: the sentence
ExampleSource snli_ve_source(const SnliVeSet& set);                     // text: the hypothesis
// Any list of specs.
ExampleSource source_from_specs(std::vector<ExampleSpec> specs, int64_t num_answers = 0, bool two_images = false);

struct LoaderOptions {
  int batch_size = 32;               // B
  int image_size = 384;              // S: METER's fine-tuning resolution
  int max_text_len = 40;             // texts are cut to this many tokens (specials included); METER's 40
  Padding padding = Padding::Fixed;  // Fixed: T = max_text_len; Longest: T = the batch's longest row
  bool shuffle = true;
  uint64_t seed = 0;                 // the order of epoch e is a pure function of (seed, e)
  bool drop_last = false;            // drop each epoch's last batch when it is short
  int64_t epochs = 1;                // 0: cycle for ever
  int workers = 1;                   // decoding threads; 0: decode inside next()
  int prefetch = 3;                  // stacked batches kept ready ahead of next()
  // Keeps each image after decoding, resizing and cropping (uint8, S x S x 3)
  // so a later epoch skips all three; images that do not fit in the budget
  // are not kept. 0: no cache.
  size_t cache_bytes = 0;
  int max_skip_messages = 5;         // how many skip messages to keep
};

struct LoadedBatch {
  TrainBatch batch;
  std::vector<int64_t> indices;  // (B): the example of each row
  std::vector<int64_t> skipped;  // examples passed over while cutting this batch
  int64_t epoch = 0;             // 0-based
  int64_t number = 0;            // 0-based count of batches delivered before this one
};

// The visiting order of one epoch: a permutation of 0..n-1 drawn from
// (seed, epoch) by Fisher-Yates with Philox draws (engine/rng.h).
std::vector<int64_t> shuffled_order(int64_t n, uint64_t seed, int64_t epoch);

class Loader {
 public:
  // The tokenizer must outlive the loader. An empty source or a bad option
  // is an ArgumentError. Workers start at once.
  Loader(ExampleSource source, const Tokenizer& tokenizer, LoaderOptions options = {});
  ~Loader();
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  // The next batch; nullopt after the last epoch (never, when cycling).
  std::optional<LoadedBatch> next();

  int64_t skipped() const;                      // examples skipped so far (the assembler may be ahead of next())
  std::vector<std::string> skip_messages() const;  // the first max_skip_messages of them
  int64_t size() const;                         // examples per epoch
  const LoaderOptions& options() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace st::data
