#include "cpu/parallel.h"

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace spt::cpu {

void SerialParallel::For(std::size_t n, const std::function<void(std::size_t)>& task) const {
  for (std::size_t i = 0; i < n; ++i) task(i);
}

ThreadParallel::ThreadParallel(int threads) : threads_(std::max(1, threads)) {}

void ThreadParallel::For(std::size_t n, const std::function<void(std::size_t)>& task) const {
  const std::size_t workers = std::min<std::size_t>(static_cast<std::size_t>(threads_), n);
  if (workers <= 1) {
    for (std::size_t i = 0; i < n; ++i) task(i);
    return;
  }
  std::atomic<std::size_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto worker = [&] {
    for (std::size_t i; (i = next.fetch_add(1)) < n;) {
      try {
        task(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
      }
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(workers - 1);
  for (std::size_t w = 1; w < workers; ++w) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
}

const Parallel& Serial() {
  static const SerialParallel serial;
  return serial;
}

}  // namespace spt::cpu
