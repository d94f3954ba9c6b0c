// The packed inference path: see pruning/packed.h.
#include "pruning/packed.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <exception>
#include <iterator>
#include <optional>
#include <unordered_map>

#include "engine/error.h"
#include "engine/gemm.h"
#include "engine/kernels.h"
#include "engine/ops/head_projection.h"
#include "engine/ops/keep_logits.h"
#include "engine/parallel.h"
#ifdef SMARTTRIM_CUDA
#include "cuda/runtime.h"
#endif

namespace st {

// A small model's weights laid out once for the packed path's kernels
// (see packed.h): GEMM panels of every weight, the transposed copies the
// row-by-row head projections read, by W (attention's Q, K, V and O), and
// those the trimmers' keep-logit kernels read, by trimmer.
struct PackedMeter::Prepared {
  PrepackedWeights gemm;
  std::unordered_map<const float*, cpu::HeadWeights> heads;
  std::unordered_map<const TokenTrimmer*, cpu::TokenTrimmerWeights> trimmers;
  std::unordered_map<const HeadTrimmer*, cpu::HeadTrimmerWeights> head_trimmers;
};
using Prepared = PackedMeter::Prepared;

void StageTimes::add(const std::string& stage, double s) {
  for (auto& [name, total] : seconds)
    if (name == stage) {
      total += s;
      return;
    }
  seconds.emplace_back(stage, s);
}

void StageTimes::add(const StageTimes& other) {
  for (const auto& [name, s] : other.seconds) add(name, s);
}

double StageTimes::of(const std::string& stage) const {
  for (const auto& [name, s] : seconds)
    if (name == stage) return s;
  return 0.0;
}

double StageTimes::total() const {
  double sum = 0;
  for (const auto& stage : seconds) sum += stage.second;
  return sum;
}

namespace {

using Flops = std::vector<double>;

// Adds the time since its last lap to a stage of `sink`, when there is one
// (Options::stage_times); otherwise it does nothing, not even read the clock.
// On the GPU it first waits for the work queued so far, so a stage's time
// is the GPU's, not the host's queueing.
class StageClock {
 public:
  StageClock(StageTimes* sink, Device device) : sink_(sink), device_(device), last_(sink ? now() : 0.0) {}
  void lap(const char* stage, int layer = -1) {
    if (!sink_) return;
    const double t = now();
    sink_->add(layer < 0 ? std::string(stage) : std::string(stage) + " " + std::to_string(layer), t - last_);
    last_ = t;
  }

 private:
  double now() const {
#ifdef SMARTTRIM_CUDA
    if (device_ == Device::CUDA) cuda::synchronize();
#endif
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
  }
  StageTimes* sink_;
  Device device_;
  double last_;
};

// Below this many FLOPs in one example's pass at full capacity a model is
// small (METER-tiny: 10 MFLOPs, the demo's model 25, METER-base 105 000):
// its batch is split by examples rather than op by op, and its weights are
// packed once.
bool small_model(const MeterConfig& c, int text_len) {
  return pass_flops(c, full_counts(c, text_len), false) < 2e8;
}

// `examples` segments of `rows` rows each (rows 1: one row per example).
Segments even_segments(int64_t examples, int64_t rows = 1) {
  Segments s;
  for (int64_t b = 0; b < examples; b++) s.at.push_back((b + 1) * rows);
  return s;
}

// y = x W^T + b (then act, if given): one GEMM over every packed row; each example pays for its rows.
Tensor linear_rows(const Tensor& x, const Linear& lin, const Segments& s, Flops& flops,
                   std::optional<Activation> act = std::nullopt) {
  const double per_row = 2.0 * double(lin.weight.dim(0)) * double(lin.weight.dim(1));
  for (int64_t b = 0; b < s.examples(); b++) flops[size_t(b)] += per_row * double(s.rows(b));
  return act ? lin.forward(x, *act) : lin.forward(x);
}

// Row numbers built on the host (segment offsets, kept rows), as an i32 tensor on `device`.
Tensor index_on(const std::vector<int32_t>& rows, Device device) {
  return Tensor::from_ints(rows, {int64_t(rows.size())}).to(device);
}

Tensor offsets_on(const Segments& s, Device device) {
  return index_on(std::vector<int32_t>(s.at.begin(), s.at.end()), device);
}

// (n, d): the listed rows of x (R, d), in order. The packed path builds the
// lists itself, so they are in range and need no check.
Tensor take_rows(const Tensor& x, const Tensor& rows) {
  const int64_t n = rows.numel(), d = x.dim(-1);
  Tensor out = Tensor::empty({n, d}, DType::F32, x.device());
  if (n > 0) ST_KERNEL(x.device(), gather_rows_forward)(out.data(), x.data(), rows.ints(), n, d);
  return out;
}
Tensor take_rows(const Tensor& x, const std::vector<int32_t>& rows) { return take_rows(x, index_on(rows, x.device())); }

// (R, d) -> (B, d): the mean of each example's rows.
Tensor segment_mean(const Tensor& x, const Segments& s) {
  const int64_t d = x.dim(-1);
  Tensor out = Tensor::empty({s.examples(), d}, DType::F32, x.device());
  ST_KERNEL(x.device(), segment_mean_forward)(out.data(), x.data(), offsets_on(s, x.device()).ints(), s.examples(), d);
  return out;
}

// (R, d) -> (B, d): each example's first row (its class token, always kept).
Tensor first_rows(const Tensor& x, const Segments& s) {
  std::vector<int32_t> first;
  for (int64_t b = 0; b < s.examples(); b++) first.push_back(int32_t(s.at[size_t(b)]));
  return take_rows(x, first);
}

// Keeps the rows whose flag is set; returns the new segments. position[r]
// (each row's index in its example's original sequence) is kept in step.
Segments repack(Tensor& x, const Segments& s, const std::vector<float>& keep, std::vector<int32_t>& position) {
  Segments out;
  std::vector<int32_t> rows, kept_position;
  for (int64_t b = 0; b < s.examples(); b++) {
    for (int64_t r = s.at[size_t(b)]; r < s.at[size_t(b + 1)]; r++)
      if (keep[size_t(r)] != 0.0f) rows.push_back(int32_t(r)), kept_position.push_back(position[size_t(r)]);
    out.at.push_back(int64_t(rows.size()));
  }
  x = take_rows(x, rows);
  position = std::move(kept_position);
  return out;
}

// Each example's original positions, from a packed position list.
std::vector<std::vector<int32_t>> positions_by_example(const std::vector<int32_t>& position, const Segments& s) {
  std::vector<std::vector<int32_t>> out;
  for (int64_t b = 0; b < s.examples(); b++)
    out.emplace_back(position.begin() + s.at[size_t(b)], position.begin() + s.at[size_t(b + 1)]);
  return out;
}

// --- attention over packed segments

// Raw views of an Attention's weights: separate (BERT) or fused (CLIP in_proj).
struct AttentionWeights {
  const float *wq, *bq, *wk, *bk, *wv, *bv, *wo, *bo;
  int64_t d;
  int heads;
};

AttentionWeights weights_of(const Attention& a) {
  AttentionWeights w{};
  w.d = a.out.weight.dim(0);
  w.heads = a.heads;
  if (a.fused) {
    const float* W = a.in_proj_weight.data();
    const float* bias = a.in_proj_bias.data();
    w.wq = W, w.wk = W + w.d * w.d, w.wv = W + 2 * w.d * w.d;
    w.bq = bias, w.bk = bias + w.d, w.bv = bias + 2 * w.d;
  } else {
    w.wq = a.query.weight.data(), w.bq = a.query.bias.data();
    w.wk = a.key.weight.data(), w.bk = a.key.bias.data();
    w.wv = a.value.weight.data(), w.bv = a.value.bias.data();
  }
  w.wo = a.out.weight.data(), w.bo = a.out.bias.data();
  return w;
}

// out (R, d) = (x (R, d) W^T + b) * scale, W (d, d) and b (d) raw views of the weights.
void project(const Tensor& x, const float* W, const float* bias, float scale, Tensor& out) {
  const Device dev = x.device();
  const int64_t R = x.dim(0), d = x.dim(1);
  ST_KERNEL(dev, gemm)(false, true, int(R), int(d), int(d), 1.0f, x.data(), int(d), W, int(d), 0.0f, out.data(), int(d));
  ST_KERNEL(dev, add_bias_rows)(out.data(), bias, R, int(d));
  if (scale != 1.0f) ST_KERNEL(dev, scale_shift_forward)(out.data(), out.data(), scale, 0.0f, R * d);
}

// For each head h, the packed rows of the examples that keep it, in order,
// so one GEMM per head covers every example. keep (B, H) on the host.  [H] -> rows
std::vector<std::vector<int32_t>> rows_per_head(const Segments& s, const std::vector<float>& keep, int64_t H) {
  std::vector<std::vector<int32_t>> rows(static_cast<size_t>(H));
  for (int64_t h = 0; h < H; h++)
    for (int64_t b = 0; b < s.examples(); b++)
      if (keep[size_t(b * H + h)] != 0.0f)
        for (int64_t r = s.at[size_t(b)]; r < s.at[size_t(b + 1)]; r++) rows[size_t(h)].push_back(int32_t(r));
  return rows;
}

// out[rows[i], c0 .. c0+cols) = (x[rows[i]] (d) W[c0 .. c0+cols)^T + b[c0 ..]) * scale, for the
// listed rows only (rows: n distinct row numbers on x's device); out is (R, d) like x.
void project_rows(const Tensor& x, const Tensor& rows, const float* W, const float* bias, int64_t c0, int64_t cols,
                  float scale, Tensor& out) {
  const Device dev = x.device();
  const int64_t n = rows.numel(), d = x.dim(1);
  if (n == 0) return;
  Tensor in = take_rows(x, rows), part = Tensor::empty({n, cols}, DType::F32, dev);  // (n, d), (n, cols)
  ST_KERNEL(dev, gemm)(false, true, int(n), int(cols), int(d), 1.0f, in.data(), int(d), W + c0 * d, int(d), 0.0f,
                       part.data(), int(cols));
  ST_KERNEL(dev, scatter_columns)(out.data(), d, c0, part.data(), rows.ints(), n, cols, bias + c0, scale, false);
}

// Multi-head attention for every example on its own segments:
//   queries x (R, d) in segments qs; keys and values from memory (R', d) in segments ks;
//   head_keep (B, H) 0/1 on the host, or undefined for every head. -> (R, d) on x's device
// Three phases. Projections: with every head kept, one GEMM per projection
// over all packed rows; with a head mask, one GEMM per (head, projection)
// over the rows of the examples that keep that head, so a dropped head's
// Q, K, V and output columns are never computed. Attention: one job per
// (example, kept head), spread over the threads. Output projection: with a
// head mask, O = b_o + sum over heads of ctx[:, head] W_o[:, head]^T, one
// GEMM per head on its rows. A small model on the CPU does the masked
// projections row by row instead (engine/ops/head_projection.h): the same
// products, without gathering and scattering rows. Every example is charged
// for exactly the work done for it.
// W laid out for the row-by-row projections: prepared's copy, or one that
// make() fills into `made` for this call.
template <class Make>
const cpu::HeadWeights& head_weights(const Prepared* prepared, const float* W, cpu::HeadWeights& made,
                                     const Make& make) {
  if (prepared)
    if (const auto it = prepared->heads.find(W); it != prepared->heads.end()) return it->second;
  return made = make();
}

// prepared: the weights laid out for the row-by-row projections, if made.
Tensor packed_attention(const Attention& attention, const Tensor& x, const Segments& qs, const Tensor& memory,
                        const Segments& ks, const Tensor& head_keep, const Prepared* prepared, Flops& flops) {
  const AttentionWeights w = weights_of(attention);
  const Device dev = x.device();
  const int64_t d = w.d, H = w.heads, k = d / H, B = qs.examples();
  const float scale = 1.0f / std::sqrt(float(k));
  const std::vector<float> keep = head_keep.defined() ? head_keep.to_vector() : std::vector<float>();
  bool every_head = true;  // no mask, or one that keeps every head of every example
  for (float z : keep) every_head = every_head && z != 0.0f;
  // Tiny work stays on one thread: a parallel region costs more than it saves
  // there. The GPU has one stream: its work is queued from one thread.
  const bool worth_threads = dev == Device::CPU && use_threads(2 * (qs.total() + ks.total()) * d * d, 4'000'000);
  auto keeps = [&](int64_t b, int64_t h) { return every_head || keep[size_t(b * H + h)] != 0.0f; };
  std::vector<int64_t> heads_of(size_t(B), H);  // kept heads per example
  for (int64_t b = 0; b < B && !every_head; b++) {
    heads_of[size_t(b)] = 0;
    for (int64_t h = 0; h < H; h++) heads_of[size_t(b)] += keeps(b, h);
  }
  // Q (2 q d) and O (2 q d) on the queries, K and V (4 k d) on the keys, per kept head of k columns
  for (int64_t b = 0; b < B; b++)
    flops[size_t(b)] += double(heads_of[size_t(b)] * k) * (4.0 * double(qs.rows(b)) * d + 4.0 * double(ks.rows(b)) * d);

  // --- projections: q (R, d), k and v (R', d); a dropped head's columns stay unwritten
  Tensor q = Tensor::empty({qs.total(), d}, DType::F32, dev);
  Tensor kk = Tensor::empty({ks.total(), d}, DType::F32, dev), v = Tensor::empty({ks.total(), d}, DType::F32, dev);
  const Tensor q_at = offsets_on(qs, dev), k_at = &ks == &qs ? q_at : offsets_on(ks, dev);  // self: one upload
  // With a head mask, a small model on the CPU projects row by row (engine/ops/head_projection.h).
  const bool by_rows = !every_head && dev == Device::CPU && cpu::head_projection_fits(d, k, d);
  std::vector<Tensor> q_rows, k_rows;  // [head] -> rows of the examples keeping it (on dev)
  if (every_head) {
    project(x, w.wq, w.bq, scale, q);
    project(memory, w.wk, w.bk, 1.0f, kk);
    project(memory, w.wv, w.bv, 1.0f, v);
  } else if (by_rows) {
    cpu::HeadWeights made;
    auto into = [&](const float* W, const float* bias) -> const cpu::HeadWeights& {
      return head_weights(prepared, W, made, [&] { return cpu::into_heads_weights(W, bias, int(H), int(k), int(d)); });
    };
    cpu::project_into_heads(q.data(), x.data(), into(w.wq, w.bq), scale, q_at.ints(), keep.data(), int(B));
    cpu::project_into_heads(kk.data(), memory.data(), into(w.wk, w.bk), 1.0f, k_at.ints(), keep.data(), int(B));
    cpu::project_into_heads(v.data(), memory.data(), into(w.wv, w.bv), 1.0f, k_at.ints(), keep.data(), int(B));
  } else {
    for (const auto& rows : rows_per_head(qs, keep, H)) q_rows.push_back(index_on(rows, dev));
    for (const auto& rows : rows_per_head(ks, keep, H)) k_rows.push_back(index_on(rows, dev));
    parallel_jobs(3 * H, worth_threads, [&](int64_t j) {
      const int64_t h = j / 3, which = j % 3;  // 0 Q, 1 K, 2 V
      if (which == 0) project_rows(x, q_rows[size_t(h)], w.wq, w.bq, h * k, k, scale, q);
      if (which == 1) project_rows(memory, k_rows[size_t(h)], w.wk, w.bk, h * k, k, 1.0f, kk);
      if (which == 2) project_rows(memory, k_rows[size_t(h)], w.wv, w.bv, h * k, k, 1.0f, v);
    });
  }

  // --- attention: softmax(Q_h K_h^T) V_h per (example, kept head)
  std::vector<std::pair<int64_t, int64_t>> jobs;
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++)
      if (keeps(b, h)) jobs.push_back({b, h});
  Tensor ctx = Tensor::empty({qs.total(), d}, DType::F32, dev);
  const Tensor keep_on_dev = every_head ? Tensor() : head_keep.to(dev);
  ST_KERNEL(dev, packed_attention_forward)(ctx.data(), q.data(), kk.data(), v.data(), q_at.ints(), k_at.ints(),
                                           every_head ? nullptr : keep_on_dev.data(), int(B), int(H), int(k));
  for (const auto& [b, h] : jobs) flops[size_t(b)] += 4.0 * double(qs.rows(b)) * double(ks.rows(b)) * double(k);

  // --- output projection
  Tensor out;
  if (every_head) {
    out = Tensor::empty({qs.total(), d}, DType::F32, dev);
    project(ctx, w.wo, w.bo, 1.0f, out);
  } else if (by_rows) {
    out = Tensor::empty({qs.total(), d}, DType::F32, dev);
    cpu::HeadWeights made;
    const cpu::HeadWeights& wo = head_weights(prepared, w.wo, made, [&] {
      return cpu::out_of_heads_weights(w.wo, w.bo, int(H), int(k), int(d));
    });
    cpu::project_out_of_heads(out.data(), ctx.data(), wo, q_at.ints(), keep.data(), int(B));
  } else {
    // Head by head: the rows that keep h read ctx's columns of h and W_o's
    // columns of h. The heads run one after another (they add into the same rows).
    out = Tensor::zeros({qs.total(), d}, DType::F32, dev);
    ST_KERNEL(dev, add_bias_rows)(out.data(), w.bo, qs.total(), int(d));
    for (int64_t h = 0; h < H; h++) {
      const Tensor& rows = q_rows[size_t(h)];
      const int64_t n = rows.numel();
      if (n == 0) continue;
      Tensor ctx_h = Tensor::empty({n, k}, DType::F32, dev), part = Tensor::empty({n, d}, DType::F32, dev);
      ST_KERNEL(dev, gather_columns)(ctx_h.data(), ctx.data(), d, h * k, rows.ints(), n, k);
      ST_KERNEL(dev, gemm)(false, true, int(n), int(d), int(k), 1.0f, ctx_h.data(), int(k), w.wo + h * k, int(d),
                           0.0f, part.data(), int(d));  // (n, d) = ctx_h W_o[:, h]^T
      ST_KERNEL(dev, scatter_columns)(out.data(), d, 0, part.data(), rows.ints(), n, d, nullptr, 1.0f, true);
    }
  }
  return out;
}

// --- blocks on packed rows (the same equations as layers/blocks.h)

Tensor bert_attention(const BertAttention& a, const Tensor& x, const Segments& xs, const Tensor& memory,
                      const Segments& ms, const Tensor& heads, const Prepared* prepared, Flops& flops) {
  return a.norm.forward(x, packed_attention(a.attn, x, xs, memory, ms, heads, prepared, flops));
}

Tensor bert_ffn(const BertFeedForward& f, const Tensor& x, const Segments& s, Flops& flops) {
  return f.norm.forward(x, linear_rows(linear_rows(x, f.intermediate, s, flops, Activation::Gelu), f.output, s, flops));
}

Tensor vit_block(const ViTBlock& blk, const Tensor& x, const Segments& s, Flops& flops) {
  Tensor ln = blk.ln_1.forward(x);
  Tensor h = x + packed_attention(blk.attn, ln, s, ln, s, Tensor(), nullptr, flops);
  return h + linear_rows(linear_rows(blk.ln_2.forward(h), blk.c_fc, s, flops, Activation::QuickGelu), blk.c_proj, s,
                         flops);
}

// --- trimmers on packed rows

// The FLOPs of a token trimmer's keep logits, charged to each example: per
// row its local view (W_loc) and W_1h and w_2; per example its cross-modal
// view (W_x) and the W_1 columns that read g and u (trimmer_logits).
void count_trimmer_flops(const TokenTrimmer& tr, const Segments& s, Flops& flops) {
  const double d = double(tr.local.weight.dim(1)), dt = double(tr.width()), views = tr.cross_modal ? 3 : 2;
  const double per_row = 2.0 * dt * d + 2.0 * dt * dt + 2.0 * dt;
  const double per_example = 2.0 * (views - 1) * dt * dt + (tr.cross_modal ? 2.0 * dt * double(tr.cross.weight.dim(1)) : 0.0);
  for (int64_t b = 0; b < s.examples(); b++) flops[size_t(b)] += per_example + per_row * double(s.rows(b));
}

// Keep logits (R) of a token trimmer on packed rows (token_trimmer.h's
// equations). A small model's trimmers on the CPU run as one kernel
// (engine/ops/keep_logits.h); otherwise op by op, with W_1 [h_i ; g ; u]
// split as W_1h h_i + (W_1g g + W_1u u): the part in brackets is one vector
// per example, so W_1 costs 2 d_t^2 per row instead of 2 (3 d_t) d_t, and
// no (R, 3 d_t) concatenation is built.
std::vector<float> trimmer_logits(const TokenTrimmer& tr, const Tensor& x, const Segments& s, const Tensor& summary,
                                  const Prepared* prepared, Flops& flops) {
  count_trimmer_flops(tr, s, flops);
  const int64_t B = s.examples(), dt = tr.width(), views = tr.cross_modal ? 3 : 2;
  if (prepared)
    if (const auto it = prepared->trimmers.find(&tr); it != prepared->trimmers.end()) {
      std::vector<float> logits(size_t(s.total()));
      const std::vector<int32_t> at(s.at.begin(), s.at.end());
      cpu::keep_logits(logits.data(), x.data(), at.data(), int(B), tr.cross_modal ? summary.data() : nullptr,
                       it->second);
      return logits;
    }
  Tensor h = tr.local.forward(tr.ln_x.forward(x), Activation::Gelu);  // (R, d_t)
  Tensor g = segment_mean(h, s);                                     // (B, d_t)
  Tensor u;
  if (tr.cross_modal) u = tr.cross.forward(tr.ln_c.forward(summary), Activation::Gelu);  // (B, d_t)
  // per example: b_1 + W_1g g + W_1u u   (B, d_t)
  const Device dev = x.device();
  const auto gemm = ST_KERNEL(dev, gemm);
  const float* W1 = tr.mlp1.weight.data();  // (d_t, views * d_t): columns [h | g | u]
  Tensor per_example = Tensor::zeros({B, dt}, DType::F32, dev) + tr.mlp1.bias;  // b_1 in every row
  gemm(false, true, int(B), int(dt), int(dt), 1.0f, g.data(), int(dt), W1 + dt, int(views * dt), 1.0f,
       per_example.data(), int(dt));
  if (tr.cross_modal)
    gemm(false, true, int(B), int(dt), int(dt), 1.0f, u.data(), int(dt), W1 + 2 * dt, int(views * dt), 1.0f,
         per_example.data(), int(dt));
  // per row: its example's vector plus W_1h h_i, through GELU, then w_2 . a + b_2
  std::vector<int32_t> example_of_row;
  for (int64_t b = 0; b < B; b++) example_of_row.insert(example_of_row.end(), size_t(s.rows(b)), int32_t(b));
  Tensor a = take_rows(per_example, example_of_row);  // (R, d_t)
  gemm(false, true, int(s.total()), int(dt), int(dt), 1.0f, h.data(), int(dt), W1, int(views * dt), 1.0f, a.data(),
       int(dt));
  Tensor logits = Tensor::empty({s.total()}, DType::F32, dev);  // (R)
  ST_KERNEL(dev, gelu_dot_rows)(logits.data(), a.data(), tr.mlp2.weight.data(), tr.mlp2.bias.data(), s.total(),
                                int(dt));
  return logits.to_vector();
}

// Keep flags (R) of a token trimmer, the first row of every example always kept:
//   keep_ratio == 0: logit > theta (SmartTrim's adaptive rule);
//   keep_ratio > 0:  the ceil(keep_ratio * n) highest logits of each example's n rows
//                    (the fixed-ratio top-k baseline: every example keeps the same share).
std::vector<float> keep_tokens(const TokenTrimmer& tr, const Tensor& x, const Segments& s, const Tensor& summary,
                               float theta, float keep_ratio, const Prepared* prepared, Flops& flops) {
  const std::vector<float> score = trimmer_logits(tr, x, s, summary, prepared, flops);
  std::vector<float> keep(score.size(), 0.0f);
  for (int64_t b = 0; b < s.examples(); b++) {
    const int64_t first = s.at[size_t(b)], n = s.rows(b);
    if (keep_ratio > 0) {
      std::vector<int64_t> order;
      for (int64_t r = first + 1; r < first + n; r++) order.push_back(r);  // the first row is kept anyway
      const int64_t k = std::min<int64_t>(int64_t(order.size()), int64_t(std::ceil(keep_ratio * double(n))) - 1);
      std::partial_sort(order.begin(), order.begin() + std::max<int64_t>(k, 0), order.end(),
                        [&](int64_t a, int64_t c) { return score[size_t(a)] > score[size_t(c)]; });
      for (int64_t i = 0; i < k; i++) keep[size_t(order[size_t(i)])] = 1.0f;
    } else {
      for (int64_t r = first; r < first + n; r++) keep[size_t(r)] = score[size_t(r)] > theta ? 1.0f : 0.0f;
    }
    keep[size_t(first)] = 1.0f;
  }
  return keep;
}

// Head mask (B, H) from the means of the stream the module reads (B, d) and,
// for MCA, of the other stream (B, d); a layer's four head trimmers share them.
// A small model's head trimmers on the CPU run as one kernel (engine/ops/keep_logits.h).
Tensor keep_heads(const HeadTrimmer& tr, const Tensor& mean, const Tensor& other_mean, float theta,
                  const Prepared* prepared, Flops& flops) {
  const Tensor q = other_mean.defined() ? concat({mean, other_mean}, -1) : mean;  // (B, d) or (B, 2d)
  const Segments each = even_segments(mean.dim(0));
  if (prepared)
    if (const auto it = prepared->head_trimmers.find(&tr); it != prepared->head_trimmers.end()) {
      const int64_t B = q.dim(0), H = tr.fc2.weight.dim(0);
      for (const Linear* fc : {&tr.fc1, &tr.fc2})
        for (double& f : flops) f += 2.0 * double(fc->weight.dim(0)) * double(fc->weight.dim(1));
      Tensor logits = Tensor::empty({B, H});
      cpu::head_logits(logits.data(), q.data(), int(B), it->second);
      return kept_heads(logits, theta);
    }
  Tensor hidden = linear_rows(tr.ln.forward(q), tr.fc1, each, flops, Activation::Gelu);
  Tensor logits = linear_rows(hidden, tr.fc2, each, flops);
  return kept_heads(logits.to(Device::CPU), theta);  // (B, H) on the host, where the rows per head are listed
}

}  // namespace

PackedMeter::Pass PackedMeter::one_pass(const Tensor& ids, const Tensor& mask, const Tensor& image, int image_type,
                                        const Options& opt, Flops& flops) const {
  const MeterConfig& c = m_.config_;
  const TrimConfig& tc = c.trim;
  const bool trimming = tc.enabled && opt.trimmers;
  const int64_t B = ids.dim(0), T = ids.dim(1);
  const Context eval;
  Pass pass;
  pass.counts.assign(size_t(B), PassCounts<double>{});
  StageClock clock(opt.stage_times ? &pass.stages : nullptr, ids.device());
  auto record = [&](std::vector<double> PassCounts<double>::*field, const Segments& s) {
    for (int64_t b = 0; b < B; b++) (pass.counts[size_t(b)].*field).push_back(double(s.rows(b)));
  };

  // --- the image's patches (one GEMM over every example's patches)
  Tensor patches = m_.vit_.patches(image);  // (B, P, W)
  const double patch_flops = 2.0 * double(patches.dim(1)) * (3.0 * c.vit_patch_size * c.vit_patch_size) * c.vit_width;
  for (double& f : flops) f += patch_flops;
  clock.lap("patch embedding");

  // --- text: real tokens only
  Tensor all_text = reshape(m_.text_.embed(ids, eval), {B * T, c.text_width});
  Segments ts;
  std::vector<int32_t> real, t_pos;  // t_pos: each packed text row's position in its example's ids
  const std::vector<float> mask_values = mask.to_vector();
  for (int64_t b = 0; b < B; b++) {
    for (int64_t j = 0; j < T; j++)
      if (mask_values[size_t(b * T + j)] != 0.0f) real.push_back(int32_t(b * T + j)), t_pos.push_back(int32_t(j));
    ts.at.push_back(int64_t(real.size()));
  }
  Tensor t = take_rows(all_text, real);  // (R_t, Tw)
  Tensor image_summary;
  if (trimming && !tc.text_token_layers.empty())
    image_summary = segment_mean(reshape(patches, {B * patches.dim(1), c.vit_width}), even_segments(B, patches.dim(1)));
  clock.lap("text embeddings");
  for (int l = 0; l < c.text_layers; l++) {
    if (int s = trimming ? TrimConfig::site(tc.text_token_layers, l) : -1; s >= 0) {
      record(&PassCounts<double>::text_scored, ts);
      ts = repack(t, ts, keep_tokens(m_.text_token_trimmers_[size_t(s)], t, ts, image_summary,
                                     opt.token_threshold, opt.keep_ratio, prepared_.get(), flops), t_pos);
      pass.kept.push_back({"text", l, positions_by_example(t_pos, ts)});
      clock.lap("text token trimmer", l);
    }
    record(&PassCounts<double>::text_tokens, ts);
    const BertLayer& layer = m_.text_.layers[size_t(l)];
    t = bert_ffn(layer.ffn, bert_attention(layer.attention, t, ts, t, ts, Tensor(), nullptr, flops), ts, flops);
    clock.lap("text layer", l);
  }
  Tensor text_first = first_rows(t, ts);  // (B, Tw)

  // --- image encoder
  const int64_t N = c.image_tokens();
  Tensor v = reshape(m_.vit_.embed(patches), {B * N, c.vit_width});
  Segments vs = even_segments(B, N);
  std::vector<int32_t> v_pos;  // each packed image row's token index: 0 the class token, 1 + p patch p
  for (int64_t b = 0; b < B; b++)
    for (int64_t i = 0; i < N; i++) v_pos.push_back(int32_t(i));
  clock.lap("ViT embeddings");
  for (int l = 0; l < c.vit_layers; l++) {
    if (int s = trimming ? TrimConfig::site(tc.vit_token_layers, l) : -1; s >= 0) {
      record(&PassCounts<double>::vit_scored, vs);
      vs = repack(v, vs, keep_tokens(m_.vit_token_trimmers_[size_t(s)], v, vs, text_first,
                                     opt.token_threshold, opt.keep_ratio, prepared_.get(), flops), v_pos);
      pass.kept.push_back({"vit", l, positions_by_example(v_pos, vs)});
      clock.lap("ViT token trimmer", l);
    }
    record(&PassCounts<double>::vit_tokens, vs);
    v = vit_block(m_.vit_.blocks[size_t(l)], v, vs, flops);
    clock.lap("ViT block", l);
  }
  v = m_.vit_.ln_post.forward(v);
  for (int64_t b = 0; b < B; b++) {
    pass.counts[size_t(b)].text_out = double(ts.rows(b));
    pass.counts[size_t(b)].image_out = double(vs.rows(b));
  }

  // --- bridge and co-attention
  auto type_row = [&](int type) { return m_.token_types_.forward(index_on({type}, ids.device())); };
  t = linear_rows(t, m_.text_transform_, ts, flops) + type_row(0);
  v = linear_rows(v, m_.image_transform_, vs, flops) + type_row(image_type);
  clock.lap("bridge");
  for (int l = 0; l < c.num_cross_layers; l++) {
    if (int s = trimming ? TrimConfig::site(tc.cross_token_layers, l) : -1; s >= 0) {
      record(&PassCounts<double>::cross_text_scored, ts);
      record(&PassCounts<double>::cross_image_scored, vs);
      const Tensor t_first = first_rows(t, ts), v_first = first_rows(v, vs);  // before either stream changes
      std::vector<float> keep_t = keep_tokens(m_.cross_text_token_trimmers_[size_t(s)], t, ts, v_first,
                                              opt.token_threshold, opt.keep_ratio, prepared_.get(), flops);
      std::vector<float> keep_v = keep_tokens(m_.cross_image_token_trimmers_[size_t(s)], v, vs, t_first,
                                              opt.token_threshold, opt.keep_ratio, prepared_.get(), flops);
      ts = repack(t, ts, keep_t, t_pos);
      vs = repack(v, vs, keep_v, v_pos);
      pass.kept.push_back({"cross-text", l, positions_by_example(t_pos, ts)});
      pass.kept.push_back({"cross-image", l, positions_by_example(v_pos, vs)});
      clock.lap("co-attention token trimmers", l);
    }
    Tensor z_ts, z_tc, z_vs, z_vc;
    // The top-k baseline prunes tokens only.
    if (int s = trimming && opt.keep_ratio == 0 ? TrimConfig::site(tc.cross_head_layers, l) : -1; s >= 0) {
      const auto& h = m_.cross_head_trimmers_[size_t(s)];
      const float theta = opt.head_threshold;
      const Tensor t_mean = segment_mean(t, ts), v_mean = segment_mean(v, vs);  // (B, d) each
      z_ts = keep_heads(h.text_self, t_mean, Tensor(), theta, prepared_.get(), flops);
      z_tc = keep_heads(h.text_cross, t_mean, v_mean, theta, prepared_.get(), flops);
      z_vs = keep_heads(h.image_self, v_mean, Tensor(), theta, prepared_.get(), flops);
      z_vc = keep_heads(h.image_cross, v_mean, t_mean, theta, prepared_.get(), flops);
      clock.lap("head trimmers", l);
    }
    auto heads_kept = [&](std::vector<double> PassCounts<double>::*field, const Tensor& z) {
      for (int64_t b = 0; b < B; b++) {
        double kept = c.num_heads;
        if (z.defined()) {
          kept = 0;
          for (int h = 0; h < c.num_heads; h++) kept += z.data()[b * c.num_heads + h];
        }
        (pass.counts[size_t(b)].*field).push_back(kept);
      }
    };
    heads_kept(&PassCounts<double>::text_self_heads, z_ts);
    heads_kept(&PassCounts<double>::text_cross_heads, z_tc);
    heads_kept(&PassCounts<double>::image_self_heads, z_vs);
    heads_kept(&PassCounts<double>::image_cross_heads, z_vc);
    record(&PassCounts<double>::cross_text_tokens, ts);
    record(&PassCounts<double>::cross_image_tokens, vs);
    const BertCrossLayer& tl = m_.text_layers_[size_t(l)];
    const BertCrossLayer& il = m_.image_layers_[size_t(l)];
    const Prepared* p = prepared_.get();
    Tensor ta = bert_attention(tl.attention, t, ts, t, ts, z_ts, p, flops);
    Tensor t_next = bert_ffn(tl.ffn, bert_attention(tl.crossattention, ta, ts, v, vs, z_tc, p, flops), ts, flops);
    Tensor va = bert_attention(il.attention, v, vs, v, vs, z_vs, p, flops);
    Tensor v_next = bert_ffn(il.ffn, bert_attention(il.crossattention, va, vs, t, ts, z_vc, p, flops), vs, flops);
    t = t_next, v = v_next;  // both read the previous layer's outputs
    clock.lap("co-attention layer", l);
  }

  const Segments each = even_segments(B);
  pass.cls = concat({tanh(linear_rows(first_rows(t, ts), m_.text_pooler_, each, flops)),
                     tanh(linear_rows(first_rows(v, vs), m_.image_pooler_, each, flops))},
                    -1);  // (B, 2d)
  clock.lap("poolers");
  return pass;
}

// A small model's ops are mostly below the size where a second thread pays
// (GEMMs under 4 MFLOPs, attention on 16-token segments), so shared out op
// by op, the other threads mostly wait; more so after trimming, which only
// makes the ops smaller. Each thread instead runs the whole pass on its
// share of the examples, every op inside on that one thread, with no
// barrier between ops. Examples never interact, so the results are the
// same as one pass over the batch; the parts are put back in order.
PackedMeter::Pass PackedMeter::pass(const Tensor& ids, const Tensor& mask, const Tensor& image, int image_type,
                                    const Options& opt, std::vector<double>& flops) const {
  const MeterConfig& c = m_.config_;
  const int64_t B = ids.dim(0);
  const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  if (ids.device() != Device::CPU || threads < 2 || B < 2 * int64_t(threads) || !small_model(c, int(ids.dim(1))))
    return one_pass(ids, mask, image, image_type, opt, flops);

  std::vector<Pass> parts(static_cast<size_t>(threads));
  std::vector<std::vector<double>> part_flops(static_cast<size_t>(threads));
  std::vector<std::exception_ptr> errors(static_cast<size_t>(threads));
  auto first_example = [&](int part) { return B * part / threads; };
#pragma omp parallel for num_threads(threads) schedule(static, 1)
  for (int part = 0; part < threads; part++) {
    try {
      NoGrad no_grad;  // grad mode is per thread, and so is the use of prepacked weights
      PrepackedWeights::Use packed_weights(prepared_ ? &prepared_->gemm : nullptr);
      const int64_t b0 = first_example(part), b1 = first_example(part + 1);
      part_flops[size_t(part)].assign(size_t(b1 - b0), 0.0);
      parts[size_t(part)] = one_pass(ids.slice_batch(b0, b1), mask.slice_batch(b0, b1), image.slice_batch(b0, b1),
                                     image_type, opt, part_flops[size_t(part)]);
    } catch (...) {
      errors[size_t(part)] = std::current_exception();  // an exception must not leave the parallel region
    }
  }
  for (const std::exception_ptr& e : errors)
    if (e) std::rethrow_exception(e);

  // Moved, not copied: a pass's counts and kept positions are a few small vectors per example.
  Pass whole = std::move(parts[0]);
  std::vector<Tensor> cls{whole.cls};
  for (size_t part = 1; part < parts.size(); part++) {
    Pass& p = parts[part];
    cls.push_back(p.cls);
    std::move(p.counts.begin(), p.counts.end(), std::back_inserter(whole.counts));
    whole.stages.add(p.stages);
    for (size_t site = 0; site < whole.kept.size(); site++) {
      auto& positions = whole.kept[site].positions;
      std::move(p.kept[site].positions.begin(), p.kept[site].positions.end(), std::back_inserter(positions));
    }
  }
  whole.cls = concat(cls, 0);
  for (int part = 0; part < threads; part++)
    for (int64_t b = first_example(part); b < first_example(part + 1); b++)
      flops[size_t(b)] += part_flops[size_t(part)][size_t(b - first_example(part))];
  return whole;
}

namespace {

// GEMM panels: every matrix parameter as the W of x W^T (a linear layer's
// (out, in) weight; the patch embedding's (width, 3, p, p) as
// (width, 3 p p)), and the row and column blocks that the passes multiply
// by on their own: CLIP's fused in_proj (its Q, K and V rows).
void prepack_gemm_weights(const Meter& m, PrepackedWeights& w) {
  for (const auto& [name, t] : m.params().list) {
    if (t->rank() < 2) continue;
    const int N = int(t->dim(0)), K = int(t->numel() / t->dim(0));
    const float* W = t->data();
    w.add(W, K, N, K);
    if (name.ends_with("in_proj_weight"))
      for (int part = 0; part < 3; part++) w.add(W + int64_t(part) * (N / 3) * K, K, N / 3, K);
  }
}

// Raw views of a trimmer's parameters, for its keep-logit kernel.
cpu::TokenTrimmerParams params_of(const TokenTrimmer& tr) {
  cpu::TokenTrimmerParams p;
  p.d = int(tr.local.weight.dim(1)), p.d_c = int(tr.cross.weight.dim(1)), p.d_t = tr.width();
  p.cross_modal = tr.cross_modal;
  p.ln_x_weight = tr.ln_x.weight.data(), p.ln_x_bias = tr.ln_x.bias.data(), p.ln_x_eps = tr.ln_x.eps;
  p.ln_c_weight = tr.ln_c.weight.data(), p.ln_c_bias = tr.ln_c.bias.data(), p.ln_c_eps = tr.ln_c.eps;
  p.local_weight = tr.local.weight.data(), p.local_bias = tr.local.bias.data();
  p.cross_weight = tr.cross.weight.data(), p.cross_bias = tr.cross.bias.data();
  p.mlp1_weight = tr.mlp1.weight.data(), p.mlp1_bias = tr.mlp1.bias.data();
  p.mlp2_weight = tr.mlp2.weight.data(), p.mlp2_bias = tr.mlp2.bias.data();
  return p;
}

cpu::HeadTrimmerParams params_of(const HeadTrimmer& tr) {
  cpu::HeadTrimmerParams p;
  p.q_width = int(tr.fc1.weight.dim(1)), p.hidden = int(tr.fc1.weight.dim(0)), p.heads = int(tr.fc2.weight.dim(0));
  p.ln_weight = tr.ln.weight.data(), p.ln_bias = tr.ln.bias.data(), p.ln_eps = tr.ln.eps;
  p.fc1_weight = tr.fc1.weight.data(), p.fc1_bias = tr.fc1.bias.data();
  p.fc2_weight = tr.fc2.weight.data(), p.fc2_bias = tr.fc2.bias.data();
  return p;
}

// Head projections: the co-attention's modules, the ones head trimmers act on.
void prepare_head_weights(const std::vector<const Attention*>& modules,
                          std::unordered_map<const float*, cpu::HeadWeights>& heads) {
  for (const Attention* a : modules) {
    const AttentionWeights w = weights_of(*a);
    const int H = w.heads, k = int(w.d / w.heads), d = int(w.d);
    if (!cpu::head_projection_fits(d, k, d)) continue;
    for (const auto& [W, bias] : {std::pair{w.wq, w.bq}, {w.wk, w.bk}, {w.wv, w.bv}})
      heads.emplace(W, cpu::into_heads_weights(W, bias, H, k, d));
    heads.emplace(w.wo, cpu::out_of_heads_weights(w.wo, w.bo, H, k, d));
  }
}

}  // namespace

PackedMeter::PackedMeter(const Meter& model) : m_(model) {
  if (model.device() != Device::CPU || !small_model(model.config_, model.config_.max_text_positions)) return;
  auto p = std::make_shared<Prepared>();
  prepack_gemm_weights(model, p->gemm);
  std::vector<const Attention*> modules;
  for (const auto* layers : {&model.text_layers_, &model.image_layers_})
    for (const BertCrossLayer& l : *layers) modules.push_back(&l.attention.attn), modules.push_back(&l.crossattention.attn);
  prepare_head_weights(modules, p->heads);
  for (const auto* trimmers : {&model.vit_token_trimmers_, &model.text_token_trimmers_,
                               &model.cross_text_token_trimmers_, &model.cross_image_token_trimmers_})
    for (const TokenTrimmer& tr : *trimmers)
      if (cpu::keep_logits_fit(tr.width())) p->trimmers.emplace(&tr, cpu::token_trimmer_weights(params_of(tr)));
  for (const Meter::CrossHeadTrimmers& layer : model.cross_head_trimmers_)
    for (const HeadTrimmer* tr : {&layer.text_self, &layer.text_cross, &layer.image_self, &layer.image_cross})
      if (cpu::head_logits_fit(int(tr->fc1.weight.dim(0)), int(tr->fc2.weight.dim(0))))
        p->head_trimmers.emplace(tr, cpu::head_trimmer_weights(params_of(*tr)));
  prepared_ = std::move(p);
}

PackedOutput PackedMeter::run(Task task, const Tensor& ids, const Tensor& mask, const Tensor& image,
                              const Tensor& image2, const Options& opt) const {
  if (ids.rank() != 2 || mask.shape() != ids.shape() || image.dim(0) != ids.dim(0))
    throw ShapeError("packed METER: expects ids (B, T), mask (B, T) and images (B, 3, S, S), got " +
                     to_string(ids.shape()) + ", " + to_string(mask.shape()) + " and " + to_string(image.shape()));
  const Device dev = m_.device();
  for (const Tensor* t : {&ids, &mask, &image, &image2})
    if (t->defined() && t->device() != dev)
      throw DeviceError("packed METER: the model's weights are on " + std::string(name(dev)) + " but an input is " +
                        t->describe() + "; move both to one device");
  NoGrad no_grad;
  PrepackedWeights::Use packed_weights(dev == Device::CPU && prepared_ ? &prepared_->gemm : nullptr);
  const MeterConfig& c = m_.config_;
  if (task == Task::NLVR2) {
    if (!c.nlvr2) throw ArgumentError("METER: this model has no NLVR2 head");
    if (!image2.defined() || image2.shape() != image.shape())
      throw ShapeError("packed METER: NLVR2 needs a second image batch shaped like the first");
  }
  const int64_t B = ids.dim(0);
  PackedOutput out;
  out.flops.assign(size_t(B), 0.0);
  Pass first = pass(ids, mask, image, 1, opt, out.flops);
  Pass second;  // NLVR2's pass over the second images
  if (task == Task::NLVR2) second = pass(ids, mask, image2, 2, opt, out.flops);
  out.cls = first.cls;
  for (Pass* p : {&first, &second}) {
    std::move(p->counts.begin(), p->counts.end(), std::back_inserter(out.counts));
    std::move(p->kept.begin(), p->kept.end(), std::back_inserter(out.kept));
  }
  StageTimes stages = std::move(first.stages);
  stages.add(second.stages);
  StageClock clock(opt.stage_times ? &stages : nullptr, dev);
  const Segments each = even_segments(B);
  auto head = [&](const Linear& lin, const Tensor& x) { return linear_rows(x, lin, each, out.flops); };
  auto classifier = [&](const Classifier& c, const Tensor& x) {
    return head(c.fc2, gelu(c.norm.forward(head(c.fc1, x))));
  };
  switch (task) {
    case Task::None: break;
    case Task::VQA:
      if (c.vqa_answers == 0) throw ArgumentError("METER: this model has no VQA head");
      out.logits = classifier(m_.vqa_, out.cls);
      break;
    case Task::SNLI:
      if (!c.snli) throw ArgumentError("METER: this model has no SNLI-VE head");
      out.logits = classifier(m_.snli_, out.cls);
      break;
    case Task::ITM:
      if (!c.itm) throw ArgumentError("METER: this model has no image-text matching head");
      out.logits = head(m_.itm_, out.cls);
      break;
    case Task::Rank:
      if (!c.rank) throw ArgumentError("METER: this model has no retrieval rank head");
      out.logits = head(m_.rank_, out.cls);
      break;
    case Task::NLVR2:
      out.logits = classifier(m_.nlvr2_, concat({first.cls, second.cls}, -1));
      break;
  }
  clock.lap("task head");
  if (opt.stage_times) opt.stage_times->add(stages);
  return out;
}

}  // namespace st
