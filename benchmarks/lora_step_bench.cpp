// Training-step time of full fine-tuning against LoRA (r=8 on every Linear) on a GEMM-bound MLP stack,
// and inference latency base / LoRA unmerged / LoRA merged. Medians of repeated runs after warm-up.
//   lora_step_bench [--hidden 1024] [--layers 2] [--tokens 1024] [--reps 10]
#include "bench_program.hpp"
#include "bench_common.hpp"

#include <peft/peft.hpp>

#include <CLI/CLI.hpp>
#include "common/cli_checks.hpp"
#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <thread>

namespace lora_step_bench {

struct StackImpl : torch::nn::Module {
  std::vector<peft::Linear> fcs;
  StackImpl(int64_t d, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
      fcs.push_back(register_module("up" + std::to_string(i), peft::Linear(d, 4 * d)));
      fcs.push_back(register_module("down" + std::to_string(i), peft::Linear(4 * d, d)));
    }
  }
  torch::Tensor forward(torch::Tensor x) {
    for (std::size_t i = 0; i < fcs.size(); i += 2) x = x + fcs[i + 1](torch::gelu(fcs[i](x)));
    return x;
  }
};
TORCH_MODULE(Stack);

template <class F>
double median_ms(F&& f, int reps) {
  return bench::median_ms(std::forward<F>(f), 2, reps);
}

int run(int argc, char** argv) {
  int64_t d = 1024, n = 2, tokens = 1024;
  int reps = 10;
  CLI::App app{"Training step and inference: full fine-tuning against LoRA (r=8, all Linear) on an MLP stack"};
  app.add_option("--hidden", d, "hidden width")->capture_default_str()->check(cli_checks::Positive);
  app.add_option("--layers", n, "MLP blocks (up and down projection each)")->capture_default_str()->check(cli_checks::Positive);
  app.add_option("--tokens", tokens, "tokens per step")->capture_default_str()->check(cli_checks::Positive);
  app.add_option("--reps", reps, "timed repetitions (median)")->capture_default_str()->check(cli_checks::Positive);
  CLI11_PARSE(app, argc, argv);
  torch::set_num_threads(std::max(1u, std::thread::hardware_concurrency()));
  torch::manual_seed(0);
  auto x = torch::randn({tokens, d});
  auto step_time = [&](Stack& m) {
    std::vector<torch::Tensor> ps;
    for (auto& p : m->parameters())
      if (p.requires_grad()) ps.push_back(p);
    torch::optim::AdamW opt(ps, torch::optim::AdamWOptions(1e-4));
    return median_ms([&] {
      opt.zero_grad();
      m->forward(x).pow(2).mean().backward();
      opt.step();
    }, reps);
  };
  Stack full(d, n);
  const double full_ms = step_time(full);
  Stack lora(d, n);
  peft::attach(lora, peft::LoraConfig().r(8).lora_alpha(16).target_modules("all-linear"));
  fmt::print("config: hidden {} x {} blocks, {} tokens, {} threads, LibTorch {}\n", d, n, tokens, torch::get_num_threads(),
             peft::detail::torch_version());
  fmt::print("lora: {}\n", peft::trainable_report(lora));
  const double lora_ms = step_time(lora);
  fmt::print("train step  full {:.1f} ms | lora {:.1f} ms | ratio {:.3f}\n", full_ms, lora_ms, lora_ms / full_ms);
  torch::NoGradGuard g;
  lora->eval();
  full->eval();
  const double base_inf = median_ms([&] { full->forward(x); }, reps);
  const double unmerged = median_ms([&] { lora->forward(x); }, reps);
  peft::merge_adapter(lora);
  const double merged = median_ms([&] { lora->forward(x); }, reps);
  fmt::print("inference   base {:.1f} ms | lora unmerged {:.1f} ms ({:.3f}x) | merged {:.1f} ms ({:.3f}x)\n", base_inf,
             unmerged, unmerged / base_inf, merged, merged / base_inf);
  return 0;
}

}  // namespace lora_step_bench

PEFT_BENCH_PROGRAM(lora_step_bench, "training step and inference: full fine-tuning against LoRA on an MLP stack")
