#pragma once
/// \file flat_view.hpp
/// Any adapter, of any method or mix of methods, as one flat vector and back (the unified optimization
/// subspace, arXiv 2210.13311, works on these vectors: a solution is its delta from the init).
///
///     auto view = peft::subspace::FlatView::of_adapter(model);   // snapshots θ0
///     at::Tensor d = view.delta();                                // θ − θ0, [view.numel()]
///     view.set_delta(d * 0.5);                                    // the model now runs θ0 + d/2
///
/// Gradients reach whatever produces a vector: `backward_through(theta, loss_fn)` sets the parameters
/// to `theta`, runs `loss_fn` (a forward and a loss), backpropagates it to the parameters and then
/// on into `theta`'s own graph (the chain rule by a vector-Jacobian product: every tuner runs
/// unchanged from its own parameters, so this works for every method without a functional rewrite).
///
/// The order is deterministic: tunable slots in named_modules() order, each tuner's parameters in
/// registration order; with modules_to_save, their trainable copies follow. Every entry must share
/// one dtype and device.

#include <peft/core/error.hpp>
#include <peft/core/model.hpp>
#include <peft/core/detail/strings.hpp>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>

#include <functional>
#include <string>
#include <unordered_set>
#include <vector>

namespace peft::subspace {

/// One parameter in a flat view: its name (module path + parameter), the live tensor, and its span.
struct FlatEntry {
  std::string name;
  at::Tensor param;
  int64_t offset = 0, numel = 0;
};

class FlatView {
 public:
  FlatView() = default;

  /// The parameters of adapter `adapter` that train (requires_grad), across all its tuners; with
  /// `with_saved_modules`, also what its config trains in full (modules_to_save copies, biases).
  static FlatView of_adapter(ModelRef model, const std::string& adapter = "default", bool with_saved_modules = false) {
    std::vector<std::pair<std::string, at::Tensor>> params;
    for (const auto& s : tunable_slots(model)) {
      auto* t = s.slot->adapter(adapter);
      if (!t) continue;
      for (const auto& p : t->as_module().named_parameters(true))
        if (p.value().requires_grad()) params.emplace_back(join(s.name, adapter + "." + p.key()), p.value());
    }
    if (params.empty())
      throw StateError("FlatView: the model has no adapter '" + adapter + "' with trainable parameters");
    if (with_saved_modules)
      if (const auto cfg = adapter_config(model, adapter))
        for (auto& [name, p] : detail::extra_trainables(model, *cfg, adapter))
          if (p.requires_grad()) params.emplace_back(name, p);
    return FlatView(std::move(params));
  }

  /// Every parameter of `model` that trains and whose name passes `keep` (all of them without it).
  static FlatView of_trainable(ModelRef model, const std::function<bool(const std::string&)>& keep = {}) {
    std::vector<std::pair<std::string, at::Tensor>> params;
    for (const auto& p : model->named_parameters(true))
      if (p.value().requires_grad() && (!keep || keep(p.key()))) params.emplace_back(p.key(), p.value());
    if (params.empty()) throw StateError("FlatView: no trainable parameter of the model was selected");
    return FlatView(std::move(params));
  }

  int64_t numel() const { return numel_; }
  const std::vector<FlatEntry>& entries() const { return entries_; }
  at::TensorOptions options() const { return entries_.front().param.options().requires_grad(false); }

  /// The current values, as a new [numel] tensor with no graph.
  at::Tensor flatten() const {
    std::vector<at::Tensor> parts;
    parts.reserve(entries_.size());
    for (const auto& e : entries_) parts.push_back(e.param.detach().reshape({-1}));
    return at::cat(parts);
  }
  /// Copies `flat` into the parameters (no graph is recorded; requires_grad stays as it was).
  void assign(const at::Tensor& flat) {
    check_vector(flat, "assign");
    at::NoGradGuard g;
    const auto src = flat.detach().to(options());
    for (auto& e : entries_) e.param.copy_(src.narrow(0, e.offset, e.numel).view(e.param.sizes()));
  }
  /// The values when the view was made (or last rebased): θ0.
  const at::Tensor& init() const { return init_; }
  /// θ − θ0.
  at::Tensor delta() const { return flatten() - init_; }
  /// Sets θ = θ0 + d.
  void set_delta(const at::Tensor& d) {
    check_vector(d, "set_delta");
    assign(init_ + d.detach().to(options()));
  }
  /// Makes the current values the new θ0.
  void rebase() { init_ = flatten(); }

  /// The parameters' gradients as one vector (zeros where a parameter has none).
  at::Tensor grad() const {
    std::vector<at::Tensor> parts;
    parts.reserve(entries_.size());
    for (const auto& e : entries_)
      parts.push_back(e.param.grad().defined() ? e.param.grad().reshape({-1}) : at::zeros({e.numel}, options()));
    return at::cat(parts);
  }
  void zero_grad() {
    for (auto& e : entries_)
      if (e.param.grad().defined()) e.param.mutable_grad() = at::Tensor();
  }

  struct LossAndGrad {
    at::Tensor loss;  ///< detached
    at::Tensor grad;  ///< d loss / d theta, [numel]
  };
  /// Sets the parameters to the values of `theta`, runs `loss_fn` (a forward and a loss), and returns
  /// the loss with its gradient as one vector. The parameters' own gradients are consumed (left empty).
  LossAndGrad loss_and_grad(const at::Tensor& theta, const std::function<at::Tensor()>& loss_fn) {
    check_vector(theta, "loss_and_grad");
    assign(theta);
    zero_grad();
    auto loss = loss_fn();
    if (!loss.defined() || loss.numel() != 1)
      throw InputError("FlatView: the loss function must return a one-element tensor");
    loss.backward();
    auto g = grad();
    zero_grad();
    return {loss.detach(), g};
  }
  /// Sets the parameters to `theta` ([numel], usually with a graph back to what produced it), runs
  /// `loss_fn`, and backpropagates its result through the model into `theta`'s producers. Returns the
  /// loss, detached.
  at::Tensor backward_through(const at::Tensor& theta, const std::function<at::Tensor()>& loss_fn) {
    auto r = loss_and_grad(theta, loss_fn);
    if (theta.requires_grad()) torch::autograd::backward({theta}, {r.grad.to(theta.scalar_type())});
    return r.loss;
  }

  /// Names and spans, for reports and tests.
  std::vector<std::string> names() const {
    std::vector<std::string> n;
    for (const auto& e : entries_) n.push_back(e.name);
    return n;
  }

 private:
  explicit FlatView(std::vector<std::pair<std::string, at::Tensor>> params) {
    std::unordered_set<const void*> seen;  // a tensor shared by several modules counts once
    for (auto& [name, p] : params) {
      if (!seen.insert(p.unsafeGetTensorImpl()).second) continue;
      if (!entries_.empty()) {
        const auto& first = entries_.front().param;
        if (p.scalar_type() != first.scalar_type() || p.device() != first.device())
          throw StateError("FlatView: parameter '" + name + "' is " + std::string(c10::toString(p.scalar_type())) + " on " +
                           p.device().str() + ", '" + entries_.front().name + "' is " + c10::toString(first.scalar_type()) +
                           " on " + first.device().str() + "; a flat view needs one dtype and device");
      }
      entries_.push_back({name, p, numel_, p.numel()});
      numel_ += p.numel();
    }
    init_ = flatten();
  }
  static std::string join(const std::string& a, const std::string& b) { return a.empty() ? b : a + "." + b; }
  void check_vector(const at::Tensor& v, const char* what) const {
    if (!v.defined() || v.dim() != 1 || v.size(0) != numel_)
      throw InputError(std::string("FlatView::") + what + ": expected a vector of " + std::to_string(numel_) +
                       " values, received " + (v.defined() ? detail::shape_str(v.sizes().vec()) : std::string("none")));
  }

  std::vector<FlatEntry> entries_;
  int64_t numel_ = 0;
  at::Tensor init_;
};

}  // namespace peft::subspace
