#pragma once
/// \file prompt_learning.hpp
/// What PEFT's prompt-learning configs (PromptTuningConfig, PrefixTuningConfig) share: the fields, read
/// and written with PEFT's names, their checks, and the file conventions (keys under "base_model.",
/// one joined `prompt_embeddings` tensor). Unlike the layer tuners these configs have no
/// target_modules in PEFT: the model tells where the tokens go, and attach() fills token_dim,
/// num_layers and num_attention_heads from the targeted modules. Ours may name the modules.

#include <peft/core/adapter_config.hpp>
#include <peft/core/detail/crtp_arg.hpp>
#include <peft/core/detail/json_fields.hpp>
#include <peft/core/error.hpp>
#include <peft/core/target_modules.hpp>

#include <fmt/format.h>

#include <string>
#include <utility>
#include <vector>

namespace peft {

template <class Derived>
class PromptLearningConfig : public AdapterConfig {
  PEFT_CRTP_ARG(int64_t, num_virtual_tokens) = 10;
  /// The modules to use; empty: found by kind and name.
  PEFT_CRTP_ARG(TargetModules, target_modules);
  PEFT_CRTP_ARG(std::vector<std::string>, modules_to_save);
  PEFT_CRTP_ARG(std::string, task_type);
  PEFT_CRTP_ARG(std::string, base_model_name_or_path);
  PEFT_CRTP_ARG(std::string, revision);
  PEFT_CRTP_ARG(bool, inference_mode) = false;
  /// Filled from the model by attach().
  PEFT_CRTP_ARG(int64_t, token_dim) = 0;
  PEFT_CRTP_ARG(int64_t, num_layers) = 0;
  PEFT_CRTP_ARG(int64_t, num_attention_heads) = 0;
  PEFT_CRTP_ARG(int64_t, num_transformer_submodules) = 1;

 public:
  TargetRules target_rules() const override { return {target_modules_, {}, {}, {}}; }
  std::vector<std::string> saved_modules() const override { return modules_to_save_; }
  std::string task() const override { return task_type_; }
  void add_saved_modules(const std::vector<std::string>& names) override { detail::append_new(modules_to_save_, names); }
  std::string key_prefix() const override { return "base_model."; }
  std::string joined_key() const override { return "prompt_embeddings"; }
  bool frozen() const override { return inference_mode_; }
  void set_frozen(bool f) override { inference_mode_ = f; }

 protected:
  /// The shared fields, PEFT's names and order; the derived config adds its own after them.
  void write_common(detail::ojson& j, const std::string& peft_type) const {
    using detail::null_if_empty;
    auto positive_or_null = [](int64_t v) { return v > 0 ? detail::ojson(v) : detail::ojson(nullptr); };
    j["peft_type"] = peft_type;
    j["base_model_name_or_path"] = null_if_empty(base_model_name_or_path_);
    j["revision"] = null_if_empty(revision_);
    j["task_type"] = null_if_empty(task_type_);
    j["inference_mode"] = inference_mode_;
    j["num_virtual_tokens"] = num_virtual_tokens_;
    j["token_dim"] = positive_or_null(token_dim_);
    j["num_transformer_submodules"] = num_transformer_submodules_;
    j["num_attention_heads"] = positive_or_null(num_attention_heads_);
    j["num_layers"] = positive_or_null(num_layers_);
    // PEFT's prompt-learning configs gained modules_to_save after 0.13, which refuses unknown keys.
    if (!modules_to_save_.empty()) j["modules_to_save"] = modules_to_save_;
  }
  /// Ours, written after the method's fields only when set (PEFT does not know target_modules for
  /// prompt learning). `stamp`: methods PEFT lacks end with our version stamp.
  void write_targets(detail::ojson& j, bool stamp = false) const {
    if (!target_modules_.empty()) j["target_modules"] = target_modules_.to_json();
    if (stamp) detail::CommonConfigFields::stamp(j);
  }
  void read_common(const detail::ojson& j, const std::string& source) {
    detail::read_field(j, "base_model_name_or_path", base_model_name_or_path_, source);
    detail::read_field(j, "revision", revision_, source);
    detail::read_field(j, "task_type", task_type_, source);
    detail::read_field(j, "inference_mode", inference_mode_, source);
    detail::read_field(j, "num_virtual_tokens", num_virtual_tokens_, source);
    detail::read_field(j, "token_dim", token_dim_, source);
    detail::read_field(j, "num_transformer_submodules", num_transformer_submodules_, source);
    detail::read_field(j, "num_attention_heads", num_attention_heads_, source);
    detail::read_field(j, "num_layers", num_layers_, source);
    modules_to_save_ = detail::read_string_list(j, "modules_to_save", source);
    if (j.contains("target_modules")) target_modules_ = TargetModules::from_json(j["target_modules"], "target_modules");
  }
  void validate_common(const std::string& cls) const {
    if (num_virtual_tokens_ <= 0)
      throw ConfigError(fmt::format("{}: num_virtual_tokens must be positive, received {}", cls, num_virtual_tokens_));
    if (num_transformer_submodules_ != 1)
      throw ConfigError(fmt::format(
          "{}: num_transformer_submodules must be 1 (encoder-only and decoder-only models), received {}", cls,
          num_transformer_submodules_));
    if (token_dim_ < 0 || num_layers_ < 0 || num_attention_heads_ < 0)
      throw ConfigError(fmt::format("{}: token_dim, num_layers and num_attention_heads must not be negative, received {}, {} and {}",
                                    cls, token_dim_, num_layers_, num_attention_heads_));
  }
};

namespace detail {

/// Sets a model-derived field, or checks it against the value a loaded config already has.
inline void fill_or_check(int64_t& field, int64_t value, const char* name, const std::string& cls) {
  if (field > 0 && field != value)
    throw MatchError(fmt::format("{}: the adapter was made for {} = {}, but the model has {}", cls, name, field, value));
  field = value;
}

}  // namespace detail
}  // namespace peft
