// Bring your own model: a LibTorch module of your own, made tunable by using peft::Linear where it
// would use torch::nn::Linear.
//  1. build a small classifier from tunable slots (peft::Linear) and pretrain it in full on task A;
//  2. freeze it, attach LoRA to its hidden layers by name, fine-tune only the adapter on a related task B
//     (the class boundaries are rotated), printing the trainable-parameter report and the falling loss;
//  3. save the base checkpoint and the adapter (HF PEFT layout), reload both into a fresh model and show
//     that its outputs match; finally merge the adapter and show the merged model agrees.
#include <peft/peft.hpp>
#include <peft/train/train.hpp>

#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include "common/cli_checks.hpp"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <thread>

struct ClassifierImpl : torch::nn::Module {
  peft::Linear fc1{nullptr}, fc2{nullptr}, head{nullptr};
  ClassifierImpl(int64_t in, int64_t hidden, int64_t classes) {
    fc1 = register_module("fc1", peft::Linear(in, hidden));
    fc2 = register_module("fc2", peft::Linear(hidden, hidden));
    head = register_module("head", peft::Linear(hidden, classes));
  }
  torch::Tensor forward(const torch::Tensor& x) { return head(torch::gelu(fc2(torch::gelu(fc1(x))))); }
};
TORCH_MODULE(Classifier);

// A task: 8 classes, label = argmax of a fixed random linear teacher applied to Gaussian inputs.
struct Task {
  torch::Tensor teacher;
  std::pair<torch::Tensor, torch::Tensor> sample(int64_t n) const {
    auto x = torch::randn({n, teacher.size(1)});
    return {x, torch::mm(x, teacher.t()).argmax(1)};
  }
};

static double accuracy(Classifier& m, const torch::Tensor& x, const torch::Tensor& y) {
  torch::NoGradGuard g;
  return m->forward(x).argmax(1).eq(y).to(torch::kFloat).mean().item<double>();
}

static void train(Classifier& m, const Task& task, int steps, double lr, const char* label) {
  auto opt = peft::train::make_adamw(m, lr);  // AdamW over what trains: the adapter (and the head)
  double running = 0;
  for (int step = 1; step <= steps; ++step) {
    auto [x, y] = task.sample(256);
    auto loss = torch::nn::functional::cross_entropy(m->forward(x), y);
    opt.zero_grad();
    loss.backward();
    opt.step();
    running = step == 1 ? loss.item<double>() : 0.9 * running + 0.1 * loss.item<double>();
    if (step == 1 || step % std::max(1, steps / 5) == 0) std::printf("  [%s] step %4d  loss %.4f\n", label, step, running);
  }
}

int main(int argc, char** argv) {
  CLI::App app{"Bring your own model: pretrain a small classifier, fine-tune it with LoRA on a related task, "
               "save, reload and merge"};
  int steps = 600;
  int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  app.add_option("--steps", steps, "training steps of each phase (pretraining, LoRA)")->capture_default_str()
      ->check(cli_checks::Positive);
  app.add_option("--threads", threads, "intra-op threads")->capture_default_str()->check(cli_checks::Positive);
  CLI11_PARSE(app, argc, argv);
  torch::manual_seed(0);
  torch::set_num_threads(threads);
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t in = 32, hidden = 256, classes = 8;
  Task a{torch::randn({classes, in})};
  // Task B: the same teacher with half its input directions rotated (a related but different task).
  auto rot = std::get<0>(torch::linalg_qr(torch::randn({in, in})));
  Task b{torch::cat({torch::mm(a.teacher.narrow(1, 0, in / 2), rot.narrow(0, 0, in / 2).narrow(1, 0, in / 2)),
                     a.teacher.narrow(1, in / 2, in / 2)}, 1)};
  auto [xb_test, yb_test] = b.sample(4000);

  Classifier model(in, hidden, classes);
  std::cout << "1. pretraining the base model in full on task A\n";
  train(model, a, steps, 3e-3, "full");
  std::printf("  base model: accuracy on task B %.1f%%\n", 100 * accuracy(model, xb_test, yb_test));

  std::cout << "2. LoRA (r=8, alpha=16) on fc1 and fc2, head trained in full (modules_to_save)\n";
  auto cfg = peft::LoraConfig().r(8).lora_alpha(16).target_modules({"fc1", "fc2"}).modules_to_save({"head"});
  peft::attach(model, cfg);
  std::cout << "  " << peft::trainable_report(model) << "\n";
  train(model, b, steps, 3e-3, "lora");
  model->eval();
  const double acc = accuracy(model, xb_test, yb_test);
  std::printf("  LoRA model: accuracy on task B %.1f%%\n", 100 * acc);

  std::cout << "3. save, reload into a fresh model, compare\n";
  const auto dir = std::filesystem::temp_directory_path() / "peft_byom";
  torch::OrderedDict<std::string, torch::Tensor> base;
  {
    // The original values (the head's too: training changed the adapter's copy of it). Cloned: the
    // parameter objects hold the adapter's copy again once the guard ends.
    peft::DisableAdapters off(model);
    for (const auto& p : model->named_parameters())
      if (p.key().find(".default.") == std::string::npos) base.insert(p.key(), p.value().detach().clone());
  }
  std::filesystem::create_directories(dir);
  peft::save_safetensors((dir / "model.safetensors").string(), base);
  peft::save_adapter(model, dir / "adapter");
  std::cout << "  wrote " << (dir / "model.safetensors").string() << " and " << (dir / "adapter").string()
            << " (adapter_config.json + adapter_model.safetensors)\n";

  Classifier fresh(in, hidden, classes);
  {
    torch::NoGradGuard g;
    auto ckpt = peft::load_safetensors((dir / "model.safetensors").string());
    for (auto& p : fresh->named_parameters()) p.value().copy_(ckpt.tensors[p.key()]);
  }
  peft::load_adapter(fresh, dir / "adapter");
  fresh->eval();
  const double diff = (fresh->forward(xb_test) - model->forward(xb_test)).abs().max().item<double>();
  std::printf("  max |reloaded - trained| output difference: %.3g\n", diff);
  peft::merge_adapter(fresh);
  const double merged_diff = (fresh->forward(xb_test) - model->forward(xb_test)).abs().max().item<double>();
  std::printf("  after merging the adapter into the weights: %.3g\n", merged_diff);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("done in %.1f s\n", secs);
  if (diff != 0.0 || merged_diff > 1e-4 || acc < 0.8) {
    std::cerr << "byom: unexpected result\n";
    return 1;
  }
  return 0;
}
