// SparseAttention forward/backward against plain double-precision dense and sparse references, and against
// central finite differences.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/sparse_attention.h"
#include "tests/attention_test_util.h"
#include "tests/kernel_cases.h"

namespace spt::cpu {
namespace {

using test::RandomNormal;
using test::RelL2Error;
using test::RelMaxError;
using test::ToDouble;

// Shapes of the gradient tests below (K/V have H heads).
struct Case {
  int64_t B, H, Sq, Sk, E, Ev;
};

template <typename C>
std::string Describe(const C& c, const SparseAttentionParams& p, bool masked) {
  return "B=" + std::to_string(c.B) + " H=" + std::to_string(c.H) + " Sq=" + std::to_string(c.Sq) +
         " Sk=" + std::to_string(c.Sk) + " E=" + std::to_string(c.E) + " Ev=" + std::to_string(c.Ev) +
         " causal=" + std::to_string(p.causal) + " clamp=" + std::to_string(p.clamp) + " mask=" + std::to_string(masked);
}

std::string Describe(const test::AttentionCase& c, const SparseAttentionParams& p, bool masked) {
  return Describe<test::AttentionCase>(c, p, masked) + " Hkv=" + std::to_string(c.Hkv);
}

// Additive key mask: mostly 0, some -inf (excluded), some finite negative biases (added as given).
std::vector<float> RandomBias(int64_t b, int64_t sk, uint32_t seed) {
  std::mt19937 gen(seed);
  std::vector<float> bias(b * sk);
  for (auto& x : bias) {
    const auto r = gen() % 10;
    x = r < 6 ? 0.f : (r < 8 ? -std::numeric_limits<float>::infinity() : -0.5f * static_cast<float>(r - 7));
  }
  return bias;
}

bool Kept(const SparseAttentionDims& d, const SparseAttentionParams& p, const double* bias, int64_t i, int64_t j) {
  const int64_t pos = i + d.Sk - d.Sq;
  if (j < 0 || (p.causal && j > pos)) return false;
  if (p.window > 0 && (j < pos - p.window + 1 || (!p.causal && j > pos + p.window - 1))) return false;
  return !bias || bias[j] > kMaskedBias;
}

double Logit(const SparseAttentionDims& d, const SparseAttentionParams& p, const double* qi, const double* kj,
             const double* bias, int64_t j) {
  double s = 0;
  for (int64_t e = 0; e < d.E; ++e) s += qi[e] * kj[e];
  double a = p.scale * s;
  if (p.clamp > 0) a = std::clamp(a, -p.clamp, p.clamp);
  return a + (bias ? bias[j] : 0.0);
}

// Plain dense attention over all Sk keys in double: Y [B, H, Sq, Ev] and the probabilities [B, H, Sq, Sk].
void DenseReference(const SparseAttentionDims& d, const SparseAttentionParams& p, const std::vector<double>& q,
                    const std::vector<double>& k, const std::vector<double>& v, const std::vector<double>* bias,
                    std::vector<double>& y, std::vector<double>& probs, const AttentionBias<double>& attn = {}) {
  y.assign(d.B * d.H * d.Sq * d.Ev, 0.0);
  probs.assign(d.B * d.H * d.Sq * d.Sk, 0.0);
  for (int64_t bh = 0; bh < d.B * d.H; ++bh) {
    const double* bb = bias ? bias->data() + (bh / d.H) * d.Sk : nullptr;
    for (int64_t i = 0; i < d.Sq; ++i) {
      const int64_t row = bh * d.Sq + i;
      // The attn_bias row of (b, h, i), read through its broadcast strides.
      const double* ar = attn.data ? attn.data + (bh / d.H) * attn.stride_b + (bh % d.H) * attn.stride_h + i * attn.stride_i
                                   : nullptr;
      std::vector<double> a(d.Sk, -INFINITY);
      double mx = -INFINITY;
      for (int64_t j = 0; j < d.Sk; ++j) {
        if (!Kept(d, p, bb, i, j) || (ar && !(ar[j] > kMaskedBias))) continue;
        a[j] = Logit(d, p, &q[row * d.E], &k[(KvHeadOf(bh, d.H, d.Hkv) * d.Sk + j) * d.E], bb, j) + (ar ? ar[j] : 0.0);
        mx = std::max(mx, a[j]);
      }
      if (mx == -INFINITY) continue;
      double sum = 0;
      for (int64_t j = 0; j < d.Sk; ++j) sum += a[j] == -INFINITY ? 0.0 : std::exp(a[j] - mx);
      for (int64_t j = 0; j < d.Sk; ++j) {
        const double pj = a[j] == -INFINITY ? 0.0 : std::exp(a[j] - mx) / sum;
        probs[row * d.Sk + j] = pj;
        for (int64_t e = 0; e < d.Ev; ++e) y[row * d.Ev + e] += pj * v[(KvHeadOf(bh, d.H, d.Hkv) * d.Sk + j) * d.Ev + e];
      }
    }
  }
}

// Plain fixed-k sparse attention in double: every slot is its own entry (duplicates count twice).
void SparseReference(const SparseAttentionDims& d, const SparseAttentionParams& p, const std::vector<double>& q,
                     const std::vector<double>& k, const std::vector<double>& v, const std::vector<int32_t>& idx,
                     const std::vector<double>* bias, std::vector<double>& y, std::vector<double>& probs) {
  y.assign(d.B * d.H * d.Sq * d.Ev, 0.0);
  probs.assign(d.B * d.H * d.Sq * d.L, 0.0);
  for (int64_t bh = 0; bh < d.B * d.H; ++bh) {
    const double* bb = bias ? bias->data() + (bh / d.H) * d.Sk : nullptr;
    for (int64_t i = 0; i < d.Sq; ++i) {
      const int64_t row = bh * d.Sq + i;
      std::vector<double> a(d.L, -INFINITY);
      double mx = -INFINITY;
      for (int64_t t = 0; t < d.L; ++t) {
        const int64_t j = idx[row * d.L + t];
        if (!Kept(d, p, bb, i, j)) continue;
        a[t] = Logit(d, p, &q[row * d.E], &k[(KvHeadOf(bh, d.H, d.Hkv) * d.Sk + j) * d.E], bb, j);
        mx = std::max(mx, a[t]);
      }
      if (mx == -INFINITY) continue;
      double sum = 0;
      for (int64_t t = 0; t < d.L; ++t) sum += a[t] == -INFINITY ? 0.0 : std::exp(a[t] - mx);
      for (int64_t t = 0; t < d.L; ++t) {
        if (a[t] == -INFINITY) continue;
        const double pt = std::exp(a[t] - mx) / sum;
        probs[row * d.L + t] = pt;
        const int64_t j = idx[row * d.L + t];
        for (int64_t e = 0; e < d.Ev; ++e) y[row * d.Ev + e] += pt * v[(KvHeadOf(bh, d.H, d.Hkv) * d.Sk + j) * d.Ev + e];
      }
    }
  }
}

// Every key once per row, in a random order per row (the kernel must not assume sorted indices).
std::vector<int32_t> AllKeysShuffled(const SparseAttentionDims& d, uint32_t seed) {
  std::mt19937 gen(seed);
  std::vector<int32_t> idx(d.B * d.H * d.Sq * d.Sk);
  for (int64_t row = 0; row < d.B * d.H * d.Sq; ++row) {
    int32_t* r = idx.data() + row * d.Sk;
    for (int64_t j = 0; j < d.Sk; ++j) r[j] = static_cast<int32_t>(j);
    std::shuffle(r, r + d.Sk, gen);
  }
  return idx;
}

// Random slots in [-1, Sk): sentinels and duplicates included.
std::vector<int32_t> RandomIndices(const SparseAttentionDims& d, uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<int32_t> dist(-1, static_cast<int32_t>(d.Sk) - 1);
  std::vector<int32_t> idx(d.B * d.H * d.Sq * d.L);
  for (auto& x : idx) x = dist(gen);
  return idx;
}

// The shared case table (also run by the GPU check): GQA and MQA cases included.
constexpr const auto& kCases = test::kAttentionCases;

TEST(SparseAttention, AllKeysSelectedEqualsDenseAttention) {
  const ThreadParallel par(2);
  for (const auto& c : kCases) {
    for (bool causal : {true, false}) {
      for (bool masked : {false, true}) {
        for (double clamp : {0.0, 0.9}) {
          const auto q = RandomNormal(c.B * c.H * c.Sq * c.E, 1), k = RandomNormal(c.B * c.Hkv * c.Sk * c.E, 2);
          const auto v = RandomNormal(c.B * c.Hkv * c.Sk * c.Ev, 3);
          const auto bias = RandomBias(c.B, c.Sk, 4);
          const Shape mshape{c.B, c.Sk};
          auto d = CheckSparseAttentionInputs("SparseAttention", {c.B, c.H, c.Sq, c.E}, {c.B, c.Hkv, c.Sk, c.E},
                                              {c.B, c.Hkv, c.Sk, c.Ev}, {c.B, c.H, c.Sq, c.Sk}, masked ? &mshape : nullptr);
          const auto p = ResolveSparseAttentionParams("SparseAttention", 0.0, clamp, causal, c.E);
          const auto idx = AllKeysShuffled(d, 5);
          std::vector<float> y(c.B * c.H * c.Sq * c.Ev, NAN), probs(c.B * c.H * c.Sq * c.Sk, NAN);
          SparseAttentionForward<float>(d, p, q.data(), k.data(), v.data(), idx.data(), masked ? bias.data() : nullptr,
                                        y.data(), probs.data(), par);
          std::vector<double> yr, pr;
          const auto bias_d = ToDouble(bias);
          DenseReference(d, p, ToDouble(q), ToDouble(k), ToDouble(v), masked ? &bias_d : nullptr, yr, pr);
          // The kernel's P is in slot order: map the dense probabilities through the permutation.
          std::vector<double> pr_slots(probs.size());
          for (int64_t row = 0; row < c.B * c.H * c.Sq; ++row) {
            for (int64_t t = 0; t < c.Sk; ++t) pr_slots[row * c.Sk + t] = pr[row * c.Sk + idx[row * c.Sk + t]];
          }
          const std::string what = Describe(c, p, masked);
          EXPECT_LT(RelMaxError(y, yr), 1e-5) << what;
          EXPECT_LT(RelMaxError(probs, pr_slots), 1e-5) << what;
          for (float x : y) ASSERT_TRUE(std::isfinite(x)) << what;
        }
      }
    }
  }
}

// Sliding window: with every key selected, the kernel hides the keys outside the window exactly as dense attention
// with the window mask does (causal: the last `window` keys; not causal: within window - 1 on both sides).
TEST(SparseAttention, SlidingWindowEqualsDenseAttentionWithTheWindowMask) {
  const ThreadParallel par(2);
  for (const auto& c : kCases) {
    for (bool causal : {true, false}) {
      for (int64_t window : {int64_t{1}, int64_t{3}}) {
        const auto q = RandomNormal(c.B * c.H * c.Sq * c.E, 41), k = RandomNormal(c.B * c.Hkv * c.Sk * c.E, 42);
        const auto v = RandomNormal(c.B * c.Hkv * c.Sk * c.Ev, 43);
        auto d = CheckSparseAttentionInputs("SparseAttention", {c.B, c.H, c.Sq, c.E}, {c.B, c.Hkv, c.Sk, c.E},
                                            {c.B, c.Hkv, c.Sk, c.Ev}, {c.B, c.H, c.Sq, c.Sk}, nullptr);
        auto p = ResolveSparseAttentionParams("SparseAttention", 0.0, 10.0, causal, c.E);
        p.window = window;
        const auto idx = AllKeysShuffled(d, 44);
        std::vector<float> y(c.B * c.H * c.Sq * c.Ev), probs(c.B * c.H * c.Sq * c.Sk);
        SparseAttentionForward<float>(d, p, q.data(), k.data(), v.data(), idx.data(), nullptr, y.data(), probs.data(), par);
        std::vector<double> yr, pr;
        DenseReference(d, p, ToDouble(q), ToDouble(k), ToDouble(v), nullptr, yr, pr);
        const std::string what = Describe(c, p, false) + " window=" + std::to_string(window);
        EXPECT_LT(RelMaxError(y, yr), 1e-5) << what;
        // A slot outside the window gets P = 0.
        for (int64_t row = 0; row < c.B * c.H * c.Sq; ++row) {
          const int64_t i = row % c.Sq;
          for (int64_t t = 0; t < c.Sk; ++t) {
            if (!Kept(d, p, nullptr, i, idx[row * c.Sk + t])) {
              EXPECT_EQ(probs[row * c.Sk + t], 0.f) << what;
            }
          }
        }
      }
    }
  }
}

TEST(SparseAttention, ClampIsActiveInTheClampCases) {
  // Guards the test above: with clamp 0.9 and 1/sqrt(E) scaling, some logits of N(0,1) data exceed the clamp.
  const auto q = RandomNormal(9 * 16, 1), k = RandomNormal(9 * 16, 2);
  int64_t clamped = 0;
  for (int64_t i = 0; i < 9; ++i) {
    for (int64_t j = 0; j < 9; ++j) {
      double s = 0;
      for (int64_t e = 0; e < 16; ++e) s += double(q[i * 16 + e]) * k[j * 16 + e];
      clamped += std::fabs(s / 4.0) > 0.9;
    }
  }
  EXPECT_GT(clamped, 5);
}

TEST(SparseAttention, RandomIndicesWithSentinelsAndDuplicatesMatchSparseReference) {
  const ThreadParallel par(3);
  for (const auto& c : kCases) {
    for (int64_t l : {int64_t{1}, int64_t{4}, int64_t{13}, c.L}) {
      for (bool causal : {true, false}) {
        const auto q = RandomNormal(c.B * c.H * c.Sq * c.E, 6), k = RandomNormal(c.B * c.Hkv * c.Sk * c.E, 7);
        const auto v = RandomNormal(c.B * c.Hkv * c.Sk * c.Ev, 8);
        const auto bias = RandomBias(c.B, c.Sk, 9);
        const Shape mshape{c.B, c.Sk};
        auto d = CheckSparseAttentionInputs("SparseAttention", {c.B, c.H, c.Sq, c.E}, {c.B, c.Hkv, c.Sk, c.E},
                                            {c.B, c.Hkv, c.Sk, c.Ev}, {c.B, c.H, c.Sq, l}, &mshape);
        const auto p = ResolveSparseAttentionParams("SparseAttention", 0.0, 10.0, causal, c.E);
        const auto idx = RandomIndices(d, 10);
        CheckSparseAttentionIndices("SparseAttention", d, idx.data());
        std::vector<float> y(c.B * c.H * c.Sq * c.Ev), probs(c.B * c.H * c.Sq * l);
        SparseAttentionForward<float>(d, p, q.data(), k.data(), v.data(), idx.data(), bias.data(), y.data(),
                                      probs.data(), par);
        std::vector<double> yr, pr;
        const auto bias_d = ToDouble(bias);
        SparseReference(d, p, ToDouble(q), ToDouble(k), ToDouble(v), idx, &bias_d, yr, pr);
        EXPECT_LT(RelMaxError(y, yr), 1e-5) << Describe(c, p, true) << " L=" << l;
        EXPECT_LT(RelMaxError(probs, pr), 1e-5) << Describe(c, p, true) << " L=" << l;
      }
    }
  }
}

TEST(SparseAttention, FullyMaskedRowsGiveZeroWithoutNaN) {
  // Sq > Sk with causal alignment to the end: the first Sq - Sk rows see no key. Batch 1 pads every key.
  const auto q = RandomNormal(2 * 6 * 4, 11), k = RandomNormal(2 * 3 * 4, 12), v = RandomNormal(2 * 3 * 4, 13);
  std::vector<float> bias = {0.f, 0.f, 0.f, -INFINITY, -INFINITY, -INFINITY};
  const Shape mshape{2, 3};
  auto d = CheckSparseAttentionInputs("SparseAttention", {2, 1, 6, 4}, {2, 1, 3, 4}, {2, 1, 3, 4}, {2, 1, 6, 3}, &mshape);
  const auto p = ResolveSparseAttentionParams("SparseAttention", 0.0, 10.0, true, 4);
  const auto idx = AllKeysShuffled(d, 14);
  std::vector<float> y(2 * 6 * 4, NAN), probs(2 * 6 * 3, NAN);
  SparseAttentionForward<float>(d, p, q.data(), k.data(), v.data(), idx.data(), bias.data(), y.data(), probs.data(),
                                Serial());
  for (int64_t row = 0; row < 12; ++row) {
    const bool empty = row >= 6 || row < 3;
    for (int64_t e = 0; e < 4; ++e) {
      ASSERT_TRUE(std::isfinite(y[row * 4 + e]));
      if (empty) {
        EXPECT_EQ(y[row * 4 + e], 0.f) << "row " << row;
      }
    }
    double sum = 0;
    for (int64_t t = 0; t < 3; ++t) sum += probs[row * 3 + t];
    EXPECT_NEAR(sum, empty ? 0.0 : 1.0, 1e-6) << "row " << row;
  }
  std::vector<float> dy = RandomNormal(2 * 6 * 4, 15), dq(2 * 6 * 4, NAN), dk(2 * 3 * 4, NAN), dv(2 * 3 * 4, NAN);
  SparseAttentionBackward<float>(d, p, dy.data(), q.data(), k.data(), v.data(), idx.data(), probs.data(), dq.data(),
                                 dk.data(), dv.data(), Serial());
  for (float x : dq) ASSERT_TRUE(std::isfinite(x));
  for (int64_t x = 6 * 4; x < 12 * 4; ++x) EXPECT_EQ(dq[x], 0.f);
  for (int64_t x = 3 * 4; x < 6 * 4; ++x) EXPECT_EQ(dv[x], 0.f);
}

// Gradient check: loss = <G, Y>. The analytic gradients of the fp32 kernel (and of its double instance) are
// compared with central differences of a double forward, by relative L2 error over each whole tensor.
struct GradResult {
  double dq32, dk32, dv32, dq64, dk64, dv64;
};

template <typename Forward>
GradResult CheckGradients(const SparseAttentionDims& d, const SparseAttentionParams& p, const std::vector<int32_t>& idx,
                          const std::vector<float>* bias, Forward&& forward_double, uint32_t seed,
                          const std::vector<float>* attn = nullptr, const Shape& attn_shape = {}) {
  const auto attn_d = attn ? ToDouble(*attn) : std::vector<double>();
  const auto attn32 = attn ? CheckAttentionBias<float>("test", d, attn_shape, attn->data()) : AttentionBias<float>{};
  const auto attn64 = attn ? CheckAttentionBias<double>("test", d, attn_shape, attn_d.data()) : AttentionBias<double>{};
  const auto qf = RandomNormal(d.B * d.H * d.Sq * d.E, seed), kf = RandomNormal(d.B * d.Hkv * d.Sk * d.E, seed + 1);
  const auto vf = RandomNormal(d.B * d.Hkv * d.Sk * d.Ev, seed + 2), gf = RandomNormal(d.B * d.H * d.Sq * d.Ev, seed + 3);
  auto q = ToDouble(qf), k = ToDouble(kf), v = ToDouble(vf);
  const auto g = ToDouble(gf);
  auto loss = [&] {
    const auto y = forward_double(q, k, v);
    double s = 0;
    for (std::size_t i = 0; i < y.size(); ++i) s += g[i] * y[i];
    return s;
  };
  const auto fq = test::FiniteDifference(q, loss), fk = test::FiniteDifference(k, loss), fv = test::FiniteDifference(v, loss);

  GradResult r{};
  {  // fp32 kernel
    std::vector<float> y(gf.size()), probs(d.B * d.H * d.Sq * d.L), dq(qf.size()), dk(kf.size()), dv(vf.size());
    SparseAttentionForward<float>(d, p, qf.data(), kf.data(), vf.data(), idx.data(), bias ? bias->data() : nullptr,
                                  y.data(), probs.data(), Serial(), attn32);
    SparseAttentionBackward<float>(d, p, gf.data(), qf.data(), kf.data(), vf.data(), idx.data(), probs.data(),
                                   dq.data(), dk.data(), dv.data(), ThreadParallel(2));
    r.dq32 = RelL2Error(dq, fq), r.dk32 = RelL2Error(dk, fk), r.dv32 = RelL2Error(dv, fv);
  }
  {  // double instance of the same kernel
    const auto bd = bias ? ToDouble(*bias) : std::vector<double>();
    std::vector<double> y(g.size()), probs(d.B * d.H * d.Sq * d.L), dq(q.size()), dk(k.size()), dv(v.size());
    SparseAttentionForward<double>(d, p, q.data(), k.data(), v.data(), idx.data(), bias ? bd.data() : nullptr,
                                   y.data(), probs.data(), Serial(), attn64);
    SparseAttentionBackward<double>(d, p, g.data(), q.data(), k.data(), v.data(), idx.data(), probs.data(), dq.data(),
                                    dk.data(), dv.data(), Serial());
    r.dq64 = RelL2Error(dq, fq), r.dk64 = RelL2Error(dk, fk), r.dv64 = RelL2Error(dv, fv);
  }
  return r;
}

void ExpectGradientsClose(const GradResult& r, const std::string& what) {
  EXPECT_LT(r.dq32, 1e-3) << what;
  EXPECT_LT(r.dk32, 1e-3) << what;
  EXPECT_LT(r.dv32, 1e-3) << what;
  EXPECT_LT(r.dq64, 1e-6) << what;
  EXPECT_LT(r.dk64, 1e-6) << what;
  EXPECT_LT(r.dv64, 1e-6) << what;
}

TEST(SparseAttentionGrad, AllKeysSelectedMatchesFiniteDifferencesOfDenseAttention) {
  for (const Case& c : {Case{1, 2, 5, 5, 4, 3}, Case{2, 1, 4, 7, 8, 8}}) {
    for (bool causal : {true, false}) {
      for (double clamp : {0.0, 0.8}) {
        const Shape mshape{c.B, c.Sk};
        auto d = CheckSparseAttentionInputs("SparseAttentionGrad", {c.B, c.H, c.Sq, c.E}, {c.B, c.H, c.Sk, c.E},
                                            {c.B, c.H, c.Sk, c.Ev}, {c.B, c.H, c.Sq, c.Sk}, &mshape);
        auto bias = RandomBias(c.B, c.Sk, 20);
        bias[0] = 0.f;  // keep key 0 so no row is empty under the causal mask
        if (c.B > 1) bias[c.Sk] = 0.f;
        const auto bias_d = ToDouble(bias);
        const auto p = ResolveSparseAttentionParams("SparseAttentionGrad", 0.0, clamp, causal, c.E);
        const auto idx = AllKeysShuffled(d, 21);
        auto dense = [&](const std::vector<double>& q, const std::vector<double>& k, const std::vector<double>& v) {
          std::vector<double> y, probs;
          DenseReference(d, p, q, k, v, &bias_d, y, probs);
          return y;
        };
        ExpectGradientsClose(CheckGradients(d, p, idx, &bias, dense, 22), Describe(c, p, true));
      }
    }
  }
}

// attn_bias (relative position bias, ALiBi) [1|B, 1|H, 1|Sq, Sk]: added to the logits at the selected keys after
// the clamp; -inf entries exclude the key. Against dense attention with the same bias, in every broadcast form.
TEST(SparseAttention, AttnBiasEqualsDenseAttentionWithTheBiasAdded) {
  const ThreadParallel par(2);
  for (const auto& c : kCases) {
    for (const Shape& shape : {Shape{1, c.H, c.Sq, c.Sk}, Shape{c.B, 1, 1, c.Sk}, Shape{c.B, c.H, 1, c.Sk}, Shape{c.Sk}}) {
      for (bool causal : {true, false}) {
        const auto q = RandomNormal(c.B * c.H * c.Sq * c.E, 71), k = RandomNormal(c.B * c.Hkv * c.Sk * c.E, 72);
        const auto v = RandomNormal(c.B * c.Hkv * c.Sk * c.Ev, 73);
        auto attn = RandomNormal(NumElements(shape), 74);
        attn[attn.size() / 2] = -std::numeric_limits<float>::infinity();  // one excluded key
        auto d = CheckSparseAttentionInputs("SparseAttention", {c.B, c.H, c.Sq, c.E}, {c.B, c.Hkv, c.Sk, c.E},
                                            {c.B, c.Hkv, c.Sk, c.Ev}, {c.B, c.H, c.Sq, c.Sk}, nullptr);
        const auto p = ResolveSparseAttentionParams("SparseAttention", 0.0, 10.0, causal, c.E);
        const auto idx = AllKeysShuffled(d, 75);
        std::vector<float> y(c.B * c.H * c.Sq * c.Ev), probs(c.B * c.H * c.Sq * c.Sk);
        SparseAttentionForward<float>(d, p, q.data(), k.data(), v.data(), idx.data(), nullptr, y.data(), probs.data(), par,
                                      CheckAttentionBias<float>("SparseAttention", d, shape, attn.data()));
        const auto attn_d = ToDouble(attn);
        std::vector<double> yr, pr;
        DenseReference(d, p, ToDouble(q), ToDouble(k), ToDouble(v), nullptr, yr, pr,
                       CheckAttentionBias<double>("SparseAttention", d, shape, attn_d.data()));
        EXPECT_LT(RelMaxError(y, yr), 1e-5) << Describe(c, p, false) << " attn_bias " << ShapeString(shape);
      }
    }
  }
}

TEST(SparseAttention, AttnBiasOfAnotherShapeIsRejected) {
  const SparseAttentionDims d{2, 4, 5, 6, 8, 8, 3, 2};
  const float x = 0.f;
  EXPECT_THROW(CheckAttentionBias<float>("SparseAttention", d, {2, 4, 5, 5}, &x), std::invalid_argument);
  EXPECT_THROW(CheckAttentionBias<float>("SparseAttention", d, {3, 1, 1, 6}, &x), std::invalid_argument);
  EXPECT_THROW(CheckAttentionBias<float>("SparseAttention", d, {1, 2, 4, 5, 6}, &x), std::invalid_argument);
  try {
    CheckAttentionBias<float>("SparseAttention", d, {1, 2, 5, 6}, &x);
    FAIL() << "a head count other than 1 or H must be rejected";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("attn_bias"), std::string::npos) << e.what();
  }
}

TEST(SparseAttentionGrad, AttnBiasMatchesFiniteDifferencesOfDenseAttention) {
  for (const Case& c : {Case{1, 2, 5, 5, 4, 3}, Case{2, 1, 4, 7, 8, 8}}) {
    for (bool causal : {true, false}) {
      auto d = CheckSparseAttentionInputs("SparseAttentionGrad", {c.B, c.H, c.Sq, c.E}, {c.B, c.H, c.Sk, c.E},
                                          {c.B, c.H, c.Sk, c.Ev}, {c.B, c.H, c.Sq, c.Sk}, nullptr);
      const auto p = ResolveSparseAttentionParams("SparseAttentionGrad", 0.0, 0.8, causal, c.E);
      const Shape shape{1, c.H, c.Sq, c.Sk};
      const auto attn = RandomNormal(NumElements(shape), 81);
      const auto attn_d = ToDouble(attn);
      const auto idx = AllKeysShuffled(d, 82);
      auto dense = [&](const std::vector<double>& q, const std::vector<double>& k, const std::vector<double>& v) {
        std::vector<double> y, probs;
        DenseReference(d, p, q, k, v, nullptr, y, probs, CheckAttentionBias<double>("test", d, shape, attn_d.data()));
        return y;
      };
      ExpectGradientsClose(CheckGradients(d, p, idx, nullptr, dense, 83, &attn, shape), Describe(c, p, false) + " attn_bias");
    }
  }
}

TEST(SparseAttentionGrad, SlidingWindowMatchesFiniteDifferencesOfDenseAttention) {
  for (const Case& c : {Case{1, 2, 6, 6, 4, 3}, Case{2, 1, 4, 7, 8, 8}}) {
    for (bool causal : {true, false}) {
      auto d = CheckSparseAttentionInputs("SparseAttentionGrad", {c.B, c.H, c.Sq, c.E}, {c.B, c.H, c.Sk, c.E},
                                          {c.B, c.H, c.Sk, c.Ev}, {c.B, c.H, c.Sq, c.Sk}, nullptr);
      auto p = ResolveSparseAttentionParams("SparseAttentionGrad", 0.0, 0.8, causal, c.E);
      p.window = 2;
      const auto idx = AllKeysShuffled(d, 51);
      auto dense = [&](const std::vector<double>& q, const std::vector<double>& k, const std::vector<double>& v) {
        std::vector<double> y, probs;
        DenseReference(d, p, q, k, v, nullptr, y, probs);
        return y;
      };
      ExpectGradientsClose(CheckGradients(d, p, idx, nullptr, dense, 52), Describe(c, p, false) + " window=2");
    }
  }
}

TEST(SparseAttentionGrad, RandomIndicesWithActiveClampMatchFiniteDifferences) {
  // scale 1 and clamp 1.5 on N(0,1) data with E = 4: a good share of the logits sit beyond the clamp.
  const Case c{1, 2, 6, 7, 4, 3};
  for (bool causal : {true, false}) {
    auto d = CheckSparseAttentionInputs("SparseAttentionGrad", {1, 2, 6, 4}, {1, 2, 7, 4}, {1, 2, 7, 3}, {1, 2, 6, 5},
                                        nullptr);
    const auto p = ResolveSparseAttentionParams("SparseAttentionGrad", 1.0, 1.5, causal, c.E);
    const auto idx = RandomIndices(d, 30);
    auto sparse = [&](const std::vector<double>& q, const std::vector<double>& k, const std::vector<double>& v) {
      std::vector<double> y(d.B * d.H * d.Sq * d.Ev), probs(d.B * d.H * d.Sq * d.L);
      SparseAttentionForward<double>(d, p, q.data(), k.data(), v.data(), idx.data(), nullptr, y.data(), probs.data(),
                                     Serial());
      return y;
    };
    // The double forward used for the differences is itself checked against the plain sparse reference.
    {
      const auto q = ToDouble(RandomNormal(48, 31)), k = ToDouble(RandomNormal(56, 32)), v = ToDouble(RandomNormal(42, 33));
      std::vector<double> yr, pr;
      SparseReference(d, p, q, k, v, idx, nullptr, yr, pr);
      EXPECT_LT(RelMaxError(sparse(q, k, v), yr), 1e-12);
    }
    const auto r = CheckGradients(d, p, idx, nullptr, sparse, 31);
    ExpectGradientsClose(r, Describe(c, p, false));
    // The clamp must actually cut some of the gradient: count the clamped slots on the same data.
    const auto q = RandomNormal(48, 31), k = RandomNormal(56, 32);
    int64_t clamped = 0, kept = 0;
    for (int64_t bh = 0; bh < 2; ++bh) {
      for (int64_t i = 0; i < 6; ++i) {
        for (int64_t t = 0; t < 5; ++t) {
          const int32_t j = idx[(bh * 6 + i) * 5 + t];
          if (j < 0 || (causal && j > i + 1)) continue;
          double s = 0;
          for (int64_t e = 0; e < 4; ++e) s += double(q[(bh * 6 + i) * 4 + e]) * k[(bh * 7 + j) * 4 + e];
          ++kept;
          clamped += std::fabs(s) > 1.5;
        }
      }
    }
    EXPECT_GT(clamped, 0);
    EXPECT_LT(clamped, kept);
  }
}

// Also the two dK/dV schemes against each other: serially the four kv heads are enough for one task per kv head
// (terms added in the row pass); on four workers they are not, and the key-major pass sums them.
TEST(SparseAttentionGrad, IsDeterministicAcrossWorkerCounts) {
  auto d = CheckSparseAttentionInputs("SparseAttentionGrad", {2, 2, 70, 16}, {2, 2, 70, 16}, {2, 2, 70, 16},
                                      {2, 2, 70, 9}, nullptr);
  const auto p = ResolveSparseAttentionParams("SparseAttentionGrad", 0.0, 10.0, true, 16);
  const auto idx = RandomIndices(d, 40);
  const auto q = RandomNormal(2 * 2 * 70 * 16, 41), k = RandomNormal(2 * 2 * 70 * 16, 42);
  const auto v = RandomNormal(2 * 2 * 70 * 16, 43), dy = RandomNormal(2 * 2 * 70 * 16, 44);
  std::vector<float> y(q.size()), probs(2 * 2 * 70 * 9);
  SparseAttentionForward<float>(d, p, q.data(), k.data(), v.data(), idx.data(), nullptr, y.data(), probs.data(), Serial());
  std::vector<float> a[3], b[3];
  for (auto* set : {a, b}) {
    for (int x = 0; x < 3; ++x) set[x].assign(q.size(), 0.f);
  }
  SparseAttentionBackward<float>(d, p, dy.data(), q.data(), k.data(), v.data(), idx.data(), probs.data(), a[0].data(),
                                 a[1].data(), a[2].data(), Serial());
  SparseAttentionBackward<float>(d, p, dy.data(), q.data(), k.data(), v.data(), idx.data(), probs.data(), b[0].data(),
                                 b[1].data(), b[2].data(), ThreadParallel(4));
  for (int x = 0; x < 3; ++x) EXPECT_EQ(a[x], b[x]);
}

// Head dim 64 takes the unrolled fp32 loops (row sums held in registers); the double instantiation runs the
// generic loops, which the finite-difference tests above check. Both must agree on Y, P, dQ, dK and dV, with
// sentinels, duplicates, a key padding mask and the clamp active on some logits.
TEST(SparseAttentionGrad, HeadDim64UnrolledPathMatchesTheGenericPathInDouble) {
  const int64_t B = 2, H = 4, Hkv = 2, S = 37, E = 64, L = 11;
  const Shape mshape{B, S};
  const auto d = CheckSparseAttentionInputs("SparseAttentionGrad", {B, H, S, E}, {B, Hkv, S, E}, {B, Hkv, S, E},
                                            {B, H, S, L}, &mshape);
  const auto p = ResolveSparseAttentionParams("SparseAttentionGrad", 0.25, 2.0, true, E);
  const auto idx = RandomIndices(d, 60);
  const auto q = RandomNormal(B * H * S * E, 61), k = RandomNormal(B * Hkv * S * E, 62);
  const auto v = RandomNormal(B * Hkv * S * E, 63), dy = RandomNormal(B * H * S * E, 64);
  const auto bias = RandomBias(B, S, 65);
  int clamped = 0;
  for (int64_t bh = 0; bh < B * H; ++bh) {
    for (int64_t i = 0; i < S; ++i) {
      for (int64_t t = 0; t < L; ++t) {
        const int32_t j = idx[(bh * S + i) * L + t];
        if (j < 0) continue;
        double s = 0;
        for (int64_t e = 0; e < E; ++e) s += q[(bh * S + i) * E + e] * k[(KvHeadOf(bh, H, Hkv) * S + j) * E + e];
        clamped += std::fabs(0.25 * s) > 2.0;
      }
    }
  }
  ASSERT_GT(clamped, 0);

  std::vector<float> y(q.size()), probs(B * H * S * L), dq(q.size()), dk(k.size()), dv(v.size());
  SparseAttentionForward<float>(d, p, q.data(), k.data(), v.data(), idx.data(), bias.data(), y.data(), probs.data(),
                                ThreadParallel(2));
  SparseAttentionBackward<float>(d, p, dy.data(), q.data(), k.data(), v.data(), idx.data(), probs.data(), dq.data(),
                                 dk.data(), dv.data(), ThreadParallel(2));
  const auto qd = ToDouble(q), kd = ToDouble(k), vd = ToDouble(v), dyd = ToDouble(dy), biasd = ToDouble(bias);
  std::vector<double> yr(q.size()), pr(probs.size()), dqr(q.size()), dkr(k.size()), dvr(v.size());
  SparseAttentionForward<double>(d, p, qd.data(), kd.data(), vd.data(), idx.data(), biasd.data(), yr.data(), pr.data(),
                                 Serial());
  SparseAttentionBackward<double>(d, p, dyd.data(), qd.data(), kd.data(), vd.data(), idx.data(), pr.data(), dqr.data(),
                                  dkr.data(), dvr.data(), Serial());
  EXPECT_LT(RelMaxError(y, yr), 1e-5);
  EXPECT_LT(RelMaxError(probs, pr), 1e-5);
  EXPECT_LT(RelMaxError(dq, dqr), 1e-4);
  EXPECT_LT(RelMaxError(dk, dkr), 1e-4);
  EXPECT_LT(RelMaxError(dv, dvr), 1e-4);
}

// ---------------------------------------------------------------- grouped K/V heads (GQA, MQA)

// K or V [B, Hkv, Sk, X] repeated to [B, H, Sk, X] (query head h gets kv head h / (H / Hkv)).
std::vector<float> RepeatHeads(const std::vector<float>& kv, int64_t b, int64_t h, int64_t hkv, int64_t rows) {
  std::vector<float> out(static_cast<std::size_t>(b * h * rows));
  for (int64_t bh = 0; bh < b * h; ++bh) {
    const int64_t src = KvHeadOf(bh, h, hkv);
    std::copy(kv.begin() + src * rows, kv.begin() + (src + 1) * rows, out.begin() + bh * rows);
  }
  return out;
}

TEST(SparseAttentionGroupedHeads, MatchMultiHeadAttentionOnRepeatedKeysAndValues) {
  // (H, Hkv): GQA with groups of 2 and 3, MQA, and Hkv == H.
  for (const auto& [h, hkv] : std::vector<std::pair<int64_t, int64_t>>{{4, 2}, {6, 2}, {3, 1}, {2, 2}}) {
    for (bool causal : {true, false}) {
      const int64_t B = 2, Sq = 9, Sk = 11, E = 8, Ev = 6, L = 5;
      const Shape mshape{B, Sk};
      const auto g = CheckSparseAttentionInputs("SparseAttention", {B, h, Sq, E}, {B, hkv, Sk, E}, {B, hkv, Sk, Ev},
                                                {B, h, Sq, L}, &mshape);
      const auto m = CheckSparseAttentionInputs("SparseAttention", {B, h, Sq, E}, {B, h, Sk, E}, {B, h, Sk, Ev},
                                                {B, h, Sq, L}, &mshape);
      EXPECT_EQ(g.Hkv, hkv);
      EXPECT_EQ(g.Group(), h / hkv);
      const auto p = ResolveSparseAttentionParams("SparseAttention", 0.0, 10.0, causal, E);
      const auto idx = RandomIndices(g, 50);
      auto bias = RandomBias(B, Sk, 51);
      const auto q = RandomNormal(B * h * Sq * E, 52), k = RandomNormal(B * hkv * Sk * E, 53);
      const auto v = RandomNormal(B * hkv * Sk * Ev, 54), dy = RandomNormal(B * h * Sq * Ev, 55);
      const auto kr = RepeatHeads(k, B, h, hkv, Sk * E), vr = RepeatHeads(v, B, h, hkv, Sk * Ev);
      std::vector<float> yg(dy.size()), pg(idx.size()), ym(dy.size()), pm(idx.size());
      SparseAttentionForward<float>(g, p, q.data(), k.data(), v.data(), idx.data(), bias.data(), yg.data(), pg.data(),
                                    ThreadParallel(2));
      SparseAttentionForward<float>(m, p, q.data(), kr.data(), vr.data(), idx.data(), bias.data(), ym.data(),
                                    pm.data(), Serial());
      const std::string what = "H=" + std::to_string(h) + " Hkv=" + std::to_string(hkv) + " causal=" + std::to_string(causal);
      EXPECT_EQ(yg, ym) << what;  // the same dot products in the same order: bit-identical
      EXPECT_EQ(pg, pm) << what;
      std::vector<float> dqg(q.size()), dkg(k.size()), dvg(v.size()), dqm(q.size()), dkm(kr.size()), dvm(vr.size());
      SparseAttentionBackward<float>(g, p, dy.data(), q.data(), k.data(), v.data(), idx.data(), pg.data(), dqg.data(),
                                     dkg.data(), dvg.data(), ThreadParallel(2));
      SparseAttentionBackward<float>(m, p, dy.data(), q.data(), kr.data(), vr.data(), idx.data(), pm.data(),
                                     dqm.data(), dkm.data(), dvm.data(), Serial());
      EXPECT_EQ(dqg, dqm) << what;
      // dK/dV of a kv head = the sum of the repeated heads' dK/dV over its group.
      std::vector<double> dks(k.size(), 0.0), dvs(v.size(), 0.0);
      for (int64_t bh = 0; bh < B * h; ++bh) {
        const int64_t src = KvHeadOf(bh, h, hkv);
        for (int64_t x = 0; x < Sk * E; ++x) dks[src * Sk * E + x] += dkm[bh * Sk * E + x];
        for (int64_t x = 0; x < Sk * Ev; ++x) dvs[src * Sk * Ev + x] += dvm[bh * Sk * Ev + x];
      }
      EXPECT_LT(RelMaxError(ToDouble(dkg), dks), 1e-5) << what;
      EXPECT_LT(RelMaxError(ToDouble(dvg), dvs), 1e-5) << what;
    }
  }
}

TEST(SparseAttentionGroupedHeads, GradientsMatchFiniteDifferences) {
  for (const auto& [h, hkv] : std::vector<std::pair<int64_t, int64_t>>{{4, 2}, {3, 1}}) {
    for (bool causal : {true, false}) {
      const int64_t B = 1, Sq = 6, Sk = 7, E = 4, Ev = 3, L = 4;
      auto d = CheckSparseAttentionInputs("SparseAttentionGrad", {B, h, Sq, E}, {B, hkv, Sk, E}, {B, hkv, Sk, Ev},
                                          {B, h, Sq, L}, nullptr);
      const auto p = ResolveSparseAttentionParams("SparseAttentionGrad", 1.0, 1.5, causal, E);
      const auto idx = RandomIndices(d, 60);
      auto sparse = [&](const std::vector<double>& q, const std::vector<double>& k, const std::vector<double>& v) {
        std::vector<double> y, probs;
        SparseReference(d, p, q, k, v, idx, nullptr, y, probs);
        return y;
      };
      ExpectGradientsClose(CheckGradients(d, p, idx, nullptr, sparse, 61),
                           "H=" + std::to_string(h) + " Hkv=" + std::to_string(hkv) + " causal=" + std::to_string(causal));
    }
  }
}

TEST(SparseAttentionGroupedHeads, RejectHeadCountsThatDoNotDivide) {
  const auto err = [](const Shape& k, const Shape& v) {
    try {
      CheckSparseAttentionInputs("SparseAttention", {1, 6, 4, 8}, k, v, {1, 6, 4, 2}, nullptr);
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_EQ(err({1, 4, 4, 8}, {1, 4, 4, 8}),
            "SparseAttention: input 'K' has 4 heads; the 6 query heads must be a whole multiple of it (H % Hkv == 0)");
  EXPECT_NE(err({1, 3, 4, 8}, {1, 2, 4, 8}).find("input 'V' must have shape [B, Hkv, Sk, Ev] = [1, 3, 4, ?]"),
            std::string::npos);
  EXPECT_EQ(err({1, 3, 4, 8}, {1, 3, 4, 8}), "");
}

// ---------------------------------------------------------------- validation helpers

std::string ErrorOf(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}

TEST(SparseAttentionValidation, NamesOpInputAndExpectedShape) {
  const std::string k_err = ErrorOf([] {
    CheckSparseAttentionInputs("SparseAttention", {2, 4, 8, 16}, {2, 4, 8, 12}, {2, 4, 8, 16}, {2, 4, 8, 2}, nullptr);
  });
  EXPECT_EQ(k_err, "SparseAttention: input 'K' must have shape [B, Hkv, Sk, E] = [2, ?, ?, 16]; got [2, 4, 8, 12]");
  EXPECT_NE(ErrorOf([] {
              CheckSparseAttentionInputs("SparseAttention", {2, 4, 8, 16}, {2, 4, 8, 16}, {2, 4, 9, 16}, {2, 4, 8, 2},
                                         nullptr);
            }).find("input 'V' must have shape [B, Hkv, Sk, Ev] = [2, 4, 8, ?]"),
            std::string::npos);
  EXPECT_NE(ErrorOf([] {
              CheckSparseAttentionInputs("SparseAttentionGrad", {2, 4, 8, 16}, {2, 4, 8, 16}, {2, 4, 8, 16}, {2, 4, 8},
                                         nullptr);
            }).find("SparseAttentionGrad: input 'indices' must have shape [B, H, Sq, L]"),
            std::string::npos);
  EXPECT_NE(ErrorOf([] { CheckSparseAttentionInputs("SparseAttention", {2, 8, 16}, {2, 8, 16}, {2, 8, 16}, {2, 8, 2}, nullptr); })
                .find("input 'Q' must have shape [B, H, Sq, E]"),
            std::string::npos);
  const Shape bad_mask{2, 7};
  EXPECT_NE(ErrorOf([&] {
              CheckSparseAttentionInputs("SparseAttention", {2, 4, 8, 16}, {2, 4, 8, 16}, {2, 4, 8, 16}, {2, 4, 8, 2},
                                         &bad_mask);
            }).find("'key_padding_mask' must have shape [B, Sk] = [2, 8]"),
            std::string::npos);
  const auto d = CheckSparseAttentionInputs("SparseAttentionGrad", {1, 1, 3, 4}, {1, 1, 5, 4}, {1, 1, 5, 2},
                                            {1, 1, 3, 2}, nullptr);
  EXPECT_NE(ErrorOf([&] { CheckSparseAttentionGradInputs(d, {1, 1, 3, 4}, {1, 1, 3, 2}); }).find("input 'dY'"),
            std::string::npos);
  EXPECT_NE(ErrorOf([&] { CheckSparseAttentionGradInputs(d, {1, 1, 3, 2}, {1, 1, 3, 5}); }).find("input 'P'"),
            std::string::npos);
  EXPECT_EQ(ErrorOf([&] { CheckSparseAttentionGradInputs(d, {1, 1, 3, 2}, {1, 1, 3, 2}); }), "");
}

TEST(SparseAttentionValidation, RejectsBadAttributesAndIndices) {
  EXPECT_NE(ErrorOf([] { ResolveSparseAttentionParams("SparseAttention", 0.0, -1.0, true, 8); })
                .find("SparseAttention: attribute 'clamp'"),
            std::string::npos);
  EXPECT_THROW(ResolveSparseAttentionParams("SparseAttention", INFINITY, 1.0, true, 8), std::invalid_argument);
  EXPECT_DOUBLE_EQ(ResolveSparseAttentionParams("SparseAttention", 0.0, 0.0, true, 64).scale, 0.125);
  EXPECT_DOUBLE_EQ(ResolveSparseAttentionParams("SparseAttention", 0.3, 0.0, true, 64).scale, 0.3);
  const auto d = CheckSparseAttentionInputs("SparseAttention", {1, 2, 2, 4}, {1, 2, 3, 4}, {1, 2, 3, 4}, {1, 2, 2, 2},
                                            nullptr);
  std::vector<int32_t> idx = {0, 1, 2, -1, 0, 0, 2, 2};
  EXPECT_EQ(ErrorOf([&] { CheckSparseAttentionIndices("SparseAttention", d, idx.data()); }), "");
  idx[6] = 3;
  EXPECT_EQ(ErrorOf([&] { CheckSparseAttentionIndices("SparseAttention", d, idx.data()); }),
            "SparseAttention: input 'indices' holds 3 at [0, 1, 1, 0]; entries must be -1 (empty) or in [0, Sk = 3)");
  idx[6] = -2;
  EXPECT_NE(ErrorOf([&] { CheckSparseAttentionIndices("SparseAttention", d, idx.data()); }), "");
}

}  // namespace
}  // namespace spt::cpu
