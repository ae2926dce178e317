// CUDA kernels of the spt ops: pointers, shapes and a stream in, no ORT types (the ORT binding in
// cuda/binding/ and the ctypes harness in gpu/ both call these). The semantics are exactly those of the CPU
// kernels in cpu/ (same dims structs, same shape checks, same tie-breaks and masks); see the CPU headers
// for the formulas. Differences, all documented where they apply:
//   - element types: fp32, fp16 and bf16 inputs/outputs (DType), every sum accumulated in fp32 (the loss and
//     the codebook-gradient reductions in fp64, like the CPU kernels);
//   - PQTopK has a `window` option (0 = off, the CPU op's behaviour) and caps Sk by shared memory;
//   - scratch comes from the caller (WorkspaceBytes functions), so no kernel allocates or synchronizes,
//     except RoutedFFN, which reads the n_blocks + 1 group offsets back to the host once per call to size
//     its per-block cuBLAS GEMMs (see routed_ffn.cu).
// Every function enqueues work on `stream` and returns; errors in arguments throw std::invalid_argument
// before anything is enqueued, launch errors throw std::runtime_error.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cpu/pq.h"
#include "cpu/routed_ffn.h"
#include "cpu/sparse_attention.h"

typedef struct CUstream_st* cudaStream_t;
typedef struct cublasContext* cublasHandle_t;

namespace spt::cuda {

enum class DType : int { kF32 = 0, kF16 = 1, kBF16 = 2 };
const char* DTypeName(DType t);

// Throws std::runtime_error naming `what` when the last launch on this thread failed.
void CheckLaunch(const char* what);

// ------------------------------------------------------------------------------------------- PQ

// codes [N, M] int32 = argmin_c L1(z chunk, codebook[m, c]) (ties: lowest c); z and codebook in `dtype`.
void PQEncode(const cpu::PQDims& d, DType dtype, const void* z, const void* codebook, int32_t* codes,
              cudaStream_t stream);

// Largest Sk PQTopK handles on this device (its per-row key state lives in shared memory).
int64_t PQTopKMaxKeys();
// indices [B, H, Sq, L] as cpu::PQTopK, with codes_k [B, Hkv, Sk, M]. key_keep: [B, Sk] uint8 or nullptr.
// window > 0 additionally hides keys more than window - 1 positions before the query's aligned position
// i + Sk - Sq (and, when not causal, after it): a sliding window. window = 0 is the CPU op's behaviour.
void PQTopK(const cpu::PQTopKDims& d, cpu::TopKMode mode, bool causal, int64_t window, const int32_t* codes_q,
            const int32_t* codes_k, const uint8_t* key_keep, int32_t* indices, cudaStream_t stream);

// Scratch of PQLoss / PQLossGrad (fp64 partial sums per chunk of rows).
std::size_t PQLossWorkspaceBytes(const cpu::PQDims& d);
std::size_t PQLossGradWorkspaceBytes(const cpu::PQDims& d);
// loss: one float on the device (always fp32, the CPU op's output type is float too).
void PQLoss(const cpu::PQDims& d, DType dtype, const void* z, const void* codebook, float* loss, void* workspace,
            cudaStream_t stream);
// dloss: one float on the device. dz (may be nullptr when detach_inputs) and dcodebook in `dtype`.
void PQLossGrad(const cpu::PQDims& d, DType dtype, const float* dloss, const void* z, const void* codebook,
                bool detach_inputs, void* dz, void* dcodebook, void* workspace, cudaStream_t stream);

// ------------------------------------------------------------------------------- SparseAttention

// Element types of a key_padding_mask on the device.
enum class MaskType : int { kByte = 0, kInt32 = 1, kInt64 = 2, kFloat = 3 };  // kByte: bool, int8, uint8
// keep [n] = mask != 0 (PQTopK's keep-mask, any type).
void MaskToKeep(MaskType type, const void* mask, int64_t n, uint8_t* keep, cudaStream_t stream);
// bias [n] = mask != 0 ? 0 : -inf (SparseAttention's additive form of a bool/int keep-mask).
void MaskToBias(MaskType type, const void* mask, int64_t n, float* bias, cudaStream_t stream);

// Checks that every entry of `indices` is in [-1, Sk); returns the flat position of the first bad one or -1.
// (Reads one int64 back: the only synchronizing call here; the binding uses it only when asked to validate.)
int64_t FindBadIndex(const cpu::SparseAttentionDims& d, const int32_t* indices, void* workspace, cudaStream_t stream);
std::size_t FindBadIndexWorkspaceBytes();

// Forward: Y [B, H, Sq, Ev], P [B, H, Sq, L] in `dtype`; key_bias [B, Sk] fp32 additive or nullptr.
// One warp per query row: logits for the row's L slots, clamp, mask, max-subtracted softmax, then
// Y = sum_t P_t V_j with the lanes splitting Ev. No S x S buffer.
void SparseAttentionForward(const cpu::SparseAttentionDims& d, const cpu::SparseAttentionParams& p, DType dtype,
                            const void* q, const void* k, const void* v, const int32_t* indices,
                            const float* key_bias, void* y, void* probs, cudaStream_t stream,
                            const cpu::AttentionBias<float>& attn_bias = {});

// Backward scratch: ds [B, H, Sq, L] fp32, the key-major copy of the selection (sorted keys and entries,
// offsets [B * Hkv * (Sk + 1) + 1]) and the radix sort's temporary storage.
std::size_t SparseAttentionBackwardWorkspaceBytes(const cpu::SparseAttentionDims& d);
// dQ [B, H, Sq, E], dK [B, Hkv, Sk, E], dV [B, Hkv, Sk, Ev] in `dtype`. dK/dV: a stable radix sort of the
// (kv head, key) of every slot gives each key its entries in ascending (query head, row, slot) order; one
// warp per key then reduces them in that order. Deterministic, no float atomics.
void SparseAttentionBackward(const cpu::SparseAttentionDims& d, const cpu::SparseAttentionParams& p, DType dtype,
                             const void* dy, const void* q, const void* k, const void* v, const int32_t* indices,
                             const void* probs, void* dq, void* dk, void* dv, void* workspace, cudaStream_t stream);

// ----------------------------------------------------------------------------------- RoutedFFN

// Pointers as in cpu::RoutedFfnWeights / State / Grads, but device pointers in `dtype` (selection int32).
struct FfnWeights {
  const void *w1 = nullptr, *b1 = nullptr, *w2 = nullptr, *b2 = nullptr, *wr = nullptr, *br = nullptr,
             *w3 = nullptr, *a1 = nullptr, *b1_lora = nullptr, *a2 = nullptr, *b2_lora = nullptr, *a3 = nullptr,
             *b3_lora = nullptr;
};
struct FfnState {
  void* probs = nullptr;         // [T, n_b]
  int32_t* selection = nullptr;  // [T, top_k]
  void* pre = nullptr;           // [T·k, PreWidth]
};
struct FfnGrads {
  void *dx = nullptr, *dwr = nullptr, *dbr = nullptr, *dw1 = nullptr, *db1 = nullptr, *dw2 = nullptr,
       *db2 = nullptr, *dw3 = nullptr, *da1 = nullptr, *db1_lora = nullptr, *da2 = nullptr, *db2_lora = nullptr,
       *da3 = nullptr, *db3_lora = nullptr;
};

// Scratch (fixed capacity: every buffer is sized for T·k grouped rows, whatever the routing).
std::size_t RoutedFfnForwardWorkspaceBytes(const cpu::RoutedFfnConfig& cfg, DType dtype, const FfnState& state);
std::size_t RoutedFfnBackwardWorkspaceBytes(const cpu::RoutedFfnConfig& cfg, DType dtype, const FfnGrads& grads);
// `cublas` must be bound to `stream` by the caller (cublasSetStream) and use its default pointer mode.
void RoutedFfnForward(const cpu::RoutedFfnConfig& cfg, DType dtype, const FfnWeights& w, const void* x, void* y,
                      FfnState state, void* workspace, cublasHandle_t cublas, cudaStream_t stream);
void RoutedFfnBackward(const cpu::RoutedFfnConfig& cfg, DType dtype, const FfnWeights& w, const void* x,
                       const void* dy, const FfnState& state, const FfnGrads& grads, void* workspace,
                       cublasHandle_t cublas, cudaStream_t stream);

}  // namespace spt::cuda
