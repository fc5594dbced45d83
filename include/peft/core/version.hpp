#pragma once
/// \file version.hpp
#define PEFT_VERSION_MAJOR 0
#define PEFT_VERSION_MINOR 1
#define PEFT_VERSION_PATCH 0

namespace peft {
/// This library's version.
inline constexpr const char* version = "0.1.0";
/// The HF PEFT release whose adapter file format we write (recorded as peft_version).
inline constexpr const char* hf_peft_format_version = "0.13.2";
}  // namespace peft
