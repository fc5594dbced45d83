// libFuzzer target for the JSON configs a user hands the library: adapter_config.json of every
// registered method (through the registry, as load_adapter reads it) and the model zoo's config.json
// (ViT, BERT, LLaMA). Any JSON input must either be accepted or raise a peft::Error; an accepted config
// must survive its own round trip (what we write, we read back to the same JSON). Anything else (a
// crash, a sanitizer report, another exception type, a round trip that changes the config) is a bug.
#include <peft/models/bert.hpp>
#include <peft/models/llama.hpp>
#include <peft/models/vit.hpp>
#include <peft/peft.hpp>

#include <cstdio>
#include <cstdlib>

namespace {

[[noreturn]] void fail(const char* what, const std::string& a, const std::string& b) {
  std::fprintf(stderr, "%s:\n  first:  %s\n  second: %s\n", what, a.c_str(), b.c_str());
  std::abort();
}

template <class Config>
void model_config(const nlohmann::ordered_json& j) {
  try {
    const auto c = Config::from_json(j, "fuzz config.json");
    const auto out = c.to_json();
    const auto again = Config::from_json(out, "fuzz round trip").to_json();
    if (again != out) fail("model config round trip changed", out.dump(), again.dump());
  } catch (const peft::Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  nlohmann::ordered_json j;
  try {
    j = nlohmann::ordered_json::parse(data, data + size);
  } catch (const nlohmann::json::exception&) {
    return 0;  // not JSON: read_adapter_config and read_json_file report that themselves
  }
  try {
    const auto cfg = peft::config_from_json(j, "fuzz adapter_config.json");
    const auto out = cfg->to_json();
    const auto again = peft::config_from_json(out, "fuzz round trip")->to_json();
    if (again != out) fail("adapter config round trip changed", out.dump(), again.dump());
  } catch (const peft::Error&) {
  }
  model_config<peft::models::ViTConfig>(j);
  model_config<peft::models::BertConfig>(j);
  model_config<peft::models::LlamaConfig>(j);
  return 0;
}
