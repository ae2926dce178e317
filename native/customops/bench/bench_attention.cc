// Sparse attention (PQ-selected, L = S/8, causal) against dense attention built from the kernels' GEMMs, forward
// plus backward, at BERT-base (H = 12) and OPT-1.3B (H = 32) head shapes, E = 64, batch 1. Also PQEncode,
// PQTopK, and the PQ loss with its gradient on Q and K. Counters: saved_MiB = what the forward keeps for the
// backward beyond Q, K, V (dense: the [B, H, S, S] probabilities; sparse: indices + P, both [B, H, S, L]).
//
// Threads: both sides use ThreadParallel over (b, h) blocks with single-threaded GEMM calls inside
// (SetBlasThreads(1)), so neither competes with the other's pool.
// The CPU column is process CPU time (all threads): on a shared machine it is steadier than wall time.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <thread>
#include <vector>

#include "cpu/blas.h"
#include "cpu/parallel.h"
#include "cpu/pq.h"
#include "cpu/sparse_attention.h"

namespace {

using namespace spt::cpu;

constexpr int64_t kE = 64, kM = 8, kC = 16, kDc = 8;

int Threads() { return static_cast<int>(std::max(1u, std::thread::hardware_concurrency())); }

std::vector<float> Random(std::size_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.f, 1.f);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(gen);
  return v;
}

struct Problem {
  int64_t H, S, L;
  std::vector<float> q, k, v, dy, codebook;
  explicit Problem(const benchmark::State& state)
      : H(state.range(0)), S(state.range(1)), L(S / 8),
        q(Random(H * S * kE, 1)), k(Random(H * S * kE, 2)), v(Random(H * S * kE, 3)), dy(Random(H * S * kE, 4)),
        codebook(Random(kM * kC * kDc, 5)) {
    // K correlated with Q so the PQ selection is not pure noise.
    for (std::size_t i = 0; i < k.size(); ++i) k[i] = 0.7f * q[i] + 0.3f * k[i];
  }
};

// PQEncode(Q), PQEncode(K), PQTopK exact: the indices the sparse op would consume.
std::vector<int32_t> SelectKeys(const Problem& p, const Parallel& par, TopKMode mode = TopKMode::kExact) {
  const PQDims pd = CheckPQInputs("PQEncode", {1, p.H, p.S, kE}, {kM, kC, kDc});
  std::vector<int32_t> cq(p.H * p.S * kM), ck(p.H * p.S * kM), idx(p.H * p.S * p.L);
  PQEncode(pd, p.q.data(), p.codebook.data(), cq.data(), par);
  PQEncode(pd, p.k.data(), p.codebook.data(), ck.data(), par);
  PQTopKDims td = CheckPQTopKInputs({1, p.H, p.S, kM}, {1, p.H, p.S, kM}, nullptr);
  td.L = p.L;
  PQTopK(td, mode, true, cq.data(), ck.data(), nullptr, idx.data(), par);
  return idx;
}

void SetCounters(benchmark::State& state, const Problem& p, double saved_bytes) {
  state.counters["H"] = static_cast<double>(p.H);
  state.counters["S"] = static_cast<double>(p.S);
  state.counters["saved_MiB"] = saved_bytes / (1024.0 * 1024.0);
}

void BM_SparseAttentionFwdBwd(benchmark::State& state) {
  SetBlasThreads(1);
  const Problem p(state);
  const ThreadParallel par(Threads());
  const auto idx = SelectKeys(p, par);
  const auto d = CheckSparseAttentionInputs("SparseAttention", {1, p.H, p.S, kE}, {1, p.H, p.S, kE},
                                            {1, p.H, p.S, kE}, {1, p.H, p.S, p.L}, nullptr);
  const auto params = ResolveSparseAttentionParams("SparseAttention", 0.0, 10.0, true, kE);
  std::vector<float> y(p.q.size()), probs(p.H * p.S * p.L), dq(p.q.size()), dk(p.k.size()), dv(p.v.size());
  for (auto _ : state) {
    SparseAttentionForward<float>(d, params, p.q.data(), p.k.data(), p.v.data(), idx.data(), nullptr, y.data(),
                                  probs.data(), par);
    SparseAttentionBackward<float>(d, params, p.dy.data(), p.q.data(), p.k.data(), p.v.data(), idx.data(),
                                   probs.data(), dq.data(), dk.data(), dv.data(), par);
    benchmark::DoNotOptimize(dq.data());
  }
  SetCounters(state, p, static_cast<double>(idx.size() * sizeof(int32_t) + probs.size() * sizeof(float)));
}

// Dense causal attention, one (b, h) per task: P = softmax(mask(scale Q K^T)), Y = P V, then
// dP = dY V^T, dS = scale P (dP - rowsum(P dP)), dQ = dS K, dK = dS^T Q, dV = P^T dY.
void BM_DenseAttentionFwdBwd(benchmark::State& state) {
  SetBlasThreads(1);
  const Problem p(state);
  const ThreadParallel par(Threads());
  const int64_t S = p.S;
  const float scale = 1.f / std::sqrt(static_cast<float>(kE));
  std::vector<float> probs(p.H * S * S), y(p.q.size()), dq(p.q.size()), dk(p.k.size()), dv(p.v.size());
  std::vector<std::vector<float>> dp(static_cast<std::size_t>(p.H));  // per-head scratch, reused
  for (auto& x : dp) x.resize(S * S);
  for (auto _ : state) {
    par.For(static_cast<std::size_t>(p.H), [&](std::size_t h) {
      const float* q = p.q.data() + h * S * kE;
      const float* k = p.k.data() + h * S * kE;
      const float* v = p.v.data() + h * S * kE;
      float* pr = probs.data() + h * S * S;  // [S, S]
      Sgemm(false, true, S, S, kE, scale, q, kE, k, kE, 0.f, pr, S);
      for (int64_t i = 0; i < S; ++i) {
        float* row = pr + i * S;
        float mx = -INFINITY;
        for (int64_t j = 0; j <= i; ++j) mx = std::max(mx, std::min(std::max(row[j], -10.f), 10.f));
        double sum = 0;
        for (int64_t j = 0; j <= i; ++j) sum += row[j] = std::exp(std::min(std::max(row[j], -10.f), 10.f) - mx);
        const float inv = static_cast<float>(1.0 / sum);
        for (int64_t j = 0; j <= i; ++j) row[j] *= inv;
        std::fill(row + i + 1, row + S, 0.f);
      }
      Sgemm(false, false, S, kE, S, 1.f, pr, S, v, kE, 0.f, y.data() + h * S * kE, kE);
      // backward
      const float* dyh = p.dy.data() + h * S * kE;
      float* ds = dp[h].data();
      Sgemm(false, true, S, S, kE, 1.f, dyh, kE, v, kE, 0.f, ds, S);
      for (int64_t i = 0; i < S; ++i) {
        float* drow = ds + i * S;
        const float* prow = pr + i * S;
        double c = 0;
        for (int64_t j = 0; j < S; ++j) c += static_cast<double>(prow[j]) * drow[j];
        for (int64_t j = 0; j < S; ++j) drow[j] = scale * prow[j] * (drow[j] - static_cast<float>(c));
      }
      Sgemm(false, false, S, kE, S, 1.f, ds, S, k, kE, 0.f, dq.data() + h * S * kE, kE);
      Sgemm(true, false, S, kE, S, 1.f, ds, S, q, kE, 0.f, dk.data() + h * S * kE, kE);
      Sgemm(true, false, S, kE, S, 1.f, pr, S, dyh, kE, 0.f, dv.data() + h * S * kE, kE);
    });
    benchmark::DoNotOptimize(dq.data());
  }
  SetCounters(state, p, static_cast<double>(probs.size() * sizeof(float)));
}

void BM_PQEncodeQK(benchmark::State& state) {
  const Problem p(state);
  const ThreadParallel par(Threads());
  const PQDims pd = CheckPQInputs("PQEncode", {1, p.H, p.S, kE}, {kM, kC, kDc});
  std::vector<int32_t> cq(p.H * p.S * kM), ck(p.H * p.S * kM);
  for (auto _ : state) {
    PQEncode(pd, p.q.data(), p.codebook.data(), cq.data(), par);
    PQEncode(pd, p.k.data(), p.codebook.data(), ck.data(), par);
    benchmark::DoNotOptimize(ck.data());
  }
  SetCounters(state, p, 0);
}

// The codebook loss and its gradient on Q and K (what the training step runs per layer).
void BM_PQLossGradQK(benchmark::State& state) {
  const Problem p(state);
  const ThreadParallel par(Threads());
  const PQDims pd = CheckPQInputs("PQLossGrad", {1, p.H, p.S, kE}, {kM, kC, kDc});
  std::vector<float> dq(p.q.size()), dk(p.k.size()), dw(p.codebook.size());
  for (auto _ : state) {
    benchmark::DoNotOptimize(PQLoss(pd, p.q.data(), p.codebook.data(), par) + PQLoss(pd, p.k.data(), p.codebook.data(), par));
    PQLossGrad(pd, 1.f, p.q.data(), p.codebook.data(), false, dq.data(), dw.data(), par);
    PQLossGrad(pd, 1.f, p.k.data(), p.codebook.data(), false, dk.data(), dw.data(), par);
    benchmark::DoNotOptimize(dw.data());
  }
  SetCounters(state, p, 0);
}

template <TopKMode kMode>
void BM_PQTopK(benchmark::State& state) {
  const Problem p(state);
  const ThreadParallel par(Threads());
  const PQDims pd = CheckPQInputs("PQEncode", {1, p.H, p.S, kE}, {kM, kC, kDc});
  std::vector<int32_t> cq(p.H * p.S * kM), ck(p.H * p.S * kM), idx(p.H * p.S * p.L);
  PQEncode(pd, p.q.data(), p.codebook.data(), cq.data(), par);
  PQEncode(pd, p.k.data(), p.codebook.data(), ck.data(), par);
  PQTopKDims td = CheckPQTopKInputs({1, p.H, p.S, kM}, {1, p.H, p.S, kM}, nullptr);
  td.L = p.L;
  for (auto _ : state) {
    PQTopK(td, kMode, true, cq.data(), ck.data(), nullptr, idx.data(), par);
    benchmark::DoNotOptimize(idx.data());
  }
  SetCounters(state, p, static_cast<double>(idx.size() * sizeof(int32_t)));
}

void Shapes(benchmark::internal::Benchmark* b) {
  for (int64_t h : {12, 32}) {
    for (int64_t s : {512, 1024, 2048}) b->Args({h, s});
  }
  b->ArgNames({"H", "S"})->Unit(benchmark::kMillisecond)->UseRealTime()->MeasureProcessCPUTime()->Iterations(2);
}

BENCHMARK(BM_SparseAttentionFwdBwd)->Apply(Shapes);
BENCHMARK(BM_DenseAttentionFwdBwd)->Apply(Shapes);
BENCHMARK(BM_PQEncodeQK)->Apply(Shapes);
BENCHMARK(BM_PQLossGradQK)->Apply(Shapes);
BENCHMARK(BM_PQTopK<TopKMode::kExact>)->Apply(Shapes);
BENCHMARK(BM_PQTopK<TopKMode::kBucketed>)->Apply(Shapes);

}  // namespace
