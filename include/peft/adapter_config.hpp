#pragma once
/// \file adapter_config.hpp
/// The interface every method's config implements (LoraConfig, BitFitConfig, ...). attach(), save and
/// load work through it, so a new method plugs in without touching them.

#include <peft/target_modules.hpp>
#include <peft/tunable.hpp>

#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <vector>

namespace peft {

class AdapterConfig {
 public:
  virtual ~AdapterConfig() = default;

  /// PEFT's peft_type: "LORA", or ours ("BITFIT").
  virtual std::string peft_type() const = 0;
  /// Where the adapter goes.
  virtual TargetRules target_rules() const = 0;
  /// Modules trained in full and saved with the adapter (PEFT's modules_to_save).
  virtual std::vector<std::string> saved_modules() const { return {}; }
  /// Which base biases train in full and are saved with the adapter: "none", "all" or "<method>_only".
  virtual std::string bias_mode() const { return "none"; }

  /// Whether `slot` (named `name`) is targeted. Default: the target rules, where "all-linear" means
  /// every Linear slot except an output layer called lm_head. Methods may widen or narrow this.
  virtual bool targets(const TunableSlot& slot, const std::string& name) const;

  /// Builds a freshly initialized tuner for `slot` (named `name`), or throws MatchError if the method
  /// cannot adapt that kind of op. `self` is this config, shared by every tuner of the adapter.
  virtual std::shared_ptr<torch::nn::Module> make_tuner(TunableSlot& slot, const std::string& name,
                                                        const std::shared_ptr<const AdapterConfig>& self) const = 0;

  /// adapter_config.json, with PEFT's field names where PEFT has the method.
  virtual nlohmann::ordered_json to_json() const = 0;
  virtual std::shared_ptr<AdapterConfig> clone() const = 0;
  /// PEFT's inference_mode: the adapter stays frozen even when active.
  virtual bool frozen() const = 0;
  virtual void set_frozen(bool frozen) = 0;
  /// Checks values (ranks positive, probabilities in range...); throws ConfigError.
  virtual void validate() const {}
};

inline bool AdapterConfig::targets(const TunableSlot& slot, const std::string& name) const {
  TargetRules rules = target_rules();
  if (rules.target_modules.is_all_linear()) {
    if (std::string(slot.op_kind()) != "Linear" || rules.exclude_modules.matches(name)) return false;
    const std::string last = name.substr(name.rfind('.') == std::string::npos ? 0 : name.rfind('.') + 1);
    for (const auto& m : saved_modules())
      if (m == name || m == last) return false;
    return last != "lm_head";  // PEFT leaves the output layer out of all-linear
  }
  return rules.matches(name);
}

}  // namespace peft
