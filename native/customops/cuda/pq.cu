// PQEncode, PQTopK, PQLoss and PQLossGrad on the GPU; semantics of cpu/pq.h.
#include <cub/block/block_scan.cuh>

#include <cfloat>
#include <cmath>
#include <string>

#include "cuda/common.cuh"

namespace spt::cuda {

const char* DTypeName(DType t) {
  switch (t) {
    case DType::kF32: return "float32";
    case DType::kF16: return "float16";
    case DType::kBF16: return "bfloat16";
  }
  return "unknown";
}

void CheckLaunch(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": CUDA launch failed: " + cudaGetErrorString(e));
}

namespace {

// ------------------------------------------------------------------------------------------ PQEncode

// One thread per (row n, subspace m). L1 in fp32 with the CPU kernel's four interleaved partial sums, so fp32
// inputs give the CPU's codes bit for bit; strict < keeps the lowest codeword on ties.
template <typename T>
__global__ void PQEncodeKernel(int64_t n_rows, int64_t M, int64_t C, int64_t dc, const T* __restrict__ z,
                               const T* __restrict__ w, int32_t* __restrict__ codes) {
  const int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t m = blockIdx.y;
  if (n >= n_rows) return;
  const T* zm = z + n * M * dc + m * dc;
  const T* wm = w + m * C * dc;
  int32_t best = 0;
  float best_dist = 0.f;
  for (int64_t c = 0; c < C; ++c) {
    const T* wc = wm + c * dc;
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    int64_t d = 0;
    for (; d + 4 <= dc; d += 4) {
#pragma unroll
      for (int u = 0; u < 4; ++u) acc[u] += fabsf(ToF(zm[d + u]) - ToF(wc[d + u]));
    }
    float s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for (; d < dc; ++d) s += fabsf(ToF(zm[d]) - ToF(wc[d]));
    if (c == 0 || s < best_dist) {
      best_dist = s;
      best = static_cast<int32_t>(c);
    }
  }
  codes[n * M + m] = best;
}

// -------------------------------------------------------------------------------------------- PQTopK

constexpr int kTopKThreads = 256;
using TopKScan = cub::BlockScan<int, kTopKThreads>;

struct TopKShared {
  TopKScan::TempStorage scan;
  int threshold, at_threshold, taken, eligible, running;
};

// Marks `need` candidates among keys j = first + r * stride < limit (levels[j] >= 0, not yet marked): the
// highest levels, ties to the earliest keys (the CPU's MarkTop). Returns the number marked (same on all threads).
__device__ int MarkTop(TopKShared& sh, int* hist, const int16_t* levels, uint8_t* marked, int limit, int first,
                       int stride, int max_level, int need) {
  if (need <= 0) return 0;
  for (int l = threadIdx.x; l <= max_level; l += blockDim.x) hist[l] = 0;
  __syncthreads();
  for (int j = first + threadIdx.x * stride; j < limit; j += blockDim.x * stride) {
    if (levels[j] >= 0 && !marked[j]) atomicAdd(&hist[levels[j]], 1);  // integer counts: order-free
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int above = 0, t = max_level, total = 0;
    for (int l = 0; l <= max_level; ++l) total += hist[l];
    for (; t >= 0; --t) {
      if (above + hist[t] >= need) break;
      above += hist[t];
    }
    if (t < 0) {  // fewer candidates than `need`: take them all (level 0 included)
      t = 0;
      above -= hist[0];
    }
    sh.threshold = t;
    sh.at_threshold = need - above;
    sh.taken = total < need ? total : need;
    sh.running = 0;
  }
  __syncthreads();
  const int t = sh.threshold, at_threshold = sh.at_threshold;
  const int members = limit > first ? (limit - first + stride - 1) / stride : 0;
  for (int base = 0; base < members; base += blockDim.x) {
    const int r = base + threadIdx.x;
    const int j = first + r * stride;
    const bool cand = r < members && levels[j] >= 0 && !marked[j];
    const bool at = cand && levels[j] == t;
    int rank = 0, count = 0;
    TopKScan(sh.scan).ExclusiveSum(at ? 1 : 0, rank, count);
    const int before = sh.running;
    if (cand && (levels[j] > t || (at && before + rank < at_threshold))) marked[j] = 1;
    __syncthreads();
    if (threadIdx.x == 0) sh.running = before + count;
    __syncthreads();
  }
  return sh.taken;
}

// One CTA per query row (bh, i). Shared: levels int16 [Sk], marked uint8 [Sk], histogram [max_level + 1].
__global__ void __launch_bounds__(kTopKThreads) PQTopKKernel(cpu::PQTopKDims d, bool bucketed, bool causal,
                                                            int64_t window, const int32_t* __restrict__ codes_q,
                                                            const int32_t* __restrict__ codes_k,
                                                            const uint8_t* __restrict__ keep,
                                                            int32_t* __restrict__ indices) {
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ TopKShared sh;
  const int M = static_cast<int>(d.M), Sk = static_cast<int>(d.Sk), L = static_cast<int>(d.L);
  const int max_level = bucketed ? 3 : M;
  int* hist = reinterpret_cast<int*>(smem);                     // [max_level + 1]
  int32_t* qc = hist + (max_level + 1);                         // [M]
  int16_t* levels = reinterpret_cast<int16_t*>(qc + M);         // [Sk]
  uint8_t* marked = reinterpret_cast<uint8_t*>(levels + Sk);    // [Sk]
  const int64_t row = blockIdx.x;
  const int64_t bh = row / d.Sq, i = row % d.Sq;
  const int64_t kvh = cpu::KvHeadOf(bh, d.H, d.Hkv);
  const int64_t pos = i + d.Sk - d.Sq;  // the query's aligned key position
  auto clamp_keys = [&](int64_t v) { return static_cast<int>(v < 0 ? 0 : (v > d.Sk ? d.Sk : v)); };
  int limit = causal ? clamp_keys(pos + 1) : Sk;
  int lo = 0;
  if (window > 0) {
    lo = clamp_keys(pos - window + 1);
    if (!causal) limit = clamp_keys(pos + window);
  }
  for (int m = threadIdx.x; m < M; m += blockDim.x) qc[m] = codes_q[row * M + m];
  if (threadIdx.x == 0) sh.eligible = 0;
  __syncthreads();
  const int32_t* kc = codes_k + kvh * d.Sk * d.M;
  const uint8_t* kp = keep ? keep + (bh / d.H) * d.Sk : nullptr;
  const int bucket_width = M / 4 > 1 ? M / 4 : 1;
  int eligible = 0;
  for (int j = threadIdx.x; j < limit; j += blockDim.x) {
    marked[j] = 0;
    const bool ok = j >= lo && (!kp || kp[j]);
    int n = 0;
    if (ok) {
      for (int m = 0; m < M; ++m) n += kc[static_cast<int64_t>(j) * M + m] == qc[m];
    }
    levels[j] = ok ? static_cast<int16_t>(bucketed ? min(3, n / bucket_width) : n) : int16_t{-1};
    eligible += ok;
  }
  atomicAdd(&sh.eligible, eligible);
  __syncthreads();
  if (bucketed) {
    int taken = 0;
    for (int c = 0; c < 4; ++c) {
      const int quota = c < L ? (L - c + 3) / 4 : 0;  // output slots p < L with p % 4 == c
      taken += MarkTop(sh, hist, levels, marked, limit, c, 4, max_level, quota);
    }
    const int want = min(L, sh.eligible);
    MarkTop(sh, hist, levels, marked, limit, 0, 1, max_level, want - taken);
  } else {
    MarkTop(sh, hist, levels, marked, limit, 0, 1, max_level, L);
  }
  __syncthreads();
  // Emit the marked keys in ascending order, then -1.
  int32_t* out = indices + row * L;
  if (threadIdx.x == 0) sh.running = 0;
  __syncthreads();
  for (int base = 0; base < limit; base += blockDim.x) {
    const int j = base + threadIdx.x;
    const int flag = j < limit && marked[j] ? 1 : 0;
    int rank = 0, count = 0;
    TopKScan(sh.scan).ExclusiveSum(flag, rank, count);
    const int before = sh.running;
    if (flag && before + rank < L) out[before + rank] = j;
    __syncthreads();
    if (threadIdx.x == 0) sh.running = before + count;
    __syncthreads();
  }
  for (int t = sh.running + threadIdx.x; t < L; t += blockDim.x) out[t] = -1;
}

std::size_t TopKSharedBytes(const cpu::PQTopKDims& d, bool bucketed) {
  const int64_t max_level = bucketed ? 3 : d.M;
  return static_cast<std::size_t>((max_level + 1) * 4 + d.M * 4 + d.Sk * 3 + 16);
}

// ------------------------------------------------------------------------------------------- PQLoss

constexpr int kMaxCodewords = 256, kMaxCodewordDim = 64;
constexpr int kLossThreads = 256;
constexpr int64_t kGradRowsPerChunk = 64;

void CheckLossDims(const char* op, const cpu::PQDims& d) {
  if (d.C > kMaxCodewords || d.dc > kMaxCodewordDim) {
    throw std::invalid_argument(std::string(op) + " on CUDA supports up to " + std::to_string(kMaxCodewords) +
                                " codewords of width <= " + std::to_string(kMaxCodewordDim) + "; got C = " +
                                std::to_string(d.C) + ", dc = " + std::to_string(d.dc));
  }
}

// Per (row, subspace): distances in fp64 (as the CPU kernel), hard argmin, soft weights and the two squared
// errors. Each thread sums its pairs; a fixed tree gives one fp64 partial per CTA.
template <typename T>
__global__ void __launch_bounds__(kLossThreads) PQLossPartials(cpu::PQDims d, const T* __restrict__ z,
                                                               const T* __restrict__ w, double* __restrict__ partial) {
  __shared__ double red[kLossThreads];
  const int64_t pairs = d.N * d.M;
  double sum = 0.0;
  for (int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; q < pairs;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = q / d.M, m = q % d.M;
    const T* zm = z + n * d.E + m * d.dc;
    const T* wm = w + m * d.C * d.dc;
    double dist[kMaxCodewords];
    double inv_sum = 0.0;
    int64_t hard = 0;
    for (int64_t c = 0; c < d.C; ++c) {
      double s = 0.0;
      for (int64_t k = 0; k < d.dc; ++k) s += fabs(static_cast<double>(ToF(zm[k])) - ToF(wm[c * d.dc + k]));
      dist[c] = s;
      if (s < dist[hard]) hard = c;
      inv_sum += 1.0 / fmax(s, cpu::kPQDistanceFloor);
    }
    for (int64_t k = 0; k < d.dc; ++k) {
      double soft = 0.0;
      for (int64_t c = 0; c < d.C; ++c) soft += (1.0 / fmax(dist[c], cpu::kPQDistanceFloor) / inv_sum) * ToF(wm[c * d.dc + k]);
      const double zh = ToF(wm[hard * d.dc + k]);
      const double a = soft - zh, b = static_cast<double>(ToF(zm[k])) - zh;
      sum += a * a + b * b;
    }
  }
  red[threadIdx.x] = sum;
  __syncthreads();
  for (int s = kLossThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = red[0];
}

__global__ void PQLossFinish(int blocks, double count, const double* __restrict__ partial, float* __restrict__ loss) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  double total = 0.0;
  for (int b = 0; b < blocks; ++b) total += partial[b];  // fixed order: deterministic
  *loss = count > 0 ? static_cast<float>(total / count) : 0.f;
}

constexpr int kLossBlocks = 512;

// Gradient, one CTA per (chunk of kGradRowsPerChunk rows, subspace m). Per row the CTA builds the row's state
// in shared memory (distances, argmin, soft weights, soft centroid and their adjoints, spec 2.3), writes dz,
// and each thread adds the row's contribution to the codebook elements (c, k) it owns. Rows are visited in
// order, so the chunk partial has a fixed summation order; chunks are summed in order by PQLossGradFinish.
template <typename T>
__global__ void PQLossGradChunks(cpu::PQDims d, const float* __restrict__ dloss, const T* __restrict__ z,
                                 const T* __restrict__ w, bool detach, T* __restrict__ dz,
                                 double* __restrict__ partial) {
  __shared__ double dist[kMaxCodewords], alpha[kMaxCodewords], dalpha[kMaxCodewords], dd[kMaxCodewords];
  __shared__ double zk[kMaxCodewordDim], soft[kMaxCodewordDim], dsoft[kMaxCodewordDim];
  __shared__ double weighted;
  __shared__ int hard;
  const int64_t chunk = blockIdx.x, m = blockIdx.y;
  const int C = static_cast<int>(d.C), dc = static_cast<int>(d.dc);
  const T* wm = w + m * d.C * d.dc;
  const int owned = C * dc;
  // Each squared error e^2 of the two means contributes (2 / count) e per unit of dloss.
  const double g = 2.0 * static_cast<double>(*dloss) / static_cast<double>(d.N * d.M * d.dc);
  double* out = partial + (chunk * d.M + m) * owned;
  for (int o = threadIdx.x; o < owned; o += blockDim.x) out[o] = 0.0;
  const int64_t n0 = chunk * kGradRowsPerChunk, n1 = d.N < n0 + kGradRowsPerChunk ? d.N : n0 + kGradRowsPerChunk;
  for (int64_t n = n0; n < n1; ++n) {
    const T* zm = z + n * d.E + m * d.dc;
    for (int k = threadIdx.x; k < dc; k += blockDim.x) zk[k] = ToF(zm[k]);
    __syncthreads();
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
      double s = 0.0;
      for (int k = 0; k < dc; ++k) s += fabs(zk[k] - static_cast<double>(ToF(wm[c * dc + k])));
      dist[c] = s;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int h = 0;
      double inv_sum = 0.0;
      for (int c = 0; c < C; ++c) {
        if (dist[c] < dist[h]) h = c;
        alpha[c] = 1.0 / fmax(dist[c], cpu::kPQDistanceFloor);
        inv_sum += alpha[c];
      }
      for (int c = 0; c < C; ++c) alpha[c] /= inv_sum;
      hard = h;
    }
    __syncthreads();
    for (int k = threadIdx.x; k < dc; k += blockDim.x) {
      double s = 0.0;
      for (int c = 0; c < C; ++c) s += alpha[c] * ToF(wm[c * dc + k]);
      soft[k] = s;
      dsoft[k] = g * (s - static_cast<double>(ToF(wm[hard * dc + k])));  // dL/dzs
    }
    __syncthreads();
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
      double dot = 0.0;
      for (int k = 0; k < dc; ++k) dot += dsoft[k] * ToF(wm[c * dc + k]);
      dalpha[c] = dot;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      double s = 0.0;
      for (int c = 0; c < C; ++c) s += alpha[c] * dalpha[c];
      weighted = s;
    }
    __syncthreads();
    // a = softmax(-log D~): dl_c = a_c (da_c - sum a da); dD_c = -dl_c / D_c where D_c > floor.
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
      dd[c] = dist[c] > cpu::kPQDistanceFloor ? -(alpha[c] * (dalpha[c] - weighted)) / dist[c] : 0.0;
    }
    __syncthreads();
    if (dz) {
      for (int k = threadIdx.x; k < dc; k += blockDim.x) {
        double v = 0.0;
        if (!detach) {
          const double zh = ToF(wm[hard * dc + k]);
          v = g * (zk[k] - zh);
          for (int c = 0; c < C; ++c) {
            const double x = zk[k] - static_cast<double>(ToF(wm[c * dc + k]));
            v += (x > 0 ? 1.0 : (x < 0 ? -1.0 : 0.0)) * dd[c];
          }
        }
        dz[n * d.E + m * d.dc + k] = FromF<T>(static_cast<float>(v));
      }
    }
    for (int o = threadIdx.x; o < owned; o += blockDim.x) {
      const int c = o / dc, k = o % dc;
      const double wck = ToF(wm[o]);
      const double zh = ToF(wm[hard * dc + k]);
      double v = alpha[c] * dsoft[k];
      if (c == hard) v += g * ((zh - soft[k]) + (zh - zk[k]));
      const double x = zk[k] - wck;
      v -= (x > 0 ? 1.0 : (x < 0 ? -1.0 : 0.0)) * dd[c];
      out[o] += v;
    }
    __syncthreads();
  }
}

template <typename T>
__global__ void PQLossGradFinish(int64_t chunks, int64_t M, int64_t owned, const double* __restrict__ partial,
                                 T* __restrict__ dw) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e >= M * owned) return;
  const int64_t m = e / owned, o = e % owned;
  double s = 0.0;
  for (int64_t c = 0; c < chunks; ++c) s += partial[(c * M + m) * owned + o];  // chunk order: deterministic
  dw[e] = FromF<T>(static_cast<float>(s));
}


}  // namespace

void PQEncode(const cpu::PQDims& d, DType dtype, const void* z, const void* codebook, int32_t* codes,
              cudaStream_t stream) {
  if (d.N == 0 || d.M == 0) return;
  if (d.M > 65535) throw std::invalid_argument("PQEncode on CUDA supports at most 65535 subspaces");
  Dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    const dim3 grid(Blocks(d.N, 128), static_cast<unsigned>(d.M));
    PQEncodeKernel<T><<<grid, 128, 0, stream>>>(d.N, d.M, d.C, d.dc, static_cast<const T*>(z),
                                                static_cast<const T*>(codebook), codes);
  });
  CheckLaunch("PQEncode");
}

int64_t PQTopKMaxKeys() {
  int device = 0, optin = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess) {
    return 0;
  }
  // Room for the histogram (exact mode, M <= 1024) and the query codes.
  return (static_cast<int64_t>(optin) - static_cast<int64_t>(sizeof(TopKShared)) - 2 * 1025 * 4 - 16) / 3;
}

void PQTopK(const cpu::PQTopKDims& d, cpu::TopKMode mode, bool causal, int64_t window, const int32_t* codes_q,
            const int32_t* codes_k, const uint8_t* key_keep, int32_t* indices, cudaStream_t stream) {
  if (window < 0) cpu::FailAttribute("PQTopK", "window", "must be >= 0 (0 = off); got " + std::to_string(window));
  if (d.M > 1024) throw std::invalid_argument("PQTopK on CUDA supports at most 1024 subspaces; got " + std::to_string(d.M));
  const int64_t rows = d.B * d.H * d.Sq;
  if (rows == 0 || d.L == 0) return;
  const bool bucketed = mode == cpu::TopKMode::kBucketed;
  const std::size_t shared = TopKSharedBytes(d, bucketed);
  if (d.Sk > PQTopKMaxKeys()) {
    throw std::invalid_argument("PQTopK on CUDA supports Sk <= " + std::to_string(PQTopKMaxKeys()) +
                                " on this device; got Sk = " + std::to_string(d.Sk));
  }
  if (shared > 48 * 1024) {
    if (cudaFuncSetAttribute(PQTopKKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared)) !=
        cudaSuccess) {
      CheckLaunch("PQTopK (shared memory)");
    }
  }
  PQTopKKernel<<<Blocks(rows, 1), kTopKThreads, shared, stream>>>(d, bucketed, causal, window, codes_q, codes_k,
                                                                 key_keep, indices);
  CheckLaunch("PQTopK");
}

std::size_t PQLossWorkspaceBytes(const cpu::PQDims&) { return kLossBlocks * sizeof(double) + 256; }

std::size_t PQLossGradWorkspaceBytes(const cpu::PQDims& d) {
  return static_cast<std::size_t>(CeilDiv(d.N, kGradRowsPerChunk) * d.M * d.C * d.dc) * sizeof(double) + 256;
}

void PQLoss(const cpu::PQDims& d, DType dtype, const void* z, const void* codebook, float* loss, void* workspace,
            cudaStream_t stream) {
  CheckLossDims("PQLoss", d);
  double* partial = static_cast<double*>(workspace);
  const int64_t pairs = d.N * d.M;
  const int blocks = static_cast<int>(std::min<int64_t>(kLossBlocks, std::max<int64_t>(1, CeilDiv(pairs, kLossThreads))));
  Dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    PQLossPartials<T><<<blocks, kLossThreads, 0, stream>>>(d, static_cast<const T*>(z), static_cast<const T*>(codebook),
                                                           partial);
  });
  PQLossFinish<<<1, 32, 0, stream>>>(blocks, static_cast<double>(d.N * d.M * d.dc), partial, loss);
  CheckLaunch("PQLoss");
}

void PQLossGrad(const cpu::PQDims& d, DType dtype, const float* dloss, const void* z, const void* codebook,
                bool detach_inputs, void* dz, void* dcodebook, void* workspace, cudaStream_t stream) {
  CheckLossDims("PQLossGrad", d);
  const int64_t owned = d.C * d.dc, chunks = CeilDiv(d.N, kGradRowsPerChunk);
  Dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    if (d.N == 0 || d.M == 0) {
      Fill<T><<<Blocks(d.M * owned, 256), 256, 0, stream>>>(d.M * owned, 0.f, static_cast<T*>(dcodebook));
      return;
    }
    if (chunks > 2147483647LL || d.M > 65535) throw std::invalid_argument("PQLossGrad on CUDA: too many rows or subspaces");
    double* partial = static_cast<double*>(workspace);
    const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(d.M));
    PQLossGradChunks<T><<<grid, 128, 0, stream>>>(d, dloss, static_cast<const T*>(z), static_cast<const T*>(codebook),
                                                  detach_inputs, static_cast<T*>(dz), partial);
    PQLossGradFinish<T><<<Blocks(d.M * owned, 256), 256, 0, stream>>>(chunks, d.M, owned, partial,
                                                                      static_cast<T*>(dcodebook));
  });
  CheckLaunch("PQLossGrad");
}

}  // namespace spt::cuda
