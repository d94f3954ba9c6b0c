// The smarttrim command line: one program, one subcommand per job
// (apps/commands.h). `smarttrim help` lists them; each has --help.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

#include "apps/cli.h"
#include "apps/commands.h"
#include "engine/error.h"
#include "engine/gemm.h"
#include "layers/meter.h"
#include "pruning/cost.h"
#include "weights/format.h"
#ifdef SMARTTRIM_CUDA
#include "cuda/runtime.h"
#endif

namespace {

const char* kVersion = "0.1.0";

void print_usage(FILE* out) {
  std::fprintf(out,
               "usage: smarttrim <command> [options]    (smarttrim <command> --help for its options)\n"
               "\n"
               "commands:\n"
               "  data fashion  build the demo data set (VQA v2 and NLVR2 formats) from Fashion-MNIST\n"
               "  train      train METER from scratch or from weights, with or without SmartTrim's trimmers\n"
               "  eval       accuracy, per-example GFLOPs and FLOPs ratio, latency and throughput\n"
               "  infer      answer one question about one image; show what was kept per layer\n"
               "  viz        draw kept and dropped patches and tokens for questions on one image\n"
               "  bench      trimmed against full capacity, side by side, at batch 1 and 32\n"
               "  inspect FILE  check a weights file (and, for a model, that its tensors fit\n"
               "             its config); print its metadata, tensors and, for a model, its FLOPs\n"
               "  devices    list the CPU kernel and the GPUs this build can use\n"
               "  version    print the version\n"
               "  help       print this message\n");
}

int devices() {
  std::printf("cpu: gemm micro-kernel %s\n", st::sgemm_kernel_name());
#ifdef SMARTTRIM_CUDA
  int n = st::cuda::device_count();
  if (n == 0) std::printf("cuda: built with CUDA, but no GPU is available\n");
  for (int i = 0; i < n; i++) std::printf("cuda:%d %s\n", i, st::cuda::device_name(i).c_str());
#else
  std::printf("cuda: this build has no CUDA backend (nvcc was not found at build time)\n");
#endif
  return 0;
}

int inspect(const std::string& path) {
  st::weights::WeightsFile f(path);  // validates the format; throws st::FormatError
  int64_t model_parameters = -1;
  if (f.metadata().count("config")) {  // a model file: every tensor must be the one its config asks for
    st::MeterConfig config = st::meter_config_of(f);
    st::SkipInit skip;  // shapes only; nothing is computed with these parameters
    st::Meter model(config);
    model.check(f);
    model_parameters = model.parameter_count();
  }
  std::printf("file: %s\n", path.c_str());
  std::printf("metadata:\n");
  for (const auto& [k, v] : f.metadata()) std::printf("  %s: %s\n", k.c_str(), v.c_str());
  std::printf("tensors:\n");
  uint64_t total = 0;
  for (const auto& e : f.entries()) {
    std::printf("  %s  %s  %s  %llu bytes\n", e.name.c_str(), st::weights::dtype_tag(e.dtype),
                st::to_string(e.shape).c_str(), static_cast<unsigned long long>(e.bytes));
    total += e.bytes;
  }
  std::printf("total: %zu tensors, %llu bytes\n", f.entries().size(), static_cast<unsigned long long>(total));
  if (model_parameters >= 0) {
    std::printf("matches its config: METER, %lld parameters\n", static_cast<long long>(model_parameters));
    // What one question costs, and how far its trimmers can cut that: a cost
    // target below the lowest ratio cannot be met by any training.
    const st::MeterConfig config = st::meter_config_of(f);
    const int text_tokens = std::min(16, config.max_text_positions);
    const st::Task task = config.vqa_answers > 0 ? st::Task::VQA : st::Task::None;
    std::printf("flops: %.4g GFLOPs per example at full capacity (%d text tokens%s)\n",
                st::full_flops(config, text_tokens, task) / 1e9, text_tokens, task == st::Task::VQA ? ", VQA head" : "");
    if (config.trim.enabled)
      std::printf("flops: lowest FLOPs ratio its trimmers can reach: %.3f (only the first token after each token "
                  "trimmer, one head per trimmed module)\n",
                  st::lowest_flops_ratio(config, text_tokens, task));
  }
  std::printf("ok\n");
  return 0;
}

int run(int argc, char** argv) {
  if (argc < 2) {
    print_usage(stderr);
    return 2;
  }
  std::string cmd = argv[1];
  if (cmd == "help" || cmd == "--help" || cmd == "-h") {
    print_usage(stdout);
    return 0;
  }
  if (cmd == "version" || cmd == "--version") {
    std::printf("smarttrim %s\n", kVersion);
    return 0;
  }
  if (cmd == "devices") return devices();
  if (cmd == "data") return st::app::data_command(argc, argv);
  if (cmd == "train") return st::app::train_command(argc, argv);
  if (cmd == "eval") return st::app::eval_command(argc, argv);
  if (cmd == "bench") return st::app::bench_command(argc, argv);
  if (cmd == "infer") return st::app::infer_command(argc, argv);
  if (cmd == "viz") return st::app::viz_command(argc, argv);
  if (cmd == "inspect") {
    if (argc == 3 && (std::strcmp(argv[2], "--help") == 0 || std::strcmp(argv[2], "-h") == 0)) {
      std::printf("usage: smarttrim inspect FILE\n\n"
                  "Checks a weights file (a model, a checkpoint, or converted weights) and prints its metadata\n"
                  "and tensors. For a model it also checks every tensor against the model's config and prints\n"
                  "the FLOPs of one example and the lowest FLOPs ratio its trimmers can reach.\n");
      return 0;
    }
    if (argc != 3) {
      std::fprintf(stderr, "usage: smarttrim inspect FILE\n");
      return 2;
    }
    return inspect(argv[2]);
  }
  std::fprintf(stderr, "smarttrim: unknown command '%s'\n", cmd.c_str());
  print_usage(stderr);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const st::cli::UsageError& e) {
    std::fprintf(stderr, "%s\n\n%s", e.what(), e.usage.c_str());
    return 2;
  } catch (const st::Error& e) {
    std::fprintf(stderr, "smarttrim: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "smarttrim: unexpected error: %s\n", e.what());
    return 1;
  }
}
