// peft-cli: inspect safetensors files and adapter directories; merge an HF-format LoRA adapter into a
// safetensors checkpoint. Errors go to stderr with a non-zero exit code.
//
//   peft-cli inspect model.safetensors
//   peft-cli inspect out/adapter
//   peft-cli merge --base model.safetensors --adapter out/adapter --out merged.safetensors [--scale S]
//   peft-cli methods
#include <peft/peft.hpp>  // every built-in method, so that any adapter can be inspected

#include <CLI/CLI.hpp>

#include <filesystem>
#include <iostream>

namespace {

std::string shape_of(const peft::TensorInfo& t) { return peft::detail::shape_str(t.shape); }

void inspect_file(const std::string& path) {
  peft::SafetensorsFile f(path);
  std::cout << path << ": " << f.infos().size() << " tensors\n";
  for (const auto& [k, v] : f.metadata()) std::cout << "  metadata " << k << " = " << v << "\n";
  uint64_t total = 0;
  for (const auto& t : f.infos()) {
    std::cout << "  " << t.name << "  " << peft::dtype_name(t.dtype) << " " << shape_of(t) << "\n";
    total += t.numel();
  }
  std::cout << "total elements: " << peft::detail::thousands(static_cast<int64_t>(total)) << "\n";
}

void inspect_adapter(const std::filesystem::path& dir) {
  auto cfg = peft::read_adapter_config(dir);
  const auto method = peft::MethodRegistry::global().at(cfg->peft_type());
  std::cout << dir.string() << "\n  method: " << method.display_name << " (peft_type " << method.peft_type
            << ")\n  config: " << cfg->to_json().dump() << "\n";
  peft::SafetensorsFile f((dir / peft::kAdapterWeightsFile).string());
  uint64_t total = 0;
  for (const auto& t : f.infos()) {
    std::cout << "  " << t.name << "  " << peft::dtype_name(t.dtype) << " " << shape_of(t) << "\n";
    total += t.numel();
  }
  std::cout << "  trainable parameters: " << peft::detail::thousands(static_cast<int64_t>(total)) << "\n";
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"peft-cli: inspect safetensors files and adapters, merge LoRA adapters into checkpoints"};
  app.require_subcommand(0, 1);  // checked below, after unknown flags have been reported by name
  std::string path;
  auto* inspect = app.add_subcommand("inspect", "Show a safetensors file or an adapter directory");
  inspect->add_option("path", path, "model.safetensors or an adapter directory")->required();
  std::string base, adapter, out;
  double scale = 1.0;
  auto* merge = app.add_subcommand("merge", "Write base + scale * LoRA delta to a new safetensors file");
  merge->add_option("--base", base, "base checkpoint (safetensors)")->required();
  merge->add_option("--adapter", adapter, "HF PEFT LoRA adapter directory")->required();
  merge->add_option("--out", out, "output safetensors file (written atomically)")->required();
  merge->add_option("--scale", scale, "extra factor on the adapter's delta (default 1)");
  auto* methods = app.add_subcommand("methods", "List the methods this build knows (peft_type and name)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  if (app.get_subcommands().empty()) {
    std::cerr << "peft-cli: expected a subcommand (inspect, merge or methods); run with --help for more information\n";
    return 2;
  }
  try {
    if (*inspect) {
      if (std::filesystem::is_directory(path)) inspect_adapter(path);
      else inspect_file(path);
    } else if (*methods) {
      for (const auto& m : peft::MethodRegistry::global().methods()) std::cout << m.peft_type << "\t" << m.display_name << "\n";
    } else if (*merge) {
      auto r = peft::merge_lora_checkpoint(base, adapter, out, scale);
      std::cout << "merged " << r.merged << " weights, replaced " << r.replaced << " tensors, copied " << r.copied
                << " unchanged -> " << out << "\n";
    }
  } catch (const peft::Error& e) {
    std::cerr << "peft-cli: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "peft-cli: unexpected error: " << e.what() << "\n";
    return 2;
  }
  return 0;
}
