// Training checkpoints: see weights/checkpoint.h.
#include "weights/checkpoint.h"

#include <algorithm>
#include <cstring>
#include <set>

#include "engine/error.h"
#include "weights/format.h"

namespace st::checkpoint {

namespace {

// Metadata keys this file owns; "format" and "format_version" belong to the
// weights format. None of them may be a caller's extra entry.
const std::set<std::string>& own_keys() {
  static const std::set<std::string> keys = {"format", "format_version", "kind",       "model_config",
                                             "step",   "optimizer_steps", "rng_seed", "rng_offset"};
  return keys;
}

bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

// The name of every optimizer slot (AdamW's moments are per parameter, in
// group order), found by tensor identity. The optimizer must hold exactly
// the named parameters, each once, or moments would be saved under the
// wrong names or not at all.
std::vector<std::string> slot_names(const NamedTensors& params, AdamW& opt, const std::string& who) {
  std::map<const TensorImpl*, std::string> name_of;
  std::set<std::string> names;
  for (const auto& [name, t] : params) {
    if (!t || !t->defined()) throw ArgumentError(who + ": parameter '" + name + "' is undefined");
    if (name.empty() || starts_with(name, "optimizer.") || starts_with(name, "__"))
      throw ArgumentError(who + ": invalid parameter name '" + name +
                          "' (empty, or starts with the reserved 'optimizer.' or '__')");
    if (!names.insert(name).second) throw ArgumentError(who + ": duplicate parameter name '" + name + "'");
    if (!name_of.emplace(t->impl(), name).second)
      throw ArgumentError(who + ": parameter '" + name + "' is the same tensor as '" + name_of[t->impl()] + "'");
  }
  std::vector<std::string> slots;
  std::set<std::string> seen;
  for (ParamGroup& g : opt.groups())
    for (const Tensor& p : g.params) {
      auto it = name_of.find(p.impl());
      if (it == name_of.end())
        throw ArgumentError(who + ": optimizer group '" + g.name + "' holds a " + p.describe() +
                            " parameter that is not among the named parameters");
      if (!seen.insert(it->second).second)
        throw ArgumentError(who + ": parameter '" + it->second + "' appears twice in the optimizer");
      slots.push_back(it->second);
    }
  for (const auto& [name, t] : params)
    if (!seen.count(name)) throw ArgumentError(who + ": parameter '" + name + "' is not in the optimizer");
  if (opt.first_moments().size() != slots.size() || opt.second_moments().size() != slots.size())
    throw ArgumentError(who + ": the optimizer has " + std::to_string(opt.first_moments().size()) + " and " +
                        std::to_string(opt.second_moments().size()) + " moments for " +
                        std::to_string(slots.size()) + " parameters");
  return slots;
}

// Strict decimal: digits only, no sign or spaces, no overflow.
bool parse_u64(const std::string& text, uint64_t& out) {
  if (text.empty() || text.size() > 20) return false;
  uint64_t v = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
    const uint64_t d = uint64_t(c - '0');
    if (v > (UINT64_MAX - d) / 10) return false;
    v = v * 10 + d;
  }
  out = v;
  return true;
}

// Reads the metadata, adding every problem to `problems` instead of stopping
// at the first, so one error message lists them all.
Info parse_metadata(const weights::WeightsFile& file, std::vector<std::string>& problems) {
  const auto& meta = file.metadata();
  auto text = [&](const std::string& key) -> const std::string* {
    auto it = meta.find(key);
    if (it == meta.end()) {
      problems.push_back("metadata '" + key + "' is missing");
      return nullptr;
    }
    return &it->second;
  };
  auto number = [&](const std::string& key, uint64_t limit) -> uint64_t {
    const std::string* s = text(key);
    uint64_t v = 0;
    if (s && (!parse_u64(*s, v) || v > limit)) {
      problems.push_back("metadata '" + key + "' is '" + *s + "', expected a decimal integer up to " +
                         std::to_string(limit));
      v = 0;
    }
    return v;
  };
  Info info;
  if (const std::string* kind = text("kind"); kind && *kind != kKind)
    problems.push_back("metadata 'kind' is '" + *kind + "', expected '" + kKind + "'");
  if (const std::string* config = text("model_config")) info.model_config = *config;
  info.state.step = int64_t(number("step", INT64_MAX));
  info.optimizer_steps = int64_t(number("optimizer_steps", INT64_MAX));
  info.state.rng.seed = number("rng_seed", UINT64_MAX);
  info.state.rng.offset = number("rng_offset", UINT64_MAX);
  for (const auto& [k, v] : meta)
    if (!own_keys().count(k)) info.state.extra[k] = v;
  return info;
}

[[noreturn]] void fail(const std::string& path, const std::vector<std::string>& problems) {
  std::string msg = "checkpoint '" + path + "' cannot be loaded: ";
  const size_t shown = std::min<size_t>(problems.size(), 8);
  for (size_t i = 0; i < shown; i++) msg += (i ? "; " : "") + problems[i];
  if (problems.size() > shown) msg += "; and " + std::to_string(problems.size() - shown) + " more";
  throw FormatError(msg);
}

}  // namespace

void save(const std::string& path, const NamedTensors& params, AdamW& opt, const TrainingState& state,
          const std::string& model_config_json) {
  const std::vector<std::string> slots = slot_names(params, opt, "checkpoint::save");
  if (state.step < 0) throw ArgumentError("checkpoint::save: negative step " + std::to_string(state.step));
  if (opt.steps() < 0)
    throw ArgumentError("checkpoint::save: negative optimizer step count " + std::to_string(opt.steps()));

  std::map<std::string, std::string> meta;
  for (const auto& [k, v] : state.extra) {
    // "config" would make `smarttrim inspect` check the file as a model and reject the moments.
    if (own_keys().count(k) || k == "config")
      throw ArgumentError("checkpoint::save: extra entry '" + k + "' uses a reserved metadata key");
    meta[k] = v;
  }
  meta["kind"] = kKind;
  meta["model_config"] = model_config_json;
  meta["step"] = std::to_string(state.step);
  meta["optimizer_steps"] = std::to_string(opt.steps());
  meta["rng_seed"] = std::to_string(state.rng.seed);
  meta["rng_offset"] = std::to_string(state.rng.offset);

  // Tensor handles share their buffers: this list copies no values.
  std::vector<std::pair<std::string, Tensor>> tensors;
  tensors.reserve(params.size() * 3);
  for (const auto& [name, t] : params) tensors.emplace_back(name, *t);
  for (size_t i = 0; i < slots.size(); i++) tensors.emplace_back(kFirstMomentPrefix + slots[i], opt.first_moments()[i]);
  for (size_t i = 0; i < slots.size(); i++) tensors.emplace_back(kSecondMomentPrefix + slots[i], opt.second_moments()[i]);
  weights::save(path, tensors, meta);
}

TrainingState load(const std::string& path, const NamedTensors& params, AdamW& opt) {
  const std::vector<std::string> slots = slot_names(params, opt, "checkpoint::load");
  for (const auto& [name, t] : params)
    if (t->device() != Device::CPU)
      throw DeviceError("checkpoint::load: parameter '" + name + "' is on " + st::name(t->device()) +
                        "; load into CPU parameters, then move them");

  weights::WeightsFile file(path);
  std::vector<std::string> problems;
  Info info = parse_metadata(file, problems);

  // Each file tensor and the buffer it fills, checked before anything is written.
  std::vector<std::pair<std::string, Tensor>> targets;
  std::set<std::string> expected;
  auto expect = [&](const std::string& name, const Tensor& dest) {
    expected.insert(name);
    if (!file.contains(name)) {
      problems.push_back("missing '" + name + "'");
      return;
    }
    const weights::Entry& e = file.entry(name);
    if (e.dtype != dest.dtype() || e.shape != dest.shape()) {
      problems.push_back("'" + name + "' is " + weights::dtype_tag(e.dtype) + to_string(e.shape) + ", the model wants " +
                         weights::dtype_tag(dest.dtype()) + to_string(dest.shape()));
      return;
    }
    targets.emplace_back(name, dest);
  };
  for (const auto& [name, t] : params) expect(name, *t);
  for (size_t i = 0; i < slots.size(); i++) expect(kFirstMomentPrefix + slots[i], opt.first_moments()[i]);
  for (size_t i = 0; i < slots.size(); i++) expect(kSecondMomentPrefix + slots[i], opt.second_moments()[i]);
  for (const weights::Entry& e : file.entries())
    if (!expected.count(e.name)) problems.push_back("unexpected '" + e.name + "'");
  if (!problems.empty()) fail(path, problems);

  for (auto& [name, dest] : targets) {
    Tensor values = file.get(name);
    dest.copy_from(values);
  }
  opt.set_steps(info.optimizer_steps);
  return info.state;
}

Info read_info(const std::string& path) {
  weights::WeightsFile file(path);
  std::vector<std::string> problems;
  Info info = parse_metadata(file, problems);
  if (!problems.empty()) fail(path, problems);
  return info;
}

}  // namespace st::checkpoint
