// smarttrim train: from scratch, from converted weights, with or without
// trimmers; resumable; Ctrl-C saves a checkpoint.
//
// A run directory holds:
//   model.st         the final weights with their config (what eval/infer read)
//   checkpoint.st    weights + AdamW moments + step + Rng + options (--resume)
//   answers.json     the VQA answer list, in the head's class order
//   log.jsonl        one JSON object per step (after a first "start" line)
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "apps/cli.h"
#include "apps/commands.h"
#include "apps/task_data.h"
#include "engine/error.h"
#include "engine/files.h"
#include "pruning/train.h"
#include "weights/format.h"

namespace fs = std::filesystem;

namespace st::app {

namespace {

// --config FILE (or the --init file's config), then every --set key=value in order.
// A value is read as JSON when it parses ("0.5", "[1, 2]", "false"), else as a string.
MeterConfig config_of(const cli::Args& args) {
  std::string text, where;
  if (args.has("config")) {
    where = args.text("config");
    text = read_file(where);
  } else if (args.has("init")) {
    where = args.text("init");
    text = meter_config_of(weights::WeightsFile(where)).to_json();
  } else {
    args.fail("give --config FILE (a new model), --init FILE (start from weights) or --resume FILE");
  }
  nlohmann::ordered_json j;
  try {
    j = nlohmann::ordered_json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(where + ": " + e.what());
  }
  for (const std::string& assignment : args.all("set")) {
    const size_t eq = assignment.find('=');
    if (eq == std::string::npos || eq == 0) args.fail("--set wants KEY=VALUE, got '" + assignment + "'");
    const std::string key = assignment.substr(0, eq), value = assignment.substr(eq + 1);
    nlohmann::ordered_json v = nlohmann::ordered_json::parse(value, nullptr, false);
    if (v.is_discarded()) v = value;
    // "smarttrim.tau=0.5" reaches into the trimmer object
    nlohmann::ordered_json* target = &j;
    std::string leaf = key;
    if (key.rfind("smarttrim.", 0) == 0) {
      if (!j.contains("smarttrim")) args.fail("--set " + key + ": the config has no \"smarttrim\" object");
      target = &j["smarttrim"];
      leaf = key.substr(10);
    }
    // an unknown key is left to the config reader, which knows the optional ones and names the key
    (*target)[leaf] = v;
  }
  return meter_config_from_json(j.dump(), where + (args.all("set").empty() ? "" : " with --set"));
}

TrainOptions options_of(const cli::Args& args, Task task, bool trimmers) {
  TrainOptions o;
  o.task = task;
  o.total_steps = args.integer("steps");
  o.lr = float(args.number("lr"));
  o.warmup_fraction = float(args.number("warmup"));
  o.weight_decay = float(args.number("weight-decay"));
  o.trimmer_lr_multiplier = float(args.number("trimmer-lr-mult"));
  o.clip_norm = float(args.number("clip-norm"));
  o.dropout = !args.flag_set("no-dropout");
  o.batch_shards = int(args.integer("shards"));
  if (o.batch_shards < 0) args.fail("--shards must be 0 (one per thread) or more");
  if (trimmers && !args.has("target")) args.fail("a model with trimmers needs --target (e.g. 0.5 for 2x fewer FLOPs)");
  if (!trimmers && args.has("target"))
    args.fail("--target needs a model with trimmers (a config with a \"smarttrim\" object)");
  if (trimmers) o.curriculum.goal = args.number("target");
  o.curriculum.fraction = args.number("curriculum-fraction");
  o.curriculum.enabled = !args.flag_set("no-curriculum");
  o.noise_free_fraction = float(args.number("noise-free-fraction"));
  if (!(o.noise_free_fraction >= 0 && o.noise_free_fraction <= 1)) args.fail("--noise-free-fraction must be in [0, 1]");
  o.objective.lambda_cost = float(args.number("lambda-cost"));
  o.objective.lambda_sd = float(args.number("lambda-sd"));
  o.objective.alpha = float(args.number("alpha"));
  o.objective.self_distillation = !args.flag_set("no-distill");
  if (o.total_steps < 1) args.fail("--steps must be at least 1");
  if (!(o.lr > 0)) args.fail("--lr must be positive");
  if (o.curriculum.goal <= 0 || o.curriculum.goal > 1) args.fail("--target must be in (0, 1]");
  return o;
}

nlohmann::ordered_json step_json(const StepLog& l, double seconds) {
  nlohmann::ordered_json j;
  j["step"] = l.step;
  j["loss"] = l.loss;
  j["task_loss"] = l.task_loss;
  j["teacher_loss"] = l.teacher_loss;
  j["distill_loss"] = l.distill_loss;
  j["cost_loss"] = l.cost_loss;
  j["target"] = l.target;
  j["flops_ratio_mean"] = l.ratio_mean;
  j["flops_ratio_std"] = l.ratio_std;
  j["lr_scale"] = l.lr_scale;
  j["grad_norm"] = l.grad_norm;
  if (l.trimmer_grad_norm > 0) j["trimmer_grad_norm"] = l.trimmer_grad_norm;
  j["vit_tokens"] = l.vit_tokens;
  j["text_tokens"] = l.text_tokens;
  j["cross_text_tokens"] = l.cross_text_tokens;
  j["cross_image_tokens"] = l.cross_image_tokens;
  j["text_self_heads"] = l.text_self_heads;
  j["text_cross_heads"] = l.text_cross_heads;
  j["image_self_heads"] = l.image_self_heads;
  j["image_cross_heads"] = l.image_cross_heads;
  j["seconds"] = seconds;
  return j;
}

}  // namespace

int train_command(int argc, char** argv) {
  cli::Args args("smarttrim train",
                 "Trains METER on a task: from scratch (--config), from weights (--init), with SmartTrim's\n"
                 "trimmers when the config has a \"smarttrim\" object, or resumes a run (--resume).");
  args.option("out", "DIR", "the run directory (model.st, checkpoint.st, answers.json, log.jsonl)").required();
  args.option("config", "FILE", "model config (configs/*.json)");
  args.repeated("set", "KEY=VALUE", "override a config value, e.g. dropout=0 or smarttrim.tau=0.5");
  args.option("init", "FILE", "start from these weights; trimmers they lack start fresh");
  args.option("resume", "FILE", "continue the run of this checkpoint (its options and model; --steps may change)");
  add_tokenizer_options(args);
  args.option("answers", "FILE", "the VQA answer list (JSON); default: built from the training answers");
  add_data_options(args, "train");
  args.option("steps", "N", "optimizer steps", "1000");
  args.option("lr", "X", "peak learning rate (linear warmup, then linear decay)", "1e-4");
  args.option("warmup", "F", "fraction of the steps spent warming up", "0.1");
  args.option("weight-decay", "X", "AdamW weight decay of the backbone's matrices", "0.01");
  args.option("clip-norm", "X", "global gradient norm clip (0: none)", "1");
  args.option("seed", "N", "model initialisation, data order, dropout and Gumbel noise", "0");
  args.flag("no-dropout", "train without dropout");
  args.option("shards", "N", "split each batch into N parts that run side by side, a thread each (0: one per thread)",
              "0");
  args.option("target", "RHO", "SmartTrim: the FLOPs ratio to reach (0.5 = 2x fewer FLOPs)");
  args.option("curriculum-fraction", "P", "SmartTrim: the target falls from 1 over this fraction of the steps", "0.5");
  args.flag("no-curriculum", "SmartTrim: hold the target from the first step");
  args.option("noise-free-fraction", "F", "SmartTrim: the last F of the steps draw no mask noise (the inference rule)", "0");
  args.option("lambda-cost", "X", "SmartTrim: weight of the cost loss", "2");
  args.option("lambda-sd", "X", "SmartTrim: weight of self-distillation", "1");
  args.option("alpha", "X", "SmartTrim: weight of the teacher's own task loss", "1");
  args.flag("no-distill", "SmartTrim: no self-distillation");
  args.option("trimmer-lr-mult", "X", "SmartTrim: the trimmers' learning rate is lr times this", "10");
  args.option("checkpoint-every", "N", "steps between checkpoints (0: only at the end)", "500");
  cli::add_device_option(args);
  if (!args.parse(argc, argv, 2)) return 0;

  const std::string out = args.text("out");
  const Device device = cli::device_of(args);  // before anything is read or written
  // From here on, Ctrl-C is a request: the loop below saves a checkpoint and
  // exits 130 (also when it comes during the setup, before the first step).
  cli::catch_interrupts();
  const TaskData train = load_task_data(args);
  const std::unique_ptr<data::Tokenizer> tokenizer = load_tokenizer(args);

  // --- the trainer: resumed, or a model from --config / --init
  std::unique_ptr<SmartTrimTrainer> trainer;
  const uint64_t seed = uint64_t(args.integer("seed"));
  if (args.has("resume")) {
    if (args.has("config") || args.has("init")) args.fail("--resume takes its model from the checkpoint: drop --config/--init");
    trainer = SmartTrimTrainer::from_checkpoint(args.text("resume"));
    if (trainer->options().task != train.task) args.fail("the checkpoint trains another task than --task");
    if (args.given("steps")) {  // lengthen (or shorten) the run; the schedule stretches with it
      TrainOptions o = trainer->options();
      o.total_steps = args.integer("steps");
      if (o.total_steps < trainer->step_count()) args.fail("--steps is below the checkpoint's step");
      trainer->set_options(o);
    }
  } else {
    const MeterConfig config = config_of(args);
    auto model = std::make_unique<Meter>(config, seed);
    if (args.has("init")) {
      const int fresh = model->load(weights::WeightsFile(args.text("init")), Meter::Trimmers::MayBeMissing);
      if (fresh > 0) std::printf("init: %s; %d trimmer tensors start fresh\n", args.text("init").c_str(), fresh);
    }
    trainer = std::make_unique<SmartTrimTrainer>(std::move(model), options_of(args, train.task, config.trim.enabled),
                                                 seed * 7919 + 17);
  }
  trainer->move_to(device);
  const MeterConfig& config = trainer->model().config();

  data::AnswerVocab answers;
  if (train.task == Task::VQA)
    answers = args.has("answers") ? data::AnswerVocab::load(args.text("answers")) : data::AnswerVocab::build(train.vqa.examples);
  data::LoaderOptions lo = loader_options(config, args);
  lo.shuffle = true;
  lo.epochs = 0;  // cycle; the step count ends the run
  lo.seed = seed + uint64_t(trainer->step_count());  // a resumed run continues with a fresh order
  lo.drop_last = true;
  check_fits(config, *tokenizer, lo.max_text_len, train.task, &answers);
  if (config.trim.enabled) {
    // A target under every example's floor is a placement problem, not a training one.
    double floor = 1;
    for (int n = 2; n <= lo.max_text_len; n++) floor = std::min(floor, lowest_flops_ratio(config, n, train.task));
    if (trainer->options().curriculum.goal < floor)
      std::printf("train: warning: target %.3f is below %.3f, the lowest FLOPs ratio this model's trimmers can reach "
                  "(the layers before the first trimmer are never trimmed); place trimmers earlier to go lower\n",
                  double(trainer->options().curriculum.goal), floor);
  }

  cli::make_directories(out);
  if (train.task == Task::VQA) answers.save((fs::path(out) / "answers.json").string());
  const std::string checkpoint = (fs::path(out) / "checkpoint.st").string();
  cli::JsonlLog log((fs::path(out) / "log.jsonl").string());
  {
    nlohmann::ordered_json start;
    start["event"] = trainer->step_count() > 0 ? "resume" : "start";
    start["step"] = trainer->step_count();
    start["data"] = train.where;
    start["examples"] = train.size();
    start["options"] = nlohmann::ordered_json::parse(train_options_to_json(trainer->options()));
    start["config"] = nlohmann::ordered_json::parse(config.to_json());
    log.write(start.dump());
  }
  const int shards = trainer->shard_count(lo.batch_size);
  std::printf("train: %s, %lld examples, %s model%s, %lld parameters, steps %lld..%lld, batch %d in %d shard%s, on %s\n",
              task_name(train.task), (long long)train.size(), config.trim.enabled ? "SmartTrim" : "full-capacity",
              config.trim.enabled ? (" (target " + std::to_string(trainer->options().curriculum.goal).substr(0, 5) + ")").c_str() : "",
              (long long)trainer->model().parameter_count(), (long long)trainer->step_count(),
              (long long)trainer->options().total_steps, lo.batch_size, shards, shards == 1 ? "" : "s", name(device));
  if (train.missing_images() > 0)
    std::printf("train: %lld examples have a missing image and will be skipped\n", (long long)train.missing_images());

  std::fflush(stdout);  // before the progress bar starts on stderr
  data::Loader loader(train.source(answers), *tokenizer, lo);
  const int64_t total = trainer->options().total_steps, every = args.integer("checkpoint-every");
  cli::Progress progress("train", total - trainer->step_count(), "steps");
  double running_loss = NAN, running_ratio = NAN;
  const auto start = std::chrono::steady_clock::now();
  int64_t done = 0;
  while (trainer->step_count() < total) {
    if (cli::interrupted()) {
      trainer->save_checkpoint(checkpoint);
      progress.finish();
      std::printf("interrupted at step %lld: checkpoint saved to %s; continue with --resume %s\n",
                  (long long)trainer->step_count(), checkpoint.c_str(), checkpoint.c_str());
      return 130;
    }
    std::optional<data::LoadedBatch> batch = loader.next();
    const StepLog l = trainer->step(batch->batch);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    log.write(step_json(l, seconds).dump());
    running_loss = std::isnan(running_loss) ? l.task_loss : 0.95 * running_loss + 0.05 * l.task_loss;
    running_ratio = std::isnan(running_ratio) ? l.ratio_mean : 0.95 * running_ratio + 0.05 * l.ratio_mean;
    char metrics[96];
    if (config.trim.enabled) std::snprintf(metrics, sizeof metrics, "loss %.3f flops %.2f (target %.2f)", running_loss, running_ratio, l.target);
    else std::snprintf(metrics, sizeof metrics, "loss %.3f", running_loss);
    progress.update(++done, metrics);
    if (every > 0 && trainer->step_count() % every == 0 && trainer->step_count() < total) trainer->save_checkpoint(checkpoint);
  }
  progress.finish();
  trainer->save_checkpoint(checkpoint);
  trainer->model().save((fs::path(out) / "model.st").string());
  if (loader.skipped() > 0) {
    std::printf("train: skipped %lld examples whose image could not be read, e.g.\n", (long long)loader.skipped());
    for (const std::string& m : loader.skip_messages()) std::printf("  %s\n", m.c_str());
  }
  std::printf("train: done; model %s/model.st, checkpoint %s, log %s/log.jsonl\n", out.c_str(), checkpoint.c_str(),
              out.c_str());
  return 0;
}

}  // namespace st::app
