// The tuner catalogue on real model-zoo models: for every method, the parameter count against its
// formula, the output at init, gradients (finite differences in double, and frozen base), merge and
// unmerge, and a save -> load round trip that reproduces the outputs exactly.

#include "support/method_battery.hpp"

// Everything below lives in this file's own namespace, so that the test sources can be compiled
// together (CMake's unity build) without their helpers meeting.
namespace peft_tests_methods {

using namespace peft_test;
namespace M = peft::models;

TEST_CASE("IA3: key/value rescaled at the output, the FFN activation at the input", "[methods][ia3]") {
  auto cfg = peft::IA3Config()
                 .target_modules(".*\\.(key|value)|.*layer\\.\\d+\\.output\\.dense")
                 .feedforward_modules(".*layer\\.\\d+\\.output\\.dense");
  // Per layer: key [32, 1] + value [32, 1] + output.dense [1, 64].
  check_method(cfg, {2 * (32 + 32 + 64), true, true});
  // HF's layout and keys.
  auto vit = make_vit();
  peft::attach(*vit, cfg);
  auto sd = peft::get_adapter_state_dict(*vit);
  CHECK(sd["base_model.model.vit.encoder.layer.0.attention.attention.key.ia3_l"].sizes() == std::vector<int64_t>{32, 1});
  CHECK(sd["base_model.model.vit.encoder.layer.1.output.dense.ia3_l"].sizes() == std::vector<int64_t>{1, 64});
  CHECK(sd.size() == 6);
  // The hand computation for one module of each kind.
  auto& layer = *vit->vit->encoder->layer->ptr<M::ViTLayerImpl>(0);
  torch::NoGradGuard g;
  auto* kt = dynamic_cast<peft::IA3LinearImpl*>(layer.attention->attention->key->adapter("default"));
  auto* ft = dynamic_cast<peft::IA3LinearImpl*>(layer.output->dense->adapter("default"));
  kt->ia3_l.normal_(), ft->ia3_l.normal_();
  auto x = torch::randn({3, 32}), h = torch::randn({3, 64});
  auto& key = layer.attention->attention->key;
  auto& down = layer.output->dense;
  CHECK_THAT(key(x), AllClose(torch::nn::functional::linear(x, key->weight, key->bias) * kt->ia3_l.view({-1}), 1e-6, 1e-5));
  CHECK_THAT(down(h), AllClose(torch::nn::functional::linear(h * ft->ia3_l.view({-1}), down->weight, down->bias), 1e-6, 1e-5));
  CHECK_THROWS_WITH(peft::IA3Config().target_modules({"key"}).feedforward_modules({"value"}).validate(),
                    Catch::Contains("'value' is not among target_modules"));
}

TEST_CASE("DoRA: magnitude over the normalized adapted weight, HF keys, merge rule", "[methods][dora]") {
  auto cfg = peft::LoraConfig().r(4).lora_alpha(8).use_dora(true).target_modules({"query", "value"});
  // Per module: A [4, 32] + B [32, 4] + m [32].
  check_method(cfg, {2 * 2 * (4 * 32 + 32 * 4 + 32), true, true});
  auto vit = make_vit();
  peft::attach(*vit, cfg);
  auto& q = vit->vit->encoder->layer->ptr<M::ViTLayerImpl>(0)->attention->attention->query;
  auto* t = dynamic_cast<peft::DoraLinearImpl*>(q->adapter("default"));
  REQUIRE(t);
  CHECK_THAT(t->lora_magnitude_vector, AllClose(q->weight.norm(2, {1}), 1e-6, 1e-6));  // m = ||W|| at init
  auto sd = peft::get_adapter_state_dict(*vit);
  CHECK(sd.contains("base_model.model.vit.encoder.layer.0.attention.attention.query.lora_magnitude_vector"));
  torch::NoGradGuard g;
  t->lora_B.normal_(), t->lora_magnitude_vector.uniform_(0.5, 2.0);
  auto x = torch::randn({5, 32});
  // The paper's formula: W' = m ⊙ (W + sBA) / ||W + sBA||, y = x W'ᵀ + b.
  auto adapted = q->weight + 2.0 * torch::mm(t->lora_B, t->lora_A);
  auto wprime = (t->lora_magnitude_vector / adapted.norm(2, {1})).unsqueeze(1) * adapted;
  CHECK_THAT(q(x), AllClose(torch::nn::functional::linear(x, wprime, q->bias), 1e-5, 1e-5));
  // On Conv2d (as PEFT): per output channel, W' = m (W + s ΔW) / ||W + s ΔW|| over (in, kh, kw).
  auto& proj = vit->vit->embeddings->patch_embeddings->projection;
  peft::attach(*vit, peft::LoraConfig().r(2).lora_alpha(4).use_dora(true).target_modules({"projection"}), "conv");
  peft::set_adapter(*vit, "conv");
  auto* c = dynamic_cast<peft::DoraConv2dImpl*>(proj->adapter("conv"));
  REQUIRE(c);
  CHECK_THAT(c->lora_magnitude_vector.flatten(), AllClose(proj->weight.flatten(1).norm(2, {1}), 1e-6, 1e-6));
  c->lora_B.normal_(), c->lora_magnitude_vector.uniform_(0.5, 2.0);
  auto px = torch::randn({2, proj->options.in_channels(), 14, 14});
  auto delta = torch::mm(c->lora_B.flatten(1), c->lora_A.flatten(1)).view(proj->weight.sizes()) * 2.0;
  auto adapted_k = proj->weight + delta;
  auto kprime = c->lora_magnitude_vector.view({-1, 1, 1, 1}) / adapted_k.flatten(1).norm(2, {1}).view({-1, 1, 1, 1}) * adapted_k;
  auto want = torch::conv2d(px, kprime, proj->bias, proj->options.stride());
  CHECK_THAT(proj(px), AllClose(want, 1e-5, 1e-5));
}

TEST_CASE("DoRA on a Linear: outputs and gradients of the paper's W', with and without dropout, stacked on LoRA",
          "[methods][dora]") {
  // Without dropout DoRA takes x Wᵀ from the frozen op's own output; with dropout, or under a second
  // adapter, it must still compute the same function. The reference is autograd through the formula
  // W' = m (W + sBA) / ||W + sBA|| with the norm detached (the paper, section 4.3).
  for (const double p : {0.0, 0.3}) {
    INFO("lora_dropout " << p);
    torch::manual_seed(11);
    peft::Linear fc(peft::LinearOptions(12, 7));
    torch::nn::Sequential model;
    model->push_back("fc", fc);
    peft::attach(model, peft::LoraConfig().r(3).lora_alpha(6).lora_dropout(p).use_dora(true).target_modules({"fc"}));
    auto* t = dynamic_cast<peft::DoraLinearImpl*>(fc->adapter("default"));
    REQUIRE(t);
    {
      torch::NoGradGuard g;
      t->lora_B.normal_(), t->lora_magnitude_vector.uniform_(0.5, 2.0);
    }
    auto x = torch::randn({4, 5, 12});
    const auto formula = [&](const torch::Tensor& xin) {
      auto adapted = fc->weight + 2.0 * torch::mm(t->lora_B, t->lora_A);
      auto wprime = (t->lora_magnitude_vector / adapted.norm(2, {1}).detach()).unsqueeze(1) * adapted;
      return torch::nn::functional::linear(xin, wprime, fc->bias);
    };
    auto grads = [&](const torch::Tensor& y) {
      for (auto* q : {&t->lora_A, &t->lora_B, &t->lora_magnitude_vector})
        if (q->grad().defined()) q->grad().zero_();
      y.pow(2).sum().backward();
      return std::vector<torch::Tensor>{t->lora_A.grad().clone(), t->lora_B.grad().clone(), t->lora_magnitude_vector.grad().clone()};
    };
    fc->eval();  // no dropout drawn: the reused path
    const auto want = grads(formula(x));
    auto y = fc(x);
    CHECK_THAT(y, AllClose(formula(x), 1e-5, 1e-5));
    const auto got = grads(y);
    for (std::size_t i = 0; i < got.size(); ++i) CHECK_THAT(got[i], AllClose(want[i], 1e-4, 1e-5));
    if (p > 0) {  // training with dropout: DoRA multiplies the dropped input by W itself, as PEFT does
      fc->train();
      torch::manual_seed(12);
      auto yd = fc(x);
      torch::manual_seed(12);
      auto xd = torch::nn::functional::dropout(x, torch::nn::functional::DropoutFuncOptions().p(p).training(true));
      torch::NoGradGuard g;
      auto adapted = fc->weight + 2.0 * torch::mm(t->lora_B, t->lora_A);
      auto gain = t->lora_magnitude_vector / adapted.norm(2, {1});
      auto expect = torch::nn::functional::linear(x, fc->weight, fc->bias) + (gain - 1) * torch::matmul(xd, fc->weight.t()) +
                    gain * torch::matmul(torch::matmul(xd, t->lora_A.t()), t->lora_B.t()) * 2.0;
      CHECK_THAT(yd, AllClose(expect, 1e-5, 1e-5));
    }
  }
  // Under a LoRA adapter active on the same Linear, DoRA's x Wᵀ is still the frozen op's alone.
  torch::manual_seed(13);
  peft::Linear fc(peft::LinearOptions(12, 7));
  torch::nn::Sequential model;
  model->push_back("fc", fc);
  peft::attach(model, peft::LoraConfig().r(2).lora_alpha(2).init_lora_weights(false).target_modules({"fc"}), "plain");
  peft::attach(model, peft::LoraConfig().r(3).lora_alpha(6).use_dora(true).target_modules({"fc"}), "dora");
  peft::set_adapter(model, std::vector<std::string>{"plain", "dora"});
  auto* t = dynamic_cast<peft::DoraLinearImpl*>(fc->adapter("dora"));
  auto* l = dynamic_cast<peft::LoraLinearImpl*>(fc->adapter("plain"));
  REQUIRE(t);
  REQUIRE(l);
  torch::NoGradGuard g;
  t->lora_B.normal_(), t->lora_magnitude_vector.uniform_(0.5, 2.0);
  auto x = torch::randn({3, 12});
  auto adapted = fc->weight + 2.0 * torch::mm(t->lora_B, t->lora_A);
  auto wprime = (t->lora_magnitude_vector / adapted.norm(2, {1})).unsqueeze(1) * adapted;
  auto expect = torch::nn::functional::linear(x, wprime, fc->bias) + torch::matmul(torch::matmul(x, l->lora_A.t()), l->lora_B.t());
  CHECK_THAT(fc(x), AllClose(expect, 1e-5, 1e-5));
}

TEST_CASE("RLRR + SSF: residual rescaling on every Linear, scale/shift after norms and the patch embedding", "[methods][rlrr]") {
  // Formula: Σ_linear (in + out + out[f]) + Σ_norm,conv 2C + the head (modules_to_save).
  int64_t per_block = 4 * (32 + 32 + 32) + (32 + 64 + 64) + (64 + 32 + 32) + 2 * (2 * 32);
  int64_t expected = 2 * per_block + 2 * 32 /* final layernorm */ + 2 * 32 /* patch projection */ + (32 * 10 + 10);
  auto cfg = peft::RLRRConfig().modules_to_save({"classifier"});
  check_method(cfg, {expected, true, false});  // the paper's init changes the output
  check_method(peft::RLRRConfig().init("zero").modules_to_save({"classifier"}), {expected, true, true});
  // The ViT-B/16 figure from the paper: 23,808 per block.
  const int64_t d = 768, i = 3072;
  CHECK(4 * (d + d + d) + (d + i + i) + (i + d + d) + 2 * 2 * d == 23808);
  // The hand computation on one Linear.
  auto vit = make_vit();
  peft::attach(*vit, cfg);
  auto& fc = vit->vit->encoder->layer->ptr<M::ViTLayerImpl>(1)->intermediate->dense;
  auto* t = dynamic_cast<peft::RLRRLinearImpl*>(fc->adapter("default"));
  REQUIRE(t);
  torch::NoGradGuard g;
  t->rlrr_f.normal_();
  auto x = torch::randn({3, 32});
  auto w = fc->weight * (1 + torch::outer(t->rlrr_s_out, t->rlrr_s_in));
  CHECK_THAT(fc(x), AllClose(torch::nn::functional::linear(x, w, fc->bias + t->rlrr_f), 1e-5, 1e-5));
}

TEST_CASE("bottleneck adapters: Houlsby, Pfeiffer, parallel on the composite ops", "[methods][bottleneck]") {
  // Houlsby: after attention and after the FFN in both layers; d = 32, reduction 8 -> 4.
  const int64_t one = (32 * 4 + 4) + (4 * 32 + 32);
  check_method(peft::BottleneckConfig().reduction_factor(8), {2 * 2 * one, false, true});
  check_method(peft::BottleneckConfig().variant("pfeiffer").bottleneck_size(4).non_linearity("gelu"), {2 * one, false, true});
  check_method(peft::BottleneckConfig().variant("parallel").bottleneck_size(4).scaling(4.0), {2 * one, false, true});
  // Where they went, and the computation by hand (parallel to the FFN site).
  auto vit = make_vit();
  auto r = peft::attach(*vit, peft::BottleneckConfig().variant("parallel").bottleneck_size(4).scaling(4.0));
  CHECK(r.targeted == std::vector<std::string>{"vit.encoder.layer.0.mlp", "vit.encoder.layer.1.mlp"});
  randomize_adapters(*vit);
  torch::NoGradGuard g;
  auto& layer = *vit->vit->encoder->layer->ptr<M::ViTLayerImpl>(0);
  auto* t = dynamic_cast<peft::BottleneckImpl*>(layer.mlp->adapter("default"));
  auto x = torch::randn({2, 17, 32});
  auto a = x + layer.attention->forward(layer.layernorm_before(x));
  auto h = layer.layernorm_after(a);
  auto ffn = layer.output->dense(torch::gelu(layer.intermediate->dense(h)));
  auto branch = t->adapter_up(torch::relu(t->adapter_down(h)));
  CHECK_THAT(layer.forward(x), AllClose(a + ffn + 4.0 * branch, 1e-5, 1e-5));
  CHECK_THROWS_WITH(peft::BottleneckConfig().variant("lora").validate(), Catch::Contains("houlsby, pfeiffer or parallel"));
}

TEST_CASE("tuners of different kinds work together on one model", "[methods][mix]") {
  auto vit = make_vit();
  auto px = torch::randn({2, 1, 28, 28});
  peft::attach(*vit, peft::LoraConfig().r(2).target_modules({"query", "value"}), "lora");
  peft::attach(*vit, peft::BottleneckConfig().variant("pfeiffer").bottleneck_size(4), "adapter");
  peft::attach(*vit, peft::IA3Config().target_modules({"key"}), "ia3");
  peft::set_adapter(*vit, {"lora", "adapter", "ia3"});
  randomize_adapters(*vit);
  int64_t trainable = 0;
  for (const auto& p : vit->parameters())
    if (p.requires_grad()) trainable += p.numel();
  CHECK(trainable == 2 * 2 * (2 * 32 + 32 * 2) + 2 * ((32 * 4 + 4) + (4 * 32 + 32)) + 2 * 32);
  torch::Tensor all, sum_parts;
  {
    torch::NoGradGuard g;
    all = vit->forward(px);
  }
  check_grads_only_on_trainables(*vit, [&] { return vit->forward(px); });
  auto fresh = make_vit();
  check_adapters_reload(*vit, fresh, {"lora", "adapter", "ia3"}, px, all);
  torch::NoGradGuard g;
  peft::set_adapter(*fresh, "lora");
  CHECK_FALSE(torch::allclose(fresh->forward(px), all));
}

TEST_CASE("every method's tuners follow the dtype and device of a model converted before attach", "[methods][dtype]") {
  // The CPU twin of cuda_test.cpp's "every method attaches to a model on the GPU": there, bottleneck
  // adapters on ViT's parameter-free `mlp` site stayed on the CPU while the model was on CUDA. The same
  // placement logic decides dtype, so a model in double catches it without a GPU.
  for (const auto& [name, cfg] : every_method_on_vit()) {
    INFO(name);
    auto vit = make_vit();
    vit->to(torch::kDouble);
    peft::attach(*vit, *cfg);
    for (const auto& p : vit->named_parameters()) {
      INFO(p.key());
      CHECK(p.value().scalar_type() == torch::kDouble);
    }
    for (const auto& b : vit->named_buffers()) {
      INFO(b.key());
      CHECK((b.value().scalar_type() == torch::kDouble || !b.value().is_floating_point()));
    }
    randomize_adapters(*vit);
    auto out = vit->forward(torch::randn({2, 1, 28, 28}, torch::kDouble));
    CHECK(out.scalar_type() == torch::kDouble);
    out.sum().backward();
  }
}

}  // namespace peft_tests_methods
