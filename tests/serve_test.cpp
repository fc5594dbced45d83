// Many adapters at once: mixed batches (each row its own adapter), the adapter pool (hot loading with an
// LRU cap), and combining adapters (add_weighted_adapter).
//
// The reference for a mixed batch is always the row run alone with its adapter active the ordinary way
// (or with adapters disabled for a base row), on the same model.

#include "support/test_support.hpp"

#include <peft/serve/adapter_pool.hpp>
#include <peft/serve/mixed_batch.hpp>

// Everything below lives in this file's own namespace, so that the test sources can be compiled
// together (CMake's unity build) without their helpers meeting.
namespace peft_tests_serve {

namespace M = peft::models;
using peft_test::AllClose;

namespace {

M::LlamaConfig tiny_llama() {
  auto cfg = M::LlamaConfig::tiny(64, 32, 2, 4, 2, 48);
  cfg.bos_token_id = 1, cfg.eos_token_ids = {};
  return cfg;
}

/// Every parameter of `name`'s tuners random (LoRA's B starts at zero otherwise).
void randomize(torch::nn::Module& model, const std::string& name, double scale = 0.3) {
  torch::NoGradGuard g;
  for (const auto& s : peft::tunable_slots(model))
    if (auto* t = s.slot->adapter(name))
      for (auto& p : t->as_module().parameters(true)) {
        if (p.numel() && p.dim() == 2 && (p.size(0) == 1 || p.size(1) == 1)) p.copy_(1 + scale * torch::randn_like(p));  // IA3
        else p.copy_(scale * torch::randn_like(p));
      }
}

/// `n` LoRA adapters "a0".."a{n-1}" on q/v (and o for every third), ranks 2, 4, 8 in turn, some rsLoRA.
std::vector<std::string> attach_loras(M::LlamaForCausalLMImpl& lm, int n) {
  std::vector<std::string> names;
  for (int i = 0; i < n; ++i) {
    const int64_t r = int64_t{2} << (i % 3);
    std::vector<std::string> targets = {"q_proj", "v_proj"};
    if (i % 3 == 0) targets.push_back("o_proj");
    auto cfg = peft::LoraConfig().r(r).lora_alpha(static_cast<double>(2 * r + i % 5)).use_rslora(i % 4 == 1)
                   .target_modules(targets);
    names.push_back("a" + std::to_string(i));
    peft::attach(lm, cfg, names.back());
    randomize(lm, names.back());
  }
  return names;
}

/// Row i alone, with adapter rows[i] active (all adapters disabled for a base row).
torch::Tensor row_alone(M::LlamaForCausalLMImpl& lm, const torch::Tensor& ids, int64_t i, const std::string& adapter) {
  auto row = ids.slice(0, i, i + 1);
  if (adapter == peft::kBaseAdapter) {
    peft::DisableAdapters off(lm);
    return lm.forward(row);
  }
  peft::set_adapter(lm, adapter);
  return lm.forward(row);
}

}  // namespace

TEST_CASE("a mixed batch gives each row what that row gives alone with its adapter: 1, 2, 16 and 100 adapters, mixed ranks, base rows",
          "[serve][mixed]") {
  torch::manual_seed(7);
  M::LlamaForCausalLM lm(tiny_llama());
  lm->eval();
  torch::NoGradGuard g;
  const auto names = attach_loras(*lm, 100);
  for (int distinct : {1, 2, 16, 100}) {
    // distinct adapters, each on one or two rows, and three base rows interleaved
    std::vector<std::string> rows;
    for (int i = 0; i < distinct; ++i) {
      rows.push_back(names[static_cast<std::size_t>((i * 37) % 100)]);
      if (i % 5 == 0) rows.push_back(names[static_cast<std::size_t>((i * 37) % 100)]);
      if (i % 7 == 3 || i == 0) rows.push_back(peft::kBaseAdapter);
    }
    if (distinct == 1) rows = {names[3], names[3], names[3]};  // one adapter, every row: the adapter's own path
    const auto b = static_cast<int64_t>(rows.size());
    auto ids = torch::randint(3, 64, {b, 6}, torch::kLong);
    std::vector<torch::Tensor> alone;
    for (int64_t i = 0; i < b; ++i) alone.push_back(row_alone(*lm, ids, i, rows[static_cast<std::size_t>(i)]));
    const auto expected = torch::cat(alone, 0);
    for (auto kernel : {peft::MixedKernel::automatic, peft::MixedKernel::gather_bmm, peft::MixedKernel::loop}) {
      INFO("distinct adapters " << distinct << ", rows " << b << ", kernel " << peft::detail::mixed_kernel_name(kernel));
      peft::MixedBatch batch(*lm, rows, peft::MixedBatchOptions().kernel(kernel));
      CHECK(batch.adapters().size() == static_cast<std::size_t>(distinct));
      CHECK_THAT(lm->forward(ids), AllClose(expected, 1e-5, 1e-5));
      CHECK_THAT(lm->forward(ids), AllClose(expected, 1e-5, 1e-5));  // the stacks built once serve again
    }
  }
  // The index-tensor form and the scope's end: afterwards the active adapter runs every row again.
  auto ids = torch::randint(3, 64, {3, 5}, torch::kLong);
  const auto row2_a4 = row_alone(*lm, ids, 2, "a4");
  peft::set_adapter(*lm, "a1");
  const auto all_a1 = lm->forward(ids);
  {
    peft::MixedBatch batch(*lm, {"a4", "a1"}, torch::tensor({1, -1, 0}, torch::kLong));
    auto got = lm->forward(ids);
    CHECK_THAT(got[0], AllClose(all_a1[0]));
    CHECK_THAT(got.slice(0, 2, 3), AllClose(row2_a4));
  }
  CHECK(torch::equal(lm->forward(ids), all_a1));
}

TEST_CASE("a mixed batch mixes LoRA, DoRA, IA3 and embedding LoRA, in float32 and on a bfloat16 base", "[serve][mixed]") {
  torch::manual_seed(11);
  M::LlamaForCausalLM lm(tiny_llama());
  lm->eval();
  torch::NoGradGuard g;
  peft::attach(*lm, peft::LoraConfig().r(4).lora_alpha(8).target_modules({"q_proj", "v_proj", "down_proj"}), "lora");
  peft::attach(*lm, peft::LoraConfig().r(2).lora_alpha(3).use_dora(true).target_modules({"q_proj", "up_proj"}), "dora");
  peft::attach(*lm, peft::IA3Config().target_modules({"k_proj", "v_proj", "down_proj"}).feedforward_modules({"down_proj"}), "ia3");
  peft::attach(*lm, peft::LoraConfig().r(4).lora_alpha(4).target_modules({"embed_tokens", "v_proj"}), "emb");
  for (const char* n : {"lora", "dora", "ia3", "emb"}) randomize(*lm, n);
  const std::vector<std::string> rows = {"dora", "lora", "__base__", "ia3", "emb", "lora", "dora", "ia3", "emb"};
  auto ids = torch::randint(3, 64, {static_cast<int64_t>(rows.size()), 7}, torch::kLong);
  auto expect = [&] {
    std::vector<torch::Tensor> alone;
    for (std::size_t i = 0; i < rows.size(); ++i) alone.push_back(row_alone(*lm, ids, static_cast<int64_t>(i), rows[i]));
    return torch::cat(alone, 0);
  };
  const auto expected = expect();
  for (auto kernel : {peft::MixedKernel::automatic, peft::MixedKernel::loop}) {
    peft::MixedBatch batch(*lm, rows, peft::MixedBatchOptions().kernel(kernel));
    CHECK_THAT(lm->forward(ids), AllClose(expected, 1e-5, 1e-5));
  }
  // A bfloat16 base with float32 adapters: each row as the frame computes it alone (adapters in float32,
  // the result rounded once), so the mixed batch matches to bfloat16's rounding.
  peft::cast_mixed(*lm);
  const auto expected_bf16 = expect();
  peft::MixedBatch batch(*lm, rows);
  const auto got = lm->forward(ids);
  CHECK(got.scalar_type() == torch::kBFloat16);
  CHECK_THAT(got.to(torch::kFloat), AllClose(expected_bf16.to(torch::kFloat), 0.05, 0.02));
}

TEST_CASE("generation with a mixed batch: every row generates what it generates alone", "[serve][mixed]") {
  torch::manual_seed(3);
  M::LlamaForCausalLM lm(tiny_llama());
  lm->eval();
  const auto names = attach_loras(*lm, 5);
  const std::vector<std::string> rows = {"a2", "__base__", "a0", "a4", "a2", "a1"};
  auto ids = torch::randint(3, 64, {static_cast<int64_t>(rows.size()), 5}, torch::kLong);
  auto opts = M::GenerationOptions().max_new_tokens(8).eos_token_ids(std::vector<int64_t>{});
  torch::Tensor mixed;
  {
    peft::MixedBatch batch(*lm, rows);
    mixed = M::generate(*lm, ids, opts);
  }
  for (std::size_t i = 0; i < rows.size(); ++i) {
    INFO("row " << i << " (" << rows[i] << ")");
    auto row = ids.slice(0, static_cast<int64_t>(i), static_cast<int64_t>(i) + 1);
    torch::Tensor alone;
    if (rows[i] == peft::kBaseAdapter) {
      peft::DisableAdapters off(*lm);
      alone = M::generate(*lm, row, opts);
    } else {
      peft::set_adapter(*lm, rows[i]);
      alone = M::generate(*lm, row, opts);
    }
    CHECK(torch::equal(mixed.slice(0, static_cast<int64_t>(i), static_cast<int64_t>(i) + 1), alone));
  }
}

TEST_CASE("training through a mixed batch: each adapter's gradient is the one its rows give alone", "[serve][mixed]") {
  torch::manual_seed(5);
  M::LlamaForCausalLM lm(tiny_llama());
  lm->eval();  // no dropout: the comparison is exact
  const auto names = attach_loras(*lm, 3);
  lm->to(torch::kDouble);  // in double the sums' order does not matter: the gradients agree to 1e-10
  peft::set_adapter(*lm, names);  // all trainable
  const std::vector<std::string> rows = {"a0", "a2", "__base__", "a0", "a1"};
  auto ids = torch::randint(3, 64, {5, 6}, torch::kLong);
  auto params_of = [&](const std::string& n) {
    std::vector<torch::Tensor> ps;
    for (const auto& s : peft::tunable_slots(*lm))
      if (auto* t = s.slot->adapter(n))
        for (auto& p : t->as_module().parameters(true)) ps.push_back(p);
    return ps;
  };
  std::map<std::string, std::vector<torch::Tensor>> expected;
  for (const auto& n : names) {
    for (auto& p : params_of(n)) p.mutable_grad() = torch::Tensor();
    peft::set_adapter(*lm, n);
    for (std::size_t i = 0; i < rows.size(); ++i)
      if (rows[i] == n) lm->forward(ids.slice(0, static_cast<int64_t>(i), static_cast<int64_t>(i) + 1)).pow(2).sum().backward();
    for (auto& p : params_of(n)) expected[n].push_back(p.grad().clone());
  }
  peft::set_adapter(*lm, names);
  for (const auto& n : names)
    for (auto& p : params_of(n)) p.mutable_grad() = torch::Tensor();
  {
    peft::MixedBatch batch(*lm, rows);
    lm->forward(ids).pow(2).sum().backward();
  }
  for (const auto& n : names) {
    auto ps = params_of(n);
    for (std::size_t k = 0; k < ps.size(); ++k) {
      INFO("adapter " << n << ", parameter " << k);
      REQUIRE(ps[k].grad().defined());
      CHECK_THAT(ps[k].grad(), AllClose(expected[n][k], 1e-10, 1e-10));
    }
  }
}

TEST_CASE("a mixed batch refuses what it cannot run per row, naming the adapter and the module", "[serve][mixed]") {
  torch::manual_seed(9);
  M::LlamaForCausalLM lm(tiny_llama());
  peft::attach(*lm, peft::LoraConfig().r(2).target_modules({"q_proj"}), "lora");
  CHECK_THROWS_WITH(peft::MixedBatch(*lm, {"lora", "nope"}), Catch::Contains("no adapter named 'nope'") && Catch::Contains("lora"));
  CHECK_THROWS_AS(peft::MixedBatch(*lm, {"lora"}, torch::tensor({0, 3}, torch::kLong)), peft::InputError);
  peft::attach(*lm, peft::PrefixTuningConfig().num_virtual_tokens(2), "prefix");
  CHECK_THROWS_WITH(peft::MixedBatch(*lm, {"lora", "prefix"}),
                    Catch::Contains("adapter 'prefix'") && Catch::Contains("model.layers.0.self_attn"));
  peft::set_adapter(*lm, "prefix");  // active inside the attention op: cannot be switched off per row
  CHECK_THROWS_WITH(peft::MixedBatch(*lm, {"lora"}), Catch::Contains("acts inside its op"));
  peft::delete_adapter(*lm, "prefix");
  peft::set_adapter(*lm, "lora");
  peft::merge_adapter(*lm);
  CHECK_THROWS_WITH(peft::MixedBatch(*lm, {"lora", "__base__"}), Catch::Contains("merged") && Catch::Contains("q_proj"));
  peft::unmerge_adapter(*lm);
  peft::MixedBatch batch(*lm, {"lora", "__base__"});
  CHECK_THROWS_WITH(lm->forward(torch::randint(3, 64, {3, 4}, torch::kLong)),
                    Catch::Contains("first dimension is not the batch's 2 rows"));
}

TEST_CASE("the adapter pool loads on demand, keeps at most max_loaded, unloads the least recently used", "[serve][pool]") {
  torch::manual_seed(13);
  peft_test::TempDir dir;
  const auto cfg = tiny_llama();
  M::LlamaForCausalLM lm(cfg);
  lm->eval();
  torch::NoGradGuard g;
  // Four adapters saved to disk (then removed from the model), and the outputs each gives.
  auto ids = torch::randint(3, 64, {4, 5}, torch::kLong);
  std::map<std::string, torch::Tensor> reference;
  for (const char* n : {"p", "q", "r", "s"}) {
    peft::attach(*lm, peft::LoraConfig().r(std::string(n) == "r" ? 8 : 4).target_modules({"q_proj", "v_proj"}), n);
    randomize(*lm, n);
    peft::save_adapter(*lm, dir.path(), {n});
    peft::set_adapter(*lm, n);
    reference[n] = lm->forward(ids);
    peft::delete_adapter(*lm, n);
  }
  {
    peft::DisableAdapters off(*lm);
    reference["__base__"] = lm->forward(ids);
  }
  peft::AdapterPool pool(*lm, peft::AdapterPoolOptions().max_loaded(2));
  for (const char* n : {"p", "q", "r", "s"}) pool.add_source(n, dir.path() / n);
  CHECK(pool.loaded().empty());
  auto check_rows = [&](const std::vector<std::string>& rows) {
    auto batch = pool.select(rows);
    auto got = lm->forward(ids);
    for (std::size_t i = 0; i < rows.size(); ++i) {
      INFO("row " << i << " (" << rows[i] << ")");
      CHECK_THAT(got[static_cast<int64_t>(i)], AllClose(reference[rows[i]][static_cast<int64_t>(i)], 1e-5, 1e-5));
    }
  };
  check_rows({"p", "q", "__base__", "p"});
  CHECK(pool.loaded() == std::vector<std::string>{"p", "q"});
  check_rows({"r", "p", "r", "__base__"});  // q is the least recently used: it goes
  CHECK(pool.loaded() == std::vector<std::string>{"p", "r"});
  CHECK(peft::adapter_names(*lm) == std::vector<std::string>{"p", "r"});
  CHECK(pool.stats().loads == 3);
  CHECK(pool.stats().evictions == 1);
  check_rows({"q", "q", "q", "q"});  // q again (p goes), reloaded from disk: the same outputs
  CHECK(pool.loaded() == std::vector<std::string>{"r", "q"});
  CHECK_THROWS_WITH(pool.select({"p", "q", "s", "__base__"}), Catch::Contains("needs 3") && Catch::Contains("max_loaded is 2"));
  CHECK(pool.loaded() == std::vector<std::string>{"r", "q"});  // a refused batch changes nothing
  CHECK_THROWS_WITH(pool.select({"zz"}), Catch::Contains("'zz' is not loaded") && Catch::Contains("no source"));
  {  // an open batch pins its adapters: a nested selection cannot evict them, unload refuses them
    auto outer = pool.select({"r", "__base__"});
    CHECK(pool.is_pinned("r"));
    CHECK_THROWS_WITH(pool.unload("r"), Catch::Contains("in use by an open mixed batch"));
    {
      auto inner = pool.select({"q", "q"});  // both loaded already: fine
    }
    CHECK_THROWS_WITH(pool.select({"p", "s"}), Catch::Contains("open batches hold 1 others"));
    CHECK(pool.loaded() == std::vector<std::string>{"r", "q"});
  }
  CHECK_FALSE(pool.is_pinned("r"));
  pool.unload("r");
  CHECK(pool.loaded() == std::vector<std::string>{"q"});
  CHECK_THROWS_AS(pool.unload("r"), peft::StateError);
  // A broken source: a typed error, nothing half-loaded, the pool as it was.
  std::filesystem::create_directories(dir.path() / "broken");
  { std::ofstream(dir.path() / "broken" / "adapter_config.json") << "{\"peft_type\": \"LORA\", \"r\": 4"; }
  pool.add_source("broken", dir.path() / "broken");
  CHECK_THROWS_AS(pool.select({"broken"}), peft::Error);
  CHECK(pool.loaded() == std::vector<std::string>{"q"});
  CHECK(peft::adapter_names(*lm) == std::vector<std::string>{"q"});
}

// ---------------------------------------------------------------------------------------------------
// add_weighted_adapter

namespace {

struct Pair {
  torch::Tensor A, B;  // A [r, in] (an embedding's [r, num_embeddings]), B [out, r]
  double scaling;
};
Pair pair_at(torch::nn::Module& model, const std::string& module, const std::string& adapter) {
  for (const auto& s : peft::tunable_slots(model))
    if (s.name == module)
      if (auto* t = s.slot->adapter(adapter)) {
        if (auto* l = t->as_module().as<peft::LoraLinearImpl>()) return {l->lora_A, l->lora_B, l->spec.scaling};
        if (auto* e = t->as_module().as<peft::LoraEmbeddingImpl>()) return {e->lora_embedding_A, e->lora_embedding_B, e->spec.scaling};
      }
  return {};
}

/// Three rank-4 adapters (alphas 4, 6, 12; "c" also on o_proj, "a" also on the embedding) and "d" of rank 8.
M::LlamaForCausalLM weighted_model() {
  torch::manual_seed(17);
  M::LlamaForCausalLM lm(tiny_llama());
  lm->eval();
  peft::attach(*lm, peft::LoraConfig().r(4).lora_alpha(4).target_modules({"q_proj", "v_proj", "embed_tokens"}), "a");
  peft::attach(*lm, peft::LoraConfig().r(4).lora_alpha(6).target_modules({"q_proj", "v_proj"}), "b");
  peft::attach(*lm, peft::LoraConfig().r(4).lora_alpha(12).target_modules({"q_proj", "v_proj", "o_proj"}), "c");
  peft::attach(*lm, peft::LoraConfig().r(8).lora_alpha(8).target_modules({"q_proj", "v_proj"}), "d");
  for (const char* n : {"a", "b", "c", "d"}) randomize(*lm, n, 0.5);
  return lm;
}

/// TIES by its definition, entry by entry: each tensor keeps its k = floor(density·n) largest magnitudes;
/// per entry the elected sign is that of the sum of the kept values ("total") or of their signs'
/// count ("frequency"), ties to +; the result is the mean of the weighted kept values with that sign.
torch::Tensor ties_by_definition(const std::vector<torch::Tensor>& ts, const std::vector<double>& w, double density,
                                 bool frequency) {
  const int64_t n = ts.front().numel(), k = static_cast<int64_t>(density * static_cast<double>(n));
  std::vector<std::vector<double>> kept;
  for (const auto& t : ts) {
    auto v = t.to(torch::kDouble).reshape({-1});
    std::vector<double> vals(v.data_ptr<double>(), v.data_ptr<double>() + n), mags;
    for (auto x : vals) mags.push_back(std::fabs(x));
    std::sort(mags.begin(), mags.end(), std::greater<>());
    const double threshold = k > 0 ? mags[static_cast<std::size_t>(k - 1)] : INFINITY;
    for (auto& x : vals) if (!(std::fabs(x) >= threshold)) x = 0;
    kept.push_back(vals);
  }
  std::vector<double> out(static_cast<std::size_t>(n));
  for (int64_t j = 0; j < n; ++j) {
    double elect = 0;
    for (const auto& v : kept) elect += frequency ? (v[j] > 0) - (v[j] < 0) : v[j];
    const double sign = elect >= 0 ? 1 : -1;
    double sum = 0;
    int count = 0;
    for (std::size_t i = 0; i < kept.size(); ++i)
      if ((kept[i][j] > 0 ? 1 : kept[i][j] < 0 ? -1 : 0) == sign) sum += w[i] * kept[i][j], ++count;
    out[static_cast<std::size_t>(j)] = sum / std::max(count, 1);
  }
  return torch::tensor(out, torch::kDouble).view(ts.front().sizes());
}

}  // namespace

TEST_CASE("add_weighted_adapter: each combination type against its definition", "[serve][weighted]") {
  auto lm = weighted_model();
  const std::vector<std::string> modules = {"model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj"};
  const std::vector<double> w = {0.7, -0.4, 1.3};
  auto sources = [&](const std::string& m, std::vector<std::string> names = {"a", "b", "c"}) {
    std::vector<Pair> ps;
    for (const auto& n : names) ps.push_back(pair_at(*lm, m, n));
    return ps;
  };
  auto roots = [&](const std::vector<Pair>& ps, bool signed_) {
    std::vector<double> r;
    for (std::size_t i = 0; i < ps.size(); ++i) {
      const double ws = w[i] * ps[i].scaling;
      r.push_back(std::sqrt(std::fabs(ws)) * (signed_ && ws < 0 ? -1 : 1));
    }
    return r;
  };
  SECTION("linear") {
    peft::add_weighted_adapter(*lm, {"a", "b", "c"}, w, "lin", peft::WeightedAdapterOptions().combination_type("linear"));
    for (const auto& m : modules) {
      auto ps = sources(m);
      auto rA = roots(ps, true), rB = roots(ps, false);
      auto got = pair_at(*lm, m, "lin");
      CHECK(got.scaling == 1.0);
      CHECK_THAT(got.A, AllClose(ps[0].A * rA[0] + ps[1].A * rA[1] + ps[2].A * rA[2]));
      CHECK_THAT(got.B, AllClose(ps[0].B * rB[0] + ps[1].B * rB[1] + ps[2].B * rB[2]));
    }
    // o_proj: only "c" adapts it; the embedding: only "a"
    auto o = pair_at(*lm, "model.layers.0.self_attn.o_proj", "lin"), c = pair_at(*lm, "model.layers.0.self_attn.o_proj", "c");
    CHECK_THAT(torch::mm(o.B, o.A), AllClose(torch::mm(c.B, c.A) * (w[2] * c.scaling)));
    auto e = pair_at(*lm, "model.embed_tokens", "lin"), a = pair_at(*lm, "model.embed_tokens", "a");
    CHECK_THAT(torch::mm(e.B, e.A), AllClose(torch::mm(a.B, a.A) * (w[0] * a.scaling)));
  }
  SECTION("cat: exact, ranks may differ") {
    peft::add_weighted_adapter(*lm, {"a", "d", "c"}, w, "cat", peft::WeightedAdapterOptions().combination_type("cat"));
    CHECK(std::dynamic_pointer_cast<const peft::LoraConfig>(peft::adapter_config(*lm, "cat"))->r() == 16);
    for (const auto& m : modules) {
      auto ps = sources(m, {"a", "d", "c"});
      auto got = pair_at(*lm, m, "cat");
      auto expected = torch::mm(ps[0].B, ps[0].A) * (w[0] * ps[0].scaling) + torch::mm(ps[1].B, ps[1].A) * (w[1] * ps[1].scaling) +
                      torch::mm(ps[2].B, ps[2].A) * (w[2] * ps[2].scaling);
      CHECK_THAT(torch::mm(got.B, got.A) * got.scaling, AllClose(expected));
    }
  }
  SECTION("svd: exact at full rank, Eckart-Young below it, clamped factors") {
    peft::add_weighted_adapter(*lm, {"a", "d", "c"}, w, "full", peft::WeightedAdapterOptions().svd_rank(16));
    peft::add_weighted_adapter(*lm, {"a", "d", "c"}, w, "low", peft::WeightedAdapterOptions().svd_rank(3));
    peft::add_weighted_adapter(*lm, {"a", "d", "c"}, w, "clamped", peft::WeightedAdapterOptions().svd_rank(3).svd_clamp(0.9));
    for (const auto& m : modules) {
      auto ps = sources(m, {"a", "d", "c"});
      auto delta = torch::mm(ps[0].B, ps[0].A) * (w[0] * ps[0].scaling) + torch::mm(ps[1].B, ps[1].A) * (w[1] * ps[1].scaling) +
                   torch::mm(ps[2].B, ps[2].A) * (w[2] * ps[2].scaling);
      auto full = pair_at(*lm, m, "full");
      CHECK_THAT(torch::mm(full.B, full.A), AllClose(delta, 1e-4, 1e-4));
      auto low = pair_at(*lm, m, "low");
      CHECK(low.A.size(0) == 3);
      auto sv = torch::linalg_svdvals(delta.to(torch::kDouble));
      const double tail = sv.slice(0, 3).pow(2).sum().item<double>();
      const double err = (delta - torch::mm(low.B, low.A)).to(torch::kDouble).pow(2).sum().item<double>();
      CHECK(err == Approx(tail).epsilon(1e-3));
      auto cl = pair_at(*lm, m, "clamped");
      const double hi = torch::quantile(torch::cat({low.B.flatten(), low.A.flatten()}), 0.9).item<double>();
      CHECK_THAT(cl.B, AllClose(low.B.clamp(-hi, hi)));
      CHECK_THAT(cl.A, AllClose(low.A.clamp(-hi, hi)));
    }
  }
  SECTION("ties and magnitude_prune, both sign methods") {
    for (bool frequency : {false, true}) {
      const std::string n = frequency ? "ties_f" : "ties_t";
      peft::add_weighted_adapter(*lm, {"a", "b", "c"}, w, n,
                                 peft::WeightedAdapterOptions().combination_type("ties").density(0.4)
                                     .majority_sign_method(frequency ? "frequency" : "total"));
      for (const auto& m : modules) {
        auto ps = sources(m);
        auto got = pair_at(*lm, m, n);
        CHECK_THAT(got.A, AllClose(ties_by_definition({ps[0].A, ps[1].A, ps[2].A}, roots(ps, true), 0.4, frequency).to(torch::kFloat)));
        CHECK_THAT(got.B, AllClose(ties_by_definition({ps[0].B, ps[1].B, ps[2].B}, roots(ps, false), 0.4, frequency).to(torch::kFloat)));
      }
    }
    peft::add_weighted_adapter(*lm, {"a", "b", "c"}, w, "mag", peft::WeightedAdapterOptions().combination_type("magnitude_prune").density(0.3));
    for (const auto& m : modules) {
      auto ps = sources(m);
      auto rA = roots(ps, true);
      auto expected = torch::zeros_like(ps[0].A);
      for (std::size_t i = 0; i < 3; ++i) {
        const auto k = static_cast<int64_t>(0.3 * static_cast<double>(ps[i].A.numel()));
        auto mags = std::get<0>(ps[i].A.abs().flatten().sort(0, true));
        const double threshold = mags[k - 1].item<double>();
        expected += torch::where(ps[i].A.abs() >= threshold, ps[i].A, torch::zeros_like(ps[i].A)) * rA[i];
      }
      CHECK_THAT(pair_at(*lm, m, "mag").A, AllClose(expected));
    }
  }
  SECTION("dare_linear and dare_ties: each entry kept with probability density and rescaled") {
    const double d = 0.5;
    peft::add_weighted_adapter(*lm, {"a", "b"}, {0.7, -0.4}, "dare", peft::WeightedAdapterOptions().combination_type("dare_linear").density(d));
    int64_t kept = 0, total = 0;
    for (const auto& s : peft::tunable_slots(*lm)) {
      auto got = pair_at(*lm, s.name, "dare");
      if (!got.A.defined() || s.name == "model.embed_tokens") continue;
      auto ps = sources(s.name, {"a", "b"});
      auto r = roots(ps, true);
      // every entry is one of: nothing kept, only a's, only b's, both (each rescaled by 1/d)
      auto x = ps[0].A * r[0] / d, y = ps[1].A * r[1] / d;
      auto near = [&](const torch::Tensor& v) { return (got.A - v).abs() <= 1e-5 + 1e-5 * v.abs(); };
      CHECK((near(torch::zeros_like(x)) | near(x) | near(y) | near(x + y)).all().item<bool>());
      kept += (near(x) | near(x + y)).sum().item<int64_t>();
      total += x.numel();
    }
    // a's entries kept: Binomial(total, 0.5) within 5 standard deviations
    CHECK(std::fabs(static_cast<double>(kept) - d * static_cast<double>(total)) < 5 * std::sqrt(d * (1 - d) * static_cast<double>(total)));
    // with density 1 nothing is pruned: dare_ties is ties, dare_linear is linear
    peft::add_weighted_adapter(*lm, {"a", "b", "c"}, w, "dt1", peft::WeightedAdapterOptions().combination_type("dare_ties").density(1.0));
    peft::add_weighted_adapter(*lm, {"a", "b", "c"}, w, "t1", peft::WeightedAdapterOptions().combination_type("ties").density(1.0));
    for (const auto& m : modules) CHECK(torch::equal(pair_at(*lm, m, "dt1").B, pair_at(*lm, m, "t1").B));
  }
}

TEST_CASE("add_weighted_adapter: the result is an ordinary adapter (saved, loaded, merged), and bad requests are refused",
          "[serve][weighted]") {
  auto lm = weighted_model();
  torch::NoGradGuard g;
  peft::add_weighted_adapter(*lm, {"a", "b"}, {1.0, 0.5}, "mix", peft::WeightedAdapterOptions().combination_type("cat"));
  auto ids = torch::randint(3, 64, {2, 6}, torch::kLong);
  peft::set_adapter(*lm, "mix");
  const auto out = lm->forward(ids);
  {  // the same as a and b active together with their weights folded in: B A (1.0·s_a) + B A (0.5·s_b)
    peft::set_adapter(*lm, std::vector<std::string>{"a", "b"});
    for (const auto& s : peft::tunable_slots(*lm))
      if (auto* t = s.slot->adapter("b")) t->as_module().as<peft::LoraLinearImpl>()->lora_B.mul_(0.5);
    CHECK_THAT(lm->forward(ids), AllClose(out, 1e-5, 1e-5));
    for (const auto& s : peft::tunable_slots(*lm))
      if (auto* t = s.slot->adapter("b")) t->as_module().as<peft::LoraLinearImpl>()->lora_B.mul_(2.0);
  }
  peft_test::TempDir dir;
  peft::save_adapter(*lm, dir.path(), {"mix"});
  torch::manual_seed(17);
  M::LlamaForCausalLM fresh(tiny_llama());
  fresh->eval();
  {
    torch::NoGradGuard ng;
    auto src = lm->named_parameters(true);
    for (auto& p : fresh->named_parameters(true))
      if (src.contains(p.key())) p.value().copy_(src[p.key()]);
  }
  peft::load_adapter(*fresh, dir.path() / "mix", "mix");
  CHECK_THAT(fresh->forward(ids), AllClose(out, 1e-5, 1e-5));
  peft::merge_and_unload(*fresh);
  CHECK_THAT(fresh->forward(ids), AllClose(out, 1e-4, 1e-4));

  using O = peft::WeightedAdapterOptions;
  CHECK_THROWS_WITH(peft::add_weighted_adapter(*lm, {"a", "d"}, {1, 1}, "x", O().combination_type("linear")),
                    Catch::Contains("one rank"));
  CHECK_THROWS_WITH(peft::add_weighted_adapter(*lm, {"a", "b"}, {1, 1}, "x", O().combination_type("ties")),
                    Catch::Contains("needs a density"));
  CHECK_THROWS_WITH(peft::add_weighted_adapter(*lm, {"a", "b"}, {1, 1}, "x", O().combination_type("average")),
                    Catch::Contains("unknown combination_type 'average'"));
  CHECK_THROWS_WITH(peft::add_weighted_adapter(*lm, {"a", "b"}, {1}, "x"), Catch::Contains("one weight per adapter"));
  CHECK_THROWS_AS(peft::add_weighted_adapter(*lm, {"a", "b"}, {1, 1}, "mix"), peft::StateError);
  CHECK_THROWS_WITH(peft::add_weighted_adapter(*lm, {"a", "zz"}, {1, 1}, "x"), Catch::Contains("no adapter named 'zz'"));
  peft::attach(*lm, peft::LoraConfig().r(4).use_dora(true).target_modules({"q_proj"}), "dora");
  CHECK_THROWS_WITH(peft::add_weighted_adapter(*lm, {"a", "dora"}, {1, 1}, "x"), Catch::Contains("DoRA"));
  CHECK(peft::adapter_config(*lm, "x") == nullptr);  // nothing was added by a refused call
}

}  // namespace peft_tests_serve
