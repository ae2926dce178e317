// ORT binding of the sparse-attention family (domain spt, opset 1, CPU, fp32):
//   PQEncode, PQTopK, SparseAttention, SparseAttentionGrad, PQLoss, PQLossGrad.
// Keys and values may have fewer heads than queries (Hkv with H % Hkv == 0: GQA/MQA).
// Every input is declared with an open element type so that a wrong dtype (fp16, bf16, ...) reaches our own
// check and fails with a message naming the op, the input and what was expected. The kernels in cpu/ do
// the work; this file unpacks tensors, validates, converts masks and backs cpu::Parallel with ORT's pool.
#include <atomic>
#include <cmath>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "binding/ort_api.h"
#include "binding/ort_attrs.h"
#include "binding/ort_parallel.h"
#include "cpu/parallel.h"
#include "cpu/pq.h"
#include "cpu/sparse_attention.h"
#if SPT_WITH_CUDA
#include "binding/cuda_support.h"
#include "cuda/kernels.h"
#endif

namespace spt::binding {
namespace {

using cpu::Shape;

// ----------------------------------------------------------------------------- plumbing

const char* TypeName(ONNXTensorElementDataType t) {
  switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16: return "bfloat16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return "float64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL: return "bool";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8: return "int8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return "uint8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16: return "int16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return "int32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return "int64";
    default: return "another element type";
  }
}

// One input of the running node: absent (optional and not given) or a tensor with its type and shape.
struct Input {
  Ort::ConstValue value{nullptr};
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  Shape shape;
  bool present() const { return static_cast<const OrtValue*>(value) != nullptr; }
  template <typename T>
  const T* data() const { return value.GetTensorData<T>(); }
};

Input GetInput(const Ort::KernelContext& ctx, std::size_t index) {
  Input in;
  if (index >= ctx.GetInputCount()) return in;
  in.value = ctx.GetInput(index);
  if (!in.present()) return in;
  if (!in.value.IsTensor()) return in;
  auto info = in.value.GetTensorTypeAndShapeInfo();
  in.type = info.GetElementType();
  in.shape = info.GetShape();
  return in;
}

Input RequireInput(const Ort::KernelContext& ctx, std::size_t index, const char* op, const char* name,
                   ONNXTensorElementDataType want) {
  Input in = GetInput(ctx, index);
  if (!in.present()) throw std::invalid_argument(std::string(op) + ": input '" + name + "' is required");
  if (in.type != want) {
    throw std::invalid_argument(std::string(op) + ": input '" + name + "' must be a " + TypeName(want) +
                                " tensor on CPU; got " + TypeName(in.type));
  }
  return in;
}

bool IsKeepMaskType(ONNXTensorElementDataType t) {
  return t == ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL || t == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8 ||
         t == ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 || t == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 ||
         t == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
}

[[noreturn]] void FailMaskType(const char* op, const char* allowed, ONNXTensorElementDataType t) {
  throw std::invalid_argument(std::string(op) + ": input 'key_padding_mask' must be " + allowed + "; got " +
                              TypeName(t));
}

// Reads element e of an integer/bool keep-mask as "keep?".
bool KeepAt(const Input& m, std::size_t e) {
  switch (m.type) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL: return m.data<bool>()[e];
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8: return m.data<int8_t>()[e] != 0;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return m.data<uint8_t>()[e] != 0;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return m.data<int32_t>()[e] != 0;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return m.data<int64_t>()[e] != 0;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return m.data<float>()[e] != 0.f;
    default: throw std::logic_error("unchecked mask type");
  }
}

// SparseAttention's mask as the additive [B, Sk] bias the kernel takes: float is used as given, keep-masks
// become 0 (keep) / -inf (padded). Returns nullptr when there is no mask.
const float* AdditiveMask(const char* op, const Input& m, std::vector<float>& converted) {
  if (!m.present()) return nullptr;
  if (m.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) return m.data<float>();
  if (!IsKeepMaskType(m.type)) {
    FailMaskType(op, "float32 (additive) or bool/int8/uint8/int32/int64 (1 = keep, 0 = padded)", m.type);
  }
  converted.resize(static_cast<std::size_t>(cpu::NumElements(m.shape)));
  for (std::size_t e = 0; e < converted.size(); ++e) {
    converted[e] = KeepAt(m, e) ? 0.f : -std::numeric_limits<float>::infinity();
  }
  return converted.data();
}

template <typename T>
T* Output(const Ort::KernelContext& ctx, std::size_t index, const Shape& shape) {
  return ctx.GetOutput(index, shape).GetTensorMutableData<T>();
}

// ----------------------------------------------------------------------------- shape inference

using InferShape = Ort::ShapeInferContext::Shape;
using Dim = Ort::ShapeInferContext::SymbolicInteger;

bool Known(const Dim& d) { return d.IsInt() && d.AsInt() >= 0; }

std::string DimString(const Dim& d) { return d.IsInt() ? (d.AsInt() >= 0 ? std::to_string(d.AsInt()) : "?") : d.AsSym(); }

std::string InferShapeString(const InferShape& s) {
  std::string out = "[";
  for (std::size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + DimString(s[i]);
  return out + "]";
}

// Graph-time check: rank must match (a rank-0 shape may mean "unknown" and is left to run time) and every
// dim known on both sides must agree. `expected` uses nullptr for "any".
void InferExpect(const char* op, const char* input, const InferShape& got, std::vector<const Dim*> expected,
                 const char* pattern) {
  if (got.empty() && !expected.empty()) return;
  bool ok = got.size() == expected.size();
  for (std::size_t i = 0; ok && i < expected.size(); ++i) {
    if (expected[i] && Known(*expected[i]) && Known(got[i])) ok = expected[i]->AsInt() == got[i].AsInt();
  }
  if (!ok) {
    std::string want = std::string(pattern) + " = [";
    for (std::size_t i = 0; i < expected.size(); ++i) want += (i ? ", " : "") + (expected[i] ? DimString(*expected[i]) : "?");
    throw std::invalid_argument(std::string(op) + ": input '" + input + "' must have shape " + want + "]; got " +
                                InferShapeString(got));
  }
}

// ORT reads an integer dim of -1 as a known size (and, e.g., a following Squeeze then rejects it), so unknown
// dims are set as fresh symbols that ORT never equates with another tensor's dims.
void SetShape(Ort::ShapeInferContext& ctx, std::size_t index, const InferShape& shape,
              ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
  static std::atomic<int> counter{0};
  std::vector<std::unique_ptr<std::string>> names;  // must outlive SetOutputShape
  InferShape out;
  out.reserve(shape.size());
  for (const Dim& d : shape) {
    if (d.IsInt() && d.AsInt() < 0) {
      names.push_back(std::make_unique<std::string>("spt_attention_dim_" + std::to_string(counter++)));
      out.emplace_back(names.back()->c_str());
    } else {
      out.push_back(d);
    }
  }
  Ort::Status status = ctx.SetOutputShape(index, out, type);
  (void)status;  // an output the node does not have: nothing to set
}

InferShape InputShapeOrEmpty(Ort::ShapeInferContext& ctx, std::size_t i) {
  return i < ctx.GetInputCount() ? ctx.GetInputShape(i) : InferShape{};
}

// Grouped K/V heads at graph time: when both head counts are known, H must be a multiple of Hkv.
void InferHeadGroups(const char* op, const char* input, const Dim& h, const Dim& hkv) {
  if (Known(h) && Known(hkv)) cpu::CheckHeadGroups(op, input, h.AsInt(), hkv.AsInt());
}

// ----------------------------------------------------------------------------- op base

// Common OrtCustomOp plumbing: CPU, V2 kernels returning a status, open input types, optional trailing inputs.
// Shape inference gets the raw context too, so that it reads attributes as kernel creation does (AttrSource).
template <typename TOp, typename TKernel>
struct SptOp : Ort::CustomOpBase<TOp, TKernel, /*WithStatus=*/true> {
  SptOp() { OrtCustomOp::InferOutputShapeFn = InferShapeFn<Infer>; }
  static void Infer(Ort::ShapeInferContext& ctx, OrtShapeInferContext* raw) { TOp::Infer(ctx, InferContextAttrs(raw)); }
  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    return Guard([&] { *kernel = new TKernel(KernelInfoAttrs(info)); });
  }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  ONNXTensorElementDataType GetInputType(std::size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED; }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(std::size_t i) const {
    return i < TOp::kRequiredInputs ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
  std::size_t GetInputTypeCount() const { return TOp::kInputs; }
};

// ----------------------------------------------------------------------------- PQEncode

struct PQEncodeKernel {
  explicit PQEncodeKernel(const AttrSource& attrs) { ReadOneOf("PQEncode", attrs, attr::kMetric, defaults::kMetric, {"l1"}); }
  OrtStatusPtr ComputeV2(OrtKernelContext* raw) {
    return Guard([&] {
      Ort::KernelContext ctx(raw);
      const Input z = RequireInput(ctx, 0, "PQEncode", "Z", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
      const Input w = RequireInput(ctx, 1, "PQEncode", "codebook", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
      const cpu::PQDims d = cpu::CheckPQInputs("PQEncode", z.shape, w.shape);
      Shape out = z.shape;
      out.back() = d.M;
      int32_t* codes = Output<int32_t>(ctx, 0, out);
      cpu::PQEncode(d, z.data<float>(), w.data<float>(), codes, OrtParallel(ctx));
    });
  }
};

struct PQEncodeOp : SptOp<PQEncodeOp, PQEncodeKernel> {
  static constexpr std::size_t kInputs = 2, kRequiredInputs = 2;
  const char* GetName() const { return "PQEncode"; }
  std::size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(std::size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32; }
  static void Infer(Ort::ShapeInferContext& ctx, const AttrSource& attrs) {
    [[maybe_unused]] const PQEncodeKernel checked{attrs};  // the attribute checks of kernel creation
    const InferShape z = ctx.GetInputShape(0), w = ctx.GetInputShape(1);
    InferExpect("PQEncode", "codebook", w, {nullptr, nullptr, nullptr}, "[M, C, dc]");
    if (z.empty() || w.size() != 3) return;
    if (Known(z.back()) && Known(w[0]) && Known(w[2]) && z.back().AsInt() != w[0].AsInt() * w[2].AsInt()) {
      cpu::CheckPQInputs("PQEncode", {z.back().AsInt()}, {w[0].AsInt(), 1, w[2].AsInt()});
    }
    InferShape out = z;
    out.back() = w[0];
    SetShape(ctx, 0, out, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32);
  }
};

// ----------------------------------------------------------------------------- PQTopK

struct PQTopKKernel {
  explicit PQTopKKernel(const AttrSource& attrs)
      : mode_(cpu::ParseTopKMode(ReadOneOf("PQTopK", attrs, attr::kMode, defaults::kMode, {"exact", "bucketed"}))),
        causal_(ReadFlag("PQTopK", attrs, attr::kCausal, defaults::kCausal)),
        top_k_(ReadAtLeast("PQTopK", attrs, attr::kKeysPerQuery, defaults::kKeysPerQuery, 0, "0 = use keys_ratio")),
        ratio_(ReadFloat("PQTopK", attrs, attr::kKeysRatio, defaults::kKeysRatio)),
        min_keys_(ReadAtLeast("PQTopK", attrs, attr::kMinKeysPerQuery, defaults::kMinKeysPerQuery, 0, "0 = no floor")),
        window_(ReadAtLeast("PQTopK", attrs, attr::kWindow, defaults::kWindow, 0, "0 = off")) {
    // The ratio is checked even when keys_per_query overrides it, as the schema does.
    if (!(ratio_ > 0.f && ratio_ <= 1.f)) FailAttr("PQTopK", attr::kKeysRatio, "must be in (0, 1]; got " + std::to_string(ratio_));
  }
  OrtStatusPtr ComputeV2(OrtKernelContext* raw) {
    return Guard([&] {
      Ort::KernelContext ctx(raw);
      const Input q = RequireInput(ctx, 0, "PQTopK", "codes_q", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32);
      const Input k = RequireInput(ctx, 1, "PQTopK", "codes_k", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32);
      const Input mask = GetInput(ctx, 2);
      if (mask.present() && !IsKeepMaskType(mask.type) && mask.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
        FailMaskType("PQTopK", "bool/int8/uint8/int32/int64/float32 (nonzero = keep, 0 = padded)", mask.type);
      }
      cpu::PQTopKDims d = cpu::CheckPQTopKInputs(q.shape, k.shape, mask.present() ? &mask.shape : nullptr);
      d.L = cpu::ResolveTopK(top_k_, ratio_, d.Sk, min_keys_);
      std::vector<uint8_t> keep;
      if (mask.present()) {
        keep.resize(static_cast<std::size_t>(d.B * d.Sk));
        for (std::size_t e = 0; e < keep.size(); ++e) keep[e] = KeepAt(mask, e);
      }
      int32_t* out = Output<int32_t>(ctx, 0, {d.B, d.H, d.Sq, d.L});
      cpu::PQTopK(d, mode_, causal_, window_, q.data<int32_t>(), k.data<int32_t>(), keep.empty() ? nullptr : keep.data(),
                  out, OrtParallel(ctx));
    });
  }

  cpu::TopKMode mode() const { return mode_; }
  bool causal() const { return causal_; }
  int64_t top_k() const { return top_k_; }
  float ratio() const { return ratio_; }
  int64_t min_keys() const { return min_keys_; }
  int64_t window() const { return window_; }

 private:
  cpu::TopKMode mode_;
  bool causal_;
  int64_t top_k_;
  float ratio_;
  int64_t min_keys_;
  int64_t window_;
};

struct PQTopKOp : SptOp<PQTopKOp, PQTopKKernel> {
  static constexpr std::size_t kInputs = 3, kRequiredInputs = 2;
  const char* GetName() const { return "PQTopK"; }
  std::size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(std::size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32; }
  static void Infer(Ort::ShapeInferContext& ctx, const AttrSource& attrs) {
    const PQTopKKernel parsed(attrs);
    const InferShape q = ctx.GetInputShape(0), k = ctx.GetInputShape(1), m = InputShapeOrEmpty(ctx, 2);
    InferExpect("PQTopK", "codes_q", q, {nullptr, nullptr, nullptr, nullptr}, "[B, H, Sq, M]");
    if (q.size() != 4) return;
    InferExpect("PQTopK", "codes_k", k, {&q[0], nullptr, nullptr, &q[3]}, "[B, Hkv, Sk, M]");
    if (k.size() != 4) return;
    InferHeadGroups("PQTopK", "codes_k", q[1], k[1]);
    InferExpect("PQTopK", "key_padding_mask", m, {&q[0], &k[2]}, "[B, Sk]");
    Dim l = Known(k[2]) ? Dim(cpu::ResolveTopK(parsed.top_k(), parsed.ratio(), k[2].AsInt(), parsed.min_keys())) : Dim(int64_t{-1});
    SetShape(ctx, 0, {q[0], q[1], q[2], l}, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32);
  }
};

// ----------------------------------------------------------------------------- SparseAttention(+Grad)

struct AttentionAttributes {
  double scale, clamp;
  bool causal;
  int64_t window;
  AttentionAttributes(const AttrSource& attrs, const char* op)
      : scale(ReadFloat(op, attrs, attr::kScale, defaults::kScale)),
        clamp(ReadFloat(op, attrs, attr::kClamp, defaults::kClamp)),
        causal(ReadFlag(op, attrs, attr::kCausal, defaults::kCausal)),
        window(ReadAtLeast(op, attrs, attr::kWindow, defaults::kWindow, 0, "0 = off")) {
    if (!std::isfinite(clamp) || clamp < 0) {
      FailAttr(op, attr::kClamp, "must be finite and >= 0 (0 = off); got " + std::to_string(clamp));
    }
    if (!std::isfinite(scale)) FailAttr(op, attr::kScale, "must be finite (0 = 1/sqrt(E)); got " + std::to_string(scale));
  }
  // The resolved parameters for head dim e.
  cpu::SparseAttentionParams Resolve(const char* op, int64_t e) const {
    auto p = cpu::ResolveSparseAttentionParams(op, scale, clamp, causal, e);
    p.window = window;
    return p;
  }
};

struct SparseAttentionKernel {
  explicit SparseAttentionKernel(const AttrSource& attrs) : attrs_(attrs, "SparseAttention") {}
  OrtStatusPtr ComputeV2(OrtKernelContext* raw) {
    return Guard([&] {
      constexpr const char* op = "SparseAttention";
      constexpr auto f32 = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
      Ort::KernelContext ctx(raw);
      const Input q = RequireInput(ctx, 0, op, "Q", f32), k = RequireInput(ctx, 1, op, "K", f32);
      const Input v = RequireInput(ctx, 2, op, "V", f32);
      const Input idx = RequireInput(ctx, 3, op, "indices", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32);
      const Input mask = GetInput(ctx, 4);
      const auto d = cpu::CheckSparseAttentionInputs(op, q.shape, k.shape, v.shape, idx.shape,
                                                     mask.present() ? &mask.shape : nullptr);
      const auto p = attrs_.Resolve(op, d.E);
      std::vector<float> converted;
      const float* bias = AdditiveMask(op, mask, converted);
      // attn_bias [1|B, 1|H, 1|Sq, Sk]: an additive score bias (relative position, ALiBi) read at the selected keys.
      const Input attn = GetInput(ctx, 5);
      if (attn.present() && attn.type != f32) FailMaskType(op, "float32 (attn_bias)", attn.type);
      const auto attn_bias = attn.present() ? cpu::CheckAttentionBias<float>(op, d, attn.shape, attn.data<float>())
                                            : cpu::AttentionBias<float>{};
      cpu::CheckSparseAttentionIndices(op, d, idx.data<int32_t>());
      float* y = Output<float>(ctx, 0, {d.B, d.H, d.Sq, d.Ev});
      float* probs = Output<float>(ctx, 1, {d.B, d.H, d.Sq, d.L});
      cpu::SparseAttentionForward<float>(d, p, q.data<float>(), k.data<float>(), v.data<float>(), idx.data<int32_t>(),
                                         bias, y, probs, OrtParallel(ctx), attn_bias);
    });
  }

 private:
  AttentionAttributes attrs_;
};

// Checks Q, K, V, indices (inputs offset..offset+3) and the optional mask at mask_index; fills unknown shapes.
void InferAttentionInputs(const char* op, Ort::ShapeInferContext& ctx, std::size_t offset, std::size_t mask_index,
                          InferShape& q, InferShape& k, InferShape& v, InferShape& idx) {
  q = ctx.GetInputShape(offset);
  k = ctx.GetInputShape(offset + 1);
  v = ctx.GetInputShape(offset + 2);
  idx = ctx.GetInputShape(offset + 3);
  InferExpect(op, "Q", q, {nullptr, nullptr, nullptr, nullptr}, "[B, H, Sq, E]");
  if (q.size() != 4) q = {Dim(int64_t{-1}), Dim(int64_t{-1}), Dim(int64_t{-1}), Dim(int64_t{-1})};
  InferExpect(op, "K", k, {&q[0], nullptr, nullptr, &q[3]}, "[B, Hkv, Sk, E]");
  if (k.size() != 4) k = {q[0], Dim(int64_t{-1}), Dim(int64_t{-1}), q[3]};
  InferHeadGroups(op, "K", q[1], k[1]);
  InferExpect(op, "V", v, {&q[0], &k[1], &k[2], nullptr}, "[B, Hkv, Sk, Ev]");
  if (v.size() != 4) v = {q[0], k[1], k[2], Dim(int64_t{-1})};
  InferExpect(op, "indices", idx, {&q[0], &q[1], &q[2], nullptr}, "[B, H, Sq, L]");
  if (idx.size() != 4) idx = {q[0], q[1], q[2], Dim(int64_t{-1})};
  InferExpect(op, "key_padding_mask", InputShapeOrEmpty(ctx, mask_index), {&q[0], &k[2]},
              "[B, Sk]");
}

struct SparseAttentionOp : SptOp<SparseAttentionOp, SparseAttentionKernel> {
  static constexpr std::size_t kInputs = 6, kRequiredInputs = 4;
  const char* GetName() const { return "SparseAttention"; }
  std::size_t GetOutputTypeCount() const { return 2; }
  ONNXTensorElementDataType GetOutputType(std::size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  static void Infer(Ort::ShapeInferContext& ctx, const AttrSource& attrs) {
    [[maybe_unused]] const AttentionAttributes checked(attrs, "SparseAttention");
    InferShape q, k, v, idx;
    InferAttentionInputs("SparseAttention", ctx, 0, 4, q, k, v, idx);
    SetShape(ctx, 0, {q[0], q[1], q[2], v[3]});
    SetShape(ctx, 1, idx);
  }
};

struct SparseAttentionGradKernel {
  explicit SparseAttentionGradKernel(const AttrSource& attrs) : attrs_(attrs, "SparseAttentionGrad") {}
  OrtStatusPtr ComputeV2(OrtKernelContext* raw) {
    return Guard([&] {
      constexpr const char* op = "SparseAttentionGrad";
      constexpr auto f32 = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
      Ort::KernelContext ctx(raw);
      const Input dy = RequireInput(ctx, 0, op, "dY", f32);
      const Input q = RequireInput(ctx, 1, op, "Q", f32), k = RequireInput(ctx, 2, op, "K", f32);
      const Input v = RequireInput(ctx, 3, op, "V", f32);
      const Input idx = RequireInput(ctx, 4, op, "indices", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32);
      const Input probs = RequireInput(ctx, 5, op, "P", f32);
      const Input mask = GetInput(ctx, 6);
      const auto d = cpu::CheckSparseAttentionInputs(op, q.shape, k.shape, v.shape, idx.shape,
                                                     mask.present() ? &mask.shape : nullptr);
      cpu::CheckSparseAttentionGradInputs(d, dy.shape, probs.shape);
      const auto p = attrs_.Resolve(op, d.E);
      // The mask's effect is already in P (masked slots have P = 0); it is only type- and shape-checked here.
      std::vector<float> converted;
      AdditiveMask(op, mask, converted);
      cpu::CheckSparseAttentionIndices(op, d, idx.data<int32_t>());
      float* dq = Output<float>(ctx, 0, q.shape);
      float* dk = Output<float>(ctx, 1, k.shape);
      float* dv = Output<float>(ctx, 2, v.shape);
      cpu::SparseAttentionBackward<float>(d, p, dy.data<float>(), q.data<float>(), k.data<float>(), v.data<float>(),
                                          idx.data<int32_t>(), probs.data<float>(), dq, dk, dv, OrtParallel(ctx));
    });
  }

 private:
  AttentionAttributes attrs_;
};

struct SparseAttentionGradOp : SptOp<SparseAttentionGradOp, SparseAttentionGradKernel> {
  static constexpr std::size_t kInputs = 7, kRequiredInputs = 6;
  const char* GetName() const { return "SparseAttentionGrad"; }
  std::size_t GetOutputTypeCount() const { return 3; }
  ONNXTensorElementDataType GetOutputType(std::size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  static void Infer(Ort::ShapeInferContext& ctx, const AttrSource& attrs) {
    constexpr const char* op = "SparseAttentionGrad";
    [[maybe_unused]] const AttentionAttributes checked(attrs, op);
    InferShape q, k, v, idx;
    InferAttentionInputs(op, ctx, 1, 6, q, k, v, idx);
    InferExpect(op, "dY", ctx.GetInputShape(0), {&q[0], &q[1], &q[2], &v[3]}, "[B, H, Sq, Ev]");
    InferExpect(op, "P", ctx.GetInputShape(5), {&idx[0], &idx[1], &idx[2], &idx[3]}, "[B, H, Sq, L]");
    SetShape(ctx, 0, q);
    SetShape(ctx, 1, k);
    SetShape(ctx, 2, v);
  }
};

// ----------------------------------------------------------------------------- PQLoss(+Grad)

void InferPQInputs(const char* op, Ort::ShapeInferContext& ctx, std::size_t offset) {
  const InferShape z = ctx.GetInputShape(offset), w = ctx.GetInputShape(offset + 1);
  InferExpect(op, "codebook", w, {nullptr, nullptr, nullptr}, "[M, C, dc]");
  if (!z.empty() && w.size() == 3 && Known(z.back()) && Known(w[0]) && Known(w[2]) &&
      z.back().AsInt() != w[0].AsInt() * w[2].AsInt()) {
    cpu::CheckPQInputs(op, {z.back().AsInt()}, {w[0].AsInt(), 1, w[2].AsInt()});
  }
}

struct PQLossKernel {
  explicit PQLossKernel(const AttrSource&) {}
  OrtStatusPtr ComputeV2(OrtKernelContext* raw) {
    return Guard([&] {
      Ort::KernelContext ctx(raw);
      const Input z = RequireInput(ctx, 0, "PQLoss", "Z", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
      const Input w = RequireInput(ctx, 1, "PQLoss", "codebook", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
      const auto d = cpu::CheckPQInputs("PQLoss", z.shape, w.shape);
      float* loss = Output<float>(ctx, 0, {});
      *loss = static_cast<float>(cpu::PQLoss(d, z.data<float>(), w.data<float>(), OrtParallel(ctx)));
    });
  }
};

struct PQLossOp : SptOp<PQLossOp, PQLossKernel> {
  static constexpr std::size_t kInputs = 2, kRequiredInputs = 2;
  const char* GetName() const { return "PQLoss"; }
  std::size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(std::size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  static void Infer(Ort::ShapeInferContext& ctx, const AttrSource&) {
    InferPQInputs("PQLoss", ctx, 0);
    SetShape(ctx, 0, {});
  }
};

struct PQLossGradKernel {
  explicit PQLossGradKernel(const AttrSource& attrs)
      : detach_(ReadFlag("PQLossGrad", attrs, attr::kDetachInputs, defaults::kDetachInputs)) {}
  OrtStatusPtr ComputeV2(OrtKernelContext* raw) {
    return Guard([&] {
      constexpr const char* op = "PQLossGrad";
      Ort::KernelContext ctx(raw);
      const Input dl = RequireInput(ctx, 0, op, "dLoss", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
      const Input z = RequireInput(ctx, 1, op, "Z", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
      const Input w = RequireInput(ctx, 2, op, "codebook", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
      if (cpu::NumElements(dl.shape) != 1) cpu::FailInput(op, "dLoss", "[] (a scalar, or one element)", dl.shape);
      const auto d = cpu::CheckPQInputs(op, z.shape, w.shape);
      float* dz = Output<float>(ctx, 0, z.shape);
      float* dw = Output<float>(ctx, 1, w.shape);
      cpu::PQLossGrad(d, *dl.data<float>(), z.data<float>(), w.data<float>(), detach_, dz, dw, OrtParallel(ctx));
    });
  }

 private:
  bool detach_;
};

struct PQLossGradOp : SptOp<PQLossGradOp, PQLossGradKernel> {
  static constexpr std::size_t kInputs = 3, kRequiredInputs = 3;
  const char* GetName() const { return "PQLossGrad"; }
  std::size_t GetOutputTypeCount() const { return 2; }
  ONNXTensorElementDataType GetOutputType(std::size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  static void Infer(Ort::ShapeInferContext& ctx, const AttrSource& attrs) {
    [[maybe_unused]] const PQLossGradKernel checked{attrs};
    InferPQInputs("PQLossGrad", ctx, 1);
    SetShape(ctx, 0, ctx.GetInputShape(1));
    SetShape(ctx, 1, ctx.GetInputShape(2));
  }
};

#if SPT_WITH_CUDA
// ----------------------------------------------------------------------------- CUDAExecutionProvider kernels
//
// The same six ops for sessions with the CUDA provider: inputs and outputs in device memory, work enqueued on
// ORT's compute stream, scratch from ORT's allocator for the device (CudaScratch). Schemas, attributes,
// shape checks and error messages are the CPU ops' (the CUDA ops reuse their Infer). Through ORT
// the element type is float32, as the op schemas declare; the kernels themselves also take fp16/bf16.

Input RequireDeviceInput(const Ort::KernelContext& ctx, std::size_t index, const char* op, const char* name,
                         ONNXTensorElementDataType want) {
  Input in = GetInput(ctx, index);
  if (!in.present()) throw std::invalid_argument(std::string(op) + ": input '" + name + "' is required");
  if (in.type != want) {
    throw std::invalid_argument(std::string(op) + ": input '" + name + "' must be a " + TypeName(want) +
                                " tensor on CUDA; got " + TypeName(in.type));
  }
  return in;
}

cuda::MaskType DeviceMaskType(const char* op, const Input& m, bool float_allowed, const char* allowed) {
  switch (m.type) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return cuda::MaskType::kByte;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return cuda::MaskType::kInt32;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return cuda::MaskType::kInt64;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT:
      if (float_allowed) return cuda::MaskType::kFloat;
      [[fallthrough]];
    default: FailMaskType(op, allowed, m.type);
  }
}

// SparseAttention's mask on the device as the additive [B, Sk] bias: float as given, keep-masks converted.
const float* DeviceAdditiveMask(const char* op, const Input& m, CudaScratch& scratch, cudaStream_t stream) {
  if (!m.present()) return nullptr;
  if (m.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) return m.data<float>();
  const cuda::MaskType type =
      DeviceMaskType(op, m, false, "float32 (additive) or bool/int8/uint8/int32/int64 (1 = keep, 0 = padded)");
  const int64_t n = cpu::NumElements(m.shape);
  auto* bias = static_cast<float*>(scratch.Take(static_cast<std::size_t>(n) * sizeof(float)));
  cuda::MaskToBias(type, m.value.GetTensorRawData(), n, bias, stream);
  return bias;
}

// Same message as cpu::CheckSparseAttentionIndices, from the device copy (one synchronization).
void CheckDeviceIndices(const char* op, const cpu::SparseAttentionDims& d, const int32_t* indices, CudaScratch& scratch,
                        cudaStream_t stream) {
  const int64_t bad = cuda::FindBadIndex(d, indices, scratch.Take(cuda::FindBadIndexWorkspaceBytes()), stream);
  if (bad < 0) return;
  const int32_t j = CopyToHost<int32_t>(indices + bad, stream);
  const int64_t t = bad % d.L, i = (bad / d.L) % d.Sq, bh = bad / (d.L * d.Sq);
  throw std::invalid_argument(std::string(op) + ": input 'indices' holds " + std::to_string(j) + " at [" +
                              std::to_string(bh / d.H) + ", " + std::to_string(bh % d.H) + ", " + std::to_string(i) +
                              ", " + std::to_string(t) + "]; entries must be -1 (empty) or in [0, Sk = " +
                              std::to_string(d.Sk) + ")");
}

template <typename TOp, typename TKernel>
struct SptCudaOp : SptOp<TOp, TKernel> {
  const char* GetExecutionProviderType() const { return "CUDAExecutionProvider"; }
};

struct PQEncodeCudaKernel : PQEncodeKernel {
  using PQEncodeKernel::PQEncodeKernel;
  OrtStatusPtr ComputeV2(OrtKernelContext* raw) {
    return Guard([&] {
      Ort::KernelContext ctx(raw);
      const Input z = RequireDeviceInput(ctx, 0, "PQEncode", "Z", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
      const Input w = RequireDeviceInput(ctx, 1, "PQEncode", "codebook", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
      const cpu::PQDims d = cpu::CheckPQInputs("PQEncode", z.shape, w.shape);
      Shape out = z.shape;
      out.back() = d.M;
      int32_t* codes = Output<int32_t>(ctx, 0, out);
      cuda::PQEncode(d, cuda::DType::kF32, z.data<float>(), w.data<float>(), codes, ComputeStream(ctx));
    });
  }
};
struct PQEncodeCudaOp : SptCudaOp<PQEncodeCudaOp, PQEncodeCudaKernel> {
  static constexpr std::size_t kInputs = PQEncodeOp::kInputs, kRequiredInputs = PQEncodeOp::kRequiredInputs;
  const char* GetName() const { return "PQEncode"; }
  std::size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(std::size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32; }
  static void Infer(Ort::ShapeInferContext& ctx, const AttrSource& attrs) { PQEncodeOp::Infer(ctx, attrs); }
};

struct PQTopKCudaKernel : PQTopKKernel {
  using PQTopKKernel::PQTopKKernel;
  OrtStatusPtr ComputeV2(OrtKernelContext* raw) {
    return Guard([&] {
      Ort::KernelContext ctx(raw);
      const cudaStream_t stream = ComputeStream(ctx);
      const Input q = RequireDeviceInput(ctx, 0, "PQTopK", "codes_q", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32);
      const Input k = RequireDeviceInput(ctx, 1, "PQTopK", "codes_k", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32);
      const Input mask = GetInput(ctx, 2);
      cpu::PQTopKDims d = cpu::CheckPQTopKInputs(q.shape, k.shape, mask.present() ? &mask.shape : nullptr);
      d.L = cpu::ResolveTopK(top_k(), ratio(), d.Sk, min_keys());
      CudaScratch scratch(ctx);
      const uint8_t* keep = nullptr;
      if (mask.present()) {
        const auto type = DeviceMaskType("PQTopK", mask, true, "bool/int8/uint8/int32/int64/float32 (nonzero = keep, 0 = padded)");
        auto* buffer = static_cast<uint8_t*>(scratch.Take(static_cast<std::size_t>(d.B * d.Sk)));
        cuda::MaskToKeep(type, mask.value.GetTensorRawData(), d.B * d.Sk, buffer, stream);
        keep = buffer;
      }
      int32_t* out = Output<int32_t>(ctx, 0, {d.B, d.H, d.Sq, d.L});
      cuda::PQTopK(d, mode(), causal(), window(), q.data<int32_t>(), k.data<int32_t>(), keep, out, stream);
    });
  }
};
struct PQTopKCudaOp : SptCudaOp<PQTopKCudaOp, PQTopKCudaKernel> {
  static constexpr std::size_t kInputs = PQTopKOp::kInputs, kRequiredInputs = PQTopKOp::kRequiredInputs;
  const char* GetName() const { return "PQTopK"; }
  std::size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(std::size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32; }
  static void Infer(Ort::ShapeInferContext& ctx, const AttrSource& attrs) { PQTopKOp::Infer(ctx, attrs); }
};

struct SparseAttentionCudaKernel {
  explicit SparseAttentionCudaKernel(const AttrSource& attrs) : attrs_(attrs, "SparseAttention") {}
  OrtStatusPtr ComputeV2(OrtKernelContext* raw) {
    return Guard([&] {
      constexpr const char* op = "SparseAttention";
      constexpr auto f32 = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
      Ort::KernelContext ctx(raw);
      const cudaStream_t stream = ComputeStream(ctx);
      const Input q = RequireDeviceInput(ctx, 0, op, "Q", f32), k = RequireDeviceInput(ctx, 1, op, "K", f32);
      const Input v = RequireDeviceInput(ctx, 2, op, "V", f32);
      const Input idx = RequireDeviceInput(ctx, 3, op, "indices", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32);
      const Input mask = GetInput(ctx, 4);
      const auto d = cpu::CheckSparseAttentionInputs(op, q.shape, k.shape, v.shape, idx.shape,
                                                     mask.present() ? &mask.shape : nullptr);
      const auto p = attrs_.Resolve(op, d.E);
      CudaScratch scratch(ctx);
      const float* bias = DeviceAdditiveMask(op, mask, scratch, stream);
      const Input attn = GetInput(ctx, 5);
      if (attn.present() && attn.type != f32) FailMaskType(op, "float32 (attn_bias)", attn.type);
      const auto attn_bias = attn.present() ? cpu::CheckAttentionBias<float>(op, d, attn.shape, attn.data<float>())
                                            : cpu::AttentionBias<float>{};
      CheckDeviceIndices(op, d, idx.data<int32_t>(), scratch, stream);
      float* y = Output<float>(ctx, 0, {d.B, d.H, d.Sq, d.Ev});
      float* probs = Output<float>(ctx, 1, {d.B, d.H, d.Sq, d.L});
      cuda::SparseAttentionForward(d, p, cuda::DType::kF32, q.data<float>(), k.data<float>(), v.data<float>(),
                                   idx.data<int32_t>(), bias, y, probs, stream, attn_bias);
    });
  }

 private:
  AttentionAttributes attrs_;
};
struct SparseAttentionCudaOp : SptCudaOp<SparseAttentionCudaOp, SparseAttentionCudaKernel> {
  static constexpr std::size_t kInputs = SparseAttentionOp::kInputs, kRequiredInputs = SparseAttentionOp::kRequiredInputs;
  const char* GetName() const { return "SparseAttention"; }
  std::size_t GetOutputTypeCount() const { return 2; }
  ONNXTensorElementDataType GetOutputType(std::size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  static void Infer(Ort::ShapeInferContext& ctx, const AttrSource& attrs) { SparseAttentionOp::Infer(ctx, attrs); }
};

struct SparseAttentionGradCudaKernel {
  explicit SparseAttentionGradCudaKernel(const AttrSource& attrs) : attrs_(attrs, "SparseAttentionGrad") {}
  OrtStatusPtr ComputeV2(OrtKernelContext* raw) {
    return Guard([&] {
      constexpr const char* op = "SparseAttentionGrad";
      constexpr auto f32 = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
      Ort::KernelContext ctx(raw);
      const cudaStream_t stream = ComputeStream(ctx);
      const Input dy = RequireDeviceInput(ctx, 0, op, "dY", f32);
      const Input q = RequireDeviceInput(ctx, 1, op, "Q", f32), k = RequireDeviceInput(ctx, 2, op, "K", f32);
      const Input v = RequireDeviceInput(ctx, 3, op, "V", f32);
      const Input idx = RequireDeviceInput(ctx, 4, op, "indices", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32);
      const Input probs = RequireDeviceInput(ctx, 5, op, "P", f32);
      const Input mask = GetInput(ctx, 6);
      const auto d = cpu::CheckSparseAttentionInputs(op, q.shape, k.shape, v.shape, idx.shape,
                                                     mask.present() ? &mask.shape : nullptr);
      cpu::CheckSparseAttentionGradInputs(d, dy.shape, probs.shape);
      const auto p = attrs_.Resolve(op, d.E);
      // As on CPU the mask is only checked: its effect is already in P.
      if (mask.present() && mask.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
        DeviceMaskType(op, mask, false, "float32 (additive) or bool/int8/uint8/int32/int64 (1 = keep, 0 = padded)");
      }
      CudaScratch scratch(ctx);
      CheckDeviceIndices(op, d, idx.data<int32_t>(), scratch, stream);
      float* dq = Output<float>(ctx, 0, q.shape);
      float* dk = Output<float>(ctx, 1, k.shape);
      float* dv = Output<float>(ctx, 2, v.shape);
      void* ws = scratch.Take(cuda::SparseAttentionBackwardWorkspaceBytes(d));
      cuda::SparseAttentionBackward(d, p, cuda::DType::kF32, dy.data<float>(), q.data<float>(), k.data<float>(),
                                    v.data<float>(), idx.data<int32_t>(), probs.data<float>(), dq, dk, dv, ws, stream);
    });
  }

 private:
  AttentionAttributes attrs_;
};
struct SparseAttentionGradCudaOp : SptCudaOp<SparseAttentionGradCudaOp, SparseAttentionGradCudaKernel> {
  static constexpr std::size_t kInputs = SparseAttentionGradOp::kInputs,
                               kRequiredInputs = SparseAttentionGradOp::kRequiredInputs;
  const char* GetName() const { return "SparseAttentionGrad"; }
  std::size_t GetOutputTypeCount() const { return 3; }
  ONNXTensorElementDataType GetOutputType(std::size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  static void Infer(Ort::ShapeInferContext& ctx, const AttrSource& attrs) { SparseAttentionGradOp::Infer(ctx, attrs); }
};

struct PQLossCudaKernel {
  explicit PQLossCudaKernel(const AttrSource&) {}
  OrtStatusPtr ComputeV2(OrtKernelContext* raw) {
    return Guard([&] {
      Ort::KernelContext ctx(raw);
      const Input z = RequireDeviceInput(ctx, 0, "PQLoss", "Z", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
      const Input w = RequireDeviceInput(ctx, 1, "PQLoss", "codebook", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
      const auto d = cpu::CheckPQInputs("PQLoss", z.shape, w.shape);
      CudaScratch scratch(ctx);
      float* loss = Output<float>(ctx, 0, {});
      cuda::PQLoss(d, cuda::DType::kF32, z.data<float>(), w.data<float>(), loss,
                   scratch.Take(cuda::PQLossWorkspaceBytes(d)), ComputeStream(ctx));
    });
  }
};
struct PQLossCudaOp : SptCudaOp<PQLossCudaOp, PQLossCudaKernel> {
  static constexpr std::size_t kInputs = PQLossOp::kInputs, kRequiredInputs = PQLossOp::kRequiredInputs;
  const char* GetName() const { return "PQLoss"; }
  std::size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(std::size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  static void Infer(Ort::ShapeInferContext& ctx, const AttrSource& attrs) { PQLossOp::Infer(ctx, attrs); }
};

struct PQLossGradCudaKernel {
  explicit PQLossGradCudaKernel(const AttrSource& attrs)
      : detach_(ReadFlag("PQLossGrad", attrs, attr::kDetachInputs, defaults::kDetachInputs)) {}
  OrtStatusPtr ComputeV2(OrtKernelContext* raw) {
    return Guard([&] {
      constexpr const char* op = "PQLossGrad";
      Ort::KernelContext ctx(raw);
      const Input dl = RequireDeviceInput(ctx, 0, op, "dLoss", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
      const Input z = RequireDeviceInput(ctx, 1, op, "Z", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
      const Input w = RequireDeviceInput(ctx, 2, op, "codebook", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
      if (cpu::NumElements(dl.shape) != 1) cpu::FailInput(op, "dLoss", "[] (a scalar, or one element)", dl.shape);
      const auto d = cpu::CheckPQInputs(op, z.shape, w.shape);
      CudaScratch scratch(ctx);
      float* dz = Output<float>(ctx, 0, z.shape);
      float* dw = Output<float>(ctx, 1, w.shape);
      cuda::PQLossGrad(d, cuda::DType::kF32, dl.data<float>(), z.data<float>(), w.data<float>(), detach_, dz, dw,
                       scratch.Take(cuda::PQLossGradWorkspaceBytes(d)), ComputeStream(ctx));
    });
  }

 private:
  bool detach_;
};
struct PQLossGradCudaOp : SptCudaOp<PQLossGradCudaOp, PQLossGradCudaKernel> {
  static constexpr std::size_t kInputs = PQLossGradOp::kInputs, kRequiredInputs = PQLossGradOp::kRequiredInputs;
  const char* GetName() const { return "PQLossGrad"; }
  std::size_t GetOutputTypeCount() const { return 2; }
  ONNXTensorElementDataType GetOutputType(std::size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  static void Infer(Ort::ShapeInferContext& ctx, const AttrSource& attrs) { PQLossGradOp::Infer(ctx, attrs); }
};
#endif  // SPT_WITH_CUDA

}  // namespace

void AddAttentionOps(Ort::CustomOpDomain& domain) {
  // Created once per process (ORT keeps raw pointers in every session that registers the domain).
  static PQEncodeOp pq_encode;
  static PQTopKOp pq_topk;
  static SparseAttentionOp sparse_attention;
  static SparseAttentionGradOp sparse_attention_grad;
  static PQLossOp pq_loss;
  static PQLossGradOp pq_loss_grad;
  for (OrtCustomOp* op : std::initializer_list<OrtCustomOp*>{&pq_encode, &pq_topk, &sparse_attention,
                                                             &sparse_attention_grad, &pq_loss, &pq_loss_grad}) {
    domain.Add(op);
  }
#if SPT_WITH_CUDA
  static PQEncodeCudaOp pq_encode_cuda;
  static PQTopKCudaOp pq_topk_cuda;
  static SparseAttentionCudaOp sparse_attention_cuda;
  static SparseAttentionGradCudaOp sparse_attention_grad_cuda;
  static PQLossCudaOp pq_loss_cuda;
  static PQLossGradCudaOp pq_loss_grad_cuda;
  for (OrtCustomOp* op : std::initializer_list<OrtCustomOp*>{&pq_encode_cuda, &pq_topk_cuda, &sparse_attention_cuda,
                                                             &sparse_attention_grad_cuda, &pq_loss_cuda,
                                                             &pq_loss_grad_cuda}) {
    domain.Add(op);
  }
#endif
}

}  // namespace spt::binding
