#pragma once
/// \file registry.hpp
/// The methods the library knows, found by PEFT's `peft_type`. Each tuner header registers its method
/// once, beside its config:
///
///     PEFT_REGISTER_METHOD(lora, LoraConfig, "LORA", "LoRA");
///
/// and adapter files, peft-cli and reports ask the registry, so they never name a method. A method
/// defined outside the library registers the same way (or by calling peft::register_method at run
/// time) and then saves and loads like a built-in one. A method is known where its header is included;
/// <peft/peft.hpp> includes all of them.

#include <peft/core/adapter_config.hpp>
#include <peft/core/error.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

namespace peft {

/// Builds a method's config from adapter_config.json; `source` names the file in errors.
using ConfigFactory =
    std::function<std::shared_ptr<AdapterConfig>(const nlohmann::ordered_json& json, const std::string& source)>;

/// One registered method.
struct MethodInfo {
  std::string peft_type;     ///< as in adapter_config.json: "LORA"
  std::string display_name;  ///< for people: "LoRA"
  ConfigFactory from_json;
};

/// peft_type -> method. Thread-safe; one instance per program (MethodRegistry::global()).
class MethodRegistry {
 public:
  static MethodRegistry& global() {
    static MethodRegistry r;
    return r;
  }

  /// Adds a method. A peft_type can be registered once: a second registration is a ConfigError naming
  /// both display names (two methods must not share a file tag).
  void add(MethodInfo m) {
    if (m.peft_type.empty() || !m.from_json)
      throw ConfigError(fmt::format("registering method '{}': expected a non-empty peft_type and a config factory",
                                    m.display_name));
    std::lock_guard<std::mutex> lock(mu_);
    auto it = methods_.find(m.peft_type);
    if (it != methods_.end())
      throw ConfigError(fmt::format("registering method '{}': peft_type '{}' is already registered by '{}'",
                                    m.display_name, m.peft_type, it->second.display_name));
    methods_.emplace(m.peft_type, std::move(m));
  }
  /// Whether `peft_type` is registered.
  bool contains(const std::string& peft_type) const {
    std::lock_guard<std::mutex> lock(mu_);
    return methods_.count(peft_type) > 0;
  }
  /// The method registered under `peft_type`; a ConfigError listing the known ones otherwise.
  MethodInfo at(const std::string& peft_type, const std::string& source = "") const {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = methods_.find(peft_type);
    if (it == methods_.end()) {
      std::vector<std::string> known;
      for (const auto& [k, v] : methods_) known.push_back(k);
      throw ConfigError(fmt::format("{}peft_type '{}' is not supported (expected one of {}; a method is known where its "
                                    "header is included, <peft/peft.hpp> includes every built-in one)",
                                    source.empty() ? "" : "'" + source + "': ", peft_type, fmt::join(known, ", ")));
    }
    return it->second;
  }
  /// Every registered method, sorted by peft_type.
  std::vector<MethodInfo> methods() const {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<MethodInfo> out;
    for (const auto& [k, v] : methods_) out.push_back(v);
    return out;
  }

 private:
  MethodRegistry() = default;
  mutable std::mutex mu_;
  std::map<std::string, MethodInfo> methods_;
};

/// Registers `Config` (an AdapterConfig with a static `from_json(json, source)` returning a Config or a
/// shared_ptr to an AdapterConfig) under `peft_type`. Returns true, so it can initialize a variable.
template <class Config>
bool register_method(const std::string& peft_type, const std::string& display_name) {
  static_assert(std::is_base_of_v<AdapterConfig, Config>, "register_method: Config must derive from peft::AdapterConfig");
  MethodRegistry::global().add(
      {peft_type, display_name,
       [](const nlohmann::ordered_json& j, const std::string& source) -> std::shared_ptr<AdapterConfig> {
         auto parsed = Config::from_json(j, source);
         if constexpr (std::is_convertible_v<decltype(parsed), std::shared_ptr<AdapterConfig>>)
           return parsed;
         else
           return std::make_shared<Config>(std::move(parsed));
       }});
  return true;
}

/// Registers a method when the program starts: one line beside the method's config. `id` names the
/// registration (unique across the program: the method's name in lower case).
#define PEFT_REGISTER_METHOD(id, Config, peft_type, display_name) \
  namespace detail::registered {                                  \
  inline const bool id = ::peft::register_method<Config>(peft_type, display_name); \
  }

/// Parses an adapter config object (as in adapter_config.json) through the registry and validates it.
inline std::shared_ptr<AdapterConfig> config_from_json(const nlohmann::ordered_json& j, const std::string& source) {
  if (!j.is_object()) throw ConfigError(fmt::format("'{}': expected a JSON object, received {}", source, j.type_name()));
  auto it = j.find("peft_type");
  if (it == j.end() || !it->is_string())
    throw ConfigError(fmt::format("'{}': expected a string field 'peft_type', received {}", source,
                                  it == j.end() ? std::string("none") : it->dump()));
  auto cfg = MethodRegistry::global().at(it->get<std::string>(), source).from_json(j, source);
  try {
    cfg->validate();
    cfg->target_rules().check();
  } catch (const ConfigError& e) {
    throw ConfigError(fmt::format("'{}': {}", source, e.message()));
  }
  return cfg;
}

}  // namespace peft
