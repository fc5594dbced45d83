#pragma once
/// \file conv2d.hpp
/// peft::Conv2d: a drop-in for torch::nn::Conv2d that adapters can attach to.

#include <peft/core/detail/compat.hpp>
#include <peft/core/tunable.hpp>

#include <torch/nn/functional/conv.h>
#include <torch/nn/functional/padding.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/pimpl.h>

namespace peft {

using Conv2dOptions = torch::nn::Conv2dOptions;

class Conv2dImpl : public TunableImpl<Conv2dImpl, torch::nn::Conv2dImpl, Conv2dOptions> {
 public:
  Conv2dImpl(int64_t in_channels, int64_t out_channels, torch::ExpandingArray<2> kernel_size)
      : Conv2dImpl(Conv2dOptions(in_channels, out_channels, kernel_size)) {}
  explicit Conv2dImpl(const Conv2dOptions& options_) : TunableImpl(options_) { reset(); }

  at::Tensor forward(const at::Tensor& input) { return tuned_forward(input); }

  const char* op_kind() const override { return "Conv2d"; }
  std::pair<int64_t, int64_t> features() const override { return {options.in_channels(), options.out_channels()}; }
  /// The convolution as a function of its weights, with torch's padding-mode handling.
  at::Tensor run(const at::Tensor& x, const WeightSet& w) const {
    namespace F = torch::nn::functional;
    auto conv = F::Conv2dFuncOptions().bias(w.bias).stride(options.stride()).dilation(options.dilation())
                    .groups(options.groups());
    if (detail::holds<torch::enumtype::kZeros>(options.padding_mode())) {
      return F::conv2d(x, w.weight, conv.padding(options.padding()));
    }
    const auto* pad = detail::get_ptr<torch::ExpandingArray<2>>(options.padding());
    if (!pad) throw ConfigError("Conv2d: padding 'valid'/'same' with a non-zeros padding_mode is not supported");
    const auto& a = **pad;
    std::vector<int64_t> p = {a[1], a[1], a[0], a[0]};
    F::PadFuncOptions::mode_t mode = torch::kConstant;
    if (detail::holds<torch::enumtype::kReflect>(options.padding_mode())) mode = torch::kReflect;
    else if (detail::holds<torch::enumtype::kReplicate>(options.padding_mode())) mode = torch::kReplicate;
    else if (detail::holds<torch::enumtype::kCircular>(options.padding_mode())) mode = torch::kCircular;
    return F::conv2d(F::pad(x, F::PadFuncOptions(p).mode(mode)), w.weight, conv.padding(0));
  }
  void pretty_print_op(std::ostream& s) const {
    s << "peft::Conv2d(" << options.in_channels() << ", " << options.out_channels()
      << ", kernel_size=" << options.kernel_size() << ", stride=" << options.stride() << ")";
  }
};
TORCH_MODULE(Conv2d);

}  // namespace peft
