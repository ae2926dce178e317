#include "binding/ort_parallel.h"

#include <algorithm>
#include <thread>

namespace spt::binding {

void OrtParallel::For(std::size_t n, const std::function<void(std::size_t)>& task) const {
  if (n == 0) return;
  if (n == 1) {
    task(0);
    return;
  }
  struct Call {
    const std::function<void(std::size_t)>* task;
    std::exception_ptr error;
    std::mutex mutex;
  } call{&task, nullptr, {}};
  ctx_.ParallelFor(
      [](void* data, std::size_t i) {
        auto* c = static_cast<Call*>(data);
        try {
          (*c->task)(i);
        } catch (...) {
          std::lock_guard<std::mutex> lock(c->mutex);
          if (!c->error) c->error = std::current_exception();
        }
      },
      n, 0, &call);
  if (call.error) std::rethrow_exception(call.error);
}

int OrtParallel::Workers() const { return static_cast<int>(std::max(1u, std::thread::hardware_concurrency())); }

}  // namespace spt::binding
