#pragma once
// The battery every tuner goes through on a tiny ViT: trainable-parameter count against the method's
// formula, output at init, gradients (finite differences in double; the frozen base gets none),
// merge/unmerge, and a save -> load round trip that reproduces the outputs exactly.

#include "support/test_support.hpp"

namespace peft_test {

inline std::shared_ptr<peft::models::ViTForImageClassificationImpl> make_vit(uint64_t seed = 1) {
  torch::manual_seed(seed);
  auto m = std::make_shared<peft::models::ViTForImageClassificationImpl>(tiny_vit());
  m->eval();
  return m;
}

/// Sets every trainable adapter tensor to random values so that nothing below is trivially zero.
inline void randomize_adapters(torch::nn::Module& m) {
  torch::NoGradGuard g;
  for (const auto& s : peft::tunable_slots(m))
    for (const auto& n : s.slot->adapter_names())
      for (auto& p : s.slot->adapter(n)->as_module().parameters()) p.copy_(p + 0.1 * torch::randn_like(p));
}

/// One backward pass through `forward`: exactly the trainable parameters get gradients (frozen means frozen).
inline void check_grads_only_on_trainables(torch::nn::Module& m, const std::function<torch::Tensor()>& forward) {
  m.zero_grad();
  forward().sum().backward();
  for (const auto& p : m.named_parameters()) {
    INFO(p.key());
    CHECK(p.value().grad().defined() == p.value().requires_grad());
  }
}

/// Saves every adapter of `m`, loads the named ones into `fresh` (same base weights), activates them
/// there, and checks that `fresh` reproduces `expected` exactly.
template <class Model>
void check_adapters_reload(torch::nn::Module& m, Model& fresh, const std::vector<std::string>& names,
                           const torch::Tensor& input, const torch::Tensor& expected) {
  TempDir dir;
  peft::save_adapter(m, dir.path());
  for (const auto& n : names) peft::load_adapter(*fresh, dir / n, n);
  peft::set_adapter(*fresh, names);
  torch::NoGradGuard g;
  CHECK(torch::equal(fresh->forward(input), expected));
}

struct Expect {
  int64_t trainable;
  bool mergeable;
  bool identity_at_init;
};

/// Runs the whole battery for one config on a tiny ViT.
inline void check_method(const peft::AdapterConfig& cfg, const Expect& e) {
  auto vit = make_vit();
  auto px = torch::randn({2, 1, 28, 28});
  torch::Tensor base;
  {
    torch::NoGradGuard g;
    base = vit->forward(px);
  }
  peft::attach(*vit, cfg);
  const auto count = peft::count_parameters(*vit);
  CHECK(count.trainable == e.trainable);
  {
    torch::NoGradGuard g;
    if (e.identity_at_init) CHECK_THAT(vit->forward(px), AllClose(base, 1e-6, 0));
    else CHECK_FALSE(torch::allclose(vit->forward(px), base, 1e-4, 1e-4));
  }
  randomize_adapters(*vit);

  // Gradients: only adapters (and modules_to_save) get them, the base none.
  check_grads_only_on_trainables(*vit, [&] { return vit->forward(px); });

  // Finite differences in double over every adapter tensor.
  {
    auto d = std::dynamic_pointer_cast<peft::models::ViTForImageClassificationImpl>(vit->clone());
    d->to(torch::kDouble);
    auto pxd = px.to(torch::kDouble).slice(0, 0, 1);
    // DoRA's weight norm is detached by design (paper, section 4.3), so finite differences match
    // autograd only for its magnitude vector.
    std::vector<torch::Tensor> params;
    for (const auto& s : peft::tunable_slots(*d))
      if (auto* t = s.slot->adapter("default"))
        for (auto& p : t->as_module().named_parameters())
          if (t->method() != "dora" || p.key() == "lora_magnitude_vector") params.push_back(p.value());
    REQUIRE_FALSE(params.empty());
    // Bound the cost: every tensor of the first two tuners, and one of each further tuner.
    std::vector<torch::Tensor> some(params.begin(), params.begin() + std::min<std::size_t>(params.size(), 8));
    CHECK(gradcheck([&] { return d->forward(pxd); }, some) < 1e-5);
  }

  // Merge: same outputs, unmerge restores the weights.
  torch::NoGradGuard g;
  auto out = vit->forward(px);
  if (e.mergeable) {
    std::vector<torch::Tensor> before;
    for (auto& p : vit->parameters()) before.push_back(p.clone());
    peft::merge_adapter(*vit);
    CHECK_THAT(vit->forward(px), AllClose(out, 1e-5, 1e-5));
    peft::unmerge_adapter(*vit);
    auto after = vit->parameters();
    for (std::size_t i = 0; i < before.size(); ++i) CHECK_THAT(after[i], AllClose(before[i], 1e-5, 1e-5));
    CHECK_THAT(vit->forward(px), AllClose(out, 1e-5, 1e-5));
  } else {
    CHECK_THROWS_AS(peft::merge_adapter(*vit), peft::StateError);
  }

  // Save -> load into a fresh model with the same base weights: identical outputs.
  TempDir dir;
  peft::save_adapter(*vit, dir.path());
  auto fresh = make_vit();
  peft::load_adapter(*fresh, dir.path());
  CHECK(torch::equal(fresh->forward(px), out));
  CHECK(peft::adapter_config(*fresh, "default")->peft_type() == cfg.peft_type());
}



/// One config of every method (and variant) that applies to the tiny ViT, by name.
inline std::vector<std::pair<std::string, std::shared_ptr<peft::AdapterConfig>>> every_method_on_vit() {
  auto lora = peft::LoraConfig().r(4).lora_alpha(8).target_modules({"query", "value"});
  return {
      {"lora", std::make_shared<peft::LoraConfig>(lora)},
      {"dora", std::make_shared<peft::LoraConfig>(peft::LoraConfig(lora).use_dora(true))},
      {"ia3", std::make_shared<peft::IA3Config>(peft::IA3Config().target_modules(".*\\.(key|value)|.*layer\\.\\d+\\.output\\.dense")
                                                    .feedforward_modules(".*layer\\.\\d+\\.output\\.dense"))},
      {"bitfit", std::make_shared<peft::BitFitConfig>()},
      {"rlrr", std::make_shared<peft::RLRRConfig>(peft::RLRRConfig().modules_to_save({"classifier"}))},
      {"houlsby", std::make_shared<peft::BottleneckConfig>(peft::BottleneckConfig().bottleneck_size(4))},
      {"parallel adapter", std::make_shared<peft::BottleneckConfig>(peft::BottleneckConfig().variant("parallel").bottleneck_size(4))},
      {"prompt", std::make_shared<peft::PromptTuningConfig>(peft::PromptTuningConfig().num_virtual_tokens(4).modules_to_save({"classifier"}))},
      {"vpt-deep", std::make_shared<peft::PromptTuningConfig>(peft::PromptTuningConfig().num_virtual_tokens(4).deep(true).prompt_tuning_init("XAVIER"))},
      {"prefix", std::make_shared<peft::PrefixTuningConfig>(peft::PrefixTuningConfig().num_virtual_tokens(3))},
      {"prefix (projection)", std::make_shared<peft::PrefixTuningConfig>(peft::PrefixTuningConfig().num_virtual_tokens(3).prefix_projection(true).encoder_hidden_size(8))},
      {"pasta", std::make_shared<peft::PastaConfig>(peft::PastaConfig().num_special_tokens(1))},
      {"capaboost lora", peft::CapaBoostConfig(lora).num_copies(2).density(0.5).seed(7).clone()},
      {"capaboost adapter", peft::CapaBoostConfig(peft::BottleneckConfig().variant("pfeiffer").bottleneck_size(4)).num_copies(2).clone()},
  };
}

/// `steps` AdamW steps (lr 1e-2) of next-token prediction on `tokens` [B, T] (the first T-1 predict the
/// rest); the loss of each step. Logits are widened to float32 for the loss (a half-precision base).
inline std::vector<double> train_next_token(peft::models::LlamaForCausalLMImpl& m, const torch::Tensor& tokens, int steps) {
  m.train();
  auto opt = peft::train::make_adamw(m, 1e-2);
  const int64_t t = tokens.size(1) - 1;
  std::vector<double> losses;
  for (int step = 0; step < steps; ++step) {
    opt.zero_grad();
    auto logits = m.forward(tokens.narrow(1, 0, t));
    auto loss = torch::cross_entropy_loss(logits.flatten(0, 1).to(torch::kFloat), tokens.narrow(1, 1, t).flatten());
    loss.backward();
    opt.step();
    losses.push_back(loss.item<double>());
  }
  return losses;
}

}  // namespace peft_test
