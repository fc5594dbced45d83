// Prompt learning (prompt tuning, VPT shallow and deep, prefix tuning), PASTA and CapaBoost, each
// through the method battery and against an independent computation; and the U-Tuning view: adapter,
// prefix and LoRA attached through one interface at three granularities, checked by hand.

#include "support/method_battery.hpp"

// Everything below lives in this file's own namespace, so that the test sources can be compiled
// together (CMake's unity build) without their helpers meeting.
namespace peft_tests_prompts {

using namespace peft_test;
namespace M = peft::models;
using torch::indexing::Slice;

namespace {

M::ViTLayerImpl& vit_layer(M::ViTForImageClassificationImpl& vit, int64_t i) {
  return *vit.vit->encoder->layer->ptr<M::ViTLayerImpl>(static_cast<std::size_t>(i));
}

template <class T>
T* tuner_at(torch::nn::Module& model, const std::string& path, const std::string& adapter = "default") {
  for (const auto& s : peft::tunable_slots(model))
    if (s.name == path) return dynamic_cast<T*>(s.slot->adapter(adapter));
  return nullptr;
}

/// Greedy decoding by full recomputation (no cache): the reference for generate().
torch::Tensor greedy_no_cache(M::LlamaForCausalLMImpl& lm, torch::Tensor ids, int64_t steps) {
  torch::NoGradGuard g;
  for (int64_t i = 0; i < steps; ++i) {
    auto next = lm.forward(ids).select(1, -1).argmax(-1, true);
    ids = torch::cat({ids, next}, 1);
  }
  return ids;
}

}  // namespace

TEST_CASE("prompt tuning / VPT: shallow after the CLS token, deep at every layer", "[methods][prompt]") {
  // Shallow: n·d prompts (+ the head, trained in full).
  check_method(peft::PromptTuningConfig().num_virtual_tokens(4).modules_to_save({"classifier"}), {4 * 32 + 330, false, false});
  // Deep: a set per layer (the embedding's set feeds layer 0).
  check_method(peft::PromptTuningConfig().num_virtual_tokens(4).deep(true).prompt_tuning_init("XAVIER"), {2 * 4 * 32, false, false});

  auto vit = make_vit();
  auto r = peft::attach(*vit, peft::PromptTuningConfig().num_virtual_tokens(4).deep(true).modules_to_save({"classifier"}));
  CHECK(r.targeted == std::vector<std::string>{"vit.embeddings", "vit.encoder.layer.1"});
  auto* p0 = tuner_at<peft::PromptImpl>(*vit, "vit.embeddings");
  auto* p1 = tuner_at<peft::PromptImpl>(*vit, "vit.encoder.layer.1");
  REQUIRE((p0 && p1));
  // PEFT's key and layout: one `prompt_embeddings` tensor, modules_to_save under "base_model.".
  auto sd = peft::get_adapter_state_dict(*vit);
  CHECK(sd.keys() == std::vector<std::string>{"prompt_embeddings", "base_model.classifier.weight", "base_model.classifier.bias"});
  CHECK(torch::equal(sd["prompt_embeddings"], torch::cat({p0->prompt, p1->prompt})));
  auto j = peft::adapter_config(*vit, "default")->to_json();
  CHECK(j["peft_type"] == "VPT_DEEP");
  CHECK(j["token_dim"] == 32);
  CHECK(j["num_layers"] == 2);

  // By hand: [CLS, P0, patches] into layer 0; its prompt outputs replaced by P1 before layer 1.
  torch::NoGradGuard g;
  auto px = torch::randn({2, 1, 28, 28});
  auto got = vit->vit->forward(px).last_hidden_state;
  CHECK(got.sizes() == std::vector<int64_t>{2, 1 + 4 + 16, 32});
  peft::DisableAdapters off(*vit);
  auto e = vit->vit->embeddings->forward(px);
  auto h = torch::cat({e.slice(1, 0, 1), p0->prompt.expand({2, 4, 32}), e.slice(1, 1)}, 1);
  h = vit_layer(*vit, 0).forward(h);
  h = torch::cat({h.slice(1, 0, 1), p1->prompt.expand({2, 4, 32}), h.slice(1, 5)}, 1);
  h = vit_layer(*vit, 1).forward(h);
  CHECK_THAT(got, AllClose(vit->vit->layernorm(h), 1e-5, 1e-5));
}

TEST_CASE("prompt tuning on text models: virtual tokens in front, as PEFT puts them", "[methods][prompt]") {
  // With TEXT init the prompts are the embeddings of the init tokens, so a prompted model must equal
  // the plain model run on [init tokens, input] (positions, token types and masks included).
  torch::manual_seed(3);
  M::BertForSequenceClassification bert(tiny_bert());
  bert->eval();
  auto r = peft::attach(bert, peft::PromptTuningConfig().num_virtual_tokens(3).prompt_tuning_init("TEXT").init_token_ids({5, 6}));
  CHECK(r.targeted == std::vector<std::string>{"bert.embeddings.word_embeddings"});
  auto ids = torch::randint(3, 200, {2, 7});
  auto mask = torch::ones({2, 7}, torch::kLong);
  mask.index_put_({1, Slice(5)}, 0);
  auto virt = torch::tensor({5, 6, 5}, torch::kLong).expand({2, 3});
  torch::NoGradGuard g;
  auto prompted = bert->forward(ids, mask);
  {
    peft::DisableAdapters off(bert);
    CHECK_THAT(prompted, AllClose(bert->forward(torch::cat({virt, ids}, 1), torch::cat({torch::ones({2, 3}, torch::kLong), mask}, 1)),
                                  1e-5, 1e-5));
  }
  CHECK_THROWS_WITH(peft::attach(bert, peft::PromptTuningConfig().prompt_tuning_init("TEXT"), "x"),
                    Catch::Contains("needs init_token_ids"));
  // Deep prompts on a text model: inserted at the token embedding, replaced before layer 1.
  {
    M::BertForSequenceClassification deep(tiny_bert());
    auto rd = peft::attach(deep, peft::PromptTuningConfig().num_virtual_tokens(2).deep(true));
    CHECK(rd.targeted == std::vector<std::string>{"bert.embeddings.word_embeddings", "bert.encoder.layer.1"});
    CHECK(deep->bert->forward(ids, mask).last_hidden_state.sizes() == std::vector<int64_t>{2, 9, 32});
  }

  // LLaMA: logits cover the virtual positions too (as in PEFT); generate() shifts positions past them.
  torch::manual_seed(4);
  M::LlamaForCausalLM lm(tiny_llama());
  lm->eval();
  peft::attach(lm, peft::PromptTuningConfig().num_virtual_tokens(3).prompt_tuning_init("TEXT").init_token_ids({7, 8, 9}));
  auto x = torch::randint(10, 100, {2, 5});
  auto v = torch::tensor({7, 8, 9}, torch::kLong).expand({2, 3});
  auto logits = lm->forward(x);
  CHECK(logits.sizes() == std::vector<int64_t>{2, 8, 100});
  auto out = M::generate(*lm, x, M::GenerationOptions().max_new_tokens(4));
  {
    peft::DisableAdapters off(lm);
    CHECK_THAT(logits, AllClose(lm->forward(torch::cat({v, x}, 1)), 1e-5, 1e-5));
    CHECK(torch::equal(out, greedy_no_cache(*lm, torch::cat({v, x}, 1), 4).slice(1, 3)));
  }
  // Deep prompts: decoding with the cache equals full recomputation (the replacements are cached too).
  M::LlamaForCausalLM deep(tiny_llama());
  deep->eval();
  peft::attach(deep, peft::PromptTuningConfig().num_virtual_tokens(2).deep(true));
  auto cached = M::generate(*deep, x, M::GenerationOptions().max_new_tokens(3));
  auto full = x;
  for (int i = 0; i < 3; ++i) full = torch::cat({full, deep->forward(full).select(1, -1).argmax(-1, true)}, 1);
  CHECK(torch::equal(cached, full));
}

TEST_CASE("prefix tuning: keys and values in every attention, PEFT's layout", "[methods][prefix]") {
  // Per layer n·2·d (keys and values), plus the head.
  check_method(peft::PrefixTuningConfig().num_virtual_tokens(3).modules_to_save({"classifier"}), {2 * 3 * 2 * 32 + 330, false, false});

  // LLaMA with grouped-query attention: token_dim = kv_heads · head_dim (PEFT's rule), 2 · 8 = 16.
  torch::manual_seed(5);
  M::LlamaForCausalLM lm(tiny_llama());
  lm->eval();
  peft::attach(lm, peft::PrefixTuningConfig().num_virtual_tokens(3));
  auto j = peft::adapter_config(lm, "default")->to_json();
  CHECK(j["token_dim"] == 16);
  CHECK(j["num_attention_heads"] == 2);
  CHECK(j["num_layers"] == 2);
  auto sd = peft::get_adapter_state_dict(lm);
  REQUIRE(sd.size() == 1);
  CHECK(sd["prompt_embeddings"].sizes() == std::vector<int64_t>{3, 2 * 2 * 16});
  auto* t1 = tuner_at<peft::PrefixTuningImpl>(*lm, "model.layers.1.self_attn");
  REQUIRE(t1);
  CHECK(torch::equal(sd["prompt_embeddings"].slice(1, 32, 64), t1->prefix_table));
  // The prefix is not cached: incremental decoding equals full recomputation.
  auto x = torch::randint(3, 100, {2, 6});
  CHECK(torch::equal(M::generate(*lm, x, M::GenerationOptions().max_new_tokens(5)), greedy_no_cache(*lm, x, 5)));
  // Left padding: the mask keeps the prefix visible and the pads hidden, so a padded row gives the
  // logits of the row alone.
  torch::NoGradGuard g;
  auto mask = torch::ones({2, 6}, torch::kLong);
  mask.index_put_({1, Slice(0, 2)}, 0);
  auto pos = (mask.cumsum(1) - 1).clamp_min(0);
  auto both = lm->forward(x, mask, nullptr, pos);
  CHECK_THAT(both[1].slice(0, 2), AllClose(lm->forward(x.slice(0, 1, 2).slice(1, 2))[0], 1e-5, 1e-5));
}

TEST_CASE("prefix tuning initialised from real activations acts as those tokens in front of the input", "[methods][prefix]") {
  torch::manual_seed(11);
  M::LlamaForCausalLM lm(tiny_llama());
  lm->eval();
  const auto phrase = torch::randint(3, 100, {1, 4});
  auto x = torch::randint(3, 100, {2, 5});
  peft::nn::KVCache cache;
  torch::Tensor reference;
  {
    torch::NoGradGuard g;
    lm->forward(phrase, {}, &cache);
    // The base model on [phrase; x], row by row: the logits of x's positions.
    reference = lm->forward(torch::cat({phrase.expand({2, 4}), x}, 1)).slice(1, 4);
  }
  peft::attach(lm, peft::PrefixTuningConfig().num_virtual_tokens(4));
  peft::init_prefix_from_cache(lm, cache);
  torch::NoGradGuard g;
  CHECK_THAT(lm->forward(x), AllClose(reference, 1e-5, 1e-5));
  // The prefix stays trainable and saves in PEFT's layout like any other.
  CHECK(tuner_at<peft::PrefixTuningImpl>(*lm, "model.layers.0.self_attn")->prefix_table.requires_grad());
  // Wrong inputs are refused, naming what was expected.
  peft::nn::KVCache shorter;
  lm->forward(phrase.slice(1, 0, 3), {}, &shorter);  // 3 tokens (the prefix itself is never cached)
  CHECK_THROWS_WITH(peft::init_prefix_from_cache(lm, shorter), Catch::Contains("[1, 2, 4, 8]") && Catch::Contains("[1, 2, 3, 8]"));
  peft::nn::KVCache one_layer(1);
  one_layer.layers[0] = cache.layers[0];
  CHECK_THROWS_WITH(peft::init_prefix_from_cache(lm, one_layer), Catch::Contains("2 attention layers, the cache holds 1"));
  CHECK_THROWS_WITH(peft::init_prefix_from_cache(lm, cache, "other"), Catch::Contains("no prefix-tuning adapter 'other'"));
}

TEST_CASE("prefix tuning with prefix_projection trains through the MLP and saves its output", "[methods][prefix]") {
  auto vit = make_vit();
  vit->to(torch::kDouble);
  auto cfg = peft::PrefixTuningConfig().num_virtual_tokens(2).prefix_projection(true).encoder_hidden_size(8);
  peft::attach(*vit, cfg);
  // Embedding n·d, Linear(d, 8), Linear(8, L·2·d): PEFT's PrefixEncoder.
  CHECK(peft::count_parameters(*vit).trainable == 2 * 32 + (32 * 8 + 8) + (8 * 128 + 128));
  auto px = torch::randn({1, 1, 28, 28}, torch::kDouble);
  std::vector<torch::Tensor> params;
  for (auto& p : vit->parameters())
    if (p.requires_grad()) params.push_back(p);
  CHECK(gradcheck([&] { return vit->forward(px); }, params) < 1e-5);
  // A clone cannot keep the MLP shared across layers: it refuses to run rather than compute garbage.
  auto copy = std::dynamic_pointer_cast<M::ViTForImageClassificationImpl>(vit->clone());
  CHECK_THROWS_WITH(copy->forward(px), Catch::Contains("save and load the adapter"));

  vit->to(torch::kFloat);
  px = px.to(torch::kFloat);
  torch::Tensor out;
  {
    torch::NoGradGuard g;
    out = vit->forward(px);
  }
  TempDir dir;
  peft::save_adapter(*vit, dir.path());
  auto stored = peft::load_safetensors(dir / "adapter_model.safetensors").tensors;
  REQUIRE(stored.size() == 1);
  auto* t0 = tuner_at<peft::PrefixTuningImpl>(*vit, "vit.encoder.layer.0.attention");
  auto* t1 = tuner_at<peft::PrefixTuningImpl>(*vit, "vit.encoder.layer.1.attention");
  {
    torch::NoGradGuard g;
    CHECK_THAT(stored["prompt_embeddings"], AllClose(torch::cat({t0->table(), t1->table()}, 1), 1e-6, 0));
  }
  auto fresh = make_vit();
  peft::load_adapter(*fresh, dir.path(), "default", /*trainable=*/true);
  CHECK(peft::count_parameters(*fresh).trainable == 2 * 2 * 64);  // plain prefixes now
  CHECK(peft::adapter_config(*fresh, "default")->to_json()["prefix_projection"] == false);
  // A model of another depth is refused before anything changes, naming the field.
  auto deeper_cfg = tiny_vit();
  deeper_cfg.num_hidden_layers = 3;
  M::ViTForImageClassification deeper(deeper_cfg);
  CHECK_THROWS_WITH(peft::load_adapter(deeper, dir.path()), Catch::Contains("num_layers = 2, but the model has 3"));
  CHECK(peft::adapter_names(deeper).empty());
  // No attention op, no prefix.
  ToyModel toy;
  CHECK_THROWS_AS(peft::attach(toy, peft::PrefixTuningConfig()), peft::MatchError);
  CHECK_THROWS_AS(peft::attach(toy, peft::PromptTuningConfig()), peft::MatchError);
  torch::NoGradGuard g;
  CHECK_THAT(fresh->forward(px), AllClose(out, 1e-6, 1e-6));
}

TEST_CASE("PASTA: trainable vectors on the special tokens before every layer", "[methods][pasta]") {
  // ViT: the CLS token is the one special token (M = 1): L·M·d.
  check_method(peft::PastaConfig().num_special_tokens(1).modules_to_save({"classifier"}), {2 * 32 + 330, false, false});
  CHECK(24 * 3 * 1024 == 73728);  // the paper's BERT-large figure, L·M·d

  torch::manual_seed(6);
  M::BertModel bert(tiny_bert(), false);
  bert->eval();
  peft::attach(bert, peft::PastaConfig().num_special_tokens(3));
  randomize_adapters(*bert);
  // A pair: [CLS] a a a [SEP] b b [SEP] pad.
  auto ids = torch::tensor({{101, 7, 8, 9, 102, 10, 11, 102, 0}, {101, 12, 13, 102, 14, 15, 16, 102, 0}}, torch::kLong);
  auto types = torch::tensor({{0, 0, 0, 0, 0, 1, 1, 1, 0}, {0, 0, 0, 0, 1, 1, 1, 1, 0}}, torch::kLong);
  auto mask = (ids != 0).to(torch::kLong);
  auto special = torch::tensor({{0, -1, -1, -1, 1, -1, -1, 2, -1}, {0, -1, -1, 1, -1, -1, -1, 2, -1}}, torch::kLong);
  torch::NoGradGuard g;
  auto got = bert->forward(ids, mask, types).last_hidden_state;
  {  // The same positions given explicitly.
    peft::BatchScope scope(peft::keys::special_token_index, special);
    CHECK(torch::equal(bert->forward(ids, mask, types).last_hidden_state, got));
  }
  {  // By hand: h_i += e_p^(l) at each special position before layer l.
    peft::DisableAdapters off(bert);
    auto h = bert->embeddings->forward(ids, types);
    peft::nn::AttentionInputs in;
    in.mask = peft::nn::make_attention_mask(mask, 9, 0, false, h);
    for (int64_t l = 0; l < 2; ++l) {
      const auto path = "encoder.layer." + std::to_string(l);
      auto& e = tuner_at<peft::PastaImpl>(*bert, path)->pasta_embedding;
      h = h.clone();
      for (int64_t b = 0; b < 2; ++b)
        for (int64_t i = 0; i < 9; ++i)
          if (auto p = special[b][i].item<int64_t>(); p >= 0) h[b][i] += e[p];
      h = bert->encoder->layer->ptr<M::BertLayerImpl>(static_cast<std::size_t>(l))->forward(h, in);
    }
    CHECK_THAT(got, AllClose(h, 1e-5, 1e-5));
  }
  // A pair given to a single-sentence adapter (M = 2) is refused with the reason.
  M::BertModel single(tiny_bert(), false);
  peft::attach(single, peft::PastaConfig().num_special_tokens(2));
  CHECK_THROWS_WITH(single->forward(ids, mask, types), Catch::Contains("num_special_tokens = 2"));
}

TEST_CASE("LoRA on query/value and PASTA together", "[methods][pasta][mix]") {
  auto vit = make_vit();
  auto px = torch::randn({2, 1, 28, 28});
  peft::attach(*vit, peft::LoraConfig().r(2).target_modules({"query", "value"}), "lora");
  peft::attach(*vit, peft::PastaConfig().num_special_tokens(1), "pasta");
  peft::set_adapter(*vit, std::vector<std::string>{"lora", "pasta"});
  randomize_adapters(*vit);
  CHECK(peft::count_parameters(*vit).trainable == 2 * 2 * (2 * 32 + 32 * 2) + 2 * 32);
  torch::Tensor both, lora_only;
  {
    torch::NoGradGuard g;
    both = vit->forward(px);
    peft::set_adapter(*vit, "lora");
    lora_only = vit->forward(px);
    peft::set_adapter(*vit, std::vector<std::string>{"lora", "pasta"});
  }
  CHECK_FALSE(torch::allclose(both, lora_only));
  check_grads_only_on_trainables(*vit, [&] { return vit->forward(px); });
  auto fresh = make_vit();
  check_adapters_reload(*vit, fresh, {"lora", "pasta"}, px, both);
}

TEST_CASE("CapaBoost: masked copies of one shared weight, rank beyond r for free", "[methods][capaboost]") {
  auto lora = peft::LoraConfig().r(4).lora_alpha(8).target_modules({"query", "value"});
  // One shared A and B per module (LoRA's tensors), of which only the entries under some mask count:
  // counted here from the masks themselves (and the unmasked adapter biases).
  auto live = [](const peft::CapaBoostConfig& cfg) {
    auto vit = make_vit();
    peft::attach(*vit, cfg);
    int64_t n = 0;
    for (const auto& s : peft::tunable_slots(*vit)) {
      auto* t = s.slot->adapter("default");
      if (auto* l = dynamic_cast<peft::CapaBoostLoraImpl*>(t))
        n += (l->mask_A.sum(0) > 0).sum().item<int64_t>() + (l->mask_B.sum(0) > 0).sum().item<int64_t>();
      if (auto* a = dynamic_cast<peft::CapaBoostAdapterImpl*>(t))
        n += (a->mask_down.sum(0) > 0).sum().item<int64_t>() + (a->mask_up.sum(0) > 0).sum().item<int64_t>() +
             a->adapter_down->bias.numel() + a->adapter_up->bias.numel();
    }
    return n;
  };
  const auto cb_lora = peft::CapaBoostConfig(lora).num_copies(2).density(0.5).seed(7);
  const auto cb_adapter = peft::CapaBoostConfig(peft::BottleneckConfig().variant("pfeiffer").bottleneck_size(4)).num_copies(3);
  CHECK(live(cb_lora) < 2 * 2 * (4 * 32 + 32 * 4));  // the dense size: 1 - (1 - 0.5)^2 = 75% of it lives
  CHECK(live(cb_lora) > 0.65 * 2 * 2 * (4 * 32 + 32 * 4));
  check_method(cb_lora, {live(cb_lora), true, true});
  check_method(cb_adapter, {live(cb_adapter), false, true});

  auto vit = make_vit();
  peft::attach(*vit, peft::CapaBoostConfig(lora).num_copies(2).density(0.5).seed(7));
  randomize_adapters(*vit);
  auto& q = vit_layer(*vit, 0).attention->attention->query;
  auto* t = dynamic_cast<peft::CapaBoostLoraImpl*>(q->adapter("default"));
  REQUIRE(t);
  CHECK(t->parameters().size() == 2);
  // Masks: exactly round(numel·ρ) ones each, copies differ, buffers (not parameters).
  CHECK(t->mask_A.sizes() == std::vector<int64_t>{2, 4, 32});
  CHECK(t->mask_A[0].sum().item<double>() == 64);
  CHECK(t->mask_B[1].sum().item<double>() == 64);
  CHECK_FALSE(torch::equal(t->mask_A[0], t->mask_A[1]));
  torch::NoGradGuard g;
  // The formula with an explicit sum over copies.
  auto x = torch::randn({5, 32});
  auto sum = torch::zeros({5, 32});
  for (int64_t i = 0; i < 2; ++i) sum += torch::mm(torch::mm(x, (t->lora_A * t->mask_A[i]).t()), (t->lora_B * t->mask_B[i]).t());
  CHECK_THAT(q(x), AllClose(torch::nn::functional::linear(x, q->weight, q->bias) + 2.0 * sum, 1e-5, 1e-5));
  // Rank: ΔW reaches min(d·r, in, out) = 8 while plain LoRA of the same parameters stays at r = 4.
  auto dw = t->delta({}).weight;
  auto rank = [](const torch::Tensor& m) { return (at::linalg_svdvals(m) > 1e-5).sum().item<int64_t>(); };  // 1.13 and 2.x alike
  CHECK(rank(dw) == 8);
  CHECK(rank(torch::mm(t->lora_B, t->lora_A)) == 4);
  // Masks come back from the seed at load; another seed gives other masks.
  TempDir dir;
  peft::save_adapter(*vit, dir.path());
  auto fresh = make_vit();
  peft::load_adapter(*fresh, dir.path());
  auto* u = dynamic_cast<peft::CapaBoostLoraImpl*>(vit_layer(*fresh, 0).attention->attention->query->adapter("default"));
  CHECK(torch::equal(u->mask_A, t->mask_A));
  CHECK(peft::load_safetensors(dir / "adapter_model.safetensors").tensors.size() == 8);  // no masks stored
  auto other = make_vit();
  peft::attach(*other, peft::CapaBoostConfig(lora).seed(8));
  CHECK_FALSE(torch::equal(dynamic_cast<peft::CapaBoostLoraImpl*>(
                               vit_layer(*other, 0).attention->attention->query->adapter("default"))->mask_A,
                           t->mask_A));
}

TEST_CASE("U-Tuning: adapter, prefix and LoRA through one interface at three granularities", "[methods][utuning]") {
  auto vit = make_vit();
  // One frozen op + tuner pair per granularity, all attached with attach() and target names.
  peft::attach(*vit, peft::BottleneckConfig().variant("parallel").bottleneck_size(4).scaling(2.0).target_modules({"vit.encoder.layer.0.mlp"}), "ffn_parallel");
  peft::attach(*vit, peft::BottleneckConfig().variant("houlsby").bottleneck_size(4).target_modules({"vit.encoder.layer.1"}), "block_sequential");
  peft::attach(*vit, peft::PrefixTuningConfig().num_virtual_tokens(3).target_modules({"vit.encoder.layer.0.attention"}), "attn_prefix");
  peft::attach(*vit, peft::LoraConfig().r(2).target_modules({"vit.encoder.layer.0.attention.attention.query"}), "linear_lora");
  peft::set_adapter(*vit, {"ffn_parallel", "block_sequential", "attn_prefix", "linear_lora"});
  randomize_adapters(*vit);
  torch::NoGradGuard g;
  auto& l0 = vit_layer(*vit, 0);
  auto& l1 = vit_layer(*vit, 1);
  auto* ffn = tuner_at<peft::BottleneckImpl>(*vit, "vit.encoder.layer.0.mlp", "ffn_parallel");
  auto* blk = tuner_at<peft::BottleneckImpl>(*vit, "vit.encoder.layer.1", "block_sequential");
  auto* pre = tuner_at<peft::PrefixTuningImpl>(*vit, "vit.encoder.layer.0.attention", "attn_prefix");
  auto* lora = tuner_at<peft::LoraLinearImpl>(*vit, "vit.encoder.layer.0.attention.attention.query", "linear_lora");
  REQUIRE((ffn && blk && pre && lora));
  auto x = torch::randn({2, 17, 32});
  const int64_t b = 2, t = 17, n = 3;

  // Linear + parallel LoRA: W x + b + s B A x.
  auto& attn = *l0.attention;
  auto query = [&](const torch::Tensor& h) {
    return torch::nn::functional::linear(h, attn.attention->query->weight, attn.attention->query->bias) +
           lora->spec.scaling * torch::mm(torch::mm(h.reshape({-1, 32}), lora->lora_A.t()), lora->lora_B.t()).view({h.size(0), h.size(1), 32});
  };
  auto h0 = l0.layernorm_before(x);
  CHECK_THAT(attn.attention->query(h0), AllClose(query(h0), 1e-5, 1e-5));

  // Attention + prefix: plain attention over [P_k; K], [P_v; V] (PEFT's per-token layout [keys | values]).
  auto heads = [&](const torch::Tensor& y, int64_t len) { return y.view({b, len, 4, 8}).transpose(1, 2); };
  auto pk = pre->prefix_table.slice(1, 0, 32).reshape({1, n, 32}).expand({b, n, 32});
  auto pv = pre->prefix_table.slice(1, 32, 64).reshape({1, n, 32}).expand({b, n, 32});
  auto q = heads(query(h0), t);
  auto k = heads(torch::cat({pk, attn.attention->key(h0)}, 1), n + t);
  auto v = heads(torch::cat({pv, attn.attention->value(h0)}, 1), n + t);
  auto probs = torch::softmax(torch::matmul(q, k.transpose(-1, -2)) / std::sqrt(8.0), -1);
  auto ctx = torch::matmul(probs, v).transpose(1, 2).reshape({b, t, 32});
  auto attn_out = attn.output->dense(ctx);
  CHECK_THAT(attn.forward(h0), AllClose(attn_out, 1e-5, 1e-5));
  // The identity that makes the prefix a parallel branch: (1 - λ) Attn(q, K, V) + λ softmax(q P_kᵀ) P_v.
  {
    auto kx = k.slice(2, n), vx = v.slice(2, n), kp = k.slice(2, 0, n), vp = v.slice(2, 0, n);
    auto sx = torch::matmul(q, kx.transpose(-1, -2)) / std::sqrt(8.0), sp = torch::matmul(q, kp.transpose(-1, -2)) / std::sqrt(8.0);
    auto lse_x = torch::logsumexp(sx, -1, true), lse_p = torch::logsumexp(sp, -1, true);
    auto lambda = torch::sigmoid(lse_p - lse_x);  // share of the softmax mass on the prefix
    auto mixed = (1 - lambda) * torch::matmul(torch::softmax(sx, -1), vx) + lambda * torch::matmul(torch::softmax(sp, -1), vp);
    CHECK_THAT(mixed.transpose(1, 2).reshape({b, t, 32}), AllClose(ctx, 1e-5, 1e-5));
  }

  // FFN + parallel adapter: FFN(z) + s · Up(relu(Down(z))).
  auto a = x + attn_out;
  auto z = l0.layernorm_after(a);
  auto ffn_out = l0.output->dense(torch::gelu(l0.intermediate->dense(z))) + 2.0 * ffn->adapter_up(torch::relu(ffn->adapter_down(z)));
  auto y0 = a + ffn_out;
  CHECK_THAT(l0.forward(x), AllClose(y0, 1e-5, 1e-5));

  // Block + sequential adapter: y = Block(x); y + Up(relu(Down(y))).
  torch::Tensor plain1;
  {
    peft::DisableAdapters off(*vit);
    plain1 = l1.forward(y0);
  }
  CHECK_THAT(l1.forward(y0), AllClose(plain1 + blk->adapter_up(torch::relu(blk->adapter_down(plain1))), 1e-5, 1e-5));
}

}  // namespace peft_tests_prompts
