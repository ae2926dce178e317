#include "cpu/sparse_attention.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

namespace spt::cpu {

namespace {

constexpr int64_t kRowsPerTask = 32;
constexpr int64_t kKeysPerTask = 32;

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// <a, b> with eight independent partial sums (vectorizes, and is bit-identical between forward and backward).
template <typename T>
inline T Dot(const T* a, const T* b, int64_t n) {
  T acc[8] = {};
  int64_t d = 0;
  for (; d + 8 <= n; d += 8) {
    for (int u = 0; u < 8; ++u) acc[u] += a[d + u] * b[d + u];
  }
  T s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  for (; d < n; ++d) s += a[d] * b[d];
  return s;
}

// y += alpha * x
template <typename T>
inline void Axpy(T alpha, const T* x, T* y, int64_t n) {
  for (int64_t d = 0; d < n; ++d) y[d] += alpha * x[d];
}

// Last key (inclusive) a query row may see under the causal rule, aligned to the end when Sq != Sk.
inline int64_t CausalLimit(const SparseAttentionDims& d, bool causal, int64_t i) {
  return causal ? i + d.Sk - d.Sq : d.Sk - 1;
}

}  // namespace

SparseAttentionDims CheckSparseAttentionInputs(const char* op, const Shape& q, const Shape& k, const Shape& v,
                                               const Shape& indices, const Shape* mask) {
  ExpectShape(op, "Q", q, {-1, -1, -1, -1}, "[B, H, Sq, E]");
  ExpectShape(op, "K", k, {q[0], q[1], -1, q[3]}, "[B, H, Sk, E]");
  ExpectShape(op, "V", v, {q[0], q[1], k[2], -1}, "[B, H, Sk, Ev]");
  ExpectShape(op, "indices", indices, {q[0], q[1], q[2], -1}, "[B, H, Sq, L]");
  if (mask) ExpectShape(op, "key_padding_mask", *mask, {q[0], k[2]}, "[B, Sk]");
  SparseAttentionDims d{q[0], q[1], q[2], k[2], q[3], v[3], indices[3]};
  constexpr int64_t kInt32Max = 2147483647;
  if (d.Sk > kInt32Max || d.Sq * d.L > kInt32Max) {
    throw std::invalid_argument(std::string(op) + ": Sk and Sq * L must fit in int32 (got Sk = " +
                                std::to_string(d.Sk) + ", Sq * L = " + std::to_string(d.Sq * d.L) + ")");
  }
  return d;
}

void CheckSparseAttentionGradInputs(const SparseAttentionDims& d, const Shape& dy, const Shape& p) {
  ExpectShape("SparseAttentionGrad", "dY", dy, {d.B, d.H, d.Sq, d.Ev}, "[B, H, Sq, Ev]");
  ExpectShape("SparseAttentionGrad", "P", p, {d.B, d.H, d.Sq, d.L}, "[B, H, Sq, L]");
}

SparseAttentionParams ResolveSparseAttentionParams(const char* op, double scale, double clamp, bool causal,
                                                   int64_t e) {
  if (!std::isfinite(clamp) || clamp < 0) {
    FailAttribute(op, "clamp", "must be finite and >= 0 (0 = off); got " + std::to_string(clamp));
  }
  if (!std::isfinite(scale)) FailAttribute(op, "scale", "must be finite (0 = 1/sqrt(E)); got " + std::to_string(scale));
  SparseAttentionParams p;
  p.scale = scale != 0.0 ? scale : (e > 0 ? 1.0 / std::sqrt(static_cast<double>(e)) : 1.0);
  p.clamp = clamp;
  p.causal = causal;
  return p;
}

void CheckSparseAttentionIndices(const char* op, const SparseAttentionDims& d, const int32_t* indices) {
  const int64_t n = d.B * d.H * d.Sq * d.L;
  for (int64_t e = 0; e < n; ++e) {
    const int32_t j = indices[e];
    if (j < -1 || j >= d.Sk) {
      const int64_t t = e % d.L, i = (e / d.L) % d.Sq, bh = e / (d.L * d.Sq);
      throw std::invalid_argument(std::string(op) + ": input 'indices' holds " + std::to_string(j) + " at [" +
                                  std::to_string(bh / d.H) + ", " + std::to_string(bh % d.H) + ", " +
                                  std::to_string(i) + ", " + std::to_string(t) + "]; entries must be -1 (empty) or in [0, Sk = " +
                                  std::to_string(d.Sk) + ")");
    }
  }
}

template <typename T>
void SparseAttentionForward(const SparseAttentionDims& d, const SparseAttentionParams& params, const T* q,
                            const T* k, const T* v, const int32_t* indices, const T* key_bias, T* y, T* p,
                            const Parallel& par) {
  const int64_t blocks = CeilDiv(d.Sq, kRowsPerTask);
  const T scale = static_cast<T>(params.scale), clamp = static_cast<T>(params.clamp);
  const T neg_inf = -std::numeric_limits<T>::infinity();
  par.For(static_cast<std::size_t>(d.B * d.H * blocks), [&](std::size_t task) {
    const int64_t bh = static_cast<int64_t>(task) / blocks, block = static_cast<int64_t>(task) % blocks;
    const T* kb = k + bh * d.Sk * d.E;
    const T* vb = v + bh * d.Sk * d.Ev;
    const T* bias = key_bias ? key_bias + (bh / d.H) * d.Sk : nullptr;
    const int64_t i1 = std::min(d.Sq, (block + 1) * kRowsPerTask);
    for (int64_t i = block * kRowsPerTask; i < i1; ++i) {
      const int64_t row = bh * d.Sq + i;
      const T* qi = q + row * d.E;
      const int32_t* idx = indices + row * d.L;
      T* pr = p + row * d.L;  // [L]: logits first (-inf = skipped slot), then probabilities
      T* yr = y + row * d.Ev;
      const int64_t limit = CausalLimit(d, params.causal, i);
      T mx = neg_inf;
      for (int64_t t = 0; t < d.L; ++t) {
        const int64_t j = idx[t];
        if (j < 0 || j > limit || (bias && !(bias[j] > kMaskedBias))) {
          pr[t] = neg_inf;
          continue;
        }
        T a = scale * Dot(qi, kb + j * d.E, d.E);
        if (clamp > 0) a = std::min(std::max(a, -clamp), clamp);
        if (bias) a += bias[j];
        pr[t] = a;
        mx = std::max(mx, a);
      }
      std::fill(yr, yr + d.Ev, T(0));
      if (mx == neg_inf) {  // nothing kept: y = 0, P = 0
        std::fill(pr, pr + d.L, T(0));
        continue;
      }
      double sum = 0.0;
      for (int64_t t = 0; t < d.L; ++t) {
        const T e = pr[t] == neg_inf ? T(0) : std::exp(pr[t] - mx);
        pr[t] = e;
        sum += e;
      }
      const T inv = static_cast<T>(1.0 / sum);
      for (int64_t t = 0; t < d.L; ++t) {
        if (pr[t] == T(0)) continue;
        pr[t] *= inv;
        Axpy(pr[t], vb + static_cast<int64_t>(idx[t]) * d.Ev, yr, d.Ev);
      }
    }
  });
}

template <typename T>
void SparseAttentionBackward(const SparseAttentionDims& d, const SparseAttentionParams& params, const T* dy,
                             const T* q, const T* k, const T* v, const int32_t* indices, const T* p, T* dq, T* dk,
                             T* dv, const Parallel& par) {
  const int64_t bh_count = d.B * d.H, nnz = d.Sq * d.L;
  const T scale = static_cast<T>(params.scale), clamp = static_cast<T>(params.clamp);

  // Key-major copy of each (b, h) pattern: offsets [BH, Sk + 1], entries [BH, Sq * L] holding i * L + t,
  // in ascending (i, t) order within each key (counting sort, stable).
  std::vector<int64_t> offsets(static_cast<std::size_t>(bh_count * (d.Sk + 1)));
  std::vector<int32_t> entries(static_cast<std::size_t>(bh_count * nnz));
  par.For(static_cast<std::size_t>(bh_count), [&](std::size_t task) {
    const int64_t bh = static_cast<int64_t>(task);
    const int32_t* idx = indices + bh * nnz;
    int64_t* off = offsets.data() + bh * (d.Sk + 1);
    int32_t* ent = entries.data() + bh * nnz;
    std::fill(off, off + d.Sk + 1, 0);
    for (int64_t e = 0; e < nnz; ++e) {
      if (idx[e] >= 0) ++off[idx[e] + 1];
    }
    for (int64_t j = 0; j < d.Sk; ++j) off[j + 1] += off[j];
    // Fill using a running cursor per key; off[j] is restored afterwards by shifting.
    for (int64_t e = 0; e < nnz; ++e) {
      if (idx[e] >= 0) ent[off[idx[e]]++] = static_cast<int32_t>(e);
    }
    for (int64_t j = d.Sk; j > 0; --j) off[j] = off[j - 1];
    off[0] = 0;
  });

  // ds [BH, Sq, L] and dQ, row by row.
  std::vector<T> ds(static_cast<std::size_t>(bh_count * nnz));
  const int64_t row_blocks = CeilDiv(d.Sq, kRowsPerTask);
  par.For(static_cast<std::size_t>(bh_count * row_blocks), [&](std::size_t task) {
    const int64_t bh = static_cast<int64_t>(task) / row_blocks, block = static_cast<int64_t>(task) % row_blocks;
    const T* kb = k + bh * d.Sk * d.E;
    const T* vb = v + bh * d.Sk * d.Ev;
    const int64_t i1 = std::min(d.Sq, (block + 1) * kRowsPerTask);
    for (int64_t i = block * kRowsPerTask; i < i1; ++i) {
      const int64_t row = bh * d.Sq + i;
      const T* qi = q + row * d.E;
      const T* dyi = dy + row * d.Ev;
      const T* pr = p + row * d.L;
      const int32_t* idx = indices + row * d.L;
      T* dsr = ds.data() + row * d.L;
      T* dqi = dq + row * d.E;
      // dsr first holds dp_t = <dy_i, v_j>; c_i = sum_t p_t dp_t (plain sum, no floor).
      double c = 0.0;
      for (int64_t t = 0; t < d.L; ++t) {
        const int64_t j = idx[t];
        if (j < 0 || pr[t] == T(0)) {
          dsr[t] = T(0);
          continue;
        }
        dsr[t] = Dot(dyi, vb + j * d.Ev, d.Ev);
        c += static_cast<double>(pr[t]) * dsr[t];
      }
      std::fill(dqi, dqi + d.E, T(0));
      for (int64_t t = 0; t < d.L; ++t) {
        const int64_t j = idx[t];
        if (j < 0 || pr[t] == T(0)) continue;
        const T* kj = kb + j * d.E;
        T g = pr[t] * static_cast<T>(dsr[t] - c) * scale;
        if (clamp > 0) {
          // Rebuild the clamp mask from the scaled logit; the gradient passes on the boundary (torch.clamp).
          const T a = scale * Dot(qi, kj, d.E);
          if (a < -clamp || a > clamp) g = T(0);
        }
        dsr[t] = g;
        if (g != T(0)) Axpy(g, kj, dqi, d.E);
      }
    }
  });

  // dK_j = sum ds q_i and dV_j = sum p dy_i over the entries that point at key j.
  const int64_t key_blocks = CeilDiv(d.Sk, kKeysPerTask);
  par.For(static_cast<std::size_t>(bh_count * key_blocks), [&](std::size_t task) {
    const int64_t bh = static_cast<int64_t>(task) / key_blocks, block = static_cast<int64_t>(task) % key_blocks;
    const int64_t* off = offsets.data() + bh * (d.Sk + 1);
    const int32_t* ent = entries.data() + bh * nnz;
    const T* dsb = ds.data() + bh * nnz;
    const T* pb = p + bh * nnz;
    const T* qb = q + bh * d.Sq * d.E;
    const T* dyb = dy + bh * d.Sq * d.Ev;
    const int64_t j1 = std::min(d.Sk, (block + 1) * kKeysPerTask);
    for (int64_t j = block * kKeysPerTask; j < j1; ++j) {
      T* dkj = dk + (bh * d.Sk + j) * d.E;
      T* dvj = dv + (bh * d.Sk + j) * d.Ev;
      std::fill(dkj, dkj + d.E, T(0));
      std::fill(dvj, dvj + d.Ev, T(0));
      for (int64_t e = off[j]; e < off[j + 1]; ++e) {
        const int64_t slot = ent[e], i = slot / d.L;
        if (dsb[slot] != T(0)) Axpy(dsb[slot], qb + i * d.E, dkj, d.E);
        if (pb[slot] != T(0)) Axpy(pb[slot], dyb + i * d.Ev, dvj, d.Ev);
      }
    }
  });
}

template void SparseAttentionForward<float>(const SparseAttentionDims&, const SparseAttentionParams&, const float*,
                                            const float*, const float*, const int32_t*, const float*, float*, float*,
                                            const Parallel&);
template void SparseAttentionForward<double>(const SparseAttentionDims&, const SparseAttentionParams&, const double*,
                                             const double*, const double*, const int32_t*, const double*, double*,
                                             double*, const Parallel&);
template void SparseAttentionBackward<float>(const SparseAttentionDims&, const SparseAttentionParams&, const float*,
                                             const float*, const float*, const float*, const int32_t*, const float*,
                                             float*, float*, float*, const Parallel&);
template void SparseAttentionBackward<double>(const SparseAttentionDims&, const SparseAttentionParams&,
                                              const double*, const double*, const double*, const double*,
                                              const int32_t*, const double*, double*, double*, double*,
                                              const Parallel&);

}  // namespace spt::cpu
