#include "cpu/routed_ffn.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu/blas.h"
#include "cpu/ffn_math.h"

namespace spt::cpu {

bool ParseFfnActivation(const std::string& name, FfnActivation* out) {
  if (name == "relu") *out = FfnActivation::kRelu;
  else if (name == "gelu") *out = FfnActivation::kGelu;
  else if (name == "gelu_tanh") *out = FfnActivation::kGeluTanh;
  else if (name == "silu") *out = FfnActivation::kSilu;
  else if (name == "swiglu") *out = FfnActivation::kSwiGlu;
  else if (name == "geglu") *out = FfnActivation::kGeGlu;
  else if (name == "geglu_tanh") *out = FfnActivation::kGeGluTanh;
  else if (name == "reglu") *out = FfnActivation::kReGlu;
  else if (name == "relu2") *out = FfnActivation::kRelu2;
  else return false;
  return true;
}

bool ParseFfnGate(const std::string& name, FfnGate* out) {
  if (name == "2sigmoid_frozen_only") *out = FfnGate::kFrozenOnly;
  else if (name == "2sigmoid_all") *out = FfnGate::kAll;
  else if (name == "none") *out = FfnGate::kNone;
  else return false;
  return true;
}

std::string ValidateRoutedFfnConfig(const RoutedFfnConfig& cfg) {
  if (cfg.tokens < 0 || cfg.d_model <= 0 || cfg.d_ff <= 0) return "dimensions must be positive";
  if (cfg.n_blocks < 1) return "n_blocks must be >= 1, got " + std::to_string(cfg.n_blocks);
  if (cfg.d_ff % cfg.n_blocks != 0) {
    return "d_ff (" + std::to_string(cfg.d_ff) + ") must be divisible by n_blocks (" + std::to_string(cfg.n_blocks) + ")";
  }
  if (cfg.top_k < 1 || cfg.top_k > cfg.n_blocks) {
    return "top_k must be in [1, n_blocks = " + std::to_string(cfg.n_blocks) + "], got " + std::to_string(cfg.top_k);
  }
  if (cfg.rank1 < 0 || cfg.rank2 < 0 || cfg.rank3 < 0) return "LoRA ranks must be >= 0";
  if (cfg.rank3 > 0 && !cfg.Gated()) return "the up-projection LoRA pair (A3, B3) needs a gated activation (swiglu, geglu, geglu_tanh, reglu)";
  if (cfg.chunk_rows < 0) return "chunk_rows must be >= 0";
  return {};
}

namespace {

constexpr int64_t kTokenChunk = 64;
using ffn::Activate;
using ffn::ActivateGrad;
using ffn::Gates;
using ffn::GatesFor;
using ffn::Sigmoid;

// Lanes of the fixed-order partial sums of RowDot and RowDotAct: lane l sums the
// elements c ≡ l (mod kLanes), then the lanes are added 0, 1, ..., kLanes-1. The order depends only
// on the row width, so results do not depend on the number of threads; the loops vectorize.
constexpr int64_t kLanes = 8;

inline float SumLanes(const float* acc) {
  float s = 0.0f;
  for (int64_t l = 0; l < kLanes; ++l) s += acc[l];
  return s;
}

// Σ_c a[c]·b[c] in the lane order above.
inline float RowDot(const float* a, const float* b, int64_t n) {
  float acc[kLanes] = {};
  const int64_t body = n - n % kLanes;
  for (int64_t c = 0; c < body; c += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) acc[l] += a[c + l] * b[c + l];
  for (int64_t c = body; c < n; ++c) acc[c - body] += a[c] * b[c];
  return SumLanes(acc);
}

inline void ScaleRow(float* v, int64_t n, float g) {
  for (int64_t c = 0; c < n; ++c) v[c] *= g;
}

// The elementwise passes below run row by row (a row of a block is at most a few KiB, so the
// short passes over it stay in L1) and are instantiated per activation so that the compiler sees
// a fixed function and can vectorize (ReLU fully; the others at least lose the per-element switch).
template <FfnActivation A>
struct Act {
  static float F(float a) { return Activate(A, a); }
  static float D(float a) { return ActivateGrad(A, a); }
};

// Calls fn(Act<A>{}) with the config's activation (a gated one with its gate function: SwiGLU Act<kSilu>, ...).
template <typename Fn>
void WithActivation(FfnActivation act, Fn&& fn) {
  switch (act) {
    case FfnActivation::kRelu:
    case FfnActivation::kReGlu: fn(Act<FfnActivation::kRelu>{}); break;
    case FfnActivation::kGelu:
    case FfnActivation::kGeGlu: fn(Act<FfnActivation::kGelu>{}); break;
    case FfnActivation::kGeluTanh:
    case FfnActivation::kGeGluTanh: fn(Act<FfnActivation::kGeluTanh>{}); break;
    case FfnActivation::kRelu2: fn(Act<FfnActivation::kRelu2>{}); break;
    case FfnActivation::kSilu:
    case FfnActivation::kSwiGlu: fn(Act<FfnActivation::kSilu>{}); break;
  }
}

// Σ_c a[c]·act(b[c]) in RowDot's lane order (the same value as RowDot(a, h) with h = act(b)).
template <typename Op>
inline float RowDotAct(const float* a, const float* b, int64_t n) {
  float acc[kLanes] = {};
  const int64_t body = n - n % kLanes;
  for (int64_t c = 0; c < body; c += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) acc[l] += a[c + l] * Op::F(b[c + l]);
  for (int64_t c = body; c < n; ++c) acc[c - body] += a[c] * Op::F(b[c]);
  return SumLanes(acc);
}

// Carves 64-byte aligned regions out of a workspace; with a null base it only measures.
class Arena {
 public:
  explicit Arena(void* base) : base_(static_cast<char*>(base)) {}
  template <typename T>
  T* Take(int64_t count) {
    const std::size_t bytes = static_cast<std::size_t>(std::max<int64_t>(count, 0)) * sizeof(T);
    char* p = base_ ? base_ + used_ : nullptr;
    used_ += (bytes + 63) / 64 * 64;
    return reinterpret_cast<T*>(p);
  }
  std::size_t Used() const { return used_; }

 private:
  char* base_;
  std::size_t used_ = 0;
};

struct Chunk {
  int64_t block, begin, end;
};

// Fixed task grid over the grouped rows: per block, runs of at most chunk_rows rows (0 = whole block).
// The grid depends only on the routing, never on the number of threads.
std::vector<Chunk> MakeChunks(const int32_t* offsets, int64_t n_blocks, int64_t chunk_rows) {
  std::vector<Chunk> chunks;
  for (int64_t b = 0; b < n_blocks; ++b) {
    const int64_t begin = offsets[b], end = offsets[b + 1];
    if (end == begin) continue;
    const int64_t step = chunk_rows > 0 ? chunk_rows : end - begin;
    for (int64_t r = begin; r < end; r += step) chunks.push_back({b, r, std::min(end, r + step)});
  }
  return chunks;
}

inline int64_t TokenChunks(int64_t tokens) { return (tokens + kTokenChunk - 1) / kTokenChunk; }

// Workspace layout of the forward; shared by the size query and the run.
struct ForwardBuffers {
  float* probs;
  int32_t* selection;
  float* pre;
  int32_t* offsets;
  int32_t* perm;
  int32_t* pos;
  float* xa1;   // [T, r1]  x·A1
  float* xa3;   // [T, r3]
  float* rows;  // [R, d]   gathered x, then each row's block output
  float* hid;   // [R, PreWidth]  l (and l3), then h in the first bs columns
  float* xa1g;  // [R, r1]  gathered x·A1
  float* xa3g;  // [R, r3]
  float* ha2;   // [R, r2]  h·A2_i
  std::size_t bytes;
};

ForwardBuffers LayoutForward(const RoutedFfnConfig& cfg, const RoutedFfnState& state, void* workspace) {
  const int64_t T = cfg.tokens, R = cfg.Rows();
  Arena arena(workspace);
  ForwardBuffers b{};
  b.probs = state.probs ? state.probs : arena.Take<float>(T * cfg.n_blocks);
  b.selection = state.selection ? state.selection : arena.Take<int32_t>(R);
  b.pre = state.pre ? state.pre : arena.Take<float>(R * cfg.PreWidth());
  b.offsets = arena.Take<int32_t>(cfg.n_blocks + 1);
  b.perm = arena.Take<int32_t>(R);
  b.pos = arena.Take<int32_t>(R);
  b.xa1 = arena.Take<float>(T * cfg.rank1);
  b.xa3 = arena.Take<float>(T * cfg.rank3);
  b.rows = arena.Take<float>(R * cfg.d_model);
  b.hid = arena.Take<float>(R * cfg.PreWidth());
  b.xa1g = arena.Take<float>(R * cfg.rank1);
  b.xa3g = arena.Take<float>(R * cfg.rank3);
  b.ha2 = arena.Take<float>(R * cfg.rank2);
  b.bytes = arena.Used();
  return b;
}

// Top-k of one probability row: higher p first, ties to the lower block id.
void SelectTopK(const float* p, int64_t n_blocks, int64_t top_k, int32_t* sel) {
  for (int64_t s = 0; s < top_k; ++s) {
    int64_t best = -1;
    for (int64_t i = 0; i < n_blocks; ++i) {
      bool taken = false;
      for (int64_t q = 0; q < s; ++q) taken = taken || sel[q] == i;
      if (taken) continue;
      if (best < 0 || p[i] > p[best]) best = i;
    }
    sel[s] = static_cast<int32_t>(best);
  }
}

}  // namespace

void RoutedFfnGroup(const int32_t* selection, int64_t tokens, int64_t top_k, int64_t n_blocks, int32_t* offsets,
                    int32_t* perm, int32_t* pos) {
  std::fill(offsets, offsets + n_blocks + 1, 0);
  const int64_t pairs = tokens * top_k;
  for (int64_t q = 0; q < pairs; ++q) ++offsets[selection[q] + 1];
  for (int64_t b = 0; b < n_blocks; ++b) offsets[b + 1] += offsets[b];
  // Stable fill: pairs in (token, slot) order, each appended to its block's segment.
  std::vector<int32_t> cursor(offsets, offsets + n_blocks);
  for (int64_t q = 0; q < pairs; ++q) {
    const int32_t j = cursor[selection[q]]++;
    perm[j] = static_cast<int32_t>(q);
    pos[q] = j;
  }
}

std::string ValidateSelection(const int32_t* selection, int64_t tokens, int64_t top_k, int64_t n_blocks) {
  for (int64_t t = 0; t < tokens; ++t) {
    const int32_t* row = selection + t * top_k;
    for (int64_t s = 0; s < top_k; ++s) {
      if (row[s] < 0 || row[s] >= n_blocks) {
        return "block id " + std::to_string(row[s]) + " at [" + std::to_string(t) + ", " + std::to_string(s) +
               "] is outside [0, " + std::to_string(n_blocks) + ")";
      }
      for (int64_t q = 0; q < s; ++q) {
        if (row[q] == row[s]) {
          return "token " + std::to_string(t) + " selects block " + std::to_string(row[s]) + " twice";
        }
      }
    }
  }
  return {};
}

std::size_t RoutedFfnForwardWorkspaceBytes(const RoutedFfnConfig& cfg, const RoutedFfnState& state) {
  return LayoutForward(cfg, state, nullptr).bytes;
}

void RoutedFfnForward(const RoutedFfnConfig& cfg, const RoutedFfnWeights& w, const float* x, float* y,
                      RoutedFfnState state, void* workspace, const Parallel& parallel) {
  const int64_t T = cfg.tokens, d = cfg.d_model, F = cfg.d_ff, nb = cfg.n_blocks, k = cfg.top_k;
  const int64_t bs = cfg.BlockSize(), pw = cfg.PreWidth(), r1 = cfg.rank1, r2 = cfg.rank2, r3 = cfg.rank3;
  const bool gated = cfg.Gated();
  const ForwardBuffers buf = LayoutForward(cfg, state, workspace);
  if (T == 0) return;

  // Router p = sigmoid(x·Wr + br), top-k, and the token-level LoRA products x·A1, x·A3.
  parallel.For(static_cast<std::size_t>(TokenChunks(T)), [&](std::size_t c) {
    const int64_t t0 = static_cast<int64_t>(c) * kTokenChunk, n = std::min(kTokenChunk, T - t0);
    float* p = buf.probs + t0 * nb;
    Sgemm(false, false, n, nb, d, 1.0f, x + t0 * d, d, w.wr, nb, 0.0f, p, nb);
    for (int64_t i = 0; i < n * nb; ++i) p[i] = Sigmoid(p[i] + (w.br ? w.br[i % nb] : 0.0f));
    for (int64_t t = 0; t < n; ++t) SelectTopK(p + t * nb, nb, k, buf.selection + (t0 + t) * k);
    if (r1 > 0) Sgemm(false, false, n, r1, d, 1.0f, x + t0 * d, d, w.a1, r1, 0.0f, buf.xa1 + t0 * r1, r1);
    if (r3 > 0) Sgemm(false, false, n, r3, d, 1.0f, x + t0 * d, d, w.a3, r3, 0.0f, buf.xa3 + t0 * r3, r3);
  });

  RoutedFfnGroup(buf.selection, T, k, nb, buf.offsets, buf.perm, buf.pos);
  const std::vector<Chunk> chunks = MakeChunks(buf.offsets, nb, cfg.chunk_rows);

  parallel.For(chunks.size(), [&](std::size_t ci) {
    const Chunk& ch = chunks[ci];
    const int64_t b = ch.block, j0 = ch.begin, n = ch.end - ch.begin;
    float* rows = buf.rows + j0 * d;   // [n, d]
    float* pre = buf.pre + j0 * pw;    // [n, pw]
    float* hid = buf.hid + j0 * pw;    // [n, pw]
    float* xa1g = buf.xa1g + j0 * r1;  // [n, r1]
    float* xa3g = buf.xa3g + j0 * r3;
    float* ha2 = buf.ha2 + j0 * r2;    // [n, r2]

    for (int64_t j = 0; j < n; ++j) {
      const int64_t t = buf.perm[j0 + j] / k;
      std::memcpy(rows + j * d, x + t * d, static_cast<std::size_t>(d) * sizeof(float));
      if (r1 > 0) std::memcpy(xa1g + j * r1, buf.xa1 + t * r1, static_cast<std::size_t>(r1) * sizeof(float));
      if (r3 > 0) std::memcpy(xa3g + j * r3, buf.xa3 + t * r3, static_cast<std::size_t>(r3) * sizeof(float));
    }
    // u = x·W1_i (+ b1_i), u3 = x·W3_i: [n, d] x [d, bs] with W1's block columns read in place (ld = d_ff).
    Sgemm(false, false, n, bs, d, 1.0f, rows, d, w.w1 + b * bs, F, 0.0f, pre, pw);
    if (gated) Sgemm(false, false, n, bs, d, 1.0f, rows, d, w.w3 + b * bs, F, 0.0f, pre + bs, pw);
    // l = (x·A1)·B1_i, l3 = (x·A3)·B3_i.
    if (r1 > 0) Sgemm(false, false, n, bs, r1, 1.0f, xa1g, r1, w.b1_lora + b * bs, F, 0.0f, hid, pw);
    if (r3 > 0) Sgemm(false, false, n, bs, r3, 1.0f, xa3g, r3, w.b3_lora + b * bs, F, 0.0f, hid + bs, pw);
    // One pass per row: u += b1_i (the saved pre-activation includes the bias), h = act(gin·u + l)
    // written over l. In mode `all` h is then scaled by g before both output GEMMs; in `frozen_only`
    // the LoRA output path uses the unscaled h and the base path g·h, so without LoRA the scaling is
    // done here too, with LoRA after h·A2_i.
    auto gates = [&](int64_t j) { return GatesFor(cfg.gate, buf.probs[(buf.perm[j0 + j] / k) * nb + b]); };
    const float* bias = w.b1 ? w.b1 + b * bs : nullptr;
    const bool scale_now = cfg.gate == FfnGate::kAll || (cfg.gate == FfnGate::kFrozenOnly && r2 == 0);
    WithActivation(cfg.activation, [&](auto act) {
      using Op = decltype(act);
      for (int64_t j = 0; j < n; ++j) {
        const Gates g = gates(j);
        const float gi = g.in;
        float* u = pre + j * pw;
        float* h = hid + j * pw;
        if (bias)
          for (int64_t c = 0; c < bs; ++c) u[c] += bias[c];
        if (gated) {
          for (int64_t c = 0; c < bs; ++c) {
            const float ag = r1 > 0 ? gi * u[c] + h[c] : gi * u[c];
            const float au = r3 > 0 ? gi * u[bs + c] + h[bs + c] : gi * u[bs + c];
            h[c] = Op::F(ag) * au;
          }
        } else if (r1 > 0) {
          for (int64_t c = 0; c < bs; ++c) h[c] = Op::F(gi * u[c] + h[c]);
        } else {
          for (int64_t c = 0; c < bs; ++c) h[c] = Op::F(gi * u[c]);
        }
        if (scale_now) ScaleRow(h, bs, g.out_base);
      }
    });
    if (r2 > 0) Sgemm(false, false, n, r2, bs, 1.0f, hid, pw, w.a2 + b * bs * r2, r2, 0.0f, ha2, r2);
    if (cfg.gate == FfnGate::kFrozenOnly && r2 > 0)
      for (int64_t j = 0; j < n; ++j) ScaleRow(hid + j * pw, bs, gates(j).out_base);
    // Block output over the gathered x rows: o = (gob·h)·W2_i + (gol·h·A2_i)·B2.
    Sgemm(false, false, n, d, bs, 1.0f, hid, pw, w.w2 + b * bs * d, d, 0.0f, rows, d);
    if (r2 > 0) Sgemm(false, false, n, d, r2, 1.0f, ha2, r2, w.b2_lora, d, 1.0f, rows, d);
  });

  // y_t = b2 + Σ_s o[pos(t, s)], slots in order.
  parallel.For(static_cast<std::size_t>(TokenChunks(T)), [&](std::size_t c) {
    const int64_t t0 = static_cast<int64_t>(c) * kTokenChunk, t1 = std::min(T, t0 + kTokenChunk);
    for (int64_t t = t0; t < t1; ++t) {
      float* yt = y + t * d;
      if (w.b2) std::memcpy(yt, w.b2, static_cast<std::size_t>(d) * sizeof(float));
      else std::memset(yt, 0, static_cast<std::size_t>(d) * sizeof(float));
      for (int64_t s = 0; s < k; ++s) {
        const float* o = buf.rows + static_cast<int64_t>(buf.pos[t * k + s]) * d;
        for (int64_t c2 = 0; c2 < d; ++c2) yt[c2] += o[c2];
      }
    }
  });
}

namespace {

struct BackwardBuffers {
  int32_t* offsets;
  int32_t* perm;
  int32_t* pos;
  float* xa1;    // [T, r1]
  float* xa3;    // [T, r3]
  float* eb;     // [T, r2]   dy·B2ᵀ
  float* dz;     // [T, n_b]  router logit grads (0 where not selected)
  float* q1t;    // [T, r1]   Σ_s da·B1_iᵀ per token
  float* q3t;    // [T, r3]
  float* mt;     // [T, r2]   Σ_s gol·h·A2_i per token
  float* erows;  // [R, d]    gathered dy (then gob·dy for dW2)
  float* dxrows; // [R, d]    per-row dx contributions (aliases erows unless dW2 is wanted)
  float* xrows;  // [R, d]    gin·x gathered, only for dW1/dW3
  float* dpre;   // [R, pw]   e·W2_iᵀ -> dh -> da (and da3)
  float* act;    // [R, pw]   l -> a (and a3)
  float* hid;    // [R, bs]   h
  float* xa1g;   // [R, r1]
  float* xa3g;   // [R, r3]
  float* ebg;    // [R, r2]   gathered dy·B2ᵀ (then gol·)
  float* ha2;    // [R, r2]   h·A2_i (then gol·)
  float* q1;     // [R, r1]   da·B1_iᵀ
  float* q3;     // [R, r3]
  float* gin;    // [R]       input gate per row
  float* dg;     // [R]       dL/dg per row
  std::size_t bytes;
};

BackwardBuffers LayoutBackward(const RoutedFfnConfig& cfg, const RoutedFfnGrads& grads, void* workspace) {
  const int64_t T = cfg.tokens, R = cfg.Rows(), d = cfg.d_model, pw = cfg.PreWidth();
  Arena arena(workspace);
  BackwardBuffers b{};
  b.offsets = arena.Take<int32_t>(cfg.n_blocks + 1);
  b.perm = arena.Take<int32_t>(R);
  b.pos = arena.Take<int32_t>(R);
  b.xa1 = arena.Take<float>(T * cfg.rank1);
  b.xa3 = arena.Take<float>(T * cfg.rank3);
  b.eb = arena.Take<float>(T * cfg.rank2);
  b.dz = arena.Take<float>(T * cfg.n_blocks);
  b.q1t = arena.Take<float>(T * cfg.rank1);
  b.q3t = arena.Take<float>(T * cfg.rank3);
  b.mt = arena.Take<float>(T * cfg.rank2);
  b.erows = arena.Take<float>(R * d);
  b.dxrows = grads.dw2 ? arena.Take<float>(R * d) : b.erows;
  b.xrows = (grads.dw1 || grads.dw3) ? arena.Take<float>(R * d) : nullptr;
  b.dpre = arena.Take<float>(R * pw);
  b.act = arena.Take<float>(R * pw);
  b.hid = arena.Take<float>(R * cfg.BlockSize());
  b.xa1g = arena.Take<float>(R * cfg.rank1);
  b.xa3g = arena.Take<float>(R * cfg.rank3);
  b.ebg = arena.Take<float>(R * cfg.rank2);
  b.ha2 = arena.Take<float>(R * cfg.rank2);
  b.q1 = arena.Take<float>(R * cfg.rank1);
  b.q3 = arena.Take<float>(R * cfg.rank3);
  b.gin = arena.Take<float>(R);
  b.dg = arena.Take<float>(R);
  b.bytes = arena.Used();
  return b;
}

// out[t] = Σ_s rows[pos(t, s)] for t in [t0, t1), slots in order; with `scale` (one factor per
// grouped row) each row is multiplied by its factor before it is added. rows: [R, width].
void SumSlots(const float* rows, const int32_t* pos, int64_t top_k, int64_t width, int64_t t0, int64_t t1, float* out,
              bool accumulate, const float* scale = nullptr) {
  for (int64_t t = t0; t < t1; ++t) {
    float* o = out + t * width;
    if (!accumulate) std::memset(o, 0, static_cast<std::size_t>(width) * sizeof(float));
    for (int64_t s = 0; s < top_k; ++s) {
      const int64_t j = pos[t * top_k + s];
      const float* r = rows + j * width;
      if (scale) {
        const float g = scale[j];
        for (int64_t c = 0; c < width; ++c) o[c] += g * r[c];
      } else {
        for (int64_t c = 0; c < width; ++c) o[c] += r[c];
      }
    }
  }
}

}  // namespace

std::size_t RoutedFfnBackwardWorkspaceBytes(const RoutedFfnConfig& cfg, const RoutedFfnGrads& grads) {
  return LayoutBackward(cfg, grads, nullptr).bytes;
}

void RoutedFfnBackward(const RoutedFfnConfig& cfg, const RoutedFfnWeights& w, const float* x, const float* dy,
                       const RoutedFfnConstState& state, const RoutedFfnGrads& grads, void* workspace,
                       const Parallel& parallel) {
  const int64_t T = cfg.tokens, d = cfg.d_model, F = cfg.d_ff, nb = cfg.n_blocks, k = cfg.top_k;
  const int64_t bs = cfg.BlockSize(), pw = cfg.PreWidth(), r1 = cfg.rank1, r2 = cfg.rank2, r3 = cfg.rank3;
  const bool gated = cfg.Gated();
  const FfnGate gate = cfg.gate;
  const BackwardBuffers buf = LayoutBackward(cfg, grads, workspace);
  const bool want_dx_rows = grads.dx != nullptr;
  const bool want_router = gate != FfnGate::kNone && (grads.dx || grads.dwr || grads.dbr);

  // Token-level products: x·A1, x·A3, dy·B2ᵀ; dz starts at 0 (pairs that are not selected get none).
  parallel.For(static_cast<std::size_t>(TokenChunks(T)), [&](std::size_t c) {
    const int64_t t0 = static_cast<int64_t>(c) * kTokenChunk, n = std::min(kTokenChunk, T - t0);
    if (r1 > 0) Sgemm(false, false, n, r1, d, 1.0f, x + t0 * d, d, w.a1, r1, 0.0f, buf.xa1 + t0 * r1, r1);
    if (r3 > 0) Sgemm(false, false, n, r3, d, 1.0f, x + t0 * d, d, w.a3, r3, 0.0f, buf.xa3 + t0 * r3, r3);
    if (r2 > 0) Sgemm(false, true, n, r2, d, 1.0f, dy + t0 * d, d, w.b2_lora, d, 0.0f, buf.eb + t0 * r2, r2);
    std::memset(buf.dz + t0 * nb, 0, static_cast<std::size_t>(n * nb) * sizeof(float));
  });

  RoutedFfnGroup(state.selection, T, k, nb, buf.offsets, buf.perm, buf.pos);
  const std::vector<Chunk> chunks = MakeChunks(buf.offsets, nb, cfg.chunk_rows);

  // Phase 1: per grouped row, da, the dx contributions and the router grads.
  parallel.For(chunks.size(), [&](std::size_t ci) {
    const Chunk& ch = chunks[ci];
    const int64_t b = ch.block, j0 = ch.begin, n = ch.end - ch.begin;
    float* erows = buf.erows + j0 * d;
    float* dpre = buf.dpre + j0 * pw;
    float* act = buf.act + j0 * pw;
    float* hid = buf.hid + j0 * bs;
    float* xa1g = buf.xa1g + j0 * r1;
    float* xa3g = buf.xa3g + j0 * r3;
    float* ebg = buf.ebg + j0 * r2;
    float* ha2 = buf.ha2 + j0 * r2;
    const float* pre = state.pre + j0 * pw;
    auto gates = [&](int64_t j) { return GatesFor(gate, state.probs[(buf.perm[j0 + j] / k) * nb + b]); };
    float* dg = buf.dg + j0;  // dL/dg per row

    for (int64_t j = 0; j < n; ++j) {
      const int64_t t = buf.perm[j0 + j] / k;
      buf.gin[j0 + j] = gates(j).in;
      std::memcpy(erows + j * d, dy + t * d, static_cast<std::size_t>(d) * sizeof(float));
      if (r1 > 0) std::memcpy(xa1g + j * r1, buf.xa1 + t * r1, static_cast<std::size_t>(r1) * sizeof(float));
      if (r3 > 0) std::memcpy(xa3g + j * r3, buf.xa3 + t * r3, static_cast<std::size_t>(r3) * sizeof(float));
      if (r2 > 0) std::memcpy(ebg + j * r2, buf.eb + t * r2, static_cast<std::size_t>(r2) * sizeof(float));
      if (buf.xrows) {
        const float gi = gates(j).in;
        float* xr = buf.xrows + (j0 + j) * d;
        for (int64_t c = 0; c < d; ++c) xr[c] = gi * x[t * d + c];
      }
    }
    // e·W2_iᵀ: [n, d] x [d, bs] (W2's block rows, transposed in place).
    Sgemm(false, true, n, bs, d, 1.0f, erows, d, w.w2 + b * bs * d, d, 0.0f, dpre, pw);
    // Recompute l (and l3) into `act`.
    if (r1 > 0) Sgemm(false, false, n, bs, r1, 1.0f, xa1g, r1, w.b1_lora + b * bs, F, 0.0f, act, pw);
    if (r3 > 0) Sgemm(false, false, n, bs, r3, 1.0f, xa3g, r3, w.b3_lora + b * bs, F, 0.0f, act + bs, pw);
    // Per row: a = gin·u + l, h = act(a), dg(base) = <e·W2_iᵀ, h>, dh = gob·e·W2_iᵀ (+ the LoRA
    // term), da = dh ⊙ act'(a) (SwiGLU: da = dh ⊙ a3 ⊙ silu'(a), da3 = dh ⊙ silu(a)) written over
    // dh, and in frozen_only dg += <da, u>. In frozen_only the LoRA term of dh is not scaled; in
    // `all` the whole dh is, and the LoRA grads see g·h and g·e·B2ᵀ. Without the fc2 LoRA pair both
    // halves run back to back on each row (h is stored only when dW2 needs it); with it, the first
    // half runs on all rows (h stored for h·A2_i), then the two LoRA GEMMs, then the second half.
    const bool fused = r2 == 0;
    const bool keep_h = gated || r2 > 0 || grads.dw2 != nullptr;
    // dh scale applied in the second half: frozen_only scales the base term in the first half.
    auto dh_scale = [&](const Gates& g) { return gate == FfnGate::kFrozenOnly ? 1.0f : g.out_base; };
    WithActivation(cfg.activation, [&](auto act_op) {
      using Op = decltype(act_op);
      // First half of a row: a (into `act`, over l), h, <dh, h>; frozen_only: dh *= g.
      auto first_half = [&](int64_t j, const Gates& g) {
        const float gi = g.in;
        const float* u = pre + j * pw;
        float* a = act + j * pw;
        float* h = hid + j * bs;
        float* dh = dpre + j * pw;
        if (gated) {
          for (int64_t c = 0; c < bs; ++c) {
            const float ag = r1 > 0 ? gi * u[c] + a[c] : gi * u[c];
            const float au = r3 > 0 ? gi * u[bs + c] + a[bs + c] : gi * u[bs + c];
            a[c] = ag;
            a[bs + c] = au;
            h[c] = Op::F(ag) * au;
          }
        } else {
          if (r1 > 0) {
            for (int64_t c = 0; c < bs; ++c) a[c] = gi * u[c] + a[c];
          } else {
            for (int64_t c = 0; c < bs; ++c) a[c] = gi * u[c];
          }
          if (!keep_h) {
            dg[j] = RowDotAct<Op>(dh, a, bs);
          } else {
            for (int64_t c = 0; c < bs; ++c) h[c] = Op::F(a[c]);
          }
        }
        if (keep_h) dg[j] = RowDot(dh, h, bs);
        if (gate == FfnGate::kFrozenOnly) ScaleRow(dh, bs, g.out_base);
      };
      // Second half: dh *= s, da, and <da, u> (returned).
      auto second_half = [&](int64_t j, float s) {
        const float* a = act + j * pw;
        const float* u = pre + j * pw;
        float* da = dpre + j * pw;
        if (s != 1.0f) ScaleRow(da, bs, s);
        if (gated) {
          for (int64_t c = 0; c < bs; ++c) {
            const float dh = da[c];
            da[c] = dh * a[bs + c] * Op::D(a[c]);
            da[bs + c] = dh * Op::F(a[c]);
          }
          return RowDot(da, u, bs) + RowDot(da + bs, u + bs, bs);
        }
        for (int64_t c = 0; c < bs; ++c) da[c] *= Op::D(a[c]);
        return RowDot(da, u, bs);
      };
      if (fused) {
        // Both halves row by row, while the row is still in L1.
        for (int64_t j = 0; j < n; ++j) {
          const Gates g = gates(j);
          first_half(j, g);
          const float du = second_half(j, dh_scale(g));
          if (gate == FfnGate::kFrozenOnly) dg[j] += du;
        }
        return;
      }
      for (int64_t j = 0; j < n; ++j) first_half(j, gates(j));
      if (r2 > 0) {
        // h·A2_i, and dh += (e·B2ᵀ)·A2_iᵀ.
        Sgemm(false, false, n, r2, bs, 1.0f, hid, bs, w.a2 + b * bs * r2, r2, 0.0f, ha2, r2);
        Sgemm(false, true, n, bs, r2, 1.0f, ebg, r2, w.a2 + b * bs * r2, r2, 1.0f, dpre, pw);
        if (gate == FfnGate::kAll)
          for (int64_t j = 0; j < n; ++j) dg[j] += RowDot(ebg + j * r2, ha2 + j * r2, r2);
        if (gate != FfnGate::kFrozenOnly) {
          for (int64_t j = 0; j < n; ++j) {
            const float g = gates(j).out_base;
            if (g == 1.0f) continue;
            ScaleRow(ebg + j * r2, r2, g);
            ScaleRow(ha2 + j * r2, r2, g);
          }
        }
      }
      for (int64_t j = 0; j < n; ++j) {
        const float du = second_half(j, dh_scale(gates(j)));
        if (gate == FfnGate::kFrozenOnly) dg[j] += du;
      }
    });
    if (grads.dw2) {
      // dW2_i needs gob·e; dx rows live elsewhere in that case.
      for (int64_t j = 0; j < n; ++j) {
        const float g = gates(j).out_base;
        if (g != 1.0f) ScaleRow(erows + j * d, d, g);
      }
    }
    if (gate == FfnGate::kNone) std::fill(dg, dg + n, 0.0f);
    if (want_router) {
      for (int64_t j = 0; j < n; ++j) {
        const int64_t t = buf.perm[j0 + j] / k;
        const float p = state.probs[t * nb + b];
        buf.dz[t * nb + b] = 2.0f * dg[j] * p * (1.0f - p);
      }
    }
    // dx rows: da·W1_iᵀ + da3·W3_iᵀ (the factor gin is applied in the token-level slot sum); LoRA:
    // da·B1_iᵀ (A1ᵀ is applied per token later).
    if (want_dx_rows) {
      float* dxr = buf.dxrows + j0 * d;
      Sgemm(false, true, n, d, bs, 1.0f, dpre, pw, w.w1 + b * bs, F, 0.0f, dxr, d);
      if (gated) Sgemm(false, true, n, d, bs, 1.0f, dpre + bs, pw, w.w3 + b * bs, F, 1.0f, dxr, d);
    }
    if (r1 > 0) Sgemm(false, true, n, r1, bs, 1.0f, dpre, pw, w.b1_lora + b * bs, F, 0.0f, buf.q1 + j0 * r1, r1);
    if (r3 > 0) Sgemm(false, true, n, r3, bs, 1.0f, dpre + bs, pw, w.b3_lora + b * bs, F, 0.0f, buf.q3 + j0 * r3, r3);
  });

  // Phase 2: per-block weight grads, one GEMM over all rows of the block (sum order fixed by the grouping).
  enum Kind { kDA2, kDB1, kDB3, kDW1, kDW3, kDW2, kDB1Bias, kKinds };
  parallel.For(static_cast<std::size_t>(nb * kKinds), [&](std::size_t task) {
    const int64_t b = static_cast<int64_t>(task) / kKinds;
    const int kind = static_cast<int>(task % kKinds);
    const int64_t o = buf.offsets[b], n = buf.offsets[b + 1] - o;
    switch (kind) {
      case kDA2:  // dA2_i = hᵀ·(gol·e·B2ᵀ)   [bs, r2]
        if (grads.da2) Sgemm(true, false, bs, r2, n, 1.0f, buf.hid + o * bs, bs, buf.ebg + o * r2, r2, 0.0f, grads.da2 + b * bs * r2, r2);
        break;
      case kDB1:  // dB1_i = (x·A1)ᵀ·da   [r1, bs] (block columns of dB1)
        if (grads.db1_lora) Sgemm(true, false, r1, bs, n, 1.0f, buf.xa1g + o * r1, r1, buf.dpre + o * pw, pw, 0.0f, grads.db1_lora + b * bs, F);
        break;
      case kDB3:
        if (grads.db3_lora) Sgemm(true, false, r3, bs, n, 1.0f, buf.xa3g + o * r3, r3, buf.dpre + o * pw + bs, pw, 0.0f, grads.db3_lora + b * bs, F);
        break;
      case kDW1:  // dW1_i = (gin·x)ᵀ·da   [d, bs]
        if (grads.dw1) Sgemm(true, false, d, bs, n, 1.0f, buf.xrows + o * d, d, buf.dpre + o * pw, pw, 0.0f, grads.dw1 + b * bs, F);
        break;
      case kDW3:
        if (grads.dw3) Sgemm(true, false, d, bs, n, 1.0f, buf.xrows + o * d, d, buf.dpre + o * pw + bs, pw, 0.0f, grads.dw3 + b * bs, F);
        break;
      case kDW2:  // dW2_i = hᵀ·(gob·e)   [bs, d]
        if (grads.dw2) Sgemm(true, false, bs, d, n, 1.0f, buf.hid + o * bs, bs, buf.erows + o * d, d, 0.0f, grads.dw2 + b * bs * d, d);
        break;
      case kDB1Bias:  // db1_i = Σ gin·da
        if (grads.db1) SgemvTrans(n, bs, 1.0f, buf.dpre + o * pw, pw, buf.gin + o, 0.0f, grads.db1 + b * bs);
        break;
      default:
        break;
    }
  });

  // Phase 3: token level. Per-token slot sums of the LoRA row terms, then dx and the remaining grads.
  parallel.For(static_cast<std::size_t>(TokenChunks(T)), [&](std::size_t c) {
    const int64_t t0 = static_cast<int64_t>(c) * kTokenChunk, t1 = std::min(T, t0 + kTokenChunk), n = t1 - t0;
    if (r1 > 0) SumSlots(buf.q1, buf.pos, k, r1, t0, t1, buf.q1t, false);
    if (r3 > 0) SumSlots(buf.q3, buf.pos, k, r3, t0, t1, buf.q3t, false);
    if (r2 > 0) SumSlots(buf.ha2, buf.pos, k, r2, t0, t1, buf.mt, false);
    if (grads.dx) {
      float* dx = grads.dx + t0 * d;
      // dx = dz·Wrᵀ + q1·A1ᵀ + q3·A3ᵀ + Σ_s gin·dx rows (gin = 1 outside frozen_only).
      if (want_router) Sgemm(false, true, n, d, nb, 1.0f, buf.dz + t0 * nb, nb, w.wr, nb, 0.0f, dx, d);
      else std::memset(dx, 0, static_cast<std::size_t>(n * d) * sizeof(float));
      if (r1 > 0) Sgemm(false, true, n, d, r1, 1.0f, buf.q1t + t0 * r1, r1, w.a1, r1, 1.0f, dx, d);
      if (r3 > 0) Sgemm(false, true, n, d, r3, 1.0f, buf.q3t + t0 * r3, r3, w.a3, r3, 1.0f, dx, d);
      SumSlots(buf.dxrows, buf.pos, k, d, t0, t1, grads.dx, true, gate == FfnGate::kFrozenOnly ? buf.gin : nullptr);
    }
  });

  enum TokenKind { kDWr, kDA1, kDA3, kDB2, kBiases, kTokenKinds };
  parallel.For(kTokenKinds, [&](std::size_t kind) {
    switch (kind) {
      case kDWr:  // dWr = xᵀ·dz
        if (grads.dwr) Sgemm(true, false, d, nb, T, 1.0f, x, d, buf.dz, nb, 0.0f, grads.dwr, nb);
        break;
      case kDA1:  // dA1 = xᵀ·q1
        if (grads.da1) Sgemm(true, false, d, r1, T, 1.0f, x, d, buf.q1t, r1, 0.0f, grads.da1, r1);
        break;
      case kDA3:
        if (grads.da3) Sgemm(true, false, d, r3, T, 1.0f, x, d, buf.q3t, r3, 0.0f, grads.da3, r3);
        break;
      case kDB2:  // dB2 = (Σ_s gol·h·A2_i)ᵀ·dy
        if (grads.db2_lora) Sgemm(true, false, r2, d, T, 1.0f, buf.mt, r2, dy, d, 0.0f, grads.db2_lora, d);
        break;
      case kBiases:
        if (grads.dbr) {
          for (int64_t i = 0; i < nb; ++i) {
            double acc = 0.0;
            for (int64_t t = 0; t < T; ++t) acc += buf.dz[t * nb + i];
            grads.dbr[i] = static_cast<float>(acc);
          }
        }
        if (grads.db2) {
          std::vector<double> acc(static_cast<std::size_t>(d), 0.0);
          for (int64_t t = 0; t < T; ++t)
            for (int64_t c = 0; c < d; ++c) acc[static_cast<std::size_t>(c)] += dy[t * d + c];
          for (int64_t c = 0; c < d; ++c) grads.db2[c] = static_cast<float>(acc[static_cast<std::size_t>(c)]);
        }
        break;
      default:
        break;
    }
  });
}

}  // namespace spt::cpu
