// Ops that move data without arithmetic: reshape, the head permutes,
// concat/split, and row gathers (embedding lookup, packing kept tokens).
// Each backward moves the gradient back the same way, adding.
#include <cstring>

#include "engine/ops/common.h"

namespace st {
namespace cpu {

void permute_0213(float* out, const float* x, int64_t A, int64_t B, int64_t C, int64_t D, bool accumulate) {
  parallel_for(A * B, use_threads(A * B * C * D, 1 << 15), [&](int64_t ab) {
    const int64_t a = ab / B, b = ab % B;
    for (int64_t c = 0; c < C; c++) {
      const float* src = x + ((a * B + b) * C + c) * D;  // x[a, b, c, :]
      float* dst = out + ((a * C + c) * B + b) * D;      // out[a, c, b, :]
      if (accumulate)
        for (int64_t i = 0; i < D; i++) dst[i] += src[i];
      else
        std::memcpy(dst, src, size_t(D) * sizeof(float));
    }
  });
}

void copy_blocks(float* dst, int64_t dst_stride, const float* src, int64_t src_stride, int64_t outer, int64_t len,
                 bool accumulate) {
  parallel_for(outer, use_threads(outer * len, 1 << 15), [&](int64_t o) {
    float* d = dst + o * dst_stride;
    const float* s = src + o * src_stride;
    if (accumulate)
      for (int64_t i = 0; i < len; i++) d[i] += s[i];
    else
      std::memcpy(d, s, size_t(len) * sizeof(float));
  });
}

void gather_rows_forward(float* out, const float* x, const int32_t* index, int64_t n, int64_t d) {
  parallel_for(n, use_threads(n * d, 1 << 15), [&](int64_t j) {
    std::memcpy(out + j * d, x + int64_t(index[j]) * d, size_t(d) * sizeof(float));
  });
}

// Indices may repeat (a token id used twice), so rows are added one after
// another; each row's columns are split among threads instead.
void gather_rows_backward(float* dx, const float* dout, const int32_t* index, int64_t n, int64_t d) {
  parallel_ranges(d, use_threads(n * d, 1 << 15), [&](int64_t lo, int64_t hi) {
    for (int64_t j = 0; j < n; j++) {
      float* dst = dx + int64_t(index[j]) * d;
      const float* src = dout + j * d;
      for (int64_t i = lo; i < hi; i++) dst[i] += src[i];
    }
  });
}

}  // namespace cpu

Tensor reshape(const Tensor& x, const Shape& shape) {
  const char* op = "reshape";
  common_device(op, {&x});
  Shape s = shape;
  int infer = -1;
  int64_t known = 1;
  for (size_t i = 0; i < s.size(); i++) {
    if (s[i] == -1) {
      if (infer >= 0) shape_error(op, "more than one -1 in " + to_string(shape));
      infer = int(i);
    } else if (s[i] < 0) {
      shape_error(op, "negative size in " + to_string(shape));
    } else {
      known *= s[i];
    }
  }
  if (infer >= 0) {
    if (known == 0 || x.numel() % known != 0)
      shape_error(op, "cannot view " + to_string(x.shape()) + " as " + to_string(shape));
    s[size_t(infer)] = x.numel() / known;
  }
  if (numel(s) != x.numel()) shape_error(op, "cannot view " + to_string(x.shape()) + " as " + to_string(shape));
  Tensor out = x.view_as_shape(s);
  if (needs_grad({&x})) {
    record(op, out, [x](const Tensor& dout) {
      ST_KERNEL(x.device(), scale_backward)(grad_buffer(x).data(), dout.data(), 1.0f, x.numel());
    });
  }
  return out;
}

Tensor detach(const Tensor& x) {
  common_device("detach", {&x});
  return x.view_as_shape(x.shape());
}

Tensor permute_0213(const Tensor& x) {
  const char* op = "permute_0213";
  Device dev = common_device(op, {&x});
  require_f32(op, x, "x");
  if (x.rank() != 4) shape_error(op, "expects a 4-D tensor, got " + to_string(x.shape()));
  int64_t A = x.dim(0), B = x.dim(1), C = x.dim(2), D = x.dim(3);
  Tensor out = Tensor::empty({A, C, B, D}, DType::F32, dev);
  ST_KERNEL(dev, permute_0213)(out.data(), x.data(), A, B, C, D, false);
  if (needs_grad({&x})) {
    record(op, out, [x, A, B, C, D, dev](const Tensor& dout) {  // dout (A, C, B, D) -> dx (A, B, C, D)
      ST_KERNEL(dev, permute_0213)(grad_buffer(x).data(), dout.data(), A, C, B, D, true);
    });
  }
  return out;
}

Tensor split_heads(const Tensor& x, int heads) {
  if (x.rank() != 3 || heads <= 0 || x.dim(2) % heads != 0)
    shape_error("split_heads", "expects (B, N, H*k) divisible into " + std::to_string(heads) + " heads, got " +
                                   to_string(x.shape()));
  return permute_0213(reshape(x, {x.dim(0), x.dim(1), heads, x.dim(2) / heads}));  // (B, H, N, k)
}

Tensor merge_heads(const Tensor& x) {
  if (x.rank() != 4) shape_error("merge_heads", "expects (B, H, N, k), got " + to_string(x.shape()));
  return reshape(permute_0213(x), {x.dim(0), x.dim(2), x.dim(1) * x.dim(3)});  // (B, N, H*k)
}

// View of a shape around `axis`: (outer, size, inner).
static void around_axis(const Shape& s, int axis, int64_t& outer, int64_t& inner) {
  outer = 1, inner = 1;
  for (int i = 0; i < axis; i++) outer *= s[size_t(i)];
  for (size_t i = size_t(axis) + 1; i < s.size(); i++) inner *= s[i];
}

Tensor concat(const std::vector<Tensor>& xs, int axis) {
  const char* op = "concat";
  if (xs.empty()) throw ArgumentError("concat: no tensors given");
  Device dev = xs[0].defined() ? xs[0].device() : Device::CPU;
  for (const Tensor& t : xs) {
    common_device(op, {&xs[0], &t});
    require_f32(op, t, "input");
  }
  int a = resolve_axis(op, axis, xs[0].rank());
  Shape out_shape = xs[0].shape();
  out_shape[size_t(a)] = 0;
  for (const Tensor& t : xs) {
    Shape s = t.shape();
    if (s.size() != out_shape.size()) shape_error(op, "ranks differ: " + to_string(xs[0].shape()) + " and " + to_string(s));
    for (size_t i = 0; i < s.size(); i++)
      if (int(i) != a && s[i] != xs[0].shape()[i])
        shape_error(op, "shapes " + to_string(xs[0].shape()) + " and " + to_string(s) + " differ off axis " +
                            std::to_string(axis));
    out_shape[size_t(a)] += s[size_t(a)];
  }
  int64_t outer, inner;
  around_axis(out_shape, a, outer, inner);
  int64_t total = out_shape[size_t(a)] * inner;
  Tensor out = Tensor::empty(out_shape, DType::F32, dev);
  std::vector<int64_t> offsets;
  int64_t off = 0;
  for (const Tensor& t : xs) {
    int64_t len = t.dim(a) * inner;
    ST_KERNEL(dev, copy_blocks)(out.data() + off, total, t.data(), len, outer, len, false);
    offsets.push_back(off);
    off += len;
  }
  bool any = false;
  for (const Tensor& t : xs) any = any || needs_grad({&t});
  if (any) {
    record(op, out, [xs, offsets, outer, inner, total, a, dev](const Tensor& dout) {
      for (size_t i = 0; i < xs.size(); i++) {
        if (!xs[i].requires_grad()) continue;
        int64_t len = xs[i].dim(a) * inner;
        ST_KERNEL(dev, copy_blocks)(grad_buffer(xs[i]).data(), len, dout.data() + offsets[i], total, outer, len, true);
      }
    });
  }
  return out;
}

std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int axis) {
  const char* op = "split";
  Device dev = common_device(op, {&x});
  require_f32(op, x, "x");
  int a = resolve_axis(op, axis, x.rank());
  int64_t sum = 0;
  for (int64_t s : sizes) {
    if (s < 0) shape_error(op, "negative size in the split");
    sum += s;
  }
  if (sum != x.dim(a))
    shape_error(op, "sizes add up to " + std::to_string(sum) + " but axis " + std::to_string(axis) + " of " +
                        to_string(x.shape()) + " has " + std::to_string(x.dim(a)));
  int64_t outer, inner;
  around_axis(x.shape(), a, outer, inner);
  int64_t total = x.dim(a) * inner;
  std::vector<Tensor> outs;
  int64_t off = 0;
  for (int64_t s : sizes) {
    Shape shape = x.shape();
    shape[size_t(a)] = s;
    Tensor out = Tensor::empty(shape, DType::F32, dev);
    int64_t len = s * inner;
    ST_KERNEL(dev, copy_blocks)(out.data(), len, x.data() + off, total, outer, len, false);
    if (needs_grad({&x})) {
      record(op, out, [x, off, len, total, outer, dev](const Tensor& dout) {
        ST_KERNEL(dev, copy_blocks)(grad_buffer(x).data() + off, total, dout.data(), len, outer, len, true);
      });
    }
    outs.push_back(out);
    off += len;
  }
  return outs;
}

// Indices must address existing rows: checked here, once, on the host.
static void check_indices(const char* op, const Tensor& index, int64_t rows) {
  std::vector<int32_t> idx = index.to_ints();
  for (size_t j = 0; j < idx.size(); j++)
    if (idx[j] < 0 || idx[j] >= rows)
      throw ArgumentError(std::string(op) + ": index " + std::to_string(idx[j]) + " at position " +
                          std::to_string(j) + " is outside [0, " + std::to_string(rows) + ")");
}

Tensor gather_rows(const Tensor& x, const Tensor& index) {
  const char* op = "gather_rows";
  Device dev = common_device(op, {&x, &index});
  require_f32(op, x, "x");
  require_i32(op, index, "index");
  if (x.rank() < 1 || index.rank() != 1)
    shape_error(op, "expects rows x (R, d) and index (n), got " + to_string(x.shape()) + " and " +
                        to_string(index.shape()));
  int64_t d = x.dim(-1), rows = rows_of(x), n = index.dim(0);
  check_indices(op, index, rows);
  Tensor out = Tensor::empty({n, d}, DType::F32, dev);
  ST_KERNEL(dev, gather_rows_forward)(out.data(), x.data(), index.ints(), n, d);
  if (needs_grad({&x})) {
    record(op, out, [x, index, n, d, dev](const Tensor& dout) {
      ST_KERNEL(dev, gather_rows_backward)(grad_buffer(x).data(), dout.data(), index.ints(), n, d);
    });
  }
  return out;
}

Tensor embedding(const Tensor& ids, const Tensor& table) {
  const char* op = "embedding";
  common_device(op, {&ids, &table});
  require_i32(op, ids, "ids");
  if (table.rank() != 2) shape_error(op, "table must be (V, d), got " + to_string(table.shape()));
  check_indices(op, ids, table.dim(0));  // so an out-of-vocabulary id is reported as such
  Shape out_shape = ids.shape();
  out_shape.push_back(table.dim(1));
  return reshape(gather_rows(table, reshape(ids, {ids.numel()})), out_shape);
}

}  // namespace st
