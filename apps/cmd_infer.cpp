// smarttrim infer: one image and one question: the answer, its score, and
// what the trimmers kept, layer by layer.
// smarttrim viz: the same for several questions on one image, drawn as a
// figure of kept and dropped patches and text tokens (viz/overlay.h).
#include <algorithm>
#include <cmath>
#include <cstdio>

#include "apps/cli.h"
#include "apps/commands.h"
#include "apps/task_data.h"
#include "data/image.h"
#include "engine/error.h"
#include "pruning/packed.h"
#include "viz/overlay.h"

namespace st::app {

namespace {

void add_single_example_options(cli::Args& args) {
  add_model_options(args);
  add_tokenizer_options(args);
  args.option("image", "FILE", "a PNG, JPEG or BMP image").required();
  args.option("max-text-len", "N", "text tokens, specials included", "32");
  args.option("theta", "X", "keep a token iff its trimmer's logit > X", "0");
  args.option("head-theta", "X", "keep a head iff its trimmer's logit > X", "0");
  args.flag("full", "run at full capacity (trimmers off)");
  cli::add_device_option(args);
}

// What the model did with one question.
struct Answered {
  std::vector<std::pair<std::string, float>> top;  // best answers with their sigmoid scores
  double gflops = 0, ratio = 0;
  std::vector<std::string> tokens;  // the question's tokens, specials included
  PackedOutput out;
};

// The image as the model sees it, before normalisation: shorter side to S (bicubic), center crop.
Image model_view(const Image& image, int size) {
  return center_crop(resize_shorter_side(image, size, ResizeFilter::Bicubic), size, size);
}

Answered answer(const Meter& model, const data::Tokenizer& tokenizer, const data::AnswerVocab& answers,
                const Image& image, const std::string& question, int max_text_len, const PackedMeter::Options& po) {
  const MeterConfig& c = model.config();
  const std::vector<int32_t> ids = tokenizer.encode(question, max_text_len);
  const int64_t T = int64_t(ids.size());
  const Tensor pixels = clip_preprocess(image, c.vit_image_size);
  const Tensor batch_image = reshape(pixels, {1, 3, c.vit_image_size, c.vit_image_size});
  Answered a;
  const Device dev = model.device();
  a.out = PackedMeter(model).run(Task::VQA, Tensor::from_ints(ids, {1, T}).to(dev), Tensor::ones({1, T}, dev),
                                 batch_image.to(dev), po);
  a.out.logits = a.out.logits.to(Device::CPU);
  for (int32_t id : ids) a.tokens.push_back(tokenizer.token(id).value_or("?"));
  std::vector<int64_t> order(size_t(a.out.logits.dim(1)));
  for (size_t i = 0; i < order.size(); i++) order[i] = int64_t(i);
  const float* z = a.out.logits.data();
  std::sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return z[x] > z[y]; });
  for (size_t i = 0; i < std::min<size_t>(5, order.size()); i++)
    a.top.push_back({answers.answer(order[i]), 1.0f / (1.0f + std::exp(-z[order[i]]))});
  a.gflops = a.out.flops[0] / 1e9;
  a.ratio = a.out.flops[0] / full_flops(c, int(T), Task::VQA);
  return a;
}

struct Setup {
  std::unique_ptr<Meter> model;
  std::unique_ptr<data::Tokenizer> tokenizer;
  data::AnswerVocab answers;
  Image image;
  PackedMeter::Options po;
  int max_text_len = 32;
};

Setup setup(const cli::Args& args) {
  const Device device = cli::device_of(args);  // before anything is read
  Setup s;
  s.model = load_model(args);
  move_parameters(s.model->params(), device);
  s.tokenizer = load_tokenizer(args);
  s.answers = load_answers(args, s.model->config());
  s.max_text_len = int(args.integer("max-text-len"));
  check_fits(s.model->config(), *s.tokenizer, s.max_text_len, Task::VQA, &s.answers);
  s.image = load_image(args.text("image"));
  s.po.token_threshold = float(args.number("theta"));
  s.po.head_threshold = float(args.number("head-theta"));
  s.po.trimmers = !args.flag_set("full") && s.model->config().trim.enabled;
  return s;
}

std::string joined_tokens(const std::vector<std::string>& tokens, const std::vector<int32_t>& positions) {
  std::string out;
  for (int32_t p : positions) out += (out.empty() ? "" : " ") + tokens[size_t(p)];
  return out;
}

}  // namespace

int infer_command(int argc, char** argv) {
  cli::Args args("smarttrim infer", "Answers one question about one image and shows what the trimmers kept.");
  add_single_example_options(args);
  args.option("question", "TEXT", "the question").required();
  if (!args.parse(argc, argv, 2)) return 0;
  const Setup s = setup(args);
  const Answered a = answer(*s.model, *s.tokenizer, s.answers, s.image, args.text("question"), s.max_text_len, s.po);
  const MeterConfig& c = s.model->config();

  std::printf("question: %s\n", args.text("question").c_str());
  std::printf("answer: %s (score %.3f)\n", a.top[0].first.c_str(), a.top[0].second);
  std::printf("next:");
  for (size_t i = 1; i < a.top.size(); i++) std::printf(" %s %.3f%s", a.top[i].first.c_str(), a.top[i].second, i + 1 < a.top.size() ? "," : "");
  std::printf("\ncost: %.4f GFLOPs, %.3f of the full model\n", a.gflops, a.ratio);
  if (!s.po.trimmers) return 0;
  const int image_tokens = c.image_tokens();
  std::printf("kept:\n");
  for (const KeptTokens& k : a.out.kept) {
    const std::vector<int32_t>& pos = k.positions[0];
    const bool text = k.stream == "text" || k.stream == "cross-text";
    if (text)
      std::printf("  %-11s layer %d: %zu/%zu text tokens: %s\n", k.stream.c_str(), k.layer, pos.size(), a.tokens.size(),
                  joined_tokens(a.tokens, pos).c_str());
    else
      std::printf("  %-11s layer %d: %zu/%d image tokens (class token + %zu patches)\n", k.stream.c_str(), k.layer,
                  pos.size(), image_tokens, pos.size() - 1);
  }
  const PassCounts<double>& n = a.out.counts[0];
  for (size_t l = 0; l < n.text_self_heads.size(); l++)
    std::printf("  heads of co-attention layer %zu: text self %g, text cross %g, image self %g, image cross %g (of %d)\n",
                l, n.text_self_heads[l], n.text_cross_heads[l], n.image_self_heads[l], n.image_cross_heads[l],
                c.num_heads);
  return 0;
}

int viz_command(int argc, char** argv) {
  cli::Args args("smarttrim viz",
                 "Draws what the trimmers kept for several questions on one image: one row per question,\n"
                 "one column per trimmer layer (dropped patches darkened), the kept text tokens below.");
  add_single_example_options(args);
  args.repeated("question", "TEXT", "a question (give several)");
  args.option("out", "FILE", "the PNG to write").required();
  args.option("title", "TEXT", "a title above the figure");
  args.option("scale", "N", "pixels per image pixel", "3");
  if (!args.parse(argc, argv, 2)) return 0;
  if (args.all("question").empty()) args.fail("give at least one --question");
  const Setup s = setup(args);
  if (!s.po.trimmers) args.fail("viz shows what trimmers keep: the model has none, or --full was given");
  const MeterConfig& c = s.model->config();
  const Image view = model_view(s.image, c.vit_image_size);

  std::vector<OverlayRow> rows;
  for (const std::string& question : args.all("question")) {
    const Answered a = answer(*s.model, *s.tokenizer, s.answers, s.image, question, s.max_text_len, s.po);
    OverlayRow row;
    char title[256];
    std::snprintf(title, sizeof title, "%s -> %s (%.2f), %.1f%% of the FLOPs", question.c_str(), a.top[0].first.c_str(),
                  a.top[0].second, 100 * a.ratio);
    row.title = title;
    row.tokens = a.tokens;
    for (const KeptTokens& k : a.out.kept) {
      const std::vector<int32_t>& pos = k.positions[0];
      if (k.stream == "vit" || k.stream == "cross-image") {
        std::vector<uint8_t> mask(size_t(c.image_tokens() - 1), 0);
        for (int32_t p : pos)
          if (p > 0) mask[size_t(p - 1)] = 1;  // position 0 is the class token
        row.layer_names.push_back((k.stream == "vit" ? "vit " : "cross ") + std::to_string(k.layer));
        row.patch_kept.push_back(mask);
      } else {
        std::vector<uint8_t> mask(a.tokens.size(), 0);
        for (int32_t p : pos) mask[size_t(p)] = 1;
        row.token_kept = {mask};  // the last text trimmer's survivors
      }
    }
    rows.push_back(row);
  }
  OverlayFigureOptions fo;
  fo.title = args.text_or("title", "");
  fo.scale = int(args.integer("scale"));
  if (fo.scale < 1 || fo.scale > 16) args.fail("--scale must be between 1 and 16");
  save_png(args.text("out"), overlay_figure(view, c.vit_patch_size, rows, fo));
  std::printf("viz: %zu questions, %zu trimmer layers -> %s\n", rows.size(), rows[0].layer_names.size(),
              args.text("out").c_str());
  return 0;
}

}  // namespace st::app
