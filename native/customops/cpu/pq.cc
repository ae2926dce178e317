#include "cpu/pq.h"

#include "cpu/pq_lanes.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace spt::cpu {

namespace {

// Rows per parallel task. Fixed (not derived from the worker count) so reductions are deterministic.
constexpr int64_t kRowsPerChunk = 256;

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// L1 distance between a dc-wide chunk of z and one codeword.
inline float L1(const float* a, const float* b, int64_t n) {
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  int64_t d = 0;
  for (; d + 4 <= n; d += 4) {
    acc[0] += std::fabs(a[d] - b[d]);
    acc[1] += std::fabs(a[d + 1] - b[d + 1]);
    acc[2] += std::fabs(a[d + 2] - b[d + 2]);
    acc[3] += std::fabs(a[d + 3] - b[d + 3]);
  }
  float s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
  for (; d < n; ++d) s += std::fabs(a[d] - b[d]);
  return s;
}

}  // namespace

PQDims CheckPQInputs(const char* op, const Shape& z, const Shape& codebook) {
  if (codebook.size() != 3 || codebook[0] < 1 || codebook[1] < 1 || codebook[2] < 1) {
    FailInput(op, "codebook", "[M, C, dc] with M, C, dc >= 1", codebook);
  }
  if (z.empty()) FailInput(op, "Z", "[..., E] (rank >= 1)", z);
  PQDims d;
  d.M = codebook[0];
  d.C = codebook[1];
  d.dc = codebook[2];
  d.E = z.back();
  if (d.E != d.M * d.dc) {
    FailInput(op, "Z",
              "[..., E] with E = M * dc = " + std::to_string(d.M) + " * " + std::to_string(d.dc) + " = " +
                  std::to_string(d.M * d.dc) + " (the last dim must split into M codeword-sized subspaces)",
              z);
  }
  for (int64_t v : z) {
    if (v < 0) FailInput(op, "Z", "[..., E] with non-negative dims", z);
  }
  d.N = NumElements(Shape(z.begin(), z.end() - 1));
  return d;
}

void PQEncode(const PQDims& d, const float* z, const float* codebook, int32_t* codes, const Parallel& par) {
  const bool lanes = lanes::LanesApply(d);
  par.For(static_cast<std::size_t>(CeilDiv(d.N, kRowsPerChunk)), [&](std::size_t chunk) {
    const int64_t n0 = static_cast<int64_t>(chunk) * kRowsPerChunk, n1 = std::min(d.N, n0 + kRowsPerChunk);
    if (lanes) {
      lanes::EncodeRows(d, z, codebook, n0, n1, codes);
      return;
    }
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t m = 0; m < d.M; ++m) {
        const float* zm = z + n * d.E + m * d.dc;
        const float* wm = codebook + m * d.C * d.dc;
        int32_t best = 0;
        float best_dist = L1(zm, wm, d.dc);
        for (int64_t c = 1; c < d.C; ++c) {
          const float dist = L1(zm, wm + c * d.dc, d.dc);
          if (dist < best_dist) {  // strict: ties keep the lowest index
            best_dist = dist;
            best = static_cast<int32_t>(c);
          }
        }
        codes[n * d.M + m] = best;
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------------

TopKMode ParseTopKMode(const std::string& mode) {
  if (mode == "exact") return TopKMode::kExact;
  if (mode == "bucketed") return TopKMode::kBucketed;
  FailAttribute("PQTopK", "mode", "must be \"exact\" or \"bucketed\"; got \"" + mode + "\"");
}

int64_t ResolveTopK(int64_t top_k, float ratio, int64_t sk, int64_t min_keys) {
  if (top_k < 0) FailAttribute("PQTopK", "keys_per_query", "must be >= 0 (0 = use keys_ratio); got " + std::to_string(top_k));
  if (min_keys < 0) {
    FailAttribute("PQTopK", "min_keys_per_query", "must be >= 0 (0 = no floor); got " + std::to_string(min_keys));
  }
  int64_t l = top_k;
  if (l == 0) {
    if (!(ratio > 0.f && ratio <= 1.f)) {
      FailAttribute("PQTopK", "keys_ratio", "must be in (0, 1]; got " + std::to_string(ratio));
    }
    l = std::max<int64_t>(std::max<int64_t>(1, min_keys),
                          static_cast<int64_t>(std::ceil(static_cast<double>(ratio) * static_cast<double>(sk))));
  }
  return std::max<int64_t>(std::min(l, sk), sk > 0 ? 1 : 0);
}

PQTopKDims CheckPQTopKInputs(const Shape& q, const Shape& k, const Shape* mask) {
  ExpectShape("PQTopK", "codes_q", q, {-1, -1, -1, -1}, "[B, H, Sq, M]");
  ExpectShape("PQTopK", "codes_k", k, {q[0], -1, -1, q[3]}, "[B, Hkv, Sk, M]");
  CheckHeadGroups("PQTopK", "codes_k", q[1], k[1]);
  if (mask) ExpectShape("PQTopK", "key_padding_mask", *mask, {q[0], k[2]}, "[B, Sk]");
  PQTopKDims d;
  d.B = q[0];
  d.H = q[1];
  d.Sq = q[2];
  d.Sk = k[2];
  d.M = q[3];
  d.Hkv = k[1];
  return d;
}

namespace {

// Picks `need` keys among the candidates (key index ascending) with the highest level, ties to the earliest
// key: finds the threshold level t such that #(level > t) < need <= #(level >= t), then marks every key above
// t and the earliest ones at t. `levels[j]` < 0 means "not a candidate". Returns the number marked.
[[gnu::always_inline]] inline int64_t MarkTop(const int16_t* levels, int64_t sk, int64_t first, int64_t stride, int64_t max_level, int64_t need,
                int64_t* histogram, uint8_t* marked) {
  if (need <= 0) return 0;
  std::fill(histogram, histogram + max_level + 1, 0);
  for (int64_t j = first; j < sk; j += stride) {
    if (levels[j] >= 0 && !marked[j]) ++histogram[levels[j]];
  }
  int64_t above = 0, threshold = max_level;
  for (; threshold >= 0; --threshold) {
    if (above + histogram[threshold] >= need) break;
    above += histogram[threshold];
  }
  if (threshold < 0) {  // fewer candidates than `need`: take them all (level 0 included)
    threshold = 0;
    above -= histogram[0];
  }
  int64_t at_threshold = need - above, taken = 0;
  for (int64_t j = first; j < sk; j += stride) {
    const int16_t lv = levels[j];
    if (lv < 0 || marked[j]) continue;
    if (lv > threshold || (lv == threshold && at_threshold > 0)) {
      if (lv == threshold) --at_threshold;
      marked[j] = 1;
      ++taken;
    }
  }
  return taken;
}

}  // namespace

namespace {

struct TopKProblem {
  const PQTopKDims& d;
  TopKMode mode;
  bool causal;
  int64_t window;
  const int32_t* codes_q;
  const int32_t* codes_k;
  const uint8_t* key_keep;
  int32_t* indices;
  const int16_t* level_of_count;  // [M + 1]: match count -> level (itself, or its bucket)
  int64_t max_level;
  int64_t bucket_width;  // bucketed mode: match counts per level
  int64_t field_bits;  // 4 or 8: codes packed this many bits each into 32-bit words; 0: not packed
  const uint32_t* packed_keys;  // field_bits > 0: [B * Hkv, words, Sk] the key codes packed
};

// Codes packed into 32-bit words, `bits` per code (all codes below 2^bits), code m of a row in word m / per_word
// at field m % per_word; unused fields are 0 in both query and key words, so they always "match" and are
// subtracted. The match count of a query word q and a key word k is the number of zero fields of q ^ k.
struct CodePacking {
  int64_t bits, per_word, words, shift;  // per_word = 2^shift fields per word
  CodePacking(int64_t field_bits, int64_t m)
      : bits(field_bits), per_word(32 / field_bits), words((m + per_word - 1) / per_word), shift(field_bits == 4 ? 3 : 2) {}
  // out[w * stride] = word w of one row's codes.
  void Pack(const int32_t* codes, int64_t m, uint32_t* out, int64_t stride = 1) const {
    for (int64_t w = 0; w < words; ++w) out[w * stride] = 0;
    for (int64_t i = 0; i < m; ++i) {
      out[(i >> shift) * stride] |= static_cast<uint32_t>(codes[i]) << ((i & (per_word - 1)) * bits);
    }
  }
};

// Fields of x that are nonzero: fold each field's bits into its lowest bit, then sum the low bits with one
// multiply (the sum of at most 8 fields fits the top field).
template <int kBits>
inline uint32_t NonzeroFields(uint32_t x) {
  if constexpr (kBits == 4) {
    x |= x >> 1;
    x |= x >> 2;
    x &= 0x11111111u;
    return (x * 0x11111111u) >> 28;
  } else {
    x |= x >> 1;
    x |= x >> 2;
    x |= x >> 4;
    x &= 0x01010101u;
    return (x * 0x01010101u) >> 24;
  }
}

// counts[j] = matching codes of query row (packed words qw) and key j, for first <= j < limit (the keys the row may
// see: a sliding window's start to its causal or window end); kw is [words, Sk].
template <int kBits>
inline void CountMatchesPacked(const uint32_t* qw, const uint32_t* kw, int64_t words, int64_t sk, int64_t fields,
                               int64_t first, int64_t limit, int32_t* counts) {
  for (int64_t j = first; j < limit; ++j) counts[j] = static_cast<int32_t>(fields);
  for (int64_t w = 0; w < words; ++w) {
    const uint32_t q = qw[w];
    const uint32_t* col = kw + w * sk;
    for (int64_t j = first; j < limit; ++j) counts[j] -= static_cast<int32_t>(NonzeroFields<kBits>(q ^ col[j]));
  }
}

// Eight bytes of a level array as one little-endian word (byte b: the key at offset b).
inline uint64_t LoadWord(const uint8_t* p) {
  uint64_t x;
  std::memcpy(&x, p, sizeof x);
  return x;
}

// v in every byte of a word.
constexpr uint64_t Bytes(uint64_t v) { return v * 0x0101010101010101ull; }

// Bytes of x that are >= the corresponding byte of v, as the high bit of each byte (all values below 128: setting
// the high bit before subtracting keeps every byte's borrow inside it).
inline uint64_t AtLeast(uint64_t x, uint64_t v) {
  constexpr uint64_t kHigh = 0x8080808080808080ull;
  return ((x | kHigh) - v) & kHigh;
}

// The keys [first, limit) of a row as bytes, eight per step (a plain loop does not vectorize the int32 -> byte
// narrowing): lv[j] = counts[j] + 1 when width is 0 (exact mode), else 1 + min(3, counts[j] / width) (bucketed).
inline void CountsToBytes(const int32_t* counts, int64_t first, int64_t limit, int32_t width, uint8_t* lv) {
  typedef int32_t I8 __attribute__((vector_size(32)));
  typedef uint8_t U8 __attribute__((vector_size(8)));
  auto convert = [width](I8 n) {
    // Comparisons of vectors give -1 where true.
    return __builtin_convertvector(width == 0 ? n + 1 : 1 - (n >= width) - (n >= 2 * width) - (n >= 3 * width), U8);
  };
  int64_t j = first;
  for (; j + 8 <= limit; j += 8) {
    I8 n;
    std::memcpy(&n, counts + j, sizeof n);
    const U8 bytes = convert(n);
    std::memcpy(lv + j, &bytes, sizeof bytes);
  }
  if (j < limit) {  // the last partial group, through a zero-padded copy
    I8 n = I8{};
    for (int64_t u = 0; u < limit - j; ++u) n[u] = counts[j + u];
    const U8 bytes = convert(n);
    for (int64_t u = 0; u < limit - j; ++u) lv[j + u] = bytes[u];
  }
}

// A row's key bytes over whole words: CountsToBytes for [first, limit), 0 for masked keys (keep) and for the keys
// from first rounded down to 8 up to first and from limit to 32 past limit rounded up to 8 (what the word and
// 32-byte vector steps read).
inline void RowBytes(const int32_t* counts, const uint8_t* keep, int64_t first, int64_t limit, int32_t width,
                     uint8_t* lv) {
  for (int64_t j = first & ~int64_t{7}; j < first; ++j) lv[j] = 0;
  CountsToBytes(counts, first, limit, width, lv);
  if (keep) {
    for (int64_t j = first; j < limit; ++j) lv[j] = keep[j] ? lv[j] : uint8_t{0};
  }
  for (int64_t j = limit; j < ((limit + 7) & ~int64_t{7}) + 32; ++j) lv[j] = 0;
}

// Writes to out, in ascending key order, the keys of the level bytes lv[w0, w1) (w0 a multiple of 8) above their
// class's threshold and, while the class's tie budget lasts, the earliest ones at it: thr holds each byte position's
// threshold (biased like lv), byte b of a word belongs to class b % classes (1 or 4), budget[c] is class c's number
// of ties to take. Eight keys per 64-bit word, the candidates visited by their mask bits. Returns the slots written
// (at most l).
inline int64_t EmitSelected(const uint8_t* lv, int64_t w0, int64_t w1, int64_t l, uint64_t thr, int64_t classes,
                            int64_t* budget, int32_t* out) {
  auto class_bits = [classes](int64_t c) {
    return classes == 1 ? 0x8080808080808080ull : 0x0000008000000080ull << (8 * c);
  };
  const uint64_t above_thr = thr + Bytes(1);
  uint64_t live = 0;  // classes with tie budget left
  for (int64_t c = 0; c < classes; ++c) {
    if (budget[c] > 0) live |= class_bits(c);
  }
  int64_t t = 0;
  for (int64_t j = w0; j < w1 && t < l; j += 8) {
    const uint64_t x = LoadWord(lv + j);
    const uint64_t above = AtLeast(x, above_thr);
    uint64_t ties = AtLeast(x, thr) & ~above & live;
    uint64_t candidates = above | ties;
    while (candidates != 0 && t < l) {
      const int bit = __builtin_ctzll(candidates);
      const uint64_t mask = uint64_t{1} << bit;
      candidates &= candidates - 1;
      const int64_t b = bit >> 3;
      if (ties & mask) {
        const int64_t c = b & (classes - 1);  // classes is 1 or 4
        if (--budget[c] == 0) {  // the class's budget is spent: its later ties are not taken
          live &= ~class_bits(c);
          candidates &= ~(ties & class_bits(c));
          ties &= ~class_bits(c);
        }
      }
      out[t++] = static_cast<int32_t>(j + b);
    }
  }
  return t;
}

// ge[v] = the bytes of lv[0, n) that are >= v, for v = 1 .. max_v (ge[max_v + 1] = 0); 32 bytes per step, with
// per-lane byte counters flushed before they can overflow. lv must be readable (and zero) up to n rounded up to 32.
inline void CountAtLeast(const uint8_t* lv, int64_t n, int64_t max_v, int64_t* ge) {
  typedef uint8_t U32 __attribute__((vector_size(32)));
  for (int64_t v = 0; v <= max_v + 1; ++v) ge[v] = 0;
  for (int64_t v = 1; v <= max_v; ++v) {
    U32 acc = U32{};
    int64_t pending = 0;
    auto flush = [&] {
      int64_t sum = 0;
      for (int b = 0; b < 32; ++b) sum += acc[b];
      ge[v] += sum;
      acc = U32{};
      pending = 0;
    };
    const uint8_t bound = static_cast<uint8_t>(v);
    for (int64_t j = 0; j < n; j += 32) {
      U32 x;
      std::memcpy(&x, lv + j, sizeof x);
      acc -= reinterpret_cast<U32>(x >= bound);  // true is all ones: subtracting it adds one
      if (++pending == 255) flush();
    }
    flush();
  }
}

struct TopKScratch {
  int32_t* key_codes;  // [M, Sk] this head's key codes, subspace-major (packed: [words, Sk] uint32)
  int32_t* counts;     // [Sk]
  int16_t* levels;     // [Sk]
  uint8_t* marked;     // [Sk]
  int64_t* histogram;  // [4, max_level + 1]
  uint8_t* key_levels;  // [Sk + 48] biased level (bucketed) or match count (exact) per key, zero-padded
};

// Query rows [i0, i1) of head bh.
[[gnu::always_inline]] inline void TopKRowsImpl(const TopKProblem& w, int64_t bh, int64_t i0, int64_t i1,
                                                const TopKScratch& s) {
  const PQTopKDims& d = w.d;
  // Exclusive bound on the keys row i may see (causal rule aligned to the end for Sq != Sk; a window that is not
  // causal reaches window - 1 keys past the aligned position), and the first key it may see (the window's start).
  auto limit_of = [&](int64_t i) {
    if (w.causal) return std::clamp<int64_t>(i + d.Sk - d.Sq + 1, 0, d.Sk);
    return w.window > 0 ? std::clamp<int64_t>(i + d.Sk - d.Sq + w.window, 0, d.Sk) : d.Sk;
  };
  auto first_of = [&](int64_t i) { return w.window > 0 ? std::clamp<int64_t>(i + d.Sk - d.Sq - w.window + 1, 0, d.Sk) : 0; };
  const int64_t key_end = limit_of(i1 - 1);
  // Subspace-major copy of the visible keys' codes so the match count vectorizes over keys; packed when the
  // codes are small (a few bits each), which reads 8 (or 4) codes with one 32-bit compare.
  const int32_t* kc = w.codes_k + KvHeadOf(bh, d.H, d.Hkv) * d.Sk * d.M;
  const CodePacking pack(w.field_bits > 0 ? w.field_bits : 4, d.M);
  const uint32_t* packed = w.field_bits > 0 ? w.packed_keys + KvHeadOf(bh, d.H, d.Hkv) * pack.words * d.Sk : nullptr;
  if (w.field_bits == 0) {
    for (int64_t j = 0; j < key_end; ++j) {
      for (int64_t m = 0; m < d.M; ++m) s.key_codes[m * d.Sk + j] = kc[j * d.M + m];
    }
  }
  const uint8_t* keep = w.key_keep ? w.key_keep + (bh / d.H) * d.Sk : nullptr;
  for (int64_t i = i0; i < i1; ++i) {
    const int32_t* qc = w.codes_q + (bh * d.Sq + i) * d.M;
    const int64_t limit = limit_of(i);
    const int64_t first = first_of(i);
    if (w.field_bits > 0) {
      uint32_t qw[32];
      pack.Pack(qc, d.M, qw);
      const int64_t fields = pack.words * pack.per_word;
      if (w.field_bits == 4) {
        CountMatchesPacked<4>(qw, packed, pack.words, d.Sk, fields, first, limit, s.counts);
      } else {
        CountMatchesPacked<8>(qw, packed, pack.words, d.Sk, fields, first, limit, s.counts);
      }
      // The padding fields matched in every word: take them off.
      const int32_t pad = static_cast<int32_t>(fields - d.M);
      if (pad) {
        for (int64_t j = first; j < limit; ++j) s.counts[j] -= pad;
      }
    } else {
      std::fill(s.counts + first, s.counts + limit, 0);
      for (int64_t m = 0; m < d.M; ++m) {
        const int32_t code = qc[m];
        const int32_t* col = s.key_codes + m * d.Sk;
        for (int64_t j = first; j < limit; ++j) s.counts[j] += col[j] == code;
      }
    }
    int32_t* out = w.indices + (bh * d.Sq + i) * d.L;
    if (w.mode == TopKMode::kExact && d.M < 127) {
      // Each visible key's match count plus one as a byte (0: masked or outside [first, limit)), over whole words
      // from first rounded down; the histogram counts 32 keys per vector step and the emission visits the
      // candidates of eight keys per 64-bit word by their mask bits.
      const int64_t w0 = first & ~int64_t{7}, w1 = (limit + 7) & ~int64_t{7};
      uint8_t* lv = s.key_levels;
      RowBytes(s.counts, keep, first, limit, 0, lv);
      // ge[v]: keys with count >= v - 1 (biased byte >= v), v = 1 .. M + 1.
      int64_t* ge = s.histogram;
      CountAtLeast(lv + w0, w1 - w0, d.M + 1, ge);
      // Threshold: the largest count t with at least L keys at or above it (every key when fewer are eligible).
      int64_t threshold = d.M;
      while (threshold > 0 && ge[threshold + 1] < d.L) --threshold;
      const int64_t above_count = threshold + 2 <= d.M + 1 ? ge[threshold + 2] : 0;
      int64_t at_threshold = std::min<int64_t>(d.L - above_count, ge[threshold + 1] - above_count);
      int64_t t = EmitSelected(lv, w0, w1, d.L, Bytes(static_cast<uint64_t>(threshold + 1)), 1, &at_threshold, out);
      for (; t < d.L; ++t) out[t] = -1;
      continue;
    }
    if (w.mode == TopKMode::kExact) {
      // One pass for the count histogram, one to emit: every key above the threshold count and the earliest
      // ones at it, in ascending key order.
      // The histogram is kept per key class j % 4 (summed after) so that consecutive increments rarely hit the
      // same counter; the emission is branch-free (a key's slot is written, and kept only when it is taken).
      std::fill(s.histogram, s.histogram + 4 * (d.M + 1), 0);
      for (int64_t j = first; j < limit; ++j) {
        if (!keep || keep[j]) ++s.histogram[(j & 3) * (d.M + 1) + s.counts[j]];
      }
      for (int64_t n = 0; n <= d.M; ++n) {
        s.histogram[n] += s.histogram[(d.M + 1) + n] + s.histogram[2 * (d.M + 1) + n] + s.histogram[3 * (d.M + 1) + n];
      }
      int64_t above = 0, threshold = d.M;
      for (; threshold > 0 && above + s.histogram[threshold] < d.L; --threshold) above += s.histogram[threshold];
      int64_t at_threshold = d.L - above, t = 0;
      for (int64_t j = first; j < limit && t < d.L; ++j) {
        const int32_t n = s.counts[j];
        const bool ok = !keep || keep[j];
        const bool tie = ok && n == threshold && at_threshold > 0;
        const bool take = (ok && n > threshold) || tie;
        at_threshold -= tie;
        out[t] = static_cast<int32_t>(j);
        t += take;
      }
      for (; t < d.L; ++t) out[t] = -1;
      continue;
    }
    // Bucketed: slot p < L belongs to class p % 4, filled from the keys j with j % 4 == that class. One pass
    // counts each class's keys per level; when every class has keys for all its slots, one more pass marks and
    // emits them in ascending key order (per class: every key above the class's threshold level and the earliest
    // ones at it). Otherwise (early rows, masked keys) the general path below also hands the slots a class
    // cannot fill to the best remaining keys of any class.
    constexpr int64_t kMaxLevels = 4;
    // Each visible key's level, biased by one, as a byte (0: masked or outside [first, limit)), over whole 8-byte
    // words from first rounded down: the histogram and the emission then read eight keys per 64-bit word. A word
    // starts at a multiple of 8, so byte b of every word is class b % 4.
    const int64_t w0 = first & ~int64_t{7}, w1 = (limit + 7) & ~int64_t{7};
    uint8_t* lv = s.key_levels;
    RowBytes(s.counts, keep, first, limit, static_cast<int32_t>(w.bucket_width), lv);
    // ge[c][v]: keys of class c with biased level >= v (v = 1..4), counted per byte lane, flushed before a lane
    // can overflow.
    int64_t ge[4][kMaxLevels + 2] = {};
    {
      uint64_t acc[kMaxLevels + 1] = {};
      int64_t pending = 0;
      auto flush = [&] {
        for (int64_t v = 1; v <= kMaxLevels; ++v) {
          for (int64_t c = 0; c < 4; ++c) ge[c][v] += static_cast<int64_t>(((acc[v] >> (8 * c)) & 0xFF) + ((acc[v] >> (8 * c + 32)) & 0xFF));
          acc[v] = 0;
        }
        pending = 0;
      };
      for (int64_t j = w0; j < w1; j += 8) {
        const uint64_t x = LoadWord(lv + j);
        for (int64_t v = 1; v <= kMaxLevels; ++v) acc[v] += AtLeast(x, Bytes(static_cast<uint64_t>(v))) >> 7;
        if (++pending == 255) flush();
      }
      flush();
    }
    int64_t hist[4][kMaxLevels] = {};
    for (int64_t c = 0; c < 4; ++c) {
      for (int64_t l = 0; l < kMaxLevels; ++l) hist[c][l] = ge[c][l + 1] - ge[c][l + 2];
    }
    int64_t threshold[4], at_threshold[4];
    bool fits = w.max_level < kMaxLevels;
    for (int64_t c = 0; c < 4 && fits; ++c) {
      const int64_t quota = c < d.L ? (d.L - c + 3) / 4 : 0;  // slots p < L with p % 4 == c
      int64_t above = 0, t = w.max_level;
      for (; t >= 0 && above + hist[c][t] < quota; --t) above += hist[c][t];
      if (quota == 0) {
        threshold[c] = kMaxLevels;  // takes nothing
        at_threshold[c] = 0;
      } else if (t < 0) {
        fits = false;  // fewer keys in this class than slots
      } else {
        threshold[c] = t;
        at_threshold[c] = quota - above;
      }
    }
    if (fits) {
      // Per word: the keys above their class's threshold level are taken, the keys at it while the class's tie
      // budget lasts (earliest first); the candidates are visited in ascending key order by their mask bits.
      uint64_t at_thr = 0;  // byte b: class b % 4's biased threshold
      for (int64_t b = 0; b < 8; ++b) at_thr |= static_cast<uint64_t>(threshold[b & 3] + 1) << (8 * b);
      int64_t t = EmitSelected(lv, w0, w1, d.L, at_thr, 4, at_threshold, out);
      for (; t < d.L; ++t) out[t] = -1;
      continue;
    }
    int64_t eligible = 0;
    for (int64_t j = 0; j < limit; ++j) {
      const bool ok = j >= first && (!keep || keep[j]);
      s.levels[j] = ok ? w.level_of_count[s.counts[j]] : int16_t{-1};
      eligible += ok;
    }
    std::fill(s.marked, s.marked + limit, 0);
    const int64_t want = std::min(d.L, eligible);
    {
      int64_t taken = 0;
      for (int64_t c = 0; c < 4; ++c) {
        const int64_t quota = c < d.L ? (d.L - c + 3) / 4 : 0;  // slots p < L with p % 4 == c
        taken += MarkTop(s.levels, limit, c, 4, w.max_level, quota, s.histogram, s.marked);
      }
      // Slots left by classes with too few keys of their own go to the best remaining keys of any class.
      MarkTop(s.levels, limit, 0, 1, w.max_level, want - taken, s.histogram, s.marked);
    }
    int64_t t = 0;
    for (int64_t j = 0; j < limit && t < d.L; ++j) {
      if (s.marked[j]) out[t++] = static_cast<int32_t>(j);
    }
    for (; t < d.L; ++t) out[t] = -1;
  }
}

SPT_CPU_CLONES void TopKRows(const TopKProblem& w, int64_t bh, int64_t i0, int64_t i1, const TopKScratch& s) {
  TopKRowsImpl(w, bh, i0, i1, s);
}

}  // namespace

void PQTopK(const PQTopKDims& d, TopKMode mode, bool causal, int64_t window, const int32_t* codes_q,
            const int32_t* codes_k, const uint8_t* key_keep, int32_t* indices, const Parallel& par) {
  if (window < 0) FailAttribute("PQTopK", "window", "must be >= 0 (0 = off); got " + std::to_string(window));
  constexpr int64_t kRowsPerTask = 32;
  const int64_t blocks = CeilDiv(d.Sq, kRowsPerTask);
  const int64_t bucket_width = std::max<int64_t>(1, d.M / 4);
  const int64_t max_level = mode == TopKMode::kExact ? d.M : 3;
  std::vector<int16_t> level_of_count(static_cast<std::size_t>(d.M + 1));
  for (int64_t n = 0; n <= d.M; ++n) {
    level_of_count[n] = static_cast<int16_t>(mode == TopKMode::kExact ? n : std::min<int64_t>(3, n / bucket_width));
  }
  // Packed match counting when every code fits 4 (or 8) bits and a row's words fit the scratch (M <= 256).
  int32_t lo = 0, hi = 0;
  for (const int32_t* codes : {codes_q, codes_k}) {
    const int64_t n = codes == codes_q ? d.B * d.H * d.Sq * d.M : d.B * d.Hkv * d.Sk * d.M;
    for (int64_t i = 0; i < n; ++i) {
      lo = std::min(lo, codes[i]);
      hi = std::max(hi, codes[i]);
    }
  }
  const int64_t field_bits = lo < 0 || d.M > 128 ? 0 : hi < 16 ? 4 : hi < 256 ? 8 : 0;
  // The key codes packed once per call ([B * Hkv, words, Sk]), shared by the row tasks.
  std::vector<uint32_t> packed_keys;
  if (field_bits > 0) {
    const CodePacking pack(field_bits, d.M);
    packed_keys.resize(static_cast<std::size_t>(d.B * d.Hkv * pack.words * d.Sk));
    par.For(static_cast<std::size_t>(d.B * d.Hkv), [&](std::size_t kvh) {
      uint32_t* out = packed_keys.data() + static_cast<int64_t>(kvh) * pack.words * d.Sk;
      const int32_t* kc = codes_k + static_cast<int64_t>(kvh) * d.Sk * d.M;
      for (int64_t j = 0; j < d.Sk; ++j) pack.Pack(kc + j * d.M, d.M, out + j, d.Sk);
    });
  }
  const TopKProblem w{d, mode, causal, window, codes_q, codes_k, key_keep, indices, level_of_count.data(), max_level, bucket_width, field_bits,
                      packed_keys.data()};
  par.For(static_cast<std::size_t>(d.B * d.H * blocks), [&](std::size_t task) {
    const int64_t bh = static_cast<int64_t>(task) / blocks, block = static_cast<int64_t>(task) % blocks;
    // Per-task scratch, reused by the task's rows.
    std::vector<int32_t> ints(static_cast<std::size_t>((d.M + 1) * d.Sk));
    std::vector<int16_t> levels(static_cast<std::size_t>(d.Sk));
    std::vector<uint8_t> marked(static_cast<std::size_t>(d.Sk));
    std::vector<int64_t> histogram(static_cast<std::size_t>(std::max<int64_t>(4 * (max_level + 1), d.M + 3)));
    std::vector<uint8_t> key_levels(static_cast<std::size_t>(d.Sk + 48));
    const TopKScratch s{ints.data(), ints.data() + d.M * d.Sk, levels.data(), marked.data(), histogram.data(), key_levels.data()};
    TopKRows(w, bh, block * kRowsPerTask, std::min(d.Sq, (block + 1) * kRowsPerTask), s);
  });
}

// ---------------------------------------------------------------------------------------------------

namespace {

// The loss and its gradient, one (row, subspace) at a time, in fp32 with the loops over the C codewords
// innermost and contiguous (the codebook is transposed to Wt[m, k, c] once per call), so that they vectorize;
// sums over rows are kept in double.
struct CodebookT {
  CodebookT(const PQDims& d, const float* codebook) : wt(static_cast<std::size_t>(d.M * d.dc * d.C)) {
    for (int64_t m = 0; m < d.M; ++m)
      for (int64_t c = 0; c < d.C; ++c)
        for (int64_t k = 0; k < d.dc; ++k) wt[(m * d.dc + k) * d.C + c] = codebook[(m * d.C + c) * d.dc + k];
  }
  const float* Subspace(const PQDims& d, int64_t m) const { return wt.data() + m * d.dc * d.C; }
  std::vector<float> wt;  // [M, dc, C]
};

// Distances D_c = |z - W_c|_1, the hard argmin (first lowest), the weights a_c = (1/D~_c) / sum(1/D~) and the
// soft centroid zs = sum_c a_c W_c, for one (row, subspace); wt is the subspace's [dc, C] block. Inlined into
// its (cloned) callers so that it is compiled for their instruction set.
__attribute__((always_inline)) inline int64_t Assign(int64_t C, int64_t dc, const float* z, const float* wt, float* dist, float* alpha,
                              float* soft) {
  for (int64_t c = 0; c < C; ++c) dist[c] = 0.f;
  for (int64_t k = 0; k < dc; ++k) {
    const float zk = z[k];
    const float* row = wt + k * C;
    for (int64_t c = 0; c < C; ++c) dist[c] += std::fabs(zk - row[c]);
  }
  int64_t hard = 0;
  for (int64_t c = 1; c < C; ++c) {
    if (dist[c] < dist[hard]) hard = c;
  }
  const float floor = static_cast<float>(kPQDistanceFloor);
  for (int64_t c = 0; c < C; ++c) alpha[c] = 1.f / std::max(dist[c], floor);
  float sum = 0.f;
  for (int64_t c = 0; c < C; ++c) sum += alpha[c];
  const float inv = 1.f / sum;
  for (int64_t c = 0; c < C; ++c) alpha[c] *= inv;
  for (int64_t k = 0; k < dc; ++k) {
    const float* row = wt + k * C;
    float acc = 0.f;
    for (int64_t c = 0; c < C; ++c) acc += alpha[c] * row[c];
    soft[k] = acc;
  }
  return hard;
}

// Sum over rows [n0, n1) of sum_m sum_k (zs - zh)^2 + (z - zh)^2.
SPT_CPU_CLONES double LossRows(const PQDims& d, const float* z, const CodebookT& w, int64_t n0, int64_t n1,
                               std::vector<float>& scratch) {
  float* dist = scratch.data();
  float* alpha = dist + d.C;
  float* soft = alpha + d.C;
  double sum = 0.0;
  for (int64_t n = n0; n < n1; ++n) {
    float row_sum = 0.f;
    for (int64_t m = 0; m < d.M; ++m) {
      const float* zm = z + n * d.E + m * d.dc;
      const float* wt = w.Subspace(d, m);
      const int64_t h = Assign(d.C, d.dc, zm, wt, dist, alpha, soft);
      for (int64_t k = 0; k < d.dc; ++k) {
        const float zh = wt[k * d.C + h], a = soft[k] - zh, b = zm[k] - zh;
        row_sum += a * a + b * b;
      }
    }
    sum += row_sum;
  }
  return sum;
}

// Adds the rows [n0, n1)'s gradient into dwt ([M, dc, C], the transposed codebook's layout) and writes dz
// (unless null). g = dloss * 2 / P.
SPT_CPU_CLONES void GradRows(const PQDims& d, float g, const float* z, const CodebookT& w, int64_t n0, int64_t n1,
                             float* dz, float* dwt, std::vector<float>& scratch) {
  const int64_t C = d.C, dc = d.dc;
  float* dist = scratch.data();
  float* alpha = dist + C;
  float* dalpha = alpha + C;
  float* dd = dalpha + C;
  float* soft = dd + C;
  float* dsoft = soft + dc;
  float* dzm = dsoft + dc;
  const float floor = static_cast<float>(kPQDistanceFloor);
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t m = 0; m < d.M; ++m) {
      const float* zm = z + n * d.E + m * dc;
      const float* wt = w.Subspace(d, m);
      float* dw = dwt + m * dc * C;
      const int64_t h = Assign(C, dc, zm, wt, dist, alpha, soft);
      for (int64_t k = 0; k < dc; ++k) {
        const float zs = soft[k], zh = wt[k * C + h], zk = zm[k];
        dw[k * C + h] += g * ((zh - zs) + (zh - zk));  // dL/dzh, gathered from W[m, h]
        dsoft[k] = g * (zs - zh);                       // dL/dzs
        dzm[k] = g * (zk - zh);                         // direct term of (z - zh)^2
      }
      // zs = sum_c a_c W_c: dW_c += a_c dzs, da_c = <dzs, W_c>.
      for (int64_t c = 0; c < C; ++c) dalpha[c] = 0.f;
      for (int64_t k = 0; k < dc; ++k) {
        const float ds = dsoft[k];
        const float* row = wt + k * C;
        float* drow = dw + k * C;
        for (int64_t c = 0; c < C; ++c) {
          drow[c] += alpha[c] * ds;
          dalpha[c] += ds * row[c];
        }
      }
      float weighted = 0.f;
      for (int64_t c = 0; c < C; ++c) weighted += alpha[c] * dalpha[c];
      // a = softmax(l), l_c = -log D~_c: dl_c = a_c (da_c - sum a da); dD_c = -dl_c / D_c where D_c > floor.
      for (int64_t c = 0; c < C; ++c) {
        dd[c] = dist[c] > floor ? -alpha[c] * (dalpha[c] - weighted) / dist[c] : 0.f;
      }
      // D_c = sum_k |z_k - W_ck|: dz_k += sum_c dD_c sign(z_k - W_ck), dW_ck -= dD_c sign(z_k - W_ck).
      for (int64_t k = 0; k < dc; ++k) {
        const float zk = zm[k];
        const float* row = wt + k * C;
        float* drow = dw + k * C;
        float acc = 0.f;
        for (int64_t c = 0; c < C; ++c) {
          const float diff = zk - row[c];
          const float s = diff > 0.f ? dd[c] : (diff < 0.f ? -dd[c] : 0.f);
          acc += s;
          drow[c] -= s;
        }
        dzm[k] += acc;
      }
      if (dz) {
        float* out = dz + n * d.E + m * dc;
        for (int64_t k = 0; k < dc; ++k) out[k] = dzm[k];
      }
    }
  }
}

}  // namespace

double PQLoss(const PQDims& d, const float* z, const float* codebook, const Parallel& par) {
  const int64_t chunks = CeilDiv(d.N, kRowsPerChunk);
  if (chunks == 0 || d.M == 0) return 0.0;
  const bool lanes = lanes::LanesApply(d);
  const CodebookT w(d, codebook);
  std::vector<double> partial(static_cast<std::size_t>(chunks), 0.0);
  par.For(static_cast<std::size_t>(chunks), [&](std::size_t chunk) {
    const int64_t n0 = static_cast<int64_t>(chunk) * kRowsPerChunk, n1 = std::min(d.N, n0 + kRowsPerChunk);
    if (lanes) {
      partial[chunk] = lanes::LossRows(d, z, codebook, n0, n1);
      return;
    }
    std::vector<float> scratch(static_cast<std::size_t>(2 * d.C + d.dc));
    partial[chunk] = LossRows(d, z, w, n0, n1, scratch);
  });
  double total = 0.0;
  for (double p : partial) total += p;  // fixed order: deterministic
  return total / static_cast<double>(d.N * d.M * d.dc);
}

void PQLossGrad(const PQDims& d, float dloss, const float* z, const float* codebook, bool detach_inputs, float* dz,
                float* dcodebook, const Parallel& par) {
  const int64_t w_size = d.M * d.C * d.dc;
  const int64_t chunks = CeilDiv(d.N, kRowsPerChunk);
  std::fill(dcodebook, dcodebook + w_size, 0.f);
  if (dz && d.N * d.E > 0) std::fill(dz, dz + d.N * d.E, 0.f);
  if (chunks == 0 || d.M == 0) return;
  // g = dloss * d(mean)/d(square term) * 1/2 folded: each squared error e^2 contributes (2/P) e.
  const float g = static_cast<float>(2.0 * static_cast<double>(dloss) / static_cast<double>(d.N * d.M * d.dc));
  const CodebookT w(d, codebook);
  // Per-chunk partial codebook gradients ([M, dc, C] each), summed in chunk order afterwards in double (no
  // atomics, deterministic).
  std::vector<float> partial(static_cast<std::size_t>(chunks * w_size), 0.f);
  const bool lanes = lanes::LanesApply(d);
  par.For(static_cast<std::size_t>(chunks), [&](std::size_t chunk) {
    const int64_t n0 = static_cast<int64_t>(chunk) * kRowsPerChunk, n1 = std::min(d.N, n0 + kRowsPerChunk);
    float* out = detach_inputs ? nullptr : dz;
    float* dwt = partial.data() + static_cast<int64_t>(chunk) * w_size;
    if (lanes) {
      lanes::GradRows(d, g, z, codebook, n0, n1, out, dwt);
      return;
    }
    std::vector<float> scratch(static_cast<std::size_t>(4 * d.C + 3 * d.dc));
    GradRows(d, g, z, w, n0, n1, out, dwt, scratch);
  });
  // Reduce the chunk partials and transpose back to [M, C, dc]; split over codebook rows so the reduction is
  // parallel yet order-fixed.
  par.For(static_cast<std::size_t>(d.M * d.C), [&](std::size_t row) {
    const int64_t m = static_cast<int64_t>(row) / d.C, c = static_cast<int64_t>(row) % d.C;
    for (int64_t k = 0; k < d.dc; ++k) {
      const int64_t off = (m * d.dc + k) * d.C + c;
      double s = 0.0;
      for (int64_t p = 0; p < chunks; ++p) s += partial[p * w_size + off];
      dcodebook[(m * d.C + c) * d.dc + k] = static_cast<float>(s);
    }
  });
}

}  // namespace spt::cpu
