// ORT binding of the routed FFN (domain spt, opset 1): RoutedFFN and RoutedFFNGrad on the CPU provider.
//
// RoutedFFN inputs (empty names allowed for the optional ones):
//   0 X [..., d]  1 W1 [d, d_ff]  2 b1 [d_ff]?  3 W2 [d_ff, d]  4 b2 [d]?  5 Wr [d, n_b]  6 br [n_b]?
//   7 W3 [d, d_ff]? (swiglu only, required there)
//   8 A1 [d, r1]?  9 B1 [r1, d_ff]?  10 A2 [d_ff, r2]?  11 B2 [r2, d]?  12 A3 [d, r3]?  13 B3 [r3, d_ff]?
// RoutedFFN outputs (T = product of X's leading dims, k = blocks_per_token, bs = d_ff / n_b):
//   0 Y [..., d] f32   1 P [T, n_b] f32?   2 Sel [T, k] i32?   3 U [T·k, bs] f32? ([T·k, 2·bs] for swiglu)
// RoutedFFNGrad inputs: 0 dY [..., d], 1..14 the RoutedFFN inputs, 15 P, 16 Sel, 17 U.
// RoutedFFNGrad outputs (all but dX optional; an output that does not apply must be left unnamed):
//   0 dX  1 dWr  2 dbr (needs br)  3 dW1  4 db1 (needs b1)  5 dW2  6 db2 (needs b2)  7 dW3 (swiglu)
//   (3..7 need frozen_base = 0)  8 dA1  9 dB1  10 dA2  11 dB2  12 dA3  13 dB3 (each needs its pair)
// Attributes (names, defaults and readers in binding/ort_attrs.h): n_blocks, blocks_per_token, activation, gate,
// frozen_base.
#include <algorithm>
#include <atomic>
#include <memory>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "binding/ort_api.h"
#include "binding/ort_attrs.h"
#include "binding/ort_parallel.h"
#include "cpu/blas.h"
#include "cpu/parallel.h"
#include "cpu/routed_ffn.h"
#if SPT_WITH_CUDA
#include "binding/cuda_support.h"
#include "cuda/kernels.h"
#endif

namespace spt::binding {
namespace {

using cpu::FfnActivation;
using cpu::FfnGate;

enum FwdInput { kX, kW1, kB1, kW2, kB2, kWr, kBr, kW3, kA1, kLB1, kA2, kLB2, kA3, kLB3, kFwdInputs };
constexpr const char* kFwdInputNames[kFwdInputs] = {"X",  "W1", "b1", "W2", "b2", "Wr", "br",
                                                    "W3", "A1", "B1", "A2", "B2", "A3", "B3"};
enum FwdOutput { kY, kP, kSel, kU, kFwdOutputs };
constexpr const char* kFwdOutputNames[kFwdOutputs] = {"Y", "P", "Sel", "U"};

// Grad inputs: dY, then the forward inputs shifted by one, then the saved state.
constexpr std::size_t kGradShift = 1;
enum GradExtraInput { kGradDY = 0, kGradP = kFwdInputs + 1, kGradSel, kGradU, kGradInputs };
enum GradOutput { kDX, kDWr, kDBr, kDW1, kDB1, kDW2, kDB2, kDW3, kDA1, kDLB1, kDA2, kDLB2, kDA3, kDLB3, kGradOutputs };
constexpr const char* kGradOutputNames[kGradOutputs] = {"dX",  "dWr", "dbr", "dW1", "db1", "dW2", "db2",
                                                        "dW3", "dA1", "dB1", "dA2", "dB2", "dA3", "dB3"};

constexpr const char* kRoutedFfn = "RoutedFFN";
constexpr const char* kRoutedFfnGrad = "RoutedFFNGrad";

// Contract violations are std::invalid_argument, as in attention_ops.cc (Guard turns them into ORT_INVALID_ARGUMENT).
[[noreturn]] void Fail(const std::string& op, const std::string& message) { throw std::invalid_argument(op + ": " + message); }

std::string DimsToString(const std::vector<int64_t>& dims) {
  std::ostringstream s;
  s << '[';
  for (std::size_t i = 0; i < dims.size(); ++i) s << (i ? ", " : "") << (dims[i] < 0 ? std::string("?") : std::to_string(dims[i]));
  s << ']';
  return s.str();
}

struct Attrs {
  int64_t n_blocks = defaults::kNBlocks;
  int64_t blocks_per_token = defaults::kBlocksPerToken;  // the kernels' k (RoutedFfnConfig::top_k)
  FfnActivation activation = FfnActivation::kRelu;
  FfnGate gate = FfnGate::kFrozenOnly;
  bool frozen_base = true;
};

// Reads and checks the attributes (same rules at load and at kernel creation).
Attrs ParseAttrs(const std::string& op, const AttrSource& src) {
  Attrs a;
  a.n_blocks = ReadAtLeast(op, src, attr::kNBlocks, defaults::kNBlocks, 1);
  a.blocks_per_token = ReadAtLeast(op, src, attr::kBlocksPerToken, defaults::kBlocksPerToken, 1);
  if (a.blocks_per_token > a.n_blocks) {
    FailAttr(op, attr::kBlocksPerToken,
             "must be <= n_blocks = " + std::to_string(a.n_blocks) + "; got " + std::to_string(a.blocks_per_token));
  }
  a.frozen_base = ReadFlag(op, src, attr::kFrozenBase, defaults::kFrozenBase);
  const std::string activation = ReadOneOf(op, src, attr::kActivation, defaults::kActivation,
                                           {"relu", "gelu", "gelu_tanh", "silu", "swiglu", "geglu", "geglu_tanh", "reglu", "relu2"});
  const std::string gate = ReadOneOf(op, src, attr::kGate, defaults::kGate, {"2sigmoid_frozen_only", "2sigmoid_all", "none"});
  if (!cpu::ParseFfnActivation(activation, &a.activation) || !cpu::ParseFfnGate(gate, &a.gate)) {
    throw std::logic_error(op + ": the kernels do not know activation '" + activation + "' or gate '" + gate + "'");
  }
  return a;
}

Attrs ReadAttrs(const OrtKernelInfo* info, const std::string& op) { return ParseAttrs(op, KernelInfoAttrs(info)); }

// One input as seen by the checks: absent, or a tensor with an element type and dims. During shape
// inference a dim can be unknown (-1, with its symbol in `symbols` when it has one) and the rank can
// be unknown (rank_known = false); the checks then skip what they cannot see.
struct InputInfo {
  bool present = false;
  bool rank_known = true;
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  std::vector<int64_t> dims;
  std::vector<std::string> symbols;
};

// Dims match when every known pair is equal (unknown = negative).
bool DimsMatch(const InputInfo& info, const std::vector<int64_t>& expected) {
  if (!info.rank_known) return true;
  if (info.dims.size() != expected.size()) return false;
  for (std::size_t i = 0; i < expected.size(); ++i)
    if (info.dims[i] >= 0 && expected[i] >= 0 && info.dims[i] != expected[i]) return false;
  return true;
}

// Validates shapes and types against the op contract and derives the kernel config. `in(i)` returns
// the i-th forward input (0..13); names are the forward input names.
cpu::RoutedFfnConfig CheckForward(const std::string& op, const Attrs& attrs, const std::function<const InputInfo&(int)>& in) {
  auto require = [&](int i) -> const InputInfo& {
    const InputInfo& info = in(i);
    if (!info.present) Fail(op, std::string("input '") + kFwdInputNames[i] + "' is required");
    return info;
  };
  auto check_type = [&](int i, const InputInfo& info) {
    if (info.present && info.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
      Fail(op, std::string("input '") + kFwdInputNames[i] + "' must be a float32 tensor (the CPU kernel is fp32 only)");
    }
  };
  for (int i = 0; i < kFwdInputs; ++i) check_type(i, in(i));

  const InputInfo& x = require(kX);
  if (x.rank_known && x.dims.empty()) Fail(op, "input 'X' must have shape [..., d] (rank >= 1), got a scalar");
  cpu::RoutedFfnConfig cfg;
  cfg.d_model = x.rank_known ? x.dims.back() : -1;
  cfg.tokens = x.rank_known ? 1 : -1;
  for (std::size_t i = 0; x.rank_known && i + 1 < x.dims.size(); ++i)
    cfg.tokens = (cfg.tokens < 0 || x.dims[i] < 0) ? -1 : cfg.tokens * x.dims[i];
  const InputInfo& w1 = require(kW1);
  if (w1.rank_known && w1.dims.size() != 2) Fail(op, "input 'W1' must have shape [d, d_ff], got " + DimsToString(w1.dims));
  cfg.d_ff = w1.rank_known ? w1.dims[1] : -1;
  cfg.n_blocks = attrs.n_blocks;
  cfg.top_k = attrs.blocks_per_token;
  cfg.activation = attrs.activation;
  cfg.gate = attrs.gate;
  const int64_t d = cfg.d_model, f = cfg.d_ff, nb = cfg.n_blocks;

  // expect(i, names, values): input i must be [values...] (dims named by `names`).
  auto expect = [&](int i, const std::vector<const char*>& names, const std::vector<int64_t>& values) {
    const InputInfo& info = in(i);
    if (!info.present) return;
    if (!DimsMatch(info, values)) {
      std::string shape = "[";
      for (std::size_t q = 0; q < names.size(); ++q) shape += std::string(q ? ", " : "") + names[q];
      shape += "]";
      Fail(op, std::string("input '") + kFwdInputNames[i] + "' must have shape " + shape + " = " + DimsToString(values) +
                   ", got " + DimsToString(info.dims));
    }
  };
  expect(kW1, {"d", "d_ff"}, {d, f});
  if (f >= 0 && f % nb != 0) {
    Fail(op, "d_ff (" + std::to_string(f) + ", from W1) must be divisible by attribute n_blocks (" + std::to_string(nb) + ")");
  }
  require(kW2);
  expect(kW2, {"d_ff", "d"}, {f, d});
  require(kWr);
  expect(kWr, {"d", "n_blocks"}, {d, nb});
  expect(kB1, {"d_ff"}, {f});
  expect(kB2, {"d"}, {d});
  expect(kBr, {"n_blocks"}, {nb});
  if (cfg.Gated()) {
    if (!in(kW3).present) Fail(op, "input 'W3' (the up projection [d, d_ff]) is required for a gated activation (swiglu, geglu, geglu_tanh, reglu)");
    expect(kW3, {"d", "d_ff"}, {d, f});
  } else if (in(kW3).present) {
    Fail(op, "input 'W3' is only used with a gated activation (swiglu, geglu, geglu_tanh, reglu); leave it empty");
  }
  // LoRA pairs: both factors or neither; ranks from A.
  auto pair = [&](int ia, int ib, std::vector<const char*> a_names, int64_t a_rows, std::vector<const char*> b_names,
                  int64_t b_cols) -> int64_t {
    const InputInfo& a = in(ia);
    const InputInfo& b = in(ib);
    if (a.present != b.present) {
      Fail(op, std::string("LoRA inputs '") + kFwdInputNames[ia] + "' and '" + kFwdInputNames[ib] +
                   "' must be given together (got only '" + kFwdInputNames[a.present ? ia : ib] + "')");
    }
    if (!a.present) return 0;
    if (!DimsMatch(a, {a_rows, -1}) || (a.rank_known && a.dims[1] == 0)) {
      Fail(op, std::string("input '") + kFwdInputNames[ia] + "' must have shape [" + a_names[0] + ", r] = [" +
                   (a_rows < 0 ? std::string("?") : std::to_string(a_rows)) + ", r] with r >= 1, got " + DimsToString(a.dims));
    }
    const int64_t r = a.rank_known ? a.dims[1] : -1;
    expect(ib, b_names, {r, b_cols});
    return r < 0 ? 1 : r;  // an unknown rank only happens during shape inference
  };
  cfg.rank1 = pair(kA1, kLB1, {"d"}, d, {"r1", "d_ff"}, f);
  cfg.rank2 = pair(kA2, kLB2, {"d_ff"}, f, {"r2", "d"}, d);
  cfg.rank3 = pair(kA3, kLB3, {"d"}, d, {"r3", "d_ff"}, f);
  if (cfg.rank3 > 0 && !cfg.Gated()) Fail(op, "LoRA inputs 'A3'/'B3' are only used with a gated activation (swiglu, geglu, geglu_tanh, reglu); leave them empty");
  if (cfg.tokens >= 0 && d > 0 && f > 0) {
    const std::string problem = cpu::ValidateRoutedFfnConfig(cfg);
    if (!problem.empty()) Fail(op, problem);
  }
  return cfg;
}

InputInfo InfoOf(const Ort::KernelContext& ctx, std::size_t index) {
  InputInfo info;
  if (index >= ctx.GetInputCount()) return info;
  Ort::ConstValue v = ctx.GetInput(index);
  if (!v) return info;
  auto ts = v.GetTensorTypeAndShapeInfo();
  info.present = true;
  info.type = ts.GetElementType();
  info.dims = ts.GetShape();
  return info;
}

const float* FloatData(const Ort::KernelContext& ctx, std::size_t index) {
  if (index >= ctx.GetInputCount()) return nullptr;
  Ort::ConstValue v = ctx.GetInput(index);
  return v ? v.GetTensorData<float>() : nullptr;
}


// ---------------------------------------------------------------------------------------------------
// Shape inference (runs when the session loads the model; a throw there fails the load with the message).

InputInfo InferInfoOf(const OrtApi& api, OrtShapeInferContext* ctx, std::size_t index) {
  InputInfo info;
  std::size_t count = 0;
  Ort::ThrowOnError(api.ShapeInferContext_GetInputCount(ctx, &count));
  if (index >= count) return info;
  OrtTensorTypeAndShapeInfo* raw = nullptr;
  if (OrtStatus* st = api.ShapeInferContext_GetInputTypeShape(ctx, index, &raw)) {
    api.ReleaseStatus(st);
    return info;
  }
  // The context owns `raw`; wrap it without taking ownership.
  Ort::ConstTensorTypeAndShapeInfo ts(raw);
  info.type = ts.GetElementType();
  if (info.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED) return info;  // an empty optional input
  info.present = true;
  info.dims = ts.GetShape();
  const std::vector<const char*> symbols = ts.GetSymbolicDimensions();
  for (std::size_t i = 0; i < info.dims.size(); ++i) {
    info.symbols.emplace_back(i < symbols.size() && symbols[i] ? symbols[i] : "");
    if (!info.symbols.back().empty()) info.dims[i] = -1;
  }
  // ORT reports a tensor whose shape is not known at all as rank 0; none of these inputs is a scalar.
  info.rank_known = !info.dims.empty();
  return info;
}

using SymDim = Ort::ShapeInferContext::SymbolicInteger;

// Symbolic dims need strings that outlive the SetOutputShape call; this keeps them.
struct SymbolPool {
  std::vector<std::unique_ptr<std::string>> names;
  SymDim Dim(int64_t known, const std::string& symbol) {
    if (known >= 0) return SymDim(known);
    if (symbol.empty()) {
      // An unnamed unknown dim: a fresh name, so that ORT never equates it with another tensor's dim.
      static std::atomic<int> counter{0};
      names.push_back(std::make_unique<std::string>("spt_ffn_dim_" + std::to_string(counter++)));
    } else {
      names.push_back(std::make_unique<std::string>(symbol));
    }
    return SymDim(names.back()->c_str());
  }
  // The input's own dims, symbols kept.
  Ort::ShapeInferContext::Shape ShapeOf(const InputInfo& info) {
    Ort::ShapeInferContext::Shape shape;
    for (std::size_t i = 0; i < info.dims.size(); ++i) shape.push_back(Dim(info.dims[i], info.symbols[i]));
    return shape;
  }
  // T = product of X's leading dims; "B*S" when symbolic, times `factor`.
  SymDim Tokens(const InputInfo& x, int64_t factor) {
    int64_t known = factor;
    std::string symbol;
    bool unnamed = false;
    for (std::size_t i = 0; i + 1 < x.dims.size(); ++i) {
      if (x.dims[i] >= 0) {
        known *= x.dims[i];
      } else if (x.symbols[i].empty()) {
        unnamed = true;
      } else {
        symbol += (symbol.empty() ? "" : "*") + x.symbols[i];
      }
    }
    if (unnamed) return Dim(-1, "");
    if (symbol.empty()) return SymDim(known);
    if (known != 1) symbol += "*" + std::to_string(known);
    return Dim(-1, symbol);
  }
};

// Sets an output's shape if the node has that output (ORT answers out-of-range outputs with a status).
void SetIfPresent(Ort::ShapeInferContext& ctx, std::size_t index, const Ort::ShapeInferContext::Shape& shape,
                  ONNXTensorElementDataType type) {
  Ort::Status st = ctx.SetOutputShape(index, shape, type);
  (void)st;
}

Attrs InferAttrs(Ort::ShapeInferContext&, OrtShapeInferContext* raw, const std::string& op) {
  return ParseAttrs(op, InferContextAttrs(raw));
}

void InferRoutedFfn(Ort::ShapeInferContext& ctx, OrtShapeInferContext* raw) {
  const OrtApi& api = Ort::GetApi();
  const Attrs attrs = InferAttrs(ctx, raw, kRoutedFfn);
  std::vector<InputInfo> infos(kFwdInputs);
  for (int i = 0; i < kFwdInputs; ++i) infos[i] = InferInfoOf(api, raw, static_cast<std::size_t>(i));
  const cpu::RoutedFfnConfig cfg = CheckForward(kRoutedFfn, attrs, [&](int i) -> const InputInfo& { return infos[i]; });
  const InputInfo& x = infos[kX];
  if (!x.rank_known) return;
  SymbolPool pool;
  const int64_t bs = cfg.d_ff >= 0 ? cfg.d_ff / cfg.n_blocks : -1;
  SetIfPresent(ctx, kY, pool.ShapeOf(x), ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
  SetIfPresent(ctx, kP, {pool.Tokens(x, 1), SymDim(cfg.n_blocks)}, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
  SetIfPresent(ctx, kSel, {pool.Tokens(x, 1), SymDim(cfg.top_k)}, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32);
  SetIfPresent(ctx, kU, {pool.Tokens(x, cfg.top_k), pool.Dim(bs < 0 ? -1 : (cfg.Gated() ? 2 * bs : bs), "")},
               ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
}

void InferRoutedFfnGrad(Ort::ShapeInferContext& ctx, OrtShapeInferContext* raw) {
  const OrtApi& api = Ort::GetApi();
  const Attrs attrs = InferAttrs(ctx, raw, kRoutedFfnGrad);
  std::vector<InputInfo> infos(kGradInputs);
  for (int i = 0; i < kGradInputs; ++i) infos[i] = InferInfoOf(api, raw, static_cast<std::size_t>(i));
  const cpu::RoutedFfnConfig cfg =
      CheckForward(kRoutedFfnGrad, attrs, [&](int i) -> const InputInfo& { return infos[i + kGradShift]; });
  auto need = [&](int i, const char* name, ONNXTensorElementDataType type, const char* type_name) {
    if (!infos[i].present) Fail(kRoutedFfnGrad, std::string("input '") + name + "' is required");
    if (infos[i].type != type) Fail(kRoutedFfnGrad, std::string("input '") + name + "' must be a " + type_name + " tensor");
  };
  need(kGradDY, "dY", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "float32");
  need(kGradP, "P", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "float32");
  need(kGradSel, "Sel", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, "int32");
  need(kGradU, "U", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "float32");
  const InputInfo& x = infos[kX + kGradShift];
  if (x.rank_known && !DimsMatch(infos[kGradDY], x.dims)) {
    Fail(kRoutedFfnGrad, "input 'dY' must have the shape of X " + DimsToString(x.dims) + ", got " + DimsToString(infos[kGradDY].dims));
  }
  auto expect2 = [&](int i, const char* name, const char* text, int64_t rows, int64_t cols) {
    if (!DimsMatch(infos[i], {rows, cols})) {
      Fail(kRoutedFfnGrad, std::string("input '") + name + "' must have shape " + text + ", got " + DimsToString(infos[i].dims));
    }
  };
  const int64_t bs = cfg.d_ff >= 0 ? cfg.d_ff / cfg.n_blocks : -1;
  const int64_t rows = cfg.tokens >= 0 ? cfg.tokens * cfg.top_k : -1;
  expect2(kGradP, "P", "[T, n_blocks]", cfg.tokens, cfg.n_blocks);
  expect2(kGradSel, "Sel", "[T, blocks_per_token]", cfg.tokens, cfg.top_k);
  expect2(kGradU, "U", cfg.Gated() ? "[T*blocks_per_token, 2*d_ff/n_blocks]" : "[T*blocks_per_token, d_ff/n_blocks]", rows,
          bs < 0 ? -1 : (cfg.Gated() ? 2 * bs : bs));
  // Every gradient has the shape of its input.
  SymbolPool pool;
  const int sources[kGradOutputs] = {kX, kWr, kBr, kW1, kB1, kW2, kB2, kW3, kA1, kLB1, kA2, kLB2, kA3, kLB3};
  for (int o = 0; o < kGradOutputs; ++o) {
    const InputInfo& src = infos[sources[o] + kGradShift];
    if (src.present && src.rank_known) SetIfPresent(ctx, static_cast<std::size_t>(o), pool.ShapeOf(src), ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
  }
}

// Rows per task when the kernel runs on ORT's pool: about 16 tasks where the batch allows it, between
// 128 and 512 rows. The GEMM library repacks the weight block on every call, so small tasks cost CPU time
// (bench_ffn.cc with OpenBLAS, 4096 tokens on 2 threads: 128-row tasks took 17-24% more CPU time than whole blocks,
// 256-row ones 7-10%, 512-row ones 3-4%). It depends on the number of grouped rows only, never on the
// number of threads, so results stay bit-identical whatever the pool.
int64_t ChunkRows(int64_t rows) { return std::clamp<int64_t>((rows / 16 + 63) / 64 * 64, 128, 512); }

// GEMMs run single-threaded inside our ops: the parallelism comes from ORT's intra-op pool (one
// GEMM chain per task), which avoids oversubscribing the cores with two thread pools.
void UseSingleThreadedBlas() {
  static std::once_flag once;
  std::call_once(once, [] { cpu::SetBlasThreads(1); });
}

class ScratchBuffer {
 public:
  ScratchBuffer(const Ort::KernelContext& ctx, std::size_t bytes)
      : memory_info_(Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault)),
        allocator_(ctx.GetAllocator(*memory_info_)),
        data_(bytes ? allocator_.Alloc(bytes) : nullptr) {}
  ~ScratchBuffer() {
    if (data_) allocator_.Free(data_);
  }
  ScratchBuffer(const ScratchBuffer&) = delete;
  ScratchBuffer& operator=(const ScratchBuffer&) = delete;
  void* get() const { return data_; }

 private:
  Ort::MemoryInfo memory_info_;
  Ort::Allocator allocator_;
  void* data_;
};

cpu::RoutedFfnWeights WeightsFrom(const Ort::KernelContext& ctx, std::size_t shift) {
  cpu::RoutedFfnWeights w;
  w.w1 = FloatData(ctx, kW1 + shift);
  w.b1 = FloatData(ctx, kB1 + shift);
  w.w2 = FloatData(ctx, kW2 + shift);
  w.b2 = FloatData(ctx, kB2 + shift);
  w.wr = FloatData(ctx, kWr + shift);
  w.br = FloatData(ctx, kBr + shift);
  w.w3 = FloatData(ctx, kW3 + shift);
  w.a1 = FloatData(ctx, kA1 + shift);
  w.b1_lora = FloatData(ctx, kLB1 + shift);
  w.a2 = FloatData(ctx, kA2 + shift);
  w.b2_lora = FloatData(ctx, kLB2 + shift);
  w.a3 = FloatData(ctx, kA3 + shift);
  w.b3_lora = FloatData(ctx, kLB3 + shift);
  return w;
}

// Output `index` if the node names it (else nullptr), allocated with `dims`.
float* OptionalFloatOutput(Ort::KernelContext& ctx, std::size_t index, const std::vector<int64_t>& dims) {
  if (index >= ctx.GetOutputCount()) return nullptr;
  Ort::UnownedValue v = ctx.GetOutput(index, dims);
  return v ? v.GetTensorMutableData<float>() : nullptr;
}

std::string NodeLabel(const char* op, const OrtKernelInfo* info) {
  std::string name;
  try {
    name = Ort::ConstKernelInfo(info).GetNodeName();
  } catch (const Ort::Exception&) {
  }
  return name.empty() ? std::string(op) : std::string(op) + " (node '" + name + "')";
}

// ---------------------------------------------------------------------------------------------------
template <typename Backend>
struct RoutedFfnKernelT {
  RoutedFfnKernelT(const OrtKernelInfo* info) : label(NodeLabel(kRoutedFfn, info)), attrs(ReadAttrs(info, label)) {}

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return Guard([&] {
      Ort::KernelContext ctx(context);
      std::vector<InputInfo> infos(kFwdInputs);
      for (int i = 0; i < kFwdInputs; ++i) infos[i] = InfoOf(ctx, i);
      cpu::RoutedFfnConfig cfg = CheckForward(label, attrs, [&](int i) -> const InputInfo& { return infos[i]; });
      cfg.chunk_rows = ChunkRows(cfg.Rows());
      const int64_t T = cfg.tokens, k = cfg.top_k;
      float* y = ctx.GetOutput(kY, infos[kX].dims).GetTensorMutableData<float>();
      cpu::RoutedFfnState state;
      state.probs = OptionalFloatOutput(ctx, kP, {T, cfg.n_blocks});
      if (kSel < ctx.GetOutputCount()) {
        Ort::UnownedValue sel = ctx.GetOutput(kSel, {T, k});
        if (sel) state.selection = sel.GetTensorMutableData<int32_t>();
      }
      state.pre = OptionalFloatOutput(ctx, kU, {T * k, cfg.PreWidth()});
      const cpu::RoutedFfnWeights w = WeightsFrom(ctx, 0);
      Backend::Forward(ctx, cfg, w, FloatData(ctx, kX), y, state);
    });
  }

  std::string label;
  Attrs attrs;
};

// The CPU backend: oneDNN GEMMs on tasks of ORT's intra-op pool, scratch from ORT's CPU allocator.
struct CpuFfn {
  static constexpr const char* kProvider = nullptr;  // ORT's default: CPUExecutionProvider
  static void Forward(const Ort::KernelContext& ctx, const cpu::RoutedFfnConfig& cfg, const cpu::RoutedFfnWeights& w,
                      const float* x, float* y, const cpu::RoutedFfnState& state) {
    UseSingleThreadedBlas();
    ScratchBuffer scratch(ctx, cpu::RoutedFfnForwardWorkspaceBytes(cfg, state));
    cpu::RoutedFfnForward(cfg, w, x, y, state, scratch.get(), OrtParallel(ctx));
  }
  static std::string CheckSelection(const int32_t* selection, int64_t tokens, int64_t top_k, int64_t n_blocks,
                                    const Ort::KernelContext&) {
    return cpu::ValidateSelection(selection, tokens, top_k, n_blocks);
  }
  static void Backward(const Ort::KernelContext& ctx, const cpu::RoutedFfnConfig& cfg, const cpu::RoutedFfnWeights& w,
                       const float* x, const float* dy, const cpu::RoutedFfnConstState& state,
                       const cpu::RoutedFfnGrads& g) {
    UseSingleThreadedBlas();
    ScratchBuffer scratch(ctx, cpu::RoutedFfnBackwardWorkspaceBytes(cfg, g));
    cpu::RoutedFfnBackward(cfg, w, x, dy, state, g, scratch.get(), OrtParallel(ctx));
  }
};

#if SPT_WITH_CUDA
// The CUDA backend (CUDAExecutionProvider): device tensors, ORT's compute stream, scratch from ORT's device
// allocator, cuBLAS through a per-stream handle (binding/cuda_support.h). fp32, as the schema declares.
struct CudaFfn {
  static constexpr const char* kProvider = "CUDAExecutionProvider";
  static cuda::FfnWeights Device(const cpu::RoutedFfnWeights& w) {
    return {w.w1, w.b1, w.w2, w.b2, w.wr, w.br, w.w3, w.a1, w.b1_lora, w.a2, w.b2_lora, w.a3, w.b3_lora};
  }
  static void Forward(const Ort::KernelContext& ctx, const cpu::RoutedFfnConfig& cfg, const cpu::RoutedFfnWeights& w,
                      const float* x, float* y, const cpu::RoutedFfnState& state) {
    const cudaStream_t stream = ComputeStream(ctx);
    const cuda::FfnState st{state.probs, state.selection, state.pre};
    CudaScratch scratch(ctx);
    void* ws = scratch.Take(cuda::RoutedFfnForwardWorkspaceBytes(cfg, cuda::DType::kF32, st));
    StreamCublas blas = CublasFor(stream);
    cuda::RoutedFfnForward(cfg, cuda::DType::kF32, Device(w), x, y, st, ws, blas.handle, stream);
  }
  // The selection lives on the device: validated from a host copy (one synchronization).
  static std::string CheckSelection(const int32_t* selection, int64_t tokens, int64_t top_k, int64_t n_blocks,
                                    const Ort::KernelContext& ctx) {
    std::vector<int32_t> host(static_cast<std::size_t>(tokens * top_k));
    const cudaStream_t stream = ComputeStream(ctx);
    if (!host.empty() && (cudaMemcpyAsync(host.data(), selection, host.size() * sizeof(int32_t),
                                          cudaMemcpyDeviceToHost, stream) != cudaSuccess ||
                          cudaStreamSynchronize(stream) != cudaSuccess)) {
      throw std::runtime_error("RoutedFFNGrad: reading 'Sel' from the device failed");
    }
    return cpu::ValidateSelection(host.data(), tokens, top_k, n_blocks);
  }
  static void Backward(const Ort::KernelContext& ctx, const cpu::RoutedFfnConfig& cfg, const cpu::RoutedFfnWeights& w,
                       const float* x, const float* dy, const cpu::RoutedFfnConstState& state,
                       const cpu::RoutedFfnGrads& g) {
    const cudaStream_t stream = ComputeStream(ctx);
    const cuda::FfnState st{const_cast<float*>(state.probs), const_cast<int32_t*>(state.selection),
                            const_cast<float*>(state.pre)};  // read only in the backward
    const cuda::FfnGrads dg{g.dx, g.dwr, g.dbr, g.dw1, g.db1, g.dw2, g.db2, g.dw3, g.da1, g.db1_lora, g.da2,
                            g.db2_lora, g.da3, g.db3_lora};
    CudaScratch scratch(ctx);
    void* ws = scratch.Take(cuda::RoutedFfnBackwardWorkspaceBytes(cfg, cuda::DType::kF32, dg));
    StreamCublas blas = CublasFor(stream);
    cuda::RoutedFfnBackward(cfg, cuda::DType::kF32, Device(w), x, dy, st, dg, ws, blas.handle, stream);
  }
};
#endif

template <typename Backend>
struct RoutedFfnOpT : Ort::CustomOpBase<RoutedFfnOpT<Backend>, RoutedFfnKernelT<Backend>, true> {
  // Shape inference needs the raw context (element types, empty optional inputs, attribute types), so the hook
  // is set here rather than through the wrapper (InferShapeFn, binding/ort_attrs.h).
  RoutedFfnOpT() { OrtCustomOp::InferOutputShapeFn = InferShapeFn<InferRoutedFfn>; }
  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    return Guard([&] { *kernel = new RoutedFfnKernelT<Backend>(info); });
  }
  const char* GetExecutionProviderType() const { return Backend::kProvider; }
  const char* GetName() const { return kRoutedFfn; }
  std::size_t GetInputTypeCount() const { return kFwdInputs; }
  // Any element type is accepted by the schema so that the kernel can reject non-fp32 tensors with a
  // message naming the input, instead of ORT's generic type-constraint error.
  ONNXTensorElementDataType GetInputType(std::size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED; }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(std::size_t i) const {
    const bool required = i == kX || i == kW1 || i == kW2 || i == kWr;
    return required ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
  std::size_t GetOutputTypeCount() const { return kFwdOutputs; }
  ONNXTensorElementDataType GetOutputType(std::size_t i) const {
    return i == kSel ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
  OrtCustomOpInputOutputCharacteristic GetOutputCharacteristic(std::size_t i) const {
    return i == kY ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
};

// ---------------------------------------------------------------------------------------------------
template <typename Backend>
struct RoutedFfnGradKernelT {
  RoutedFfnGradKernelT(const OrtKernelInfo* info)
      : label(NodeLabel(kRoutedFfnGrad, info)), attrs(ReadAttrs(info, label)) {}

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return Guard([&] {
      Ort::KernelContext ctx(context);
      std::vector<InputInfo> infos(kGradInputs);
      for (int i = 0; i < kGradInputs; ++i) infos[i] = InfoOf(ctx, i);
      cpu::RoutedFfnConfig cfg =
          CheckForward(label, attrs, [&](int i) -> const InputInfo& { return infos[i + kGradShift]; });
      cfg.chunk_rows = ChunkRows(cfg.Rows());
      const int64_t T = cfg.tokens, k = cfg.top_k, nb = cfg.n_blocks, d = cfg.d_model, f = cfg.d_ff;
      const InputInfo& x = infos[kX + kGradShift];
      auto expect = [&](int i, const char* name, ONNXTensorElementDataType type, const char* type_name,
                        const char* shape_text, const std::vector<int64_t>& dims) {
        const InputInfo& info = infos[i];
        if (!info.present) Fail(label, std::string("input '") + name + "' is required");
        if (info.type != type) Fail(label, std::string("input '") + name + "' must be a " + type_name + " tensor");
        if (info.dims != dims) {
          Fail(label, std::string("input '") + name + "' must have shape " + shape_text + " = " + DimsToString(dims) +
                          ", got " + DimsToString(info.dims));
        }
      };
      expect(kGradDY, "dY", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "float32", "[..., d] (the shape of X)", x.dims);
      expect(kGradP, "P", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "float32", "[T, n_blocks]", {T, nb});
      expect(kGradSel, "Sel", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, "int32", "[T, blocks_per_token]", {T, k});
      expect(kGradU, "U", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "float32",
             cfg.Gated() ? "[T*blocks_per_token, 2*d_ff/n_blocks]" : "[T*blocks_per_token, d_ff/n_blocks]", {T * k, cfg.PreWidth()});
      cpu::RoutedFfnConstState state;
      state.probs = FloatData(ctx, kGradP);
      state.selection = ctx.GetInput(kGradSel).GetTensorData<int32_t>();
      state.pre = FloatData(ctx, kGradU);
      const std::string bad_sel = Backend::CheckSelection(state.selection, T, k, nb, ctx);
      if (!bad_sel.empty()) Fail(label, "input 'Sel': " + bad_sel);

      const cpu::RoutedFfnWeights w = WeightsFrom(ctx, kGradShift);
      // Each output: its shape, and why it may not be requested (empty = it applies).
      auto shape_of = [&](int i) -> std::vector<int64_t> {
        const InputInfo& src = infos[static_cast<std::size_t>(i)];
        return src.present ? src.dims : std::vector<int64_t>{0};
      };
      const std::string base = "needs frozen_base = 0";
      struct Spec {
        std::vector<int64_t> dims;
        std::string unavailable;
      };
      const Spec specs[kGradOutputs] = {
          {x.dims, ""},
          {{d, nb}, ""},
          {{nb}, w.br ? "" : "needs input 'br'"},
          {{d, f}, attrs.frozen_base ? base : ""},
          {{f}, attrs.frozen_base ? base : (w.b1 ? "" : "needs input 'b1'")},
          {{f, d}, attrs.frozen_base ? base : ""},
          {{d}, attrs.frozen_base ? base : (w.b2 ? "" : "needs input 'b2'")},
          {{d, f}, attrs.frozen_base ? base : (cfg.Gated() ? "" : "needs a gated activation")},
          {shape_of(kA1 + kGradShift), cfg.rank1 ? "" : "needs LoRA inputs 'A1'/'B1'"},
          {shape_of(kLB1 + kGradShift), cfg.rank1 ? "" : "needs LoRA inputs 'A1'/'B1'"},
          {shape_of(kA2 + kGradShift), cfg.rank2 ? "" : "needs LoRA inputs 'A2'/'B2'"},
          {shape_of(kLB2 + kGradShift), cfg.rank2 ? "" : "needs LoRA inputs 'A2'/'B2'"},
          {shape_of(kA3 + kGradShift), cfg.rank3 ? "" : "needs LoRA inputs 'A3'/'B3'"},
          {shape_of(kLB3 + kGradShift), cfg.rank3 ? "" : "needs LoRA inputs 'A3'/'B3'"},
      };
      float* out[kGradOutputs] = {};
      for (int i = 0; i < kGradOutputs; ++i) {
        out[i] = OptionalFloatOutput(ctx, static_cast<std::size_t>(i), specs[i].dims);
        if (out[i] && !specs[i].unavailable.empty()) {
          Fail(label, std::string("output '") + kGradOutputNames[i] + "' " + specs[i].unavailable +
                          "; leave the output name empty");
        }
      }
      cpu::RoutedFfnGrads g;
      g.dx = out[kDX];
      g.dwr = out[kDWr];
      g.dbr = out[kDBr];
      g.dw1 = out[kDW1];
      g.db1 = out[kDB1];
      g.dw2 = out[kDW2];
      g.db2 = out[kDB2];
      g.dw3 = out[kDW3];
      g.da1 = out[kDA1];
      g.db1_lora = out[kDLB1];
      g.da2 = out[kDA2];
      g.db2_lora = out[kDLB2];
      g.da3 = out[kDA3];
      g.db3_lora = out[kDLB3];
      Backend::Backward(ctx, cfg, w, FloatData(ctx, kX + kGradShift), FloatData(ctx, kGradDY), state, g);
    });
  }

  std::string label;
  Attrs attrs;
};

template <typename Backend>
struct RoutedFfnGradOpT : Ort::CustomOpBase<RoutedFfnGradOpT<Backend>, RoutedFfnGradKernelT<Backend>, true> {
  RoutedFfnGradOpT() {
    OrtCustomOp::InferOutputShapeFn = InferShapeFn<InferRoutedFfnGrad>;
  }
  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    return Guard([&] { *kernel = new RoutedFfnGradKernelT<Backend>(info); });
  }
  const char* GetExecutionProviderType() const { return Backend::kProvider; }
  const char* GetName() const { return kRoutedFfnGrad; }
  std::size_t GetInputTypeCount() const { return kGradInputs; }
  ONNXTensorElementDataType GetInputType(std::size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED; }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(std::size_t i) const {
    if (i == kGradDY || i >= kGradP) return INPUT_OUTPUT_REQUIRED;
    const std::size_t f = i - kGradShift;
    const bool required = f == kX || f == kW1 || f == kW2 || f == kWr;
    return required ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
  std::size_t GetOutputTypeCount() const { return kGradOutputs; }
  ONNXTensorElementDataType GetOutputType(std::size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  OrtCustomOpInputOutputCharacteristic GetOutputCharacteristic(std::size_t i) const {
    return i == kDX ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
};

}  // namespace

void AddFfnOps(Ort::CustomOpDomain& domain) {
  static const RoutedFfnOpT<CpuFfn> routed_ffn;
  static const RoutedFfnGradOpT<CpuFfn> routed_ffn_grad;
  domain.Add(&routed_ffn);
  domain.Add(&routed_ffn_grad);
#if SPT_WITH_CUDA
  static const RoutedFfnOpT<CudaFfn> routed_ffn_cuda;
  static const RoutedFfnGradOpT<CudaFfn> routed_ffn_grad_cuda;
  domain.Add(&routed_ffn_cuda);
  domain.Add(&routed_ffn_grad_cuda);
#endif
}

}  // namespace spt::binding
