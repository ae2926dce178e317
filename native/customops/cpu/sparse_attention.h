// Fixed-k sparse attention (spec sections 2.6-2.7): every query row attends to L selected keys.
//
//   Q [B, H, Sq, E], K [B, Hkv, Sk, E], V [B, Hkv, Sk, Ev], indices int32 [B, H, Sq, L] (-1 = empty slot),
//   key_bias [B, Sk] additive (optional) -> Y [B, H, Sq, Ev], P [B, H, Sq, L].
// Grouped K/V heads: H % Hkv == 0 and query head h reads kv head h / G with G = H / Hkv (CheckHeadGroups);
// the repeated K/V are never materialized. Hkv == H is plain multi-head attention.
//
// Per row i and slot t with key j = indices[i, t]:
//   a_t = clamp(scale * <q_i, k_j>, -clamp, clamp) + key_bias[j]      (no clamp when clamp == 0)
//   slot t is skipped (P = 0) when j == -1, when causal and j > i + Sk - Sq, outside the sliding window (params.window),
//   or when key_bias[j] <= kMaskedBias
//   p = softmax over the kept slots (max-subtracted, accumulated in double), y_i = sum_t p_t v_j.
// A row with no kept slot gets y = 0 and P = 0. Slots are independent entries: indices need not be sorted or
// unique (a repeated key simply counts twice, as in the reference).
//
// Backward (plain softmax backward, no floor on c_i):
//   dp_t = <dy_i, v_j>, c_i = sum_t p_t dp_t, ds_t = p_t (dp_t - c_i) * scale * [|scale <q_i, k_j>| <= clamp]
//   dQ_i = sum_t ds_t k_j; dK_j = sum_{(i,t) -> j} ds_t q_i; dV_j = sum_{(i,t) -> j} p_t dy_i.
// dK and dV are gathered through a per-(b, kv head) key-major copy of the index of the kv head's G query heads
// (counting sort), so every output element is reduced by one task in a fixed order (query head, row, slot):
// deterministic and free of atomics; with G > 1 dK/dV are the sums over the group.
#pragma once

#include <cstdint>
#include <limits>

#include "cpu/parallel.h"
#include "cpu/sparse_attention_common.h"

namespace spt::cpu {

struct SparseAttentionDims {
  int64_t B = 0, H = 0, Sq = 0, Sk = 0, E = 0, Ev = 0, L = 0;
  int64_t Hkv = 0;  // K/V heads; H % Hkv == 0
  SPT_HOST_DEVICE int64_t Group() const { return H / Hkv; }
};

struct SparseAttentionParams {
  double scale = 0.0;  // 0 = 1/sqrt(E)
  double clamp = 10.0;  // 0 = no clamp
  bool causal = true;
  // Sliding window: > 0 also hides keys j < pos - window + 1 (and, when not causal, j > pos + window - 1), with
  // pos = i + Sk - Sq the query's aligned key position. 0 = off.
  int64_t window = 0;
};

// Additive mask values at or below this exclude the key outright (like the causal mask and -1 slots):
// -inf, and the dtype-lowest fill values exporters use. Larger negatives (e.g. -1e4) are added as given.
inline constexpr double kMaskedBias = -1e30;

// An additive score bias (relative position bias, ALiBi) read at the selected keys: element (b, h, i, j) is
// data[b * stride_b + h * stride_h + i * stride_i + j]; a zero stride broadcasts that axis. It is added after the
// clamp, like the key mask; values <= kMaskedBias exclude the key. data == nullptr: none.
template <typename T>
struct AttentionBias {
  const T* data = nullptr;
  int64_t stride_b = 0, stride_h = 0, stride_i = 0;
};

// The strides of an attn_bias of shape [Bb, Hb, Sqb, Sk] (rank <= 4, missing leading axes are 1) with Bb in {1, B},
// Hb in {1, H}, Sqb in {1, Sq}; throws std::invalid_argument naming `op` otherwise.
template <typename T>
AttentionBias<T> CheckAttentionBias(const char* op, const SparseAttentionDims& dims, const Shape& shape, const T* data);

// Checks Q, K, V, indices and the optional key_padding_mask ([B, Sk]); `op` names the caller.
SparseAttentionDims CheckSparseAttentionInputs(const char* op, const Shape& q, const Shape& k, const Shape& v,
                                               const Shape& indices, const Shape* mask);

// Checks the extra inputs of the gradient op: dY [B, H, Sq, Ev] and P [B, H, Sq, L].
void CheckSparseAttentionGradInputs(const SparseAttentionDims& dims, const Shape& dy, const Shape& p);

// Checks the attributes (clamp >= 0 and finite, scale finite) and resolves scale == 0 to 1/sqrt(E).
SparseAttentionParams ResolveSparseAttentionParams(const char* op, double scale, double clamp, bool causal,
                                                   int64_t e);

// Throws std::invalid_argument naming the first entry of `indices` outside [-1, Sk).
void CheckSparseAttentionIndices(const char* op, const SparseAttentionDims& dims, const int32_t* indices);

// Forward. key_bias may be nullptr. T = float (the op) or double (tests).
template <typename T>
void SparseAttentionForward(const SparseAttentionDims& dims, const SparseAttentionParams& params, const T* q,
                            const T* k, const T* v, const int32_t* indices, const T* key_bias, T* y, T* p,
                            const Parallel& par, const AttentionBias<T>& attn_bias = {});

// Backward from the forward's P (which already holds the masks and the attn_bias). Writes every element of dq, dk
// and dv.
template <typename T>
void SparseAttentionBackward(const SparseAttentionDims& dims, const SparseAttentionParams& params, const T* dy,
                             const T* q, const T* k, const T* v, const int32_t* indices, const T* p, T* dq, T* dk,
                             T* dv, const Parallel& par);

}  // namespace spt::cpu
