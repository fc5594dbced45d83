// The unmerged LoRA branch as the library computes it (no dropout call at p = 0, scale and add fused
// into one addmm, the input viewed not copied) against the naive formulation
// y + s * B(A(dropout(x))) with a dropout call, separate matmuls, a scale and an add.
// Forward and forward+backward, medians of interleaved runs.
//   lora_forward_bench [--hidden 1024] [--tokens 2048] [--rank 8] [--reps 30]
#include "bench_program.hpp"
#include <peft/peft.hpp>

#include <CLI/CLI.hpp>
#include "common/cli_checks.hpp"
#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <thread>

namespace lora_forward_bench {

int run(int argc, char** argv) {
  int64_t d = 1024, tokens = 2048, r = 8;
  int reps = 30;
  CLI::App app{"The library's fused LoRA branch against the naive formulation"};
  app.add_option("--hidden", d, "hidden width")->capture_default_str()->check(cli_checks::Positive);
  app.add_option("--tokens", tokens, "tokens (a multiple of 8)")->capture_default_str()->check(cli_checks::Positive);
  app.add_option("--rank", r, "LoRA rank")->capture_default_str()->check(cli_checks::Positive);
  app.add_option("--reps", reps, "timed repetitions (median)")->capture_default_str()->check(cli_checks::Positive);
  CLI11_PARSE(app, argc, argv);
  torch::set_num_threads(std::max(1u, std::thread::hardware_concurrency()));
  torch::manual_seed(0);
  peft::Linear fc(d, d);
  torch::nn::Sequential s;
  s->push_back("fc", fc);
  peft::attach(s, peft::LoraConfig().r(r).lora_alpha(2 * r).target_modules({"fc"}).init_lora_weights(false));
  auto* t = dynamic_cast<peft::LoraLinearImpl*>(fc->adapter("default"));
  const double scale = t->spec.scaling;
  auto x = torch::randn({tokens / 8, 8, d}).requires_grad_(true);
  auto naive = [&] {
    auto h = torch::nn::functional::dropout(x, torch::nn::functional::DropoutFuncOptions().p(0.0).training(true));
    return torch::nn::functional::linear(x, fc->weight, fc->bias) +
           torch::matmul(torch::matmul(h, t->lora_A.t()), t->lora_B.t()) * scale;
  };
  auto ours = [&] { return fc(x); };
  TORCH_CHECK(torch::allclose(naive(), ours(), 1e-4, 1e-4));
  auto time = [&](auto&& f, bool backward) {
    auto a = std::chrono::steady_clock::now();
    auto y = f();
    if (backward) y.sum().backward();
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count();
  };
  for (bool backward : {false, true}) {
    std::vector<double> tn, to;
    for (int i = 0; i < 3; ++i) time(naive, backward), time(ours, backward);
    for (int i = 0; i < reps; ++i) {
      tn.push_back(time(naive, backward));
      to.push_back(time(ours, backward));
    }
    std::sort(tn.begin(), tn.end());
    std::sort(to.begin(), to.end());
    fmt::print("{:<17} naive {:.2f} ms | library {:.2f} ms | ratio {:.3f}\n", backward ? "forward+backward" : "forward",
               tn[reps / 2], to[reps / 2], to[reps / 2] / tn[reps / 2]);
  }
  return 0;
}

}  // namespace lora_forward_bench

PEFT_BENCH_PROGRAM(lora_forward_bench, "the fused LoRA branch against the naive formulation")
