#pragma once
/// \file merge_checkpoint.hpp
/// Merging an HF-format LoRA adapter into a safetensors checkpoint without building a model
/// (what `peft-cli merge` does): W' = W + scale * s * B A for every adapted weight, every other tensor
/// copied unchanged, the base's dtypes and metadata kept. Tensors the adapter trains in full
/// (modules_to_save, biases) replace the base's.

#include <peft/io/adapter_io.hpp>
#include <peft/io/safetensors.hpp>
#include <peft/tuners/lora.hpp>

#include <string>

namespace peft {

struct MergeReport {
  int merged = 0;    ///< base weights that received a LoRA delta
  int replaced = 0;  ///< base tensors replaced by the adapter's full copies
  int copied = 0;    ///< base tensors copied unchanged
};

inline MergeReport merge_lora_checkpoint(const std::string& base_path, const std::filesystem::path& adapter_dir,
                                         const std::string& out_path, double scale = 1.0) {
  auto cfg_any = read_adapter_config(adapter_dir);
  auto* cfg = dynamic_cast<LoraConfig*>(cfg_any.get());
  const std::string cfg_path = (adapter_dir / kAdapterConfigFile).string();
  if (!cfg) throw ConfigError("'" + cfg_path + "': merge needs a LORA adapter, received peft_type " + cfg_any->peft_type());
  const std::string adapter_path = (adapter_dir / kAdapterWeightsFile).string();
  SafetensorsFile adapter(adapter_path);
  SafetensorsFile base(base_path);
  const std::string prefix = kKeyPrefix;

  // Plan: base key -> (A key, B key, embedding?) and base key -> replacement key. Validate everything.
  struct Lora {
    std::string a, b, module;
    bool embedding;
  };
  std::map<std::string, Lora> deltas;
  std::map<std::string, std::string> replacements;
  std::vector<std::string> problems;
  auto ends_with = [](const std::string& s, const std::string& t) {
    return s.size() >= t.size() && s.compare(s.size() - t.size(), t.size(), t) == 0;
  };
  for (const auto& info : adapter.infos()) {
    const std::string& k = info.name;
    if (k.rfind(prefix, 0) != 0) {
      problems.push_back("tensor '" + k + "' does not start with '" + prefix + "'");
      continue;
    }
    const std::string rest = k.substr(prefix.size());
    std::string module;
    bool emb = false;
    if (ends_with(rest, ".lora_A.weight")) module = rest.substr(0, rest.size() - 14);
    else if (ends_with(rest, ".lora_embedding_A")) module = rest.substr(0, rest.size() - 17), emb = true;
    else if (ends_with(rest, ".lora_B.weight") || ends_with(rest, ".lora_embedding_B")) continue;
    else if (ends_with(rest, ".lora_magnitude_vector") || ends_with(rest, ".lora_magnitude_vector.weight")) {
      problems.push_back("tensor '" + k + "' is a DoRA magnitude; DoRA adapters cannot be merged by this tool");
      continue;
    } else {
      if (!base.contains(rest)) problems.push_back("adapter tensor '" + k + "' replaces '" + rest + "', which the base checkpoint lacks");
      else if (base.info(rest).shape != info.shape)
        problems.push_back("adapter tensor '" + k + "' has shape " + detail::shape_str(info.shape) + " but base '" + rest +
                           "' has " + detail::shape_str(base.info(rest).shape));
      else replacements[rest] = k;
      continue;
    }
    const std::string bkey = prefix + module + (emb ? ".lora_embedding_B" : ".lora_B.weight");
    const std::string wkey = module + ".weight";
    if (!adapter.contains(bkey)) { problems.push_back("tensor '" + k + "' has no partner '" + bkey + "'"); continue; }
    if (!base.contains(wkey)) {
      problems.push_back("base weight '" + wkey + "' for adapter tensor '" + k + "' is missing from '" + base_path +
                         "' (hint: wrong base model?)");
      continue;
    }
    const auto& A = info.shape;
    const auto& B = adapter.info(bkey).shape;
    const auto& W = base.info(wkey).shape;
    const int64_t r = cfg->rank_alpha(module).first;
    if (A.size() != 2 || B.size() != 2 || W.size() != 2) {
      problems.push_back("module '" + module + "': expected 2-D lora_A, lora_B and weight, received " + detail::shape_str(A) +
                         ", " + detail::shape_str(B) + ", " + detail::shape_str(W) + " (convolution LoRA is not supported here)");
      continue;
    }
    const std::vector<int64_t> wexp = emb ? std::vector<int64_t>{A[1], B[0]} : std::vector<int64_t>{B[0], A[1]};
    if (A[0] != r || B[1] != r)
      problems.push_back("module '" + module + "': rank from the config is " + std::to_string(r) + " but lora_A is " +
                         detail::shape_str(A) + " and lora_B is " + detail::shape_str(B));
    else if (W != wexp)
      problems.push_back("module '" + module + "': base weight '" + wkey + "' has shape " + detail::shape_str(W) +
                         ", the adapter expects " + detail::shape_str(wexp));
    else
      deltas[wkey] = {k, bkey, module, emb};
  }
  if (deltas.empty() && problems.empty()) problems.push_back("the adapter holds no LoRA tensors");
  if (!problems.empty()) {
    std::string msg = "cannot merge '" + adapter_path + "' into '" + base_path + "':";
    for (const auto& p : problems) msg += "\n  - " + p;
    throw AdapterError(msg);
  }

  MergeReport report;
  torch::OrderedDict<std::string, at::Tensor> out("tensor");
  torch::NoGradGuard g;
  for (const auto& info : base.infos()) {
    at::Tensor w = base.tensor(info.name);
    if (auto d = deltas.find(info.name); d != deltas.end()) {
      const auto& L = d->second;
      auto A = adapter.tensor(L.a).to(at::kFloat), B = adapter.tensor(L.b).to(at::kFloat);
      auto delta = at::mm(B, A).mul_(scale * cfg->scaling(L.module));
      if (L.embedding) delta = delta.t();
      w = w.to(at::kFloat).add_(delta).to(w.scalar_type());
      ++report.merged;
    } else if (auto r = replacements.find(info.name); r != replacements.end()) {
      w = adapter.tensor(r->second).to(w.scalar_type());
      ++report.replaced;
    } else {
      ++report.copied;
    }
    out.insert(info.name, w);
  }
  save_safetensors(out_path, out, base.metadata());
  return report;
}

}  // namespace peft
