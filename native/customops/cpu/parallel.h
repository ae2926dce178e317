// How kernels run work in parallel without knowing who owns the threads. Inside ORT the binding layer
// backs a Parallel with the session's intra-op thread pool (KernelContext_ParallelFor); tests and
// benchmarks use ThreadParallel or run serially.
#pragma once

#include <cstddef>
#include <functional>

namespace spt::cpu {

class Parallel {
 public:
  virtual ~Parallel() = default;
  // Calls task(i) once for every i in [0, n), possibly concurrently; returns when all have finished.
  virtual void For(std::size_t n, const std::function<void(std::size_t)>& task) const = 0;
  // Number of workers that may run tasks at once (a hint for choosing how to split work).
  virtual int Workers() const = 0;
};

// Runs every task on the calling thread.
class SerialParallel final : public Parallel {
 public:
  void For(std::size_t n, const std::function<void(std::size_t)>& task) const override;
  int Workers() const override { return 1; }
};

// Runs tasks on `threads` std::threads (the caller included), handing out indices dynamically.
class ThreadParallel final : public Parallel {
 public:
  explicit ThreadParallel(int threads);
  void For(std::size_t n, const std::function<void(std::size_t)>& task) const override;
  int Workers() const override { return threads_; }

 private:
  int threads_;
};

// A process-wide serial runner, for callers that have no pool.
const Parallel& Serial();

}  // namespace spt::cpu
