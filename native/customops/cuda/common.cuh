// Device helpers shared by the spt CUDA kernels: element loads/stores in fp32 for the three I/O types,
// warp reductions, launch checks and a bump allocator over caller-provided scratch.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda/kernels.h"

namespace spt::cuda {

__device__ __forceinline__ float ToF(float x) { return x; }
__device__ __forceinline__ float ToF(__half x) { return __half2float(x); }
__device__ __forceinline__ float ToF(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T FromF(float x);
template <>
__device__ __forceinline__ float FromF<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half FromF<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 FromF<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

__device__ __forceinline__ float WarpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float WarpMax(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

template <typename T>
__global__ void Fill(int64_t n, float value, T* __restrict__ out) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e < n) out[e] = FromF<T>(value);
}

inline int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Calls fn(T{}) with the C++ element type of `dtype`.
template <typename F>
void Dispatch(DType dtype, F&& fn) {
  switch (dtype) {
    case DType::kF32: fn(float{}); return;
    case DType::kF16: fn(__half{}); return;
    case DType::kBF16: fn(__nv_bfloat16{}); return;
  }
  throw std::invalid_argument("spt CUDA: unknown element type");
}

// Carves aligned sub-buffers out of caller scratch; with base == nullptr it only measures.
class Arena {
 public:
  explicit Arena(void* base) : base_(static_cast<char*>(base)) {}
  template <typename T>
  T* Take(int64_t count) {
    used_ = (used_ + 255) / 256 * 256;
    T* p = base_ ? reinterpret_cast<T*>(base_ + used_) : nullptr;
    used_ += static_cast<std::size_t>(count > 0 ? count : 0) * sizeof(T);
    return count > 0 ? p : nullptr;
  }
  void* TakeBytes(std::size_t bytes) {
    used_ = (used_ + 255) / 256 * 256;
    void* p = base_ ? base_ + used_ : nullptr;
    used_ += bytes;
    return bytes > 0 ? p : nullptr;
  }
  std::size_t Used() const { return used_ + 256; }  // slack for the caller's own alignment

 private:
  char* base_;
  std::size_t used_ = 0;
};

// Grid-size guard: CUDA's grid.x limit and our int32 indexing.
inline unsigned Blocks(int64_t work, int64_t per_block) {
  const int64_t n = CeilDiv(work, per_block);
  if (n > 2147483647LL) throw std::invalid_argument("spt CUDA: problem too large for one launch");
  return static_cast<unsigned>(n > 0 ? n : 1);
}

}  // namespace spt::cuda
