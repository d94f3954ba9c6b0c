// The packed inference path: see pruning/packed.h.
#include "pruning/packed.h"

#include <omp.h>

#include <cmath>

#include "engine/error.h"
#include "engine/gemm.h"

namespace st {

namespace {

using Flops = std::vector<double>;

Segments one_row_each(int64_t examples) {
  Segments s;
  for (int64_t b = 0; b < examples; b++) s.at.push_back(b + 1);
  return s;
}

// y = x W^T + b: one GEMM over every packed row; each example pays for its rows.
Tensor linear_rows(const Tensor& x, const Linear& lin, const Segments& s, Flops& flops) {
  const double per_row = 2.0 * double(lin.weight.dim(0)) * double(lin.weight.dim(1));
  for (int64_t b = 0; b < s.examples(); b++) flops[size_t(b)] += per_row * double(s.rows(b));
  return linear(x, lin.weight, lin.bias);
}

// (R, d) -> (B, d): the mean of each example's rows.
Tensor segment_mean(const Tensor& x, const Segments& s) {
  const int64_t d = x.dim(-1);
  Tensor out = Tensor::zeros({s.examples(), d});
  for (int64_t b = 0; b < s.examples(); b++) {
    float* o = out.data() + b * d;
    for (int64_t r = s.at[size_t(b)]; r < s.at[size_t(b + 1)]; r++)
      for (int64_t j = 0; j < d; j++) o[j] += x.data()[r * d + j];
    const float inv = 1.0f / float(std::max<int64_t>(1, s.rows(b)));
    for (int64_t j = 0; j < d; j++) o[j] *= inv;
  }
  return out;
}

// (B, d) -> (R, d): every row gets its example's vector.
Tensor spread_to_rows(const Tensor& per_example, const Segments& s) {
  std::vector<int32_t> owner;
  for (int64_t b = 0; b < s.examples(); b++) owner.insert(owner.end(), size_t(s.rows(b)), int32_t(b));
  return gather_rows(per_example, Tensor::from_ints(owner, {int64_t(owner.size())}));
}

// (R, d) -> (B, d): each example's first row (its class token, always kept).
Tensor first_rows(const Tensor& x, const Segments& s) {
  std::vector<int32_t> first;
  for (int64_t b = 0; b < s.examples(); b++) first.push_back(int32_t(s.at[size_t(b)]));
  return gather_rows(x, Tensor::from_ints(first, {s.examples()}));
}

// Keeps the rows whose flag is set; returns the new segments.
Segments repack(Tensor& x, const Segments& s, const std::vector<float>& keep) {
  Segments out;
  std::vector<int32_t> rows;
  for (int64_t b = 0; b < s.examples(); b++) {
    for (int64_t r = s.at[size_t(b)]; r < s.at[size_t(b + 1)]; r++)
      if (keep[size_t(r)] != 0.0f) rows.push_back(int32_t(r));
    out.at.push_back(int64_t(rows.size()));
  }
  x = gather_rows(x, Tensor::from_ints(rows, {int64_t(rows.size())}));
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

// out (rows, ld) columns [c0, c0 + cols) = (x (rows, d) W[c0 .. c0+cols)^T + b) * scale
void project(const float* x, int64_t rows, int64_t d, const float* W, const float* bias, int64_t c0, int64_t cols,
             float scale, float* out, int64_t ld) {
  sgemm(false, true, int(rows), int(cols), int(d), 1.0f, x, int(d), W + c0 * d, int(d), 0.0f, out + c0, int(ld));
  for (int64_t r = 0; r < rows; r++)
    for (int64_t j = 0; j < cols; j++) out[r * ld + c0 + j] = (out[r * ld + c0 + j] + bias[c0 + j]) * scale;
}

void softmax_rows(float* s, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; r++) {
    float* row = s + r * cols;
    float m = row[0];
    for (int64_t j = 1; j < cols; j++) m = std::max(m, row[j]);
    float sum = 0;
    for (int64_t j = 0; j < cols; j++) sum += row[j] = std::exp(row[j] - m);
    const float inv = 1.0f / sum;
    for (int64_t j = 0; j < cols; j++) row[j] *= inv;
  }
}

// softmax(Q_h K_h^T) V_h for every head h of one example:
// q (n, ldq), k and v (m, ldk / ldv), ctx (n, ldc); head h's columns start at h * hk.
// Returns the FLOPs: 4 n m hk per head.
double attend_heads(const float* q, int64_t ldq, const float* k, int64_t ldk, const float* v, int64_t ldv,
                    float* ctx, int64_t ldc, int64_t n, int64_t m, int64_t hk, const std::vector<int64_t>& heads) {
  thread_local std::vector<float> scores;
  scores.resize(size_t(n * m));
  for (int64_t h : heads) {
    sgemm(false, true, int(n), int(m), int(hk), 1.0f, q + h * hk, int(ldq), k + h * hk, int(ldk), 0.0f,
          scores.data(), int(m));  // (n, m) = Q_h K_h^T
    softmax_rows(scores.data(), n, m);
    sgemm(false, false, int(n), int(hk), int(m), 1.0f, scores.data(), int(m), v + h * hk, int(ldv), 0.0f,
          ctx + h * hk, int(ldc));  // (n, hk) = A V_h
  }
  return 4.0 * double(n) * double(m) * double(hk) * double(heads.size());
}

// Multi-head attention for every example on its own segments:
//   queries x (R, d) in segments qs; keys and values from memory (R', d) in segments ks;
//   head_keep (B, H) 0/1, or undefined for every head. -> (R, d)
// With every head kept, the projections are single GEMMs over all packed rows
// and only the attention itself runs per example. With a head mask, each
// example projects only its kept heads (runs of consecutive heads share a
// GEMM): a dropped head's Q, K, V and output columns are never computed.
Tensor packed_attention(const Attention& attention, const Tensor& x, const Segments& qs, const Tensor& memory,
                        const Segments& ks, const Tensor& head_keep, Flops& flops) {
  const AttentionWeights w = weights_of(attention);
  const int64_t d = w.d, H = w.heads, k = d / H, B = qs.examples();
  const float scale = 1.0f / std::sqrt(float(k));
  Tensor out = Tensor::empty({qs.total(), d});
  // Many examples: one thread each (GEMMs inside run single-threaded). Few: the GEMMs use the threads.
  const bool per_example_threads = B >= 2 * omp_get_max_threads();

  if (!head_keep.defined()) {
    std::vector<int64_t> all(static_cast<size_t>(H));
    for (int64_t h = 0; h < H; h++) all[size_t(h)] = h;
    Tensor q = Tensor::empty({qs.total(), d}), kk = Tensor::empty({ks.total(), d}), v = Tensor::empty({ks.total(), d});
    project(x.data(), qs.total(), d, w.wq, w.bq, 0, d, scale, q.data(), d);
    project(memory.data(), ks.total(), d, w.wk, w.bk, 0, d, 1.0f, kk.data(), d);
    project(memory.data(), ks.total(), d, w.wv, w.bv, 0, d, 1.0f, v.data(), d);
    Tensor ctx = Tensor::empty({qs.total(), d});
#pragma omp parallel for schedule(dynamic) if (per_example_threads)
    for (int64_t b = 0; b < B; b++) {
      const int64_t n = qs.rows(b), m = ks.rows(b), qr = qs.at[size_t(b)], kr = ks.at[size_t(b)];
      double f = 4.0 * double(n) * d * d + 4.0 * double(m) * d * d;  // Q and output projections; K and V
      f += attend_heads(q.data() + qr * d, d, kk.data() + kr * d, d, v.data() + kr * d, d, ctx.data() + qr * d, d, n,
                        m, k, all);
      flops[size_t(b)] += f;
    }
    for (int64_t r = 0; r < qs.total(); r++) std::copy(w.bo, w.bo + d, out.data() + r * d);
    sgemm(false, true, int(qs.total()), int(d), int(d), 1.0f, ctx.data(), int(d), w.wo, int(d), 1.0f, out.data(),
          int(d));
    return out;
  }

  const float* keep = head_keep.data();
#pragma omp parallel for schedule(dynamic) if (per_example_threads)
  for (int64_t b = 0; b < B; b++) {
    const int64_t n = qs.rows(b), m = ks.rows(b);
    const float* X = x.data() + qs.at[size_t(b)] * d;
    const float* M = memory.data() + ks.at[size_t(b)] * d;
    float* O = out.data() + qs.at[size_t(b)] * d;
    thread_local std::vector<float> q, kk, v, ctx;
    q.resize(size_t(n * d)), kk.resize(size_t(m * d)), v.resize(size_t(m * d)), ctx.resize(size_t(n * d));
    std::vector<int64_t> kept;
    std::vector<std::pair<int64_t, int64_t>> runs;  // [h0, h1) of kept heads
    for (int64_t h = 0; h < H; h++) {
      if (keep[b * H + h] == 0.0f) continue;
      kept.push_back(h);
      if (!runs.empty() && runs.back().second == h) runs.back().second = h + 1;
      else runs.push_back({h, h + 1});
    }
    double f = 0;
    for (auto [h0, h1] : runs) {
      const int64_t c0 = h0 * k, cols = (h1 - h0) * k;
      project(X, n, d, w.wq, w.bq, c0, cols, scale, q.data(), d);
      project(M, m, d, w.wk, w.bk, c0, cols, 1.0f, kk.data(), d);
      project(M, m, d, w.wv, w.bv, c0, cols, 1.0f, v.data(), d);
      f += 2.0 * n * d * cols + 4.0 * m * d * cols;
    }
    f += attend_heads(q.data(), d, kk.data(), d, v.data(), d, ctx.data(), d, n, m, k, kept);
    for (int64_t r = 0; r < n; r++) std::copy(w.bo, w.bo + d, O + r * d);
    for (auto [h0, h1] : runs) {  // O += ctx[:, run] Wo[:, run]^T
      const int64_t c0 = h0 * k, cols = (h1 - h0) * k;
      sgemm(false, true, int(n), int(d), int(cols), 1.0f, ctx.data() + c0, int(d), w.wo + c0, int(d), 1.0f, O, int(d));
      f += 2.0 * n * cols * d;
    }
    flops[size_t(b)] += f;
  }
  return out;
}

// --- blocks on packed rows (the same equations as layers/blocks.h)

Tensor bert_attention(const BertAttention& a, const Tensor& x, const Segments& xs, const Tensor& memory,
                      const Segments& ms, const Tensor& heads, Flops& flops) {
  return a.norm.forward(x + packed_attention(a.attn, x, xs, memory, ms, heads, flops));
}

Tensor bert_ffn(const BertFeedForward& f, const Tensor& x, const Segments& s, Flops& flops) {
  return f.norm.forward(x + linear_rows(gelu(linear_rows(x, f.intermediate, s, flops)), f.output, s, flops));
}

Tensor vit_block(const ViTBlock& blk, const Tensor& x, const Segments& s, Flops& flops) {
  Tensor ln = blk.ln_1.forward(x);
  Tensor h = x + packed_attention(blk.attn, ln, s, ln, s, Tensor(), flops);
  return h + linear_rows(quick_gelu(linear_rows(blk.ln_2.forward(h), blk.c_fc, s, flops)), blk.c_proj, s, flops);
}

// --- trimmers on packed rows

// Keep flags (R) of a token trimmer: its logit > theta, the first row of every example kept.
std::vector<float> keep_tokens(const TokenTrimmer& tr, const Tensor& x, const Segments& s, const Tensor& summary,
                               float tau, float theta, Flops& flops) {
  Tensor h = gelu(linear_rows(tr.ln_x.forward(x), tr.local, s, flops));  // (R, d_t)
  std::vector<Tensor> views = {h, spread_to_rows(segment_mean(h, s), s)};
  if (tr.cross_modal) {
    Tensor u = gelu(linear_rows(tr.ln_c.forward(summary), tr.cross, one_row_each(s.examples()), flops));  // (B, d_t)
    views.push_back(spread_to_rows(u, s));
  }
  Tensor logits = linear_rows(gelu(linear_rows(concat(views, -1), tr.mlp1, s, flops)), tr.mlp2, s, flops);  // (R, 1)
  std::vector<float> keep = gumbel_sigmoid_st(theta == 0 ? logits : logits - theta, tau, nullptr).to_vector();
  for (int64_t b = 0; b < s.examples(); b++) keep[size_t(s.at[size_t(b)])] = 1.0f;
  return keep;
}

Tensor keep_heads(const HeadTrimmer& tr, const Tensor& x, const Segments& xs, const Tensor& other,
                  const Segments& os, float tau, float theta, Flops& flops) {
  Tensor q = segment_mean(x, xs);                                          // (B, d)
  if (other.defined()) q = concat({q, segment_mean(other, os)}, -1);      // (B, 2d)
  const Segments each = one_row_each(xs.examples());
  Tensor logits = linear_rows(gelu(linear_rows(tr.ln.forward(q), tr.fc1, each, flops)), tr.fc2, each, flops);
  return head_mask(logits, tau, theta, nullptr);  // (B, H)
}

int site(const std::vector<int>& layers, int layer) {
  for (size_t i = 0; i < layers.size(); i++)
    if (layers[i] == layer) return int(i);
  return -1;
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
  auto record = [&](std::vector<double> PassCounts<double>::*field, const Segments& s) {
    for (int64_t b = 0; b < B; b++) (pass.counts[size_t(b)].*field).push_back(double(s.rows(b)));
  };

  // --- the image's patches (one GEMM over every example's patches)
  Tensor patches = m_.vit_.patches(image);  // (B, P, W)
  const double patch_flops = 2.0 * double(patches.dim(1)) * (3.0 * c.vit_patch_size * c.vit_patch_size) * c.vit_width;
  for (double& f : flops) f += patch_flops;

  // --- text: real tokens only
  Tensor all_text = reshape(m_.text_.embed(ids, eval), {B * T, c.text_width});
  Segments ts;
  std::vector<int32_t> real;
  const std::vector<float> mask_values = mask.to_vector();
  for (int64_t b = 0; b < B; b++) {
    for (int64_t j = 0; j < T; j++)
      if (mask_values[size_t(b * T + j)] != 0.0f) real.push_back(int32_t(b * T + j));
    ts.at.push_back(int64_t(real.size()));
  }
  Tensor t = gather_rows(all_text, Tensor::from_ints(real, {int64_t(real.size())}));  // (R_t, Tw)
  Tensor image_summary;
  if (trimming && !tc.text_token_layers.empty())
    image_summary = segment_mean(reshape(patches, {B * patches.dim(1), c.vit_width}), [&] {
      Segments s;
      for (int64_t b = 0; b < B; b++) s.at.push_back((b + 1) * patches.dim(1));
      return s;
    }());
  for (int l = 0; l < c.text_layers; l++) {
    if (int s = trimming ? site(tc.text_token_layers, l) : -1; s >= 0) {
      record(&PassCounts<double>::text_scored, ts);
      ts = repack(t, ts, keep_tokens(m_.text_token_trimmers_[size_t(s)], t, ts, image_summary, tc.tau,
                                     opt.token_threshold, flops));
    }
    record(&PassCounts<double>::text_tokens, ts);
    const BertLayer& layer = m_.text_.layers[size_t(l)];
    t = bert_ffn(layer.ffn, bert_attention(layer.attention, t, ts, t, ts, Tensor(), flops), ts, flops);
  }
  Tensor text_first = first_rows(t, ts);  // (B, Tw)

  // --- image encoder
  const int64_t N = c.image_tokens();
  Tensor v = reshape(m_.vit_.embed(patches), {B * N, c.vit_width});
  Segments vs;
  for (int64_t b = 0; b < B; b++) vs.at.push_back((b + 1) * N);
  for (int l = 0; l < c.vit_layers; l++) {
    if (int s = trimming ? site(tc.vit_token_layers, l) : -1; s >= 0) {
      record(&PassCounts<double>::vit_scored, vs);
      vs = repack(v, vs, keep_tokens(m_.vit_token_trimmers_[size_t(s)], v, vs, text_first, tc.tau,
                                     opt.token_threshold, flops));
    }
    record(&PassCounts<double>::vit_tokens, vs);
    v = vit_block(m_.vit_.blocks[size_t(l)], v, vs, flops);
  }
  v = m_.vit_.ln_post.forward(v);
  for (int64_t b = 0; b < B; b++) {
    pass.counts[size_t(b)].text_out = double(ts.rows(b));
    pass.counts[size_t(b)].image_out = double(vs.rows(b));
  }

  // --- bridge and co-attention
  auto type_row = [&](int type) { return m_.token_types_.forward(Tensor::from_ints({type}, {1})); };
  t = linear_rows(t, m_.text_transform_, ts, flops) + type_row(0);
  v = linear_rows(v, m_.image_transform_, vs, flops) + type_row(image_type);
  for (int l = 0; l < c.num_cross_layers; l++) {
    if (int s = trimming ? site(tc.cross_token_layers, l) : -1; s >= 0) {
      record(&PassCounts<double>::cross_text_scored, ts);
      record(&PassCounts<double>::cross_image_scored, vs);
      const Tensor t_first = first_rows(t, ts), v_first = first_rows(v, vs);  // before either stream changes
      std::vector<float> keep_t = keep_tokens(m_.cross_text_token_trimmers_[size_t(s)], t, ts, v_first, tc.tau,
                                              opt.token_threshold, flops);
      std::vector<float> keep_v = keep_tokens(m_.cross_image_token_trimmers_[size_t(s)], v, vs, t_first, tc.tau,
                                              opt.token_threshold, flops);
      ts = repack(t, ts, keep_t);
      vs = repack(v, vs, keep_v);
    }
    Tensor z_ts, z_tc, z_vs, z_vc;
    if (int s = trimming ? site(tc.cross_head_layers, l) : -1; s >= 0) {
      const auto& h = m_.cross_head_trimmers_[size_t(s)];
      const float tau = tc.tau, theta = opt.head_threshold;
      z_ts = keep_heads(h.text_self, t, ts, Tensor(), ts, tau, theta, flops);
      z_tc = keep_heads(h.text_cross, t, ts, v, vs, tau, theta, flops);
      z_vs = keep_heads(h.image_self, v, vs, Tensor(), vs, tau, theta, flops);
      z_vc = keep_heads(h.image_cross, v, vs, t, ts, tau, theta, flops);
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
    Tensor ta = bert_attention(tl.attention, t, ts, t, ts, z_ts, flops);
    Tensor t_next = bert_ffn(tl.ffn, bert_attention(tl.crossattention, ta, ts, v, vs, z_tc, flops), ts, flops);
    Tensor va = bert_attention(il.attention, v, vs, v, vs, z_vs, flops);
    Tensor v_next = bert_ffn(il.ffn, bert_attention(il.crossattention, va, vs, t, ts, z_vc, flops), vs, flops);
    t = t_next, v = v_next;  // both read the previous layer's outputs
  }

  const Segments each = one_row_each(B);
  pass.cls = concat({tanh(linear_rows(first_rows(t, ts), m_.text_pooler_, each, flops)),
                     tanh(linear_rows(first_rows(v, vs), m_.image_pooler_, each, flops))},
                    -1);  // (B, 2d)
  return pass;
}

PackedOutput PackedMeter::run(Task task, const Tensor& ids, const Tensor& mask, const Tensor& image,
                              const Tensor& image2, const Options& opt) const {
  if (ids.rank() != 2 || mask.shape() != ids.shape() || image.dim(0) != ids.dim(0))
    throw ShapeError("packed METER: expects ids (B, T), mask (B, T) and images (B, 3, S, S), got " +
                     to_string(ids.shape()) + ", " + to_string(mask.shape()) + " and " + to_string(image.shape()));
  for (const Tensor* t : {&ids, &mask, &image})
    if (t->device() != Device::CPU) throw DeviceError("packed METER: runs on the CPU only for now");
  NoGrad no_grad;
  const int64_t B = ids.dim(0);
  PackedOutput out;
  out.flops.assign(size_t(B), 0.0);
  Pass first = one_pass(ids, mask, image, 1, opt, out.flops);
  out.cls = first.cls;
  out.counts = first.counts;
  const Segments each = one_row_each(B);
  auto head = [&](const Linear& lin, const Tensor& x) { return linear_rows(x, lin, each, out.flops); };
  auto classifier = [&](const Classifier& c, const Tensor& x) {
    return head(c.fc2, gelu(c.norm.forward(head(c.fc1, x))));
  };
  const MeterConfig& c = m_.config_;
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
    case Task::NLVR2: {
      if (!c.nlvr2) throw ArgumentError("METER: this model has no NLVR2 head");
      if (!image2.defined() || image2.shape() != image.shape())
        throw ShapeError("packed METER: NLVR2 needs a second image batch shaped like the first");
      Pass second = one_pass(ids, mask, image2, 2, opt, out.flops);
      out.counts.insert(out.counts.end(), second.counts.begin(), second.counts.end());
      out.logits = classifier(m_.nlvr2_, concat({first.cls, second.cls}, -1));
      break;
    }
  }
  return out;
}

}  // namespace st
