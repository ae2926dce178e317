// The session's intra-op thread pool as a spt::cpu::Parallel, for kernels called from the binding layer.
#pragma once

#include <cstddef>
#include <exception>
#include <functional>
#include <mutex>

#include "binding/ort_api.h"
#include "cpu/parallel.h"

namespace spt::binding {

// Runs tasks through KernelContext::ParallelFor. Exceptions never cross ORT's pool: the first one a task
// throws is kept and rethrown on the calling thread once all tasks have finished.
class OrtParallel final : public cpu::Parallel {
 public:
  explicit OrtParallel(const Ort::KernelContext& ctx) : ctx_(ctx) {}

  void For(std::size_t n, const std::function<void(std::size_t)>& task) const override;
  int Workers() const override;

 private:
  const Ort::KernelContext& ctx_;
};

}  // namespace spt::binding
