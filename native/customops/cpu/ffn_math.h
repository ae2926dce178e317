#pragma once
// The routed FFN's pointwise algebra, shared by the CPU kernels and the CUDA kernels (host and device).

#include <math.h>

#include "cpu/routed_ffn.h"

#if defined(__CUDACC__)
#define SPT_FFN_INLINE __host__ __device__ __forceinline__
#else
#define SPT_FFN_INLINE inline
#endif

namespace spt::cpu::ffn {

constexpr float kSqrtHalf = 0.70710678118654752440f;
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;
constexpr float kSqrt2OverPi = 0.79788456080286535588f;
constexpr float kGeluTanhCoeff = 0.044715f;

SPT_FFN_INLINE float Sigmoid(float z) { return 1.0f / (1.0f + ::expf(-z)); }

// act(a); for a gated activation its gate function (SwiGLU: SiLU, GEGLU: GELU, ReGLU: ReLU).
SPT_FFN_INLINE float Activate(FfnActivation act, float a) {
  switch (act) {
    case FfnActivation::kRelu:
    case FfnActivation::kReGlu: return a > 0.0f ? a : 0.0f;
    case FfnActivation::kRelu2: return a > 0.0f ? a * a : 0.0f;
    case FfnActivation::kGelu:
    case FfnActivation::kGeGlu: return 0.5f * a * (1.0f + ::erff(a * kSqrtHalf));
    case FfnActivation::kGeluTanh:
    case FfnActivation::kGeGluTanh: return 0.5f * a * (1.0f + ::tanhf(kSqrt2OverPi * (a + kGeluTanhCoeff * a * a * a)));
    case FfnActivation::kSilu:
    case FfnActivation::kSwiGlu: return a * Sigmoid(a);
  }
  return 0.0f;
}

// act'(a).
SPT_FFN_INLINE float ActivateGrad(FfnActivation act, float a) {
  switch (act) {
    case FfnActivation::kRelu:
    case FfnActivation::kReGlu: return a > 0.0f ? 1.0f : 0.0f;
    case FfnActivation::kRelu2: return a > 0.0f ? 2.0f * a : 0.0f;
    case FfnActivation::kGelu:
    case FfnActivation::kGeGlu: return 0.5f * (1.0f + ::erff(a * kSqrtHalf)) + a * kInvSqrt2Pi * ::expf(-0.5f * a * a);
    case FfnActivation::kGeluTanh:
    case FfnActivation::kGeGluTanh: {
      const float t = ::tanhf(kSqrt2OverPi * (a + kGeluTanhCoeff * a * a * a));
      return 0.5f * (1.0f + t) + 0.5f * a * (1.0f - t * t) * kSqrt2OverPi * (1.0f + 3.0f * kGeluTanhCoeff * a * a);
    }
    case FfnActivation::kSilu:
    case FfnActivation::kSwiGlu: {
      const float s = Sigmoid(a);
      return s * (1.0f + a * (1.0f - s));
    }
  }
  return 0.0f;
}

// Gate factors of one grouped row (see routed_ffn.h): input base path, output base path, output LoRA path.
struct Gates {
  float in, out_base, out_lora;
};
SPT_FFN_INLINE Gates GatesFor(FfnGate gate, float p) {
  const float g = 2.0f * p;
  switch (gate) {
    case FfnGate::kFrozenOnly: return {g, g, 1.0f};
    case FfnGate::kAll: return {1.0f, g, g};
    case FfnGate::kNone: return {1.0f, 1.0f, 1.0f};
  }
  return {1.0f, 1.0f, 1.0f};
}

}  // namespace spt::cpu::ffn
