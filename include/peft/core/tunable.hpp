#pragma once
/// \file tunable.hpp
/// A tunable slot: one frozen torch::nn op plus any number of named adapters (tuners).
///
/// Models are built from slots (peft::Linear, peft::Embedding, peft::Conv2d, peft::LayerNorm) instead
/// of the plain torch::nn layers. With no adapter, or adapters disabled, a slot computes exactly what
/// the plain op computes. Its parameters are named like the plain op's (`weight`, `bias`), so state
/// dicts and checkpoint keys are unchanged; adapters appear as children named after the adapter.

#include <peft/core/checkpoint.hpp>
#include <peft/core/context.hpp>
#include <peft/core/detail/strings.hpp>
#include <peft/core/error.hpp>
#include <peft/core/tuner.hpp>

#include <torch/nn/cloneable.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>
#include <torch/ordered_dict.h>
#include <torch/utils.h>

#include <algorithm>
#include <functional>
#include <type_traits>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

namespace peft {

/// Type-erased view of a slot, used by attach(), merging and adapter I/O.
class TunableSlot {
 public:
  virtual ~TunableSlot() = default;
  /// "Linear", "Embedding", "Conv2d" or "LayerNorm".
  virtual const char* op_kind() const = 0;
  virtual torch::nn::Module& as_module() = 0;
  /// The frozen tensors (live parameters, not copies).
  virtual WeightSet base_weights() const = 0;
  /// Input and output widths of the op (last dimension of x and y; channels for Conv2d), for tuners
  /// that build their own layers (bottleneck adapters). {0, 0} when unknown.
  virtual std::pair<int64_t, int64_t> features() const { return {0, 0}; }
  /// For a transformer block: how many special tokens the model that owns it puts in a sequence
  /// (BERT 3: [CLS] and two [SEP] for pairs; LLaMA 2: bos and eos; ViT 1: CLS). 0 when unknown.
  /// PASTA sizes its tables from it when num_special_tokens is left at 0.
  virtual int64_t special_token_count() const { return 0; }

  /// Adds a tuner under `name` (it becomes a child module and, if `name` is active, takes part in
  /// forward). Throws StateError if the name is taken or invalid.
  virtual void add_adapter(const std::string& name, std::shared_ptr<torch::nn::Module> tuner) = 0;
  /// Removes an adapter (it must not be merged).
  virtual void delete_adapter(const std::string& name) = 0;
  /// The tuner of adapter `name`, or nullptr when this slot has none.
  virtual Tuner* adapter(const std::string& name) const = 0;
  virtual std::vector<std::string> adapter_names() const = 0;
  /// Which adapters take part in forward (their outputs add up). Names this slot lacks are kept and
  /// ignored here, so one call can set a whole model.
  virtual void set_active_adapters(const std::vector<std::string>& names) = 0;
  virtual const std::vector<std::string>& active_adapters() const = 0;
  virtual void enable_adapters(bool enabled) = 0;
  virtual bool adapters_enabled() const = 0;
  /// Folds the named adapters (those present here) into the frozen weights. With `safe`, the merged
  /// weights are computed on a copy and rejected if they hold NaN/Inf.
  virtual void merge(const std::vector<std::string>& names, bool safe) = 0;
  /// Undoes every merge, newest first.
  virtual void unmerge() = 0;
  virtual const std::vector<std::string>& merged_adapters() const = 0;
  /// Makes merges permanent: the merged weights become the base and the merge record is dropped
  /// (used by merge_and_unload).
  virtual void forget_merges() = 0;
  /// Registers a child that is not an adapter (the copies of modules_to_save) so that clone() carries
  /// it along (deep-copied); nullptr removes it.
  virtual void keep_child(const std::string& name, std::shared_ptr<torch::nn::Module> child) = 0;
};

namespace detail {
template <class T, class = void>
struct has_bias : std::false_type {};
template <class T>
struct has_bias<T, std::void_t<decltype(std::declval<T&>().bias)>> : std::true_type {};

/// Half-precision activations (bfloat16, float16): the frame then runs each tuner in its own
/// parameters' dtype (a float32 adapter on a bfloat16 base computes in float32 and its result is rounded
/// once back to the activations' dtype). With float32 activations the frame casts nothing.
inline bool is_half(const at::Tensor& t) {
  const auto s = t.scalar_type();
  return s == at::kBFloat16 || s == at::kHalf;
}
inline at::Tensor cast_floating(const at::Tensor& t, at::ScalarType dtype) {
  return t.is_floating_point() && t.scalar_type() != dtype ? t.to(dtype) : t;
}
/// The dtype of a tuner's first parameter (its compute dtype), or `fallback` when it has none.
inline at::ScalarType tuner_dtype(Tuner& t, at::ScalarType fallback) {
  for (const auto& p : t.as_module().parameters(true))
    if (p.is_floating_point()) return p.scalar_type();
  return fallback;
}
/// f(a); with half-precision `a`, f(a cast to the tuner's dtype) cast back to a's dtype.
template <class F>
at::Tensor in_own_dtype(Tuner& t, const at::Tensor& a, F&& f) {
  if (!is_half(a)) return f(a);
  const auto mine = tuner_dtype(t, a.scalar_type());
  if (mine == a.scalar_type()) return f(a);
  return cast_floating(f(cast_floating(a, mine)), a.scalar_type());
}

inline void check_adapter_name(const std::string& name) {
  if (name.empty() || name.find('.') != std::string::npos || name == "weight" || name == "bias")
    throw StateError("invalid adapter name '" + name +
                     "': expected a non-empty name without '.' that is not 'weight' or 'bias'");
}

/// A per-row adapter selection (peft::MixedBatch, serve/mixed_batch.hpp): while one is open (a
/// BatchScope entry under keys::adapter_index), every slot of the model it was made for computes each
/// batch row with that row's own adapter instead of the slot's active adapters.
class RowAdapterHook {
 public:
  virtual ~RowAdapterHook() = default;
  /// The slot's output on `x` (rows along dimension 0), `op` being the frozen op; undefined when the
  /// selection does not cover `slot` (a slot of another model).
  virtual at::Tensor run(TunableSlot& slot, const at::Tensor& x,
                         const std::function<at::Tensor(const at::Tensor&)>& op) = 0;
};
inline RowAdapterHook* row_adapter_hook() { return static_cast<RowAdapterHook*>(batch_object(keys::adapter_index)); }

/// Registers a parameter, keeping the trainability it had before a clone()'s reset().
inline at::Tensor register_keep_grad(torch::nn::Module& m, const std::string& name, const at::Tensor& previous,
                                     at::Tensor value) {
  return m.register_parameter(name, std::move(value), previous.defined() ? previous.requires_grad() : true);
}

}  // namespace detail

/// Adapter bookkeeping shared by every slot: named tuners as child modules, the active set, the
/// disable switch, merge records, and the frame that runs live tuners around an op.
template <class Derived>
class SlotBase : public torch::nn::Cloneable<Derived>, public TunableSlot {
 public:
  torch::nn::Module& as_module() override { return *this; }

  void add_adapter(const std::string& name, std::shared_ptr<torch::nn::Module> tuner) override {
    detail::check_adapter_name(name);
    if (adapters_.contains(name)) throw StateError("adapter '" + name + "' already exists in this " + op_kind());
    auto* t = dynamic_cast<Tuner*>(tuner.get());
    if (!t) throw StateError("module given as adapter '" + name + "' does not implement peft::Tuner");
    if (t->placement() == Placement::weight && !base_weights().weight.defined())
      throw StateError("adapter '" + name + "' (" + t->method() + ") rewrites weights, but this " + op_kind() +
                       " has no weight of its own; attach it to the Linear layers inside instead");
    if (this->named_children().contains(name))
      throw StateError("adapter name '" + name + "' clashes with a submodule of this " + std::string(op_kind()));
    adapters_.insert(name, tuner);
    this->register_module(name, tuner);
    refresh();
  }

  void keep_child(const std::string& name, std::shared_ptr<torch::nn::Module> child) override {
    if (kept_.contains(name)) {
      kept_.erase(name);
      this->unregister_module(name);
    }
    if (!child) return;
    kept_.insert(name, child);
    this->register_module(name, std::move(child));
  }

  void delete_adapter(const std::string& name) override {
    if (!adapters_.contains(name)) throw StateError("no adapter '" + name + "' in this " + std::string(op_kind()));
    if (std::count(merged_.begin(), merged_.end(), name))
      throw StateError("adapter '" + name + "' is merged; unmerge before deleting it");
    adapters_.erase(name);
    this->unregister_module(name);
    refresh();
  }

  Tuner* adapter(const std::string& name) const override {
    auto* m = adapters_.find(name);
    return m ? dynamic_cast<Tuner*>(m->get()) : nullptr;
  }

  std::vector<std::string> adapter_names() const override { return adapters_.keys(); }

  void set_active_adapters(const std::vector<std::string>& names) override {
    active_ = names;
    refresh();
  }
  const std::vector<std::string>& active_adapters() const override { return active_; }
  void enable_adapters(bool enabled) override { enabled_ = enabled; }
  bool adapters_enabled() const override { return enabled_; }

  void merge(const std::vector<std::string>& names, bool safe) override {
    torch::NoGradGuard no_grad;
    for (const auto& name : names) {
      Tuner* t = adapter(name);
      if (!t || std::count(merged_.begin(), merged_.end(), name)) continue;
      if (!t->mergeable())
        throw StateError("adapter '" + name + "' (" + t->method() + ") on this " + op_kind() +
                         " cannot be merged into the weights");
      WeightSet base = base_weights();
      if (safe) {
        WeightSet w{base.weight.clone(), base.bias.defined() ? base.bias.clone() : base.bias};
        t->merge(w);
        bool finite = w.weight.isfinite().all().item<bool>() &&
                      (!w.bias.defined() || w.bias.isfinite().all().item<bool>());
        if (!finite)
          throw StateError("merging adapter '" + name + "' into this " + op_kind() +
                           " produces NaN or Inf weights; the weights were left unchanged");
        base.weight.copy_(w.weight);
        if (base.bias.defined()) base.bias.copy_(w.bias);
      } else {
        t->merge(base);
      }
      merged_.push_back(name);
    }
    refresh();
  }

  void unmerge() override {
    torch::NoGradGuard no_grad;
    while (!merged_.empty()) {
      WeightSet w = base_weights();
      adapter(merged_.back())->unmerge(w);
      merged_.pop_back();
    }
    refresh();
  }
  const std::vector<std::string>& merged_adapters() const override { return merged_; }
  void forget_merges() override {
    merged_.clear();
    refresh();
  }

  void pretty_print(std::ostream& stream) const override {
    static_cast<const Derived&>(*this).pretty_print_op(stream);
    if (!adapters_.is_empty()) {
      stream << "[adapters=" << detail::join(adapters_.keys()) << "; active=" << detail::join(active_);
      if (!merged_.empty()) stream << "; merged=" << detail::join(merged_);
      if (!enabled_) stream << "; disabled";
      stream << "]";
    }
  }

  /// The live tuners that act inside the op (Tuner::inside_op(), e.g. attention prefixes): the op
  /// itself queries them; the frame skips them.
  const std::vector<Tuner*>& inside_tuners() const {
    static const std::vector<Tuner*> none;
    return enabled_ ? inside_ : none;
  }

 protected:
  /// Re-registers deep copies of the adapters; reset() calls it after rebuilding the op (clone()).
  void reset_adapters() {
    for (auto& item : adapters_) {
      item.value() = item.value()->clone();
      this->register_module(item.key(), item.value());
    }
    for (auto& item : kept_) {
      item.value() = item.value()->clone();
      this->register_module(item.key(), item.value());
    }
    refresh();
  }

  /// The frame: input tuners, then `op` (with weight tuners' W', b' when `run` is given), then parallel
  /// and output tuners. `op(h)` computes the plain op; `run(h, w)` the op with rewritten weights.
  template <class Op, class Run>
  at::Tensor frame(const at::Tensor& x, Op&& op, Run&& run) {
    if (!enabled_ || adapters_.is_empty()) return op(x);
    if (auto* rows = detail::row_adapter_hook())  // a mixed batch: each row its own adapter
      if (auto y = rows->run(*this, x, [&](const at::Tensor& h) { return op(h); }); y.defined()) return y;
    if (live_ == 0) return op(x);
    at::Tensor h = x;
    for (Tuner* t : input_) h = detail::in_own_dtype(*t, h, [&](const at::Tensor& a) { return t->input(a); });
    at::Tensor y;
    if (weight_.empty()) {
      y = op(h);
    } else {
      WeightSet w = base_weights();
      for (Tuner* t : weight_) t->reparameterize(w);
      // A float32 tuner on a half-precision weight: the rewritten weight is computed in float32 and
      // rounded once to the weight's dtype.
      const WeightSet base = base_weights();
      if (base.weight.defined() && w.weight.defined() && w.weight.scalar_type() != base.weight.scalar_type())
        w.weight = w.weight.to(base.weight.scalar_type());
      if (base.bias.defined() && w.bias.defined() && w.bias.scalar_type() != base.bias.scalar_type())
        w.bias = w.bias.to(base.bias.scalar_type());
      y = run(h, w);
    }
    if (!parallel_.empty()) {
      WeightSet base = base_weights();
      if (weight_.empty() && inside_.empty()) base.output = y;  // still the plain op's output
      for (Tuner* t : parallel_)
        y = detail::in_own_dtype(*t, y, [&](const at::Tensor& yy) {
          return t->parallel_with(detail::cast_floating(h, yy.scalar_type()), yy, base);
        });
    }
    for (Tuner* t : output_) y = detail::in_own_dtype(*t, y, [&](const at::Tensor& a) { return t->output(a); });
    return y;
  }

 private:
  // Rebuilds the per-placement lists of live tuners: active, present here, not merged.
  void refresh() {
    input_.clear(), parallel_.clear(), output_.clear(), weight_.clear(), inside_.clear();
    live_ = 0;
    for (const auto& name : active_) {
      Tuner* t = adapter(name);
      if (!t || std::count(merged_.begin(), merged_.end(), name)) continue;
      ++live_;
      if (t->inside_op()) {
        inside_.push_back(t);
        continue;
      }
      switch (t->placement()) {
        case Placement::input: input_.push_back(t); break;
        case Placement::parallel: parallel_.push_back(t); break;
        case Placement::output: output_.push_back(t); break;
        case Placement::weight: weight_.push_back(t); break;
      }
    }
  }

  torch::OrderedDict<std::string, std::shared_ptr<torch::nn::Module>> adapters_{"adapter"};
  torch::OrderedDict<std::string, std::shared_ptr<torch::nn::Module>> kept_{"child"};  // keep_child()
  std::vector<std::string> active_;
  std::vector<std::string> merged_;
  bool enabled_ = true;
  std::vector<Tuner*> input_, parallel_, output_, weight_, inside_;
  std::size_t live_ = 0;

 public:
  /// Whether adapters take part in this forward (enabled and at least one live).
  bool tuning() const { return enabled_ && live_ > 0; }
};

/// A slot around one frozen torch::nn op with `weight` (and optionally `bias`). `Derived` supplies the
/// op kind, `run(x, weights)` (the op as a function of its weights, for weight-placement tuners) and
/// `pretty_print_op`.
template <class Derived, class Op, class Options>
class TunableImpl : public SlotBase<Derived> {
 public:
  explicit TunableImpl(Options options_) : options(std::move(options_)) {}

  /// The options of the frozen op.
  Options options;
  /// The frozen op's parameters, registered on the slot under the op's own names.
  at::Tensor weight;
  at::Tensor bias;

  void reset() override {
    // clone() copies the object, clears the registries and calls reset(): keep trainability, deep-copy
    // the adapters (Cloneable then copies the parameter values over).
    const bool wgrad = weight.defined() ? weight.requires_grad() : true;
    const bool bgrad = bias.defined() ? bias.requires_grad() : true;
    op_ = std::make_shared<Op>(options);
    weight = this->register_parameter("weight", op_->weight, op_->weight.defined() && wgrad);
    if constexpr (detail::has_bias<Op>::value)
      bias = this->register_parameter("bias", op_->bias, op_->bias.defined() && bgrad);
    else
      (void)bgrad;
    this->reset_adapters();
  }

  /// The frozen op itself (shares its parameters with this slot).
  Op& op() const { return *op_; }

  WeightSet base_weights() const override { return {weight, bias}; }

  /// The frozen op on its own; a slot may replace it with an equivalent call (`Derived::frozen`).
  at::Tensor frozen(const at::Tensor& h) const { return op_->forward(h); }

 protected:
  at::Tensor tuned_forward(const at::Tensor& input) {
    // Each op computes in its weight's dtype: float32 activations entering a bfloat16 frozen layer are
    // rounded to it, bfloat16 ones entering a float32 trainable head are widened.
    const at::Tensor& x = input.is_floating_point() && weight.defined() && input.scalar_type() != weight.scalar_type()
                              ? input.to(weight.scalar_type())
                              : input;
    return this->frame(
        x, [this](const at::Tensor& h) { return static_cast<const Derived&>(*this).frozen(h); },
        [this](const at::Tensor& h, const WeightSet& w) { return static_cast<const Derived&>(*this).run(h, w); });
  }

 private:
  std::shared_ptr<Op> op_;
};

/// The activation-checkpointing switch of a composite slot (see core/checkpoint.hpp).
class CheckpointSwitch {
 public:
  virtual ~CheckpointSwitch() = default;
  /// On: in training mode with grad enabled, this op (with its own tuners) keeps only its input and is
  /// recomputed in backward.
  void set_checkpointing(bool on) { checkpointing_ = on; }
  bool checkpointing() const { return checkpointing_; }

 protected:
  bool checkpointing_ = false;
};

/// A slot around a composite op (attention, feed-forward, a whole block, embeddings) whose own
/// submodules are slots too. Input, parallel and output tuners wrap it; weight tuners belong on the
/// Linear slots inside. `Derived::reset()` builds the submodules and then calls `reset_adapters()`.
template <class Derived>
class CompositeSlot : public SlotBase<Derived>, public CheckpointSwitch {
 public:
  WeightSet base_weights() const override { return {}; }
  int64_t special_token_count() const override { return special_tokens_; }
  /// Set by the model that builds the block (see TunableSlot::special_token_count).
  void set_special_token_count(int64_t n) { special_tokens_ = n; }

 protected:
  /// Runs `op` (the composite computation, h -> y) inside the frame. With checkpointing on (and in
  /// training with grad enabled) `op` runs again in backward, so it must capture by value what it uses.
  template <class Op>
  at::Tensor tuned(const at::Tensor& x, Op&& op) {
    if (checkpoints_now())
      return checkpoint([this, op](const at::Tensor& h) mutable { return this->frame(h, op, no_weights); }, x);
    return this->frame(x, std::forward<Op>(op), no_weights);
  }

  /// Whether the next tuned() call checkpoints (for ops that must refuse, e.g. with a KV cache).
  bool checkpoints_now() const { return checkpointing_ && this->is_training() && at::GradMode::is_enabled(); }

 private:
  static at::Tensor no_weights(const at::Tensor&, const WeightSet&) {
    throw StateError("a composite op has no weights to rewrite");
  }
  int64_t special_tokens_ = 0;
};

/// Turns activation checkpointing on (or off) for every transformer block in `model` (every composite
/// slot whose op kind is "Block": the zoo's TransformerBlock, BertLayer and ViTLayer). Returns how many;
/// throws StateError when there is none (checkpoint a module of your own with peft::checkpoint).
inline std::size_t enable_gradient_checkpointing(torch::nn::Module& model, bool on = true) {
  std::size_t n = 0;
  for (const auto& m : model.modules(true)) {
    auto* slot = dynamic_cast<TunableSlot*>(m.get());
    auto* sw = dynamic_cast<CheckpointSwitch*>(m.get());
    if (!slot || !sw || std::string(slot->op_kind()) != "Block") continue;
    sw->set_checkpointing(on);
    ++n;
  }
  if (n == 0)
    throw StateError("enable_gradient_checkpointing: the model has no transformer block (a slot of kind Block); "
                     "checkpoint parts of your own model with peft::checkpoint(fn, x)");
  return n;
}

/// A named place in a model where a composite op runs whose parts live elsewhere (ViT's and BERT's
/// feed-forward is `intermediate` + `output`, siblings in the layer). It has no parameters of its own;
/// its forward takes the op as a function, so tuners attach to `layer.N.mlp` without changing any
/// checkpoint key.
class SiteImpl : public CompositeSlot<SiteImpl> {
 public:
  explicit SiteImpl(std::string kind = "Site", int64_t hidden = 0) : kind_(std::move(kind)), hidden_(hidden) {}
  std::pair<int64_t, int64_t> features() const override { return {hidden_, hidden_}; }
  void reset() override { reset_adapters(); }
  template <class Op>
  at::Tensor forward(const at::Tensor& x, Op&& op) {
    return tuned(x, std::forward<Op>(op));
  }
  const char* op_kind() const override { return kind_.c_str(); }
  void pretty_print_op(std::ostream& s) const { s << "peft::Site(" << kind_ << ")"; }

 private:
  std::string kind_;
  int64_t hidden_;
};
TORCH_MODULE(Site);

}  // namespace peft
