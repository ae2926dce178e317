// The PQ encoder, the codebook loss and its gradient for the default codebook shape (C = 16 codewords of
// dc = 8 values per subspace), eight rows at a time: each vector lane holds one row, so the distances, the
// argmin, the soft weights and every gradient term are vertical operations with no horizontal sums, and the
// codebook values are scalars broadcast to all lanes. pq.cc calls these when LanesApply(dims) holds and its
// general per-row loops otherwise; both compute the same formulas (pq.h), in the same order per row.
#pragma once

#include <cstdint>

#include "cpu/pq.h"

namespace spt::cpu::lanes {

inline constexpr int64_t kCodewords = 16, kCodewordDim = 8;

inline bool LanesApply(const PQDims& d) { return d.C == kCodewords && d.dc == kCodewordDim; }

// Rows [n0, n1) of z [N, E]; codebook [M, C, dc] as the op receives it.
void EncodeRows(const PQDims& d, const float* z, const float* codebook, int64_t n0, int64_t n1, int32_t* codes);

// Sum over rows [n0, n1) of sum_m sum_k (zs - zh)^2 + (z - zh)^2, summed per row in fp32 and over rows in double.
double LossRows(const PQDims& d, const float* z, const float* codebook, int64_t n0, int64_t n1);

// Adds the gradient of g * (the rows' squared-error sum) to dwt ([M, dc, C]: the codebook transposed) and, unless
// dz is null, writes the rows' dz.
void GradRows(const PQDims& d, float g, const float* z, const float* codebook, int64_t n0, int64_t n1, float* dz,
              float* dwt);

}  // namespace spt::cpu::lanes
