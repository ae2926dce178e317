// Plain-loop stand-ins for cpu/blas.cc, for machines without oneDNN (the GPU machine): the CPU kernels then
// run as the GPU check's reference on its small cases. Same contract as cpu/blas.h (row-major, C = alpha op(A)
// op(B) + beta C, beta == 0 overwrites C), accumulated in double.
#include <cstring>

#include "cpu/blas.h"

namespace spt::cpu {

void Sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
           const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double acc = 0.0;
      for (int64_t p = 0; p < k; ++p) {
        const float av = trans_a ? a[p * lda + i] : a[i * lda + p];
        const float bv = trans_b ? b[j * ldb + p] : b[p * ldb + j];
        acc += static_cast<double>(av) * bv;
      }
      float& out = c[i * ldc + j];
      out = static_cast<float>(alpha * acc) + (beta == 0.0f ? 0.0f : beta * out);
    }
  }
}

void SgemvTrans(int64_t m, int64_t n, float alpha, const float* a, int64_t lda, const float* x, float beta, float* y) {
  for (int64_t j = 0; j < n; ++j) {
    double acc = 0.0;
    for (int64_t i = 0; i < m; ++i) acc += static_cast<double>(a[i * lda + j]) * x[i];
    y[j] = static_cast<float>(alpha * acc) + (beta == 0.0f ? 0.0f : beta * y[j]);
  }
}

int BlasThreads() { return 1; }

void SetBlasThreads(int) {}

const char* BlasName() { return "reference loops"; }

}  // namespace spt::cpu
