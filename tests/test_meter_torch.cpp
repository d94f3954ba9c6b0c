// METER against PyTorch: tests/torch_meter.py builds METER-tiny from
// torch.nn pieces under METER's parameter names, saves it as a Lightning
// checkpoint, converts it with weights/convert_meter.py (the user's path),
// and writes inputs with float64 outputs, losses and every parameter's
// gradient. Here the converted file is loaded and everything recomputed.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <memory>

#include "layers/meter.h"
#include "tests/compare.h"
#include "tests/support.h"
#include "weights/format.h"

using st::Tensor;
namespace fs = std::filesystem;
using st::testing::max_abs;
using st::testing::relative_error;

namespace {

struct Reference {
  fs::path dir;  // removed at exit with the other statics (see reference())
  std::unique_ptr<st::weights::WeightsFile> cases;
  std::unique_ptr<st::Meter> model;
  std::string log;
};

// Built once: the Python side takes a few seconds.
Reference& reference() {
  static st::testing::TempDir dir;
  static Reference r = [] {
    Reference ref;
    ref.dir = dir.path;
    auto [status, out] = st::testing::run_command(st::testing::python_interpreter() +
                                                  " tests/torch_meter.py --config configs/meter-tiny.json --out " +
                                                  ref.dir.string());
    ref.log = out;
    if (status != 0) return ref;
    ref.cases = std::make_unique<st::weights::WeightsFile>((ref.dir / "cases.safetensors").string());
    ref.model = st::Meter::from_file(st::weights::WeightsFile((ref.dir / "meter.safetensors").string()));
    return ref;
  }();
  INFO("tests/torch_meter.py printed:\n" << r.log);
  REQUIRE(r.model);
  return r;
}

Tensor mask_of(const st::weights::WeightsFile& cases) {
  Tensor m = cases.get("text_masks");  // i32 0/1
  std::vector<float> v;
  for (int32_t x : m.to_ints()) v.push_back(float(x));
  return Tensor::from_vector(v, m.shape());
}

}  // namespace

TEST_CASE("meter vs torch: the converted checkpoint is a strict safetensors file") {
  Reference& r = reference();
  for (const char* file : {"meter.safetensors", "cases.safetensors"}) {
    auto [status, out] = st::testing::run_command(st::testing::python_interpreter() + " weights/stformat.py --check " +
                                                  (r.dir / file).string());
    INFO(out);
    CHECK(status == 0);
  }
}

TEST_CASE("meter vs torch: features and every head's logits, at two image sizes") {
  Reference& r = reference();
  const auto& cases = *r.cases;
  st::Meter& model = *r.model;
  st::Context eval;
  st::NoGrad no_grad;
  Tensor ids = cases.get("text_ids"), mask = mask_of(cases);
  st::MeterFeatures f = model.forward(ids, mask, cases.get("image"), eval);
  CHECK(relative_error(f.text, cases.get("text_feats")) < 1e-4);
  CHECK(relative_error(f.image, cases.get("image_feats")) < 1e-4);
  CHECK(relative_error(f.cls, cases.get("cls_feats")) < 1e-4);
  CHECK(relative_error(model.vqa_logits(f.cls), cases.get("vqa_logits")) < 1e-4);
  CHECK(relative_error(model.snli_logits(f.cls), cases.get("snli_logits")) < 1e-4);
  CHECK(relative_error(model.itm_logits(f.cls), cases.get("itm_logits")) < 1e-4);
  CHECK(relative_error(model.rank_logits(f.cls), cases.get("rank_logits")) < 1e-4);
  Tensor nlvr2 = model.nlvr2_forward(ids, mask, cases.get("image"), cases.get("image_b"), eval);
  CHECK(relative_error(nlvr2, cases.get("nlvr2_logits")) < 1e-4);

  // A larger image: the position table is re-gridded bicubically, as METER's adapt_position_encoding does.
  Tensor large = cases.get("image_large");
  const int size = model.image_size();
  model.set_image_size(int(large.dim(-1)));
  Tensor vqa_large = model.vqa_logits(model.forward(ids, mask, large, eval).cls);
  model.set_image_size(size);  // the table is re-read from the file below, to leave the model as loaded
  model.load(st::weights::WeightsFile((r.dir / "meter.safetensors").string()));
  CHECK(relative_error(vqa_large, cases.get("vqa_logits_large")) < 1e-4);
}

TEST_CASE("meter vs torch: the loss and the gradient of every parameter") {
  Reference& r = reference();
  const auto& cases = *r.cases;
  st::Meter& model = *r.model;
  for (const auto& [name, p] : model.params().list) p->zero_grad();
  st::Context eval;
  Tensor ids = cases.get("text_ids"), mask = mask_of(cases);
  st::MeterFeatures f = model.forward(ids, mask, cases.get("image"), eval);
  Tensor loss = st::vqa_loss(model.vqa_logits(f.cls), cases.get("vqa_targets")) +
                st::cross_entropy(model.snli_logits(f.cls), cases.get("snli_labels")) +
                st::cross_entropy(model.itm_logits(f.cls), cases.get("itm_labels")) +
                st::cross_entropy(model.nlvr2_forward(ids, mask, cases.get("image"), cases.get("image_b"), eval),
                                  cases.get("nlvr2_labels"));
  CHECK(relative_error(loss, cases.get("loss")) < 1e-5);
  loss.backward();
  int compared = 0;
  for (const auto& [name, p] : model.params().list) {
    INFO(name);
    REQUIRE(cases.contains("grad." + name));
    Tensor want = cases.get("grad." + name);
    Tensor got = p->grad().defined() ? p->grad() : Tensor::zeros(p->shape());
    const std::string suffix = "key.bias";
    if (name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
      // Adding b_k to every key adds q_i . b_k to every score of row i, which
      // softmax ignores: this gradient is zero in exact arithmetic, and both
      // sides hold only rounding noise. Measure ours against its layer's
      // key-weight gradient instead.
      const std::string weight = name.substr(0, name.size() - 4) + "weight";
      CHECK(max_abs(got) < 1e-4 * max_abs(cases.get("grad." + weight)));
    } else {
      CHECK(relative_error(got, want) < 1e-4);
    }
    compared++;
  }
  CHECK(compared == int(model.params().list.size()));
}

TEST_CASE("meter converter: bad checkpoints are refused with the names, and leave no file") {
  Reference& r = reference();
  const std::string py = st::testing::python_interpreter();
  const std::string out = (r.dir / "refused.safetensors").string();
  const st::MeterConfig tiny = st::load_meter_config("configs/meter-tiny.json");
  const std::string heads = " --vit-heads " + std::to_string(tiny.vit_heads) + " --text-heads " +
                            std::to_string(tiny.text_heads);  // not in the tensors; see convert_meter.py
  auto convert = [&](const std::string& in) {
    return st::testing::run_command(py + " weights/convert_meter.py " + in + " " + out + heads);
  };
  st::testing::CommandResult not_ckpt = convert("README.md");
  CHECK(not_ckpt.status == 1);
  CHECK(not_ckpt.output.find("'README.md' is not a PyTorch checkpoint") != std::string::npos);
  CHECK(!fs::exists(out));

  // The reference checkpoint with one foreign tensor, one missing and (separately) one mis-shaped.
  const std::string ckpt = (r.dir / "meter.ckpt").string();
  auto edited = [&](const std::string& edit, const std::string& tag) {
    const std::string path = (r.dir / (tag + ".ckpt")).string();
    auto made = st::testing::run_command(py + " -c \"import torch; c = torch.load('" + ckpt +
                                         "'); sd = c['state_dict']; " + edit + "; torch.save(c, '" + path + "')\"");
    INFO(made.output);
    REQUIRE(made.status == 0);
    return path;
  };
  st::testing::CommandResult foreign =
      convert(edited("sd['cross_modal_text_layers.0.adapter.weight'] = torch.zeros(3)", "foreign"));
  INFO(foreign.output);
  CHECK(foreign.status == 1);
  CHECK(foreign.output.find("cross_modal_text_layers.0.adapter.weight") != std::string::npos);
  CHECK(!fs::exists(out));

  st::testing::CommandResult missing = convert(edited("del sd['cross_modal_image_pooler.dense.bias']", "missing"));
  INFO(missing.output);
  CHECK(missing.status == 1);
  CHECK(missing.output.find("cross_modal_image_pooler.dense.bias") != std::string::npos);
  CHECK(!fs::exists(out));

  st::testing::CommandResult shape =
      convert(edited("sd['vqa_classifier.1.weight'] = torch.zeros(5)", "shape"));
  INFO(shape.output);
  CHECK(shape.status == 1);
  CHECK(shape.output.find("vqa_classifier.1.weight") != std::string::npos);
  CHECK(!fs::exists(out));
}
