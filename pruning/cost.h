// The FLOPs cost model (SMARTTRIM.md section 6), one formula for the whole
// METER pass: patch embedding, ViT blocks, text layers, bridge, co-attention
// layers, poolers, the trimmers' own work, and the task head. A multiply-add
// is 2 FLOPs; LayerNorm, softmax and element-wise work are not counted.
//
// With n kept tokens, n' kept tokens in the other stream, h kept heads of
// size k, width d and FFN width f:
//
//   MSA = 2 n d (3 h k) + 4 n^2 h k + 2 n (h k) d
//   MCA = 2 n d (h k) + 4 n' d (h k) + 4 n n' h k + 2 n (h k) d
//   FFN = 4 n d f
//   token trimmer scoring n tokens: 2 n d d_t (h) + 2 d_c d_t (u) + 2 n d_t d_t + 2 (2 d_t) d_t (W_1) + 2 n d_t
//     (W_1 [h_i ; g ; u] = W_1h h_i + (W_1g g + W_1u u): the bracket is one vector per example)
//   head trimmer (q of width w, hidden d_h): 2 w d_h + 2 d_h H
//
// The counts are a template parameter: Tensor (B,) counts from the training
// masks (n = sum of a straight-through mask, so the cost is differentiable),
// or double for one example of the packed inference path, whose executed
// FLOPs must equal this count exactly.
#pragma once
#include <vector>

#include "engine/ops.h"
#include "layers/meter_config.h"

namespace st {

// Tokens and heads one example keeps in one (image, text) pass.
template <typename T>
struct PassCounts {
  std::vector<T> vit_tokens;         // entering each ViT block            [vit_layers]
  std::vector<T> text_tokens;        // entering each RoBERTa layer        [text_layers]
  T text_out, image_out;             // leaving the encoders (the bridge's rows)
  std::vector<T> cross_text_tokens;  // entering each co-attention layer   [num_cross_layers]
  std::vector<T> cross_image_tokens;
  std::vector<T> text_self_heads, text_cross_heads;    // kept heads per co-attention layer
  std::vector<T> image_self_heads, image_cross_heads;
  // Tokens scored by each token trimmer, in the order of TrimConfig's lists
  // (a cross-layer site has a text and an image trimmer).
  std::vector<T> vit_scored, text_scored, cross_text_scored, cross_image_scored;
};

enum class Task { None, VQA, SNLI, ITM, Rank, NLVR2 };

namespace cost_detail {
inline double times(double n, double c) { return n * c; }
inline Tensor times(const Tensor& n, double c) { return n * float(c); }
inline double plus(double a, double b) { return a + b; }
inline Tensor plus(const Tensor& a, double b) { return a + float(b); }

template <typename T>
T msa(const T& n, const T& h, double d, double k) {
  // QKV and output projections: 2 n d (3 h k) + 2 n (h k) d = 8 d k (n h); scores and A V: 4 k (n^2 h)
  return times(n * h, 8.0 * d * k) + times(n * n * h, 4.0 * k);
}
// MSA with a fixed number of heads (the encoders, which have no head trimmers).
template <typename T>
T msa_all_heads(const T& n, double heads, double d, double k) {
  return times(n, 8.0 * d * k * heads) + times(n * n, 4.0 * k * heads);
}
template <typename T>
T mca(const T& n, const T& n_other, const T& h, double d, double k) {
  // Q and output projections on n, K and V on n': 4 d k (n h) + 4 d k (n' h); scores and A V: 4 k (n n' h)
  return times(n * h, 4.0 * d * k) + times(n_other * h, 4.0 * d * k) + times(n * n_other * h, 4.0 * k);
}
template <typename T>
T ffn(const T& n, double d, double f) {
  return times(n, 4.0 * d * f);
}
// A token trimmer scoring n tokens of width d, with cross input of width d_c and trimmer width d_t.
template <typename T>
T token_trimmer(const T& n, double d, double d_c, double d_t, bool cross_modal) {
  const double per_example_views = cross_modal ? 2 : 1;  // g, and u
  const double per_example = 2.0 * per_example_views * d_t * d_t + (cross_modal ? 2.0 * d_c * d_t : 0.0);
  return plus(times(n, 2.0 * d * d_t + 2.0 * d_t * d_t + 2.0 * d_t), per_example);
}
inline double head_trimmer(double q_width, double hidden, double heads) {
  return 2.0 * q_width * hidden + 2.0 * hidden * heads;
}
}  // namespace cost_detail

// FLOPs of one (image, text) pass without the task head. with_trimmers
// false leaves out the trimmers' own work (the unpruned model has none).
template <typename T>
T pass_flops(const MeterConfig& c, const PassCounts<T>& n, bool with_trimmers) {
  using namespace cost_detail;
  const double d = c.hidden_size, k = double(c.hidden_size) / c.num_heads;
  const double w = c.vit_width, kv = double(c.vit_width) / c.vit_heads;
  const double tw = c.text_width, kt = double(c.text_width) / c.text_heads;
  const double p = c.vit_patch_size, patches = double(c.vit_grid()) * c.vit_grid();
  double fixed = 2.0 * patches * (3.0 * p * p) * w  // patch embedding
                 + 2.0 * 2.0 * d * d;                // the two poolers read one token each
  T total = times(n.text_out, 2.0 * tw * d) + times(n.image_out, 2.0 * w * d);  // the bridge
  for (const T& tokens : n.vit_tokens)
    total = total + msa_all_heads(tokens, double(c.vit_heads), w, kv) + ffn(tokens, w, double(c.vit_ffn_size));
  for (const T& tokens : n.text_tokens)
    total = total + msa_all_heads(tokens, double(c.text_heads), tw, kt) + ffn(tokens, tw, double(c.text_ffn_size));
  for (size_t i = 0; i < n.cross_text_tokens.size(); i++) {
    const T& nt = n.cross_text_tokens[i];
    const T& nv = n.cross_image_tokens[i];
    total = total + msa(nt, n.text_self_heads[i], d, k) + mca(nt, nv, n.text_cross_heads[i], d, k) +
            ffn(nt, d, double(c.ffn_size));
    total = total + msa(nv, n.image_self_heads[i], d, k) + mca(nv, nt, n.image_cross_heads[i], d, k) +
            ffn(nv, d, double(c.ffn_size));
  }
  if (with_trimmers && c.trim.enabled) {
    const TrimConfig& t = c.trim;
    const bool g = t.cross_modal_guidance;
    for (const T& s : n.vit_scored) total = total + token_trimmer(s, w, tw, w / t.width_divisor, g);
    for (const T& s : n.text_scored) total = total + token_trimmer(s, tw, w, tw / t.width_divisor, g);
    for (const T& s : n.cross_text_scored) total = total + token_trimmer(s, d, d, d / t.width_divisor, g);
    for (const T& s : n.cross_image_scored) total = total + token_trimmer(s, d, d, d / t.width_divisor, g);
    const double hidden = d / t.width_divisor;
    // per co-attention layer with head trimmers: MSA and MCA, in both streams
    fixed += double(t.cross_head_layers.size()) * 2.0 *
             (head_trimmer(d, hidden, c.num_heads) + head_trimmer(2.0 * d, hidden, c.num_heads));
  }
  return plus(total, fixed);
}

// Example b's counts out of a batch's (B,) count tensors (for reports and
// for comparing the training pass with the packed path).
PassCounts<double> counts_of_example(const PassCounts<Tensor>& batch, int64_t b);

// FLOPs of a task head on the pooled features (NLVR2: on the pair of passes).
double head_flops(const MeterConfig& c, Task task);

// The counts of the unpruned model for an example with `text_tokens` real tokens.
PassCounts<double> full_counts(const MeterConfig& c, int text_tokens);

// FLOPs of one example under the unpruned model (no trimmers), with its head.
// NLVR2 counts two passes.
double full_flops(const MeterConfig& c, int text_tokens, Task task);

// The counts when every trimmer keeps the least it can: the first token after
// each token trimmer, one head in each module with a head trimmer.
PassCounts<double> fewest_counts(const MeterConfig& c, int text_tokens);

// The lowest FLOPs ratio c's trimmers can reach for an example with
// `text_tokens` real tokens (fewest_counts, trimmers' own work included):
// the untrimmed parts (patch embedding, layers before the first trimmer)
// set a floor that no cost target below it can pass.
double lowest_flops_ratio(const MeterConfig& c, int text_tokens, Task task);

}  // namespace st
