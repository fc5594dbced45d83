#pragma once
// Small string helpers for messages and reports. Free of LibTorch and fmt, so that the torch-free
// safetensors header parser (and its fuzzer) can use them too.

#include <cstdint>
#include <string>
#include <vector>

namespace peft::detail {

/// "[2, 3, 4]"
inline std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (std::size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

/// "a, b, c"
inline std::string join(const std::vector<std::string>& v, const char* sep = ", ") {
  std::string r;
  for (std::size_t i = 0; i < v.size(); ++i) r += (i ? sep : "") + v[i];
  return r;
}

/// 1234567 -> "1,234,567" (Hugging Face's trainable-parameter report).
inline std::string thousands(int64_t v) {
  std::string s = std::to_string(v < 0 ? -v : v), r;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (i && (s.size() - i) % 3 == 0) r += ',';
    r += s[i];
  }
  return v < 0 ? "-" + r : r;
}

}  // namespace peft::detail
