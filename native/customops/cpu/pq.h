// Product quantization for SPT's sparse attention (spec sections 2.2-2.4): L1 encoding against a shared
// codebook, match-count key selection, and the codebook loss with its gradient.
//
// Layouts: Z is [N, E] row-major (any leading dims flattened into N); the codebook W is [M, C, dc] with
// E = M * dc (subspace m of a row is the contiguous chunk [m*dc, (m+1)*dc)); codes are int32 [N, M].
// Attention tensors are [B, H, S, *]; BH = B*H is the flattened outer loop. Keys may have fewer heads
// (Hkv, grouped-query attention): see CheckHeadGroups.
#pragma once

#include <cstdint>
#include <string>

#include "cpu/parallel.h"
#include "cpu/sparse_attention_common.h"

namespace spt::cpu {

struct PQDims {
  int64_t N = 0;   // rows of Z (product of its leading dims)
  int64_t E = 0;   // row width = M * dc
  int64_t M = 0;   // subspaces
  int64_t C = 0;   // codewords per subspace
  int64_t dc = 0;  // codeword width
};

// Checks Z [..., E] against the codebook [M, C, dc] (E == M*dc, C >= 1, dc >= 1); `op` names the caller.
PQDims CheckPQInputs(const char* op, const Shape& z, const Shape& codebook);

// codes[n, m] = argmin_c sum_d |z[n, m*dc + d] - W[m, c, d]|; ties go to the lowest c.
void PQEncode(const PQDims& dims, const float* z, const float* codebook, int32_t* codes, const Parallel& par);

// ---------------------------------------------------------------------------------------------------
// Key selection. score(i, j) = #{m : codes_q[i, m] == codes_k[j, m]}.

enum class TopKMode {
  kExact,     // count descending, then lower key index
  kBucketed,  // the reference's match-count buckets, made deterministic (see PQTopK)
};

// Parses the `mode` attribute ("exact" | "bucketed").
TopKMode ParseTopKMode(const std::string& mode);

// Keys per query (attributes keys_per_query, keys_ratio and min_keys_per_query): top_k when > 0, else
// max(1, min_keys, ceil(ratio * Sk)); clamped to Sk (and at least 1 when Sk > 0). min_keys keeps a ratio from
// leaving a short sequence a key or two. Rejects top_k < 0, min_keys < 0 and ratio outside (0, 1].
int64_t ResolveTopK(int64_t top_k, float ratio, int64_t sk, int64_t min_keys = 0);

struct PQTopKDims {
  int64_t B = 0, H = 0, Sq = 0, Sk = 0, M = 0;
  int64_t Hkv = 0;  // key heads (H % Hkv == 0; query head h reads key head h / (H / Hkv))
  int64_t L = 0;  // keys per query (already resolved and clamped)
};

// Checks codes_q [B, H, Sq, M], codes_k [B, Hkv, Sk, M] (H % Hkv == 0) and the optional mask [B, Sk] (mask == nullptr: none).
PQTopKDims CheckPQTopKInputs(const Shape& codes_q, const Shape& codes_k, const Shape* mask);

// indices [B, H, Sq, L]: per query row the selected keys in ascending key order, followed by -1 sentinels
// when the row has fewer than L eligible keys. No key appears twice in a row. A key j is eligible when
// key_keep (nullable, [B, Sk], nonzero = keep) keeps it and, if causal, j <= i + Sk - Sq (decoding
// alignment; j <= i when Sq == Sk).
//
// kExact: the L eligible keys with the most matching codes, ties to the lower key index.
// kBucketed: bucket b = min(3, n / max(1, floor(M/4))). Key j belongs to residue class w = j mod 4; class w
// owns the output slots p < L with p mod 4 == w and fills them with its own keys, highest bucket first and
// earliest key first (the reference's four workers, without its racy buffer overflow). Slots a class cannot
// fill (too few eligible keys of its own) go to the best remaining eligible keys of any class by the same
// order, so a row gets min(L, #eligible) distinct keys.
//
// window > 0 (a sliding window) also makes keys j < pos - window + 1 ineligible, and when not causal
// j > pos + window - 1, with pos = i + Sk - Sq the query's aligned key position; window = 0 is off.
void PQTopK(const PQTopKDims& dims, TopKMode mode, bool causal, int64_t window, const int32_t* codes_q,
            const int32_t* codes_k, const uint8_t* key_keep, int32_t* indices, const Parallel& par);
inline void PQTopK(const PQTopKDims& dims, TopKMode mode, bool causal, const int32_t* codes_q, const int32_t* codes_k,
                   const uint8_t* key_keep, int32_t* indices, const Parallel& par) {
  PQTopK(dims, mode, causal, 0, codes_q, codes_k, key_keep, indices, par);
}

// ---------------------------------------------------------------------------------------------------
// Codebook loss (spec 2.3). Per row n and subspace m: D_c = ||z - W[m, c]||_1, h = argmin D (ties: lowest),
// hard centroid zh = W[m, h], soft weights a_c = (1/D~_c) / sum_l (1/D~_l) with D~ = max(D, 1e-5), soft
// centroid zs = sum_c a_c W[m, c].
//   loss = mean((zs - zh)^2) + mean((z - zh)^2), both means over all N*M*dc elements.
// Accumulated in double; deterministic for any number of workers.
double PQLoss(const PQDims& dims, const float* z, const float* codebook, const Parallel& par);

// Gradient of dloss * PQLoss w.r.t. Z and the codebook, through the hard gather, the soft centroid and the
// soft weights (no stop-gradients). d|x|/dx uses sign(0) = 0 (as torch does). The max(D, 1e-5) floor
// passes gradient only where D > 1e-5. detach_inputs: dz is all zeros (no commitment gradient into Z).
// dz may be nullptr when detach_inputs is set. Deterministic for any number of workers.
void PQLossGrad(const PQDims& dims, float dloss, const float* z, const float* codebook, bool detach_inputs,
                float* dz, float* dcodebook, const Parallel& par);

inline constexpr double kPQDistanceFloor = 1e-5;

}  // namespace spt::cpu
