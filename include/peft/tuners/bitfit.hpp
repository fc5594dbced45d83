#pragma once
/// \file bitfit.hpp
/// BitFit (arXiv 2106.10199): only bias terms train. Implemented as a weight-placement tuner that
/// holds a trainable bias delta (zero at init): the op runs with b' = b + delta, the frozen bias stays
/// frozen, the adapter file holds only the deltas, and merging folds them in (b += delta).
///
///     peft::attach(model, peft::BitFitConfig());                           // every bias
///     peft::attach(model, peft::BitFitConfig().target_modules({"dense"})); // chosen modules
///
/// File layout: peft_type "BITFIT"; tensor `base_model.model.<module>.bitfit_bias` with the bias shape.

#include <peft/core/adapter_config.hpp>
#include <peft/core/detail/json_fields.hpp>
#include <peft/core/tuner.hpp>
#include <peft/core/version.hpp>
#include <peft/tuners/registry.hpp>

#include <torch/arg.h>
#include <torch/nn/cloneable.h>

namespace peft {

/// BitFit's options; target_modules empty (the default): every slot that has a bias.
class BitFitConfig : public LayerTunerConfig<BitFitConfig> {
 public:
  std::string peft_type() const override { return "BITFIT"; }

  bool targets(const TunableSlot& slot, const std::string& name) const override {
    if (!target_modules_.empty()) return AdapterConfig::targets(slot, name);
    if (exclude_modules_.matches(name)) return false;
    for (const auto& m : modules_to_save_)
      if (TargetModules({m}).matches(name)) return false;  // trained in full anyway
    return slot.base_weights().bias.defined();
  }

  std::shared_ptr<torch::nn::Module> make_tuner(TunableSlot& slot, const std::string& name,
                                                const std::shared_ptr<const AdapterConfig>& self) const override;

  nlohmann::ordered_json to_json() const override {
    nlohmann::ordered_json j;
    write_common(j);
    stamp(j);
    return j;
  }
  static BitFitConfig from_json(const nlohmann::ordered_json& j, const std::string& source) {
    BitFitConfig c;
    c.read_common(j, source);
    return c;
  }

};

/// The BitFit tuner: a trainable delta on the frozen bias.
class BitFitImpl : public torch::nn::Cloneable<BitFitImpl>, public Tuner {
 public:
  BitFitImpl(std::vector<int64_t> bias_shape, std::shared_ptr<const AdapterConfig> config)
      : bias_shape(std::move(bias_shape)), config_(std::move(config)) {
    reset();
  }
  std::vector<int64_t> bias_shape;
  at::Tensor bitfit_bias;

  void reset() override {
    const bool grad = bitfit_bias.defined() ? bitfit_bias.requires_grad() : true;
    bitfit_bias = register_parameter("bitfit_bias", at::zeros(bias_shape), grad);
  }
  Placement placement() const override { return Placement::weight; }
  std::string method() const override { return "bitfit"; }
  const std::shared_ptr<const AdapterConfig>& config() const override { return config_; }
  torch::nn::Module& as_module() override { return *this; }
  bool mergeable() const override { return true; }
  void reparameterize(WeightSet& w) const override { w.bias = w.bias + bitfit_bias; }
  WeightSet delta(const WeightSet&) const override { return {{}, bitfit_bias}; }
  std::vector<std::pair<std::string, at::Tensor>> adapter_tensors() const override {
    return {{"bitfit_bias", bitfit_bias}};
  }
  void pretty_print(std::ostream& s) const override {
    s << "peft::BitFit(bias_shape=" << at::IntArrayRef(bias_shape) << ")";
  }

 private:
  std::shared_ptr<const AdapterConfig> config_;
};
TORCH_MODULE(BitFit);

inline std::shared_ptr<torch::nn::Module> BitFitConfig::make_tuner(TunableSlot& slot, const std::string& name,
                                                                   const std::shared_ptr<const AdapterConfig>& self) const {
  auto b = slot.base_weights().bias;
  if (!b.defined())
    throw MatchError("BitFit cannot adapt module '" + name + "' (" + slot.op_kind() +
                     "): it has no bias; BitFit trains existing biases only");
  auto t = std::make_shared<BitFitImpl>(b.sizes().vec(), self);
  t->to(b.device(), b.scalar_type());
  return t;
}

PEFT_REGISTER_METHOD(bitfit, BitFitConfig, "BITFIT", "BitFit")

}  // namespace peft
