// ORT plumbing for the CUDAExecutionProvider kernels (compiled only into libspt_customops_cuda.so):
// the compute stream, scratch from ORT's device allocator, one-element reads back to the host, and a cuBLAS
// handle per stream.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "binding/ort_api.h"

namespace spt::binding {

// The stream ORT runs this node on (KernelContext_GetGPUComputeStream).
inline cudaStream_t ComputeStream(const Ort::KernelContext& ctx) {
  return static_cast<cudaStream_t>(ctx.GetGPUComputeStream());
}

// Scratch from ORT's allocator for the current device (its arena), released when the kernel returns. Release
// after enqueueing is safe: every later user of the memory runs on the same, in-order stream (ORT's own CUDA
// kernels release their scratch the same way).
class CudaScratch {
 public:
  explicit CudaScratch(const Ort::KernelContext& ctx) : allocator_(AllocatorOf(ctx)) {}
  CudaScratch(const CudaScratch&) = delete;
  CudaScratch& operator=(const CudaScratch&) = delete;
  ~CudaScratch() {
    for (void* p : blocks_) allocator_.Free(p);
  }
  void* Take(std::size_t bytes) {
    if (bytes == 0) return nullptr;
    blocks_.push_back(allocator_.Alloc(bytes));
    return blocks_.back();
  }

 private:
  static Ort::Allocator AllocatorOf(const Ort::KernelContext& ctx) {
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess) throw std::runtime_error("spt CUDA: no current CUDA device");
    Ort::MemoryInfo memory("Cuda", OrtArenaAllocator, device, OrtMemTypeDefault);
    return ctx.GetAllocator(*static_cast<const OrtMemoryInfo*>(memory));
  }
  Ort::Allocator allocator_;
  std::vector<void*> blocks_;
};

// Reads one element back (synchronizes the stream).
template <typename T>
T CopyToHost(const T* device, cudaStream_t stream) {
  T host{};
  if (cudaMemcpyAsync(&host, device, sizeof(T), cudaMemcpyDeviceToHost, stream) != cudaSuccess ||
      cudaStreamSynchronize(stream) != cudaSuccess) {
    throw std::runtime_error(std::string("spt CUDA: copy to host failed: ") + cudaGetErrorString(cudaGetLastError()));
  }
  return host;
}

// A cuBLAS handle bound to `stream`, created once per (device, stream) and kept for the process. The NuGet
// package's headers do not ship ORT's CUDA resource ids (cuda_resource.h), so ORT's own handle is not reachable
// through KernelContext_GetResource here. Callers hold the returned lock while they use the handle.
struct StreamCublas {
  cublasHandle_t handle;
  std::unique_lock<std::mutex> lock;
};
inline StreamCublas CublasFor(cudaStream_t stream) {
  static std::mutex mutex;
  static std::map<std::pair<int, cudaStream_t>, cublasHandle_t> handles;
  std::unique_lock<std::mutex> lock(mutex);
  int device = 0;
  cudaGetDevice(&device);
  cublasHandle_t& h = handles[{device, stream}];
  if (!h) {
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) throw std::runtime_error("spt CUDA: cublasCreate failed");
    cublasSetStream(h, stream);
  }
  return {h, std::move(lock)};
}

}  // namespace spt::binding
