#pragma once
// PEFT_CRTP_ARG: TORCH_ARG for a config base shared by several methods.

#include <utility>

/// A chainable option like TORCH_ARG, declared in a CRTP base: the setter returns the derived config,
/// so `PrefixTuningConfig().num_virtual_tokens(8).prefix_projection(true)` chains across both.
#define PEFT_CRTP_ARG(T, name)                                                   \
 public:                                                                         \
  Derived& name(const T& new_##name) {                                           \
    this->name##_ = new_##name;                                                  \
    return static_cast<Derived&>(*this);                                         \
  }                                                                              \
  Derived& name(T&& new_##name) {                                                \
    this->name##_ = std::move(new_##name);                                       \
    return static_cast<Derived&>(*this);                                         \
  }                                                                              \
  const T& name() const noexcept { return this->name##_; }                       \
  T& name() noexcept { return this->name##_; }                                   \
                                                                                 \
 protected:                                                                      \
  T name##_
