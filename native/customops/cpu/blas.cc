#include "cpu/blas.h"

#include <cblas.h>

#include <cstring>

namespace spt::cpu {

void Sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
           const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
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
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              static_cast<blasint>(m), static_cast<blasint>(n), static_cast<blasint>(k), alpha, a,
              static_cast<blasint>(lda), b, static_cast<blasint>(ldb), beta, c, static_cast<blasint>(ldc));
}

void SgemvTrans(int64_t m, int64_t n, float alpha, const float* a, int64_t lda, const float* x, float beta, float* y) {
  if (n <= 0) return;
  if (m <= 0) {
    for (int64_t j = 0; j < n; ++j) y[j] = beta == 0.0f ? 0.0f : beta * y[j];
    return;
  }
  if (beta == 0.0f) {
    // Some BLAS builds scale y by 0 rather than overwrite it (NaN stays NaN); clear it explicitly.
    std::memset(y, 0, static_cast<std::size_t>(n) * sizeof(float));
    beta = 1.0f;
  }
  cblas_sgemv(CblasRowMajor, CblasTrans, static_cast<blasint>(m), static_cast<blasint>(n), alpha, a,
              static_cast<blasint>(lda), x, 1, beta, y, 1);
}

int BlasThreads() { return openblas_get_num_threads(); }

void SetBlasThreads(int threads) { openblas_set_num_threads(threads < 1 ? 1 : threads); }

}  // namespace spt::cpu
