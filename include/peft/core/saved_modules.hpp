#pragma once
/// \file saved_modules.hpp
/// modules_to_save the way PEFT does it: the listed module keeps its original values and every adapter
/// that lists it gets its own trainable copy. The active adapter's copy is what the module computes
/// with; with adapters disabled, or no active adapter listing the module, it computes with the
/// original. Files are unchanged (PEFT's keys, the adapter's copy).
///
/// PEFT swaps whole modules (ModulesToSaveWrapper). A LibTorch model calls its children through typed
/// members, so here the module stays and its parameters change values instead: the parameter objects
/// (what forward, the optimizer and requires_grad see) are the live copy; the other copies wait in a
/// `peft_modules_to_save` child of the module (no parameters of its own, so state dicts, parameter
/// counts and optimizers see nothing new) and are swapped in with set_data() without copying.
/// Consequence: gradients and optimizer state belong to the parameter objects, so a switch clears the
/// gradients; build the optimizer for the adapter being trained after set_adapter().

#include <peft/core/error.hpp>
#include <peft/core/tunable.hpp>

#include <torch/nn/module.h>
#include <torch/types.h>

#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

namespace peft {
namespace detail {

/// Child name under which a module to save keeps its waiting copies.
inline constexpr const char* kSavedCopiesName = "peft_modules_to_save";

class SavedModuleCopies : public torch::nn::Module {
 public:
  /// Adapters that have a copy here.
  const std::set<std::string>& adapters() const { return adapters_; }
  bool has(const std::string& adapter) const { return adapters_.count(adapter) > 0; }
  /// Whose values the module's parameters hold now: an adapter, or "" for the original.
  const std::string& live() const { return live_; }

  // `owner` below is always the module to save: the module this one is registered in. Its recursive
  // parameters are what is copied and swapped.

  /// Gives `adapter` a copy made from the original values (PEFT deep-copies the original module).
  void add(torch::nn::Module& owner, const std::string& adapter) {
    if (has(adapter)) return;
    std::vector<at::Tensor> copy;
    for (const auto& t : live_.empty() ? owner_params(owner) : stash_.at("")) copy.push_back(t.detach().clone());
    stash_[adapter] = std::move(copy);
    adapters_.insert(adapter);
  }

  /// Drops an adapter's copy; if it was live, the original comes back.
  void remove(torch::nn::Module& owner, const std::string& adapter) {
    if (!has(adapter)) return;
    if (live_ == adapter) select(owner, "");
    stash_.erase(adapter);
    adapters_.erase(adapter);
  }

  /// Makes `adapter`'s copy (or the original, for "") the module's live values.
  void select(torch::nn::Module& owner, const std::string& adapter) {
    if (adapter == live_) return;
    if (!adapter.empty() && !has(adapter))
      throw StateError("modules_to_save: no copy for adapter '" + adapter + "'");
    auto params = owner_params(owner);
    auto& incoming = stash_.at(adapter);
    if (incoming.size() != params.size())
      throw StateError("modules_to_save: the module's parameters changed since its copies were made");
    std::vector<at::Tensor> outgoing;
    for (auto& p : params) outgoing.push_back(p.detach());  // shares the storage the live values are in
    for (std::size_t i = 0; i < params.size(); ++i) {
      params[i].set_data(incoming[i]);
      if (params[i].grad().defined()) params[i].mutable_grad() = at::Tensor();
    }
    stash_.erase(adapter);
    stash_[live_] = std::move(outgoing);
    live_ = adapter;
  }

  /// The values of `adapter` ("" for the original), wherever they are now; the live ones are the
  /// module's parameter objects themselves.
  std::vector<at::Tensor> values(torch::nn::Module& owner, const std::string& adapter) const {
    if (adapter == live_) return owner_params(owner);
    auto it = stash_.find(adapter);
    if (it == stash_.end()) throw StateError("modules_to_save: no copy for adapter '" + adapter + "'");
    return it->second;
  }

  /// The waiting copies follow the model to another device or dtype.
  void to(torch::Device device, torch::Dtype dtype, bool non_blocking = false) override {
    for (auto& [k, v] : stash_)
      for (auto& t : v) t = t.to(device, dtype, non_blocking);
  }
  void to(torch::Dtype dtype, bool non_blocking = false) override {
    for (auto& [k, v] : stash_)
      for (auto& t : v) t = t.to(dtype, non_blocking);
  }
  void to(torch::Device device, bool non_blocking = false) override {
    for (auto& [k, v] : stash_)
      for (auto& t : v) t = t.to(device, non_blocking);
  }

  /// A deep copy (a clone() of a model whose slots carry copies: tunable slots keep this child).
  std::shared_ptr<torch::nn::Module> clone(const c10::optional<torch::Device>& device = c10::nullopt) const override {
    auto c = std::make_shared<SavedModuleCopies>();
    c->copy_from(*this, device);
    return c;
  }

 private:
  void clone_(torch::nn::Module& other, const c10::optional<torch::Device>& device) override {
    if (auto* o = dynamic_cast<SavedModuleCopies*>(&other)) copy_from(*o, device);
  }
  void copy_from(const SavedModuleCopies& o, const c10::optional<torch::Device>& device) {
    torch::NoGradGuard g;
    adapters_ = o.adapters_, live_ = o.live_;
    stash_.clear();
    for (const auto& [k, v] : o.stash_)
      for (const auto& t : v) stash_[k].push_back(device ? t.to(*device, t.scalar_type(), false, true) : t.clone());
  }
  static std::vector<at::Tensor> owner_params(torch::nn::Module& owner) {
    std::vector<at::Tensor> out;
    for (const auto& p : owner.named_parameters(true)) out.push_back(p.value());
    return out;
  }

  std::set<std::string> adapters_;
  std::map<std::string, std::vector<at::Tensor>> stash_;  // "" = the original, when not live
  std::string live_;
};

/// The copies of module `m`, or nullptr when none was made.
inline SavedModuleCopies* saved_copies(torch::nn::Module& m) {
  for (const auto& c : m.named_children())
    if (c.key() == kSavedCopiesName) return dynamic_cast<SavedModuleCopies*>(c.value().get());
  return nullptr;
}

/// The copies of module `m`, made on first use. A tunable slot keeps them as a child that clone()
/// carries along; another module simply registers them (a Cloneable one then refuses clone()).
inline SavedModuleCopies& ensure_saved_copies(torch::nn::Module& m) {
  if (auto* c = saved_copies(m)) return *c;
  auto c = std::make_shared<SavedModuleCopies>();
  if (auto* slot = dynamic_cast<TunableSlot*>(&m)) slot->keep_child(kSavedCopiesName, c);
  else m.register_module(kSavedCopiesName, c);
  return *c;
}

/// Removes the copies of module `m` (its parameters keep the values they hold).
inline void drop_saved_copies(torch::nn::Module& m) {
  if (!saved_copies(m)) return;
  if (auto* slot = dynamic_cast<TunableSlot*>(&m)) slot->keep_child(kSavedCopiesName, nullptr);
  else m.unregister_module(kSavedCopiesName);
}

}  // namespace detail
}  // namespace peft
