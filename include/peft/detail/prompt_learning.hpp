#pragma once
// The fields PEFT's prompt-learning configs (PromptTuningConfig, PrefixTuningConfig) share, read and
// written with PEFT's names. Unlike the layer tuners, these configs have no target_modules in PEFT:
// the model tells where the tokens go, and attach() fills token_dim, num_layers and
// num_attention_heads from the targeted modules.

#include <peft/detail/json_fields.hpp>
#include <peft/error.hpp>
#include <peft/version.hpp>

#include <string>
#include <vector>

namespace peft::detail {

struct PromptLearningFields {
  std::string& base_model_name_or_path;
  std::string& revision;
  std::string& task_type;
  bool& inference_mode;
  int64_t& num_virtual_tokens;
  int64_t& token_dim;
  int64_t& num_transformer_submodules;
  int64_t& num_attention_heads;
  int64_t& num_layers;
  std::vector<std::string>& modules_to_save;

  void write(ojson& j, const std::string& peft_type) const {
    j["peft_type"] = peft_type;
    j["base_model_name_or_path"] = null_if_empty(base_model_name_or_path);
    j["revision"] = null_if_empty(revision);
    j["task_type"] = null_if_empty(task_type);
    j["inference_mode"] = inference_mode;
    j["num_virtual_tokens"] = num_virtual_tokens;
    j["token_dim"] = token_dim > 0 ? ojson(token_dim) : ojson(nullptr);
    j["num_transformer_submodules"] = num_transformer_submodules;
    j["num_attention_heads"] = num_attention_heads > 0 ? ojson(num_attention_heads) : ojson(nullptr);
    j["num_layers"] = num_layers > 0 ? ojson(num_layers) : ojson(nullptr);
    j["modules_to_save"] = null_if_empty(modules_to_save);
  }
  void read(const ojson& j, const std::string& source) const {
    read_field(j, "base_model_name_or_path", base_model_name_or_path, source);
    read_field(j, "revision", revision, source);
    read_field(j, "task_type", task_type, source);
    read_field(j, "inference_mode", inference_mode, source);
    read_field(j, "num_virtual_tokens", num_virtual_tokens, source);
    read_field(j, "token_dim", token_dim, source);
    read_field(j, "num_transformer_submodules", num_transformer_submodules, source);
    read_field(j, "num_attention_heads", num_attention_heads, source);
    read_field(j, "num_layers", num_layers, source);
    modules_to_save = read_string_list(j, "modules_to_save", source);
  }
  void validate(const std::string& cls) const {
    if (num_virtual_tokens <= 0)
      throw ConfigError(cls + ": num_virtual_tokens must be positive, received " + std::to_string(num_virtual_tokens));
    if (num_transformer_submodules != 1)
      throw ConfigError(cls + ": num_transformer_submodules must be 1 (encoder-only and decoder-only models), received " +
                        std::to_string(num_transformer_submodules));
    if (token_dim < 0 || num_layers < 0 || num_attention_heads < 0)
      throw ConfigError(cls + ": token_dim, num_layers and num_attention_heads must not be negative");
  }
};

/// Sets a model-derived field, or checks it against the value a loaded config already has.
inline void fill_or_check(int64_t& field, int64_t value, const char* name, const std::string& cls) {
  if (field > 0 && field != value)
    throw MatchError(cls + ": the adapter was made for " + name + " = " + std::to_string(field) + ", but the model has " +
                     std::to_string(value));
  field = value;
}

}  // namespace peft::detail
