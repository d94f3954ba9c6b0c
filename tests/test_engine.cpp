// The engine around the ops: the tape, errors, the RNG, the allocator, and
// the optimizer.
#include <doctest/doctest.h>

#include <omp.h>

#include <cmath>
#include <vector>

#include "engine/memory.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "tests/support.h"

using namespace st;

namespace {
Tensor leaf(std::vector<float> v, Shape s) { return Tensor::from_vector(v, s).set_requires_grad(true); }

}  // namespace

TEST_CASE("autograd: gradients accumulate over backward calls until zero_grad") {
  Tensor x = leaf({1.0f, -2.0f, 3.0f}, {3});
  backward(sum_all(x * x));  // d/dx = 2x
  CHECK(x.grad().to_vector() == std::vector<float>{2.0f, -4.0f, 6.0f});
  backward(sum_all(x * 3.0f));
  CHECK(x.grad().to_vector() == std::vector<float>{5.0f, -1.0f, 9.0f});
  x.zero_grad();
  CHECK_FALSE(x.grad().defined());
  CHECK(tape_size() == 0);  // backward consumed the tape
}

TEST_CASE("autograd: a tensor used twice gets both contributions; intermediates are not kept") {
  Tensor x = leaf({0.5f, 2.0f}, {2});
  Tensor y = exp(x);
  Tensor loss = sum_all(y * y + y);  // d/dx = 2 e^{2x} + e^x
  backward(loss);
  std::vector<float> g = x.grad().to_vector();
  CHECK(g[0] == doctest::Approx(2 * std::exp(1.0) + std::exp(0.5)).epsilon(1e-6));
  CHECK(g[1] == doctest::Approx(2 * std::exp(4.0) + std::exp(2.0)).epsilon(1e-6));
  CHECK_FALSE(y.grad().defined());
}

TEST_CASE("autograd: no-grad scope records nothing; detach cuts the path") {
  Tensor x = leaf({1.0f, 2.0f}, {2});
  {
    NoGrad guard;
    Tensor y = x * x;
    CHECK_FALSE(y.requires_grad());
    CHECK(tape_size() == 0);
  }
  Tensor z = sum_all(detach(x) * x);  // only the second factor carries a gradient
  backward(z);
  CHECK(x.grad().to_vector() == std::vector<float>{1.0f, 2.0f});
}

TEST_CASE("autograd: backward needs a one-value root that depends on a leaf") {
  Tensor x = leaf({1.0f, 2.0f}, {2});
  CHECK(st::testing::thrown_message<ShapeError>([&] { backward(x * 2.0f); }).find("(2)") != std::string::npos);
  clear_tape();
  Tensor c = Tensor::from_vector({1.0f}, {1});
  CHECK_THROWS_AS(backward(c), ArgumentError);
}

TEST_CASE("autograd: graphs recorded on several threads finish later, their leaf gradients kept apart, then added") {
  // loss_k = sum((w * x_k)^2) over a shared leaf w: d/dw = 2 w x_k^2, summed over k
  Tensor w = leaf({0.5f, -1.5f, 2.0f}, {3});
  const std::vector<std::vector<float>> xs = {{1, 2, 3}, {-2, 0.5f, 1}, {0.25f, -1, 4}};
  std::vector<std::vector<Node>> tapes(xs.size());
  std::vector<Tensor> losses(xs.size());
  std::vector<LeafGradients> parts(xs.size());
#pragma omp parallel for num_threads(3) schedule(static, 1)
  for (size_t k = 0; k < xs.size(); k++) {
    const Tensor x = Tensor::from_vector(xs[k], {3});
    losses[k] = sum_all((w * x) * (w * x));
    tapes[k] = take_tape();  // the thread's tape is left empty
  }
  CHECK(tape_size() == 0);
  // finished on other threads than the ones that recorded them, in reverse order
#pragma omp parallel for num_threads(3) schedule(static, 1)
  for (size_t i = 0; i < xs.size(); i++) {
    const size_t k = xs.size() - 1 - i;
    put_tape(std::move(tapes[k]));
    LeafGradientScope into(parts[k]);
    backward(losses[k]);
  }
  CHECK_FALSE(w.grad().defined());  // every part is still apart
  for (const LeafGradients& p : parts) CHECK(p.size() == 1);
  for (LeafGradients& p : parts) p.add_to_leaves();
  CHECK(parts[0].size() == 0);
  const std::vector<float> g = w.grad().to_vector(), wv = w.to_vector();
  for (size_t j = 0; j < 3; j++) {
    double want = 0;
    for (const auto& x : xs) want += 2.0 * wv[j] * x[j] * x[j];
    CHECK(g[j] == doctest::Approx(want).epsilon(1e-6));
  }
  // parts add to a gradient the leaf already has
  LeafGradients more;
  {
    LeafGradientScope into(more);
    backward(sum_all(w * 2.0f));
  }
  more.add_to_leaves();
  for (size_t j = 0; j < 3; j++) CHECK(w.grad().to_vector()[j] == doctest::Approx(g[j] + 2.0f));
  // a tape is only put where none is recorded
  Tensor y = sum_all(w * w);
  std::vector<Node> held = take_tape();
  Tensor z = sum_all(w * 3.0f);
  CHECK_THROWS_AS(put_tape(std::move(held)), ArgumentError);
  clear_tape();
}

TEST_CASE("errors name the op and the shapes") {
  Tensor a = Tensor::zeros({3, 4}), b = Tensor::zeros({5, 6});
  std::string m = st::testing::thrown_message<ShapeError>([&] { matmul(a, b); });
  CHECK(m.find("matmul") != std::string::npos);
  CHECK(m.find("(3, 4)") != std::string::npos);
  CHECK(m.find("(5, 6)") != std::string::npos);
  CHECK(st::testing::thrown_message<ShapeError>([&] { add(a, b); }).find("add: shapes (3, 4) and (5, 6)") != std::string::npos);
  CHECK(st::testing::thrown_message<ShapeError>([&] { layernorm(a, Tensor::ones({3}), Tensor::zeros({3})); }).find("layernorm") !=
        std::string::npos);
  Tensor ids = Tensor::from_ints({0, 7}, {2});
  CHECK(st::testing::thrown_message<ArgumentError>([&] { embedding(ids, Tensor::zeros({5, 2})); }).find("index 7") != std::string::npos);
  Tensor t = Tensor::from_ints({3}, {1});
  CHECK(st::testing::thrown_message<ArgumentError>([&] { cross_entropy(Tensor::zeros({1, 3}), t); }).find("target 3") !=
        std::string::npos);
  Rng rng(1);
  CHECK_THROWS_AS(dropout(a, 1.0f, rng, true), ArgumentError);
  CHECK_THROWS_AS(gumbel_sigmoid_st(a, 0.0f, nullptr), ArgumentError);
  CHECK_THROWS_AS(reshape(a, {5, -1}), ShapeError);
  CHECK_THROWS_AS(split(a, {1, 1}, 0), ShapeError);
  CHECK_THROWS_AS(concat({a, b}, 0), ShapeError);
  CHECK_THROWS_AS(patch_embed(Tensor::zeros({1, 3, 10, 10}), Tensor::zeros({4, 3, 3, 3})), ShapeError);
  CHECK_THROWS_AS(Tensor().shape(), ArgumentError);
  CHECK_THROWS_AS(ids.data(), ArgumentError);  // an i32 tensor has no float data
}

TEST_CASE("errors: a device the build or the machine lacks is a DeviceError") {
  // Without a GPU (or without CUDA in the build) a CUDA tensor cannot exist.
  bool made = false;
  try {
    Tensor g = Tensor::zeros({2}, DType::F32, Device::CUDA);
    made = true;
    CHECK_THROWS_AS(add(g, Tensor::zeros({2})), DeviceError);  // mixed devices
    CHECK_THROWS_AS(layernorm(g, g, g), DeviceError);          // no CUDA kernel yet
  } catch (const DeviceError& e) {
    CHECK_FALSE(made);
    CHECK(std::string(e.what()).size() > 0);
  }
}

TEST_CASE("rng: Philox4x32-10 known answer, determinism, open interval") {
  auto zero = philox4x32(0, 0);  // Random123's known-answer vector for counter 0, key 0
  CHECK(zero[0] == 0x6627e8d5u);
  CHECK(zero[1] == 0xe169c58du);
  CHECK(zero[2] == 0xbc57ac4cu);
  CHECK(zero[3] == 0x9b00dbd8u);
  Rng a(42), b(42), c(43);
  Tensor ta = Tensor::uniform({1000}, a, 0.0f, 1.0f), tb = Tensor::uniform({1000}, b, 0.0f, 1.0f);
  CHECK(ta.to_vector() == tb.to_vector());
  CHECK(Tensor::uniform({1000}, c, 0.0f, 1.0f).to_vector() != ta.to_vector());
  CHECK(a.offset == 1000);
  double mean = 0;
  for (float u : ta.to_vector()) {
    CHECK(u > 0.0f);
    CHECK(u < 1.0f);
    mean += u / 1000;
  }
  CHECK(mean == doctest::Approx(0.5).epsilon(0.05));
}

TEST_CASE("rng: split streams depend on the state and the stream, and leave the generator where it was") {
  Rng a(42);
  a.take(7);
  const Rng s0 = a.split(0), s1 = a.split(1), again = a.split(0);
  CHECK(a.offset == 7);
  CHECK(s0.offset == 0);
  CHECK(s0.seed == again.seed);
  CHECK(s0.seed != s1.seed);
  Rng moved = a;
  moved.take(1);
  CHECK(moved.split(0).seed != s0.seed);  // the state moved, so did the streams
  CHECK(Rng(43).split(0).seed != Rng(42).split(0).seed);
  Rng x = s0, y = s1;
  CHECK(Tensor::uniform({64}, x, 0, 1).to_vector() != Tensor::uniform({64}, y, 0, 1).to_vector());
}

TEST_CASE("rng: randn is a loop of normal() draws, uniform one of philox_uniform, on one thread and on several") {
  const int saved = omp_get_max_threads();
  const int64_t n = 40'009;  // odd, and large enough to be shared out
  for (int threads : {1, 2}) {
    CAPTURE(threads);
    omp_set_num_threads(threads);
    Rng filled(5), looped(5);
    filled.take(3), looped.take(3);
    const std::vector<float> t = Tensor::randn({n}, filled, 0.5f).to_vector();
    bool same = true;
    for (int64_t i = 0; i < n; i++) same = same && t[size_t(i)] == 0.5f * looped.normal();
    CHECK(same);
    CHECK(filled.offset == looped.offset);
    CHECK(filled.offset == 3 + 2 * uint64_t(n));
    const std::vector<float> u = Tensor::uniform({n}, filled, -2.0f, 3.0f).to_vector();
    bool same_uniform = true;
    for (int64_t i = 0; i < n; i++)
      same_uniform = same_uniform && u[size_t(i)] == -2.0f + 5.0f * philox_uniform(5, 3 + 2 * uint64_t(n) + uint64_t(i));
    CHECK(same_uniform);
    CHECK(filled.offset == 3 + 3 * uint64_t(n));
  }
  omp_set_num_threads(saved);
}

TEST_CASE("memory: a repeated training step is served from the cache") {
  Rng rng(3);
  Tensor w = parameter({33, 17}, rng, 0.1f), bias = parameter({33}, rng, 0.0f);
  Tensor x = Tensor::randn({9, 17}, rng);
  auto step = [&] {
    Tensor h = gelu(linear(x, w, bias));
    backward(mean_all(softmax(h)));
    w.zero_grad();
    bias.zero_grad();
  };
  step();
  step();
  memory::Stats before = memory::host_stats();
  for (int i = 0; i < 3; i++) step();
  memory::Stats after = memory::host_stats();
  CHECK(after.requests > before.requests);
  CHECK(after.system_allocs == before.system_allocs);
  CHECK(after.in_use == before.in_use);  // nothing leaks from step to step
}

TEST_CASE("memory: size classes bound the waste") {
  CHECK(memory::size_class(1) == 64);
  CHECK(memory::size_class(65536) == 65536);
  for (size_t n : {65537ul, 100000ul, 3000000ul, 123456789ul}) {
    CHECK(memory::size_class(n) >= n);
    CHECK(double(memory::size_class(n)) <= 1.25 * double(n) + 64);
  }
}

TEST_CASE("optim: AdamW step matches the formula, per group") {
  Tensor w = leaf({1.0f, -2.0f}, {2}), b = leaf({0.5f}, {1});
  AdamW opt({{"decay", {w}, 0.1f, 0.5f}, {"no_decay", {b}, 0.2f, 0.0f}}, {0.9f, 0.99f, 1e-8f});
  backward(sum_all(w * w) + sum_all(b * 3.0f));  // grads: 2w = (2, -4), 3
  opt.step();
  // step 1: m/c1 = g, v/c2 = g^2, so the update is lr * sign(g) (up to eps).
  std::vector<float> wv = w.to_vector();
  CHECK(wv[0] == doctest::Approx(1.0 * (1 - 0.1 * 0.5) - 0.1).epsilon(1e-6));
  CHECK(wv[1] == doctest::Approx(-2.0 * (1 - 0.1 * 0.5) + 0.1).epsilon(1e-6));
  CHECK(b.item() == doctest::Approx(0.5 - 0.2).epsilon(1e-6));
  // step 2 with g2 = 1: m = 0.9 (0.1 g1) + 0.1 g2, v = 0.99 (0.01 g1^2) + 0.01 g2^2, then bias-corrected
  opt.zero_grad();
  backward(sum_all(b * 1.0f));
  opt.step();
  double m = (0.9 * 0.1 * 3 + 0.1 * 1) / (1 - 0.81), v = (0.99 * 0.01 * 9 + 0.01 * 1) / (1 - 0.9801);
  CHECK(b.item() == doctest::Approx(0.3 - 0.2 * m / (std::sqrt(v) + 1e-8)).epsilon(1e-5));
  CHECK(w.to_vector() == wv);  // no gradient this step: untouched
  CHECK(opt.steps() == 2);
}

TEST_CASE("optim: decay groups, clipping and schedules") {
  Rng rng(5);
  auto groups = decay_groups({{"layer.weight", parameter({4, 3}, rng, 1.0f)},
                              {"layer.bias", parameter({4}, rng, 1.0f)},
                              {"ln.weight", parameter({3}, rng, 1.0f)}},
                             1e-3f, 0.01f);
  REQUIRE(groups.size() == 2);
  CHECK(groups[0].params.size() == 1);
  CHECK(groups[0].weight_decay == 0.01f);
  CHECK(groups[1].params.size() == 2);
  CHECK(groups[1].weight_decay == 0.0f);

  Tensor a = leaf({3.0f, 0.0f}, {2}), b = leaf({4.0f}, {1});
  backward(sum_all(a * a) * 0.5f + sum_all(b * b) * 0.5f);  // grads (3, 0) and 4: norm 5
  CHECK(clip_grad_norm({a, b}, 1.0f) == doctest::Approx(5.0f));
  CHECK(a.grad().to_vector()[0] == doctest::Approx(0.6f).epsilon(1e-4));
  CHECK(b.grad().item() == doctest::Approx(0.8f).epsilon(1e-4));
  CHECK(clip_grad_norm({a, b}, 10.0f) == doctest::Approx(1.0f).epsilon(1e-4));  // under the limit: unchanged
  CHECK(b.grad().item() == doctest::Approx(0.8f).epsilon(1e-4));

  CHECK(lr_schedule(0, 10, 110, Decay::Linear) == 0.0f);
  CHECK(lr_schedule(5, 10, 110, Decay::Linear) == doctest::Approx(0.5f));
  CHECK(lr_schedule(10, 10, 110, Decay::Linear) == doctest::Approx(1.0f));
  CHECK(lr_schedule(60, 10, 110, Decay::Linear) == doctest::Approx(0.5f));
  CHECK(lr_schedule(110, 10, 110, Decay::Linear) == 0.0f);
  CHECK(lr_schedule(60, 10, 110, Decay::Cosine) == doctest::Approx(0.5f));
  CHECK(lr_schedule(35, 10, 110, Decay::Cosine) == doctest::Approx(0.5 * (1 + std::cos(M_PI * 0.25))));
  CHECK(lr_schedule(500, 10, 110, Decay::Constant) == 1.0f);
}

// Parameters of odd sizes, one above the threading threshold, with random gradients.
std::vector<Tensor> parameters_with_gradients(uint64_t seed) {
  Rng rng(seed);
  std::vector<Tensor> ps;
  for (int64_t n : {70001, 3, 129, 1, 4099}) {
    Tensor p = parameter({n}, rng, 1.0f);
    backward(sum_all(p * Tensor::randn({n}, rng)));  // grad: the random tensor
    ps.push_back(p);
  }
  return ps;
}

std::vector<std::vector<float>> values_and_gradients(const std::vector<Tensor>& ps) {
  std::vector<std::vector<float>> out;
  for (const Tensor& p : ps) out.push_back(p.to_vector()), out.push_back(p.grad().to_vector());
  return out;
}

TEST_CASE("optim: clipping and AdamW give the same bits on one thread and on several") {
  const int saved = omp_get_max_threads();
  std::vector<std::vector<float>> results[2];
  float norms[2] = {};
  for (int threads : {1, 2}) {
    omp_set_num_threads(threads);
    std::vector<Tensor> ps = parameters_with_gradients(11);
    double sq = 0;  // the norm in double, element by element
    for (const Tensor& p : ps)
      for (float g : p.grad().to_vector()) sq += double(g) * g;
    const float norm = clip_grad_norm(ps, 1.0f);
    CHECK(norm == doctest::Approx(std::sqrt(sq)).epsilon(1e-6));
    double clipped = 0;
    for (const Tensor& p : ps)
      for (float g : p.grad().to_vector()) clipped += double(g) * g;
    CHECK(std::sqrt(clipped) == doctest::Approx(1.0).epsilon(1e-5));
    AdamW opt({{"all", ps, 1e-2f, 0.1f}}, {0.9f, 0.98f, 1e-8f});
    opt.step();
    opt.step();
    norms[threads - 1] = norm;
    results[threads - 1] = values_and_gradients(ps);
  }
  omp_set_num_threads(saved);
  CHECK(norms[0] == norms[1]);
  CHECK(results[0] == results[1]);
}

TEST_CASE("autograd: leaf gradients kept apart add up to the same bits on one thread and on several") {
  const int saved = omp_get_max_threads();
  std::vector<std::vector<float>> results[2];
  for (int threads : {1, 2}) {
    omp_set_num_threads(threads);
    std::vector<Tensor> ps = parameters_with_gradients(12);  // each leaf holds a gradient already
    Rng rng(13);
    LeafGradients parts;
    {
      LeafGradientScope into(parts);
      Tensor total = sum_all(ps[0] * Tensor::randn({ps[0].numel()}, rng));
      for (size_t i = 1; i < ps.size(); i++) total = total + sum_all(ps[i] * ps[i]);
      backward(total);
    }
    CHECK(parts.size() == ps.size());
    const std::vector<float> before = ps[2].grad().to_vector(), value = ps[2].to_vector();
    parts.add_to_leaves();
    const std::vector<float> after = ps[2].grad().to_vector();
    for (size_t i = 0; i < after.size(); i++) CHECK(after[i] == before[i] + 2 * value[i]);  // g += d(p^2)/dp
    results[threads - 1] = values_and_gradients(ps);
  }
  omp_set_num_threads(saved);
  CHECK(results[0] == results[1]);
}

TEST_CASE("tensor: slice_batch copies examples [begin, end) of the first dimension") {
  Tensor f = Tensor::from_vector({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, {3, 2, 2});
  Tensor mid = f.slice_batch(1, 3);
  CHECK(mid.shape() == Shape{2, 2, 2});
  CHECK(mid.to_vector() == std::vector<float>{5, 6, 7, 8, 9, 10, 11, 12});
  CHECK_FALSE(mid.same_as(f));
  CHECK(f.slice_batch(2, 2).shape() == Shape{0, 2, 2});
  Tensor ids = Tensor::from_ints({1, 2, 3, 4, 5, 6}, {3, 2});
  CHECK(ids.slice_batch(0, 1).to_ints() == std::vector<int32_t>{1, 2});
  CHECK_THROWS_AS(f.slice_batch(2, 4), ArgumentError);
  CHECK_THROWS_AS(f.slice_batch(-1, 1), ArgumentError);
  CHECK_THROWS_AS(f.slice_batch(2, 1), ArgumentError);
}

TEST_CASE("tensor: copy_from copies values between buffers of one shape; move_to its own device changes nothing") {
  Tensor a = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor b = Tensor::zeros({2, 3});
  Tensor alias = b;  // a second handle on b's buffer
  b.copy_from(a);
  CHECK(alias.to_vector() == a.to_vector());
  CHECK_THROWS_AS(b.copy_from(Tensor::zeros({3, 2})), st::ArgumentError);
  CHECK_THROWS_AS(b.copy_from(Tensor::from_ints({1, 2, 3, 4, 5, 6}, {2, 3})), st::ArgumentError);
  const void* before = b.raw_data();
  b.move_to(st::Device::CPU);
  CHECK(b.raw_data() == before);
#ifndef SMARTTRIM_CUDA
  CHECK_THROWS_AS(b.move_to(st::Device::CUDA), st::DeviceError);
#endif
}
