// The C++ half of benchmarks/compare_hf_peft.py: one method on one Hugging Face checkpoint (config.json +
// model.safetensors, written by that script so that both sides load the very same weights), timed the
// way the script's Python half times transformers + PEFT. Prints one JSON object with every raw time
// (the script takes the medians, the same way for both sides).
//
//   compare_bench --model DIR --method lora_qv --seq 128 --train-batches 1 4 8 32 --infer-batches 1 8 \
//                 --gen-tokens 32 --prompt 16 --warmup 2 --reps 5 --threads 2
//   compare_bench --model DIR --method full --seq 128 --memory-batch 32     # peak RSS of two training steps
//   (--checkpointing: activation checkpointing of every block, as transformers' gradient_checkpointing_enable())
//
// Methods (identical definitions on the Python side): base (inference only), full, lora_qv, lora_all,
// dora_qv, ia3, prefix. Training step: forward, loss (LLaMA: next-token cross-entropy over the logits;
// BERT: mean square of the last hidden state), backward, AdamW. Inference: forward under NoGradGuard,
// unmerged and (LoRA, DoRA, IA3) merged; LLaMA also greedy generation of --gen-tokens after a
// --prompt-token prompt with the KV cache, no end-of-sequence stop.

#include "bench_program.hpp"
#include <peft/peft.hpp>

#include "bench_common.hpp"

#include <CLI/CLI.hpp>
#include "common/cli_checks.hpp"
#include <fmt/format.h>
#include <torch/torch.h>
#include <torch/version.h>

#ifdef PEFT_BENCH_CUDA_STATS
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include <filesystem>
#include <thread>

namespace compare_bench {

namespace M = peft::models;

namespace {

struct Model {
  std::shared_ptr<torch::nn::Module> module;
  bool llama = false;
  std::shared_ptr<M::LlamaForCausalLMImpl> lm;  // when llama
  std::shared_ptr<M::BertModelImpl> bert;       // otherwise
  int64_t vocab = 0;
};

Model load(const std::string& dir, torch::Device dev, torch::ScalarType dtype) {
  const auto config_path = (std::filesystem::path(dir) / "config.json").string();
  const auto j = M::detail::read_json_file(config_path);
  const std::string type = j.value("model_type", "");
  Model m;
  if (type == "llama") {
    auto c = M::LlamaConfig::from_json(j, config_path);
    m.llama = true, m.vocab = c.vocab_size;
    m.lm = std::make_shared<M::LlamaForCausalLMImpl>(c, /*init=*/false);
    m.module = m.lm;
  } else if (type == "bert") {
    auto c = M::BertConfig::from_json(j, config_path);
    m.vocab = c.vocab_size;
    m.bert = std::make_shared<M::BertModelImpl>(c, /*add_pooling_layer=*/false, /*init=*/false);
    m.module = m.bert;
  } else {
    throw peft::ConfigError("'" + config_path + "': model_type '" + type + "' is neither llama nor bert");
  }
  peft::load_pretrained(m.module, dir);
  for (auto& p : m.module->parameters()) p.set_requires_grad(false);
  m.module->to(dev, dtype);
  return m;
}

/// The method's adapter on `m` (the same definitions as compare_hf_peft.py's `peft_config`).
void attach(Model& m, const std::string& method) {
  const std::vector<std::string> qv = m.llama ? std::vector<std::string>{"q_proj", "v_proj"} : std::vector<std::string>{"query", "value"};
  const std::string task = m.llama ? "CAUSAL_LM" : "FEATURE_EXTRACTION";
  auto lora = peft::LoraConfig().r(8).lora_alpha(16).lora_dropout(0.0).target_modules(qv).init_lora_weights(false).task_type(task);
  if (method == "base") return;
  if (method == "full") {
    for (auto& p : m.module->parameters()) p.set_requires_grad(true);
  } else if (method == "lora_qv") {
    peft::attach(m.module, lora);
  } else if (method == "lora_all") {
    peft::attach(m.module, peft::LoraConfig(lora).target_modules("all-linear"));
  } else if (method == "dora_qv") {
    peft::attach(m.module, peft::LoraConfig(lora).use_dora(true));
  } else if (method == "ia3") {
    const std::string kv = m.llama ? ".*\\.(k_proj|v_proj|down_proj)" : ".*\\.(key|value)|.*layer\\.\\d+\\.output\\.dense";
    const std::string ffn = m.llama ? ".*\\.down_proj" : ".*layer\\.\\d+\\.output\\.dense";
    peft::attach(m.module, peft::IA3Config().target_modules(kv).feedforward_modules(ffn).task_type(task));
  } else if (method == "prefix") {
    peft::attach(m.module, peft::PrefixTuningConfig().num_virtual_tokens(20).task_type(task));
  } else {
    throw peft::ConfigError("--method '" + method + "': expected base, full, lora_qv, lora_all, dora_qv, ia3 or prefix");
  }
}

bool mergeable(const std::string& method) { return method == "lora_qv" || method == "lora_all" || method == "dora_qv" || method == "ia3"; }

/// Token ids [batch, seq] in [3, vocab): BERT rows start with [CLS] (101) and end with [SEP] (102).
torch::Tensor tokens(const Model& m, int64_t batch, int64_t seq, torch::Device dev) {
  torch::manual_seed(0);
  auto ids = torch::randint(3, m.vocab, {batch, seq}, torch::kLong);
  if (!m.llama && m.vocab > 102) ids.select(1, 0).fill_(101), ids.select(1, seq - 1).fill_(102);
  return ids.to(dev);
}

torch::Tensor loss(Model& m, const torch::Tensor& ids) {
  if (m.llama) {
    const int64_t t = ids.size(1);
    auto logits = m.lm->forward(ids);
    return torch::cross_entropy_loss(logits.narrow(1, 0, t - 1).flatten(0, 1).to(torch::kFloat), ids.narrow(1, 1, t - 1).flatten());
  }
  return m.bert->forward(ids).last_hidden_state.to(torch::kFloat).pow(2).mean();
}

void forward(Model& m, const torch::Tensor& ids) {
  if (m.llama) m.lm->forward(ids);
  else m.bert->forward(ids);
}

}  // namespace

int run(int argc, char** argv) {
  CLI::App app{"One PEFT method on one Hugging Face checkpoint, timed as compare_hf_peft.py times the Python stack"};
  std::string model_dir, method = "lora_qv", device = "cpu", dtype = "float32";
  int64_t seq = 128, gen_tokens = 32, prompt = 16, memory_batch = 0;
  std::vector<int64_t> train_batches, infer_batches;
  int warmup = 2, reps = 5;
  bool checkpointing = false;
  unsigned threads = std::max(1u, std::thread::hardware_concurrency());
  app.add_option("--model", model_dir, "Hugging Face checkpoint folder (config.json, model.safetensors)")->required();
  app.add_option("--method", method, "base, full, lora_qv, lora_all, dora_qv, ia3 or prefix");
  app.add_option("--seq", seq, "sequence length of training and inference")->check(cli_checks::Positive);
  app.add_option("--train-batches", train_batches, "batch sizes of the timed training step");
  app.add_option("--infer-batches", infer_batches, "batch sizes of the timed inference (and generation)");
  app.add_option("--gen-tokens", gen_tokens, "LLaMA: greedy tokens generated per row (0: no generation)")->check(cli_checks::NonNegative);
  app.add_option("--prompt", prompt, "LLaMA: prompt tokens before generation")->check(cli_checks::Positive);
  app.add_option("--memory-batch", memory_batch, "only measure peak memory of two training steps at this batch")->check(cli_checks::NonNegative);
  app.add_flag("--checkpointing", checkpointing, "activation checkpointing of every transformer block (training)");
  app.add_option("--warmup", warmup, "untimed repetitions first")->check(cli_checks::NonNegative);
  app.add_option("--reps", reps, "timed repetitions")->check(cli_checks::Positive);
  app.add_option("--threads", threads, "intra-op threads")->check(cli_checks::Positive);
  app.add_option("--device", device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--dtype", dtype, "float32 or bfloat16")->check(CLI::IsMember({"float32", "bfloat16"}));
  CLI11_PARSE(app, argc, argv);
  try {
    torch::set_num_threads(static_cast<int>(threads));
    const bool cuda = device == "cuda";
    if (cuda && !torch::cuda::is_available()) throw std::runtime_error("--device cuda: no CUDA device available");
    const torch::Device dev = cuda ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU);
    const auto st = dtype == "bfloat16" ? torch::kBFloat16 : torch::kFloat32;
    nlohmann::ordered_json out;
    out["side"] = "cpp";
    out["method"] = method;
    out["libtorch"] = TORCH_VERSION;
    out["threads"] = threads;
    out["checkpointing"] = checkpointing;

    if (memory_batch > 0) {  // peak memory: from before the model is loaded to the end of two training steps
      int64_t before = 0;
      if (cuda) {
#ifdef PEFT_BENCH_CUDA_STATS
        torch::cuda::synchronize();
        c10::cuda::CUDACachingAllocator::emptyCache();
        c10::cuda::CUDACachingAllocator::resetPeakStats(0);
        before = c10::cuda::CUDACachingAllocator::getDeviceStats(0).allocated_bytes[0].current;
#else
        throw std::runtime_error("this LibTorch has no CUDA allocator statistics");
#endif
      } else {
        peft::train::reset_peak_rss();
        before = peft::train::rss().current;
      }
      auto m = load(model_dir, dev, st);
      attach(m, method);
      if (checkpointing) peft::enable_gradient_checkpointing(*m.module);
      m.module->train();
      auto opt = peft::train::make_adamw(m.module, 1e-4, 0.01);
      const auto ids = tokens(m, memory_batch, seq, dev);
      // The peak of loading (a transient the two loaders differ in) is reported apart; the training peak
      // counts from the same baseline but only what is resident from here on.
      int64_t load_peak = 0;
      if (cuda) {
#ifdef PEFT_BENCH_CUDA_STATS
        torch::cuda::synchronize();
        load_peak = c10::cuda::CUDACachingAllocator::getDeviceStats(0).allocated_bytes[0].peak;
        c10::cuda::CUDACachingAllocator::resetPeakStats(0);
#endif
      } else {
        load_peak = peft::train::rss().peak;
        peft::train::reset_peak_rss();
      }
      for (int i = 0; i < 2; ++i) {
        opt.zero_grad();
        loss(m, ids).backward();
        opt.step();
      }
      int64_t peak = 0;
      if (cuda) {
#ifdef PEFT_BENCH_CUDA_STATS
        torch::cuda::synchronize();
        peak = c10::cuda::CUDACachingAllocator::getDeviceStats(0).allocated_bytes[0].peak;
#endif
      } else {
        peak = peft::train::rss().peak;
      }
      out["memory_batch"] = memory_batch;
      out["peak_mb"] = static_cast<double>(peak - before) / 1e6;
      out["load_peak_mb"] = static_cast<double>(load_peak - before) / 1e6;
      out["trainable"] = peft::count_parameters(m.module).trainable;
      fmt::print("{}\n", out.dump());
      return 0;
    }

    auto m = load(model_dir, dev, st);
    attach(m, method);
    if (checkpointing) peft::enable_gradient_checkpointing(*m.module);
    out["trainable"] = peft::count_parameters(m.module).trainable;
    if (method != "base") {
      m.module->train();
      auto opt = peft::train::make_adamw(m.module, 1e-4, 0.01);
      for (const auto b : train_batches) {
        const auto ids = tokens(m, b, seq, dev);
        out["train_ms"][std::to_string(b)] = bench::times_ms([&] {
          opt.zero_grad();
          loss(m, ids).backward();
          opt.step();
        }, warmup, reps, cuda);
      }
    }
    m.module->eval();
    torch::NoGradGuard no_grad;
    auto infer = [&](const std::string& key) {
      for (const auto b : infer_batches) {
        const auto ids = tokens(m, b, seq, dev);
        out[key + "_ms"][std::to_string(b)] = bench::times_ms([&] { forward(m, ids); }, warmup, reps, cuda);
        if (method == "base" && b == infer_batches.front()) {  // same weights, same math: compared with the Python side
          auto y = m.llama ? m.lm->forward(ids) : m.bert->forward(ids).last_hidden_state;
          out["check_forward"] = y.to(torch::kDouble).abs().mean().item<double>();
        }
        if (m.llama && gen_tokens > 0) {
          const auto p = tokens(m, b, prompt, dev);
          const auto o = M::GenerationOptions().max_new_tokens(gen_tokens).eos_token_ids(std::vector<int64_t>{});
          at::Tensor g;
          out["generate_" + key + "_ms"][std::to_string(b)] = bench::times_ms([&] { g = M::generate(*m.lm, p, o); }, warmup, reps, cuda);
          if (g.size(1) != prompt + gen_tokens) throw std::runtime_error("generation stopped early");
          if (method == "base" && b == infer_batches.front()) {
            const auto row = g[0].to(torch::kCPU).contiguous();
            out["check_generate"] = std::vector<int64_t>(row.data_ptr<int64_t>(), row.data_ptr<int64_t>() + row.numel());
          }
        }
      }
    };
    infer("infer");
    if (mergeable(method)) {
      peft::merge_adapter(m.module);
      infer("merged");
    }
    fmt::print("{}\n", out.dump());
    return 0;
  } catch (const std::exception& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
}

}  // namespace compare_bench

PEFT_BENCH_PROGRAM(compare_bench, "one method on one Hugging Face checkpoint, timed as compare_hf_peft.py times transformers + PEFT")
