#pragma once
/// \file adapter_config.hpp
/// The interface every method's config implements (LoraConfig, BitFitConfig, ...). attach(), save and
/// load work through it, so a new method plugs in without touching them.

#include <peft/core/detail/crtp_arg.hpp>
#include <peft/core/detail/json_fields.hpp>
#include <peft/core/target_modules.hpp>
#include <peft/core/tunable.hpp>
#include <peft/core/version.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <map>
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
  /// Whether attach() starts the adapter's copies of modules_to_save at zero (RLRR's zero_head: the
  /// official code's zero-initialised classification head).
  virtual bool zero_saved_modules() const { return false; }
  /// Which base biases train in full and are saved with the adapter: "none", "all" or "<method>_only".
  virtual std::string bias_mode() const { return "none"; }
  /// PEFT's task_type ("SEQ_CLS", "CAUSAL_LM", ...), or empty.
  virtual std::string task() const { return {}; }
  /// Appends entries to modules_to_save that are not there yet (attach() adds a classification task's
  /// heads, as PEFT does). Configs without modules_to_save ignore it.
  virtual void add_saved_modules(const std::vector<std::string>& names) { (void)names; }

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

  /// Called once the targeted modules are known (attach and load), before any tuner is built: fills
  /// fields that depend on the model (prompt learning's num_layers, token_dim...) and checks the ones
  /// a loaded file gave. `targeted` lists (module path, slot) in model order; a method may narrow it
  /// (prompt tuning keeps one embedding op of the candidates). Throws MatchError.
  virtual void complete(std::vector<std::pair<std::string, TunableSlot*>>& targeted) { (void)targeted; }
  /// Called on a config read from a file before its tuners are built: a method whose saved form
  /// differs from its training form (prefix tuning's projection MLP is saved collapsed) switches to
  /// the saved form.
  virtual void prepare_load() {}
  /// Called by load_adapter with the file's tensors (key -> shape) before any tuner is built: a method
  /// compares the sizes its config gives with the file's, so that a config that disagrees with its
  /// weights (a rank of 2^62 beside rank-8 tensors) is refused before anything is allocated. Returns
  /// the problems found (empty: none).
  virtual std::vector<std::string> check_file_shapes(const std::map<std::string, std::vector<int64_t>>& shapes) const {
    (void)shapes;
    return {};
  }

  /// Prefix of module paths in the adapter file: PEFT writes "base_model.model." for tuners that wrap
  /// layers and "base_model." for prompt learning (whose PeftModel holds the transformer directly).
  virtual std::string key_prefix() const { return "base_model.model."; }
  /// Methods whose PEFT file holds one tensor for the whole adapter (prompt and prefix tuning:
  /// `prompt_embeddings`) name it here. The per-module tensors (one per targeted module, in model
  /// order) are concatenated along joined_dim() on save and split again on load. Empty: one file
  /// tensor per module tensor.
  virtual std::string joined_key() const { return {}; }
  virtual int64_t joined_dim() const { return 0; }
};

namespace detail {

inline void append_new(std::vector<std::string>& list, const std::vector<std::string>& names) {
  for (const auto& n : names)
    if (std::find(list.begin(), list.end(), n) == list.end()) list.push_back(n);
}

/// Writes peft_type, the header and the targeting fields every config has, with PEFT's names (the
/// caller appends its own fields, then CommonConfigFields::stamp()).
inline void write_common_fields(ojson& j, const std::string& peft_type, const std::string& base_model_name_or_path,
                                const std::string& task_type, bool inference_mode, const TargetModules& target_modules,
                                const TargetModules& exclude_modules, const std::vector<int64_t>& layers_to_transform,
                                const std::vector<std::string>& layers_pattern,
                                const std::vector<std::string>& modules_to_save, bool layer_fields = true) {
  j["peft_type"] = peft_type;
  j["base_model_name_or_path"] = null_if_empty(base_model_name_or_path);
  j["task_type"] = null_if_empty(task_type);
  j["inference_mode"] = inference_mode;
  j["target_modules"] = target_modules.to_json();
  // PEFT before 0.14 rejects unknown keys (exclude_modules came in 0.14): written only when set.
  if (!exclude_modules.empty()) j["exclude_modules"] = exclude_modules.to_json();
  // Some PEFT configs (IA3's) have no layers_to_transform / layers_pattern: then they go only when set.
  if (layer_fields || !layers_to_transform.empty()) j["layers_to_transform"] = null_if_empty(layers_to_transform);
  if (layer_fields || !layers_pattern.empty()) j["layers_pattern"] = null_if_empty(layers_pattern);
  j["modules_to_save"] = null_if_empty(modules_to_save);
}

/// The fields PEFT configs share, by reference to a config's members, read with PEFT's names: the
/// header (base model, task, inference_mode), the targeting rules and modules_to_save.
struct CommonConfigFields {
  std::string& base_model_name_or_path;
  std::string& task_type;
  bool& inference_mode;
  TargetModules& target_modules;
  TargetModules& exclude_modules;
  std::vector<int64_t>& layers_to_transform;
  std::vector<std::string>& layers_pattern;
  std::vector<std::string>& modules_to_save;

  static void stamp(ojson& j) {
    j["peft_version"] = hf_peft_format_version;
    j["library"] = std::string("peft-cpp ") + version;
  }
  void read(const ojson& j, const std::string& source) const {
    if (j.contains("target_modules")) target_modules = TargetModules::from_json(j["target_modules"], "target_modules");
    if (j.contains("exclude_modules")) exclude_modules = TargetModules::from_json(j["exclude_modules"], "exclude_modules");
    layers_to_transform = read_int_list(j, "layers_to_transform", source);
    layers_pattern = read_string_list(j, "layers_pattern", source);
    modules_to_save = read_string_list(j, "modules_to_save", source);
    read_field(j, "task_type", task_type, source);
    read_field(j, "base_model_name_or_path", base_model_name_or_path, source);
    read_field(j, "inference_mode", inference_mode, source);
  }
};

}  // namespace detail

/// The fields every PEFT layer-tuner config has, with PEFT's names and chainable setters: where the
/// adapter goes (target_modules, exclude_modules, layers_to_transform, layers_pattern), what trains in
/// full (modules_to_save), and the header (task_type, base_model_name_or_path, inference_mode). A
/// method's config derives from LayerTunerConfig<Itself>, adds its own options, and writes its JSON as
/// write_common() + its fields + stamp().
///
///     class BitFitConfig : public LayerTunerConfig<BitFitConfig> { ... };
///     BitFitConfig().target_modules({"dense"}).modules_to_save({"classifier"});
template <class Derived>
class LayerTunerConfig : public AdapterConfig {
  PEFT_CRTP_ARG(TargetModules, target_modules);
  PEFT_CRTP_ARG(TargetModules, exclude_modules);
  PEFT_CRTP_ARG(std::vector<int64_t>, layers_to_transform);
  PEFT_CRTP_ARG(std::vector<std::string>, layers_pattern);
  PEFT_CRTP_ARG(std::vector<std::string>, modules_to_save);
  PEFT_CRTP_ARG(std::string, task_type);
  PEFT_CRTP_ARG(std::string, base_model_name_or_path);
  PEFT_CRTP_ARG(bool, inference_mode) = false;

 public:
  TargetRules target_rules() const override {
    return {target_modules_, exclude_modules_, layers_to_transform_, layers_pattern_};
  }
  std::vector<std::string> saved_modules() const override { return modules_to_save_; }
  std::string task() const override { return task_type_; }
  void add_saved_modules(const std::vector<std::string>& names) override { detail::append_new(modules_to_save_, names); }
  bool frozen() const override { return inference_mode_; }
  void set_frozen(bool f) override { inference_mode_ = f; }
  std::shared_ptr<AdapterConfig> clone() const override {
    return std::make_shared<Derived>(static_cast<const Derived&>(*this));
  }

 protected:
  /// peft_type, the header, the targeting fields and modules_to_save, PEFT's names and order.
  void write_common(detail::ojson& j, bool layer_fields = true) const {
    detail::write_common_fields(j, this->peft_type(), base_model_name_or_path_, task_type_, inference_mode_,
                                target_modules_, exclude_modules_, layers_to_transform_, layers_pattern_,
                                modules_to_save_, layer_fields);
  }
  /// The version stamp that ends the configs of methods PEFT does not have (PEFT's own methods go
  /// without it: PEFT before 0.14 refuses a config with keys it does not know).
  static void stamp(detail::ojson& j) { detail::CommonConfigFields::stamp(j); }
  void read_common(const detail::ojson& j, const std::string& source) {
    detail::CommonConfigFields{base_model_name_or_path_, task_type_, inference_mode_, target_modules_,
                               exclude_modules_, layers_to_transform_, layers_pattern_, modules_to_save_}
        .read(j, source);
  }
};

inline bool AdapterConfig::targets(const TunableSlot& slot, const std::string& name) const {
  TargetRules rules = target_rules();
  if (rules.target_modules.is_all_linear()) {
    if (std::string(slot.op_kind()) != "Linear" || rules.exclude_modules.matches(name)) return false;
    const std::string last = last_component(name);
    for (const auto& m : saved_modules())
      if (m == name || m == last) return false;
    return last != "lm_head";  // PEFT leaves the output layer out of all-linear
  }
  return rules.matches(name);
}

}  // namespace peft
