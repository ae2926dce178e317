#include "binding/ort_attrs.h"

#include <cstddef>
#include <cstdint>
#include <sstream>

namespace spt::binding {

void FailAttr(const std::string& op, const char* name, const std::string& what) {
  throw std::invalid_argument(op + ": attribute '" + name + "' " + what);
}

OrtOpAttrType KernelInfoAttrs::Type(const char* name) const {
  // The kernel-info API has no type query: probe the getters of the kinds our ops use.
  const OrtApi& api = Ort::GetApi();
  auto ok = [&](OrtStatus* status) {
    if (status == nullptr) return true;
    api.ReleaseStatus(status);
    return false;
  };
  int64_t i = 0;
  float f = 0.0f;
  std::size_t size = 0;
  if (ok(api.KernelInfoGetAttribute_int64(info_, name, &i))) return ORT_OP_ATTR_INT;
  if (ok(api.KernelInfoGetAttribute_float(info_, name, &f))) return ORT_OP_ATTR_FLOAT;
  if (ok(api.KernelInfoGetAttribute_string(info_, name, nullptr, &size))) return ORT_OP_ATTR_STRING;
  size = 0;
  if (ok(api.KernelInfoGetAttributeArray_int64(info_, name, nullptr, &size))) return ORT_OP_ATTR_INTS;
  size = 0;
  if (ok(api.KernelInfoGetAttributeArray_float(info_, name, nullptr, &size))) return ORT_OP_ATTR_FLOATS;
  return ORT_OP_ATTR_UNDEFINED;
}

int64_t KernelInfoAttrs::Int(const char* name) const { return Ort::ConstKernelInfo(info_).GetAttribute<int64_t>(name); }

float KernelInfoAttrs::Float(const char* name) const { return Ort::ConstKernelInfo(info_).GetAttribute<float>(name); }

std::string KernelInfoAttrs::String(const char* name) const {
  return Ort::ConstKernelInfo(info_).GetAttribute<std::string>(name);
}

OrtOpAttrType InferContextAttrs::Type(const char* name) const {
  const OrtApi& api = Ort::GetApi();
  const OrtOpAttr* attr = nullptr;
  if (OrtStatus* status = api.ShapeInferContext_GetAttribute(raw_, name, &attr)) {
    api.ReleaseStatus(status);  // not set on the node
    return ORT_OP_ATTR_UNDEFINED;
  }
  if (attr == nullptr) return ORT_OP_ATTR_UNDEFINED;
  OrtOpAttrType type = ORT_OP_ATTR_UNDEFINED;
  Ort::ThrowOnError(api.OpAttr_GetType(attr, &type));
  return type;
}

int64_t InferContextAttrs::Int(const char* name) const { return ctx_.GetAttrInt(name); }

float InferContextAttrs::Float(const char* name) const { return ctx_.GetAttrFloat(name); }

std::string InferContextAttrs::String(const char* name) const { return ctx_.GetAttrString(name); }

namespace {

bool Present(const std::string& op, const AttrSource& src, const char* name, OrtOpAttrType want) {
  const OrtOpAttrType type = src.Type(name);
  if (type == ORT_OP_ATTR_UNDEFINED) return false;
  if (type != want) FailAttr(op, name, std::string("must be ") + AttrTypeName(want) + "; got " + AttrTypeName(type));
  return true;
}

}  // namespace

int64_t ReadInt(const std::string& op, const AttrSource& src, const char* name, int64_t fallback) {
  return Present(op, src, name, ORT_OP_ATTR_INT) ? src.Int(name) : fallback;
}

float ReadFloat(const std::string& op, const AttrSource& src, const char* name, float fallback) {
  return Present(op, src, name, ORT_OP_ATTR_FLOAT) ? src.Float(name) : fallback;
}

std::string ReadString(const std::string& op, const AttrSource& src, const char* name, const char* fallback) {
  return Present(op, src, name, ORT_OP_ATTR_STRING) ? src.String(name) : std::string(fallback);
}

bool ReadFlag(const std::string& op, const AttrSource& src, const char* name, int64_t fallback) {
  const int64_t v = ReadInt(op, src, name, fallback);
  if (v != 0 && v != 1) FailAttr(op, name, "must be 0 or 1; got " + std::to_string(v));
  return v == 1;
}

int64_t ReadAtLeast(const std::string& op, const AttrSource& src, const char* name, int64_t fallback, int64_t min,
                    const char* note) {
  const int64_t v = ReadInt(op, src, name, fallback);
  if (v < min) {
    FailAttr(op, name, "must be >= " + std::to_string(min) + (note ? std::string(" (") + note + ")" : std::string()) +
                           "; got " + std::to_string(v));
  }
  return v;
}

std::string ReadOneOf(const std::string& op, const AttrSource& src, const char* name, const char* fallback,
                      std::initializer_list<const char*> allowed) {
  std::string v = ReadString(op, src, name, fallback);
  for (const char* a : allowed) {
    if (v == a) return v;
  }
  std::ostringstream text;
  if (allowed.size() == 1) {
    text << "only \"" << *allowed.begin() << "\" is supported";
  } else if (allowed.size() == 2) {
    text << "must be \"" << *allowed.begin() << "\" or \"" << *(allowed.begin() + 1) << "\"";
  } else {
    text << "must be one of ";
    bool first = true;
    for (const char* a : allowed) {
      text << (first ? "" : ", ") << a;
      first = false;
    }
  }
  text << "; got \"" << v << "\"";
  FailAttr(op, name, text.str());
}

const char* AttrTypeName(OrtOpAttrType type) {
  switch (type) {
    case ORT_OP_ATTR_INT: return "an int";
    case ORT_OP_ATTR_INTS: return "a list of ints";
    case ORT_OP_ATTR_FLOAT: return "a float";
    case ORT_OP_ATTR_FLOATS: return "a list of floats";
    case ORT_OP_ATTR_STRING: return "a string";
    case ORT_OP_ATTR_STRINGS: return "a list of strings";
    case ORT_OP_ATTR_GRAPH: return "a graph";
    case ORT_OP_ATTR_TENSOR: return "a tensor";
    default: return "an attribute of another type";
  }
}

}  // namespace spt::binding
