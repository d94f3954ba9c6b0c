// Attention over packed variable-length segments, the CUDA twin of
// engine/ops/packed_attention.cpp (the semantics are in the comment of
// engine/kernel_list.inc).
//
// Flash-attention style (Dao et al. 2022), in plain float32 on the CUDA
// cores: a block owns a tile of 64 query rows of one (example, head) and
// walks that example's keys in tiles of 64. For each query row it keeps a
// running max, a running softmax sum and an unnormalised output row in
// registers (the "online softmax", Milakov & Gimelshein 2018), so the
// (n, m) score matrix never exists in global memory: one 64 x 64 tile of it
// lives in shared memory at a time.
//
// Shapes (d = H * head_dim):
//   q, ctx (Tq, d)   rows q_at[b] .. q_at[b+1] are example b's queries
//   k, v   (Tk, d)   rows k_at[b] .. k_at[b+1] are example b's keys, values
//   head h           columns h*head_dim .. (h+1)*head_dim
//
// Grid (slots, H, B): blockIdx.z is the example, blockIdx.y the head. The
// host does not know the segment lengths (q_at is on the device; copying it
// back would stall the stream every layer), so blockIdx.x is a "slot": slot
// s does query tiles s, s + slots, s + 2 slots, ... of its segment, however
// long the segment is. A block whose head is dropped, or whose slot is past
// its segment's end, returns at once.
//
// Block: 256 threads seen as 16 x 16 (ty = tid / 16, tx = tid % 16).
// Thread (ty, tx) owns query rows ty + 16 i (i < 4) of the tile, and
//   in the score tile S (64 x 64): keys tx + 16 j (j < 4), a 4 x 4 register tile;
//   in the output tile O (64 x DMAX): columns tx + 16 c (c < DMAX / 16).
// The 16 threads of one row group (same ty) are one half-warp, so a row's
// max and sum over a key tile take four __shfl_xor_sync steps.
#include <algorithm>
#include <cmath>
#include <string>

#include "cuda/launch.h"
#include "engine/kernels.h"

namespace st::cuda {
namespace {

constexpr int kTileQ = 64;          // query rows per tile
constexpr int kTileK = 64;          // keys per tile
constexpr int kBlock = 256;         // threads per block, 16 x 16
constexpr int kMaxHeadDim = 128;    // the largest head_dim compiled (DMAX)
constexpr int kPadP = kTileK + 1;   // row stride of the probability tile in shared memory

// Bytes of shared memory a block uses: Q, K and V tiles (rows padded to
// DMAX + 1 floats) and the probability tile P (64 x 65).
template <int DMAX>
constexpr size_t shared_bytes() {
  return sizeof(float) * size_t((kTileQ + 2 * kTileK) * (DMAX + 1) + kTileQ * kPadP);
}

// Max and sum over the 16 lanes of a half-warp (xor offsets below 16 never
// cross into the other half). Every lane of the warp must call them.
__device__ inline float half_warp_max(float v) {
  for (int offset = 8; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}
__device__ inline float half_warp_sum(float v) {
  for (int offset = 8; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// DMAX is head_dim rounded up to 16, 32, 64 or 128: the tiles are DMAX wide,
// with zeros past head_dim, so the inner loops have compile-time bounds.
template <int DMAX>
__global__ void __launch_bounds__(kBlock)
    packed_attention_kernel(float* __restrict__ ctx, const float* __restrict__ q, const float* __restrict__ k,
                            const float* __restrict__ v, const int32_t* __restrict__ q_at,
                            const int32_t* __restrict__ k_at, const float* __restrict__ head_keep, int H,
                            int head_dim) {
  constexpr int kLd = DMAX + 1;       // padded row: the 16 keys a half-warp reads sit in 16 different banks
  constexpr int kCols = DMAX / 16;    // output columns per thread
  const int b = blockIdx.z, h = blockIdx.y;
  if (head_keep && head_keep[int64_t(b) * H + h] == 0.0f) return;  // dropped: its ctx columns stay as they are

  const int q_first = q_at[b], n = q_at[b + 1] - q_first;  // this example's query rows
  const int k_first = k_at[b], m = k_at[b + 1] - k_first;  // and its keys
  const int64_t d = int64_t(H) * head_dim;                  // row stride of q, k, v, ctx
  const int64_t col0 = int64_t(h) * head_dim;               // first column of head h
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;

  extern __shared__ float smem[];
  float* Qs = smem;                 // (64, kLd)  the query tile
  float* Ks = Qs + kTileQ * kLd;    // (64, kLd)  a key tile
  float* Vs = Ks + kTileK * kLd;    // (64, kLd)  the value tile of the same keys
  float* Ps = Vs + kTileK * kLd;    // (64, kPadP) softmax numerators of the tile

  // The loop bound depends only on (b, h), so every thread of the block
  // takes the same iterations and the __syncthreads() below are safe.
  for (int tile = blockIdx.x; tile * kTileQ < n; tile += gridDim.x) {
    const int row0 = tile * kTileQ;  // first query row of the tile, counted within the segment

    if (m == 0) {  // nothing to attend to: zeros, as on the CPU
      for (int i = tid; i < kTileQ * head_dim; i += kBlock) {
        const int r = i / head_dim, c = i % head_dim;
        if (row0 + r < n) ctx[(q_first + row0 + r) * d + col0 + c] = 0.0f;
      }
      continue;
    }

    // Q tile -> shared memory; zeros past the segment's end and past head_dim.
    // (Qs is free: the previous tile's last reads of it came before a
    // __syncthreads() in its key loop.) Consecutive threads read consecutive
    // columns, so the global reads are coalesced.
    for (int i = tid; i < kTileQ * DMAX; i += kBlock) {
      const int r = i / DMAX, c = i % DMAX;
      Qs[r * kLd + c] = (row0 + r < n && c < head_dim) ? q[(q_first + row0 + r) * d + col0 + c] : 0.0f;
    }

    // Per owned row i: running max, running sum of exp(s - max), and the
    // output accumulator sum_j exp(s_j - max) v_j (divided by the sum at the end).
    float row_max[4], row_sum[4], acc[4][kCols];
#pragma unroll
    for (int i = 0; i < 4; i++) {
      row_max[i] = -INFINITY;
      row_sum[i] = 0.0f;
#pragma unroll
      for (int c = 0; c < kCols; c++) acc[i][c] = 0.0f;
    }

    for (int key0 = 0; key0 < m; key0 += kTileK) {
      __syncthreads();  // the previous key tile's Ks, Vs and Ps are no longer read (and Qs is written)
      for (int i = tid; i < kTileK * DMAX; i += kBlock) {
        const int r = i / DMAX, c = i % DMAX;
        const bool inside = key0 + r < m && c < head_dim;
        const int64_t at = (k_first + key0 + r) * d + col0 + c;
        Ks[r * kLd + c] = inside ? k[at] : 0.0f;
        Vs[r * kLd + c] = inside ? v[at] : 0.0f;  // zeros, not garbage: 0 * NaN would poison the sum
      }
      __syncthreads();

      // S = Q K^T for this thread's 4 rows x 4 keys. Per step of c: 4 + 4
      // shared loads feed 16 FMAs (the Q loads are broadcasts within a half-warp).
      float s[4][4] = {};
#pragma unroll 8
      for (int c = 0; c < DMAX; c++) {
        float a[4], kk[4];
#pragma unroll
        for (int i = 0; i < 4; i++) a[i] = Qs[(ty + 16 * i) * kLd + c];
#pragma unroll
        for (int j = 0; j < 4; j++) kk[j] = Ks[(tx + 16 * j) * kLd + c];
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
          for (int j = 0; j < 4; j++) s[i][j] = fmaf(a[i], kk[j], s[i][j]);
      }

      // Online softmax update, row by row:
      //   new_max = max(row_max, max_j s_j)
      //   alpha   = exp(row_max - new_max)     rescales what was summed so far
      //   row_sum = alpha row_sum + sum_j exp(s_j - new_max)
      //   acc     = alpha acc (the P V of this tile is added below)
#pragma unroll
      for (int i = 0; i < 4; i++) {
        float tile_max = -INFINITY;
#pragma unroll
        for (int j = 0; j < 4; j++) {
          if (key0 + tx + 16 * j >= m) s[i][j] = -INFINITY;  // past the last key: weight exp(-inf) = 0
          tile_max = fmaxf(tile_max, s[i][j]);
        }
        tile_max = half_warp_max(tile_max);
        // Finite: every key tile holds at least one real key. On the first
        // tile row_max is -inf and alpha = exp(-inf) = 0.
        const float new_max = fmaxf(row_max[i], tile_max);
        const float alpha = expf(row_max[i] - new_max);
        float sum = 0.0f;
#pragma unroll
        for (int j = 0; j < 4; j++) {
          const float p = expf(s[i][j] - new_max);
          Ps[(ty + 16 * i) * kPadP + tx + 16 * j] = p;
          sum += p;
        }
        sum = half_warp_sum(sum);
        row_sum[i] = row_sum[i] * alpha + sum;
        row_max[i] = new_max;
#pragma unroll
        for (int c = 0; c < kCols; c++) acc[i][c] *= alpha;
      }
      __syncthreads();  // the whole P tile is written

      // acc += P V over this tile's real keys: 4 + kCols shared loads per
      // 4 * kCols FMAs; a half-warp reads 16 consecutive floats of a V row.
      const int keys = min(kTileK, m - key0);
#pragma unroll 4
      for (int j = 0; j < keys; j++) {
        float p[4], vv[kCols];
#pragma unroll
        for (int i = 0; i < 4; i++) p[i] = Ps[(ty + 16 * i) * kPadP + j];
#pragma unroll
        for (int c = 0; c < kCols; c++) vv[c] = Vs[j * kLd + tx + 16 * c];
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
          for (int c = 0; c < kCols; c++) acc[i][c] = fmaf(p[i], vv[c], acc[i][c]);
      }
    }

    // ctx = acc / row_sum for the rows and columns that exist. row_sum >= 1:
    // the max key of each row contributes exp(0).
#pragma unroll
    for (int i = 0; i < 4; i++) {
      const int r = row0 + ty + 16 * i;
      if (r >= n) continue;
      const float inv = 1.0f / row_sum[i];
      float* out = ctx + (q_first + r) * d + col0;
#pragma unroll
      for (int c = 0; c < kCols; c++)
        if (tx + 16 * c < head_dim) out[tx + 16 * c] = acc[i][c] * inv;
    }
  }
}

// Launches the kernel for one DMAX over examples [0, B) of the pointers given.
template <int DMAX>
void launch(float* ctx, const float* q, const float* k, const float* v, const int32_t* q_at, const int32_t* k_at,
            const float* head_keep, int B, int H, int head_dim) {
  constexpr size_t smem = shared_bytes<DMAX>();  // 113 KiB at DMAX 128 (29 at 16): above the 48 KiB default, so opt in
  // Once per DMAX: allow that much dynamic shared memory, and count how many
  // blocks the whole GPU holds at once.
  static const int resident = [] {
    CUDA_CHECK(cudaFuncSetAttribute(packed_attention_kernel<DMAX>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    int(smem)));
    int device = 0, sms = 0, per_sm = 0;
    CUDA_CHECK(cudaGetDevice(&device));
    CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, packed_attention_kernel<DMAX>, kBlock, smem));
    return std::max(1, sms * per_sm);
  }();
  // Slots per (example, head): about two waves of blocks in all; past that a
  // block loops over its segment's tiles. 64 slots cover 4096 rows without looping.
  const int64_t pairs = int64_t(B) * H;
  const int slots = int(std::clamp<int64_t>((2 * int64_t(resident) + pairs - 1) / pairs, 1, 64));
  const dim3 grid{unsigned(slots), unsigned(H), unsigned(B)};
  packed_attention_kernel<DMAX><<<grid, kBlock, smem, stream()>>>(ctx, q, k, v, q_at, k_at, head_keep, H, head_dim);
  CUDA_CHECK_LAUNCH("packed_attention_kernel");
}

}  // namespace

void packed_attention_forward(float* ctx, const float* q, const float* k, const float* v, const int32_t* q_at,
                              const int32_t* k_at, const float* head_keep, int B, int H, int head_dim) {
  if (B < 0 || H < 0 || head_dim < 0)
    throw ArgumentError("packed_attention_forward: negative size (B " + std::to_string(B) + ", H " +
                        std::to_string(H) + ", head_dim " + std::to_string(head_dim) + ")");
  if (head_dim > kMaxHeadDim)
    throw DeviceError("packed_attention_forward: head_dim " + std::to_string(head_dim) +
                      " is more than the CUDA kernel supports (" + std::to_string(kMaxHeadDim) + ")");
  if (H > 65535) throw DeviceError("packed_attention_forward: " + std::to_string(H) + " heads, the CUDA grid holds 65535");
  if (B == 0 || H == 0 || head_dim == 0) return;  // nothing to compute
  // gridDim.z holds at most 65535 examples: larger batches go in chunks.
  constexpr int kMaxExamples = 65535;
  for (int b0 = 0; b0 < B; b0 += kMaxExamples) {
    const int nb = std::min(kMaxExamples, B - b0);
    const float* keep = head_keep ? head_keep + int64_t(b0) * H : nullptr;
    if (head_dim <= 16)
      launch<16>(ctx, q, k, v, q_at + b0, k_at + b0, keep, nb, H, head_dim);
    else if (head_dim <= 32)
      launch<32>(ctx, q, k, v, q_at + b0, k_at + b0, keep, nb, H, head_dim);
    else if (head_dim <= 64)
      launch<64>(ctx, q, k, v, q_at + b0, k_at + b0, keep, nb, H, head_dim);
    else
      launch<128>(ctx, q, k, v, q_at + b0, k_at + b0, keep, nb, H, head_dim);
  }
}

}  // namespace st::cuda
