// smarttrim eval: accuracy and cost of a model on a data set, through the
// packed inference path (what a trimmed model really executes).
// smarttrim bench: the same model at full capacity and trimmed, side by side
// on the same batches, at batch 1 and batch 32.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <omp.h>
#include <optional>

#include "apps/cli.h"
#include "apps/commands.h"
#include "apps/task_data.h"
#include "engine/error.h"
#include "engine/files.h"
#include "pruning/packed.h"

namespace st::app {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

void add_inference_options(cli::Args& args) {
  args.option("theta", "X", "keep a token iff its trimmer's logit > X", "0");
  args.option("head-theta", "X", "keep a head iff its trimmer's logit > X", "0");
  args.option("keep-ratio", "R", "fixed-ratio top-k baseline: every token trimmer keeps this share of tokens");
  args.flag("full", "run at full capacity (trimmers off)");
}

PackedMeter::Options inference_options(const cli::Args& args) {
  PackedMeter::Options o;
  o.token_threshold = float(args.number("theta"));
  o.head_threshold = float(args.number("head-theta"));
  o.trimmers = !args.flag_set("full");
  if (args.has("keep-ratio")) {
    o.keep_ratio = float(args.number("keep-ratio"));
    if (!(o.keep_ratio > 0 && o.keep_ratio <= 1)) args.fail("--keep-ratio must be in (0, 1]");
    if (!o.trimmers) args.fail("--keep-ratio and --full exclude each other");
  }
  return o;
}

// Example b of a batch as a batch of one.
TrainBatch row_of(const TrainBatch& batch, int64_t b) {
  auto slice = [&](const Tensor& t) {
    if (!t.defined()) return Tensor();
    std::vector<int64_t> shape = t.shape();
    const size_t row_bytes = t.nbytes() / size_t(shape[0]);
    shape[0] = 1;
    Tensor out = Tensor::empty(shape, t.dtype());
    std::memcpy(out.raw_data(), static_cast<const char*>(t.raw_data()) + size_t(b) * row_bytes, row_bytes);
    return out;
  };
  TrainBatch one;
  one.ids = slice(batch.ids);
  one.mask = slice(batch.mask);
  one.image = slice(batch.image);
  one.image2 = slice(batch.image2);
  return one;
}

// The batch goes to the model's device; the logits come back to the host
// (on a GPU that also waits for the pass, so a timing covers all of it).
PackedOutput run(const PackedMeter& model, Task task, const TrainBatch& b, const PackedMeter::Options& o) {
  const TrainBatch on = b.to(model.model().device());
  PackedOutput out = model.run(task, on.ids, on.mask, on.image, on.image2, o);
  out.logits = out.logits.to(Device::CPU);
  return out;
}

int64_t text_tokens(const TrainBatch& b, int64_t row) {
  const int64_t T = b.mask.dim(1);
  double n = 0;
  for (int64_t j = 0; j < T; j++) n += b.mask.data()[row * T + j];
  return int64_t(n);
}

// Example r's FLOPs ratio: what the packed path executed for it over its unpruned cost.
double flops_ratio(const PackedOutput& out, const TrainBatch& b, int64_t r, const MeterConfig& c, Task task) {
  return out.flops[size_t(r)] / full_flops(c, int(text_tokens(b, r)), task);
}

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / double(v.size());
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// What eval and bench read: the model, its tokenizer and answers, a data
// split, and loader options (in file order), checked against each other.
struct Inputs {
  std::unique_ptr<Meter> model;
  std::unique_ptr<data::Tokenizer> tokenizer;
  TaskData set;
  data::AnswerVocab answers;
  data::LoaderOptions loader;
};

Inputs load_inputs(const cli::Args& args) {
  const Device device = cli::device_of(args);  // before anything is read
  Inputs in;
  in.model = load_model(args);
  move_parameters(in.model->params(), device);
  const MeterConfig& config = in.model->config();
  in.tokenizer = load_tokenizer(args);
  in.set = load_task_data(args);
  if (in.set.task == Task::VQA) in.answers = load_answers(args, config);
  in.loader = loader_options(config, args);
  in.loader.shuffle = false;
  check_fits(config, *in.tokenizer, in.loader.max_text_len, in.set.task, &in.answers);
  return in;
}

// The threshold theta (for tokens, and for heads too when `heads` is set) at
// which the model's mean FLOPs ratio over `batches` is `target`, by
// bisection: training with noisy masks lands near its target but not on it,
// and the noise-free ratio at theta 0 can sit several hundredths away. More
// theta never keeps more, so the ratio falls as theta rises (down to the
// trimmers' floor).
struct Calibration {
  float theta = 0;
  double ratio = 0;
};
Calibration calibrate_theta(const PackedMeter& packed, Task task, const std::vector<TrainBatch>& batches,
                            PackedMeter::Options o, double target, bool heads) {
  const MeterConfig& config = packed.model().config();
  auto ratio_at = [&](float theta) {
    o.token_threshold = theta;
    if (heads) o.head_threshold = theta;
    std::vector<double> ratios;
    for (const TrainBatch& b : batches) {
      const PackedOutput out = run(packed, task, b, o);
      for (size_t r = 0; r < out.flops.size(); r++) ratios.push_back(flops_ratio(out, b, int64_t(r), config, task));
    }
    return mean(ratios);
  };
  Calibration lo{-16, ratio_at(-16)}, hi{16, ratio_at(16)};  // lo keeps the most
  if (target >= lo.ratio) return lo;
  if (target <= hi.ratio) return hi;
  for (int i = 0; i < 24; i++) {  // theta to within 32 / 2^24
    const Calibration mid{0.5f * (lo.theta + hi.theta), 0};
    const double r = ratio_at(mid.theta);
    (r > target ? lo : hi) = Calibration{mid.theta, r};
  }
  return std::fabs(lo.ratio - target) < std::fabs(hi.ratio - target) ? lo : hi;
}

}  // namespace

int eval_command(int argc, char** argv) {
  cli::Args args("smarttrim eval",
                 "Evaluates a model: accuracy, per-example GFLOPs and FLOPs ratio (what the packed path executed),\n"
                 "latency at batch 1 and throughput at batch 32.");
  add_model_options(args);
  add_tokenizer_options(args);
  add_data_options(args, "val");
  add_inference_options(args);
  cli::add_device_option(args);
  args.option("limit", "N", "evaluate the first N examples only");
  args.option("target-ratio", "R", "choose --theta (and --head-theta, unless given) so that the mean FLOPs ratio\n"
                                   "on the first examples of --calibration-split is R, then evaluate with them");
  args.option("calibration-split", "NAME", "the split of --data that --target-ratio calibrates on", "val");
  args.option("calibration-examples", "N", "how many of its examples", "1000");
  args.option("latency-examples", "N", "examples timed one by one for the batch-1 latency", "32");
  args.option("json", "FILE", "write the results (and per-example costs) as JSON");
  args.option("label", "TEXT", "a name for this run in the JSON (plots use it)");
  args.option("method", "NAME", "how plots group this run: full, smarttrim, theta_sweep or topk (default: inferred)");
  if (!args.parse(argc, argv, 2)) return 0;

  if (args.has("method")) {
    const std::string m = args.text("method");
    if (m != "full" && m != "smarttrim" && m != "theta_sweep" && m != "topk")
      args.fail("--method must be full, smarttrim, theta_sweep or topk, not '" + m + "'");
  }
  const Inputs in = load_inputs(args);
  const Meter& model = *in.model;
  const MeterConfig& config = model.config();
  const TaskData& set = in.set;
  const data::AnswerVocab& answers = in.answers;
  const data::LoaderOptions& lo = in.loader;
  PackedMeter::Options po = inference_options(args);
  if (!config.trim.enabled) po.trimmers = false;

  const PackedMeter packed(model);
  std::optional<Calibration> calibration;
  if (args.has("target-ratio")) {
    const double target = args.number("target-ratio");
    if (!(target > 0 && target <= 1)) args.fail("--target-ratio must be in (0, 1]");
    if (!po.trimmers || po.keep_ratio > 0) args.fail("--target-ratio needs a model with trimmers, without --full or --keep-ratio");
    if (args.given("theta")) args.fail("--target-ratio chooses the token threshold: drop --theta");
    if (!args.has("data")) args.fail("--target-ratio needs --data DIR, whose --calibration-split it calibrates on");
    const std::string split = args.text("calibration-split");
    if (split == args.text("split")) args.fail("--calibration-split must differ from --split (calibrate on held-out data)");
    const int64_t n = args.integer("calibration-examples");
    if (n < 1) args.fail("--calibration-examples must be at least 1");
    const TaskData cal = load_task_data(args, split);
    data::ExampleSource cal_source = cal.source(answers);
    cal_source.size = std::min(cal_source.size, n);
    data::Loader cal_loader(cal_source, *in.tokenizer, lo);
    std::vector<TrainBatch> batches;
    while (std::optional<data::LoadedBatch> lb = cal_loader.next()) batches.push_back(lb->batch);
    if (batches.empty()) throw FormatError(cal.where + ": no example could be read for the calibration");
    const bool heads = !args.given("head-theta");
    calibration = calibrate_theta(packed, set.task, batches, po, target, heads);
    po.token_threshold = calibration->theta;
    if (heads) po.head_threshold = calibration->theta;
    std::printf("calibrated on %s (%lld examples): theta %.4f (head theta %.4f) gives FLOPs ratio %.3f (target %.3f)\n",
                cal.where.c_str(), (long long)cal_source.size, double(po.token_threshold), double(po.head_threshold),
                calibration->ratio, target);
    if (std::fabs(calibration->ratio - target) > 0.01)
      std::printf("warning: the target is out of this model's reach; the nearest ratio is %.3f\n", calibration->ratio);
  }

  data::ExampleSource source = set.source(answers);
  if (args.has("limit")) {
    const int64_t limit = args.integer("limit");
    if (limit < 1) args.fail("--limit must be at least 1");
    source.size = std::min(source.size, limit);
  }
  data::Loader loader(source, *in.tokenizer, lo);

  std::vector<double> gflops, ratio, scores;
  struct CategorySums {
    double score = 0, flops_ratio = 0;
    int64_t count = 0;
  };
  std::map<std::string, CategorySums> by_category;  // question type -> sums over its examples
  double model_seconds = 0;
  int64_t timed_examples = 0;
  std::vector<double> latency_ms;
  const int64_t latency_examples = args.integer("latency-examples");
  cli::Progress progress("eval", source.size, "examples");
  while (std::optional<data::LoadedBatch> lb = loader.next()) {
    const TrainBatch& b = lb->batch;
    const auto t0 = Clock::now();
    const PackedOutput out = run(packed, set.task, b, po);
    const double dt = seconds_since(t0);
    if (int64_t(lb->indices.size()) == lo.batch_size) model_seconds += dt, timed_examples += lo.batch_size;
    const int64_t classes = out.logits.dim(1);
    for (size_t r = 0; r < lb->indices.size(); r++) {
      const int64_t i = lb->indices[r];
      const float* z = out.logits.data() + int64_t(r) * classes;
      const int64_t predicted = std::max_element(z, z + classes) - z;
      const double s = set.score(i, predicted, answers);
      scores.push_back(s);
      gflops.push_back(out.flops[r] / 1e9);
      ratio.push_back(flops_ratio(out, b, int64_t(r), config, set.task));
      CategorySums& cat = by_category[set.category(i)];
      cat.score += s, cat.flops_ratio += ratio.back(), cat.count++;
    }
    // batch-1 latency: the first examples again, one at a time
    for (int64_t r = 0; r < int64_t(lb->indices.size()) && int64_t(latency_ms.size()) < latency_examples; r++) {
      const TrainBatch one = row_of(b, r);
      const auto t1 = Clock::now();
      run(packed, set.task, one, po);
      latency_ms.push_back(1e3 * seconds_since(t1));
    }
    char metrics[64];
    std::snprintf(metrics, sizeof metrics, "accuracy %.2f%%", 100 * mean(scores));
    progress.update(int64_t(scores.size()), metrics);
  }
  progress.finish();
  if (scores.empty()) throw FormatError(set.where + ": every example was skipped (no image could be read)");

  const std::string method = args.text_or("method", !po.trimmers ? "full" : po.keep_ratio > 0 ? "topk" : "smarttrim");
  double ratio_var = 0;
  const double ratio_mean = mean(ratio);
  for (double r : ratio) ratio_var += (r - ratio_mean) * (r - ratio_mean) / double(ratio.size());
  nlohmann::ordered_json j;
  j["label"] = args.text_or("label", args.text("model"));
  j["method"] = method;
  j["model"] = args.text("model");
  j["task"] = task_name(set.task);
  j["device"] = name(model.device());
  j["data"] = set.where;
  j["examples"] = int64_t(scores.size());
  j["skipped"] = loader.skipped();
  j["accuracy"] = mean(scores);
  j["gflops_mean"] = mean(gflops);
  j["flops_ratio_mean"] = ratio_mean;
  j["flops_ratio_std"] = std::sqrt(ratio_var);
  j["latency_ms_batch1"] = median(latency_ms);
  j["throughput_batch" + std::to_string(lo.batch_size)] = model_seconds > 0 ? double(timed_examples) / model_seconds : 0.0;
  j["trimmers"] = po.trimmers;
  j["token_threshold"] = po.token_threshold;
  j["head_threshold"] = po.head_threshold;
  j["keep_ratio"] = po.keep_ratio;
  if (calibration) {
    j["target_ratio"] = args.number("target-ratio");
    j["calibration_split"] = args.text("calibration-split");
    j["calibration_ratio"] = calibration->ratio;
  }
  // Per question type: does the cost follow what the question needs?
  nlohmann::ordered_json per_type = nlohmann::ordered_json::object(), ratio_per_type = per_type, count_per_type = per_type;
  for (const auto& [name, sums] : by_category)
    if (!name.empty()) {
      per_type[name] = sums.score / double(sums.count);
      ratio_per_type[name] = sums.flops_ratio / double(sums.count);
      count_per_type[name] = sums.count;
    }
  j["accuracy_by_type"] = per_type;
  j["flops_ratio_by_type"] = ratio_per_type;
  j["examples_by_type"] = count_per_type;
  j["gflops"] = gflops;
  j["flops_ratio"] = ratio;

  std::printf("%s on %s: %lld examples", j["label"].get<std::string>().c_str(), set.where.c_str(),
              (long long)scores.size());
  if (loader.skipped() > 0) std::printf(" (%lld skipped: unreadable images)", (long long)loader.skipped());
  std::printf("\n  accuracy %.2f%%\n  GFLOPs per example %.4f (FLOPs ratio %.3f +- %.3f)\n", 100 * mean(scores),
              mean(gflops), ratio_mean, std::sqrt(ratio_var));
  for (const auto& [name, v] : per_type.items())
    std::printf("    %-12s %.2f%% at FLOPs ratio %.3f\n", name.c_str(), 100 * v.get<double>(),
                ratio_per_type[name].get<double>());
  std::printf("  latency at batch 1: %.2f ms (median of %zu)\n", median(latency_ms), latency_ms.size());
  if (model_seconds > 0)
    std::printf("  throughput at batch %d: %.1f examples/s\n", lo.batch_size, double(timed_examples) / model_seconds);
  for (const std::string& m : loader.skip_messages()) std::printf("  skipped: %s\n", m.c_str());
  if (args.has("json")) write_file_atomically(args.text("json"), j.dump(1) + "\n");
  return 0;
}

int bench_command(int argc, char** argv) {
  cli::Args args("smarttrim bench",
                 "Times a trimmed model against itself at full capacity on the same batches, side by side,\n"
                 "at batch 1 and at --batch (32), and prints the speed-up next to the FLOPs reduction.");
  add_model_options(args);
  add_tokenizer_options(args);
  add_data_options(args, "val");
  add_inference_options(args);
  cli::add_device_option(args);
  args.option("repeats", "N", "timed rounds (the median is reported)", "5");
  args.option("json", "FILE", "write the measurements as JSON");
  if (!args.parse(argc, argv, 2)) return 0;

  const Inputs in = load_inputs(args);
  const Meter& model = *in.model;
  const TaskData& set = in.set;
  if (!model.config().trim.enabled) throw ArgumentError("bench compares trimmed and full capacity: the model has no trimmers");
  PackedMeter::Options trimmed = inference_options(args);
  if (!trimmed.trimmers) args.fail("bench always runs both; drop --full");
  PackedMeter::Options full = trimmed;
  full.trimmers = false;
  const int64_t repeats = args.integer("repeats");
  if (repeats < 1) args.fail("--repeats must be at least 1");

  data::Loader loader(set.source(in.answers), *in.tokenizer, in.loader);
  std::optional<data::LoadedBatch> lb = loader.next();
  if (!lb) throw FormatError(set.where + ": no example could be read");
  const TrainBatch batch = lb->batch;
  const PackedMeter packed(model);

  nlohmann::ordered_json j;
  j["model"] = args.text("model");
  j["device"] = name(model.device());
  j["threads"] = omp_get_max_threads();
  std::printf("%-10s %12s %12s %9s %11s %11s\n", "batch", "full ms", "trimmed ms", "speed-up", "FLOPs ratio",
              "efficiency");
  for (const int64_t size : {int64_t(1), int64_t(batch.ids.dim(0))}) {
    std::vector<TrainBatch> inputs;  // batch 1: each example on its own, so the mix matches batch 32
    if (size == 1)
      for (int64_t r = 0; r < batch.ids.dim(0); r++) inputs.push_back(row_of(batch, r));
    else
      inputs.push_back(batch);
    double flops_full = 0, flops_trimmed = 0;
    std::vector<double> ms_full, ms_trimmed;
    for (int64_t rep = 0; rep <= repeats; rep++) {  // round 0 warms up
      for (const bool trim : {false, true}) {
        const auto t0 = Clock::now();
        double flops = 0;
        for (const TrainBatch& in : inputs)
          for (double f : run(packed, set.task, in, trim ? trimmed : full).flops) flops += f;
        const double ms = 1e3 * seconds_since(t0) / double(inputs.size());
        if (rep == 0) (trim ? flops_trimmed : flops_full) = flops;
        else (trim ? ms_trimmed : ms_full).push_back(ms);
      }
    }
    const double speedup = median(ms_full) / median(ms_trimmed), flops_ratio = flops_trimmed / flops_full;
    std::printf("%-10lld %12.3f %12.3f %8.2fx %11.3f %11.2f\n", (long long)size, median(ms_full), median(ms_trimmed),
                speedup, flops_ratio, speedup * flops_ratio);
    j["batch" + std::to_string(size)] = {{"full_ms", median(ms_full)},   {"trimmed_ms", median(ms_trimmed)},
                                         {"speedup", speedup},           {"flops_ratio", flops_ratio},
                                         {"efficiency", speedup * flops_ratio}};
  }
  std::printf("(efficiency: speed-up / FLOPs reduction; 1 means the time fell as much as the FLOPs)\n");
  if (args.has("json")) write_file_atomically(args.text("json"), j.dump(1) + "\n");
  return 0;
}

}  // namespace st::app
