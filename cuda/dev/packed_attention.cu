// Dev driver for packed attention (the llm.c dev/cuda habit): numbered
// kernel versions, each checked against a simple CPU reference and timed,
// on a METER-base-like shape and on a tiny one.
//
// Build and run from the repository root (it includes the library's
// cuda/packed_attention.cu and cuda/dev/common.h, and needs nothing else to link):
//   nvcc -O3 -arch=sm_90 -I. cuda/dev/packed_attention.cu -o build/dev_packed_attention
//   ./build/dev_packed_attention        # every version
//   ./build/dev_packed_attention 2      # version 2 only
//   ./build/dev_packed_attention 2 100  # version 2, 100 timed repeats (default 20)
//
// Versions:
//   1  naive: one thread per query row; one pass over the keys for the row
//      max, a second that recomputes every score for the sum and the output,
//      which it accumulates in global memory.
//   2  flash style, the library's kernel (cuda/packed_attention.cu, included
//      below as is): 64 x 64 tiles of queries and keys in shared memory, an
//      online softmax, outputs in registers.
//
// Work counted: 4 n m head_dim FLOPs per (example, head) (two GEMMs of
// 2 n m head_dim); the exps and the softmax bookkeeping are not counted.
// The fraction printed is of an H100 SXM's ~67 TFLOP/s of FP32 FMA.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

// Version 2 is the library's kernel itself (cuda/packed_attention.cu).
#include "cuda/packed_attention.cu"
#include "cuda/dev/common.h"

// ---------------------------------------------------------------------------
// CPU reference, in double: ctx[r, h] = softmax(q_r k^T) v for one query row.

void reference_row(double* out, const float* q, const float* k, const float* v, const std::vector<int>& q_at,
                   const std::vector<int>& k_at, int b, int h, int r, int H, int hd) {
  const int64_t d = int64_t(H) * hd;
  const int m = k_at[b + 1] - k_at[b];
  const float* qr = q + (q_at[b] + r) * d + h * hd;
  std::vector<double> s(static_cast<size_t>(m));
  double mx = -INFINITY;
  for (int j = 0; j < m; j++) {
    const float* kj = k + (k_at[b] + j) * d + h * hd;
    double dot = 0.0;
    for (int c = 0; c < hd; c++) dot += double(qr[c]) * kj[c];
    s[size_t(j)] = dot;
    mx = std::max(mx, dot);
  }
  double sum = 0.0;
  for (int j = 0; j < m; j++) sum += s[size_t(j)] = std::exp(s[size_t(j)] - mx);
  for (int c = 0; c < hd; c++) out[c] = 0.0;
  for (int j = 0; j < m; j++) {
    const float* vj = v + (k_at[b] + j) * d + h * hd;
    for (int c = 0; c < hd; c++) out[c] += s[size_t(j)] / sum * vj[c];
  }
}

// ---------------------------------------------------------------------------
// Version 1: one thread per query row of one (example, head).
// Grid (ceil(max_rows / 128), H, B), block 128.

__global__ void attention_naive(float* ctx, const float* q, const float* k, const float* v, const int* q_at,
                                const int* k_at, const float* head_keep, int H, int hd) {
  const int b = blockIdx.z, h = blockIdx.y, r = blockIdx.x * blockDim.x + threadIdx.x;
  if (head_keep && head_keep[b * H + h] == 0.0f) return;
  const int n = q_at[b + 1] - q_at[b], m = k_at[b + 1] - k_at[b];
  if (r >= n) return;
  const int64_t d = int64_t(H) * hd;
  const float* qr = q + (q_at[b] + r) * d + h * hd;
  float* out = ctx + (q_at[b] + r) * d + h * hd;
  const float* kb = k + int64_t(k_at[b]) * d + h * hd;
  const float* vb = v + int64_t(k_at[b]) * d + h * hd;
  // pass 1: the row max
  float mx = -INFINITY;
  for (int j = 0; j < m; j++) {
    float s = 0.0f;
    for (int c = 0; c < hd; c++) s += qr[c] * kb[j * d + c];
    mx = fmaxf(mx, s);
  }
  // pass 2: the scores again, their exps summed and applied to v
  for (int c = 0; c < hd; c++) out[c] = 0.0f;
  float sum = 0.0f;
  for (int j = 0; j < m; j++) {
    float s = 0.0f;
    for (int c = 0; c < hd; c++) s += qr[c] * kb[j * d + c];
    const float p = expf(s - mx);
    sum += p;
    for (int c = 0; c < hd; c++) out[c] += p * vb[j * d + c];
  }
  const float inv = m > 0 ? 1.0f / sum : 0.0f;  // no keys: zeros
  for (int c = 0; c < hd; c++) out[c] *= inv;
}

// ---------------------------------------------------------------------------

struct Case {
  const char* name;
  int B, H, hd, min_len, max_len;
};

struct Buffers {
  std::vector<int> q_at, k_at;
  std::vector<float> q, k, v;
  int max_rows = 0;
  double flops = 0.0;
  float *dq = nullptr, *dk = nullptr, *dv = nullptr, *dctx = nullptr;
  int *dq_at = nullptr, *dk_at = nullptr;
};

// Self-attention over B segments of random lengths in [min_len, max_len].
Buffers make_problem(const Case& s, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<int> len(s.min_len, s.max_len);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Buffers p;
  p.q_at.push_back(0);
  for (int b = 0; b < s.B; b++) {
    const int n = len(gen);
    p.q_at.push_back(p.q_at.back() + n);
    p.max_rows = std::max(p.max_rows, n);
    p.flops += 4.0 * n * n * s.hd * s.H;
  }
  p.k_at = p.q_at;
  const size_t elems = size_t(p.q_at.back()) * s.H * s.hd;
  const float scale = 1.0f / std::sqrt(float(s.hd));  // q comes scaled, as the model gives it
  p.q.resize(elems), p.k.resize(elems), p.v.resize(elems);
  for (auto& x : p.q) x = normal(gen) * scale;
  for (auto& x : p.k) x = normal(gen);
  for (auto& x : p.v) x = normal(gen);
  const size_t bytes = elems * sizeof(float), at_bytes = p.q_at.size() * sizeof(int);
  CHECK_CUDA(cudaMalloc(&p.dq, bytes));
  CHECK_CUDA(cudaMalloc(&p.dk, bytes));
  CHECK_CUDA(cudaMalloc(&p.dv, bytes));
  CHECK_CUDA(cudaMalloc(&p.dctx, bytes));
  CHECK_CUDA(cudaMalloc(&p.dq_at, at_bytes));
  CHECK_CUDA(cudaMalloc(&p.dk_at, at_bytes));
  CHECK_CUDA(cudaMemcpy(p.dq, p.q.data(), bytes, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(p.dk, p.k.data(), bytes, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(p.dv, p.v.data(), bytes, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(p.dq_at, p.q_at.data(), at_bytes, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(p.dk_at, p.k_at.data(), at_bytes, cudaMemcpyHostToDevice));
  return p;
}

void free_problem(Buffers& p) {
  for (float* ptr : {p.dq, p.dk, p.dv, p.dctx}) CHECK_CUDA(cudaFree(ptr));
  CHECK_CUDA(cudaFree(p.dq_at));
  CHECK_CUDA(cudaFree(p.dk_at));
}

void run_version(int version, const Case& s, const Buffers& p) {
  if (version == 1) {
    const dim3 grid{unsigned((p.max_rows + 127) / 128), unsigned(s.H), unsigned(s.B)};
    attention_naive<<<grid, 128>>>(p.dctx, p.dq, p.dk, p.dv, p.dq_at, p.dk_at, nullptr, s.H, s.hd);
    CHECK_CUDA(cudaGetLastError());
  } else {
    st::cuda::packed_attention_forward(p.dctx, p.dq, p.dk, p.dv, p.dq_at, p.dk_at, nullptr, s.B, s.H, s.hd);
  }
}

// max |gpu - ref| / max(1, max |ref|) over every (example, head) and a
// sample of rows (every 7th and the last), so the check stays quick.
double check_version(const Case& s, const Buffers& p) {
  const size_t elems = p.q.size();
  std::vector<float> ctx(elems);
  CHECK_CUDA(cudaMemcpy(ctx.data(), p.dctx, elems * sizeof(float), cudaMemcpyDeviceToHost));
  const int64_t d = int64_t(s.H) * s.hd;
  std::vector<double> ref(size_t(s.hd));
  double max_diff = 0.0, max_ref = 0.0;
  for (int b = 0; b < s.B; b++) {
    const int n = p.q_at[b + 1] - p.q_at[b];
    std::vector<int> rows;
    for (int r = 0; r < n; r += 7) rows.push_back(r);
    if (n > 0 && rows.back() != n - 1) rows.push_back(n - 1);
    for (int h = 0; h < s.H; h++)
      for (int r : rows) {
        reference_row(ref.data(), p.q.data(), p.k.data(), p.v.data(), p.q_at, p.k_at, b, h, r, s.H, s.hd);
        const float* got = ctx.data() + (p.q_at[b] + r) * d + h * s.hd;
        for (int c = 0; c < s.hd; c++) {
          if (!std::isfinite(got[c])) return INFINITY;  // unwritten (the NaN fill) or overflowed
          max_diff = std::max(max_diff, std::fabs(got[c] - ref[size_t(c)]));
          max_ref = std::max(max_ref, std::fabs(ref[size_t(c)]));
        }
      }
  }
  return max_diff / std::max(1.0, max_ref);
}

int main(int argc, char** argv) {
  const auto [only, repeats] = dev::parse_args(argc, argv, 2);
  const double kPeak = dev::kFp32FlopsPerSecond;
  dev::print_device();

  const Case shapes[] = {
      {"METER-base-like", 32, 12, 64, 100, 577},
      {"tiny", 32, 2, 16, 10, 40},
  };
  bool all_ok = true;
  for (const Case& s : shapes) {
    Buffers p = make_problem(s, 42);
    std::printf("\n%s: B %d, H %d, head_dim %d, lengths %d..%d (%d rows, longest %d), %.3f GFLOP\n", s.name, s.B,
                s.H, s.hd, s.min_len, s.max_len, p.q_at.back(), p.max_rows, p.flops * 1e-9);
    for (int version = 1; version <= 2; version++) {
      if (only && version != only) continue;
      // correctness first, on a ctx full of garbage so unwritten rows show
      CHECK_CUDA(cudaMemset(p.dctx, 0xff, p.q.size() * sizeof(float)));  // NaNs
      run_version(version, s, p);
      CHECK_CUDA(cudaDeviceSynchronize());
      const double err = check_version(s, p);
      const bool ok = err <= 1e-5;
      all_ok = all_ok && ok;
      // then time
      const float ms = dev::time_ms(repeats, [&] { run_version(version, s, p); });
      const double flops_per_s = p.flops / (double(ms) * 1e-3);
      std::printf("  version %d: %9.4f ms  %8.1f GFLOP/s  %5.2f%% of 67 TFLOP/s  error %.2e %s\n", version, ms,
                  flops_per_s * 1e-9, 100.0 * flops_per_s / kPeak, err, ok ? "ok" : "MISMATCH");
    }
    free_problem(p);
  }
  std::printf("\n%s\n", all_ok ? "all versions match the reference" : "SOME VERSION DOES NOT MATCH");
  return all_ok ? 0 : 1;
}
