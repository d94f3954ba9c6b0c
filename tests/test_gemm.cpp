// Tests for st::sgemm / st::sgemm_batched against a double-precision
// triple loop, for every micro-kernel this CPU can run.
#include "doctest/doctest.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "engine/gemm.h"

namespace {

std::vector<float> random_matrix(std::size_t n, std::mt19937& rng) {
  // Values in [-1, 1], never exactly zero, so a skipped or wrongly indexed
  // term always changes the result.
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) {
    do x = dist(rng);
    while (x == 0.0f);
  }
  return v;
}

// Reference: C = alpha * op(A) op(B) + beta * C in double precision.
// Returns, per element, also sum |alpha * a * b| + |beta * c| (the scale the
// float rounding error is relative to).
void reference(bool ta, bool tb, int M, int N, int K, float alpha,
               const std::vector<float>& A, int lda, const std::vector<float>& B,
               int ldb, float beta, const std::vector<float>& C0, int ldc,
               std::vector<double>& ref, std::vector<double>& mag) {
  ref.assign(std::size_t(M) * ldc, 0.0);
  mag.assign(std::size_t(M) * ldc, 0.0);
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      double s = 0.0, m = 0.0;
      for (int k = 0; k < K; ++k) {
        const double a = ta ? A[std::size_t(k) * lda + i] : A[std::size_t(i) * lda + k];
        const double b = tb ? B[std::size_t(j) * ldb + k] : B[std::size_t(k) * ldb + j];
        s += a * b;
        m += std::fabs(a * b);
      }
      double r = double(alpha) * s;
      double mg = std::fabs(double(alpha)) * m;
      if (beta != 0.0f) {
        r += double(beta) * C0[std::size_t(i) * ldc + j];
        mg += std::fabs(double(beta) * C0[std::size_t(i) * ldc + j]);
      }
      ref[std::size_t(i) * ldc + j] = r;
      mag[std::size_t(i) * ldc + j] = mg;
    }
}

struct Case {
  bool ta, tb;
  int M, N, K;
  float alpha, beta;
  int pad = 0;  // extra elements per row in lda/ldb/ldc
};

// Runs one sgemm and checks every element of C, including that the padding
// columns (between N and ldc) are untouched.
void check_case(const Case& c, uint32_t seed) {
  std::mt19937 rng(seed);
  const int a_rows = c.ta ? c.K : c.M, a_cols = c.ta ? c.M : c.K;
  const int b_rows = c.tb ? c.N : c.K, b_cols = c.tb ? c.K : c.N;
  const int lda = a_cols + c.pad, ldb = b_cols + c.pad, ldc = c.N + c.pad;
  const auto A = random_matrix(std::size_t(a_rows) * lda, rng);
  const auto B = random_matrix(std::size_t(b_rows) * ldb, rng);
  std::vector<float> C0 = random_matrix(std::size_t(c.M) * ldc, rng);
  std::vector<float> C = C0;
  const float sentinel = 12345.0f;
  for (int i = 0; i < c.M; ++i)
    for (int j = c.N; j < ldc; ++j) C[std::size_t(i) * ldc + j] = sentinel;
  if (c.beta == 0.0f)  // beta == 0: C is write-only, even NaN must vanish
    for (int i = 0; i < c.M; ++i)
      for (int j = 0; j < c.N; ++j)
        C[std::size_t(i) * ldc + j] = std::numeric_limits<float>::quiet_NaN();

  st::sgemm(c.ta, c.tb, c.M, c.N, c.K, c.alpha, A.data(), lda, B.data(), ldb,
            c.beta, C.data(), ldc);

  std::vector<double> ref, mag;
  reference(c.ta, c.tb, c.M, c.N, c.K, c.alpha, A, lda, B, ldb, c.beta, C0, ldc,
            ref, mag);
  const double tol = 1e-5 * std::sqrt(double(std::max(c.K, 1)));
  int bad = 0;
  for (int i = 0; i < c.M && bad < 5; ++i) {
    for (int j = 0; j < ldc && bad < 5; ++j) {
      const std::size_t idx = std::size_t(i) * ldc + j;
      if (j >= c.N) {
        if (C[idx] != sentinel) {
          ++bad;
          FAIL_CHECK("padding overwritten at (" << i << "," << j << ")");
        }
        continue;
      }
      const double err = std::fabs(double(C[idx]) - ref[idx]);
      if (!std::isfinite(C[idx]) || err > tol * (mag[idx] + 1e-30)) {
        ++bad;
        FAIL_CHECK("C(" << i << "," << j << ") = " << C[idx] << " expected "
                        << ref[idx] << " (err " << err << ", bound "
                        << tol * mag[idx] << ")");
      }
    }
  }
  CHECK(bad == 0);
}

std::string describe(const Case& c) {
  return std::string(c.ta ? "T" : "N") + (c.tb ? "T" : "N") + " M=" +
         std::to_string(c.M) + " N=" + std::to_string(c.N) + " K=" +
         std::to_string(c.K) + " alpha=" + std::to_string(c.alpha) +
         " beta=" + std::to_string(c.beta) + " pad=" + std::to_string(c.pad);
}

// Shapes around the tile sizes (14x32, 6x16, 4x8), the cache blocks
// (MC 56/48/128, KC 1024/768/256, NC 3072/2048) and the model's attention
// shape.
const int kShapes[][3] = {
    {1, 1, 1},      {7, 13, 5},    {37, 29, 61},   {131, 67, 259},
    {197, 64, 197}, {197, 197, 64}, {13, 31, 255},  {15, 33, 257},
    {14, 32, 256},  {28, 64, 1},   {169, 17, 3},   {145, 129, 300},
    {1, 300, 17},   {300, 1, 17},  {29, 65, 513},
};

void run_suite(const char* kernel) {
  uint32_t seed = 1;
  for (const auto& s : kShapes)
    for (int t = 0; t < 4; ++t) {
      const float betas[] = {0.0f, 1.0f, 0.5f};
      const float beta = betas[(seed + t) % 3];
      const Case c{(t & 1) != 0, (t & 2) != 0, s[0], s[1], s[2],
                   t == 0 ? 1.0f : -0.75f, beta, (seed % 2) ? 3 : 0};
      CAPTURE(kernel);
      INFO(describe(c));
      check_case(c, seed++);
    }
}

// Forces a kernel for the duration of a scope; restores the default after.
struct ForcedKernel {
  bool ok;
  explicit ForcedKernel(const char* name) : ok(st::sgemm_force_kernel(name)) {}
  ~ForcedKernel() { st::sgemm_force_kernel(nullptr); }
};

}  // namespace

TEST_CASE("sgemm: each micro-kernel matches a double-precision reference") {
  for (const char* name : {"generic", "avx2", "avx512"}) {
    ForcedKernel fk(name);
    if (!fk.ok) {
      MESSAGE("kernel " << name << " not supported on this CPU; skipped");
      continue;
    }
    CHECK(std::string(st::sgemm_kernel_name()) == name);
    run_suite(name);
  }
}

TEST_CASE("sgemm: every beta and transpose with padded leading dimensions") {
  uint32_t seed = 100;
  for (const float beta : {0.0f, 1.0f, 0.5f})
    for (int t = 0; t < 4; ++t) {
      const Case c{(t & 1) != 0, (t & 2) != 0, 61, 47, 83, 1.5f, beta, 5};
      INFO(describe(c));
      check_case(c, seed++);
    }
}

TEST_CASE("sgemm: large enough to use threads and several cache blocks") {
  // K > KC, M > 2*MC, N > NC for every kernel: exercises the K-block beta
  // chaining, the cooperative B packing and the row split over threads.
  for (const char* name : {"avx512", "avx2", "generic"}) {
    ForcedKernel fk(name);
    if (!fk.ok) continue;
    CAPTURE(name);
    uint32_t seed = 200;
    for (int t = 0; t < 4; ++t) {
      // M > 2*MC (each thread gets several A blocks), K > 2*KC.
      const Case tall{(t & 1) != 0, (t & 2) != 0, 389, 67, 531, 0.5f,
                      t == 2 ? 0.0f : 0.5f, 1};
      INFO(describe(tall));
      check_case(tall, seed++);
      // N > NC (several B panels), K > KC.
      const Case wide{(t & 1) != 0, (t & 2) != 0, 45, 3109, 300, -1.25f,
                      t == 1 ? 0.0f : 1.0f, 2};
      INFO(describe(wide));
      check_case(wide, seed++);
    }
    // Few rows, many columns: threads split the B micro-panels instead and
    // run without barriers between K blocks. Several K blocks of unequal
    // length and two N panels, repeated: these caught races on the shared
    // B buffer that a single run misses.
    for (int rep = 0; rep < 4; ++rep) {
      const Case wide{false, rep % 2 == 1, 9, 3109, 1100, 1.0f, 0.0f, 2};
      INFO(describe(wide));
      check_case(wide, seed++);
    }
  }
}

TEST_CASE("sgemm: one thread and two threads agree bit for bit") {
  // The same blocking runs in both, so the rounding is identical.
  std::mt19937 rng(7);
  const int M = 300, N = 200, K = 700;
  const auto A = random_matrix(std::size_t(M) * K, rng);
  const auto B = random_matrix(std::size_t(K) * N, rng);
  std::vector<float> C1(std::size_t(M) * N), C2(std::size_t(M) * N);
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  st::sgemm(false, false, M, N, K, 1.0f, A.data(), K, B.data(), N, 0.0f, C1.data(), N);
  omp_set_num_threads(2);
  st::sgemm(false, false, M, N, K, 1.0f, A.data(), K, B.data(), N, 0.0f, C2.data(), N);
  omp_set_num_threads(saved);
  CHECK(C1 == C2);
}

TEST_CASE("sgemm: prepacked weights give the same products as packing them per call") {
  // x W^T with W (N, ldb): odd sizes, a padded ldb, a W that is a slice of
  // a larger matrix, and one W under two shapes.
  std::mt19937 rng(11);
  const int ldb = 61;
  const auto W = random_matrix(std::size_t(97) * ldb, rng);  // rows 0..96, ldb columns
  struct Use { const float* w; int M, N, K; float beta; };
  const std::vector<Use> uses = {{W.data(), 37, 45, 29, 0.0f},            // 45 outputs of 29 inputs
                                 {W.data() + 45 * ldb, 5, 52, 61, 0.0f},  // the next 52 rows, all columns
                                 {W.data() + 45 * ldb, 300, 52, 61, 1.0f}, // many rows: two threads may share them
                                 {W.data(), 3, 16, 17, 0.5f}};            // the first W under another shape
  st::PrepackedWeights prepacked;
  prepacked.add(W.data(), 29, 45, ldb);
  prepacked.add(W.data() + 45 * ldb, 61, 52, ldb);
  prepacked.add(W.data(), 29, 45, ldb);  // again: kept once
  CHECK(prepacked.count() == 2);
  const int saved = omp_get_max_threads();
  for (int threads : {1, 2}) {
    omp_set_num_threads(threads);
    for (const Use& u : uses) {
      INFO("threads " << threads << ", M " << u.M << ", N " << u.N << ", K " << u.K);
      const auto x = random_matrix(std::size_t(u.M) * u.K, rng);
      const auto C0 = random_matrix(std::size_t(u.M) * u.N, rng);
      std::vector<float> plain = C0, pre = C0;
      st::sgemm(false, true, u.M, u.N, u.K, 1.0f, x.data(), u.K, u.w, ldb, u.beta, plain.data(), u.N);
      {
        st::PrepackedWeights::Use use(&prepacked);
        st::sgemm(false, true, u.M, u.N, u.K, 1.0f, x.data(), u.K, u.w, ldb, u.beta, pre.data(), u.N);
      }
      CHECK(pre == plain);  // the same panels, so the same rounding
      std::vector<double> ref, mag;
      reference(false, true, u.M, u.N, u.K, 1.0f, x, u.K, std::vector<float>(u.w, W.data() + W.size()), ldb, u.beta,
                C0, u.N, ref, mag);
      double worst = 0;
      for (std::size_t i = 0; i < pre.size(); ++i) worst = std::max(worst, std::fabs(pre[i] - ref[i]) / (mag[i] + 1e-30));
      CHECK(worst < 1e-5);
    }
  }
  omp_set_num_threads(saved);
  // A Use ends with its scope: the weights change, and the next product sees them.
  std::vector<float> W2 = W;
  st::PrepackedWeights of_w2;
  of_w2.add(W2.data(), 29, 45, ldb);
  for (float& v : W2) v = -v;
  const auto x = random_matrix(std::size_t(4) * 29, rng);
  std::vector<float> a(4 * 45), b(4 * 45);
  {
    st::PrepackedWeights::Use use(&of_w2);
    st::sgemm(false, true, 4, 45, 29, 1.0f, x.data(), 29, W2.data(), ldb, 0.0f, a.data(), 45);  // the copy: old values
  }
  st::sgemm(false, true, 4, 45, 29, 1.0f, x.data(), 29, W2.data(), ldb, 0.0f, b.data(), 45);    // packed now: new values
  for (int i = 0; i < 4 * 45; ++i) CHECK(a[i] == -b[i]);
}

TEST_CASE("sgemm: degenerate sizes") {
  std::mt19937 rng(3);
  auto C = random_matrix(12, rng);
  const auto C0 = C;
  const float a = 1.0f;
  SUBCASE("M or N zero touches nothing") {
    st::sgemm(false, false, 0, 4, 3, 1.0f, &a, 3, &a, 4, 0.0f, C.data(), 4);
    st::sgemm(false, false, 3, 0, 3, 1.0f, &a, 3, &a, 1, 0.0f, C.data(), 4);
    CHECK(C == C0);
  }
  SUBCASE("K zero scales C by beta") {
    st::sgemm(false, false, 3, 4, 0, 1.0f, nullptr, 1, nullptr, 4, 0.5f, C.data(), 4);
    for (int i = 0; i < 12; ++i) CHECK(C[i] == 0.5f * C0[i]);
  }
  SUBCASE("K zero, beta zero clears NaN") {
    std::vector<float> Cn(12, std::numeric_limits<float>::quiet_NaN());
    st::sgemm(true, true, 3, 4, 0, 1.0f, nullptr, 1, nullptr, 1, 0.0f, Cn.data(), 4);
    for (float x : Cn) CHECK(x == 0.0f);
  }
}

TEST_CASE("sgemm_batched: per-entry results, shared operands via stride 0") {
  std::mt19937 rng(11);
  const int batch = 5, M = 23, N = 37, K = 19;
  for (const int shared : {0, 1, 2}) {  // 0: none, 1: A shared, 2: B shared
    for (const int threads : {1, 2}) {
      CAPTURE(shared);
      CAPTURE(threads);
      // tb = true: B entries are (N, K).
      const int64_t sa = shared == 1 ? 0 : int64_t(M) * K;
      const int64_t sb = shared == 2 ? 0 : int64_t(N) * K;
      const int64_t sc = int64_t(M) * N + 7;  // gap between the C entries
      const auto A = random_matrix(std::size_t(sa ? sa * batch : M * K), rng);
      const auto B = random_matrix(std::size_t(sb ? sb * batch : N * K), rng);
      auto C = random_matrix(std::size_t(sc * batch), rng);
      const auto C0 = C;
      const int saved = omp_get_max_threads();
      omp_set_num_threads(threads);
      st::sgemm_batched(false, true, M, N, K, 2.0f, A.data(), K, sa, B.data(),
                        K, sb, 0.5f, C.data(), N, sc, batch);
      omp_set_num_threads(saved);
      for (int b = 0; b < batch; ++b) {
        const std::vector<float> Ab(A.begin() + b * sa, A.begin() + b * sa + M * K);
        const std::vector<float> Bb(B.begin() + b * sb, B.begin() + b * sb + N * K);
        const std::vector<float> Cb(C0.begin() + b * sc, C0.begin() + b * sc + M * N);
        std::vector<double> ref, mag;
        reference(false, true, M, N, K, 2.0f, Ab, K, Bb, K, 0.5f, Cb, N, ref, mag);
        int bad = 0;
        for (int i = 0; i < M * N; ++i)
          if (std::fabs(C[b * sc + i] - ref[i]) > 1e-5 * std::sqrt(K) * mag[i]) ++bad;
        CHECK(bad == 0);
        for (int g = M * N; g < sc; ++g) CHECK(C[b * sc + g] == C0[b * sc + g]);
      }
    }
  }
}

TEST_CASE("sgemm_batched: large batch of attention-shaped products") {
  // batch >= threads: entries are spread over threads, each single-threaded.
  std::mt19937 rng(12);
  const int batch = 6, M = 197, N = 197, K = 64;
  const auto Q = random_matrix(std::size_t(batch) * M * K, rng);
  const auto Kt = random_matrix(std::size_t(batch) * N * K, rng);
  std::vector<float> S(std::size_t(batch) * M * N,
                       std::numeric_limits<float>::quiet_NaN());
  st::sgemm_batched(false, true, M, N, K, 0.125f, Q.data(), K, int64_t(M) * K,
                    Kt.data(), K, int64_t(N) * K, 0.0f, S.data(), N,
                    int64_t(M) * N, batch);
  int bad = 0;
  for (int b = 0; b < batch; ++b) {
    const std::vector<float> Qb(Q.begin() + b * M * K, Q.begin() + (b + 1) * M * K);
    const std::vector<float> Kb(Kt.begin() + b * N * K, Kt.begin() + (b + 1) * N * K);
    std::vector<double> ref, mag;
    reference(false, true, M, N, K, 0.125f, Qb, K, Kb, K, 0.0f, {}, N, ref, mag);
    for (int i = 0; i < M * N; ++i)
      if (!(std::fabs(S[b * M * N + i] - ref[i]) <= 1e-5 * 8 * mag[i])) ++bad;
  }
  CHECK(bad == 0);
}
