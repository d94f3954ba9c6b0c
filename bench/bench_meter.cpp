// Whole-model benchmark: one training step of METER-tiny at batch 32, and
// one METER-base forward at batch 1, with time, GEMM GFLOP/s (the FLOPs the
// matrix products actually executed, counted by the GEMM itself) and the
// system allocations made during the timed runs (the caching allocator
// should make that 0). Then PyTorch runs the same two on the same shapes
// (bench/torch_meter_bench.py, with as many threads as OpenMP gives us) and
// the ratio is printed. Dropout is off in both, so both do the same work.
//
//   build/bench_meter [--json FILE] [--reps N] [--no-torch]
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "engine/gemm.h"
#include "engine/memory.h"
#include "engine/optim.h"
#include "layers/meter.h"

namespace {

using st::Tensor;

struct Result {
  std::string key;    // shared with the PyTorch side's output
  std::string label;
  double seconds;     // median
  double gflop;       // per run
  uint64_t system_allocs;
  double torch_seconds = 0;  // 0: not measured
};

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Two warm-up runs (the allocator's cache fills), then `reps` timed ones.
Result measure(const std::string& key, const std::string& label, int reps, const std::function<void()>& run) {
  run();
  run();
  std::vector<double> times;
  uint64_t allocs_before = st::memory::host_stats().system_allocs;
  st::sgemm_reset_flops();
  for (int i = 0; i < reps; i++) {
    double t0 = now_s();
    run();
    times.push_back(now_s() - t0);
  }
  double gflop = double(st::sgemm_flops()) / reps / 1e9;
  std::sort(times.begin(), times.end());
  return {key, label, times[times.size() / 2], gflop, st::memory::host_stats().system_allocs - allocs_before};
}

struct Inputs {
  Tensor ids, mask, image;
};

Inputs make_inputs(const st::MeterConfig& c, int batch, int text_len, uint64_t seed) {
  st::Rng rng(seed);
  std::vector<int32_t> ids(size_t(batch) * text_len);
  std::vector<float> mask(ids.size(), 1.0f);
  Tensor u = Tensor::uniform({int64_t(ids.size())}, rng, 0.0f, 1.0f);
  for (size_t i = 0; i < ids.size(); i++) ids[i] = 3 + int32_t(u.data()[i] * float(c.vocab_size - 4));
  return {Tensor::from_ints(ids, {batch, text_len}), Tensor::from_vector(mask, {batch, text_len}),
          Tensor::randn({batch, 3, c.vit_image_size, c.vit_image_size}, rng)};
}

}  // namespace

int main(int argc, char** argv) {
  std::string json;
  int reps = 5;
  bool with_torch = true;
  for (int i = 1; i < argc; i++) {
    if (!std::strcmp(argv[i], "--json") && i + 1 < argc) json = argv[++i];
    else if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::max(1, std::atoi(argv[++i]));
    else if (!std::strcmp(argv[i], "--no-torch")) with_torch = false;
    else {
      std::fprintf(stderr, "usage: bench_meter [--json FILE] [--reps N] [--no-torch]\n");
      return 2;
    }
  }
  std::vector<Result> results;
  try {
    {  // METER-tiny: forward, VQA loss, backward, clipping, AdamW
      st::MeterConfig c = st::load_meter_config("configs/meter-tiny.json");
      st::Meter model(c, 1);
      std::vector<std::pair<std::string, Tensor>> named;
      for (const auto& [name, t] : model.params().list) named.emplace_back(name, *t);
      st::AdamW opt(st::decay_groups(named, 1e-4f, 0.01f));
      std::vector<Tensor> params;
      for (const auto& [name, t] : named) params.push_back(t);
      Inputs in = make_inputs(c, 32, 16, 2);
      Tensor targets = Tensor::full({32, c.vqa_answers}, 0.1f);
      st::Context no_dropout;
      results.push_back(measure("meter-tiny train step",
                                "meter-tiny train step, batch 32, text 16, image " + std::to_string(c.vit_image_size),
                                reps, [&] {
                                  st::MeterFeatures f = model.forward(in.ids, in.mask, in.image, no_dropout);
                                  Tensor loss = st::vqa_loss(model.vqa_logits(f.cls), targets);
                                  loss.backward();
                                  st::clip_grad_norm(params, 1.0f);
                                  opt.step();
                                  opt.zero_grad();
                                }));
    }
    {  // METER-base: inference forward of one example
      st::MeterConfig c = st::load_meter_config("configs/meter-base.json");
      st::Meter model(c, 1);
      Inputs in = make_inputs(c, 1, 40, 4);
      st::Context eval;
      results.push_back(measure("meter-base forward",
                                "meter-base forward, batch 1, text 40, image " + std::to_string(c.vit_image_size),
                                reps, [&] {
                                  st::NoGrad no_grad;
                                  st::MeterFeatures f = model.forward(in.ids, in.mask, in.image, eval);
                                  model.vqa_logits(f.cls);
                                }));
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_meter: %s\n", e.what());
    return 1;
  }

  if (with_torch) {
    const std::string cmd = "/usr/bin/python3 bench/torch_meter_bench.py " + std::to_string(reps) + " " +
                            std::to_string(omp_get_max_threads());
    FILE* pipe = ::popen(cmd.c_str(), "r");
    char line[512];
    while (pipe && std::fgets(line, sizeof line, pipe)) {
      double ms = 0;
      int used = 0;
      if (std::sscanf(line, "%lf %n", &ms, &used) != 1) continue;
      std::string key(line + used);
      while (!key.empty() && (key.back() == '\n' || key.back() == ' ')) key.pop_back();
      for (Result& r : results)
        if (r.key == key) r.torch_seconds = ms / 1e3;
    }
    if (!pipe || ::pclose(pipe) != 0) std::fprintf(stderr, "bench_meter: the PyTorch side failed (%s)\n", cmd.c_str());
  }

  std::printf("%d threads, median of %d runs\n", omp_get_max_threads(), reps);
  std::printf("%-52s %9s %8s %8s %7s %10s %7s\n", "run", "ours ms", "GFLOP", "GFLOP/s", "allocs", "torch ms",
              "ratio");
  for (const Result& r : results) {
    std::printf("%-52s %9.1f %8.2f %8.1f %7llu", r.label.c_str(), r.seconds * 1e3, r.gflop, r.gflop / r.seconds,
                static_cast<unsigned long long>(r.system_allocs));
    if (r.torch_seconds > 0) std::printf(" %10.1f %6.2fx\n", r.torch_seconds * 1e3, r.torch_seconds / r.seconds);
    else std::printf(" %10s %7s\n", "-", "-");
  }
  if (!json.empty()) {
    FILE* f = std::fopen(json.c_str(), "w");
    if (!f) {
      std::fprintf(stderr, "bench_meter: cannot write %s\n", json.c_str());
      return 1;
    }
    std::fprintf(f, "[\n");
    for (size_t i = 0; i < results.size(); i++)
      std::fprintf(f,
                   "  {\"run\": \"%s\", \"seconds\": %.6f, \"gflop\": %.4f, \"system_allocs\": %llu, "
                   "\"torch_seconds\": %.6f}%s\n",
                   results[i].label.c_str(), results[i].seconds, results[i].gflop,
                   static_cast<unsigned long long>(results[i].system_allocs), results[i].torch_seconds,
                   i + 1 < results.size() ? "," : "");
    std::fprintf(f, "]\n");
    std::fclose(f);
  }
  return 0;
}
