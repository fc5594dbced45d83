#pragma once
/// \file pasta.hpp
/// PASTA, parameter-efficient tuning with special token adaptation (arXiv 2210.04382): before every
/// layer, a trainable vector is added to the hidden state of each special token,
/// h_i <- h_i + dropout(e_p^(l)), where p is the index of that special token in the sequence
/// (0 = [CLS], 1 = first [SEP], 2 = second [SEP]). Per layer an [M, d] table; the sequence length and
/// attention mask do not change. An input tuner on each block (default targets: op kind "Block").
///
/// Where the special tokens are, first found wins:
/// 1. batch_info(keys::special_token_index): int64 [B, T], p or -1 (an explicit mask from the caller);
/// 2. batch_info(keys::input_ids), which BERT and LLaMA publish: tokens equal to one of the special ids,
///    numbered in order of appearance (single and paired inputs alike). The ids are PastaConfig's
///    cls_token_id / sep_token_id when set, otherwise the model's own (keys::special_token_ids: BERT's
///    [CLS]/[SEP] from its config.json or vocab.txt, RoBERTa's 0/2, LLaMA's bos/eos). Never BERT's
///    101/102 on a model that did not say so: with neither, the forward is refused.
/// 3. without token ids (a ViT): position 0 alone, the CLS token; num_special_tokens must then be 1.
///
/// num_special_tokens = 0 (the default) takes the count the model's blocks declare: 3 on BERT (pairs:
/// [CLS] and two [SEP]), 2 on LLaMA, 1 on a ViT. Dropout follows the official code: element-wise on
/// the [B, T, d] tensor that is added, p = 0.1 (BERT's hidden_dropout_prob), training only.
///
///     peft::attach(*bert, peft::PastaConfig().modules_to_save({"classifier"}));
///
/// File (ours): peft_type "PASTA", `base_model.model.<block>.pasta_embedding` [M, d].

#include <peft/core/adapter_config.hpp>
#include <peft/core/detail/strings.hpp>
#include <peft/core/tuner.hpp>
#include <peft/core/context.hpp>
#include <peft/tuners/registry.hpp>

#include <torch/arg.h>
#include <torch/nn/cloneable.h>

#include <algorithm>
#include <vector>

namespace peft {

/// PASTA's options; target_modules empty (the default): every block.
class PastaConfig : public LayerTunerConfig<PastaConfig> {
 public:
  /// M: rows per layer (2 for single sentences, 3 for pairs, 1 for a ViT's CLS); 0: the count the
  /// model's blocks declare (resolved at attach, saved resolved).
  TORCH_ARG(int64_t, num_special_tokens) = 0;
  /// The special token ids; -1: the model's own (see the file comment).
  TORCH_ARG(int64_t, cls_token_id) = -1;
  TORCH_ARG(int64_t, sep_token_id) = -1;
  /// Element-wise dropout on the added [B, T, d] tensor (training only); the official code's
  /// hidden_dropout_prob.
  TORCH_ARG(double, pasta_dropout) = 0.1;
  /// The tables start at N(0, init_std).
  TORCH_ARG(double, init_std) = 0.02;

 public:
  std::string peft_type() const override { return "PASTA"; }
  void validate() const override {
    auto fail = [](const std::string& m) { throw ConfigError("PastaConfig: " + m); };
    if (num_special_tokens_ < 0)
      fail("num_special_tokens must be positive (or 0: from the model), received " + std::to_string(num_special_tokens_));
    if (cls_token_id_ < -1 || sep_token_id_ < -1) fail("cls_token_id and sep_token_id must be token ids (or -1: the model's)");
    if (!(pasta_dropout_ >= 0.0 && pasta_dropout_ < 1.0)) fail("pasta_dropout must be in [0, 1)");
    if (!(init_std_ >= 0.0)) fail("init_std must not be negative");
  }
  bool targets(const TunableSlot& slot, const std::string& name) const override {
    if (!target_modules_.empty()) return target_rules().matches(name);
    return std::string(slot.op_kind()) == "Block" && target_rules().admits(name);
  }
  /// Resolves num_special_tokens = 0 from the targeted blocks.
  void complete(std::vector<std::pair<std::string, TunableSlot*>>& targeted) override {
    if (num_special_tokens_ != 0) return;
    int64_t m = 0;
    for (const auto& [name, slot] : targeted) {
      const auto n = slot->special_token_count();
      if (n <= 0)
        throw MatchError("PASTA: num_special_tokens = 0 asks the model how many special tokens it uses, but module '" + name +
                         "' (" + slot->op_kind() + ") does not say; set num_special_tokens (2 for single sentences, 3 for pairs)");
      m = std::max(m, n);
    }
    num_special_tokens_ = m;
  }
  std::shared_ptr<torch::nn::Module> make_tuner(TunableSlot& slot, const std::string& name,
                                                const std::shared_ptr<const AdapterConfig>& self) const override;

  nlohmann::ordered_json to_json() const override {
    nlohmann::ordered_json j;
    write_common(j);
    j["num_special_tokens"] = num_special_tokens_;
    j["cls_token_id"] = cls_token_id_ >= 0 ? nlohmann::ordered_json(cls_token_id_) : nlohmann::ordered_json(nullptr);
    j["sep_token_id"] = sep_token_id_ >= 0 ? nlohmann::ordered_json(sep_token_id_) : nlohmann::ordered_json(nullptr);
    j["pasta_dropout"] = pasta_dropout_;
    j["init_std"] = init_std_;
    stamp(j);
    return j;
  }
  static PastaConfig from_json(const nlohmann::ordered_json& j, const std::string& source) {
    PastaConfig c;
    c.read_common(j, source);
    detail::read_field(j, "num_special_tokens", c.num_special_tokens_, source);
    for (auto [key, field] : {std::pair{"cls_token_id", &c.cls_token_id_}, std::pair{"sep_token_id", &c.sep_token_id_}}) {
      if (auto it = j.find(key); it != j.end() && it->is_null()) *field = -1;
      else detail::read_field(j, key, *field, source);
    }
    detail::read_field(j, "pasta_dropout", c.pasta_dropout_, source);
    detail::read_field(j, "init_std", c.init_std_, source);
    return c;
  }
};

/// Special-token indices [B, T] (p, or -1 for ordinary tokens) for hidden states of length `t`, from
/// the batch as the file comment describes; `ids` are the configured special ids (empty: the model's).
/// Rows of special_token_index or input_ids shorter than `t` (prompt tuning put virtual tokens in
/// front) are padded in front with -1. Throws InputError when a row holds more than `m` special tokens
/// or when the special tokens cannot be known. Every layer of one forward sees the same batch tensor:
/// the indices (and the check's one host sync) are computed for the first layer and reused.
inline at::Tensor special_token_indices(int64_t batch, int64_t t, int64_t m, const std::vector<int64_t>& ids,
                                        const at::Device& device) {
  const auto given = batch_info(keys::special_token_index);
  const auto src = given.defined() ? given : batch_info(keys::input_ids);
  if (!src.defined()) {  // no token information: position 0, a ViT's CLS token
    if (m != 1)
      throw InputError("PASTA: the batch carries no token ids, so only position 0 (a ViT's CLS token) is known to be "
                       "special, but the adapter has num_special_tokens = " + std::to_string(m) +
                       "; give the positions with batch_info '" + keys::special_token_index + "' or use num_special_tokens = 1");
    auto pos = at::arange(t, at::TensorOptions().dtype(at::kLong).device(device));
    return at::where(pos < 1, pos, at::full_like(pos, -1)).unsqueeze(0).expand({batch, t});
  }
  std::vector<int64_t> special_ids = ids;
  if (!given.defined() && special_ids.empty()) {
    const auto published = batch_info(keys::special_token_ids);
    if (!published.defined() || published.numel() == 0)
      throw InputError("PASTA: the special token ids are unknown: PastaConfig's cls_token_id / sep_token_id are unset and "
                       "the model's config names none (BERT: cls_token_id / sep_token_id in config.json or [CLS] / [SEP] in "
                       "vocab.txt beside it; LLaMA: bos_token_id / eos_token_id)");
    auto p = published.to(at::kCPU, at::kLong).contiguous();
    special_ids.assign(p.data_ptr<int64_t>(), p.data_ptr<int64_t>() + p.numel());
  }
  const auto mask = given.defined() ? at::Tensor() : batch_info(keys::attention_mask);
  struct Cache {
    at::Tensor source, result, mask;
    int64_t version = -1, t = -1, m = -1;
    std::vector<int64_t> ids;
  };
  thread_local Cache cache;
  if (cache.source.defined() && cache.source.is_same(src) && cache.version == static_cast<int64_t>(src._version()) &&
      cache.t == t && cache.m == m && cache.ids == special_ids && cache.result.device() == device &&
      cache.mask.defined() == mask.defined() && (!mask.defined() || cache.mask.is_same(mask)))
    return cache.result;

  at::Tensor idx = src;
  if (!given.defined()) {
    auto special = at::zeros_like(src, src.options().dtype(at::kBool));
    for (const auto id : special_ids) special = special | (src == id);
    // Padding is never special, even where the pad id is a special id (LLaMA setups often pad with eos).
    if (mask.defined() && mask.dim() == 2 && mask.size(0) == src.size(0) && mask.size(1) >= src.size(1))
      special = special & (mask.slice(1, mask.size(1) - src.size(1)).to(src.device()) != 0);
    auto rank = special.to(at::kLong).cumsum(1) - 1;
    idx = at::where(special, rank, at::full_like(rank, -1));
  }
  if (idx.dim() != 2 || idx.size(0) != batch || idx.size(1) > t)
    throw InputError("PASTA: special token positions must be [" + std::to_string(batch) + ", <= " + std::to_string(t) +
                     "], received " + detail::shape_str(idx.sizes().vec()));
  if (idx.size(1) < t) idx = at::cat({at::full({batch, t - idx.size(1)}, -1, idx.options()), idx}, 1);
  idx = idx.to(device, at::kLong);
  if (const auto most = idx.max().item<int64_t>(); most >= m)
    throw InputError("PASTA: the batch has " + std::to_string(most + 1) +
                     " special tokens in a row, but the adapter has num_special_tokens = " + std::to_string(m) +
                     " (use 3 for sentence pairs)");
  cache = {src, idx, mask, static_cast<int64_t>(src._version()), t, m, special_ids};
  return idx;
}

/// One layer's table [M, d], added at the special positions of the block's input.
class PastaImpl : public torch::nn::Cloneable<PastaImpl>, public Tuner {
 public:
  PastaImpl(int64_t m, int64_t d, const PastaConfig& c, std::shared_ptr<const AdapterConfig> config)
      : m(m), d(d), dropout(c.pasta_dropout()), config_(std::move(config)) {
    for (auto id : {c.cls_token_id(), c.sep_token_id()})
      if (id >= 0) ids.push_back(id);
    reset();
  }
  int64_t m, d;
  /// The configured special ids (empty: the model's).
  std::vector<int64_t> ids;
  double dropout;
  at::Tensor pasta_embedding;

  void reset() override {
    pasta_embedding = detail::register_keep_grad(*this, "pasta_embedding", pasta_embedding, at::zeros({m, d}));
  }
  Placement placement() const override { return Placement::input; }
  std::string method() const override { return "pasta"; }
  const std::shared_ptr<const AdapterConfig>& config() const override { return config_; }
  torch::nn::Module& as_module() override { return *this; }

  at::Tensor input(const at::Tensor& x) override {
    if (x.dim() != 3 || x.size(2) != d)
      throw InputError("PASTA: the block input must be [batch, seq, " + std::to_string(d) + "], received " +
                       detail::shape_str(x.sizes().vec()));
    auto idx = special_token_indices(x.size(0), x.size(1), m, ids, x.device());
    auto e = pasta_embedding.to(x.scalar_type());
    // Row 0 of the lookup table is zero (ordinary tokens); row p + 1 is e_p.
    auto added = at::embedding(at::cat({at::zeros({1, d}, e.options()), e}, 0), idx + 1);
    if (dropout > 0 && is_training()) added = at::dropout(added, dropout, true);  // element-wise, as the official code
    return x + added;
  }
  std::vector<std::pair<std::string, at::Tensor>> adapter_tensors() const override {
    return {{"pasta_embedding", pasta_embedding}};
  }
  void pretty_print(std::ostream& s) const override { s << "peft::Pasta(" << m << " x " << d << ")"; }

 private:
  std::shared_ptr<const AdapterConfig> config_;
};
TORCH_MODULE(Pasta);

inline std::shared_ptr<torch::nn::Module> PastaConfig::make_tuner(TunableSlot& slot, const std::string& name,
                                                                  const std::shared_ptr<const AdapterConfig>& self) const {
  const auto d = slot.features().first;
  if (d <= 0)
    throw MatchError("PASTA cannot adapt module '" + name + "' (" + slot.op_kind() +
                     "): its hidden width is unknown (expected a block of the model zoo)");
  if (num_special_tokens_ <= 0)
    throw ConfigError("PASTA: num_special_tokens is unresolved for module '" + name + "' (attach resolves 0 from the model)");
  auto t = std::make_shared<PastaImpl>(num_special_tokens_, d, *this, self);
  torch::NoGradGuard g;
  t->pasta_embedding.normal_(0.0, init_std_);
  return t;
}

PEFT_REGISTER_METHOD(pasta, PastaConfig, "PASTA", "PASTA")

}  // namespace peft
