// Side-by-side SGEMM benchmark: st::sgemm vs OpenBLAS cblas_sgemm at the
// model's shapes, 1 and 2 threads, in one run (the machine is shared and
// noisy, so only ratios measured together mean much).
//
//   build/bench_gemm [--json FILE] [--reps N]
//
// Each measurement: for each library in turn (after a pause, see
// run_shape), one warm-up call, then N timed repetitions (default 7); the
// median time of each is reported. Results
// of the two libraries are compared (max relative error, checked).
//
// Batched attention products: ours is st::sgemm_batched; OpenBLAS 0.3.21
// (Debian 12) has no cblas_sgemm_batch, so it gets a loop of cblas_sgemm
// calls, threaded inside each call by OpenBLAS itself.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "engine/gemm.h"

extern "C" void openblas_set_num_threads(int);
extern "C" char* openblas_get_corename(void);

namespace {

struct Shape {
  std::string label;  // "4096x768x768" (MxNxK) or "384x197x197x64" (batch first)
  bool ta, tb;
  int M, N, K;
  int batch;  // 1: plain sgemm
};

struct Result {
  std::string label;
  int threads;
  double ours_gflops, blas_gflops, max_rel_err;
};

std::vector<float> random_vec(std::size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

double now_s() {
  return std::chrono::duration<double>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

Result run_shape(const Shape& s, int threads, int reps) {
  const int lda = s.ta ? s.M : s.K, ldb = s.tb ? s.K : s.N, ldc = s.N;
  const int64_t sa = int64_t(s.M) * s.K, sb = int64_t(s.K) * s.N,
                sc = int64_t(s.M) * s.N;
  const auto A = random_vec(std::size_t(sa * s.batch), 1);
  const auto B = random_vec(std::size_t(sb * s.batch), 2);
  std::vector<float> C1(std::size_t(sc * s.batch)), C2(C1.size());

  omp_set_num_threads(threads);
  openblas_set_num_threads(threads);

  auto ours = [&] {
    if (s.batch == 1)
      st::sgemm(s.ta, s.tb, s.M, s.N, s.K, 1.0f, A.data(), lda, B.data(), ldb,
                0.0f, C1.data(), ldc);
    else
      st::sgemm_batched(s.ta, s.tb, s.M, s.N, s.K, 1.0f, A.data(), lda, sa,
                        B.data(), ldb, sb, 0.0f, C1.data(), ldc, sc, s.batch);
  };
  auto blas = [&] {
    for (int b = 0; b < s.batch; ++b)
      cblas_sgemm(CblasRowMajor, s.ta ? CblasTrans : CblasNoTrans,
                  s.tb ? CblasTrans : CblasNoTrans, s.M, s.N, s.K, 1.0f,
                  A.data() + b * sa, lda, B.data() + b * sb, ldb, 0.0f,
                  C2.data() + b * sc, ldc);
  };

  // Each library is timed in its own block, after a pause: both keep their
  // worker threads spinning for a while after a call (libgomp for ~ms,
  // OpenBLAS for up to ~0.1 s), and a spinning thread of one library on the
  // second core halves the other's 2-thread speed if calls are interleaved.
  auto time_block = [&](const std::function<void()>& fn) {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    fn();  // warm-up: page faults, packing buffers, thread pools
    std::vector<double> t;
    for (int r = 0; r < reps; ++r) {
      const double t0 = now_s();
      fn();
      t.push_back(now_s() - t0);
    }
    return t;
  };
  const std::vector<double> t_ours = time_block(ours);
  const std::vector<double> t_blas = time_block(blas);

  // Relative to the largest |C| of OpenBLAS: a scale-aware comparison.
  double max_abs = 0.0, max_diff = 0.0;
  for (std::size_t i = 0; i < C1.size(); ++i) {
    max_abs = std::max(max_abs, double(std::fabs(C2[i])));
    const double d = std::fabs(double(C1[i]) - double(C2[i]));
    max_diff = std::isnan(d) ? INFINITY : std::max(max_diff, d);
  }
  const double flops = 2.0 * s.M * s.N * double(s.K) * s.batch;
  return {s.label, threads, flops / median(t_ours) * 1e-9,
          flops / median(t_blas) * 1e-9, max_diff / std::max(max_abs, 1e-30)};
}

void write_json(const char* path, const std::vector<Result>& results) {
  FILE* f = std::fopen(path, "w");
  if (!f) {
    std::perror(path);
    std::exit(1);
  }
  std::fprintf(f, "{\n  \"benchmark\": \"gemm\",\n  \"kernel\": \"%s\",\n",
               st::sgemm_kernel_name());
  std::fprintf(f, "  \"openblas_core\": \"%s\",\n  \"results\": [\n",
               openblas_get_corename());
  for (std::size_t i = 0; i < results.size(); ++i) {
    const Result& r = results[i];
    std::fprintf(f,
                 "    {\"shape\": \"%s\", \"threads\": %d, "
                 "\"ours_gflops\": %.3f, \"openblas_gflops\": %.3f, "
                 "\"ratio\": %.4f, \"max_rel_err\": %.3g}%s\n",
                 r.label.c_str(), r.threads, r.ours_gflops, r.blas_gflops,
                 r.ours_gflops / r.blas_gflops, r.max_rel_err,
                 i + 1 < results.size() ? "," : "");
  }
  std::fprintf(f, "  ]\n}\n");
  std::fclose(f);
}

}  // namespace

int main(int argc, char** argv) {
  const char* json = nullptr;
  int reps = 7;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--json") == 0 && i + 1 < argc)
      json = argv[++i];
    else if (std::strcmp(argv[i], "--reps") == 0 && i + 1 < argc)
      reps = std::max(1, std::atoi(argv[++i]));
    else {
      std::fprintf(stderr, "usage: %s [--json FILE] [--reps N]\n", argv[0]);
      return 2;
    }
  }
  std::printf("# ours: kernel=%s, OpenBLAS core=%s; median of %d reps\n",
              st::sgemm_kernel_name(), openblas_get_corename(), reps);
  std::printf("# shapes: MxNxK (row-major, no transpose); batched: "
              "BATCHxMxNxK, 197x197x64 = Q K^T (trans_b), 197x64x197 = A V;\n"
              "# OpenBLAS batched = a loop of cblas_sgemm (no "
              "cblas_sgemm_batch in 0.3.21)\n");

  // Model shapes (ViT-B: 4096 tokens per batch, width 768, MLP 3072,
  // 12 heads x 32 images = 384 attention products of 197 tokens x 64).
  const std::vector<Shape> shapes = {
      {"4096x768x768", false, false, 4096, 768, 768, 1},
      {"4096x3072x768", false, false, 4096, 3072, 768, 1},
      {"4096x768x3072", false, false, 4096, 768, 3072, 1},
      // Q K^T: (197x64) x (197x64)^T -> 197x197 scores, per head.
      {"384x197x197x64", false, true, 197, 197, 64, 384},
      // A V: (197x197) x (197x64) -> 197x64, per head.
      {"384x197x64x197", false, false, 197, 64, 197, 384},
  };

  std::vector<Result> results;
  bool ok = true;
  for (const Shape& s : shapes)
    for (int threads : {1, 2}) {
      const Result r = run_shape(s, threads, reps);
      results.push_back(r);
      std::printf(
          "gemm %s threads=%d ours=%.1f GFLOP/s openblas=%.1f GFLOP/s "
          "ratio=%.2f\n",
          r.label.c_str(), r.threads, r.ours_gflops, r.blas_gflops,
          r.ours_gflops / r.blas_gflops);
      std::printf("#   max relative difference ours vs openblas: %.2g\n",
                  r.max_rel_err);
      std::fflush(stdout);
      if (!(r.max_rel_err < 1e-4)) {
        std::fprintf(stderr, "MISMATCH vs OpenBLAS at %s\n", r.label.c_str());
        ok = false;
      }
    }
  if (json) write_json(json, results);
  return ok ? 0 : 1;
}
