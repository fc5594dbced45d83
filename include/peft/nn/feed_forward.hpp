#pragma once
/// \file nn/feed_forward.hpp
/// Feed-forward ops as tunable composites: the GELU MLP (fc1 -> act -> fc2) and the gated SwiGLU MLP
/// (down(act(gate(x)) * up(x)), LLaMA's layout), plus Hugging Face's activation names.

#include <peft/core/error.hpp>
#include <peft/core/tunable.hpp>
#include <peft/slots/linear.hpp>

#include <torch/arg.h>
#include <torch/nn/pimpl.h>

#include <cmath>
#include <functional>
#include <string>

namespace peft::nn {

/// An activation by its Hugging Face `hidden_act` name: gelu (exact), gelu_new / gelu_pytorch_tanh /
/// gelu_fast (tanh approximation), quick_gelu, relu, silu / swish, tanh. Unknown names: ConfigError.
inline std::function<at::Tensor(const at::Tensor&)> activation(const std::string& name) {
  if (name == "gelu") return [](const at::Tensor& x) { return at::gelu(x); };
  if (name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu_fast")
    return [](const at::Tensor& x) { return at::gelu(x, "tanh"); };
  if (name == "quick_gelu") return [](const at::Tensor& x) { return x * at::sigmoid(1.702 * x); };
  if (name == "relu") return [](const at::Tensor& x) { return at::relu(x); };
  if (name == "silu" || name == "swish") return [](const at::Tensor& x) { return at::silu(x); };
  if (name == "tanh") return [](const at::Tensor& x) { return at::tanh(x); };
  throw ConfigError("unsupported activation '" + name +
                    "'; expected one of gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, quick_gelu, relu, silu, swish, tanh");
}

struct MlpOptions {
  MlpOptions(int64_t hidden_size, int64_t intermediate_size)
      : hidden_size_(hidden_size), intermediate_size_(intermediate_size) {}
  TORCH_ARG(int64_t, hidden_size);
  TORCH_ARG(int64_t, intermediate_size);
  TORCH_ARG(std::string, activation) = "gelu";
  TORCH_ARG(bool, bias) = true;
  /// Dropout after fc2 (training only).
  TORCH_ARG(double, dropout) = 0.0;
};

/// fc2(act(fc1(x))): the transformer MLP, a slot of its own with Linear slots fc1 and fc2 inside.
class MlpImpl : public CompositeSlot<MlpImpl> {
 public:
  explicit MlpImpl(MlpOptions options_) : options(std::move(options_)) { reset(); }
  void reset() override {
    act_ = activation(options.activation());
    fc1 = register_module("fc1", Linear(LinearOptions(options.hidden_size(), options.intermediate_size()).bias(options.bias())));
    fc2 = register_module("fc2", Linear(LinearOptions(options.intermediate_size(), options.hidden_size()).bias(options.bias())));
    reset_adapters();
  }
  at::Tensor forward(const at::Tensor& x) {
    return tuned(x, [this](const at::Tensor& h) {
      auto y = fc2(act_(fc1(h)));
      return is_training() && options.dropout() > 0 ? at::dropout(y, options.dropout(), true) : y;
    });
  }
  const char* op_kind() const override { return "FFN"; }
  std::pair<int64_t, int64_t> features() const override { return {options.hidden_size(), options.hidden_size()}; }
  void pretty_print_op(std::ostream& s) const {
    s << "peft::nn::Mlp(" << options.hidden_size() << " -> " << options.intermediate_size() << ", "
      << options.activation() << ")";
  }

  MlpOptions options;
  Linear fc1{nullptr}, fc2{nullptr};

 private:
  std::function<at::Tensor(const at::Tensor&)> act_;
};
TORCH_MODULE(Mlp);

struct GatedMlpOptions {
  GatedMlpOptions(int64_t hidden_size, int64_t intermediate_size)
      : hidden_size_(hidden_size), intermediate_size_(intermediate_size) {}
  TORCH_ARG(int64_t, hidden_size);
  TORCH_ARG(int64_t, intermediate_size);
  TORCH_ARG(std::string, activation) = "silu";
  TORCH_ARG(bool, bias) = false;
};

/// down_proj(act(gate_proj(x)) * up_proj(x)): SwiGLU with act = silu (LLaMA's LlamaMLP).
class GatedMlpImpl : public CompositeSlot<GatedMlpImpl> {
 public:
  explicit GatedMlpImpl(GatedMlpOptions options_) : options(std::move(options_)) { reset(); }
  void reset() override {
    act_ = activation(options.activation());
    const auto h = options.hidden_size(), i = options.intermediate_size();
    gate_proj = register_module("gate_proj", Linear(LinearOptions(h, i).bias(options.bias())));
    up_proj = register_module("up_proj", Linear(LinearOptions(h, i).bias(options.bias())));
    down_proj = register_module("down_proj", Linear(LinearOptions(i, h).bias(options.bias())));
    reset_adapters();
  }
  at::Tensor forward(const at::Tensor& x) {
    return tuned(x, [this](const at::Tensor& h) { return down_proj(act_(gate_proj(h)) * up_proj(h)); });
  }
  const char* op_kind() const override { return "FFN"; }
  std::pair<int64_t, int64_t> features() const override { return {options.hidden_size(), options.hidden_size()}; }
  void pretty_print_op(std::ostream& s) const {
    s << "peft::nn::GatedMlp(" << options.hidden_size() << " -> " << options.intermediate_size() << ", "
      << options.activation() << ")";
  }

  GatedMlpOptions options;
  Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};

 private:
  std::function<at::Tensor(const at::Tensor&)> act_;
};
TORCH_MODULE(GatedMlp);

}  // namespace peft::nn
