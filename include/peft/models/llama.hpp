#pragma once
/// \file models/llama.hpp
/// LLaMA with Hugging Face's module paths (LlamaModel, LlamaForCausalLM): grouped-query attention,
/// rotary embeddings (rope_theta, "linear" and "llama3" rope_scaling), SwiGLU, RMSNorm, tied or untied
/// lm_head, KV-cache generation (greedy or sampled). Each decoder layer is a peft::nn::TransformerBlock,
/// so `model.layers.N`, `model.layers.N.self_attn` and `model.layers.N.mlp` are tunable ops.
///
///     peft::models::LlamaForCausalLM lm(peft::models::LlamaConfig::from_file("llama/config.json"));
///     peft::load_pretrained(*lm, "llama/");
///     auto ids = peft::models::generate(*lm, prompt_ids, peft::models::GenerationOptions().max_new_tokens(32));

#include <torch/arg.h>

#include <peft/models/common.hpp>
#include <peft/nn/attention.hpp>
#include <peft/nn/block.hpp>
#include <peft/core/context.hpp>
#include <peft/nn/rms_norm.hpp>
#include <peft/slots/embedding.hpp>
#include <peft/slots/linear.hpp>

#include <torch/nn/functional/linear.h>
#include <torch/nn/modules/container/modulelist.h>

#include <ATen/CPUGeneratorImpl.h>

#include <limits>
#include <mutex>
#include <optional>

namespace peft::models {

struct LlamaConfig {
  int64_t vocab_size = 32000;
  int64_t hidden_size = 4096;
  int64_t intermediate_size = 11008;
  int64_t num_hidden_layers = 32;
  int64_t num_attention_heads = 32;
  int64_t num_key_value_heads = 32;
  int64_t head_dim = 128;
  std::string hidden_act = "silu";
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  nn::RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;
  bool mlp_bias = false;
  double attention_dropout = 0.0;
  std::optional<int64_t> bos_token_id = 1;
  std::vector<int64_t> eos_token_ids = {2};
  std::optional<int64_t> pad_token_id;
  double initializer_range = 0.02;

  /// A config for tiny test models: the given sizes, head_dim = hidden / heads.
  static LlamaConfig tiny(int64_t vocab, int64_t hidden, int64_t layers, int64_t heads, int64_t kv_heads,
                          int64_t intermediate) {
    LlamaConfig c;
    c.vocab_size = vocab, c.hidden_size = hidden, c.num_hidden_layers = layers, c.num_attention_heads = heads;
    c.num_key_value_heads = kv_heads, c.intermediate_size = intermediate, c.head_dim = hidden / heads;
    return c;
  }

  void validate(const std::string& source = "LlamaConfig") const {
    detail::ConfigReader r(json::object(), source);
    r.positive("vocab_size", vocab_size), r.positive("hidden_size", hidden_size);
    r.positive("intermediate_size", intermediate_size), r.positive("num_hidden_layers", num_hidden_layers);
    r.positive("num_attention_heads", num_attention_heads), r.positive("num_key_value_heads", num_key_value_heads);
    r.positive("head_dim", head_dim);
    if (head_dim % 2) throw ConfigError("'" + source + "': head_dim must be even for rotary embeddings");
    if (num_attention_heads % num_key_value_heads)
      throw ConfigError("'" + source + "': num_attention_heads (" + std::to_string(num_attention_heads) +
                        ") is not a multiple of num_key_value_heads (" + std::to_string(num_key_value_heads) + ")");
    nn::activation(hidden_act);
  }

  static LlamaConfig from_json(const json& j, const std::string& source = "config.json") {
    detail::ConfigReader r(j, source);
    LlamaConfig c;
    c.vocab_size = r.required<int64_t>("vocab_size");
    c.hidden_size = r.required<int64_t>("hidden_size");
    c.intermediate_size = r.required<int64_t>("intermediate_size");
    c.num_hidden_layers = r.required<int64_t>("num_hidden_layers");
    c.num_attention_heads = r.required<int64_t>("num_attention_heads");
    c.num_key_value_heads = r.optional<int64_t>("num_key_value_heads", c.num_attention_heads);
    c.head_dim = r.optional<int64_t>("head_dim", c.num_attention_heads > 0 ? c.hidden_size / c.num_attention_heads : 0);
    c.hidden_act = r.optional<std::string>("hidden_act", c.hidden_act);
    c.max_position_embeddings = r.optional<int64_t>("max_position_embeddings", c.max_position_embeddings);
    c.rms_norm_eps = r.optional<double>("rms_norm_eps", c.rms_norm_eps);
    c.rope_theta = r.optional<double>("rope_theta", c.rope_theta);
    // transformers 5 writes rope_theta (and the scaling) inside rope_parameters.
    const bool rope_params = j.contains("rope_parameters") && j.at("rope_parameters").is_object();
    if (rope_params) {
      detail::ConfigReader s(j.at("rope_parameters"), source + " rope_parameters");
      c.rope_theta = s.optional<double>("rope_theta", c.rope_theta);
    }
    c.tie_word_embeddings = r.optional<bool>("tie_word_embeddings", c.tie_word_embeddings);
    c.attention_bias = r.optional<bool>("attention_bias", c.attention_bias);
    c.mlp_bias = r.optional<bool>("mlp_bias", c.mlp_bias);
    c.attention_dropout = r.optional<double>("attention_dropout", c.attention_dropout);
    if (j.contains("bos_token_id")) c.bos_token_id = j.at("bos_token_id").is_null() ? std::nullopt : std::optional<int64_t>(r.optional<int64_t>("bos_token_id", 0));
    if (j.contains("pad_token_id") && !j.at("pad_token_id").is_null()) c.pad_token_id = r.optional<int64_t>("pad_token_id", 0);
    if (j.contains("eos_token_id")) {
      const auto& e = j.at("eos_token_id");
      if (e.is_null()) c.eos_token_ids.clear();
      else if (e.is_number_integer()) c.eos_token_ids = {e.get<int64_t>()};
      else c.eos_token_ids = r.optional<std::vector<int64_t>>("eos_token_id", {});
    }
    const char* scaling_key = j.contains("rope_scaling") && !j.at("rope_scaling").is_null() ? "rope_scaling"
                              : rope_params                                                ? "rope_parameters"
                                                                                           : nullptr;
    if (scaling_key) {
      detail::ConfigReader s(j.at(scaling_key), source + " " + scaling_key);
      auto type = s.optional<std::string>("rope_type", s.optional<std::string>("type", ""));
      if (type != "linear" && type != "llama3" && type != "default")
        throw ConfigError("'" + source + "': rope_scaling type '" + type + "' is not supported (linear, llama3, default)");
      c.rope_scaling.type = type == "default" ? "" : type;
      c.rope_scaling.factor = s.optional<double>("factor", 1.0);
      c.rope_scaling.low_freq_factor = s.optional<double>("low_freq_factor", 1.0);
      c.rope_scaling.high_freq_factor = s.optional<double>("high_freq_factor", 4.0);
      c.rope_scaling.original_max_position_embeddings = s.optional<int64_t>("original_max_position_embeddings", 8192);
    }
    c.initializer_range = r.optional<double>("initializer_range", c.initializer_range);
    c.validate(source);
    return c;
  }
  static LlamaConfig from_file(const std::string& path) { return from_json(detail::read_json_file(path), path); }

  json to_json() const {
    json j;
    j["initializer_range"] = initializer_range;
    j["model_type"] = "llama";
    j["vocab_size"] = vocab_size;
    j["hidden_size"] = hidden_size;
    j["intermediate_size"] = intermediate_size;
    j["num_hidden_layers"] = num_hidden_layers;
    j["num_attention_heads"] = num_attention_heads;
    j["num_key_value_heads"] = num_key_value_heads;
    j["head_dim"] = head_dim;
    j["hidden_act"] = hidden_act;
    j["max_position_embeddings"] = max_position_embeddings;
    j["rms_norm_eps"] = rms_norm_eps;
    j["rope_theta"] = rope_theta;
    if (rope_scaling.type.empty()) {
      j["rope_scaling"] = nullptr;
    } else {
      j["rope_scaling"] = {{"rope_type", rope_scaling.type}, {"factor", rope_scaling.factor},
                           {"low_freq_factor", rope_scaling.low_freq_factor},
                           {"high_freq_factor", rope_scaling.high_freq_factor},
                           {"original_max_position_embeddings", rope_scaling.original_max_position_embeddings}};
    }
    j["tie_word_embeddings"] = tie_word_embeddings;
    j["attention_bias"] = attention_bias;
    j["mlp_bias"] = mlp_bias;
    j["attention_dropout"] = attention_dropout;
    j["bos_token_id"] = bos_token_id ? json(*bos_token_id) : json(nullptr);
    j["eos_token_id"] = eos_token_ids.size() == 1 ? json(eos_token_ids[0]) : json(eos_token_ids);
    j["pad_token_id"] = pad_token_id ? json(*pad_token_id) : json(nullptr);
    return j;
  }

  nn::TransformerBlockOptions block_options() const {
    auto attn = nn::MultiHeadAttentionOptions(hidden_size, num_attention_heads)
                    .num_kv_heads(num_key_value_heads)
                    .head_dim(head_dim)
                    .qkv_bias(attention_bias)
                    .out_bias(attention_bias)
                    .dropout(attention_dropout);
    return nn::TransformerBlockOptions(hidden_size, num_attention_heads, intermediate_size)
        .attention(attn)
        .mlp(nn::MlpKind::gated)
        .activation(hidden_act)
        .mlp_bias(mlp_bias)
        .norm(nn::NormKind::rms_norm)
        .norm_eps(rms_norm_eps)
        .pre_norm(true);
  }
};

/// LlamaModel: embed_tokens, layers (TransformerBlocks), norm.
class LlamaModelImpl : public torch::nn::Cloneable<LlamaModelImpl>, public PretrainedModel {
 public:
  /// `init`: Hugging Face's random initialization (skip it when a checkpoint is loaded next anyway).
  explicit LlamaModelImpl(LlamaConfig c, bool init = true) : config(std::move(c)) {
    config.validate();
    reset();
    if (init) init_weights(*this, config.initializer_range);
  }
  void reset() override {
    embed_tokens = register_module("embed_tokens", Embedding(EmbeddingOptions(config.vocab_size, config.hidden_size)));
    layers = register_module("layers", torch::nn::ModuleList());
    for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
      nn::TransformerBlock block(config.block_options());
      block->set_special_token_count(2);  // bos and eos
      layers->push_back(block);
    }
    norm = register_module("norm", RMSNorm(RMSNormOptions(config.hidden_size).eps(config.rms_norm_eps)));
    std::vector<int64_t> ids;  // published for PASTA: bos, then the eos ids
    if (config.bos_token_id) ids.push_back(*config.bos_token_id);
    ids.insert(ids.end(), config.eos_token_ids.begin(), config.eos_token_ids.end());
    special_ids_ = ids.empty() ? at::Tensor() : at::tensor(ids, at::kLong);
  }

  /// input_ids [B, T]; attention_mask [B, past + T] (1 = token, 0 = padding) or undefined;
  /// `cache` (if given) holds earlier tokens and is extended; position_ids [B, T] default to
  /// past .. past + T - 1. Returns the final normed hidden states [B, T, hidden].
  at::Tensor forward(const at::Tensor& input_ids, const at::Tensor& attention_mask = {}, nn::KVCache* cache = nullptr,
                     const at::Tensor& position_ids = {}) {
    if (input_ids.dim() != 2 || !at::isIntegralType(input_ids.scalar_type(), false))
      throw InputError("LLaMA: input_ids must be an integer [batch, seq] tensor, received shape " +
                       peft::detail::shape_str(input_ids.sizes().vec()));
    if (cache && cache->layers.size() != static_cast<std::size_t>(config.num_hidden_layers))
      cache->layers.resize(static_cast<std::size_t>(config.num_hidden_layers));
    const int64_t past = cache ? cache->length() : 0, t = input_ids.size(1);
    BatchScope scope({{keys::attention_mask, attention_mask},
                      {keys::input_ids, input_ids},
                      {keys::special_token_ids, special_ids_},
                      {keys::past_length, at::scalar_tensor(past, at::kLong)}});
    auto x = embed_tokens(input_ids);
    // Prompt tuning puts virtual tokens in front of the first step's tokens (as PEFT does): they take
    // positions 0..n-1 and the mask covers them.
    const int64_t steps = x.size(1);
    // Prefix tuning: the prefixes stand for `shift` earlier tokens (PEFT hands them over as a cache).
    const int64_t shift = layers->size() ? nn::active_prefix_length(*layers->ptr<nn::TransformerBlockImpl>(0)->self_attn) : 0;
    at::Tensor pos;
    if (!position_ids.defined()) {
      pos = at::arange(past, past + steps, input_ids.options().dtype(at::kLong)).unsqueeze(0);
    } else if (steps == t) {
      pos = position_ids;
    } else {  // given positions are those of the real tokens: they move behind the virtual ones
      const int64_t n = steps - t;
      auto virt = at::arange(past, past + n, position_ids.options()).unsqueeze(0).expand({position_ids.size(0), n});
      pos = at::cat({virt, position_ids + n}, 1);
    }
    if (shift) pos = pos + shift;
    nn::AttentionInputs in;
    in.rotary = nn::rotary_tables(pos, config.head_dim, config.rope_theta, x.scalar_type(), config.rope_scaling);
    if (attention_mask.defined())
      in.mask = nn::make_attention_mask(detail::extend_mask_front(attention_mask, past + steps), steps, past, true, x);
    else in.causal = true;
    for (std::size_t i = 0; i < layers->size(); ++i) {
      nn::AttentionInputs li = in;
      li.cache = cache ? &cache->layers[i] : nullptr;
      x = layers->ptr<nn::TransformerBlockImpl>(i)->forward(x, li);
    }
    return norm(x);
  }
  json config_json() const override {
    auto j = config.to_json();
    j["architectures"] = json::array({"LlamaModel"});
    return j;
  }
  bool ignorable_key(const std::string& key) const override {
    const std::string tail = ".rotary_emb.inv_freq";
    return key.size() > tail.size() && key.compare(key.size() - tail.size(), tail.size(), tail) == 0;
  }

  LlamaConfig config;
  Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RMSNorm norm{nullptr};
  at::Tensor special_ids_;  // published for PASTA: bos and eos ids (undefined when the config has none)
};
TORCH_MODULE(LlamaModel);

/// LlamaForCausalLM: `model` + `lm_head` (with tie_word_embeddings the head reuses
/// model.embed_tokens.weight and has no module or checkpoint key of its own, as in HF checkpoints).
class LlamaForCausalLMImpl : public torch::nn::Cloneable<LlamaForCausalLMImpl>, public PretrainedModel {
 public:
  explicit LlamaForCausalLMImpl(LlamaConfig c, bool init = true) : config(std::move(c)) {
    config.validate();
    reset();
    if (init) init_weights(*this, config.initializer_range);
  }
  void reset() override {
    model = register_module("model", LlamaModel(config, false));
    if (!config.tie_word_embeddings)
      lm_head = register_module("lm_head", Linear(LinearOptions(config.hidden_size, config.vocab_size).bias(false)));
  }
  /// -> logits [B, T, vocab]. Arguments as LlamaModel::forward.
  at::Tensor forward(const at::Tensor& input_ids, const at::Tensor& attention_mask = {}, nn::KVCache* cache = nullptr,
                     const at::Tensor& position_ids = {}) {
    return logits(model->forward(input_ids, attention_mask, cache, position_ids));
  }
  at::Tensor logits(const at::Tensor& hidden) {
    if (lm_head) return lm_head(hidden);
    return at::linear(hidden, model->embed_tokens->weight);
  }
  json config_json() const override {
    auto j = config.to_json();
    j["architectures"] = json::array({"LlamaForCausalLM"});
    return j;
  }
  bool ignorable_key(const std::string& key) const override {
    return model->ignorable_key(key) || (config.tie_word_embeddings && key == "lm_head.weight");
  }

  LlamaConfig config;
  LlamaModel model{nullptr};
  Linear lm_head{nullptr};
};
TORCH_MODULE(LlamaForCausalLM);

/// Options of generate(), LibTorch-style: `GenerationOptions().max_new_tokens(32).do_sample(true).top_p(0.9)`.
struct GenerationOptions {
  TORCH_ARG(int64_t, max_new_tokens) = 20;
  /// false: greedy (argmax); true: sample from softmax(logits / temperature), top_k / top_p filtered.
  TORCH_ARG(bool, do_sample) = false;
  TORCH_ARG(double, temperature) = 1.0;
  /// 0: off.
  TORCH_ARG(int64_t, top_k) = 0;
  /// 1: off.
  TORCH_ARG(double, top_p) = 1.0;
  /// Stop a row at any of these (default: the config's eos_token_id; empty: never). Finished rows
  /// continue with pad_token_id.
  TORCH_ARG(std::optional<std::vector<int64_t>>, eos_token_ids) = std::nullopt;
  TORCH_ARG(int64_t, pad_token_id) = 0;
  /// Seed for sampling; none = the global generator.
  TORCH_ARG(std::optional<uint64_t>, seed) = std::nullopt;
};

namespace detail {
inline at::Tensor filter_logits(at::Tensor logits, const GenerationOptions& o) {
  if (o.top_k() > 0 && o.top_k() < logits.size(-1)) {
    auto kth = std::get<0>(logits.topk(o.top_k(), -1)).narrow(-1, o.top_k() - 1, 1);
    logits = logits.masked_fill(logits < kth, -std::numeric_limits<float>::infinity());
  }
  if (o.top_p() < 1.0) {
    auto [sorted, idx] = logits.sort(-1, true);
    auto cum = at::softmax(sorted, -1).cumsum(-1);
    auto drop = (cum - at::softmax(sorted, -1)) > o.top_p();  // keep the smallest prefix reaching top_p
    sorted = sorted.masked_fill(drop, -std::numeric_limits<float>::infinity());
    logits = at::empty_like(logits).scatter_(-1, idx, sorted);
  }
  return logits;
}
}  // namespace detail

/// Autoregressive generation with a KV cache: the prompt runs once, then one token per step.
/// input_ids [B, T] (left-padded when rows differ: attention_mask [B, T] marks real tokens).
/// Returns [B, T + generated] (prompt included). Runs under NoGradGuard, in eval mode.
inline at::Tensor generate(LlamaForCausalLMImpl& lm, const at::Tensor& input_ids, const GenerationOptions& o = {},
                           const at::Tensor& attention_mask = {}) {
  if (o.max_new_tokens() < 0) throw ConfigError("generate: max_new_tokens must be >= 0");
  if (o.do_sample() && o.temperature() <= 0) throw ConfigError("generate: temperature must be positive when sampling");
  if (o.pad_token_id() < 0 || o.pad_token_id() >= lm.config.vocab_size)
    throw ConfigError("generate: pad_token_id " + std::to_string(o.pad_token_id()) + " is outside the vocabulary [0, " +
                      std::to_string(lm.config.vocab_size) + ")");
  torch::NoGradGuard no_grad;
  const bool was_training = lm.is_training();
  lm.eval();
  const auto eos = o.eos_token_ids().value_or(lm.config.eos_token_ids);
  const auto dev = input_ids.device();
  const int64_t b = input_ids.size(0);
  auto mask = attention_mask.defined() ? attention_mask.to(dev, at::kLong) : at::ones_like(input_ids, at::kLong);
  auto positions = (mask.cumsum(1) - 1).clamp_min(0);
  nn::KVCache cache(static_cast<std::size_t>(lm.config.num_hidden_layers));
  // Seeded sampling: a private generator on the CPU; on an accelerator the device's default generator
  // is reseeded (sampling there never leaves the device).
  std::optional<at::Generator> gen;
  if (o.seed() && o.do_sample()) {
    if (dev.is_cpu()) {
      gen = at::detail::createCPUGenerator(*o.seed());
    } else {
      gen = at::globalContext().defaultGenerator(dev);
      std::lock_guard<std::mutex> lock(gen->mutex());
      gen->set_current_seed(*o.seed());
    }
  }
  auto out = input_ids;
  auto finished = at::zeros({b}, input_ids.options().dtype(at::kBool));
  auto step_ids = input_ids;
  auto step_pos = positions;
  for (int64_t i = 0; i < o.max_new_tokens(); ++i) {
    auto logits = lm.forward(step_ids, attention_mask.defined() ? mask : at::Tensor(), &cache, step_pos)
                      .select(1, -1)
                      .to(at::kFloat);
    at::Tensor next;
    if (o.do_sample()) {
      auto probs = at::softmax(detail::filter_logits(logits / o.temperature(), o), -1);
      next = at::multinomial(probs, 1, false, gen ? c10::optional<at::Generator>(*gen) : c10::nullopt).squeeze(1);
    } else {
      next = logits.argmax(-1);
    }
    next = at::where(finished, at::full_like(next, o.pad_token_id()), next);
    out = at::cat({out, next.unsqueeze(1)}, 1);
    for (auto e : eos) finished = finished | (next == e);
    if (finished.all().item<bool>()) break;
    step_ids = next.unsqueeze(1);
    // Virtual tokens of prompt tuning entered the cache with the first step and shift every position.
    const int64_t virtual_tokens = i == 0 ? cache.length() - input_ids.size(1) : 0;
    step_pos = step_pos.select(1, -1).unsqueeze(1) + 1 + virtual_tokens;
    mask = at::cat({mask, at::ones({b, 1}, mask.options())}, 1);
  }
  if (was_training) lm.train();
  return out;
}

}  // namespace peft::models
