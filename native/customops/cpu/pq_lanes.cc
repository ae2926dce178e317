#include "cpu/pq_lanes.h"

#include <algorithm>
#include <cstddef>
#include <new>

#include "cpu/sparse_attention_common.h"

namespace spt::cpu::lanes {

namespace {

constexpr int64_t kLanes = 8;  // rows per step: one 256-bit vector of floats
constexpr int64_t kC = kCodewords, kDc = kCodewordDim;

// GCC/Clang vector extensions: the cloned callers compile them to AVX2 or to pairs of SSE operations.
typedef float F8 __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t I8 __attribute__((vector_size(kLanes * sizeof(int32_t))));

// The helpers below take and return vectors by value; they are always inlined into the cloned functions, so no
// call with a vector argument crosses an ABI boundary (GCC warns about the baseline clone's ABI otherwise).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

__attribute__((always_inline)) inline F8 Splat(float x) { return F8{} + x; }

__attribute__((always_inline)) inline F8 Abs(F8 x) { return reinterpret_cast<F8>(reinterpret_cast<I8>(x) & 0x7fffffff); }

// The rows [n, n + count) of subspace m, transposed: zt[k][i] = z[(n + i) * E + m * dc + k]; lanes past count are 0.
__attribute__((always_inline)) inline void Load(const PQDims& d, const float* z, int64_t n, int64_t count, int64_t m,
                                                F8* zt) {
  for (int64_t k = 0; k < kDc; ++k) zt[k] = F8{};
  for (int64_t i = 0; i < count; ++i) {
    const float* row = z + (n + i) * d.E + m * kDc;
    for (int64_t k = 0; k < kDc; ++k) zt[k][i] = row[k];
  }
}

// One subspace's assignment of eight rows: distances, hard code and centroid, and (if soft) weights and the
// soft centroid. w is the subspace's codebook block [C, dc].
struct Assignment {
  F8 dist[kC], alpha[kC], soft[kDc], hard[kDc];
  I8 code;
};

__attribute__((always_inline)) inline void Assign(const F8* zt, const float* w, bool soft, Assignment& a) {
  for (int64_t c = 0; c < kC; ++c) {
    F8 acc = F8{};
    for (int64_t k = 0; k < kDc; ++k) acc += Abs(zt[k] - Splat(w[c * kDc + k]));
    a.dist[c] = acc;
  }
  // First lowest distance: a later codeword replaces the best only when strictly closer.
  F8 best = a.dist[0];
  a.code = I8{};
  for (int64_t k = 0; k < kDc; ++k) a.hard[k] = Splat(w[k]);
  for (int64_t c = 1; c < kC; ++c) {
    const I8 closer = a.dist[c] < best;
    best = closer ? a.dist[c] : best;
    a.code = closer ? (I8{} + static_cast<int32_t>(c)) : a.code;
    for (int64_t k = 0; k < kDc; ++k) a.hard[k] = closer ? Splat(w[c * kDc + k]) : a.hard[k];
  }
  if (!soft) return;
  const F8 floor = Splat(static_cast<float>(kPQDistanceFloor));
  F8 sum = F8{};
  for (int64_t c = 0; c < kC; ++c) {
    a.alpha[c] = Splat(1.f) / (a.dist[c] < floor ? floor : a.dist[c]);
    sum += a.alpha[c];
  }
  const F8 inv = Splat(1.f) / sum;
  for (int64_t c = 0; c < kC; ++c) a.alpha[c] *= inv;
  for (int64_t k = 0; k < kDc; ++k) {
    F8 acc = F8{};
    for (int64_t c = 0; c < kC; ++c) acc += a.alpha[c] * Splat(w[c * kDc + k]);
    a.soft[k] = acc;
  }
}

// A zeroed array of vectors on the heap, aligned for them (std::vector drops the vector type's alignment).
constexpr std::size_t kVectorAlign = 64;  // a literal: alignof(F8) is not the same in every clone

class VectorArray {
 public:
  explicit VectorArray(std::size_t n) : data_(static_cast<F8*>(::operator new(n * sizeof(F8), std::align_val_t{kVectorAlign}))) {
    for (std::size_t i = 0; i < n; ++i) data_[i] = F8{};
  }
  ~VectorArray() { ::operator delete(data_, std::align_val_t{kVectorAlign}); }
  VectorArray(const VectorArray&) = delete;
  VectorArray& operator=(const VectorArray&) = delete;
  F8* data() { return data_; }

 private:
  F8* data_;
};

}  // namespace

SPT_CPU_CLONES void EncodeRows(const PQDims& d, const float* z, const float* codebook, int64_t n0, int64_t n1,
                               int32_t* codes) {
  F8 zt[kDc];
  Assignment a;
  for (int64_t n = n0; n < n1; n += kLanes) {
    const int64_t count = std::min(kLanes, n1 - n);
    for (int64_t m = 0; m < d.M; ++m) {
      Load(d, z, n, count, m, zt);
      Assign(zt, codebook + m * kC * kDc, false, a);
      for (int64_t i = 0; i < count; ++i) codes[(n + i) * d.M + m] = a.code[i];
    }
  }
}

SPT_CPU_CLONES double LossRows(const PQDims& d, const float* z, const float* codebook, int64_t n0, int64_t n1) {
  F8 zt[kDc];
  Assignment a;
  double sum = 0.0;
  for (int64_t n = n0; n < n1; n += kLanes) {
    const int64_t count = std::min(kLanes, n1 - n);
    F8 row_sum = F8{};
    for (int64_t m = 0; m < d.M; ++m) {
      Load(d, z, n, count, m, zt);
      Assign(zt, codebook + m * kC * kDc, true, a);
      for (int64_t k = 0; k < kDc; ++k) {
        const F8 s = a.soft[k] - a.hard[k], e = zt[k] - a.hard[k];
        row_sum += s * s + e * e;
      }
    }
    for (int64_t i = 0; i < count; ++i) sum += row_sum[i];  // padded lanes are left out
  }
  return sum;
}

SPT_CPU_CLONES void GradRows(const PQDims& d, float g, const float* z, const float* codebook, int64_t n0, int64_t n1,
                             float* dz, float* dwt) {
  // Per-lane codebook gradient [M, C, dc] of vectors, summed over the lanes once at the end: the hard term's
  // scatter into W[m, code] becomes a masked add per codeword.
  VectorArray dw(static_cast<std::size_t>(d.M * kC * kDc));
  const F8 floor = Splat(static_cast<float>(kPQDistanceFloor));
  F8 zt[kDc], hard_grad[kDc], dsoft[kDc], dzm[kDc];
  Assignment a;
  for (int64_t n = n0; n < n1; n += kLanes) {
    const int64_t count = std::min(kLanes, n1 - n);
    F8 gv = F8{};
    for (int64_t i = 0; i < count; ++i) gv[i] = g;  // padded lanes contribute nothing
    for (int64_t m = 0; m < d.M; ++m) {
      const float* w = codebook + m * kC * kDc;
      Load(d, z, n, count, m, zt);
      Assign(zt, w, true, a);
      for (int64_t k = 0; k < kDc; ++k) {
        hard_grad[k] = gv * ((a.hard[k] - a.soft[k]) + (a.hard[k] - zt[k]));  // dL/dzh
        dsoft[k] = gv * (a.soft[k] - a.hard[k]);                             // dL/dzs
        dzm[k] = gv * (zt[k] - a.hard[k]);                                   // direct term of (z - zh)^2
      }
      // zs = sum_c a_c W_c: da_c = <dzs, W_c>; a = softmax(-log D~): dD_c = -a_c (da_c - sum a da) / D_c above the floor.
      F8 dalpha[kC], dd[kC];
      F8 weighted = F8{};
      for (int64_t c = 0; c < kC; ++c) {
        F8 acc = F8{};
        for (int64_t k = 0; k < kDc; ++k) acc += dsoft[k] * Splat(w[c * kDc + k]);
        dalpha[c] = acc;
        weighted += a.alpha[c] * acc;
      }
      for (int64_t c = 0; c < kC; ++c) {
        const F8 v = -a.alpha[c] * (dalpha[c] - weighted) / a.dist[c];
        dd[c] = a.dist[c] > floor ? v : F8{};
      }
      // D_c = sum_k |z_k - W_ck|: dz_k += sum_c dD_c sign(z_k - W_ck); dW_ck gets the hard term (codeword c only
      // where it is the row's code), a_c dzs_k and -dD_c sign(z_k - W_ck).
      F8* dwm = dw.data() + m * kC * kDc;
      for (int64_t c = 0; c < kC; ++c) {
        const I8 is_code = a.code == static_cast<int32_t>(c);
        const F8 neg = -dd[c];
        for (int64_t k = 0; k < kDc; ++k) {
          const F8 diff = zt[k] - Splat(w[c * kDc + k]);
          const F8 s = diff > F8{} ? dd[c] : (diff < F8{} ? neg : F8{});
          dzm[k] += s;
          dwm[c * kDc + k] += (is_code ? hard_grad[k] : F8{}) + a.alpha[c] * dsoft[k] - s;
        }
      }
      if (dz) {
        for (int64_t i = 0; i < count; ++i) {
          float* out = dz + (n + i) * d.E + m * kDc;
          for (int64_t k = 0; k < kDc; ++k) out[k] = dzm[k][i];
        }
      }
    }
  }
  for (int64_t m = 0; m < d.M; ++m) {
    for (int64_t c = 0; c < kC; ++c) {
      for (int64_t k = 0; k < kDc; ++k) {
        const F8 v = dw.data()[(m * kC + c) * kDc + k];
        float s = 0.f;
        for (int64_t i = 0; i < kLanes; ++i) s += v[i];
        dwt[(m * kDc + k) * kC + c] += s;
      }
    }
  }
}

}  // namespace spt::cpu::lanes
