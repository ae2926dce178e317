#include "cpu/sparse_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

namespace spt::cpu {

namespace {

constexpr int64_t kRowsPerTask = 32;
constexpr int64_t kKeysPerTask = 32;

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// <a, b> with eight independent partial sums (vectorizes, and is bit-identical between forward and backward).
template <typename T>
[[gnu::always_inline]] inline T Dot(const T* a, const T* b, int64_t n) {
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
[[gnu::always_inline]] inline void Axpy(T alpha, const T* x, T* y, int64_t n) {
  for (int64_t d = 0; d < n; ++d) y[d] += alpha * x[d];
}

// Running sum y += alpha * x over many x for one output row of n = kN values: with kN a multiple of 8 the row
// lives in registers (eight-lane values) and is written by Store, otherwise the sum goes to y in place (y must
// start zeroed; Store is then a no-op). Each element sees the same operations in the same order as Axpy.
template <typename T, int64_t kN>
struct RowSum {
  static constexpr bool kInRegisters = kN > 0 && kN % 8 == 0;
  typedef T Lanes __attribute__((vector_size(8 * sizeof(T))));
  T* y;
  int64_t n;
  Lanes v[kInRegisters ? kN / 8 : 1] = {};

  RowSum(T* y_, int64_t n_) : y(y_), n(n_) {}
  [[gnu::always_inline]] inline void Add(T alpha, const T* x) {
    if constexpr (kInRegisters) {
      for (int64_t b = 0; b < kN / 8; ++b) {
        Lanes xv;
        std::memcpy(&xv, x + 8 * b, sizeof xv);
        v[b] += alpha * xv;
      }
    } else {
      Axpy(alpha, x, y, n);
    }
  }
  [[gnu::always_inline]] inline void Store() {
    if constexpr (kInRegisters) std::memcpy(y, v, sizeof v);
  }
};

// p[t] = exp(p[t] - mx) (0 where p[t] = -inf, a skipped slot) for t < n, returning the sum. Eight values at a time
// with a polynomial exp (x <= 0 here: x = logit - max): n = round(x log2 e), r = x - n ln 2 in two parts, a
// degree-6 polynomial for e^r on |r| <= ln 2 / 2, times 2^k built from its bits; relative error below 1e-7,
// like std::exp's float rounding, and results below 2^-126 flush to that bound (far under the row's sum, >= 1).
// The partial sums are fp32 per lane and added in double at the end.
[[gnu::always_inline]] inline double ExpShiftedAndSum(float* p, int64_t n, float mx) {
  typedef float F8 __attribute__((vector_size(32)));
  typedef int32_t I8 __attribute__((vector_size(32)));
  const float neg_inf = -std::numeric_limits<float>::infinity();
  const F8 lo = F8{} - 87.0f;             // e^-87 ~ 1.6e-38: 2^k stays a normal float
  const F8 rounder = F8{} + 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  F8 acc = F8{};
  for (int64_t t = 0; t < n; t += 8) {
    const int64_t count = std::min<int64_t>(8, n - t);
    F8 v;
    for (int64_t u = 0; u < 8; ++u) v[u] = u < count ? p[t + u] : neg_inf;
    F8 x = v - mx;
    x = x < lo ? lo : x;
    const F8 k = (x * 1.44269504088896341f + rounder) - rounder;
    const F8 r = (x - k * 0.693359375f) + k * 2.12194440e-4f;  // ln 2 = 0.693359375 - 2.12194440e-4
    F8 poly = F8{} + 1.9875691500e-4f;
    poly = poly * r + 1.3981999507e-3f;
    poly = poly * r + 8.3334519073e-3f;
    poly = poly * r + 4.1665795894e-2f;
    poly = poly * r + 1.6666665459e-1f;
    poly = poly * r + 5.0000001201e-1f;
    const I8 bits = (__builtin_convertvector(k, I8) + 127) << 23;
    const F8 e = (poly * r * r + r + 1.0f) * reinterpret_cast<F8>(bits);
    const F8 kept = v == neg_inf ? F8{} : e;
    acc += kept;
    for (int64_t u = 0; u < count; ++u) p[t + u] = kept[u];
  }
  double sum = 0.0;
  for (int u = 0; u < 8; ++u) sum += acc[u];
  return sum;
}

// Last key (inclusive) a query row may see under the causal rule and the sliding window, aligned to the end when
// Sq != Sk.
inline int64_t CausalLimit(const SparseAttentionDims& d, bool causal, int64_t window, int64_t i) {
  const int64_t pos = i + d.Sk - d.Sq;
  if (causal) return pos;
  return window > 0 ? std::min(d.Sk - 1, pos + window - 1) : d.Sk - 1;
}

// First key a query row may see under the sliding window (0 without one).
inline int64_t WindowStart(const SparseAttentionDims& d, int64_t window, int64_t i) {
  return window > 0 ? i + d.Sk - d.Sq - window + 1 : 0;
}

}  // namespace

SparseAttentionDims CheckSparseAttentionInputs(const char* op, const Shape& q, const Shape& k, const Shape& v,
                                               const Shape& indices, const Shape* mask) {
  ExpectShape(op, "Q", q, {-1, -1, -1, -1}, "[B, H, Sq, E]");
  ExpectShape(op, "K", k, {q[0], -1, -1, q[3]}, "[B, Hkv, Sk, E]");
  CheckHeadGroups(op, "K", q[1], k[1]);
  ExpectShape(op, "V", v, {q[0], k[1], k[2], -1}, "[B, Hkv, Sk, Ev]");
  ExpectShape(op, "indices", indices, {q[0], q[1], q[2], -1}, "[B, H, Sq, L]");
  if (mask) ExpectShape(op, "key_padding_mask", *mask, {q[0], k[2]}, "[B, Sk]");
  SparseAttentionDims d{q[0], q[1], q[2], k[2], q[3], v[3], indices[3], k[1]};
  constexpr int64_t kInt32Max = 2147483647;
  // The backward's key-major entries index the (query head in group, row, slot) triples of one kv head.
  const int64_t entries = d.Group() * d.Sq * d.L;
  if (d.Sk > kInt32Max || entries > kInt32Max) {
    throw std::invalid_argument(std::string(op) + ": Sk and (H / Hkv) * Sq * L must fit in int32 (got Sk = " +
                                std::to_string(d.Sk) + ", (H / Hkv) * Sq * L = " + std::to_string(entries) + ")");
  }
  return d;
}

template <typename T>
AttentionBias<T> CheckAttentionBias(const char* op, const SparseAttentionDims& d, const Shape& shape, const T* data) {
  Shape s = shape;
  bool ok = s.size() <= 4;
  while (ok && s.size() < 4) s.insert(s.begin(), 1);
  ok = ok && (s[0] == 1 || s[0] == d.B) && (s[1] == 1 || s[1] == d.H) && (s[2] == 1 || s[2] == d.Sq) && s[3] == d.Sk;
  if (!ok) {
    FailInput(op, "attn_bias",
              "[1|B, 1|H, 1|Sq, Sk] = [1|" + std::to_string(d.B) + ", 1|" + std::to_string(d.H) + ", 1|" +
                  std::to_string(d.Sq) + ", " + std::to_string(d.Sk) + "]",
              shape);
  }
  AttentionBias<T> b;
  b.data = data;
  b.stride_i = s[2] == 1 ? 0 : s[3];
  b.stride_h = s[1] == 1 ? 0 : s[2] * s[3];
  b.stride_b = s[0] == 1 ? 0 : s[1] * s[2] * s[3];
  return b;
}

template AttentionBias<float> CheckAttentionBias<float>(const char*, const SparseAttentionDims&, const Shape&, const float*);
template AttentionBias<double> CheckAttentionBias<double>(const char*, const SparseAttentionDims&, const Shape&, const double*);

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
  // A branch-free min/max pass first (it vectorizes); the offender is searched for only when there is one.
  int32_t lo = 0, hi = -1;
  for (int64_t e = 0; e < n; ++e) {
    lo = std::min(lo, indices[e]);
    hi = std::max(hi, indices[e]);
  }
  if (lo >= -1 && hi < d.Sk) return;
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

namespace {

// Everything a block of work needs; the hot loops below take it by reference.
template <typename T>
struct Problem {
  const SparseAttentionDims& d;
  T scale, clamp;
  bool causal;
  int64_t window;
  const T *q, *k, *v, *dy, *p, *key_bias;
  AttentionBias<T> attn;
  const int32_t* indices;
  T *y, *probs, *ds, *dq, *dk, *dv;
  const int64_t* offsets;  // [B * Hkv, Sk + 1] key-major pattern
  const int32_t* entries;  // [B * Hkv, G * Sq * L]
  const T* key_norm;       // [B * Hkv, Sk] |k_j|_2 (backward with a clamp), else null
  int64_t ds_first_row = 0;  // ds holds rows (bh * Sq + i) from this one on
};

// The row and key loops take the head dims as template arguments when they are common sizes (kE, kEv > 0), so
// that the dot products and axpys over E unroll completely; 0 reads them from the dims.

// Forward for rows [i0, i1) of head bh: SDDMM, clamp, mask, softmax, SpMM.
template <typename T, int64_t kE = 0, int64_t kEv = 0>
[[gnu::always_inline]] inline void ForwardRows(const Problem<T>& w, int64_t bh, int64_t i0, int64_t i1) {
  const SparseAttentionDims& d = w.d;
  const int64_t E = kE > 0 ? kE : d.E, Ev = kEv > 0 ? kEv : d.Ev;
  const T neg_inf = -std::numeric_limits<T>::infinity();
  const int64_t kvh = KvHeadOf(bh, d.H, d.Hkv);
  const T* kb = w.k + kvh * d.Sk * E;
  const T* vb = w.v + kvh * d.Sk * Ev;
  const T* bias = w.key_bias ? w.key_bias + (bh / d.H) * d.Sk : nullptr;
  const T* attn = w.attn.data ? w.attn.data + (bh / d.H) * w.attn.stride_b + (bh % d.H) * w.attn.stride_h : nullptr;
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t row = bh * d.Sq + i;
    const T* ar = attn ? attn + i * w.attn.stride_i : nullptr;
    const T* qi = w.q + row * E;
    const int32_t* idx = w.indices + row * d.L;
    T* pr = w.probs + row * d.L;  // [L]: logits first (-inf = skipped slot), then probabilities
    T* yr = w.y + row * Ev;
    const int64_t limit = CausalLimit(d, w.causal, w.window, i);
    const int64_t first = WindowStart(d, w.window, i);
    T mx = neg_inf;
    for (int64_t t = 0; t < d.L; ++t) {
      const int64_t j = idx[t];
      if (j < 0 || j > limit || j < first || (bias && !(bias[j] > kMaskedBias)) || (ar && !(ar[j] > kMaskedBias))) {
        pr[t] = neg_inf;
        continue;
      }
      T a = w.scale * Dot(qi, kb + j * E, E);
      if (w.clamp > 0) a = std::min(std::max(a, -w.clamp), w.clamp);
      if (bias) a += bias[j];
      if (ar) a += ar[j];
      pr[t] = a;
      mx = std::max(mx, a);
    }
    std::fill(yr, yr + Ev, T(0));
    if (mx == neg_inf) {  // nothing kept: y = 0, P = 0
      std::fill(pr, pr + d.L, T(0));
      continue;
    }
    double sum = 0.0;
    if constexpr (std::is_same_v<T, float>) {
      sum = ExpShiftedAndSum(pr, d.L, mx);
    } else {
      for (int64_t t = 0; t < d.L; ++t) {
        const T e = pr[t] == neg_inf ? T(0) : std::exp(pr[t] - mx);
        pr[t] = e;
        sum += e;
      }
    }
    const T inv = static_cast<T>(1.0 / sum);
    RowSum<T, kEv> ysum(yr, Ev);
    for (int64_t t = 0; t < d.L; ++t) {
      if (pr[t] == T(0)) continue;
      pr[t] *= inv;
      ysum.Add(pr[t], vb + static_cast<int64_t>(idx[t]) * Ev);
    }
    ysum.Store();
  }
}

// Backward for rows [i0, i1) of head bh: ds and dQ. With kScatter the rows also add their terms to dK and dV
// (ds_t q_i into dK_j, p_t dy_i into dV_j: the caller owns the kv head's dK and dV rows and has zeroed them);
// without it ds is kept for BackwardKeys. `pass` is scratch for L flags.
template <typename T, int64_t kE = 0, int64_t kEv = 0, bool kScatter = false>
[[gnu::always_inline]] inline void BackwardRows(const Problem<T>& w, int64_t bh, int64_t i0, int64_t i1,
                                                uint8_t* pass) {
  const SparseAttentionDims& d = w.d;
  const int64_t E = kE > 0 ? kE : d.E, Ev = kEv > 0 ? kEv : d.Ev;
  const int64_t kvh = KvHeadOf(bh, d.H, d.Hkv);
  const T* kb = w.k + kvh * d.Sk * E;
  const T* vb = w.v + kvh * d.Sk * Ev;
  const T* kn = w.key_norm ? w.key_norm + kvh * d.Sk : nullptr;
  T* dkb = w.dk + kvh * d.Sk * E;
  T* dvb = w.dv + kvh * d.Sk * Ev;
  const T safe_clamp = w.clamp * T(1 - 1e-3);
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t row = bh * d.Sq + i;
    const T* qi = w.q + row * E;
    const T* dyi = w.dy + row * Ev;
    const T* pr = w.p + row * d.L;
    const int32_t* idx = w.indices + row * d.L;
    T* dsr = w.ds + (row - w.ds_first_row) * d.L;
    const T bound_scale = w.clamp > 0 ? std::fabs(w.scale) * std::sqrt(Dot(qi, qi, E)) : T(0);
    T* dqi = w.dq + row * E;
    // First pass: dp_t = <dy_i, v_j> (into dsr), c_i = sum_t p_t dp_t (plain sum, no floor), and the clamp mask
    // rebuilt from the recomputed scaled logit (the gradient passes on the boundary, like torch.clamp).
    double c = 0.0;
    for (int64_t t = 0; t < d.L; ++t) {
      const int64_t j = idx[t];
      if (j < 0 || pr[t] == T(0)) {
        pass[t] = 0;
        continue;
      }
      dsr[t] = Dot(dyi, vb + j * Ev, Ev);
      c += static_cast<double>(pr[t]) * dsr[t];
      // |scale <q, k>| <= |scale| |q| |k| (Cauchy-Schwarz): a logit whose bound is clearly inside the clamp
      // passes without recomputing it (the margin covers the rounding of the norms and of the dot product).
      if (w.clamp > 0 && !(bound_scale * kn[j] < safe_clamp)) {
        const T a = w.scale * Dot(qi, kb + j * E, E);
        pass[t] = !(a < -w.clamp || a > w.clamp);
      } else {
        pass[t] = 1;
      }
    }
    // Second pass: ds_t = p_t (dp_t - c_i) * scale where the clamp passes; dQ_i = sum_t ds_t k_j.
    std::fill(dqi, dqi + E, T(0));
    RowSum<T, kE> dqsum(dqi, E);
    for (int64_t t = 0; t < d.L; ++t) {
      if constexpr (kScatter) {
        // The same terms, in the same (row, slot) order per key, as BackwardKeys adds.
        const int64_t j = idx[t];
        if (j >= 0 && pr[t] != T(0)) Axpy(pr[t], dyi, dvb + j * Ev, Ev);
      }
      if (!pass[t]) {
        dsr[t] = T(0);
        continue;
      }
      const T g = pr[t] * static_cast<T>(dsr[t] - c) * w.scale;
      dsr[t] = g;
      dqsum.Add(g, kb + static_cast<int64_t>(idx[t]) * E);
      if constexpr (kScatter) {
        if (g != T(0)) Axpy(g, qi, dkb + static_cast<int64_t>(idx[t]) * E, E);
      }
    }
    dqsum.Store();
  }
}

// dK_j = sum ds q_i and dV_j = sum p dy_i over the entries that point at key j, for keys [j0, j1) of kv head
// kvh. The kv head's G query heads are contiguous in Q, dY, P and ds (heads kvh*G .. kvh*G + G - 1 of the same
// batch), so an entry e = g * Sq * L + i * L + t addresses slot e of the group and row e / L of its Q and dY.
template <typename T, int64_t kE = 0, int64_t kEv = 0>
[[gnu::always_inline]] inline void BackwardKeys(const Problem<T>& w, int64_t kvh, int64_t j0, int64_t j1) {
  const SparseAttentionDims& d = w.d;
  const int64_t E = kE > 0 ? kE : d.E, Ev = kEv > 0 ? kEv : d.Ev;
  const int64_t nnz = d.Group() * d.Sq * d.L;
  const int64_t* off = w.offsets + kvh * (d.Sk + 1);
  const int32_t* ent = w.entries + kvh * nnz;
  const T* dsb = w.ds + kvh * nnz;
  const T* pb = w.p + kvh * nnz;
  const T* qb = w.q + kvh * d.Group() * d.Sq * E;
  const T* dyb = w.dy + kvh * d.Group() * d.Sq * Ev;
  for (int64_t j = j0; j < j1; ++j) {
    T* dkj = w.dk + (kvh * d.Sk + j) * E;
    T* dvj = w.dv + (kvh * d.Sk + j) * Ev;
    std::fill(dkj, dkj + E, T(0));
    std::fill(dvj, dvj + Ev, T(0));
    RowSum<T, kE> dksum(dkj, E);
    RowSum<T, kEv> dvsum(dvj, Ev);
    for (int64_t e = off[j]; e < off[j + 1]; ++e) {
      const int64_t slot = ent[e], i = slot / d.L;
      if (dsb[slot] != T(0)) dksum.Add(dsb[slot], qb + i * E);
      if (pb[slot] != T(0)) dvsum.Add(pb[slot], dyb + i * Ev);
    }
    dksum.Store();
    dvsum.Store();
  }
}

// fp32 entry points, compiled twice where SPT_CPU_CLONES allows (see sparse_attention_common.h).
// Head dim 64 (BERT, GPT-2, OPT, LLaMA) gets the unrolled loops.
SPT_CPU_CLONES void ForwardRowsF32(const Problem<float>& w, int64_t bh, int64_t i0, int64_t i1) {
  if (w.d.E == 64 && w.d.Ev == 64) ForwardRows<float, 64, 64>(w, bh, i0, i1); else ForwardRows(w, bh, i0, i1);
}
SPT_CPU_CLONES void BackwardRowsF32(const Problem<float>& w, int64_t bh, int64_t i0, int64_t i1, uint8_t* pass) {
  if (w.d.E == 64 && w.d.Ev == 64) BackwardRows<float, 64, 64>(w, bh, i0, i1, pass); else BackwardRows(w, bh, i0, i1, pass);
}
SPT_CPU_CLONES void BackwardScatterRowsF32(const Problem<float>& w, int64_t bh, int64_t i0, int64_t i1, uint8_t* pass) {
  if (w.d.E == 64 && w.d.Ev == 64) BackwardRows<float, 64, 64, true>(w, bh, i0, i1, pass);
  else BackwardRows<float, 0, 0, true>(w, bh, i0, i1, pass);
}
SPT_CPU_CLONES void BackwardKeysF32(const Problem<float>& w, int64_t bh, int64_t j0, int64_t j1) {
  if (w.d.E == 64 && w.d.Ev == 64) BackwardKeys<float, 64, 64>(w, bh, j0, j1); else BackwardKeys(w, bh, j0, j1);
}

template <typename T>
void RunForwardRows(const Problem<T>& w, int64_t bh, int64_t i0, int64_t i1) {
  if constexpr (std::is_same_v<T, float>) ForwardRowsF32(w, bh, i0, i1); else ForwardRows(w, bh, i0, i1);
}
template <typename T>
void RunBackwardRows(const Problem<T>& w, int64_t bh, int64_t i0, int64_t i1, uint8_t* pass) {
  if constexpr (std::is_same_v<T, float>) BackwardRowsF32(w, bh, i0, i1, pass); else BackwardRows(w, bh, i0, i1, pass);
}
template <typename T>
void RunBackwardScatterRows(const Problem<T>& w, int64_t bh, int64_t i0, int64_t i1, uint8_t* pass) {
  if constexpr (std::is_same_v<T, float>) BackwardScatterRowsF32(w, bh, i0, i1, pass);
  else BackwardRows<T, 0, 0, true>(w, bh, i0, i1, pass);
}
template <typename T>
void RunBackwardKeys(const Problem<T>& w, int64_t bh, int64_t j0, int64_t j1) {
  if constexpr (std::is_same_v<T, float>) BackwardKeysF32(w, bh, j0, j1); else BackwardKeys(w, bh, j0, j1);
}

}  // namespace

template <typename T>
void SparseAttentionForward(const SparseAttentionDims& d, const SparseAttentionParams& params, const T* q,
                            const T* k, const T* v, const int32_t* indices, const T* key_bias, T* y, T* p,
                            const Parallel& par, const AttentionBias<T>& attn_bias) {
  const Problem<T> w{d,       static_cast<T>(params.scale), static_cast<T>(params.clamp), params.causal, params.window, q, k, v,
                     nullptr, nullptr, key_bias, attn_bias, indices, y, p, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                     nullptr};
  const int64_t blocks = CeilDiv(d.Sq, kRowsPerTask);
  par.For(static_cast<std::size_t>(d.B * d.H * blocks), [&](std::size_t task) {
    const int64_t bh = static_cast<int64_t>(task) / blocks, block = static_cast<int64_t>(task) % blocks;
    RunForwardRows(w, bh, block * kRowsPerTask, std::min(d.Sq, (block + 1) * kRowsPerTask));
  });
}

template <typename T>
void SparseAttentionBackward(const SparseAttentionDims& d, const SparseAttentionParams& params, const T* dy,
                             const T* q, const T* k, const T* v, const int32_t* indices, const T* p, T* dq, T* dk,
                             T* dv, const Parallel& par) {
  const int64_t bh_count = d.B * d.H, kv_count = d.B * d.Hkv, nnz = d.Group() * d.Sq * d.L;

  // |k_j| per kv head, for the clamp's bound in BackwardRows.
  std::vector<T> key_norm(params.clamp > 0 ? static_cast<std::size_t>(kv_count * d.Sk) : 0);
  if (params.clamp > 0) {
    par.For(static_cast<std::size_t>(kv_count), [&](std::size_t kvh) {
      for (int64_t j = 0; j < d.Sk; ++j) {
        const T* kj = k + (static_cast<int64_t>(kvh) * d.Sk + j) * d.E;
        key_norm[kvh * d.Sk + j] = std::sqrt(Dot(kj, kj, d.E));
      }
    });
  }
  const T* kn = params.clamp > 0 ? key_norm.data() : nullptr;

  // With enough kv heads to keep every worker busy, one task per kv head runs all of its query rows and adds their
  // dK and dV terms in place (no key-major transpose, no second pass that gathers Q and dY rows per key). With
  // fewer (MQA, batch 1 on many threads), the rows run in blocks and a key-major pass sums dK and dV.
  if (kv_count >= 2 * static_cast<int64_t>(par.Workers())) {
    const Problem<T> w{d,  static_cast<T>(params.scale), static_cast<T>(params.clamp), params.causal, params.window, q, k, v, dy, p,
                       nullptr, {}, indices, nullptr, nullptr, nullptr, dq, dk, dv, nullptr, nullptr, kn};
    par.For(static_cast<std::size_t>(kv_count), [&](std::size_t task) {
      const int64_t kvh = static_cast<int64_t>(task);
      std::fill(dk + kvh * d.Sk * d.E, dk + (kvh + 1) * d.Sk * d.E, T(0));
      std::fill(dv + kvh * d.Sk * d.Ev, dv + (kvh + 1) * d.Sk * d.Ev, T(0));
      std::vector<uint8_t> pass(static_cast<std::size_t>(d.L));
      std::vector<T> ds(static_cast<std::size_t>(d.Sq * d.L));
      // ds of one query head's rows at a time.
      Problem<T> local = w;
      local.ds = ds.data();
      const int64_t first_bh = (kvh / d.Hkv) * d.H + (kvh % d.Hkv) * d.Group();
      for (int64_t g = 0; g < d.Group(); ++g) {
        local.ds_first_row = (first_bh + g) * d.Sq;
        RunBackwardScatterRows(local, first_bh + g, 0, d.Sq, pass.data());
      }
    });
    return;
  }

  // Key-major copy of each (b, kv head) pattern over its G query heads: offsets [B * Hkv, Sk + 1], entries
  // [B * Hkv, G * Sq * L] holding g * Sq * L + i * L + t, in ascending (g, i, t) order within each key
  // (counting sort, stable).
  std::vector<int64_t> offsets(static_cast<std::size_t>(kv_count * (d.Sk + 1)));
  std::vector<int32_t> entries(static_cast<std::size_t>(kv_count * nnz));
  par.For(static_cast<std::size_t>(kv_count), [&](std::size_t task) {
    const int64_t kvh = static_cast<int64_t>(task);
    const int32_t* idx = indices + kvh * nnz;  // the group's query heads are contiguous
    int64_t* off = offsets.data() + kvh * (d.Sk + 1);
    int32_t* ent = entries.data() + kvh * nnz;
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

  std::vector<T> ds(static_cast<std::size_t>(bh_count * d.Sq * d.L));  // [BH, Sq, L]
  const Problem<T> w{d,  static_cast<T>(params.scale), static_cast<T>(params.clamp), params.causal, params.window, q, k, v, dy, p,
                     nullptr, {}, indices, nullptr, nullptr, ds.data(), dq, dk, dv, offsets.data(), entries.data(), kn};
  const int64_t row_blocks = CeilDiv(d.Sq, kRowsPerTask);
  par.For(static_cast<std::size_t>(bh_count * row_blocks), [&](std::size_t task) {
    const int64_t bh = static_cast<int64_t>(task) / row_blocks, block = static_cast<int64_t>(task) % row_blocks;
    std::vector<uint8_t> pass(static_cast<std::size_t>(d.L));  // per-task scratch, reused by its rows
    RunBackwardRows(w, bh, block * kRowsPerTask, std::min(d.Sq, (block + 1) * kRowsPerTask), pass.data());
  });
  const int64_t key_blocks = CeilDiv(d.Sk, kKeysPerTask);
  par.For(static_cast<std::size_t>(kv_count * key_blocks), [&](std::size_t task) {
    const int64_t kvh = static_cast<int64_t>(task) / key_blocks, block = static_cast<int64_t>(task) % key_blocks;
    RunBackwardKeys(w, kvh, block * kKeysPerTask, std::min(d.Sk, (block + 1) * kKeysPerTask));
  });
}

template void SparseAttentionForward<float>(const SparseAttentionDims&, const SparseAttentionParams&, const float*,
                                            const float*, const float*, const int32_t*, const float*, float*, float*,
                                            const Parallel&, const AttentionBias<float>&);
template void SparseAttentionForward<double>(const SparseAttentionDims&, const SparseAttentionParams&, const double*,
                                             const double*, const double*, const int32_t*, const double*, double*,
                                             double*, const Parallel&, const AttentionBias<double>&);
template void SparseAttentionBackward<float>(const SparseAttentionDims&, const SparseAttentionParams&, const float*,
                                             const float*, const float*, const float*, const int32_t*, const float*,
                                             float*, float*, float*, const Parallel&);
template void SparseAttentionBackward<double>(const SparseAttentionDims&, const SparseAttentionParams&,
                                              const double*, const double*, const double*, const double*,
                                              const int32_t*, const double*, double*, double*, double*,
                                              const Parallel&);

}  // namespace spt::cpu
