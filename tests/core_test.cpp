// Tunable slots, the frame, attach / matching / freezing / report, LoRA and BitFit math.
#include "support/test_support.hpp"

// Everything below lives in this file's own namespace, so that the test sources can be compiled
// together (CMake's unity build) without their helpers meeting.
namespace peft_tests_core {

using peft_test::AllClose;
using peft_test::ToyModel;

TEST_CASE("slots without adapters compute exactly the plain torch op", "[slot]") {
  torch::manual_seed(0);
  SECTION("Linear") {
    peft::Linear s(peft::LinearOptions(7, 5).bias(false));
    torch::nn::Linear plain(torch::nn::LinearOptions(7, 5).bias(false));
    torch::NoGradGuard g;
    plain->weight.copy_(s->weight);
    auto x = torch::randn({3, 4, 7});
    CHECK(torch::equal(s(x), plain(x)));
    CHECK_FALSE(s->bias.defined());
  }
  SECTION("Embedding") {
    peft::Embedding s(peft::EmbeddingOptions(10, 4).padding_idx(0));
    auto ids = torch::tensor({{0, 3, 9}});
    CHECK(torch::equal(s(ids), torch::embedding(s->weight, ids, 0)));
  }
  SECTION("Conv2d") {
    peft::Conv2d s(peft::Conv2dOptions(3, 4, 3).stride(2).padding(1));
    auto x = torch::randn({2, 3, 9, 9});
    CHECK(torch::equal(s(x), torch::conv2d(x, s->weight, s->bias, 2, 1)));
  }
  SECTION("LayerNorm") {
    peft::LayerNorm s(peft::LayerNormOptions({6}));
    auto x = torch::randn({2, 6});
    CHECK(torch::equal(s(x), torch::layer_norm(x, {6}, s->weight, s->bias)));
  }
  SECTION("parameter names are the plain op's") {
    peft::Linear s(4, 2);
    auto names = s->named_parameters().keys();
    CHECK(names == std::vector<std::string>{"weight", "bias"});
  }
}

TEST_CASE("LoRA on Linear matches the hand computation", "[lora]") {
  torch::manual_seed(1);
  peft::Linear fc(peft::LinearOptions(6, 4));
  auto cfg = peft::LoraConfig().r(2).lora_alpha(6).target_modules({"fc"}).init_lora_weights(false);
  torch::nn::Sequential model;
  model->push_back("fc", fc);
  peft::attach(model, cfg);
  auto* t = dynamic_cast<peft::LoraLinearImpl*>(fc->adapter("default"));
  REQUIRE(t != nullptr);
  auto x = torch::randn({5, 6});
  // y = x W^T + b + (alpha / r) x A^T B^T
  auto expected = torch::mm(x, fc->weight.t()) + fc->bias + 3.0 * torch::mm(torch::mm(x, t->lora_A.t()), t->lora_B.t());
  CHECK_THAT(fc(x), AllClose(expected, 1e-5));
  SECTION("3-D input takes the same path") {
    auto x3 = torch::randn({2, 3, 6});
    auto e3 = torch::matmul(x3, fc->weight.t()) + fc->bias + 3.0 * torch::matmul(torch::matmul(x3, t->lora_A.t()), t->lora_B.t());
    CHECK_THAT(fc(x3), AllClose(e3, 1e-5));
  }
  SECTION("rsLoRA scales by alpha / sqrt(r)") {
    CHECK(peft::lora_scaling(6, 4, true) == Approx(3.0));
    CHECK(peft::lora_scaling(6, 4, false) == Approx(1.5));
  }
}

TEST_CASE("LoRA default init leaves the output unchanged, gaussian init has std 1/r", "[lora][init]") {
  torch::manual_seed(2);
  ToyModel m;
  auto ids = torch::randint(0, 32, {2, 5});
  auto before = m->forward(ids);
  peft::attach(m, peft::LoraConfig().r(4).target_modules({"q", "v", "embed"}));
  CHECK(torch::equal(m->forward(ids), before));
  peft::Linear fc(256, 256);
  torch::nn::Sequential s;
  s->push_back("fc", fc);
  peft::attach(s, peft::LoraConfig().r(16).target_modules({"fc"}).init_lora_weights("gaussian"));
  auto* t = dynamic_cast<peft::LoraLinearImpl*>(fc->adapter("default"));
  CHECK(t->lora_A.std().item<double>() == Approx(1.0 / 16).epsilon(0.05));
  CHECK(t->lora_B.abs().sum().item<double>() == 0.0);
}

TEST_CASE("merged and unmerged LoRA agree, unmerge restores the weights", "[lora][merge]") {
  torch::manual_seed(3);
  ToyModel m;
  peft::attach(m, peft::LoraConfig().r(4).lora_alpha(8).target_modules("all-linear").init_lora_weights(false));
  auto ids = torch::randint(0, 32, {3, 7});
  const auto w0 = m->layers[0]->as<peft_test::BlockImpl>()->q->weight.clone();
  m->eval();
  auto unmerged = m->forward(ids);
  peft::merge_adapter(m);
  CHECK(m->layers[0]->as<peft_test::BlockImpl>()->q->merged_adapters() == std::vector<std::string>{"default"});
  CHECK_FALSE(torch::equal(m->layers[0]->as<peft_test::BlockImpl>()->q->weight, w0));
  CHECK_THAT(m->forward(ids), AllClose(unmerged, 1e-5));
  peft::unmerge_adapter(m);
  CHECK_THAT(m->layers[0]->as<peft_test::BlockImpl>()->q->weight, AllClose(w0, 1e-6, 0));
  CHECK_THAT(m->forward(ids), AllClose(unmerged, 1e-6));

  SECTION("merge_and_unload leaves a plain model with the adapted outputs") {
    peft::merge_and_unload(m);
    CHECK(peft::adapter_names(m).empty());
    CHECK_THAT(m->forward(ids), AllClose(unmerged, 1e-5));
  }
  SECTION("LoRA on Embedding and Conv2d merges too") {
    peft::Conv2d conv(peft::Conv2dOptions(3, 5, 3).padding(1));
    torch::nn::Sequential s;
    s->push_back("conv", conv);
    peft::attach(s, peft::LoraConfig().r(2).target_modules({"conv"}).init_lora_weights(false));
    auto x = torch::randn({2, 3, 8, 8});
    auto y = s->forward(x);
    peft::merge_adapter(s);
    CHECK_THAT(s->forward(x), AllClose(y, 1e-5));
    peft::Embedding emb(peft::EmbeddingOptions(11, 6));
    torch::nn::Sequential e;
    e->push_back("emb", emb);
    peft::attach(e, peft::LoraConfig().r(3).target_modules({"emb"}).init_lora_weights(false));
    auto* t = dynamic_cast<peft::LoraEmbeddingImpl*>(emb->adapter("default"));
    auto idx = torch::tensor({{1, 4, 10}, {0, 0, 7}});
    auto ye = e->forward(idx);
    // hand computation: W[idx] + s * (A^T[idx]) B^T with s = alpha / r = 8/3
    auto expected = torch::embedding(emb->weight, idx) + (8.0 / 3) * torch::matmul(torch::embedding(t->lora_embedding_A.t(), idx), t->lora_embedding_B.t());
    CHECK_THAT(ye, AllClose(expected, 1e-5));
    peft::merge_adapter(e);
    CHECK_THAT(e->forward(idx), AllClose(ye, 1e-5));
  }
  SECTION("safe merge refuses NaN and leaves the weights") {
    auto* t = dynamic_cast<peft::LoraLinearImpl*>(m->head->adapter("default"));
    {
      torch::NoGradGuard g;
      t->lora_B[0][0] = std::numeric_limits<float>::quiet_NaN();
    }
    const auto head_w = m->head->weight.clone();
    CHECK_THROWS_AS(peft::merge_adapter(m, {}, /*safe=*/true), peft::StateError);
    CHECK(torch::equal(m->head->weight, head_w));
  }
}

TEST_CASE("only adapter parameters get gradients, base stays frozen", "[lora][freeze]") {
  torch::manual_seed(4);
  ToyModel m;
  auto r = peft::attach(m, peft::LoraConfig().r(2).target_modules({"q", "v"}).modules_to_save({"head"}).init_lora_weights(false));
  CHECK(r.targeted == std::vector<std::string>{"layers.0.attn.q", "layers.0.attn.v", "layers.1.attn.q", "layers.1.attn.v"});
  CHECK(r.modules_to_save == std::vector<std::string>{"head"});
  auto ids = torch::randint(0, 32, {2, 5});
  m->forward(ids).sum().backward();
  for (const auto& p : m->named_parameters()) {
    const bool adapter = p.key().find(".default.lora_") != std::string::npos || p.key().rfind("head.", 0) == 0;
    INFO(p.key());
    CHECK(p.value().requires_grad() == adapter);
    CHECK(p.value().grad().defined() == adapter);
  }
}

TEST_CASE("gradcheck in double for LoRA and BitFit", "[lora][bitfit][grad]") {
  torch::manual_seed(5);
  peft::Linear fc(peft::LinearOptions(5, 3));
  torch::nn::Sequential s;
  s->push_back("fc", fc);
  s->to(torch::kDouble);
  auto x = torch::randn({4, 5}, torch::kDouble);
  SECTION("LoRA") {
    peft::attach(s, peft::LoraConfig().r(2).lora_alpha(3).target_modules({"fc"}).init_lora_weights(false));
    auto* t = dynamic_cast<peft::LoraLinearImpl*>(fc->adapter("default"));
    CHECK(t->lora_A.scalar_type() == torch::kDouble);
    CHECK(peft_test::gradcheck([&] { return fc(x); }, {t->lora_A, t->lora_B}) < 1e-6);
  }
  SECTION("BitFit") {
    peft::attach(s, peft::BitFitConfig());
    auto* t = dynamic_cast<peft::BitFitImpl*>(fc->adapter("default"));
    {
      torch::NoGradGuard g;
      t->bitfit_bias.normal_();
    }
    CHECK(peft_test::gradcheck([&] { return torch::tanh(fc(x)); }, {t->bitfit_bias}) < 1e-6);
    CHECK_FALSE(fc->weight.requires_grad());
    CHECK_FALSE(fc->bias.requires_grad());
  }
}

TEST_CASE("BitFit trains only biases, merges and counts right", "[bitfit]") {
  torch::manual_seed(6);
  ToyModel m;
  auto ids = torch::randint(0, 32, {2, 4});
  auto before = m->forward(ids);
  auto r = peft::attach(m, peft::BitFitConfig());
  // Every slot with a bias: per block q,k,v,o (16 each), fc1 (32), fc2 (16), norm (16); head (3).
  CHECK(r.targeted.size() == 2 * 7 + 1);
  CHECK(peft::count_parameters(m).trainable == 2 * (4 * 16 + 32 + 16 + 16) + 3);
  CHECK(torch::equal(m->forward(ids), before));
  {
    torch::NoGradGuard g;
    for (auto& p : m->parameters())
      if (p.requires_grad()) p.uniform_(-0.5, 0.5);
  }
  auto adapted = m->forward(ids);
  CHECK_FALSE(torch::allclose(adapted, before));
  peft::merge_adapter(m);
  CHECK_THAT(m->forward(ids), AllClose(adapted, 1e-5));
  SECTION("chosen modules only; a bias-less target is an error") {
    peft::Linear nb(peft::LinearOptions(3, 3).bias(false));
    torch::nn::Sequential s;
    s->push_back("nb", nb);
    CHECK_THROWS_AS(peft::attach(s, peft::BitFitConfig().target_modules({"nb"})), peft::MatchError);
    CHECK(peft::adapter_names(s).empty());
  }
}

TEST_CASE("target_modules matching follows HF PEFT", "[match]") {
  using peft::TargetModules;
  TargetModules list({"q", "mlp.fc1"});
  CHECK(list.matches("q"));
  CHECK(list.matches("layers.0.attn.q"));
  CHECK(list.matches("layers.3.mlp.fc1"));
  CHECK_FALSE(list.matches("layers.0.attn.qq"));
  CHECK_FALSE(list.matches("layers.0.attn.xq"));
  CHECK_FALSE(list.matches("fc1"));
  TargetModules regex(R"(.*\.attn\.(q|v))");
  CHECK(regex.matches("layers.1.attn.v"));
  CHECK_FALSE(regex.matches("layers.1.attn.vv"));  // full match, not search
  CHECK_FALSE(regex.matches("attn.v"));

  peft::TargetRules rules{TargetModules({"q", "v"}), TargetModules({"layers.1.attn.v"}), {0, 1}, {}};
  CHECK(rules.matches("model.layers.0.attn.q"));
  CHECK_FALSE(rules.matches("layers.1.attn.v"));  // excluded wins
  rules.layers_to_transform = {1};
  CHECK_FALSE(rules.matches("model.layers.0.attn.q"));
  CHECK(rules.matches("model.layers.1.attn.q"));
  rules.layers_pattern = {"blocks"};
  CHECK_FALSE(rules.matches("model.layers.1.attn.q"));
  CHECK(rules.matches("model.blocks.1.attn.q"));
  CHECK(peft::layer_index("model.layers.12.self_attn.q_proj", {}) == 12);
  CHECK_FALSE(peft::layer_index("layers.12.q", {}).has_value());  // PEFT needs a component before

  SECTION("through attach") {
    ToyModel m;
    auto r = peft::attach(m, peft::LoraConfig().target_modules("all-linear").exclude_modules({"o"}));
    CHECK(r.targeted.size() == 2 * 5 + 1);  // q,k,v,fc1,fc2 per layer + head
    // PEFT needs a component before the layers pattern (".*\.layers\.(\d+)\."), as in "model.layers.1".
    ToyModel top;
    CHECK_THROWS_AS(peft::attach(top, peft::LoraConfig().target_modules({"q"}).layers_to_transform({1}).layers_pattern({"layers"})),
                    peft::MatchError);
    torch::nn::Sequential m2;
    m2->push_back("model", ToyModel());
    auto r2 = peft::attach(m2, peft::LoraConfig().target_modules({"q"}).layers_to_transform({1}).layers_pattern({"layers"}));
    CHECK(r2.targeted == std::vector<std::string>{"model.layers.1.attn.q"});
    ToyModel m3;
    try {
      peft::attach(m3, peft::LoraConfig().target_modules({"query"}));
      FAIL("expected MatchError");
    } catch (const peft::MatchError& e) {
      CHECK_THAT(e.what(), Catch::Contains("[peft.match]") && Catch::Contains("'layers.0.attn.q' (Linear)"));
    }
    CHECK(peft::adapter_names(m3).empty());
    CHECK_THROWS_AS(peft::attach(m3, peft::LoraConfig().target_modules({"norm"})), peft::MatchError);
    CHECK(peft::adapter_names(m3).empty());
    CHECK_THROWS_AS(peft::attach(m3, peft::LoraConfig().target_modules({"q"}).modules_to_save({"nothing"})), peft::MatchError);
  }
  SECTION("rank_pattern and alpha_pattern") {
    auto cfg = peft::LoraConfig().r(4).lora_alpha(8).rank_pattern({{"attn.q", 2}, {"fc.*", 6}}).alpha_pattern({{"v", 3}});
    CHECK(cfg.rank_alpha("layers.0.attn.q") == std::pair<int64_t, double>{2, 8});
    CHECK(cfg.rank_alpha("layers.0.mlp.fc1") == std::pair<int64_t, double>{6, 8});
    CHECK(cfg.rank_alpha("layers.0.attn.v") == std::pair<int64_t, double>{4, 3});
    CHECK(cfg.rank_alpha("layers.0.attn.qv") == std::pair<int64_t, double>{4, 8});
  }
}

TEST_CASE("trainable report uses HF's exact format", "[report]") {
  CHECK(peft::detail::thousands(3686400) == "3,686,400");
  CHECK(peft::detail::thousands(3089625088LL) == "3,089,625,088");
  CHECK(peft::detail::thousands(999) == "999");
  peft::Linear fc(100, 10);
  torch::nn::Sequential s;
  s->push_back("fc", fc);
  peft::attach(s, peft::LoraConfig().r(2).target_modules({"fc"}));
  // all = 100*10 + 10 + 2*100 + 10*2 = 1230, trainable = 220
  CHECK(peft::trainable_report(s) == "trainable params: 220 || all params: 1,230 || trainable%: 17.8862");
}

TEST_CASE("several adapters: set_adapter, sums, disable guard, delete", "[lora][multi]") {
  torch::manual_seed(7);
  ToyModel m;
  auto ids = torch::randint(0, 32, {2, 5});
  auto base = m->forward(ids);
  peft::attach(m, peft::LoraConfig().r(2).target_modules({"q"}).init_lora_weights(false), "a");
  peft::attach(m, peft::LoraConfig().r(3).target_modules({"v"}).init_lora_weights(false), "b");
  CHECK(peft::active_adapters(m) == std::vector<std::string>{"a"});
  auto ya = m->forward(ids);
  peft::set_adapter(m, "b");
  auto yb = m->forward(ids);
  auto* qa = m->layers[0]->as<peft_test::BlockImpl>()->q->adapter("a");
  CHECK_FALSE(qa->as_module().parameters()[0].requires_grad());
  peft::set_adapter(m, std::vector<std::string>{"a", "b"});
  auto yab = m->forward(ids);
  CHECK_FALSE(torch::allclose(ya, yb));
  CHECK_FALSE(torch::allclose(yab, ya));
  {
    peft::DisableAdapters off(m);
    CHECK(torch::equal(m->forward(ids), base));
  }
  CHECK(torch::equal(m->forward(ids), yab));
  peft::merge_adapter(m);
  {
    peft::DisableAdapters off(m);
    CHECK_THAT(m->forward(ids), AllClose(base, 1e-5));
  }
  CHECK_THAT(m->forward(ids), AllClose(yab, 1e-5));
  CHECK_THROWS_AS(peft::delete_adapter(m, "a"), peft::StateError);
  peft::unmerge_adapter(m);
  peft::delete_adapter(m, "a");
  CHECK(peft::adapter_names(m) == std::vector<std::string>{"b"});
  CHECK(peft::active_adapters(m) == std::vector<std::string>{"b"});
  CHECK_THAT(m->forward(ids), AllClose(yb, 1e-6));
  CHECK_THROWS_AS(peft::set_adapter(m, "a"), peft::StateError);
  CHECK_THROWS_AS(peft::attach(m, peft::LoraConfig().target_modules({"q"}), "b"), peft::StateError);
  CHECK_THROWS_AS(peft::attach(m, peft::LoraConfig().target_modules({"q"}), "bad.name"), peft::StateError);
}

TEST_CASE("clone deep-copies slots with their adapters", "[slot][clone]") {
  torch::manual_seed(8);
  peft::Linear fc(4, 3);
  torch::nn::Sequential s;
  s->push_back("fc", fc);
  peft::attach(s, peft::LoraConfig().r(2).target_modules({"fc"}).init_lora_weights(false));
  auto copy = std::dynamic_pointer_cast<torch::nn::SequentialImpl>(s->clone());
  auto x = torch::randn({2, 4});
  CHECK(torch::equal(copy->forward(x), s->forward(x)));
  auto cfc = copy->ptr(0)->as<peft::LinearImpl>();
  REQUIRE(cfc->adapter("default") != nullptr);
  CHECK(cfc->weight.data_ptr() != fc->weight.data_ptr());
  CHECK_FALSE(cfc->weight.requires_grad());  // frozen stays frozen
  {
    torch::NoGradGuard g;
    dynamic_cast<peft::LoraLinearImpl*>(cfc->adapter("default"))->lora_B.zero_();
  }
  CHECK_FALSE(torch::equal(copy->forward(x), s->forward(x)));  // independent
  std::ostringstream os;
  os << *s;
  CHECK_THAT(os.str(), Catch::Contains("peft::Linear(in_features=4, out_features=3, bias=true)[adapters=default; active=default]") &&
                           Catch::Contains("peft::LoraLinear(in_features=4, out_features=3, r=2"));
}

namespace {
// A tuner for the frame test: output placement, U(y) = y * 2.
struct DoubleImpl : torch::nn::Cloneable<DoubleImpl>, peft::Tuner {
  std::shared_ptr<const peft::AdapterConfig> cfg;
  void reset() override {}
  peft::Placement placement() const override { return peft::Placement::output; }
  std::string method() const override { return "double"; }
  const std::shared_ptr<const peft::AdapterConfig>& config() const override { return cfg; }
  torch::Tensor output(const torch::Tensor& y) override { return y * 2; }
  std::vector<std::pair<std::string, torch::Tensor>> adapter_tensors() const override { return {}; }
  torch::nn::Module& as_module() override { return *this; }
};
struct ShiftInImpl : DoubleImpl {  // input placement: U(x) = x + 1
  peft::Placement placement() const override { return peft::Placement::input; }
  torch::Tensor input(const torch::Tensor& x) override { return x + 1; }
};
struct TripleWImpl : DoubleImpl {  // weight placement: W' = 3 W, b' = b - 1
  peft::Placement placement() const override { return peft::Placement::weight; }
  void reparameterize(peft::WeightSet& w) const override {
    w.weight = w.weight * 3;
    w.bias = w.bias - 1;
  }
};
struct SideImpl : DoubleImpl {  // parallel placement: y + x P^T
  torch::Tensor p = torch::randn({2, 3});
  peft::Placement placement() const override { return peft::Placement::parallel; }
  torch::Tensor parallel(const torch::Tensor& x, const torch::Tensor& y) override { return y + torch::mm(x, p.t()); }
};
}  // namespace

TEST_CASE("the frame composes input, weight, parallel and output tuners", "[frame]") {
  torch::manual_seed(9);
  peft::Linear fc(3, 2);
  auto x = torch::randn({4, 3});
  fc->add_adapter("shift", std::make_shared<ShiftInImpl>());
  fc->add_adapter("dbl", std::make_shared<DoubleImpl>());
  fc->set_active_adapters({"shift", "dbl"});
  CHECK_THAT(fc(x), AllClose(2 * torch::nn::functional::linear(x + 1, fc->weight, fc->bias)));
  fc->enable_adapters(false);
  CHECK(torch::equal(fc(x), torch::nn::functional::linear(x, fc->weight, fc->bias)));
  fc->enable_adapters(true);
  CHECK_THROWS_AS(fc->merge({"dbl"}, false), peft::StateError);
  CHECK(fc->merged_adapters().empty());
  // All four placements at once, in the frame's order: input, weight, op, parallel (on the op's
  // input), output: y = 2 ((x + 1) (3W)^T + (b - 1) + (x + 1) P^T).
  auto side = std::make_shared<SideImpl>();
  fc->add_adapter("w3", std::make_shared<TripleWImpl>());
  fc->add_adapter("side", side);
  fc->set_active_adapters({"shift", "dbl", "w3", "side"});
  const auto h = x + 1;
  CHECK_THAT(fc(x), AllClose(2 * (torch::mm(h, 3 * fc->weight.t()) + (fc->bias - 1) + torch::mm(h, side->p.t()))));
  fc->set_active_adapters({"w3", "side"});
  CHECK_THAT(fc(x), AllClose(torch::mm(x, 3 * fc->weight.t()) + (fc->bias - 1) + torch::mm(x, side->p.t())));
}

TEST_CASE("the README's tour network gives the report line the README shows", "[report][readme]") {
  struct NetImpl : torch::nn::Module {
    peft::Linear fc1{nullptr}, fc2{nullptr}, head{nullptr};
    NetImpl() {
      fc1 = register_module("fc1", peft::Linear(512, 512));
      fc2 = register_module("fc2", peft::Linear(peft::LinearOptions(512, 512).bias(false)));
      head = register_module("head", peft::Linear(512, 10));
    }
  };
  auto net = std::make_shared<NetImpl>();
  peft::attach(net, peft::LoraConfig().r(8).lora_alpha(16).lora_dropout(0.05).target_modules({"fc1", "fc2"}).modules_to_save({"head"}));
  CHECK(peft::trainable_report(net) == "trainable params: 21,514 || all params: 546,314 || trainable%: 3.9380");
}

TEST_CASE("peft::train::AdamW: the fused step is torch::optim::AdamW's step", "[train][adamw]") {
  // Two identical LoRA models, one stepped by torch::optim::AdamW's loop, one by the fused kernel, with
  // both parameter groups (decay and none), a learning-rate change between steps, and a parameter whose
  // gradient is missing in one step (skipped by both).
  auto make = [] {
    torch::manual_seed(12);
    ToyModel m;
    peft::attach(m, peft::LoraConfig().r(2).target_modules({"fc1"}).modules_to_save({"head"}).init_lora_weights(false));
    return m;
  };
  ToyModel a = make(), b = make();
  auto loop = peft::train::make_adamw(a, 1e-2, 0.1);
  loop.fused(peft::train::AdamW::Fused::never);
  CHECK_FALSE(loop.fuses());
  auto fused = peft::train::make_adamw(b, 1e-2, 0.1);
#if PEFT_HAS_FUSED_ADAMW
  fused.fused(peft::train::AdamW::Fused::always);
#else
  CHECK_THROWS_AS(fused.fused(peft::train::AdamW::Fused::always), peft::StateError);
#endif
  CHECK(peft::train::make_adamw(b, 1e-2).fuses() == false);  // no gradients yet; the CPU is not fused by default
  auto x = torch::randint(0, 32, {4, 5}, torch::kLong);
  for (int step = 0; step < 4; ++step) {
    for (auto* o : {&loop, &fused}) {
      o->zero_grad();
      for (auto& g : o->param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(1e-2 / (step + 1));
    }
    a->forward(x).pow(2).mean().backward();
    b->forward(x).pow(2).mean().backward();
    if (step == 2)  // one parameter without a gradient this step
      for (auto* m : {&a, &b})
        for (auto& kv : (*m)->named_parameters())
          if (kv.key().find("lora_B") != std::string::npos) kv.value().mutable_grad().reset();
#if PEFT_HAS_FUSED_ADAMW
    CHECK(fused.fuses());
#endif
    loop.step();
    fused.step();
  }
  auto pa = a->named_parameters(), pb = b->named_parameters();
  for (const auto& kv : pa) {
    INFO(kv.key());
    CHECK(torch::allclose(pb[kv.key()], kv.value(), 1e-6, 1e-7));
  }
  CHECK(peft::train::optimizer_state_bytes(fused) == peft::train::optimizer_state_bytes(loop));
  for (const auto& kv : fused.state())
    CHECK(static_cast<const torch::optim::AdamWParamState&>(*kv.second).step() >= 3);
}

TEST_CASE("training helpers: AdamW groups, warmup + cosine, evaluation, progress-free logs", "[train]") {
  torch::manual_seed(11);
  ToyModel model;
  peft::attach(model, peft::LoraConfig().r(2).target_modules({"fc1"}).modules_to_save({"head"}));
  auto trainable = peft::train::trainable_parameters(model);
  int64_t n = 0;
  for (auto& p : trainable) n += p.numel();
  CHECK(n == peft::count_parameters(model).trainable);

  auto opt = peft::train::make_adamw(model, 1e-2, 0.1);
  REQUIRE(opt.param_groups().size() == 2);
  auto wd = [](torch::optim::OptimizerParamGroup& g) {
    return static_cast<torch::optim::AdamWOptions&>(g.options()).weight_decay();
  };
  for (auto& p : opt.param_groups()[0].params()) CHECK(p.dim() >= 2);  // matrices decay
  for (auto& p : opt.param_groups()[1].params()) CHECK(p.dim() < 2);   // vectors do not
  CHECK(wd(opt.param_groups()[0]) == 0.1);
  CHECK(wd(opt.param_groups()[1]) == 0.0);
  CHECK(peft::train::optimizer_state_bytes(opt) == 0);
  auto x = torch::randint(0, 32, {4, 5}, torch::kLong);
  model->forward(x).pow(2).mean().backward();
  opt.step();
  CHECK(peft::train::optimizer_state_bytes(opt) == 2 * n * 4);  // two fp32 moments per element
  ToyModel frozen;
  for (auto& p : frozen->parameters()) p.set_requires_grad(false);
  CHECK_THROWS_AS(peft::train::make_adamw(frozen, 1e-3), peft::StateError);

  peft::train::WarmupCosine s(100, 10, 1.0, 0.1);
  CHECK(s.lr(0) == Approx(0.1));
  CHECK(s.lr(9) == Approx(1.0));
  CHECK(s.lr(10) == Approx(1.0));
  CHECK(s.lr(55) == Approx(0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI * 0.5))));
  CHECK(s.lr(100) == Approx(0.1));
  s.apply(opt, 55);
  for (auto& g : opt.param_groups()) CHECK(g.options().get_lr() == Approx(s.lr(55)));
  CHECK_THROWS_AS(peft::train::WarmupCosine(10, 20, 1.0), peft::ConfigError);

  // the head at its own rate: decay [LoRA, head.weight], no decay [head.bias] (no vector trains in the
  // body, so that group is left out); the schedule keeps each group's ratio to the base rate
  auto split = peft::train::make_adamw(model, 1e-2, 0.1, {{"head", 1e-1}});
  REQUIRE(split.param_groups().size() == 3);
  const auto rates = peft::train::group_rates(split);
  CHECK(rates == std::vector<double>{1e-2, 1e-1, 1e-1});
  CHECK(wd(split.param_groups()[1]) == 0.1);
  CHECK(wd(split.param_groups()[2]) == 0.0);
  int64_t in_head = 0, grouped = 0;
  for (const auto& p : model->named_parameters())
    if (p.key().rfind("head", 0) == 0 && p.value().requires_grad()) in_head += p.value().numel();
  for (int g : {1, 2})
    for (auto& p : split.param_groups()[static_cast<std::size_t>(g)].params()) grouped += p.numel();
  CHECK(grouped == in_head);
  peft::train::WarmupCosine s2(100, 10, 1e-2);
  s2.apply(split, 55, rates);
  CHECK(split.param_groups()[0].options().get_lr() == Approx(s2.lr(55)));
  CHECK(split.param_groups()[1].options().get_lr() == Approx(10 * s2.lr(55)));
  CHECK_THROWS_AS(s2.apply(split, 1, {1.0}), peft::ConfigError);
  CHECK_THROWS_WITH(peft::train::make_adamw(model, 1e-2, 0.1, {{"nothing", 1.0}}), Catch::Contains("\"nothing\""));

  // evaluate(): accuracy and mean cross-entropy against a hand count, in batches that do not divide N.
  auto logits = torch::randn({37, 4});
  auto labels = torch::randint(0, 4, {37}, torch::kLong);
  torch::nn::Identity id;
  auto r = peft::train::evaluate(*id, [&](const torch::Tensor& b) { return b; }, logits, labels, 10);
  CHECK(r.count == 37);
  CHECK(r.accuracy == Approx(logits.argmax(1).eq(labels).sum().item<double>() / 37.0));
  CHECK(r.loss == Approx(torch::nn::functional::cross_entropy(logits, labels).item<double>()).epsilon(1e-5));
  CHECK_THROWS_AS(peft::train::evaluate(*id, [&](const torch::Tensor& b) { return b; }, logits, labels.slice(0, 0, 5)),
                  peft::InputError);

  // JSON lines, appended.
  peft_test::TempDir dir;
  const auto path = dir / "m.jsonl";
  {
    peft::train::JsonlLog log(path);
    log.write({{"step", 1}, {"loss", 0.5}});
    log.write({{"step", 2}, {"loss", 0.25}});
  }
  std::istringstream lines(peft_test::read_file(path));
  std::string line;
  std::vector<nlohmann::json> got;
  while (std::getline(lines, line)) got.push_back(nlohmann::json::parse(line));
  REQUIRE(got.size() == 2);
  CHECK(got[1]["loss"] == 0.25);
  // One reading: two calls race with the process's own allocations (found under ASan, whose
  // allocator grew the RSS between them).
  const auto mem = peft::train::rss();
  CHECK(mem.peak >= mem.current);
  CHECK(mem.current > 0);
}

}  // namespace peft_tests_core
