#pragma once
/// \file models/common.hpp
/// What the model zoo shares: reading Hugging Face config.json files, the PretrainedModel interface
/// that load_pretrained / save_pretrained use, and small layout modules that give Hugging Face's
/// module paths (`attention.self.query`, `intermediate.dense`, ...).

#include <peft/core/detail/json_fields.hpp>
#include <peft/core/error.hpp>
#include <peft/slots/embedding.hpp>
#include <peft/slots/layer_norm.hpp>
#include <peft/slots/linear.hpp>

#include <nlohmann/json.hpp>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

#include <fstream>
#include <sstream>
#include <string>

namespace peft::models {

using json = nlohmann::ordered_json;

/// Implemented by every model of the zoo.
class PretrainedModel {
 public:
  virtual ~PretrainedModel() = default;
  /// The model's config.json (Hugging Face's keys, with model_type and architectures).
  virtual json config_json() const = 0;
  /// Checkpoint keys the model does not need even in strict mode (a tied lm_head.weight, old
  /// position_ids / inv_freq buffers), as Hugging Face ignores them.
  virtual bool ignorable_key(const std::string& key) const {
    (void)key;
    return false;
  }
  /// Module paths of the task head (`classifier`): when a checkpoint of the bare model lacks them,
  /// load_pretrained keeps their fresh initialization (as Hugging Face does) and reports them.
  virtual std::vector<std::string> head_modules() const { return {}; }
};

/// Hugging Face's weight initialization: Linear / Conv2d weights and Embedding tables N(0, std), biases
/// zero (and an embedding's padding row), norms weight 1 and bias 0.
inline void init_weights(torch::nn::Module& model, double std) {
  torch::NoGradGuard no_grad;
  std::vector<torch::nn::Module*> all{&model};  // named_modules(include_self) needs a shared_ptr
  for (const auto& m : model.modules(false)) all.push_back(m.get());
  for (auto* module : all) {
    auto* slot = dynamic_cast<TunableSlot*>(module);
    if (!slot) continue;
    const std::string kind = slot->op_kind();
    auto w = slot->base_weights();
    if (kind == "Linear" || kind == "Conv2d" || kind == "Embedding") {
      w.weight.normal_(0.0, std);
      if (kind == "Embedding")
        if (auto* e = dynamic_cast<EmbeddingImpl*>(slot); e && e->options.padding_idx())
          w.weight[*e->options.padding_idx()].zero_();
    } else if (kind == "LayerNorm" || kind == "RMSNorm") {
      if (w.weight.defined()) w.weight.fill_(1.0);
    }
    if (w.bias.defined()) w.bias.zero_();
  }
}

namespace detail {

/// Reads and parses a JSON file; errors name the file.
inline json read_json_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError("cannot open '" + path + "'");
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return json::parse(ss.str());
  } catch (const nlohmann::json::exception& e) {
    throw ConfigError("'" + path + "' is not valid JSON: " + e.what());
  }
}

/// Hugging Face's id2label for `n` labels with default names: {"0": "LABEL_0", ...}.
inline json default_id2label(int64_t n) {
  json labels = json::object();
  for (int64_t i = 0; i < n; ++i) labels[std::to_string(i)] = "LABEL_" + std::to_string(i);
  return labels;
}

/// Field access with the config's source named in every error.
class ConfigReader {
 public:
  ConfigReader(const json& j, std::string source) : j_(j), source_(std::move(source)) {
    if (!j_.is_object()) throw ConfigError("'" + source_ + "': expected a JSON object, received " + j_.type_name());
  }
  /// A key the architecture cannot do without.
  template <class T>
  T required(const char* key) const {
    if (!j_.contains(key) || j_.at(key).is_null())
      throw ConfigError("'" + source_ + "': required field '" + key + "' is missing");
    T v{};
    peft::detail::read_field(j_, key, v, source_);
    return v;
  }
  /// An optional key (missing or null keeps `fallback`).
  template <class T>
  T optional(const char* key, T fallback) const {
    peft::detail::read_field(j_, key, fallback, source_);
    return fallback;
  }
  /// Hugging Face's num_labels: the size of id2label when present, else num_labels, else 2.
  int64_t num_labels() const {
    if (j_.contains("id2label") && j_.at("id2label").is_object()) return static_cast<int64_t>(j_.at("id2label").size());
    return optional<int64_t>("num_labels", 2);
  }
  void positive(const char* key, int64_t v) const {
    if (v <= 0) throw ConfigError("'" + source_ + "': field '" + key + "' must be positive, received " + std::to_string(v));
  }
  const std::string& source() const { return source_; }

 private:
  const json& j_;
  std::string source_;
};

/// A [B, S] padding mask (1 = token) widened to `length` by ones in front: prompt tuning puts that many
/// virtual tokens before the given ones, and every query sees them. Undefined stays undefined.
inline at::Tensor extend_mask_front(const at::Tensor& mask, int64_t length) {
  if (!mask.defined() || mask.size(1) >= length) return mask;
  return at::cat({at::ones({mask.size(0), length - mask.size(1)}, mask.options()), mask}, 1);
}

}  // namespace detail

namespace layout {

/// A Linear named `dense`, optionally followed (outside) by a LayerNorm named `LayerNorm`: Hugging
/// Face's BertSelfOutput / BertIntermediate / BertOutput / ViT*Output / *Pooler containers.
class DenseImpl : public torch::nn::Cloneable<DenseImpl> {
 public:
  DenseImpl(int64_t in, int64_t out, bool layer_norm = false, double eps = 1e-12)
      : in_(in), out_(out), layer_norm_(layer_norm), eps_(eps) {
    reset();
  }
  void reset() override {
    dense = register_module("dense", Linear(LinearOptions(in_, out_)));
    if (layer_norm_) LayerNorm = register_module("LayerNorm", peft::LayerNorm(LayerNormOptions({out_}).eps(eps_)));
  }
  Linear dense{nullptr};
  peft::LayerNorm LayerNorm{nullptr};

 private:
  int64_t in_, out_;
  bool layer_norm_;
  double eps_;
};
TORCH_MODULE(Dense);

/// Linear slots `query`, `key`, `value` (Hugging Face's BertSelfAttention / ViTSelfAttention).
class QkvImpl : public torch::nn::Cloneable<QkvImpl> {
 public:
  QkvImpl(int64_t hidden, int64_t all_head, bool bias) : hidden_(hidden), all_head_(all_head), bias_(bias) { reset(); }
  void reset() override {
    query = register_module("query", Linear(LinearOptions(hidden_, all_head_).bias(bias_)));
    key = register_module("key", Linear(LinearOptions(hidden_, all_head_).bias(bias_)));
    value = register_module("value", Linear(LinearOptions(hidden_, all_head_).bias(bias_)));
  }
  Linear query{nullptr}, key{nullptr}, value{nullptr};

 private:
  int64_t hidden_, all_head_;
  bool bias_;
};
TORCH_MODULE(Qkv);

}  // namespace layout

inline at::Tensor maybe_dropout(const at::Tensor& x, double p, bool training) {
  return training && p > 0 ? at::dropout(x, p, true) : x;
}

}  // namespace peft::models
