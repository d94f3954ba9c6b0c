// Training checkpoints: the model's parameters, AdamW's moments and step
// count, the run's RNG state and free-form training state, in one file of
// the weights format (weights/format.h), written atomically.
//
// Tensors:
//   <param name>               every trainable parameter, under the model's own name
//   optimizer.m.<param name>   AdamW's first moment of that parameter
//   optimizer.v.<param name>   AdamW's second moment
// Metadata (all strings, integers in decimal):
//   kind             "checkpoint"
//   model_config     the model's config as JSON text, given by the caller
//   step             the training loop's step
//   optimizer_steps  AdamW's own step count (its bias corrections depend on it;
//                    it differs from step under gradient accumulation)
//   rng_seed, rng_offset   the run's Rng
//   anything else    the caller's extra entries (curriculum state, trimmer config, ...)
//
// The config lives under "model_config", not "config": `smarttrim inspect`
// checks a file with a "config" entry against a METER model, which would
// reject the optimizer tensors. inspect still reads a checkpoint (format,
// metadata, tensors) without that check.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "engine/optim.h"
#include "engine/rng.h"
#include "engine/tensor.h"

namespace st::checkpoint {

constexpr const char* kKind = "checkpoint";
constexpr const char* kFirstMomentPrefix = "optimizer.m.";
constexpr const char* kSecondMomentPrefix = "optimizer.v.";

// A model's trainable parameters under their names: NamedParams::list
// (layers/basic.h), e.g. model.params().list.
using NamedTensors = std::vector<std::pair<std::string, Tensor*>>;

// Everything about a run that is not a tensor.
struct TrainingState {
  int64_t step = 0;  // of the training loop
  Rng rng;
  std::map<std::string, std::string> extra;  // keys may not be one of the reserved metadata keys above, nor "config"
};

// Writes params, opt's moments and step count, state and the config to
// path (through path + ".tmp" and a rename: a failed or killed save leaves
// any earlier checkpoint at path intact). The optimizer's parameters must be
// exactly the named ones, each once: anything else is an ArgumentError, as
// are a reserved extra key and a parameter name starting with "optimizer.".
// opt is not modified (its accessors are not const).
void save(const std::string& path, const NamedTensors& params, AdamW& opt, const TrainingState& state,
          const std::string& model_config_json);

// Checks the whole file first: every parameter and both moments present as
// F32 with the parameter's shape, no other tensors, and the metadata
// present and well-formed. Any problem is one FormatError naming the file
// and listing the problems, and then nothing has changed. Otherwise copies
// the values into the existing parameter and moment buffers (the model and
// the optimizer keep their tensor handles), sets opt's step count and
// returns the training state. params and opt must correspond as for save
// (ArgumentError), and live on the CPU (DeviceError).
TrainingState load(const std::string& path, const NamedTensors& params, AdamW& opt);

// What a checkpoint says about its run, without a model: for resuming,
// which must build the model from model_config before it can call load().
struct Info {
  TrainingState state;
  int64_t optimizer_steps = 0;
  std::string model_config;
};
Info read_info(const std::string& path);  // FormatError when not a well-formed checkpoint

}  // namespace st::checkpoint
