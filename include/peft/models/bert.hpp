#pragma once
/// \file models/bert.hpp
/// BERT with Hugging Face's module paths (BertModel, BertForSequenceClassification,
/// BertForTokenClassification), built from tunable slots. Post-norm: each sublayer is
/// LayerNorm(x + sublayer(x)). Attention (`bert.encoder.layer.N.attention`, the op inside the residual),
/// the feed-forward (`bert.encoder.layer.N.mlp`, a site around `intermediate` + `output.dense`), each
/// layer and the embeddings are tunable ops.
///
///     peft::models::BertForSequenceClassification bert(peft::models::BertConfig::from_file("bert/config.json"));
///     peft::load_pretrained(*bert, "bert/", peft::LoadOptions().strict(false));
///     auto logits = bert->forward(input_ids, attention_mask);

#include <peft/core/tunable.hpp>
#include <peft/models/common.hpp>
#include <peft/models/vit.hpp>
#include <peft/nn/attention.hpp>
#include <peft/core/context.hpp>
#include <peft/nn/feed_forward.hpp>
#include <peft/slots/embedding.hpp>
#include <peft/slots/layer_norm.hpp>
#include <peft/slots/linear.hpp>

#include <torch/nn/modules/container/modulelist.h>

#include <fstream>
#include <optional>
#include <vector>

namespace peft::models {

struct BertConfig {
  int64_t vocab_size = 30522;
  int64_t hidden_size = 768;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 12;
  int64_t intermediate_size = 3072;
  std::string hidden_act = "gelu";
  double hidden_dropout_prob = 0.1;
  double attention_probs_dropout_prob = 0.1;
  int64_t max_position_embeddings = 512;
  int64_t type_vocab_size = 2;
  double layer_norm_eps = 1e-12;
  int64_t pad_token_id = 0;
  /// The [CLS] and [SEP] ids (PASTA finds the special tokens with them). Read from config.json when it
  /// has them (cls_token_id / sep_token_id; RoBERTa's bos_token_id / eos_token_id), otherwise by
  /// from_file from a vocab.txt beside it; unset when neither says.
  std::optional<int64_t> cls_token_id, sep_token_id;
  std::optional<double> classifier_dropout;
  int64_t num_labels = 2;
  double initializer_range = 0.02;

  void validate(const std::string& source = "BertConfig") const {
    detail::ConfigReader r(json::object(), source);
    r.positive("vocab_size", vocab_size), r.positive("hidden_size", hidden_size);
    r.positive("num_hidden_layers", num_hidden_layers), r.positive("num_attention_heads", num_attention_heads);
    r.positive("intermediate_size", intermediate_size), r.positive("max_position_embeddings", max_position_embeddings);
    r.positive("type_vocab_size", type_vocab_size), r.positive("num_labels", num_labels);
    if (hidden_size % num_attention_heads)
      throw ConfigError("'" + source + "': hidden_size (" + std::to_string(hidden_size) +
                        ") is not a multiple of num_attention_heads (" + std::to_string(num_attention_heads) + ")");
    nn::activation(hidden_act);
  }

  static BertConfig from_json(const json& j, const std::string& source = "config.json") {
    detail::ConfigReader r(j, source);
    BertConfig c;
    c.vocab_size = r.required<int64_t>("vocab_size");
    c.hidden_size = r.required<int64_t>("hidden_size");
    c.num_hidden_layers = r.required<int64_t>("num_hidden_layers");
    c.num_attention_heads = r.required<int64_t>("num_attention_heads");
    c.intermediate_size = r.required<int64_t>("intermediate_size");
    c.hidden_act = r.optional<std::string>("hidden_act", c.hidden_act);
    c.hidden_dropout_prob = r.optional<double>("hidden_dropout_prob", c.hidden_dropout_prob);
    c.attention_probs_dropout_prob = r.optional<double>("attention_probs_dropout_prob", c.attention_probs_dropout_prob);
    c.max_position_embeddings = r.optional<int64_t>("max_position_embeddings", c.max_position_embeddings);
    c.type_vocab_size = r.optional<int64_t>("type_vocab_size", c.type_vocab_size);
    c.layer_norm_eps = r.optional<double>("layer_norm_eps", c.layer_norm_eps);
    c.pad_token_id = r.optional<int64_t>("pad_token_id", c.pad_token_id);
    auto id = [&](const char* key) {
      return j.contains(key) && !j.at(key).is_null() ? std::optional<int64_t>(r.optional<int64_t>(key, 0)) : std::nullopt;
    };
    c.cls_token_id = id("cls_token_id"), c.sep_token_id = id("sep_token_id");
    const auto type = j.contains("model_type") && j.at("model_type").is_string() ? j.at("model_type").get<std::string>() : "";
    if (type == "roberta" || type == "xlm-roberta") {  // <s> and </s> play [CLS] and [SEP]
      if (!c.cls_token_id) c.cls_token_id = id("bos_token_id");
      if (!c.sep_token_id) c.sep_token_id = id("eos_token_id");
    }
    if (j.contains("classifier_dropout") && !j.at("classifier_dropout").is_null())
      c.classifier_dropout = r.optional<double>("classifier_dropout", 0.0);
    const auto pos = r.optional<std::string>("position_embedding_type", "absolute");
    if (pos != "absolute")
      throw ConfigError("'" + source + "': position_embedding_type '" + pos + "' is not supported (only 'absolute')");
    c.num_labels = r.num_labels();
    c.initializer_range = r.optional<double>("initializer_range", c.initializer_range);
    c.validate(source);
    return c;
  }
  /// config.json; [CLS] / [SEP] ids it lacks come from a vocab.txt in the same folder (line number = id).
  static BertConfig from_file(const std::string& path) {
    auto c = from_json(detail::read_json_file(path), path);
    if (c.cls_token_id && c.sep_token_id) return c;
    const auto slash = path.find_last_of('/');
    std::ifstream vocab((slash == std::string::npos ? std::string() : path.substr(0, slash + 1)) + "vocab.txt");
    std::string line;
    for (int64_t i = 0; vocab && std::getline(vocab, line); ++i) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line == "[CLS]" && !c.cls_token_id) c.cls_token_id = i;
      if (line == "[SEP]" && !c.sep_token_id) c.sep_token_id = i;
    }
    return c;
  }
  /// The special ids in the order of their roles ([CLS], [SEP]); empty when unknown.
  std::vector<int64_t> special_token_ids() const {
    std::vector<int64_t> ids;
    if (cls_token_id) ids.push_back(*cls_token_id);
    if (sep_token_id) ids.push_back(*sep_token_id);
    return ids;
  }

  json to_json() const {
    json j;
    j["initializer_range"] = initializer_range;
    j["model_type"] = "bert";
    j["vocab_size"] = vocab_size;
    j["hidden_size"] = hidden_size;
    j["num_hidden_layers"] = num_hidden_layers;
    j["num_attention_heads"] = num_attention_heads;
    j["intermediate_size"] = intermediate_size;
    j["hidden_act"] = hidden_act;
    j["hidden_dropout_prob"] = hidden_dropout_prob;
    j["attention_probs_dropout_prob"] = attention_probs_dropout_prob;
    j["max_position_embeddings"] = max_position_embeddings;
    j["type_vocab_size"] = type_vocab_size;
    j["layer_norm_eps"] = layer_norm_eps;
    j["pad_token_id"] = pad_token_id;
    if (cls_token_id) j["cls_token_id"] = *cls_token_id;
    if (sep_token_id) j["sep_token_id"] = *sep_token_id;
    j["position_embedding_type"] = "absolute";
    j["classifier_dropout"] = classifier_dropout ? json(*classifier_dropout) : json(nullptr);
    j["id2label"] = detail::default_id2label(num_labels);
    return j;
  }
};

/// `embeddings`: word + position + token type embeddings, LayerNorm, dropout; a tunable op from ids
/// to hidden states. Token types and positions come from the enclosing forward.
class BertEmbeddingsImpl : public CompositeSlot<BertEmbeddingsImpl> {
 public:
  explicit BertEmbeddingsImpl(BertConfig c) : config(std::move(c)) { reset(); }
  void reset() override {
    const auto d = config.hidden_size;
    word_embeddings = register_module("word_embeddings",
                                      Embedding(EmbeddingOptions(config.vocab_size, d).padding_idx(config.pad_token_id)));
    position_embeddings = register_module("position_embeddings", Embedding(config.max_position_embeddings, d));
    token_type_embeddings = register_module("token_type_embeddings", Embedding(config.type_vocab_size, d));
    LayerNorm = register_module("LayerNorm", peft::LayerNorm(LayerNormOptions({d}).eps(config.layer_norm_eps)));
    reset_adapters();
  }
  /// input_ids [B, T]; token_type_ids [B, T] or undefined (zeros); positions start at `past`.
  at::Tensor forward(const at::Tensor& input_ids, const at::Tensor& token_type_ids = {}, int64_t past = 0) {
    return tuned(input_ids, [this, token_type_ids, past](const at::Tensor& ids) {
      // Prompt tuning inserts virtual tokens at the front of word_embeddings' output: positions and
      // token types cover them too (type 0, as PEFT gives them).
      auto words = word_embeddings(ids);
      const auto t = words.size(1);
      if (past + t > config.max_position_embeddings)
        throw InputError("BERT: " + std::to_string(past + t) + " positions (" + std::to_string(ids.size(1)) + " tokens" +
                         (t > ids.size(1) ? " + " + std::to_string(t - ids.size(1)) + " virtual tokens" : std::string()) +
                         ") exceed max_position_embeddings " + std::to_string(config.max_position_embeddings));
      auto pos = at::arange(past, past + t, ids.options().dtype(at::kLong)).unsqueeze(0);
      auto types = token_type_ids.defined() ? token_type_ids : at::zeros_like(ids);
      if (types.size(1) < t) types = at::cat({at::zeros({types.size(0), t - types.size(1)}, types.options()), types}, 1);
      auto x = words + token_type_embeddings(types) + position_embeddings(pos);
      return maybe_dropout(LayerNorm(x), config.hidden_dropout_prob, is_training());
    });
  }
  const char* op_kind() const override { return "Embeddings"; }
  std::pair<int64_t, int64_t> features() const override { return {0, config.hidden_size}; }
  void pretty_print_op(std::ostream& s) const { s << "peft::models::BertEmbeddings"; }

  BertConfig config;
  Embedding word_embeddings{nullptr}, position_embeddings{nullptr}, token_type_embeddings{nullptr};
  peft::LayerNorm LayerNorm{nullptr};
};
TORCH_MODULE(BertEmbeddings);

/// `attention`: LayerNorm(x + op(x)) where op = `self.{query,key,value}` attention + `output.dense`.
/// The tunable op is the part inside the residual, so a sequential adapter sits before the add & norm.
class BertAttentionImpl : public CompositeSlot<BertAttentionImpl>, public nn::AttentionShape {
 public:
  explicit BertAttentionImpl(BertConfig c) : config(std::move(c)) { reset(); }
  void reset() override {
    const auto d = config.hidden_size;
    self = register_module("self", layout::Qkv(d, d, true));
    output = register_module("output", layout::Dense(d, d, true, config.layer_norm_eps));
    reset_adapters();
  }
  at::Tensor forward(const at::Tensor& x, const nn::AttentionInputs& in = {}) {
    auto y = tuned(x, [this, in](const at::Tensor& h) {
      const auto heads = config.num_attention_heads, hd = config.hidden_size / heads;
      auto ctx = nn::functional::self_attention(h, self->query, self->key, self->value, heads, heads, hd, in,
                                                inside_tuners(), is_training() ? config.attention_probs_dropout_prob : 0.0);
      return maybe_dropout(output->dense(ctx), config.hidden_dropout_prob, is_training());
    });
    return output->LayerNorm(y + x);
  }
  int64_t num_heads() const override { return config.num_attention_heads; }
  int64_t num_kv_heads() const override { return config.num_attention_heads; }
  int64_t head_dim() const override { return config.hidden_size / config.num_attention_heads; }
  const char* op_kind() const override { return "Attention"; }
  std::pair<int64_t, int64_t> features() const override { return {config.hidden_size, config.hidden_size}; }
  void pretty_print_op(std::ostream& s) const { s << "peft::models::BertAttention(heads=" << config.num_attention_heads << ")"; }

  BertConfig config;
  layout::Qkv self{nullptr};
  layout::Dense output{nullptr};
};
TORCH_MODULE(BertAttention);

/// One encoder layer (a tunable Block).
class BertLayerImpl : public CompositeSlot<BertLayerImpl> {
 public:
  explicit BertLayerImpl(BertConfig c) : config(std::move(c)) { reset(); }
  void reset() override {
    const auto d = config.hidden_size, i = config.intermediate_size;
    act_ = nn::activation(config.hidden_act);
    attention = register_module("attention", BertAttention(config));
    intermediate = register_module("intermediate", layout::Dense(d, i));
    output = register_module("output", layout::Dense(i, d, true, config.layer_norm_eps));
    mlp = register_module("mlp", Site("FFN", config.hidden_size));
    reset_adapters();
  }
  at::Tensor forward(const at::Tensor& x, const nn::AttentionInputs& in = {}) {
    return tuned(x, [this, in](const at::Tensor& h) {  // by value: checkpointing runs it again in backward
      auto a = attention->forward(h, in);
      auto f = mlp->forward(a, [&](const at::Tensor& z) {
        return maybe_dropout(output->dense(act_(intermediate->dense(z))), config.hidden_dropout_prob, is_training());
      });
      return output->LayerNorm(f + a);
    });
  }
  const char* op_kind() const override { return "Block"; }
  std::pair<int64_t, int64_t> features() const override { return {config.hidden_size, config.hidden_size}; }
  void pretty_print_op(std::ostream& s) const { s << "peft::models::BertLayer"; }

  BertConfig config;
  BertAttention attention{nullptr};
  layout::Dense intermediate{nullptr}, output{nullptr};
  Site mlp{nullptr};

 private:
  std::function<at::Tensor(const at::Tensor&)> act_;
};
TORCH_MODULE(BertLayer);

class BertEncoderImpl : public torch::nn::Cloneable<BertEncoderImpl> {
 public:
  explicit BertEncoderImpl(BertConfig c) : config(std::move(c)) { reset(); }
  void reset() override {
    layer = register_module("layer", torch::nn::ModuleList());
    for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
      BertLayer l(config);
      l->set_special_token_count(3);  // [CLS] and two [SEP] (sentence pairs)
      layer->push_back(l);
    }
  }
  at::Tensor forward(at::Tensor x, const nn::AttentionInputs& in = {}) {
    for (std::size_t i = 0; i < layer->size(); ++i) x = layer->ptr<BertLayerImpl>(i)->forward(x, in);
    return x;
  }
  BertConfig config;
  torch::nn::ModuleList layer{nullptr};
};
TORCH_MODULE(BertEncoder);

/// BertModel: embeddings, encoder, optional pooler (dense + tanh over [CLS]).
class BertModelImpl : public torch::nn::Cloneable<BertModelImpl>, public PretrainedModel {
 public:
  /// `init`: Hugging Face's random initialization (skip it when a checkpoint is loaded next anyway).
  explicit BertModelImpl(BertConfig c, bool add_pooling_layer = true, bool init = true)
      : config(std::move(c)), pooling_(add_pooling_layer) {
    config.validate();
    reset();
    if (init) init_weights(*this, config.initializer_range);
  }
  void reset() override {
    if (const auto ids = config.special_token_ids(); !ids.empty()) special_ids_ = at::tensor(ids, at::kLong);
    embeddings = register_module("embeddings", BertEmbeddings(config));
    encoder = register_module("encoder", BertEncoder(config));
    if (pooling_) pooler = register_module("pooler", layout::Dense(config.hidden_size, config.hidden_size));
  }
  /// input_ids [B, T] int64; attention_mask [B, T] (1 = token, 0 = padding) or undefined;
  /// token_type_ids [B, T] or undefined. The mask is visible to tuners as batch_info("attention_mask").
  EncoderOutput forward(const at::Tensor& input_ids, const at::Tensor& attention_mask = {},
                        const at::Tensor& token_type_ids = {}) {
    check_ids(input_ids, attention_mask, token_type_ids);
    BatchScope scope({{keys::attention_mask, attention_mask}, {keys::input_ids, input_ids}, {keys::special_token_ids, special_ids_}});
    // Prefix tuning: positions start after the prefixes, as in PEFT (which passes them as a cache).
    const int64_t shift = encoder->layer->size() ? nn::active_prefix_length(*encoder->layer->ptr<BertLayerImpl>(0)->attention) : 0;
    auto x = embeddings->forward(input_ids, token_type_ids, shift);
    nn::AttentionInputs in;
    in.mask = nn::make_attention_mask(detail::extend_mask_front(attention_mask, x.size(1)), x.size(1), 0, false, x);
    x = encoder->forward(x, in);
    EncoderOutput out{x, {}};
    if (pooler) out.pooler_output = at::tanh(pooler->dense(x.select(1, 0)));
    return out;
  }
  json config_json() const override {
    auto j = config.to_json();
    j["architectures"] = json::array({"BertModel"});
    return j;
  }
  bool ignorable_key(const std::string& key) const override {
    return key == "embeddings.position_ids" || key == "bert.embeddings.position_ids";
  }

  BertConfig config;
  BertEmbeddings embeddings{nullptr};
  BertEncoder encoder{nullptr};
  layout::Dense pooler{nullptr};

 private:
  void check_ids(const at::Tensor& ids, const at::Tensor& mask, const at::Tensor& types) const {
    if (ids.dim() != 2 || !at::isIntegralType(ids.scalar_type(), false))
      throw InputError("BERT: input_ids must be an integer [batch, seq] tensor, received " +
                       std::string(ids.dim() != 2 ? "shape " + peft::detail::shape_str(ids.sizes().vec()) : "a float tensor"));
    if (ids.size(1) > config.max_position_embeddings)
      throw InputError("BERT: sequence length " + std::to_string(ids.size(1)) + " exceeds max_position_embeddings " +
                       std::to_string(config.max_position_embeddings));
    if (mask.defined() && mask.sizes() != ids.sizes())
      throw InputError("BERT: attention_mask must have input_ids' shape " + peft::detail::shape_str(ids.sizes().vec()) +
                       ", received " + peft::detail::shape_str(mask.sizes().vec()));
    if (types.defined() && types.sizes() != ids.sizes())
      throw InputError("BERT: token_type_ids must have input_ids' shape " + peft::detail::shape_str(ids.sizes().vec()) +
                       ", received " + peft::detail::shape_str(types.sizes().vec()));
  }
  bool pooling_;
  at::Tensor special_ids_;  // published for PASTA; undefined when the config names none
};
TORCH_MODULE(BertModel);

namespace detail {
/// `bert` -> dropout -> `classifier`, HF's BERT classification heads: on the pooled [CLS] state
/// (`PerToken` false: logits [B, num_labels]) or on every token (logits [B, T, num_labels]).
template <class Derived, bool PerToken>
class BertClassifierImpl : public torch::nn::Cloneable<Derived>, public PretrainedModel {
 public:
  explicit BertClassifierImpl(BertConfig c) : config(std::move(c)) {
    config.validate();
    reset();
    init_weights(*this, config.initializer_range);
  }
  void reset() override {
    bert = this->register_module("bert", BertModel(config, /*add_pooling_layer=*/!PerToken, false));
    classifier = this->register_module("classifier", Linear(config.hidden_size, config.num_labels));
  }
  at::Tensor forward(const at::Tensor& input_ids, const at::Tensor& attention_mask = {},
                     const at::Tensor& token_type_ids = {}) {
    auto out = bert->forward(input_ids, attention_mask, token_type_ids);
    const auto& h = PerToken ? out.last_hidden_state : out.pooler_output;
    return classifier(maybe_dropout(h, config.classifier_dropout.value_or(config.hidden_dropout_prob), this->is_training()));
  }
  json config_json() const override {
    auto j = config.to_json();
    j["architectures"] = json::array({Derived::architecture});
    return j;
  }
  bool ignorable_key(const std::string& key) const override { return bert->ignorable_key(key); }
  std::vector<std::string> head_modules() const override { return {"classifier"}; }
  BertConfig config;
  BertModel bert{nullptr};
  Linear classifier{nullptr};
};
}  // namespace detail

/// BertForSequenceClassification: `bert` (with pooler) -> dropout -> `classifier`; logits [B, num_labels].
class BertForSequenceClassificationImpl
    : public detail::BertClassifierImpl<BertForSequenceClassificationImpl, /*PerToken=*/false> {
 public:
  using BertClassifierImpl::BertClassifierImpl;
  static constexpr const char* architecture = "BertForSequenceClassification";
};
TORCH_MODULE(BertForSequenceClassification);

/// BertForTokenClassification: `bert` (no pooler) -> dropout -> `classifier` per token; logits [B, T, num_labels].
class BertForTokenClassificationImpl
    : public detail::BertClassifierImpl<BertForTokenClassificationImpl, /*PerToken=*/true> {
 public:
  using BertClassifierImpl::BertClassifierImpl;
  static constexpr const char* architecture = "BertForTokenClassification";
};
TORCH_MODULE(BertForTokenClassification);

}  // namespace peft::models
