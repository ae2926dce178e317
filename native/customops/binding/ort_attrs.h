// The attribute contract of the spt ops as the binding reads it, for both op families (attention_ops.cc and
// ffn_ops.cc): attribute names, defaults and ranges (the same as the op schemas in Spt.CustomOps; a C# test runs
// every op with its attributes omitted and with the schema's defaults written out, and with out-of-range values),
// one reader for kernel creation and shape inference, one message format, and one exception-to-status guard.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>

#include "binding/ort_api.h"

namespace spt::binding {

namespace attr {
// PQTopK
inline constexpr const char* kMode = "mode";
inline constexpr const char* kWindow = "window";
inline constexpr const char* kKeysPerQuery = "keys_per_query";
inline constexpr const char* kKeysRatio = "keys_ratio";
inline constexpr const char* kMinKeysPerQuery = "min_keys_per_query";
// PQTopK, SparseAttention(Grad)
inline constexpr const char* kCausal = "causal";
// SparseAttention(Grad)
inline constexpr const char* kScale = "scale";
inline constexpr const char* kClamp = "clamp";
// PQEncode, PQLossGrad
inline constexpr const char* kMetric = "metric";
inline constexpr const char* kDetachInputs = "detach_inputs";
// RoutedFFN(Grad)
inline constexpr const char* kNBlocks = "n_blocks";
inline constexpr const char* kBlocksPerToken = "blocks_per_token";
inline constexpr const char* kActivation = "activation";
inline constexpr const char* kGate = "gate";
inline constexpr const char* kFrozenBase = "frozen_base";
}  // namespace attr

// The value an omitted attribute takes.
namespace defaults {
inline constexpr const char* kMode = "exact";
inline constexpr int64_t kKeysPerQuery = 0;  // 0: use keys_ratio
inline constexpr float kKeysRatio = 0.125f;
inline constexpr int64_t kMinKeysPerQuery = 0;  // 0: no floor
inline constexpr int64_t kWindow = 0;  // 0: no sliding window
inline constexpr int64_t kCausal = 1;
inline constexpr float kScale = 0.0f;  // 0: 1/sqrt(E)
inline constexpr float kClamp = 10.0f;
inline constexpr const char* kMetric = "l1";
inline constexpr int64_t kDetachInputs = 0;
inline constexpr int64_t kNBlocks = 4;
inline constexpr int64_t kBlocksPerToken = 2;
inline constexpr const char* kActivation = "relu";
inline constexpr const char* kGate = "2sigmoid_frozen_only";
inline constexpr int64_t kFrozenBase = 1;
}  // namespace defaults

// "<op>: attribute '<name>' <what>" as std::invalid_argument (ORT_INVALID_ARGUMENT through Guard).
[[noreturn]] void FailAttr(const std::string& op, const char* name, const std::string& what);

// Where attributes come from: the kernel's node (kernel creation) or the shape-inference context (model load).
// Type() tells an absent attribute (ORT_OP_ATTR_UNDEFINED: the default applies) from one that is set, so that an
// attribute set with the wrong type is an error rather than the default.
class AttrSource {
 public:
  virtual ~AttrSource() = default;
  virtual OrtOpAttrType Type(const char* name) const = 0;
  virtual int64_t Int(const char* name) const = 0;
  virtual float Float(const char* name) const = 0;
  virtual std::string String(const char* name) const = 0;
};

class KernelInfoAttrs final : public AttrSource {
 public:
  explicit KernelInfoAttrs(const OrtKernelInfo* info) : info_(info) {}
  OrtOpAttrType Type(const char* name) const override;
  int64_t Int(const char* name) const override;
  float Float(const char* name) const override;
  std::string String(const char* name) const override;

 private:
  const OrtKernelInfo* info_;
};

class InferContextAttrs final : public AttrSource {
 public:
  explicit InferContextAttrs(OrtShapeInferContext* raw) : raw_(raw), ctx_(&Ort::GetApi(), raw) {}
  OrtOpAttrType Type(const char* name) const override;
  int64_t Int(const char* name) const override;
  float Float(const char* name) const override;
  std::string String(const char* name) const override;

 private:
  OrtShapeInferContext* raw_;
  mutable Ort::ShapeInferContext ctx_;
};

// Typed reads: an absent attribute takes `fallback`; one set with another type fails naming the op.
int64_t ReadInt(const std::string& op, const AttrSource& src, const char* name, int64_t fallback);
float ReadFloat(const std::string& op, const AttrSource& src, const char* name, float fallback);
std::string ReadString(const std::string& op, const AttrSource& src, const char* name, const char* fallback);

// Reads with the range checks of the schemas.
bool ReadFlag(const std::string& op, const AttrSource& src, const char* name, int64_t fallback);  // 0 or 1
int64_t ReadAtLeast(const std::string& op, const AttrSource& src, const char* name, int64_t fallback, int64_t min,
                    const char* note = nullptr);
std::string ReadOneOf(const std::string& op, const AttrSource& src, const char* name, const char* fallback,
                      std::initializer_list<const char*> allowed);

// "an int", "a float", ... for messages.
const char* AttrTypeName(OrtOpAttrType type);

// Runs `body`, turning what it throws into an ORT status (argument errors -> ORT_INVALID_ARGUMENT).
template <typename F>
OrtStatus* Guard(F&& body) {
  try {
    body();
    return nullptr;
  } catch (const std::invalid_argument& e) {
    return Ort::GetApi().CreateStatus(ORT_INVALID_ARGUMENT, e.what());
  } catch (const Ort::Exception& e) {
    return Ort::GetApi().CreateStatus(e.GetOrtErrorCode(), e.what());
  } catch (const std::exception& e) {
    return Ort::GetApi().CreateStatus(ORT_FAIL, e.what());
  }
}

// The shape-inference hook of an op: runs `infer` at model load. ORT does not act on the status this hook returns,
// so a contract violation is thrown (ORT turns it into a load error with the message).
using InferFn = void (*)(Ort::ShapeInferContext&, OrtShapeInferContext*);
template <InferFn infer>
OrtStatusPtr InferShapeFn(const OrtCustomOp*, OrtShapeInferContext* raw) {
  Ort::ShapeInferContext ctx(&Ort::GetApi(), raw);
  infer(ctx, raw);
  return nullptr;
}

}  // namespace spt::binding
