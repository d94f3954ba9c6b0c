// What trimming buys in wall-clock time: packed inference of a trimmed METER
// against the same model at full capacity, side by side in one run.
//
//   build/bench_smarttrim [--json FILE] [--reps N] [--min-seconds S] [--tiny-only] [--batch N] [--device cpu|cuda]
//                         [--stages] [--tokens-only]
//
// The models are random (no trained trimmers exist here), so the keep rate
// is set with the run-time threshold theta: for each target FLOPs ratio a
// bisection on a few examples finds theta, then the whole batch runs with
// it and the ratio it really reached is reported. "speed-up" is the time at
// full capacity over the time trimmed; "efficiency" is the speed-up over
// the FLOPs reduction (1 means time fell exactly as much as FLOPs did).
// The full-capacity run uses the same packed path, so padding costs neither
// side anything; the plain rectangular forward is timed too, for reference.
// Full and trimmed runs take turns, so both see the same machine load.
// --device cuda runs everything on the GPU (TF32 GEMMs); each timed run
// waits for the GPU to finish. --stages also prints, for each row, where
// the time went stage by stage at full capacity and trimmed (the packed
// path's StageTimes: summed over the threads that ran the pass, so on T
// threads they add up to about T times the wall time). --tokens-only
// keeps every head (head threshold -inf) and sets the token threshold
// alone for each target: SmartTrim's "tokens only" ablation.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "bench/bench_device.h"
#include "layers/meter.h"
#include "pruning/packed.h"

namespace {

using st::Tensor;

using st::bench::now_s;

double median(std::vector<double> t) {
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Times two workloads taking turns (a, b, a, b, ...) until each has run at
// least `reps` times and both together at least `min_s` seconds; returns
// their median times. Taking turns makes a slow spell on a shared machine
// hit both sides alike, and the time floor gives small models enough runs.
std::pair<double, double> paired_median_seconds(int reps, double min_s, const std::function<void()>& a,
                                                const std::function<void()>& b) {
  a(), b();  // warm-up: the allocator's cache and the GEMM's packing buffers fill
  std::vector<double> ta, tb;
  const double start = now_s();
  while (int(ta.size()) < reps || now_s() - start < min_s) {
    double t0 = now_s();
    a();
    double t1 = now_s();
    b();
    ta.push_back(t1 - t0), tb.push_back(now_s() - t1);
  }
  return {median(ta), median(tb)};
}

struct Batch {
  Tensor ids, mask, image;
  std::vector<int> lengths;
};

// Text lengths: all `text_len`, or (ragged) spread evenly from 4 to text_len.
Batch make_batch(const st::MeterConfig& c, int batch, int text_len, bool ragged, uint64_t seed) {
  st::Rng rng(seed);
  Batch b;
  std::vector<int32_t> ids(size_t(batch) * text_len);
  std::vector<float> mask(ids.size());
  for (int i = 0; i < batch; i++) {
    const int len = ragged && batch > 1 ? 4 + (text_len - 4) * i / (batch - 1) : text_len;
    b.lengths.push_back(len);
    for (int j = 0; j < text_len; j++) {
      const bool real = j < len;
      ids[size_t(i * text_len + j)] =
          !real ? c.pad_token_id : j == 0 ? 0 : j == len - 1 ? 2 : 3 + int32_t(rng.uniform() * float(c.vocab_size - 4));
      mask[size_t(i * text_len + j)] = real ? 1.0f : 0.0f;
    }
  }
  b.ids = Tensor::from_ints(ids, {batch, text_len});
  b.mask = Tensor::from_vector(mask, {batch, text_len});
  b.image = Tensor::randn({batch, 3, c.vit_image_size, c.vit_image_size}, rng);
  return b;
}

Batch on_device(const Batch& b, st::Device device) {
  Batch out = b;
  out.ids = b.ids.to(device), out.mask = b.mask.to(device), out.image = b.image.to(device);
  return out;
}

Batch first_examples(const Batch& b, int n) {
  const int64_t t = b.ids.dim(1), s = b.image.dim(2);
  Batch out;
  out.ids = Tensor::from_ints(std::vector<int32_t>(b.ids.ints(), b.ids.ints() + n * t), {n, t});
  out.mask = Tensor::from_vector(std::vector<float>(b.mask.data(), b.mask.data() + n * t), {n, t});
  out.image = Tensor::from_vector(std::vector<float>(b.image.data(), b.image.data() + n * 3 * s * s), {n, 3, s, s});
  out.lengths.assign(b.lengths.begin(), b.lengths.begin() + n);
  return out;
}

// Random trimmers score every token of a site nearly alike, so a threshold
// would drop all or nothing. Scaling up their layers (env SPREAD_LOCAL,
// SPREAD_MLP1, SPREAD_OUT) makes the logits differ token by token, so theta
// can pick a keep rate.
void spread_trimmer_logits(st::Meter& m) {
  auto factor = [](const char* env, float fallback) { return std::getenv(env) ? float(std::atof(std::getenv(env))) : fallback; };
  const float local = factor("SPREAD_LOCAL", 20), mlp1 = factor("SPREAD_MLP1", 5), out = factor("SPREAD_OUT", 50);
  for (const auto& [name, t] : m.params().list) {
    if (name.rfind("smarttrim.", 0) != 0) continue;
    float f = 1;
    if (name.find(".local.weight") != std::string::npos) f = local;
    if (name.find(".mlp1.weight") != std::string::npos || name.find(".fc1.weight") != std::string::npos) f = mlp1;
    if (name.find(".mlp2.weight") != std::string::npos || name.find(".fc2.weight") != std::string::npos) f = out;
    for (int64_t i = 0; i < t->numel(); i++) t->data()[i] *= f;
  }
}

double flops_ratio(const st::MeterConfig& c, const st::PackedOutput& out, const Batch& b) {
  double ratio = 0;
  for (size_t i = 0; i < out.flops.size(); i++) ratio += out.flops[i] / st::full_flops(c, b.lengths[i], st::Task::VQA);
  return ratio / double(out.flops.size());
}

// Times full and trimmed runs stage by stage, taking turns as above, and
// prints microseconds per run for each stage.
void print_stages(int runs, const std::function<void(const st::PackedMeter::Options&)>& run,
                  st::PackedMeter::Options full, st::PackedMeter::Options trimmed) {
  st::StageTimes full_times, trimmed_times;
  full.stage_times = &full_times, trimmed.stage_times = &trimmed_times;
  for (int i = 0; i < runs; i++) run(full), run(trimmed);
  std::printf("    %-32s %10s %10s\n", "stage (us per run, all threads)", "full", "trimmed");
  st::StageTimes all = trimmed_times;  // every stage either side ran, in the order they ran
  all.add(full_times);
  for (const auto& stage : all.seconds) {
    const std::string& name = stage.first;
    std::printf("    %-32s %10.1f %10.1f\n", name.c_str(), full_times.of(name) / runs * 1e6,
                trimmed_times.of(name) / runs * 1e6);
  }
  std::printf("    %-32s %10.1f %10.1f\n", "sum", full_times.total() / runs * 1e6, trimmed_times.total() / runs * 1e6);
}

struct Row {
  std::string model;
  int batch;
  bool ragged;
  double target, ratio, min_ratio, max_ratio, theta;
  double full_s, trimmed_s, plain_s;
};

}  // namespace

int main(int argc, char** argv) {
  std::string json;
  int reps = 3;
  double min_seconds = 1.0;  // per side-by-side measurement: small models get many runs
  bool tiny_only = false, stages = false, tokens_only = false;
  int only_batch = 0;  // 0: every batch size
  st::Device device = st::Device::CPU;
  for (int i = 1; i < argc; i++) {
    if (!std::strcmp(argv[i], "--json") && i + 1 < argc) json = argv[++i];
    else if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::max(1, std::atoi(argv[++i]));
    else if (!std::strcmp(argv[i], "--min-seconds") && i + 1 < argc) min_seconds = std::atof(argv[++i]);
    else if (!std::strcmp(argv[i], "--tiny-only")) tiny_only = true;
    else if (!std::strcmp(argv[i], "--stages")) stages = true;
    else if (!std::strcmp(argv[i], "--tokens-only")) tokens_only = true;
    else if (!std::strcmp(argv[i], "--batch") && i + 1 < argc) only_batch = std::atoi(argv[++i]);
    else if (st::bench::parse_device(argc, argv, i, device)) continue;
    else {
      std::fprintf(stderr, "usage: bench_smarttrim [--json FILE] [--reps N] [--min-seconds S] [--tiny-only] [--batch N]"
                           " [--device cpu|cuda] [--stages] [--tokens-only]\n");
      return 2;
    }
  }
  if (!st::bench::device_usable(device, "bench_smarttrim")) return 1;
  struct Setup {
    const char* config;
    int text_len;
    std::vector<int> batches;
  };
  std::vector<Setup> setups = {{"configs/meter-tiny-smarttrim.json", 16, {1, 32}}};
  if (!tiny_only) setups.push_back({"configs/meter-base-smarttrim.json", 40, {1, 32}});
  std::vector<Row> rows;
  try {
    for (const Setup& s : setups) {
      st::MeterConfig c = st::load_meter_config(s.config);
      st::Meter model(c, 1);
      spread_trimmer_logits(model);
      st::move_parameters(model.params(), device);
      st::PackedMeter packed(model);
      st::NoGrad no_grad;
      for (int batch : s.batches)
        for (bool ragged : {false, true}) {
          if (only_batch != 0 && batch != only_batch) continue;
          if (ragged && batch == 1) continue;
          const Batch host = make_batch(c, batch, s.text_len, ragged, 7);
          const Batch b = on_device(host, device), probe = on_device(first_examples(host, std::min(batch, 2)), device);
          st::PackedMeter::Options full;
          full.trimmers = false;
          auto packed_run = [&](const st::PackedMeter::Options& o) {
            packed.run(st::Task::VQA, b.ids, b.mask, b.image, o);
            st::bench::finish_queued_work(device);
          };
          auto run_full = [&] { packed_run(full); };
          st::Context eval;
          const double plain_s = paired_median_seconds(reps, min_seconds, run_full, [&] {
                                   model.vqa_logits(model.forward(b.ids, b.mask, b.image, eval).cls);
                                   st::bench::finish_queued_work(device);
                                 }).second;
          // theta for tokens, and for heads too unless --tokens-only
          auto thresholds = [&](float theta) {
            st::PackedMeter::Options o;
            o.token_threshold = theta;
            o.head_threshold = tokens_only ? -std::numeric_limits<float>::infinity() : theta;
            return o;
          };
          for (double target : {0.5, 0.33}) {
            double lo = -1e5, hi = 1e5;  // theta: higher drops more; the spread logits reach the thousands
            for (int it = 0; it < 32; it++) {
              const st::PackedMeter::Options o = thresholds(float(0.5 * (lo + hi)));
              const double r = flops_ratio(c, packed.run(st::Task::VQA, probe.ids, probe.mask, probe.image, o), probe);
              (r > target ? lo : hi) = 0.5 * (lo + hi);
            }
            const st::PackedMeter::Options o = thresholds(float(0.5 * (lo + hi)));
            st::PackedOutput out = packed.run(st::Task::VQA, b.ids, b.mask, b.image, o);
            double mn = 1e9, mx = 0;
            for (size_t i = 0; i < out.flops.size(); i++) {
              const double r = out.flops[i] / st::full_flops(c, b.lengths[i], st::Task::VQA);
              mn = std::min(mn, r), mx = std::max(mx, r);
            }
            const auto [full_s, trimmed_s] = paired_median_seconds(reps, min_seconds, run_full, [&] { packed_run(o); });
            const std::string name = std::string(s.config).substr(8, std::string(s.config).size() - 13) +
                                     (tokens_only ? " (tokens only)" : "");
            rows.push_back({name, batch, ragged, target, flops_ratio(c, out, b), mn, mx, o.token_threshold, full_s,
                            trimmed_s, plain_s});
            const Row& r = rows.back();
            std::printf("%-20s batch %2d %-7s target %.2f: FLOPs ratio %.3f (%.2f..%.2f), full %.3f ms, trimmed %.3f ms, "
                        "speed-up %.2fx for %.2fx fewer FLOPs (efficiency %.2f); plain forward %.3f ms\n",
                        r.model.c_str(), r.batch, r.ragged ? "ragged" : "even", r.target, r.ratio, r.min_ratio,
                        r.max_ratio, r.full_s * 1e3, r.trimmed_s * 1e3, r.full_s / r.trimmed_s, 1.0 / r.ratio,
                        (r.full_s / r.trimmed_s) * r.ratio, r.plain_s * 1e3);
            if (stages) {
              // as many runs as about one second of full-capacity passes, at least reps
              const int runs = std::max(reps, int(std::min(1000.0, 1.0 / r.full_s)));
              print_stages(runs, packed_run, full, o);
            }
            std::fflush(stdout);
          }
        }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_smarttrim: %s\n", e.what());
    return 1;
  }
  if (!json.empty()) {
    FILE* f = std::fopen(json.c_str(), "w");
    if (!f) {
      std::fprintf(stderr, "bench_smarttrim: cannot write %s\n", json.c_str());
      return 1;
    }
    std::fprintf(f, "{\"device\": \"%s\", \"threads\": %d, \"runs\": [\n", st::name(device), omp_get_max_threads());
    for (size_t i = 0; i < rows.size(); i++) {
      const Row& r = rows[i];
      std::fprintf(f,
                   "  {\"model\": \"%s\", \"batch\": %d, \"ragged\": %s, \"target\": %.2f, \"flops_ratio\": %.4f, "
                   "\"min_ratio\": %.4f, \"max_ratio\": %.4f, \"full_s\": %.6f, \"trimmed_s\": %.6f, \"plain_s\": %.6f}%s\n",
                   r.model.c_str(), r.batch, r.ragged ? "true" : "false", r.target, r.ratio, r.min_ratio, r.max_ratio,
                   r.full_s, r.trimmed_s, r.plain_s, i + 1 < rows.size() ? "," : "");
    }
    std::fprintf(f, "]}\n");
    std::fclose(f);
  }
  return 0;
}
