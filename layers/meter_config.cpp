#include "layers/meter_config.h"

#include <algorithm>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/error.h"

namespace st {

namespace {

// One table drives parsing, checking and printing, so the three never drift.
struct Field {
  const char* key;
  std::function<void(MeterConfig&, const nlohmann::json&, const std::string&)> read;
  std::function<nlohmann::ordered_json(const MeterConfig&)> write;
};

template <typename T>
Field field(const char* key, T MeterConfig::*member) {
  Field f;
  f.key = key;
  f.read = [key, member](MeterConfig& c, const nlohmann::json& v, const std::string& where) {
    auto bad = [&](const std::string& want) {
      return FormatError(where + ": '" + key + "' must be " + want + ", got " + v.dump());
    };
    if constexpr (std::is_same_v<T, bool>) {
      if (!v.is_boolean()) throw bad("true or false");
      c.*member = v.get<bool>();
    } else if constexpr (std::is_same_v<T, int>) {
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > (1 << 30))
        throw bad("a non-negative integer");
      c.*member = v.get<int>();
    } else {
      if (!v.is_number() || v.get<double>() < 0) throw bad("a non-negative number");
      c.*member = v.get<float>();
    }
  };
  f.write = [member](const MeterConfig& c) { return nlohmann::ordered_json(c.*member); };
  return f;
}

const std::vector<Field>& fields() {
  static const std::vector<Field> table = {
      field("hidden_size", &MeterConfig::hidden_size),
      field("num_heads", &MeterConfig::num_heads),
      field("ffn_size", &MeterConfig::ffn_size),
      field("num_cross_layers", &MeterConfig::num_cross_layers),
      field("cross_layer_norm_eps", &MeterConfig::cross_layer_norm_eps),
      field("num_token_types", &MeterConfig::num_token_types),
      field("vit_width", &MeterConfig::vit_width),
      field("vit_heads", &MeterConfig::vit_heads),
      field("vit_layers", &MeterConfig::vit_layers),
      field("vit_ffn_size", &MeterConfig::vit_ffn_size),
      field("vit_patch_size", &MeterConfig::vit_patch_size),
      field("vit_image_size", &MeterConfig::vit_image_size),
      field("vit_layer_norm_eps", &MeterConfig::vit_layer_norm_eps),
      field("text_width", &MeterConfig::text_width),
      field("text_heads", &MeterConfig::text_heads),
      field("text_layers", &MeterConfig::text_layers),
      field("text_ffn_size", &MeterConfig::text_ffn_size),
      field("vocab_size", &MeterConfig::vocab_size),
      field("max_text_positions", &MeterConfig::max_text_positions),
      field("text_type_vocab_size", &MeterConfig::text_type_vocab_size),
      field("pad_token_id", &MeterConfig::pad_token_id),
      field("text_layer_norm_eps", &MeterConfig::text_layer_norm_eps),
      field("head_layer_norm_eps", &MeterConfig::head_layer_norm_eps),
      field("vqa_answers", &MeterConfig::vqa_answers),
      field("nlvr2", &MeterConfig::nlvr2),
      field("snli", &MeterConfig::snli),
      field("itm", &MeterConfig::itm),
      field("rank", &MeterConfig::rank),
      field("dropout", &MeterConfig::dropout),
  };
  return table;
}

void check(const MeterConfig& c, const std::string& where) {
  auto fail = [&](const std::string& what) { throw FormatError(where + ": " + what); };
  auto positive = [&](const char* key, int v) {
    if (v <= 0) fail(std::string("'") + key + "' must be positive");
  };
  positive("hidden_size", c.hidden_size);
  positive("num_heads", c.num_heads);
  positive("ffn_size", c.ffn_size);
  positive("vit_width", c.vit_width);
  positive("vit_heads", c.vit_heads);
  positive("vit_ffn_size", c.vit_ffn_size);
  positive("vit_patch_size", c.vit_patch_size);
  positive("vit_image_size", c.vit_image_size);
  positive("text_width", c.text_width);
  positive("text_heads", c.text_heads);
  positive("text_ffn_size", c.text_ffn_size);
  positive("vocab_size", c.vocab_size);
  positive("max_text_positions", c.max_text_positions);
  positive("text_type_vocab_size", c.text_type_vocab_size);
  auto divides = [&](const char* heads, int h, const char* width, int w) {
    if (w % h != 0)
      fail(std::string("'") + heads + "' (" + std::to_string(h) + ") must divide '" + width + "' (" +
           std::to_string(w) + ")");
  };
  divides("num_heads", c.num_heads, "hidden_size", c.hidden_size);
  divides("vit_heads", c.vit_heads, "vit_width", c.vit_width);
  divides("text_heads", c.text_heads, "text_width", c.text_width);
  if (c.vit_image_size % c.vit_patch_size != 0)
    fail("'vit_image_size' (" + std::to_string(c.vit_image_size) + ") must be a multiple of 'vit_patch_size' (" +
         std::to_string(c.vit_patch_size) + ")");
  if (c.num_token_types < 2 || c.num_token_types > 3) fail("'num_token_types' must be 2 or 3");
  if (c.nlvr2 && c.num_token_types != 3) fail("an NLVR2 head needs 'num_token_types' 3 (one per image)");
  if (c.pad_token_id >= c.vocab_size) fail("'pad_token_id' must be below 'vocab_size'");
  if (c.max_text_positions < c.pad_token_id + 2)
    fail("'max_text_positions' leaves no room after the padding id (RoBERTa positions start at pad_token_id + 1)");
  if (c.dropout >= 1) fail("'dropout' must be below 1");
}

TrimConfig read_trim(const nlohmann::json& j, const MeterConfig& c, const std::string& where_) {
  const std::string where = where_ + ": smarttrim";
  auto fail = [&](const std::string& what) { throw FormatError(where + ": " + what); };
  if (!j.is_object()) fail("must be an object");
  static const char* keys[] = {"vit_token_layers", "text_token_layers", "cross_token_layers", "cross_head_layers",
                               "width_divisor",    "cross_modal_guidance", "tau"};
  for (auto it = j.begin(); it != j.end(); ++it)
    if (std::find(std::begin(keys), std::end(keys), it.key()) == std::end(keys)) fail("unknown key '" + it.key() + "'");
  for (const char* k : keys)
    if (!j.contains(k)) fail(std::string("missing key '") + k + "'");
  TrimConfig t;
  t.enabled = true;
  auto layers = [&](const char* key, int count) {
    const nlohmann::json& v = j[key];
    if (!v.is_array()) fail(std::string("'") + key + "' must be an array of layer indices");
    std::vector<int> out;
    for (const auto& e : v) {
      if (!e.is_number_integer() || e.get<int64_t>() < 0 || e.get<int64_t>() >= count)
        fail(std::string("'") + key + "' holds " + e.dump() + ", not a layer index in [0, " + std::to_string(count) + ")");
      if (!out.empty() && e.get<int>() <= out.back()) fail(std::string("'") + key + "' must be strictly increasing");
      out.push_back(e.get<int>());
    }
    return out;
  };
  t.vit_token_layers = layers("vit_token_layers", c.vit_layers);
  t.text_token_layers = layers("text_token_layers", c.text_layers);
  t.cross_token_layers = layers("cross_token_layers", c.num_cross_layers);
  t.cross_head_layers = layers("cross_head_layers", c.num_cross_layers);
  if (!j["width_divisor"].is_number_integer() || j["width_divisor"].get<int>() <= 0) fail("'width_divisor' must be a positive integer");
  t.width_divisor = j["width_divisor"].get<int>();
  for (int width : {c.hidden_size, c.vit_width, c.text_width})
    if (width < t.width_divisor) fail("'width_divisor' leaves a trimmer with no width");
  if (!j["cross_modal_guidance"].is_boolean()) fail("'cross_modal_guidance' must be true or false");
  t.cross_modal_guidance = j["cross_modal_guidance"].get<bool>();
  if (!j["tau"].is_number() || j["tau"].get<double>() <= 0) fail("'tau' must be a positive number");
  t.tau = j["tau"].get<float>();
  return t;
}

}  // namespace

std::string MeterConfig::to_json() const {
  nlohmann::ordered_json j;
  j["architecture"] = "meter";
  for (const Field& f : fields()) j[f.key] = f.write(*this);
  if (initializer_range != 0.02f) j["initializer_range"] = initializer_range;
  if (trim.enabled) {
    nlohmann::ordered_json t;
    t["vit_token_layers"] = trim.vit_token_layers;
    t["text_token_layers"] = trim.text_token_layers;
    t["cross_token_layers"] = trim.cross_token_layers;
    t["cross_head_layers"] = trim.cross_head_layers;
    t["width_divisor"] = trim.width_divisor;
    t["cross_modal_guidance"] = trim.cross_modal_guidance;
    t["tau"] = trim.tau;
    j["smarttrim"] = t;
  }
  return j.dump(2);
}

MeterConfig meter_config_from_json(const std::string& text, const std::string& where) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded()) throw FormatError(where + ": not valid JSON");
  if (!j.is_object()) throw FormatError(where + ": not a JSON object");
  if (!j.contains("architecture") || j["architecture"] != "meter")
    throw FormatError(where + ": 'architecture' must be \"meter\"");
  MeterConfig c;
  std::map<std::string, const Field*> by_key;
  for (const Field& f : fields()) by_key[f.key] = &f;
  for (auto it = j.begin(); it != j.end(); ++it)
    if (it.key() != "architecture" && it.key() != "smarttrim" && it.key() != "initializer_range" &&
        !by_key.count(it.key()))
      throw FormatError(where + ": unknown key '" + it.key() + "'");
  for (const Field& f : fields()) {
    if (!j.contains(f.key)) throw FormatError(where + ": missing key '" + f.key + "'");
    f.read(c, j[f.key], where);
  }
  if (j.contains("initializer_range")) {
    if (!j["initializer_range"].is_number() || !(j["initializer_range"].get<double>() > 0))
      throw FormatError(where + ": 'initializer_range' must be a positive number");
    c.initializer_range = j["initializer_range"].get<float>();
  }
  check(c, where);
  if (j.contains("smarttrim")) c.trim = read_trim(j["smarttrim"], c, where);
  return c;
}

MeterConfig load_meter_config(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw FormatError("config '" + path + "': cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  return meter_config_from_json(ss.str(), "config '" + path + "'");
}

}  // namespace st
