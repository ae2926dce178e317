#include "cpu/blas.h"

#include <omp.h>
#include <oneapi/dnnl/dnnl.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>

namespace spt::cpu {
namespace {

std::atomic<int> g_threads{1};

// oneDNN's CPU runtime in Debian's build is OpenMP: a GEMM uses the calling thread's OpenMP thread count, which
// is per thread. Each thread that calls a GEMM gets the process-wide count once (and again when it changes), so
// a kernel task running on one of ORT's pool threads does not start an OpenMP team of its own.
void UseConfiguredThreads() {
  thread_local int applied = 0;
  const int wanted = g_threads.load(std::memory_order_relaxed);
  if (applied != wanted) {
    omp_set_num_threads(wanted);
    applied = wanted;
  }
}

void Check(dnnl_status_t status, const char* what) {
  if (status != dnnl_success) {
    throw std::runtime_error(std::string("oneDNN ") + what + " failed with status " + std::to_string(status));
  }
}

}  // namespace

void Sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
           const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    // Only beta · C is left; beta = 0 writes zeros whatever C held (NaN included).
    for (int64_t i = 0; i < m; ++i) {
      float* row = c + i * ldc;
      if (beta == 0.0f) {
        std::memset(row, 0, static_cast<std::size_t>(n) * sizeof(float));
      } else {
        for (int64_t j = 0; j < n; ++j) row[j] *= beta;
      }
    }
    return;
  }
  // dnnl_sgemm with beta = 0 writes C without reading it (blas_test checks this with a NaN-filled C), so no
  // zeroing pass first: for the thin LoRA products (k = r) that pass cost as much as the product.
  UseConfiguredThreads();
  Check(dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', m, n, k, alpha, a, lda, b, ldb, beta, c, ldc), "sgemm");
}

void SgemvTrans(int64_t m, int64_t n, float alpha, const float* a, int64_t lda, const float* x, float beta, float* y) {
  // yᵀ[1, n] = alpha · xᵀ[1, m] · A[m, n] + beta · yᵀ
  Sgemm(false, false, 1, n, m, alpha, x, m, a, lda, beta, y, n);
}

int BlasThreads() { return g_threads.load(std::memory_order_relaxed); }

void SetBlasThreads(int threads) { g_threads.store(threads < 1 ? 1 : threads, std::memory_order_relaxed); }

const char* BlasName() {
  static const std::string name = [] {
    const dnnl_version_t* v = dnnl_version();
    char text[64];
    std::snprintf(text, sizeof text, "oneDNN %d.%d.%d", v->major, v->minor, v->patch);
    return std::string(text);
  }();
  return name.c_str();
}

}  // namespace spt::cpu
