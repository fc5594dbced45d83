// Conformance with the real Hugging Face stack. The fixtures under tests/fixtures/hf were made by
// transformers and peft themselves (scripts/make_hf_fixtures.py): tiny random ViT, BERT and LLaMA
// models saved with save_pretrained, adapters attached and saved by peft (the newest release and
// 0.13, the oldest we support), with their inputs and outputs. Here, without Python:
//   - each model loads into our zoo and gives transformers' logits;
//   - each adapter loads with load_adapter and gives peft's logits (and greedy tokens for LLaMA);
//   - merged, it gives the same logits;
//   - our save of the loaded adapter reproduces peft's file key for key and its config fields.
// Each case prints one row of the conformance table (max abs differences).

#include "support/test_support.hpp"

#include <nlohmann/json.hpp>

#include <iomanip>
#include <iostream>
#include <set>

using namespace peft_test;
namespace fs = std::filesystem;
namespace M = peft::models;

namespace {

const fs::path kHf = fs::path(PEFT_FIXTURES_DIR) / "hf";
using IO = std::map<std::string, torch::Tensor>;
using json = nlohmann::ordered_json;

json read_json(const fs::path& p) {
  std::ifstream in(p);
  REQUIRE(in.good());
  return json::parse(in);
}

IO read_io(const fs::path& p) {
  IO io;
  auto c = peft::load_safetensors(p.string());
  for (const auto& item : c.tensors) io[item.key()] = item.value();
  return io;
}

/// A zoo model built from a fixture's config.json, with its forward on a fixture's inputs.
struct Loaded {
  std::shared_ptr<torch::nn::Module> module;
  std::function<torch::Tensor(const IO&)> logits;
  M::LlamaForCausalLM llama{nullptr};
};

Loaded load_model(const std::string& name) {
  const auto dir = kHf / "models" / name;
  const auto cfg = (dir / "config.json").string();
  const auto arch = read_json(dir / "config.json").at("architectures").at(0).get<std::string>();
  Loaded l;
  if (arch == "ViTForImageClassification") {
    M::ViTForImageClassification m(M::ViTConfig::from_file(cfg));
    l.module = m.ptr();
    l.logits = [m](const IO& io) mutable { return m->forward(io.at("pixel_values")); };
  } else if (arch == "BertForSequenceClassification") {
    M::BertForSequenceClassification m(M::BertConfig::from_file(cfg));
    l.module = m.ptr();
    l.logits = [m](const IO& io) mutable {
      return m->forward(io.at("input_ids"), io.at("attention_mask"), io.at("token_type_ids"));
    };
  } else if (arch == "LlamaForCausalLM") {
    M::LlamaForCausalLM m(M::LlamaConfig::from_file(cfg));
    l.module = m.ptr();
    l.llama = m;
    l.logits = [m](const IO& io) mutable { return m->forward(io.at("input_ids"), io.at("attention_mask")); };
  } else {
    FAIL("fixture model '" << name << "' has an unknown architecture " << arch);
  }
  peft::load_pretrained(*l.module, dir.string());
  l.module->eval();
  return l;
}

double max_diff(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.sizes() != b.sizes()) return std::numeric_limits<double>::infinity();
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

/// Greedy tokens after the first row's prompt, as transformers' generate() gives them.
torch::Tensor greedy(M::LlamaForCausalLM& m, const IO& io, int64_t n) {
  auto ids = io.at("input_ids").slice(0, 0, 1);
  auto out = M::generate(*m, ids, M::GenerationOptions().max_new_tokens(n), io.at("attention_mask").slice(0, 0, 1));
  return out.slice(1, ids.size(1));
}

bool all_mergeable(torch::nn::Module& model) {
  for (const auto& s : peft::tunable_slots(model))
    if (auto* t = s.slot->adapter("default"); t && !t->mergeable()) return false;
  return true;
}

/// Lists that PEFT writes from a Python set: order is not part of the value.
bool same_value(const std::string& key, const json& a, const json& b) {
  if (a.is_array() && b.is_array() &&
      (key == "target_modules" || key == "modules_to_save" || key == "feedforward_modules"))
    return std::multiset<std::string>(a.begin(), a.end()) == std::multiset<std::string>(b.begin(), b.end());
  if (a.is_number() && b.is_number()) return a.get<double>() == b.get<double>();
  return a == b;
}

/// Fields that carry meaning: where PEFT's config has one, ours must have it with the same value.
const std::set<std::string> kMeaningful = {
    "peft_type", "task_type", "r", "lora_alpha", "lora_dropout", "use_rslora", "use_dora", "rank_pattern",
    "alpha_pattern", "target_modules", "exclude_modules", "modules_to_save", "bias", "fan_in_fan_out",
    "layers_to_transform", "layers_pattern", "feedforward_modules", "num_virtual_tokens", "token_dim",
    "num_layers", "num_attention_heads", "num_transformer_submodules", "prompt_tuning_init",
    "encoder_hidden_size", "prefix_projection", "inference_mode", "base_model_name_or_path"};

void check_case(const std::string& version, const std::string& name, const json& info) {
  INFO("peft " << version << ", case " << name);
  const auto dir = kHf / ("peft-" + version) / name;
  const auto io = read_io(dir / "io.safetensors");
  auto m = load_model(info.at("model").get<std::string>());
  torch::NoGradGuard no_grad;

  const double base = max_diff(m.logits(io), io.at("base_logits"));
  CHECK(base < 1e-4);

  peft::load_adapter(*m.module, dir / "adapter");
  const auto adapted_logits = m.logits(io);
  const double adapted = max_diff(adapted_logits, io.at("adapted_logits"));
  CHECK(adapted < 1e-4);
  // The adapter must change the output, or the comparison proves nothing.
  CHECK(max_diff(io.at("base_logits"), io.at("adapted_logits")) > 1e-3);
  // Disabled, the model is transformers' base model again, as with PEFT's disable_adapter(): also the
  // head of modules_to_save (PEFT keeps the original beside the adapter's copy). Not where the file
  // replaces base weights (save_embedding_layers), which PEFT does as well.
  bool replaces_base = false;
  const peft::SafetensorsFile their_file((dir / "adapter" / "adapter_model.safetensors").string());
  for (const auto& t : their_file.infos()) replaces_base = replaces_base || t.name.find(".base_layer.") != std::string::npos;
  if (!replaces_base) {
    peft::DisableAdapters off(*m.module);
    CHECK(max_diff(m.logits(io), io.at("base_logits")) < 1e-4);
  }

  std::string tokens = "-", merged = "-";
  if (m.llama) {
    const auto want = io.at("adapted_generated");
    const auto got = greedy(m.llama, io, want.size(1));
    CHECK(got.sizes() == want.sizes());
    const bool same = got.sizes() == want.sizes() && torch::equal(got, want.to(got.dtype()));
    CHECK(same);
    tokens = same ? "equal" : "DIFFER";
  }

  // Our save of the loaded adapter: PEFT's file, key for key, and its config fields.
  TempDir tmp;
  peft::save_adapter(*m.module, tmp.path());
  peft::SafetensorsFile theirs((dir / "adapter" / "adapter_model.safetensors").string());
  peft::SafetensorsFile ours((tmp.path() / "adapter_model.safetensors").string());
  std::set<std::string> their_keys, our_keys;
  for (const auto& t : theirs.infos()) their_keys.insert(t.name);
  for (const auto& t : ours.infos()) our_keys.insert(t.name);
  CHECK(our_keys == their_keys);
  bool file_same = our_keys == their_keys;
  for (const auto& k : their_keys) {
    if (!ours.contains(k)) continue;
    INFO("tensor " << k);
    CHECK(ours.info(k).shape == theirs.info(k).shape);
    CHECK(ours.info(k).dtype == theirs.info(k).dtype);
    const bool eq = ours.info(k).shape == theirs.info(k).shape && torch::equal(ours.tensor(k), theirs.tensor(k));
    CHECK(eq);
    file_same = file_same && eq;
  }
  const auto their_cfg = read_json(dir / "adapter" / "adapter_config.json");
  const auto our_cfg = read_json(tmp.path() / "adapter_config.json");
  bool cfg_same = true;
  for (const auto& [k, v] : our_cfg.items()) {
    INFO("config field " << k << ": ours " << v.dump() << ", peft's " << (their_cfg.contains(k) ? their_cfg[k].dump() : "absent"));
    const bool ok = their_cfg.contains(k) && same_value(k, v, their_cfg[k]);
    CHECK(ok);
    cfg_same = cfg_same && ok;
  }
  for (const auto& [k, v] : their_cfg.items()) {
    if (!kMeaningful.count(k) || v.is_null() || v == false || (v.is_array() && v.empty())) continue;
    INFO("config field " << k << " (peft's " << v.dump() << ") is missing from ours");
    CHECK(our_cfg.contains(k));
    cfg_same = cfg_same && our_cfg.contains(k);
  }
  if (all_mergeable(*m.module)) {
    peft::merge_adapter(*m.module);
    const double d = max_diff(m.logits(io), io.at("adapted_logits"));
    CHECK(d < 1e-4);
    merged = fmt::format("{:.1e}", d);
    peft::unmerge_adapter(*m.module);
  }

  std::cout << fmt::format("CONFORMANCE | peft {} | {:<26} | base {:.1e} | adapted {:.1e} | merged {:>7} | tokens {:<5} | file {} | config {}\n",
                           version, name, base, adapted, merged, tokens, file_same ? "same" : "DIFFERS",
                           cfg_same ? "same" : "DIFFERS");
}

void check_version_dir(const std::string& version) {
  const auto manifest = read_json(kHf / ("peft-" + version) / "manifest.json");
  REQUIRE(manifest.at("peft").get<std::string>() == version);
  REQUIRE(manifest.at("cases").size() > 0);
  for (const auto& [name, info] : manifest.at("cases").items()) check_case(version, name, info);
}

/// The PEFT versions with fixtures, oldest first (numeric order: 0.9 < 0.13).
std::vector<std::string> fixture_versions() {
  std::vector<std::string> v;
  for (const auto& e : fs::directory_iterator(kHf))
    if (e.path().filename().string().rfind("peft-", 0) == 0) v.push_back(e.path().filename().string().substr(5));
  auto numbers = [](const std::string& s) {
    std::vector<int> n;
    std::istringstream in(s);
    for (std::string part; std::getline(in, part, '.');) n.push_back(std::stoi(part));
    return n;
  };
  std::sort(v.begin(), v.end(), [&](const auto& a, const auto& b) { return numbers(a) < numbers(b); });
  return v;
}

}  // namespace

TEST_CASE("PEFT's newest files: load, outputs, merge and our save match", "[hf]") {
  const auto versions = fixture_versions();
  REQUIRE(versions.size() >= 2);
  check_version_dir(versions.back());
}

TEST_CASE("PEFT 0.13's files (the oldest we support): load, outputs, merge and our save match", "[hf]") {
  check_version_dir("0.13.2");
}

// ------------------------------------------------------------------------------------------------
// Defects that real PEFT found in our files, each with its test.

TEST_CASE("a loaded adapter runs in eval mode (no LoRA dropout at inference), attach follows the model's mode", "[hf]") {
  const auto io = read_io(kHf / "peft-0.13.2" / "bert_lora" / "io.safetensors");
  TempDir tmp;
  auto m = load_model("bert");  // in eval mode
  peft::attach(*m.module, peft::LoraConfig().r(4).lora_dropout(0.9).init_lora_weights(peft::LoraInit(false))
                              .target_modules({"query", "value"}));
  torch::NoGradGuard no_grad;
  const auto a = m.logits(io);
  CHECK(torch::equal(a, m.logits(io)));  // a tuner attached to an eval model does not drop out
  peft::save_adapter(*m.module, tmp.path());

  auto fresh = load_model("bert");
  peft::load_adapter(*fresh.module, tmp.path());
  CHECK_THAT(fresh.logits(io), AllClose(a, 1e-6, 0));
  fresh.module->train();  // even a model switched to training afterwards: the frozen adapter keeps eval
  peft::load_adapter(*fresh.module, tmp.path(), "second");
  for (const auto& s : peft::tunable_slots(*fresh.module))
    if (auto* t = s.slot->adapter("second")) CHECK_FALSE(t->as_module().is_training());

  auto trainable = load_model("bert");
  trainable.module->train();
  peft::load_adapter(*trainable.module, tmp.path(), "default", /*trainable=*/true);
  int n = 0;
  for (const auto& s : peft::tunable_slots(*trainable.module))
    if (auto* t = s.slot->adapter("default")) {
      CHECK(t->as_module().is_training());
      ++n;
    }
  CHECK(n == 4);
}

TEST_CASE("our adapter_config.json holds only fields PEFT 0.13 knows, inference_mode true, all-linear expanded", "[hf]") {
  // PEFT 0.13 writes every field of its dataclass: its files list exactly the keys it accepts.
  auto fields = [](const std::string& fixture) {
    std::set<std::string> keys;
    const auto j = read_json(kHf / "peft-0.13.2" / fixture / "adapter" / "adapter_config.json");
    for (const auto& [k, v] : j.items()) keys.insert(k);
    return keys;
  };
  struct Case {
    std::string fixture, model;
    std::shared_ptr<peft::AdapterConfig> config;
  };
  const std::vector<Case> cases = {
      {"bert_lora", "bert",
       std::make_shared<peft::LoraConfig>(peft::LoraConfig().target_modules(peft::TargetModules("all-linear"))
                                              .modules_to_save({"classifier"}))},
      {"bert_dora", "bert", std::make_shared<peft::LoraConfig>(peft::LoraConfig().use_dora(true).target_modules({"query"}))},
      {"bert_ia3", "bert",
       std::make_shared<peft::IA3Config>(peft::IA3Config().target_modules({"key", "output.dense"}).feedforward_modules({"output.dense"}))},
      {"llama_tied_prompt", "llama_tied", std::make_shared<peft::PromptTuningConfig>(peft::PromptTuningConfig().num_virtual_tokens(2))},
      {"llama_tied_prefix", "llama_tied", std::make_shared<peft::PrefixTuningConfig>(peft::PrefixTuningConfig().num_virtual_tokens(2))},
  };
  for (const auto& c : cases) {
    INFO("config like " << c.fixture);
    auto m = load_model(c.model);
    peft::attach(*m.module, *c.config);  // trainable: inference_mode false in memory
    TempDir tmp;
    peft::save_adapter(*m.module, tmp.path());
    const auto ours = read_json(tmp.path() / "adapter_config.json");
    const auto known = fields(c.fixture);
    for (const auto& [k, v] : ours.items()) {
      INFO("field " << k);
      CHECK(known.count(k) == 1);
    }
    CHECK(ours.at("inference_mode") == true);
    if (c.fixture == "bert_lora") {
      // "all-linear" goes to the file as the module paths it matched (PEFT: all Linear but the output layer).
      REQUIRE(ours.at("target_modules").is_array());
      CHECK(ours.at("target_modules").size() == 2 * 6 + 1);  // q, k, v, attention output, intermediate, output; pooler
      for (const auto& t : ours.at("target_modules")) CHECK(t.get<std::string>().find("classifier") == std::string::npos);
    }
  }
}

// ------------------------------------------------------------------------------------------------
// The other direction: adapters our library trains and saves, for real PEFT to load
// (tests/hf_reverse.py checks them; tests/hf_reverse.sh runs both). Hidden: it runs only when asked
// for, with PEFT_REVERSE_DIR naming the output folder.

namespace {

struct ReverseCase {
  std::string name, model;
  bool oldest_peft;  // also for PEFT 0.13 (with transformers 4.x, which reads only some 5.x configs)
  std::function<std::shared_ptr<peft::AdapterConfig>()> config;
};

std::vector<ReverseCase> reverse_cases() {
  using peft::LoraConfig;
  return {
      {"bert_lora", "bert", true,
       [] {
         return std::make_shared<LoraConfig>(LoraConfig().r(4).lora_alpha(8).target_modules({"query", "value"})
                                                 .modules_to_save({"classifier"}).task_type("SEQ_CLS"));
       }},
      {"llama_tied_lora_all_linear", "llama_tied", true,
       [] {
         return std::make_shared<LoraConfig>(LoraConfig().r(2).lora_alpha(4).use_rslora(true)
                                                 .target_modules(peft::TargetModules("all-linear")).task_type("CAUSAL_LM"));
       }},
      {"llama_dora", "llama", false,
       [] {
         return std::make_shared<LoraConfig>(LoraConfig().r(4).lora_alpha(8).use_dora(true)
                                                 .target_modules({"q_proj", "v_proj", "embed_tokens"}).task_type("CAUSAL_LM"));
       }},
      {"vit_dora_conv", "vit", true,
       [] { return std::make_shared<LoraConfig>(LoraConfig().r(4).lora_alpha(4).use_dora(true).target_modules({"projection"})); }},
      {"bert_ia3", "bert", true,
       [] {
         return std::make_shared<peft::IA3Config>(peft::IA3Config().target_modules({"key", "value", "output.dense"})
                                                      .feedforward_modules({"output.dense"}).task_type("SEQ_CLS"));
       }},
      {"llama_tied_prefix", "llama_tied", true,
       [] { return std::make_shared<peft::PrefixTuningConfig>(peft::PrefixTuningConfig().num_virtual_tokens(3).task_type("CAUSAL_LM")); }},
  };
}

}  // namespace

TEST_CASE("write adapters trained here for real PEFT to check", "[.reverse]") {
  const char* out_env = std::getenv("PEFT_REVERSE_DIR");
  REQUIRE(out_env != nullptr);
  const fs::path out(out_env);
  json manifest = json::object();
  for (const auto& c : reverse_cases()) {
    INFO("case " << c.name);
    // Inputs of the model's kind, from a fixture case of that model.
    const std::map<std::string, std::string> inputs_of = {
        {"bert", "bert_lora"}, {"llama", "llama_ia3"}, {"vit", "vit_dora_conv"}, {"llama_tied", "llama_tied_lora"}};
    const IO in = read_io(kHf / "peft-0.21.2" / inputs_of.at(c.model) / "io.safetensors");
    torch::manual_seed(11);
    auto m = load_model(c.model);
    peft::attach(*m.module, *c.config());
    // A few steps of training, so that every adapter tensor moves away from its initialization.
    std::vector<torch::Tensor> params;
    for (auto& p : m.module->parameters())
      if (p.requires_grad()) params.push_back(p);
    REQUIRE(!params.empty());
    torch::optim::Adam opt(params, torch::optim::AdamOptions(2e-2));
    m.module->train();
    for (int step = 0; step < 4; ++step) {
      opt.zero_grad();
      auto loss = (m.logits(in) - 1.0).pow(2).mean();
      loss.backward();
      opt.step();
    }
    m.module->eval();
    torch::NoGradGuard no_grad;
    const auto dir = out / c.name;
    fs::create_directories(dir);
    peft::save_adapter(*m.module, dir / "adapter");
    IO mine = in;
    mine["ours_logits"] = m.logits(in);
    if (m.llama) mine["ours_generated"] = greedy(m.llama, in, 5);
    torch::OrderedDict<std::string, torch::Tensor> tensors;
    for (const auto& [k, v] : mine) tensors.insert(k, v.contiguous());
    peft::save_safetensors((dir / "io.safetensors").string(), tensors);
    const bool mergeable = all_mergeable(*m.module);
    if (mergeable) {
      peft::merge_and_unload(*m.module);
      peft::save_pretrained(*m.module, (dir / "merged").string());
    }
    manifest[c.name] = {{"model", c.model}, {"causal", bool(m.llama)}, {"merged", mergeable}, {"oldest_peft", c.oldest_peft}};
  }
  std::ofstream(out / "manifest.json") << manifest.dump(2) << "\n";
}

// ---------------------------------------------------------------------------------------------------
// add_weighted_adapter against PEFT's (hf_weighted.sh): we write four LoRA adapters on the LLaMA
// fixture, PEFT combines them (tests/hf_weighted.py), and we combine the same adapters the same ways.

namespace {

/// The four source adapters: rank 4 with alphas 4, 6, 12 ("c" also on o_proj, "a" also on the embedding),
/// and "d" of rank 8; random values.
void attach_weighted_sources(torch::nn::Module& model) {
  using peft::LoraConfig;
  peft::attach(model, LoraConfig().r(4).lora_alpha(4).target_modules({"q_proj", "v_proj", "embed_tokens"}).task_type("CAUSAL_LM"), "a");
  peft::attach(model, LoraConfig().r(4).lora_alpha(6).target_modules({"q_proj", "v_proj"}).task_type("CAUSAL_LM"), "b");
  peft::attach(model, LoraConfig().r(4).lora_alpha(12).target_modules({"q_proj", "v_proj", "o_proj"}).task_type("CAUSAL_LM"), "c");
  peft::attach(model, LoraConfig().r(8).lora_alpha(8).target_modules({"q_proj", "v_proj"}).task_type("CAUSAL_LM"), "d");
  torch::NoGradGuard g;
  torch::manual_seed(23);
  for (const auto& s : peft::tunable_slots(model))
    for (const char* n : {"a", "b", "c", "d"})
      if (auto* t = s.slot->adapter(n))
        for (auto& p : t->as_module().parameters(true)) p.copy_(0.5 * torch::randn_like(p));
}

}  // namespace

TEST_CASE("write LoRA adapters for PEFT's add_weighted_adapter", "[.weighted_write]") {
  const char* out_env = std::getenv("PEFT_WEIGHTED_DIR");
  REQUIRE(out_env != nullptr);
  auto m = load_model("llama");
  attach_weighted_sources(*m.module);
  peft::save_adapter(*m.module, fs::path(out_env), {"a", "b", "c", "d"});
}

TEST_CASE("add_weighted_adapter gives PEFT's adapters", "[.weighted_check]") {
  const char* out_env = std::getenv("PEFT_WEIGHTED_DIR");
  REQUIRE(out_env != nullptr);
  const fs::path dir(out_env);
  const auto cases = read_json(dir / "cases.json");
  auto m = load_model("llama");
  for (const char* n : {"a", "b", "c", "d"}) peft::load_adapter(*m.module, dir / n, n);
  std::cout << "| case | type | tensors | max |A - A_peft| | max |B - B_peft| | max |BA - (BA)_peft| |\n|---|---|---|---|---|---|\n";
  for (const auto& c : cases) {
    const auto name = c.at("name").get<std::string>();
    const auto type = c.at("combination_type").get<std::string>();
    INFO("case " << name << " (" << type << ")");
    peft::WeightedAdapterOptions o;
    o.combination_type(type);
    if (c.contains("svd_rank")) o.svd_rank(c.at("svd_rank").get<int64_t>());
    if (c.contains("density")) o.density(c.at("density").get<double>());
    if (c.contains("majority_sign_method")) o.majority_sign_method(c.at("majority_sign_method").get<std::string>());
    peft::add_weighted_adapter(*m.module, c.at("adapters").get<std::vector<std::string>>(),
                               c.at("weights").get<std::vector<double>>(), name, o);
    // The config: rank, alpha, targets as PEFT's.
    auto ours = std::dynamic_pointer_cast<const peft::LoraConfig>(peft::adapter_config(*m.module, name));
    const auto theirs = read_json(dir / ("peft_" + name + ".json"));
    CHECK(ours->r() == theirs.at("r").get<int64_t>());
    CHECK(ours->lora_alpha() == theirs.at("lora_alpha").get<double>());
    auto targets = theirs.at("target_modules").get<std::vector<std::string>>();
    auto mine = ours->target_modules().list();
    CHECK(std::set<std::string>(mine.begin(), mine.end()) == std::set<std::string>(targets.begin(), targets.end()));
    // The tensors, key for key.
    const auto state = peft::get_adapter_state_dict(*m.module, name);
    IO peft_state = read_io(dir / ("peft_" + name + ".safetensors"));
    CHECK(state.size() == peft_state.size());
    const bool svd = type.find("svd") != std::string::npos;
    double worst_a = 0, worst_b = 0, worst_ba = 0;
    for (const auto& item : state) {
      const auto& key = item.key();
      REQUIRE(peft_state.count(key));
      const bool is_a = key.find("lora_A") != std::string::npos || key.find("lora_embedding_A") != std::string::npos;
      if (!svd) {
        // the factors themselves (they are defined without any choice of sign)
        CHECK_THAT(item.value(), AllClose(peft_state.at(key), 1e-5, 1e-5));
        (is_a ? worst_a : worst_b) = std::max(is_a ? worst_a : worst_b, max_diff(item.value(), peft_state.at(key)));
      }
      if (!is_a) continue;
      // B A: an SVD's factors are defined up to the signs of singular vector pairs, their product is not
      auto bkey = key;
      bkey.replace(bkey.find("_A"), 2, "_B");
      auto ba = torch::mm(state[bkey], item.value()), ba_peft = torch::mm(peft_state.at(bkey), peft_state.at(key));
      CHECK_THAT(ba, AllClose(ba_peft, 1e-4, 1e-4));
      worst_ba = std::max(worst_ba, max_diff(ba, ba_peft));
    }
    auto cell = [&](double v) { return svd && v == 0 ? std::string("(sign-free only)") : fmt::format("{:.1e}", v); };
    std::cout << "| " << name << " | " << type << " | " << state.size() << " | " << cell(worst_a) << " | " << cell(worst_b)
              << " | " << fmt::format("{:.1e}", worst_ba) << " |\n";
  }
}
