// Adapters as flat vectors and training in subspaces (peft/subspace): flat views round-trip for every
// method, training through P = I is ordinary training step for step, Fastfood equals the dense matrix
// built from its factors, and a small random subspace still learns.

#include "support/test_support.hpp"

#include <torch/optim/adam.h>

// Everything below lives in this file's own namespace, so that the test sources can be compiled
// together (CMake's unity build) without their helpers meeting.
namespace peft_tests_subspace {

using namespace peft_test;
namespace M = peft::models;
namespace S = peft::subspace;

namespace {

using Setup = std::function<void(M::BertForSequenceClassificationImpl&)>;

std::vector<std::pair<std::string, Setup>> every_method() {
  const std::vector<std::string> head = {"classifier"};
  auto with = [](auto cfg) { return Setup([cfg](M::BertForSequenceClassificationImpl& m) { peft::attach(m, cfg); }); };
  auto lora = peft::LoraConfig().r(4).lora_alpha(8).target_modules({"query", "value"}).modules_to_save(head);
  return {
      {"lora", with(lora)},
      {"dora", with(peft::LoraConfig(lora).use_dora(true))},
      {"ia3", with(peft::IA3Config().target_modules(".*\\.(key|value)|.*layer\\.\\d+\\.output\\.dense")
                       .feedforward_modules(".*layer\\.\\d+\\.output\\.dense").modules_to_save(head))},
      {"bitfit", with(peft::BitFitConfig().modules_to_save(head))},
      {"houlsby", with(peft::BottleneckConfig().bottleneck_size(4).modules_to_save(head))},
      {"prefix", with(peft::PrefixTuningConfig().num_virtual_tokens(3).modules_to_save(head))},
      {"prefix_projection", with(peft::PrefixTuningConfig().num_virtual_tokens(3).prefix_projection(true).encoder_hidden_size(8))},
      {"prompt", with(peft::PromptTuningConfig().num_virtual_tokens(3).modules_to_save(head))},
      {"pasta", with(peft::PastaConfig().num_special_tokens(2).modules_to_save(head))},
      {"capaboost", with(peft::CapaBoostConfig(peft::LoraConfig(lora).r(6)).num_copies(2).density(0.5))},
      {"rlrr", with(peft::RLRRConfig().modules_to_save(head))},
      {"lora+ia3 (two adapters)", [lora](M::BertForSequenceClassificationImpl& m) {
         peft::attach(m, lora);
         peft::attach(m, peft::IA3Config().target_modules({"key"}), "second");
         peft::set_adapter(m, std::vector<std::string>{"default", "second"});
       }},
  };
}

std::shared_ptr<M::BertForSequenceClassificationImpl> tiny_classifier(uint64_t seed = 3) {
  torch::manual_seed(seed);
  auto c = tiny_bert();
  c.num_labels = 3;
  auto m = std::make_shared<M::BertForSequenceClassificationImpl>(c);
  m->eval();
  return m;
}

}  // namespace

TEST_CASE("flat view: every method's adapter as one vector and back", "[subspace]") {
  // [CLS] ... [SEP]: PASTA adapts the special tokens.
  const auto ids = torch::cat({torch::full({2, 1}, 101, torch::kLong), torch::randint(5, 60, {2, 5}), torch::full({2, 1}, 102, torch::kLong)}, 1);
  for (const auto& [name, setup] : every_method()) {
    INFO(name);
    const bool two = name == "lora+ia3 (two adapters)";
    auto m = tiny_classifier();
    torch::Tensor base;
    {
      torch::NoGradGuard g;
      base = m->forward(ids);
    }
    setup(*m);
    for (const auto* with_head : {"no head", "with head"}) {
      INFO(with_head);
      auto view = S::FlatView::of_adapter(*m, "default", std::string(with_head) == "with head");
      // The view covers exactly the adapter's trainable parameters, once each, in a stable order; with
      // its head (modules_to_save), everything that trains.
      int64_t expected = 0;
      for (const auto& s : peft::tunable_slots(*m))
        if (auto* t = s.slot->adapter("default"))
          for (const auto& p : t->as_module().parameters())
            if (p.requires_grad()) expected += p.numel();
      if (std::string(with_head) == "with head") {  // (CapaBoost's dead entries count here: the tensors are dense)
        expected = 0;
        for (const auto& p : m->parameters())
          if (p.requires_grad()) expected += p.numel();
        if (two) expected -= 64;
      }
      CHECK(view.numel() == expected);
      CHECK(view.names() == S::FlatView::of_adapter(*m, "default", std::string(with_head) == "with head").names());
      CHECK(view.delta().abs().max().item<float>() == 0);

      // assign -> flatten is the identity, and the model runs the new values.
      torch::Tensor before;
      {
        torch::NoGradGuard g;
        before = m->forward(ids);
      }
      const auto v = view.init() + 0.05 * torch::randn({view.numel()});
      view.assign(v);
      CHECK(torch::equal(view.flatten(), v));
      CHECK(torch::allclose(view.delta(), v - view.init()));
      {
        torch::NoGradGuard g;
        CHECK_FALSE(torch::allclose(m->forward(ids), before));
      }
      // Back to θ0: exactly the outputs it had.
      view.set_delta(torch::zeros({view.numel()}));
      torch::NoGradGuard g;
      CHECK(torch::equal(m->forward(ids), before));
    }
    // Only the view's adapter: a second adapter's parameters stay out of it.
    if (two) {
      auto second = S::FlatView::of_adapter(*m, "second");
      for (const auto& n : second.names()) CHECK(n.find(".second.") != std::string::npos);
      CHECK(second.numel() == 2 * 32);  // IA3 on two key projections of width 32
    }
    torch::NoGradGuard g;
    peft::DisableAdapters off(*m);
    CHECK(torch::allclose(m->forward(ids), base, 1e-6, 1e-6));
  }
  // Bad input names what was expected.
  auto m = tiny_classifier();
  CHECK_THROWS_WITH(S::FlatView::of_adapter(*m), Catch::Contains("no adapter 'default'"));
  peft::attach(*m, peft::LoraConfig().r(2).target_modules({"query"}));
  auto view = S::FlatView::of_adapter(*m);
  CHECK_THROWS_WITH(view.assign(torch::zeros({3})), Catch::Contains("expected a vector of " + std::to_string(view.numel())));
}

TEST_CASE("subspace training with P = I is ordinary training, step for step", "[subspace]") {
  auto a = tiny_classifier(), b = tiny_classifier();
  const auto cfg = peft::LoraConfig().r(4).lora_alpha(8).target_modules({"query", "value"}).init_lora_weights("gaussian");
  peft::attach(*a, cfg);
  peft::attach(*b, cfg);
  copy_weights(*b, *a);  // same base and the same adapter init
  const auto ids = torch::randint(5, 60, {4, 6});
  const auto y = torch::tensor({0, 2, 1, 2}, torch::kLong);
  auto loss_of = [&](M::BertForSequenceClassificationImpl& m) { return torch::nn::functional::cross_entropy(m.forward(ids), y); };

  std::vector<torch::Tensor> params;
  for (auto& p : a->parameters())
    if (p.requires_grad()) params.push_back(p);
  torch::optim::Adam plain(params, torch::optim::AdamOptions(1e-2));
  auto view_a = S::FlatView::of_adapter(*a);

  auto view_b = S::FlatView::of_adapter(*b);
  S::Intrinsic sub(view_b, std::make_shared<S::IdentityProjection>(view_b.numel()));
  torch::optim::Adam on_z({sub.z()}, torch::optim::AdamOptions(1e-2));
  for (int step = 0; step < 4; ++step) {
    plain.zero_grad();
    auto la = loss_of(*a);
    la.backward();
    plain.step();
    on_z.zero_grad();
    auto lb = sub.backward([&] { return loss_of(*b); });
    on_z.step();
    sub.apply();
    CHECK(lb.item<double>() == Approx(la.item<double>()).epsilon(1e-6));
    CHECK_THAT(view_b.flatten(), AllClose(view_a.flatten(), 1e-6, 1e-6));
  }
  // The base model got no gradient on either side: frozen means frozen.
  for (const auto& p : b->named_parameters())
    if (!p.value().requires_grad()) CHECK_FALSE(p.value().grad().defined());
}

TEST_CASE("Fastfood projection equals the dense product of its factors", "[subspace]") {
  const int64_t D = 11, d = 5;
  S::FastfoodProjection ff(D, d, 42);
  REQUIRE(ff.padded_dim() == 16);
  // Sylvester's Hadamard matrix, built independently of the fast transform.
  auto H = torch::ones({1, 1});
  while (H.size(0) < 16) H = torch::cat({torch::cat({H, H}, 1), torch::cat({H, -H}, 1)}, 0);
  auto Pi = torch::zeros({16, 16});
  for (int64_t k = 0; k < 16; ++k) Pi.index_put_({k, ff.perm()[k].item<int64_t>()}, 1.0);
  const auto V = H.matmul(torch::diag(ff.gauss())).matmul(Pi).matmul(H).matmul(torch::diag(ff.signs()));
  const auto expected = V.slice(0, 0, D).slice(1, 0, d) * ff.scale();
  CHECK_THAT(ff.dense(), AllClose(expected, 1e-5, 1e-5));
  // The fast transform itself against the matrix, on a batch of vectors.
  const auto x = torch::randn({3, 16});
  CHECK_THAT(S::walsh_hadamard(x), AllClose(x.matmul(H.t()), 1e-5, 1e-5));
  // Seeded: the same P again; another seed, another P.
  CHECK(torch::equal(S::FastfoodProjection(D, d, 42).dense(), ff.dense()));
  CHECK_FALSE(torch::allclose(S::FastfoodProjection(D, d, 43).dense(), ff.dense()));
  // Columns of unit length in expectation (dense: exactly).
  S::FastfoodProjection big(4000, 16, 1);
  const auto norms = big.dense().norm(2, {0});
  CHECK(norms.mean().item<double>() == Approx(1.0).margin(0.1));
  S::DenseProjection dense(300, 7, 1);
  CHECK_THAT(dense.dense().norm(2, {0}), AllClose(torch::ones({7}), 1e-5, 1e-5));
  // Gradients reach z through the transform.
  auto z = torch::randn({d}, torch::requires_grad());
  const auto w = torch::randn({D});
  (ff.forward(z) * w).sum().backward();
  CHECK_THAT(z.grad(), AllClose(expected.t().matmul(w), 1e-5, 1e-5));
  CHECK_THROWS_WITH(ff.forward(torch::zeros({d + 1})), Catch::Contains("expected z of shape [5]"));
  CHECK_THROWS_AS(S::FastfoodProjection(4, 5, 0), peft::ConfigError);
}

TEST_CASE("a 16-number random subspace of a LoRA adapter and its head learns a task", "[subspace]") {
  for (const auto* kind : {"dense", "fastfood"}) {
    INFO(kind);
    auto m = tiny_classifier(7);
    peft::attach(*m, peft::LoraConfig().r(4).target_modules({"query", "value"}).modules_to_save({"classifier"}));
    auto view = S::FlatView::of_adapter(*m, "default", /*with_saved_modules=*/true);
    std::shared_ptr<S::Projection> p;
    if (std::string(kind) == "dense") p = std::make_shared<S::DenseProjection>(view.numel(), 16, 5);
    else p = std::make_shared<S::FastfoodProjection>(view.numel(), 16, 5);
    S::Intrinsic sub(view, p);
    const auto ids = torch::randint(5, 60, {8, 6});
    const auto y = torch::randint(0, 3, {8});
    auto loss = [&] { return torch::nn::functional::cross_entropy(m->forward(ids), y); };
    torch::optim::Adam opt({sub.z()}, torch::optim::AdamOptions(1e-1));
    double first = 0, last = 0;
    for (int step = 0; step < 40; ++step) {
      opt.zero_grad();
      last = sub.backward(loss).item<double>();
      if (step == 0) first = last;
      opt.step();
    }
    // (Measured: 1.10 -> 0.91 dense, 0.93 Fastfood; the whole adapter and head in full space fit these
    // 8 rows further, which the next check also shows.)
    INFO("loss " << first << " -> " << last);
    CHECK(last < 0.9 * first);
    // Only z trained: the adapter moved inside the span of P, and nothing outside the view changed.
    sub.apply();
    const auto delta = view.delta();
    const auto P = p->dense();
    const auto coef = std::get<0>(at::linalg_lstsq(P, delta.unsqueeze(1)));
    CHECK_THAT(P.matmul(coef).squeeze(1), AllClose(delta, 1e-4, 1e-4));
    CHECK_THAT(coef.squeeze(1), AllClose(sub.z().detach(), 1e-3, 1e-3));
    // A random 16-dimensional subspace is a restriction: the whole space at the same budget fits further.
    view.set_delta(torch::zeros({view.numel()}));
    S::Intrinsic whole(view, std::make_shared<S::IdentityProjection>(view.numel()));
    torch::optim::Adam full_opt({whole.z()}, torch::optim::AdamOptions(1e-2));
    double full_last = 0;
    for (int step = 0; step < 40; ++step) {
      full_opt.zero_grad();
      full_last = whole.backward(loss).item<double>();
      full_opt.step();
    }
    CHECK(full_last < last);
  }
}

namespace {

/// Trains `view`'s adapter for a few Adam steps on (ids, y) and returns its Δθ; the model goes back to θ0.
torch::Tensor train_source(S::FlatView& view, const std::function<torch::Tensor()>& loss, int steps, double lr) {
  S::Intrinsic whole(view, std::make_shared<S::IdentityProjection>(view.numel()));
  torch::optim::Adam opt({whole.z()}, torch::optim::AdamOptions(lr));
  for (int s = 0; s < steps; ++s) {
    opt.zero_grad();
    whole.backward(loss);
    opt.step();
  }
  whole.apply();
  auto delta = view.delta();
  view.set_delta(torch::zeros({view.numel()}));
  return delta;
}

}  // namespace

TEST_CASE("unified subspace, stage 1: LoRA and prefix solutions into one subspace, and the maps save and load", "[subspace]") {
  // In double, so that finite differences can check the gradient.
  auto lora_model = tiny_classifier(), prefix_model = tiny_classifier();
  peft::attach(*lora_model, peft::LoraConfig().r(4).target_modules({"query", "value"}));
  peft::attach(*prefix_model, peft::PrefixTuningConfig().num_virtual_tokens(3));
  lora_model->to(torch::kDouble);
  prefix_model->to(torch::kDouble);
  const auto ids = torch::cat({torch::full({8, 1}, 101, torch::kLong), torch::randint(5, 60, {8, 5})}, 1);
  const auto y = torch::randint(0, 3, {8});
  auto loss_on = [&](M::BertForSequenceClassificationImpl& m) {
    return [&m, &ids, &y] { return torch::nn::functional::cross_entropy(m.forward(ids), y); };
  };
  auto lora_view = S::FlatView::of_adapter(*lora_model), prefix_view = S::FlatView::of_adapter(*prefix_model);
  const auto lora_solution = train_source(lora_view, loss_on(*lora_model), 15, 1e-2);
  const auto prefix_solution = train_source(prefix_view, loss_on(*prefix_model), 15, 1e-2);

  S::UnifiedSubspace uni(S::UnifiedOptions().r(4).alpha_rec(0.1).seed(1));
  uni.add_method("lora", lora_view, {lora_solution});
  uni.add_method("prefix", prefix_view, {prefix_solution});
  REQUIRE(uni.map(0)->decoder->weight.sizes() == std::vector<int64_t>{lora_view.numel(), 4});
  CHECK(uni.map(0)->encoder->weight.std().item<double>() == Approx(0.02).epsilon(0.1));
  auto task = [&](std::size_t k) { return k == 0 ? loss_on(*lora_model)() : loss_on(*prefix_model)(); };
  auto objective = [&] { return uni.evaluate(task, {0.5, 0.5}); };  // at a fixed mixture, no gradients
  const auto before = objective();
  // step() reports what evaluate() computes, and its gradient is the chain rule through both models and
  // the maps: one entry of each kind of map against central differences.
  {
    const auto r = uni.step(task, {0.5, 0.5});
    CHECK(r.total == Approx(before.total).epsilon(1e-9));
    for (auto* w : {&uni.map(1)->decoder->weight, &uni.map(0)->encoder->weight, &uni.map(0)->encoder_low->bias}) {
      auto flat = w->view({-1});
      const int64_t i = flat.numel() / 3;
      const double analytic = w->grad().view({-1})[i].item<double>();
      auto total_at = [&](double shift) {
        {
          torch::NoGradGuard g;
          flat[i] += shift;
        }
        const double t = uni.evaluate(task, {0.5, 0.5}).total;
        torch::NoGradGuard g;
        flat[i] -= shift;
        return t;
      };
      const double numeric = (total_at(1e-6) - total_at(-1e-6)) / 2e-6;
      CHECK(analytic == Approx(numeric).epsilon(1e-4).margin(1e-8));
    }
    for (auto& p : uni.parameters()) p.mutable_grad() = torch::Tensor();
  }
  torch::optim::Adam opt(uni.parameters(), torch::optim::AdamOptions(1e-2));
  for (int s = 0; s < 40; ++s) {
    opt.zero_grad();
    auto r = uni.step(task);
    REQUIRE(r.weights.size() == 2);
    CHECK(r.weights[0] + r.weights[1] == Approx(1.0));
    opt.step();
  }
  const auto after = objective();
  INFO("stage-1 objective " << before.total << " -> " << after.total);
  CHECK(after.total < 0.8 * before.total);
  // The frozen base never got a gradient.
  for (const auto& p : lora_model->named_parameters())
    if (!p.value().requires_grad()) CHECK_FALSE(p.value().grad().defined());

  TempDir dir;
  const auto file = dir / "subspace.safetensors";
  uni.save(file);
  S::UnifiedSubspace again(S::UnifiedOptions().r(4).seed(99));
  again.add_method("lora", lora_view, {lora_solution});
  again.add_method("prefix", prefix_view, {prefix_solution});
  const auto z = torch::randn({4}, torch::kDouble);
  CHECK_FALSE(torch::allclose(again.decode(1, z), uni.decode(1, z)));
  again.load(file);
  CHECK(torch::equal(again.decode(1, z), uni.decode(1, z)));
  CHECK(torch::equal(again.encode(0, lora_solution), uni.encode(0, lora_solution)));
  S::UnifiedSubspace wider(S::UnifiedOptions().r(5));
  wider.add_method("lora", lora_view, {lora_solution});
  CHECK_THROWS_WITH(wider.load(file), Catch::Contains("r = 4, this subspace has r = 5"));
  CHECK_THROWS_WITH(uni.add_method("lora", lora_view, {lora_solution}), Catch::Contains("'lora' was added already"));
  CHECK_THROWS_WITH(wider.add_method("x", lora_view, {torch::zeros({3})}), Catch::Contains("has 3 values"));
}

TEST_CASE("unified subspace, stages 2 and 3: z trained through U_k, decoded through another map", "[subspace]") {
  // Three methods: the mixture weights are the paper's alpha ~ U(0, 1), beta ~ U(0, 1 - alpha).
  auto a = tiny_classifier(), b = tiny_classifier(), c = tiny_classifier();
  const auto cfg = peft::LoraConfig().r(2).target_modules({"query", "value"}).init_lora_weights("gaussian");
  for (auto* m : {&a, &b}) peft::attach(**m, cfg);
  copy_weights(*b, *a);
  peft::attach(*c, peft::IA3Config().target_modules({"key", "value"}));
  auto va = S::FlatView::of_adapter(*a), vb = S::FlatView::of_adapter(*b), vc = S::FlatView::of_adapter(*c);
  S::UnifiedSubspace uni(S::UnifiedOptions().r(3).seed(2));
  uni.add_method("a", va, {torch::randn({va.numel()}) * 0.1});
  uni.add_method("b", vb, {torch::randn({vb.numel()}) * 0.1});
  uni.add_method("ia3", vc, {torch::randn({vc.numel()}) * 0.1});
  double first = 0, second = 0;
  for (int i = 0; i < 4000; ++i) {
    const auto w = uni.draw_weights();
    REQUIRE(w.size() == 3);
    CHECK(w[0] + w[1] + w[2] == Approx(1.0));
    first += w[0] / 4000, second += w[1] / 4000;
  }
  CHECK(first == Approx(0.5).margin(0.02));   // E[alpha]
  CHECK(second == Approx(0.25).margin(0.02));  // E[beta] = E[(1 - alpha) / 2]

  // Identical maps for a and b: a z found through a's U decodes into b as exactly a's solution.
  {
    torch::NoGradGuard g;
    uni.map(1)->decoder->weight.copy_(uni.map(0)->decoder->weight);
  }
  const auto maps_before = uni.map(0)->decoder->weight.clone();
  const auto ids = torch::randint(5, 60, {6, 5});
  const auto y = torch::randint(0, 3, {6});
  S::Intrinsic stage2(va, uni.projection(0), /*init_std=*/0.02, /*seed=*/3);
  CHECK(stage2.z().abs().min().item<double>() > 0);  // N(0, 0.02), not zeros
  torch::optim::Adam opt({stage2.z()}, torch::optim::AdamOptions(5e-2));
  for (int s = 0; s < 10; ++s) {
    opt.zero_grad();
    stage2.backward([&] { return torch::nn::functional::cross_entropy(a->forward(ids), y); });
    opt.step();
  }
  stage2.apply();
  CHECK(torch::equal(uni.map(0)->decoder->weight, maps_before));  // U stays fixed in stage 2
  CHECK_FALSE(uni.map(0)->decoder->weight.grad().defined());
  const auto z = stage2.z().detach();
  uni.apply(1, z);  // stage 3: no training
  CHECK_THAT(vb.flatten(), AllClose(va.flatten(), 1e-6, 1e-6));
  torch::NoGradGuard g;
  CHECK_THAT(b->forward(ids), AllClose(a->forward(ids), 1e-5, 1e-5));
  // Into another method: IA3's adapter becomes θ0 + U_ia3 z.
  uni.apply(2, z);
  CHECK_THAT(vc.delta(), AllClose(uni.map(2)->decoder->weight.matmul(z), 1e-6, 1e-6));
}

TEST_CASE("unified subspace, multi-task: a step draws one task and that task's solutions for every method", "[subspace]") {
  auto a = tiny_classifier(), b = tiny_classifier();
  peft::attach(*a, peft::LoraConfig().r(2).target_modules({"query", "value"}));
  peft::attach(*b, peft::IA3Config().target_modules({"key", "value"}));
  auto va = S::FlatView::of_adapter(*a), vb = S::FlatView::of_adapter(*b);
  // Solutions of task t are t + 1 everywhere: the reconstruction term's target says which one was drawn.
  auto sol = [](const S::FlatView& v, int t) { return torch::full({v.numel()}, double(t + 1), v.options()); };
  S::UnifiedSubspace uni(S::UnifiedOptions().r(2).seed(4));
  uni.add_method("lora", va, {sol(va, 0), sol(va, 1), sol(va, 2), sol(va, 2)}, {0, 1, 2, 2});
  uni.add_method("ia3", vb, {sol(vb, 2), sol(vb, 0), sol(vb, 1)}, {2, 0, 1});
  REQUIRE(uni.task_ids() == std::vector<int64_t>{0, 1, 2});
  const auto ids = torch::randint(5, 60, {4, 5});
  const auto y = torch::randint(0, 3, {4});
  std::vector<int> seen(3, 0);
  for (int s = 0; s < 30; ++s) {
    std::vector<int64_t> called;
    const auto r = uni.step_tasks([&](std::size_t k, int64_t task) {
      called.push_back(task);
      return torch::nn::functional::cross_entropy((k == 0 ? a : b)->forward(ids), y);
    });
    REQUIRE(called.size() == 2);
    CHECK(called[0] == r.task_id);
    CHECK(called[1] == r.task_id);
    ++seen.at(r.task_id);
    // ||Δθ_k − U_k I_k|| with Δθ_k = (t + 1)·1: near sqrt(D_k)·(t + 1) for the small initial maps.
    for (std::size_t k = 0; k < 2; ++k) {
      const double expected = std::sqrt(double(k == 0 ? va.numel() : vb.numel())) * double(r.task_id + 1);
      CHECK(r.reconstruction[k] == Approx(expected).epsilon(0.05));
    }
    for (auto& p : uni.parameters()) p.mutable_grad() = torch::Tensor();
  }
  for (int t = 0; t < 3; ++t) CHECK(seen[t] > 3);
  S::UnifiedSubspace bad(S::UnifiedOptions().r(2));
  bad.add_method("lora", va, {sol(va, 0), sol(va, 1)}, {0, 1});
  bad.add_method("ia3", vb, {sol(vb, 0)}, {0});
  bool threw = false;
  for (int s = 0; s < 20 && !threw; ++s) {
    try {
      bad.step_tasks([&](std::size_t k, int64_t) { return torch::nn::functional::cross_entropy((k == 0 ? a : b)->forward(ids), y); });
    } catch (const peft::StateError& e) {
      threw = true;
      CHECK_THAT(e.what(), Catch::Contains("method 'ia3' has no solution of task 1"));
    }
  }
  CHECK(threw);
  CHECK_THROWS_WITH(uni.add_method("x", va, {sol(va, 0)}, {0, 1}), Catch::Contains("1 solutions and 2 task tags"));
}

TEST_CASE("size-matched sources: Houlsby without biases, LoRA (q, v) and a reparameterised prefix at one count", "[subspace]") {
  const auto c = tiny_bert();  // hidden 32, 2 layers
  const auto m = S::matched_sources(c.hidden_size, c.num_hidden_layers, 4, 6);
  CHECK(m.adapter_count == 4 * 2 * 32 * 4);
  CHECK(m.lora_count == m.adapter_count);
  // n·d + 2Ld + h·(d + 1 + 2Ld) = 192 + 128 + 161·h comes nearest to 1024 at h = 4 (964; h = 5 gives 1125).
  CHECK(m.prefix.encoder_hidden_size() == 4);
  CHECK(m.prefix_count == 6 * 32 + 4 * 32 + 4 + 4 * 128 + 128);
  const int64_t expected[3] = {m.adapter_count, m.lora_count, m.prefix_count};
  const peft::AdapterConfig* cfgs[3] = {&m.adapter, &m.lora, &m.prefix};
  const auto ids = torch::cat({torch::full({2, 1}, 101, torch::kLong), torch::randint(5, 60, {2, 6})}, 1);
  for (int k = 0; k < 3; ++k) {
    INFO("source " << k);
    auto model = tiny_classifier();
    peft::attach(*model, *cfgs[k]);
    const auto view = S::FlatView::of_adapter(*model);
    CHECK(view.numel() == expected[k]);  // what really trains is what the formula says
    if (k == 0)
      for (const auto& n : view.names()) CHECK(n.find("bias") == std::string::npos);
  }
  // bias(false) adapters save without bias tensors and load back into an equal model.
  auto a = tiny_classifier();
  peft::attach(*a, m.adapter);
  torch::manual_seed(9);
  {
    torch::NoGradGuard g;
    for (auto& p : a->parameters())
      if (p.requires_grad()) p.normal_(0, 0.1);
  }
  TempDir dir;
  peft::save_adapter(*a, dir.path() / "houlsby");
  const auto file = peft::load_safetensors((dir.path() / "houlsby" / "adapter_model.safetensors").string());
  for (const auto& t : file.tensors) CHECK(t.key().find("bias") == std::string::npos);
  CHECK(file.tensors.size() == 8);  // 2 layers x 2 adapters x (down, up)
  auto b = tiny_classifier();
  peft::load_adapter(*b, dir.path() / "houlsby");
  torch::NoGradGuard g;
  CHECK(torch::equal(a->forward(ids), b->forward(ids)));
  CHECK_FALSE(torch::equal(a->forward(ids), tiny_classifier()->forward(ids)));
}

}  // namespace peft_tests_subspace
