// Routed FFN forward+backward vs a dense FFN forward+backward on the same BLAS, at SPT's settings
// (4 blocks, top 2, ReLU, frozen base, LoRA r = 16 on fc1 and fc2).
//
//   spt_bench --benchmark_filter=Ffn
//
// Variants (all f+b, one training step of the FFN alone):
//   Routed/lora    routed, frozen base, LoRA r=16: grads dX, router, LoRA
//   Routed/plain   routed, frozen base, no LoRA:   grads dX, router
//   Dense/lora     dense,  frozen base, LoRA r=16: grads dX, LoRA
//   Dense/plain    dense,  frozen base, no LoRA:   grad dX
//   Dense/full     dense full finetune:            grads dX, dW1, db1, dW2, db2
// Routed threading argument: 0 = one thread (GEMMs single-threaded, one GEMM chain per block);
// 1 = GEMMs single-threaded, the kernel's 128-row chunk tasks on 2 threads (the ORT binding's
// size up to 2048 rows); 2 = GEMMs on 2 threads, one GEMM chain per block, serial tasks; 3 = like 1,
// 512-row chunks (the binding's size from 8192 rows, 4096 tokens at top 2); 4 = like 1, 256-row chunks.
// Dense "threads": GEMM threads (large GEMMs) and threads for its elementwise loops.
// Both wall time and process CPU time are reported: on a shared machine the one-thread CPU times
// give the most stable routed/dense ratio.
// Each case runs 3 single-iteration repetitions and reports their minimum (the "_min" rows).
// Counters: saved_MiB = activations kept between forward and backward (routed: P, Sel, U;
// dense: the pre-activation [T, d_ff]; x·A1 and h·A2 for LoRA are counted for both).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "cpu/blas.h"
#include "cpu/parallel.h"
#include "cpu/routed_ffn.h"

namespace {

using spt::cpu::Sgemm;

constexpr int kThreads = 2;
constexpr int64_t kRank = 16;

std::vector<float> Random(std::size_t n, float scale, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> v(n);
  for (auto& e : v) e = normal(rng);
  return v;
}

struct Weights {
  Weights(int64_t d, int64_t f, int64_t tokens, bool lora)
      : x(Random(tokens * d, 1.0f, 1)), dy(Random(tokens * d, 1.0f, 2)), w1(Random(d * f, 0.03f, 3)),
        b1(Random(f, 0.03f, 4)), w2(Random(f * d, 0.03f, 5)), b2(Random(d, 0.03f, 6)), wr(Random(d * 4, 0.03f, 7)),
        br(Random(4, 0.03f, 8)) {
    if (lora) {
      a1 = Random(d * kRank, 0.03f, 9);
      lb1 = Random(kRank * f, 0.03f, 10);
      a2 = Random(f * kRank, 0.03f, 11);
      lb2 = Random(kRank * d, 0.03f, 12);
    }
  }
  std::vector<float> x, dy, w1, b1, w2, b2, wr, br, a1, lb1, a2, lb2;
};

const float* Ptr(const std::vector<float>& v) { return v.empty() ? nullptr : v.data(); }

// args: d, d_ff, tokens, lora (0/1), threading (see the file comment)
void BM_FfnRouted(benchmark::State& state) {
  const int64_t d = state.range(0), f = state.range(1), T = state.range(2), threading = state.range(4);
  const bool lora = state.range(3) != 0, blas_threads = threading == 2;
  Weights w(d, f, T, lora);
  spt::cpu::RoutedFfnConfig cfg;
  cfg.tokens = T;
  cfg.d_model = d;
  cfg.d_ff = f;
  cfg.n_blocks = 4;
  cfg.top_k = 2;
  cfg.rank1 = cfg.rank2 = lora ? kRank : 0;
  cfg.activation = spt::cpu::FfnActivation::kRelu;
  cfg.gate = spt::cpu::FfnGate::kFrozenOnly;
  cfg.chunk_rows = threading == 1 ? 128 : threading == 3 ? 512 : threading == 4 ? 256 : 0;
  spt::cpu::SetBlasThreads(blas_threads ? kThreads : 1);
  const spt::cpu::ThreadParallel tasks(kThreads);
  const bool use_tasks = threading == 1 || threading == 3 || threading == 4;
  const spt::cpu::Parallel& par = use_tasks ? static_cast<const spt::cpu::Parallel&>(tasks) : spt::cpu::Serial();
  const spt::cpu::RoutedFfnWeights rw{Ptr(w.w1), Ptr(w.b1), Ptr(w.w2), Ptr(w.b2), Ptr(w.wr), Ptr(w.br), nullptr,
                                      Ptr(w.a1), Ptr(w.lb1), Ptr(w.a2), Ptr(w.lb2), nullptr, nullptr};
  std::vector<float> y(T * d), probs(T * 4), pre(cfg.Rows() * cfg.PreWidth());
  std::vector<int32_t> sel(cfg.Rows());
  std::vector<float> dx(T * d), dwr(d * 4), dbr(4), da1, dlb1, da2, dlb2;
  spt::cpu::RoutedFfnGrads grads;
  grads.dx = dx.data();
  grads.dwr = dwr.data();
  grads.dbr = dbr.data();
  if (lora) {
    da1.resize(w.a1.size());
    dlb1.resize(w.lb1.size());
    da2.resize(w.a2.size());
    dlb2.resize(w.lb2.size());
    grads.da1 = da1.data();
    grads.db1_lora = dlb1.data();
    grads.da2 = da2.data();
    grads.db2_lora = dlb2.data();
  }
  const spt::cpu::RoutedFfnState st{probs.data(), sel.data(), pre.data()};
  std::vector<unsigned char> ws(std::max(spt::cpu::RoutedFfnForwardWorkspaceBytes(cfg, st),
                                         spt::cpu::RoutedFfnBackwardWorkspaceBytes(cfg, grads)));
  for (auto _ : state) {
    spt::cpu::RoutedFfnForward(cfg, rw, w.x.data(), y.data(), st, ws.data(), par);
    spt::cpu::RoutedFfnBackward(cfg, rw, w.x.data(), w.dy.data(), {probs.data(), sel.data(), pre.data()}, grads,
                                ws.data(), par);
    benchmark::DoNotOptimize(dx.data());
  }
  double saved = static_cast<double>(probs.size() * 4 + sel.size() * 4 + pre.size() * 4);
  if (lora) saved += static_cast<double>(T * kRank * 4);  // x·A1 (recomputed here, kept by the dense variant)
  state.counters["saved_MiB"] = saved / (1 << 20);
  spt::cpu::SetBlasThreads(kThreads);
}

// args: d, d_ff, tokens, mode (0 = frozen plain, 1 = frozen LoRA, 2 = full finetune), threads (1 or 2)
void BM_FfnDense(benchmark::State& state) {
  const int64_t d = state.range(0), F = state.range(1), T = state.range(2), mode = state.range(3);
  const int threads = static_cast<int>(state.range(4));
  const bool lora = mode == 1, full = mode == 2;
  const int64_t r = kRank;
  Weights w(d, F, T, lora);
  spt::cpu::SetBlasThreads(threads);
  const spt::cpu::ThreadParallel par(threads);
  std::vector<float> a(T * F), h(T * F), y(T * d), xa1, ha2, eb, q;
  std::vector<float> dh(T * F), dx(T * d), da1, dlb1, da2, dlb2, dw1, db1, dw2, db2;
  if (lora) {
    xa1.resize(T * r);
    ha2.resize(T * r);
    eb.resize(T * r);
    q.resize(T * r);
    da1.resize(d * r);
    dlb1.resize(r * F);
    da2.resize(F * r);
    dlb2.resize(r * d);
  }
  if (full) {
    dw1.resize(d * F);
    db1.resize(F);
    dw2.resize(F * d);
    db2.resize(d);
  }
  const int64_t row_chunk = 64;
  const std::size_t chunks = static_cast<std::size_t>((T + row_chunk - 1) / row_chunk);
  auto rows = [&](std::size_t c, auto&& fn) {
    const int64_t t0 = static_cast<int64_t>(c) * row_chunk, t1 = std::min(T, t0 + row_chunk);
    for (int64_t t = t0; t < t1; ++t) fn(t);
  };
  for (auto _ : state) {
    // Forward: a = x·W1 + b1 (+ x·A1·B1), h = relu(a), y = h·W2 + b2 (+ h·A2·B2).
    Sgemm(false, false, T, F, d, 1.0f, w.x.data(), d, w.w1.data(), F, 0.0f, a.data(), F);
    if (lora) {
      Sgemm(false, false, T, r, d, 1.0f, w.x.data(), d, w.a1.data(), r, 0.0f, xa1.data(), r);
      Sgemm(false, false, T, F, r, 1.0f, xa1.data(), r, w.lb1.data(), F, 1.0f, a.data(), F);
    }
    par.For(chunks, [&](std::size_t c) {
      rows(c, [&](int64_t t) {
        for (int64_t i = 0; i < F; ++i) {
          a[t * F + i] += w.b1[i];
          h[t * F + i] = a[t * F + i] > 0.0f ? a[t * F + i] : 0.0f;
        }
      });
    });
    Sgemm(false, false, T, d, F, 1.0f, h.data(), F, w.w2.data(), d, 0.0f, y.data(), d);
    if (lora) {
      Sgemm(false, false, T, r, F, 1.0f, h.data(), F, w.a2.data(), r, 0.0f, ha2.data(), r);
      Sgemm(false, false, T, d, r, 1.0f, ha2.data(), r, w.lb2.data(), d, 1.0f, y.data(), d);
    }
    par.For(chunks, [&](std::size_t c) {
      rows(c, [&](int64_t t) {
        for (int64_t i = 0; i < d; ++i) y[t * d + i] += w.b2[i];
      });
    });
    // Backward: dh = dy·W2ᵀ (+ dy·B2ᵀ·A2ᵀ), da = dh ⊙ relu'(a), dx = da·W1ᵀ (+ da·B1ᵀ·A1ᵀ).
    Sgemm(false, true, T, F, d, 1.0f, w.dy.data(), d, w.w2.data(), d, 0.0f, dh.data(), F);
    if (lora) {
      Sgemm(false, true, T, r, d, 1.0f, w.dy.data(), d, w.lb2.data(), d, 0.0f, eb.data(), r);
      Sgemm(false, true, T, F, r, 1.0f, eb.data(), r, w.a2.data(), r, 1.0f, dh.data(), F);
      Sgemm(true, false, F, r, T, 1.0f, h.data(), F, eb.data(), r, 0.0f, da2.data(), r);
      Sgemm(true, false, r, d, T, 1.0f, ha2.data(), r, w.dy.data(), d, 0.0f, dlb2.data(), d);
    }
    if (full) {
      Sgemm(true, false, F, d, T, 1.0f, h.data(), F, w.dy.data(), d, 0.0f, dw2.data(), d);
      std::fill(db2.begin(), db2.end(), 0.0f);
      for (int64_t t = 0; t < T; ++t)
        for (int64_t i = 0; i < d; ++i) db2[i] += w.dy[t * d + i];
    }
    par.For(chunks, [&](std::size_t c) {
      rows(c, [&](int64_t t) {
        for (int64_t i = 0; i < F; ++i) dh[t * F + i] = a[t * F + i] > 0.0f ? dh[t * F + i] : 0.0f;
      });
    });
    Sgemm(false, true, T, d, F, 1.0f, dh.data(), F, w.w1.data(), F, 0.0f, dx.data(), d);
    if (lora) {
      Sgemm(false, true, T, r, F, 1.0f, dh.data(), F, w.lb1.data(), F, 0.0f, q.data(), r);
      Sgemm(false, true, T, d, r, 1.0f, q.data(), r, w.a1.data(), r, 1.0f, dx.data(), d);
      Sgemm(true, false, r, F, T, 1.0f, xa1.data(), r, dh.data(), F, 0.0f, dlb1.data(), F);
      Sgemm(true, false, d, r, T, 1.0f, w.x.data(), d, q.data(), r, 0.0f, da1.data(), r);
    }
    if (full) {
      Sgemm(true, false, d, F, T, 1.0f, w.x.data(), d, dh.data(), F, 0.0f, dw1.data(), F);
      std::fill(db1.begin(), db1.end(), 0.0f);
      for (int64_t t = 0; t < T; ++t)
        for (int64_t i = 0; i < F; ++i) db1[i] += dh[t * F + i];
    }
    benchmark::DoNotOptimize(dx.data());
  }
  double saved = static_cast<double>(T * F * 4);  // pre-activation a (h is recomputed from it)
  if (lora) saved += static_cast<double>(2 * T * r * 4);
  state.counters["saved_MiB"] = saved / (1 << 20);
}

// The machine is shared: the least disturbed of the repetitions is the best estimate.
double MinOf(const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); }

// Every (shape, tokens) pair followed by each argument suffix.
void Shapes(benchmark::internal::Benchmark* b, const std::vector<std::vector<int64_t>>& suffixes) {
  for (auto [d, f] : {std::pair<int64_t, int64_t>{768, 3072}, {2048, 8192}})
    for (int64_t t : {512, 1024, 2048, 4096})
      for (const auto& suffix : suffixes) {
        std::vector<int64_t> args = {d, f, t};
        args.insert(args.end(), suffix.begin(), suffix.end());
        b->Args(args);
      }
}

BENCHMARK(BM_FfnRouted)
    ->Apply([](benchmark::internal::Benchmark* b) { Shapes(b, {{1, 0}, {1, 1}, {1, 2}, {1, 3}, {1, 4}, {0, 0}, {0, 1}}); })
    ->ArgNames({"d", "d_ff", "T", "lora", "threading"})
    ->Unit(benchmark::kMillisecond)
    ->Iterations(1)
    ->Repetitions(3)
    ->ComputeStatistics("min", MinOf)
    ->MeasureProcessCPUTime()
    ->UseRealTime();
BENCHMARK(BM_FfnDense)
    ->Apply([](benchmark::internal::Benchmark* b) { Shapes(b, {{1, 1}, {0, 1}, {2, 1}, {1, 2}, {0, 2}, {2, 2}}); })
    ->ArgNames({"d", "d_ff", "T", "mode", "threads"})
    ->Unit(benchmark::kMillisecond)
    ->Iterations(1)
    ->Repetitions(3)
    ->ComputeStatistics("min", MinOf)
    ->MeasureProcessCPUTime()
    ->UseRealTime();

}  // namespace
