// libspt_check.so: the CPU kernels (always) and the CUDA kernels (when built with CUDA) behind a flat C API, for
// the GPU check (gpu/check.py, through ctypes). Every function returns 0 on success and 1 on error, with the
// message in spt_last_error(). Shapes come as int64 arrays:
//   attention: {B, H, Hkv, Sq, Sk, E, Ev, L}     top-k: {B, H, Hkv, Sq, Sk, M, L}     pq: {N, M, C, dc}
//   ffn:       {tokens, d_model, d_ff, n_blocks, top_k, rank1, rank2, rank3, activation, gate}
//   ffn weights (13 pointers, nullptr = absent): w1, b1, w2, b2, wr, br, w3, a1, b1_lora, a2, b2_lora, a3, b3_lora
//   ffn grads (14 pointers, nullptr = not wanted): dx, dwr, dbr, dw1, db1, dw2, db2, dw3, da1, db1_lora, da2,
//              db2_lora, da3, db3_lora
// CUDA entry points take device pointers, an element type (0 fp32, 1 fp16, 2 bf16), a cudaStream_t and, where
// a kernel needs scratch, a device workspace of the size the matching *_ws function returns.
#include <exception>
#include <map>
#include <mutex>
#include <sstream>
#include <string>

#include "cpu/parallel.h"
#include "cpu/pq.h"
#include "cpu/routed_ffn.h"
#include "cpu/sparse_attention.h"
#include "tests/kernel_cases.h"
#if SPT_WITH_CUDA
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "cuda/kernels.h"
#endif

#define SPT_API extern "C" __attribute__((visibility("default")))

namespace {

using spt::cpu::Shape;

thread_local std::string g_error;

template <typename F>
int Guard(F&& body) {
  try {
    body();
    return 0;
  } catch (const std::exception& e) {
    g_error = e.what();
    return 1;
  }
}

spt::cpu::SparseAttentionDims AttentionDims(const char* op, const int64_t* a) {
  return spt::cpu::CheckSparseAttentionInputs(op, {a[0], a[1], a[3], a[5]}, {a[0], a[2], a[4], a[5]},
                                              {a[0], a[2], a[4], a[6]}, {a[0], a[1], a[3], a[7]}, nullptr);
}

spt::cpu::PQTopKDims TopKDims(const int64_t* t) {
  spt::cpu::PQTopKDims d = spt::cpu::CheckPQTopKInputs({t[0], t[1], t[3], t[5]}, {t[0], t[2], t[4], t[5]}, nullptr);
  d.L = t[6];
  return d;
}

spt::cpu::PQDims PQ(const char* op, const int64_t* p) {
  return spt::cpu::CheckPQInputs(op, {p[0], p[1] * p[3]}, {p[1], p[2], p[3]});
}

spt::cpu::RoutedFfnConfig FfnConfig(const int64_t* c) {
  spt::cpu::RoutedFfnConfig cfg;
  cfg.tokens = c[0];
  cfg.d_model = c[1];
  cfg.d_ff = c[2];
  cfg.n_blocks = c[3];
  cfg.top_k = c[4];
  cfg.rank1 = c[5];
  cfg.rank2 = c[6];
  cfg.rank3 = c[7];
  constexpr spt::cpu::FfnActivation acts[] = {spt::cpu::FfnActivation::kRelu, spt::cpu::FfnActivation::kGelu,
                                              spt::cpu::FfnActivation::kGeluTanh, spt::cpu::FfnActivation::kSilu,
                                              spt::cpu::FfnActivation::kSwiGlu, spt::cpu::FfnActivation::kGeGlu,
                                              spt::cpu::FfnActivation::kGeGluTanh, spt::cpu::FfnActivation::kReGlu,
                                              spt::cpu::FfnActivation::kRelu2};
  constexpr spt::cpu::FfnGate gates[] = {spt::cpu::FfnGate::kFrozenOnly, spt::cpu::FfnGate::kAll,
                                         spt::cpu::FfnGate::kNone};
  if (c[8] < 0 || c[8] > 8 || c[9] < 0 || c[9] > 2) throw std::invalid_argument("ffn: activation or gate out of range");
  cfg.activation = acts[c[8]];
  cfg.gate = gates[c[9]];
  const std::string problem = spt::cpu::ValidateRoutedFfnConfig(cfg);
  if (!problem.empty()) throw std::invalid_argument("ffn: " + problem);
  return cfg;
}

spt::cpu::RoutedFfnWeights CpuWeights(const void* const* w) {
  auto f = [&](int i) { return static_cast<const float*>(w[i]); };
  return {f(0), f(1), f(2), f(3), f(4), f(5), f(6), f(7), f(8), f(9), f(10), f(11), f(12)};
}

spt::cpu::RoutedFfnGrads CpuGrads(void* const* g) {
  auto f = [&](int i) { return static_cast<float*>(g[i]); };
  return {f(0), f(1), f(2), f(3), f(4), f(5), f(6), f(7), f(8), f(9), f(10), f(11), f(12), f(13)};
}

}  // namespace

SPT_API const char* spt_last_error() { return g_error.c_str(); }

SPT_API int spt_has_cuda() {
#if SPT_WITH_CUDA
  return 1;
#else
  return 0;
#endif
}

// The shared case table (tests/kernel_cases.h) as JSON.
SPT_API const char* spt_cases_json() {
  static const std::string json = [] {
    std::ostringstream o;
    o << "{\"attention\": [";
    bool first = true;
    for (const auto& c : spt::test::kAttentionCases) {
      o << (first ? "" : ", ") << "{\"B\": " << c.B << ", \"H\": " << c.H << ", \"Hkv\": " << c.Hkv << ", \"Sq\": " << c.Sq
        << ", \"Sk\": " << c.Sk << ", \"E\": " << c.E << ", \"Ev\": " << c.Ev << ", \"L\": " << c.L << "}";
      first = false;
    }
    o << "], \"topk\": [";
    first = true;
    for (const auto& c : spt::test::kTopKCases) {
      o << (first ? "" : ", ") << "{\"B\": " << c.B << ", \"H\": " << c.H << ", \"Hkv\": " << c.Hkv << ", \"Sq\": " << c.Sq
        << ", \"Sk\": " << c.Sk << ", \"M\": " << c.M << ", \"L\": " << c.L << ", \"causal\": " << (c.causal ? "true" : "false")
        << ", \"masked\": " << (c.masked ? "true" : "false") << "}";
      first = false;
    }
    o << "], \"pq\": [";
    first = true;
    for (const auto& c : spt::test::kPQCases) {
      o << (first ? "" : ", ") << "{\"N\": " << c.N << ", \"M\": " << c.M << ", \"C\": " << c.C << ", \"dc\": " << c.dc << "}";
      first = false;
    }
    o << "], \"ffn\": [";
    first = true;
    for (const auto& c : spt::test::kFfnCases) {
      o << (first ? "" : ", ") << "{\"tokens\": " << c.tokens << ", \"d_model\": " << c.d_model << ", \"d_ff\": " << c.d_ff
        << ", \"n_blocks\": " << c.n_blocks << ", \"top_k\": " << c.top_k << ", \"rank1\": " << c.rank1
        << ", \"rank2\": " << c.rank2 << ", \"rank3\": " << c.rank3 << ", \"activation\": " << c.activation
        << ", \"gate\": " << c.gate << ", \"biases\": " << (c.biases ? "true" : "false") << "}";
      first = false;
    }
    o << "]}";
    return o.str();
  }();
  return json.c_str();
}

// ------------------------------------------------------------------------------------------------- CPU

SPT_API int spt_cpu_pq_encode(const int64_t* pq, const float* z, const float* w, int32_t* codes) {
  return Guard([&] { spt::cpu::PQEncode(PQ("PQEncode", pq), z, w, codes, spt::cpu::Serial()); });
}

SPT_API int spt_cpu_pq_topk(const int64_t* t, int mode, int causal, const int32_t* cq, const int32_t* ck,
                            const uint8_t* keep, int32_t* out) {
  return Guard([&] {
    spt::cpu::PQTopK(TopKDims(t), mode ? spt::cpu::TopKMode::kBucketed : spt::cpu::TopKMode::kExact, causal != 0, cq,
                     ck, keep, out, spt::cpu::Serial());
  });
}

SPT_API int spt_cpu_sparse_attention(const int64_t* a, double scale, double clamp, int causal, const float* q,
                                     const float* k, const float* v, const int32_t* idx, const float* bias, float* y,
                                     float* p) {
  return Guard([&] {
    const auto d = AttentionDims("SparseAttention", a);
    const auto prm = spt::cpu::ResolveSparseAttentionParams("SparseAttention", scale, clamp, causal != 0, d.E);
    spt::cpu::CheckSparseAttentionIndices("SparseAttention", d, idx);
    spt::cpu::SparseAttentionForward<float>(d, prm, q, k, v, idx, bias, y, p, spt::cpu::Serial());
  });
}

SPT_API int spt_cpu_sparse_attention_grad(const int64_t* a, double scale, double clamp, int causal, const float* dy,
                                          const float* q, const float* k, const float* v, const int32_t* idx,
                                          const float* p, float* dq, float* dk, float* dv) {
  return Guard([&] {
    const auto d = AttentionDims("SparseAttentionGrad", a);
    const auto prm = spt::cpu::ResolveSparseAttentionParams("SparseAttentionGrad", scale, clamp, causal != 0, d.E);
    spt::cpu::CheckSparseAttentionIndices("SparseAttentionGrad", d, idx);
    spt::cpu::SparseAttentionBackward<float>(d, prm, dy, q, k, v, idx, p, dq, dk, dv, spt::cpu::Serial());
  });
}

SPT_API int spt_cpu_pq_loss(const int64_t* pq, const float* z, const float* w, float* loss) {
  return Guard([&] { *loss = static_cast<float>(spt::cpu::PQLoss(PQ("PQLoss", pq), z, w, spt::cpu::Serial())); });
}

SPT_API int spt_cpu_pq_loss_grad(const int64_t* pq, float dloss, const float* z, const float* w, int detach, float* dz,
                                 float* dw) {
  return Guard([&] { spt::cpu::PQLossGrad(PQ("PQLossGrad", pq), dloss, z, w, detach != 0, dz, dw, spt::cpu::Serial()); });
}

SPT_API int spt_cpu_routed_ffn(const int64_t* c, const void* const* w, const float* x, float* y, float* probs,
                               int32_t* sel, float* pre) {
  return Guard([&] {
    const auto cfg = FfnConfig(c);
    const spt::cpu::RoutedFfnState state{probs, sel, pre};
    std::vector<unsigned char> ws(spt::cpu::RoutedFfnForwardWorkspaceBytes(cfg, state));
    spt::cpu::RoutedFfnForward(cfg, CpuWeights(w), x, y, state, ws.data(), spt::cpu::Serial());
  });
}

SPT_API int spt_cpu_routed_ffn_grad(const int64_t* c, const void* const* w, const float* x, const float* dy,
                                    const float* probs, const int32_t* sel, const float* pre, void* const* grads) {
  return Guard([&] {
    const auto cfg = FfnConfig(c);
    const auto g = CpuGrads(grads);
    std::vector<unsigned char> ws(spt::cpu::RoutedFfnBackwardWorkspaceBytes(cfg, g));
    spt::cpu::RoutedFfnBackward(cfg, CpuWeights(w), x, dy, {probs, sel, pre}, g, ws.data(), spt::cpu::Serial());
  });
}

// ------------------------------------------------------------------------------------------------ CUDA

#if SPT_WITH_CUDA
namespace {

spt::cuda::DType DTypeOf(int t) {
  if (t < 0 || t > 2) throw std::invalid_argument("dtype must be 0 (fp32), 1 (fp16) or 2 (bf16)");
  return static_cast<spt::cuda::DType>(t);
}

cudaStream_t Stream(void* s) { return static_cast<cudaStream_t>(s); }

cublasHandle_t CublasFor(cudaStream_t stream) {
  static std::mutex mutex;
  static std::map<cudaStream_t, cublasHandle_t> handles;
  std::lock_guard<std::mutex> lock(mutex);
  cublasHandle_t& h = handles[stream];
  if (!h) {
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) throw std::runtime_error("cublasCreate failed");
    cublasSetStream(h, stream);
  }
  return h;
}

spt::cuda::FfnWeights CudaWeights(const void* const* w) {
  return {w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], w[8], w[9], w[10], w[11], w[12]};
}

spt::cuda::FfnGrads CudaGrads(void* const* g) {
  return {g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8], g[9], g[10], g[11], g[12], g[13]};
}

}  // namespace

SPT_API int spt_cuda_pq_encode(const int64_t* pq, int dtype, const void* z, const void* w, int32_t* codes, void* stream) {
  return Guard([&] { spt::cuda::PQEncode(PQ("PQEncode", pq), DTypeOf(dtype), z, w, codes, Stream(stream)); });
}

SPT_API int spt_cuda_pq_topk(const int64_t* t, int mode, int causal, int64_t window, const int32_t* cq,
                             const int32_t* ck, const uint8_t* keep, int32_t* out, void* stream) {
  return Guard([&] {
    spt::cuda::PQTopK(TopKDims(t), mode ? spt::cpu::TopKMode::kBucketed : spt::cpu::TopKMode::kExact, causal != 0,
                      window, cq, ck, keep, out, Stream(stream));
  });
}

SPT_API int spt_cuda_sparse_attention(const int64_t* a, double scale, double clamp, int causal, int dtype, const void* q,
                                      const void* k, const void* v, const int32_t* idx, const float* bias, void* y,
                                      void* p, void* stream) {
  return Guard([&] {
    const auto d = AttentionDims("SparseAttention", a);
    const auto prm = spt::cpu::ResolveSparseAttentionParams("SparseAttention", scale, clamp, causal != 0, d.E);
    spt::cuda::SparseAttentionForward(d, prm, DTypeOf(dtype), q, k, v, idx, bias, y, p, Stream(stream));
  });
}

SPT_API int64_t spt_cuda_sparse_attention_grad_ws(const int64_t* a) {
  int64_t bytes = -1;
  Guard([&] { bytes = static_cast<int64_t>(spt::cuda::SparseAttentionBackwardWorkspaceBytes(AttentionDims("SparseAttentionGrad", a))); });
  return bytes;
}

SPT_API int spt_cuda_sparse_attention_grad(const int64_t* a, double scale, double clamp, int causal, int dtype,
                                           const void* dy, const void* q, const void* k, const void* v,
                                           const int32_t* idx, const void* p, void* dq, void* dk, void* dv, void* ws,
                                           void* stream) {
  return Guard([&] {
    const auto d = AttentionDims("SparseAttentionGrad", a);
    const auto prm = spt::cpu::ResolveSparseAttentionParams("SparseAttentionGrad", scale, clamp, causal != 0, d.E);
    spt::cuda::SparseAttentionBackward(d, prm, DTypeOf(dtype), dy, q, k, v, idx, p, dq, dk, dv, ws, Stream(stream));
  });
}

SPT_API int64_t spt_cuda_pq_loss_ws(const int64_t* pq) {
  int64_t bytes = -1;
  Guard([&] { bytes = static_cast<int64_t>(spt::cuda::PQLossWorkspaceBytes(PQ("PQLoss", pq))); });
  return bytes;
}

SPT_API int spt_cuda_pq_loss(const int64_t* pq, int dtype, const void* z, const void* w, float* loss, void* ws,
                             void* stream) {
  return Guard([&] { spt::cuda::PQLoss(PQ("PQLoss", pq), DTypeOf(dtype), z, w, loss, ws, Stream(stream)); });
}

SPT_API int64_t spt_cuda_pq_loss_grad_ws(const int64_t* pq) {
  int64_t bytes = -1;
  Guard([&] { bytes = static_cast<int64_t>(spt::cuda::PQLossGradWorkspaceBytes(PQ("PQLossGrad", pq))); });
  return bytes;
}

SPT_API int spt_cuda_pq_loss_grad(const int64_t* pq, int dtype, const float* dloss, const void* z, const void* w,
                                  int detach, void* dz, void* dw, void* ws, void* stream) {
  return Guard([&] {
    spt::cuda::PQLossGrad(PQ("PQLossGrad", pq), DTypeOf(dtype), dloss, z, w, detach != 0, dz, dw, ws, Stream(stream));
  });
}

SPT_API int64_t spt_cuda_routed_ffn_ws(const int64_t* c, int dtype) {
  int64_t bytes = -1;
  Guard([&] {
    // Saved state always comes from the caller here.
    spt::cuda::FfnState state{reinterpret_cast<void*>(1), reinterpret_cast<int32_t*>(1), reinterpret_cast<void*>(1)};
    bytes = static_cast<int64_t>(spt::cuda::RoutedFfnForwardWorkspaceBytes(FfnConfig(c), DTypeOf(dtype), state));
  });
  return bytes;
}

SPT_API int spt_cuda_routed_ffn(const int64_t* c, int dtype, const void* const* w, const void* x, void* y, void* probs,
                                int32_t* sel, void* pre, void* ws, void* stream) {
  return Guard([&] {
    spt::cuda::RoutedFfnForward(FfnConfig(c), DTypeOf(dtype), CudaWeights(w), x, y, {probs, sel, pre}, ws,
                                CublasFor(Stream(stream)), Stream(stream));
  });
}

SPT_API int64_t spt_cuda_routed_ffn_grad_ws(const int64_t* c, int dtype, void* const* grads) {
  int64_t bytes = -1;
  Guard([&] {
    bytes = static_cast<int64_t>(spt::cuda::RoutedFfnBackwardWorkspaceBytes(FfnConfig(c), DTypeOf(dtype), CudaGrads(grads)));
  });
  return bytes;
}

SPT_API int spt_cuda_routed_ffn_grad(const int64_t* c, int dtype, const void* const* w, const void* x, const void* dy,
                                     void* probs, int32_t* sel, void* pre, void* const* grads, void* ws, void* stream) {
  return Guard([&] {
    spt::cuda::RoutedFfnBackward(FfnConfig(c), DTypeOf(dtype), CudaWeights(w), x, dy, {probs, sel, pre},
                                 CudaGrads(grads), ws, CublasFor(Stream(stream)), Stream(stream));
  });
}
#endif
