#pragma once
/// \file linear.hpp
/// peft::Linear: a drop-in for torch::nn::Linear that adapters can attach to.
///
///     peft::Linear fc(peft::LinearOptions(512, 512).bias(false));
///     auto y = fc(x);   // torch::nn::Linear's result (computed as PyTorch's F.linear) until an adapter is attached

#include <peft/core/tunable.hpp>

#include <torch/nn/functional/linear.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

namespace peft {

using LinearOptions = torch::nn::LinearOptions;

class LinearImpl : public TunableImpl<LinearImpl, torch::nn::LinearImpl, LinearOptions> {
 public:
  LinearImpl(int64_t in_features, int64_t out_features) : LinearImpl(LinearOptions(in_features, out_features)) {}
  explicit LinearImpl(const LinearOptions& options_) : TunableImpl(options_) { reset(); }

  at::Tensor forward(const at::Tensor& input) { return tuned_forward(input); }

  const char* op_kind() const override { return "Linear"; }
  std::pair<int64_t, int64_t> features() const override { return {options.in_features(), options.out_features()}; }
  /// at::linear, not torch::nn::Linear's forward: the C++ frontend's functional::linear adds the bias
  /// to a 3-D input in a separate broadcast kernel after the GEMM, where at::linear (what PyTorch's
  /// F.linear calls) folds it into the GEMM's epilogue. On an H100 in bf16 that add was a third of
  /// BERT-base's forward (73 strided kernels, 3.6 of 11 ms at batch 32).
  at::Tensor frozen(const at::Tensor& x) const { return at::linear(x, weight, bias); }
  at::Tensor run(const at::Tensor& x, const WeightSet& w) const { return at::linear(x, w.weight, w.bias); }
  void pretty_print_op(std::ostream& s) const {
    s << "peft::Linear(in_features=" << options.in_features() << ", out_features=" << options.out_features()
      << ", bias=" << (options.bias() ? "true" : "false") << ")";
  }
};
TORCH_MODULE(Linear);

}  // namespace peft
