#include "pruning/train.h"

#include <cmath>
#include <cstdio>
#include <limits>
#include <nlohmann/json.hpp>

#include "engine/error.h"
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
      options_(checked(model_.get(), options)),
      optimizer_(smarttrim_param_groups(*model_, options_), options_.adam),
      rng_(seed) {}

SmartTrimTrainer::SmartTrimTrainer(const MeterConfig& config, const TrainOptions& options, uint64_t model_seed,
                                   uint64_t seed)
    : SmartTrimTrainer(std::make_unique<Meter>(config, model_seed), options, seed) {}

void SmartTrimTrainer::set_options(const TrainOptions& options) {
  if (options.task != options_.task) throw ArgumentError("SmartTrim training: set_options cannot change the task");
  options_ = checked(model_.get(), options);
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

StepLog SmartTrimTrainer::step(const TrainBatch& batch_anywhere) {
  const Task task = options_.task;
  const TrainBatch batch = batch_anywhere.to(device_);
  if (task == Task::NLVR2 && !batch.image2.defined())
    throw ArgumentError("SmartTrim training: an NLVR2 batch needs image2");
  const Meter& model = *model_;
  StepLog log;
  log.step = step_;
  log.target = target();
  const int64_t warmup = std::llround(double(options_.warmup_fraction) * double(options_.total_steps));
  log.lr_scale = lr_schedule(step_, warmup, options_.total_steps, Decay::Linear);

  // Dropout and the Gumbel noise draw from the same Rng, student pass first.
  const Context ctx = options_.dropout ? Context{true, &rng_} : Context{false, nullptr};
  TrimOptions student_trim;
  student_trim.active = true;
  const bool noise_free = double(step_) >= (1.0 - double(options_.noise_free_fraction)) * double(options_.total_steps);
  student_trim.noise = options_.noise_free_fraction > 0 && noise_free ? nullptr : &rng_;
  TrimOptions teacher_trim;
  teacher_trim.active = false;

  // logits of one model run (both images for NLVR2); counts collects each pass's kept counts
  auto run = [&](const TrimOptions& trim, std::vector<PassCounts<Tensor>>& counts) {
    MeterFeatures first = model.forward(batch.ids, batch.mask, batch.image, ctx, 1, &trim);
    counts.push_back(first.counts);
    if (task != Task::NLVR2) return head_logits(model, task, first.cls);
    MeterFeatures second = model.forward(batch.ids, batch.mask, batch.image2, ctx, 2, &trim);
    counts.push_back(second.counts);
    return model.nlvr2_logits(first.cls, second.cls);
  };

  // A failure before backward() (a malformed batch) must not leave a half-recorded graph on the tape.
  struct TapeGuard {
    bool armed = true;
    ~TapeGuard() {
      if (armed) clear_tape();
    }
  } tape_guard;

  std::vector<PassCounts<Tensor>> student_counts, teacher_counts;
  if (!model.config().trim.enabled) {
    plain_step(batch, run(teacher_trim, teacher_counts), log);
    tape_guard.armed = false;
    return log;
  }
  const Tensor student_logits = run(student_trim, student_counts);
  Tensor teacher_logits;
  const ObjectiveWeights& w = options_.objective;
  if (w.alpha != 0) {
    teacher_logits = run(teacher_trim, teacher_counts);
  } else if (w.self_distillation) {
    NoGrad no_grad;  // only a target: no graph
    teacher_logits = run(teacher_trim, teacher_counts);
  }

  ObjectiveTerms terms = smarttrim_objective(model.config(), task, student_logits, teacher_logits, batch.targets,
                                             student_counts, batch.mask, log.target, w);
  log.loss = terms.total.item();
  log.task_loss = terms.task.item();
  log.teacher_loss = terms.teacher_task.defined() ? terms.teacher_task.item() : 0.0f;
  log.distill_loss = terms.distill.defined() ? terms.distill.item() : 0.0f;
  log.cost_loss = terms.cost.item();
  const std::vector<float> rho = terms.rho.to_vector();
  double sum = 0, sq = 0;
  for (float r : rho) sum += r;
  log.ratio_mean = sum / double(rho.size());
  for (float r : rho) sq += (r - log.ratio_mean) * (r - log.ratio_mean);
  log.ratio_std = std::sqrt(sq / double(rho.size()));
  auto kept = [&](std::vector<Tensor> PassCounts<Tensor>::*field) {
    std::vector<std::vector<double>> per_pass;
    for (const PassCounts<Tensor>& c : student_counts) per_pass.push_back(batch_means(c.*field));
    return mean_of(per_pass);
  };
  log.vit_tokens = kept(&PassCounts<Tensor>::vit_tokens);
  log.text_tokens = kept(&PassCounts<Tensor>::text_tokens);
  log.cross_text_tokens = kept(&PassCounts<Tensor>::cross_text_tokens);
  log.cross_image_tokens = kept(&PassCounts<Tensor>::cross_image_tokens);
  log.text_self_heads = kept(&PassCounts<Tensor>::text_self_heads);
  log.text_cross_heads = kept(&PassCounts<Tensor>::text_cross_heads);
  log.image_self_heads = kept(&PassCounts<Tensor>::image_self_heads);
  log.image_cross_heads = kept(&PassCounts<Tensor>::image_cross_heads);

  tape_guard.armed = false;
  update(terms.total, log);
  return log;
}

void SmartTrimTrainer::plain_step(const TrainBatch& batch, const Tensor& logits, StepLog& log) {
  const Tensor loss = task_loss(options_.task, logits, batch.targets);
  log.loss = log.task_loss = loss.item();
  log.target = log.ratio_mean = 1;
  update(loss, log);
}

void SmartTrimTrainer::update(const Tensor& loss, StepLog& log) {
  loss.backward();
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
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(where + ": " + e.what());
  }
  return o;
}

}  // namespace st
