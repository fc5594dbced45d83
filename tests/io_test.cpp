// safetensors reading/writing and every malformed-file case; atomic saves; adapter files in HF PEFT's
// layout; loads that do not fit; merging into a checkpoint; peft-cli.
#include "support/test_support.hpp"

#include <cstdlib>

// Everything below lives in this file's own namespace, so that the test sources can be compiled
// together (CMake's unity build) without their helpers meeting.
namespace peft_tests_io {

using peft_test::AllClose;
using peft_test::raw_safetensors;
using peft_test::TempDir;
using peft_test::ToyModel;

namespace {
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const peft::Error& e) {
    return e.what();
  }
  return "(no error)";
}
std::string load_error(const std::string& bytes) {
  TempDir d;
  peft_test::write_file(d / "x.safetensors", bytes);
  return error_of([&] { peft::load_safetensors(d / "x.safetensors"); });
}
}  // namespace

TEST_CASE("safetensors round trip keeps names, dtypes, shapes, values and metadata", "[safetensors]") {
  TempDir d;
  torch::OrderedDict<std::string, torch::Tensor> t;
  t.insert("f32", torch::randn({3, 4}));
  t.insert("f64", torch::randn({2}, torch::kDouble));
  t.insert("f16", torch::randn({5}).to(torch::kHalf));
  t.insert("bf16", torch::randn({2, 2}).to(torch::kBFloat16));
  t.insert("i64", torch::arange(6).view({2, 3}));
  t.insert("i32", torch::arange(3, torch::kInt));
  t.insert("i16", torch::arange(3, torch::kShort));
  t.insert("i8", torch::arange(3, torch::kChar));
  t.insert("u8", torch::arange(3, torch::kByte));
  t.insert("bool", torch::tensor({true, false, true}));
  t.insert("scalar", torch::tensor(2.5));
  t.insert("empty", torch::zeros({0, 4}));
  t.insert("strided", torch::randn({4, 4}).t());
  peft::save_safetensors(d / "a.safetensors", t, {{"format", "pt"}, {"note", "x"}});
  auto bytes = peft_test::read_file(d / "a.safetensors");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[i]);
  CHECK(n % 8 == 0);
  auto c = peft::load_safetensors(d / "a.safetensors");
  CHECK(c.metadata == std::map<std::string, std::string>{{"format", "pt"}, {"note", "x"}});
  REQUIRE(c.tensors.size() == t.size());
  for (const auto& item : t) {
    INFO(item.key());
    auto& got = c.tensors[item.key()];
    CHECK(got.scalar_type() == item.value().scalar_type());
    CHECK(got.sizes() == item.value().sizes());
    CHECK(torch::equal(got, item.value()));
  }
  peft::SafetensorsFile f(d / "a.safetensors");
  CHECK(f.info("bf16").dtype == peft::DType::BF16);
  CHECK(f.info("i64").shape == std::vector<int64_t>{2, 3});
}

TEST_CASE("safetensors reader written by Python's safetensors layout rules", "[safetensors]") {
  // Hand-built per the spec: header padded with spaces, two F32 tensors back to back.
  std::string data(8, '\0');
  float vals[2] = {1.5f, -2.0f};
  std::memcpy(data.data(), vals, 8);
  std::string header = R"({"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"__metadata__":{"format":"pt"}})";
  header.append((8 - header.size() % 8) % 8, ' ');
  TempDir d;
  peft_test::write_file(d / "h.safetensors", raw_safetensors(header, data));
  auto c = peft::load_safetensors(d / "h.safetensors");
  CHECK(c.tensors["a"].item<float>() == 1.5f);
  CHECK(c.tensors["b"].item<float>() == -2.0f);
}

TEST_CASE("every malformed safetensors file is a FormatError naming the problem", "[safetensors][bad]") {
  const std::string t4 = R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  const std::string four(4, '\0');
  CHECK(load_error(raw_safetensors(t4, four)) == "(no error)");
  CHECK_THAT(load_error("abc"), Catch::Contains("[peft.format]") && Catch::Contains("truncated"));
  CHECK_THAT(load_error(""), Catch::Contains("truncated"));
  CHECK_THAT(load_error(raw_safetensors(t4, four, 4096)), Catch::Contains("runs past the end of the file"));
  CHECK_THAT(load_error(raw_safetensors("{\"t\": nope}", "")), Catch::Contains("not valid JSON"));
  CHECK_THAT(load_error(raw_safetensors("[1,2]   ", "")), Catch::Contains("must be a JSON object"));
  CHECK_THAT(load_error(raw_safetensors(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", std::string(8, '\0'))),
             Catch::Contains("overlap") && Catch::Contains("'b'"));
  CHECK_THAT(load_error(raw_safetensors(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})", four)),
             Catch::Contains("out of order"));
  CHECK_THAT(load_error(raw_safetensors(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", "")),
             Catch::Contains("run past the data buffer"));
  CHECK_THAT(load_error(raw_safetensors(t4, std::string(12, '\0'))), Catch::Contains("cover only 4"));
  CHECK_THAT(load_error(raw_safetensors(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", std::string(8, '\0'))),
             Catch::Contains("gap in the data buffer"));
  CHECK_THAT(load_error(raw_safetensors(R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,4]}})", four)),
             Catch::Contains("needs 12 bytes") && Catch::Contains("'t'"));
  CHECK_THAT(load_error(raw_safetensors(R"({"t":{"dtype":"Q4","shape":[1],"data_offsets":[0,4]}})", four)),
             Catch::Contains("unknown dtype 'Q4'"));
  CHECK_THAT(load_error(raw_safetensors(R"({"t":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", four)),
             Catch::Contains("negative or absurd"));
  CHECK_THAT(load_error(raw_safetensors(R"({"t":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}})", four)),
             Catch::Contains("absurd"));
  CHECK_THAT(load_error(raw_safetensors(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", four)),
             Catch::Contains("duplicate tensor name 't'"));
  CHECK_THAT(load_error(raw_safetensors(R"({"__metadata__":{"format":1}})", "")),
             Catch::Contains("__metadata__ value for 'format' must be a string"));
  CHECK_THAT(load_error(raw_safetensors(R"({"t":{"dtype":"F32","shape":[1]}})", four)), Catch::Contains("data_offsets"));
  CHECK_THAT(load_error(raw_safetensors(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}})", four)),
             Catch::Contains("unexpected field 'x'"));
  // Header length over the 100 MB limit (checked before anything is read).
  CHECK_THAT(load_error(raw_safetensors(t4, four, 100'000'001)), Catch::Contains("exceeds the limit"));
  CHECK_THAT(error_of([] { peft::load_safetensors("/nonexistent/x.safetensors"); }),
             Catch::Contains("[peft.io]") && Catch::Contains("/nonexistent/x.safetensors"));
  // Messages name the file.
  CHECK_THAT(load_error("abc"), Catch::Contains("x.safetensors"));
}

TEST_CASE("saves are atomic: a failed write leaves the previous file", "[safetensors][atomic]") {
  TempDir d;
  torch::OrderedDict<std::string, torch::Tensor> t1, t2;
  t1.insert("w", torch::ones({4}));
  t2.insert("w", torch::zeros({1000}));
  peft::save_safetensors(d / "m.safetensors", t1);
  const auto before = peft_test::read_file(d / "m.safetensors");
  peft::detail::atomic_write_hook() = [](const std::string&) { throw peft::IoError("simulated crash"); };
  CHECK_THROWS_AS(peft::save_safetensors(d / "m.safetensors", t2), peft::IoError);
  peft::detail::atomic_write_hook() = nullptr;
  CHECK(peft_test::read_file(d / "m.safetensors") == before);
  std::size_t files = 0;
  for (auto& e : std::filesystem::directory_iterator(d.path())) (void)e, ++files;
  CHECK(files == 1);  // no temporary left behind
  CHECK_THROWS_AS(peft::save_safetensors("/nonexistent-dir/m.safetensors", t1), peft::IoError);
}

TEST_CASE("adapters save in HF PEFT's layout and reload exactly", "[adapter][io]") {
  torch::manual_seed(10);
  TempDir d;
  ToyModel m;
  auto cfg = peft::LoraConfig().r(4).lora_alpha(8).target_modules({"q", "v"}).modules_to_save({"head"})
                 .rank_pattern({{"layers.1.attn.v", 2}}).init_lora_weights(false);
  peft::attach(m, cfg);
  peft::attach(m, peft::BitFitConfig().target_modules({"fc1"}), "bitfit");
  {  // BitFit starts at zero: give it values a reload must reproduce
    torch::NoGradGuard g;
    for (const auto& s : peft::tunable_slots(m))
      if (auto* t = s.slot->adapter("bitfit"))
        for (auto& p : t->as_module().parameters()) p.uniform_(-0.5, 0.5);
  }
  auto ids = torch::randint(0, 32, {2, 6});
  peft::save_adapter(m, d.path());
  auto y = m->forward(ids);

  SECTION("file layout and config fields") {
    peft::SafetensorsFile f(d / "adapter_model.safetensors");
    CHECK(f.metadata() == std::map<std::string, std::string>{{"format", "pt"}});
    CHECK(f.info("base_model.model.layers.0.attn.q.lora_A.weight").shape == std::vector<int64_t>{4, 16});
    CHECK(f.info("base_model.model.layers.0.attn.q.lora_B.weight").shape == std::vector<int64_t>{16, 4});
    CHECK(f.info("base_model.model.layers.1.attn.v.lora_A.weight").shape == std::vector<int64_t>{2, 16});
    CHECK(f.info("base_model.model.head.weight").dtype == peft::DType::F32);
    CHECK(f.infos().size() == 4 * 2 + 2);
    auto j = nlohmann::json::parse(peft_test::read_file(d / "adapter_config.json"));
    for (const char* k : {"peft_type", "r", "lora_alpha", "lora_dropout", "target_modules", "bias", "use_rslora",
                          "use_dora", "fan_in_fan_out", "modules_to_save", "rank_pattern", "alpha_pattern", "init_lora_weights",
                          "layers_to_transform", "task_type", "base_model_name_or_path", "inference_mode"})
      CHECK(j.contains(k));
    // PEFT before 0.14 refuses keys it does not know: none of the newer ones while they hold defaults.
    for (const char* k : {"exclude_modules", "peft_version", "library"}) CHECK_FALSE(j.contains(k));
    CHECK(j["inference_mode"] == true);  // as PEFT saves it (load_adapter's `trainable` decides)
    CHECK(j["peft_type"] == "LORA");
    CHECK(j["r"] == 4);
    CHECK(j["lora_alpha"] == 8);
    CHECK(j["rank_pattern"]["layers.1.attn.v"] == 2);
    CHECK(j["init_lora_weights"] == false);
    CHECK(std::filesystem::exists(d.path() / "bitfit" / "adapter_config.json"));
    CHECK(nlohmann::json::parse(peft_test::read_file((d.path() / "bitfit" / "adapter_config.json").string()))["peft_type"] == "BITFIT");
  }
  SECTION("a fresh model reproduces the outputs exactly") {
    ToyModel fresh;
    peft_test::copy_weights(*fresh, *m);  // base weights (head included, as saved)
    {
      torch::NoGradGuard g;
      fresh->head->weight.normal_();  // the head must come from the adapter file
    }
    auto r = peft::load_adapter(fresh, d.path());
    CHECK(r.targeted.size() == 4);
    peft::load_adapter(fresh, d.path() / "bitfit", "bitfit");
    peft::set_adapter(fresh, std::vector<std::string>{"default"});
    peft::set_adapter(m, std::vector<std::string>{"default"});
    CHECK(torch::equal(fresh->forward(ids), m->forward(ids)));
    // BitFit's values, tensor by tensor, and its effect beside the LoRA adapter.
    auto mine = peft::get_adapter_state_dict(m, "bitfit"), theirs = peft::get_adapter_state_dict(fresh, "bitfit");
    REQUIRE(mine.keys() == theirs.keys());
    for (const auto& k : mine.keys()) CHECK(torch::equal(mine[k], theirs[k]));
    CHECK(mine[mine.keys().front()].abs().sum().item<double>() > 0);
    peft::set_adapter(fresh, std::vector<std::string>{"default", "bitfit"});
    peft::set_adapter(m, std::vector<std::string>{"default", "bitfit"});
    CHECK(torch::equal(fresh->forward(ids), m->forward(ids)));
    CHECK_FALSE(torch::allclose(m->forward(ids), y));
    peft::set_adapter(fresh, std::vector<std::string>{"default"});
    peft::set_adapter(m, std::vector<std::string>{"default"});
    CHECK(peft::count_parameters(fresh).trainable == 0);  // loaded for inference
    auto before = peft::get_adapter_state_dict(fresh);
    auto saved = peft::load_safetensors(d / "adapter_model.safetensors").tensors;
    CHECK(before.keys() == saved.keys());
    ToyModel trainable;
    peft::load_adapter(trainable, d.path(), "default", /*trainable=*/true);
    CHECK(peft::count_parameters(trainable).trainable == 4 * 2 * 16 * 4 - 2 * 16 * 2 + 3 * 16 + 3);
  }
  SECTION("BF16/F16 files load with conversion; unknown config keys are ignored") {
    auto c = peft::load_safetensors(d / "adapter_model.safetensors");
    peft::set_adapter(m, "default");
    const auto want = m->forward(ids);
    for (const auto dtype : {torch::kBFloat16, torch::kFloat16}) {
      INFO("file dtype " << dtype);
      torch::OrderedDict<std::string, torch::Tensor> half;
      for (auto& it : c.tensors) half.insert(it.key(), it.value().to(dtype));
      TempDir h;
      peft::save_safetensors(h / "adapter_model.safetensors", half);
      CHECK(peft::SafetensorsFile(h / "adapter_model.safetensors").infos().front().dtype ==
            (dtype == torch::kBFloat16 ? peft::DType::BF16 : peft::DType::F16));
      auto j = nlohmann::json::parse(peft_test::read_file(d / "adapter_config.json"));
      j["some_future_field"] = {1, 2};
      j.erase("lora_dropout");
      peft_test::write_file(h / "adapter_config.json", j.dump());
      ToyModel fresh;
      peft_test::copy_weights(*fresh, *m);
      peft::load_adapter(fresh, h.path());
      // The loaded values are the file's, converted: exactly the half-precision values widened.
      auto loaded = peft::get_adapter_state_dict(fresh);
      for (const auto& k : loaded.keys()) CHECK(torch::equal(loaded[k], half[k].to(torch::kFloat)));
      // F16 keeps 3 more mantissa bits than BF16: its outputs are closer.
      CHECK_THAT(fresh->forward(ids), AllClose(want, dtype == torch::kBFloat16 ? 2e-2 : 2e-3, 2e-2));
    }
  }
}

TEST_CASE("adapters that do not fit are rejected and the model is left untouched", "[adapter][bad]") {
  torch::manual_seed(11);
  TempDir d;
  ToyModel m;
  peft::attach(m, peft::LoraConfig().r(4).target_modules({"q", "v"}).modules_to_save({"head"}).init_lora_weights(false));
  peft::save_adapter(m, d.path());
  auto good = peft::load_safetensors(d / "adapter_model.safetensors");
  auto cfg = nlohmann::json::parse(peft_test::read_file(d / "adapter_config.json"));

  auto try_load = [&](const torch::OrderedDict<std::string, torch::Tensor>& tensors, const nlohmann::json& config) {
    TempDir bad;
    peft::save_safetensors(bad / "adapter_model.safetensors", tensors);
    peft_test::write_file(bad / "adapter_config.json", config.dump());
    ToyModel fresh;
    auto snapshot = fresh->named_parameters().values();
    std::vector<torch::Tensor> copies;
    for (auto& p : snapshot) copies.push_back(p.clone());
    auto msg = error_of([&] { peft::load_adapter(fresh, bad.path()); });
    CHECK(peft::adapter_names(fresh).empty());
    auto after = fresh->named_parameters().values();
    REQUIRE(after.size() == copies.size());
    for (std::size_t i = 0; i < after.size(); ++i) CHECK(torch::equal(after[i], copies[i]));
    return msg;
  };
  auto without = [&](const std::string& key) {
    torch::OrderedDict<std::string, torch::Tensor> t;
    for (auto& it : good.tensors)
      if (it.key() != key) t.insert(it.key(), it.value());
    return t;
  };
  SECTION("missing tensor") {
    CHECK_THAT(try_load(without("base_model.model.layers.1.attn.v.lora_B.weight"), cfg),
               Catch::Contains("[peft.adapter]") && Catch::Contains("missing tensor 'base_model.model.layers.1.attn.v.lora_B.weight'"));
  }
  SECTION("extra tensor") {
    auto t = good.tensors;
    t.insert("base_model.model.layers.0.attn.k.lora_A.weight", torch::zeros({4, 16}));
    CHECK_THAT(try_load(t, cfg), Catch::Contains("unexpected tensor 'base_model.model.layers.0.attn.k.lora_A.weight'"));
  }
  SECTION("wrong shape") {
    auto t = without("base_model.model.layers.0.attn.q.lora_A.weight");
    t.insert("base_model.model.layers.0.attn.q.lora_A.weight", torch::zeros({4, 15}));
    CHECK_THAT(try_load(t, cfg), Catch::Contains("expected shape [4, 16], received [4, 15]"));
  }
  SECTION("rank not matching the config") {
    auto c = cfg;
    c["r"] = 8;
    // Found from the file's shapes before any tuner is built.
    CHECK_THAT(try_load(good.tensors, c), Catch::Contains("[peft.adapter]") && Catch::Contains("q.lora_A.weight' has rank 4") &&
                                              Catch::Contains("allows only 8 (r and rank_pattern)"));
    c["rank_pattern"] = {{"q", 4}};  // q's rank fits now; v's (4 against r = 8) still does not
    CHECK_THAT(try_load(good.tensors, c), Catch::Contains("expected shape [8, 16], received [4, 16]") &&
                                              Catch::Contains("v.lora_A.weight"));
  }
  SECTION("target not in the model") {
    auto c = cfg;
    c["target_modules"] = {"query", "value"};
    CHECK_THAT(try_load(good.tensors, c), Catch::Contains("[peft.match]") && Catch::Contains("matched no tunable module"));
  }
  SECTION("bad config") {
    auto c = cfg;
    c["peft_type"] = "MYSTERY";
    CHECK_THAT(try_load(good.tensors, c), Catch::Contains("[peft.config]") && Catch::Contains("MYSTERY"));
    c = cfg;
    c["r"] = "four";
    CHECK_THAT(try_load(good.tensors, c), Catch::Contains("field 'r' must be an integer, received \"four\""));
    c = cfg;
    c["use_dora"] = true;  // a plain LoRA file under a DoRA config: the magnitudes are missing
    CHECK_THAT(try_load(good.tensors, c), Catch::Contains("missing tensor 'base_model.model.layers.0.attn.q.lora_magnitude_vector'"));
    c = cfg;
    c["lora_bias"] = true;
    CHECK_THAT(try_load(good.tensors, c), Catch::Contains("lora_bias"));
  }
  SECTION("missing files") {
    ToyModel fresh;
    CHECK_THAT(error_of([&] { peft::load_adapter(fresh, "/nonexistent-adapter"); }), Catch::Contains("[peft.io]"));
  }
}

TEST_CASE("merging an adapter into a safetensors checkpoint", "[merge][checkpoint][cli]") {
  torch::manual_seed(12);
  TempDir d;
  ToyModel m;
  {
    torch::NoGradGuard g;
    m->to(torch::kFloat);
  }
  // The base checkpoint in BF16 for some tensors, to check that dtypes are kept.
  torch::OrderedDict<std::string, torch::Tensor> base;
  for (auto& p : m->named_parameters()) base.insert(p.key(), p.value().detach().clone());
  base["embed.weight"] = base["embed.weight"].to(torch::kBFloat16);
  peft::save_safetensors(d / "model.safetensors", base, {{"format", "pt"}, {"origin", "test"}});
  peft::attach(m, peft::LoraConfig().r(4).lora_alpha(16).use_rslora(true).target_modules({"q", "fc2", "embed"})
                      .alpha_pattern({{"fc2", 2}}).modules_to_save({"head"}).init_lora_weights(false));
  {
    torch::NoGradGuard g;
    m->head->weight.add_(1.0);
  }
  peft::save_adapter(m, d / "adapter");
  const double S = 0.5;
  auto report = peft::merge_lora_checkpoint(d / "model.safetensors", d.path() / "adapter", d / "merged.safetensors", S);
  CHECK(report.merged == 2 * 2 + 1);
  CHECK(report.replaced == 2);  // head.weight, head.bias
  auto merged = peft::SafetensorsFile(d / "merged.safetensors");
  CHECK(merged.metadata() == std::map<std::string, std::string>{{"format", "pt"}, {"origin", "test"}});
  CHECK(merged.info("embed.weight").dtype == peft::DType::BF16);
  // Independent expectation from the live tuners: W + S * alpha/sqrt(r) * B A; for the embedding,
  // (B A)^T (PEFT's lora_embedding_A [r, vocab], lora_embedding_B [dim, r]), kept in BF16.
  auto* q = dynamic_cast<peft::LoraLinearImpl*>(m->layers[1]->as<peft_test::BlockImpl>()->q->adapter("default"));
  auto q_expected = (base["layers.1.attn.q.weight"] + S * (16 / 2.0) * torch::mm(q->lora_B, q->lora_A)).detach();
  auto* f = dynamic_cast<peft::LoraLinearImpl*>(m->layers[0]->as<peft_test::BlockImpl>()->fc2->adapter("default"));
  auto f_expected = (base["layers.0.mlp.fc2.weight"] + S * (2 / 2.0) * torch::mm(f->lora_B, f->lora_A)).detach();
  auto* e = dynamic_cast<peft::LoraEmbeddingImpl*>(m->embed->adapter("default"));
  REQUIRE(e != nullptr);
  auto e_delta = (S * (16 / 2.0) * torch::mm(e->lora_embedding_B, e->lora_embedding_A).t()).detach();
  REQUIRE(e_delta.abs().max().item<double>() > 0.1);
  auto e_expected = base["embed.weight"].to(torch::kFloat) + e_delta;
  const auto head_w = m->head->weight.detach().clone();
  auto check_merged = [&](const std::string& path) {
    INFO("merged file " << path);
    peft::SafetensorsFile out(path);
    CHECK_THAT(out.tensor("layers.1.attn.q.weight"), AllClose(q_expected, 1e-5));
    CHECK_THAT(out.tensor("layers.0.mlp.fc2.weight"), AllClose(f_expected, 1e-5));
    CHECK(out.info("embed.weight").dtype == peft::DType::BF16);
    CHECK_THAT(out.tensor("embed.weight").to(torch::kFloat), AllClose(e_expected, 2e-2, 1e-2));
    CHECK_FALSE(torch::allclose(out.tensor("embed.weight").to(torch::kFloat), base["embed.weight"].to(torch::kFloat), 1e-2, 1e-2));
    CHECK(torch::equal(out.tensor("layers.0.attn.k.weight"), base["layers.0.attn.k.weight"]));
    CHECK(torch::equal(out.tensor("head.weight"), head_w));
  };
  check_merged(d / "merged.safetensors");

  SECTION("base weight missing is an AdapterError naming it; nothing is written") {
    torch::OrderedDict<std::string, torch::Tensor> partial;
    for (auto& it : base)
      if (it.key() != "layers.0.attn.q.weight") partial.insert(it.key(), it.value());
    peft::save_safetensors(d / "partial.safetensors", partial);
    CHECK_THAT(error_of([&] { peft::merge_lora_checkpoint(d / "partial.safetensors", d.path() / "adapter", d / "out.safetensors"); }),
               Catch::Contains("[peft.adapter]") && Catch::Contains("'layers.0.attn.q.weight'"));
    CHECK_FALSE(std::filesystem::exists(d.path() / "out.safetensors"));
  }
#ifdef PEFT_CLI_PATH
  SECTION("peft-cli merge, inspect, and errors with non-zero exit") {
    auto run = [](const std::string& args) { return std::system((std::string(PEFT_CLI_PATH) + " " + args + " > /dev/null 2>&1").c_str()); };
    CHECK(run("merge --base " + (d / "model.safetensors") + " --adapter " + (d / "adapter") + " --out " + (d / "cli.safetensors") + " --scale 0.5") == 0);
    check_merged(d / "cli.safetensors");  // the hand expectations, not the library's own merge
    CHECK(peft_test::read_file(d / "cli.safetensors") == peft_test::read_file(d / "merged.safetensors"));
    CHECK(run("inspect " + (d / "model.safetensors")) == 0);
    CHECK(run("inspect " + (d / "adapter")) == 0);
    peft_test::write_file(d / "junk.safetensors", "junk");
    CHECK(run("inspect " + (d / "junk.safetensors")) != 0);
    CHECK(run("merge --base " + (d / "junk.safetensors") + " --adapter " + (d / "adapter") + " --out " + (d / "x.safetensors")) != 0);
    CHECK(run("merge --base " + (d / "model.safetensors")) != 0);
    CHECK(run("frobnicate") != 0);
    std::string out = (d / "out.txt");
    std::system((std::string(PEFT_CLI_PATH) + " inspect " + (d / "adapter") + " > " + out + " 2>&1").c_str());
    CHECK_THAT(peft_test::read_file(out), Catch::Contains("method: LoRA (peft_type LORA)") && Catch::Contains("trainable parameters:"));
    std::system((std::string(PEFT_CLI_PATH) + " methods > " + out + " 2>&1").c_str());
    const auto listed = peft_test::read_file(out);
    for (const auto& m : peft::MethodRegistry::global().methods())  // every built-in one (TEST_SHIFT lives in this test only)
      if (m.peft_type != "TEST_SHIFT") CHECK_THAT(listed, Catch::Contains(m.peft_type + "\t" + m.display_name + "\n"));
  }
#endif
}

// A method the library does not know, defined here the way a user would: a trainable shift added to a
// Linear's output (parallel placement), registered under its own peft_type.
namespace shift_method {

class ShiftConfig : public peft::AdapterConfig {
 public:
  TORCH_ARG(peft::TargetModules, target_modules);
  TORCH_ARG(bool, inference_mode) = false;

 public:
  std::string peft_type() const override { return "TEST_SHIFT"; }
  peft::TargetRules target_rules() const override { return {target_modules_, {}, {}, {}}; }
  std::shared_ptr<torch::nn::Module> make_tuner(peft::TunableSlot& slot, const std::string& name,
                                                const std::shared_ptr<const peft::AdapterConfig>& self) const override;
  nlohmann::ordered_json to_json() const override {
    return {{"peft_type", "TEST_SHIFT"}, {"target_modules", target_modules_.to_json()}, {"inference_mode", inference_mode_}};
  }
  static ShiftConfig from_json(const nlohmann::ordered_json& j, const std::string&) {
    ShiftConfig c;
    c.target_modules_ = peft::TargetModules::from_json(j.at("target_modules"), "target_modules");
    c.inference_mode_ = j.value("inference_mode", false);
    return c;
  }
  std::shared_ptr<peft::AdapterConfig> clone() const override { return std::make_shared<ShiftConfig>(*this); }
  bool frozen() const override { return inference_mode_; }
  void set_frozen(bool f) override { inference_mode_ = f; }
};

class ShiftImpl : public torch::nn::Cloneable<ShiftImpl>, public peft::Tuner {
 public:
  ShiftImpl(int64_t features, std::shared_ptr<const peft::AdapterConfig> config) : features(features), config_(std::move(config)) {
    reset();
  }
  void reset() override { shift = register_parameter("shift", torch::zeros({features})); }
  peft::Placement placement() const override { return peft::Placement::parallel; }
  std::string method() const override { return "shift"; }
  const std::shared_ptr<const peft::AdapterConfig>& config() const override { return config_; }
  torch::nn::Module& as_module() override { return *this; }
  at::Tensor parallel(const at::Tensor&, const at::Tensor& y) override { return y + shift; }
  std::vector<std::pair<std::string, at::Tensor>> adapter_tensors() const override { return {{"shift", shift}}; }

  int64_t features;
  torch::Tensor shift;

 private:
  std::shared_ptr<const peft::AdapterConfig> config_;
};

inline std::shared_ptr<torch::nn::Module> ShiftConfig::make_tuner(peft::TunableSlot& slot, const std::string& name,
                                                                  const std::shared_ptr<const peft::AdapterConfig>& self) const {
  if (std::string(slot.op_kind()) != "Linear") throw peft::MatchError("shift adapts Linear ops only, not '" + name + "'");
  return std::make_shared<ShiftImpl>(slot.features().second, self);
}

PEFT_REGISTER_METHOD(test_shift, ShiftConfig, "TEST_SHIFT", "Output shift (test)")

}  // namespace shift_method

TEST_CASE("a method defined outside the library registers, attaches, saves and loads", "[registry][adapter][io]") {
  const auto& registry = peft::MethodRegistry::global();
  SECTION("the registry knows every built-in method and the new one") {
    std::vector<std::string> types;
    for (const auto& m : registry.methods()) types.push_back(m.peft_type);
    CHECK(types == std::vector<std::string>{"BITFIT", "BOTTLENECK", "CAPABOOST", "IA3", "LORA", "PASTA", "PREFIX_TUNING",
                                            "PROMPT_TUNING", "RLRR", "TEST_SHIFT", "VPT_DEEP"});
    CHECK(registry.at("TEST_SHIFT").display_name == "Output shift (test)");
    CHECK(registry.at("LORA").display_name == "LoRA");
  }
  SECTION("a peft_type is registered once") {
    try {
      peft::register_method<shift_method::ShiftConfig>("TEST_SHIFT", "Another shift");
      FAIL("a second registration of TEST_SHIFT was accepted");
    } catch (const peft::ConfigError& e) {
      CHECK(e.message() == "registering method 'Another shift': peft_type 'TEST_SHIFT' is already registered by 'Output shift (test)'");
    }
  }
  SECTION("round trip through the adapter files") {
    torch::manual_seed(21);
    TempDir d;
    ToyModel m;
    auto r = peft::attach(m, shift_method::ShiftConfig().target_modules({"fc2"}));
    CHECK(r.targeted == std::vector<std::string>{"layers.0.mlp.fc2", "layers.1.mlp.fc2"});
    CHECK(peft::count_parameters(m).trainable == 2 * 16);
    {
      torch::NoGradGuard g;
      for (auto& p : m->parameters())
        if (p.requires_grad()) p.normal_();
    }
    auto ids = torch::randint(0, 32, {2, 5});
    auto y = m->forward(ids);
    peft::save_adapter(m, d.path());
    auto j = nlohmann::json::parse(peft_test::read_file(d / "adapter_config.json"));
    CHECK(j["peft_type"] == "TEST_SHIFT");
    peft::SafetensorsFile f(d / "adapter_model.safetensors");
    CHECK(f.info("base_model.model.layers.1.mlp.fc2.shift").shape == std::vector<int64_t>{16});

    ToyModel fresh;
    peft_test::copy_weights(*fresh, *m);  // base weights only: the shifts are not parameters of fresh yet
    CHECK_FALSE(torch::allclose(fresh->forward(ids), y));
    peft::load_adapter(fresh, d.path());
    CHECK(torch::equal(fresh->forward(ids), y));
    CHECK(std::dynamic_pointer_cast<const shift_method::ShiftConfig>(peft::adapter_config(fresh, "default")));
  }
  SECTION("an unknown peft_type names the known ones") {
    TempDir d;
    peft_test::write_file(d / "adapter_config.json", R"({"peft_type": "NOPE"})");
    ToyModel m;
    try {
      peft::load_adapter(m, d.path());
      FAIL("an unknown peft_type was accepted");
    } catch (const peft::ConfigError& e) {
      const std::string msg = e.message();
      CHECK(msg.find("peft_type 'NOPE' is not supported (expected one of BITFIT, BOTTLENECK, CAPABOOST, IA3, LORA") != std::string::npos);
      CHECK(msg.find("TEST_SHIFT") != std::string::npos);
    }
  }
}

}  // namespace peft_tests_io
