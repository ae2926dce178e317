#include "binding/ort_attrs.h"

#include <cstddef>
#include <cstdint>

namespace spt::binding {

OrtOpAttrType KernelAttrType(const OrtKernelInfo* info, const char* name) {
  const OrtApi& api = Ort::GetApi();
  auto ok = [&](OrtStatus* status) {
    if (status == nullptr) return true;
    api.ReleaseStatus(status);
    return false;
  };
  int64_t i = 0;
  float f = 0.0f;
  std::size_t size = 0;
  if (ok(api.KernelInfoGetAttribute_int64(info, name, &i))) return ORT_OP_ATTR_INT;
  if (ok(api.KernelInfoGetAttribute_float(info, name, &f))) return ORT_OP_ATTR_FLOAT;
  if (ok(api.KernelInfoGetAttribute_string(info, name, nullptr, &size))) return ORT_OP_ATTR_STRING;
  size = 0;
  if (ok(api.KernelInfoGetAttributeArray_int64(info, name, nullptr, &size))) return ORT_OP_ATTR_INTS;
  size = 0;
  if (ok(api.KernelInfoGetAttributeArray_float(info, name, nullptr, &size))) return ORT_OP_ATTR_FLOATS;
  return ORT_OP_ATTR_UNDEFINED;
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
