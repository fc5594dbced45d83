#pragma once
// The model shapes and method variants that method_bench and dist_bench share: a BERT- or LLaMA-shaped
// encoder built from a seed, and every method set up as the benchmarks compare it.

#include <peft/peft.hpp>

#include <torch/torch.h>

#include <algorithm>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace bench {

namespace M = peft::models;

struct Shape {
  int64_t hidden, layers, heads, seq, batch, vocab;
  bool llama = false;        // LlamaModel (pre-norm, SwiGLU, RoPE, GQA) instead of BertModel
  int64_t kv_heads = 0, intermediate = 0;
  double dropout = -1;       // BERT's hidden and attention dropout; < 0: the config's default (0.1)
};
// The CPU shapes use a small vocabulary so that the encoder, not the embedding table, is what they measure.
inline const std::map<std::string, Shape>& shapes() {
  static const std::map<std::string, Shape> s = {{"small", {256, 4, 4, 128, 8, 2048}},
                                                 {"gemm", {1024, 2, 16, 128, 8, 2048}},
                                                 {"bert-base", {768, 12, 12, 512, 16, 30522}},
                                                 {"llama-tiny", {256, 2, 8, 128, 4, 2048, true, 2, 688}},
                                                 {"llama-1b", {2048, 16, 32, 512, 4, 32000, true, 8, 5632}}};
  return s;
}

/// The model under test, type-erased: BERT or LLaMA, and its forward to a [B, T, hidden] tensor.
struct Model {
  std::shared_ptr<torch::nn::Module> module;
  std::function<torch::Tensor(const torch::Tensor&)> forward;
};
inline Model build(const Shape& sh) {
  if (sh.llama) {
    auto c = M::LlamaConfig::tiny(sh.vocab, sh.hidden, sh.layers, sh.heads, sh.kv_heads, sh.intermediate);
    c.max_position_embeddings = std::max<int64_t>(2048, sh.seq);
    auto m = std::make_shared<M::LlamaModelImpl>(c);
    return {m, [m](const torch::Tensor& ids) { return m->forward(ids); }};
  }
  M::BertConfig bc;
  bc.vocab_size = sh.vocab, bc.hidden_size = sh.hidden, bc.num_hidden_layers = sh.layers, bc.num_attention_heads = sh.heads;
  // Room for prefix tuning's 20 virtual tokens: BERT places the real tokens after them (as transformers does).
  bc.intermediate_size = 4 * sh.hidden, bc.max_position_embeddings = std::max<int64_t>(512, sh.seq + 32);
  if (sh.dropout >= 0) bc.hidden_dropout_prob = bc.attention_probs_dropout_prob = sh.dropout;
  bc.cls_token_id = 101, bc.sep_token_id = 102;  // BERT's vocabulary: the inputs below start with [CLS], end with [SEP]
  auto m = std::make_shared<M::BertModelImpl>(bc, false);
  return {m, [m](const torch::Tensor& ids) { return m->forward(ids).last_hidden_state; }};
}

struct Variant {
  std::string name;
  std::function<void(torch::nn::Module&)> setup;
};
inline std::vector<Variant> variants(bool llama) {
  auto with = [](auto cfg) { return [cfg](torch::nn::Module& m) { peft::attach(m, cfg); }; };
  const std::vector<std::string> qv = llama ? std::vector<std::string>{"q_proj", "v_proj"} : std::vector<std::string>{"query", "value"};
  const std::string kv = llama ? ".*\\.(k_proj|v_proj)|.*\\.down_proj" : ".*\\.(key|value)|.*layer\\.\\d+\\.output\\.dense";
  const std::string ffn = llama ? ".*\\.down_proj" : ".*layer\\.\\d+\\.output\\.dense";
  auto lora = peft::LoraConfig().r(8).lora_alpha(16).target_modules(qv);
  std::vector<Variant> v = {
      {"full", [](torch::nn::Module& m) { for (auto& p : m.parameters()) p.set_requires_grad(true); }},
      {"lora_qv", with(lora)},
      {"lora_all", with(peft::LoraConfig().r(8).lora_alpha(16).target_modules("all-linear"))},
      {"dora_qv", with(peft::LoraConfig(lora).use_dora(true))},
      {"ia3", with(peft::IA3Config().target_modules(kv).feedforward_modules(ffn))},
      {"houlsby", with(peft::BottleneckConfig().bottleneck_size(64))},
      {"prefix", with(peft::PrefixTuningConfig().num_virtual_tokens(20))},
      {"pasta", with(peft::PastaConfig().num_special_tokens(3))},
      {"capaboost_lora_qv", with(peft::CapaBoostConfig(lora).num_copies(2).density(0.5))},
      {"rlrr", with(peft::RLRRConfig())},
  };
  if (!llama) v.insert(v.begin() + 7, {"bitfit", with(peft::BitFitConfig())});  // LLaMA has no biases
  return v;
}

}  // namespace bench
