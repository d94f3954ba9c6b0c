// The trimmers' keep logits in one pass (keep_logits.h).
#include "engine/ops/keep_logits.h"

#include <algorithm>
#include <string>
#include <type_traits>

#include "engine/error.h"
#include "engine/ops/common.h"
#include "engine/ops/normalize_rows.h"
#include "engine/ops/vec.h"
#include "engine/ops/vector_math.h"

namespace st::cpu {
namespace {

constexpr int kMaxVectors = 4;  // d_t up to 4 vectors

// Rows side by side: R rows of V accumulators each, plus the V weight
// vectors they share, in the build's vector registers.
constexpr int rows_at_once(int V) { return std::min(8, (kVectorRegisters - 2 - V) / V); }

// acc[r] += sum over j < n of z[r][j] * wt[j]: wt (n, ld) holds in row j
// every output's weight for input j, so input j updates all outputs with V
// vector FMAs. Each of the R rows is its own chain of FMAs.
template <int R, int V>
inline void accumulate(Vec (&acc)[R][V], const float* z, int64_t ldz, int n, const float* wt, int ld) {
  for (int j = 0; j < n; j++) {
    Vec w[V];
    for (int v = 0; v < V; v++) w[v] = load_vec(wt + int64_t(j) * ld + v * kLanes);
    for (int r = 0; r < R; r++) {
      const float zj = z[r * ldz + j];
      for (int v = 0; v < V; v++) acc[r][v] += zj * w[v];
    }
  }
}

// Every row of acc = row (ld floats).
template <int R, int V>
inline void set_rows(Vec (&acc)[R][V], const float* row) {
  for (int r = 0; r < R; r++)
    for (int v = 0; v < V; v++) acc[r][v] = load_vec(row + v * kLanes);
}

// GELU of every lane, through a buffer so that the loop calls the vector
// erff on whole vectors, as the gelu op's loop does (a padded lane is 0 and
// stays 0).
template <int R, int V>
inline void gelu_in_place(Vec (&acc)[R][V]) {
  constexpr int n = R * V * kLanes;
  alignas(64) float t[n];
  for (int r = 0; r < R; r++)
    for (int v = 0; v < V; v++) store_vec(t + (r * V + v) * kLanes, acc[r][v]);
#pragma omp simd
  for (int i = 0; i < n; i++) t[i] = gelu_of(t[i]);
  for (int r = 0; r < R; r++)
    for (int v = 0; v < V; v++) acc[r][v] = load_vec(t + (r * V + v) * kLanes);
}

// R rows of y (R, ld) = GELU(W LN(x) + b) for R rows of x (R, n): the
// local view h of tokens (W_loc, LN_x) and the cross-modal view u of
// summaries (W_x, LN_c). z: room for R normalised rows.
template <int R, int V>
void view_rows(float* y, const float* x, int n, const float* ln_weight, const float* ln_bias, float eps,
               const float* wt, const float* bias, int ld, float* z) {
  float mean[R], rstd[R];
  normalize_rows<R>(z, mean, rstd, x, ln_weight, ln_bias, n, eps);
  Vec acc[R][V];
  set_rows<R, V>(acc, bias);
  accumulate<R, V>(acc, z, n, n, wt, ld);
  gelu_in_place<R, V>(acc);
  for (int r = 0; r < R; r++)
    for (int v = 0; v < V; v++) store_vec(y + r * ld + v * kLanes, acc[r][v]);
}

// R examples' part of W_1's input, pe = b_1 + W_1g g (+ W_1u u); g, u, pe (R, ld).
template <int R, int V>
void per_example_rows(float* pe, const float* g, const float* u, const TokenTrimmerWeights& w) {
  Vec acc[R][V];
  set_rows<R, V>(acc, w.mlp1_bias.data());
  accumulate<R, V>(acc, g, w.ld, w.d_t, w.mlp1_g.data(), w.ld);
  if (u) accumulate<R, V>(acc, u, w.ld, w.d_t, w.mlp1_u.data(), w.ld);
  for (int r = 0; r < R; r++)
    for (int v = 0; v < V; v++) store_vec(pe + r * w.ld + v * kLanes, acc[r][v]);
}

// out (R) = b_2 + w_2 . GELU(W_1h h + pe[example]) for R rows of h (R, ld).
template <int R, int V>
void logit_rows(float* out, const float* h, const float* pe, const int32_t* example, const TokenTrimmerWeights& w) {
  Vec acc[R][V];
  for (int r = 0; r < R; r++)
    for (int v = 0; v < V; v++) acc[r][v] = load_vec(pe + int64_t(example[r]) * w.ld + v * kLanes);
  accumulate<R, V>(acc, h, w.ld, w.d_t, w.mlp1_h.data(), w.ld);
  gelu_in_place<R, V>(acc);
  for (int r = 0; r < R; r++) {
    Vec dot = acc[r][0] * load_vec(w.mlp2_weight.data());
    for (int v = 1; v < V; v++) dot += acc[r][v] * load_vec(w.mlp2_weight.data() + v * kLanes);
    out[r] = w.mlp2_bias + lanes_sum(dot);
  }
}

template <int R>
using Rows = std::integral_constant<int, R>;

// f(Rows<R>, i) for the blocks of R rows that fit in rows 0 .. n, then
// f(Rows<1>, i) for each row left: a row's arithmetic is the same in either.
template <int R, class F>
void in_blocks(int64_t n, bool threads, const F& f) {
  const int64_t blocks = n / R;
  parallel_for(blocks, threads, [&](int64_t b) { f(Rows<R>{}, b * R); });
  for (int64_t i = blocks * R; i < n; i++) f(Rows<1>{}, i);
}

// Room for a thread's normalised rows (view_rows' z).
float* normalised_rows(size_t n) {
  thread_local std::vector<float> z;
  if (z.size() < n) z.resize(n);
  return z.data();
}

template <int V>
void keep_logits_of(float* out, const float* x, const int32_t* at, int B, const float* c,
                    const TokenTrimmerWeights& w) {
  constexpr int R = rows_at_once(V);
  const int ld = w.ld, d = w.d, dc = w.d_c;
  const int64_t rows = at[B];
  const bool threads = use_threads(rows * (int64_t(d) + 2 * w.d_t) * ld, 1 << 18);
  // The calling thread's buffers; the other threads fill and read them below.
  thread_local std::vector<float> scratch;
  thread_local std::vector<int32_t> example_of;
  scratch.resize(size_t((rows + 3 * int64_t(B)) * ld));
  example_of.resize(size_t(rows));
  float* h = scratch.data();        // (rows, ld): every row's local view
  float* g = h + rows * ld;         // (B, ld): its mean over each example's rows
  float* u = g + int64_t(B) * ld;   // (B, ld): each example's cross-modal view
  float* pe = u + int64_t(B) * ld;  // (B, ld): b_1 + W_1g g + W_1u u
  for (int b = 0; b < B; b++) std::fill(example_of.begin() + at[b], example_of.begin() + at[b + 1], b);
  const int32_t* example = example_of.data();

  // --- h = GELU(W_loc LN_x(x_i) + b_loc), every row
  in_blocks<R>(rows, threads, [&](auto n, int64_t i) {
    view_rows<n, V>(h + i * ld, x + i * d, d, w.ln_x_weight.data(), w.ln_x_bias.data(), w.ln_x_eps, w.local.data(),
                    w.local_bias.data(), ld, normalised_rows(size_t(n * d)));
  });

  // --- g: the mean of h over each example's rows (zeros for an example without rows)
  for (int b = 0; b < B; b++) {
    Vec sum[V] = {};
    for (int64_t i = at[b]; i < at[b + 1]; i++)
      for (int v = 0; v < V; v++) sum[v] += load_vec(h + i * ld + v * kLanes);
    const float inv = 1.0f / float(std::max(1, at[b + 1] - at[b]));
    for (int v = 0; v < V; v++) store_vec(g + b * ld + v * kLanes, sum[v] * inv);
  }

  // --- u = GELU(W_x LN_c(c_b) + b_x), then pe, R examples at a time
  if (w.cross_modal)
    in_blocks<R>(B, false, [&](auto n, int64_t b) {
      view_rows<n, V>(u + b * ld, c + b * dc, dc, w.ln_c_weight.data(), w.ln_c_bias.data(), w.ln_c_eps,
                      w.cross.data(), w.cross_bias.data(), ld, normalised_rows(size_t(n * dc)));
    });
  in_blocks<R>(B, false, [&](auto n, int64_t b) {
    per_example_rows<n, V>(pe + b * ld, g + b * ld, w.cross_modal ? u + b * ld : nullptr, w);
  });

  // --- every row's logit
  in_blocks<R>(rows, threads, [&](auto n, int64_t i) { logit_rows<n, V>(out + i, h + i * ld, pe, example + i, w); });
}

// W (outs, ins) with row stride ldw -> (ins, ld): row j every output's weight for input j.
std::vector<float> transposed(const float* W, int outs, int ins, int ldw, int ld) {
  std::vector<float> t(size_t(ins) * size_t(ld), 0.0f);
  for (int o = 0; o < outs; o++)
    for (int j = 0; j < ins; j++) t[size_t(j) * size_t(ld) + size_t(o)] = W[size_t(o) * size_t(ldw) + size_t(j)];
  return t;
}

std::vector<float> padded(const float* v, int n, int ld) {
  std::vector<float> p(size_t(ld), 0.0f);
  std::copy_n(v, n, p.begin());
  return p;
}

template <int V>
void head_logits_of(float* out, const float* q, int B, const HeadTrimmerWeights& w) {
  constexpr int R = rows_at_once(V);
  const int ld = w.ld_hidden, H = w.heads;
  in_blocks<R>(B, false, [&](auto n, int64_t b) {
    alignas(64) float hidden[n * kMaxVectors * kLanes];  // (n, ld): GELU(W_1 LN(q) + b_1)
    view_rows<n, V>(hidden, q + b * w.q_width, w.q_width, w.ln_weight.data(), w.ln_bias.data(), w.ln_eps,
                    w.fc1.data(), w.fc1_bias.data(), ld, normalised_rows(size_t(n * w.q_width)));
    Vec acc[n][1];
    set_rows<n, 1>(acc, w.fc2_bias.data());
    accumulate<n, 1>(acc, hidden, ld, w.hidden, w.fc2.data(), w.ld_heads);
    for (int r = 0; r < n; r++) store_first(out + (b + r) * H, acc[r][0], H);
  });
}

}  // namespace

bool keep_logits_fit(int d_t) { return d_t >= 1 && d_t <= kMaxVectors * kLanes; }

TokenTrimmerWeights token_trimmer_weights(const TokenTrimmerParams& p) {
  if (!keep_logits_fit(p.d_t))
    throw ArgumentError("token_trimmer_weights: trimmer width " + std::to_string(p.d_t) + " is over " +
                        std::to_string(kMaxVectors * kLanes));
  TokenTrimmerWeights w;
  const int dt = p.d_t, ld = (dt + kLanes - 1) / kLanes * kLanes, views = p.cross_modal ? 3 : 2;
  w.d = p.d, w.d_c = p.d_c, w.d_t = dt, w.ld = ld, w.cross_modal = p.cross_modal;
  w.ln_x_eps = p.ln_x_eps, w.ln_c_eps = p.ln_c_eps, w.mlp2_bias = p.mlp2_bias[0];
  w.ln_x_weight.assign(p.ln_x_weight, p.ln_x_weight + p.d);
  w.ln_x_bias.assign(p.ln_x_bias, p.ln_x_bias + p.d);
  w.local = transposed(p.local_weight, dt, p.d, p.d, ld);
  w.local_bias = padded(p.local_bias, dt, ld);
  w.mlp1_h = transposed(p.mlp1_weight, dt, dt, views * dt, ld);
  w.mlp1_g = transposed(p.mlp1_weight + dt, dt, dt, views * dt, ld);
  w.mlp1_bias = padded(p.mlp1_bias, dt, ld);
  w.mlp2_weight = padded(p.mlp2_weight, dt, ld);
  if (p.cross_modal) {
    w.ln_c_weight.assign(p.ln_c_weight, p.ln_c_weight + p.d_c);
    w.ln_c_bias.assign(p.ln_c_bias, p.ln_c_bias + p.d_c);
    w.cross = transposed(p.cross_weight, dt, p.d_c, p.d_c, ld);
    w.cross_bias = padded(p.cross_bias, dt, ld);
    w.mlp1_u = transposed(p.mlp1_weight + 2 * dt, dt, dt, views * dt, ld);
  }
  return w;
}

bool head_logits_fit(int hidden, int heads) {
  return hidden >= 1 && hidden <= kMaxVectors * kLanes && heads >= 1 && heads <= kLanes;
}

HeadTrimmerWeights head_trimmer_weights(const HeadTrimmerParams& p) {
  if (!head_logits_fit(p.hidden, p.heads))
    throw ArgumentError("head_trimmer_weights: " + std::to_string(p.hidden) + " hidden units and " +
                        std::to_string(p.heads) + " heads; at most " + std::to_string(kMaxVectors * kLanes) +
                        " and " + std::to_string(kLanes));
  HeadTrimmerWeights w;
  w.q_width = p.q_width, w.hidden = p.hidden, w.heads = p.heads, w.ln_eps = p.ln_eps;
  w.ld_hidden = (p.hidden + kLanes - 1) / kLanes * kLanes, w.ld_heads = kLanes;
  w.ln_weight.assign(p.ln_weight, p.ln_weight + p.q_width);
  w.ln_bias.assign(p.ln_bias, p.ln_bias + p.q_width);
  w.fc1 = transposed(p.fc1_weight, p.hidden, p.q_width, p.q_width, w.ld_hidden);
  w.fc1_bias = padded(p.fc1_bias, p.hidden, w.ld_hidden);
  w.fc2 = transposed(p.fc2_weight, p.heads, p.hidden, p.hidden, w.ld_heads);
  w.fc2_bias = padded(p.fc2_bias, p.heads, w.ld_heads);
  return w;
}

void head_logits(float* out, const float* q, int B, const HeadTrimmerWeights& w) {
  switch (w.ld_hidden / kLanes) {
    case 1: return head_logits_of<1>(out, q, B, w);
    case 2: return head_logits_of<2>(out, q, B, w);
    case 3: return head_logits_of<3>(out, q, B, w);
    case 4: return head_logits_of<4>(out, q, B, w);
    default: throw ArgumentError("head_logits: weights not made by head_trimmer_weights");
  }
}

void keep_logits(float* out, const float* x, const int32_t* at, int B, const float* c, const TokenTrimmerWeights& w) {
  switch (w.ld / kLanes) {
    case 1: return keep_logits_of<1>(out, x, at, B, c, w);
    case 2: return keep_logits_of<2>(out, x, at, B, c, w);
    case 3: return keep_logits_of<3>(out, x, at, B, c, w);
    case 4: return keep_logits_of<4>(out, x, at, B, c, w);
    default: throw ArgumentError("keep_logits: weights not made by token_trimmer_weights");
  }
}

}  // namespace st::cpu
