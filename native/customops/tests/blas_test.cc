// The GEMM wrapper (cpu/blas.h) against a plain double-precision product: every transpose combination, strided
// operands, alpha/beta, and beta = 0 overwriting whatever C held (NaN included), on the routed FFN's thin shapes.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "cpu/blas.h"
#include "tests/attention_test_util.h"

namespace spt::cpu {
namespace {

struct GemmCase {
  int64_t m, n, k;
  bool ta, tb;
  int64_t pad;  // extra columns in every leading dimension
  float alpha, beta;
};

TEST(Sgemm, MatchesDoubleReference) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (const GemmCase g : {GemmCase{5, 7, 3, false, false, 0, 1.f, 0.f}, GemmCase{5, 7, 3, true, false, 2, 0.5f, 1.f},
                           GemmCase{5, 7, 3, false, true, 1, 1.f, -2.f}, GemmCase{5, 7, 3, true, true, 3, 2.f, 0.f},
                           GemmCase{33, 64, 16, false, false, 40, 1.f, 0.f}, GemmCase{33, 16, 64, false, false, 0, 1.f, 1.f},
                           GemmCase{64, 48, 33, true, false, 5, 1.f, 0.f}, GemmCase{4, 6, 0, false, false, 0, 1.f, 0.f},
                           GemmCase{4, 6, 0, false, false, 0, 1.f, 3.f}}) {
    const int64_t a_rows = g.ta ? g.k : g.m, a_cols = g.ta ? g.m : g.k;
    const int64_t b_rows = g.tb ? g.n : g.k, b_cols = g.tb ? g.k : g.n;
    const int64_t lda = a_cols + g.pad, ldb = b_cols + g.pad, ldc = g.n + g.pad;
    const auto a = test::RandomNormal(a_rows * lda, 1), b = test::RandomNormal(b_rows * ldb, 2), c0 = test::RandomNormal(g.m * ldc, 3);
    std::vector<float> c = c0;
    // beta = 0: C's old values, NaN included, must not leak into the result.
    if (g.beta == 0.f) c.assign(c.size(), nan);
    Sgemm(g.ta, g.tb, g.m, g.n, g.k, g.alpha, a.data(), lda, b.data(), ldb, g.beta, c.data(), ldc);
    for (int64_t i = 0; i < g.m; ++i) {
      for (int64_t j = 0; j < g.n; ++j) {
        double s = 0.0;
        for (int64_t p = 0; p < g.k; ++p) {
          const double av = g.ta ? a[p * lda + i] : a[i * lda + p];
          const double bv = g.tb ? b[j * ldb + p] : b[p * ldb + j];
          s += av * bv;
        }
        const double want = g.alpha * s + (g.beta == 0.f ? 0.0 : g.beta * c0[i * ldc + j]);
        ASSERT_NEAR(c[i * ldc + j], want, 1e-4 * (1.0 + std::fabs(want)))
            << "m " << g.m << " n " << g.n << " k " << g.k << " ta " << g.ta << " tb " << g.tb << " at " << i << "," << j;
      }
    }
  }
}

}  // namespace
}  // namespace spt::cpu
