#pragma once
/// \file models/pretrained.hpp
/// Loading and saving whole-model checkpoints in Hugging Face's layout: `model.safetensors`, or shards
/// listed in `model.safetensors.index.json`, plus `config.json`.
///
///     auto report = peft::load_pretrained(*model, "bert-base-uncased/", peft::LoadOptions().strict(false));
///     peft::save_pretrained(*model, "out/");   // model.safetensors + config.json, written atomically

#include <peft/core/detail/atomic_file.hpp>
#include <peft/core/error.hpp>
#include <peft/core/model.hpp>
#include <peft/io/safetensors.hpp>
#include <peft/models/common.hpp>

#include <torch/arg.h>

#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

namespace peft {

/// Options of load_pretrained, set LibTorch-style: `peft::LoadOptions().strict(false)`.
struct LoadOptions {
  /// Strict: a checkpoint tensor the model has no place for is an error. Non-strict: such tensors are
  /// skipped and listed in the report (e.g. a pretraining head). Missing or mis-shaped tensors are
  /// always errors.
  TORCH_ARG(bool, strict) = true;
  /// Missing tensors of the model's task head (PretrainedModel::head_modules(), e.g. `classifier` when
  /// a BertForSequenceClassification loads a BertModel checkpoint) keep their fresh initialization and
  /// are listed in LoadReport::new_head, as in Hugging Face. false: they are errors like any missing key.
  TORCH_ARG(bool, allow_new_head) = true;
};

/// What load_pretrained did.
struct LoadReport {
  std::vector<std::string> files;       ///< safetensors files read
  std::size_t loaded = 0;               ///< tensors copied into the model
  std::vector<std::string> skipped;     ///< unexpected checkpoint keys skipped (non-strict)
  std::vector<std::string> ignored;     ///< keys the model ignores by design (tied heads, old buffers)
  std::string key_prefix_change;        ///< e.g. "added 'bert.'" when the checkpoint is a bare model
  std::vector<std::string> new_head;    ///< head tensors absent from the checkpoint, left initialized
};

/// Options of save_pretrained: `peft::SaveOptions().max_shard_bytes(2'000'000'000)`.
struct SaveOptions {
  /// Split into shards of at most this many bytes (0: one file). A shard holds at least one tensor.
  TORCH_ARG(int64_t, max_shard_bytes) = 0;
};

namespace detail {

/// The model's own tensors (parameters and buffers) by state-dict key, without adapter tensors.
inline std::vector<std::pair<std::string, at::Tensor>> base_state(ModelRef model) {
  std::vector<std::string> adapter_prefixes;
  for (const auto& s : tunable_slots(model))
    for (const auto& a : s.slot->adapter_names()) adapter_prefixes.push_back((s.name.empty() ? a : s.name + "." + a) + ".");
  auto is_adapter = [&](const std::string& k) {
    for (const auto& p : adapter_prefixes)
      if (k.compare(0, p.size(), p) == 0) return true;
    return false;
  };
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& p : model->named_parameters(true))
    if (!is_adapter(p.key())) out.emplace_back(p.key(), p.value());
  for (const auto& b : model->named_buffers(true))
    if (!is_adapter(b.key())) out.emplace_back(b.key(), b.value());
  return out;
}

inline std::string list_some(const std::vector<std::string>& v, std::size_t max = 20) {
  std::string r;
  for (std::size_t i = 0; i < v.size() && i < max; ++i) r += (i ? ", " : "") + ("'" + v[i] + "'");
  if (v.size() > max) r += ", ... (" + std::to_string(v.size()) + " in all)";
  return r;
}

inline std::string first_component(const std::string& k) { return k.substr(0, k.find('.')); }

}  // namespace detail

/// Loads a Hugging Face checkpoint into `model`: `path` is a .safetensors file or a directory with
/// model.safetensors or model.safetensors.index.json. F32/F16/BF16 tensors are converted to each
/// parameter's dtype and device. Keys may carry or lack the base-model prefix (`bert.`, `vit.`,
/// `model.`) and old LayerNorm names (gamma/beta). Every missing, unexpected and mis-shaped key is
/// reported in one CheckpointError, and nothing is loaded unless everything fits.
inline LoadReport load_pretrained(ModelRef model, const std::string& path, const LoadOptions& options = {}) {
  namespace fs = std::filesystem;
  LoadReport report;
  // 1. Locate and open the files (headers are validated here).
  std::vector<std::unique_ptr<SafetensorsFile>> files;
  std::map<std::string, SafetensorsFile*> where;  // checkpoint key -> file
  auto open = [&](const std::string& f) {
    files.push_back(std::make_unique<SafetensorsFile>(f));
    report.files.push_back(f);
    return files.back().get();
  };
  const fs::path p(path);
  if (fs::is_directory(p)) {
    if (fs::exists(p / "model.safetensors")) {
      auto* f = open((p / "model.safetensors").string());
      for (const auto& t : f->infos()) where[t.name] = f;
    } else if (fs::exists(p / "model.safetensors.index.json")) {
      const std::string index_path = (p / "model.safetensors.index.json").string();
      auto index = models::detail::read_json_file(index_path);
      if (!index.contains("weight_map") || !index["weight_map"].is_object())
        throw FormatError("'" + index_path + "': expected an object 'weight_map' mapping tensor names to shard files");
      std::map<std::string, SafetensorsFile*> shard;
      for (const auto& [key, file] : index["weight_map"].items()) {
        if (!file.is_string()) throw FormatError("'" + index_path + "': weight_map['" + key + "'] is not a file name");
        const std::string name = file.get<std::string>();
        if (name.find('/') != std::string::npos || name == "..")
          throw FormatError("'" + index_path + "': shard name '" + name + "' must be a file in the same directory");
        if (!shard.count(name)) shard[name] = open((p / name).string());
        if (!shard[name]->contains(key))
          throw FormatError("'" + index_path + "' maps '" + key + "' to '" + name + "', which has no such tensor");
        where[key] = shard[name];
      }
    } else if (fs::exists(p / "pytorch_model.bin")) {
      throw IoError("'" + path + "' has only pytorch_model.bin; convert it to model.safetensors (pickle files are not read)");
    } else {
      throw IoError("'" + path + "' has neither model.safetensors nor model.safetensors.index.json");
    }
  } else if (fs::exists(p)) {
    auto* f = open(path);
    for (const auto& t : f->infos()) where[t.name] = f;
  } else {
    throw IoError("checkpoint '" + path + "' does not exist");
  }

  // 2. Map checkpoint keys onto model keys.
  auto state = detail::base_state(model);
  std::map<std::string, at::Tensor> want(state.begin(), state.end());
  const auto* pretrained = dynamic_cast<const models::PretrainedModel*>(&*model);
  auto rename_norm = [&](std::string k) {  // old BERT checkpoints: LayerNorm.gamma / .beta
    auto ends = [&](const std::string& s) { return k.size() >= s.size() && k.compare(k.size() - s.size(), s.size(), s) == 0; };
    if (ends(".gamma") && want.count(k.substr(0, k.size() - 6) + ".weight")) return k.substr(0, k.size() - 6) + ".weight";
    if (ends(".beta") && want.count(k.substr(0, k.size() - 5) + ".bias")) return k.substr(0, k.size() - 5) + ".bias";
    return k;
  };
  // Candidate key transforms: as is, add a model prefix, strip a checkpoint prefix. Pick the best.
  std::set<std::string> model_prefixes, ckpt_prefixes;
  for (const auto& [k, t] : want) model_prefixes.insert(detail::first_component(k));
  for (const auto& [k, f] : where) ckpt_prefixes.insert(detail::first_component(k));
  auto count_hits = [&](const std::function<std::string(const std::string&)>& tf) {
    std::size_t n = 0;
    for (const auto& [k, f] : where) n += want.count(rename_norm(tf(k)));
    return n;
  };
  std::function<std::string(const std::string&)> best = [](const std::string& k) { return k; };
  std::size_t best_hits = count_hits(best);
  if (best_hits < want.size()) {
    for (const auto& mp : model_prefixes) {
      auto tf = [mp](const std::string& k) { return mp + "." + k; };
      if (auto h = count_hits(tf); h > best_hits) best = tf, best_hits = h, report.key_prefix_change = "added '" + mp + ".'";
    }
    for (const auto& cp : ckpt_prefixes) {
      auto tf = [cp](const std::string& k) {
        return k.compare(0, cp.size() + 1, cp + ".") == 0 ? k.substr(cp.size() + 1) : k;
      };
      if (auto h = count_hits(tf); h > best_hits) best = tf, best_hits = h, report.key_prefix_change = "removed '" + cp + ".'";
    }
  }

  // 3. Check everything before touching the model.
  std::vector<std::string> missing, unexpected, mismatched;
  std::vector<std::tuple<at::Tensor, SafetensorsFile*, std::string>> plan;
  std::set<std::string> found;
  for (const auto& [ckey, file] : where) {
    const std::string mkey = rename_norm(best(ckey));
    auto it = want.find(mkey);
    if (it == want.end()) {
      if (pretrained && (pretrained->ignorable_key(ckey) || pretrained->ignorable_key(mkey))) report.ignored.push_back(ckey);
      else unexpected.push_back(ckey);
      continue;
    }
    const auto& info = file->info(ckey);
    found.insert(mkey);  // present, even if it does not fit
    if (info.shape != it->second.sizes().vec()) {
      mismatched.push_back("'" + ckey + "' is " + peft::detail::shape_str(info.shape) + " in the checkpoint, " +
                           peft::detail::shape_str(it->second.sizes().vec()) + " in the model");
      continue;
    }
    const auto st = to_scalar_type(info.dtype);
    if (at::isFloatingType(it->second.scalar_type()) != at::isFloatingType(st)) {
      mismatched.push_back("'" + ckey + "' has dtype " + std::string(c10::toString(st)) + ", the model " +
                           c10::toString(it->second.scalar_type()));
      continue;
    }
    plan.emplace_back(it->second, file, ckey);
  }
  const auto heads = pretrained ? pretrained->head_modules() : std::vector<std::string>{};
  auto in_head = [&](const std::string& k) {
    for (const auto& h : heads)
      if (k.compare(0, h.size() + 1, h + ".") == 0) return true;
    return false;
  };
  for (const auto& [k, t] : want) {
    if (found.count(k)) continue;
    if (options.allow_new_head() && in_head(k)) report.new_head.push_back(k);
    else missing.push_back(k);
  }
  if (!options.strict()) {
    report.skipped = unexpected;
    unexpected.clear();
  }
  if (!missing.empty() || !unexpected.empty() || !mismatched.empty()) {
    std::string msg = "checkpoint '" + path + "' does not fit the model; nothing was loaded.";
    if (!missing.empty()) msg += " Missing (" + std::to_string(missing.size()) + "): " + detail::list_some(missing) + ".";
    if (!unexpected.empty())
      msg += " Unexpected (" + std::to_string(unexpected.size()) + "; load with strict = false to skip them): " +
             detail::list_some(unexpected) + ".";
    if (!mismatched.empty()) {
      msg += " Mismatched (" + std::to_string(mismatched.size()) + "):";
      for (std::size_t i = 0; i < mismatched.size() && i < 20; ++i) msg += (i ? "; " : " ") + mismatched[i];
      msg += ".";
    }
    if (!report.key_prefix_change.empty()) msg += " (Checkpoint keys were matched with the prefix " + report.key_prefix_change + ".)";
    throw CheckpointError(msg);
  }

  // 4. Copy (converting dtype and device).
  torch::NoGradGuard no_grad;
  for (auto& [dst, file, key] : plan) dst.copy_(file->tensor(key));
  report.loaded = plan.size();
  return report;
}

/// Writes the model's own tensors (adapters excluded) as model.safetensors, or as shards with
/// model.safetensors.index.json, plus config.json for zoo models. Each file is replaced atomically;
/// a stale single file or index from an earlier save in the other layout is removed afterwards.
inline void save_pretrained(ModelRef model, const std::string& dir, const SaveOptions& options = {}) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (!fs::is_directory(dir)) throw IoError("cannot create directory '" + dir + "': " + ec.message());
  auto state = detail::base_state(model);
  std::vector<std::vector<std::pair<std::string, at::Tensor>>> shards(1);
  int64_t bytes = 0, total = 0;
  for (auto& [k, t] : state) {
    const int64_t n = t.numel() * static_cast<int64_t>(t.element_size());
    if (options.max_shard_bytes() > 0 && bytes > 0 && bytes + n > options.max_shard_bytes()) shards.emplace_back(), bytes = 0;
    shards.back().emplace_back(k, t.detach().to(at::kCPU).contiguous());
    bytes += n, total += n;
  }
  const std::map<std::string, std::string> meta = {{"format", "pt"}};
  auto write = [&](const std::string& file, const std::vector<std::pair<std::string, at::Tensor>>& items) {
    torch::OrderedDict<std::string, at::Tensor> d;
    for (const auto& [k, t] : items) d.insert(k, t);
    save_safetensors((fs::path(dir) / file).string(), d, meta);
  };
  if (auto* pm = dynamic_cast<const models::PretrainedModel*>(&*model)) {
    const std::string text = pm->config_json().dump(2) + "\n";
    peft::detail::atomic_write(fs::path(dir) / "config.json", [&](peft::detail::FileSink& s) { s.write(text); });
  }
  if (shards.size() == 1) {
    write("model.safetensors", shards[0]);
    fs::remove(fs::path(dir) / "model.safetensors.index.json", ec);
    return;
  }
  models::json index;
  index["metadata"] = {{"total_size", total}};
  models::json map = models::json::object();
  char name[64];
  for (std::size_t i = 0; i < shards.size(); ++i) {
    std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
    write(name, shards[i]);
    for (const auto& [k, t] : shards[i]) map[k] = name;
  }
  index["weight_map"] = map;
  const std::string text = index.dump(2) + "\n";
  peft::detail::atomic_write(fs::path(dir) / "model.safetensors.index.json", [&](peft::detail::FileSink& s) { s.write(text); });
  fs::remove(fs::path(dir) / "model.safetensors", ec);
}

}  // namespace peft
