#pragma once
/// \file model.hpp
/// Operations on a whole model: attach adapters by name, choose the active ones, freeze everything
/// else, disable, merge, report.
///
///     auto cfg = peft::LoraConfig().r(8).lora_alpha(16).target_modules({"query", "value"});
///     peft::attach(*model, cfg);                        // adapter "default", active, trainable
///     std::cout << peft::trainable_report(*model);      // trainable params: ... || all params: ...
///     { peft::DisableAdapters off(*model); base_out = model->forward(x); }
///     peft::merge_and_unload(*model);

#include <peft/core/adapter_config.hpp>
#include <peft/core/error.hpp>
#include <peft/core/saved_modules.hpp>
#include <peft/core/tunable.hpp>

#include <fmt/format.h>

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <unordered_set>
#include <vector>

namespace peft {

/// What the model-level functions accept: a module (`*model`), a `std::shared_ptr` to one, or a
/// LibTorch module holder (`MyNet net; peft::attach(net, cfg);`).
class ModelRef {
 public:
  ModelRef(torch::nn::Module& m) : m_(&m) {}
  template <class M, class = std::enable_if_t<std::is_base_of_v<torch::nn::Module, M>>>
  ModelRef(const std::shared_ptr<M>& p) : m_(p.get()) { check(); }
  template <class M>
  ModelRef(const torch::nn::ModuleHolder<M>& h) : m_(h.is_empty() ? nullptr : h.ptr().get()) { check(); }
  torch::nn::Module& operator*() const { return *m_; }
  torch::nn::Module* operator->() const { return m_; }

 private:
  void check() const {
    if (!m_) throw StateError("the model is empty (a null module pointer or holder)");
  }
  torch::nn::Module* m_;
};

/// A slot found in a model, with its dotted module path.
struct NamedSlot {
  std::string name;
  TunableSlot* slot;
};

/// Every tunable slot in `model`, in named_modules() order (adapters' own modules are skipped).
inline std::vector<NamedSlot> tunable_slots(ModelRef model) {
  std::vector<NamedSlot> out;
  // named_modules(include_self = true) needs the model in a shared_ptr; look at the root separately.
  if (auto* s = dynamic_cast<TunableSlot*>(&*model)) out.push_back({"", s});
  for (const auto& item : model->named_modules("", /*include_self=*/false))
    if (auto* s = dynamic_cast<TunableSlot*>(item.value().get())) out.push_back({item.key(), s});
  return out;
}

/// Names of all adapters present anywhere in the model, in order of first appearance.
inline std::vector<std::string> adapter_names(ModelRef model) {
  std::vector<std::string> names;
  for (const auto& s : tunable_slots(model))
    for (const auto& n : s.slot->adapter_names())
      if (std::find(names.begin(), names.end(), n) == names.end()) names.push_back(n);
  return names;
}

/// The config an adapter was attached with (nullptr if the model has no such adapter).
inline std::shared_ptr<const AdapterConfig> adapter_config(ModelRef model, const std::string& name) {
  for (const auto& s : tunable_slots(model))
    if (auto* t = s.slot->adapter(name)) return t->config();
  return nullptr;
}

/// The active adapters (as set by attach / set_adapter), or empty.
inline std::vector<std::string> active_adapters(ModelRef model) {
  for (const auto& s : tunable_slots(model))
    if (!s.slot->adapter_names().empty()) return s.slot->active_adapters();
  return {};
}

namespace detail {

/// Modules a modules_to_save entry names, PEFT's way (exact name or dot-boundary suffix).
/// Entries that match nothing are skipped, as PEFT does (its SEQ_CLS configs list both "classifier"
/// and "score"); attach() refuses only a list of which nothing matches.
inline std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>> resolve_modules_to_save(
    ModelRef model, const std::vector<std::string>& entries) {
  std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>> out;
  for (const auto& entry : entries) {
    TargetModules one({entry});
    for (const auto& item : model->named_modules("", false))
      if (one.matches(item.key())) out.emplace_back(item.key(), item.value());
  }
  return out;
}

/// A module to save with its copies.
struct SavedRef {
  std::string name;            ///< module path
  torch::nn::Module* owner;    ///< the module itself
  SavedModuleCopies* copies;   ///< its copies
};

/// Every module of the model that holds modules_to_save copies.
inline std::vector<SavedRef> all_saved_copies(ModelRef model) {
  std::vector<SavedRef> out;
  if (auto* c = saved_copies(*model)) out.push_back({"", &*model, c});  // named_modules(include_self) needs a shared_ptr
  for (const auto& item : model->named_modules("", false))
    if (auto* c = saved_copies(*item.value())) out.push_back({item.key(), item.value().get(), c});
  return out;
}

/// The tensors of `adapter`'s copies of its modules_to_save (name relative to the model, tensor): the
/// module's parameters while the copy is live, the waiting copy otherwise. A module without a copy for
/// the adapter (a load still validating) gives its parameters.
inline std::vector<std::pair<std::string, at::Tensor>> saved_module_tensors(ModelRef model,
                                                                           const AdapterConfig& config,
                                                                           const std::string& adapter) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& [mname, m] : resolve_modules_to_save(model, config.saved_modules())) {
    std::vector<std::string> names;
    std::vector<at::Tensor> values;
    for (const auto& p : m->named_parameters(true)) {
      names.push_back(p.key());
      values.push_back(p.value());
    }
    if (auto* c = saved_copies(*m); c && c->has(adapter)) values = c->values(*m, adapter);
    for (std::size_t i = 0; i < names.size(); ++i) out.emplace_back(mname + "." + names[i], values[i]);
  }
  return out;
}

/// Gives `adapter` its own copy of each of its modules_to_save.
inline void add_saved_copies(ModelRef model, const AdapterConfig& config, const std::string& adapter) {
  for (const auto& [mname, m] : resolve_modules_to_save(model, config.saved_modules()))
    ensure_saved_copies(*m).add(*m, adapter);
}

/// Refuses active adapter sets in which two adapters have copies of the same module (PEFT allows one).
inline void check_saved_copies(ModelRef model, const std::vector<std::string>& active) {
  for (const auto& r : all_saved_copies(model)) {
    std::vector<std::string> hits;
    for (const auto& a : active)
      if (r.copies->has(a)) hits.push_back(a);
    if (hits.size() > 1)
      throw StateError(fmt::format("adapters {} each train their own copy of module '{}' (modules_to_save); only one "
                                   "of them can be active at a time",
                                   join(hits), r.name));
  }
}

/// Removes the copies holder of every module that no adapter copies any more; with `keep_live`, of every
/// module, each keeping the values it computes with now (merge_and_unload).
inline void drop_unused_saved_copies(ModelRef model, bool keep_live = false) {
  for (const auto& r : all_saved_copies(model))
    if (keep_live || r.copies->adapters().empty()) drop_saved_copies(*r.owner);
}

/// Makes every module to save compute with the active adapter's copy, or with its original when no
/// active adapter has one or `original` is set (adapters disabled).
inline void select_saved_copies(ModelRef model, const std::vector<std::string>& active, bool original = false) {
  for (const auto& r : all_saved_copies(model)) {
    std::string pick;
    if (!original)
      for (const auto& a : active)
        if (r.copies->has(a)) { pick = a; break; }
    r.copies->select(*r.owner, pick);
  }
}

/// Parameters (name relative to the model, tensor) that an adapter's config trains in full: its copies
/// of modules_to_save, and base biases per the config's `bias` mode.
inline std::vector<std::pair<std::string, at::Tensor>> extra_trainables(ModelRef model,
                                                                         const AdapterConfig& config,
                                                                         const std::string& adapter) {
  auto out = saved_module_tensors(model, config, adapter);
  const std::string bias = config.bias_mode();
  if (bias == "all") {
    for (const auto& p : model->named_parameters(true)) {
      const auto& k = p.key();
      if ((k == "bias" || (k.size() > 5 && k.compare(k.size() - 5, 5, ".bias") == 0)))
        out.emplace_back(k, p.value());
    }
  } else if (bias != "none") {  // "<method>_only": biases of the slots this adapter adapts
    for (const auto& s : tunable_slots(model))
      if (s.slot->adapter(adapter) && s.slot->base_weights().bias.defined())
        out.emplace_back(s.name.empty() ? "bias" : s.name + ".bias", s.slot->base_weights().bias);
  }
  // Deduplicate (a bias may be both in a module to save and in "all").
  std::vector<std::pair<std::string, at::Tensor>> unique;
  std::set<std::string> seen;
  for (auto& e : out)
    if (seen.insert(e.first).second) unique.push_back(std::move(e));
  return unique;
}

}  // namespace detail

/// Recomputes requires_grad for the whole model: everything frozen except the parameters of the
/// active adapters (unless their config has inference_mode) and what their configs train in full.
inline void mark_only_adapters_trainable(ModelRef model) {
  for (auto& p : model->parameters(true)) p.set_requires_grad(false);
  const auto active = active_adapters(model);
  for (const auto& name : active) {
    auto cfg = adapter_config(model, name);
    if (!cfg || cfg->frozen()) continue;
    for (const auto& s : tunable_slots(model))
      if (auto* t = s.slot->adapter(name))
        for (auto& p : t->as_module().parameters(true)) p.set_requires_grad(true);
    for (auto& [k, p] : detail::extra_trainables(model, *cfg, name)) p.set_requires_grad(true);
  }
}

/// What attach() did.
struct AttachResult {
  std::string adapter;
  std::vector<std::string> targeted;         ///< module paths that received a tuner
  std::vector<std::string> modules_to_save;  ///< module paths trained in full
};

namespace detail {
/// Points the modules to save at the active adapter's copies (the originals while adapters are
/// disabled).
inline void sync_saved_copies(ModelRef model) {
  const auto slots = tunable_slots(model);
  const bool disabled = std::any_of(slots.begin(), slots.end(), [](const NamedSlot& s) {
    return !s.slot->adapter_names().empty() && !s.slot->adapters_enabled();
  });
  select_saved_copies(model, active_adapters(model), disabled);
}

inline std::string sample_names(const std::vector<NamedSlot>& slots) {
  std::string r;
  std::size_t n = 0;
  for (const auto& s : slots) {
    if (n == 12) { r += ", ... (" + std::to_string(slots.size()) + " in all)"; break; }
    r += (n++ ? ", " : "") + std::string("'") + s.name + "' (" + s.slot->op_kind() + ")";
  }
  return r.empty() ? "none: the model has no tunable slots (build it from peft::Linear etc.)" : r;
}

/// Builds (but does not attach) a tuner for every targeted slot. Throws before anything changes.
/// `config` is completed with what the targeted modules tell (AdapterConfig::complete) first.
inline std::vector<std::pair<NamedSlot, std::shared_ptr<torch::nn::Module>>> plan_tuners(
    ModelRef model, const std::shared_ptr<AdapterConfig>& config, const std::string& adapter) {
  check_adapter_name(adapter);
  config->validate();
  config->target_rules().check();
  auto slots = tunable_slots(model);
  for (const auto& s : slots)
    if (s.slot->adapter(adapter))
      throw StateError("the model already has an adapter named '" + adapter + "' (on module '" + s.name +
                       "'); delete it first or choose another name");
  std::vector<NamedSlot> chosen;
  for (const auto& s : slots)
    if (config->targets(*s.slot, s.name)) chosen.push_back(s);
  if (!chosen.empty()) {
    std::vector<std::pair<std::string, TunableSlot*>> targeted;
    for (const auto& s : chosen) targeted.emplace_back(s.name, s.slot);
    config->complete(targeted);
    config->validate();
    chosen.clear();
    for (const auto& [n, s] : targeted) chosen.push_back({n, s});
  }
  std::shared_ptr<const AdapterConfig> shared = config;
  std::vector<std::pair<NamedSlot, std::shared_ptr<torch::nn::Module>>> plan;
  for (const auto& s : chosen) {
    std::shared_ptr<torch::nn::Module> tuner;
    try {
      tuner = config->make_tuner(*s.slot, s.name, shared);
    } catch (const c10::Error& e) {  // e.g. an absurd rank: LibTorch's allocation errors, made readable
      throw ConfigError(fmt::format("adapter '{}' ({}): cannot build the tuner for module '{}' ({}): {}", adapter,
                                    config->peft_type(), s.name, s.slot->op_kind(), e.what_without_backtrace()));
    } catch (const std::bad_alloc&) {
      throw ConfigError(fmt::format("adapter '{}' ({}): out of memory building the tuner for module '{}' ({})", adapter,
                                    config->peft_type(), s.name, s.slot->op_kind()));
    }
    // New tuners follow the device and dtype of the op they adapt: its weight, a composite op's first
    // parameter, or for a parameter-free site (ViT's and BERT's `mlp`, around sibling modules) the first
    // parameter of the nearest enclosing module that has one. (Found on the GPU: bottleneck adapters on
    // a ViT already moved to CUDA stayed on the CPU.)
    auto w = s.slot->base_weights().weight;
    if (!w.defined()) {
      auto ps = s.slot->as_module().parameters(true);
      if (!ps.empty()) w = ps.front();
    }
    for (std::string path = s.name; !w.defined() && !path.empty();) {
      const auto dot = path.rfind('.');
      path = dot == std::string::npos ? std::string() : path.substr(0, dot);
      torch::nn::Module* enclosing = path.empty() ? &*model : nullptr;
      if (!enclosing)
        for (const auto& m : model->named_modules())
          if (m.key() == path) enclosing = m.value().get();
      if (enclosing)
        if (auto ps = enclosing->parameters(true); !ps.empty()) w = ps.front();
    }
    if (w.defined()) tuner->to(w.device(), w.scalar_type());
    plan.emplace_back(s, std::move(tuner));
  }
  if (plan.empty()) {
    const auto rules = config->target_rules();
    throw MatchError("target_modules " + rules.target_modules.to_json().dump() + " of adapter '" + adapter +
                     "' matched no tunable module; available: " + sample_names(slots));
  }
  // Validates the entries: a config whose modules_to_save match nothing at all is a mistake.
  if (const auto saved = config->saved_modules(); !saved.empty() && resolve_modules_to_save(model, saved).empty())
    throw MatchError("modules_to_save " + join(saved) + " matches no module of the model");
  return plan;
}

inline void commit_tuners(ModelRef model,
                          std::vector<std::pair<NamedSlot, std::shared_ptr<torch::nn::Module>>>& plan,
                          const std::string& adapter) {
  const bool first = active_adapters(model).empty();
  // New tuners take the mode of the module they join (a fresh module is in training mode): a tuner
  // attached to a model in eval mode must not run dropout.
  for (auto& [s, tuner] : plan) {
    tuner->train(s.slot->as_module().is_training());
    s.slot->add_adapter(adapter, tuner);
  }
  if (first)
    for (const auto& s : tunable_slots(model)) s.slot->set_active_adapters({adapter});
  sync_saved_copies(model);
  mark_only_adapters_trainable(model);
}
}  // namespace detail

/// Attaches a freshly initialized adapter named `adapter` to every slot the config targets. The first
/// adapter of a model becomes active; later ones are added inactive (as PEFT's add_adapter does) until
/// set_adapter(). Afterwards only active adapters (and modules_to_save) are trainable. With task_type
/// SEQ_CLS or TOKEN_CLS, the head (`classifier` / `score`) joins modules_to_save, as in PEFT.
inline AttachResult attach(ModelRef model, const AdapterConfig& config, const std::string& adapter = "default") {
  std::shared_ptr<AdapterConfig> cfg = config.clone();
  // As PEFT's PeftModelForSequenceClassification / ForTokenClassification: the task's head (named
  // `classifier` or `score`) trains in full and is saved with the adapter.
  // PEFT lists both names; a model with neither keeps its modules_to_save as they are.
  if (const auto task = cfg->task(); (task == "SEQ_CLS" || task == "TOKEN_CLS") &&
                                     !detail::resolve_modules_to_save(model, {"classifier", "score"}).empty())
    cfg->add_saved_modules({"classifier", "score"});
  auto plan = detail::plan_tuners(model, cfg, adapter);
  AttachResult r{adapter, {}, {}};
  for (const auto& [s, t] : plan) r.targeted.push_back(s.name);
  for (const auto& [n, m] : detail::resolve_modules_to_save(model, cfg->saved_modules())) r.modules_to_save.push_back(n);
  detail::add_saved_copies(model, *cfg, adapter);
  detail::commit_tuners(model, plan, adapter);
  if (cfg->zero_saved_modules()) {
    torch::NoGradGuard g;
    for (auto& [k, t] : detail::saved_module_tensors(model, *cfg, adapter)) t.zero_();
  }
  return r;
}

/// Makes the given adapters active (their outputs add up) and the only trainable ones.
inline void set_adapter(ModelRef model, const std::vector<std::string>& names) {
  const auto known = adapter_names(model);
  for (const auto& n : names)
    if (std::find(known.begin(), known.end(), n) == known.end())
      throw StateError("no adapter named '" + n + "' in the model (adapters: " + detail::join(known) + ")");
  detail::check_saved_copies(model, names);
  for (const auto& s : tunable_slots(model)) s.slot->set_active_adapters(names);
  detail::sync_saved_copies(model);
  mark_only_adapters_trainable(model);
}
inline void set_adapter(ModelRef model, const std::string& name) {
  set_adapter(model, std::vector<std::string>{name});
}

/// Removes an adapter from every slot (it must not be merged).
inline void delete_adapter(ModelRef model, const std::string& name) {
  bool found = false;
  auto slots = tunable_slots(model);
  for (const auto& s : slots)
    if (s.slot->adapter(name) && std::count(s.slot->merged_adapters().begin(), s.slot->merged_adapters().end(), name))
      throw StateError("adapter '" + name + "' is merged into module '" + s.name + "'; unmerge first");
  for (const auto& s : slots) {
    if (s.slot->adapter(name)) {
      s.slot->delete_adapter(name);
      found = true;
    }
  }
  if (!found) throw StateError("no adapter named '" + name + "' in the model");
  for (const auto& s : slots) {
    auto active = s.slot->active_adapters();
    active.erase(std::remove(active.begin(), active.end(), name), active.end());
    s.slot->set_active_adapters(active);
  }
  // Its copies of modules_to_save go too; a module nobody copies any more is plain again.
  for (const auto& r : detail::all_saved_copies(model)) r.copies->remove(*r.owner, name);
  detail::sync_saved_copies(model);
  detail::drop_unused_saved_copies(model);
  mark_only_adapters_trainable(model);
}

/// Scoped guard: within its lifetime every slot computes its plain frozen op and every module to save
/// its original values. Merged adapters are unmerged on entry and merged back on exit, so the guard
/// always yields the base model's output.
class DisableAdapters {
 public:
  explicit DisableAdapters(ModelRef model) {
    for (const auto& s : tunable_slots(model)) {
      saved_.push_back({s.slot, s.slot->adapters_enabled(), s.slot->merged_adapters()});
      if (!s.slot->merged_adapters().empty()) s.slot->unmerge();
      s.slot->enable_adapters(false);
    }
    for (const auto& r : detail::all_saved_copies(model)) {
      copies_.push_back({r.owner, r.copies, r.copies->live()});
      r.copies->select(*r.owner, "");
    }
  }
  DisableAdapters(const DisableAdapters&) = delete;
  DisableAdapters& operator=(const DisableAdapters&) = delete;
  ~DisableAdapters() {
    for (auto& s : saved_) {
      s.slot->enable_adapters(s.enabled);
      if (!s.merged.empty()) s.slot->merge(s.merged, false);
    }
    for (auto& c : copies_) c.copies->select(*c.owner, c.live);
  }

 private:
  struct Saved {
    TunableSlot* slot;
    bool enabled;
    std::vector<std::string> merged;
  };
  std::vector<Saved> saved_;
  struct Live {
    torch::nn::Module* owner;
    detail::SavedModuleCopies* copies;
    std::string live;
  };
  std::vector<Live> copies_;
};

/// Folds adapters (default: the active ones) into the frozen weights of every slot. Checks that all
/// of them can be merged before changing anything. With `safe`, refuses merges that produce NaN/Inf.
inline void merge_adapter(ModelRef model, std::vector<std::string> names = {}, bool safe = false) {
  if (names.empty()) names = active_adapters(model);
  auto slots = tunable_slots(model);
  for (const auto& s : slots)
    for (const auto& n : names)
      if (auto* t = s.slot->adapter(n); t && !t->mergeable())
        throw StateError("adapter '" + n + "' (" + t->method() + ") on module '" + s.name + "' cannot be merged");
  for (const auto& s : slots) {
    try {
      s.slot->merge(names, safe);
    } catch (const StateError& e) {
      throw StateError("module '" + s.name + "': " + e.message());
    }
  }
}

/// Undoes every merge.
inline void unmerge_adapter(ModelRef model) {
  for (const auto& s : tunable_slots(model)) s.slot->unmerge();
}

/// Merges the active adapters and removes every adapter: the model is a plain model again, with the
/// adaptation baked into its weights and each module to save holding the active adapter's copy (as
/// PEFT's merge_and_unload keeps `modules_to_save[active]`).
inline void merge_and_unload(ModelRef model, bool safe = false) {
  merge_adapter(model, {}, safe);
  for (const auto& s : tunable_slots(model)) {
    s.slot->forget_merges();  // the merged weights are the new base
    for (const auto& n : s.slot->adapter_names()) s.slot->delete_adapter(n);
    s.slot->set_active_adapters({});
  }
  detail::drop_unused_saved_copies(model, /*keep_live=*/true);
}

/// Parameter counts, PEFT's way: tied tensors counted once.
struct ParameterCount {
  int64_t trainable = 0;
  int64_t all = 0;
};

/// Entries a tuner declares dead (CapaBoost's entries under no mask) are not counted.
inline ParameterCount count_parameters(ModelRef model) {
  ParameterCount c;
  std::unordered_set<const void*> seen;
  for (const auto& p : model->parameters(true)) {
    if (!p.defined() || !seen.insert(p.unsafeGetTensorImpl()).second) continue;
    c.all += p.numel();
    if (p.requires_grad()) c.trainable += p.numel();
  }
  for (const auto& mod : model->modules(true))
    if (const auto* t = dynamic_cast<const Tuner*>(mod.get()); t && t->dead_parameters()) {
      bool trains = false;
      for (const auto& p : mod->parameters(true)) trains = trains || p.requires_grad();
      c.all -= t->dead_parameters();
      if (trains) c.trainable -= t->dead_parameters();
    }
  return c;
}

/// `trainable params: 3,686,400 || all params: 3,089,625,088 || trainable%: 0.1193` (HF's format).
inline std::string trainable_report(ModelRef model) {
  const auto c = count_parameters(model);
  return fmt::format("trainable params: {} || all params: {} || trainable%: {:.4f}", detail::thousands(c.trainable),
                     detail::thousands(c.all),
                     c.all ? 100.0 * static_cast<double>(c.trainable) / static_cast<double>(c.all) : 0.0);
}

/// What cast_mixed() changed.
struct MixedPrecision {
  int64_t frozen_tensors = 0, trainable_tensors = 0;
  /// Bytes of parameters and buffers before and after.
  int64_t bytes_before = 0, bytes_after = 0;
};

/// Mixed precision the way PEFT recipes run it (`torch_dtype=torch.bfloat16` for the base, float32
/// adapters): the frozen parameters and the floating-point buffers become `base` (bfloat16 or float16),
/// the trainable parameters `trainable` (float32), so the optimizer's state is float32 too. Call it
/// after attach() (it reads requires_grad). In forward each op computes in its own weights' dtype: the
/// base in `base`, every tuner in float32 on inputs widened from the half-precision activations, its
/// result rounded once back to them (see SlotBase::frame). Merging a float32 adapter into a half weight
/// computes W + delta in float32 and rounds once. Works on CPU and CUDA alike.
inline MixedPrecision cast_mixed(ModelRef model, at::ScalarType base = at::kBFloat16,
                                 at::ScalarType trainable = at::kFloat) {
  if (!at::isFloatingType(base) || !at::isFloatingType(trainable))
    throw ConfigError(fmt::format("cast_mixed: expected floating-point dtypes, received base {} and trainable {}",
                                  c10::toString(base), c10::toString(trainable)));
  MixedPrecision r;
  torch::NoGradGuard no_grad;
  auto cast = [&](at::Tensor& t, at::ScalarType to) {
    r.bytes_before += static_cast<int64_t>(t.numel() * t.element_size());
    if (t.is_floating_point() && t.scalar_type() != to) t.set_data(t.to(to));
    r.bytes_after += static_cast<int64_t>(t.numel() * t.element_size());
  };
  for (auto& p : model->parameters(true)) {
    const bool trains = p.requires_grad();
    cast(p, trains ? trainable : base);
    ++(trains ? r.trainable_tensors : r.frozen_tensors);
  }
  for (auto& b : model->buffers(true))
    if (b.is_floating_point()) cast(b, base);
  return r;
}

}  // namespace peft
