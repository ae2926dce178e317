// Shape and attribute checks shared by the PQ and sparse-attention kernels. They throw
// std::invalid_argument with a message that names the op, the input and the expected shape; the ORT
// binding turns that into an ORT error, and the kernels themselves assume checked inputs.
#pragma once

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

// Marks a hot function to be compiled three times on x86-64 GCC, for AVX-512 (x86-64-v4), for AVX2+FMA (x86-64-v3)
// and for the baseline; the loader picks the best clone the CPU supports (the AVX-512 one made the SPT training step
// ~8% faster on an AVX-512 Xeon). Elsewhere it expands to nothing.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define SPT_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SPT_CPU_CLONES
#endif

// Small index helpers are also called from the CUDA kernels (cuda/), which include these headers.
#if defined(__CUDACC__)
#define SPT_HOST_DEVICE __host__ __device__
#else
#define SPT_HOST_DEVICE
#endif

namespace spt::cpu {

using Shape = std::vector<int64_t>;

inline std::string ShapeString(const Shape& shape) {
  std::ostringstream s;
  s << '[';
  for (std::size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << ']';
  return s.str();
}

inline int64_t NumElements(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

[[noreturn]] inline void FailInput(const char* op, const char* input, const std::string& expected,
                                   const Shape& got) {
  throw std::invalid_argument(std::string(op) + ": input '" + input + "' must have shape " + expected +
                              "; got " + ShapeString(got));
}

[[noreturn]] inline void FailAttribute(const char* op, const char* attribute, const std::string& what) {
  throw std::invalid_argument(std::string(op) + ": attribute '" + attribute + "' " + what);
}

// Checks that `shape` has exactly `rank` dims and that every dim listed in `expected` (-1 = any) matches.
// `pattern` is the symbolic shape used in the message, e.g. "[B, H, Sk, E]".
inline void ExpectShape(const char* op, const char* input, const Shape& shape, const Shape& expected,
                        const char* pattern) {
  bool ok = shape.size() == expected.size();
  for (std::size_t i = 0; ok && i < expected.size(); ++i) ok = expected[i] < 0 || expected[i] == shape[i];
  for (std::size_t i = 0; ok && i < shape.size(); ++i) ok = shape[i] >= 0;
  if (!ok) {
    std::ostringstream want;
    want << pattern << " = [";
    for (std::size_t i = 0; i < expected.size(); ++i) {
      want << (i ? ", " : "");
      if (expected[i] < 0) want << '?'; else want << expected[i];
    }
    want << ']';
    FailInput(op, input, want.str(), shape);
  }
}

// Grouped K/V heads (GQA/MQA): H query heads share Hkv key/value heads, H % Hkv == 0, and query head h reads
// kv head h / (H / Hkv). Hkv == H is ordinary multi-head attention, Hkv == 1 multi-query attention.
inline void CheckHeadGroups(const char* op, const char* input, int64_t h, int64_t hkv) {
  if (hkv < 1 || h % hkv != 0) {
    throw std::invalid_argument(std::string(op) + ": input '" + input + "' has " + std::to_string(hkv) +
                                " heads; the " + std::to_string(h) +
                                " query heads must be a whole multiple of it (H % Hkv == 0)");
  }
}

// Flattened (b, kv head) of the flattened (b, query head) bh.
inline SPT_HOST_DEVICE int64_t KvHeadOf(int64_t bh, int64_t h, int64_t hkv) { return (bh / h) * hkv + (bh % h) / (h / hkv); }

}  // namespace spt::cpu
