// A consumer of the installed / vendored library: attach LoRA to a peft::Linear and check the math.
#include <peft/peft.hpp>

#include <torch/nn/modules/container/sequential.h>

#include <iostream>

int main() {
  peft::Linear fc(8, 4);
  torch::nn::Sequential model;
  model->push_back("fc", fc);
  peft::attach(model, peft::LoraConfig().r(2).target_modules({"fc"}));
  auto x = at::randn({3, 8});
  bool same = at::equal(fc(x), at::linear(x, fc->weight, fc->bias));  // B = 0 at init
  std::cout << peft::trainable_report(model) << (same ? " ok" : " MISMATCH") << std::endl;
  return same ? 0 : 1;
}
