// GFLOP/s of the kernels' GEMM (cpu/blas.h, oneDNN) against ONNX Runtime's own GEMM (MLAS, an ONNX Gemm node in
// a one-node session, B fed as an input like the training graphs' weights) on the routed FFN's shapes at the
// 4-layer d 768, d_ff 3072 decoder's settings: blocks of bs = 768 hidden units (4 blocks), tasks of 128-512
// routed rows (ffn_ops.cc's ChunkRows), LoRA rank 16. Both sides run on one thread, the way the routed FFN's
// tasks call them.
//
//   spt_bench --benchmark_filter=Gemm
//
// Arguments: m, n, k, trans_a, trans_b, ldb (the row stride of B: d_ff = 3072 when B is a block of fc1's weight).
// The rate counter is GFLOP/s (2 m n k per call); compare each SptGemm row with the OrtGemm row of the same
// arguments (the median of 3 repetitions; on a shared machine, compare rows of one run).
#include <benchmark/benchmark.h>

#include <memory>
#include <random>
#include <vector>

#include "cpu/blas.h"

#if defined(SPT_BENCH_WITH_ORT)
#include <onnxruntime_cxx_api.h>
#endif

namespace {

struct Shape {
  int64_t m, n, k;
  bool ta, tb;
  int64_t ldb;
  explicit Shape(const benchmark::State& s)
      : m(s.range(0)), n(s.range(1)), k(s.range(2)), ta(s.range(3) != 0), tb(s.range(4) != 0), ldb(s.range(5)) {}
  int64_t BCols() const { return tb ? k : n; }
  int64_t BRows() const { return tb ? n : k; }
};

std::vector<float> Random(std::size_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> v(n);
  for (auto& x : v) x = u(gen);
  return v;
}

void SetRate(benchmark::State& state, const Shape& s) {
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * s.m * s.n * s.k * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(spt::cpu::BlasName());
}

void BM_SptGemm(benchmark::State& state) {
  const Shape s(state);
  spt::cpu::SetBlasThreads(1);
  const auto a = Random(s.m * s.k, 1);
  const auto b = Random(s.BRows() * s.ldb, 2);
  std::vector<float> c(s.m * s.n);
  const int64_t lda = s.ta ? s.m : s.k;
  for (auto _ : state) {
    spt::cpu::Sgemm(s.ta, s.tb, s.m, s.n, s.k, 1.f, a.data(), lda, b.data(), s.ldb, 0.f, c.data(), s.n);
    benchmark::DoNotOptimize(c.data());
  }
  SetRate(state, s);
}

#if defined(SPT_BENCH_WITH_ORT)
Ort::Env& Environment() {
  static Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "spt_bench");
  return env;
}

Ort::TypeInfo FloatTensor(std::vector<int64_t> dims) {
  const Ort::TensorTypeAndShapeInfo info(ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, dims);
  return Ort::TypeInfo::CreateTensorInfo(info.GetConst());
}

// Y[m, n] = op(A) op(B): one ONNX Gemm node (ORT runs it on MLAS's SGEMM); B is dense [BRows, BCols] (a strided
// block cannot be fed to ORT, so ORT gets the block packed, the easier case).
std::unique_ptr<Ort::Session> GemmSession(const Shape& s) {
  Ort::Graph graph;
  std::vector<Ort::ValueInfo> inputs;
  inputs.emplace_back("A", FloatTensor(s.ta ? std::vector<int64_t>{s.k, s.m} : std::vector<int64_t>{s.m, s.k}).GetConst());
  inputs.emplace_back("B", FloatTensor({s.BRows(), s.BCols()}).GetConst());
  std::vector<Ort::ValueInfo> outputs;
  outputs.emplace_back("Y", FloatTensor({s.m, s.n}).GetConst());
  graph.SetInputs(inputs);
  graph.SetOutputs(outputs);
  const int64_t ta = s.ta ? 1 : 0, tb = s.tb ? 1 : 0;
  std::vector<Ort::OpAttr> attrs;
  attrs.emplace_back("transA", &ta, 1, OrtOpAttrType::ORT_OP_ATTR_INT);
  attrs.emplace_back("transB", &tb, 1, OrtOpAttrType::ORT_OP_ATTR_INT);
  Ort::Node node("Gemm", "", "gemm", {"A", "B"}, {"Y"}, attrs);
  graph.AddNode(node);
  Ort::Model model({{"", 21}});
  model.AddGraph(graph);
  Ort::SessionOptions options;
  options.SetIntraOpNumThreads(1);
  return std::make_unique<Ort::Session>(Environment(), model, options);
}

void BM_OrtGemm(benchmark::State& state) {
  const Shape s(state);
  auto session = GemmSession(s);
  auto a = Random(s.m * s.k, 1);
  auto b = Random(s.BRows() * s.BCols(), 2);
  std::vector<float> y(s.m * s.n);
  const auto mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  const std::vector<int64_t> a_dims = s.ta ? std::vector<int64_t>{s.k, s.m} : std::vector<int64_t>{s.m, s.k};
  const std::vector<int64_t> b_dims{s.BRows(), s.BCols()}, y_dims{s.m, s.n};
  Ort::Value in[] = {Ort::Value::CreateTensor<float>(mem, a.data(), a.size(), a_dims.data(), a_dims.size()),
                     Ort::Value::CreateTensor<float>(mem, b.data(), b.size(), b_dims.data(), b_dims.size())};
  Ort::Value out[] = {Ort::Value::CreateTensor<float>(mem, y.data(), y.size(), y_dims.data(), y_dims.size())};
  const char* in_names[] = {"A", "B"};
  const char* out_names[] = {"Y"};
  const Ort::RunOptions run;
  for (auto _ : state) {
    session->Run(run, in_names, in, 2, out_names, out, 1);
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * s.m * s.n * s.k * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel("ORT MLAS");
}
#endif

// The routed FFN's GEMMs per block task (d = 768, bs = 768, d_ff = 3072, r = 16):
//   fc1 / fc3 forward   X[rows, d] · W1[:, block]      NN, ldb = d_ff
//   fc2 forward         H[rows, bs] · W2[block, :]     NN, ldb = d
//   dH = dY · W2ᵀ       NT, ldb = d
//   dX = dPre · W1ᵀ     NT, ldb = d_ff
//   dW2 = Hᵀ · dY       TN over the block's rows (full fine-tuning only)
//   LoRA                X · A1 [d, r] and (X A1) · B1 [r, bs]
// Registered shape by shape, each SptGemm row right before its OrtGemm row, so that the two sides of one
// comparison run back to back (a shared machine's load changes between distant rows).
const bool kRegistered = [] {
  const std::vector<std::vector<int64_t>> shapes = [] {
    std::vector<std::vector<int64_t>> v;
    for (int64_t rows : {128, 512}) {
      v.push_back({rows, 768, 768, 0, 0, 3072});
      v.push_back({rows, 768, 768, 0, 0, 768});
      v.push_back({rows, 768, 768, 0, 1, 768});
      v.push_back({rows, 768, 768, 0, 1, 3072});
      v.push_back({rows, 16, 768, 0, 0, 16});
      v.push_back({rows, 768, 16, 0, 0, 3072});
    }
    v.push_back({768, 768, 512, 1, 0, 768});
    return v;
  }();
  for (const auto& shape : shapes) {
    std::vector<std::pair<const char*, void (*)(benchmark::State&)>> sides{{"BM_SptGemm", BM_SptGemm}};
#if defined(SPT_BENCH_WITH_ORT)
    sides.emplace_back("BM_OrtGemm", BM_OrtGemm);
#endif
    for (const auto& [name, fn] : sides) {
      benchmark::RegisterBenchmark(name, fn)
          ->Args(shape)
          ->ArgNames({"m", "n", "k", "ta", "tb", "ldb"})
          ->UseRealTime()
          ->MinTime(0.2)
          ->Repetitions(3)
          ->ReportAggregatesOnly(true);
    }
  }
  return true;
}();

}  // namespace
