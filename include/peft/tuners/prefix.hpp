#pragma once
/// \file prefix.hpp
/// Prefix tuning (arXiv 2101.00190): every self-attention gets num_virtual_tokens trainable keys and
/// values in front of its own; every query sees them (the padding mask is extended). A parallel
/// tuner on the attention op that the op runs from inside (it concatenates keys and values).
///
///     peft::attach(*bert, peft::PrefixTuningConfig().num_virtual_tokens(20).modules_to_save({"classifier"}));
///
/// With prefix_projection, training goes through PEFT's reparameterization: an embedding [n, d] ->
/// Linear(d, encoder_hidden_size) -> tanh -> Linear(encoder_hidden_size, L·2·d), shared by all layers.
/// As in PEFT, the MLP is built only for training (not in inference_mode) and never saved: the file
/// holds its output, and a loaded adapter is always plain prefixes.
///
/// File (PEFT's): `prompt_embeddings` [n, L·2·token_dim], for each token the layers in order, each
/// [keys; values] with token_dim = num_key_value_heads · head_dim (PEFT's layout for GQA models).

#include <peft/core/adapter_config.hpp>
#include <peft/core/detail/strings.hpp>
#include <peft/core/model.hpp>
#include <peft/core/tuner.hpp>
#include <peft/nn/attention.hpp>
#include <peft/tuners/prompt_learning.hpp>
#include <peft/tuners/registry.hpp>

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/linear.h>

#include <algorithm>

namespace peft {

/// PEFT's prefix encoder with projection: embedding -> Linear -> tanh -> Linear, all layers at once.
class PrefixEncoderImpl : public torch::nn::Cloneable<PrefixEncoderImpl> {
 public:
  PrefixEncoderImpl(int64_t n, int64_t token_dim, int64_t hidden, int64_t layers)
      : n(n), token_dim(token_dim), hidden(hidden), layers(layers) {
    reset();
  }
  int64_t n, token_dim, hidden, layers;
  at::Tensor embedding;
  torch::nn::Linear first{nullptr}, second{nullptr};

  void reset() override {
    embedding = detail::register_keep_grad(*this, "embedding", embedding, at::randn({n, token_dim}));
    first = register_module("transform_0", torch::nn::Linear(token_dim, hidden));
    second = register_module("transform_2", torch::nn::Linear(hidden, layers * 2 * token_dim));
  }
  /// The [n, 2·token_dim] keys and values of one layer: the shared first layer, then that layer's rows
  /// of the second (the same numbers PEFT's full MLP output has in that layer's columns).
  at::Tensor layer(int64_t l) {
    const auto w = 2 * token_dim;
    auto h = at::tanh(first(embedding));
    return at::linear(h, second->weight.narrow(0, l * w, w), second->bias.narrow(0, l * w, w));
  }
};
TORCH_MODULE(PrefixEncoder);

class PrefixTuningConfig : public PromptLearningConfig<PrefixTuningConfig> {
 public:
  PrefixTuningConfig() { num_virtual_tokens_ = 20; }
  /// Train through PEFT's MLP reparameterization (collapsed on save).
  TORCH_ARG(bool, prefix_projection) = false;
  /// Hidden width of that MLP; 0: token_dim.
  TORCH_ARG(int64_t, encoder_hidden_size) = 0;

 public:
  std::string peft_type() const override { return "PREFIX_TUNING"; }
  int64_t joined_dim() const override { return 1; }
  /// Whether tuners train through the MLP (PEFT: prefix_projection and not inference_mode).
  bool projected() const { return prefix_projection_ && !inference_mode_; }

  void validate() const override {
    validate_common("PrefixTuningConfig");
    if (encoder_hidden_size_ < 0) throw ConfigError("PrefixTuningConfig: encoder_hidden_size must not be negative");
  }
  bool targets(const TunableSlot& slot, const std::string& name) const override {
    if (!target_modules_.empty()) return target_modules_.matches(name);
    return std::string(slot.op_kind()) == "Attention";
  }
  void complete(std::vector<std::pair<std::string, TunableSlot*>>& targeted) override {
    const std::string cls = "PrefixTuningConfig";
    int64_t kv_heads = 0, head_dim = 0;
    names_.clear();
    for (const auto& [name, slot] : targeted) {
      auto* a = dynamic_cast<const nn::AttentionShape*>(slot);
      if (!a)
        throw MatchError(cls + ": module '" + name + "' (" + slot->op_kind() +
                         ") is not an attention op of the model zoo; prefixes go to attention");
      if (kv_heads && (a->num_kv_heads() != kv_heads || a->head_dim() != head_dim))
        throw MatchError(cls + ": attention ops differ in key/value heads or head size ('" + name + "')");
      kv_heads = a->num_kv_heads(), head_dim = a->head_dim();
      names_.push_back(name);
    }
    detail::fill_or_check(num_layers_, static_cast<int64_t>(targeted.size()), "num_layers", cls);
    detail::fill_or_check(token_dim_, kv_heads * head_dim, "token_dim", cls);
    detail::fill_or_check(num_attention_heads_, kv_heads, "num_attention_heads", cls);
    if (encoder_hidden_size_ == 0) encoder_hidden_size_ = token_dim_;
    encoder_ = projected() ? std::make_shared<PrefixEncoderImpl>(num_virtual_tokens_, token_dim_, encoder_hidden_size_, num_layers_)
                           : nullptr;
  }
  /// A saved adapter holds plain prefixes: load them as such.
  void prepare_load() override { prefix_projection_ = false; }

  std::shared_ptr<torch::nn::Module> make_tuner(TunableSlot& slot, const std::string& name,
                                                const std::shared_ptr<const AdapterConfig>& self) const override;

  nlohmann::ordered_json to_json() const override {
    nlohmann::ordered_json j;
    write_common(j, "PREFIX_TUNING");
    j["encoder_hidden_size"] = encoder_hidden_size_ > 0 ? nlohmann::ordered_json(encoder_hidden_size_) : nlohmann::ordered_json(nullptr);
    j["prefix_projection"] = prefix_projection_;
    write_targets(j);
    return j;
  }
  static PrefixTuningConfig from_json(const nlohmann::ordered_json& j, const std::string& source) {
    PrefixTuningConfig c;
    c.read_common(j, source);
    detail::read_field(j, "encoder_hidden_size", c.encoder_hidden_size_, source);
    detail::read_field(j, "prefix_projection", c.prefix_projection_, source);
    return c;
  }
  std::shared_ptr<AdapterConfig> clone() const override {
    auto c = std::make_shared<PrefixTuningConfig>(*this);
    c->encoder_ = nullptr;
    return c;
  }

 private:
  std::vector<std::string> names_;            // targeted attention ops, in layer order (complete())
  std::shared_ptr<PrefixEncoderImpl> encoder_;  // the shared MLP of this attach (complete())
};

/// The prefix of one attention layer: keys and values [n, 2·token_dim], trained directly or produced by
/// the shared PrefixEncoder (registered in the first layer's tuner, referenced by the others).
class PrefixTuningImpl : public torch::nn::Cloneable<PrefixTuningImpl>, public Tuner, public nn::AttentionPrefix {
 public:
  PrefixTuningImpl(int64_t n, int64_t kv_heads, int64_t head_dim, int64_t layer, std::shared_ptr<PrefixEncoderImpl> encoder,
                   std::shared_ptr<const AdapterConfig> config)
      : n(n), kv_heads(kv_heads), head_dim(head_dim), layer(layer), encoder_(std::move(encoder)), config_(std::move(config)) {
    reset();
    built_ = true;
  }
  int64_t n, kv_heads, head_dim, layer;
  at::Tensor prefix_table;  // [n, 2·kv_heads·head_dim], trained directly (without projection)

  void reset() override {
    if (encoder_) {
      if (layer == 0) {
        // A clone() gets its own copy (Cloneable copies the values over after reset()).
        if (built_) encoder_ = std::dynamic_pointer_cast<PrefixEncoderImpl>(encoder_->clone());
        register_module("prefix_encoder", encoder_);
      } else if (built_) {
        stale_ = true;  // cloned: the first layer's copy holds the MLP now, out of this tuner's reach
      }
    } else {
      prefix_table = detail::register_keep_grad(*this, "prefix", prefix_table, at::randn({n, 2 * kv_heads * head_dim}));
    }
  }
  Placement placement() const override { return Placement::parallel; }
  bool inside_op() const override { return true; }
  std::string method() const override { return "prefix_tuning"; }
  int64_t prefix_length() const override { return n; }
  const std::shared_ptr<const AdapterConfig>& config() const override { return config_; }
  torch::nn::Module& as_module() override { return *this; }

  /// This layer's [n, 2·token_dim] keys and values.
  at::Tensor table() const {
    if (!encoder_) return prefix_table;
    if (stale_)
      throw StateError("prefix tuning: this model was cloned while its prefix adapter trains through prefix_projection; "
                       "save and load the adapter (which collapses the MLP) instead of cloning");
    return encoder_->layer(layer);
  }
  nn::LayerKV prefix(int64_t batch) const override {
    auto kv = table().view({n, 2, kv_heads, head_dim}).permute({1, 2, 0, 3});  // [2, H_kv, n, D]
    return {kv[0].unsqueeze(0).expand({batch, kv_heads, n, head_dim}), kv[1].unsqueeze(0).expand({batch, kv_heads, n, head_dim})};
  }
  at::Tensor parallel(const at::Tensor&, const at::Tensor& y) override { return y; }  // run by the attention op
  /// Sets this layer's keys and values from [1, kv_heads, n, head_dim] tensors (see init_prefix_from_cache).
  void set_table(const at::Tensor& k, const at::Tensor& v) {
    if (encoder_)
      throw StateError("prefix tuning: layer " + std::to_string(layer) +
                       " trains through prefix_projection; only plain prefixes can be set directly");
    const std::vector<int64_t> want = {1, kv_heads, n, head_dim};
    for (const auto* t : {&k, &v})
      if (!t->defined() || t->sizes().vec() != want)
        throw InputError("prefix tuning: layer " + std::to_string(layer) + " needs keys and values of shape " +
                         detail::shape_str(want) + ", received " + (t->defined() ? detail::shape_str(t->sizes().vec()) : "none"));
    torch::NoGradGuard g;
    auto kv = at::stack({k[0], v[0]}, 0).permute({2, 0, 1, 3}).reshape({n, 2 * kv_heads * head_dim});  // [n, 2·H·D]
    prefix_table.copy_(kv);
  }
  std::vector<std::pair<std::string, at::Tensor>> adapter_tensors() const override {
    if (!encoder_) return {{"prefix", prefix_table}};
    torch::NoGradGuard g;
    return {{"prefix", table().detach()}};
  }
  void pretty_print(std::ostream& s) const override {
    s << "peft::PrefixTuning(layer=" << layer << ", tokens=" << n << ", kv_heads=" << kv_heads << ", head_dim=" << head_dim
      << (encoder_ ? ", projection" : "") << ")";
  }

 private:
  std::shared_ptr<PrefixEncoderImpl> encoder_;
  std::shared_ptr<const AdapterConfig> config_;
  bool built_ = false, stale_ = false;
};
TORCH_MODULE(PrefixTuning);

inline std::shared_ptr<torch::nn::Module> PrefixTuningConfig::make_tuner(TunableSlot& slot, const std::string& name,
                                                                         const std::shared_ptr<const AdapterConfig>& self) const {
  auto* a = dynamic_cast<const nn::AttentionShape*>(&slot);
  if (!a) throw MatchError("PrefixTuningConfig: module '" + name + "' is not an attention op");
  const auto it = std::find(names_.begin(), names_.end(), name);
  const int64_t l = it == names_.end() ? 0 : static_cast<int64_t>(it - names_.begin());
  return std::make_shared<PrefixTuningImpl>(num_virtual_tokens_, a->num_kv_heads(), a->head_dim(), l, encoder_, self);
}

/// Initialises the prefixes of `adapter` with real activations (Li & Liang, arXiv 2101.00190, §7.2:
/// prefixes started from real words' activations train faster and better than random ones; PEFT's
/// N(0, 1) start swamps a deep model's attention). `cache` holds the keys and values that the model
/// without this adapter computed for n real tokens (n = num_virtual_tokens, batch 1), one entry per
/// prefixed layer in order: with them the prefix acts exactly as those tokens in front of every input.
///
///     peft::nn::KVCache cache;
///     lm->forward(tokenizer_ids_of_a_task_phrase, {}, &cache);  // before attach (or adapters disabled)
///     peft::attach(lm, peft::PrefixTuningConfig().num_virtual_tokens(n));
///     peft::init_prefix_from_cache(lm, cache);
inline void init_prefix_from_cache(ModelRef model, const nn::KVCache& cache, const std::string& adapter = "default") {
  std::vector<PrefixTuningImpl*> tuners;
  for (const auto& s : tunable_slots(model))
    if (auto* t = dynamic_cast<PrefixTuningImpl*>(s.slot->adapter(adapter))) tuners.push_back(t);
  if (tuners.empty()) throw StateError("init_prefix_from_cache: the model has no prefix-tuning adapter '" + adapter + "'");
  if (cache.layers.size() != tuners.size())
    throw InputError("init_prefix_from_cache: adapter '" + adapter + "' prefixes " + std::to_string(tuners.size()) +
                     " attention layers, the cache holds " + std::to_string(cache.layers.size()));
  for (std::size_t i = 0; i < tuners.size(); ++i) tuners[i]->set_table(cache.layers[i].k, cache.layers[i].v);
}

PEFT_REGISTER_METHOD(prefix_tuning, PrefixTuningConfig, "PREFIX_TUNING", "Prefix tuning")

}  // namespace peft
