// The model zoo and its building blocks: shapes, masks, KV cache, checkpoints, composite tuning points,
// and numerical agreement with an independent reference (scripts/make_model_fixtures.py).

#include "support/test_support.hpp"

// Everything below lives in this file's own namespace, so that the test sources can be compiled
// together (CMake's unity build) without their helpers meeting.
namespace peft_tests_models {

using namespace peft_test;
namespace M = peft::models;
namespace N = peft::nn;

namespace {

std::string fixture(const std::string& model) { return std::string(PEFT_FIXTURES_DIR) + "/models/" + model; }

std::map<std::string, torch::Tensor> reference(const std::string& model) {
  std::map<std::string, torch::Tensor> r;
  auto c = peft::load_safetensors(fixture(model) + "/reference.safetensors");
  for (const auto& item : c.tensors) r[item.key()] = item.value();
  return r;
}


/// A test tuner: output placement, U(y) = y * factor (no parameters).
struct ScaleImpl : torch::nn::Cloneable<ScaleImpl>, peft::Tuner {
  explicit ScaleImpl(peft::Placement p = peft::Placement::output, double f = 2.0) : where(p), factor(f) {}
  peft::Placement where;
  double factor;
  std::shared_ptr<const peft::AdapterConfig> cfg;
  void reset() override {}
  peft::Placement placement() const override { return where; }
  std::string method() const override { return "scale"; }
  const std::shared_ptr<const peft::AdapterConfig>& config() const override { return cfg; }
  torch::Tensor input(const torch::Tensor& x) override { return x * factor; }
  torch::Tensor output(const torch::Tensor& y) override { return y * factor; }
  torch::Tensor parallel(const torch::Tensor& x, const torch::Tensor& y) override { return y + factor * x; }
  std::vector<std::pair<std::string, torch::Tensor>> adapter_tensors() const override { return {}; }
  torch::nn::Module& as_module() override { return *this; }
};

/// A test prefix tuner: fixed keys/values [1, H_kv, P, D] broadcast over the batch.
struct FixedPrefixImpl : torch::nn::Cloneable<FixedPrefixImpl>, peft::Tuner, N::AttentionPrefix {
  FixedPrefixImpl(torch::Tensor k_, torch::Tensor v_) : k(std::move(k_)), v(std::move(v_)) {}
  torch::Tensor k, v;
  std::shared_ptr<const peft::AdapterConfig> cfg;
  void reset() override {}
  peft::Placement placement() const override { return peft::Placement::parallel; }
  bool inside_op() const override { return true; }
  std::string method() const override { return "fixed_prefix"; }
  const std::shared_ptr<const peft::AdapterConfig>& config() const override { return cfg; }
  N::LayerKV prefix(int64_t b) const override { return {k.expand({b, -1, -1, -1}), v.expand({b, -1, -1, -1})}; }
  std::vector<std::pair<std::string, torch::Tensor>> adapter_tensors() const override { return {}; }
  torch::nn::Module& as_module() override { return *this; }
};

}  // namespace

TEST_CASE("zoo models give Hugging Face's output shapes", "[models]") {
  torch::manual_seed(0);
  M::ViTForImageClassification vit(tiny_vit());
  CHECK(vit->forward(torch::randn({2, 1, 28, 28})).sizes() == std::vector<int64_t>{2, 10});
  M::ViTModel bare(tiny_vit());
  auto vo = bare->forward(torch::randn({3, 1, 28, 28}));
  CHECK(vo.last_hidden_state.sizes() == std::vector<int64_t>{3, 17, 32});
  CHECK(vo.pooler_output.sizes() == std::vector<int64_t>{3, 32});
  CHECK_THROWS_AS(vit->forward(torch::randn({2, 3, 28, 28})), peft::InputError);

  auto ids = torch::randint(1, 100, {2, 7});
  M::BertForSequenceClassification seq(tiny_bert());
  CHECK(seq->forward(ids).sizes() == std::vector<int64_t>{2, 3});
  M::BertForTokenClassification tok(tiny_bert());
  CHECK(tok->forward(ids, torch::ones({2, 7})).sizes() == std::vector<int64_t>{2, 7, 3});
  CHECK_THROWS_AS(seq->forward(ids, torch::ones({2, 6})), peft::InputError);
  CHECK_THROWS_AS(seq->forward(torch::randint(1, 100, {2, 65})), peft::InputError);

  M::LlamaForCausalLM lm(tiny_llama());
  CHECK(lm->forward(ids).sizes() == std::vector<int64_t>{2, 7, 100});
  CHECK(lm->model->forward(ids).sizes() == std::vector<int64_t>{2, 7, 32});
}

TEST_CASE("ViT matches the independent reference", "[models][vit][reference]") {
  auto ref = reference("vit");
  auto cfg = M::ViTConfig::from_file(fixture("vit") + "/config.json");  // has an unknown key: ignored
  CHECK(cfg.num_labels == 10);
  CHECK(cfg.num_channels == 1);
  M::ViTForImageClassification vit(cfg);
  vit->eval();
  auto rep = peft::load_pretrained(*vit, fixture("vit"));
  CHECK(rep.loaded == vit->parameters().size());
  torch::NoGradGuard g;
  CHECK_THAT(vit->vit->forward(ref["pixel_values"]).last_hidden_state, AllClose(ref["last_hidden_state"], 1e-5, 0));
  CHECK_THAT(vit->forward(ref["pixel_values"]), AllClose(ref["logits"], 1e-5, 0));
}

TEST_CASE("BERT matches the independent reference, with padding", "[models][bert][reference]") {
  auto ref = reference("bert");
  auto cfg = M::BertConfig::from_file(fixture("bert") + "/config.json");
  M::BertForSequenceClassification bert(cfg);
  bert->eval();
  peft::load_pretrained(*bert, fixture("bert"));
  torch::NoGradGuard g;
  auto out = bert->bert->forward(ref["input_ids"], ref["attention_mask"], ref["token_type_ids"]);
  CHECK_THAT(out.last_hidden_state, AllClose(ref["last_hidden_state"], 1e-5, 0));
  CHECK_THAT(out.pooler_output, AllClose(ref["pooler_output"], 1e-5, 0));
  CHECK_THAT(bert->forward(ref["input_ids"], ref["attention_mask"], ref["token_type_ids"]), AllClose(ref["logits"], 1e-5, 0));

  // Padding never changes the real positions: row 1 alone, unpadded, gives the same states.
  auto alone = bert->bert->forward(ref["input_ids"].slice(0, 1, 2).slice(1, 0, 6), {},
                                   ref["token_type_ids"].slice(0, 1, 2).slice(1, 0, 6));
  CHECK_THAT(alone.last_hidden_state, AllClose(out.last_hidden_state.slice(0, 1, 2).slice(1, 0, 6), 1e-5, 0));
  CHECK_THAT(alone.last_hidden_state, AllClose(ref["row1_unpadded_last_hidden_state"], 1e-5, 0));
  // Changing a padded token's id changes nothing at the real positions.
  auto ids2 = ref["input_ids"].clone();
  ids2[1][7] = 42;
  auto out2 = bert->bert->forward(ids2, ref["attention_mask"], ref["token_type_ids"]);
  CHECK_THAT(out2.last_hidden_state.slice(0, 1, 2).slice(1, 0, 6),
             AllClose(out.last_hidden_state.slice(0, 1, 2).slice(1, 0, 6), 1e-6, 0));

  // The same checkpoint in the token-classification model: the pooler is unexpected there.
  M::BertForTokenClassification tok(cfg);
  tok->eval();
  CHECK_THROWS_WITH(peft::load_pretrained(*tok, fixture("bert")),
                    Catch::Contains("[peft.checkpoint]") && Catch::Contains("Unexpected (2") &&
                        Catch::Contains("bert.pooler.dense.weight") && Catch::Contains("nothing was loaded"));
  auto rep = peft::load_pretrained(*tok, fixture("bert"), peft::LoadOptions().strict(false));
  CHECK(rep.skipped == std::vector<std::string>{"bert.pooler.dense.bias", "bert.pooler.dense.weight"});
  CHECK_THAT(tok->forward(ref["input_ids"], ref["attention_mask"], ref["token_type_ids"]), AllClose(ref["token_logits"], 1e-5, 0));
}

TEST_CASE("LLaMA matches the independent reference: GQA, RoPE, tied head, llama3 scaling, padding, greedy", "[models][llama][reference]") {
  for (const std::string name : {"llama", "llama_tied"}) {
    DYNAMIC_SECTION(name) {
      auto ref = reference(name);
      auto cfg = M::LlamaConfig::from_file(fixture(name) + "/config.json");
      M::LlamaForCausalLM lm(cfg);
      lm->eval();
      auto rep = peft::load_pretrained(*lm, fixture(name));
      CHECK(rep.loaded == lm->parameters().size());
      CHECK(static_cast<bool>(lm->lm_head) == !cfg.tie_word_embeddings);
      torch::NoGradGuard g;
      CHECK_THAT(lm->forward(ref["input_ids"]), AllClose(ref["logits"], 1e-5, 0));
      // Left padding with mask-derived positions: compare the real positions.
      auto mask = ref["attention_mask"];
      auto pos = (mask.cumsum(1) - 1).clamp_min(0);
      auto padded = lm->forward(ref["input_ids"], mask, nullptr, pos);
      CHECK_THAT(padded[0], AllClose(ref["padded_logits"][0], 1e-5, 0));
      CHECK_THAT(padded[1].slice(0, 3), AllClose(ref["padded_logits"][1].slice(0, 3), 1e-5, 0));
      // Greedy generation with the KV cache reproduces full recomputation in the reference.
      auto o = M::GenerationOptions().max_new_tokens(6).eos_token_ids(std::vector<int64_t>{});
      CHECK(torch::equal(M::generate(*lm, ref["greedy_prompt"], o), ref["greedy_tokens"]));
    }
  }
}

TEST_CASE("causal attention: no token sees the future", "[models][llama][mask]") {
  torch::manual_seed(1);
  M::LlamaForCausalLM lm(tiny_llama());
  lm->eval();
  torch::NoGradGuard g;
  auto ids = torch::randint(3, 100, {2, 10});
  auto a = lm->forward(ids);
  auto ids2 = ids.clone();
  ids2.slice(1, 6).random_(3, 100);
  auto b = lm->forward(ids2);
  CHECK(torch::equal(a.slice(1, 0, 6), b.slice(1, 0, 6)));
  CHECK_FALSE(torch::allclose(a.slice(1, 6), b.slice(1, 6)));
  // The same through an explicit all-ones mask (the materialized mask path).
  CHECK_THAT(lm->forward(ids, torch::ones({2, 10}, torch::kLong)), AllClose(a, 1e-6, 0));
}

TEST_CASE("KV-cache decoding equals full recomputation", "[models][llama][cache]") {
  torch::manual_seed(2);
  auto cfg = tiny_llama();
  M::LlamaForCausalLM lm(cfg);
  lm->eval();
  torch::NoGradGuard g;
  auto ids = torch::randint(3, 100, {2, 9});
  auto full = lm->forward(ids);
  N::KVCache cache;
  auto first = lm->forward(ids.slice(1, 0, 5), {}, &cache);
  CHECK(cache.length() == 5);
  CHECK(cache.layers.size() == 2);
  CHECK(cache.layers[0].k.sizes() == std::vector<int64_t>{2, 2, 5, 8});  // [B, H_kv, S, D]
  CHECK_THAT(first, AllClose(full.slice(1, 0, 5), 1e-5, 0));
  for (int64_t t = 5; t < 9; ++t) {
    auto step = lm->forward(ids.slice(1, t, t + 1), {}, &cache);
    CHECK_THAT(step, AllClose(full.slice(1, t, t + 1), 1e-5, 0));
  }
  // Two tokens at once on top of a cache (bottom-right aligned causal mask).
  N::KVCache c2;
  lm->forward(ids.slice(1, 0, 6), {}, &c2);
  CHECK_THAT(lm->forward(ids.slice(1, 6, 9), {}, &c2), AllClose(full.slice(1, 6, 9), 1e-5, 0));
  // Sampling: reproducible with a seed, and eos stops rows.
  auto o = M::GenerationOptions().do_sample(true).top_k(10).top_p(0.9).temperature(0.8).seed(5).max_new_tokens(5)
               .eos_token_ids(std::vector<int64_t>{});
  auto s1 = M::generate(*lm, ids.slice(1, 0, 4), o), s2 = M::generate(*lm, ids.slice(1, 0, 4), o);
  CHECK(s1.sizes() == std::vector<int64_t>{2, 9});
  CHECK(torch::equal(s1, s2));
  auto greedy = M::generate(*lm, ids.slice(1, 0, 4), {});
  auto stop = M::GenerationOptions().eos_token_ids(std::vector<int64_t>{greedy[0][4].item<int64_t>()}).pad_token_id(1);
  auto stopped = M::generate(*lm, ids.slice(1, 0, 4), stop);
  CHECK(stopped[0][4].item<int64_t>() == greedy[0][4].item<int64_t>());
  if (stopped.size(1) > 5) CHECK(stopped[0][5].item<int64_t>() == 1);  // finished rows are padded
  stop.pad_token_id(-1);
  CHECK_THROWS_AS(M::generate(*lm, ids, stop), peft::ConfigError);
}

TEST_CASE("save_pretrained -> load_pretrained round trip, single file and shards", "[models][checkpoint]") {
  torch::manual_seed(3);
  TempDir dir;
  M::BertForSequenceClassification a(tiny_bert());
  a->eval();
  peft::save_pretrained(*a, dir / "one");
  CHECK(std::filesystem::exists(dir / "one/model.safetensors"));
  auto cfg = M::BertConfig::from_file(dir / "one/config.json");
  M::BertForSequenceClassification b(cfg);
  b->eval();
  peft::load_pretrained(*b, dir / "one");
  auto ids = torch::randint(1, 100, {2, 8});
  torch::NoGradGuard g;
  CHECK(torch::equal(a->forward(ids), b->forward(ids)));

  peft::save_pretrained(*a, dir / "one", peft::SaveOptions().max_shard_bytes(20000));
  CHECK_FALSE(std::filesystem::exists(dir / "one/model.safetensors"));  // replaced by the shards
  auto index = M::detail::read_json_file(dir / "one/model.safetensors.index.json");
  std::set<std::string> shard_files;
  for (const auto& [k, f] : index["weight_map"].items()) shard_files.insert(f.get<std::string>());
  CHECK(shard_files.size() > 2);
  M::BertForSequenceClassification c(tiny_bert());
  c->eval();
  auto rep = peft::load_pretrained(*c, dir / "one");
  CHECK(rep.files.size() == shard_files.size());
  CHECK(torch::equal(a->forward(ids), c->forward(ids)));
}

TEST_CASE("checkpoint problems are reported together and nothing loads", "[models][checkpoint][errors]") {
  torch::manual_seed(4);
  TempDir dir;
  M::LlamaForCausalLM src(tiny_llama());
  peft::save_pretrained(*src, dir / "ok");
  auto tensors = peft::load_safetensors(dir / "ok/model.safetensors").tensors;
  torch::OrderedDict<std::string, torch::Tensor> bad;
  for (const auto& item : tensors) {
    if (item.key() == "model.norm.weight") continue;                                                  // missing
    if (item.key() == "lm_head.weight") bad.insert(item.key(), torch::zeros({7, 32}));                // mis-shaped
    else bad.insert(item.key(), item.value());
  }
  bad.insert("model.layers.0.extra.weight", torch::zeros({2}));                                      // unexpected
  peft::save_safetensors(dir / "bad.safetensors", bad);

  M::LlamaForCausalLM dst(tiny_llama());
  auto before = dst->model->embed_tokens->weight.clone();
  try {
    peft::load_pretrained(*dst, dir / "bad.safetensors");
    FAIL("expected a CheckpointError");
  } catch (const peft::CheckpointError& e) {
    const std::string m = e.what();
    CHECK_THAT(m, Catch::Contains("Missing (1): 'model.norm.weight'"));
    CHECK_THAT(m, Catch::Contains("Unexpected (1") && Catch::Contains("'model.layers.0.extra.weight'"));
    CHECK_THAT(m, Catch::Contains("'lm_head.weight' is [7, 32] in the checkpoint, [100, 32] in the model"));
  }
  CHECK(torch::equal(before, dst->model->embed_tokens->weight));  // nothing loaded
  CHECK_THROWS_AS(peft::load_pretrained(*dst, dir / "nowhere"), peft::IoError);
  CHECK_THROWS_WITH(peft::load_pretrained(*dst, dir.path().string()), Catch::Contains("neither model.safetensors"));

  // BF16 / F16 checkpoints convert to the model's dtype; a bare LlamaModel file loads into the LM's
  // `model.` keys only if the head is present, else the head is reported missing.
  torch::OrderedDict<std::string, torch::Tensor> half;
  for (const auto& item : tensors)
    half.insert(item.key(), item.value().to(item.key().find("norm") != std::string::npos ? torch::kFloat16 : torch::kBFloat16));
  peft::save_safetensors(dir / "half.safetensors", half);
  peft::load_pretrained(*dst, dir / "half.safetensors");
  CHECK_THAT(dst->model->embed_tokens->weight, AllClose(src->model->embed_tokens->weight, 1e-2, 1e-2));
  CHECK(dst->model->embed_tokens->weight.dtype() == torch::kFloat);
}

TEST_CASE("checkpoint key conventions: base-model prefix, new task head, gamma/beta", "[models][checkpoint]") {
  torch::manual_seed(5);
  TempDir dir;
  M::BertModel base(tiny_bert());
  base->eval();
  peft::save_pretrained(*base, dir / "base");  // keys without "bert."
  // Old-style names: LayerNorm.gamma / beta.
  auto t = peft::load_safetensors(dir / "base/model.safetensors").tensors;
  torch::OrderedDict<std::string, torch::Tensor> old;
  for (const auto& item : t) {
    std::string k = item.key();
    if (k.size() > 17 && k.substr(k.size() - 17) == "LayerNorm.weight") k = k.substr(0, k.size() - 6) + "gamma";
    if (k.size() > 15 && k.substr(k.size() - 15) == "LayerNorm.bias") k = k.substr(0, k.size() - 4) + "beta";
    old.insert(k, item.value());
  }
  peft::save_safetensors(dir / "old.safetensors", old);

  M::BertForSequenceClassification cls(tiny_bert());
  cls->eval();
  auto head_before = cls->classifier->weight.clone();
  auto rep = peft::load_pretrained(*cls, dir / "old.safetensors");
  CHECK(rep.key_prefix_change == "added 'bert.'");
  CHECK(rep.new_head == std::vector<std::string>{"classifier.bias", "classifier.weight"});
  CHECK(torch::equal(cls->classifier->weight, head_before));
  auto ids = torch::randint(1, 100, {2, 6});
  torch::NoGradGuard g;
  CHECK(torch::equal(cls->bert->forward(ids).pooler_output, base->forward(ids).pooler_output));
  CHECK_THROWS_WITH(peft::load_pretrained(*cls, dir / "old.safetensors", peft::LoadOptions().allow_new_head(false)), Catch::Contains("'classifier.weight'"));

  // The other way: a head model's checkpoint into the bare model strips the prefix (head unexpected).
  peft::save_pretrained(*cls, dir / "cls");
  M::BertModel bare(tiny_bert(), true, false);
  bare->eval();
  auto r2 = peft::load_pretrained(*bare, dir / "cls", peft::LoadOptions().strict(false));
  CHECK(r2.key_prefix_change == "removed 'bert.'");
  CHECK(r2.skipped.size() == 2);
  CHECK(torch::equal(bare->forward(ids).pooler_output, cls->bert->forward(ids).pooler_output));
}

TEST_CASE("config.json: unknown keys ignored, missing required keys named", "[models][config]") {
  nlohmann::ordered_json j = {{"hidden_size", 32}, {"num_hidden_layers", 2}, {"intermediate_size", 64}, {"vocab_size", 10}};
  CHECK_THROWS_WITH(M::LlamaConfig::from_json(j, "cfg.json"),
                    Catch::Contains("[peft.config]") && Catch::Contains("'cfg.json'") &&
                        Catch::Contains("required field 'num_attention_heads' is missing"));
  j["num_attention_heads"] = 4;
  j["some_future_option"] = {1, 2};
  auto c = M::LlamaConfig::from_json(j);
  CHECK(c.num_key_value_heads == 4);
  CHECK(c.head_dim == 8);
  j["num_key_value_heads"] = 3;
  CHECK_THROWS_WITH(M::LlamaConfig::from_json(j), Catch::Contains("not a multiple of num_key_value_heads"));
  j["num_key_value_heads"] = 2;
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  CHECK_THROWS_WITH(M::LlamaConfig::from_json(j), Catch::Contains("rope_scaling type 'yarn'"));
  j["hidden_act"] = "mish";
  j.erase("rope_scaling");
  CHECK_THROWS_WITH(M::LlamaConfig::from_json(j), Catch::Contains("unsupported activation 'mish'"));
  CHECK_THROWS_WITH(M::ViTConfig::from_json({{"hidden_size", "big"}}, "v.json"), Catch::Contains("field 'hidden_size' must be an integer, received \"big\""));
  // to_json -> from_json round trip.
  auto v = M::ViTConfig::from_json(tiny_vit().to_json());
  CHECK(v.num_labels == 10);
  CHECK(v.image_size == 28);
}

TEST_CASE("LoRA on BERT query/value trains, changes the output, and only LoRA gets gradients", "[models][bert][lora]") {
  torch::manual_seed(6);
  auto cfg = tiny_bert();
  cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = 0.0;
  M::BertForSequenceClassification bert(cfg);
  auto r = peft::attach(*bert, peft::LoraConfig().r(4).lora_alpha(8).target_modules(std::vector<std::string>{"query", "value"})
                                   .modules_to_save({"classifier"}));
  CHECK(r.targeted.size() == 4);
  CHECK(r.targeted[0] == "bert.encoder.layer.0.attention.self.query");
  auto ids = torch::randint(1, 100, {8, 10});
  auto labels = torch::randint(0, 3, {8});
  torch::Tensor before;
  {
    torch::NoGradGuard g;
    before = bert->forward(ids);
  }
  std::vector<torch::Tensor> trainable;
  for (auto& p : bert->parameters())
    if (p.requires_grad()) trainable.push_back(p);
  CHECK(trainable.size() == 4 * 2 + 2);
  torch::optim::Adam opt(trainable, torch::optim::AdamOptions(1e-2));
  float first_loss = 0, last_loss = 0;
  for (int step = 0; step < 80; ++step) {
    opt.zero_grad();
    auto loss = torch::nn::functional::cross_entropy(bert->forward(ids), labels);
    loss.backward();
    if (step == 0) {
      for (const auto& p : bert->named_parameters()) {
        const bool is_adapter = p.key().find("lora_") != std::string::npos || p.key().rfind("classifier.", 0) == 0;
        INFO(p.key());
        CHECK(p.value().grad().defined() == is_adapter);
      }
      first_loss = loss.item<float>();
    }
    opt.step();
    last_loss = loss.item<float>();
  }
  CHECK(last_loss < 0.5f * first_loss);
  // With LoRA disabled the encoder is the base model again (the classifier trained in place).
  torch::NoGradGuard g;
  auto pooled_lora = bert->bert->forward(ids).pooler_output;
  {
    peft::DisableAdapters off(*bert);
    CHECK_FALSE(torch::allclose(bert->bert->forward(ids).pooler_output, pooled_lora));
  }
  peft::merge_adapter(*bert);
  CHECK_THAT(bert->bert->forward(ids).pooler_output, AllClose(pooled_lora, 1e-5, 1e-5));
  (void)before;
}

TEST_CASE("attention, FFN and block are tunable ops at input, parallel and output placement", "[models][composite]") {
  torch::manual_seed(7);
  M::ViTForImageClassification vit(tiny_vit());
  vit->eval();
  torch::NoGradGuard g;
  auto px = torch::randn({2, 1, 28, 28});
  auto& layer = *vit->vit->encoder->layer->ptr<M::ViTLayerImpl>(1);
  auto x = vit->vit->encoder->layer->ptr<M::ViTLayerImpl>(0)->forward(vit->vit->embeddings->forward(px));
  auto base = layer.forward(x);

  // Output placement on the FFN site: U(ffn(h)) added to the residual. By hand:
  auto a = x + layer.attention->forward(layer.layernorm_before(x));
  auto ffn = [&](const torch::Tensor& h) { return layer.output->dense(torch::gelu(layer.intermediate->dense(h))); };
  layer.mlp->add_adapter("s", std::make_shared<ScaleImpl>(peft::Placement::output, 3.0));
  layer.mlp->set_active_adapters({"s"});
  CHECK_THAT(layer.forward(x), AllClose(a + 3.0 * ffn(layer.layernorm_after(a)), 1e-5, 1e-5));
  layer.mlp->delete_adapter("s");
  CHECK(torch::equal(layer.forward(x), base));

  // Parallel placement on attention: attn(h) + 0.5 h.
  layer.attention->add_adapter("p", std::make_shared<ScaleImpl>(peft::Placement::parallel, 0.5));
  layer.attention->set_active_adapters({"p"});
  auto hb = layer.layernorm_before(x);
  auto a2 = x + layer.attention->forward(hb);
  layer.attention->enable_adapters(false);
  auto attn_plain = layer.attention->forward(hb);
  layer.attention->enable_adapters(true);
  CHECK_THAT(a2, AllClose(x + attn_plain + 0.5 * hb, 1e-5, 1e-5));
  layer.attention->delete_adapter("p");

  // Input placement on the whole block: block(2x).
  layer.add_adapter("i", std::make_shared<ScaleImpl>(peft::Placement::input, 2.0));
  layer.set_active_adapters({"i"});
  auto blk = layer.forward(x);
  layer.enable_adapters(false);
  CHECK_THAT(blk, AllClose(layer.forward(2 * x), 1e-6, 0));
  layer.enable_adapters(true);
  layer.delete_adapter("i");

  // Weight tuners cannot attach to a composite op; target_modules reaches composites by name.
  CHECK_THROWS_AS(layer.add_adapter("w", std::make_shared<ScaleImpl>(peft::Placement::weight)), peft::StateError);
  auto slots = peft::tunable_slots(*vit);
  std::map<std::string, std::string> kinds;
  for (const auto& s : slots) kinds[s.name] = s.slot->op_kind();
  CHECK(kinds["vit.encoder.layer.1"] == "Block");
  CHECK(kinds["vit.encoder.layer.1.attention"] == "Attention");
  CHECK(kinds["vit.encoder.layer.1.mlp"] == "FFN");
  CHECK(kinds["vit.embeddings"] == "Embeddings");
  CHECK(kinds["vit.encoder.layer.1.attention.attention.query"] == "Linear");
  // LoRA cannot adapt a composite: a clear MatchError.
  CHECK_THROWS_AS(peft::attach(*vit, peft::LoraConfig().target_modules(std::vector<std::string>{"mlp"})), peft::MatchError);
}

TEST_CASE("attention prefixes from a tuner: every query sees them, masks extend", "[models][composite][prefix]") {
  torch::manual_seed(8);
  auto opts = N::MultiHeadAttentionOptions(16, 4).num_kv_heads(2);
  N::MultiHeadAttention attn(opts);
  attn->eval();
  torch::NoGradGuard g;
  auto x = torch::randn({2, 5, 16});
  auto pk = torch::randn({1, 2, 3, 4}), pv = torch::randn({1, 2, 3, 4});
  attn->add_adapter("prefix", std::make_shared<FixedPrefixImpl>(pk, pv));
  attn->set_active_adapters({"prefix"});
  auto pad = torch::ones({2, 5}, torch::kLong);
  pad[1][4] = 0;
  N::AttentionInputs in;
  in.mask = N::make_attention_mask(pad, 5, 0, true, x);
  auto y = attn->forward(x, in);

  // By hand: causal + padding over the real keys, prefix always visible, GQA by repeating heads.
  auto q = attn->q_proj(x).view({2, 5, 4, 4}).transpose(1, 2);
  auto k = torch::cat({pk.expand({2, -1, -1, -1}), attn->k_proj(x).view({2, 5, 2, 4}).transpose(1, 2)}, 2).repeat_interleave(2, 1);
  auto v = torch::cat({pv.expand({2, -1, -1, -1}), attn->v_proj(x).view({2, 5, 2, 4}).transpose(1, 2)}, 2).repeat_interleave(2, 1);
  auto allowed = torch::ones({2, 1, 5, 8}, torch::kBool);
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t i = 0; i < 5; ++i)
      for (int64_t j = 0; j < 5; ++j)
        if (j > i || (b == 1 && j == 4)) allowed[b][0][i][3 + j] = false;
  auto scores = torch::matmul(q, k.transpose(-1, -2)) / 2.0;
  scores = scores.masked_fill(allowed.logical_not(), -1e30);
  auto expect = attn->o_proj(torch::matmul(scores.softmax(-1), v).transpose(1, 2).reshape({2, 5, 16}));
  CHECK_THAT(y, AllClose(expect, 1e-5, 1e-5));
  // The same with the causal flag instead of a materialized mask (no padding).
  N::AttentionInputs causal;
  causal.causal = true;
  auto yc = attn->forward(x, causal);
  CHECK_THAT(yc[0], AllClose(expect[0], 1e-5, 1e-5));
  // Disabled: plain attention.
  attn->enable_adapters(false);
  CHECK_FALSE(torch::allclose(attn->forward(x, causal), yc));
}

TEST_CASE("the generic block: pre-norm and post-norm against the formula, clone keeps adapters", "[models][block]") {
  torch::manual_seed(9);
  for (bool pre : {true, false}) {
    N::TransformerBlock blk(N::TransformerBlockOptions(16, 2, 32).pre_norm(pre));
    blk->eval();
    torch::NoGradGuard g;
    auto x = torch::randn({2, 4, 16});
    auto ln1 = blk->input_layernorm.get<peft::LayerNorm>(), ln2 = blk->post_attention_layernorm.get<peft::LayerNorm>();
    auto mlp = blk->mlp.get<N::Mlp>();
    auto ffn = [&](const torch::Tensor& h) { return mlp->fc2(torch::gelu(mlp->fc1(h))); };
    torch::Tensor expect;
    if (pre) {
      auto r = x + blk->self_attn->forward(ln1->forward(x));
      expect = r + ffn(ln2->forward(r));
    } else {
      auto r = ln1->forward(x + blk->self_attn->forward(x));
      expect = ln2->forward(r + ffn(r));
    }
    CHECK_THAT(blk->forward(x), AllClose(expect, 1e-5, 1e-5));
  }
  N::TransformerBlock blk(N::TransformerBlockOptions(16, 2, 32).mlp(N::MlpKind::gated).norm(N::NormKind::rms_norm));
  peft::attach(*blk, peft::LoraConfig().r(2).init_lora_weights("gaussian").target_modules(std::vector<std::string>{"q_proj", "down_proj"}));
  {
    torch::NoGradGuard g;
    for (auto& p : blk->parameters())
      if (p.requires_grad()) p.normal_();
  }
  auto copy = std::dynamic_pointer_cast<N::TransformerBlockImpl>(blk->clone());
  auto x = torch::randn({2, 4, 16});
  CHECK(torch::equal(copy->forward(x), blk->forward(x)));
  CHECK(copy->self_attn->q_proj->adapter("default") != nullptr);
}

TEST_CASE("RMSNorm slot computes LLaMA's formula", "[models][norm]") {
  torch::manual_seed(10);
  peft::RMSNorm n(peft::RMSNormOptions(8).eps(1e-6));
  {
    torch::NoGradGuard g;
    n->weight.normal_();
  }
  auto x = torch::randn({3, 8});
  auto expect = n->weight * x / torch::sqrt(x.pow(2).mean(-1, true) + 1e-6);
  CHECK_THAT(n(x), AllClose(expect, 1e-6, 1e-5));
  n->to(torch::kBFloat16);
  CHECK(n(x.to(torch::kBFloat16)).dtype() == torch::kBFloat16);
}

TEST_CASE("per-batch side information through BatchScope", "[models][context]") {
  CHECK_FALSE(peft::batch_info("x").defined());
  auto a = torch::ones({2}), b = torch::zeros({3});
  {
    peft::BatchScope outer({{"x", a}, {"y", a}});
    CHECK(peft::batch_info("x").sizes() == std::vector<int64_t>{2});
    {
      peft::BatchScope inner("x", b);
      CHECK(peft::batch_info("x").sizes() == std::vector<int64_t>{3});
      CHECK(peft::batch_info("y").defined());
    }
    CHECK(peft::batch_info("x").sizes() == std::vector<int64_t>{2});
  }
  CHECK_FALSE(peft::batch_info("y").defined());
  // BERT publishes its attention mask to tuners during forward.
  struct SpyImpl : ScaleImpl {
    SpyImpl() : ScaleImpl(peft::Placement::input, 1.0) {}
    torch::Tensor seen;
    torch::Tensor input(const torch::Tensor& x) override {
      seen = peft::batch_info(peft::keys::attention_mask);
      return x;
    }
  };
  M::BertModel bert(tiny_bert());
  auto spy = std::make_shared<SpyImpl>();
  bert->encoder->layer->ptr<M::BertLayerImpl>(0)->add_adapter("spy", spy);
  bert->encoder->layer->ptr<M::BertLayerImpl>(0)->set_active_adapters({"spy"});
  auto mask = torch::ones({1, 4}, torch::kLong);
  bert->forward(torch::randint(1, 100, {1, 4}), mask);
  CHECK(spy->seen.defined());
  CHECK(torch::equal(spy->seen, mask));
}

TEST_CASE("attention kernels: the math path and scaled_dot_product_attention agree", "[models][attention][sdpa]") {
  if (!N::has_sdpa()) {
    WARN("LibTorch " << peft::detail::torch_version() << " has no scaled_dot_product_attention; only the math path runs");
    CHECK_THROWS_AS([] {
      N::attention_backend() = N::AttentionBackend::sdpa;
      struct Reset { ~Reset() { N::attention_backend() = N::AttentionBackend::automatic; } } r;
      auto q = torch::randn({1, 1, 2, 4});
      return N::functional::attend(q, q, q, {}, false, 0.0);
    }(), peft::StateError);
    return;
  }
  torch::manual_seed(11);
  M::LlamaForCausalLM lm(tiny_llama());
  lm->eval();
  torch::NoGradGuard g;
  auto ids = torch::randint(3, 100, {2, 7});
  auto mask = torch::ones({2, 7}, torch::kLong);
  mask[1][0] = 0;
  N::attention_backend() = N::AttentionBackend::math;
  auto m1 = lm->forward(ids), m2 = lm->forward(ids, mask);
  N::attention_backend() = N::AttentionBackend::sdpa;
  auto s1 = lm->forward(ids), s2 = lm->forward(ids, mask);
  N::attention_backend() = N::AttentionBackend::automatic;
  CHECK_THAT(s1, AllClose(m1, 1e-5, 0));
  CHECK_THAT(s2, AllClose(m2, 1e-5, 0));
}

TEST_CASE("bf16: the same model runs in another dtype", "[models][dtype]") {
  torch::manual_seed(12);
  M::LlamaForCausalLM lm(tiny_llama());
  lm->eval();
  torch::NoGradGuard g;
  auto ids = torch::randint(3, 100, {2, 6});
  auto ref = lm->forward(ids);
  auto lm16 = std::dynamic_pointer_cast<M::LlamaForCausalLMImpl>(lm->clone());
  lm16->to(torch::kBFloat16);
  auto out16 = lm16->forward(ids, torch::ones({2, 6}, torch::kLong));
  CHECK(out16.dtype() == torch::kBFloat16);
  CHECK_THAT(out16.to(torch::kFloat), AllClose(ref, 0.15, 0.05));
}  // the CUDA variants are in cuda_test.cpp

TEST_CASE("clone keeps which parameters train: a frozen base stays frozen in every zoo model", "[models][clone]") {
  // Found on the GPU (cuda_test.cpp): a cloned ViT had its cls_token and position embeddings trainable.
  auto check = [](torch::nn::Module& m, const char* name) {
    INFO(name);
    auto copy = m.clone();
    auto orig = m.named_parameters();
    auto cloned = copy->named_parameters();
    REQUIRE(cloned.size() == orig.size());
    int64_t trainable = 0;
    for (const auto& p : orig) {
      INFO(p.key());
      REQUIRE(cloned.contains(p.key()));
      CHECK(cloned[p.key()].requires_grad() == p.value().requires_grad());
      CHECK(torch::equal(cloned[p.key()], p.value()));
      trainable += p.value().requires_grad() ? 1 : 0;
    }
    CHECK(trainable > 0);
    CHECK(trainable < static_cast<int64_t>(orig.size()));
  };
  M::ViTForImageClassification vit(tiny_vit());
  peft::attach(vit, peft::LoraConfig().r(2).target_modules({"query", "value"}).modules_to_save({"classifier"}));
  check(*vit, "ViT");
  M::BertForSequenceClassification bert(tiny_bert());
  peft::attach(bert, peft::PrefixTuningConfig().num_virtual_tokens(2));
  check(*bert, "BERT");
  M::LlamaForCausalLM lm(tiny_llama());
  peft::attach(lm, peft::IA3Config().target_modules({"k_proj", "v_proj", "down_proj"}).feedforward_modules({"down_proj"}));
  check(*lm, "LLaMA");
}

}  // namespace peft_tests_models
