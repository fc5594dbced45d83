#pragma once
/// \file serve/adapter_pool.hpp
/// Serving many adapters from disk: load and unload them while the model serves, with a cap on how
/// many stay loaded (the least recently used goes first), and mixed batches over them.
///
///     peft::AdapterPool pool(*lm, peft::AdapterPoolOptions().max_loaded(64));
///     for (auto& [name, dir] : catalogue) pool.add_source(name, dir);   // nothing is read yet
///     auto rows = pool.select({"alice", "bob", "__base__", "alice"});   // loads what is missing
///     auto out = peft::models::generate(*lm, ids, opts);               // each row its own adapter
///
/// Loading an adapter attaches it under its name (peft::load_adapter: PEFT's files, checked before
/// anything changes) without touching the others; unloading deletes it. Adapters attached to the model
/// some other way (trained in this process) can be selected too; the pool never unloads them.
/// Not thread-safe: load, unload and select from the thread that serves, between batches.

#include <peft/core/error.hpp>
#include <peft/core/model.hpp>
#include <peft/io/adapter_io.hpp>
#include <peft/serve/mixed_batch.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <list>
#include <memory>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace peft {

struct AdapterPoolOptions {
  /// How many of the pool's adapters may be loaded at once; 0: no limit. Loading one more unloads the
  /// least recently used (one not in the batch being selected).
  TORCH_ARG(std::size_t, max_loaded) = 0;
  /// Options of the mixed batches select() opens.
  TORCH_ARG(MixedBatchOptions, batch);
};

/// What the pool has done so far.
struct AdapterPoolStats {
  int64_t loads = 0;     ///< adapters read from disk
  int64_t unloads = 0;   ///< adapters unloaded (evicted or by unload())
  int64_t evictions = 0; ///< of those, unloaded to make room
  int64_t hits = 0;      ///< selected adapters that were already loaded
};

class AdapterPool {
 public:
  explicit AdapterPool(ModelRef model, AdapterPoolOptions options = {}) : model_(&*model), options_(options) {}

  /// Registers where adapter `name` is loaded from (a directory as PEFT's save_pretrained writes it).
  /// Nothing is read until it is needed. Re-registering a loaded adapter takes effect at its next load.
  void add_source(const std::string& name, std::filesystem::path dir) {
    detail::check_adapter_name(name);
    if (name == kBaseAdapter) throw StateError(fmt::format("adapter pool: '{}' names the base model", name));
    sources_[name] = std::move(dir);
  }
  /// Loads `name` from its source now (making room first); a loaded one only counts as used.
  void load(const std::string& name) {
    ensure_loaded({name});
  }
  void load(const std::string& name, const std::filesystem::path& dir) {
    add_source(name, dir);
    load(name);
  }
  /// Unloads a pool adapter (its source stays registered: it can be loaded again).
  void unload(const std::string& name) {
    if (is_pinned(name))
      throw StateError(fmt::format("adapter pool: '{}' is in use by an open mixed batch; close the batch first", name));
    auto it = std::find(lru_.begin(), lru_.end(), name);
    if (it == lru_.end())
      throw StateError(fmt::format("adapter pool: '{}' is not loaded by this pool (loaded: {})", name,
                                   lru_.empty() ? std::string("none") : detail::join(loaded())));
    delete_adapter(*model_, name);
    lru_.erase(it);
    ++stats_.unloads;
  }
  bool is_loaded(const std::string& name) const { return std::find(lru_.begin(), lru_.end(), name) != lru_.end(); }
  /// The pool's loaded adapters, least recently used first.
  std::vector<std::string> loaded() const { return {lru_.begin(), lru_.end()}; }
  std::vector<std::string> sources() const {
    std::vector<std::string> out;
    for (const auto& [k, v] : sources_) out.push_back(k);
    return out;
  }
  const AdapterPoolStats& stats() const { return stats_; }
  const AdapterPoolOptions& options() const { return options_; }

  /// Opens a mixed batch over `rows` (one adapter name per row, "__base__" for none), loading the
  /// adapters it needs that are not loaded. Keep the result alive around the forward / generate call:
  /// while it is open its adapters are pinned (never evicted; unload() refuses them).
  MixedBatch select(const std::vector<std::string>& rows) {
    std::vector<std::string> wanted;
    for (const auto& r : rows)
      if (!r.empty() && r != kBaseAdapter && std::find(wanted.begin(), wanted.end(), r) == wanted.end())
        wanted.push_back(r);
    ensure_loaded(wanted);
    for (const auto& n : wanted) ++(*pins_)[n];
    std::weak_ptr<std::map<std::string, int>> weak = pins_;
    std::shared_ptr<void> lease(nullptr, [weak, wanted](void*) {
      if (auto pins = weak.lock())
        for (const auto& n : wanted)
          if (--(*pins)[n] == 0) pins->erase(n);
    });
    return MixedBatch(*model_, rows, options_.batch(), std::move(lease));
  }
  /// Whether an open MixedBatch of this pool uses `name`.
  bool is_pinned(const std::string& name) const { return pins_->count(name) > 0; }

 private:
  void ensure_loaded(const std::vector<std::string>& wanted) {
    const auto present = adapter_names(*model_);
    auto attached = [&](const std::string& n) { return std::find(present.begin(), present.end(), n) != present.end(); };
    std::vector<std::string> missing;
    for (const auto& n : wanted) {
      if (is_loaded(n)) {
        ++stats_.hits;
        continue;
      }
      if (attached(n)) continue;  // attached outside the pool: usable, never unloaded
      if (!sources_.count(n))
        throw StateError(fmt::format("adapter pool: adapter '{}' is not loaded and the pool has no source for it "
                                     "(add_source); sources: {}",
                                     n, sources_.empty() ? std::string("none") : detail::join(sources())));
      missing.push_back(n);
    }
    if (options_.max_loaded() > 0) {
      std::size_t needed = 0;
      for (const auto& n : wanted)
        if (is_loaded(n) || sources_.count(n)) ++needed;
      std::size_t pinned = 0;  // held by open batches and not wanted here: they cannot make room
      for (const auto& [n, count] : *pins_)
        if (std::find(wanted.begin(), wanted.end(), n) == wanted.end()) ++pinned;
      if (needed > options_.max_loaded())
        throw StateError(fmt::format("adapter pool: the batch needs {} of the pool's adapters at once, but max_loaded is {}",
                                     needed, options_.max_loaded()));
      if (needed + pinned > options_.max_loaded() && !missing.empty())
        throw StateError(fmt::format("adapter pool: the batch needs {} adapters and open batches hold {} others, but "
                                     "max_loaded is {}; close those batches first",
                                     needed, pinned, options_.max_loaded()));
    }
    // Touch what is loaded (most recent last), then make room and load the rest.
    for (const auto& n : wanted)
      if (auto it = std::find(lru_.begin(), lru_.end(), n); it != lru_.end()) lru_.splice(lru_.end(), lru_, it);
    for (const auto& n : missing) {
      if (options_.max_loaded() > 0)
        while (lru_.size() >= options_.max_loaded()) {
          auto victim = std::find_if(lru_.begin(), lru_.end(), [&](const std::string& v) {
            return std::find(wanted.begin(), wanted.end(), v) == wanted.end() && !is_pinned(v);
          });
          if (victim == lru_.end()) break;  // cannot happen: needed <= max_loaded was checked
          delete_adapter(*model_, *victim);
          lru_.erase(victim);
          ++stats_.unloads, ++stats_.evictions;
        }
      load_adapter(*model_, sources_.at(n), n);
      lru_.push_back(n);
      ++stats_.loads;
    }
  }

  torch::nn::Module* model_;
  AdapterPoolOptions options_;
  std::map<std::string, std::filesystem::path> sources_;
  std::list<std::string> lru_;
  AdapterPoolStats stats_;
  std::shared_ptr<std::map<std::string, int>> pins_ = std::make_shared<std::map<std::string, int>>();  // open batches' adapters
};

}  // namespace peft
