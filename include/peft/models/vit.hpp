#pragma once
/// \file models/vit.hpp
/// Vision Transformer with Hugging Face's module paths (ViTModel, ViTForImageClassification), built
/// from tunable slots. Attention (`vit.encoder.layer.N.attention`), the feed-forward
/// (`vit.encoder.layer.N.mlp`, a site around `intermediate` + `output`), each layer and the embeddings
/// are tunable ops too.
///
///     auto cfg = peft::models::ViTConfig::from_file("vit/config.json");
///     peft::models::ViTForImageClassification vit(cfg);
///     peft::load_pretrained(*vit, "vit/", peft::LoadOptions().strict(false));   // skip the pretraining head
///     auto logits = vit->forward(pixels);                       // [B, num_labels]

#include <peft/core/tunable.hpp>
#include <peft/models/common.hpp>
#include <peft/nn/attention.hpp>
#include <peft/core/context.hpp>
#include <peft/nn/feed_forward.hpp>
#include <peft/slots/conv2d.hpp>
#include <peft/slots/layer_norm.hpp>
#include <peft/slots/linear.hpp>

#include <torch/nn/modules/container/modulelist.h>

namespace peft::models {

struct ViTConfig {
  int64_t hidden_size = 768;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 12;
  int64_t intermediate_size = 3072;
  std::string hidden_act = "gelu";
  double hidden_dropout_prob = 0.0;
  double attention_probs_dropout_prob = 0.0;
  double layer_norm_eps = 1e-12;
  int64_t image_size = 224;
  int64_t patch_size = 16;
  int64_t num_channels = 3;
  bool qkv_bias = true;
  int64_t num_labels = 2;
  double initializer_range = 0.02;

  int64_t num_patches() const { return (image_size / patch_size) * (image_size / patch_size); }

  void validate(const std::string& source = "ViTConfig") const {
    detail::ConfigReader r(json::object(), source);
    r.positive("hidden_size", hidden_size), r.positive("num_hidden_layers", num_hidden_layers);
    r.positive("num_attention_heads", num_attention_heads), r.positive("intermediate_size", intermediate_size);
    r.positive("image_size", image_size), r.positive("patch_size", patch_size), r.positive("num_channels", num_channels);
    r.positive("num_labels", num_labels);
    if (hidden_size % num_attention_heads)
      throw ConfigError("'" + source + "': hidden_size (" + std::to_string(hidden_size) +
                        ") is not a multiple of num_attention_heads (" + std::to_string(num_attention_heads) + ")");
    if (image_size % patch_size)
      throw ConfigError("'" + source + "': image_size (" + std::to_string(image_size) +
                        ") is not a multiple of patch_size (" + std::to_string(patch_size) + ")");
    nn::activation(hidden_act);
  }

  static ViTConfig from_json(const json& j, const std::string& source = "config.json") {
    detail::ConfigReader r(j, source);
    ViTConfig c;
    c.hidden_size = r.required<int64_t>("hidden_size");
    c.num_hidden_layers = r.required<int64_t>("num_hidden_layers");
    c.num_attention_heads = r.required<int64_t>("num_attention_heads");
    c.intermediate_size = r.required<int64_t>("intermediate_size");
    c.image_size = r.required<int64_t>("image_size");
    c.patch_size = r.required<int64_t>("patch_size");
    c.hidden_act = r.optional<std::string>("hidden_act", c.hidden_act);
    c.hidden_dropout_prob = r.optional<double>("hidden_dropout_prob", c.hidden_dropout_prob);
    c.attention_probs_dropout_prob = r.optional<double>("attention_probs_dropout_prob", c.attention_probs_dropout_prob);
    c.layer_norm_eps = r.optional<double>("layer_norm_eps", c.layer_norm_eps);
    c.num_channels = r.optional<int64_t>("num_channels", c.num_channels);
    c.qkv_bias = r.optional<bool>("qkv_bias", c.qkv_bias);
    c.num_labels = r.num_labels();
    c.initializer_range = r.optional<double>("initializer_range", c.initializer_range);
    c.validate(source);
    return c;
  }
  static ViTConfig from_file(const std::string& path) { return from_json(detail::read_json_file(path), path); }

  json to_json() const {
    json j;
    j["initializer_range"] = initializer_range;
    j["model_type"] = "vit";
    j["hidden_size"] = hidden_size;
    j["num_hidden_layers"] = num_hidden_layers;
    j["num_attention_heads"] = num_attention_heads;
    j["intermediate_size"] = intermediate_size;
    j["hidden_act"] = hidden_act;
    j["hidden_dropout_prob"] = hidden_dropout_prob;
    j["attention_probs_dropout_prob"] = attention_probs_dropout_prob;
    j["layer_norm_eps"] = layer_norm_eps;
    j["image_size"] = image_size;
    j["patch_size"] = patch_size;
    j["num_channels"] = num_channels;
    j["qkv_bias"] = qkv_bias;
    j["id2label"] = detail::default_id2label(num_labels);
    return j;
  }
};

/// Output of the bare encoders.
struct EncoderOutput {
  at::Tensor last_hidden_state;  ///< [B, T, hidden]
  at::Tensor pooler_output;      ///< [B, hidden], undefined without a pooler
};

/// Mean of the hidden states over the tokens where attention_mask is 1 ([B, T, d], [B, T] -> [B, d]),
/// L2-normalised when `normalize` (sentence-transformers' mean-pooling + Normalize recipe, as used by
/// all-MiniLM-L6-v2). An undefined mask averages every position.
inline at::Tensor mean_pool(const at::Tensor& hidden, const at::Tensor& attention_mask, bool normalize = false) {
  at::Tensor pooled;
  if (attention_mask.defined()) {
    const auto m = attention_mask.unsqueeze(-1).to(hidden.scalar_type());
    pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9);
  } else {
    pooled = hidden.mean(1);
  }
  return normalize ? pooled / pooled.norm(2, -1, true).clamp_min(1e-12) : pooled;
}

/// `embeddings`: CLS token + patch projection (a Conv2d slot) + position embeddings. A tunable op
/// itself: pixels in, [B, 1 + patches, hidden] out (prompt tuning attaches here as an output tuner).
class ViTEmbeddingsImpl : public CompositeSlot<ViTEmbeddingsImpl> {
 public:
  explicit ViTEmbeddingsImpl(ViTConfig c) : config(std::move(c)) { reset(); }
  void reset() override {
    const auto d = config.hidden_size;
    // clone() copies the object and calls reset(): keep whether these train (a frozen base stays frozen).
    cls_token = peft::detail::register_keep_grad(*this, "cls_token", cls_token, at::zeros({1, 1, d}));
    position_embeddings = peft::detail::register_keep_grad(*this, "position_embeddings", position_embeddings,
                                                     at::zeros({1, config.num_patches() + 1, d}));
    patch_embeddings = register_module("patch_embeddings", std::make_shared<PatchEmbeddingsImpl>(config));
    reset_adapters();
  }
  at::Tensor forward(const at::Tensor& pixel_values) {
    if (pixel_values.dim() != 4 || pixel_values.size(1) != config.num_channels ||
        pixel_values.size(2) != config.image_size || pixel_values.size(3) != config.image_size)
      throw InputError("ViT: pixel_values must be [batch, " + std::to_string(config.num_channels) + ", " +
                       std::to_string(config.image_size) + ", " + std::to_string(config.image_size) + "], received " +
                       peft::detail::shape_str(pixel_values.sizes().vec()));
    return tuned(pixel_values, [this](const at::Tensor& px) {
      const auto b = px.size(0);
      auto patches = patch_embeddings->projection(px.to(cls_token.scalar_type())).flatten(2).transpose(1, 2);
      auto x = at::cat({cls_token.expand({b, -1, -1}), patches}, 1) + position_embeddings;
      return maybe_dropout(x, config.hidden_dropout_prob, is_training());
    });
  }
  const char* op_kind() const override { return "Embeddings"; }
  std::pair<int64_t, int64_t> features() const override { return {0, config.hidden_size}; }
  void pretty_print_op(std::ostream& s) const { s << "peft::models::ViTEmbeddings"; }

  /// `patch_embeddings.projection`.
  struct PatchEmbeddingsImpl : torch::nn::Cloneable<PatchEmbeddingsImpl> {
    explicit PatchEmbeddingsImpl(const ViTConfig& c) : c_(c) { reset(); }
    void reset() override {
      projection = register_module(
          "projection", Conv2d(Conv2dOptions(c_.num_channels, c_.hidden_size, c_.patch_size).stride(c_.patch_size)));
    }
    Conv2d projection{nullptr};
    ViTConfig c_;
  };

  ViTConfig config;
  at::Tensor cls_token, position_embeddings;
  std::shared_ptr<PatchEmbeddingsImpl> patch_embeddings;
};
TORCH_MODULE(ViTEmbeddings);

/// `attention`: self-attention (`attention.{query,key,value}`) + `output.dense`, as one tunable op.
class ViTAttentionImpl : public CompositeSlot<ViTAttentionImpl>, public nn::AttentionShape {
 public:
  explicit ViTAttentionImpl(ViTConfig c) : config(std::move(c)) { reset(); }
  void reset() override {
    const auto d = config.hidden_size;
    attention = register_module("attention", layout::Qkv(d, d, config.qkv_bias));
    output = register_module("output", layout::Dense(d, d));
    reset_adapters();
  }
  at::Tensor forward(const at::Tensor& x, const nn::AttentionInputs& in = {}) {
    return tuned(x, [this, in](const at::Tensor& h) {
      const auto heads = config.num_attention_heads, hd = config.hidden_size / heads;
      auto ctx = nn::functional::self_attention(h, attention->query, attention->key, attention->value, heads, heads, hd,
                                                in, inside_tuners(), is_training() ? config.attention_probs_dropout_prob : 0.0);
      return maybe_dropout(output->dense(ctx), config.hidden_dropout_prob, is_training());
    });
  }
  int64_t num_heads() const override { return config.num_attention_heads; }
  int64_t num_kv_heads() const override { return config.num_attention_heads; }
  int64_t head_dim() const override { return config.hidden_size / config.num_attention_heads; }
  const char* op_kind() const override { return "Attention"; }
  std::pair<int64_t, int64_t> features() const override { return {config.hidden_size, config.hidden_size}; }
  void pretty_print_op(std::ostream& s) const { s << "peft::models::ViTAttention(heads=" << config.num_attention_heads << ")"; }

  ViTConfig config;
  layout::Qkv attention{nullptr};
  layout::Dense output{nullptr};
};
TORCH_MODULE(ViTAttention);

/// One encoder layer (a tunable Block): x + attn(LN(x)), then + output(intermediate(LN(.))).
class ViTLayerImpl : public CompositeSlot<ViTLayerImpl> {
 public:
  explicit ViTLayerImpl(ViTConfig c) : config(std::move(c)) { reset(); }
  void reset() override {
    const auto d = config.hidden_size, i = config.intermediate_size;
    act_ = nn::activation(config.hidden_act);
    attention = register_module("attention", ViTAttention(config));
    intermediate = register_module("intermediate", layout::Dense(d, i));
    output = register_module("output", layout::Dense(i, d));
    layernorm_before = register_module("layernorm_before", LayerNorm(LayerNormOptions({d}).eps(config.layer_norm_eps)));
    layernorm_after = register_module("layernorm_after", LayerNorm(LayerNormOptions({d}).eps(config.layer_norm_eps)));
    mlp = register_module("mlp", Site("FFN", config.hidden_size));
    reset_adapters();
  }
  at::Tensor forward(const at::Tensor& x, const nn::AttentionInputs& in = {}) {
    return tuned(x, [this, in](const at::Tensor& h) {  // by value: checkpointing runs it again in backward
      auto r = h + attention->forward(layernorm_before(h), in);
      auto f = mlp->forward(layernorm_after(r), [&](const at::Tensor& z) {
        return maybe_dropout(output->dense(act_(intermediate->dense(z))), config.hidden_dropout_prob, is_training());
      });
      return r + f;
    });
  }
  const char* op_kind() const override { return "Block"; }
  std::pair<int64_t, int64_t> features() const override { return {config.hidden_size, config.hidden_size}; }
  void pretty_print_op(std::ostream& s) const { s << "peft::models::ViTLayer"; }

  ViTConfig config;
  ViTAttention attention{nullptr};
  layout::Dense intermediate{nullptr}, output{nullptr};
  LayerNorm layernorm_before{nullptr}, layernorm_after{nullptr};
  Site mlp{nullptr};

 private:
  std::function<at::Tensor(const at::Tensor&)> act_;
};
TORCH_MODULE(ViTLayer);

/// `encoder.layer.N`.
class ViTEncoderImpl : public torch::nn::Cloneable<ViTEncoderImpl> {
 public:
  explicit ViTEncoderImpl(ViTConfig c) : config(std::move(c)) { reset(); }
  void reset() override {
    layer = register_module("layer", torch::nn::ModuleList());
    for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
      ViTLayer l(config);
      l->set_special_token_count(1);  // the CLS token
      layer->push_back(l);
    }
  }
  at::Tensor forward(at::Tensor x, const nn::AttentionInputs& in = {}) {
    for (std::size_t i = 0; i < layer->size(); ++i) x = layer->ptr<ViTLayerImpl>(i)->forward(x, in);
    return x;
  }
  ViTConfig config;
  torch::nn::ModuleList layer{nullptr};
};
TORCH_MODULE(ViTEncoder);

namespace detail {
template <class M>
void init_vit(M& m, const ViTConfig& c);
}
using detail::init_vit;

/// ViTModel: embeddings, encoder, final layernorm, optional pooler (dense + tanh over the CLS token).
class ViTModelImpl : public torch::nn::Cloneable<ViTModelImpl>, public PretrainedModel {
 public:
  /// `init`: Hugging Face's random initialization (skip it when a checkpoint is loaded next anyway).
  explicit ViTModelImpl(ViTConfig c, bool add_pooling_layer = true, bool init = true)
      : config(std::move(c)), pooling_(add_pooling_layer) {
    config.validate();
    reset();
    if (init) init_vit(*this, config);
  }
  void reset() override {
    embeddings = register_module("embeddings", ViTEmbeddings(config));
    encoder = register_module("encoder", ViTEncoder(config));
    layernorm = register_module("layernorm", LayerNorm(LayerNormOptions({config.hidden_size}).eps(config.layer_norm_eps)));
    if (pooling_) pooler = register_module("pooler", layout::Dense(config.hidden_size, config.hidden_size));
  }
  /// pixel_values [B, C, H, W] -> last_hidden_state [B, 1 + patches (+ prompts), hidden].
  EncoderOutput forward(const at::Tensor& pixel_values) {
    auto x = encoder->forward(embeddings->forward(pixel_values));
    EncoderOutput out{layernorm(x), {}};
    if (pooler) out.pooler_output = at::tanh(pooler->dense(out.last_hidden_state.select(1, 0)));
    return out;
  }
  json config_json() const override {
    auto j = config.to_json();
    j["architectures"] = json::array({"ViTModel"});
    return j;
  }
  ViTConfig config;
  ViTEmbeddings embeddings{nullptr};
  ViTEncoder encoder{nullptr};
  LayerNorm layernorm{nullptr};
  layout::Dense pooler{nullptr};

 private:
  bool pooling_;
};
TORCH_MODULE(ViTModel);

template <class M>
void detail::init_vit(M& m, const ViTConfig& c) {
  init_weights(m, c.initializer_range);
  torch::NoGradGuard no_grad;
  for (const auto& p : m.named_parameters(true))
    if (p.key().size() >= 10 && (p.key().find("embeddings.cls_token") != std::string::npos ||
                                 p.key().find("embeddings.position_embeddings") != std::string::npos))
      p.value().normal_(0.0, c.initializer_range);
}

/// ViTForImageClassification: `vit` (no pooler) + `classifier` on the final CLS state.
class ViTForImageClassificationImpl : public torch::nn::Cloneable<ViTForImageClassificationImpl>, public PretrainedModel {
 public:
  explicit ViTForImageClassificationImpl(ViTConfig c) : config(std::move(c)) {
    config.validate();
    reset();
    init_vit(*this, config);
  }
  void reset() override {
    vit = register_module("vit", ViTModel(config, false, false));
    classifier = register_module("classifier", Linear(config.hidden_size, config.num_labels));
  }
  /// pixel_values [B, C, H, W] -> logits [B, num_labels].
  at::Tensor forward(const at::Tensor& pixel_values) {
    return classifier(vit->forward(pixel_values).last_hidden_state.select(1, 0));
  }
  json config_json() const override {
    auto j = config.to_json();
    j["architectures"] = json::array({"ViTForImageClassification"});
    return j;
  }
  std::vector<std::string> head_modules() const override { return {"classifier"}; }
  ViTConfig config;
  ViTModel vit{nullptr};
  Linear classifier{nullptr};
};
TORCH_MODULE(ViTForImageClassification);

}  // namespace peft::models
