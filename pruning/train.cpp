#include "pruning/train.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <limits>
#include <nlohmann/json.hpp>
#include <omp.h>

#include "engine/error.h"
#include "engine/parallel.h"
#include "weights/checkpoint.h"

namespace st {

namespace {

constexpr const char* kOptionsKey = "smarttrim_train";  // the checkpoint's metadata entry for TrainOptions

const char* task_key(Task task) {
  switch (task) {
    case Task::VQA: return "vqa";
    case Task::SNLI: return "snli";
    case Task::ITM: return "itm";
    case Task::NLVR2: return "nlvr2";
    case Task::Rank: return "rank";
    case Task::None: return "none";
  }
  return "none";
}

// The options, after checking they fit the model.
const TrainOptions& checked(const Meter* model, const TrainOptions& o) {
  if (!model) throw ArgumentError("SmartTrim training: no model");
  if (o.task != Task::VQA && o.task != Task::SNLI && o.task != Task::ITM && o.task != Task::NLVR2)
    throw ArgumentError(std::string("SmartTrim training: task '") + task_key(o.task) +
                        "' is not one of vqa, snli, itm, nlvr2");
  if (o.total_steps <= 0) throw ArgumentError("SmartTrim training: total_steps must be > 0");
  if (o.warmup_fraction < 0 || o.warmup_fraction > 1)
    throw ArgumentError("SmartTrim training: warmup_fraction must be in [0, 1]");
  if (o.batch_shards < 0) throw ArgumentError("SmartTrim training: batch_shards must be >= 0");
  return o;
}

// The options, checked, with batch_shards 0 resolved to the number of threads.
TrainOptions resolved(const Meter* model, const TrainOptions& options) {
  TrainOptions o = checked(model, options);
  if (o.batch_shards == 0) o.batch_shards = omp_get_max_threads();
  return o;
}

// The head of the task on pooled features (B, 2d) -> logits.
Tensor head_logits(const Meter& model, Task task, const Tensor& cls) {
  switch (task) {
    case Task::VQA: return model.vqa_logits(cls);
    case Task::SNLI: return model.snli_logits(cls);
    case Task::ITM: return model.itm_logits(cls);
    default: throw ArgumentError("SmartTrim training: no single-pass head for this task");
  }
}

// Mean over the batch of each (B,) count.
std::vector<double> batch_means(const std::vector<Tensor>& counts) {
  std::vector<double> out;
  for (const Tensor& c : counts) {
    double sum = 0;
    for (float v : c.to_vector()) sum += v;
    out.push_back(sum / double(c.numel()));
  }
  return out;
}

// Element-wise mean of per-pass vectors (NLVR2's two passes).
std::vector<double> mean_of(const std::vector<std::vector<double>>& per_pass) {
  std::vector<double> out = per_pass.front();
  for (size_t p = 1; p < per_pass.size(); p++)
    for (size_t i = 0; i < out.size(); i++) out[i] += per_pass[p][i];
  for (double& v : out) v /= double(per_pass.size());
  return out;
}

std::string joined(const std::vector<double>& values, const char* separator) {
  std::string out;
  char buf[32];
  for (size_t i = 0; i < values.size(); i++) {
    std::snprintf(buf, sizeof buf, "%s%.1f", i ? separator : "", values[i]);
    out += buf;
  }
  return out;
}

}  // namespace

std::string StepLog::line() const {
  char head[320];
  std::snprintf(head, sizeof head,
                "step %lld lr %.3f loss %.4f task %.4f teacher %.4f sd %.4f cost %.5f | flops %.3f+-%.3f target %.3f |",
                (long long)step, lr_scale, loss, task_loss, teacher_loss, distill_loss, cost_loss, ratio_mean,
                ratio_std, target);
  std::string out = head;
  auto section = [&](const char* label, const std::vector<double>& values) {
    out += ' ';
    out += label;
    out += ' ';
    out += joined(values, " ");
    out += " |";
  };
  section("vit", vit_tokens);
  section("text", text_tokens);
  section("xt", cross_text_tokens);
  section("xv", cross_image_tokens);
  out += " heads";
  for (size_t l = 0; l < text_self_heads.size(); l++) {
    out += ' ';
    out += joined({text_self_heads[l], text_cross_heads[l], image_self_heads[l], image_cross_heads[l]}, "/");
  }
  return out;
}

std::vector<ParamGroup> smarttrim_param_groups(const Meter& model, const TrainOptions& o) {
  std::vector<std::pair<std::string, Tensor>> backbone;
  ParamGroup trimmers{kTrimmerGroup, {}, o.lr * o.trimmer_lr_multiplier, o.trimmer_weight_decay};
  for (const auto& [name, t] : model.params().list) {
    if (is_trimmer_parameter(name)) trimmers.params.push_back(*t);
    else backbone.emplace_back(name, *t);
  }
  std::vector<ParamGroup> groups = decay_groups(backbone, o.lr, o.weight_decay);  // "decay", "no_decay"
  groups.push_back(trimmers);
  std::erase_if(groups, [](const ParamGroup& g) { return g.params.empty(); });
  return groups;
}

SmartTrimTrainer::SmartTrimTrainer(std::unique_ptr<Meter> model, const TrainOptions& options, uint64_t seed)
    : model_(std::move(model)),
      options_(resolved(model_.get(), options)),
      optimizer_(smarttrim_param_groups(*model_, options_), options_.adam),
      rng_(seed) {}

SmartTrimTrainer::SmartTrimTrainer(const MeterConfig& config, const TrainOptions& options, uint64_t model_seed,
                                   uint64_t seed)
    : SmartTrimTrainer(std::make_unique<Meter>(config, model_seed), options, seed) {}

void SmartTrimTrainer::set_options(const TrainOptions& options) {
  if (options.task != options_.task) throw ArgumentError("SmartTrim training: set_options cannot change the task");
  options_ = resolved(model_.get(), options);
  apply_group_rates();
}

double SmartTrimTrainer::target() const { return options_.curriculum.target(step_, options_.total_steps); }

void SmartTrimTrainer::apply_group_rates() {
  for (ParamGroup& g : optimizer_.groups()) {
    const bool trimmers = g.name == kTrimmerGroup;
    g.lr = trimmers ? options_.lr * options_.trimmer_lr_multiplier : options_.lr;
    g.weight_decay = trimmers ? options_.trimmer_weight_decay : g.name == "decay" ? options_.weight_decay : 0.0f;
  }
}

TrainBatch TrainBatch::to(Device device) const {
  auto on = [&](const Tensor& t) { return t.defined() ? t.to(device) : t; };
  return {on(ids), on(mask), on(image), on(image2), on(targets)};
}

void SmartTrimTrainer::move_to(Device device) {
  move_parameters(model_->params(), device);
  optimizer_.move_to(device);
  device_ = device;
}

TrainBatch TrainBatch::examples(int64_t begin, int64_t end) const {
  auto part = [&](const Tensor& t) { return t.defined() ? t.slice_batch(begin, end) : t; };
  return {part(ids), part(mask), part(image), part(image2), part(targets)};
}

namespace {

// A shard of the batch through one training step.
struct Shard {
  int64_t begin = 0, end = 0;              // its examples
  double share = 1;                        // n_k / B: its weight in the batch's means
  TrainBatch batch;                        // those examples (the batch itself when there is one shard)
  Rng own_rng;                             // its noise, when the batch has more than one shard
  std::vector<PassCounts<Tensor>> counts;  // the student's kept counts, one per pass
  ObjectiveTerms terms;                    // its separable terms and rho; without trimmers only task
  std::vector<Node> tape;                  // its forward graph, between the two phases
  LeafGradients grads;                     // its part of the parameters' gradients
};

// f(shard) for every shard, each on a thread of its own where there are
// threads. A shard that fails leaves no graph on its thread's tape; the
// first failure is rethrown once all are done.
template <class F>
void for_each_shard(std::vector<Shard>& shards, const F& f) {
  std::vector<std::exception_ptr> errors(shards.size());
  parallel_jobs(int64_t(shards.size()), use_threads(int64_t(shards.size()), 1), [&](int64_t k) {
    try {
      f(shards[size_t(k)]);
    } catch (...) {
      clear_tape();
      errors[size_t(k)] = std::current_exception();  // an exception must not leave the parallel region
    }
  });
  for (const std::exception_ptr& e : errors)
    if (e) std::rethrow_exception(e);
}

// sum_k share_k value(shard k)
template <class Value>
double shard_mean(const std::vector<Shard>& shards, const Value& value) {
  double sum = 0;
  for (const Shard& s : shards) sum += s.share * value(s);
  return sum;
}

float item_or_zero(const Tensor& t) { return t.defined() ? t.item() : 0.0f; }

// The mean and spread of the whole batch's FLOPs ratios.
void log_ratios(StepLog& log, const std::vector<Shard>& shards) {
  std::vector<float> rho;
  for (const Shard& s : shards) {
    const std::vector<float> part = s.terms.rho.to_vector();
    rho.insert(rho.end(), part.begin(), part.end());
  }
  double sum = 0, sq = 0;
  for (float r : rho) sum += r;
  log.ratio_mean = sum / double(rho.size());
  for (float r : rho) sq += (r - log.ratio_mean) * (r - log.ratio_mean);
  log.ratio_std = std::sqrt(sq / double(rho.size()));
}

// The losses of the whole batch: each term the shards' weighted mean,
// L_cost from the batch's mean ratio (log.ratio_mean, log.target).
void log_terms(StepLog& log, const std::vector<Shard>& shards, bool trimming, const ObjectiveWeights& w) {
  log.task_loss = float(shard_mean(shards, [](const Shard& s) { return s.terms.task.item(); }));
  log.teacher_loss = float(shard_mean(shards, [](const Shard& s) { return item_or_zero(s.terms.teacher_task); }));
  log.distill_loss = float(shard_mean(shards, [](const Shard& s) { return item_or_zero(s.terms.distill); }));
  if (!trimming) {
    log.loss = log.task_loss;
    return;
  }
  const double gap = log.ratio_mean - log.target;
  log.cost_loss = float(gap * gap);
  log.loss = float(double(log.task_loss) + double(w.alpha) * log.teacher_loss + double(w.lambda_sd) * log.distill_loss +
                   double(w.lambda_cost) * log.cost_loss);
}

// Kept tokens and heads per layer: the mean over the batch, over both passes for NLVR2.
void log_kept(StepLog& log, const std::vector<Shard>& shards) {
  auto kept = [&](std::vector<Tensor> PassCounts<Tensor>::*field) {
    std::vector<double> out;
    for (const Shard& s : shards) {
      std::vector<std::vector<double>> per_pass;
      for (const PassCounts<Tensor>& c : s.counts) per_pass.push_back(batch_means(c.*field));
      const std::vector<double> part = mean_of(per_pass);
      out.resize(part.size(), 0.0);
      for (size_t i = 0; i < part.size(); i++) out[i] += s.share * part[i];
    }
    return out;
  };
  log.vit_tokens = kept(&PassCounts<Tensor>::vit_tokens);
  log.text_tokens = kept(&PassCounts<Tensor>::text_tokens);
  log.cross_text_tokens = kept(&PassCounts<Tensor>::cross_text_tokens);
  log.cross_image_tokens = kept(&PassCounts<Tensor>::cross_image_tokens);
  log.text_self_heads = kept(&PassCounts<Tensor>::text_self_heads);
  log.text_cross_heads = kept(&PassCounts<Tensor>::text_cross_heads);
  log.image_self_heads = kept(&PassCounts<Tensor>::image_self_heads);
  log.image_cross_heads = kept(&PassCounts<Tensor>::image_cross_heads);
}

}  // namespace

int SmartTrimTrainer::shard_count(int64_t batch_size) const {
  if (device_ != Device::CPU) return 1;
  return int(std::clamp<int64_t>(options_.batch_shards, 1, std::max<int64_t>(batch_size, 1)));
}

// The step runs in two phases over the shards of the batch: the forward
// passes and each shard's terms, then, once the whole batch's mean FLOPs
// ratio is known (the cost loss needs it), each shard's part of the
// objective and its backward pass. The shards' gradients are then added to
// the parameters' in shard order, so the result does not depend on which
// thread ran which shard, or when.
StepLog SmartTrimTrainer::step(const TrainBatch& batch_anywhere) {
  const Task task = options_.task;
  const TrainBatch batch = batch_anywhere.to(device_);
  if (task == Task::NLVR2 && !batch.image2.defined())
    throw ArgumentError("SmartTrim training: an NLVR2 batch needs image2");
  if (batch.ids.rank() != 2 || batch.ids.dim(0) < 1)
    throw ShapeError("SmartTrim training: expects ids (B, T) with B >= 1, got " + to_string(batch.ids.shape()));
  const Meter& model = *model_;
  const bool trimming = model.config().trim.enabled;
  const ObjectiveWeights& w = options_.objective;
  StepLog log;
  log.step = step_;
  log.target = trimming ? target() : 1.0;
  const int64_t warmup = std::llround(double(options_.warmup_fraction) * double(options_.total_steps));
  log.lr_scale = lr_schedule(step_, warmup, options_.total_steps, Decay::Linear);
  const bool noise_free = double(step_) >= (1.0 - double(options_.noise_free_fraction)) * double(options_.total_steps);

  const int64_t B = batch.ids.dim(0);
  std::vector<Shard> shards(size_t(shard_count(B)));
  for (size_t k = 0; k < shards.size(); k++) {
    Shard& s = shards[k];
    s.begin = B * int64_t(k) / int64_t(shards.size());
    s.end = B * int64_t(k + 1) / int64_t(shards.size());
    s.share = double(s.end - s.begin) / double(B);
    if (shards.size() == 1) {
      s.batch = batch;
    } else {
      s.batch = batch.examples(s.begin, s.end);
      s.own_rng = rng_.split(k);
    }
  }

  // Phase 1: the forward passes. Dropout and the Gumbel noise draw from the
  // shard's Rng (the run's own when there is one shard), student pass first.
  for_each_shard(shards, [&](Shard& s) {
    Rng& rng = shards.size() == 1 ? rng_ : s.own_rng;
    const Context ctx = options_.dropout ? Context{true, &rng} : Context{false, nullptr};
    TrimOptions student_trim;
    student_trim.active = true;
    student_trim.noise = options_.noise_free_fraction > 0 && noise_free ? nullptr : &rng;
    TrimOptions teacher_trim;
    teacher_trim.active = false;
    // The student and the teacher start from the same image tokens (Meter::ImageTokens).
    const Meter::ImageTokens image = model.image_tokens(s.batch.image);
    const Meter::ImageTokens image2 = task == Task::NLVR2 ? model.image_tokens(s.batch.image2) : Meter::ImageTokens{};
    // logits of one model run (both images for NLVR2); counts collects each pass's kept counts
    auto run = [&](const TrimOptions& trim, std::vector<PassCounts<Tensor>>& counts) {
      MeterFeatures first = model.forward(s.batch.ids, s.batch.mask, image, ctx, 1, &trim);
      counts.push_back(first.counts);
      if (task != Task::NLVR2) return head_logits(model, task, first.cls);
      MeterFeatures second = model.forward(s.batch.ids, s.batch.mask, image2, ctx, 2, &trim);
      counts.push_back(second.counts);
      return model.nlvr2_logits(first.cls, second.cls);
    };
    std::vector<PassCounts<Tensor>> teacher_counts;
    if (!trimming) {
      s.terms.task = task_loss(task, run(teacher_trim, teacher_counts), s.batch.targets);
    } else {
      const Tensor student_logits = run(student_trim, s.counts);
      Tensor teacher_logits;
      if (w.alpha != 0) {
        teacher_logits = run(teacher_trim, teacher_counts);
      } else if (w.self_distillation) {
        NoGrad no_grad;  // only a target: no graph
        teacher_logits = run(teacher_trim, teacher_counts);
      }
      s.terms = separable_terms(model.config(), task, student_logits, teacher_logits, s.batch.targets, s.counts,
                                s.batch.mask, w);
    }
    s.tape = take_tape();
  });
  if (shards.size() > 1) rng_.take(1);  // the next step's shards split from another state

  if (trimming) log_ratios(log, shards);
  else log.ratio_mean = 1.0;
  const double cost_slope = 2.0 * (log.ratio_mean - log.target) / double(B);  // dL_cost / drho_b

  // Phase 2: each shard's part of the objective, and its backward pass.
  for_each_shard(shards, [&](Shard& s) {
    put_tape(std::move(s.tape));
    LeafGradientScope into(s.grads);
    const Tensor part = trimming ? shard_objective(s.terms, s.share, cost_slope, w) : s.terms.task * float(s.share);
    part.backward();
  });
  for (Shard& s : shards) s.grads.add_to_leaves();

  log_terms(log, shards, trimming, w);
  if (trimming) log_kept(log, shards);
  update(log);
  return log;
}

void SmartTrimTrainer::update(StepLog& log) {
  // The trimmers and the backbone are clipped apart: the straight-through
  // gradient of a mask can be orders of magnitude above the task gradient
  // (a dropped key that would dominate its row's softmax), and one global
  // norm would then scale the backbone's update down to nothing.
  std::vector<Tensor> backbone, trimmers;
  for (const ParamGroup& g : optimizer_.groups()) {
    std::vector<Tensor>& to = g.name == kTrimmerGroup ? trimmers : backbone;
    to.insert(to.end(), g.params.begin(), g.params.end());
  }
  const float limit = options_.clip_norm > 0 ? options_.clip_norm : std::numeric_limits<float>::infinity();
  log.grad_norm = clip_grad_norm(backbone, limit);
  log.trimmer_grad_norm = trimmers.empty() ? 0.0f : clip_grad_norm(trimmers, limit);
  optimizer_.step(log.lr_scale);
  optimizer_.zero_grad();
  step_++;
}

// --- checkpoints

void SmartTrimTrainer::save_checkpoint(const std::string& path) {
  checkpoint::TrainingState state;
  state.step = step_;
  state.rng = rng_;
  state.extra[kOptionsKey] = train_options_to_json(options_);
  checkpoint::save(path, model_->params().list, optimizer_, state, model_->config().to_json());
}

void SmartTrimTrainer::resume(const std::string& path) {
  // Everything that can fail is checked before anything changes.
  const checkpoint::Info info = checkpoint::read_info(path);
  const std::string where = "checkpoint '" + path + "'";
  if (meter_config_from_json(info.model_config, where + ": model_config").to_json() != model_->config().to_json())
    throw ArgumentError(where + ": its model config differs from this trainer's model");
  auto it = info.state.extra.find(kOptionsKey);
  if (it == info.state.extra.end()) throw FormatError(where + ": no '" + kOptionsKey + "' entry (training options)");
  const TrainOptions options = train_options_from_json(it->second, where + ": " + kOptionsKey);
  checked(model_.get(), options);

  const checkpoint::TrainingState state = checkpoint::load(path, model_->params().list, optimizer_);
  options_ = options;
  apply_group_rates();
  rng_ = state.rng;
  step_ = state.step;
}

std::unique_ptr<SmartTrimTrainer> SmartTrimTrainer::from_checkpoint(const std::string& path) {
  const checkpoint::Info info = checkpoint::read_info(path);
  const std::string where = "checkpoint '" + path + "'";
  const MeterConfig config = meter_config_from_json(info.model_config, where + ": model_config");
  auto it = info.state.extra.find(kOptionsKey);
  if (it == info.state.extra.end()) throw FormatError(where + ": no '" + kOptionsKey + "' entry (training options)");
  std::unique_ptr<Meter> model;
  {
    SkipInit skip;  // every value comes from the file
    model = std::make_unique<Meter>(config);
  }
  auto trainer = std::make_unique<SmartTrimTrainer>(std::move(model),
                                                    train_options_from_json(it->second, where + ": " + kOptionsKey), 0);
  trainer->resume(path);
  return trainer;
}

// --- options as JSON

std::string train_options_to_json(const TrainOptions& o) {
  nlohmann::ordered_json j;
  j["task"] = task_key(o.task);
  j["total_steps"] = o.total_steps;
  j["lr"] = o.lr;
  j["trimmer_lr_multiplier"] = o.trimmer_lr_multiplier;
  j["weight_decay"] = o.weight_decay;
  j["trimmer_weight_decay"] = o.trimmer_weight_decay;
  j["warmup_fraction"] = o.warmup_fraction;
  j["clip_norm"] = o.clip_norm;
  j["adam"] = {{"beta1", o.adam.beta1}, {"beta2", o.adam.beta2}, {"eps", o.adam.eps}};
  j["objective"] = {{"alpha", o.objective.alpha},
                    {"lambda_sd", o.objective.lambda_sd},
                    {"lambda_cost", o.objective.lambda_cost},
                    {"temperature", o.objective.temperature},
                    {"self_distillation", o.objective.self_distillation}};
  j["curriculum"] = {
      {"goal", o.curriculum.goal}, {"fraction", o.curriculum.fraction}, {"enabled", o.curriculum.enabled}};
  j["dropout"] = o.dropout;
  j["noise_free_fraction"] = o.noise_free_fraction;
  j["batch_shards"] = o.batch_shards;
  return j.dump();
}

TrainOptions train_options_from_json(const std::string& text, const std::string& where) {
  TrainOptions o;
  try {
    const nlohmann::json j = nlohmann::json::parse(text);
    const std::string task = j.at("task").get<std::string>();
    bool known = false;
    for (Task t : {Task::VQA, Task::SNLI, Task::ITM, Task::NLVR2, Task::Rank, Task::None})
      if (task == task_key(t)) o.task = t, known = true;
    if (!known) throw FormatError(where + ": unknown task '" + task + "'");
    o.total_steps = j.at("total_steps").get<int64_t>();
    o.lr = j.at("lr").get<float>();
    o.trimmer_lr_multiplier = j.at("trimmer_lr_multiplier").get<float>();
    o.weight_decay = j.at("weight_decay").get<float>();
    o.trimmer_weight_decay = j.at("trimmer_weight_decay").get<float>();
    o.warmup_fraction = j.at("warmup_fraction").get<float>();
    o.clip_norm = j.at("clip_norm").get<float>();
    const auto& adam = j.at("adam");
    o.adam.beta1 = adam.at("beta1").get<float>();
    o.adam.beta2 = adam.at("beta2").get<float>();
    o.adam.eps = adam.at("eps").get<float>();
    const auto& obj = j.at("objective");
    o.objective.alpha = obj.at("alpha").get<float>();
    o.objective.lambda_sd = obj.at("lambda_sd").get<float>();
    o.objective.lambda_cost = obj.at("lambda_cost").get<float>();
    o.objective.temperature = obj.at("temperature").get<float>();
    o.objective.self_distillation = obj.at("self_distillation").get<bool>();
    const auto& cur = j.at("curriculum");
    o.curriculum.goal = cur.at("goal").get<double>();
    o.curriculum.fraction = cur.at("fraction").get<double>();
    o.curriculum.enabled = cur.at("enabled").get<bool>();
    o.dropout = j.at("dropout").get<bool>();
    o.noise_free_fraction = j.value("noise_free_fraction", 0.0f);  // absent from older checkpoints
    o.batch_shards = j.value("batch_shards", 1);                    // older runs were one shard
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(where + ": " + e.what());
  }
  return o;
}

}  // namespace st
