// SparseAttention forward and backward on the GPU; semantics of cpu/sparse_attention.h.
//
// Forward, one warp per query row i of head bh (kv head kvh = KvHeadOf(bh)), W rows per CTA:
//   lanes split the L slots: a_t = clamp(scale <q_i, k_j>) + bias_j (or -inf when the slot is skipped),
//   warp max m, e_t = exp(a_t - m), warp sum s, P_t = e_t / s (logits and probabilities stay in shared memory,
//   fp32); then lanes split Ev: y_i = sum_t P_t v_j in slot order. No S x S buffer exists anywhere.
// Backward:
//   rows (one warp per row): dp_t = <dy_i, v_j>, c_i = sum_t P_t dp_t, ds_t = P_t (dp_t - c_i) scale [clamp
//   passes], saved as ds [B, H, Sq, L] fp32; dq_i = sum_t ds_t k_j (lanes split E).
//   transpose: a stable radix sort of the slots by key (kvh * (Sk + 1) + j, empty slots to the per-head trash
//   key Sk) turns the query-major selection into a key-major one whose entries, per key, are in ascending
//   flat slot order = (query head, row, slot) order; offsets come from a binary search per key.
//   keys (one warp per (kvh, j)): dk_j = sum ds q_i, dv_j = sum P dy_i over its entries, in that order.
//   Deterministic, no float atomics (the only atomics are integer ones in FindBadIndex).
#include <cub/device/device_radix_sort.cuh>

#include <cmath>
#include <string>

#include "cuda/common.cuh"

namespace spt::cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kMaxDimPerLane = 8;  // E, Ev <= 256 in the key-major reduction (registers per lane)

// Bytes of one warp's shared slice (16-byte multiple so every slice stays aligned).
__host__ __device__ inline std::size_t WarpSliceBytes(int64_t e, int64_t ev, int64_t l, bool backward) {
  const std::size_t raw = static_cast<std::size_t>(e + (backward ? ev : 0) + l) * sizeof(float) +
                          (backward ? static_cast<std::size_t>(l) : 0);
  return (raw + 15) / 16 * 16;
}

struct RowLayout {
  int warps;             // rows per CTA
  std::size_t shared;    // dynamic shared bytes per CTA
};

// Per warp: the query row (E floats), the dY row (Ev floats, backward only) and the L slot values.
RowLayout LayoutRows(const cpu::SparseAttentionDims& d, bool backward) {
  const std::size_t per_warp = WarpSliceBytes(d.E, d.Ev, d.L, backward);
  int optin = 48 * 1024, device = 0;
  if (cudaGetDevice(&device) == cudaSuccess) {
    cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  }
  for (int w : {8, 4, 2, 1}) {
    if (per_warp * w <= 48 * 1024) return {w, per_warp * w};
  }
  if (per_warp <= static_cast<std::size_t>(optin)) return {1, per_warp};
  throw std::invalid_argument("SparseAttention on CUDA: E + Ev + L = " + std::to_string(d.E + d.Ev + d.L) +
                              " floats per row exceed this device's shared memory");
}

template <typename KernelT>
void AllowShared(KernelT kernel, std::size_t bytes) {
  if (bytes > 48 * 1024) {
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  }
}

template <typename T>
__device__ __forceinline__ float DotShared(const float* __restrict__ a, const T* __restrict__ b, int64_t n) {
  float acc = 0.f;
  for (int64_t e = 0; e < n; ++e) acc = fmaf(a[e], ToF(b[e]), acc);
  return acc;
}

__device__ __forceinline__ bool SlotKept(int64_t j, int64_t sk, int64_t limit, const float* bias) {
  return j >= 0 && j < sk && j <= limit && (!bias || bias[j] > static_cast<float>(cpu::kMaskedBias));
}

template <typename T>
__global__ void ForwardKernel(cpu::SparseAttentionDims d, float scale, float clamp, bool causal, int64_t window,
                              const T* __restrict__ q,
                              const T* __restrict__ k, const T* __restrict__ v, const int32_t* __restrict__ indices,
                              const float* __restrict__ key_bias, cpu::AttentionBias<float> attn_bias,
                              T* __restrict__ y, T* __restrict__ probs) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  float* qs = reinterpret_cast<float*>(smem + warp * WarpSliceBytes(d.E, d.Ev, d.L, false));
  float* ps = qs + d.E;
  const int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x / kWarp) + warp;
  if (row >= d.B * d.H * d.Sq) return;
  const int64_t bh = row / d.Sq, i = row % d.Sq;
  const int64_t kvh = cpu::KvHeadOf(bh, d.H, d.Hkv);
  const T* kb = k + kvh * d.Sk * d.E;
  const T* vb = v + kvh * d.Sk * d.Ev;
  const float* bias = key_bias ? key_bias + (bh / d.H) * d.Sk : nullptr;
  // attn_bias row (b, h, i), broadcast axes have stride 0.
  const float* ar = attn_bias.data ? attn_bias.data + (bh / d.H) * attn_bias.stride_b + (bh % d.H) * attn_bias.stride_h +
                                         i * attn_bias.stride_i
                                   : nullptr;
  const int32_t* idx = indices + row * d.L;
  // Causal and sliding-window bounds on the keys, aligned to the end when Sq != Sk (as the CPU kernel).
  const int64_t pos = i + d.Sk - d.Sq;
  const int64_t limit = causal ? pos : (window > 0 ? (pos + window - 1 < d.Sk - 1 ? pos + window - 1 : d.Sk - 1) : d.Sk - 1);
  const int64_t first = window > 0 ? pos - window + 1 : 0;
  for (int64_t e = lane; e < d.E; e += kWarp) qs[e] = ToF(q[row * d.E + e]);
  __syncwarp();
  float mx = -INFINITY;
  for (int64_t t = lane; t < d.L; t += kWarp) {
    const int64_t j = idx[t];
    float a = -INFINITY;
    if (j >= first && SlotKept(j, d.Sk, limit, bias) && (!ar || ar[j] > static_cast<float>(cpu::kMaskedBias))) {
      a = scale * DotShared(qs, kb + j * d.E, d.E);
      if (clamp > 0.f) a = fminf(fmaxf(a, -clamp), clamp);
      if (bias) a += bias[j];
      if (ar) a += ar[j];
    }
    ps[t] = a;
    mx = fmaxf(mx, a);
  }
  mx = WarpMax(mx);
  T* yr = y + row * d.Ev;
  T* pr = probs + row * d.L;
  if (mx == -INFINITY) {  // nothing kept: y = 0, P = 0
    for (int64_t t = lane; t < d.L; t += kWarp) pr[t] = FromF<T>(0.f);
    for (int64_t e = lane; e < d.Ev; e += kWarp) yr[e] = FromF<T>(0.f);
    return;
  }
  float sum = 0.f;
  for (int64_t t = lane; t < d.L; t += kWarp) {
    const float e = ps[t] == -INFINITY ? 0.f : expf(ps[t] - mx);
    ps[t] = e;
    sum += e;
  }
  const float inv = 1.f / WarpSum(sum);
  for (int64_t t = lane; t < d.L; t += kWarp) {
    const float p = ps[t] * inv;
    ps[t] = p;
    pr[t] = FromF<T>(p);
  }
  __syncwarp();
  for (int64_t e = lane; e < d.Ev; e += kWarp) {
    float acc = 0.f;
    for (int64_t t = 0; t < d.L; ++t) {
      const float p = ps[t];
      if (p != 0.f) acc = fmaf(p, ToF(vb[static_cast<int64_t>(idx[t]) * d.Ev + e]), acc);
    }
    yr[e] = FromF<T>(acc);
  }
}

template <typename T>
__global__ void BackwardRowsKernel(cpu::SparseAttentionDims d, float scale, float clamp, const T* __restrict__ dy,
                                   const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                   const int32_t* __restrict__ indices, const T* __restrict__ probs,
                                   float* __restrict__ ds, T* __restrict__ dq) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  unsigned char* base = smem + warp * WarpSliceBytes(d.E, d.Ev, d.L, true);
  float* qs = reinterpret_cast<float*>(base);
  float* dys = qs + d.E;
  float* dss = dys + d.Ev;
  uint8_t* pass = reinterpret_cast<uint8_t*>(dss + d.L);
  const int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x / kWarp) + warp;
  if (row >= d.B * d.H * d.Sq) return;
  const int64_t bh = row / d.Sq;
  const int64_t kvh = cpu::KvHeadOf(bh, d.H, d.Hkv);
  const T* kb = k + kvh * d.Sk * d.E;
  const T* vb = v + kvh * d.Sk * d.Ev;
  const int32_t* idx = indices + row * d.L;
  const T* pr = probs + row * d.L;
  for (int64_t e = lane; e < d.E; e += kWarp) qs[e] = ToF(q[row * d.E + e]);
  for (int64_t e = lane; e < d.Ev; e += kWarp) dys[e] = ToF(dy[row * d.Ev + e]);
  __syncwarp();
  // dp_t and the clamp mask rebuilt from the recomputed scaled logit (passes on the boundary).
  float c = 0.f;
  for (int64_t t = lane; t < d.L; t += kWarp) {
    const int64_t j = idx[t];
    const float p = ToF(pr[t]);
    if (j < 0 || j >= d.Sk || p == 0.f) {
      pass[t] = 0;
      dss[t] = 0.f;
      continue;
    }
    const float dp = DotShared(dys, vb + j * d.Ev, d.Ev);
    dss[t] = dp;
    c = fmaf(p, dp, c);
    if (clamp > 0.f) {
      const float a = scale * DotShared(qs, kb + j * d.E, d.E);
      pass[t] = !(a < -clamp || a > clamp);
    } else {
      pass[t] = 1;
    }
  }
  c = WarpSum(c);
  float* dsr = ds + row * d.L;
  for (int64_t t = lane; t < d.L; t += kWarp) {
    const float g = pass[t] ? ToF(pr[t]) * (dss[t] - c) * scale : 0.f;
    dss[t] = g;
    dsr[t] = g;
  }
  __syncwarp();
  for (int64_t e = lane; e < d.E; e += kWarp) {
    float acc = 0.f;
    for (int64_t t = 0; t < d.L; ++t) {
      const float g = dss[t];
      if (g != 0.f) acc = fmaf(g, ToF(kb[static_cast<int64_t>(idx[t]) * d.E + e]), acc);
    }
    dq[row * d.E + e] = FromF<T>(acc);
  }
}

// Sort keys and values of every slot: key = kvh * (Sk + 1) + (j valid ? j : Sk), value = flat slot index.
__global__ void SlotKeysKernel(cpu::SparseAttentionDims d, const int32_t* __restrict__ indices,
                               uint32_t* __restrict__ keys, uint32_t* __restrict__ values) {
  const int64_t f = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t n = d.B * d.H * d.Sq * d.L;
  if (f >= n) return;
  const int64_t bh = f / (d.Sq * d.L);
  const int64_t kvh = bh / d.Group();  // the group's query heads are contiguous: bh / G = b * Hkv + h / G
  const int64_t j = indices[f];
  keys[f] = static_cast<uint32_t>(kvh * (d.Sk + 1) + (j >= 0 && j < d.Sk ? j : d.Sk));
  values[f] = static_cast<uint32_t>(f);
}

// offsets[key] = first sorted position with a key >= `key` (binary search), for every key and one past.
__global__ void KeyOffsetsKernel(int64_t n, int64_t n_keys, const uint32_t* __restrict__ sorted,
                                 uint32_t* __restrict__ offsets) {
  const int64_t key = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (key > n_keys) return;
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (static_cast<int64_t>(sorted[mid]) < key) lo = mid + 1; else hi = mid;
  }
  offsets[key] = static_cast<uint32_t>(lo);
}

template <typename T>
__global__ void BackwardKeysKernel(cpu::SparseAttentionDims d, const T* __restrict__ dy, const T* __restrict__ q,
                                   const T* __restrict__ probs, const float* __restrict__ ds,
                                   const uint32_t* __restrict__ offsets, const uint32_t* __restrict__ entries,
                                   T* __restrict__ dk, T* __restrict__ dv) {
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t item = blockIdx.x * static_cast<int64_t>(blockDim.x / kWarp) + warp;  // kvh * Sk + j
  if (item >= d.B * d.Hkv * d.Sk) return;
  const int64_t kvh = item / d.Sk, j = item % d.Sk;
  const int64_t key = kvh * (d.Sk + 1) + j;
  float ak[kMaxDimPerLane], av[kMaxDimPerLane];
#pragma unroll
  for (int u = 0; u < kMaxDimPerLane; ++u) ak[u] = av[u] = 0.f;
  for (uint32_t e = offsets[key]; e < offsets[key + 1]; ++e) {
    const int64_t f = entries[e];
    const int64_t row = f / d.L;  // flat query row (bh, i)
    const float g = ds[f], p = ToF(probs[f]);
#pragma unroll
    for (int u = 0; u < kMaxDimPerLane; ++u) {
      const int64_t x = lane + u * kWarp;
      if (g != 0.f && x < d.E) ak[u] = fmaf(g, ToF(q[row * d.E + x]), ak[u]);
      if (p != 0.f && x < d.Ev) av[u] = fmaf(p, ToF(dy[row * d.Ev + x]), av[u]);
    }
  }
#pragma unroll
  for (int u = 0; u < kMaxDimPerLane; ++u) {
    const int64_t x = lane + u * kWarp;
    if (x < d.E) dk[item * d.E + x] = FromF<T>(ak[u]);
    if (x < d.Ev) dv[item * d.Ev + x] = FromF<T>(av[u]);
  }
}

__global__ void FindBadIndexKernel(int64_t n, int64_t sk, const int32_t* __restrict__ indices,
                                   unsigned long long* __restrict__ first) {
  const int64_t f = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (f < n && (indices[f] < -1 || indices[f] >= sk)) atomicMin(first, static_cast<unsigned long long>(f));
}

__device__ __forceinline__ bool MaskKeeps(MaskType type, const void* mask, int64_t e) {
  switch (type) {
    case MaskType::kByte: return static_cast<const uint8_t*>(mask)[e] != 0;
    case MaskType::kInt32: return static_cast<const int32_t*>(mask)[e] != 0;
    case MaskType::kInt64: return static_cast<const int64_t*>(mask)[e] != 0;
    case MaskType::kFloat: return static_cast<const float*>(mask)[e] != 0.f;
  }
  return true;
}

__global__ void MaskToKeepKernel(MaskType type, const void* mask, int64_t n, uint8_t* __restrict__ keep) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e < n) keep[e] = MaskKeeps(type, mask, e) ? 1 : 0;
}

__global__ void MaskToBiasKernel(MaskType type, const void* mask, int64_t n, float* __restrict__ bias) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e < n) bias[e] = MaskKeeps(type, mask, e) ? 0.f : -INFINITY;
}

struct BackwardBuffers {
  float* ds;
  uint32_t *keys_in, *keys_out, *values_in, *values_out, *offsets;
  void* sort_temp;
  std::size_t sort_bytes;
  int end_bit;
  std::size_t bytes;
};

BackwardBuffers LayoutBackward(const cpu::SparseAttentionDims& d, void* workspace) {
  const int64_t n = d.B * d.H * d.Sq * d.L, n_keys = d.B * d.Hkv * (d.Sk + 1);
  if (n > 2147483647LL || n_keys > 2147483647LL) {
    throw std::invalid_argument("SparseAttentionGrad on CUDA: B * H * Sq * L and B * Hkv * (Sk + 1) must fit in int32");
  }
  BackwardBuffers b{};
  b.end_bit = 1;
  while (b.end_bit < 32 && (int64_t{1} << b.end_bit) <= n_keys) ++b.end_bit;
  cub::DeviceRadixSort::SortPairs(nullptr, b.sort_bytes, static_cast<const uint32_t*>(nullptr),
                                  static_cast<uint32_t*>(nullptr), static_cast<const uint32_t*>(nullptr),
                                  static_cast<uint32_t*>(nullptr), static_cast<int>(n), 0, b.end_bit);
  Arena arena(workspace);
  b.ds = arena.Take<float>(n);
  b.keys_in = arena.Take<uint32_t>(n);
  b.keys_out = arena.Take<uint32_t>(n);
  b.values_in = arena.Take<uint32_t>(n);
  b.values_out = arena.Take<uint32_t>(n);
  b.offsets = arena.Take<uint32_t>(n_keys + 1);
  b.sort_temp = arena.TakeBytes(b.sort_bytes);
  b.bytes = arena.Used();
  return b;
}

}  // namespace

void MaskToKeep(MaskType type, const void* mask, int64_t n, uint8_t* keep, cudaStream_t stream) {
  if (n == 0) return;
  MaskToKeepKernel<<<Blocks(n, 256), 256, 0, stream>>>(type, mask, n, keep);
  CheckLaunch("key_padding_mask");
}

void MaskToBias(MaskType type, const void* mask, int64_t n, float* bias, cudaStream_t stream) {
  if (n == 0) return;
  MaskToBiasKernel<<<Blocks(n, 256), 256, 0, stream>>>(type, mask, n, bias);
  CheckLaunch("key_padding_mask");
}

std::size_t FindBadIndexWorkspaceBytes() { return 256; }

int64_t FindBadIndex(const cpu::SparseAttentionDims& d, const int32_t* indices, void* workspace, cudaStream_t stream) {
  const int64_t n = d.B * d.H * d.Sq * d.L;
  if (n == 0) return -1;
  auto* first = static_cast<unsigned long long*>(workspace);
  const unsigned long long none = ~0ull;
  cudaMemcpyAsync(first, &none, sizeof(none), cudaMemcpyHostToDevice, stream);
  FindBadIndexKernel<<<Blocks(n, 256), 256, 0, stream>>>(n, d.Sk, indices, first);
  CheckLaunch("SparseAttention (index check)");
  unsigned long long host = none;
  cudaMemcpyAsync(&host, first, sizeof(host), cudaMemcpyDeviceToHost, stream);
  if (cudaStreamSynchronize(stream) != cudaSuccess) CheckLaunch("SparseAttention (index check)");
  return host == none ? -1 : static_cast<int64_t>(host);
}

void SparseAttentionForward(const cpu::SparseAttentionDims& d, const cpu::SparseAttentionParams& p, DType dtype,
                            const void* q, const void* k, const void* v, const int32_t* indices,
                            const float* key_bias, void* y, void* probs, cudaStream_t stream,
                            const cpu::AttentionBias<float>& attn_bias) {
  const int64_t rows = d.B * d.H * d.Sq;
  if (rows == 0) return;
  const RowLayout lay = LayoutRows(d, false);
  Dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    AllowShared(ForwardKernel<T>, lay.shared);
    ForwardKernel<T><<<Blocks(rows, lay.warps), lay.warps * kWarp, lay.shared, stream>>>(
        d, static_cast<float>(p.scale), static_cast<float>(p.clamp), p.causal, p.window, static_cast<const T*>(q),
        static_cast<const T*>(k), static_cast<const T*>(v), indices, key_bias, attn_bias, static_cast<T*>(y),
        static_cast<T*>(probs));
  });
  CheckLaunch("SparseAttention");
}

std::size_t SparseAttentionBackwardWorkspaceBytes(const cpu::SparseAttentionDims& d) {
  return LayoutBackward(d, nullptr).bytes;
}

void SparseAttentionBackward(const cpu::SparseAttentionDims& d, const cpu::SparseAttentionParams& p, DType dtype,
                             const void* dy, const void* q, const void* k, const void* v, const int32_t* indices,
                             const void* probs, void* dq, void* dk, void* dv, void* workspace, cudaStream_t stream) {
  if (d.E > kWarp * kMaxDimPerLane || d.Ev > kWarp * kMaxDimPerLane) {
    throw std::invalid_argument("SparseAttentionGrad on CUDA supports E, Ev <= " + std::to_string(kWarp * kMaxDimPerLane) +
                                "; got E = " + std::to_string(d.E) + ", Ev = " + std::to_string(d.Ev));
  }
  const int64_t rows = d.B * d.H * d.Sq, n = rows * d.L, n_keys = d.B * d.Hkv * (d.Sk + 1);
  const BackwardBuffers b = LayoutBackward(d, workspace);
  const RowLayout lay = LayoutRows(d, true);
  Dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    if (rows > 0) {
      AllowShared(BackwardRowsKernel<T>, lay.shared);
      BackwardRowsKernel<T><<<Blocks(rows, lay.warps), lay.warps * kWarp, lay.shared, stream>>>(
          d, static_cast<float>(p.scale), static_cast<float>(p.clamp), static_cast<const T*>(dy),
          static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), indices,
          static_cast<const T*>(probs), b.ds, static_cast<T*>(dq));
    }
    if (n > 0) {
      SlotKeysKernel<<<Blocks(n, 256), 256, 0, stream>>>(d, indices, b.keys_in, b.values_in);
      std::size_t sort_bytes = b.sort_bytes;
      cub::DeviceRadixSort::SortPairs(b.sort_temp, sort_bytes, b.keys_in, b.keys_out, b.values_in, b.values_out,
                                      static_cast<int>(n), 0, b.end_bit, stream);
    }
    KeyOffsetsKernel<<<Blocks(n_keys + 1, 256), 256, 0, stream>>>(n, n_keys, b.keys_out, b.offsets);
    const int64_t items = d.B * d.Hkv * d.Sk;
    if (items > 0) {
      constexpr int kKeyWarps = 4;
      BackwardKeysKernel<T><<<Blocks(items, kKeyWarps), kKeyWarps * kWarp, 0, stream>>>(
          d, static_cast<const T*>(dy), static_cast<const T*>(q), static_cast<const T*>(probs), b.ds, b.offsets,
          b.values_out, static_cast<T*>(dk), static_cast<T*>(dv));
    }
  });
  CheckLaunch("SparseAttentionGrad");
}

}  // namespace spt::cuda
