// The kernel test cases shared by the CPU test suites (GoogleTest) and the GPU check (gpu/check.py reads
// them through the check library's spt_cases_json(), so both sides run exactly these shapes and options).
#pragma once

#include <cstdint>

namespace spt::test {

// SparseAttention(+Grad): Q [B, H, Sq, E], K/V [B, Hkv, Sk, E/Ev], L keys per row.
struct AttentionCase {
  int64_t B, H, Hkv, Sq, Sk, E, Ev, L;
};
inline constexpr AttentionCase kAttentionCases[] = {
    {1, 1, 1, 5, 5, 4, 4, 3},    {2, 3, 3, 9, 9, 16, 8, 4},   {2, 2, 2, 6, 11, 8, 8, 5},  {1, 2, 2, 10, 6, 8, 5, 3},
    {1, 1, 1, 17, 17, 64, 64, 6}, {2, 4, 2, 9, 11, 8, 6, 5},  {1, 3, 1, 12, 12, 16, 16, 4}, {1, 8, 2, 40, 40, 64, 64, 8},
};

// PQTopK: codes_q [B, H, Sq, M], codes_k [B, Hkv, Sk, M], L keys; causal and masked as given.
struct TopKCase {
  int64_t B, H, Hkv, Sq, Sk, M, L;
  bool causal, masked;
};
inline constexpr TopKCase kTopKCases[] = {
    {1, 1, 1, 8, 8, 4, 3, true, false},    {2, 3, 3, 19, 19, 8, 5, true, true},   {2, 2, 2, 7, 13, 8, 4, true, false},
    {1, 2, 2, 13, 7, 8, 3, true, true},    {2, 1, 1, 11, 17, 10, 6, false, true}, {1, 1, 1, 33, 33, 16, 33, true, false},
    {1, 2, 2, 9, 9, 2, 1, false, false},   {3, 1, 1, 40, 40, 8, 5, true, true},   {2, 4, 2, 13, 17, 8, 5, true, true},
    {1, 3, 1, 21, 21, 8, 7, false, false},
};

// PQEncode / PQLoss(+Grad): Z [N, M * dc], codebook [M, C, dc].
struct PQCase {
  int64_t N, M, C, dc;
};
inline constexpr PQCase kPQCases[] = {{1, 1, 1, 1}, {7, 2, 4, 3}, {64, 8, 16, 8}, {300, 4, 16, 8}, {33, 3, 5, 6}};

// RoutedFFN(+Grad): activation 0..8 = relu, gelu, gelu_tanh, silu, swiglu, geglu, geglu_tanh, reglu, relu2 (4..7
// gated, with W3); gate 0..2 = frozen_only, all, none; ranks 0 = no LoRA pair (rank3 only when gated).
struct FfnCase {
  int64_t tokens, d_model, d_ff, n_blocks, top_k, rank1, rank2, rank3;
  int activation, gate;
  bool biases;
};
inline constexpr FfnCase kFfnCases[] = {
    {6, 8, 16, 4, 2, 3, 2, 0, 0, 0, true},  {6, 8, 16, 4, 2, 0, 0, 0, 0, 0, false}, {6, 8, 16, 4, 2, 3, 2, 0, 1, 1, true},
    {6, 8, 16, 4, 2, 3, 2, 0, 2, 2, false}, {6, 8, 16, 4, 2, 3, 2, 0, 3, 0, true},  {6, 8, 16, 4, 2, 3, 2, 2, 4, 0, false},
    {6, 8, 16, 4, 2, 0, 0, 0, 4, 1, true},  {1, 8, 16, 4, 1, 3, 2, 0, 0, 0, true},  {40, 16, 64, 4, 2, 4, 4, 0, 0, 0, true},
    {6, 8, 16, 4, 2, 3, 2, 2, 5, 0, false}, {6, 8, 16, 4, 2, 0, 0, 0, 6, 1, true},  {6, 8, 16, 4, 2, 3, 2, 2, 7, 2, false},
    {6, 8, 16, 4, 2, 3, 2, 0, 8, 0, true},
};

}  // namespace spt::test
