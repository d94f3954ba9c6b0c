// smarttrim data fashion: the demo data set (data/fashion.h).
#include <cstdio>
#include <string>

#include "apps/cli.h"
#include "apps/commands.h"
#include "data/datasets.h"
#include "data/fashion.h"

namespace st::app {

int data_command(int argc, char** argv) {
  cli::Args args("smarttrim data fashion",
                 "Builds the demo data set from Debian's Fashion-MNIST photographs: scenes of clothes with\n"
                 "questions (VQA v2 format) and statements about pairs of scenes (NLVR2 format).");
  const data::FashionOptions defaults;
  auto number = [](int n) { return std::to_string(n); };
  args.option("out", "DIR", "where to write the data set").required();
  args.option("seed", "N", "the data set is a pure function of its seed", "0");
  args.option("source", "DIR", "the Fashion-MNIST IDX files", data::kFashionMnistDir);
  args.option("image-size", "PIXELS", "side of each scene (at least 84)", number(defaults.image_size));
  args.option("train-images", "N", "VQA training scenes", number(defaults.train_images));
  args.option("val-images", "N", "VQA validation scenes", number(defaults.val_images));
  args.option("test-images", "N", "VQA test scenes", number(defaults.test_images));
  args.option("questions-per-image", "N", "questions about each scene", number(defaults.questions_per_image));
  args.option("nlvr2-train", "N", "NLVR2 training examples", number(defaults.nlvr2_train));
  args.option("nlvr2-dev", "N", "NLVR2 dev examples", number(defaults.nlvr2_dev));
  args.option("nlvr2-test", "N", "NLVR2 test examples", number(defaults.nlvr2_test));
  if (argc < 3 || std::string(argv[2]) != "fashion") {
    if (argc >= 3 && (std::string(argv[2]) == "--help" || std::string(argv[2]) == "-h")) {
      std::fputs(args.usage().c_str(), stdout);
      return 0;
    }
    args.fail("the only data set it builds is 'fashion': smarttrim data fashion --out DIR");
  }
  if (!args.parse(argc, argv, 3)) return 0;

  data::FashionOptions o;
  o.out = args.text("out");
  o.seed = uint64_t(args.integer("seed"));
  o.source_dir = args.text("source");
  auto int_option = [&](const char* name) {
    const int64_t v = args.integer(name);
    if (v < 1 || v > 10'000'000) args.fail(std::string("--") + name + " must be between 1 and 10000000");
    return int(v);
  };
  o.image_size = int_option("image-size");
  o.train_images = int_option("train-images");
  o.val_images = int_option("val-images");
  o.test_images = int_option("test-images");
  o.questions_per_image = int_option("questions-per-image");
  o.nlvr2_train = int_option("nlvr2-train");
  o.nlvr2_dev = int_option("nlvr2-dev");
  o.nlvr2_test = int_option("nlvr2-test");

  cli::Progress progress("data fashion", 0, "images");
  const data::FashionSummary s = data::generate_fashion_dataset(o, [&](int64_t done, int64_t total) {
    progress.set_total(total);
    progress.update(done);
  });
  progress.finish();
  // The closed answer list in the order the VQA head uses: `smarttrim train --answers` reads it.
  const std::string answers_path = o.out + "/vqa/answers.json";
  data::AnswerVocab(s.answers).save(answers_path);
  for (const auto& split : s.vqa)
    std::printf("vqa %-5s %6lld images %7lld questions (yes %lld, no %lld)\n", split.name.c_str(),
                (long long)split.images, (long long)split.questions, (long long)split.yes, (long long)split.no);
  for (const auto& split : s.nlvr2)
    std::printf("nlvr2 %-5s %6lld examples (%lld true)\n", split.name.c_str(), (long long)split.examples,
                (long long)split.true_labels);
  std::printf("answers %zu, vocabulary %lld tokens, %lld images written to %s\n", s.answers.size(),
              (long long)s.vocab_size, (long long)s.images_written, o.out.c_str());
  return 0;
}

}  // namespace st::app
