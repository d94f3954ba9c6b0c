// Whole-model benchmark: one training step of METER-tiny at batch 32, and
// one METER-base forward at batch 1, with time, GEMM GFLOP/s (the FLOPs the
// matrix products actually executed, counted by the GEMM itself) and the
// system allocations made during the timed runs (the caching allocator
// should make that 0). Then PyTorch runs the same two on the same shapes
// (bench/torch_meter_bench.py, with as many threads as OpenMP gives us) and
// the ratio is printed. Dropout is off in both, so both do the same work.
//
// --device cuda runs both on the GPU (GEMMs in TF32, PyTorch too), adds a
// METER-base training step at batch 32 with the config's 384 x 384 images,
// and reports the GPU's peak memory in use (the JSON also has it). The Python
// is $SMARTTRIM_PYTHON (default /usr/bin/python3, Debian's torch).
//
//   build/bench_meter [--json FILE] [--reps N] [--no-torch] [--device cpu|cuda]
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
#include "bench/bench_device.h"
#include "layers/meter.h"
#ifdef SMARTTRIM_CUDA
#include "cuda/runtime.h"
#endif

namespace {

using st::Tensor;

struct Result {
  std::string key;    // shared with the PyTorch side's output
  std::string label;
  double seconds;     // median
  double gflop;       // per run (CPU GEMMs only: 0 on the GPU)
  uint64_t system_allocs;    // host allocations during the timed runs
  uint64_t gpu_peak_bytes;   // the GPU's peak memory in use (0 on the CPU)
  double torch_seconds = 0;  // 0: not measured
};

st::Device g_device = st::Device::CPU;

void finish_queued_work() { st::bench::finish_queued_work(g_device); }

uint64_t gpu_peak_bytes() {
#ifdef SMARTTRIM_CUDA
  if (g_device == st::Device::CUDA) return st::cuda::memory_stats().peak;
#endif
  return 0;
}

using st::bench::now_s;

// Two warm-up runs (the allocator's cache fills), then `reps` timed ones.
Result measure(const std::string& key, const std::string& label, int reps, const std::function<void()>& run) {
  run();
  run();
  finish_queued_work();
  std::vector<double> times;
  uint64_t allocs_before = st::memory::host_stats().system_allocs;
  st::sgemm_reset_flops();
  for (int i = 0; i < reps; i++) {
    double t0 = now_s();
    run();
    finish_queued_work();
    times.push_back(now_s() - t0);
  }
  double gflop = double(st::sgemm_flops()) / reps / 1e9;
  std::sort(times.begin(), times.end());
  return {key, label, times[times.size() / 2], gflop, st::memory::host_stats().system_allocs - allocs_before,
          gpu_peak_bytes()};
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
  return {Tensor::from_ints(ids, {batch, text_len}).to(g_device), Tensor::from_vector(mask, {batch, text_len}).to(g_device),
          Tensor::randn({batch, 3, c.vit_image_size, c.vit_image_size}, rng).to(g_device)};
}

// forward, VQA loss, backward, clipping, AdamW on `model` (already on g_device)
Result train_step(const std::string& config_name, int batch, int text_len, int reps, int image_size = 0) {
  st::MeterConfig c = st::load_meter_config("configs/" + config_name + ".json");
  if (image_size > 0) c.vit_image_size = image_size;
  st::Meter model(c, 1);
  st::move_parameters(model.params(), g_device);
  std::vector<std::pair<std::string, Tensor>> named;
  for (const auto& [name, t] : model.params().list) named.emplace_back(name, *t);
  st::AdamW opt(st::decay_groups(named, 1e-4f, 0.01f));
  std::vector<Tensor> params;
  for (const auto& [name, t] : named) params.push_back(t);
  Inputs in = make_inputs(c, batch, text_len, 2);
  Tensor targets = Tensor::full({batch, c.vqa_answers}, 0.1f, g_device);
  st::Context no_dropout;
  return measure(config_name + " train step",
                 config_name + " train step, batch " + std::to_string(batch) + ", text " + std::to_string(text_len) +
                     ", image " + std::to_string(c.vit_image_size),
                 reps, [&] {
                   st::MeterFeatures f = model.forward(in.ids, in.mask, in.image, no_dropout);
                   Tensor loss = st::vqa_loss(model.vqa_logits(f.cls), targets);
                   loss.backward();
                   st::clip_grad_norm(params, 1.0f);
                   opt.step();
                   opt.zero_grad();
                 });
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
    else if (st::bench::parse_device(argc, argv, i, g_device)) continue;
    else {
      std::fprintf(stderr, "usage: bench_meter [--json FILE] [--reps N] [--no-torch] [--device cpu|cuda]\n");
      return 2;
    }
  }
  if (!st::bench::device_usable(g_device, "bench_meter")) return 1;
  std::vector<Result> results;
  try {
    results.push_back(train_step("meter-tiny", 32, 16, reps));
    {  // METER-base: inference forward of one example
      st::MeterConfig c = st::load_meter_config("configs/meter-base.json");
      st::Meter model(c, 1);
      st::move_parameters(model.params(), g_device);
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
    if (g_device == st::Device::CUDA) results.push_back(train_step("meter-base", 32, 40, reps, 384));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_meter: %s\n", e.what());
    return 1;
  }

  if (with_torch) {
    const char* python = std::getenv("SMARTTRIM_PYTHON");
    const std::string cmd = std::string(python ? python : "/usr/bin/python3") + " bench/torch_meter_bench.py " +
                            std::to_string(reps) + " " + std::to_string(omp_get_max_threads()) + " " +
                            st::name(g_device);
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

  const bool gpu = g_device == st::Device::CUDA;
  if (gpu) std::printf("on the GPU (TF32 GEMMs on both sides), median of %d runs\n", reps);
  else std::printf("%d threads, median of %d runs\n", omp_get_max_threads(), reps);
  std::printf("%-52s %9s %8s %8s %7s %10s %7s\n", "run", "ours ms", "GFLOP", "GFLOP/s", gpu ? "GPU MiB" : "allocs",
              "torch ms", "ratio");
  for (const Result& r : results) {
    const uint64_t memory = gpu ? r.gpu_peak_bytes >> 20 : r.system_allocs;
    std::printf("%-52s %9.1f %8.2f %8.1f %7llu", r.label.c_str(), r.seconds * 1e3, r.gflop, r.gflop / r.seconds,
                static_cast<unsigned long long>(memory));
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
                   "  {\"run\": \"%s\", \"device\": \"%s\", \"seconds\": %.6f, \"gflop\": %.4f, "
                   "\"system_allocs\": %llu, \"gpu_peak_bytes\": %llu, \"torch_seconds\": %.6f}%s\n",
                   results[i].label.c_str(), st::name(g_device), results[i].seconds, results[i].gflop,
                   static_cast<unsigned long long>(results[i].system_allocs),
                   static_cast<unsigned long long>(results[i].gpu_peak_bytes), results[i].torch_seconds,
                   i + 1 < results.size() ? "," : "");
    std::fprintf(f, "]\n");
    std::fclose(f);
  }
  return 0;
}
