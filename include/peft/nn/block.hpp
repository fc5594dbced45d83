#pragma once
/// \file nn/block.hpp
/// A transformer block as one tunable op: attention + feed-forward with residuals, pre-norm
/// (x + attn(norm(x)), LLaMA/ViT style) or post-norm (norm(x + attn(x)), BERT style). Its parts keep
/// LLaMA's names: self_attn, mlp, input_layernorm, post_attention_layernorm.

#include <peft/core/tunable.hpp>
#include <peft/nn/attention.hpp>
#include <peft/nn/feed_forward.hpp>
#include <peft/nn/rms_norm.hpp>
#include <peft/slots/layer_norm.hpp>

#include <torch/arg.h>
#include <torch/nn/modules/container/any.h>
#include <torch/nn/pimpl.h>

namespace peft::nn {

enum class NormKind { layer_norm, rms_norm };
enum class MlpKind { mlp, gated };

struct TransformerBlockOptions {
  TransformerBlockOptions(int64_t hidden_size, int64_t num_heads, int64_t intermediate_size)
      : attention_(hidden_size, num_heads), intermediate_size_(intermediate_size) {}
  /// The attention's options (heads, kv heads, head_dim, biases, dropout).
  TORCH_ARG(MultiHeadAttentionOptions, attention);
  TORCH_ARG(int64_t, intermediate_size);
  TORCH_ARG(MlpKind, mlp) = MlpKind::mlp;
  TORCH_ARG(std::string, activation) = "gelu";
  TORCH_ARG(bool, mlp_bias) = true;
  TORCH_ARG(NormKind, norm) = NormKind::layer_norm;
  TORCH_ARG(double, norm_eps) = 1e-5;
  TORCH_ARG(bool, pre_norm) = true;
  /// Dropout on each sublayer's output before the residual add (training only).
  TORCH_ARG(double, dropout) = 0.0;
};

class TransformerBlockImpl : public CompositeSlot<TransformerBlockImpl> {
 public:
  explicit TransformerBlockImpl(TransformerBlockOptions options_) : options(std::move(options_)) { reset(); }

  void reset() override {
    const auto& o = options;
    const int64_t h = o.attention().hidden_size();
    self_attn = register_module("self_attn", MultiHeadAttention(o.attention()));
    if (o.mlp() == MlpKind::gated)
      mlp = torch::nn::AnyModule(GatedMlp(GatedMlpOptions(h, o.intermediate_size()).activation(o.activation()).bias(o.mlp_bias())));
    else
      mlp = torch::nn::AnyModule(Mlp(MlpOptions(h, o.intermediate_size()).activation(o.activation()).bias(o.mlp_bias())));
    register_module("mlp", mlp.ptr());
    input_layernorm = make_norm(h);
    register_module("input_layernorm", input_layernorm.ptr());
    post_attention_layernorm = make_norm(h);
    register_module("post_attention_layernorm", post_attention_layernorm.ptr());
    reset_adapters();
  }

  at::Tensor forward(const at::Tensor& x, const AttentionInputs& in = {}) {
    if (in.cache && checkpoints_now())
      throw StateError("TransformerBlock: activation checkpointing cannot recompute a step that extends a KV cache; "
                       "generate under torch::NoGradGuard or in eval mode, or turn checkpointing off");
    return tuned(x, [this, in](const at::Tensor& h) {  // by value: checkpointing runs it again in backward
      auto drop = [&](const at::Tensor& t) {
        return is_training() && options.dropout() > 0 ? at::dropout(t, options.dropout(), true) : t;
      };
      if (options.pre_norm()) {
        auto r = h + drop(self_attn(input_layernorm.forward(h), in));
        return r + drop(mlp.forward(post_attention_layernorm.forward(r)));
      }
      auto r = input_layernorm.forward(h + drop(self_attn(h, in)));
      return post_attention_layernorm.forward(r + drop(mlp.forward(r)));
    });
  }

  const char* op_kind() const override { return "Block"; }
  std::pair<int64_t, int64_t> features() const override {
    const auto d = options.attention().hidden_size();
    return {d, d};
  }
  void pretty_print_op(std::ostream& s) const {
    s << "peft::nn::TransformerBlock(" << (options.pre_norm() ? "pre-norm" : "post-norm") << ")";
  }

  TransformerBlockOptions options;
  MultiHeadAttention self_attn{nullptr};
  torch::nn::AnyModule mlp, input_layernorm, post_attention_layernorm;

 private:
  torch::nn::AnyModule make_norm(int64_t h) const {
    if (options.norm() == NormKind::rms_norm) return torch::nn::AnyModule(RMSNorm(RMSNormOptions(h).eps(options.norm_eps())));
    return torch::nn::AnyModule(LayerNorm(LayerNormOptions({h}).eps(options.norm_eps())));
  }
};
TORCH_MODULE(TransformerBlock);

}  // namespace peft::nn
