#pragma once
// Every difference between the LibTorch versions we build against (Debian's 1.13 and the 2.x inside a
// pip PyTorch) lives here, keyed on the version macros, so the rest of the library has no #if.

#include <torch/version.h>

#include <optional>

#if TORCH_VERSION_MAJOR >= 2
#define PEFT_TORCH2 1
#else
#define PEFT_TORCH2 0
#endif

namespace peft::detail {

#if PEFT_TORCH2 && (TORCH_VERSION_MAJOR > 2 || TORCH_VERSION_MINOR >= 4)
// From 2.4 c10::optional is std::optional.
template <class T>
using optional = std::optional<T>;
inline constexpr auto nullopt = std::nullopt;
#else
}  // namespace peft::detail
#include <c10/util/Optional.h>
namespace peft::detail {
template <class T>
using optional = c10::optional<T>;
inline constexpr auto nullopt = c10::nullopt;
#endif

/// "1.13.1" style version of the LibTorch we were compiled against.
inline const char* torch_version() { return TORCH_VERSION; }

}  // namespace peft::detail
