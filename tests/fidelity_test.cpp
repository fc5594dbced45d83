// Fidelity to the papers' official code: CapaBoost's live parameters, per-copy dropout and N:M masks;
// PASTA's special tokens taken from the model, never BERT's by default, and its element-wise dropout;
// RLRR's exact unmerge on narrow layers and its zero head; VPT's Xavier bound; the recipes.

#include "support/method_battery.hpp"

#include <fstream>
#include <set>

// Everything below lives in this file's own namespace, so that the test sources can be compiled
// together (CMake's unity build) without their helpers meeting.
namespace peft_tests_fidelity {

using namespace peft_test;
namespace M = peft::models;

namespace {

template <class T>
std::vector<T*> tuners_of(torch::nn::Module& model, const std::string& adapter = "default") {
  std::vector<T*> out;
  for (const auto& s : peft::tunable_slots(model))
    if (auto* t = dynamic_cast<T*>(s.slot->adapter(adapter))) out.push_back(t);
  return out;
}

/// One Linear(in, out) under a name LoRA can target.
struct OneLinearImpl : torch::nn::Cloneable<OneLinearImpl> {
  int64_t in, out;
  peft::Linear proj{nullptr};
  OneLinearImpl(int64_t in, int64_t out) : in(in), out(out) { reset(); }
  void reset() override { proj = register_module("proj", peft::Linear(in, out)); }
  torch::Tensor forward(const torch::Tensor& x) { return proj(x); }
};
TORCH_MODULE(OneLinear);

}  // namespace

TEST_CASE("CapaBoost counts, keeps at zero and saves only its live entries", "[fidelity][capaboost]") {
  auto vit = make_vit();
  const auto lora = peft::LoraConfig().r(8).target_modules({"query", "value"});
  peft::attach(*vit, peft::CapaBoostConfig(lora).num_copies(2).density(0.5).seed(3));
  auto tuners = tuners_of<peft::CapaBoostLoraImpl>(*vit);
  REQUIRE(tuners.size() == 4);
  // Live entries from the masks themselves: under at least one of the d copies.
  int64_t live = 0, dense = 0;
  for (auto* t : tuners) {
    live += (t->mask_A.sum(0) > 0).sum().item<int64_t>() + (t->mask_B.sum(0) > 0).sum().item<int64_t>();
    dense += t->lora_A.numel() + t->lora_B.numel();
  }
  CHECK(dense == 4 * 8 * (32 + 32));
  // The share follows 1 - (1 - rho)^d = 0.75 (exact counts, random positions: a few percent around it).
  CHECK(std::abs(static_cast<double>(live) / static_cast<double>(dense) - 0.75) < 0.03);
  CHECK(peft::count_parameters(*vit).trainable == live);  // no head here: only the live entries train
  CHECK(peft::count_parameters(*vit).trainable < dense);
  CHECK_THAT(peft::trainable_report(*vit), Catch::Contains(peft::detail::thousands(live)));

  // Dead entries start at zero and stay there through AdamW with weight decay; their gradient is 0.
  auto dead_A = [](peft::CapaBoostLoraImpl* t) { return t->mask_A.sum(0) == 0; };
  auto dead_B = [](peft::CapaBoostLoraImpl* t) { return t->mask_B.sum(0) == 0; };
  for (auto* t : tuners) {
    CHECK(t->lora_A.masked_select(dead_A(t)).abs().max().item<float>() == 0.0f);
    CHECK(t->lora_A.masked_select(~dead_A(t)).abs().max().item<float>() > 0.0f);
  }
  vit->train();
  auto opt = peft::train::make_adamw(*vit, 1e-2, 0.1);
  auto px = torch::randn({4, 1, 28, 28});
  auto labels = torch::tensor({1, 2, 3, 4}, torch::kLong);
  for (int step = 0; step < 3; ++step) {
    opt.zero_grad();
    torch::nn::functional::cross_entropy(vit->forward(px), labels).backward();
    for (auto* t : tuners) {
      CHECK(t->lora_A.grad().masked_select(dead_A(t)).abs().max().item<float>() == 0.0f);
      CHECK(t->lora_B.grad().masked_select(dead_B(t)).abs().max().item<float>() == 0.0f);
    }
    opt.step();
  }
  for (auto* t : tuners) {
    CHECK(t->lora_A.masked_select(dead_A(t)).abs().max().item<float>() == 0.0f);
    CHECK(t->lora_B.masked_select(dead_B(t)).abs().max().item<float>() == 0.0f);
    CHECK(t->lora_B.masked_select(~dead_B(t)).abs().max().item<float>() > 0.0f);  // it did train
  }
  // The file holds zeros there too, and the reloaded adapter counts the same.
  TempDir dir;
  peft::save_adapter(*vit, dir.path());
  auto file = peft::load_safetensors((std::filesystem::path(dir.path()) / "adapter_model.safetensors").string());
  const auto a_key = "base_model.model.vit.encoder.layer.0.attention.attention.query.lora_A.weight";
  REQUIRE(file.tensors.contains(a_key));
  auto* t0 = tuners_of<peft::CapaBoostLoraImpl>(*vit).front();
  CHECK(file.tensors[a_key].masked_select(dead_A(t0)).abs().max().item<float>() == 0.0f);
  auto fresh = make_vit();
  peft::load_adapter(*fresh, dir.path(), "default", true);
  CHECK(peft::count_parameters(*fresh).trainable == live);
}

TEST_CASE("CapaBoost: a fresh dropout mask per copy, N:M structured masks", "[fidelity][capaboost]") {
  // One input feature, two copies under full masks (density 1): copy i adds s·b·a·m_i·x/(1-p). A
  // dropout mask shared by the copies gives 0 or 2 units per row; independent ones also give 1.
  torch::manual_seed(0);
  OneLinear one(1, 1);
  const double p = 0.5;
  peft::attach(one, peft::CapaBoostConfig(peft::LoraConfig().r(1).lora_alpha(1).lora_dropout(p).target_modules({"proj"}))
                        .num_copies(2)
                        .density(1.0));
  auto* t = tuners_of<peft::CapaBoostLoraImpl>(*one).front();
  {
    torch::NoGradGuard g;
    t->lora_A.fill_(1.0), t->lora_B.fill_(1.0);
  }
  one->train();
  auto x = torch::ones({2000, 1});
  torch::Tensor units;
  {
    torch::NoGradGuard g;
    auto base = torch::linear(x, one->proj->weight, one->proj->bias);
    units = ((one->forward(x) - base) * (1 - p)).round().to(torch::kLong);  // m_1 + m_2 per row
  }
  std::set<int64_t> seen;
  for (int64_t i = 0; i < units.size(0); ++i) seen.insert(units[i][0].item<int64_t>());
  CHECK(seen == std::set<int64_t>{0, 1, 2});
  // Each copy keeps about 1 - p of the rows: the mean of m_1 + m_2 is 2(1 - p) = 1.
  CHECK(std::abs(units.to(torch::kDouble).mean().item<double>() - 1.0) < 0.1);

  // 2:4: in every group of 4 consecutive entries of a row exactly 2 ones, copies drawn independently.
  auto vit = make_vit();
  peft::attach(*vit, peft::CapaBoostConfig(peft::LoraConfig().r(8).target_modules({"query", "value"}))
                         .num_copies(2)
                         .mask_type("2:4")
                         .seed(5));
  for (auto* c : tuners_of<peft::CapaBoostLoraImpl>(*vit)) {
    for (const auto& m : {c->mask_A, c->mask_B}) {
      auto groups = m.reshape({2, -1, 4}).sum(-1);
      CHECK(torch::all(groups == 2).item<bool>());
      CHECK_FALSE(torch::equal(m[0], m[1]));
    }
  }
  // Saved and reloaded with the same masks (the mask type travels in the config).
  TempDir dir;
  peft::save_adapter(*vit, dir.path());
  CHECK_THAT(read_file((std::filesystem::path(dir.path()) / "adapter_config.json").string()), Catch::Contains("\"2:4\""));
  auto fresh = make_vit();
  peft::load_adapter(*fresh, dir.path());
  auto a = tuners_of<peft::CapaBoostLoraImpl>(*vit), b = tuners_of<peft::CapaBoostLoraImpl>(*fresh);
  REQUIRE(a.size() == b.size());
  for (std::size_t i = 0; i < a.size(); ++i) CHECK(torch::equal(a[i]->mask_A, b[i]->mask_A));
  // Bad forms are refused with the reason.
  auto bad = [](const std::string& type) {
    return peft::CapaBoostConfig(peft::LoraConfig().target_modules({"query"})).mask_type(type);
  };
  CHECK_THROWS_WITH(bad("3:2").validate(), Catch::Contains("N:M"));
  CHECK_THROWS_WITH(bad("half").validate(), Catch::Contains("N:M"));
  CHECK_THROWS_AS(bad("2:").validate(), peft::ConfigError);
  auto narrow = make_vit();  // r = 6 is not a multiple of 4: B's rows cannot be grouped
  CHECK_THROWS_WITH(peft::attach(*narrow, peft::CapaBoostConfig(peft::LoraConfig().r(6).target_modules({"query"})).mask_type("2:4")),
                    Catch::Contains("multiple of 4"));
}

TEST_CASE("PASTA takes the special tokens from the model, never BERT's ids by default", "[fidelity][pasta]") {
  torch::NoGradGuard g;
  // LLaMA: bos and eos are the special tokens; 101 and 102 are ordinary words there.
  auto cfg = M::LlamaConfig::tiny(200, 32, 2, 4, 2, 64);
  cfg.bos_token_id = 1, cfg.eos_token_ids = {2};
  torch::manual_seed(4);
  M::LlamaForCausalLM lm(cfg);
  lm->eval();
  peft::attach(lm, peft::PastaConfig());  // M from the model: 2 on LLaMA
  randomize_adapters(*lm);
  auto* table = tuners_of<peft::PastaImpl>(*lm).front();
  CHECK(table->pasta_embedding.size(0) == 2);
  auto ids = torch::tensor({{1, 101, 102, 7, 101, 2}}, torch::kLong);
  auto got = lm->forward(ids);
  {  // the same as naming positions 0 (bos) and 5 (eos) by hand
    peft::BatchScope scope(peft::keys::special_token_index, torch::tensor({{0, -1, -1, -1, -1, 1}}, torch::kLong));
    CHECK(torch::equal(lm->forward(ids), got));
  }
  {  // and not what BERT's ids would mark
    peft::BatchScope scope(peft::keys::special_token_index, torch::tensor({{-1, 0, 1, -1, -1, -1}}, torch::kLong));
    CHECK_FALSE(torch::allclose(lm->forward(ids), got));
  }
  {  // Padding with eos (a common LLaMA setup): padded positions are not special.
    auto padded = torch::tensor({{1, 5, 6, 2, 2, 2}}, torch::kLong);
    auto mask = torch::tensor({{1, 1, 1, 1, 0, 0}}, torch::kLong);
    torch::Tensor out;
    REQUIRE_NOTHROW(out = lm->forward(padded, mask));
    peft::BatchScope scope(peft::keys::special_token_index, torch::tensor({{0, -1, -1, 1, -1, -1}}, torch::kLong));
    CHECK(torch::equal(lm->forward(padded, mask), out));
  }
  // Explicit ids win over the model's.
  M::LlamaForCausalLM lm2(cfg);
  lm2->eval();
  peft::attach(lm2, peft::PastaConfig().num_special_tokens(3).cls_token_id(101).sep_token_id(102));
  randomize_adapters(*lm2);
  auto got2 = lm2->forward(ids);
  {
    peft::BatchScope scope(peft::keys::special_token_index, torch::tensor({{-1, 0, 1, -1, 2, -1}}, torch::kLong));
    CHECK(torch::equal(lm2->forward(ids), got2));
  }

  // BERT whose config names no special ids: refused at the forward, with the way out.
  auto bare = tiny_bert();
  bare.cls_token_id.reset(), bare.sep_token_id.reset();
  M::BertModel unknown(bare, false);
  unknown->eval();
  auto r = peft::attach(unknown, peft::PastaConfig());
  CHECK(tuners_of<peft::PastaImpl>(*unknown).front()->pasta_embedding.size(0) == 3);  // BERT: [CLS] + 2 [SEP]
  auto bert_ids = torch::tensor({{101, 7, 8, 102}}, torch::kLong);
  CHECK_THROWS_WITH(unknown->forward(bert_ids), Catch::Contains("special token ids are unknown") && Catch::Contains("vocab.txt"));
  M::BertModel told(bare, false);
  told->eval();
  peft::attach(told, peft::PastaConfig().cls_token_id(101).sep_token_id(102));
  CHECK_NOTHROW(told->forward(bert_ids));

  // ViT: the CLS token alone (M = 1 from the model); asking for more without positions is refused.
  auto vit = make_vit();
  peft::attach(*vit, peft::PastaConfig().modules_to_save({"classifier"}));
  CHECK(peft::count_parameters(*vit).trainable == 2 * 1 * 32 + 330);
  CHECK_NOTHROW(vit->forward(torch::randn({2, 1, 28, 28})));
  auto vit3 = make_vit();
  peft::attach(*vit3, peft::PastaConfig().num_special_tokens(3));
  CHECK_THROWS_WITH(vit3->forward(torch::randn({2, 1, 28, 28})), Catch::Contains("only position 0"));
  // A module that declares no count needs an explicit M.
  ToyModel toy;
  CHECK_THROWS_AS(peft::attach(toy, peft::PastaConfig().target_modules({"layers.0.attn.q"})), peft::MatchError);
}

TEST_CASE("BERT's special ids come from config.json or the vocab.txt beside it", "[fidelity][pasta][config]") {
  TempDir dir;
  auto cfg = tiny_bert().to_json();
  cfg.erase("cls_token_id"), cfg.erase("sep_token_id");
  const auto path = (std::filesystem::path(dir.path()) / "config.json").string();
  write_file(path, cfg.dump());
  CHECK_FALSE(M::BertConfig::from_file(path).cls_token_id.has_value());
  write_file((std::filesystem::path(dir.path()) / "vocab.txt").string(), "[PAD]\n[unused0]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\n");
  auto c = M::BertConfig::from_file(path);
  CHECK(c.cls_token_id == 3);
  CHECK(c.sep_token_id == 4);
  // config.json wins; RoBERTa's <s> / </s> are its bos / eos.
  cfg["cls_token_id"] = 9;
  CHECK(M::BertConfig::from_json(cfg).cls_token_id == 9);
  auto roberta = tiny_bert().to_json();
  roberta.erase("cls_token_id"), roberta.erase("sep_token_id");
  roberta["model_type"] = "roberta", roberta["bos_token_id"] = 0, roberta["eos_token_id"] = 2;
  auto rc = M::BertConfig::from_json(roberta);
  CHECK(rc.cls_token_id == 0);
  CHECK(rc.sep_token_id == 2);
}

TEST_CASE("PASTA's dropout is element-wise on the added tensor, as the official code", "[fidelity][pasta]") {
  M::BertModel bert(tiny_bert(), false);
  peft::attach(bert, peft::PastaConfig());  // pasta_dropout 0.1 by default
  auto* t = tuners_of<peft::PastaImpl>(*bert).front();
  CHECK(t->dropout == Approx(0.1));
  t->dropout = 0.5;
  t->train();
  torch::NoGradGuard g;
  auto x = torch::zeros({64, 3, 32});
  peft::BatchScope scope(peft::keys::special_token_index, torch::tensor({0, -1, 1}, torch::kLong).expand({64, 3}).contiguous());
  auto added = t->input(x);
  // Ordinary positions get nothing; each row's [CLS] vector gets its own dropout pattern.
  CHECK(torch::equal(added.select(1, 1), torch::zeros({64, 32})));
  auto kept = added.select(1, 0) != 0;
  std::set<std::string> patterns;
  for (int64_t b = 0; b < 64; ++b) {
    auto row = kept[b].to(torch::kInt);
    patterns.insert(std::string(reinterpret_cast<const char*>(row.data_ptr<int>()), 32 * sizeof(int)));
  }
  CHECK(patterns.size() > 60);
  // Kept entries are scaled by 1/(1-p).
  auto e0 = t->pasta_embedding[0].expand({64, 32});
  CHECK_THAT(added.select(1, 0).masked_select(kept), AllClose(e0.masked_select(kept) * 2, 1e-6, 1e-6));
}

TEST_CASE("RLRR: exact unmerge where a factor is zero, zero head", "[fidelity][rlrr]") {
  torch::manual_seed(2);
  OneLinear one(4, 3);  // narrow: the paper's init reaches |s_out s_in| = 6/sqrt(4) = 3
  peft::attach(one, peft::RLRRConfig().target_modules({"proj"}));
  auto* t = tuners_of<peft::RLRRLinearImpl>(*one).front();
  const auto w0 = one->proj->weight.clone(), b0 = one->proj->bias.clone();
  {
    torch::NoGradGuard g;
    t->rlrr_s_out.copy_(torch::tensor({1.0f, 0.5f, -2.0f}));
    t->rlrr_s_in.copy_(torch::tensor({-1.0f, 0.25f, 0.5f, 1.5f}));  // F[0][0] = 0, F[2][2] = 0
    t->rlrr_f.fill_(0.3f);
  }
  auto x = torch::randn({5, 4});
  torch::Tensor before;
  {
    torch::NoGradGuard g;
    before = one->forward(x);
  }
  peft::merge_adapter(one);
  {
    torch::NoGradGuard g;
    CHECK(one->proj->weight[0][0].item<float>() == 0.0f);
    CHECK_THAT(torch::linear(x, one->proj->weight, one->proj->bias), AllClose(before, 1e-5, 1e-6));
  }
  peft::unmerge_adapter(one);
  CHECK(torch::isfinite(one->proj->weight).all().item<bool>());
  CHECK_THAT(one->proj->weight, AllClose(w0, 1e-6, 0));
  CHECK(one->proj->weight[0][0].item<float>() == w0[0][0].item<float>());  // kept, not divided
  CHECK_THAT(one->proj->bias, AllClose(b0, 1e-6, 1e-7));

  // zero_head: the adapter's copy of the head starts at zero; the base model's head is untouched.
  auto vit = make_vit();
  const auto head0 = vit->classifier->weight.clone();
  peft::attach(*vit, peft::RLRRConfig().zero_head(true).modules_to_save({"classifier"}));
  CHECK(torch::count_nonzero(vit->classifier->weight).item<int64_t>() == 0);
  CHECK(torch::count_nonzero(vit->classifier->bias).item<int64_t>() == 0);
  {
    peft::DisableAdapters off(*vit);
    CHECK(torch::equal(vit->classifier->weight, head0));
  }
  CHECK_THROWS_WITH(peft::attach(*make_vit(), peft::RLRRConfig().zero_head(true)), Catch::Contains("modules_to_save is empty"));
  CHECK_THAT(peft::RLRRConfig().zero_head(true).modules_to_save({"classifier"}).to_json().dump(), Catch::Contains("\"zero_head\":true"));
}

TEST_CASE("VPT's Xavier bound uses the patch embedding's fan-in", "[fidelity][prompt]") {
  // tiny ViT: 1 channel, patch 7 -> fan 49; d = 32: bound sqrt(6 / 81) (not sqrt(6 / (n + d))).
  const double bound = std::sqrt(6.0 / (1 * 7 * 7 + 32));
  for (bool deep : {false, true}) {
    torch::manual_seed(7);
    auto vit = make_vit();
    peft::attach(*vit, peft::PromptTuningConfig().num_virtual_tokens(8).deep(deep).prompt_tuning_init("XAVIER"));
    for (auto* p : tuners_of<peft::PromptImpl>(*vit)) {
      const auto most = p->prompt.abs().max().item<double>();
      CHECK(most <= bound);
      CHECK(most > 0.9 * bound);
    }
  }
}

TEST_CASE("Recipes give the papers' published settings", "[fidelity][recipes]") {
  auto r = peft::recipes::rlrr_vtab("cifar");
  CHECK(r.lr == 3e-3);
  CHECK(r.weight_decay == 5e-5);
  CHECK(r.batch_size == 32);
  CHECK(r.epochs == 100);
  CHECK(r.warmup_epochs == 10);
  CHECK(r.drop_path == 0.1);
  CHECK(peft::recipes::rlrr_vtab("kitti").weight_decay == 5e-2);
  CHECK_THROWS_WITH(peft::recipes::rlrr_vtab("imagenet"), Catch::Contains("svhn"));
  auto lrs = r.schedule(10);
  REQUIRE(lrs.size() == 1000);
  CHECK(lrs[0] == Approx(1e-7));             // warm-up from warmup_lr
  CHECK(lrs[100] == Approx(3e-3));           // the peak after 10 epochs
  CHECK(lrs[999] == Approx(1e-8).margin(1e-8));  // cosine down to min_lr
  auto vit = make_vit();
  peft::attach(*vit, *r.config);  // usable as given: RLRR + SSF, zero head on "classifier"
  CHECK(torch::count_nonzero(vit->classifier->weight).item<int64_t>() == 0);

  auto c = peft::recipes::capaboost_glue("rte");
  auto* cb = dynamic_cast<peft::CapaBoostConfig*>(c.config.get());
  REQUIRE(cb);
  CHECK(cb->lora()->r() == 8);
  CHECK(cb->lora()->lora_alpha() == 16);
  CHECK(cb->num_copies() == 2);
  CHECK(cb->density() == 0.5);
  CHECK(c.lr == 1.5e-3);
  CHECK(c.weight_decay == 0.01);
  CHECK(c.warmup_steps == 200);
  auto clr = c.schedule(100);
  CHECK(clr[200] == Approx(1.5e-3));
  CHECK(clr.back() < 1e-5);

  auto p = peft::recipes::pasta_glue("sst2");
  CHECK(dynamic_cast<peft::PastaConfig*>(p.config.get())->num_special_tokens() == 2);
  CHECK(dynamic_cast<peft::PastaConfig*>(peft::recipes::pasta_glue("mrpc").config.get())->num_special_tokens() == 3);
  CHECK(p.lr == 2.5e-4);
  CHECK(peft::recipes::pasta_conll().lr == 3e-3);
  CHECK_THROWS_AS(peft::recipes::pasta_glue("squad"), peft::ConfigError);
}

}  // namespace peft_tests_fidelity
