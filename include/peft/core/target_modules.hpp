#pragma once
/// \file target_modules.hpp
/// Which modules an adapter attaches to, with Hugging Face PEFT's matching rules:
/// - a list entry matches a module name exactly or as a dot-boundary suffix ("q_proj" matches
///   "model.layers.0.self_attn.q_proj");
/// - a single string is a regex that must match the whole name ("all-linear" is special);
/// - exclude_modules (same rules) wins over target_modules;
/// - layers_to_transform keeps only layers whose index follows `layers_pattern` (or, without one,
///   any `<name>.<index>.` component); it applies to list targets, as in PEFT.

#include <peft/core/error.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <optional>
#include <regex>
#include <string>
#include <utility>
#include <vector>

namespace peft {

/// A list of names or a single full-match regex (or nothing).
class TargetModules {
 public:
  TargetModules() = default;
  TargetModules(std::initializer_list<std::string> names) : list_(names), kind_(Kind::list) {}
  TargetModules(std::vector<std::string> names) : list_(std::move(names)), kind_(Kind::list) {}
  TargetModules(std::string regex) : regex_(std::move(regex)), kind_(Kind::regex) {}
  TargetModules(const char* regex) : TargetModules(std::string(regex)) {}

  bool empty() const { return kind_ == Kind::none || (kind_ == Kind::list && list_.empty()); }
  bool is_list() const { return kind_ == Kind::list; }
  bool is_regex() const { return kind_ == Kind::regex; }
  bool is_all_linear() const { return kind_ == Kind::regex && regex_ == "all-linear"; }
  const std::vector<std::string>& list() const { return list_; }
  const std::string& regex() const { return regex_; }

  /// Throws ConfigError when a regex does not compile (checked when a config is read, before any
  /// module is matched). `field` names the config field for the message.
  void check(const std::string& field) const {
    if (kind_ != Kind::regex || is_all_linear()) return;
    try {
      std::regex re(regex_, std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      throw ConfigError("field '" + field + "': expected a valid regex (ECMAScript), received '" + regex_ + "': " + e.what());
    }
  }

  /// PEFT's rule: regex full match, exact name, or dot-boundary suffix.
  bool matches(const std::string& name) const {
    switch (kind_) {
      case Kind::none: return false;
      case Kind::regex:
        try {
          return std::regex_match(name, std::regex(regex_, std::regex::ECMAScript));
        } catch (const std::regex_error& e) {
          throw ConfigError("target pattern '" + regex_ + "' is not a valid regex: " + e.what());
        }
      case Kind::list:
        for (const auto& t : list_)
          if (name == t || (name.size() > t.size() && name.compare(name.size() - t.size(), t.size(), t) == 0 &&
                            name[name.size() - t.size() - 1] == '.'))
            return true;
        return false;
    }
    return false;
  }

  /// JSON as PEFT writes it: null, a string, or a list.
  nlohmann::ordered_json to_json() const {
    if (kind_ == Kind::regex) return regex_;
    if (kind_ == Kind::list) return list_;
    return nullptr;
  }
  static TargetModules from_json(const nlohmann::ordered_json& j, const std::string& field) {
    if (j.is_null()) return {};
    if (j.is_string()) return TargetModules(j.get<std::string>());
    if (j.is_array()) {
      std::vector<std::string> v;
      for (const auto& e : j) {
        if (!e.is_string()) throw ConfigError("'" + field + "' must hold strings, received " + j.dump());
        v.push_back(e.get<std::string>());
      }
      return TargetModules(std::move(v));
    }
    throw ConfigError("'" + field + "' must be null, a string or a list of strings, received " + j.dump());
  }

 private:
  enum class Kind { none, list, regex };
  std::vector<std::string> list_;
  std::string regex_;
  Kind kind_ = Kind::none;
};

/// The last component of a dotted module path ("bert.encoder.layer.0.output" -> "output").
inline std::string last_component(const std::string& name) {
  const auto dot = name.rfind('.');
  return dot == std::string::npos ? name : name.substr(dot + 1);
}

/// The index of the layer a module belongs to, PEFT's way: the number after `<pattern>.` (any
/// component when `patterns` is empty) that is followed by another component.
inline std::optional<int64_t> layer_index(const std::string& name, const std::vector<std::string>& patterns) {
  std::smatch m;
  if (patterns.empty()) {
    static const std::regex any(R"(.*\.[^.]*\.(\d+)\..*)");
    if (std::regex_match(name, m, any)) return std::stoll(m[1].str());
    return std::nullopt;
  }
  for (const auto& p : patterns) {
    std::regex re(".*\\." + p + "\\.(\\d+)\\..*");
    if (std::regex_match(name, m, re)) return std::stoll(m[1].str());
  }
  return std::nullopt;
}

/// The part of a config that decides where an adapter goes.
struct TargetRules {
  TargetModules target_modules;
  TargetModules exclude_modules;
  std::vector<int64_t> layers_to_transform;
  std::vector<std::string> layers_pattern;

  /// Throws ConfigError when target_modules or exclude_modules is a regex that does not compile.
  void check() const {
    target_modules.check("target_modules");
    exclude_modules.check("exclude_modules");
  }

  /// True when `name` is targeted (before any op-kind filtering such as all-linear).
  bool matches(const std::string& name) const {
    if (exclude_modules.matches(name)) return false;
    if (!target_modules.matches(name)) return false;
    if (target_modules.is_list() && !layers_to_transform.empty()) {
      bool exact = false;
      for (const auto& t : target_modules.list()) exact = exact || t == name;
      if (exact) return true;  // PEFT applies the layer filter to suffix matches only
      auto idx = layer_index(name, layers_pattern);
      if (!idx) return false;
      for (auto l : layers_to_transform)
        if (l == *idx) return true;
      return false;
    }
    return true;
  }

  /// For methods that pick modules by op kind when target_modules is empty: whether `name` passes
  /// exclude_modules and layers_to_transform.
  bool admits(const std::string& name) const {
    if (exclude_modules.matches(name)) return false;
    if (layers_to_transform.empty()) return true;
    auto idx = layer_index(name, layers_pattern);
    return idx && std::count(layers_to_transform.begin(), layers_to_transform.end(), *idx) > 0;
  }
};

}  // namespace peft
