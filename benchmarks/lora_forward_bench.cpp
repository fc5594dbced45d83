// The unmerged LoRA branch as the library computes it (no dropout call at p = 0, scale and add fused
// into one addmm, the input viewed not copied) against the naive formulation
// y + s * B(A(dropout(x))) with a dropout call, separate matmuls, a scale and an add.
// Forward and forward+backward, medians of interleaved runs.
//   lora_forward_bench [hidden=1024] [tokens=2048] [r=8] [reps=30]
#include <peft/peft.hpp>

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>

int main(int argc, char** argv) {
  const int64_t d = argc > 1 ? std::atoll(argv[1]) : 1024, tokens = argc > 2 ? std::atoll(argv[2]) : 2048;
  const int64_t r = argc > 3 ? std::atoll(argv[3]) : 8;
  const int reps = argc > 4 ? std::atoi(argv[4]) : 30;
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
    std::printf("%-17s naive %.2f ms | library %.2f ms | ratio %.3f\n", backward ? "forward+backward" : "forward",
                tn[reps / 2], to[reps / 2], to[reps / 2] / tn[reps / 2]);
  }
}
