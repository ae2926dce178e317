// Thin row-major wrapper over OpenBLAS's cblas_sgemm, plus control of OpenBLAS's own thread pool.
#pragma once

#include <cstdint>

namespace spt::cpu {

// C[m, n] = alpha · op(A) · op(B) + beta · C, all row-major. op(A) is [m, k] (A is [k, m] when
// trans_a), op(B) is [k, n]. Empty products are handled: m or n = 0 does nothing, k = 0 scales C by
// beta (beta = 0 writes zeros, whatever C held).
void Sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
           const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

// y[n] = alpha · A[m, n]ᵀ · x[m] + beta · y  (column sums weighted by x; deterministic order).
void SgemvTrans(int64_t m, int64_t n, float alpha, const float* a, int64_t lda, const float* x, float beta, float* y);

// Number of threads OpenBLAS uses for one call (process-wide setting of the pthread build).
int BlasThreads();
void SetBlasThreads(int threads);

}  // namespace spt::cpu
