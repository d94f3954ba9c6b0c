// The CPU kernels: plain functions on raw buffers, no autograd, no Tensor.
// This list is the backend interface: the CUDA backend implements the same
// functions in namespace st::cuda, and the ops pick one by device
// (ST_KERNEL in engine/ops/common.h).
//
// Conventions, as in llm.c: `_forward` writes its outputs; `_backward`
// ADDS into the gradients it is given (dinp += ...), and skips any that
// are null (inputs that need no gradient).
#pragma once
#include <cstdint>

namespace st::cpu {

// --- element-wise (engine/ops/elementwise.cpp) ---------------------------------
enum class Binary { Add, Sub, Mul, Div };
enum class Unary { Exp, Log, Tanh, Sigmoid, Gelu, QuickGelu, Silu, Relu };

// Broadcast geometry of out = a (op) b, with size-1 dims already coalesced:
// `rank` dims of sizes `size`, and element strides of a and b (0 where broadcast).
struct Broadcast {
  static constexpr int kMaxRank = 8;
  int rank = 0;
  int64_t size[kMaxRank] = {};
  int64_t stride_a[kMaxRank] = {};
  int64_t stride_b[kMaxRank] = {};
  int64_t numel() const;
};
void binary_forward(Binary op, float* out, const float* a, const float* b, const Broadcast& g);
void binary_backward(Binary op, float* da, float* db, const float* dout, const float* a,
                     const float* b, const Broadcast& g);
void scale_shift_forward(float* out, const float* x, float scale, float shift, int64_t n);  // out = scale*x + shift
void scale_backward(float* dx, const float* dout, float scale, int64_t n);                  // dx += scale*dout
void unary_forward(Unary op, float* out, const float* x, int64_t n);
void unary_backward(Unary op, float* dx, const float* dout, const float* x, const float* out, int64_t n);

// --- reductions (engine/ops/reduce.cpp) -----------------------------------------
void sum_rows_forward(float* out, const float* x, int64_t rows, int64_t n, float scale);  // out[r] = scale * sum_i x[r,i]
void sum_rows_backward(float* dx, const float* dout, int64_t rows, int64_t n, float scale);
// x (B, N, d), mask (B, N) -> out (B, d)
void masked_mean_forward(float* out, const float* x, const float* mask, int B, int N, int d);
void masked_mean_backward(float* dx, float* dmask, const float* dout, const float* x, const float* mask,
                          const float* out, int B, int N, int d);

// --- softmax family (engine/ops/softmax.cpp) ------------------------------------
void softmax_forward(float* out, const float* x, int64_t rows, int64_t n);
void softmax_backward(float* dx, const float* dout, const float* out, int64_t rows, int64_t n);
void log_softmax_forward(float* out, const float* x, int64_t rows, int64_t n);
void log_softmax_backward(float* dx, const float* dout, const float* out, int64_t rows, int64_t n);
// scores (B, R, Nk) viewed as R rows per example; mask (B, Nk).
void masked_softmax_forward(float* out, const float* scores, const float* mask, int B, int64_t R, int Nk);
void masked_softmax_backward(float* dscores, float* dmask, const float* dout, const float* out,
                             const float* scores, const float* mask, int B, int64_t R, int Nk);

// --- layernorm (engine/ops/layernorm.cpp) ---------------------------------------
// x (rows, n); saves the row mean and 1/std for the backward pass.
void layernorm_forward(float* out, float* mean, float* rstd, const float* x, const float* weight,
                       const float* bias, int64_t rows, int n, float eps);
void layernorm_backward(float* dx, float* dweight, float* dbias, const float* dout, const float* x,
                        const float* weight, const float* mean, const float* rstd, int64_t rows, int n);

// --- matrix products (engine/ops/matmul.cpp; the GEMM is engine/gemm.cpp) ---------
void add_bias_rows(float* y, const float* bias, int64_t rows, int n);          // y[r,:] += bias
void sum_columns_add(float* dbias, const float* dy, int64_t rows, int n);     // dbias += sum_r dy[r,:]

// --- data movement (engine/ops/shape.cpp) ----------------------------------------
// (A, B, C, D) -> (A, C, B, D); accumulate adds into out instead of writing.
void permute_0213(float* out, const float* x, int64_t A, int64_t B, int64_t C, int64_t D, bool accumulate);
// Copies `outer` blocks of `len` floats from src (block stride src_stride) to dst (dst_stride).
void copy_blocks(float* dst, int64_t dst_stride, const float* src, int64_t src_stride, int64_t outer,
                 int64_t len, bool accumulate);
void gather_rows_forward(float* out, const float* x, const int32_t* index, int64_t n, int64_t d);
void gather_rows_backward(float* dx, const float* dout, const int32_t* index, int64_t n, int64_t d);  // scatter-add

// --- randomness (engine/ops/random.cpp) -------------------------------------------
// Draw i of the tensor is philox_uniform(seed, offset + i).
void dropout_forward(float* out, const float* x, float p, uint64_t seed, uint64_t offset, int64_t n);
void dropout_backward(float* dx, const float* dout, float p, uint64_t seed, uint64_t offset, int64_t n);
void gumbel_sigmoid_st_forward(float* mask, const float* logits, float tau, bool noise, uint64_t seed,
                               uint64_t offset, int64_t n);
void gumbel_sigmoid_st_backward(float* dlogits, const float* dmask, const float* logits, float tau, bool noise,
                                uint64_t seed, uint64_t offset, int64_t n);

// --- images (engine/ops/image.cpp) ------------------------------------------------
// image (B, C, H, W) <-> patches (B * (H/p) * (W/p), C*p*p), columns ordered (c, y, x) like a conv weight.
void patches_from_image(float* patches, const float* image, int B, int C, int H, int W, int p);
void patches_to_image_add(float* dimage, const float* dpatches, int B, int C, int H, int W, int p);
void bicubic_resize_forward(float* out, const float* grid, int H, int W, int C, int out_h, int out_w);

// --- losses (engine/ops/loss.cpp); each writes one value -----------------------------
void cross_entropy_forward(float* loss, const float* logits, const int32_t* targets, int B, int C);
void cross_entropy_backward(float* dlogits, float dloss, const float* logits, const int32_t* targets, int B, int C);
void bce_with_logits_forward(float* loss, const float* logits, const float* targets, int64_t n);
void bce_with_logits_backward(float* dlogits, float* dtargets, float dloss, const float* logits,
                              const float* targets, int64_t n);
void kl_div_forward(float* loss, const float* logq, const float* p, int B, int C);
void kl_div_backward(float* dlogq, float* dp, float dloss, const float* logq, const float* p, int B, int C);
void mse_forward(float* loss, const float* a, const float* b, int64_t n);
void mse_backward(float* da, float* db, float dloss, const float* a, const float* b, int64_t n);

}  // namespace st::cpu
