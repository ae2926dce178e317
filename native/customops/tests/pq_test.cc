// PQEncode, PQTopK and the PQ codebook loss against plain double-precision references.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <numeric>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/pq.h"
#include "tests/attention_test_util.h"
#include "tests/kernel_cases.h"

namespace spt::cpu {
namespace {

using test::RandomNormal;

// ---------------------------------------------------------------- PQEncode

std::vector<int32_t> BruteForceEncode(const PQDims& d, const std::vector<float>& z, const std::vector<float>& w) {
  std::vector<int32_t> codes(static_cast<std::size_t>(d.N * d.M));
  for (int64_t n = 0; n < d.N; ++n) {
    for (int64_t m = 0; m < d.M; ++m) {
      double best = INFINITY;
      for (int64_t c = 0; c < d.C; ++c) {
        double dist = 0;
        for (int64_t k = 0; k < d.dc; ++k) dist += std::fabs(double(z[n * d.E + m * d.dc + k]) - w[(m * d.C + c) * d.dc + k]);
        if (dist < best) {
          best = dist;
          codes[n * d.M + m] = static_cast<int32_t>(c);
        }
      }
    }
  }
  return codes;
}

TEST(PQEncode, MatchesBruteForce) {
  const ThreadParallel par(3);
  std::vector<std::array<int64_t, 4>> cases{{37, 2, 16, 8}, {300, 3, 5, 4}, {1, 1, 1, 3}};
  for (const auto& pc : test::kPQCases) cases.push_back({pc.N, pc.M, pc.C, pc.dc});  // the shared case table
  for (auto [n_rows, m, c, dc] : cases) {
    const auto d = CheckPQInputs("PQEncode", {n_rows, m * dc}, {m, c, dc});
    const auto z = RandomNormal(n_rows * m * dc, 11);
    const auto w = RandomNormal(m * c * dc, 12);
    std::vector<int32_t> codes(n_rows * m);
    PQEncode(d, z.data(), w.data(), codes.data(), par);
    EXPECT_EQ(codes, BruteForceEncode(d, z, w)) << "N=" << n_rows << " M=" << m;
  }
}

TEST(PQEncode, TiesGoToTheLowestCodeword) {
  // Subspace 0: codewords 1 and 3 are equal and nearest. Subspace 1: z sits exactly between codewords 0 and 2.
  const PQDims d = CheckPQInputs("PQEncode", {1, 4}, {2, 4, 2});
  const std::vector<float> w = {5, 5, 1, 1, 9, 9, 1, 1,      // m = 0: c0..c3
                                0, 0, 7, 7, 2, 2, -8, -8};   // m = 1
  const std::vector<float> z = {1.5f, 1.0f, 1.0f, 1.0f};
  std::vector<int32_t> codes(2);
  PQEncode(d, z.data(), w.data(), codes.data(), Serial());
  EXPECT_EQ(codes[0], 1);
  EXPECT_EQ(codes[1], 0);
}

TEST(PQEncode, RejectsHeadDimNotDivisibleByCodewordSize) {
  try {
    CheckPQInputs("PQEncode", {2, 3, 60}, {8, 16, 8});
    FAIL() << "expected an error";
  } catch (const std::invalid_argument& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("PQEncode"), std::string::npos) << msg;
    EXPECT_NE(msg.find("'Z'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("M * dc = 8 * 8 = 64"), std::string::npos) << msg;
  }
  EXPECT_THROW(CheckPQInputs("PQEncode", {4, 64}, {8, 16}), std::invalid_argument);
}

// ---------------------------------------------------------------- PQTopK

std::vector<int32_t> RandomCodes(int64_t n, int64_t m, int32_t range, uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<int32_t> dist(0, range - 1);
  std::vector<int32_t> out(n * m);
  for (auto& x : out) x = dist(gen);
  return out;
}

std::vector<uint8_t> RandomKeep(int64_t b, int64_t sk, uint32_t seed) {
  std::mt19937 gen(seed);
  std::vector<uint8_t> keep(b * sk);
  for (auto& x : keep) x = (gen() % 4) != 0;
  return keep;
}

bool Eligible(const PQTopKDims& d, bool causal, const std::vector<uint8_t>* keep, int64_t b, int64_t i, int64_t j,
              int64_t window = 0) {
  const int64_t pos = i + d.Sk - d.Sq;
  if (causal && j > pos) return false;
  if (window > 0 && (j < pos - window + 1 || (!causal && j > pos + window - 1))) return false;
  return !keep || (*keep)[b * d.Sk + j];
}

int64_t Matches(const PQTopKDims& d, const std::vector<int32_t>& cq, const std::vector<int32_t>& ck, int64_t bh,
                int64_t i, int64_t j) {
  int64_t n = 0;
  for (int64_t m = 0; m < d.M; ++m) n += cq[(bh * d.Sq + i) * d.M + m] == ck[(KvHeadOf(bh, d.H, d.Hkv) * d.Sk + j) * d.M + m];
  return n;
}

// Brute force: rank eligible keys by (count desc, key asc), keep L, emit ascending then -1.
std::vector<int32_t> BruteForceTopK(const PQTopKDims& d, bool causal, const std::vector<int32_t>& cq,
                                    const std::vector<int32_t>& ck, const std::vector<uint8_t>* keep,
                                    int64_t window = 0) {
  std::vector<int32_t> out(d.B * d.H * d.Sq * d.L, -1);
  for (int64_t bh = 0; bh < d.B * d.H; ++bh) {
    for (int64_t i = 0; i < d.Sq; ++i) {
      std::vector<std::pair<int64_t, int64_t>> ranked;  // (-count, j)
      for (int64_t j = 0; j < d.Sk; ++j) {
        if (Eligible(d, causal, keep, bh / d.H, i, j, window)) ranked.push_back({-Matches(d, cq, ck, bh, i, j), j});
      }
      std::sort(ranked.begin(), ranked.end());
      ranked.resize(std::min<std::size_t>(ranked.size(), d.L));
      std::vector<int32_t> keys;
      for (auto& r : ranked) keys.push_back(static_cast<int32_t>(r.second));
      std::sort(keys.begin(), keys.end());
      std::copy(keys.begin(), keys.end(), out.begin() + (bh * d.Sq + i) * d.L);
    }
  }
  return out;
}

TEST(PQTopK, ExactMatchesBruteForceRanking) {
  const ThreadParallel par(2);
  for (const auto& tc : test::kTopKCases) {  // the shared case table (GQA/MQA included)
    PQTopKDims d = CheckPQTopKInputs({tc.B, tc.H, tc.Sq, tc.M}, {tc.B, tc.Hkv, tc.Sk, tc.M}, nullptr);
    d.L = tc.L;
    // Few distinct codes so counts tie often and the tie-break matters.
    const auto cq = RandomCodes(tc.B * tc.H * tc.Sq, tc.M, 3, 21);
    const auto ck = RandomCodes(tc.B * tc.Hkv * tc.Sk, tc.M, 3, 22);
    const auto keep = RandomKeep(tc.B, tc.Sk, 23);
    const std::vector<uint8_t>* mask = tc.masked ? &keep : nullptr;
    std::vector<int32_t> got(d.B * d.H * d.Sq * d.L, 7);
    PQTopK(d, TopKMode::kExact, tc.causal, cq.data(), ck.data(), mask ? keep.data() : nullptr, got.data(), par);
    EXPECT_EQ(got, BruteForceTopK(d, tc.causal, cq, ck, mask))
        << "B=" << tc.B << " H=" << tc.H << " Hkv=" << tc.Hkv << " Sq=" << tc.Sq << " Sk=" << tc.Sk << " L=" << tc.L;
  }
}

// Brute force of the bucketed rule: slot class p % 4 takes the keys j % 4 == p % 4 ranked by (level desc, key
// asc), the slots a class cannot fill go to the best remaining keys of any class, emitted ascending.
std::vector<int32_t> BruteForceBucketed(const PQTopKDims& d, bool causal, const std::vector<int32_t>& cq,
                                        const std::vector<int32_t>& ck, const std::vector<uint8_t>* keep) {
  const int64_t width = std::max<int64_t>(1, d.M / 4);
  std::vector<int32_t> out(d.B * d.H * d.Sq * d.L, -1);
  for (int64_t bh = 0; bh < d.B * d.H; ++bh) {
    for (int64_t i = 0; i < d.Sq; ++i) {
      std::vector<std::pair<int64_t, int64_t>> ranked[4], rest;  // (-level, j)
      for (int64_t j = 0; j < d.Sk; ++j) {
        if (Eligible(d, causal, keep, bh / d.H, i, j)) {
          ranked[j % 4].push_back({-std::min<int64_t>(3, Matches(d, cq, ck, bh, i, j) / width), j});
        }
      }
      std::vector<int32_t> keys;
      for (int64_t c = 0; c < 4; ++c) {
        std::sort(ranked[c].begin(), ranked[c].end());
        const std::size_t quota = c < d.L ? static_cast<std::size_t>((d.L - c + 3) / 4) : 0;
        for (std::size_t r = 0; r < ranked[c].size(); ++r) {
          if (r < quota) keys.push_back(static_cast<int32_t>(ranked[c][r].second));
          else rest.push_back(ranked[c][r]);
        }
      }
      std::sort(rest.begin(), rest.end());
      for (std::size_t r = 0; r < rest.size() && keys.size() < static_cast<std::size_t>(d.L); ++r) {
        keys.push_back(static_cast<int32_t>(rest[r].second));
      }
      std::sort(keys.begin(), keys.end());
      std::copy(keys.begin(), keys.end(), out.begin() + (bh * d.Sq + i) * d.L);
    }
  }
  return out;
}

// The match count reads the codes packed 4 or 8 bits each when they are small, unpacked otherwise: relabeling
// the codes (an injective map, so the match counts stay) into each range, and M values that leave padding
// fields in the last word, must give the brute-force selection in both modes.
TEST(PQTopK, PackedAndUnpackedCodesGiveTheBruteForceSelection) {
  const ThreadParallel par(2);
  for (int64_t m : {3, 8, 9, 13}) {
    for (int32_t scale : {1, 37, 300}) {  // codes < 16 (4-bit fields), < 256 (8-bit fields), larger (unpacked)
      PQTopKDims d = CheckPQTopKInputs({1, 3, 70, m}, {1, 3, 70, m}, nullptr);
      d.L = 9;
      auto cq = RandomCodes(3 * 70, m, 3, 51), ck = RandomCodes(3 * 70, m, 3, 52);
      for (auto* codes : {&cq, &ck}) {
        for (auto& c : *codes) c = c * scale + (scale > 1 ? 5 : 0);
      }
      const auto keep = RandomKeep(1, 70, 53);
      for (bool causal : {true, false}) {
        for (const std::vector<uint8_t>* mask : {static_cast<const std::vector<uint8_t>*>(nullptr), &keep}) {
          std::vector<int32_t> exact(3 * 70 * d.L, 7), bucketed(3 * 70 * d.L, 7);
          PQTopK(d, TopKMode::kExact, causal, cq.data(), ck.data(), mask ? keep.data() : nullptr, exact.data(), par);
          PQTopK(d, TopKMode::kBucketed, causal, cq.data(), ck.data(), mask ? keep.data() : nullptr, bucketed.data(), par);
          EXPECT_EQ(exact, BruteForceTopK(d, causal, cq, ck, mask)) << "M=" << m << " scale=" << scale;
          EXPECT_EQ(bucketed, BruteForceBucketed(d, causal, cq, ck, mask)) << "M=" << m << " scale=" << scale;
        }
      }
    }
  }
}

// Sliding window: keys outside [pos - window + 1, pos] (causal) or [pos - window + 1, pos + window - 1] are never
// selected; the rest is the exact ranking (both modes well formed).
TEST(PQTopK, SlidingWindowMatchesBruteForceRanking) {
  const ThreadParallel par(2);
  for (const auto& tc : test::kTopKCases) {
    PQTopKDims d = CheckPQTopKInputs({tc.B, tc.H, tc.Sq, tc.M}, {tc.B, tc.Hkv, tc.Sk, tc.M}, nullptr);
    d.L = tc.L;
    const auto cq = RandomCodes(tc.B * tc.H * tc.Sq, tc.M, 3, 61);
    const auto ck = RandomCodes(tc.B * tc.Hkv * tc.Sk, tc.M, 3, 62);
    const auto keep = RandomKeep(tc.B, tc.Sk, 63);
    const std::vector<uint8_t>* mask = tc.masked ? &keep : nullptr;
    for (int64_t window : {int64_t{1}, int64_t{3}, tc.Sk}) {
      std::vector<int32_t> got(d.B * d.H * d.Sq * d.L, 7);
      PQTopK(d, TopKMode::kExact, tc.causal, window, cq.data(), ck.data(), mask ? keep.data() : nullptr, got.data(), par);
      EXPECT_EQ(got, BruteForceTopK(d, tc.causal, cq, ck, mask, window))
          << "window=" << window << " B=" << tc.B << " H=" << tc.H << " Sq=" << tc.Sq << " Sk=" << tc.Sk << " L=" << tc.L;
      std::vector<int32_t> bucketed(d.B * d.H * d.Sq * d.L);
      PQTopK(d, TopKMode::kBucketed, tc.causal, window, cq.data(), ck.data(), mask ? keep.data() : nullptr,
             bucketed.data(), par);
      for (int64_t bh = 0; bh < d.B * d.H; ++bh) {
        for (int64_t i = 0; i < d.Sq; ++i) {
          for (int64_t t = 0; t < d.L; ++t) {
            const int32_t j = bucketed[(bh * d.Sq + i) * d.L + t];
            if (j >= 0) {
              EXPECT_TRUE(Eligible(d, tc.causal, mask, bh / d.H, i, j, window)) << "window=" << window;
            }
          }
        }
      }
    }
  }
}

// Grouped key heads: codes_k [B, Hkv, Sk, M]; query head h matches against key head h / (H / Hkv), the same
// result as repeating the key codes per query head (both modes).
TEST(PQTopK, GroupedKeyHeadsEqualRepeatedKeyHeads) {
  for (const auto& [h, hkv] : std::vector<std::pair<int64_t, int64_t>>{{4, 2}, {3, 1}, {6, 3}}) {
    const int64_t B = 2, Sq = 13, Sk = 17, M = 8, L = 5;
    PQTopKDims g = CheckPQTopKInputs({B, h, Sq, M}, {B, hkv, Sk, M}, nullptr);
    PQTopKDims r = CheckPQTopKInputs({B, h, Sq, M}, {B, h, Sk, M}, nullptr);
    EXPECT_EQ(g.Hkv, hkv);
    g.L = r.L = L;
    const auto cq = RandomCodes(B * h * Sq, M, 3, 71), ck = RandomCodes(B * hkv * Sk, M, 3, 72);
    std::vector<int32_t> repeated(B * h * Sk * M);
    for (int64_t bh = 0; bh < B * h; ++bh) {
      const int64_t src = KvHeadOf(bh, h, hkv);
      std::copy(ck.begin() + src * Sk * M, ck.begin() + (src + 1) * Sk * M, repeated.begin() + bh * Sk * M);
    }
    const auto keep = RandomKeep(B, Sk, 73);
    for (TopKMode mode : {TopKMode::kExact, TopKMode::kBucketed}) {
      std::vector<int32_t> a(B * h * Sq * L), b(a.size());
      PQTopK(g, mode, true, cq.data(), ck.data(), keep.data(), a.data(), ThreadParallel(2));
      PQTopK(r, mode, true, cq.data(), repeated.data(), keep.data(), b.data(), Serial());
      EXPECT_EQ(a, b) << "H=" << h << " Hkv=" << hkv;
      if (mode == TopKMode::kExact) {
        EXPECT_EQ(a, BruteForceTopK(g, true, cq, ck, &keep)) << "H=" << h << " Hkv=" << hkv;
      }
    }
  }
  try {
    CheckPQTopKInputs({1, 4, 3, 8}, {1, 3, 3, 8}, nullptr);
    ADD_FAILURE() << "4 query heads over 3 key heads must be rejected";
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(),
                 "PQTopK: input 'codes_k' has 3 heads; the 4 query heads must be a whole multiple of it (H % Hkv == 0)");
  }
}

// Rows hold distinct eligible keys, ascending, then -1, and exactly min(L, #eligible) keys.
void ExpectWellFormed(const PQTopKDims& d, bool causal, const std::vector<int32_t>& idx,
                      const std::vector<uint8_t>* keep) {
  for (int64_t bh = 0; bh < d.B * d.H; ++bh) {
    for (int64_t i = 0; i < d.Sq; ++i) {
      int64_t eligible = 0;
      for (int64_t j = 0; j < d.Sk; ++j) eligible += Eligible(d, causal, keep, bh / d.H, i, j);
      const int32_t* row = idx.data() + (bh * d.Sq + i) * d.L;
      int64_t count = 0;
      for (int64_t t = 0; t < d.L; ++t) {
        if (row[t] < 0) {
          EXPECT_EQ(row[t], -1);
          continue;
        }
        ASSERT_EQ(count, t) << "sentinels must come last";
        ++count;
        EXPECT_TRUE(Eligible(d, causal, keep, bh / d.H, i, row[t])) << "row " << i << " key " << row[t];
        if (t > 0) {
          EXPECT_LT(row[t - 1], row[t]) << "ascending and unique";
        }
      }
      EXPECT_EQ(count, std::min(d.L, eligible)) << "row " << i;
    }
  }
}

TEST(PQTopK, ShortRowsArePaddedWithSentinelsNeverDuplicates) {
  PQTopKDims d = CheckPQTopKInputs({1, 2, 12, 8}, {1, 2, 12, 8}, nullptr);
  d.L = 6;
  const auto cq = RandomCodes(24, 8, 4, 31), ck = RandomCodes(24, 8, 4, 32);
  for (TopKMode mode : {TopKMode::kExact, TopKMode::kBucketed}) {
    std::vector<int32_t> idx(2 * 12 * 6);
    PQTopK(d, mode, true, cq.data(), ck.data(), nullptr, idx.data(), Serial());
    ExpectWellFormed(d, true, idx, nullptr);
    // Row 0 sees only key 0; row 2 sees keys 0..2.
    EXPECT_EQ(std::vector<int32_t>(idx.begin(), idx.begin() + 6), (std::vector<int32_t>{0, -1, -1, -1, -1, -1}));
    EXPECT_EQ(std::vector<int32_t>(idx.begin() + 12, idx.begin() + 18), (std::vector<int32_t>{0, 1, 2, -1, -1, -1}));
  }
}

TEST(PQTopK, BucketedIsWellFormedWithMaskAndUnevenL) {
  for (int64_t l : {1, 3, 5, 7, 10}) {
    PQTopKDims d = CheckPQTopKInputs({2, 2, 21, 8}, {2, 2, 25, 8}, nullptr);
    d.L = l;
    const auto cq = RandomCodes(2 * 2 * 21, 8, 3, 41), ck = RandomCodes(2 * 2 * 25, 8, 3, 42);
    const auto keep = RandomKeep(2, 25, 43);
    for (bool causal : {true, false}) {
      std::vector<int32_t> idx(2 * 2 * 21 * l);
      PQTopK(d, TopKMode::kBucketed, causal, cq.data(), ck.data(), keep.data(), idx.data(), ThreadParallel(2));
      ExpectWellFormed(d, causal, idx, &keep);
    }
  }
}

// Brute force of the bucketed rule: level = min(3, matches / max(1, M / 4)); slot p < L belongs to class p % 4, and
// class c takes its quota of keys j % 4 == c by (level desc, key asc); slots a class cannot fill go to the best
// remaining keys of any class by the same order. Emitted ascending, then -1.
std::vector<int32_t> BruteForceBucketed(const PQTopKDims& d, bool causal, const std::vector<int32_t>& cq,
                                        const std::vector<int32_t>& ck, const std::vector<uint8_t>* keep,
                                        int64_t window) {
  const int64_t width = std::max<int64_t>(1, d.M / 4);
  std::vector<int32_t> out(d.B * d.H * d.Sq * d.L, -1);
  for (int64_t bh = 0; bh < d.B * d.H; ++bh) {
    for (int64_t i = 0; i < d.Sq; ++i) {
      std::vector<std::pair<int64_t, int64_t>> ranked[4];  // per class: (-level, j)
      for (int64_t j = 0; j < d.Sk; ++j) {
        if (!Eligible(d, causal, keep, bh / d.H, i, j, window)) continue;
        ranked[j % 4].push_back({-std::min<int64_t>(3, Matches(d, cq, ck, bh, i, j) / width), j});
      }
      std::vector<std::pair<int64_t, int64_t>> rest;
      std::vector<int32_t> keys;
      int64_t eligible = 0;
      for (int64_t c = 0; c < 4; ++c) {
        std::sort(ranked[c].begin(), ranked[c].end());
        eligible += static_cast<int64_t>(ranked[c].size());
        const std::size_t quota = c < d.L ? static_cast<std::size_t>((d.L - c + 3) / 4) : 0;
        for (std::size_t r = 0; r < ranked[c].size(); ++r) {
          if (r < quota) keys.push_back(static_cast<int32_t>(ranked[c][r].second));
          else rest.push_back(ranked[c][r]);
        }
      }
      std::sort(rest.begin(), rest.end());
      for (const auto& r : rest) {
        if (static_cast<int64_t>(keys.size()) >= std::min(d.L, eligible)) break;
        keys.push_back(static_cast<int32_t>(r.second));
      }
      std::sort(keys.begin(), keys.end());
      std::copy(keys.begin(), keys.end(), out.begin() + (bh * d.Sq + i) * d.L);
    }
  }
  return out;
}

// Bucketed selection against the brute force: level widths 1, 2 and 4 (M = 6, 8, 16), packed and unpacked codes,
// causal, windowed and masked rows, Sq != Sk, and rows whose start is not a multiple of 8.
TEST(PQTopK, BucketedMatchesBruteForceRule) {
  struct Case {
    int64_t m, sq, sk, l, window;
    int32_t range;
  };
  for (const Case c : {Case{8, 37, 37, 9, 0, 3}, Case{8, 20, 45, 12, 0, 2}, Case{6, 30, 30, 7, 11, 2},
                       Case{16, 40, 40, 10, 0, 2}, Case{8, 64, 64, 16, 0, 300}, Case{8, 50, 50, 5, 19, 3}}) {
    PQTopKDims d = CheckPQTopKInputs({2, 3, c.sq, c.m}, {2, 3, c.sk, c.m}, nullptr);
    d.L = c.l;
    const auto cq = RandomCodes(2 * 3 * c.sq, c.m, c.range, 51), ck = RandomCodes(2 * 3 * c.sk, c.m, c.range, 52);
    const auto keep = RandomKeep(2, c.sk, 53);
    for (bool causal : {true, false}) {
      for (const std::vector<uint8_t>* k : {static_cast<const std::vector<uint8_t>*>(nullptr), &keep}) {
        std::vector<int32_t> idx(2 * 3 * c.sq * c.l);
        PQTopK(d, TopKMode::kBucketed, causal, c.window, cq.data(), ck.data(), k ? k->data() : nullptr, idx.data(),
               ThreadParallel(2));
        EXPECT_EQ(idx, BruteForceBucketed(d, causal, cq, ck, k, c.window))
            << "M " << c.m << " Sq " << c.sq << " Sk " << c.sk << " L " << c.l << " window " << c.window << " causal " << causal
            << " mask " << (k != nullptr);
      }
    }
  }
}

// A residue class with fewer eligible keys than its quota keeps all of them, level 0 included; only the slots it
// cannot fill go to the other classes (a regression: the class once kept just one of its two level-0 keys).
TEST(PQTopK, BucketedClassShortOfItsQuotaKeepsAllItsKeys) {
  PQTopKDims d = CheckPQTopKInputs({1, 1, 1, 8}, {1, 1, 40, 8}, nullptr);
  d.L = 16;  // quota 4 per class
  const std::vector<int32_t> cq(8, 0);
  std::vector<int32_t> ck(40 * 8, 0);  // every key matches in all 8 subspaces: bucket 3
  for (int j : {0, 8}) std::fill(ck.begin() + j * 8, ck.begin() + (j + 1) * 8, 1);  // no match: bucket 0
  std::vector<uint8_t> keep(40, 1);
  for (int j = 12; j < 40; j += 4) keep[j] = 0;  // class 0 keeps keys 0, 4 and 8 only
  std::vector<int32_t> idx(16);
  PQTopK(d, TopKMode::kBucketed, false, cq.data(), ck.data(), keep.data(), idx.data(), Serial());
  EXPECT_EQ(idx, (std::vector<int32_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 17}));
}

// Realistic codes: tokens drawn around a few cluster centres, K = Q + small noise, codebook seeded from data
// sub-vectors (as a k-means initialisation would), so match counts carry information.
TEST(PQTopK, BucketedRecallAgainstExactIsAtLeast80Percent) {
  const int64_t B = 1, H = 2, S = 256, E = 64, dc = 8, M = E / dc, C = 16, L = S / 8, clusters = 6;
  std::mt19937 gen(51);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> centres(clusters * E);
  for (auto& x : centres) x = 2.f * normal(gen);
  std::vector<float> q(B * H * S * E), k(B * H * S * E);
  for (int64_t r = 0; r < B * H * S; ++r) {
    const int64_t c = gen() % clusters;
    for (int64_t e = 0; e < E; ++e) {
      q[r * E + e] = centres[c * E + e] + 0.5f * normal(gen);
      k[r * E + e] = q[r * E + e] + 0.1f * normal(gen);
    }
  }
  std::vector<float> w(M * C * dc);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t c = 0; c < C; ++c) {
      const int64_t row = gen() % (B * H * S);
      for (int64_t x = 0; x < dc; ++x) w[(m * C + c) * dc + x] = q[row * E + m * dc + x];
    }
  }
  const auto pd = CheckPQInputs("PQEncode", {B, H, S, E}, {M, C, dc});
  std::vector<int32_t> cq(B * H * S * M), ck(B * H * S * M);
  PQEncode(pd, q.data(), w.data(), cq.data(), Serial());
  PQEncode(pd, k.data(), w.data(), ck.data(), Serial());

  PQTopKDims d = CheckPQTopKInputs({B, H, S, M}, {B, H, S, M}, nullptr);
  d.L = L;
  std::vector<int32_t> exact(B * H * S * L), bucketed(B * H * S * L);
  PQTopK(d, TopKMode::kExact, true, cq.data(), ck.data(), nullptr, exact.data(), Serial());
  PQTopK(d, TopKMode::kBucketed, true, cq.data(), ck.data(), nullptr, bucketed.data(), Serial());
  int64_t hits = 0, total = 0;
  for (int64_t row = 0; row < B * H * S; ++row) {
    std::set<int32_t> want(exact.begin() + row * L, exact.begin() + (row + 1) * L);
    want.erase(-1);
    for (int64_t t = 0; t < L; ++t) hits += want.count(bucketed[row * L + t]);
    total += static_cast<int64_t>(want.size());
  }
  const double recall = static_cast<double>(hits) / static_cast<double>(total);
  EXPECT_GE(recall, 0.8) << "set recall of bucketed against exact";
  RecordProperty("bucketed_recall", std::to_string(recall));
}

TEST(PQTopK, ResolvesAndValidatesAttributes) {
  EXPECT_EQ(ResolveTopK(0, 0.125f, 512), 64);
  EXPECT_EQ(ResolveTopK(0, 0.125f, 9), 2);  // ceil(1.125)
  EXPECT_EQ(ResolveTopK(0, 0.01f, 3), 1);
  EXPECT_EQ(ResolveTopK(7, 0.5f, 4), 4);  // clamped to Sk
  EXPECT_EQ(ResolveTopK(3, 0.5f, 100), 3);
  EXPECT_EQ(ResolveTopK(0, 0.125f, 20, 16), 16);   // the floor beats ceil(2.5)
  EXPECT_EQ(ResolveTopK(0, 0.125f, 12, 16), 12);   // ... and is clamped to Sk
  EXPECT_EQ(ResolveTopK(0, 0.125f, 512, 16), 64);  // long sequences keep S/8
  EXPECT_EQ(ResolveTopK(5, 0.125f, 512, 16), 5);   // an explicit top_k is not floored
  EXPECT_THROW(ResolveTopK(0, 0.125f, 8, -1), std::invalid_argument);
  EXPECT_THROW(ResolveTopK(-1, 0.125f, 8), std::invalid_argument);
  EXPECT_THROW(ResolveTopK(0, 0.f, 8), std::invalid_argument);
  EXPECT_THROW(ResolveTopK(0, 1.5f, 8), std::invalid_argument);
  EXPECT_THROW(ResolveTopK(0, NAN, 8), std::invalid_argument);
  EXPECT_EQ(ParseTopKMode("exact"), TopKMode::kExact);
  EXPECT_EQ(ParseTopKMode("bucketed"), TopKMode::kBucketed);
  try {
    ParseTopKMode("bucketed_ref");
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("PQTopK: attribute 'mode'"), std::string::npos) << e.what();
  }
}

TEST(PQTopK, RejectsMismatchedShapes) {
  EXPECT_THROW(CheckPQTopKInputs({1, 2, 8, 8}, {1, 2, 8, 4}, nullptr), std::invalid_argument);
  EXPECT_THROW(CheckPQTopKInputs({1, 2, 8, 8}, {1, 3, 8, 8}, nullptr), std::invalid_argument);
  EXPECT_THROW(CheckPQTopKInputs({1, 2, 8}, {1, 2, 8, 8}, nullptr), std::invalid_argument);
  const Shape bad_mask{1, 9};
  try {
    CheckPQTopKInputs({1, 2, 8, 8}, {1, 2, 10, 8}, &bad_mask);
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("'key_padding_mask' must have shape [B, Sk] = [1, 10]"), std::string::npos)
        << e.what();
  }
}

// ---------------------------------------------------------------- PQ loss

// Double-precision reference of spec 2.3, written independently of the kernel.
double ReferenceLoss(const PQDims& d, const std::vector<double>& z, const std::vector<double>& w) {
  double hard_sum = 0, commit_sum = 0;
  for (int64_t n = 0; n < d.N; ++n) {
    for (int64_t m = 0; m < d.M; ++m) {
      std::vector<double> dist(d.C), alpha(d.C);
      int64_t h = 0;
      for (int64_t c = 0; c < d.C; ++c) {
        for (int64_t k = 0; k < d.dc; ++k) dist[c] += std::fabs(z[n * d.E + m * d.dc + k] - w[(m * d.C + c) * d.dc + k]);
        if (dist[c] < dist[h]) h = c;
      }
      // softmax(-log max(D, 1e-5))
      double denom = 0;
      for (int64_t c = 0; c < d.C; ++c) denom += std::exp(-std::log(std::max(dist[c], 1e-5)));
      for (int64_t c = 0; c < d.C; ++c) alpha[c] = std::exp(-std::log(std::max(dist[c], 1e-5))) / denom;
      for (int64_t k = 0; k < d.dc; ++k) {
        double soft = 0;
        for (int64_t c = 0; c < d.C; ++c) soft += alpha[c] * w[(m * d.C + c) * d.dc + k];
        const double hard = w[(m * d.C + h) * d.dc + k];
        hard_sum += (soft - hard) * (soft - hard);
        commit_sum += (z[n * d.E + m * d.dc + k] - hard) * (z[n * d.E + m * d.dc + k] - hard);
      }
    }
  }
  const double count = static_cast<double>(d.N * d.M * d.dc);
  return hard_sum / count + commit_sum / count;
}

TEST(PQLoss, MatchesDoubleReference) {
  std::vector<std::array<int64_t, 4>> cases{{5, 2, 4, 3}, {300, 2, 16, 8}, {1, 1, 1, 2}};
  for (const auto& pc : test::kPQCases) cases.push_back({pc.N, pc.M, pc.C, pc.dc});  // the shared case table
  for (auto [rows, m, c, dc] : cases) {
    const auto d = CheckPQInputs("PQLoss", {rows, m * dc}, {m, c, dc});
    const auto z = RandomNormal(rows * m * dc, 61), w = RandomNormal(m * c * dc, 62);
    const double got = PQLoss(d, z.data(), w.data(), ThreadParallel(2));
    const double want = ReferenceLoss(d, test::ToDouble(z), test::ToDouble(w));
    EXPECT_NEAR(got, want, 1e-6 * std::fabs(want)) << "rows=" << rows;
  }
}

// One body for both code paths: a general codebook (per-row loops) and the default 16 x 8 codebook (eight rows per
// vector, pq_lanes.cc), the latter with a row count that leaves a partial group of lanes.
void CheckLossGradAgainstFiniteDifferences(const Shape& lead, int64_t m, int64_t c, int64_t dc) {
  Shape zshape = lead;
  zshape.push_back(m * dc);
  const int64_t e = m * dc;
  const auto d = CheckPQInputs("PQLossGrad", zshape, {m, c, dc});
  const auto zf = RandomNormal(d.N * e, 71), wf = RandomNormal(m * c * dc, 72);
  const float dloss = 0.7f;  // != 1: checks the upstream scaling
  std::vector<float> dz(d.N * e), dw(m * c * dc);
  PQLossGrad(d, dloss, zf.data(), wf.data(), false, dz.data(), dw.data(), ThreadParallel(3));

  auto z = test::ToDouble(zf), w = test::ToDouble(wf);
  auto loss = [&] { return dloss * ReferenceLoss(d, z, w); };
  EXPECT_NEAR(PQLoss(d, zf.data(), wf.data(), Serial()), ReferenceLoss(d, z, w), 1e-5);
  const auto fd_z = test::FiniteDifference(z, loss);
  const auto fd_w = test::FiniteDifference(w, loss);
  EXPECT_LT(test::RelL2Error(dz, fd_z), 1e-3);
  EXPECT_LT(test::RelL2Error(dw, fd_w), 1e-3);

  // detach_inputs: same codebook gradient, no gradient into Z.
  std::vector<float> dz2(d.N * e, 5.f), dw2(m * c * dc);
  PQLossGrad(d, dloss, zf.data(), wf.data(), true, dz2.data(), dw2.data(), Serial());
  EXPECT_EQ(dz2, std::vector<float>(d.N * e, 0.f));
  EXPECT_LT(test::RelL2Error(dw2, fd_w), 1e-3);
}

TEST(PQLossGrad, MatchesFiniteDifferences) {
  // Leading dims [2, 3, 4] are flattened.
  CheckLossGradAgainstFiniteDifferences({2, 3, 4}, 2, 5, 3);
}

TEST(PQLossGrad, DefaultCodebookMatchesFiniteDifferences) {
  // 13 rows: one full group of eight and a partial one of five.
  CheckLossGradAgainstFiniteDifferences({13}, 2, 16, 8);
}

TEST(PQLossGrad, IsDeterministicAcrossWorkerCounts) {
  const auto d = CheckPQInputs("PQLossGrad", {700, 16}, {2, 16, 8});
  const auto z = RandomNormal(700 * 16, 81), w = RandomNormal(2 * 16 * 8, 82);
  std::vector<float> dz1(700 * 16), dw1(256), dz2(700 * 16), dw2(256);
  PQLossGrad(d, 1.f, z.data(), w.data(), false, dz1.data(), dw1.data(), Serial());
  PQLossGrad(d, 1.f, z.data(), w.data(), false, dz2.data(), dw2.data(), ThreadParallel(4));
  EXPECT_EQ(dz1, dz2);
  EXPECT_EQ(dw1, dw2);
  EXPECT_EQ(PQLoss(d, z.data(), w.data(), Serial()), PQLoss(d, z.data(), w.data(), ThreadParallel(4)));
}

}  // namespace
}  // namespace spt::cpu
