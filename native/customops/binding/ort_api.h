// Single include point for the ORT C/C++ API inside the binding layer. The library initializes the API
// itself (from the OrtApiBase that RegisterCustomOps receives), so every binding file must include this
// header rather than onnxruntime_cxx_api.h directly.
#pragma once

#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT
#include "onnxruntime_lite_custom_op.h"

namespace spt::binding {

inline constexpr const char* kDomain = "spt";
inline constexpr int kOpsetVersion = 1;

// Each op family adds its kernels to the domain. The ops are created once and live for the process:
// ORT keeps raw pointers to them in every session that registered the domain.
void AddAttentionOps(Ort::CustomOpDomain& domain);
void AddFfnOps(Ort::CustomOpDomain& domain);

}  // namespace spt::binding
