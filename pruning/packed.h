// Inference that removes what the trimmers drop (SMARTTRIM.md section 5,
// DESIGN "Training vs inference with trimmers").
//
// The tokens every example keeps live in one packed buffer (sum_b n_b, d)
// with per-example offsets (cu_seqlens): example b owns rows
// [offset[b], offset[b+1]). After each token trimmer the survivors are
// gathered into a new packed buffer. Linear layers run one GEMM over all
// packed rows; attention runs per (example, head) on the example's own rows
// (cross-attention on the other stream's rows of the same example); a head
// an example dropped costs nothing: its Q, K, V and output columns are never
// computed. No noise: keep iff logit > threshold.
//
// Every GEMM adds its FLOPs to the example whose rows it ran on, so a batch
// reports what each example really cost; the tests hold that count equal to
// the cost model (pruning/cost.h) for every example.
//
// It runs where the model's weights are (CPU or GPU), with the same code:
// the gathers, segment means and per-head projections are kernels with a
// CPU and a CUDA version (engine/ops/packed_rows.cpp), and each trimmer's
// keep decisions are read back to the host, where the kept rows are listed.
// One step differs by device: on the CPU a small model projects into and
// out of the kept heads row by row (engine/ops/head_projection.h) instead
// of one GEMM per head over gathered rows.
//
// A small model on the CPU has its weights laid out for its kernels once,
// when the PackedMeter is made, not at every product: packed for the GEMM
// (engine/gemm.h: PrepackedWeights) and, for attention with head masks,
// transposed for the row-by-row projections. Its products have few rows, so
// packing the weights was a large share of a pass. The PackedMeter then
// computes with the weights as they were when it was made: after the
// weights change (training, loading), make a new one.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "layers/meter.h"

namespace st {

// Offsets of the examples' rows in a packed buffer: example b owns [at[b], at[b+1]).
struct Segments {
  std::vector<int64_t> at{0};
  int64_t examples() const { return int64_t(at.size()) - 1; }
  int64_t rows(int64_t b) const { return at[size_t(b + 1)] - at[size_t(b)]; }
  int64_t total() const { return at.back(); }
};

// The tokens a trimmer let through, for pictures and analysis.
struct KeptTokens {
  std::string stream;  // "text", "vit", "cross-text" or "cross-image"
  int layer = 0;       // the layer the survivors enter (of that encoder, or of the co-attention stack)
  // [example]: the survivors' positions in the original sequence, ascending:
  // text: index into the example's ids; image: 0 the class token, 1 + p patch p (row-major).
  std::vector<std::vector<int32_t>> positions;
};

// Where the passes' time went, stage by stage (Options::stage_times), for
// profiling: wall seconds per stage ("text layer 0", "ViT token trimmer 1",
// "co-attention layer 1", ...), in the order the stages first ran, added up
// over the runs that filled it, over NLVR2's two passes and over the
// threads that ran a pass (a small model's batch is split by examples, so
// on T threads the stages add up to about T times the wall time). On the
// GPU each stage waits for its work to finish before it is timed, which
// only a run that asks for the times pays.
struct StageTimes {
  std::vector<std::pair<std::string, double>> seconds;
  void add(const std::string& stage, double s);
  void add(const StageTimes& other);
  double of(const std::string& stage) const;  // 0 for a stage that did not run
  double total() const;
};

struct PackedOutput {
  Tensor logits;               // (B, classes) of the task's head; undefined for Task::None
  Tensor cls;                  // (B, 2d) pooled features (the first image's, for NLVR2)
  std::vector<double> flops;   // per example: the FLOPs its GEMMs executed
  // Kept tokens per example entering each layer, as the cost model counts them (one per pass).
  std::vector<PassCounts<double>> counts;  // [pass][example]... flattened: counts[pass * B + b]
  std::vector<KeptTokens> kept;            // one per token-trimmer site, in execution order (NLVR2: pass 1, then 2)
};

class PackedMeter {
 public:
  explicit PackedMeter(const Meter& model);
  const Meter& model() const { return m_; }
  // Whether the weight matrices were laid out once, when this was made (a
  // small model on the CPU; see above): if so, it multiplies by them as they
  // were then, so after the weights change it must be made again.
  bool weights_prepared() const { return prepared_ != nullptr; }

  struct Options {
    float token_threshold = 0;  // theta: keep a token iff its logit > theta
    float head_threshold = 0;
    bool trimmers = true;       // false: full capacity (padding is still never computed)
    // > 0: the fixed-ratio top-k baseline instead of the threshold: every token trimmer keeps
    // the ceil(keep_ratio * n) highest-scoring of an example's n tokens, and no head is dropped.
    float keep_ratio = 0;
    StageTimes* stage_times = nullptr;  // if set, each run adds the time of each of its stages to it
  };
  // ids i32 (B, T), mask (B, T), image (B, 3, S, S); image2 for NLVR2 (its second pass).
  PackedOutput run(Task task, const Tensor& ids, const Tensor& mask, const Tensor& image,
                   const Tensor& image2, const Options& opt) const;
  PackedOutput run(Task task, const Tensor& ids, const Tensor& mask, const Tensor& image, const Options& opt) const {
    return run(task, ids, mask, image, Tensor(), opt);
  }

  struct Prepared;  // the weights laid out for the kernels (packed.cpp)

 private:
  struct Pass {
    Tensor cls;  // (B, 2d)
    std::vector<PassCounts<double>> counts;  // per example
    std::vector<KeptTokens> kept;
    StageTimes stages;  // filled when Options::stage_times is set
  };
  Pass one_pass(const Tensor& ids, const Tensor& mask, const Tensor& image, int image_type, const Options& opt,
                std::vector<double>& flops) const;
  // one_pass over the whole batch or, for a small model, over each thread's share of the examples
  Pass pass(const Tensor& ids, const Tensor& mask, const Tensor& image, int image_type, const Options& opt,
            std::vector<double>& flops) const;
  const Meter& m_;
  std::shared_ptr<const Prepared> prepared_;  // a small model's, on the CPU; else null
};

}  // namespace st
