#pragma once
// Helpers to read adapter_config.json fields with PEFT's defaults and clear errors.

#include <peft/core/error.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

namespace peft::detail {

using ojson = nlohmann::ordered_json;

template <class T>
struct is_int_list : std::false_type {};
template <class U>
struct is_int_list<std::vector<U>> : std::is_integral<U> {};

/// Whether `v` holds an integer that fits int64: nlohmann converts 2.5 to an int by truncation, which
/// would turn a config's `"r": 2.5` into rank 2 without a word. A float with an integral value (8.0)
/// is accepted, as Python would.
inline bool holds_integer(const ojson& v) {
  if (v.is_number_unsigned()) return v.get<uint64_t>() <= static_cast<uint64_t>(INT64_MAX);
  if (v.is_number_integer()) return true;
  if (!v.is_number_float()) return false;
  const double d = v.get<double>();
  return std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e18;
}
inline int64_t to_int64(const ojson& v) {
  return v.is_number_float() ? static_cast<int64_t>(v.get<double>()) : v.get<int64_t>();
}

/// Reads `key` from `j` as T; a missing key or null keeps `value`. A wrong type (also a fractional
/// number for an integer field) is a ConfigError that names the source, the field and what came.
template <class T>
void read_field(const ojson& j, const char* key, T& value, const std::string& source) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return;
  auto fail = [&](const char* expected) {
    throw ConfigError("'" + source + "': field '" + key + "' must be " + expected + ", received " + it->dump());
  };
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    if (!holds_integer(*it)) fail("an integer");
    const int64_t v = to_int64(*it);
    if (v < static_cast<int64_t>(std::numeric_limits<T>::min()) || static_cast<uint64_t>(v) > static_cast<uint64_t>(std::numeric_limits<T>::max()))
      fail("an integer in range");
    value = static_cast<T>(v);
    return;
  } else if constexpr (is_int_list<T>::value) {
    if (!it->is_array() || !std::all_of(it->begin(), it->end(), holds_integer)) fail("a list of integers");
  }
  try {
    if constexpr (is_int_list<T>::value) {
      T out;
      for (const auto& e : *it) out.push_back(static_cast<typename T::value_type>(to_int64(e)));
      value = std::move(out);
    } else {
      value = it->get<T>();
    }
  } catch (const nlohmann::json::exception&) {
    throw ConfigError("'" + source + "': field '" + key + "' has the wrong type (received " + it->dump() + ")");
  }
}

/// PEFT allows an int or a list for layers_to_transform, a string or a list for layers_pattern.
inline std::vector<int64_t> read_int_list(const ojson& j, const char* key, const std::string& source) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return {};
  if (holds_integer(*it)) return {to_int64(*it)};
  std::vector<int64_t> v;
  read_field(j, key, v, source);
  return v;
}
inline std::vector<std::string> read_string_list(const ojson& j, const char* key, const std::string& source) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return {};
  if (it->is_string()) return {it->get<std::string>()};
  std::vector<std::string> v;
  read_field(j, key, v, source);
  return v;
}

inline ojson null_if_empty(const std::string& s) { return s.empty() ? ojson(nullptr) : ojson(s); }
template <class T>
ojson null_if_empty(const std::vector<T>& v) { return v.empty() ? ojson(nullptr) : ojson(v); }

}  // namespace peft::detail
