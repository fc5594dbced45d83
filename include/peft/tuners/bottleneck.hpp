#pragma once
/// \file bottleneck.hpp
/// Bottleneck adapters: Down [b, d] -> nonlinearity -> Up [d, b], Up zero-initialized so the adapter
/// starts as the identity (not mergeable: nonlinear).
///
/// | variant  | where (default targets)                 | computes                          |
/// |----------|-----------------------------------------|-----------------------------------|
/// | houlsby  | after attention and after the FFN       | h + Up(act(Down(h))), h = OP(x)   |
/// | pfeiffer | after the FFN                           | h + Up(act(Down(h)))              |
/// | parallel | parallel to the FFN (or to attention)   | OP(x) + scaling · Up(act(Down(x)))|
///
/// Default targets are the model's composite ops by kind (op_kind "Attention" / "FFN"), so the same
/// config works on ViT (`layer.N.attention`, `layer.N.mlp`), BERT and LLaMA (`self_attn`, `mlp`);
/// target_modules names other modules (a Linear works too).
///
///     peft::attach(*bert, peft::BottleneckConfig().variant("pfeiffer").reduction_factor(16));
///
/// File layout (ours): peft_type "BOTTLENECK"; `base_model.model.<module>.adapter_down.weight` [b, in],
/// `.adapter_down.bias` [b], `.adapter_up.weight` [out, b], `.adapter_up.bias` [out] (no biases with
/// bias = false).

#include <peft/core/adapter_config.hpp>
#include <peft/core/detail/json_fields.hpp>
#include <peft/core/tuner.hpp>
#include <peft/core/version.hpp>
#include <peft/nn/feed_forward.hpp>
#include <peft/tuners/registry.hpp>

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/linear.h>

#include <tuple>

namespace peft {

/// Bottleneck adapters' options; target_modules empty (the default): by op kind, as the variant says.
class BottleneckConfig : public LayerTunerConfig<BottleneckConfig> {
 public:
  /// "houlsby", "pfeiffer" or "parallel".
  TORCH_ARG(std::string, variant) = "houlsby";
  /// Bottleneck width; 0: width / reduction_factor.
  TORCH_ARG(int64_t, bottleneck_size) = 0;
  TORCH_ARG(int64_t, reduction_factor) = 16;
  /// "relu", "gelu" or "silu".
  TORCH_ARG(std::string, non_linearity) = "relu";
  /// Multiplier of the adapter branch (the parallel adapter's s; 1 for the sequential ones).
  TORCH_ARG(double, scaling) = 1.0;
  /// For variant "parallel" without target_modules: sit parallel to attention instead of the FFN.
  TORCH_ARG(bool, parallel_to_attention) = false;
  /// Whether Down and Up carry biases (the unified-subspace paper sizes its Houlsby source without).
  TORCH_ARG(bool, bias) = true;

 public:
  std::string peft_type() const override { return "BOTTLENECK"; }
  Placement placement() const { return variant_ == "parallel" ? Placement::parallel : Placement::output; }
  void validate() const override {
    auto fail = [](const std::string& m) { throw ConfigError("BottleneckConfig: " + m); };
    if (variant_ != "houlsby" && variant_ != "pfeiffer" && variant_ != "parallel")
      fail("variant must be houlsby, pfeiffer or parallel, received \"" + variant_ + "\"");
    if (bottleneck_size_ < 0) fail("bottleneck_size must be >= 0");
    if (bottleneck_size_ == 0 && reduction_factor_ <= 0) fail("reduction_factor must be positive");
    if (non_linearity_ != "relu" && non_linearity_ != "gelu" && non_linearity_ != "silu")
      fail("non_linearity must be relu, gelu or silu, received \"" + non_linearity_ + "\"");
  }
  bool targets(const TunableSlot& slot, const std::string& name) const override {
    if (!target_modules_.empty()) return target_rules().matches(name);
    const std::string kind = slot.op_kind();
    bool wanted = false;
    if (variant_ == "houlsby") wanted = kind == "Attention" || kind == "FFN";
    else if (variant_ == "pfeiffer") wanted = kind == "FFN";
    else wanted = parallel_to_attention_ ? kind == "Attention" : kind == "FFN";
    return wanted && target_rules().admits(name);
  }
  /// Widths of the adapter on `slot`: {in, out, bottleneck}. Throws MatchError when unknown.
  std::tuple<int64_t, int64_t, int64_t> shape_for(const TunableSlot& slot, const std::string& name) const {
    auto [in, out] = slot.features();
    if (placement() == Placement::output) in = out;  // the adapter reads the op's output
    if (in <= 0 || out <= 0)
      throw MatchError("bottleneck adapter cannot adapt module '" + name + "' (" + slot.op_kind() +
                       "): its input/output width is unknown (expected a Linear or a composite op)");
    return {in, out, bottleneck_size_ > 0 ? bottleneck_size_ : std::max<int64_t>(1, out / reduction_factor_)};
  }
  std::shared_ptr<torch::nn::Module> make_tuner(TunableSlot& slot, const std::string& name,
                                                const std::shared_ptr<const AdapterConfig>& self) const override;

  nlohmann::ordered_json to_json() const override {
    nlohmann::ordered_json j;
    write_common(j);
    j["variant"] = variant_;
    j["bottleneck_size"] = bottleneck_size_;
    j["reduction_factor"] = reduction_factor_;
    j["non_linearity"] = non_linearity_;
    j["scaling"] = scaling_;
    j["parallel_to_attention"] = parallel_to_attention_;
    j["bias"] = bias_;
    stamp(j);
    return j;
  }
  static BottleneckConfig from_json(const nlohmann::ordered_json& j, const std::string& source) {
    BottleneckConfig c;
    c.read_common(j, source);
    detail::read_field(j, "variant", c.variant_, source);
    detail::read_field(j, "bottleneck_size", c.bottleneck_size_, source);
    detail::read_field(j, "reduction_factor", c.reduction_factor_, source);
    detail::read_field(j, "non_linearity", c.non_linearity_, source);
    detail::read_field(j, "scaling", c.scaling_, source);
    detail::read_field(j, "parallel_to_attention", c.parallel_to_attention_, source);
    detail::read_field(j, "bias", c.bias_, source);
    return c;
  }

};

namespace detail {
/// Registers `adapter_down` Linear(in, size) and `adapter_up` Linear(size, out) on `m`, the up projection
/// zero-initialized so that the adapter starts as the identity; without biases when `bias` is false.
inline std::pair<torch::nn::Linear, torch::nn::Linear> register_bottleneck(torch::nn::Module& m, int64_t in, int64_t size,
                                                                           int64_t out, bool bias = true) {
  auto down = m.register_module("adapter_down", torch::nn::Linear(torch::nn::LinearOptions(in, size).bias(bias)));
  auto up = m.register_module("adapter_up", torch::nn::Linear(torch::nn::LinearOptions(size, out).bias(bias)));
  torch::NoGradGuard g;
  up->weight.zero_();
  if (bias) up->bias.zero_();
  return {down, up};
}
/// The file tensors of a bottleneck pair (keys after the module path).
inline std::vector<std::pair<std::string, at::Tensor>> bottleneck_tensors(const torch::nn::Linear& down,
                                                                          const torch::nn::Linear& up) {
  std::vector<std::pair<std::string, at::Tensor>> t = {{"adapter_down.weight", down->weight}};
  if (down->bias.defined()) t.emplace_back("adapter_down.bias", down->bias);
  t.emplace_back("adapter_up.weight", up->weight);
  if (up->bias.defined()) t.emplace_back("adapter_up.bias", up->bias);
  return t;
}
}  // namespace detail

/// One bottleneck adapter: output placement h + s·Up(act(Down(h))), or parallel y + s·Up(act(Down(x))).
class BottleneckImpl : public torch::nn::Cloneable<BottleneckImpl>, public Tuner {
 public:
  BottleneckImpl(int64_t in, int64_t out, int64_t size, std::string act, double scaling, Placement where,
                 std::shared_ptr<const AdapterConfig> config, bool bias = true)
      : in_features(in), out_features(out), size(size), act_name(std::move(act)), scaling(scaling), where(where), bias(bias),
        config_(std::move(config)) {
    reset();
  }
  int64_t in_features, out_features, size;
  std::string act_name;
  double scaling;
  Placement where;
  bool bias;
  torch::nn::Linear adapter_down{nullptr}, adapter_up{nullptr};

  void reset() override {
    act_ = nn::activation(act_name);
    std::tie(adapter_down, adapter_up) = detail::register_bottleneck(*this, in_features, size, out_features, bias);
  }
  Placement placement() const override { return where; }
  std::string method() const override { return "bottleneck"; }
  const std::shared_ptr<const AdapterConfig>& config() const override { return config_; }
  torch::nn::Module& as_module() override { return *this; }

  at::Tensor branch(const at::Tensor& h) { return adapter_up(act_(adapter_down(h))); }
  at::Tensor output(const at::Tensor& y) override { return scaling == 1.0 ? y + branch(y) : y + scaling * branch(y); }
  at::Tensor parallel(const at::Tensor& x, const at::Tensor& y) override {
    return scaling == 1.0 ? y + branch(x) : y + scaling * branch(x);
  }
  std::vector<std::pair<std::string, at::Tensor>> adapter_tensors() const override {
    return detail::bottleneck_tensors(adapter_down, adapter_up);
  }
  void pretty_print(std::ostream& s) const override {
    s << "peft::Bottleneck(" << placement_name(where) << ", " << in_features << " -> " << size << " -> " << out_features
      << ", " << act_name << ", scaling=" << scaling << (bias ? "" : ", no bias") << ")";
  }

 private:
  std::function<at::Tensor(const at::Tensor&)> act_;
  std::shared_ptr<const AdapterConfig> config_;
};
TORCH_MODULE(Bottleneck);

inline std::shared_ptr<torch::nn::Module> BottleneckConfig::make_tuner(TunableSlot& slot, const std::string& name,
                                                                       const std::shared_ptr<const AdapterConfig>& self) const {
  auto [in, out, size] = shape_for(slot, name);
  return std::make_shared<BottleneckImpl>(in, out, size, non_linearity_, scaling_, placement(), self, bias_);
}

PEFT_REGISTER_METHOD(bottleneck, BottleneckConfig, "BOTTLENECK", "Bottleneck adapter")

}  // namespace peft
