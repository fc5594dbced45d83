#pragma once
/// \file tuner.hpp
/// The U-Tuning frame: a tuner adapts one frozen op at one placement.
///
/// | placement | output                           | example                                 |
/// |-----------|----------------------------------|-----------------------------------------|
/// | input     | OP(U(x))                         | PASTA                                   |
/// | parallel  | OP(x) + U(x)                     | LoRA, prefixes and prompts (see below)  |
/// | output    | U(OP(x))                         | bottleneck adapter                      |
/// | weight    | OP with W' = f(W), b' = g(b)     | BitFit, RLRR                            |
///
/// Where a tuner is computed and what it is in the frame can differ. Prompt tuning is computed where
/// its tokens join the sequence (an output tuner on the embedding op, VPT-deep an input tuner on each
/// block) and prefix tuning inside the attention op (inside_op()); in U-Tuning's view both are
/// parallel tuners of the attention op that reads them: Attn(q, [P_k; K], [P_v; V]) =
/// (1 - λ)·Attn(q, K, V) + λ·softmax(q P_kᵀ) P_v, with λ the attention mass on the prefixes (tested).
///
/// Concrete tuners are LibTorch modules (`XImpl : torch::nn::Cloneable<XImpl>`) that also implement
/// this interface; a tunable slot (peft::Linear, ...) owns them as named children.

#include <peft/core/error.hpp>

#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace torch::nn {
class Module;
}

namespace peft {

class AdapterConfig;

/// Where a tuner sits relative to its frozen op.
enum class Placement { input, parallel, output, weight };

inline const char* placement_name(Placement p) {
  switch (p) {
    case Placement::input: return "input";
    case Placement::parallel: return "parallel";
    case Placement::output: return "output";
    case Placement::weight: return "weight";
  }
  return "?";
}

/// The frozen tensors of an op that weight-placement tuners rewrite and merging modifies.
/// `bias` is undefined for ops without one.
struct WeightSet {
  at::Tensor weight;
  at::Tensor bias;
  /// Given to parallel tuners: the frozen op's own output on this input (x Wᵀ + b for a Linear) when
  /// the frame has it, i.e. no weight-placed or in-op tuner changed the op; undefined otherwise. DoRA
  /// reuses it instead of computing x Wᵀ a second time (as PEFT does).
  at::Tensor output;
};

/// Interface of every tuner. Implement the hook that matches `placement()`; the others throw.
class Tuner {
 public:
  virtual ~Tuner() = default;

  /// The frame placement of this tuner.
  virtual Placement placement() const = 0;
  /// Method name in PEFT's words: "lora", "bitfit", ...
  virtual std::string method() const = 0;
  /// The config this tuner was built from (shared by all tuners of one adapter).
  virtual const std::shared_ptr<const AdapterConfig>& config() const = 0;

  /// Whether the op itself runs this tuner from inside its computation (attention prefixes: the
  /// attention op concatenates the tuner's key/value prefixes). The frame then skips it.
  virtual bool inside_op() const { return false; }

  /// input placement: returns U(x), fed to the op.
  virtual at::Tensor input(const at::Tensor& x) { unsupported("input"); return x; }
  /// parallel placement: returns y + U(x), where y = OP(x). Implementations fuse the add.
  virtual at::Tensor parallel(const at::Tensor& x, const at::Tensor& y) { (void)x; unsupported("parallel"); return y; }
  /// parallel placement for tuners that also need the op's frozen weights (DoRA). The frame calls
  /// this one; the default ignores `base` and calls parallel().
  virtual at::Tensor parallel_with(const at::Tensor& x, const at::Tensor& y, const WeightSet& base) {
    (void)base;
    return parallel(x, y);
  }
  /// output placement: returns U(y).
  virtual at::Tensor output(const at::Tensor& y) { unsupported("output"); return y; }
  /// weight placement: rewrites w (differentiably) before the op runs. Default: w += delta(w).
  virtual void reparameterize(WeightSet& w) const {
    WeightSet d = delta(w);
    if (d.weight.defined()) w.weight = w.weight + d.weight;
    if (d.bias.defined()) w.bias = w.bias.defined() ? w.bias + d.bias : d.bias;
  }

  /// Whether merge()/unmerge() can fold this tuner into the frozen weights.
  virtual bool mergeable() const { return false; }
  /// The additive change this tuner makes to the op's weights (weight and/or bias; an undefined member
  /// means unchanged). Defined for linear tuners (LoRA, BitFit); used by merging and inspection.
  virtual WeightSet delta(const WeightSet& base) const {
    (void)base;
    throw StateError(method() + " tuner does not have an additive weight delta");
  }
  /// Folds the tuner into `base` in place (called under NoGradGuard). Default: base += delta. A
  /// float32 delta on a half-precision weight is added in float32 and the sum rounded once (the
  /// in-place add computes in the promoted dtype); unmerge() then restores the weight up to that rounding.
  virtual void merge(WeightSet& base) const {
    WeightSet d = delta(base);
    if (d.weight.defined()) base.weight.add_(d.weight);
    if (d.bias.defined()) base.bias.add_(d.bias);
  }
  /// Exact inverse of merge() up to rounding. Default: base -= delta.
  virtual void unmerge(WeightSet& base) const {
    WeightSet d = delta(base);
    if (d.weight.defined()) base.weight.sub_(d.weight);
    if (d.bias.defined()) base.bias.sub_(d.bias);
  }

  /// The tensors saved in an adapter file, keyed by the suffix after the module path
  /// (LoRA: {"lora_A.weight", A}, {"lora_B.weight", B}). The tensors are the live parameters.
  virtual std::vector<std::pair<std::string, at::Tensor>> adapter_tensors() const = 0;

  /// This tuner as a LibTorch module.
  virtual torch::nn::Module& as_module() = 0;

  /// Entries of this tuner's parameters that can never affect the output nor receive a gradient
  /// (CapaBoost: entries under no mask). count_parameters leaves them out, as the papers count.
  virtual int64_t dead_parameters() const { return 0; }

 protected:
  [[noreturn]] void unsupported(const char* hook) const {
    throw StateError(method() + " tuner has no " + hook + " hook (its placement is " +
                     placement_name(placement()) + ")");
  }
};

}  // namespace peft
