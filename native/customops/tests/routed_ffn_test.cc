// Routed FFN kernels against the fp64 references in ffn_test_util.h: dense equivalence, per-token
// routing, finite-difference gradients, and the edge cases (empty blocks, one token, top_k = 1, ties).
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "cpu/parallel.h"
#include "cpu/routed_ffn.h"
#include "tests/ffn_test_util.h"
#include "tests/kernel_cases.h"

namespace spt::test {
namespace {

using cpu::FfnActivation;
using cpu::FfnGate;

const char* ActName(FfnActivation a) {
  switch (a) {
    case FfnActivation::kRelu: return "relu";
    case FfnActivation::kGelu: return "gelu";
    case FfnActivation::kGeluTanh: return "gelu_tanh";
    case FfnActivation::kSilu: return "silu";
    case FfnActivation::kSwiGlu: return "swiglu";
    case FfnActivation::kGeGlu: return "geglu";
    case FfnActivation::kGeGluTanh: return "geglu_tanh";
    case FfnActivation::kReGlu: return "reglu";
    case FfnActivation::kRelu2: return "relu2";
  }
  return "?";
}
const char* GateName(FfnGate g) {
  switch (g) {
    case FfnGate::kFrozenOnly: return "frozen_only";
    case FfnGate::kAll: return "all";
    case FfnGate::kNone: return "none";
  }
  return "?";
}

constexpr FfnActivation kActs[] = {FfnActivation::kRelu, FfnActivation::kGelu, FfnActivation::kGeluTanh,
                                   FfnActivation::kSilu, FfnActivation::kSwiGlu, FfnActivation::kGeGlu,
                                   FfnActivation::kGeGluTanh, FfnActivation::kReGlu, FfnActivation::kRelu2};
constexpr FfnGate kGates[] = {FfnGate::kFrozenOnly, FfnGate::kAll, FfnGate::kNone};

cpu::RoutedFfnConfig SmallConfig(FfnActivation act, FfnGate gate, int64_t tokens = 6, int64_t top_k = 2) {
  cpu::RoutedFfnConfig c;
  c.tokens = tokens;
  c.d_model = 8;
  c.d_ff = 16;
  c.n_blocks = 4;
  c.top_k = top_k;
  c.rank1 = 3;
  c.rank2 = 2;
  c.rank3 = 2;
  c.activation = act;
  c.gate = gate;
  c.chunk_rows = 2;  // several tasks per block
  return c;
}

ProblemOptions Options(bool biases, bool lora) {
  ProblemOptions o;
  o.biases = o.router_bias = biases;
  o.lora = lora;
  return o;
}

const float* Ptr(const std::vector<float>& v) { return v.empty() ? nullptr : v.data(); }

// The fp32 kernel run on a problem's inputs.
struct KernelRun {
  explicit KernelRun(const FfnProblem& pr)
      : cfg(pr.cfg), x(ToFloat(pr.x)), w1(ToFloat(pr.w1)), b1(ToFloat(pr.b1)), w2(ToFloat(pr.w2)), b2(ToFloat(pr.b2)),
        wr(ToFloat(pr.wr)), br(ToFloat(pr.br)), w3(ToFloat(pr.w3)), a1(ToFloat(pr.a1)), lb1(ToFloat(pr.lb1)),
        a2(ToFloat(pr.a2)), lb2(ToFloat(pr.lb2)), a3(ToFloat(pr.a3)), lb3(ToFloat(pr.lb3)) {
    w = {Ptr(w1), Ptr(b1), Ptr(w2), Ptr(b2), Ptr(wr), Ptr(br), Ptr(w3),
         Ptr(a1), Ptr(lb1), Ptr(a2), Ptr(lb2), Ptr(a3), Ptr(lb3)};
  }

  void Forward(const cpu::Parallel& par = cpu::Serial(), bool save = true) {
    y.assign(static_cast<std::size_t>(cfg.tokens * cfg.d_model), -1.0f);
    probs.assign(static_cast<std::size_t>(cfg.tokens * cfg.n_blocks), -1.0f);
    sel.assign(static_cast<std::size_t>(cfg.Rows()), -1);
    pre.assign(static_cast<std::size_t>(cfg.Rows() * cfg.PreWidth()), -1.0f);
    cpu::RoutedFfnState st;
    if (save) st = {probs.data(), sel.data(), pre.data()};
    std::vector<unsigned char> ws(cpu::RoutedFfnForwardWorkspaceBytes(cfg, st), 0xff);  // NaN garbage
    cpu::RoutedFfnForward(cfg, w, x.data(), y.data(), st, ws.data(), par);
  }

  // All grads that apply (base-weight grads included, i.e. frozen_base = 0).
  struct Grads {
    std::vector<float> dx, dwr, dbr, dw1, db1, dw2, db2, dw3, da1, dlb1, da2, dlb2, da3, dlb3;
  };
  Grads Backward(const std::vector<float>& dy, const cpu::Parallel& par = cpu::Serial()) {
    Grads g;
    auto alloc = [](std::vector<float>& v, std::size_t n, bool on) -> float* {
      if (!on) return nullptr;
      v.assign(n, 12345.0f);
      return v.data();
    };
    const std::size_t d = cfg.d_model, F = cfg.d_ff, nb = cfg.n_blocks;
    cpu::RoutedFfnGrads out;
    out.dx = alloc(g.dx, x.size(), true);
    out.dwr = alloc(g.dwr, d * nb, true);
    out.dbr = alloc(g.dbr, nb, !br.empty());
    out.dw1 = alloc(g.dw1, d * F, true);
    out.db1 = alloc(g.db1, F, !b1.empty());
    out.dw2 = alloc(g.dw2, F * d, true);
    out.db2 = alloc(g.db2, d, !b2.empty());
    out.dw3 = alloc(g.dw3, d * F, cfg.Gated());
    out.da1 = alloc(g.da1, a1.size(), cfg.rank1 > 0);
    out.db1_lora = alloc(g.dlb1, lb1.size(), cfg.rank1 > 0);
    out.da2 = alloc(g.da2, a2.size(), cfg.rank2 > 0);
    out.db2_lora = alloc(g.dlb2, lb2.size(), cfg.rank2 > 0);
    out.da3 = alloc(g.da3, a3.size(), cfg.rank3 > 0);
    out.db3_lora = alloc(g.dlb3, lb3.size(), cfg.rank3 > 0);
    std::vector<unsigned char> ws(cpu::RoutedFfnBackwardWorkspaceBytes(cfg, out), 0xff);
    cpu::RoutedFfnBackward(cfg, w, x.data(), dy.data(), {probs.data(), sel.data(), pre.data()}, out, ws.data(), par);
    return g;
  }

  cpu::RoutedFfnConfig cfg;
  std::vector<float> x, w1, b1, w2, b2, wr, br, w3, a1, lb1, a2, lb2, a3, lb3;
  cpu::RoutedFfnWeights w;
  std::vector<float> y, probs, pre;
  std::vector<int32_t> sel;
};

Vec RandomVec(std::size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Vec v(n);
  for (auto& e : v) e = static_cast<double>(normal(rng));
  return v;
}

// ---------------------------------------------------------------------------------------------------
// Dense equivalence: top_k = n_blocks with gate none is the dense FFN.
class DenseEquivalence : public ::testing::TestWithParam<std::tuple<FfnActivation, bool>> {};

TEST_P(DenseEquivalence, AllBlocksActiveMatchesDenseFfn) {
  const auto [act, lora] = GetParam();
  cpu::RoutedFfnConfig cfg = SmallConfig(act, FfnGate::kNone, 7, 4);
  const FfnProblem pr = MakeProblem(cfg, Options(true, lora), 11);
  KernelRun run(pr);
  run.Forward(cpu::ThreadParallel(2));
  const Vec dense = RefDenseForward(pr);
  EXPECT_LT(RelativeError(run.y, dense), 1e-5);
  // The routed reference agrees with the dense one too (checks the reference itself).
  EXPECT_LT(RelativeError(RefRoutedForward(pr, RefSelect(pr, RefProbs(pr))), dense), 1e-12);
}

INSTANTIATE_TEST_SUITE_P(Activations, DenseEquivalence,
                         ::testing::Combine(::testing::ValuesIn(kActs), ::testing::Bool()),
                         [](const auto& info) {
                           return std::string(ActName(std::get<0>(info.param))) +
                                  (std::get<1>(info.param) ? "_lora" : "_plain");
                         });

// ---------------------------------------------------------------------------------------------------
// Partial routing against the per-token reference, every gate, with/without LoRA and biases.
class PartialRouting : public ::testing::TestWithParam<std::tuple<FfnActivation, FfnGate, bool, bool>> {};

TEST_P(PartialRouting, MatchesPerTokenReference) {
  const auto [act, gate, lora, biases] = GetParam();
  const FfnProblem pr = MakeProblem(SmallConfig(act, gate, 9, 2), Options(biases, lora), 23);
  KernelRun run(pr);
  run.Forward(cpu::ThreadParallel(2));
  const Vec p = RefProbs(pr);
  const std::vector<int32_t> sel = RefSelect(pr, p);
  EXPECT_EQ(run.sel, sel);
  EXPECT_LT(RelativeError(run.probs, p), 1e-6);
  EXPECT_LT(RelativeError(run.y, RefRoutedForward(pr, sel)), 1e-5);

  // Saved U: grouped rows ordered by (block, token), u = x·W1_i + b1_i (and x·W3_i for SwiGLU).
  const auto& c = pr.cfg;
  std::vector<int32_t> offsets(c.n_blocks + 1), perm(c.Rows()), pos(c.Rows());
  cpu::RoutedFfnGroup(run.sel.data(), c.tokens, c.top_k, c.n_blocks, offsets.data(), perm.data(), pos.data());
  Vec u_ref;
  for (int64_t b = 0; b < c.n_blocks; ++b)
    for (int64_t j = offsets[b]; j < offsets[b + 1]; ++j) {
      const int64_t t = perm[j] / c.top_k;
      if (j > offsets[b]) {
        EXPECT_LT(perm[j - 1] / c.top_k, t);
      }
      for (int half = 0; half < (c.Gated() ? 2 : 1); ++half)
        for (int64_t cc = 0; cc < c.BlockSize(); ++cc) {
          const int64_t col = b * c.BlockSize() + cc;
          const Vec& W = half ? pr.w3 : pr.w1;
          double u = (!half && !pr.b1.empty()) ? pr.b1[col] : 0.0;
          for (int64_t q = 0; q < c.d_model; ++q) u += pr.x[t * c.d_model + q] * W[q * c.d_ff + col];
          u_ref.push_back(u);
        }
    }
  EXPECT_LT(RelativeError(run.pre, u_ref), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Routing, PartialRouting,
                         ::testing::Combine(::testing::ValuesIn(kActs), ::testing::ValuesIn(kGates), ::testing::Bool(),
                                            ::testing::Bool()),
                         [](const auto& info) {
                           return std::string(ActName(std::get<0>(info.param))) + "_" + GateName(std::get<1>(info.param)) +
                                  (std::get<2>(info.param) ? "_lora" : "_plain") +
                                  (std::get<3>(info.param) ? "_bias" : "_nobias");
                         });

// ---------------------------------------------------------------------------------------------------
// Gradients against central finite differences of the fp64 reference (routing held fixed).
struct GradCheck {
  const char* name;
  Vec FfnProblem::*param;
  std::vector<float> KernelRun::Grads::*grad;
};
const GradCheck kGradChecks[] = {
    {"dX", &FfnProblem::x, &KernelRun::Grads::dx},      {"dWr", &FfnProblem::wr, &KernelRun::Grads::dwr},
    {"dbr", &FfnProblem::br, &KernelRun::Grads::dbr},   {"dW1", &FfnProblem::w1, &KernelRun::Grads::dw1},
    {"db1", &FfnProblem::b1, &KernelRun::Grads::db1},   {"dW2", &FfnProblem::w2, &KernelRun::Grads::dw2},
    {"db2", &FfnProblem::b2, &KernelRun::Grads::db2},   {"dW3", &FfnProblem::w3, &KernelRun::Grads::dw3},
    {"dA1", &FfnProblem::a1, &KernelRun::Grads::da1},   {"dB1", &FfnProblem::lb1, &KernelRun::Grads::dlb1},
    {"dA2", &FfnProblem::a2, &KernelRun::Grads::da2},   {"dB2", &FfnProblem::lb2, &KernelRun::Grads::dlb2},
    {"dA3", &FfnProblem::a3, &KernelRun::Grads::da3},   {"dB3", &FfnProblem::lb3, &KernelRun::Grads::dlb3},
};

void ExpectGradsMatchFiniteDifferences(const FfnProblem& pr, const cpu::Parallel& par, uint32_t seed) {
  KernelRun run(pr);
  run.Forward(par);
  const std::vector<int32_t> sel = run.sel;
  ASSERT_EQ(sel, RefSelect(pr, RefProbs(pr)));
  const Vec dy = RandomVec(run.y.size(), seed);
  const KernelRun::Grads g = run.Backward(ToFloat(dy), par);
  auto loss = [&](const FfnProblem& p) {
    const Vec y = RefRoutedForward(p, sel);
    double l = 0;
    for (std::size_t i = 0; i < y.size(); ++i) l += y[i] * dy[i];
    return l;
  };
  int checked = 0;
  for (const GradCheck& check : kGradChecks) {
    const Vec& param = pr.*(check.param);
    if (param.empty()) continue;
    const std::vector<float>& grad = g.*(check.grad);
    ASSERT_EQ(grad.size(), param.size()) << check.name;
    Vec fd(param.size());
    FfnProblem probe = pr;
    const double h = 1e-6;
    for (std::size_t i = 0; i < param.size(); ++i) {
      Vec& v = probe.*(check.param);
      const double keep = v[i];
      v[i] = keep + h;
      const double up = loss(probe);
      v[i] = keep - h;
      const double down = loss(probe);
      v[i] = keep;
      fd[i] = (up - down) / (2 * h);
    }
    if (pr.cfg.gate == FfnGate::kNone && (std::string(check.name) == "dWr" || std::string(check.name) == "dbr")) {
      for (float e : grad) EXPECT_EQ(e, 0.0f) << check.name << ": gate 'none' gives the router no gradient";
    }
    EXPECT_LT(RelativeError(grad, fd), 1e-3) << check.name;
    ++checked;
  }
  EXPECT_GE(checked, 3);
}

class GradientCheck : public ::testing::TestWithParam<std::tuple<FfnActivation, FfnGate, bool>> {};

TEST_P(GradientCheck, MatchesCentralDifferences) {
  const auto [act, gate, lora] = GetParam();
  const FfnProblem pr = MakeProblem(SmallConfig(act, gate, 6, 2), Options(lora, lora), 37);
  ExpectGradsMatchFiniteDifferences(pr, cpu::ThreadParallel(2), 41);
}

INSTANTIATE_TEST_SUITE_P(Grads, GradientCheck,
                         ::testing::Combine(::testing::ValuesIn(kActs), ::testing::ValuesIn(kGates), ::testing::Bool()),
                         [](const auto& info) {
                           return std::string(ActName(std::get<0>(info.param))) + "_" + GateName(std::get<1>(info.param)) +
                                  (std::get<2>(info.param) ? "_lora_bias" : "_plain");
                         });

// ---------------------------------------------------------------------------------------------------
// The shared case table (also run by the GPU check): forward against the per-token reference and every
// gradient against central differences.
TEST(RoutedFfnCases, SharedCaseTableMatchesReferences) {
  for (const FfnCase& fc : kFfnCases) {
    cpu::RoutedFfnConfig cfg;
    cfg.tokens = fc.tokens;
    cfg.d_model = fc.d_model;
    cfg.d_ff = fc.d_ff;
    cfg.n_blocks = fc.n_blocks;
    cfg.top_k = fc.top_k;
    cfg.rank1 = fc.rank1;
    cfg.rank2 = fc.rank2;
    cfg.rank3 = fc.rank3;
    cfg.activation = kActs[fc.activation];
    cfg.gate = kGates[fc.gate];
    ASSERT_EQ(cpu::ValidateRoutedFfnConfig(cfg), "");
    const FfnProblem pr = MakeProblem(cfg, Options(fc.biases, fc.rank1 + fc.rank2 + fc.rank3 > 0), 53);
    KernelRun run(pr);
    run.Forward(cpu::ThreadParallel(2));
    EXPECT_LT(RelativeError(run.y, RefRoutedForward(pr, RefSelect(pr, RefProbs(pr)))), 1e-5)
        << ActName(cfg.activation) << " " << GateName(cfg.gate) << " T=" << cfg.tokens;
    ExpectGradsMatchFiniteDifferences(pr, cpu::ThreadParallel(2), 59);
  }
}

// ---------------------------------------------------------------------------------------------------
// Edge cases.
TEST(RoutedFfnEdge, BlocksWithoutTokens) {
  for (FfnGate gate : kGates) {
    FfnProblem pr = MakeProblem(SmallConfig(FfnActivation::kGelu, gate, 5, 2), {}, 51);
    for (auto& v : pr.wr) v *= 0.05;
    pr.br = {3.0, -3.0, 3.5, -3.5};  // blocks 0 and 2 win for every token
    KernelRun run(pr);
    run.Forward();
    for (int64_t t = 0; t < pr.cfg.tokens; ++t) {
      EXPECT_EQ(run.sel[t * 2], 2);
      EXPECT_EQ(run.sel[t * 2 + 1], 0);
    }
    EXPECT_LT(RelativeError(run.y, RefRoutedForward(pr, RefSelect(pr, RefProbs(pr)))), 1e-5);
    ExpectGradsMatchFiniteDifferences(pr, cpu::ThreadParallel(2), 53);
    // Blocks 1 and 3 saw no token: their slices of the block-local grads are exactly zero.
    const KernelRun::Grads g = run.Backward(ToFloat(RandomVec(run.y.size(), 3)));
    const int64_t bs = pr.cfg.BlockSize();
    for (int64_t b : {1, 3})
      for (int64_t c = 0; c < bs; ++c) {
        EXPECT_EQ(g.db1[b * bs + c], 0.0f);
        for (int64_t r = 0; r < pr.cfg.rank2; ++r) EXPECT_EQ(g.da2[(b * bs + c) * pr.cfg.rank2 + r], 0.0f);
      }
  }
}

TEST(RoutedFfnEdge, SingleTokenTopOne) {
  for (FfnActivation act : kActs) {
    const FfnProblem pr = MakeProblem(SmallConfig(act, FfnGate::kFrozenOnly, 1, 1), {}, 61);
    KernelRun run(pr);
    run.Forward();
    EXPECT_LT(RelativeError(run.y, RefRoutedForward(pr, RefSelect(pr, RefProbs(pr)))), 1e-5) << ActName(act);
    ExpectGradsMatchFiniteDifferences(pr, cpu::Serial(), 67);
  }
}

TEST(RoutedFfnEdge, TopOneOfManyTokens) {
  const FfnProblem pr = MakeProblem(SmallConfig(FfnActivation::kSilu, FfnGate::kAll, 11, 1), {}, 71);
  ExpectGradsMatchFiniteDifferences(pr, cpu::ThreadParallel(2), 73);
}

TEST(RoutedFfnEdge, TiesGoToHigherProbabilityThenLowerBlock) {
  FfnProblem pr = MakeProblem(SmallConfig(FfnActivation::kRelu, FfnGate::kFrozenOnly, 4, 2), {}, 81);
  std::fill(pr.wr.begin(), pr.wr.end(), 0.0);
  pr.br = {0.25, 0.75, 0.75, 0.25};
  KernelRun run(pr);
  run.Forward(cpu::ThreadParallel(2));
  for (int64_t t = 0; t < 4; ++t) {
    EXPECT_EQ(run.sel[t * 2], 1);
    EXPECT_EQ(run.sel[t * 2 + 1], 2);
  }
  pr.br = {0.5, 0.5, 0.5, 0.5};
  KernelRun all_equal(pr);
  all_equal.Forward();
  for (int64_t t = 0; t < 4; ++t) {
    EXPECT_EQ(all_equal.sel[t * 2], 0);
    EXPECT_EQ(all_equal.sel[t * 2 + 1], 1);
  }
  EXPECT_LT(RelativeError(all_equal.y, RefRoutedForward(pr, all_equal.sel)), 1e-5);
}

TEST(RoutedFfnEdge, DeterministicAcrossThreadCountsAndInference) {
  const FfnProblem pr = MakeProblem(SmallConfig(FfnActivation::kSwiGlu, FfnGate::kFrozenOnly, 33, 2), {}, 91);
  KernelRun serial(pr), threaded(pr), inference(pr);
  serial.Forward(cpu::Serial());
  threaded.Forward(cpu::ThreadParallel(3));
  inference.Forward(cpu::ThreadParallel(2), /*save=*/false);
  EXPECT_EQ(0, std::memcmp(serial.y.data(), threaded.y.data(), serial.y.size() * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(serial.y.data(), inference.y.data(), serial.y.size() * sizeof(float)));
  const std::vector<float> dy = ToFloat(RandomVec(serial.y.size(), 5));
  const KernelRun::Grads a = serial.Backward(dy, cpu::Serial());
  const KernelRun::Grads b = threaded.Backward(dy, cpu::ThreadParallel(3));
  for (const GradCheck& check : kGradChecks) EXPECT_EQ(a.*(check.grad), b.*(check.grad)) << check.name;
}

TEST(RoutedFfnEdge, WholeBlockTasksMatchChunkedTasks) {
  FfnProblem pr = MakeProblem(SmallConfig(FfnActivation::kGeluTanh, FfnGate::kAll, 17, 2), {}, 95);
  KernelRun chunked(pr);
  pr.cfg.chunk_rows = 0;
  KernelRun whole(pr);
  chunked.Forward();
  whole.Forward();
  EXPECT_LT(RelativeError(chunked.y, whole.y), 1e-6);
  const std::vector<float> dy = ToFloat(RandomVec(whole.y.size(), 7));
  EXPECT_LT(RelativeError(chunked.Backward(dy).dx, whole.Backward(dy).dx), 1e-6);
}

TEST(RoutedFfnValidation, ConfigAndSelectionErrors) {
  cpu::RoutedFfnConfig c = SmallConfig(FfnActivation::kRelu, FfnGate::kNone);
  c.rank3 = 0;
  EXPECT_EQ(cpu::ValidateRoutedFfnConfig(c), "");
  c.d_ff = 18;
  EXPECT_NE(cpu::ValidateRoutedFfnConfig(c).find("divisible"), std::string::npos);
  c.d_ff = 16;
  c.top_k = 5;
  EXPECT_NE(cpu::ValidateRoutedFfnConfig(c).find("top_k"), std::string::npos);
  c.top_k = 0;
  EXPECT_NE(cpu::ValidateRoutedFfnConfig(c).find("top_k"), std::string::npos);
  c.top_k = 2;
  c.rank3 = 2;
  EXPECT_NE(cpu::ValidateRoutedFfnConfig(c).find("swiglu"), std::string::npos);  // rank3 without SwiGLU
  const std::vector<int32_t> dup = {0, 0}, range = {0, 4}, fine = {3, 1};
  EXPECT_NE(cpu::ValidateSelection(dup.data(), 1, 2, 4).find("twice"), std::string::npos);
  EXPECT_NE(cpu::ValidateSelection(range.data(), 1, 2, 4).find("outside"), std::string::npos);
  EXPECT_EQ(cpu::ValidateSelection(fine.data(), 1, 2, 4), "");
  cpu::FfnActivation act;
  cpu::FfnGate gate;
  EXPECT_FALSE(cpu::ParseFfnActivation("tanh", &act));
  EXPECT_TRUE(cpu::ParseFfnActivation("gelu_tanh", &act));
  EXPECT_FALSE(cpu::ParseFfnGate("sigmoid", &gate));
  EXPECT_TRUE(cpu::ParseFfnGate("2sigmoid_all", &gate));
}

}  // namespace
}  // namespace spt::test
