// One SmartTrim training step and the trainer that runs them (SMARTTRIM.md
// sections 5-9).
//
// A step:
//   student: the trimmed pass, Gumbel noise on every mask (hard 0/1 forward,
//            straight-through backward), dropout on                -> z_S, kept counts
//   teacher: the same weights at full capacity (no trimmer runs)    -> z_T
//   L = L_task(z_S) + alpha L_task(z_T) + lambda_SD L_SD + lambda_cost (mean rho - target(t))^2
//   backward, clip the global gradient norm, AdamW with the schedule's lr.
//
// Parameter groups: the backbone (and heads) split into decayed matrices and
// undecayed vectors (decay_groups), and the trimmers ("smarttrim.*") in
// their own group at a higher learning rate: they start from scratch while
// the backbone is (normally) pretrained.
//
// A model whose config has no trimmers trains the same way without them: a
// step is one full-capacity pass and L = L_task (plain fine-tuning, or
// training from scratch), so one trainer, log and checkpoint serve both.
//
// Every random draw (dropout, Gumbel noise) comes from the trainer's one
// Rng, in a fixed order, so a run is a pure function of its seed, its
// batches and its initial weights; a checkpoint stores the Rng with the
// weights and AdamW's moments, so resuming repeats the uninterrupted run
// bit for bit on the CPU.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/optim.h"
#include "engine/rng.h"
#include "layers/meter.h"
#include "pruning/curriculum.h"
#include "pruning/objective.h"

namespace st {

// One batch of any supported task.
struct TrainBatch {
  Tensor ids;      // i32 (B, T), padded with the config's pad_token_id
  Tensor mask;     // f32 (B, T), 1 for real tokens
  Tensor image;    // f32 (B, 3, S, S)
  Tensor image2;   // f32 (B, 3, S, S): NLVR2's second image; undefined otherwise
  Tensor targets;  // VQA: f32 soft scores (B, answers); SNLI, ITM, NLVR2: i32 labels (B)
  TrainBatch to(Device device) const;  // every defined tensor on `device` (those already there are shared)
  TrainBatch examples(int64_t begin, int64_t end) const;  // examples [begin, end), copied
};

struct TrainOptions {
  Task task = Task::VQA;                // VQA, SNLI, ITM or NLVR2
  int64_t total_steps = 1000;           // T of the schedule and the curriculum
  float lr = 1e-4f;                     // the backbone's base learning rate
  float trimmer_lr_multiplier = 10.0f;  // the trimmers' lr = lr * this
  float weight_decay = 0.01f;           // the backbone's matrices
  float trimmer_weight_decay = 0.0f;    // the trimmers (small modules trained from scratch)
  float warmup_fraction = 0.1f;         // of total_steps, then linear decay to 0
  float clip_norm = 1.0f;               // global gradient norm; <= 0: no clipping
  AdamWConfig adam;                     // betas 0.9 / 0.98, METER's
  ObjectiveWeights objective;           // alpha, lambda_SD, lambda_cost, T, the self-distillation switch
  Curriculum curriculum;                // goal rho*, fraction p, the curriculum switch
  bool dropout = true;                  // dropout in both passes (the config's rate)
  // The last this fraction of the steps draws no Gumbel noise: the masks are
  // the inference rule (keep iff logit > 0) with their straight-through
  // gradients, so the model ends trained on the masks it will be run with.
  float noise_free_fraction = 0.0f;
  // The batch is split into this many shards of consecutive examples, whose
  // passes run side by side, one thread each, every op inside on that one
  // thread (on the CPU; elsewhere one shard). A small model's ops are too
  // small to share out op by op. 0: one shard per OpenMP thread, resolved
  // when the trainer is made. Each shard draws its noise from its own Rng
  // (Rng::split), so a run repeats bit for bit for a given number of shards
  // and a given batch, whatever the number of threads.
  int batch_shards = 0;
};

// What one step did. Losses are the values before the update.
struct StepLog {
  int64_t step = 0;                      // 0-based index of this step
  float lr_scale = 0;                    // the schedule's multiplier of every group's lr
  float loss = 0;                        // the whole objective
  float task_loss = 0;                   // L_task(z_S)
  float teacher_loss = 0;                // L_task(z_T); 0 without a teacher pass
  float distill_loss = 0;                // L_SD; 0 when switched off
  float cost_loss = 0;                   // L_cost
  float grad_norm = 0;                   // the backbone's, before clipping
  float trimmer_grad_norm = 0;           // the trimmers' (clipped apart), before clipping
  double target = 1;                     // rho_target(t)
  double ratio_mean = 0, ratio_std = 0;  // of rho_b over the batch (std: population, over B)
  // Kept tokens and heads, mean over the batch (NLVR2: over both passes), per layer.
  std::vector<double> vit_tokens, text_tokens;                // entering each ViT block / RoBERTa layer
  std::vector<double> cross_text_tokens, cross_image_tokens;  // entering each co-attention layer
  std::vector<double> text_self_heads, text_cross_heads;      // per co-attention layer
  std::vector<double> image_self_heads, image_cross_heads;

  // One line, e.g.
  //   step 119 lr 0.009 loss 5.1835 task 2.4610 teacher 2.4609 sd 0.2616 cost 0.00004 | flops 0.593+-0.052
  //   target 0.600 | vit 17.0 9.1 | text 5.0 5.0 | xt 5.0 5.0 | xv 9.1 5.1 | heads 2.1/3.9/2.5/4.0 2.8/1.4/1.2/4.0
  // vit, text, xt, xv: kept tokens per layer (xt/xv: co-attention text/image);
  // heads: per co-attention layer, text MSA/text MCA/image MSA/image MCA.
  std::string line() const;
};

// The parameter groups of SmartTrim's recipe: "decay", "no_decay" (the
// backbone through decay_groups) and "trimmers" (every "smarttrim." name),
// each parameter in exactly one. Empty groups are left out.
inline constexpr const char* kTrimmerGroup = "trimmers";
std::vector<ParamGroup> smarttrim_param_groups(const Meter& model, const TrainOptions& options);

class SmartTrimTrainer {
 public:
  // Trains `model` (e.g. loaded from a METER checkpoint), with its trimmers if its config has them.
  // seed: the run's Rng (dropout and Gumbel noise).
  SmartTrimTrainer(std::unique_ptr<Meter> model, const TrainOptions& options, uint64_t seed);
  // A freshly initialised model from config and model_seed.
  SmartTrimTrainer(const MeterConfig& config, const TrainOptions& options, uint64_t model_seed, uint64_t seed);

  // One training step on batch (on any device: it is copied to the model's);
  // the step count advances by one.
  StepLog step(const TrainBatch& batch);
  // Moves the model's parameters and the optimizer's state to `device`; the
  // steps that follow run there. Checkpoints are the same files on any device.
  void move_to(Device device);
  Device device() const { return device_; }

  // Weights, AdamW's moments and step count, the Rng, the step and the
  // options (metadata "smarttrim_train", JSON) in one checkpoint file.
  void save_checkpoint(const std::string& path);
  // Restores all of that into this trainer: the file's model config must
  // equal this model's (ArgumentError otherwise); the options become the
  // file's. A failed load (FormatError) changes nothing.
  void resume(const std::string& path);
  // A trainer built from a checkpoint alone: the model from its config, then resume().
  static std::unique_ptr<SmartTrimTrainer> from_checkpoint(const std::string& path);

  Meter& model() { return *model_; }
  const Meter& model() const { return *model_; }
  AdamW& optimizer() { return optimizer_; }
  const TrainOptions& options() const { return options_; }
  // New options for the steps to come (e.g. a longer run after a resume); the task must stay.
  void set_options(const TrainOptions& options);
  Rng& rng() { return rng_; }
  int64_t step_count() const { return step_; }
  // The shards a batch of this size is split into: batch_shards, at most
  // one per example; one off the CPU.
  int shard_count(int64_t batch_size) const;
  double target() const;  // the curriculum's target for the next step

 private:
  void apply_group_rates();  // lr and weight decay of each group from options_
  void update(StepLog& log);  // clip, AdamW, next step

  std::unique_ptr<Meter> model_;
  TrainOptions options_;
  AdamW optimizer_;
  Rng rng_;
  int64_t step_ = 0;
  Device device_ = Device::CPU;
};

// The options as JSON text and back (the checkpoint's "smarttrim_train"
// entry). Floats round-trip exactly. Throws FormatError on bad text.
std::string train_options_to_json(const TrainOptions& options);
TrainOptions train_options_from_json(const std::string& text, const std::string& where);

}  // namespace st
