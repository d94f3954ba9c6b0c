// Every op, in one table (the spirit of ggml's test-backend-ops):
//   forward  against a straightforward float64 reference, and
//   backward against central finite differences of that reference,
// on random inputs of odd sizes. A case lists its inputs, the op, and the
// reference; for a straight-through op it also gives the smooth function
// its backward differentiates.
#include <doctest/doctest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "engine/kernels.h"
#include "engine/ops.h"

using namespace st;
using Vec = std::vector<double>;

namespace {

enum class Kind { Float, Positive, Mask, Ids, Probs };
struct Input {
  Shape shape;
  Kind kind = Kind::Float;
  int range = 0;       // Ids: values in [0, range)
  bool grad = true;    // differentiate with respect to it
};

struct OpCase {
  std::string name;
  std::vector<Input> inputs;
  std::function<Tensor(const std::vector<Tensor>&)> op;
  std::function<Vec(const std::vector<Vec>&)> ref;
  std::function<Vec(const std::vector<Vec>&)> smooth = nullptr;  // defaults to ref
  bool forward_only = false;
};

Tensor make_input(const Input& in, Rng& rng) {
  int64_t n = numel(in.shape);
  if (in.kind == Kind::Ids) {
    std::vector<int32_t> v(static_cast<size_t>(n));
    for (auto& x : v) x = int32_t(rng.uniform() * float(in.range)) % in.range;
    return Tensor::from_ints(v, in.shape);
  }
  std::vector<float> v(static_cast<size_t>(n));
  int64_t last = in.shape.empty() ? 1 : in.shape.back();
  for (int64_t i = 0; i < n; i++) {
    float u = rng.uniform();
    switch (in.kind) {
      case Kind::Float: v[size_t(i)] = 2.0f * u - 1.0f; break;
      case Kind::Positive: v[size_t(i)] = 0.5f + 1.5f * u; break;
      case Kind::Mask: v[size_t(i)] = (i % last == 0 || u < 0.6f) ? 1.0f : 0.0f; break;  // first token kept
      case Kind::Probs: v[size_t(i)] = 0.1f + u; break;
      case Kind::Ids: break;
    }
  }
  if (in.kind == Kind::Probs)  // normalise each row to a distribution
    for (int64_t r = 0; r < n / last; r++) {
      float s = 0.0f;
      for (int64_t i = 0; i < last; i++) s += v[size_t(r * last + i)];
      for (int64_t i = 0; i < last; i++) v[size_t(r * last + i)] /= s;
    }
  Tensor t = Tensor::from_vector(v, in.shape);
  if (in.grad) t.set_requires_grad(true);
  return t;
}

Vec as_doubles(const Tensor& t) {
  Vec out;
  if (t.dtype() == DType::I32)
    for (int32_t x : t.to_ints()) out.push_back(x);
  else
    for (float x : t.to_vector()) out.push_back(x);
  return out;
}

double max_abs(const Vec& v) {
  double m = 0.0;
  for (double x : v) m = std::max(m, std::fabs(x));
  return m;
}

void check_case(const OpCase& c) {
  INFO("op case: " << c.name);
  Rng rng(0x5eed + std::hash<std::string>{}(c.name) % 1000);
  std::vector<Tensor> xs;
  std::vector<Vec> xd;
  for (const Input& in : c.inputs) {
    xs.push_back(make_input(in, rng));
    xd.push_back(as_doubles(xs.back()));
  }
  Tensor out = c.op(xs);
  Vec ref = c.ref(xd);
  Vec got = as_doubles(out);
  REQUIRE(got.size() == ref.size());
  double scale = std::max(1.0, max_abs(ref)), worst = 0.0;
  for (size_t i = 0; i < ref.size(); i++) worst = std::max(worst, std::fabs(got[i] - ref[i]));
  INFO("forward max error " << worst << " (scale " << scale << ")");
  CHECK(worst <= 2e-5 * scale);
  if (c.forward_only) return;

  // L = sum(out * w) with fixed random w; dL/dx by our backward and by finite differences.
  Tensor w = Tensor::uniform(out.shape(), rng, -1.0f, 1.0f);
  Vec wd = as_doubles(w);
  backward(sum_all(mul(out, w)));
  auto smooth = c.smooth ? c.smooth : c.ref;
  auto loss_at = [&](const std::vector<Vec>& x) {
    Vec y = smooth(x);
    double s = 0.0;
    for (size_t i = 0; i < y.size(); i++) s += y[i] * wd[i];
    return s;
  };
  for (size_t k = 0; k < xs.size(); k++) {
    if (!c.inputs[k].grad) continue;
    INFO("gradient of input " << k << " " << to_string(c.inputs[k].shape));
    REQUIRE(xs[k].grad().defined());
    Vec analytic = as_doubles(xs[k].grad());
    Vec numeric(analytic.size());
    const double h = 1e-6;
    std::vector<Vec> x = xd;
    for (size_t i = 0; i < analytic.size(); i++) {
      double saved = x[k][i];
      x[k][i] = saved + h;
      double up = loss_at(x);
      x[k][i] = saved - h;
      double down = loss_at(x);
      x[k][i] = saved;
      numeric[i] = (up - down) / (2 * h);
    }
    double gscale = std::max(1.0, max_abs(numeric)), gworst = 0.0;
    for (size_t i = 0; i < numeric.size(); i++) gworst = std::max(gworst, std::fabs(analytic[i] - numeric[i]));
    INFO("gradient max error " << gworst << " (scale " << gscale << ")");
    CHECK(gworst <= 2e-4 * gscale);
  }
}

// --- float64 references ---------------------------------------------------------

Vec map1(const Vec& x, const std::function<double(double)>& f) {
  Vec y(x.size());
  for (size_t i = 0; i < x.size(); i++) y[i] = f(x[i]);
  return y;
}
double sigm(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// C (M, N) = op(A) op(B) for `batch` entries; stride 0 shares a matrix.
Vec ref_matmul(const Vec& A, const Vec& B, int batch, int M, int N, int K, bool ta, bool tb, bool shared_b) {
  Vec C(size_t(batch) * M * N, 0.0);
  for (int e = 0; e < batch; e++)
    for (int i = 0; i < M; i++)
      for (int j = 0; j < N; j++) {
        double s = 0.0;
        for (int k = 0; k < K; k++) {
          double a = A[size_t(e) * M * K + (ta ? size_t(k) * M + i : size_t(i) * K + k)];
          size_t boff = shared_b ? 0 : size_t(e) * K * N;
          double b = B[boff + (tb ? size_t(j) * K + k : size_t(k) * N + j)];
          s += a * b;
        }
        C[(size_t(e) * M + i) * N + j] = s;
      }
  return C;
}

// Row-wise map over the last dim of size n.
Vec rows(const Vec& x, size_t n, const std::function<void(const double*, double*)>& f, size_t out_n = 0) {
  if (!out_n) out_n = n;
  Vec y(x.size() / n * out_n);
  for (size_t r = 0; r < x.size() / n; r++) f(&x[r * n], &y[r * out_n]);
  return y;
}

Vec ref_softmax(const Vec& x, size_t n) {
  return rows(x, n, [n](const double* a, double* y) {
    double m = a[0], s = 0;
    for (size_t i = 0; i < n; i++) m = std::max(m, a[i]);
    for (size_t i = 0; i < n; i++) s += std::exp(a[i] - m);
    for (size_t i = 0; i < n; i++) y[i] = std::exp(a[i] - m) / s;
  });
}

Vec ref_masked_softmax(const Vec& a, const Vec& M, size_t B, size_t R, size_t Nk) {
  Vec y(a.size());
  for (size_t b = 0; b < B; b++)
    for (size_t r = 0; r < R; r++) {
      const double* s = &a[(b * R + r) * Nk];
      double S = 0;
      for (size_t j = 0; j < Nk; j++) S += M[b * Nk + j] * std::exp(s[j]);
      for (size_t j = 0; j < Nk; j++) y[(b * R + r) * Nk + j] = M[b * Nk + j] * std::exp(s[j]) / S;
    }
  return y;
}

// The function whose derivative masked_softmax's backward returns: the same
// forward, but a dropped key's mask (M_j = 0) enters row i as
// M_j S_i / (S_i + e_ij), with S_i the kept keys' sum. Its derivative at
// M_j = 0 is the bounded "as if added back" weight e_ij / (S_i + e_ij)
// that engine/ops/softmax.cpp documents; kept keys get the exact derivative.
Vec smooth_masked_softmax(const Vec& a, const Vec& M, size_t B, size_t R, size_t Nk) {
  Vec y(a.size());
  for (size_t b = 0; b < B; b++)
    for (size_t r = 0; r < R; r++) {
      const double* s = &a[(b * R + r) * Nk];
      const double* m = &M[b * Nk];
      double kept_sum = 0;  // of the unperturbed mask: finite differences move M by 1e-6
      for (size_t j = 0; j < Nk; j++) kept_sum += std::round(m[j]) * std::exp(s[j]);
      Vec effective(Nk);
      for (size_t j = 0; j < Nk; j++)
        effective[j] = std::round(m[j]) != 0 ? m[j] : m[j] * kept_sum / (kept_sum + std::exp(s[j]));
      double S = 0;
      for (size_t j = 0; j < Nk; j++) S += effective[j] * std::exp(s[j]);
      for (size_t j = 0; j < Nk; j++) y[(b * R + r) * Nk + j] = effective[j] * std::exp(s[j]) / S;
    }
  return y;
}

Vec ref_layernorm(const Vec& x, const Vec& w, const Vec& b, size_t n, double eps) {
  return rows(x, n, [&](const double* a, double* y) {
    double m = 0, v = 0;
    for (size_t i = 0; i < n; i++) m += a[i] / double(n);
    for (size_t i = 0; i < n; i++) v += (a[i] - m) * (a[i] - m) / double(n);
    for (size_t i = 0; i < n; i++) y[i] = (a[i] - m) / std::sqrt(v + eps) * w[i] + b[i];
  });
}

// out[b, c, a, d] = x[b, a, c, d] for x (A0, A1, A2, A3)
Vec ref_permute_0213(const Vec& x, size_t A0, size_t A1, size_t A2, size_t A3) {
  Vec y(x.size());
  for (size_t a = 0; a < A0; a++)
    for (size_t b = 0; b < A1; b++)
      for (size_t c = 0; c < A2; c++)
        for (size_t d = 0; d < A3; d++) y[((a * A2 + c) * A1 + b) * A3 + d] = x[((a * A1 + b) * A2 + c) * A3 + d];
  return y;
}

// Cubic convolution weight of PyTorch's bicubic (a = -0.75) at distance t.
double cubic(double t) {
  const double a = -0.75;
  t = std::fabs(t);
  if (t <= 1) return ((a + 2) * t - (a + 3)) * t * t + 1;
  if (t < 2) return ((a * t - 5 * a) * t + 8 * a) * t - 4 * a;
  return 0;
}

// Direct 4x4 sum (not separable, unlike the kernel).
Vec ref_bicubic(const Vec& g, int H, int W, int C, int oh, int ow) {
  Vec y(size_t(oh) * ow * C, 0.0);
  for (int oy = 0; oy < oh; oy++)
    for (int ox = 0; ox < ow; ox++) {
      double sy = (oy + 0.5) * H / oh - 0.5, sx = (ox + 0.5) * W / ow - 0.5;
      int fy = int(std::floor(sy)), fx = int(std::floor(sx));
      for (int ky = -1; ky <= 2; ky++)
        for (int kx = -1; kx <= 2; kx++) {
          double wgt = cubic(sy - (fy + ky)) * cubic(sx - (fx + kx));
          int iy = std::clamp(fy + ky, 0, H - 1), ix = std::clamp(fx + kx, 0, W - 1);
          for (int c = 0; c < C; c++) y[(size_t(oy) * ow + ox) * C + c] += wgt * g[(size_t(iy) * W + ix) * C + c];
        }
    }
  return y;
}

double gumbel_noise(uint64_t seed, uint64_t i) {
  double u = philox_uniform(seed, i);
  return std::log(u) - std::log(1 - u);
}

std::vector<OpCase> op_cases() {
  std::vector<OpCase> cases;
  auto add_case = [&](OpCase c) { cases.push_back(std::move(c)); };

  // --- matmul: every transpose combination, batched, shared operand
  for (int t = 0; t < 4; t++) {
    bool ta = t & 1, tb = t & 2;
    int M = 7, N = 13, K = 5;
    add_case({"matmul ta=" + std::to_string(ta) + " tb=" + std::to_string(tb),
              {{ta ? Shape{K, M} : Shape{M, K}}, {tb ? Shape{N, K} : Shape{K, N}}},
              [=](auto& x) { return matmul(x[0], x[1], ta, tb); },
              [=](auto& x) { return ref_matmul(x[0], x[1], 1, M, N, K, ta, tb, false); }});
  }
  add_case({"matmul batched (B,H) q k^T", {{{2, 3, 9, 4}}, {{2, 3, 11, 4}}},
            [](auto& x) { return matmul(x[0], x[1], false, true); },
            [](auto& x) { return ref_matmul(x[0], x[1], 6, 9, 11, 4, false, true, false); }});
  add_case({"matmul batched a^T", {{{3, 5, 7}}, {{3, 5, 6}}},
            [](auto& x) { return matmul(x[0], x[1], true, false); },
            [](auto& x) { return ref_matmul(x[0], x[1], 3, 7, 6, 5, true, false, false); }});
  add_case({"matmul rows of (B,N,K) @ (K,N)", {{{3, 5, 7}}, {{7, 9}}},
            [](auto& x) { return matmul(x[0], x[1]); },
            [](auto& x) { return ref_matmul(x[0], x[1], 1, 15, 9, 7, false, false, false); }});
  add_case({"matmul batched a^T with shared b", {{{3, 5, 7}}, {{5, 4}}},
            [](auto& x) { return matmul(x[0], x[1], true, false); },
            [](auto& x) { return ref_matmul(x[0], x[1], 3, 7, 4, 5, true, false, true); }});
  add_case({"linear with bias", {{{2, 5, 7}}, {{9, 7}}, {{9}}},
            [](auto& x) { return linear(x[0], x[1], x[2]); },
            [](auto& x) {
              Vec y = ref_matmul(x[0], x[1], 1, 10, 9, 7, false, true, false);
              for (size_t i = 0; i < y.size(); i++) y[i] += x[2][i % 9];
              return y;
            }});
  add_case({"linear without bias", {{{11, 6}}, {{3, 6}}},
            [](auto& x) { return linear(x[0], x[1]); },
            [](auto& x) { return ref_matmul(x[0], x[1], 1, 11, 3, 6, false, true, false); }});
  // the fused act(x w^T + b): GELU with a bias, QuickGELU without
  add_case({"linear_act gelu", {{{2, 5, 7}}, {{9, 7}}, {{9}}},
            [](auto& x) { return linear_act(x[0], x[1], x[2], Activation::Gelu); },
            [](auto& x) {
              Vec y = ref_matmul(x[0], x[1], 1, 10, 9, 7, false, true, false);
              for (size_t i = 0; i < y.size(); i++) {
                const double v = y[i] + x[2][i % 9];
                y[i] = 0.5 * v * (1 + std::erf(v / std::sqrt(2.0)));
              }
              return y;
            }});
  add_case({"linear_act quick_gelu without bias", {{{11, 6}}, {{13, 6}}},
            [](auto& x) { return linear_act(x[0], x[1], Tensor(), Activation::QuickGelu); },
            [](auto& x) {
              Vec y = ref_matmul(x[0], x[1], 1, 11, 13, 6, false, true, false);
              for (double& v : y) v = v / (1 + std::exp(-1.702 * v));
              return y;
            }});

  // --- broadcasting binary ops
  struct Bin { const char* name; Tensor (*op)(const Tensor&, const Tensor&); double (*f)(double, double); };
  Bin bins[] = {{"add", add, [](double a, double b) { return a + b; }},
                {"sub", sub, [](double a, double b) { return a - b; }},
                {"mul", mul, [](double a, double b) { return a * b; }},
                {"div", div, [](double a, double b) { return a / b; }}};
  struct Geometry { const char* name; Shape a, b; std::function<size_t(size_t)> b_index; };
  // out is always (3, 5, 7); b_index maps an output index to b's index.
  Geometry geos[] = {{"same shape", {3, 5, 7}, {3, 5, 7}, [](size_t i) { return i; }},
                     {"bias (7)", {3, 5, 7}, {7}, [](size_t i) { return i % 7; }},
                     {"mask (3,5,1)", {3, 5, 7}, {3, 5, 1}, [](size_t i) { return i / 7; }},
                     {"middle (3,1,7)", {3, 5, 7}, {3, 1, 7}, [](size_t i) { return (i / 35) * 7 + i % 7; }},
                     {"scalar (1)", {3, 5, 7}, {1}, [](size_t) { return size_t(0); }}};
  for (const Bin& op : bins)
    for (const Geometry& g : geos) {
      Kind kb = std::string(op.name) == "div" ? Kind::Positive : Kind::Float;
      add_case({std::string(op.name) + " " + g.name, {{g.a}, {g.b, kb}},
                [op](auto& x) { return op.op(x[0], x[1]); },
                [op, g](auto& x) {
                  Vec y(x[0].size());
                  for (size_t i = 0; i < y.size(); i++) y[i] = op.f(x[0][i], x[1][g.b_index(i)]);
                  return y;
                }});
    }
  add_case({"broadcast both ways (5,1) * (1,7)", {{{5, 1}}, {{1, 7}}},
            [](auto& x) { return mul(x[0], x[1]); },
            [](auto& x) {
              Vec y(35);
              for (size_t i = 0; i < 35; i++) y[i] = x[0][i / 7] * x[1][i % 7];
              return y;
            }});
  add_case({"broadcast mask on the left (3,5,1) * (3,5,7)", {{{3, 5, 1}}, {{3, 5, 7}}},
            [](auto& x) { return mul(x[0], x[1]); },
            [](auto& x) {
              Vec y(105);
              for (size_t i = 0; i < 105; i++) y[i] = x[0][i / 7] * x[1][i];
              return y;
            }});
  // one tensor on both sides: both partials go into the same gradient
  add_case({"broadcast mul x * x", {{{4, 9}}}, [](auto& x) { return mul(x[0], x[0]); },
            [](auto& x) { return map1(x[0], [](double v) { return v * v; }); }});
  add_case({"add_scalar", {{{4, 9}}}, [](auto& x) { return x[0] + 0.75f; },
            [](auto& x) { return map1(x[0], [](double v) { return v + 0.75; }); }});
  add_case({"mul_scalar", {{{4, 9}}}, [](auto& x) { return x[0] * -1.5f; },
            [](auto& x) { return map1(x[0], [](double v) { return v * -1.5; }); }});

  // --- unary
  struct Un { const char* name; Tensor (*op)(const Tensor&); double (*f)(double); Kind kind; };
  Un uns[] = {{"exp", exp, [](double v) { return std::exp(v); }, Kind::Float},
              {"log", log, [](double v) { return std::log(v); }, Kind::Positive},
              {"tanh", tanh, [](double v) { return std::tanh(v); }, Kind::Float},
              {"sigmoid", sigmoid, [](double v) { return sigm(v); }, Kind::Float},
              {"gelu", gelu, [](double v) { return 0.5 * v * (1 + std::erf(v / std::sqrt(2.0))); }, Kind::Float},
              {"quick_gelu", quick_gelu, [](double v) { return v * sigm(1.702 * v); }, Kind::Float},
              {"silu", silu, [](double v) { return v * sigm(v); }, Kind::Float},
              {"relu", relu, [](double v) { return v > 0 ? v : 0.0; }, Kind::Float}};
  for (const Un& u : uns)
    add_case({u.name, {{{3, 7, 5}, u.kind}}, [u](auto& x) { return u.op(x[0]); },
              [u](auto& x) { return map1(x[0], u.f); }});

  // --- reductions
  add_case({"sum_last", {{{3, 5, 7}}}, [](auto& x) { return sum_last(x[0]); },
            [](auto& x) { return rows(x[0], 7, [](const double* a, double* y) { y[0] = 0; for (int i = 0; i < 7; i++) y[0] += a[i]; }, 1); }});
  add_case({"mean_last", {{{3, 5, 7}}}, [](auto& x) { return mean_last(x[0]); },
            [](auto& x) { return rows(x[0], 7, [](const double* a, double* y) { y[0] = 0; for (int i = 0; i < 7; i++) y[0] += a[i] / 7; }, 1); }});
  add_case({"sum_all", {{{3, 5, 7}}}, [](auto& x) { return sum_all(x[0]); },
            [](auto& x) { double s = 0; for (double v : x[0]) s += v; return Vec{s}; }});
  add_case({"mean_all", {{{3, 5, 7}}}, [](auto& x) { return mean_all(x[0]); },
            [](auto& x) { double s = 0; for (double v : x[0]) s += v / 105; return Vec{s}; }});
  add_case({"masked_mean", {{{3, 7, 5}}, {{3, 7}, Kind::Mask}},
            [](auto& x) { return masked_mean(x[0], x[1]); },
            [](auto& x) {
              Vec y(15, 0.0);
              for (size_t b = 0; b < 3; b++) {
                double S = 0;
                for (size_t i = 0; i < 7; i++) S += x[1][b * 7 + i];
                for (size_t i = 0; i < 7; i++)
                  for (size_t j = 0; j < 5; j++) y[b * 5 + j] += x[1][b * 7 + i] * x[0][(b * 7 + i) * 5 + j] / S;
              }
              return y;
            }});

  // --- softmax family and layernorm
  add_case({"softmax", {{{3, 5, 11}}}, [](auto& x) { return softmax(x[0]); },
            [](auto& x) { return ref_softmax(x[0], 11); }});
  add_case({"log_softmax", {{{3, 5, 11}}}, [](auto& x) { return log_softmax(x[0]); },
            [](auto& x) { return map1(ref_softmax(x[0], 11), [](double v) { return std::log(v); }); }});
  add_case({"masked_softmax (B,H,Nq,Nk)", {{{2, 3, 5, 9}}, {{2, 9}, Kind::Mask}},
            [](auto& x) { return masked_softmax(x[0], x[1]); },
            [](auto& x) { return ref_masked_softmax(x[0], x[1], 2, 15, 9); },
            [](auto& x) { return smooth_masked_softmax(x[0], x[1], 2, 15, 9); }});
  add_case({"masked_softmax (B,Nq,Nk)", {{{3, 4, 7}}, {{3, 7}, Kind::Mask}},
            [](auto& x) { return masked_softmax(x[0], x[1]); },
            [](auto& x) { return ref_masked_softmax(x[0], x[1], 3, 4, 7); },
            [](auto& x) { return smooth_masked_softmax(x[0], x[1], 3, 4, 7); }});
  add_case({"layernorm", {{{3, 5, 13}}, {{13}}, {{13}}},
            [](auto& x) { return layernorm(x[0], x[1], x[2], 1e-5f); },
            [](auto& x) { return ref_layernorm(x[0], x[1], x[2], 13, 1e-5); }});
  add_case({"layernorm of a sum (add_layernorm)", {{{3, 5, 13}}, {{3, 5, 13}}, {{13}}, {{13}}},
            [](auto& x) { return add_layernorm(x[0], x[1], x[2], x[3], 1e-5f); },
            [](auto& x) {
              Vec sum(x[0].size());
              for (size_t i = 0; i < sum.size(); i++) sum[i] = x[0][i] + x[1][i];
              return ref_layernorm(sum, x[2], x[3], 13, 1e-5);
            }});

  // --- data movement
  add_case({"reshape", {{{3, 5, 7}}}, [](auto& x) { return reshape(x[0], {5, -1}) * 2.0f; },
            [](auto& x) { return map1(x[0], [](double v) { return 2 * v; }); }});
  add_case({"permute_0213", {{{2, 3, 5, 7}}}, [](auto& x) { return permute_0213(x[0]); },
            [](auto& x) { return ref_permute_0213(x[0], 2, 3, 5, 7); }});
  add_case({"split_heads (B,N,H*k)->(B,H,N,k)", {{{2, 5, 12}}}, [](auto& x) { return split_heads(x[0], 3); },
            [](auto& x) { return ref_permute_0213(x[0], 2, 5, 3, 4); }});
  add_case({"merge_heads (B,H,N,k)->(B,N,H*k)", {{{2, 3, 5, 4}}}, [](auto& x) { return merge_heads(x[0]); },
            [](auto& x) { return ref_permute_0213(x[0], 2, 3, 5, 4); }});
  add_case({"concat tokens", {{{2, 3, 5}}, {{2, 4, 5}}}, [](auto& x) { return concat({x[0], x[1]}, 1); },
            [](auto& x) {
              Vec y;
              for (size_t b = 0; b < 2; b++) {
                y.insert(y.end(), x[0].begin() + long(b * 15), x[0].begin() + long(b * 15 + 15));
                y.insert(y.end(), x[1].begin() + long(b * 20), x[1].begin() + long(b * 20 + 20));
              }
              return y;
            }});
  add_case({"concat features", {{{2, 3, 5}}, {{2, 3, 2}}}, [](auto& x) { return concat({x[0], x[1]}, -1); },
            [](auto& x) {
              Vec y;
              for (size_t r = 0; r < 6; r++) {
                y.insert(y.end(), x[0].begin() + long(r * 5), x[0].begin() + long(r * 5 + 5));
                y.insert(y.end(), x[1].begin() + long(r * 2), x[1].begin() + long(r * 2 + 2));
              }
              return y;
            }});
  add_case({"split tokens (middle part)", {{{2, 9, 3}}}, [](auto& x) { return split(x[0], {2, 4, 3}, 1)[1]; },
            [](auto& x) {
              Vec y;
              for (size_t b = 0; b < 2; b++) y.insert(y.end(), x[0].begin() + long(b * 27 + 6), x[0].begin() + long(b * 27 + 18));
              return y;
            }});
  add_case({"split features (last part)", {{{3, 7}}}, [](auto& x) { return split(x[0], {5, 2}, -1)[1]; },
            [](auto& x) {
              Vec y;
              for (size_t r = 0; r < 3; r++) y.insert(y.end(), x[0].begin() + long(r * 7 + 5), x[0].begin() + long(r * 7 + 7));
              return y;
            }});
  add_case({"gather_rows (repeated rows)", {{{9, 5}}, {{13}, Kind::Ids, 9, false}},
            [](auto& x) { return gather_rows(x[0], x[1]); },
            [](auto& x) {
              Vec y;
              for (double i : x[1]) y.insert(y.end(), x[0].begin() + long(i * 5), x[0].begin() + long(i * 5 + 5));
              return y;
            }});
  add_case({"embedding", {{{3, 4}, Kind::Ids, 11, false}, {{11, 6}}},
            [](auto& x) { return embedding(x[0], x[1]); },
            [](auto& x) {
              Vec y;
              for (double i : x[0]) y.insert(y.end(), x[1].begin() + long(i * 6), x[1].begin() + long(i * 6 + 6));
              return y;
            }});

  // --- images
  add_case({"patch_embed", {{{2, 3, 6, 9}}, {{5, 3, 3, 3}}},
            [](auto& x) { return patch_embed(x[0], x[1]); },
            [](auto& x) {
              Vec y(2 * 6 * 5, 0.0);  // (B, P = 2x3, D)
              for (size_t b = 0; b < 2; b++)
                for (size_t py = 0; py < 2; py++)
                  for (size_t px = 0; px < 3; px++)
                    for (size_t d = 0; d < 5; d++) {
                      double s = 0;
                      for (size_t c = 0; c < 3; c++)
                        for (size_t u = 0; u < 3; u++)
                          for (size_t v = 0; v < 3; v++)
                            s += x[1][((d * 3 + c) * 3 + u) * 3 + v] * x[0][((b * 3 + c) * 6 + py * 3 + u) * 9 + px * 3 + v];
                      y[((b * 2 + py) * 3 + px) * 5 + d] = s;
                    }
              return y;
            }});
  add_case({"bicubic_resize up 5x7 -> 9x11", {{{5, 7, 3}, Kind::Float, 0, false}},
            [](auto& x) { return bicubic_resize(x[0], 9, 11); },
            [](auto& x) { return ref_bicubic(x[0], 5, 7, 3, 9, 11); }, nullptr, true});
  add_case({"bicubic_resize down 12x10 -> 5x7", {{{12, 10, 2}, Kind::Float, 0, false}},
            [](auto& x) { return bicubic_resize(x[0], 5, 7); },
            [](auto& x) { return ref_bicubic(x[0], 12, 10, 2, 5, 7); }, nullptr, true});

  // --- randomness: draws are philox_uniform(seed, offset + i)
  add_case({"dropout p=0.3", {{{5, 13}}},
            [](auto& x) { Rng r(77); return dropout(x[0], 0.3f, r, true); },
            [](auto& x) {
              Vec y(x[0].size());
              for (size_t i = 0; i < y.size(); i++) y[i] = philox_uniform(77, i) < 0.3f ? 0.0 : x[0][i] / 0.7;
              return y;
            }});
  add_case({"gumbel_sigmoid_st with noise, tau 0.7", {{{4, 11}}},
            [](auto& x) { Rng r(99); return gumbel_sigmoid_st(x[0], 0.7f, &r); },
            [](auto& x) { Vec y(x[0].size()); for (size_t i = 0; i < y.size(); i++) y[i] = (x[0][i] + gumbel_noise(99, i)) > 0 ? 1.0 : 0.0; return y; },
            [](auto& x) { Vec y(x[0].size()); for (size_t i = 0; i < y.size(); i++) y[i] = sigm((x[0][i] + gumbel_noise(99, i)) / 0.7); return y; }});
  add_case({"gumbel_sigmoid_st without noise", {{{4, 11}}},
            [](auto& x) { return gumbel_sigmoid_st(x[0], 1.0f, nullptr); },
            [](auto& x) { return map1(x[0], [](double v) { return v > 0 ? 1.0 : 0.0; }); },
            [](auto& x) { return map1(x[0], sigm); }});

  // --- losses
  add_case({"cross_entropy", {{{5, 7}}, {{5}, Kind::Ids, 7, false}},
            [](auto& x) { return cross_entropy(x[0], x[1]); },
            [](auto& x) {
              Vec lp = map1(ref_softmax(x[0], 7), [](double v) { return std::log(v); });
              double s = 0;
              for (size_t b = 0; b < 5; b++) s -= lp[b * 7 + size_t(x[1][b])] / 5;
              return Vec{s};
            }});
  add_case({"bce_with_logits soft targets", {{{4, 9}}, {{4, 9}, Kind::Probs}},
            [](auto& x) { return bce_with_logits(x[0], x[1]); },
            [](auto& x) {
              double s = 0;
              for (size_t i = 0; i < 36; i++)
                s -= (x[1][i] * std::log(sigm(x[0][i])) + (1 - x[1][i]) * std::log(1 - sigm(x[0][i]))) / 36;
              return Vec{s};
            }});
  add_case({"kl_div batchmean", {{{4, 6}}, {{4, 6}, Kind::Probs}},
            [](auto& x) { return kl_div(log_softmax(x[0]), x[1]); },
            [](auto& x) {
              Vec lq = map1(ref_softmax(x[0], 6), [](double v) { return std::log(v); });
              double s = 0;
              for (size_t i = 0; i < 24; i++) s += x[1][i] * (std::log(x[1][i]) - lq[i]) / 4;
              return Vec{s};
            }});
  add_case({"mse", {{{3, 7}}, {{3, 7}}}, [](auto& x) { return mse(x[0], x[1]); },
            [](auto& x) { double s = 0; for (size_t i = 0; i < 21; i++) s += (x[0][i] - x[1][i]) * (x[0][i] - x[1][i]) / 21; return Vec{s}; }});
  return cases;
}

void run_cases(const std::string& prefix) {
  int ran = 0;
  for (const OpCase& c : op_cases())
    if (c.name.rfind(prefix, 0) == 0 || prefix.empty()) {
      check_case(c);
      ran++;
    }
  CHECK(ran > 0);
}

}  // namespace

TEST_CASE("ops: matmul and linear") { run_cases("matmul"); run_cases("linear"); }
TEST_CASE("ops: broadcasting binary and scalar") {
  for (const char* p : {"add", "sub", "mul", "div", "broadcast"}) run_cases(p);
}
TEST_CASE("ops: activations") {
  for (const char* p : {"exp", "log", "tanh", "sigmoid", "gelu", "quick_gelu", "silu", "relu"}) run_cases(p);
}
TEST_CASE("ops: reductions and masked mean") {
  for (const char* p : {"sum_", "mean_", "masked_mean"}) run_cases(p);
}
TEST_CASE("ops: softmax, masked softmax, layernorm") {
  for (const char* p : {"softmax", "log_softmax", "masked_softmax", "layernorm"}) run_cases(p);
}
TEST_CASE("ops: data movement") {
  for (const char* p : {"reshape", "permute", "split", "merge", "concat", "gather", "embedding"}) run_cases(p);
}
TEST_CASE("ops: images") { run_cases("patch_embed"); run_cases("bicubic"); }
TEST_CASE("ops: dropout and gumbel straight-through") { run_cases("dropout"); run_cases("gumbel"); }
TEST_CASE("ops: random ops draw philox_uniform(seed, offset + i) at any offset, on one thread and on several") {
  // Large enough to be shared out, odd, and from an offset that is not a
  // multiple of four (a Philox block holds four draws).
  const int64_t n = 20'011;
  const int saved = omp_get_max_threads();
  Rng values(3);
  const Tensor x = Tensor::randn({n}, values);
  const std::vector<float> xs = x.to_vector();
  for (int threads : {1, 2}) {
    CAPTURE(threads);
    omp_set_num_threads(threads);
    Rng r(41);
    r.take(7);
    const std::vector<float> dropped = dropout(x, 0.3f, r, true).to_vector();
    const uint64_t gumbel_first = r.offset;
    const std::vector<float> mask = gumbel_sigmoid_st(x, 0.7f, &r).to_vector();
    int64_t wrong = 0;
    for (int64_t i = 0; i < n; i++) {
      const float keep = philox_uniform(41, 7 + uint64_t(i)) < 0.3f ? 0.0f : xs[size_t(i)] * (1.0f / 0.7f);
      const double soft = sigm((xs[size_t(i)] + gumbel_noise(41, gumbel_first + uint64_t(i))) / 0.7);
      wrong += dropped[size_t(i)] != keep;
      wrong += std::fabs(soft - 0.5) > 1e-5 && mask[size_t(i)] != (soft > 0.5 ? 1.0f : 0.0f);
    }
    CHECK(wrong == 0);
  }
  omp_set_num_threads(saved);
}
TEST_CASE("ops: losses") {
  for (const char* p : {"cross_entropy", "bce", "kl_div", "mse"}) run_cases(p);
}
TEST_CASE("ops: every case belongs to a test group") {
  // Guards the grouping above: a new case whose name matches no group would never run.
  const char* prefixes[] = {"matmul", "linear", "add", "sub", "mul", "div", "broadcast", "exp", "log", "tanh",
                            "sigmoid", "gelu", "quick_gelu", "silu", "relu", "sum_", "mean_", "masked_mean",
                            "softmax", "masked_softmax", "layernorm", "reshape", "permute", "split", "merge",
                            "concat", "gather", "embedding", "patch_embed", "bicubic", "dropout", "gumbel",
                            "cross_entropy", "bce", "kl_div", "mse"};
  for (const OpCase& c : op_cases()) {
    bool found = false;
    for (const char* p : prefixes) found = found || c.name.rfind(p, 0) == 0;
    INFO(c.name);
    CHECK(found);
  }
}

// The activation kernels take a vectorised serial path for short inputs and
// a threaded one for long inputs: both against double-precision references.
TEST_CASE("ops: activation kernels on short and long inputs, forward and derivative") {
  using st::cpu::Unary;
  struct Act { Unary op; const char* name; double (*f)(double); double (*df)(double); };
  const Act acts[] = {
      {Unary::Exp, "exp", [](double v) { return std::exp(v); }, [](double v) { return std::exp(v); }},
      {Unary::Sigmoid, "sigmoid", [](double v) { return 1 / (1 + std::exp(-v)); },
       [](double v) { const double s = 1 / (1 + std::exp(-v)); return s * (1 - s); }},
      {Unary::Gelu, "gelu", [](double v) { return v * 0.5 * (1 + std::erf(v / std::sqrt(2.0))); },
       [](double v) { return 0.5 * (1 + std::erf(v / std::sqrt(2.0))) + v * std::exp(-0.5 * v * v) / std::sqrt(2 * M_PI); }},
      {Unary::QuickGelu, "quick_gelu", [](double v) { return v / (1 + std::exp(-1.702 * v)); },
       [](double v) { const double s = 1 / (1 + std::exp(-1.702 * v)); return s + 1.702 * v * s * (1 - s); }},
  };
  for (int64_t n : {1001, 40001}) {
    const size_t len = static_cast<size_t>(n);
    std::vector<float> x(len), y(len), dx(len, 0.0f), ones(len, 1.0f);
    for (int64_t i = 0; i < n; i++) x[size_t(i)] = -6.0f + 12.0f * float(i) / float(n - 1) + 1e-3f * float(i % 7);
    for (const Act& a : acts) {
      CAPTURE(std::string(a.name));
      CAPTURE(n);
      st::cpu::unary_forward(a.op, y.data(), x.data(), n);
      std::fill(dx.begin(), dx.end(), 0.0f);
      st::cpu::unary_backward(a.op, dx.data(), ones.data(), x.data(), y.data(), n);
      double worst = 0, worst_d = 0;
      for (int64_t i = 0; i < n; i++) {
        const double v = x[size_t(i)], f = a.f(v), df = a.df(v);
        // float32 formulas: relative 1e-5, and absolute 1e-6 where they cancel (GELU's 1 + erf near -1)
        worst = std::max(worst, std::fabs(y[size_t(i)] - f) / (1e-5 * std::fabs(f) + 1e-6));
        worst_d = std::max(worst_d, std::fabs(dx[size_t(i)] - df) / (1e-5 * std::fabs(df) + 1e-6));
      }
      CHECK(worst <= 1.0);
      CHECK(worst_d <= 1.0);
    }
  }
}

TEST_CASE("ops: a dropped key scoring far above the kept ones gets a finite mask gradient, close to g - dot") {
  // exp(200) overflows float: e / (S + e) would be inf / inf.
  Tensor scores = Tensor::from_vector({0.0f, 1.0f, 200.0f}, {1, 1, 3}).set_requires_grad();
  Tensor mask = Tensor::from_vector({1.0f, 1.0f, 0.0f}, {1, 3}).set_requires_grad();
  Tensor weights = Tensor::from_vector({0.5f, -1.0f, 2.0f}, {1, 1, 3});
  sum_all(masked_softmax(scores, mask) * weights).backward();
  const std::vector<float> dm = mask.grad().to_vector();
  const std::vector<float> A = masked_softmax(detach(scores), mask).to_vector();
  const double dot = 0.5 * A[0] - 1.0 * A[1];  // the dropped key's weight in the output is 0
  REQUIRE(std::isfinite(dm[2]));
  CHECK(dm[2] == doctest::Approx(2.0 - dot).epsilon(1e-6));  // its weight e / (S + e) is 1 to float precision
}

TEST_CASE("ops: the fused linear_act and add_layernorm give the unfused ops' values, bit for bit") {
  st::Rng rng(17);
  Tensor x = Tensor::randn({5, 3, 24}, rng), w = Tensor::randn({19, 24}, rng), b = Tensor::randn({19}, rng);
  for (auto [act, unfused] : {std::pair{st::Activation::Gelu, &st::gelu}, std::pair{st::Activation::QuickGelu, &st::quick_gelu}})
    CHECK(st::linear_act(x, w, b, act).to_vector() == unfused(st::linear(x, w, b)).to_vector());
  Tensor r = Tensor::randn({5, 3, 24}, rng), g = Tensor::randn({24}, rng), beta = Tensor::randn({24}, rng);
  CHECK(st::add_layernorm(x, r, g, beta, 1e-5f).to_vector() == st::layernorm(x + r, g, beta, 1e-5f).to_vector());
  CHECK_THROWS_AS(st::add_layernorm(x, Tensor::randn({5, 24}, rng), g, beta, 1e-5f), st::ShapeError);
}
