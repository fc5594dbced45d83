#pragma once
// Every difference between the LibTorch versions we build against (Debian's 1.13 and the 2.x inside a
// pip PyTorch) lives here, keyed on the version macros, so the rest of the library has no #if.

#include <torch/version.h>

#include <variant>

#if TORCH_VERSION_MAJOR >= 2
#define PEFT_TORCH2 1
#else
#define PEFT_TORCH2 0
#endif

// at::rms_norm and at::_fused_adamw_ on CPU and CUDA (2.4), scaled_dot_product_attention's enable_gqa (2.5).
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
#define PEFT_HAS_FUSED_RMS_NORM 1
#define PEFT_HAS_FUSED_ADAMW 1
#else
#define PEFT_HAS_FUSED_RMS_NORM 0
#define PEFT_HAS_FUSED_ADAMW 0
#endif
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 5)
#define PEFT_HAS_SDPA_GQA 1
#else
#define PEFT_HAS_SDPA_GQA 0
#endif

namespace peft::detail {

/// True when variant `v` holds a T. LibTorch 1.13 options use c10::variant, 2.x std::variant; an
/// unqualified get_if finds the right one by argument-dependent lookup.
template <class T, class Variant>
const T* get_ptr(const Variant& v) {
  using std::get_if;
  return get_if<T>(&v);
}
template <class T, class Variant>
bool holds(const Variant& v) {
  return get_ptr<T>(v) != nullptr;
}

/// "1.13.1" style version of the LibTorch we were compiled against.
inline const char* torch_version() { return TORCH_VERSION; }

}  // namespace peft::detail
