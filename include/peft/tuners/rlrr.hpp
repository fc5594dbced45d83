#pragma once
/// \file rlrr.hpp
/// RLRR (arXiv 2403.19067), residual low-rank rescaling, with SSF (arXiv 2210.08823) as its code uses it.
///
/// On every targeted Linear (a weight-placement tuner):  W' = W ⊙ (1 + s_out s_inᵀ),  b' = b + f.
/// On every LayerNorm / RMSNorm and the patch-embedding Conv2d (an output tuner):  y·γ + β per channel.
/// Both merge into the weights. Init "paper" (the authors' code, the default): s_in ~ U(±sqrt(6/in)),
/// s_out ~ U(±sqrt(6)), f = 0, γ ~ N(1, 0.02), β ~ N(0, 0.02), so the model changes at init; "zero":
/// s = 0, f = 0, γ = 1, β = 0, the identity.
///
///     peft::attach(*vit, peft::RLRRConfig().modules_to_save({"classifier"}));
///
/// File layout (ours): peft_type "RLRR"; `base_model.model.<module>.rlrr_s_out` [out], `.rlrr_s_in` [in],
/// `.rlrr_f` [out] (only where the Linear has a bias); `<norm or conv>.ssf_scale` [C], `.ssf_shift` [C].
/// ViT-B/16: 23,808 trainable parameters per block.

#include <peft/core/adapter_config.hpp>
#include <peft/core/detail/json_fields.hpp>
#include <peft/core/tuner.hpp>
#include <peft/core/version.hpp>
#include <peft/nn/rms_norm.hpp>
#include <peft/slots/conv2d.hpp>
#include <peft/slots/layer_norm.hpp>
#include <peft/slots/linear.hpp>
#include <peft/tuners/registry.hpp>

#include <torch/arg.h>
#include <torch/nn/cloneable.h>

#include <cmath>

namespace peft {

/// RLRR's options; target_modules empty (the default): every Linear except lm_head and modules_to_save.
class RLRRConfig : public LayerTunerConfig<RLRRConfig> {
 public:
  /// "paper" (default) or "zero".
  TORCH_ARG(std::string, init) = "paper";
  /// SSF scale/shift after every norm and Conv2d (the patch embedding).
  TORCH_ARG(bool, ssf) = true;
  /// Start the modules_to_save copies (the classification head) at zero, as the official code does.
  TORCH_ARG(bool, zero_head) = false;

 public:
  std::string peft_type() const override { return "RLRR"; }
  TargetRules target_rules() const override {
    return {target_modules_.empty() ? TargetModules("all-linear") : target_modules_, exclude_modules_,
            layers_to_transform_, layers_pattern_};
  }
  void validate() const override {
    if (init_ != "paper" && init_ != "zero")
      throw ConfigError("RLRRConfig: init must be \"paper\" or \"zero\", received \"" + init_ + "\"");
    if (zero_head_ && modules_to_save_.empty())
      throw ConfigError("RLRRConfig: zero_head zeroes the head trained in full, but modules_to_save is empty (e.g. {\"classifier\"})");
  }
  bool zero_saved_modules() const override { return zero_head_; }
  bool targets(const TunableSlot& slot, const std::string& name) const override {
    const std::string kind = slot.op_kind();
    if (kind == "Linear") return AdapterConfig::targets(slot, name);
    if (!ssf_ || !(kind == "LayerNorm" || kind == "RMSNorm" || kind == "Conv2d")) return false;
    if (exclude_modules_.matches(name) || !slot.base_weights().weight.defined()) return false;
    for (const auto& m : modules_to_save_)
      if (TargetModules({m}).matches(name)) return false;
    return true;
  }
  std::shared_ptr<torch::nn::Module> make_tuner(TunableSlot& slot, const std::string& name,
                                                const std::shared_ptr<const AdapterConfig>& self) const override;

  nlohmann::ordered_json to_json() const override {
    nlohmann::ordered_json j;
    write_common(j);
    j["init"] = init_;
    j["ssf"] = ssf_;
    j["zero_head"] = zero_head_;
    stamp(j);
    return j;
  }
  static RLRRConfig from_json(const nlohmann::ordered_json& j, const std::string& source) {
    RLRRConfig c;
    c.read_common(j, source);
    detail::read_field(j, "init", c.init_, source);
    detail::read_field(j, "ssf", c.ssf_, source);
    detail::read_field(j, "zero_head", c.zero_head_, source);
    return c;
  }

};

/// RLRR on one Linear: W' = W ⊙ (1 + s_out s_inᵀ), b' = b + f.
class RLRRLinearImpl : public torch::nn::Cloneable<RLRRLinearImpl>, public Tuner {
 public:
  RLRRLinearImpl(int64_t in, int64_t out, bool has_bias, std::shared_ptr<const AdapterConfig> config)
      : in_features(in), out_features(out), has_bias(has_bias), config_(std::move(config)) {
    reset();
  }
  int64_t in_features, out_features;
  bool has_bias;
  at::Tensor rlrr_s_out, rlrr_s_in, rlrr_f;

  void reset() override {
    const bool grad = rlrr_s_out.defined() ? rlrr_s_out.requires_grad() : true;
    rlrr_s_out = register_parameter("rlrr_s_out", at::zeros({out_features}), grad);
    rlrr_s_in = register_parameter("rlrr_s_in", at::zeros({in_features}), grad);
    if (has_bias) rlrr_f = register_parameter("rlrr_f", at::zeros({out_features}), grad);
  }
  /// The authors' init: s_in ~ U(±sqrt(6/in)), s_out ~ U(±sqrt(6)) (kaiming with fan-in 1), f = 0.
  void init_paper() {
    torch::NoGradGuard g;
    const double a = std::sqrt(6.0 / static_cast<double>(in_features));
    rlrr_s_in.uniform_(-a, a);
    rlrr_s_out.uniform_(-std::sqrt(6.0), std::sqrt(6.0));
  }
  Placement placement() const override { return Placement::weight; }
  std::string method() const override { return "rlrr"; }
  const std::shared_ptr<const AdapterConfig>& config() const override { return config_; }
  torch::nn::Module& as_module() override { return *this; }
  bool mergeable() const override { return true; }

  at::Tensor factor() const { return 1 + at::outer(rlrr_s_out, rlrr_s_in); }
  void reparameterize(WeightSet& w) const override {
    w.weight = w.weight * factor();
    if (has_bias) w.bias = w.bias + rlrr_f;
  }
  WeightSet delta(const WeightSet& base) const override {
    return {base.weight * at::outer(rlrr_s_out, rlrr_s_in), has_bias ? rlrr_f : at::Tensor()};
  }
  /// W += W ⊙ s_out s_inᵀ, rounded once. Where a factor (1 + s_out s_in) is near zero the product
  /// no longer holds W (exactly zero at F = 0), so those entries' original values are kept for unmerge.
  void merge(WeightSet& base) const override {
    const auto lost = (factor().abs() < kNearZero).flatten().nonzero().flatten();  // row-major positions
    kept_index_ = lost.numel() ? lost : at::Tensor();
    kept_values_ = lost.numel() ? at::take(base.weight, lost) : at::Tensor();
    base.weight.add_(base.weight * at::outer(rlrr_s_out, rlrr_s_in));
    if (has_bias) base.bias.add_(rlrr_f);
  }
  /// W' / F (the relative rounding error stays that of one division), and the kept originals where F
  /// was near zero: exact where dividing could not be.
  void unmerge(WeightSet& base) const override {
    const auto f = factor();
    base.weight.div_(at::where(f.abs() < kNearZero, at::ones_like(f), f));  // rounded once to the weight's dtype
    if (kept_index_.defined()) base.weight.put_(kept_index_, kept_values_);
    kept_index_ = kept_values_ = at::Tensor();
    if (has_bias) base.bias.sub_(rlrr_f);
  }
  /// |1 + s_out s_in| below this: the merged entry keeps its original for unmerge.
  static constexpr double kNearZero = 1e-3;
  std::vector<std::pair<std::string, at::Tensor>> adapter_tensors() const override {
    std::vector<std::pair<std::string, at::Tensor>> t = {{"rlrr_s_out", rlrr_s_out}, {"rlrr_s_in", rlrr_s_in}};
    if (has_bias) t.emplace_back("rlrr_f", rlrr_f);
    return t;
  }
  void pretty_print(std::ostream& s) const override {
    s << "peft::RLRRLinear(in_features=" << in_features << ", out_features=" << out_features << ")";
  }

 private:
  std::shared_ptr<const AdapterConfig> config_;
  mutable at::Tensor kept_index_, kept_values_;  // set by merge, used by unmerge
};
TORCH_MODULE(RLRRLinear);

/// SSF: y·γ + β over the channel dimension (last for norms, 1 for Conv2d). Merges into the op when it
/// has a bias to absorb β (LayerNorm with affine, Conv2d with bias).
class SSFImpl : public torch::nn::Cloneable<SSFImpl>, public Tuner {
 public:
  SSFImpl(int64_t channels, int64_t channel_dim, bool op_has_bias, std::shared_ptr<const AdapterConfig> config)
      : channels(channels), channel_dim(channel_dim), op_has_bias(op_has_bias), config_(std::move(config)) {
    reset();
  }
  int64_t channels, channel_dim;  // channel_dim: -1 (last) or 1 (NCHW)
  bool op_has_bias;
  at::Tensor ssf_scale, ssf_shift;

  void reset() override {
    const bool grad = ssf_scale.defined() ? ssf_scale.requires_grad() : true;
    ssf_scale = register_parameter("ssf_scale", at::ones({channels}), grad);
    ssf_shift = register_parameter("ssf_shift", at::zeros({channels}), grad);
  }
  void init_paper() {
    torch::NoGradGuard g;
    ssf_scale.normal_(1.0, 0.02);
    ssf_shift.normal_(0.0, 0.02);
  }
  Placement placement() const override { return Placement::output; }
  std::string method() const override { return "ssf"; }
  const std::shared_ptr<const AdapterConfig>& config() const override { return config_; }
  torch::nn::Module& as_module() override { return *this; }
  bool mergeable() const override { return op_has_bias; }

  at::Tensor output(const at::Tensor& y) override {
    if (channel_dim == -1) return at::addcmul(ssf_shift, y, ssf_scale);
    std::vector<int64_t> shape(static_cast<std::size_t>(y.dim()), 1);
    shape[static_cast<std::size_t>(channel_dim)] = channels;
    return at::addcmul(ssf_shift.view(shape), y, ssf_scale.view(shape));
  }
  /// A scale near zero would lose the weights it multiplies: then the op's weight and bias are kept
  /// for unmerge (rare: γ starts at 1).
  void merge(WeightSet& base) const override {
    const auto g = ssf_scale.to(base.weight.scalar_type()), b = ssf_shift.to(base.weight.scalar_type());
    const bool lossy = (ssf_scale.abs() < RLRRLinearImpl::kNearZero).any().item<bool>();
    kept_weight_ = lossy ? base.weight.clone() : at::Tensor();
    kept_bias_ = lossy ? base.bias.clone() : at::Tensor();
    base.weight.mul_(channel_dim == -1 ? g : g.view({-1, 1, 1, 1}));
    base.bias.mul_(g).add_(b);
  }
  void unmerge(WeightSet& base) const override {
    if (kept_weight_.defined()) {
      base.weight.copy_(kept_weight_), base.bias.copy_(kept_bias_);
      kept_weight_ = kept_bias_ = at::Tensor();
      return;
    }
    const auto g = ssf_scale.to(base.weight.scalar_type()), b = ssf_shift.to(base.weight.scalar_type());
    base.bias.sub_(b).div_(g);
    base.weight.div_(channel_dim == -1 ? g : g.view({-1, 1, 1, 1}));
  }
  std::vector<std::pair<std::string, at::Tensor>> adapter_tensors() const override {
    return {{"ssf_scale", ssf_scale}, {"ssf_shift", ssf_shift}};
  }
  void pretty_print(std::ostream& s) const override { s << "peft::SSF(channels=" << channels << ")"; }

 private:
  std::shared_ptr<const AdapterConfig> config_;
  mutable at::Tensor kept_weight_, kept_bias_;  // set by a lossy merge, used by unmerge
};
TORCH_MODULE(SSF);

inline std::shared_ptr<torch::nn::Module> RLRRConfig::make_tuner(TunableSlot& slot, const std::string& name,
                                                                 const std::shared_ptr<const AdapterConfig>& self) const {
  const std::string kind = slot.op_kind();
  const auto [in, out] = slot.features();
  const bool has_bias = slot.base_weights().bias.defined();
  if (kind == "Linear") {
    auto t = std::make_shared<RLRRLinearImpl>(in, out, has_bias, self);
    if (init_ == "paper") t->init_paper();
    return t;
  }
  if (kind == "LayerNorm" || kind == "RMSNorm" || kind == "Conv2d") {
    auto t = std::make_shared<SSFImpl>(out, kind == "Conv2d" ? 1 : -1, has_bias, self);
    if (init_ == "paper") t->init_paper();
    return t;
  }
  throw MatchError("RLRR cannot adapt module '" + name + "' of kind " + kind + " (expected Linear, or a norm / Conv2d for SSF)");
}

PEFT_REGISTER_METHOD(rlrr, RLRRConfig, "RLRR", "RLRR")

}  // namespace peft
