// The suite's former blind spots, each with a test that failed (or could not fail) before: train and
// eval mode of every stochastic tuner, modules_to_save with the original kept beside one copy per
// adapter (as PEFT), stacked adapters and subsets, generate() with padding and sampling filters, and
// adapter_config.json files written to break the loader.

#include "support/method_battery.hpp"

#include <cmath>
#include <set>

// Everything below lives in this file's own namespace, so that the test sources can be compiled
// together (CMake's unity build) without their helpers meeting.
namespace peft_tests_reliability {

using namespace peft_test;
namespace M = peft::models;

namespace {

/// Every tuner of the model and whether it is in training mode.
std::vector<bool> tuner_modes(torch::nn::Module& m) {
  std::vector<bool> modes;
  for (const auto& s : peft::tunable_slots(m))
    for (const auto& n : s.slot->adapter_names()) modes.push_back(s.slot->adapter(n)->as_module().is_training());
  return modes;
}

bool all_equal(const std::vector<bool>& v, bool value) {
  return !v.empty() && std::all_of(v.begin(), v.end(), [&](bool b) { return b == value; });
}

M::BertConfig bert_without_dropout() {
  auto c = tiny_bert();
  c.hidden_dropout_prob = 0, c.attention_probs_dropout_prob = 0;  // only the tuners may drop out
  return c;
}

}  // namespace

TEST_CASE("tuners follow the model's mode: no dropout in eval, real dropout in train", "[reliability][mode]") {
  struct Case {
    std::string name;
    std::shared_ptr<peft::AdapterConfig> cfg;
    bool stochastic;  // has dropout of its own
  };
  const auto lora = peft::LoraConfig().r(4).lora_dropout(0.5).target_modules({"query", "value"}).init_lora_weights(false);
  std::vector<Case> cases = {
      {"lora", lora.clone(), true},
      {"capaboost", peft::CapaBoostConfig(lora).num_copies(2).density(0.5).clone(), true},
      {"pasta", peft::PastaConfig().num_special_tokens(2).pasta_dropout(0.5).clone(), true},
      {"prefix", peft::PrefixTuningConfig().num_virtual_tokens(3).clone(), false},
      {"bottleneck", peft::BottleneckConfig().bottleneck_size(4).clone(), false},
  };
  auto ids = torch::tensor({{101, 7, 8, 9, 102}, {101, 12, 13, 14, 102}}, torch::kLong);
  auto mask = torch::ones_like(ids);
  for (const auto& c : cases) {
    INFO("method " << c.name);
    torch::manual_seed(31);
    M::BertModel bert(bert_without_dropout(), false);
    bert->eval();
    peft::attach(bert, *c.cfg);
    randomize_adapters(*bert);
    CHECK(all_equal(tuner_modes(*bert), false));  // attached to an eval model: eval
    torch::NoGradGuard g;
    auto a = bert->forward(ids, mask).last_hidden_state;
    CHECK(torch::equal(a, bert->forward(ids, mask).last_hidden_state));

    bert->train();
    CHECK(all_equal(tuner_modes(*bert), true));
    auto t1 = bert->forward(ids, mask).last_hidden_state, t2 = bert->forward(ids, mask).last_hidden_state;
    if (c.stochastic) {
      CHECK_FALSE(torch::allclose(t1, t2));  // dropout really applied
      CHECK_FALSE(torch::allclose(t1, a));
    } else {
      CHECK(torch::equal(t1, t2));
    }

    // A model in training mode gets tuners in training mode; one loaded for inference stays in eval.
    TempDir dir;
    peft::save_adapter(bert, dir.path());
    M::BertModel fresh(bert_without_dropout(), false);
    copy_weights(*fresh, *bert);
    fresh->train();
    peft::attach(fresh, *c.cfg, "trained");
    CHECK(all_equal(tuner_modes(*fresh), true));
    peft::load_adapter(fresh, dir.path(), "loaded");
    peft::set_adapter(fresh, "loaded");
    for (const auto& s : peft::tunable_slots(*fresh))
      if (auto* t = s.slot->adapter("loaded")) CHECK_FALSE(t->as_module().is_training());
    CHECK_THAT(fresh->forward(ids, mask).last_hidden_state, AllClose(a, 1e-5, 1e-5));
  }
}

TEST_CASE("modules_to_save: the original stays, each adapter trains its own copy (as PEFT)", "[reliability][modules_to_save]") {
  torch::manual_seed(21);
  ToyModel m;
  m->eval();
  auto ids = torch::randint(0, 32, {3, 5});
  torch::NoGradGuard g;
  const auto base = m->forward(ids);
  const auto w0 = m->head->weight.clone(), b0 = m->head->bias.clone();
  auto* head_weight = m->head->weight.unsafeGetTensorImpl();

  peft::attach(m, peft::LoraConfig().r(2).target_modules({"q"}).modules_to_save({"head"}));
  CHECK(torch::equal(m->forward(ids), base));  // the copy starts as the original
  CHECK(m->head->weight.requires_grad());
  m->head->weight.add_(1.0);  // what training does to the live copy
  const auto a_out = m->forward(ids);
  CHECK_FALSE(torch::allclose(a_out, base));
  {
    peft::DisableAdapters off(m);  // the README tour's "plain frozen model", head included
    CHECK(torch::equal(m->forward(ids), base));
    CHECK(torch::equal(m->head->weight, w0));
  }
  CHECK(torch::equal(m->forward(ids), a_out));
  CHECK(m->head->weight.unsafeGetTensorImpl() == head_weight);  // same parameter object throughout

  // A second adapter copies the original, not the first adapter's copy.
  peft::attach(m, peft::LoraConfig().r(2).target_modules({"v"}).modules_to_save({"head"}), "b");
  CHECK(torch::equal(m->forward(ids), a_out));  // added inactive: nothing changes
  peft::set_adapter(m, "b");
  CHECK(torch::equal(m->head->weight, w0));
  m->head->bias.add_(2.0);
  const auto b_out = m->forward(ids);
  peft::set_adapter(m, "default");
  CHECK(torch::equal(m->forward(ids), a_out));
  CHECK(torch::equal(m->head->bias, b0));

  // Two adapters with copies of the same module cannot be active together; nothing changes.
  CHECK_THROWS_WITH(peft::set_adapter(m, std::vector<std::string>{"default", "b"}),
                    Catch::Contains("'head'") && Catch::Contains("only one"));
  CHECK(peft::active_adapters(m) == std::vector<std::string>{"default"});
  CHECK(torch::equal(m->forward(ids), a_out));

  // Each adapter's file holds its own copy, whichever is live.
  auto sa = peft::get_adapter_state_dict(m, "default"), sb = peft::get_adapter_state_dict(m, "b");
  CHECK(torch::equal(sa["base_model.model.head.weight"], w0 + 1));
  CHECK(torch::equal(sa["base_model.model.head.bias"], b0));
  CHECK(torch::equal(sb["base_model.model.head.weight"], w0));
  CHECK(torch::equal(sb["base_model.model.head.bias"], b0 + 2));

  // Loading both into a fresh model: the fresh model's own head stays the original.
  TempDir dir;
  peft::save_adapter(m, dir.path());
  ToyModel fresh;
  {
    peft::DisableAdapters off(m);
    copy_weights(*fresh, *m);  // the original values, head included
  }
  fresh->eval();
  peft::load_adapter(fresh, dir.path());
  peft::load_adapter(fresh, dir.path() / "b", "b");
  CHECK(torch::equal(fresh->forward(ids), a_out));
  peft::set_adapter(fresh, "b");
  CHECK(torch::equal(fresh->forward(ids), b_out));
  {
    peft::DisableAdapters off(fresh);
    CHECK(torch::equal(fresh->forward(ids), base));
  }

  // Switching clears gradients that belonged to the other copy.
  {
    torch::GradMode::set_enabled(true);
    peft::load_adapter(fresh, dir.path() / "b", "b_train", /*trainable=*/true);
    peft::delete_adapter(fresh, "b");
    peft::set_adapter(fresh, "b_train");
    fresh->forward(ids).sum().backward();
    CHECK(fresh->head->weight.grad().defined());
    peft::set_adapter(fresh, "default");
    CHECK_FALSE(fresh->head->weight.grad().defined());
    torch::GradMode::set_enabled(false);
  }

  // Deleting the active adapter gives the original back; merge_and_unload keeps the active copy.
  peft::delete_adapter(m, "default");
  CHECK(torch::equal(m->head->weight, w0));
  peft::set_adapter(m, "b");
  peft::merge_and_unload(m);
  CHECK(peft::adapter_names(m).empty());
  CHECK(torch::equal(m->forward(ids), b_out));
  CHECK(torch::equal(m->head->bias, b0 + 2));
  for (const auto& item : m->named_modules()) CHECK(item.key().find("peft_modules_to_save") == std::string::npos);
  CHECK(m->named_parameters().size() == ToyModel()->named_parameters().size());
}

TEST_CASE("modules_to_save copies follow the model to another dtype", "[reliability][modules_to_save][dtype]") {
  torch::manual_seed(22);
  ToyModel m;
  auto ids = torch::randint(0, 32, {2, 5});
  peft::attach(m, peft::LoraConfig().r(2).target_modules({"q"}).modules_to_save({"head"}));
  const auto w0 = m->head->weight.detach().clone();
  m->to(torch::kDouble);
  {
    peft::DisableAdapters off(m);
    CHECK(m->head->weight.scalar_type() == torch::kDouble);
    CHECK(torch::equal(m->head->weight, w0.to(torch::kDouble)));
  }
  CHECK(m->head->weight.scalar_type() == torch::kDouble);
  CHECK(m->forward(ids).scalar_type() == torch::kDouble);
}

TEST_CASE("stacked adapters: sums by hand, merging all or a subset, unmerging, saving a subset", "[reliability][stacked]") {
  torch::manual_seed(23);
  peft::Linear fc(6, 4);
  torch::nn::Sequential s;
  s->push_back("fc", fc);
  peft::attach(s, peft::LoraConfig().r(2).lora_alpha(4).target_modules({"fc"}).init_lora_weights(false), "a");
  peft::attach(s, peft::LoraConfig().r(3).lora_alpha(3).target_modules({"fc"}).init_lora_weights(false), "b");
  peft::set_adapter(s, std::vector<std::string>{"a", "b"});
  auto* ta = dynamic_cast<peft::LoraLinearImpl*>(fc->adapter("a"));
  auto* tb = dynamic_cast<peft::LoraLinearImpl*>(fc->adapter("b"));
  torch::NoGradGuard g;
  const auto w0 = fc->weight.clone();
  const auto da = 2.0 * torch::mm(ta->lora_B, ta->lora_A), db = 1.0 * torch::mm(tb->lora_B, tb->lora_A);
  auto x = torch::randn({5, 6});
  auto expected = torch::mm(x, (w0 + da + db).t()) + fc->bias;
  CHECK_THAT(fc(x), AllClose(expected, 1e-5));

  peft::merge_adapter(s, {"a"});  // a subset: a merged, b still on the side
  CHECK(fc->merged_adapters() == std::vector<std::string>{"a"});
  CHECK_THAT(fc->weight, AllClose(w0 + da, 1e-6));
  CHECK_THAT(fc(x), AllClose(expected, 1e-5));
  peft::merge_adapter(s, {"b"});
  CHECK(fc->merged_adapters() == std::vector<std::string>{"a", "b"});
  CHECK_THAT(fc->weight, AllClose(w0 + da + db, 1e-6));
  CHECK_THAT(fc(x), AllClose(expected, 1e-5));
  peft::unmerge_adapter(s);  // newest first, back to the frozen weight
  CHECK(fc->merged_adapters().empty());
  CHECK_THAT(fc->weight, AllClose(w0, 1e-6, 1e-6));
  CHECK_THAT(fc(x), AllClose(expected, 1e-5));

  // save_adapter with a subset writes that subset only.
  TempDir dir;
  peft::save_adapter(s, dir.path(), {"b"});
  CHECK(std::filesystem::exists(dir.path() / "b" / "adapter_model.safetensors"));
  CHECK_FALSE(std::filesystem::exists(dir.path() / "a"));
  CHECK_FALSE(std::filesystem::exists(dir.path() / "adapter_config.json"));

  // merge_and_unload refuses an active adapter that cannot merge, before changing anything.
  peft::attach(s, peft::BottleneckConfig().bottleneck_size(2).target_modules({"fc"}), "bn");
  peft::set_adapter(s, std::vector<std::string>{"a", "bn"});
  const auto before = fc(x);
  const auto w_before = fc->weight.clone();
  CHECK_THROWS_WITH(peft::merge_and_unload(s), Catch::Contains("'bn'") && Catch::Contains("cannot be merged"));
  CHECK(fc->merged_adapters().empty());
  CHECK(torch::equal(fc->weight, w_before));  // untouched
  CHECK(peft::adapter_names(s).size() == 3);
  CHECK(torch::equal(fc(x), before));
  // Without it, the rest merges and unloads.
  peft::set_adapter(s, std::vector<std::string>{"a", "b"});
  peft::merge_and_unload(s);
  CHECK(peft::adapter_names(s).empty());
  CHECK_THAT(fc(x), AllClose(expected, 1e-5));
}

TEST_CASE("generate: a left-padded batch equals each row alone, sampling filters restrict the tokens", "[reliability][generate]") {
  torch::manual_seed(24);
  M::LlamaForCausalLM lm(tiny_llama());
  lm->eval();
  const int64_t pad = 0;
  auto r1 = torch::tensor({{5, 17, 42, 8, 23, 61}}, torch::kLong), r2 = torch::tensor({{9, 33, 4}}, torch::kLong);
  auto batch = torch::cat({r1, torch::cat({torch::full({1, 3}, pad, torch::kLong), r2}, 1)}, 0);
  auto mask = torch::cat({torch::ones({1, 6}, torch::kLong), torch::cat({torch::zeros({1, 3}, torch::kLong), torch::ones({1, 3}, torch::kLong)}, 1)}, 0);
  auto o = M::GenerationOptions().max_new_tokens(6).eos_token_ids(std::vector<int64_t>{});
  auto both = M::generate(*lm, batch, o, mask);
  auto alone1 = M::generate(*lm, r1, o), alone2 = M::generate(*lm, r2, o);
  CHECK(torch::equal(both[0].slice(0, 6), alone1[0].slice(0, 6)));
  CHECK(torch::equal(both[1].slice(0, 6), alone2[0].slice(0, 3)));

  // One new token for 300 copies of a prompt: the allowed set by the definitions, from the logits.
  torch::NoGradGuard g;
  auto logits = lm->forward(r1).select(1, -1)[0];
  auto many = r1.expand({300, 6}).contiguous();
  auto drawn = [&](M::GenerationOptions opt) {
    auto out = M::generate(*lm, many, opt.max_new_tokens(1).do_sample(true).seed(7).eos_token_ids(std::vector<int64_t>{}));
    std::set<int64_t> s;
    for (int64_t i = 0; i < out.size(0); ++i) s.insert(out[i][6].item<int64_t>());
    return s;
  };
  const double T = 50.0;  // flattens the distribution: without a filter, many tokens appear
  auto probs = torch::softmax(logits / T, -1);
  auto order = std::get<1>(probs.sort(-1, true));
  std::set<int64_t> top3;
  for (int64_t i = 0; i < 3; ++i) top3.insert(order[i].item<int64_t>());
  const auto k3 = drawn(M::GenerationOptions().temperature(T).top_k(3));
  CHECK(k3 == top3);  // only those, and sampling really happens among them
  const auto free = drawn(M::GenerationOptions().temperature(T));
  CHECK(free.size() > 10);
  // top_p: the smallest prefix of the sorted probabilities whose mass reaches p.
  const double p = 0.05;
  std::set<int64_t> nucleus;
  double mass = 0;
  for (int64_t i = 0; mass < p; ++i) {
    nucleus.insert(order[i].item<int64_t>());
    mass += probs[order[i]].item<double>();
  }
  REQUIRE(nucleus.size() >= 2);
  const auto tp = drawn(M::GenerationOptions().temperature(T).top_p(p));
  CHECK(std::includes(nucleus.begin(), nucleus.end(), tp.begin(), tp.end()));
  CHECK(tp.size() >= 2);
  // A tiny temperature is greedy.
  const auto cold = drawn(M::GenerationOptions().temperature(1e-4));
  CHECK(cold == std::set<int64_t>{logits.argmax().item<int64_t>()});
}

TEST_CASE("hostile adapter_config.json files are refused with typed errors before anything is allocated", "[reliability][config]") {
  torch::manual_seed(25);
  TempDir dir;
  ToyModel m;
  peft::attach(m, peft::LoraConfig().r(4).target_modules({"q", "v"}).init_lora_weights(false));
  peft::save_adapter(m, dir.path());
  const auto good = nlohmann::json::parse(read_file(dir / "adapter_config.json"));
  auto with = [&](const std::function<void(nlohmann::json&)>& edit) {
    auto j = good;
    edit(j);
    write_file(dir / "adapter_config.json", j.dump());
  };
  auto load_error = [&] {
    ToyModel fresh;
    const auto n = fresh->named_parameters().size();
    try {
      peft::load_adapter(fresh, dir.path());
      return std::string("no error");
    } catch (const peft::Error& e) {
      CHECK(peft::adapter_names(fresh).empty());  // nothing half-loaded
      CHECK(fresh->named_parameters().size() == n);
      return std::string(e.what());
    } catch (const std::exception& e) {
      return std::string("untyped: ") + e.what();
    }
  };

  with([](auto& j) { j["r"] = 2.5; });
  CHECK_THAT(load_error(), Catch::StartsWith("[peft.config]") && Catch::Contains("'r'") && Catch::Contains("an integer") &&
                               Catch::Contains("2.5") && Catch::Contains("adapter_config.json"));
  with([](auto& j) { j["r"] = 4.0; });  // an integral float is an integer, as in Python
  CHECK(load_error() == "no error");
  with([](auto& j) { j["r"] = int64_t(1) << 62; });
  CHECK_THAT(load_error(), Catch::StartsWith("[peft.adapter]") && Catch::Contains("rank 4") &&
                               Catch::Contains("4611686018427387904"));
  with([](auto& j) { j["r"] = 18446744073709551615ull; });
  CHECK_THAT(load_error(), Catch::StartsWith("[peft.config]") && Catch::Contains("'r'"));
  with([](auto& j) { j["rank_pattern"] = {{"q", 1.5}}; });
  CHECK_THAT(load_error(), Catch::StartsWith("[peft.config]") && Catch::Contains("'rank_pattern'"));
  with([](auto& j) { j["target_modules"] = "(q|v"; });
  CHECK_THAT(load_error(), Catch::StartsWith("[peft.config]") && Catch::Contains("target_modules") && Catch::Contains("(q|v"));
  with([](auto& j) { j["layers_to_transform"] = {0.5}; });
  CHECK_THAT(load_error(), Catch::StartsWith("[peft.config]") && Catch::Contains("'layers_to_transform'"));

  // In code, an absurd rank is a ConfigError naming the module, not LibTorch's raw allocation error.
  ToyModel fresh;
  CHECK_THROWS_WITH(peft::attach(fresh, peft::LoraConfig().r(int64_t(1) << 62).target_modules({"q"})),
                    Catch::StartsWith("[peft.config]") && Catch::Contains("layers.0.attn.q"));
  CHECK(peft::adapter_names(fresh).empty());

#ifdef PEFT_CLI_PATH
  // peft-cli inspect validates the whole config as loading does.
  with([](auto& j) { j["target_modules"] = "(q|v"; });
  const auto out = (dir / "inspect.txt");
  const int rc = std::system((std::string(PEFT_CLI_PATH) + " inspect " + dir.path().string() + " > " + out + " 2>&1").c_str());
  CHECK(rc != 0);
  CHECK_THAT(read_file(out), Catch::Contains("[peft.config]") && Catch::Contains("target_modules"));
#endif
}

TEST_CASE("LoRA on Conv2d matches the hand computation (stride and padding)", "[reliability][lora][conv]") {
  torch::manual_seed(26);
  peft::Conv2d conv(peft::Conv2dOptions(3, 5, 3).stride(2).padding(1));
  torch::nn::Sequential s;
  s->push_back("conv", conv);
  peft::attach(s, peft::LoraConfig().r(2).lora_alpha(6).target_modules({"conv"}).init_lora_weights(false));
  auto* t = dynamic_cast<peft::LoraConv2dImpl*>(conv->adapter("default"));
  REQUIRE(t != nullptr);
  CHECK(t->lora_A.sizes() == torch::IntArrayRef({2, 3, 3, 3}));  // PEFT: A is a conv like the base, r out
  CHECK(t->lora_B.sizes() == torch::IntArrayRef({5, 2, 1, 1}));  // B is 1x1
  auto x = torch::randn({2, 3, 9, 9});
  torch::NoGradGuard g;
  // By loops over the output: y[n,o,i,j] = b[o] + sum_c,k,l W[o,c,k,l] xp[n,c,2i+k,2j+l] + 3 * sum_r B[o,r] (A * xp)[n,r,i,j].
  auto xp = torch::constant_pad_nd(x, {1, 1, 1, 1});
  const auto w = conv->weight, b = conv->bias, A = t->lora_A, B = t->lora_B.flatten(1);
  auto expected = torch::zeros({2, 5, 5, 5});
  for (int64_t i = 0; i < 5; ++i)
    for (int64_t j = 0; j < 5; ++j) {
      auto patch = xp.slice(2, 2 * i, 2 * i + 3).slice(3, 2 * j, 2 * j + 3).flatten(1);  // [n, c*k*l]
      auto base = torch::mm(patch, w.flatten(1).t()) + b;                                 // [n, o]
      auto low = torch::mm(patch, A.flatten(1).t());                                      // [n, r]
      expected.select(3, j).select(2, i).copy_(base + 3.0 * torch::mm(low, B.t()));
    }
  CHECK_THAT(conv(x), AllClose(expected, 1e-5, 1e-5));
  peft::merge_adapter(s);
  CHECK_THAT(conv(x), AllClose(expected, 1e-5, 1e-5));
}

TEST_CASE("LoRA bias modes: lora_only trains and saves the adapted layers' biases, all every bias", "[reliability][lora][bias]") {
  auto bias_keys = [](torch::nn::Module& m) {
    std::set<std::string> keys;
    for (const auto& p : m.named_parameters())
      if (p.value().requires_grad() && p.key().size() > 5 && p.key().compare(p.key().size() - 5, 5, ".bias") == 0)
        keys.insert(p.key());
    return keys;
  };
  torch::manual_seed(27);
  auto ids = torch::randint(0, 32, {2, 5});
  for (const std::string mode : {"lora_only", "all"}) {
    INFO("bias " << mode);
    ToyModel m;
    peft::attach(m, peft::LoraConfig().r(2).target_modules({"q"}).bias(mode).init_lora_weights(false));
    std::set<std::string> expected;
    for (const auto& p : m->named_parameters()) {
      const auto& k = p.key();
      const bool is_bias = k.size() > 5 && k.compare(k.size() - 5, 5, ".bias") == 0 && k.find(".default.") == std::string::npos;
      if (is_bias && (mode == "all" || k.find("attn.q.") != std::string::npos)) expected.insert(k);
    }
    CHECK(expected.size() == (mode == "all" ? 2u * 7 + 1 : 2u));  // q,k,v,o,fc1,fc2,norm per block, head
    CHECK(bias_keys(*m) == expected);
    {
      torch::NoGradGuard g;
      for (const auto& k : expected) m->named_parameters()[k].add_(0.25);  // what training does
    }
    TempDir dir;
    peft::save_adapter(m, dir.path());
    peft::SafetensorsFile f(dir / "adapter_model.safetensors");
    for (const auto& k : expected) CHECK(f.contains("base_model.model." + k));
    CHECK(f.infos().size() == expected.size() + 2 * 2);  // the biases, and A, B of two q layers
    // A fresh model with the original biases gets the trained ones from the file.
    ToyModel fresh;
    {
      auto src = m->named_parameters();
      torch::NoGradGuard g;
      for (auto& p : fresh->named_parameters())
        p.value().copy_(expected.count(p.key()) ? src[p.key()] - 0.25 : src[p.key()]);
    }
    peft::load_adapter(fresh, dir.path());
    torch::NoGradGuard g;
    CHECK(torch::equal(fresh->forward(ids), m->forward(ids)));
  }
}

}  // namespace peft_tests_reliability
