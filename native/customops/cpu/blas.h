// Thin row-major GEMM wrapper over oneDNN's dnnl_sgemm. oneDNN picks its kernels from the CPU's instruction-set
// features (AVX2, AVX-512, AMX ...), not from a table of known CPU models, so a CPU it has never seen still gets
// the widest kernels it supports. The kernels parallelize over their own tasks: a GEMM runs on the calling
// thread (see SetBlasThreads).
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

// Threads one GEMM call may use (process-wide; 1 by default: the callers split work over their own pool).
int BlasThreads();
void SetBlasThreads(int threads);

// The GEMM library in use, for benchmarks and diagnostics (e.g. "oneDNN 2.6.3").
const char* BlasName();

}  // namespace spt::cpu
