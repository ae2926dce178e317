// Attribute types as the kernel-creation API sees them, so that an attribute set with the wrong type is an
// error rather than silently replaced by its default.
#pragma once

#include "binding/ort_api.h"

namespace spt::binding {

// The type of attribute `name` on the kernel's node, or ORT_OP_ATTR_UNDEFINED when it is not set. The
// kernel-info API has no type query, so this probes the getters of the kinds our ops use.
OrtOpAttrType KernelAttrType(const OrtKernelInfo* info, const char* name);

// "an int", "a float", ... for messages.
const char* AttrTypeName(OrtOpAttrType type);

}  // namespace spt::binding
