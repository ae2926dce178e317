// Routed FFN (SPT §3): the FFN hidden dimension d_ff is split into n_blocks contiguous blocks of
// bs = d_ff / n_blocks units; a sigmoid router picks top_k blocks per token and only those run.
//
// Layout (MatMul form, y = x·W + b):  X [T, d], W1/W3 [d, d_ff], W2 [d_ff, d], Wr [d, n_b].
// LoRA (rank r_j per pair, no scaling):  A1 [d, r1], B1 [r1, d_ff]   (fc1 / SwiGLU gate)
//                                        A2 [d_ff, r2], B2 [r2, d]   (fc2 / down)
//                                        A3 [d, r3], B3 [r3, d_ff]   (SwiGLU up)
// For token t and selected block i (W1_i = columns of block i of W1, W2_i = its rows):
//   p    = sigmoid(x·Wr + br)                        [T, n_b]
//   u    = x·W1_i + b1_i                             (base pre-activation; u3 = x·W3_i for SwiGLU)
//   l    = (x·A1)·B1_i                               (LoRA pre-activation; l3 likewise)
//   a    = gin·u + l,   h = act(a)                   (SwiGLU: h = silu(gin·u + l) ⊙ (gin·u3 + l3))
//   y_t  = b2 + Σ_{slots s} [ gob·h·W2_i + gol·(h·A2_i)·B2 ]
// with g = 2·p[t, i] and the gate modes
//   frozen_only: gin = gob = g, gol = 1    (spec §3.3; without LoRA it scales the whole base path)
//   all:         gin = 1, gob = gol = g    (g scales the whole block output)
//   none:        gin = gob = gol = 1       (the router only selects; it gets no gradient)
//
// Token grouping: the T·k (token, slot) pairs are sorted stably by block (counting sort), so the
// "grouped rows" are ordered by (block, token); per block, one GEMM chain runs on its rows.
// Everything here is deterministic: no atomics, every sum has a fixed order that does not depend on
// the number of threads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "cpu/parallel.h"

namespace spt::cpu {

// Gated activations (swiglu, geglu, geglu_tanh, reglu) read a second, up projection W3: h = gate(a) ⊙ a3 with gate
// silu, gelu (erf), gelu (tanh) or relu. relu2 is the squared ReLU, max(a, 0)².
enum class FfnActivation { kRelu, kGelu, kGeluTanh, kSilu, kSwiGlu, kGeGlu, kGeGluTanh, kReGlu, kRelu2 };
enum class FfnGate { kFrozenOnly, kAll, kNone };

// Parses the ONNX attribute spellings ("relu", "gelu", "gelu_tanh", "silu", "swiglu", "geglu", "geglu_tanh",
// "reglu", "relu2" and
// "2sigmoid_frozen_only", "2sigmoid_all", "none"); false when unknown.
bool ParseFfnActivation(const std::string& name, FfnActivation* out);
bool ParseFfnGate(const std::string& name, FfnGate* out);

struct RoutedFfnConfig {
  int64_t tokens = 0;
  int64_t d_model = 0;
  int64_t d_ff = 0;
  int64_t n_blocks = 4;
  int64_t top_k = 2;
  // LoRA ranks of the three pairs; 0 = pair absent.
  int64_t rank1 = 0;
  int64_t rank2 = 0;
  int64_t rank3 = 0;
  FfnActivation activation = FfnActivation::kRelu;
  FfnGate gate = FfnGate::kFrozenOnly;
  // Grouped rows per task. 0 = one task (one GEMM chain) per block; otherwise blocks are cut into
  // chunks of at most this many rows so that more tasks than blocks can run in parallel.
  int64_t chunk_rows = 0;

  int64_t BlockSize() const { return d_ff / n_blocks; }
  int64_t Rows() const { return tokens * top_k; }
  bool Gated() const {
    return activation == FfnActivation::kSwiGlu || activation == FfnActivation::kGeGlu ||
           activation == FfnActivation::kGeGluTanh || activation == FfnActivation::kReGlu;
  }
  // Width of a saved pre-activation row: bs, or 2·bs for SwiGLU ([u | u3]).
  int64_t PreWidth() const { return Gated() ? 2 * BlockSize() : BlockSize(); }
};

// Checks the config's own invariants (divisibility, top_k range, SwiGLU-only pair 3); returns an
// empty string when valid, else a sentence that says what is wrong.
std::string ValidateRoutedFfnConfig(const RoutedFfnConfig& cfg);

// Forward inputs; optional ones are nullptr (b1, b2, br, w3 unless SwiGLU, LoRA pairs of rank 0).
struct RoutedFfnWeights {
  const float* w1 = nullptr;  // [d, d_ff]
  const float* b1 = nullptr;  // [d_ff]
  const float* w2 = nullptr;  // [d_ff, d]
  const float* b2 = nullptr;  // [d]
  const float* wr = nullptr;  // [d, n_b]
  const float* br = nullptr;  // [n_b]
  const float* w3 = nullptr;  // [d, d_ff] (SwiGLU up)
  const float* a1 = nullptr;  // [d, r1]
  const float* b1_lora = nullptr;  // [r1, d_ff]
  const float* a2 = nullptr;  // [d_ff, r2]
  const float* b2_lora = nullptr;  // [r2, d]
  const float* a3 = nullptr;  // [d, r3]
  const float* b3_lora = nullptr;  // [r3, d_ff]
};

// State the forward saves for the backward (all outputs of RoutedFFN):
//   probs      [T, n_b]      router probabilities p
//   selection  [T, top_k]    selected block ids per token, in slot order (higher p first, ties: lower id)
//   pre        [T·k, PreWidth()]  base pre-activation u (and u3) of every grouped row, grouped order
// The grouping permutation is not stored: it is a pure function of `selection` (RoutedFfnGroup).
struct RoutedFfnState {
  float* probs = nullptr;
  int32_t* selection = nullptr;
  float* pre = nullptr;
};
struct RoutedFfnConstState {
  const float* probs = nullptr;
  const int32_t* selection = nullptr;
  const float* pre = nullptr;
};

// Grads the backward may produce; nullptr = not wanted. Base-weight grads are the full-finetune
// ones; LoRA grads need their pair. Every wanted buffer is fully overwritten.
struct RoutedFfnGrads {
  float* dx = nullptr;   // [T, d]
  float* dwr = nullptr;  // [d, n_b]
  float* dbr = nullptr;  // [n_b]
  float* dw1 = nullptr;  // [d, d_ff]
  float* db1 = nullptr;  // [d_ff]
  float* dw2 = nullptr;  // [d_ff, d]
  float* db2 = nullptr;  // [d]
  float* dw3 = nullptr;  // [d, d_ff]
  float* da1 = nullptr;  // [d, r1]
  float* db1_lora = nullptr;  // [r1, d_ff]
  float* da2 = nullptr;  // [d_ff, r2]
  float* db2_lora = nullptr;  // [r2, d]
  float* da3 = nullptr;  // [d, r3]
  float* db3_lora = nullptr;  // [r3, d_ff]
};

// Grouping of the T·k (token, slot) pairs by block, derived from `selection`:
//   offsets [n_b + 1]  exclusive scan of per-block counts (rows of block b: [offsets[b], offsets[b+1]))
//   perm    [T·k]      grouped row j -> pair index t·k + s (stable: ordered by token within a block)
//   pos     [T·k]      pair index t·k + s -> grouped row (inverse of perm)
void RoutedFfnGroup(const int32_t* selection, int64_t tokens, int64_t top_k, int64_t n_blocks,
                    int32_t* offsets, int32_t* perm, int32_t* pos);

// Checks a selection tensor handed to the backward: ids in [0, n_b), distinct within a token.
// Returns an empty string when valid.
std::string ValidateSelection(const int32_t* selection, int64_t tokens, int64_t top_k, int64_t n_blocks);

// Scratch bytes the forward needs. Saved-state pointers left null in `state` are placed in the
// workspace (inference runs need only y).
std::size_t RoutedFfnForwardWorkspaceBytes(const RoutedFfnConfig& cfg, const RoutedFfnState& state);
// y [T, d]; `workspace` must hold RoutedFfnForwardWorkspaceBytes bytes (64-byte aligned is best).
void RoutedFfnForward(const RoutedFfnConfig& cfg, const RoutedFfnWeights& w, const float* x, float* y,
                      RoutedFfnState state, void* workspace, const Parallel& parallel);

std::size_t RoutedFfnBackwardWorkspaceBytes(const RoutedFfnConfig& cfg, const RoutedFfnGrads& grads);
// `state` must come from RoutedFfnForward with the same config, weights and x.
void RoutedFfnBackward(const RoutedFfnConfig& cfg, const RoutedFfnWeights& w, const float* x, const float* dy,
                       const RoutedFfnConstState& state, const RoutedFfnGrads& grads, void* workspace,
                       const Parallel& parallel);

}  // namespace spt::cpu
