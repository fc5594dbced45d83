#pragma once
/// \file intrinsic.hpp
/// Training any adapter in a random subspace: θ = θ0 + P z, where θ is the adapter's flat vector, P a
/// fixed projection and z ∈ R^d the only trainable numbers (Aghajanyan et al., arXiv 2012.13255: a few
/// hundred numbers reach most of a fine-tuning's score). The unified subspace of arXiv 2210.13311
/// learns P instead; with P fixed and random this is its single-method baseline.
///
///     auto view = peft::subspace::FlatView::of_adapter(model);
///     peft::subspace::Intrinsic sub(view, std::make_shared<peft::subspace::FastfoodProjection>(view.numel(), 500, 7));
///     torch::optim::Adam opt({sub.z()}, 1e-2);
///     for (...) {
///       opt.zero_grad();
///       sub.backward([&] { return loss_of(model->forward(x), y); });  // sets θ(z), backprop into z
///       opt.step();
///     }
///     sub.apply();  // the model holds θ0 + P z (save_adapter writes it as an ordinary adapter)

#include <peft/subspace/flat_view.hpp>
#include <peft/subspace/projection.hpp>

#include <ATen/CPUGeneratorImpl.h>

#include <memory>

namespace peft::subspace {

class Intrinsic {
 public:
  /// `view`'s current values become θ0; z starts at zero (θ = θ0), or N(0, init_std²) when init_std > 0
  /// (the unified subspace's stage 2 starts at N(0, 0.02²)), drawn from `seed`.
  Intrinsic(FlatView view, std::shared_ptr<const Projection> projection, double init_std = 0, uint64_t seed = 0)
      : view_(std::move(view)), p_(std::move(projection)) {
    if (!p_) throw StateError("Intrinsic: no projection given");
    if (p_->out_dim() != view_.numel())
      throw InputError(p_->name() + " maps into " + std::to_string(p_->out_dim()) + " values, the adapter has " +
                       std::to_string(view_.numel()));
    view_.rebase();
    z_ = init_std > 0 ? (at::randn({p_->in_dim()}, at::detail::createCPUGenerator(seed), at::kFloat) * init_std).to(view_.options())
                      : at::zeros({p_->in_dim()}, view_.options());
    z_.requires_grad_(true);
  }

  /// The trainable vector (a leaf: hand it to an optimizer).
  at::Tensor& z() { return z_; }
  const FlatView& view() const { return view_; }
  const Projection& projection() const { return *p_; }

  /// θ0 + P z, with a graph to z.
  at::Tensor theta() const { return view_.init() + p_->forward(z_); }

  /// Sets the model to θ(z), runs `loss_fn`, and accumulates its gradient into z.grad. Returns the loss.
  at::Tensor backward(const std::function<at::Tensor()>& loss_fn) { return view_.backward_through(theta(), loss_fn); }

  /// Writes θ(z) into the model (for evaluation, saving or merging).
  void apply() {
    at::NoGradGuard g;
    view_.assign(theta());
  }

 private:
  FlatView view_;
  std::shared_ptr<const Projection> p_;
  at::Tensor z_;
};

}  // namespace peft::subspace
