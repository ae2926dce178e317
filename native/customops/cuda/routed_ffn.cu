// RoutedFFN forward and backward on the GPU; semantics and buffer roles of cpu/routed_ffn.{h,cc}.
//
// Token grouping: a stable radix sort of the T·k (token, slot) pairs by block id gives the grouped order
// (block, token) = perm, offsets come from a binary search per block, pos = perm⁻¹. All buffers are sized for
// T·k rows (fixed capacity). The block GEMMs run on cuBLAS (cublasGemmEx, row-major via the transposed
// problem, fp32 compute for every I/O type) over each block's rows; cuBLAS takes the row count on the host,
// so the n_blocks + 1 offsets are copied back once per call (one stream synchronization; ORT's own
// data-dependent kernels do the same). A grouped GEMM that reads the sizes on the device (CUTLASS) would
// remove it. Elementwise passes run in fp32 registers; buffers hold the I/O type. The un-permute sums each
// token's k rows in slot order: deterministic, no atomics.
#include <cublas_v2.h>
#include <cub/device/device_radix_sort.cuh>

#include <string>
#include <vector>

#include "cpu/ffn_math.h"
#include "cuda/common.cuh"

namespace spt::cuda {
namespace {

using cpu::FfnActivation;
using cpu::FfnGate;
using cpu::RoutedFfnConfig;

using cpu::ffn::Activate;
using cpu::ffn::ActivateGrad;
using cpu::ffn::Gates;
using cpu::ffn::GatesFor;
using cpu::ffn::Sigmoid;

cudaDataType_t CublasType(DType t) {
  switch (t) {
    case DType::kF32: return CUDA_R_32F;
    case DType::kF16: return CUDA_R_16F;
    case DType::kBF16: return CUDA_R_16BF;
  }
  return CUDA_R_32F;
}

// Row-major C[m, n] = alpha op(A)[m, k] op(B)[k, n] + beta C, as the column-major problem Cᵀ = op(B)ᵀ op(A)ᵀ.
struct Gemm {
  cublasHandle_t handle;
  cudaDataType_t type;
  void operator()(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const void* a, int64_t lda,
                  const void* b, int64_t ldb, float beta, void* c, int64_t ldc) const {
    if (m == 0 || n == 0) return;
    const cublasStatus_t st = cublasGemmEx(
        handle, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, static_cast<int>(n),
        static_cast<int>(m), static_cast<int>(k), &alpha, b, type, static_cast<int>(ldb), a, type,
        static_cast<int>(lda), &beta, c, type, static_cast<int>(ldc), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (st != CUBLAS_STATUS_SUCCESS) {
      throw std::runtime_error("RoutedFFN: cuBLAS GEMM failed (status " + std::to_string(static_cast<int>(st)) + ")");
    }
  }
};

// Typed offset of a row-major buffer of the I/O type.
template <typename T>
const T* At(const void* base, int64_t offset) { return base ? static_cast<const T*>(base) + offset : nullptr; }
template <typename T>
T* At(void* base, int64_t offset) { return base ? static_cast<T*>(base) + offset : nullptr; }

// p = sigmoid(logits + br) in place, and the top-k blocks per token (higher p first, ties to the lower id).
template <typename T>
__global__ void RouterKernel(int64_t tokens, int64_t nb, int64_t k, const T* __restrict__ br, T* __restrict__ probs,
                             int32_t* __restrict__ selection) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= tokens) return;
  T* p = probs + t * nb;
  for (int64_t i = 0; i < nb; ++i) p[i] = FromF<T>(Sigmoid(ToF(p[i]) + (br ? ToF(br[i]) : 0.f)));
  int32_t* sel = selection + t * k;
  for (int64_t s = 0; s < k; ++s) {
    int64_t best = -1;
    for (int64_t i = 0; i < nb; ++i) {
      bool taken = false;
      for (int64_t q = 0; q < s; ++q) taken = taken || sel[q] == i;
      if (!taken && (best < 0 || ToF(p[i]) > ToF(p[best]))) best = i;
    }
    sel[s] = static_cast<int32_t>(best);
  }
}

__global__ void PairKeysKernel(int64_t pairs, const int32_t* __restrict__ selection, uint32_t* __restrict__ keys,
                               uint32_t* __restrict__ values) {
  const int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (q >= pairs) return;
  keys[q] = static_cast<uint32_t>(selection[q]);
  values[q] = static_cast<uint32_t>(q);
}

// offsets[b] = first grouped row of block b (binary search in the sorted block ids); pos = perm⁻¹.
__global__ void GroupIndexKernel(int64_t pairs, int64_t nb, const uint32_t* __restrict__ sorted_blocks,
                                 const uint32_t* __restrict__ perm, int32_t* __restrict__ offsets,
                                 int32_t* __restrict__ pos) {
  const int64_t x = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (x <= nb) {
    int64_t lo = 0, hi = pairs;
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (static_cast<int64_t>(sorted_blocks[mid]) < x) lo = mid + 1; else hi = mid;
    }
    offsets[x] = static_cast<int32_t>(lo);
  }
  if (x < pairs) pos[perm[x]] = static_cast<int32_t>(x);
}

// out[j, :w] = scale * src[perm[j] / k, :w] for grouped rows j (scale = gin of the row when `gin_of` is set).
template <typename T>
__global__ void GatherRows(int64_t rows, int64_t width, int64_t k, const uint32_t* __restrict__ perm,
                           const T* __restrict__ src, const T* __restrict__ scale, T* __restrict__ out) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e >= rows * width) return;
  const int64_t j = e / width, c = e % width;
  const float v = ToF(src[(perm[j] / k) * width + c]);
  out[e] = FromF<T>(scale ? ToF(scale[j]) * v : v);
}

struct RowGate {
  const uint32_t* perm;
  const void* probs;
  int64_t k, nb, block, row0;
  FfnGate gate;
};

template <typename T>
__device__ __forceinline__ float ProbOf(const RowGate& rg, int64_t j) {
  return ToF(static_cast<const T*>(rg.probs)[(rg.perm[rg.row0 + j] / rg.k) * rg.nb + rg.block]);
}

// Forward per row of one block: u += b1_i (saved), h = act(gin u + l) (SwiGLU: silu(gin u + l) ⊙ (gin u3 + l3))
// over l, and h *= gob when `scale_now`.
template <typename T>
__global__ void ForwardActivation(RowGate rg, int64_t n, int64_t bs, int64_t pw, bool gated, bool lora1, bool lora3,
                                  FfnActivation act, bool scale_now, const T* __restrict__ bias, T* __restrict__ pre,
                                  T* __restrict__ hid) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e >= n * bs) return;
  const int64_t j = e / bs, c = e % bs;
  const Gates g = GatesFor(rg.gate, ProbOf<T>(rg, j));
  T* u = pre + j * pw;
  T* h = hid + j * pw;
  float uc = ToF(u[c]);
  if (bias) {
    uc += ToF(bias[c]);
    u[c] = FromF<T>(uc);
  }
  float out;
  if (gated) {
    const float ag = lora1 ? g.in * uc + ToF(h[c]) : g.in * uc;
    const float au = lora3 ? g.in * ToF(u[bs + c]) + ToF(h[bs + c]) : g.in * ToF(u[bs + c]);
    out = Activate(act, ag) * au;
  } else {
    out = Activate(act, lora1 ? g.in * uc + ToF(h[c]) : g.in * uc);
  }
  if (scale_now) out *= g.out_base;
  h[c] = FromF<T>(out);
}

// rows[j, :w] *= factor(j) where factor is the row's gob.
template <typename T>
__global__ void ScaleRowsByGate(RowGate rg, int64_t n, int64_t width, int64_t ld, T* __restrict__ rows) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e >= n * width) return;
  const int64_t j = e / width, c = e % width;
  const float g = GatesFor(rg.gate, ProbOf<T>(rg, j)).out_base;
  rows[j * ld + c] = FromF<T>(g * ToF(rows[j * ld + c]));
}

// out[t, :w] (+)= Σ_s scale[pos] rows[pos(t, s), :w], slots in order.
template <typename T>
__global__ void SumSlots(int64_t tokens, int64_t k, int64_t width, const int32_t* __restrict__ pos,
                         const T* __restrict__ rows, const T* __restrict__ scale, const T* __restrict__ base,
                         bool accumulate, T* __restrict__ out) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e >= tokens * width) return;
  const int64_t t = e / width, c = e % width;
  float acc = accumulate ? ToF(out[e]) : (base ? ToF(base[c]) : 0.f);
  for (int64_t s = 0; s < k; ++s) {
    const int64_t j = pos[t * k + s];
    const float r = ToF(rows[j * width + c]);
    acc += scale ? ToF(scale[j]) * r : r;
  }
  out[e] = FromF<T>(acc);
}

// Column sums out[c] = Σ_t src[t, c] in fp64, token order.
template <typename T>
__global__ void ColumnSums(int64_t tokens, int64_t width, const T* __restrict__ src, T* __restrict__ out) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= width) return;
  double acc = 0.0;
  for (int64_t t = 0; t < tokens; ++t) acc += ToF(src[t * width + c]);
  out[c] = FromF<T>(static_cast<float>(acc));
}

constexpr int kRowThreads = 128;

__device__ float BlockSum(float v, float* red) {
  red[threadIdx.x] = v;
  __syncthreads();
  for (int s = kRowThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
    __syncthreads();
  }
  const float r = red[0];
  __syncthreads();
  return r;
}

// Backward, first half of a row (one CTA per grouped row of block `rg.block`): a = gin u + l into `act`,
// h into `hid`, dg = <dh, h>; frozen_only: dh *= g (the base term only; the LoRA term is added later).
template <typename T>
__global__ void __launch_bounds__(kRowThreads) BackwardFirstHalf(RowGate rg, int64_t bs, int64_t pw, bool gated,
                                                                 bool lora1, bool lora3, FfnActivation act_kind,
                                                                 const T* __restrict__ pre, T* __restrict__ act,
                                                                 T* __restrict__ hid, T* __restrict__ dpre,
                                                                 float* __restrict__ dg) {
  __shared__ float red[kRowThreads];
  const int64_t j = blockIdx.x;
  const Gates g = GatesFor(rg.gate, ProbOf<T>(rg, j));
  const T* u = pre + j * pw;
  T* a = act + j * pw;
  T* h = hid + j * bs;
  T* dh = dpre + j * pw;
  float dot = 0.f;
  for (int64_t c = threadIdx.x; c < bs; c += blockDim.x) {
    float hv;
    if (gated) {
      const float ag = lora1 ? g.in * ToF(u[c]) + ToF(a[c]) : g.in * ToF(u[c]);
      const float au = lora3 ? g.in * ToF(u[bs + c]) + ToF(a[bs + c]) : g.in * ToF(u[bs + c]);
      a[c] = FromF<T>(ag);
      a[bs + c] = FromF<T>(au);
      hv = Activate(act_kind, ag) * au;
    } else {
      const float av = lora1 ? g.in * ToF(u[c]) + ToF(a[c]) : g.in * ToF(u[c]);
      a[c] = FromF<T>(av);
      hv = Activate(act_kind, av);
    }
    h[c] = FromF<T>(hv);
    const float dhv = ToF(dh[c]);
    dot += dhv * hv;
    if (rg.gate == FfnGate::kFrozenOnly) dh[c] = FromF<T>(dhv * g.out_base);
  }
  dot = BlockSum(dot, red);
  if (threadIdx.x == 0) dg[j] = dot;
}

// With the fc2 LoRA pair: gate `all` adds <e·B2ᵀ, h·A2_i> to dg (g scales that path too); outside frozen_only
// the rows e·B2ᵀ and h·A2_i are then scaled by g, as the LoRA grads see them.
template <typename T>
__global__ void __launch_bounds__(kRowThreads) LoraOutRows(RowGate rg, int64_t r2, T* __restrict__ ebg,
                                                           T* __restrict__ ha2, float* __restrict__ dg) {
  __shared__ float red[kRowThreads];
  const int64_t j = blockIdx.x;
  const float g = GatesFor(rg.gate, ProbOf<T>(rg, j)).out_base;
  float dot = 0.f;
  for (int64_t c = threadIdx.x; c < r2; c += blockDim.x) dot += ToF(ebg[j * r2 + c]) * ToF(ha2[j * r2 + c]);
  dot = BlockSum(dot, red);
  if (threadIdx.x == 0 && rg.gate == FfnGate::kAll) dg[j] += dot;
  if (rg.gate != FfnGate::kFrozenOnly && g != 1.0f) {
    for (int64_t c = threadIdx.x; c < r2; c += blockDim.x) {
      ebg[j * r2 + c] = FromF<T>(g * ToF(ebg[j * r2 + c]));
      ha2[j * r2 + c] = FromF<T>(g * ToF(ha2[j * r2 + c]));
    }
  }
}

// Second half: dh *= s (gob unless frozen_only), da = dh ⊙ act'(a) (SwiGLU: da = dh a3 silu'(a), da3 = dh silu(a))
// over dh; frozen_only: dg += <da, u>. Then dz = 2 dg p (1 - p) for the router (0 in gate none), gin saved,
// and e *= gob when dW2 is wanted.
template <typename T>
__global__ void __launch_bounds__(kRowThreads) BackwardSecondHalf(RowGate rg, int64_t bs, int64_t pw, int64_t d,
                                                                  bool gated, FfnActivation act_kind,
                                                                  bool want_router, bool scale_e,
                                                                  const T* __restrict__ pre, const T* __restrict__ act,
                                                                  T* __restrict__ dpre, float* __restrict__ dg,
                                                                  T* __restrict__ erows, T* __restrict__ gin,
                                                                  T* __restrict__ dz) {
  __shared__ float red[kRowThreads];
  const int64_t j = blockIdx.x;
  const float p = ProbOf<T>(rg, j);
  const Gates g = GatesFor(rg.gate, p);
  const float s = rg.gate == FfnGate::kFrozenOnly ? 1.0f : g.out_base;
  const T* u = pre + j * pw;
  const T* a = act + j * pw;
  T* da = dpre + j * pw;
  float du = 0.f;
  for (int64_t c = threadIdx.x; c < bs; c += blockDim.x) {
    const float dh = ToF(da[c]) * s;
    const float ac = ToF(a[c]);
    if (gated) {
      const float d1 = dh * ToF(a[bs + c]) * ActivateGrad(act_kind, ac);
      const float d3 = dh * Activate(act_kind, ac);
      da[c] = FromF<T>(d1);
      da[bs + c] = FromF<T>(d3);
      du += d1 * ToF(u[c]) + d3 * ToF(u[bs + c]);
    } else {
      const float d1 = dh * ActivateGrad(act_kind, ac);
      da[c] = FromF<T>(d1);
      du += d1 * ToF(u[c]);
    }
  }
  du = BlockSum(du, red);
  if (scale_e && g.out_base != 1.0f) {
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) erows[j * d + c] = FromF<T>(g.out_base * ToF(erows[j * d + c]));
  }
  if (threadIdx.x == 0) {
    float total = dg[j] + (rg.gate == FfnGate::kFrozenOnly ? du : 0.f);
    if (rg.gate == FfnGate::kNone) total = 0.f;
    dg[j] = total;
    gin[rg.row0 + j] = FromF<T>(g.in);
    if (want_router) {
      const int64_t t = rg.perm[rg.row0 + j] / rg.k;
      dz[t * rg.nb + rg.block] = FromF<T>(2.0f * total * p * (1.0f - p));
    }
  }
}

struct Grouping {
  int32_t* offsets;
  uint32_t *keys_in, *keys_out, *values_in, *perm;
  int32_t* pos;
  void* sort_temp;
  std::size_t sort_bytes;
  int end_bit;
};

Grouping TakeGrouping(Arena& arena, const RoutedFfnConfig& cfg) {
  const int64_t R = cfg.Rows();
  Grouping g{};
  g.end_bit = 1;
  while (g.end_bit < 32 && (int64_t{1} << g.end_bit) <= cfg.n_blocks) ++g.end_bit;
  cub::DeviceRadixSort::SortPairs(nullptr, g.sort_bytes, static_cast<const uint32_t*>(nullptr),
                                  static_cast<uint32_t*>(nullptr), static_cast<const uint32_t*>(nullptr),
                                  static_cast<uint32_t*>(nullptr), static_cast<int>(R), 0, g.end_bit);
  g.offsets = arena.Take<int32_t>(cfg.n_blocks + 1);
  g.keys_in = arena.Take<uint32_t>(R);
  g.keys_out = arena.Take<uint32_t>(R);
  g.values_in = arena.Take<uint32_t>(R);
  g.perm = arena.Take<uint32_t>(R);
  g.pos = arena.Take<int32_t>(R);
  g.sort_temp = arena.TakeBytes(g.sort_bytes);
  return g;
}

// Groups the pairs by block on the device and returns the offsets on the host (the one synchronization).
std::vector<int32_t> Group(const RoutedFfnConfig& cfg, const Grouping& g, const int32_t* selection,
                           cudaStream_t stream) {
  const int64_t R = cfg.Rows();
  if (R > 2147483647LL) throw std::invalid_argument("RoutedFFN on CUDA: tokens * top_k must fit in int32");
  PairKeysKernel<<<Blocks(R, 256), 256, 0, stream>>>(R, selection, g.keys_in, g.values_in);
  std::size_t bytes = g.sort_bytes;
  cub::DeviceRadixSort::SortPairs(g.sort_temp, bytes, g.keys_in, g.keys_out, g.values_in, g.perm, static_cast<int>(R),
                                  0, g.end_bit, stream);
  GroupIndexKernel<<<Blocks(std::max<int64_t>(R, cfg.n_blocks + 1), 256), 256, 0, stream>>>(R, cfg.n_blocks, g.keys_out,
                                                                                          g.perm, g.offsets, g.pos);
  CheckLaunch("RoutedFFN (grouping)");
  std::vector<int32_t> host(static_cast<std::size_t>(cfg.n_blocks + 1));
  cudaMemcpyAsync(host.data(), g.offsets, host.size() * sizeof(int32_t), cudaMemcpyDeviceToHost, stream);
  if (cudaStreamSynchronize(stream) != cudaSuccess) CheckLaunch("RoutedFFN (grouping)");
  return host;
}

struct ForwardBuffers {
  void *probs, *pre, *xa1, *xa3, *rows, *hid, *xa1g, *xa3g, *ha2;
  int32_t* selection;
  Grouping group;
  std::size_t bytes;
};

ForwardBuffers LayoutForward(const RoutedFfnConfig& cfg, DType dtype, const FfnState& state, void* workspace) {
  const int64_t T = cfg.tokens, R = cfg.Rows(), es = dtype == DType::kF32 ? 4 : 2;
  Arena arena(workspace);
  auto take = [&](int64_t count) { return arena.TakeBytes(static_cast<std::size_t>(count > 0 ? count * es : 0)); };
  ForwardBuffers b{};
  b.probs = state.probs ? state.probs : take(T * cfg.n_blocks);
  b.selection = state.selection ? state.selection : arena.Take<int32_t>(R);
  b.pre = state.pre ? state.pre : take(R * cfg.PreWidth());
  b.xa1 = take(T * cfg.rank1);
  b.xa3 = take(T * cfg.rank3);
  b.rows = take(R * cfg.d_model);
  b.hid = take(R * cfg.PreWidth());
  b.xa1g = take(R * cfg.rank1);
  b.xa3g = take(R * cfg.rank3);
  b.ha2 = take(R * cfg.rank2);
  b.group = TakeGrouping(arena, cfg);
  b.bytes = arena.Used();
  return b;
}

struct BackwardBuffers {
  void *xa1, *xa3, *eb, *dz, *q1t, *q3t, *mt, *erows, *dxrows, *xrows, *dpre, *act, *hid, *xa1g, *xa3g, *ebg, *ha2,
      *q1, *q3, *gin;
  float* dg;
  Grouping group;
  std::size_t bytes;
};

BackwardBuffers LayoutBackward(const RoutedFfnConfig& cfg, DType dtype, const FfnGrads& grads, void* workspace) {
  const int64_t T = cfg.tokens, R = cfg.Rows(), d = cfg.d_model, pw = cfg.PreWidth(), es = dtype == DType::kF32 ? 4 : 2;
  Arena arena(workspace);
  auto take = [&](int64_t count) { return arena.TakeBytes(static_cast<std::size_t>(count > 0 ? count * es : 0)); };
  BackwardBuffers b{};
  b.xa1 = take(T * cfg.rank1);
  b.xa3 = take(T * cfg.rank3);
  b.eb = take(T * cfg.rank2);
  b.dz = take(T * cfg.n_blocks);
  b.q1t = take(T * cfg.rank1);
  b.q3t = take(T * cfg.rank3);
  b.mt = take(T * cfg.rank2);
  b.erows = take(R * d);
  b.dxrows = grads.dx ? take(R * d) : nullptr;
  b.xrows = (grads.dw1 || grads.dw3) ? take(R * d) : nullptr;
  b.dpre = take(R * pw);
  b.act = take(R * pw);
  b.hid = take(R * cfg.BlockSize());
  b.xa1g = take(R * cfg.rank1);
  b.xa3g = take(R * cfg.rank3);
  b.ebg = take(R * cfg.rank2);
  b.ha2 = take(R * cfg.rank2);
  b.q1 = take(R * cfg.rank1);
  b.q3 = take(R * cfg.rank3);
  b.gin = take(R);
  b.dg = arena.Take<float>(R);
  b.group = TakeGrouping(arena, cfg);
  b.bytes = arena.Used();
  return b;
}

void CheckConfig(const RoutedFfnConfig& cfg) {
  const std::string problem = cpu::ValidateRoutedFfnConfig(cfg);
  if (!problem.empty()) throw std::invalid_argument("RoutedFFN: " + problem);
}

}  // namespace

std::size_t RoutedFfnForwardWorkspaceBytes(const RoutedFfnConfig& cfg, DType dtype, const FfnState& state) {
  return LayoutForward(cfg, dtype, state, nullptr).bytes;
}

std::size_t RoutedFfnBackwardWorkspaceBytes(const RoutedFfnConfig& cfg, DType dtype, const FfnGrads& grads) {
  return LayoutBackward(cfg, dtype, grads, nullptr).bytes;
}

void RoutedFfnForward(const RoutedFfnConfig& cfg, DType dtype, const FfnWeights& w, const void* x, void* y,
                      FfnState state, void* workspace, cublasHandle_t cublas, cudaStream_t stream) {
  CheckConfig(cfg);
  const int64_t T = cfg.tokens, d = cfg.d_model, F = cfg.d_ff, nb = cfg.n_blocks, k = cfg.top_k, R = cfg.Rows();
  const int64_t bs = cfg.BlockSize(), pw = cfg.PreWidth(), r1 = cfg.rank1, r2 = cfg.rank2, r3 = cfg.rank3;
  const bool gated = cfg.Gated();
  const ForwardBuffers buf = LayoutForward(cfg, dtype, state, workspace);
  if (T == 0) return;
  const Gemm gemm{cublas, CublasType(dtype)};
  Dispatch(dtype, [&](auto tag) {
    using T_ = decltype(tag);
    // Router p = sigmoid(x·Wr + br), top-k; token-level LoRA products x·A1, x·A3.
    gemm(false, false, T, nb, d, 1.f, x, d, w.wr, nb, 0.f, buf.probs, nb);
    RouterKernel<T_><<<Blocks(T, 128), 128, 0, stream>>>(T, nb, k, At<T_>(w.br, 0), static_cast<T_*>(buf.probs),
                                                         buf.selection);
    if (r1 > 0) gemm(false, false, T, r1, d, 1.f, x, d, w.a1, r1, 0.f, buf.xa1, r1);
    if (r3 > 0) gemm(false, false, T, r3, d, 1.f, x, d, w.a3, r3, 0.f, buf.xa3, r3);
    const std::vector<int32_t> off = Group(cfg, buf.group, buf.selection, stream);
    const uint32_t* perm = buf.group.perm;
    GatherRows<T_><<<Blocks(R * d, 256), 256, 0, stream>>>(R, d, k, perm, static_cast<const T_*>(x), nullptr,
                                                           static_cast<T_*>(buf.rows));
    if (r1 > 0) GatherRows<T_><<<Blocks(R * r1, 256), 256, 0, stream>>>(R, r1, k, perm, At<T_>(buf.xa1, 0), nullptr, At<T_>(buf.xa1g, 0));
    if (r3 > 0) GatherRows<T_><<<Blocks(R * r3, 256), 256, 0, stream>>>(R, r3, k, perm, At<T_>(buf.xa3, 0), nullptr, At<T_>(buf.xa3g, 0));
    const bool scale_now = cfg.gate == FfnGate::kAll || (cfg.gate == FfnGate::kFrozenOnly && r2 == 0);
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t j0 = off[b], n = off[b + 1] - off[b];
      if (n == 0) continue;
      T_* rows = At<T_>(buf.rows, j0 * d);
      T_* pre = At<T_>(buf.pre, j0 * pw);
      T_* hid = At<T_>(buf.hid, j0 * pw);
      const RowGate rg{perm, buf.probs, k, nb, b, j0, cfg.gate};
      gemm(false, false, n, bs, d, 1.f, rows, d, At<T_>(w.w1, b * bs), F, 0.f, pre, pw);
      if (gated) gemm(false, false, n, bs, d, 1.f, rows, d, At<T_>(w.w3, b * bs), F, 0.f, pre + bs, pw);
      if (r1 > 0) gemm(false, false, n, bs, r1, 1.f, At<T_>(buf.xa1g, j0 * r1), r1, At<T_>(w.b1_lora, b * bs), F, 0.f, hid, pw);
      if (r3 > 0) gemm(false, false, n, bs, r3, 1.f, At<T_>(buf.xa3g, j0 * r3), r3, At<T_>(w.b3_lora, b * bs), F, 0.f, hid + bs, pw);
      ForwardActivation<T_><<<Blocks(n * bs, 256), 256, 0, stream>>>(rg, n, bs, pw, gated, r1 > 0, r3 > 0,
                                                                     cfg.activation, scale_now, At<T_>(w.b1, b * bs),
                                                                     pre, hid);
      T_* ha2 = At<T_>(buf.ha2, j0 * r2);
      if (r2 > 0) gemm(false, false, n, r2, bs, 1.f, hid, pw, At<T_>(w.a2, b * bs * r2), r2, 0.f, ha2, r2);
      if (cfg.gate == FfnGate::kFrozenOnly && r2 > 0) {
        ScaleRowsByGate<T_><<<Blocks(n * bs, 256), 256, 0, stream>>>(rg, n, bs, pw, hid);
      }
      // Block output over the gathered x rows: o = (gob·h)·W2_i + (gol·h·A2_i)·B2.
      gemm(false, false, n, d, bs, 1.f, hid, pw, At<T_>(w.w2, b * bs * d), d, 0.f, rows, d);
      if (r2 > 0) gemm(false, false, n, d, r2, 1.f, ha2, r2, w.b2_lora, d, 1.f, rows, d);
    }
    // y_t = b2 + Σ_s o[pos(t, s)], slots in order.
    SumSlots<T_><<<Blocks(T * d, 256), 256, 0, stream>>>(T, k, d, buf.group.pos, At<T_>(buf.rows, 0), nullptr,
                                                         At<T_>(w.b2, 0), false, static_cast<T_*>(y));
  });
  CheckLaunch("RoutedFFN");
}

void RoutedFfnBackward(const RoutedFfnConfig& cfg, DType dtype, const FfnWeights& w, const void* x, const void* dy,
                       const FfnState& state, const FfnGrads& grads, void* workspace, cublasHandle_t cublas,
                       cudaStream_t stream) {
  CheckConfig(cfg);
  const int64_t T = cfg.tokens, d = cfg.d_model, F = cfg.d_ff, nb = cfg.n_blocks, k = cfg.top_k, R = cfg.Rows();
  const int64_t bs = cfg.BlockSize(), pw = cfg.PreWidth(), r1 = cfg.rank1, r2 = cfg.rank2, r3 = cfg.rank3;
  const bool gated = cfg.Gated();
  const FfnGate gate = cfg.gate;
  const BackwardBuffers buf = LayoutBackward(cfg, dtype, grads, workspace);
  const bool want_router = gate != FfnGate::kNone && (grads.dx || grads.dwr || grads.dbr);
  const std::size_t es = dtype == DType::kF32 ? 4 : 2;
  const Gemm gemm{cublas, CublasType(dtype)};
  // Every wanted gradient is fully overwritten; block slices of blocks without rows stay zero.
  auto zero = [&](void* p, int64_t count) {
    if (p && count > 0) cudaMemsetAsync(p, 0, static_cast<std::size_t>(count) * es, stream);
  };
  zero(grads.dw1, d * F);
  zero(grads.db1, F);
  zero(grads.dw2, F * d);
  zero(grads.dw3, d * F);
  zero(grads.db1_lora, r1 * F);
  zero(grads.da2, F * r2);
  zero(grads.db3_lora, r3 * F);
  zero(buf.dz, T * nb);
  if (T == 0) {
    zero(grads.dwr, d * nb);
    zero(grads.dbr, nb);
    zero(grads.db2, d);
    zero(grads.da1, d * r1);
    zero(grads.da3, d * r3);
    zero(grads.db2_lora, r2 * d);
    return;
  }
  Dispatch(dtype, [&](auto tag) {
    using T_ = decltype(tag);
    if (r1 > 0) gemm(false, false, T, r1, d, 1.f, x, d, w.a1, r1, 0.f, buf.xa1, r1);
    if (r3 > 0) gemm(false, false, T, r3, d, 1.f, x, d, w.a3, r3, 0.f, buf.xa3, r3);
    if (r2 > 0) gemm(false, true, T, r2, d, 1.f, dy, d, w.b2_lora, d, 0.f, buf.eb, r2);
    const std::vector<int32_t> off = Group(cfg, buf.group, state.selection, stream);
    const uint32_t* perm = buf.group.perm;
    GatherRows<T_><<<Blocks(R * d, 256), 256, 0, stream>>>(R, d, k, perm, static_cast<const T_*>(dy), nullptr,
                                                           At<T_>(buf.erows, 0));
    if (r1 > 0) GatherRows<T_><<<Blocks(R * r1, 256), 256, 0, stream>>>(R, r1, k, perm, At<T_>(buf.xa1, 0), nullptr, At<T_>(buf.xa1g, 0));
    if (r3 > 0) GatherRows<T_><<<Blocks(R * r3, 256), 256, 0, stream>>>(R, r3, k, perm, At<T_>(buf.xa3, 0), nullptr, At<T_>(buf.xa3g, 0));
    if (r2 > 0) GatherRows<T_><<<Blocks(R * r2, 256), 256, 0, stream>>>(R, r2, k, perm, At<T_>(buf.eb, 0), nullptr, At<T_>(buf.ebg, 0));

    // Phase 1: per block, da, the dx contributions and the router grads.
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t j0 = off[b], n = off[b + 1] - off[b];
      if (n == 0) continue;
      const RowGate rg{perm, state.probs, k, nb, b, j0, gate};
      T_* erows = At<T_>(buf.erows, j0 * d);
      T_* dpre = At<T_>(buf.dpre, j0 * pw);
      T_* act = At<T_>(buf.act, j0 * pw);
      T_* hid = At<T_>(buf.hid, j0 * bs);
      T_* ebg = At<T_>(buf.ebg, j0 * r2);
      T_* ha2 = At<T_>(buf.ha2, j0 * r2);
      const T_* pre = At<T_>(static_cast<const void*>(state.pre), j0 * pw);
      float* dg = buf.dg + j0;
      gemm(false, true, n, bs, d, 1.f, erows, d, At<T_>(w.w2, b * bs * d), d, 0.f, dpre, pw);
      if (r1 > 0) gemm(false, false, n, bs, r1, 1.f, At<T_>(buf.xa1g, j0 * r1), r1, At<T_>(w.b1_lora, b * bs), F, 0.f, act, pw);
      if (r3 > 0) gemm(false, false, n, bs, r3, 1.f, At<T_>(buf.xa3g, j0 * r3), r3, At<T_>(w.b3_lora, b * bs), F, 0.f, act + bs, pw);
      BackwardFirstHalf<T_><<<static_cast<unsigned>(n), kRowThreads, 0, stream>>>(rg, bs, pw, gated, r1 > 0, r3 > 0,
                                                                                  cfg.activation, pre, act, hid, dpre, dg);
      if (r2 > 0) {
        // h·A2_i, and dh += (e·B2ᵀ)·A2_iᵀ.
        gemm(false, false, n, r2, bs, 1.f, hid, bs, At<T_>(w.a2, b * bs * r2), r2, 0.f, ha2, r2);
        gemm(false, true, n, bs, r2, 1.f, ebg, r2, At<T_>(w.a2, b * bs * r2), r2, 1.f, dpre, pw);
        LoraOutRows<T_><<<static_cast<unsigned>(n), kRowThreads, 0, stream>>>(rg, r2, ebg, ha2, dg);
      }
      BackwardSecondHalf<T_><<<static_cast<unsigned>(n), kRowThreads, 0, stream>>>(
          rg, bs, pw, d, gated, cfg.activation, want_router, grads.dw2 != nullptr, pre, act, dpre, dg, erows,
          At<T_>(buf.gin, 0), At<T_>(buf.dz, 0));
      if (buf.xrows) {
        GatherRows<T_><<<Blocks(n * d, 256), 256, 0, stream>>>(n, d, k, perm + j0, static_cast<const T_*>(x),
                                                               At<T_>(buf.gin, j0), At<T_>(buf.xrows, j0 * d));
      }
      if (grads.dx) {
        T_* dxr = At<T_>(buf.dxrows, j0 * d);
        gemm(false, true, n, d, bs, 1.f, dpre, pw, At<T_>(w.w1, b * bs), F, 0.f, dxr, d);
        if (gated) gemm(false, true, n, d, bs, 1.f, dpre + bs, pw, At<T_>(w.w3, b * bs), F, 1.f, dxr, d);
      }
      if (r1 > 0) gemm(false, true, n, r1, bs, 1.f, dpre, pw, At<T_>(w.b1_lora, b * bs), F, 0.f, At<T_>(buf.q1, j0 * r1), r1);
      if (r3 > 0) gemm(false, true, n, r3, bs, 1.f, dpre + bs, pw, At<T_>(w.b3_lora, b * bs), F, 0.f, At<T_>(buf.q3, j0 * r3), r3);

      // Phase 2 (same block): weight grads over the block's rows, in grouped order.
      if (grads.da2) gemm(true, false, bs, r2, n, 1.f, hid, bs, ebg, r2, 0.f, At<T_>(grads.da2, b * bs * r2), r2);
      if (grads.db1_lora) gemm(true, false, r1, bs, n, 1.f, At<T_>(buf.xa1g, j0 * r1), r1, dpre, pw, 0.f, At<T_>(grads.db1_lora, b * bs), F);
      if (grads.db3_lora) gemm(true, false, r3, bs, n, 1.f, At<T_>(buf.xa3g, j0 * r3), r3, dpre + bs, pw, 0.f, At<T_>(grads.db3_lora, b * bs), F);
      if (grads.dw1) gemm(true, false, d, bs, n, 1.f, At<T_>(buf.xrows, j0 * d), d, dpre, pw, 0.f, At<T_>(grads.dw1, b * bs), F);
      if (grads.dw3) gemm(true, false, d, bs, n, 1.f, At<T_>(buf.xrows, j0 * d), d, dpre + bs, pw, 0.f, At<T_>(grads.dw3, b * bs), F);
      if (grads.dw2) gemm(true, false, bs, d, n, 1.f, hid, bs, erows, d, 0.f, At<T_>(grads.dw2, b * bs * d), d);
      // db1_i = Σ_j gin_j da_j: [1, n]·[n, bs].
      if (grads.db1) gemm(false, false, 1, bs, n, 1.f, At<T_>(buf.gin, j0), n, dpre, pw, 0.f, At<T_>(grads.db1, b * bs), bs);
    }

    // Phase 3: token level.
    const int32_t* pos = buf.group.pos;
    if (r1 > 0) SumSlots<T_><<<Blocks(T * r1, 256), 256, 0, stream>>>(T, k, r1, pos, At<T_>(buf.q1, 0), nullptr, nullptr, false, At<T_>(buf.q1t, 0));
    if (r3 > 0) SumSlots<T_><<<Blocks(T * r3, 256), 256, 0, stream>>>(T, k, r3, pos, At<T_>(buf.q3, 0), nullptr, nullptr, false, At<T_>(buf.q3t, 0));
    if (r2 > 0) SumSlots<T_><<<Blocks(T * r2, 256), 256, 0, stream>>>(T, k, r2, pos, At<T_>(buf.ha2, 0), nullptr, nullptr, false, At<T_>(buf.mt, 0));
    if (grads.dx) {
      // dx = dz·Wrᵀ + q1·A1ᵀ + q3·A3ᵀ + Σ_s gin·dx rows (gin = 1 outside frozen_only).
      if (want_router) gemm(false, true, T, d, nb, 1.f, buf.dz, nb, w.wr, nb, 0.f, grads.dx, d);
      else zero(grads.dx, T * d);
      if (r1 > 0) gemm(false, true, T, d, r1, 1.f, buf.q1t, r1, w.a1, r1, 1.f, grads.dx, d);
      if (r3 > 0) gemm(false, true, T, d, r3, 1.f, buf.q3t, r3, w.a3, r3, 1.f, grads.dx, d);
      SumSlots<T_><<<Blocks(T * d, 256), 256, 0, stream>>>(T, k, d, pos, At<T_>(buf.dxrows, 0),
                                                           gate == FfnGate::kFrozenOnly ? At<T_>(buf.gin, 0) : nullptr,
                                                           nullptr, true, static_cast<T_*>(grads.dx));
    }
    if (grads.dwr) gemm(true, false, d, nb, T, 1.f, x, d, buf.dz, nb, 0.f, grads.dwr, nb);
    if (grads.da1) gemm(true, false, d, r1, T, 1.f, x, d, buf.q1t, r1, 0.f, grads.da1, r1);
    if (grads.da3) gemm(true, false, d, r3, T, 1.f, x, d, buf.q3t, r3, 0.f, grads.da3, r3);
    if (grads.db2_lora) gemm(true, false, r2, d, T, 1.f, buf.mt, r2, dy, d, 0.f, grads.db2_lora, d);
    if (grads.dbr) ColumnSums<T_><<<Blocks(nb, 128), 128, 0, stream>>>(T, nb, At<T_>(buf.dz, 0), static_cast<T_*>(grads.dbr));
    if (grads.db2) ColumnSums<T_><<<Blocks(d, 128), 128, 0, stream>>>(T, d, static_cast<const T_*>(dy), static_cast<T_*>(grads.db2));
  });
  CheckLaunch("RoutedFFNGrad");
}

}  // namespace spt::cuda
