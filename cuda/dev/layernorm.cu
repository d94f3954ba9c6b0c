// Dev driver for LayerNorm forward and backward (the llm.c dev/cuda habit):
// numbered kernel versions, each checked against a double-precision CPU
// reference on odd and even sizes, then timed at METER-base-like shapes.
//
// Build and run from the repository root (it includes the library's
// cuda/layernorm.cu and cuda/dev/common.h, and needs nothing else to link):
//   nvcc -O3 -std=c++20 -arch=sm_90 -I. cuda/dev/layernorm.cu -o build/dev_layernorm && build/dev_layernorm [version] [repeats]
//   build/dev_layernorm          # every version, 20 timed repeats
//   build/dev_layernorm 3        # version 3 only
//   build/dev_layernorm 3 100    # version 3, 100 timed repeats
// It exits 1 if any version run does not match the reference.
//
// The op, as engine/ops/layernorm.cpp, over `rows` rows of n floats, eps 1e-5:
//   forward   mean = sum x / n, var = sum (x - mean)^2 / n (two passes: the
//             one-pass formula cancels when |mean| >> std), rstd = 1 / sqrt(var + eps),
//             out = (x - mean) rstd w + b; mean and rstd (rows) are kept for the backward
//   backward  with xhat = (x - mean) rstd and dxhat = dy w:
//             dx += rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat))
//             dw += sum over rows of dy xhat,  db += sum over rows of dy
//   The gradients accumulate (+=), as the engine's autograd wants.
//
// Versions:
//   1  the library's kernels (cuda/layernorm.cu, included): one block of 128
//      threads per row, every sum through block_sum (warp shuffles, then
//      shared memory and two __syncthreads). x is read three times. dw and db:
//      column sums in two deterministic stages (cuda/column_sums.h: blocks of
//      about 64 rows into partial sums, then the partials in order), so dy and
//      x are read once more after dx.
//   2  one warp (32 threads) per row, 8 rows to a block of 256: the sums are
//      warp shuffles only, no shared memory and no __syncthreads. For
//      n <= 1024 the row lives in registers (kPer floats a lane), so x is read
//      from memory once; when n % 4 == 0 every load and store is a float4
//      (16 bytes), a quarter of the memory instructions. For n > 1024 a warp
//      per row re-reads the row each pass (from the cache, mostly).
//      Backward: dx the same way; dw and db as version 1.
//   3  forward as version 2. Backward: dx as version 2, fused with the first
//      stage of the two-stage reduction of dw and db. A block takes a chunk of
//      rows; each lane adds dy xhat and dy for its own columns over its warp's
//      rows, in registers; the block adds its 8 warps in shared memory, in warp
//      order, and writes its partial sums to a scratch buffer (parts, 2, n).
//      A second kernel adds the partials in part order. Every sum has a fixed
//      order, so the result has the same bits every run (no atomics), and x
//      and dy are read once. (n > 1024: version 2's dx and a separate first
//      stage that reads dy and x again.)
//
// Timed: rows 32 x 577 (a batch of 32 images' tokens) and 32 x 40 (text), n
// 768. A backward time includes dw and db; version 3 is the one that reads
// dy and x once for both.
// Work counted: the bytes the op has to move, each once. Forward reads x, w,
// b and writes out, mean, rstd. Backward reads dy, x, w, mean, rstd and dx
// (it is +=), writes dx, and reads and writes dw and db. The fraction printed
// is of an H100 SXM's ~3.35 TB/s of HBM3 bandwidth.
//
// Status: compiled, and checked on the CPU under a host emulation of the
// kernels (threads as fibers, shuffles and __syncthreads enforced); not yet
// run on a GPU, so no timing here has been measured.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <type_traits>
#include <vector>

// Version 1 is the library's code itself (cuda/layernorm.cu, and its
// warp_sum from cuda/launch.h, which versions 2 and 3 use too).
#include "cuda/layernorm.cu"
#include "cuda/dev/common.h"

using st::cuda::warp_sum;

constexpr float kEps = 1e-5f;
constexpr int kWarpThreads = 256;  // versions 2 and 3: 8 warps a block, one row a warp
constexpr int kWarpsPerBlock = kWarpThreads / 32;
constexpr int kMaxCached = 1024;   // the longest row versions 2 and 3 keep in registers (32 floats a lane)

// W consecutive floats between memory and registers. W = 4 is one 16-byte
// access, which needs a 16-byte aligned address: a row of n % 4 == 0 floats
// in a cudaMalloc buffer (256-byte aligned) starts at one.
template <int W>
__device__ __forceinline__ void load(float* dst, const float* src) {
  if constexpr (W == 4) {
    const float4 t = *reinterpret_cast<const float4*>(src);
    dst[0] = t.x, dst[1] = t.y, dst[2] = t.z, dst[3] = t.w;
  } else {
    for (int k = 0; k < W; k++) dst[k] = src[k];
  }
}
template <int W>
__device__ __forceinline__ void store(float* dst, const float* src) {
  if constexpr (W == 4) {
    *reinterpret_cast<float4*>(dst) = make_float4(src[0], src[1], src[2], src[3]);
  } else {
    for (int k = 0; k < W; k++) dst[k] = src[k];
  }
}

// ---------------------------------------------------------------------------
// CPU reference, in double.

// mean and rstd of one row
void reference_stats(double& mean, double& rstd, const float* x, int n) {
  double m = 0.0;
  for (int i = 0; i < n; i++) m += x[i];
  m /= n;
  double v = 0.0;
  for (int i = 0; i < n; i++) v += (x[i] - m) * (x[i] - m);
  v /= n;
  mean = m;
  rstd = 1.0 / std::sqrt(v + double(kEps));
}

// ---------------------------------------------------------------------------
// Version 2: one warp per row. Block 256 = 8 rows; grid ceil(rows / 8).
//
// The cached kernels keep the row in registers. kPer floats a lane
// (n <= 32 kPer), in kPer / W pieces of W floats: lane l holds pieces
// l, l + 32, l + 64, ... of the row, so each of the warp's loads reads 32
// consecutive pieces (coalesced). The loops over pieces are unrolled, so the
// arrays' indices are constants and they stay in registers; pieces past the
// row's end are skipped (with W = 4, n % 4 == 0, so a piece is all in or all out).

template <int kPer, int W>
__global__ void layernorm_forward_warp(float* out, float* mean, float* rstd, const float* x, const float* weight,
                                       const float* bias, int64_t rows, int n, float eps) {
  static_assert(kPer % W == 0, "whole pieces");
  const int lane = threadIdx.x % 32;
  const int64_t r = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (r >= rows) return;  // the whole warp leaves together, so every shuffle below has its 32 lanes
  const float* xr = x + r * n;
  float v[kPer];  // this lane's share of the row
  float s = 0.0f;
#pragma unroll
  for (int c = 0; c < kPer / W; c++) {
    const int i = (c * 32 + lane) * W;
    if (i < n) {
      load<W>(v + c * W, xr + i);
#pragma unroll
      for (int k = 0; k < W; k++) s += v[c * W + k];
    }
  }
  const float m = warp_sum(s) / float(n);
  float q = 0.0f;  // second pass, over the registers
#pragma unroll
  for (int c = 0; c < kPer / W; c++) {
    if ((c * 32 + lane) * W < n) {
#pragma unroll
      for (int k = 0; k < W; k++) q += (v[c * W + k] - m) * (v[c * W + k] - m);
    }
  }
  const float inv = rsqrtf(warp_sum(q) / float(n) + eps);
#pragma unroll
  for (int c = 0; c < kPer / W; c++) {
    const int i = (c * 32 + lane) * W;
    if (i < n) {
      float w[W], b[W], y[W];
      load<W>(w, weight + i);
      load<W>(b, bias + i);
#pragma unroll
      for (int k = 0; k < W; k++) y[k] = (v[c * W + k] - m) * inv * w[k] + b[k];
      store<W>(out + r * n + i, y);
    }
  }
  if (lane == 0) mean[r] = m, rstd[r] = inv;
}

// n > 1024: a warp per row, three passes over the row in memory.
template <int W>
__global__ void layernorm_forward_warp_loop(float* out, float* mean, float* rstd, const float* x, const float* weight,
                                            const float* bias, int64_t rows, int n, float eps) {
  const int lane = threadIdx.x % 32;
  const int64_t r = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (r >= rows) return;
  const float* xr = x + r * n;
  float s = 0.0f;
  for (int i = lane * W; i < n; i += 32 * W) {
    float v[W];
    load<W>(v, xr + i);
    for (int k = 0; k < W; k++) s += v[k];
  }
  const float m = warp_sum(s) / float(n);
  float q = 0.0f;
  for (int i = lane * W; i < n; i += 32 * W) {
    float v[W];
    load<W>(v, xr + i);
    for (int k = 0; k < W; k++) q += (v[k] - m) * (v[k] - m);
  }
  const float inv = rsqrtf(warp_sum(q) / float(n) + eps);
  for (int i = lane * W; i < n; i += 32 * W) {
    float v[W], w[W], b[W];
    load<W>(v, xr + i);
    load<W>(w, weight + i);
    load<W>(b, bias + i);
    for (int k = 0; k < W; k++) v[k] = (v[k] - m) * inv * w[k] + b[k];
    store<W>(out + r * n + i, v);
  }
  if (lane == 0) mean[r] = m, rstd[r] = inv;
}

// dx for one row, by one warp, the row's dxhat and xhat in registers. Also
// used by version 3, which passes dw and db to add this row's dy xhat and dy
// into (per lane, per column); version 2 passes nullptr.
template <int kPer, int W>
__device__ __forceinline__ void dx_row_warp(float* dxr, const float* g, const float* xr, const float* weight, float mu,
                                            float s, int n, float* dw, float* db) {
  const int lane = threadIdx.x % 32;
  float dxhat[kPer], xhat[kPer];
  float a = 0.0f, b = 0.0f;  // sums of dxhat and of dxhat xhat
#pragma unroll
  for (int c = 0; c < kPer / W; c++) {
    const int i = (c * 32 + lane) * W;
    if (i < n) {
      float gv[W], xv[W], wv[W];
      load<W>(gv, g + i);
      load<W>(xv, xr + i);
      load<W>(wv, weight + i);
#pragma unroll
      for (int k = 0; k < W; k++) {
        const int e = c * W + k;
        xhat[e] = (xv[k] - mu) * s;
        dxhat[e] = gv[k] * wv[k];
        a += dxhat[e];
        b += dxhat[e] * xhat[e];
        if (dw) dw[e] += gv[k] * xhat[e], db[e] += gv[k];
      }
    }
  }
  a = warp_sum(a) / float(n);
  b = warp_sum(b) / float(n);
#pragma unroll
  for (int c = 0; c < kPer / W; c++) {
    const int i = (c * 32 + lane) * W;
    if (i < n) {
      float d[W];
      load<W>(d, dxr + i);
#pragma unroll
      for (int k = 0; k < W; k++) d[k] += s * (dxhat[c * W + k] - a - xhat[c * W + k] * b);
      store<W>(dxr + i, d);
    }
  }
}

template <int kPer, int W>
__global__ void layernorm_dx_warp(float* dx, const float* dout, const float* x, const float* weight,
                                  const float* mean, const float* rstd, int64_t rows, int n) {
  const int64_t r = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (r >= rows) return;  // whole warps only
  dx_row_warp<kPer, W>(dx + r * n, dout + r * n, x + r * n, weight, mean[r], rstd[r], n, nullptr, nullptr);
}

// n > 1024: a warp per row, two passes over the row in memory.
template <int W>
__global__ void layernorm_dx_warp_loop(float* dx, const float* dout, const float* x, const float* weight,
                                       const float* mean, const float* rstd, int64_t rows, int n) {
  const int lane = threadIdx.x % 32;
  const int64_t r = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (r >= rows) return;
  const float* g = dout + r * n;
  const float* xr = x + r * n;
  const float mu = mean[r], s = rstd[r];
  float a = 0.0f, b = 0.0f;
  for (int i = lane * W; i < n; i += 32 * W) {
    float gv[W], xv[W], wv[W];
    load<W>(gv, g + i);
    load<W>(xv, xr + i);
    load<W>(wv, weight + i);
    for (int k = 0; k < W; k++) {
      a += gv[k] * wv[k];
      b += gv[k] * wv[k] * (xv[k] - mu) * s;
    }
  }
  a = warp_sum(a) / float(n);
  b = warp_sum(b) / float(n);
  for (int i = lane * W; i < n; i += 32 * W) {
    float gv[W], xv[W], wv[W], d[W];
    load<W>(gv, g + i);
    load<W>(xv, xr + i);
    load<W>(wv, weight + i);
    load<W>(d, dx + r * n + i);
    for (int k = 0; k < W; k++) d[k] += s * (gv[k] * wv[k] - a - (xv[k] - mu) * s * b);
    store<W>(dx + r * n + i, d);
  }
}

// Calls f(per, w) with per and w compile-time constants (std::integral_constant):
// per the floats of the row a lane holds (n <= 32 per), w = 4 (float4) when
// n % 4 == 0, else 1. Needs n <= 1024.
template <class F>
void with_row_shape(int n, F f) {
  auto pick_w = [&](auto per) {
    if (n % 4 == 0) f(per, std::integral_constant<int, 4>{});
    else f(per, std::integral_constant<int, 1>{});
  };
  if (n <= 32 * 4) pick_w(std::integral_constant<int, 4>{});
  else if (n <= 32 * 8) pick_w(std::integral_constant<int, 8>{});
  else if (n <= 32 * 16) pick_w(std::integral_constant<int, 16>{});
  else if (n <= 32 * 24) pick_w(std::integral_constant<int, 24>{});
  else pick_w(std::integral_constant<int, 32>{});
}

// ---------------------------------------------------------------------------
// Version 3: dw and db in two stages, every sum in a fixed order.
//
// The rows are cut into `parts` chunks of rows_per_part rows: about one row a
// warp while that gives at most 128 blocks, longer chunks beyond. The fused
// kernel takes 120 to 175 registers a thread (ptxas -v), so one block of 256
// fits an SM, and 128 blocks are one wave on an H100's 132 SMs, with no tail;
// 8 warps an SM, each with a row's loads in flight, should still keep the
// memory busy (not yet measured). The chunking depends on rows only, so the
// order of every sum, and so the bits, do too.

constexpr int kMaxParts = 128;
int64_t rows_per_part(int64_t rows) {
  const int64_t parts = std::min<int64_t>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock, kMaxParts);
  return (rows + parts - 1) / parts;
}
int parts_for(int64_t rows) {
  const int64_t per = rows_per_part(rows);
  return int((rows + per - 1) / per);
}

// The block's sum over its warps (in warp order) of one per-lane column
// array v, written to part_row (n floats). smem holds (warps, n) floats.
template <int kPer, int W>
__device__ __forceinline__ void block_column_sum(float* part_row, const float* v, float* smem, int n) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();  // smem may still be read by a previous call
#pragma unroll
  for (int c = 0; c < kPer / W; c++) {
    const int i = (c * 32 + lane) * W;
    if (i < n) {
#pragma unroll
      for (int k = 0; k < W; k++) smem[warp * n + i + k] = v[c * W + k];
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    float t = 0.0f;
    for (int w = 0; w < kWarpsPerBlock; w++) t += smem[w * n + i];
    part_row[i] = t;
  }
}

// Stage 1, fused with dx. Grid parts, block 256, dynamic shared memory
// 8 n floats. Warp w of block p takes rows p rows_per_part + w, + 8, ... of
// its chunk, in order, and writes partial[p][0][:] (dw) and partial[p][1][:] (db).
template <int kPer, int W>
__global__ void layernorm_backward_fused(float* dx, float* partial, const float* dout, const float* x,
                                         const float* weight, const float* mean, const float* rstd, int64_t rows,
                                         int n, int64_t rows_per_part) {
  extern __shared__ float smem[];  // (8, n)
  const int warp = threadIdx.x / 32;
  const int64_t first = int64_t(blockIdx.x) * rows_per_part;
  const int64_t end = first + rows_per_part < rows ? first + rows_per_part : rows;
  float dw[kPer], db[kPer];  // this lane's columns, summed over this warp's rows
#pragma unroll
  for (int e = 0; e < kPer; e++) dw[e] = 0.0f, db[e] = 0.0f;
  // No early return: every thread must reach the __syncthreads below.
  for (int64_t r = first + warp; r < end; r += kWarpsPerBlock)
    dx_row_warp<kPer, W>(dx + r * n, dout + r * n, x + r * n, weight, mean[r], rstd[r], n, dw, db);
  block_column_sum<kPer, W>(partial + (int64_t(blockIdx.x) * 2) * n, dw, smem, n);
  block_column_sum<kPer, W>(partial + (int64_t(blockIdx.x) * 2 + 1) * n, db, smem, n);
}

// Stage 1 on its own, for n > 1024. Grid (ceil(n / 256), parts), block 256:
// one thread per column of one chunk, its rows in order.
__global__ void layernorm_dparams_partial(float* partial, const float* dout, const float* x, const float* mean,
                                          const float* rstd, int64_t rows, int n, int64_t rows_per_part) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int64_t first = int64_t(blockIdx.y) * rows_per_part;
  const int64_t end = first + rows_per_part < rows ? first + rows_per_part : rows;
  float dw = 0.0f, db = 0.0f;
  for (int64_t r = first; r < end; r++) {
    const float g = dout[r * n + i];
    dw += g * (x[r * n + i] - mean[r]) * rstd[r];
    db += g;
  }
  partial[(int64_t(blockIdx.y) * 2) * n + i] = dw;
  partial[(int64_t(blockIdx.y) * 2 + 1) * n + i] = db;
}

// Stage 2: dw[i] += sum_p partial[p][0][i], db[i] += sum_p partial[p][1][i].
// The (2, n) pair is 2n columns. Grid ceil(2n / 32), block (32, 8): 32
// columns, 8 slices of the parts (p = y, y + 8, ...), each slice summed in
// order, then the 8 slices in order. Reads along a row of partial are coalesced.
__global__ void layernorm_dparams_sum(float* dweight, float* dbias, const float* partial, int parts, int n) {
  __shared__ float slice[8][32];
  const int col = blockIdx.x * 32 + threadIdx.x;
  float t = 0.0f;
  if (col < 2 * n)
    for (int p = threadIdx.y; p < parts; p += 8) t += partial[int64_t(p) * 2 * n + col];
  slice[threadIdx.y][threadIdx.x] = t;
  __syncthreads();
  if (threadIdx.y == 0 && col < 2 * n) {
    float sum = 0.0f;
    for (int y = 0; y < 8; y++) sum += slice[y][threadIdx.x];
    if (col < n) dweight[col] += sum;
    else dbias[col - n] += sum;
  }
}

// ---------------------------------------------------------------------------

struct Case {
  const char* name;  // nullptr: a correctness check only, not timed
  int64_t rows;
  int n;
};

struct Problem {
  int64_t rows = 0;
  int n = 0;
  int parts = 0;              // version 3's chunks of rows
  int64_t rows_per_part = 0;
  // host: the inputs; mean and rstd from the reference, in double and as the
  // floats the backward takes (so the backward check does not depend on the forward)
  std::vector<float> x, weight, bias, dout, dx0, dw0, db0, mean_f, rstd_f;
  std::vector<double> mean, rstd;
  // device
  float *d_x = nullptr, *d_weight = nullptr, *d_bias = nullptr;      // forward inputs
  float *d_out = nullptr, *d_mean = nullptr, *d_rstd = nullptr;      // forward outputs
  float *d_dout = nullptr, *d_mean_in = nullptr, *d_rstd_in = nullptr;  // backward inputs
  float *d_dx = nullptr, *d_dweight = nullptr, *d_dbias = nullptr;   // backward outputs (+=)
  float* d_partial = nullptr;  // version 3's scratch, (parts, 2, n)
};

// Random non-zero inputs: x with a different offset and spread in each row
// (so mean and rstd vary), w near 1, b and the incoming gradients small.
Problem make_problem(int64_t rows, int n, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  Problem p;
  p.rows = rows, p.n = n;
  p.rows_per_part = rows_per_part(rows);
  p.parts = parts_for(rows);
  const size_t elems = size_t(rows) * size_t(n);
  p.x.resize(elems), p.dout.resize(elems), p.dx0.resize(elems);
  for (int64_t r = 0; r < rows; r++) {
    const float offset = uni(gen), spread = 1.5f + uni(gen);  // spread in (0.5, 2.5)
    for (int i = 0; i < n; i++) p.x[size_t(r) * n + i] = offset + spread * uni(gen);
  }
  for (auto& v : p.dout) v = uni(gen);
  for (auto& v : p.dx0) v = uni(gen);
  p.weight.resize(size_t(n)), p.bias.resize(size_t(n)), p.dw0.resize(size_t(n)), p.db0.resize(size_t(n));
  for (int i = 0; i < n; i++) {
    p.weight[size_t(i)] = 1.0f + 0.25f * uni(gen);
    p.bias[size_t(i)] = 0.1f * uni(gen);
    p.dw0[size_t(i)] = uni(gen);
    p.db0[size_t(i)] = uni(gen);
  }
  p.mean.resize(size_t(rows)), p.rstd.resize(size_t(rows));
  p.mean_f.resize(size_t(rows)), p.rstd_f.resize(size_t(rows));
  for (int64_t r = 0; r < rows; r++) {
    reference_stats(p.mean[size_t(r)], p.rstd[size_t(r)], p.x.data() + size_t(r) * n, n);
    p.mean_f[size_t(r)] = float(p.mean[size_t(r)]);
    p.rstd_f[size_t(r)] = float(p.rstd[size_t(r)]);
  }
  p.d_x = dev::to_device(p.x), p.d_weight = dev::to_device(p.weight), p.d_bias = dev::to_device(p.bias);
  p.d_out = dev::alloc(elems), p.d_mean = dev::alloc(size_t(rows)), p.d_rstd = dev::alloc(size_t(rows));
  p.d_dout = dev::to_device(p.dout), p.d_mean_in = dev::to_device(p.mean_f), p.d_rstd_in = dev::to_device(p.rstd_f);
  p.d_dx = dev::alloc(elems), p.d_dweight = dev::alloc(size_t(n)), p.d_dbias = dev::alloc(size_t(n));
  p.d_partial = dev::alloc(size_t(p.parts) * 2 * size_t(n));
  return p;
}

void free_problem(Problem& p) {
  for (float* ptr : {p.d_x, p.d_weight, p.d_bias, p.d_out, p.d_mean, p.d_rstd, p.d_dout, p.d_mean_in, p.d_rstd_in,
                     p.d_dx, p.d_dweight, p.d_dbias, p.d_partial})
    CHECK_CUDA(cudaFree(ptr));
}

void forward(int version, const Problem& p) {
  if (p.rows == 0 || p.n == 0) return;
  if (version == 1) {  // the library's launcher
    st::cuda::layernorm_forward(p.d_out, p.d_mean, p.d_rstd, p.d_x, p.d_weight, p.d_bias, p.rows, p.n, kEps);
    return;
  }
  // versions 2 and 3: one warp a row
  const unsigned grid = unsigned((p.rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
  if (p.n <= kMaxCached) {
    with_row_shape(p.n, [&](auto per, auto w) {
      layernorm_forward_warp<per, w><<<grid, kWarpThreads>>>(p.d_out, p.d_mean, p.d_rstd, p.d_x, p.d_weight,
                                                             p.d_bias, p.rows, p.n, kEps);
    });
  } else if (p.n % 4 == 0) {
    layernorm_forward_warp_loop<4><<<grid, kWarpThreads>>>(p.d_out, p.d_mean, p.d_rstd, p.d_x, p.d_weight, p.d_bias,
                                                           p.rows, p.n, kEps);
  } else {
    layernorm_forward_warp_loop<1><<<grid, kWarpThreads>>>(p.d_out, p.d_mean, p.d_rstd, p.d_x, p.d_weight, p.d_bias,
                                                           p.rows, p.n, kEps);
  }
  CHECK_LAUNCH("layernorm_forward_warp");
}

// Version 2's dx: a warp a row.
void dx_warp(const Problem& p) {
  const unsigned grid = unsigned((p.rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
  if (p.n <= kMaxCached) {
    with_row_shape(p.n, [&](auto per, auto w) {
      layernorm_dx_warp<per, w><<<grid, kWarpThreads>>>(p.d_dx, p.d_dout, p.d_x, p.d_weight, p.d_mean_in,
                                                        p.d_rstd_in, p.rows, p.n);
    });
  } else if (p.n % 4 == 0) {
    layernorm_dx_warp_loop<4><<<grid, kWarpThreads>>>(p.d_dx, p.d_dout, p.d_x, p.d_weight, p.d_mean_in, p.d_rstd_in,
                                                      p.rows, p.n);
  } else {
    layernorm_dx_warp_loop<1><<<grid, kWarpThreads>>>(p.d_dx, p.d_dout, p.d_x, p.d_weight, p.d_mean_in, p.d_rstd_in,
                                                      p.rows, p.n);
  }
  CHECK_LAUNCH("layernorm_dx_warp");
}

void backward(int version, const Problem& p) {
  if (p.rows == 0 || p.n == 0) return;
  if (version == 1) {  // the library's launcher: dx, then dw and db
    st::cuda::layernorm_backward(p.d_dx, p.d_dweight, p.d_dbias, p.d_dout, p.d_x, p.d_weight, p.d_mean_in,
                                 p.d_rstd_in, p.rows, p.n);
    return;
  }
  if (version == 2) {  // dx a warp a row; dw and db as the library's
    dx_warp(p);
    st::cuda::layernorm_dparams(p.d_dweight, p.d_dbias, p.d_dout, p.d_x, p.d_mean_in, p.d_rstd_in, p.rows, p.n);
    return;
  }
  // version 3
  if (p.n <= kMaxCached) {
    const size_t smem = size_t(kWarpsPerBlock) * size_t(p.n) * sizeof(float);  // at most 32 KiB
    with_row_shape(p.n, [&](auto per, auto w) {
      layernorm_backward_fused<per, w><<<unsigned(p.parts), kWarpThreads, smem>>>(
          p.d_dx, p.d_partial, p.d_dout, p.d_x, p.d_weight, p.d_mean_in, p.d_rstd_in, p.rows, p.n, p.rows_per_part);
    });
    CHECK_LAUNCH("layernorm_backward_fused");
  } else {
    dx_warp(p);
    const dim3 grid{unsigned((p.n + 255) / 256), unsigned(p.parts)};
    layernorm_dparams_partial<<<grid, 256>>>(p.d_partial, p.d_dout, p.d_x, p.d_mean_in, p.d_rstd_in, p.rows, p.n,
                                             p.rows_per_part);
    CHECK_LAUNCH("layernorm_dparams_partial");
  }
  layernorm_dparams_sum<<<unsigned((2 * p.n + 31) / 32), dim3(32, 8)>>>(p.d_dweight, p.d_dbias, p.d_partial, p.parts,
                                                                         p.n);
  CHECK_LAUNCH("layernorm_dparams_sum");
}

// The largest relative error of out, mean and rstd.
double check_forward(const Problem& p) {
  const size_t elems = size_t(p.rows) * size_t(p.n);
  const std::vector<float> out = dev::to_host(p.d_out, elems), mean = dev::to_host(p.d_mean, size_t(p.rows)),
                           rstd = dev::to_host(p.d_rstd, size_t(p.rows));
  dev::MaxError e_out, e_mean, e_rstd;
  for (size_t r = 0; r < size_t(p.rows); r++) {
    e_mean.add(mean[r], p.mean[r]);
    e_rstd.add(rstd[r], p.rstd[r]);
    for (size_t i = 0; i < size_t(p.n); i++) {
      const double want = (p.x[r * p.n + i] - p.mean[r]) * p.rstd[r] * p.weight[i] + p.bias[i];
      e_out.add(out[r * p.n + i], want);
    }
  }
  return std::max({e_out.relative(), e_mean.relative(), e_rstd.relative()});
}

// The largest relative error of dx, dw and db (each started from dx0, dw0, db0).
double check_backward(const Problem& p) {
  const size_t elems = size_t(p.rows) * size_t(p.n), n = size_t(p.n);
  const std::vector<float> dx = dev::to_host(p.d_dx, elems), dw = dev::to_host(p.d_dweight, n), db = dev::to_host(p.d_dbias, n);
  std::vector<double> dw_ref(p.dw0.begin(), p.dw0.end()), db_ref(p.db0.begin(), p.db0.end());
  std::vector<double> xhat(n), dxhat(n);
  dev::MaxError e_dx, e_dw, e_db;
  for (size_t r = 0; r < size_t(p.rows); r++) {
    const double mu = p.mean_f[r], s = p.rstd_f[r];  // the floats the GPU was given
    double a = 0.0, b = 0.0;
    for (size_t i = 0; i < n; i++) {
      const double g = p.dout[r * n + i];
      xhat[i] = (p.x[r * n + i] - mu) * s;
      dxhat[i] = g * p.weight[i];
      a += dxhat[i];
      b += dxhat[i] * xhat[i];
      dw_ref[i] += g * xhat[i];
      db_ref[i] += g;
    }
    a /= double(n), b /= double(n);
    for (size_t i = 0; i < n; i++) e_dx.add(dx[r * n + i], p.dx0[r * n + i] + s * (dxhat[i] - a - xhat[i] * b));
  }
  for (size_t i = 0; i < n; i++) e_dw.add(dw[i], dw_ref[i]), e_db.add(db[i], db_ref[i]);
  return std::max({e_dx.relative(), e_dw.relative(), e_db.relative()});
}

// Puts the gradients back to their starting values (the backward adds to them).
void reset_gradients(const Problem& p) {
  const size_t elems = size_t(p.rows) * size_t(p.n);
  CHECK_CUDA(cudaMemcpy(p.d_dx, p.dx0.data(), elems * sizeof(float), cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(p.d_dweight, p.dw0.data(), size_t(p.n) * sizeof(float), cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(p.d_dbias, p.db0.data(), size_t(p.n) * sizeof(float), cudaMemcpyHostToDevice));
}

int main(int argc, char** argv) {
  const auto [only, repeats] = dev::parse_args(argc, argv, 3);
  const double kPeak = dev::kHbmBytesPerSecond;
  const double kForwardTol = 1e-5, kBackwardTol = 1e-4;
  dev::print_device();

  const Case cases[] = {
      {nullptr, 4097, 768},     // odd rows (a part-full last block), float4, cached
      {nullptr, 777, 255},      // odd n: scalar loads, cached
      {nullptr, 32 * 50, 192},  // n < 32 * 8
      {nullptr, 7, 1},          // n = 1: var 0, xhat 0
      {nullptr, 9, 100},        // the other register sizes: 4 a lane, float4
      {nullptr, 33, 500},       // 16 a lane, float4
      {nullptr, 65, 1022},      // 32 a lane, n % 4 == 2: scalar loads
      {nullptr, 300, 1536},     // n > 1024: the fallbacks, float4
      {nullptr, 333, 2050},     // n > 1024: the fallbacks, scalar
      {"METER-base-like, image tokens (32 x 577)", 32 * 577, 768},
      {"METER-base-like, text tokens (32 x 40)", 32 * 40, 768},
  };
  bool all_ok = true;
  std::printf("\nchecks: relative error max|gpu - ref| / max|ref| against double, forward <= %.0e, backward <= %.0e\n",
              kForwardTol, kBackwardTol);
  for (const Case& s : cases) {
    Problem p = make_problem(s.rows, s.n, 42);
    const size_t elems = size_t(p.rows) * size_t(p.n);
    const double fwd_bytes = 4.0 * (2.0 * double(elems) + 2.0 * p.n + 2.0 * double(p.rows));
    const double bwd_bytes = 4.0 * (4.0 * double(elems) + 5.0 * p.n + 2.0 * double(p.rows));
    if (s.name)
      std::printf("\n%s: rows %lld x n %d, forward moves %.1f MB, backward %.1f MB\n", s.name, (long long)p.rows, p.n,
                  fwd_bytes * 1e-6, bwd_bytes * 1e-6);
    for (int version = 1; version <= 3; version++) {
      if (only && version != only) continue;
      // correctness first: the forward into outputs full of NaNs, so unwritten ones show
      CHECK_CUDA(cudaMemset(p.d_out, 0xff, elems * sizeof(float)));
      CHECK_CUDA(cudaMemset(p.d_mean, 0xff, size_t(p.rows) * sizeof(float)));
      CHECK_CUDA(cudaMemset(p.d_rstd, 0xff, size_t(p.rows) * sizeof(float)));
      forward(version, p);
      CHECK_CUDA(cudaDeviceSynchronize());
      const double fwd_err = check_forward(p);
      reset_gradients(p);
      backward(version, p);
      CHECK_CUDA(cudaDeviceSynchronize());
      const double bwd_err = check_backward(p);
      const bool fwd_ok = fwd_err <= kForwardTol, bwd_ok = bwd_err <= kBackwardTol;
      all_ok = all_ok && fwd_ok && bwd_ok;
      if (!s.name) {
        std::printf("  rows %5lld x n %4d  version %d: forward %.2e %s  backward %.2e %s\n", (long long)p.rows, p.n,
                    version, fwd_err, fwd_ok ? "ok" : "MISMATCH", bwd_err, bwd_ok ? "ok" : "MISMATCH");
        continue;
      }
      // then time (the backward keeps adding into dx, dw, db: harmless)
      const float fwd_ms = dev::time_ms(repeats, [&] { forward(version, p); });
      const float bwd_ms = dev::time_ms(repeats, [&] { backward(version, p); });
      const double fwd_bw = fwd_bytes / (double(fwd_ms) * 1e-3), bwd_bw = bwd_bytes / (double(bwd_ms) * 1e-3);
      std::printf("  version %d forward : %9.2f us  %7.1f GB/s  %5.1f%% of 3.35 TB/s  error %.2e %s\n", version,
                  fwd_ms * 1e3, fwd_bw * 1e-9, 100.0 * fwd_bw / kPeak, fwd_err, fwd_ok ? "ok" : "MISMATCH");
      std::printf("  version %d backward: %9.2f us  %7.1f GB/s  %5.1f%% of 3.35 TB/s  error %.2e %s\n", version,
                  bwd_ms * 1e3, bwd_bw * 1e-9, 100.0 * bwd_bw / kPeak, bwd_err, bwd_ok ? "ok" : "MISMATCH");
    }
    free_problem(p);
  }
  std::printf("\n%s\n", all_ok ? "all versions match the reference" : "SOME VERSION DOES NOT MATCH");
  return all_ok ? 0 : 1;
}
