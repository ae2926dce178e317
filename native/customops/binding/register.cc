// ORT entry point: SessionOptions.RegisterCustomOpLibrary(path) loads the library and calls this.
#include <mutex>

#include "binding/ort_api.h"

namespace {

// The domain must outlive every session that uses it, so it is created once per process and re-added to
// each SessionOptions that registers the library.
Ort::CustomOpDomain& SptDomain() {
  static Ort::CustomOpDomain domain = [] {
    Ort::CustomOpDomain d{spt::binding::kDomain};
    spt::binding::AddAttentionOps(d);
    spt::binding::AddFfnOps(d);
    return d;
  }();
  return domain;
}

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  static std::once_flag init_once;
  std::call_once(init_once, [api_base] { Ort::InitApi(api_base->GetApi(ORT_API_VERSION)); });
  try {
    static std::mutex mutex;
    std::lock_guard<std::mutex> lock(mutex);
    Ort::UnownedSessionOptions session_options(options);
    session_options.Add(SptDomain());
  } catch (const Ort::Exception& e) {
    return Ort::GetApi().CreateStatus(e.GetOrtErrorCode(), e.what());
  } catch (const std::exception& e) {
    return Ort::GetApi().CreateStatus(ORT_FAIL, e.what());
  }
  return nullptr;
}
