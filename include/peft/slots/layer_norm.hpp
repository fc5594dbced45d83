#pragma once
/// \file layer_norm.hpp
/// peft::LayerNorm: a drop-in for torch::nn::LayerNorm that adapters can attach to.

#include <peft/core/tunable.hpp>

#include <torch/nn/functional/normalization.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

namespace peft {

using LayerNormOptions = torch::nn::LayerNormOptions;

class LayerNormImpl : public TunableImpl<LayerNormImpl, torch::nn::LayerNormImpl, LayerNormOptions> {
 public:
  explicit LayerNormImpl(std::vector<int64_t> normalized_shape)
      : LayerNormImpl(LayerNormOptions(std::move(normalized_shape))) {}
  explicit LayerNormImpl(const LayerNormOptions& options_) : TunableImpl(options_) { reset(); }

  at::Tensor forward(const at::Tensor& input) { return tuned_forward(input); }

  const char* op_kind() const override { return "LayerNorm"; }
  std::pair<int64_t, int64_t> features() const override {
    const auto d = options.normalized_shape().back();
    return {d, d};
  }
  at::Tensor run(const at::Tensor& x, const WeightSet& w) const {
    return at::layer_norm(x, options.normalized_shape(), w.weight, w.bias, options.eps());
  }
  void pretty_print_op(std::ostream& s) const {
    s << "peft::LayerNorm(" << torch::IntArrayRef(options.normalized_shape()) << ", eps=" << options.eps()
      << ", elementwise_affine=" << (options.elementwise_affine() ? "true" : "false") << ")";
  }
};
TORCH_MODULE(LayerNorm);

}  // namespace peft
