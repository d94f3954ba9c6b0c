// Attention's projections when examples drop heads, computed row by row on
// the CPU (the packed inference path, pruning/packed.cpp).
//
// With a head mask, example b needs only the columns of the heads it keeps.
// The device-generic way is one GEMM per head over the rows of the examples
// that keep it, with the rows gathered before and scattered after. For a
// small model those GEMMs are 16 columns wide and a few hundred rows long,
// and packing their operands, gathering and scattering took longer than the
// products. These kernels read the rows where they are and write the
// results where they go, a few rows at a time in vector registers, from the
// weights transposed into whole vectors of outputs (HeadWeights), which a
// caller makes once and keeps while the weights stay the same.
//
// Segments: example b owns rows at[b] .. at[b+1]; keep (B, H) is 0/1, on
// the host. Head h is columns h*k .. (h+1)*k of an (R, H*k) tensor.
#pragma once
#include <cstdint>
#include <vector>

namespace st::cpu {

// Whether the kernels below handle these sizes: k <= 32 columns per head,
// d_in <= 256 inputs into the heads and d_out <= 128 outputs out of them;
// larger models keep the per-head GEMMs (the two were not compared there).
bool head_projection_fits(int64_t d_in, int64_t k, int64_t d_out);

// One projection's W and bias as the kernels read them: Wt (d_in, ld_wt),
// W transposed so that a row holds every output for one input, each head's
// (into) or all (out of) outputs zero-padded to whole vectors; the bias
// padded the same way. A copy: it keeps the values W had when it was made.
struct HeadWeights {
  int H = 0, k = 0, d_in = 0, d_out = 0;
  int64_t ld_wt = 0;
  std::vector<float> wt, bias;
};

// Into the heads (Q, K, V): W (H*k, d_in), bias (H*k).
HeadWeights into_heads_weights(const float* W, const float* bias, int H, int k, int d_in);
// Out of the heads (O): W (d_out, H*k), bias (d_out).
HeadWeights out_of_heads_weights(const float* W, const float* bias, int H, int k, int d_out);

// For each example b and each head h it keeps,
//   y[rows of b, cols of h] = (x[rows of b] W[cols of h]^T + bias[cols of h]) * scale
// x (R, d_in), y (R, H*k); w from into_heads_weights. A dropped head's columns of y are not written.
void project_into_heads(float* y, const float* x, const HeadWeights& w, float scale, const int32_t* at,
                        const float* keep, int B);

// For each example b,
//   y[rows of b] = bias + sum over the heads h it keeps of x[rows of b, cols of h] W[:, cols of h]^T
// x (R, H*k), y (R, d_out); w from out_of_heads_weights. A dropped head's columns of x are not read.
void project_out_of_heads(float* y, const float* x, const HeadWeights& w, const int32_t* at, const float* keep,
                          int B);

}  // namespace st::cpu
