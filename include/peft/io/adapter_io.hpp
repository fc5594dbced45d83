#pragma once
/// \file adapter_io.hpp
/// Adapters on disk in Hugging Face PEFT's layout:
///
///     dir/adapter_config.json           config of adapter "default" (PEFT's field names)
///     dir/adapter_model.safetensors     base_model.model.<module>.lora_A.weight, ... (metadata format=pt)
///     dir/<name>/...                    any other adapter, in a subfolder named after it
///
///     peft::save_adapter(*model, "out/adapter");                 // every adapter of the model
///     peft::load_adapter(*fresh, "out/adapter");                 // as "default", frozen (inference)
///     peft::load_adapter(*fresh, "out/adapter", "task_b", true); // another name, trainable
///
/// Loading validates the config, the file and every tensor against the model before it changes
/// anything: a failed load leaves the model exactly as it was.

#include <peft/core/detail/atomic_file.hpp>
#include <peft/core/model.hpp>
#include <peft/io/safetensors.hpp>
#include <peft/tuners/registry.hpp>

#include <fmt/format.h>
#include <torch/utils.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>

namespace peft {

inline constexpr const char* kAdapterConfigFile = "adapter_config.json";
inline constexpr const char* kAdapterWeightsFile = "adapter_model.safetensors";
/// Prefix PEFT puts before module paths in adapter files.
inline constexpr const char* kKeyPrefix = "base_model.model.";

/// Reads dir/adapter_config.json.
inline std::shared_ptr<AdapterConfig> read_adapter_config(const std::filesystem::path& dir) {
  const auto path = (dir / kAdapterConfigFile).string();
  std::ifstream in(path);
  if (!in) throw IoError(fmt::format("cannot open '{}'", path));
  nlohmann::ordered_json j;
  try {
    j = nlohmann::ordered_json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw ConfigError(fmt::format("'{}' is not valid JSON: {}", path, e.what()));
  }
  return config_from_json(j, path);
}

namespace detail {

/// PEFT's save_embedding_layers="auto": an adapter whose target_modules name an embedding layer
/// (`embed_tokens` or `lm_head`: an entry of the list, or inside the regex) also saves those layers'
/// base weights, as `<module>.base_layer.weight`.
inline bool saves_embedding_layers(const AdapterConfig& cfg) {
  const auto t = cfg.target_rules().target_modules;
  for (const char* name : {"embed_tokens", "lm_head"}) {
    if (t.is_list() && std::find(t.list().begin(), t.list().end(), name) != t.list().end()) return true;
    if (t.is_regex() && !t.is_all_linear() && t.regex().find(name) != std::string::npos) return true;
  }
  return false;
}

/// Whether a targeted slot is an embedding layer in PEFT's sense (the input embedding or lm_head).
inline bool is_embedding_layer(const NamedSlot& s) {
  return std::string(s.slot->op_kind()) == "Embedding" || last_component(s.name) == "lm_head";
}

/// The adapter's tensors as they go to the file: key -> tensor.
inline torch::OrderedDict<std::string, at::Tensor> adapter_state(ModelRef model, const std::string& adapter,
                                                                 const AdapterConfig& cfg) {
  torch::OrderedDict<std::string, at::Tensor> out("tensor");
  const std::string prefix = cfg.key_prefix(), joined = cfg.joined_key();
  std::vector<at::Tensor> parts;
  for (const auto& s : tunable_slots(model))
    if (auto* t = s.slot->adapter(adapter))
      for (const auto& [suffix, tensor] : t->adapter_tensors()) {
        if (!joined.empty()) parts.push_back(tensor.detach());
        else out.insert(prefix + (s.name.empty() ? suffix : s.name + "." + suffix), tensor);
      }
  if (!parts.empty()) out.insert(joined, parts.size() == 1 ? parts.front() : at::cat(parts, cfg.joined_dim()));
  for (const auto& [k, p] : extra_trainables(model, cfg, adapter)) out.insert(prefix + k, p);
  if (joined.empty() && saves_embedding_layers(cfg))
    for (const auto& s : tunable_slots(model))
      if (s.slot->adapter(adapter) && is_embedding_layer(s) && !out.contains(prefix + s.name + ".base_layer.weight"))
        out.insert(prefix + s.name + ".base_layer.weight", s.slot->base_weights().weight);
  return out;
}

}  // namespace detail

/// The adapter's tensors keyed as in adapter_model.safetensors.
inline torch::OrderedDict<std::string, at::Tensor> get_adapter_state_dict(ModelRef model,
                                                                          const std::string& adapter = "default") {
  auto cfg = adapter_config(model, adapter);
  if (!cfg)
    throw StateError(fmt::format("no adapter named '{}' in the model (adapters: {})", adapter, detail::join(adapter_names(model))));
  return detail::adapter_state(model, adapter, *cfg);
}

/// Saves adapters (default: all of them) in PEFT's layout; "default" goes to `dir`, others to
/// `dir/<name>`. Each file is replaced atomically.
inline void save_adapter(ModelRef model, const std::filesystem::path& dir,
                         std::vector<std::string> adapters = {}) {
  if (adapters.empty()) adapters = adapter_names(model);
  if (adapters.empty()) throw StateError("the model has no adapter to save");
  for (const auto& name : adapters) {
    auto cfg = adapter_config(model, name);
    if (!cfg)
      throw StateError(fmt::format("no adapter named '{}' in the model (adapters: {})", name, detail::join(adapter_names(model))));
    const auto out = name == "default" ? dir : dir / name;
    std::error_code ec;
    std::filesystem::create_directories(out, ec);
    if (ec) throw IoError(fmt::format("cannot create directory '{}': {}", out.string(), ec.message()));
    auto state = detail::adapter_state(model, name, *cfg);
    save_safetensors((out / kAdapterWeightsFile).string(), state, {{"format", "pt"}});
    auto j = cfg->to_json();
    // As PEFT: a saved adapter is an inference adapter (load_adapter's `trainable` decides), and
    // "all-linear" is written as the module paths it matched.
    if (j.contains("inference_mode")) j["inference_mode"] = true;
    if (auto it = j.find("target_modules"); it != j.end() && it->is_string() && it->get<std::string>() == "all-linear") {
      auto names = nlohmann::ordered_json::array();
      for (const auto& s : tunable_slots(model))
        if (s.slot->adapter(name)) names.push_back(s.name);
      *it = names;
    }
    detail::atomic_write(out / kAdapterConfigFile, [&](detail::FileSink& sink) { sink.write(j.dump(2) + "\n"); });
  }
}

/// Loads the adapter in `dir` (as PEFT writes it) under `adapter`. With `trainable` false (PEFT's
/// default), the adapter is frozen (inference_mode) and its tuners are in eval mode (no dropout);
/// trainable, they follow the model's mode. The first adapter of a model becomes active. A file that
/// also holds `<module>.base_layer.weight` for a targeted module (PEFT's save_embedding_layers)
/// replaces that module's base weight, as in PEFT.
inline AttachResult load_adapter(ModelRef model, const std::filesystem::path& dir,
                                 const std::string& adapter = "default", bool trainable = false) {
  auto cfg = read_adapter_config(dir);
  cfg->set_frozen(!trainable);
  cfg->prepare_load();
  const auto wpath = (dir / kAdapterWeightsFile).string();
  SafetensorsFile file(wpath);
  {
    std::map<std::string, std::vector<int64_t>> shapes;
    for (const auto& info : file.infos()) shapes[info.name] = info.shape;
    if (const auto problems = cfg->check_file_shapes(shapes); !problems.empty()) {
      auto msg = fmt::format("adapter '{}': adapter_config.json does not fit '{}' (nothing was loaded):", dir.string(), wpath);
      for (const auto& p : problems) msg += "\n  - " + p;
      throw AdapterError(msg);
    }
  }

  auto plan = detail::plan_tuners(model, cfg, adapter);

  // Everything the file must hold: each file tensor with the tensors it goes to (several for a
  // joined tensor, split along joined_dim()).
  struct Dest {
    at::Tensor target;
    std::string owner;  // module path or description for messages
  };
  struct Entry {
    std::string key;
    std::vector<Dest> parts;
  };
  const std::string prefix = cfg->key_prefix(), joined = cfg->joined_key();
  const int64_t jdim = cfg->joined_dim();
  std::vector<Entry> expected;
  if (!joined.empty()) expected.push_back({joined, {}});
  for (const auto& [s, tuner] : plan)
    for (const auto& [suffix, t] : dynamic_cast<Tuner&>(*tuner).adapter_tensors()) {
      if (!joined.empty()) expected.front().parts.push_back(Dest{t, s.name});
      else expected.push_back({prefix + (s.name.empty() ? suffix : s.name + "." + suffix), {Dest{t, s.name}}});
    }
  for (const auto& [k, p] : detail::extra_trainables(model, *cfg, adapter)) expected.push_back({prefix + k, {Dest{p, k}}});
  // Optional: base weights of targeted modules (PEFT saves embedding layers' this way).
  if (joined.empty())
    for (const auto& [s, tuner] : plan) {
      const auto key = prefix + s.name + ".base_layer.weight";
      if (file.contains(key) && s.slot->base_weights().weight.defined())
        expected.push_back({key, {Dest{s.slot->base_weights().weight, s.name}}});
    }
  // "<method>_only" biases belong to the slots that get the adapter, which are not attached yet.
  if (cfg->bias_mode() != "none" && cfg->bias_mode() != "all")
    for (const auto& [s, tuner] : plan)
      if (s.slot->base_weights().bias.defined())
        expected.push_back({prefix + (s.name.empty() ? std::string("bias") : s.name + ".bias"),
                            {Dest{s.slot->base_weights().bias, s.name}}});
  auto shape_of = [&](const Entry& e) {
    auto shape = e.parts.front().target.sizes().vec();
    for (std::size_t i = 1; i < e.parts.size(); ++i) shape[static_cast<std::size_t>(jdim)] += e.parts[i].target.size(jdim);
    return shape;
  };

  std::vector<std::string> problems;
  std::set<std::string> used;
  std::vector<const Entry*> todo;
  for (const auto& e : expected) {
    if (e.parts.empty() || !used.insert(e.key).second) continue;
    todo.push_back(&e);
    const auto want = shape_of(e);
    const std::string owner = e.parts.size() == 1 ? fmt::format("module '{}'", e.parts.front().owner)
                                                  : fmt::format("{} modules", e.parts.size());
    if (!file.contains(e.key)) {
      problems.push_back(fmt::format("missing tensor '{}' (expected shape {} for {})", e.key, detail::shape_str(want), owner));
      continue;
    }
    const auto& info = file.info(e.key);
    if (info.shape != want)
      problems.push_back(fmt::format("tensor '{}': expected shape {}, received {} (for {}{})", e.key, detail::shape_str(want),
                                     detail::shape_str(info.shape), owner,
                                     e.key.find("lora_") != std::string::npos ? "; rank from adapter_config.json does not match?" : ""));
    else if (info.dtype != DType::F32 && info.dtype != DType::F16 && info.dtype != DType::BF16 && info.dtype != DType::F64)
      problems.push_back(fmt::format("tensor '{}': expected a floating dtype, received {}", e.key, dtype_name(info.dtype)));
  }
  for (const auto& info : file.infos())
    if (!used.count(info.name))
      problems.push_back(fmt::format("unexpected tensor '{}' {} (no targeted module of the model takes it)", info.name,
                                     detail::shape_str(info.shape)));
  if (!problems.empty()) {
    auto msg = fmt::format("adapter '{}' does not fit the model (nothing was loaded):", dir.string());
    for (std::size_t i = 0; i < problems.size() && i < 20; ++i) msg += "\n  - " + problems[i];
    if (problems.size() > 20) msg += fmt::format("\n  - ... and {} more", problems.size() - 20);
    throw AdapterError(msg);
  }

  // Read and convert everything first, then write into the (still detached) tuners and the model.
  std::vector<std::pair<at::Tensor, at::Tensor>> copies;
  std::vector<std::string> copy_keys;
  for (const Entry* e : todo) {
    auto src = file.tensor(e->key);
    int64_t at = 0;
    for (const auto& d : e->parts) {
      auto piece = e->parts.size() == 1 ? src : src.narrow(jdim, at, d.target.size(jdim));
      at += e->parts.size() == 1 ? 0 : d.target.size(jdim);
      copies.emplace_back(d.target, piece.to(d.target.device(), d.target.scalar_type()));
      copy_keys.push_back(e->key);
    }
  }
  // modules_to_save: the values go to the adapter's own copies, not to the module's current ones.
  detail::add_saved_copies(model, *cfg, adapter);
  std::map<std::string, at::Tensor> own_copy;
  for (const auto& [k, t] : detail::saved_module_tensors(model, *cfg, adapter)) own_copy[prefix + k] = t;
  for (std::size_t i = 0; i < copies.size(); ++i)
    if (auto it = own_copy.find(copy_keys[i]); it != own_copy.end()) copies[i].first = it->second;
  {
    torch::NoGradGuard g;
    for (auto& [dst, src] : copies) dst.copy_(src);
  }
  AttachResult r{adapter, {}, {}};
  for (const auto& [s, t] : plan) r.targeted.push_back(s.name);
  for (const auto& [n, m] : detail::resolve_modules_to_save(model, cfg->saved_modules())) r.modules_to_save.push_back(n);
  detail::commit_tuners(model, plan, adapter);
  if (!trainable)
    for (auto& [s, tuner] : plan) tuner->eval();
  return r;
}

}  // namespace peft
