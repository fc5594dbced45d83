#pragma once
/// \file prompt.hpp
/// Prompt tuning (arXiv 2104.08691) and visual prompt tuning (VPT, arXiv 2203.12119): n trainable
/// token embeddings join the sequence.
///
/// - shallow (PEFT's PROMPT_TUNING): an output tuner on the embedding op inserts them once: in front of
///   the tokens at the output of a text model's token embedding (`word_embeddings`, `embed_tokens`;
///   PEFT's placement, so positions, token types and the padding mask cover them), or after the CLS
///   token at the output of a ViT's `embeddings` (VPT's placement, no position embedding).
/// - deep (VPT-deep; ours, peft_type VPT_DEEP): in addition, an input tuner on every further block
///   replaces the previous layer's prompt outputs with a fresh set.
///
///     peft::attach(*vit, peft::PromptTuningConfig().num_virtual_tokens(8).deep(true).modules_to_save({"classifier"}));
///
/// The model's output sequence grows by n (ViT: [CLS, prompts, patches]; text: [prompts, tokens]).
/// File: `prompt_embeddings` [n, token_dim], PEFT's key and shape; deep: [L·n, token_dim], the
/// embedding's set first, then one set per further layer. modules_to_save keys start with
/// "base_model." as PEFT writes them for prompt learning.

#include <peft/core/adapter_config.hpp>
#include <peft/core/tuner.hpp>
#include <peft/core/context.hpp>
#include <peft/slots/embedding.hpp>
#include <peft/tuners/prompt_learning.hpp>
#include <peft/tuners/registry.hpp>

#include <torch/arg.h>
#include <torch/nn/cloneable.h>

#include <algorithm>
#include <cmath>

namespace peft {

class PromptTuningConfig : public PromptLearningConfig<PromptTuningConfig> {
 public:
  /// VPT-deep: fresh prompts at every layer (peft_type VPT_DEEP).
  TORCH_ARG(bool, deep) = false;
  /// "RANDOM" (N(0, 1), PEFT's), "TEXT" (the token embeddings of init_token_ids, repeated or cut to n
  /// as PEFT does with its tokenized text), "SAMPLE_VOCAB" (embeddings of random vocabulary entries)
  /// or "XAVIER" (VPT's: U(±sqrt(6 / (fan + d))) with fan the patch embedding's fan-in C·p², as
  /// VPT's code does with 3·p²; on a model without a patch embedding, fan = n). TEXT and SAMPLE_VOCAB
  /// need a token embedding. The further layers of deep prompts use XAVIER when asked, else RANDOM.
  TORCH_ARG(std::string, prompt_tuning_init) = "RANDOM";
  TORCH_ARG(std::vector<int64_t>, init_token_ids);
  /// Kept for PEFT (the text PEFT would tokenize); C++ takes init_token_ids.
  TORCH_ARG(std::string, prompt_tuning_init_text);
  TORCH_ARG(std::string, tokenizer_name_or_path);
  /// Index in the embedding output where the prompts go; -1: automatic (0 for a token embedding,
  /// 1 after the CLS token of a ViT).
  TORCH_ARG(int64_t, insert_position) = -1;

 public:
  std::string peft_type() const override { return deep_ ? "VPT_DEEP" : "PROMPT_TUNING"; }
  int64_t joined_dim() const override { return 0; }

  void validate() const override {
    validate_common("PromptTuningConfig");
    const auto& i = prompt_tuning_init_;
    if (i != "RANDOM" && i != "TEXT" && i != "SAMPLE_VOCAB" && i != "XAVIER")
      throw ConfigError("PromptTuningConfig: prompt_tuning_init must be RANDOM, TEXT, SAMPLE_VOCAB or XAVIER, received \"" + i + "\"");
    if (i == "TEXT" && init_token_ids_.empty() && !inference_mode_)
      throw ConfigError("PromptTuningConfig: prompt_tuning_init TEXT needs init_token_ids (the token ids of the init text)");
    if (insert_position_ < -1) throw ConfigError("PromptTuningConfig: insert_position must be >= 0 or -1 (automatic)");
  }

  static bool is_token_embedding(const TunableSlot& slot, const std::string& name) {
    if (std::string(slot.op_kind()) != "Embedding") return false;
    const std::string last = last_component(name);
    return last == "word_embeddings" || last == "embed_tokens" || last == "wte" || last == "embed_in";
  }
  bool targets(const TunableSlot& slot, const std::string& name) const override {
    const std::string kind = slot.op_kind();
    if (!target_modules_.empty()) return target_modules_.matches(name);
    return is_token_embedding(slot, name) || kind == "Embeddings" || (deep_ && kind == "Block");
  }

  void complete(std::vector<std::pair<std::string, TunableSlot*>>& targeted) override {
    const std::string cls = "PromptTuningConfig";
    std::vector<std::pair<std::string, TunableSlot*>> emb, blocks;
    for (const auto& t : targeted) {
      const std::string kind = t.second->op_kind();
      if (kind == "Block") blocks.push_back(t);
      else if (kind == "Embedding" || kind == "Embeddings") emb.push_back(t);
      else throw MatchError(cls + ": cannot put prompts at module '" + t.first + "' (" + kind +
                            "); expected the embedding op (and blocks for deep prompts)");
    }
    // A text model has both an embeddings composite and the token embedding inside: PEFT's place is
    // the token embedding.
    if (target_modules_.empty() && std::any_of(emb.begin(), emb.end(), [](const auto& e) { return is_token_embedding(*e.second, e.first); }))
      emb.erase(std::remove_if(emb.begin(), emb.end(), [](const auto& e) { return !is_token_embedding(*e.second, e.first); }), emb.end());
    if (emb.size() != 1) {
      std::string names;
      for (const auto& e : emb) names += (names.empty() ? "" : ", ") + e.first;
      throw MatchError(cls + ": expected exactly one embedding op to put the prompts after, found " + std::to_string(emb.size()) +
                       (names.empty() ? std::string(" (name it in target_modules)") : " (" + names + "; name one in target_modules)"));
    }
    if (!deep_ && !blocks.empty())
      throw MatchError(cls + ": block '" + blocks.front().first + "' is targeted, but only deep prompts use blocks");
    const bool token = std::string(emb.front().second->op_kind()) == "Embedding";
    position_ = insert_position_ >= 0 ? insert_position_ : (token ? 0 : 1);
    const int64_t d = token ? emb.front().second->base_weights().weight.size(1) : emb.front().second->features().second;
    if (d <= 0) throw MatchError(cls + ": the width of '" + emb.front().first + "' is unknown");
    detail::fill_or_check(token_dim_, d, "token_dim", cls);
    // VPT's Xavier bound uses the patch embedding's fan-in: the embeddings op's 4-D (Conv2d) weight.
    patch_fan_ = 0;
    for (const auto& p : emb.front().second->as_module().parameters(true))
      if (p.dim() == 4) patch_fan_ = p.size(1) * p.size(2) * p.size(3);
    if (deep_) {
      // The first block reads the prompts the embedding inserted; every further one gets its own.
      auto first = std::min_element(blocks.begin(), blocks.end(), [](const auto& a, const auto& b) {
        return layer_index(a.first, {}).value_or(0) < layer_index(b.first, {}).value_or(0);
      });
      if (first != blocks.end()) blocks.erase(first);
      detail::fill_or_check(num_layers_, static_cast<int64_t>(blocks.size()) + 1, "num_layers", cls);
    }
    targeted = emb;
    targeted.insert(targeted.end(), blocks.begin(), blocks.end());
  }

  std::shared_ptr<torch::nn::Module> make_tuner(TunableSlot& slot, const std::string& name,
                                                const std::shared_ptr<const AdapterConfig>& self) const override;

  nlohmann::ordered_json to_json() const override {
    nlohmann::ordered_json j;
    write_common(j, peft_type());
    j["prompt_tuning_init"] = prompt_tuning_init_;
    j["prompt_tuning_init_text"] = detail::null_if_empty(prompt_tuning_init_text_);
    j["tokenizer_name_or_path"] = detail::null_if_empty(tokenizer_name_or_path_);
    // Ours (PEFT tokenizes prompt_tuning_init_text instead): written only when set.
    if (!init_token_ids_.empty()) j["init_token_ids"] = init_token_ids_;
    if (insert_position_ != -1) j["insert_position"] = insert_position_;
    write_targets(j, /*stamp=*/deep_);
    return j;
  }
  static PromptTuningConfig from_json(const nlohmann::ordered_json& j, const std::string& source) {
    PromptTuningConfig c;
    c.read_common(j, source);
    c.deep_ = j.value("peft_type", std::string()) == "VPT_DEEP";
    detail::read_field(j, "prompt_tuning_init", c.prompt_tuning_init_, source);
    detail::read_field(j, "prompt_tuning_init_text", c.prompt_tuning_init_text_, source);
    detail::read_field(j, "tokenizer_name_or_path", c.tokenizer_name_or_path_, source);
    c.init_token_ids_ = detail::read_int_list(j, "init_token_ids", source);
    detail::read_field(j, "insert_position", c.insert_position_, source);
    return c;
  }
  std::shared_ptr<AdapterConfig> clone() const override { return std::make_shared<PromptTuningConfig>(*this); }

 private:
  int64_t position_ = 0;  // resolved insert position (complete())
  int64_t patch_fan_ = 0;  // the patch embedding's fan-in C·p² (complete()), 0: none
};

/// n prompt tokens [n, d]. Output placement on the embedding op: inserted at `position` of the
/// sequence. Input placement on a block (deep prompts): they replace positions [position, position + n).
class PromptImpl : public torch::nn::Cloneable<PromptImpl>, public Tuner {
 public:
  PromptImpl(int64_t n, int64_t d, int64_t position, bool replace, std::shared_ptr<const AdapterConfig> config)
      : n(n), d(d), position(position), replace(replace), config_(std::move(config)) {
    reset();
  }
  int64_t n, d, position;
  bool replace;
  at::Tensor prompt;

  void reset() override { prompt = detail::register_keep_grad(*this, "prompt", prompt, at::randn({n, d})); }
  Placement placement() const override { return replace ? Placement::input : Placement::output; }
  std::string method() const override { return "prompt_tuning"; }
  const std::shared_ptr<const AdapterConfig>& config() const override { return config_; }
  torch::nn::Module& as_module() override { return *this; }

  at::Tensor output(const at::Tensor& y) override {
    if (decoding()) return y;
    check(y, "embedding output", 0);
    const auto b = y.size(0);
    return at::cat({y.narrow(1, 0, position), prompt.to(y.scalar_type()).unsqueeze(0).expand({b, n, d}),
                    y.narrow(1, position, y.size(1) - position)},
                   1);
  }
  at::Tensor input(const at::Tensor& x) override {
    if (decoding()) return x;
    check(x, "block input", n);
    const auto b = x.size(0), rest = x.size(1) - position - n;
    return at::cat({x.narrow(1, 0, position), prompt.to(x.scalar_type()).unsqueeze(0).expand({b, n, d}),
                    x.narrow(1, position + n, rest)},
                   1);
  }
  std::vector<std::pair<std::string, at::Tensor>> adapter_tensors() const override { return {{"prompt_embeddings", prompt}}; }
  void pretty_print(std::ostream& s) const override {
    s << "peft::Prompt(" << n << " tokens x " << d << ", " << (replace ? "replace" : "insert") << " at " << position << ")";
  }

 private:
  // Later steps of incremental decoding: the virtual tokens (and, deep, their per-layer replacements)
  // are in the KV cache already.
  static bool decoding() {
    auto past = batch_info(keys::past_length);
    return past.defined() && past.item<int64_t>() > 0;
  }
  void check(const at::Tensor& h, const char* what, int64_t extra) const {
    if (h.dim() != 3 || h.size(2) != d || h.size(1) < position + extra)
      throw InputError("prompt tuning: the " + std::string(what) + " must be [batch, seq >= " + std::to_string(position + extra) +
                       ", " + std::to_string(d) + "], received " + detail::shape_str(h.sizes().vec()));
  }
  std::shared_ptr<const AdapterConfig> config_;
};
TORCH_MODULE(Prompt);

inline std::shared_ptr<torch::nn::Module> PromptTuningConfig::make_tuner(TunableSlot& slot, const std::string& name,
                                                                         const std::shared_ptr<const AdapterConfig>& self) const {
  const bool block = std::string(slot.op_kind()) == "Block";
  auto t = std::make_shared<PromptImpl>(num_virtual_tokens_, token_dim_, position_, block, self);
  torch::NoGradGuard g;
  const auto n = num_virtual_tokens_;
  const auto& init = prompt_tuning_init_;
  if (init == "XAVIER") {  // VPT: fan = C·p² of the patch embedding (3·p² for RGB)
    const double a = std::sqrt(6.0 / static_cast<double>((patch_fan_ > 0 ? patch_fan_ : n) + token_dim_));
    t->prompt.uniform_(-a, a);
  } else if (!block && (init == "TEXT" || init == "SAMPLE_VOCAB") && !inference_mode_) {
    const auto w = slot.base_weights().weight;
    if (std::string(slot.op_kind()) != "Embedding" || !w.defined())
      throw ConfigError("PromptTuningConfig: prompt_tuning_init " + init + " needs a token embedding, but '" + name +
                        "' is a " + slot.op_kind());
    at::Tensor ids;
    if (init == "TEXT") {
      for (auto id : init_token_ids_)
        if (id < 0 || id >= w.size(0))
          throw ConfigError("PromptTuningConfig: init token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                            std::to_string(w.size(0)) + ")");
      std::vector<int64_t> v;
      while (static_cast<int64_t>(v.size()) < n) v.insert(v.end(), init_token_ids_.begin(), init_token_ids_.end());
      v.resize(static_cast<std::size_t>(n));
      ids = at::tensor(v, at::kLong);
    } else {
      ids = at::randint(0, w.size(0), {n}, at::kLong);
    }
    t->prompt.copy_(w.detach().index_select(0, ids.to(w.device())).to(t->prompt.scalar_type()));
  }
  return t;
}

PEFT_REGISTER_METHOD(prompt_tuning, PromptTuningConfig, "PROMPT_TUNING", "Prompt tuning")
PEFT_REGISTER_METHOD(vpt_deep, PromptTuningConfig, "VPT_DEEP", "VPT-deep")

}  // namespace peft
