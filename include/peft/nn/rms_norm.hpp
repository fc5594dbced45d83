#pragma once
/// \file nn/rms_norm.hpp
/// peft::RMSNorm: root-mean-square normalization (LLaMA's LlamaRMSNorm) as a tunable slot.
///
///     y = weight * (x / sqrt(mean(x^2) + eps)), computed in float32 and cast back to x's dtype.

#include <peft/core/detail/compat.hpp>
#include <peft/core/tunable.hpp>

#include <torch/arg.h>
#include <torch/nn/pimpl.h>

namespace peft {

struct RMSNormOptions {
  explicit RMSNormOptions(int64_t dim) : dim_(dim) {}
  TORCH_ARG(int64_t, dim);
  TORCH_ARG(double, eps) = 1e-6;
};

namespace nn::functional {
/// RMSNorm exactly as LLaMA computes it. On CUDA with LibTorch >= 2.4 (and weight in x's dtype) it is
/// LibTorch's `rms_norm`, one fused kernel forward and one backward where the formula below takes about
/// seven elementwise kernels each way and keeps a float32 copy of x for backward; for half types the
/// fused kernel rounds once where LLaMA's formula rounds twice. The CPU keeps the formula, bit for bit.
inline at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
#if PEFT_HAS_FUSED_RMS_NORM
  if (x.is_cuda() && weight.defined() && weight.scalar_type() == x.scalar_type() && weight.dim() == 1)
    return at::rms_norm(x, {weight.size(0)}, weight, eps);
#endif
  auto h = x.to(at::promote_types(x.scalar_type(), at::kFloat));  // float32 at least, as LLaMA computes it
  h = h * at::rsqrt(h.pow(2).mean({-1}, true) + eps);
  return weight * h.to(x.scalar_type());
}
}  // namespace nn::functional

namespace detail {
/// The frozen op behind peft::RMSNorm.
struct RMSNormOp {
  explicit RMSNormOp(const RMSNormOptions& o) : options(o), weight(at::ones({o.dim()})) {}
  at::Tensor forward(const at::Tensor& x) const { return nn::functional::rms_norm(x, weight, options.eps()); }
  RMSNormOptions options;
  at::Tensor weight;
};
}  // namespace detail

class RMSNormImpl : public TunableImpl<RMSNormImpl, detail::RMSNormOp, RMSNormOptions> {
 public:
  explicit RMSNormImpl(int64_t dim) : RMSNormImpl(RMSNormOptions(dim)) {}
  explicit RMSNormImpl(const RMSNormOptions& options_) : TunableImpl(options_) { reset(); }

  at::Tensor forward(const at::Tensor& input) { return tuned_forward(input); }

  const char* op_kind() const override { return "RMSNorm"; }
  std::pair<int64_t, int64_t> features() const override { return {options.dim(), options.dim()}; }
  at::Tensor run(const at::Tensor& x, const WeightSet& w) const {
    return nn::functional::rms_norm(x, w.weight, options.eps());
  }
  void pretty_print_op(std::ostream& s) const {
    s << "peft::RMSNorm(" << options.dim() << ", eps=" << options.eps() << ")";
  }
};
TORCH_MODULE(RMSNorm);

}  // namespace peft
