// Many adapters in one batch: tokens/s of a LLaMA (SmolLM2) batch whose rows use different LoRA
// adapters, through peft::MixedBatch (gathered stacks, batched products) or its per-adapter loop, beside
// every row on one adapter. The C++ side of benchmarks/multi_adapter_compare.py, which drives it over
// stdin/stdout so that HF PEFT's adapter_names runs interleaved with it in one run:
//
//     multi_adapter_bench --model ~/.cache/peft-cpp/smollm2 --adapters DIR --count 128 --threads 2
//     > mixed 32          (each of 32 rows: adapter a{i % 32}; also: loop N, single N (N ignored), base N)
//     < {"condition": "mixed", "adapters": 32, "prefill_s": ..., "decode_s": ..., "tokens": [...]}
//
// Each command: a prefill of --prompt tokens per row with the KV cache, then --steps greedy decoding
// steps (all rows, no early stop); the reply has both times and the generated tokens.

#include "bench_program.hpp"
#include <peft/models/llama.hpp>
#include <peft/models/pretrained.hpp>
#include <peft/serve/adapter_pool.hpp>

#include <CLI/CLI.hpp>
#include "common/cli_checks.hpp"
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <chrono>
#include <iostream>
#include <sstream>
#include <thread>

namespace multi_adapter_bench {

namespace M = peft::models;

int run(int argc, char** argv) {
  CLI::App app{"Tokens/s of a batch whose rows use different LoRA adapters (driven by multi_adapter_compare.py)"};
  std::string model_dir, adapters_dir;
  int64_t count = 128, rows = 32, prompt = 16, steps = 8;
  unsigned threads = std::max(1u, std::thread::hardware_concurrency());
  // Required, but checked after parsing: CLI11 reports a missing required option before an unknown one.
  app.add_option("--model", model_dir, "a LLaMA checkpoint directory (config.json, model.safetensors); required");
  app.add_option("--adapters", adapters_dir, "directory with PEFT adapters a0, a1, ...; required");
  app.add_option("--count", count, "adapters to load (a0 .. a{count-1})")->check(cli_checks::Positive);
  app.add_option("--rows", rows, "batch rows")->check(cli_checks::Positive);
  app.add_option("--prompt", prompt, "prompt tokens per row")->check(cli_checks::Positive);
  app.add_option("--steps", steps, "decoding steps timed after the prefill")->check(cli_checks::Positive);
  app.add_option("--threads", threads, "intra-op threads")->check(cli_checks::Positive);
  CLI11_PARSE(app, argc, argv);
  if (model_dir.empty() || adapters_dir.empty()) {
    std::cerr << "multi_adapter_bench: --model and --adapters are required (run with --help for more information)\n";
    return 2;
  }
  try {
    torch::set_num_threads(static_cast<int>(threads));
    torch::NoGradGuard no_grad;
    M::LlamaForCausalLM lm(M::LlamaConfig::from_file(model_dir + "/config.json"), false);
    peft::load_pretrained(*lm, model_dir);
    lm->eval();
    peft::AdapterPool pool(*lm);
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < count; ++i) pool.load("a" + std::to_string(i), adapters_dir + "/a" + std::to_string(i));
    const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    // The prompt: the same formula as the Python side.
    const int64_t vocab = lm->config.vocab_size;
    auto ids = (torch::arange(rows * prompt, torch::kLong) * 7919 % (vocab - 10) + 5).view({rows, prompt});
    std::cout << nlohmann::json{{"ready", true}, {"load_s", load_s}, {"adapters", count}}.dump() << std::endl;

    std::string line;
    while (std::getline(std::cin, line)) {
      std::istringstream in(line);
      std::string condition;
      int64_t n = 1;
      in >> condition >> n;
      if (condition == "quit") break;
      if (n < 1 || n > count) throw std::runtime_error(fmt::format("adapters must be in 1..{}, received {}", count, n));
      std::vector<std::string> names;
      for (int64_t i = 0; i < rows; ++i) names.push_back("a" + std::to_string(i % n));
      std::unique_ptr<peft::MixedBatch> batch;
      if (condition == "mixed" || condition == "loop")
        batch = std::make_unique<peft::MixedBatch>(
            *lm, names, peft::MixedBatchOptions().kernel(condition == "loop" ? peft::MixedKernel::loop : peft::MixedKernel::automatic));
      else if (condition == "single")
        peft::set_adapter(*lm, "a0");
      else if (condition != "base")
        throw std::runtime_error("unknown condition '" + condition + "' (mixed, loop, single, base)");
      std::unique_ptr<peft::DisableAdapters> off;
      if (condition == "base") off = std::make_unique<peft::DisableAdapters>(*lm);
      peft::nn::KVCache cache(static_cast<std::size_t>(lm->config.num_hidden_layers));
      auto clock = std::chrono::steady_clock::now;
      auto t = clock();
      auto next = lm->forward(ids, {}, &cache).select(1, -1).argmax(-1);
      const double prefill = std::chrono::duration<double>(clock() - t).count();
      std::vector<at::Tensor> out{next.unsqueeze(1)};
      t = clock();
      for (int64_t s = 0; s < steps; ++s) {
        next = lm->forward(next.unsqueeze(1), {}, &cache).select(1, -1).argmax(-1);
        out.push_back(next.unsqueeze(1));
      }
      const double decode = std::chrono::duration<double>(clock() - t).count();
      auto toks = torch::cat(out, 1).contiguous();
      std::vector<int64_t> flat(toks.data_ptr<int64_t>(), toks.data_ptr<int64_t>() + toks.numel());
      std::cout << nlohmann::json{{"condition", condition}, {"adapters", n},     {"prefill_s", prefill},
                                  {"decode_s", decode},     {"tokens", flat}}
                       .dump()
                << std::endl;
    }
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "multi_adapter_bench: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace multi_adapter_bench

PEFT_BENCH_PROGRAM(multi_adapter_bench, "tokens/s of mixed-adapter batches (driven by multi_adapter_compare.py)")
