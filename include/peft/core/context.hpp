#pragma once
/// \file core/context.hpp
/// Per-batch side information for tuners, without changing any forward signature.
///
/// Some tuners need to know more about a batch than the hidden states they see: which positions hold
/// special tokens (PASTA), which adapter each row uses (mixed-adapter batches). The caller (or a
/// model's forward) opens a BatchScope with named tensors; any tuner deep inside the model reads them
/// with batch_info(). Scopes nest (inner keys shadow outer ones) and are per thread.
///
///     peft::BatchScope scope({{peft::keys::special_token_index, idx}});
///     auto logits = model->forward(ids, mask);

#include <ATen/ATen.h>

#include <initializer_list>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace peft {

/// Well-known keys.
namespace keys {
/// int64 [B, T]: for each position, the index p of the special token there (0 = [CLS], 1 = first
/// [SEP], ...), or -1 for ordinary tokens.
inline constexpr const char* special_token_index = "special_token_index";
/// int64 [B]: index of the adapter each batch row uses, -1 for the base model (published by a
/// peft::MixedBatch, whose selection rides along as the entry's object).
inline constexpr const char* adapter_index = "adapter_index";
/// int64 [B, T]: the token ids the model was given (published by the text models' forward).
inline constexpr const char* input_ids = "input_ids";
/// int64 [K] (CPU): the ids of the model's special tokens in the order of their roles (BERT: [CLS],
/// [SEP]; LLaMA: bos, then the eos ids), published with input_ids when the model's config knows them.
inline constexpr const char* special_token_ids = "special_token_ids";
/// int64 scalar (CPU): tokens already in the KV cache (published by LLaMA's forward). Prompt tuning
/// inserts its virtual tokens only when this is 0 (the first step of generation).
inline constexpr const char* past_length = "past_length";
/// int64 [B, S] with 1 = attend, 0 = padding: the attention mask of the batch as the model got it.
inline constexpr const char* attention_mask = "attention_mask";
}  // namespace keys

namespace detail {
struct BatchEntry {
  std::string key;
  at::Tensor value;
  /// Optional: an object that goes with the tensor (a mixed batch's adapter selection).
  std::shared_ptr<void> object;
};
inline std::vector<BatchEntry>& batch_stack() {
  thread_local std::vector<BatchEntry> stack;
  return stack;
}
}  // namespace detail

/// RAII: makes `entries` visible to batch_info() until the scope ends.
class BatchScope {
 public:
  BatchScope(std::initializer_list<std::pair<std::string, at::Tensor>> entries) {
    for (const auto& [k, v] : entries) push(k, v);
  }
  BatchScope(const std::string& key, const at::Tensor& value, std::shared_ptr<void> object = nullptr) {
    push(key, value, std::move(object));
  }
  /// Re-establishes a batch_snapshot() (its entries shadow what this thread has).
  explicit BatchScope(const std::vector<detail::BatchEntry>& snapshot) {
    for (const auto& e : snapshot) push(e.key, e.value, e.object);
  }
  BatchScope(const BatchScope&) = delete;
  BatchScope& operator=(const BatchScope&) = delete;
  ~BatchScope() {
    auto& s = detail::batch_stack();
    s.resize(s.size() - pushed_);
  }

 private:
  void push(const std::string& k, const at::Tensor& v, std::shared_ptr<void> object = nullptr) {
    detail::batch_stack().push_back({k, v, std::move(object)});
    ++pushed_;
  }
  std::size_t pushed_ = 0;
};

/// Everything visible to batch_info() in this thread, outermost first (activation checkpointing takes
/// it in forward and re-establishes it, with BatchScope(snapshot), when backward recomputes a block,
/// possibly on another thread).
using BatchSnapshot = std::vector<detail::BatchEntry>;
inline BatchSnapshot batch_snapshot() { return detail::batch_stack(); }

/// The innermost value set for `key` in this thread, or an undefined tensor.
inline at::Tensor batch_info(const std::string& key) {
  const auto& s = detail::batch_stack();
  for (auto it = s.rbegin(); it != s.rend(); ++it)
    if (it->key == key) return it->value;
  return {};
}

/// The object set with the innermost `key` in this thread, or nullptr.
inline void* batch_object(const std::string& key) {
  const auto& s = detail::batch_stack();
  for (auto it = s.rbegin(); it != s.rend(); ++it)
    if (it->key == key) return it->object.get();
  return nullptr;
}

}  // namespace peft
