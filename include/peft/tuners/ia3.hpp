#pragma once
/// \file ia3.hpp
/// IA3 (arXiv 2205.05638): learned vectors, initialized to ones, that rescale activations. On a Linear
/// listed in target_modules but not feedforward_modules the output is rescaled (output placement,
/// l [out, 1]: y = (W x + b) * l); on a feed-forward module the input is (input placement, l [1, in]:
/// y = W (x * l) + b). Both merge into the weights.
///
///     peft::attach(*model, peft::IA3Config().target_modules({"key", "value", "output.dense"})
///                                          .feedforward_modules({"output.dense"}));
///
/// File layout (Hugging Face PEFT's): peft_type "IA3"; `base_model.model.<module>.ia3_l`.

#include <peft/core/adapter_config.hpp>
#include <peft/core/detail/json_fields.hpp>
#include <peft/core/tuner.hpp>
#include <peft/core/version.hpp>
#include <peft/slots/linear.hpp>
#include <peft/tuners/registry.hpp>

#include <torch/arg.h>
#include <torch/nn/cloneable.h>

namespace peft {

/// IA3's options, PEFT's IA3Config.
class IA3Config : public LayerTunerConfig<IA3Config> {
 public:
  /// Which of the targeted modules are feed-forward (their input is rescaled). Must be a subset.
  TORCH_ARG(TargetModules, feedforward_modules);
  /// true (PEFT's default): vectors start at ones, the identity. false: N(1, 0.02), for tests.
  TORCH_ARG(bool, init_ia3_weights) = true;
  TORCH_ARG(bool, fan_in_fan_out) = false;

 public:
  std::string peft_type() const override { return "IA3"; }
  void validate() const override {
    if (target_modules_.empty()) throw ConfigError("IA3Config: target_modules is empty: name the modules to adapt");
    if (fan_in_fan_out_) throw ConfigError("IA3Config: fan_in_fan_out=true (Conv1D layers) is not supported");
    if (target_modules_.is_list() && feedforward_modules_.is_list())
      for (const auto& f : feedforward_modules_.list())
        if (std::find(target_modules_.list().begin(), target_modules_.list().end(), f) == target_modules_.list().end())
          throw ConfigError("IA3Config: feedforward_modules entry '" + f + "' is not among target_modules");
  }
  std::shared_ptr<torch::nn::Module> make_tuner(TunableSlot& slot, const std::string& name,
                                                const std::shared_ptr<const AdapterConfig>& self) const override;

  nlohmann::ordered_json to_json() const override {
    nlohmann::ordered_json j;
    write_common(j, /*layer_fields=*/false);  // PEFT's IA3Config has no layers_to_transform / layers_pattern
    j["feedforward_modules"] = feedforward_modules_.to_json();
    j["fan_in_fan_out"] = fan_in_fan_out_;
    j["init_ia3_weights"] = init_ia3_weights_;
    j["revision"] = nullptr;
    return j;
  }
  static IA3Config from_json(const nlohmann::ordered_json& j, const std::string& source) {
    IA3Config c;
    c.read_common(j, source);
    if (j.contains("feedforward_modules"))
      c.feedforward_modules_ = TargetModules::from_json(j["feedforward_modules"], "feedforward_modules");
    detail::read_field(j, "init_ia3_weights", c.init_ia3_weights_, source);
    detail::read_field(j, "fan_in_fan_out", c.fan_in_fan_out_, source);
    return c;
  }

};

/// The IA3 tuner on one Linear slot.
class IA3LinearImpl : public torch::nn::Cloneable<IA3LinearImpl>, public Tuner {
 public:
  IA3LinearImpl(int64_t in_features, int64_t out_features, bool feedforward, std::shared_ptr<const AdapterConfig> config)
      : in_features(in_features), out_features(out_features), feedforward(feedforward), config_(std::move(config)) {
    reset();
  }
  int64_t in_features, out_features;
  bool feedforward;
  /// [1, in] (feed-forward) or [out, 1].
  at::Tensor ia3_l;

  void reset() override {
    const bool grad = ia3_l.defined() ? ia3_l.requires_grad() : true;
    ia3_l = register_parameter("ia3_l", feedforward ? at::ones({1, in_features}) : at::ones({out_features, 1}), grad);
  }
  Placement placement() const override { return feedforward ? Placement::input : Placement::output; }
  std::string method() const override { return "ia3"; }
  const std::shared_ptr<const AdapterConfig>& config() const override { return config_; }
  torch::nn::Module& as_module() override { return *this; }
  bool mergeable() const override { return true; }

  at::Tensor input(const at::Tensor& x) override { return x * ia3_l.view({-1}); }
  at::Tensor output(const at::Tensor& y) override { return y * ia3_l.view({-1}); }

  void merge(WeightSet& base) const override { scale(base, ia3_l.to(base.weight.scalar_type())); }
  void unmerge(WeightSet& base) const override {
    scale(base, 1.0 / (ia3_l.to(base.weight.scalar_type()) + 1e-8));  // as PEFT: guard against zeros
  }
  WeightSet delta(const WeightSet& base) const override {
    WeightSet w{base.weight.clone(), base.bias.defined() ? base.bias.clone() : base.bias};
    scale(w, ia3_l.to(base.weight.scalar_type()));
    return {w.weight - base.weight, base.bias.defined() ? w.bias - base.bias : at::Tensor()};
  }
  std::vector<std::pair<std::string, at::Tensor>> adapter_tensors() const override { return {{"ia3_l", ia3_l}}; }
  void pretty_print(std::ostream& s) const override {
    s << "peft::IA3Linear(" << (feedforward ? "input" : "output") << ", features="
      << (feedforward ? in_features : out_features) << ")";
  }

 private:
  // Output: rows of W and b scaled by l. Feed-forward: columns of W scaled, b unchanged.
  void scale(WeightSet& w, const at::Tensor& l) const {
    if (feedforward) {
      w.weight.mul_(l.view({1, -1}));
    } else {
      w.weight.mul_(l.view({-1, 1}));
      if (w.bias.defined()) w.bias.mul_(l.view({-1}));
    }
  }
  std::shared_ptr<const AdapterConfig> config_;
};
TORCH_MODULE(IA3Linear);

inline std::shared_ptr<torch::nn::Module> IA3Config::make_tuner(TunableSlot& slot, const std::string& name,
                                                                const std::shared_ptr<const AdapterConfig>& self) const {
  auto* lin = dynamic_cast<LinearImpl*>(&slot.as_module());
  if (!lin) throw MatchError("IA3 cannot adapt module '" + name + "' of kind " + slot.op_kind() + " (expected Linear)");
  const bool ff = feedforward_modules_.matches(name);
  auto t = std::make_shared<IA3LinearImpl>(lin->options.in_features(), lin->options.out_features(), ff, self);
  if (!init_ia3_weights_) {
    torch::NoGradGuard g;
    t->ia3_l.normal_(1.0, 0.02);
  }
  return t;
}

PEFT_REGISTER_METHOD(ia3, IA3Config, "IA3", "IA3")

}  // namespace peft
