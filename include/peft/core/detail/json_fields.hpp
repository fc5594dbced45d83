#pragma once
// Helpers to read adapter_config.json fields with PEFT's defaults and clear errors.

#include <peft/core/error.hpp>

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace peft::detail {

using ojson = nlohmann::ordered_json;

/// Reads `key` from `j` as T; a missing key or null keeps `value`. A wrong type is a ConfigError that
/// names the source and the field.
template <class T>
void read_field(const ojson& j, const char* key, T& value, const std::string& source) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return;
  try {
    value = it->get<T>();
  } catch (const nlohmann::json::exception&) {
    throw ConfigError("'" + source + "': field '" + key + "' has the wrong type (received " + it->dump() + ")");
  }
}

/// PEFT allows an int or a list for layers_to_transform, a string or a list for layers_pattern.
inline std::vector<int64_t> read_int_list(const ojson& j, const char* key, const std::string& source) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return {};
  if (it->is_number_integer()) return {it->get<int64_t>()};
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
