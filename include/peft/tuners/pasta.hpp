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
/// 2. batch_info(keys::input_ids), which BERT and LLaMA publish: tokens equal to cls_token_id or
///    sep_token_id, numbered in order of appearance (single and paired inputs alike);
/// 3. otherwise the first M positions (a ViT's CLS token, M = 1).
///
///     peft::attach(*bert, peft::PastaConfig().num_special_tokens(3).modules_to_save({"classifier"}));
///
/// File (ours): peft_type "PASTA", `base_model.model.<block>.pasta_embedding` [M, d].

#include <peft/core/adapter_config.hpp>
#include <peft/core/detail/strings.hpp>
#include <peft/core/tuner.hpp>
#include <peft/core/context.hpp>
#include <peft/tuners/registry.hpp>

#include <torch/arg.h>
#include <torch/nn/cloneable.h>

namespace peft {

/// PASTA's options; target_modules empty (the default): every block.
class PastaConfig : public LayerTunerConfig<PastaConfig> {
 public:
  /// M: rows per layer (2 for single sentences, 3 for pairs, 1 for a ViT's CLS).
  TORCH_ARG(int64_t, num_special_tokens) = 3;
  TORCH_ARG(int64_t, cls_token_id) = 101;
  TORCH_ARG(int64_t, sep_token_id) = 102;
  /// Dropout on the added vectors (training only).
  TORCH_ARG(double, pasta_dropout) = 0.0;
  /// The tables start at N(0, init_std).
  TORCH_ARG(double, init_std) = 0.02;

 public:
  std::string peft_type() const override { return "PASTA"; }
  void validate() const override {
    auto fail = [](const std::string& m) { throw ConfigError("PastaConfig: " + m); };
    if (num_special_tokens_ <= 0) fail("num_special_tokens must be positive, received " + std::to_string(num_special_tokens_));
    if (!(pasta_dropout_ >= 0.0 && pasta_dropout_ < 1.0)) fail("pasta_dropout must be in [0, 1)");
    if (!(init_std_ >= 0.0)) fail("init_std must not be negative");
  }
  bool targets(const TunableSlot& slot, const std::string& name) const override {
    if (!target_modules_.empty()) return target_rules().matches(name);
    return std::string(slot.op_kind()) == "Block" && target_rules().admits(name);
  }
  std::shared_ptr<torch::nn::Module> make_tuner(TunableSlot& slot, const std::string& name,
                                                const std::shared_ptr<const AdapterConfig>& self) const override;

  nlohmann::ordered_json to_json() const override {
    nlohmann::ordered_json j;
    write_common(j);
    j["num_special_tokens"] = num_special_tokens_;
    j["cls_token_id"] = cls_token_id_;
    j["sep_token_id"] = sep_token_id_;
    j["pasta_dropout"] = pasta_dropout_;
    j["init_std"] = init_std_;
    stamp(j);
    return j;
  }
  static PastaConfig from_json(const nlohmann::ordered_json& j, const std::string& source) {
    PastaConfig c;
    c.read_common(j, source);
    detail::read_field(j, "num_special_tokens", c.num_special_tokens_, source);
    detail::read_field(j, "cls_token_id", c.cls_token_id_, source);
    detail::read_field(j, "sep_token_id", c.sep_token_id_, source);
    detail::read_field(j, "pasta_dropout", c.pasta_dropout_, source);
    detail::read_field(j, "init_std", c.init_std_, source);
    return c;
  }
};

/// Special-token indices [B, T] (p, or -1 for ordinary tokens) for hidden states of length `t`, from
/// the batch as PastaConfig describes. Rows of special_token_index or input_ids shorter than `t` (prompt
/// tuning put virtual tokens in front) are padded in front with -1. Throws InputError when a row holds
/// more than `m` special tokens. Every layer of one forward sees the same batch tensor: the indices
/// (and the check's one host sync) are computed for the first layer and reused by the others.
inline at::Tensor special_token_indices(int64_t batch, int64_t t, int64_t m, int64_t cls_id, int64_t sep_id,
                                        const at::Device& device) {
  const auto given = batch_info(keys::special_token_index);
  const auto src = given.defined() ? given : batch_info(keys::input_ids);
  if (!src.defined()) {  // no token information: the first m positions (a ViT's CLS)
    auto pos = at::arange(t, at::TensorOptions().dtype(at::kLong).device(device));
    return at::where(pos < m, pos, at::full_like(pos, -1)).unsqueeze(0).expand({batch, t});
  }
  struct Cache {
    at::Tensor source, result;
    int64_t version = -1, t = -1, m = -1, cls = 0, sep = 0;
  };
  thread_local Cache cache;
  if (cache.source.defined() && cache.source.is_same(src) && cache.version == static_cast<int64_t>(src._version()) &&
      cache.t == t && cache.m == m && cache.cls == cls_id && cache.sep == sep_id && cache.result.device() == device)
    return cache.result;

  at::Tensor idx = src;
  if (!given.defined()) {
    auto special = (src == cls_id) | (src == sep_id);
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
  cache = {src, idx, static_cast<int64_t>(src._version()), t, m, cls_id, sep_id};
  return idx;
}

/// One layer's table [M, d], added at the special positions of the block's input.
class PastaImpl : public torch::nn::Cloneable<PastaImpl>, public Tuner {
 public:
  PastaImpl(int64_t m, int64_t d, const PastaConfig& c, std::shared_ptr<const AdapterConfig> config)
      : m(m), d(d), cls_id(c.cls_token_id()), sep_id(c.sep_token_id()), dropout(c.pasta_dropout()),
        config_(std::move(config)) {
    reset();
  }
  int64_t m, d, cls_id, sep_id;
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
    auto idx = special_token_indices(x.size(0), x.size(1), m, cls_id, sep_id, x.device());
    auto e = pasta_embedding.to(x.scalar_type());
    if (dropout > 0 && is_training()) e = at::dropout(e, dropout, true);
    // Row 0 of the lookup table is zero (ordinary tokens); row p + 1 is e_p.
    auto table = at::cat({at::zeros({1, d}, e.options()), e}, 0);
    return x + at::embedding(table, idx + 1);
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
  auto t = std::make_shared<PastaImpl>(num_special_tokens_, d, *this, self);
  torch::NoGradGuard g;
  t->pasta_embedding.normal_(0.0, init_std_);
  return t;
}

PEFT_REGISTER_METHOD(pasta, PastaConfig, "PASTA", "PASTA")

}  // namespace peft
