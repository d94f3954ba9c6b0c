#include "data/loader.h"

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <limits>
#include <map>
#include <mutex>
#include <numeric>
#include <thread>
#include <unordered_map>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "data/image.h"
#include "engine/error.h"
#include "engine/rng.h"

namespace st::data {

// ---------------------------------------------------------------- sources

ExampleSource source_from_specs(std::vector<ExampleSpec> specs, int64_t num_answers, bool two_images) {
  auto shared = std::make_shared<const std::vector<ExampleSpec>>(std::move(specs));
  ExampleSource source;
  source.size = int64_t(shared->size());
  source.get = [shared](int64_t i) { return (*shared)[size_t(i)]; };
  source.num_answers = num_answers;
  source.two_images = two_images;
  return source;
}

ExampleSource vqa_source(const VqaSet& set, const AnswerVocab& vocab) {
  if (vocab.size() == 0) throw ArgumentError("vqa_source: the answer vocabulary is empty");
  std::vector<ExampleSpec> specs;
  specs.reserve(set.examples.size());
  for (const VqaExample& ex : set.examples) {
    ExampleSpec spec;
    spec.text = ex.question;
    spec.image = ex.image_path;
    spec.scores = vocab.sparse_soft_scores(ex);  // empty without annotations: all-zero targets
    specs.push_back(std::move(spec));
  }
  return source_from_specs(std::move(specs), vocab.size());
}

ExampleSource nlvr2_source(const Nlvr2Set& set) {
  std::vector<ExampleSpec> specs;
  specs.reserve(set.examples.size());
  for (const Nlvr2Example& ex : set.examples) specs.push_back({ex.sentence, ex.image_path, ex.image2_path, ex.label, {}});
  return source_from_specs(std::move(specs), 0, /*two_images=*/true);
}

ExampleSource snli_ve_source(const SnliVeSet& set) {
  std::vector<ExampleSpec> specs;
  specs.reserve(set.examples.size());
  for (const SnliVeExample& ex : set.examples) specs.push_back({ex.hypothesis, ex.image_path, "", ex.label, {}});
  return source_from_specs(std::move(specs));
}

// ---------------------------------------------------------------- order

std::vector<int64_t> shuffled_order(int64_t n, uint64_t seed, int64_t epoch) {
  if (n < 0 || epoch < 0) throw ArgumentError("shuffled_order: n and epoch must be >= 0");
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), int64_t(0));
  // Draw i of epoch e is Philox block (e << 40) + i under the key `seed`:
  // every (seed, epoch) has its own stream (up to 2^40 examples an epoch).
  const uint64_t base = uint64_t(epoch) << 40;
  for (int64_t i = n - 1; i > 0; --i) {
    const std::array<uint32_t, 4> r = philox4x32(base + uint64_t(i), seed);
    const uint64_t draw = (uint64_t(r[0]) << 32) | r[1];
    std::swap(order[size_t(i)], order[size_t(draw % uint64_t(i + 1))]);  // modulo bias < 2^-23
  }
  return order;
}

// ---------------------------------------------------------------- the loader's state

namespace {

// One example after the workers are done with it.
struct Decoded {
  int64_t index = -1;  // in the source
  bool ok = false;
  std::vector<int32_t> ids;  // (<= T), not padded
  Tensor image, image2;      // (3, S, S)
  int32_t label = 0;
  std::vector<std::pair<int32_t, float>> scores;
  std::string skip_message;  // !ok and no error: why it was skipped
  std::exception_ptr error;  // a fatal error, rethrown to the consumer
};

struct Stopped {};  // thrown inside the assembler when the loader shuts down

}  // namespace

struct Loader::State {
  ExampleSource source;
  const Tokenizer& tokenizer;
  LoaderOptions opt;
  int64_t total = 0;  // positions in the whole run: epochs * N, or "for ever"

  State(ExampleSource s, const Tokenizer& t, LoaderOptions o) : source(std::move(s)), tokenizer(t), opt(o) {}

  // --- the order of each epoch; any thread.
  std::mutex order_mutex;
  std::map<int64_t, std::shared_ptr<const std::vector<int64_t>>> orders;  // a few recent epochs

  int64_t index_at(int64_t position) {
    const int64_t n = source.size, epoch = position / n, k = position % n;
    if (!opt.shuffle) return k;
    std::shared_ptr<const std::vector<int64_t>> order;
    {
      std::lock_guard<std::mutex> lock(order_mutex);
      auto it = orders.find(epoch);
      if (it == orders.end()) {
        it = orders.emplace(epoch, std::make_shared<const std::vector<int64_t>>(shuffled_order(n, opt.seed, epoch))).first;
        if (orders.size() > 3) orders.erase(orders.begin());  // an evicted epoch is simply drawn again
      }
      order = it->second;
    }
    return (*order)[size_t(k)];
  }

  // --- the image cache; any thread.
  std::mutex cache_mutex;
  std::unordered_map<std::string, std::shared_ptr<const Image>> cache;  // path -> cropped S x S image
  size_t cache_used = 0;

  Tensor preprocess(const std::string& path) {
    const int s = opt.image_size;
    if (opt.cache_bytes == 0) return clip_preprocess(load_image(path), s);
    std::shared_ptr<const Image> cropped;
    {
      std::lock_guard<std::mutex> lock(cache_mutex);
      if (auto it = cache.find(path); it != cache.end()) cropped = it->second;
    }
    if (!cropped) {
      // clip_preprocess, with the uint8 image kept between resizing and normalising.
      auto made = std::make_shared<const Image>(
          center_crop(resize_shorter_side(load_image(path), s, ResizeFilter::Bicubic), s, s));
      std::lock_guard<std::mutex> lock(cache_mutex);
      if (cache_used + made->pixels.size() <= opt.cache_bytes && cache.emplace(path, made).second)
        cache_used += made->pixels.size();
      cropped = made;
    }
    return to_tensor(*cropped, kClipNormalization);
  }

  // --- one example, start to finish; any thread.
  Decoded decode(int64_t position) {
    Decoded d;
    try {
      d.index = index_at(position);
      ExampleSpec spec = source.get(d.index);
      d.ids = tokenizer.encode(spec.text, opt.max_text_len);
      d.image = preprocess(spec.image);
      if (source.two_images) d.image2 = preprocess(spec.image2);
      if (source.num_answers > 0) {
        for (const auto& [c, score] : spec.scores)
          if (c < 0 || c >= source.num_answers)
            throw ArgumentError("loader: example " + std::to_string(d.index) + " has a score for answer " +
                                std::to_string(c) + ", outside [0, " + std::to_string(source.num_answers) + ")");
        d.scores = std::move(spec.scores);
      } else {
        d.label = spec.label;
      }
      d.ok = true;
    } catch (const FormatError& e) {
      d.skip_message = "example " + std::to_string(d.index) + ": " + e.what();
    } catch (...) {
      d.error = std::current_exception();
    }
    return d;
  }

  // --- skip statistics; written by the assembler, read by anyone.
  mutable std::mutex stats_mutex;
  int64_t skipped_count = 0;
  std::vector<std::string> skip_messages;

  void record_skip(const Decoded& d) {
    std::lock_guard<std::mutex> lock(stats_mutex);
    ++skipped_count;
    if (int64_t(skip_messages.size()) < opt.max_skip_messages) skip_messages.push_back(d.skip_message);
  }

  // --- the assembler: cuts the run, in order, into batches. One thread at a time.
  int64_t position = 0;          // the next position to take
  int64_t accepted_in_epoch = 0;  // examples of the current epoch that loaded
  int64_t batches_in_epoch = 0;
  int64_t batch_number = 0;
  std::string last_skip;

  // take(p) returns position p decoded (decoding it, or waiting for a worker).
  template <typename Take>
  std::optional<LoadedBatch> assemble(Take take) {
    const int64_t n = source.size, b = opt.batch_size;
    while (position < total) {
      const int64_t epoch = position / n;
      std::vector<Decoded> rows;
      std::vector<int64_t> skipped;
      while (int64_t(rows.size()) < b && position < total && position / n == epoch) {
        Decoded d = take(position++);
        if (d.error) std::rethrow_exception(d.error);
        if (!d.ok) {
          record_skip(d);
          skipped.push_back(d.index);
          last_skip = d.skip_message;
          continue;
        }
        ++accepted_in_epoch;
        rows.push_back(std::move(d));
      }
      const bool deliver = !rows.empty() && !(opt.drop_last && int64_t(rows.size()) < b);
      if (deliver) ++batches_in_epoch;
      if (position % n == 0) {  // the epoch's last example was just taken
        if (accepted_in_epoch == 0)
          throw FormatError("loader: every example of epoch " + std::to_string(epoch) +
                            " was skipped; the last: " + last_skip);
        if (batches_in_epoch == 0)
          throw ArgumentError("loader: drop_last leaves epoch " + std::to_string(epoch) + " without a batch (" +
                              std::to_string(accepted_in_epoch) + " examples loaded, batch_size " +
                              std::to_string(b) + ")");
        accepted_in_epoch = 0;
        batches_in_epoch = 0;
      }
      if (deliver) return collate(rows, epoch, std::move(skipped));
    }
    return std::nullopt;
  }

  LoadedBatch collate(const std::vector<Decoded>& rows, int64_t epoch, std::vector<int64_t> skipped) {
    const int64_t b = int64_t(rows.size()), s = opt.image_size;
    int64_t t = opt.max_text_len;
    if (opt.padding == Padding::Longest) {
      t = 0;
      for (const Decoded& r : rows) t = std::max(t, int64_t(r.ids.size()));
    }
    LoadedBatch out;
    out.epoch = epoch;
    out.number = batch_number++;
    out.skipped = std::move(skipped);
    TrainBatch& batch = out.batch;

    batch.ids = Tensor::empty({b, t}, DType::I32);  // (B, T)
    batch.mask = Tensor::zeros({b, t});             // (B, T)
    int32_t* ids = batch.ids.ints();
    float* mask = batch.mask.data();
    std::fill(ids, ids + b * t, tokenizer.special().pad);
    for (int64_t i = 0; i < b; ++i) {
      const std::vector<int32_t>& row = rows[size_t(i)].ids;  // at most max_text_len = t long
      std::copy(row.begin(), row.end(), ids + i * t);
      std::fill(mask + i * t, mask + i * t + int64_t(row.size()), 1.0f);
    }

    const size_t image_floats = size_t(3 * s * s);
    auto stack = [&](Tensor Decoded::*field) {
      Tensor images = Tensor::empty({b, 3, s, s});  // (B, 3, S, S)
      for (int64_t i = 0; i < b; ++i)
        std::memcpy(images.data() + size_t(i) * image_floats, (rows[size_t(i)].*field).data(),
                    image_floats * sizeof(float));
      return images;
    };
    batch.image = stack(&Decoded::image);
    if (source.two_images) batch.image2 = stack(&Decoded::image2);

    if (source.num_answers > 0) {
      batch.targets = Tensor::zeros({b, source.num_answers});  // (B, A)
      float* targets = batch.targets.data();
      for (int64_t i = 0; i < b; ++i)
        for (const auto& [c, score] : rows[size_t(i)].scores) targets[i * source.num_answers + c] = score;
    } else {
      std::vector<int32_t> labels;
      for (const Decoded& r : rows) labels.push_back(r.label);
      batch.targets = Tensor::from_ints(labels, {b});  // (B)
    }
    for (const Decoded& r : rows) out.indices.push_back(r.index);
    return out;
  }

  // --- threads (workers > 0). Everything below is guarded by `m`.
  std::mutex m;
  std::condition_variable work_cv;    // workers: a position may be claimed, or stop
  std::condition_variable result_cv;  // the assembler: a result arrived, or stop
  std::condition_variable ready_cv;   // next(): a batch or the end; the assembler: room in `ready`
  bool stop = false;
  int64_t next_claim = 0;  // the next position a worker decodes
  int64_t taken = 0;       // positions the assembler has taken
  int64_t window = 0;      // positions decoded ahead of the assembler, at most
  std::map<int64_t, Decoded> results;  // decoded, not yet taken, by position
  std::deque<LoadedBatch> ready;       // stacked, not yet delivered
  bool finished = false;               // the assembler is done (end of the run, or error)
  std::exception_ptr error;            // what ended it, if not the end
  std::vector<std::thread> threads;

  static void one_openmp_thread() {
#ifdef _OPENMP
    omp_set_num_threads(1);  // per thread: this thread's parallel regions run alone
#endif
  }

  void worker_loop() {
    one_openmp_thread();
    for (;;) {
      int64_t p;
      {
        std::unique_lock<std::mutex> lock(m);
        work_cv.wait(lock, [&] { return stop || (next_claim < total && next_claim < taken + window); });
        if (stop) return;
        p = next_claim++;
      }
      Decoded d = decode(p);
      {
        std::lock_guard<std::mutex> lock(m);
        results.emplace(p, std::move(d));
      }
      result_cv.notify_all();
    }
  }

  Decoded take_decoded(int64_t p) {
    std::unique_lock<std::mutex> lock(m);
    result_cv.wait(lock, [&] { return stop || results.count(p) > 0; });
    if (stop) throw Stopped{};
    Decoded d = std::move(results.extract(p).mapped());
    taken = p + 1;
    lock.unlock();
    work_cv.notify_all();
    return d;
  }

  void assembler_loop() {
    one_openmp_thread();
    try {
      for (;;) {
        std::optional<LoadedBatch> batch = assemble([this](int64_t p) { return take_decoded(p); });
        std::unique_lock<std::mutex> lock(m);
        if (!batch) {
          finished = true;
          break;
        }
        ready_cv.wait(lock, [&] { return stop || int64_t(ready.size()) < opt.prefetch; });
        if (stop) return;
        ready.push_back(std::move(*batch));
        lock.unlock();
        ready_cv.notify_all();
      }
    } catch (const Stopped&) {
      return;
    } catch (...) {
      std::lock_guard<std::mutex> lock(m);
      error = std::current_exception();
      finished = true;
    }
    ready_cv.notify_all();
  }

  void shut_down() {
    {
      std::lock_guard<std::mutex> lock(m);
      stop = true;
    }
    work_cv.notify_all();
    result_cv.notify_all();
    ready_cv.notify_all();
    for (std::thread& t : threads)
      if (t.joinable()) t.join();
    threads.clear();
  }

  // workers == 0: the error that ended next(), rethrown on later calls.
  std::exception_ptr sync_error;
};

// ---------------------------------------------------------------- Loader

Loader::Loader(ExampleSource source, const Tokenizer& tokenizer, LoaderOptions options) {
  const LoaderOptions& o = options;
  auto bad = [](const std::string& what) { throw ArgumentError("Loader: " + what); };
  if (source.size <= 0) bad("the data set is empty");
  if (!source.get) bad("the source has no get function");
  if (source.num_answers < 0) bad("num_answers must be >= 0");
  if (o.batch_size < 1) bad("batch_size must be at least 1");
  if (o.image_size < 1) bad("image_size must be at least 1");
  if (o.padding == Padding::Fixed ? o.max_text_len < 2 : (o.max_text_len != 0 && o.max_text_len < 2))
    bad("max_text_len must be at least 2 (or 0 with Padding::Longest: no limit)");
  if (o.epochs < 0) bad("epochs must be >= 0 (0: for ever)");
  if (o.workers < 0) bad("workers must be >= 0");
  if (o.prefetch < 1) bad("prefetch must be at least 1");
  if (o.max_skip_messages < 0) bad("max_skip_messages must be >= 0");
  const int64_t n = source.size;
  if (o.epochs > std::numeric_limits<int64_t>::max() / n) bad("epochs * examples overflows");

  state_ = std::make_unique<State>(std::move(source), tokenizer, options);
  State& s = *state_;
  // Cycling for ever: the largest whole number of epochs (2^63 positions will not be reached).
  s.total = o.epochs == 0 ? (std::numeric_limits<int64_t>::max() / n) * n : o.epochs * n;
  s.window = int64_t(o.batch_size) + o.workers;
  if (o.workers == 0) return;
  try {
    for (int i = 0; i < o.workers; ++i) s.threads.emplace_back([&s] { s.worker_loop(); });
    s.threads.emplace_back([&s] { s.assembler_loop(); });
  } catch (...) {  // a thread that could not start: stop the others before failing
    s.shut_down();
    throw;
  }
}

Loader::~Loader() {
  if (state_) state_->shut_down();
}

std::optional<LoadedBatch> Loader::next() {
  State& s = *state_;
  if (s.opt.workers == 0) {
    if (s.sync_error) std::rethrow_exception(s.sync_error);
    try {
      return s.assemble([&s](int64_t p) { return s.decode(p); });
    } catch (...) {
      s.sync_error = std::current_exception();
      throw;
    }
  }
  std::unique_lock<std::mutex> lock(s.m);
  s.ready_cv.wait(lock, [&] { return !s.ready.empty() || s.finished; });
  if (!s.ready.empty()) {
    LoadedBatch batch = std::move(s.ready.front());
    s.ready.pop_front();
    lock.unlock();
    s.ready_cv.notify_all();  // room for the assembler
    return batch;
  }
  if (s.error) std::rethrow_exception(s.error);
  return std::nullopt;
}

int64_t Loader::skipped() const {
  std::lock_guard<std::mutex> lock(state_->stats_mutex);
  return state_->skipped_count;
}

std::vector<std::string> Loader::skip_messages() const {
  std::lock_guard<std::mutex> lock(state_->stats_mutex);
  return state_->skip_messages;
}

int64_t Loader::size() const { return state_->source.size; }

const LoaderOptions& Loader::options() const { return state_->opt; }

}  // namespace st::data
