// Plain double-precision references for the routed FFN tests: a per-token routed FFN that follows the
// formulas in cpu/routed_ffn.h literally, and a dense FFN. Row-major, MatMul layout (y = x·W + b).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "cpu/routed_ffn.h"

namespace spt::test {

using Vec = std::vector<double>;

// All inputs of the op in double; empty vectors are absent optional inputs.
struct FfnProblem {
  cpu::RoutedFfnConfig cfg;
  Vec x, w1, b1, w2, b2, wr, br, w3, a1, lb1, a2, lb2, a3, lb3;
};

inline double RefAct(cpu::FfnActivation act, double a) {
  switch (act) {
    case cpu::FfnActivation::kRelu:
    case cpu::FfnActivation::kReGlu: return a > 0 ? a : 0;
    case cpu::FfnActivation::kRelu2: return a > 0 ? a * a : 0;
    case cpu::FfnActivation::kGelu:
    case cpu::FfnActivation::kGeGlu: return 0.5 * a * (1 + std::erf(a / std::sqrt(2.0)));
    case cpu::FfnActivation::kGeluTanh:
    case cpu::FfnActivation::kGeGluTanh:
      return 0.5 * a * (1 + std::tanh(std::sqrt(2.0 / M_PI) * (a + 0.044715 * a * a * a)));
    case cpu::FfnActivation::kSilu:
    case cpu::FfnActivation::kSwiGlu: return a / (1 + std::exp(-a));
  }
  return 0;
}

inline Vec RefProbs(const FfnProblem& pr) {
  const auto& c = pr.cfg;
  Vec p(static_cast<std::size_t>(c.tokens * c.n_blocks));
  for (int64_t t = 0; t < c.tokens; ++t)
    for (int64_t i = 0; i < c.n_blocks; ++i) {
      double z = pr.br.empty() ? 0 : pr.br[i];
      for (int64_t q = 0; q < c.d_model; ++q) z += pr.x[t * c.d_model + q] * pr.wr[q * c.n_blocks + i];
      p[t * c.n_blocks + i] = 1 / (1 + std::exp(-z));
    }
  return p;
}

// Top-k by p descending, ties to the lower block id (stable sort).
inline std::vector<int32_t> RefSelect(const FfnProblem& pr, const Vec& p) {
  const auto& c = pr.cfg;
  std::vector<int32_t> sel;
  for (int64_t t = 0; t < c.tokens; ++t) {
    std::vector<int32_t> ids(static_cast<std::size_t>(c.n_blocks));
    for (int64_t i = 0; i < c.n_blocks; ++i) ids[i] = static_cast<int32_t>(i);
    std::stable_sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) { return p[t * c.n_blocks + a] > p[t * c.n_blocks + b]; });
    sel.insert(sel.end(), ids.begin(), ids.begin() + c.top_k);
  }
  return sel;
}

// Routed forward; `selection` fixes the routing (so that finite differences stay on one piece).
inline Vec RefRoutedForward(const FfnProblem& pr, const std::vector<int32_t>& selection) {
  const auto& c = pr.cfg;
  const int64_t d = c.d_model, F = c.d_ff, bs = c.BlockSize(), nb = c.n_blocks;
  const Vec p = RefProbs(pr);
  Vec y(static_cast<std::size_t>(c.tokens * d), 0.0);
  for (int64_t t = 0; t < c.tokens; ++t) {
    const double* x = &pr.x[t * d];
    double* yt = &y[t * d];
    for (int64_t q = 0; q < d; ++q) yt[q] = pr.b2.empty() ? 0 : pr.b2[q];
    Vec xa1(static_cast<std::size_t>(c.rank1), 0.0), xa3(static_cast<std::size_t>(c.rank3), 0.0);
    for (int64_t r = 0; r < c.rank1; ++r)
      for (int64_t q = 0; q < d; ++q) xa1[r] += x[q] * pr.a1[q * c.rank1 + r];
    for (int64_t r = 0; r < c.rank3; ++r)
      for (int64_t q = 0; q < d; ++q) xa3[r] += x[q] * pr.a3[q * c.rank3 + r];
    for (int64_t s = 0; s < c.top_k; ++s) {
      const int64_t i = selection[t * c.top_k + s];
      const double g = 2 * p[t * nb + i];
      double gin = 1, gob = 1, gol = 1;
      if (c.gate == cpu::FfnGate::kFrozenOnly) gin = gob = g;
      if (c.gate == cpu::FfnGate::kAll) gob = gol = g;
      Vec h(static_cast<std::size_t>(bs));
      for (int64_t cc = 0; cc < bs; ++cc) {
        const int64_t col = i * bs + cc;
        double u = pr.b1.empty() ? 0 : pr.b1[col], l = 0;
        for (int64_t q = 0; q < d; ++q) u += x[q] * pr.w1[q * F + col];
        for (int64_t r = 0; r < c.rank1; ++r) l += xa1[r] * pr.lb1[r * F + col];
        const double a = gin * u + l;
        if (c.Gated()) {
          double u3 = 0, l3 = 0;
          for (int64_t q = 0; q < d; ++q) u3 += x[q] * pr.w3[q * F + col];
          for (int64_t r = 0; r < c.rank3; ++r) l3 += xa3[r] * pr.lb3[r * F + col];
          h[cc] = RefAct(c.activation, a) * (gin * u3 + l3);
        } else {
          h[cc] = RefAct(c.activation, a);
        }
      }
      Vec ha2(static_cast<std::size_t>(c.rank2), 0.0);
      for (int64_t r = 0; r < c.rank2; ++r)
        for (int64_t cc = 0; cc < bs; ++cc) ha2[r] += h[cc] * pr.a2[(i * bs + cc) * c.rank2 + r];
      for (int64_t q = 0; q < d; ++q) {
        double base = 0, lora = 0;
        for (int64_t cc = 0; cc < bs; ++cc) base += h[cc] * pr.w2[(i * bs + cc) * d + q];
        for (int64_t r = 0; r < c.rank2; ++r) lora += ha2[r] * pr.lb2[r * d + q];
        yt[q] += gob * base + gol * lora;
      }
    }
  }
  return y;
}

// Dense FFN with LoRA: y = b2 + act(x·W1 + b1 + x·A1·B1)·W2 + (h·A2)·B2 (SwiGLU: h = silu(gate)·up).
inline Vec RefDenseForward(const FfnProblem& pr) {
  const auto& c = pr.cfg;
  const int64_t d = c.d_model, F = c.d_ff;
  Vec y(static_cast<std::size_t>(c.tokens * d), 0.0);
  for (int64_t t = 0; t < c.tokens; ++t) {
    const double* x = &pr.x[t * d];
    Vec h(static_cast<std::size_t>(F));
    for (int64_t f = 0; f < F; ++f) {
      double a = pr.b1.empty() ? 0 : pr.b1[f], up = 0;
      for (int64_t q = 0; q < d; ++q) a += x[q] * pr.w1[q * F + f];
      for (int64_t r = 0; r < c.rank1; ++r) {
        double xa = 0;
        for (int64_t q = 0; q < d; ++q) xa += x[q] * pr.a1[q * c.rank1 + r];
        a += xa * pr.lb1[r * F + f];
      }
      if (c.Gated()) {
        for (int64_t q = 0; q < d; ++q) up += x[q] * pr.w3[q * F + f];
        for (int64_t r = 0; r < c.rank3; ++r) {
          double xa = 0;
          for (int64_t q = 0; q < d; ++q) xa += x[q] * pr.a3[q * c.rank3 + r];
          up += xa * pr.lb3[r * F + f];
        }
        h[f] = RefAct(c.activation, a) * up;
      } else {
        h[f] = RefAct(c.activation, a);
      }
    }
    for (int64_t q = 0; q < d; ++q) {
      double acc = pr.b2.empty() ? 0 : pr.b2[q];
      for (int64_t f = 0; f < F; ++f) acc += h[f] * pr.w2[f * d + q];
      for (int64_t r = 0; r < c.rank2; ++r) {
        double ha = 0;
        for (int64_t f = 0; f < F; ++f) ha += h[f] * pr.a2[f * c.rank2 + r];
        acc += ha * pr.lb2[r * d + q];
      }
      y[t * d + q] = acc;
    }
  }
  return y;
}

// Fills a problem with N(0, scale) values; inputs not wanted stay empty.
struct ProblemOptions {
  bool biases = true;
  bool router_bias = true;
  bool lora = true;
  double weight_scale = 0.5;
};

inline FfnProblem MakeProblem(const cpu::RoutedFfnConfig& cfg_in, const ProblemOptions& opt, uint32_t seed) {
  FfnProblem pr;
  pr.cfg = cfg_in;
  auto& c = pr.cfg;
  if (!opt.lora) c.rank1 = c.rank2 = c.rank3 = 0;
  if (!c.Gated()) c.rank3 = 0;
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  // Values are rounded to float so that the fp32 kernel and the fp64 reference see the same inputs.
  auto fill = [&](int64_t n, double scale) {
    Vec v(static_cast<std::size_t>(n));
    for (auto& e : v) e = static_cast<double>(static_cast<float>(scale * normal(rng)));
    return v;
  };
  const int64_t d = c.d_model, F = c.d_ff, nb = c.n_blocks;
  const double s = opt.weight_scale;
  pr.x = fill(c.tokens * d, 1.0);
  pr.w1 = fill(d * F, s);
  pr.w2 = fill(F * d, s);
  pr.wr = fill(d * nb, 1.0);
  if (opt.biases) {
    pr.b1 = fill(F, s);
    pr.b2 = fill(d, s);
  }
  if (opt.router_bias) pr.br = fill(nb, 1.0);
  if (c.Gated()) pr.w3 = fill(d * F, s);
  if (c.rank1) {
    pr.a1 = fill(d * c.rank1, s);
    pr.lb1 = fill(c.rank1 * F, s);
  }
  if (c.rank2) {
    pr.a2 = fill(F * c.rank2, s);
    pr.lb2 = fill(c.rank2 * d, s);
  }
  if (c.rank3) {
    pr.a3 = fill(d * c.rank3, s);
    pr.lb3 = fill(c.rank3 * F, s);
  }
  return pr;
}

inline std::vector<float> ToFloat(const Vec& v) { return std::vector<float>(v.begin(), v.end()); }

// ‖a − b‖ / max(‖b‖, tiny).
template <typename A, typename B>
double RelativeError(const A& a, const B& b) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < b.size(); ++i) {
    const double diff = static_cast<double>(a[i]) - static_cast<double>(b[i]);
    num += diff * diff;
    den += static_cast<double>(b[i]) * static_cast<double>(b[i]);
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-30);
}

}  // namespace spt::test
