#pragma once
/// \file capaboost.hpp
/// CapaBoost (arXiv 2407.01320): d parallel copies of one shared trainable weight, each under its own
/// static random binary mask of density ρ, outputs summed. A modifier of another method's tuner:
///
/// - over LoRA: y = base(x) + s · Σ_i (B ⊙ M_i^B)((A ⊙ M_i^A) x); mergeable, ΔW = s · Σ_i (B ⊙ M_i^B)(A ⊙ M_i^A),
///   whose rank can reach min(d·r, in, out) with the parameters of rank r ("capacity for free");
/// - over a bottleneck adapter: h + Σ_i Up_i(act(Down_i(h))), Down_i = W_down ⊙ M_i, Up_i = W_up ⊙ M'_i,
///   biases unmasked; not mergeable.
///
///     auto lora = peft::LoraConfig().r(8).target_modules({"query", "value"});
///     peft::attach(*vit, peft::CapaBoostConfig(lora).num_copies(2).density(0.5).seed(7));
///
/// One parameter per matrix (not d tied copies): its gradient is Σ_i M_i ⊙ ∂L/∂W_i. The copies run as
/// one stacked product (rank d·r for LoRA) whose masked weights are built from mask buffers that live
/// on the weight's device. Masks hold exactly round(numel·ρ) ones, chosen without replacement by a
/// portable generator seeded from (seed, module path, copy, matrix): they are regenerated at load and
/// never stored. mask_type("2:4") draws N:M structured masks instead (N of every M consecutive entries
/// along a row; density N/M). The tuner starts as the identity (B = 0, W_up = 0), as the paper says.
///
/// Live parameters: an entry under none of the d masks never touches the output and never gets a
/// gradient; a share 1-(1-ρ)^d of each matrix is live (0.75 at d = 2, ρ = 0.5). The dead entries are
/// zero from the start (so zero in the file, with any optimizer: their gradient is exactly 0) and
/// count_parameters / trainable_report leave them out, as the paper compares at equal live parameters.
/// LoRA dropout draws a fresh mask per copy, as the official code does.
///
/// File (ours): peft_type "CAPABOOST", the inner method's keys (lora_A.weight / lora_B.weight, or
/// adapter_down / adapter_up), and the inner config under "base_config".

#include <peft/core/adapter_config.hpp>
#include <peft/core/detail/strings.hpp>
#include <peft/core/error.hpp>
#include <peft/nn/feed_forward.hpp>
#include <peft/tuners/bottleneck.hpp>
#include <peft/tuners/lora.hpp>
#include <peft/tuners/registry.hpp>

#include <torch/arg.h>
#include <torch/nn/cloneable.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace peft {

namespace detail {
/// splitmix64: a small, portable generator (identical masks on every platform and LibTorch version).
struct SplitMix64 {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
  /// Uniform in [0, n) without modulo bias.
  uint64_t below(uint64_t n) {
    const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t v;
    do v = next(); while (v >= limit);
    return v % n;
  }
};
inline uint64_t fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ULL;
  return h;
}
/// A {0, 1} float mask of `shape` with exactly round(numel·density) ones at positions chosen uniformly
/// without replacement (partial Fisher-Yates), from `seed`.
inline at::Tensor capaboost_mask(at::IntArrayRef shape, double density, uint64_t seed) {
  int64_t numel = 1;
  for (auto s : shape) numel *= s;
  const auto ones = static_cast<int64_t>(std::llround(static_cast<double>(numel) * density));
  std::vector<int64_t> perm(static_cast<std::size_t>(numel));
  for (int64_t i = 0; i < numel; ++i) perm[static_cast<std::size_t>(i)] = i;
  SplitMix64 rng{seed};
  auto mask = at::zeros({numel}, at::kFloat);
  auto* m = mask.data_ptr<float>();
  for (int64_t i = 0; i < ones; ++i) {
    const auto j = i + static_cast<int64_t>(rng.below(static_cast<uint64_t>(numel - i)));
    std::swap(perm[static_cast<std::size_t>(i)], perm[static_cast<std::size_t>(j)]);
    m[perm[static_cast<std::size_t>(i)]] = 1.0f;
  }
  return mask.view(shape);
}
/// An N:M structured {0, 1} mask of a 2-D `shape`: in every group of m consecutive entries of a row,
/// exactly n ones at positions chosen uniformly (partial Fisher-Yates), from `seed`.
inline at::Tensor capaboost_nm_mask(at::IntArrayRef shape, int64_t n, int64_t m, uint64_t seed, const std::string& what) {
  if (shape.size() != 2 || shape[1] % m != 0)
    throw ConfigError("CapaBoost: an " + std::to_string(n) + ":" + std::to_string(m) + " mask needs rows whose length is a multiple of " +
                      std::to_string(m) + "; " + what + " has shape " + detail::shape_str(shape.vec()));
  auto mask = at::zeros(shape, at::kFloat);
  auto* p = mask.data_ptr<float>();
  SplitMix64 rng{seed};
  std::vector<int64_t> perm(static_cast<std::size_t>(m));
  for (int64_t g = 0; g < mask.numel() / m; ++g) {
    for (int64_t i = 0; i < m; ++i) perm[static_cast<std::size_t>(i)] = i;
    for (int64_t i = 0; i < n; ++i) {
      const auto j = i + static_cast<int64_t>(rng.below(static_cast<uint64_t>(m - i)));
      std::swap(perm[static_cast<std::size_t>(i)], perm[static_cast<std::size_t>(j)]);
      p[g * m + perm[static_cast<std::size_t>(i)]] = 1.0f;
    }
  }
  return mask;
}
/// "random" -> {0, 0}; "N:M" with 0 < N <= M -> {N, M}; anything else throws ConfigError.
inline std::pair<int64_t, int64_t> capaboost_mask_form(const std::string& type) {
  if (type == "random") return {0, 0};
  const auto colon = type.find(':');
  try {
    if (colon != std::string::npos) {
      std::size_t a = 0, b = 0;
      const auto n = std::stoll(type.substr(0, colon), &a), m = std::stoll(type.substr(colon + 1), &b);
      if (a == colon && b == type.size() - colon - 1 && n > 0 && n <= m && m <= 64) return {n, m};
    }
  } catch (const std::exception&) {
  }
  throw ConfigError("CapaBoostConfig: mask_type must be \"random\" or \"N:M\" with 0 < N <= M <= 64 (e.g. \"2:4\"), received \"" +
                    type + "\"");
}
/// d masks stacked: [d, shape...], copy i seeded from (seed, module, matrix, i); `form` from
/// capaboost_mask_form ({0, 0}: random of `density`).
inline at::Tensor capaboost_masks(int64_t d, at::IntArrayRef shape, double density, uint64_t seed, const std::string& module,
                                  const std::string& matrix, std::pair<int64_t, int64_t> form = {0, 0}) {
  std::vector<at::Tensor> ms;
  for (int64_t i = 0; i < d; ++i) {
    const auto s = seed ^ fnv1a(module + "|" + matrix + "|" + std::to_string(i));
    ms.push_back(form.first ? capaboost_nm_mask(shape, form.first, form.second, s, module + " " + matrix)
                            : capaboost_mask(shape, density, s));
  }
  return at::stack(ms);
}
/// Entries under at least one of the stacked masks [d, ...]: a {0, 1} tensor of the matrix's shape.
inline at::Tensor capaboost_live(const at::Tensor& masks) { return (masks.sum(0) > 0).to(masks.scalar_type()); }
inline int64_t capaboost_dead(const at::Tensor& masks) { return (masks.sum(0) == 0).sum().item<int64_t>(); }
}  // namespace detail

class CapaBoostConfig : public AdapterConfig {
 public:
  /// Over LoRA (Linear layers) or over a bottleneck adapter.
  explicit CapaBoostConfig(const LoraConfig& lora) : inner_(std::make_shared<LoraConfig>(lora)) {}
  explicit CapaBoostConfig(const BottleneckConfig& adapter) : inner_(std::make_shared<BottleneckConfig>(adapter)) {}

  /// d: masked copies of each shared weight.
  TORCH_ARG(int64_t, num_copies) = 2;
  /// ρ: share of ones in every mask (random masks).
  TORCH_ARG(double, density) = 0.5;
  TORCH_ARG(int64_t, seed) = 0;
  /// "random" (density ρ, unstructured) or "N:M" structured, e.g. "2:4" (density N/M; `density` unused).
  TORCH_ARG(std::string, mask_type) = "random";

 public:
  const AdapterConfig& base_config() const { return *inner_; }
  const LoraConfig* lora() const { return dynamic_cast<const LoraConfig*>(inner_.get()); }
  const BottleneckConfig* adapter() const { return dynamic_cast<const BottleneckConfig*>(inner_.get()); }

  std::string peft_type() const override { return "CAPABOOST"; }
  TargetRules target_rules() const override { return inner_->target_rules(); }
  std::vector<std::string> saved_modules() const override { return inner_->saved_modules(); }
  std::string bias_mode() const override { return inner_->bias_mode(); }
  bool targets(const TunableSlot& slot, const std::string& name) const override { return inner_->targets(slot, name); }
  void validate() const override {
    inner_->validate();
    if (num_copies_ < 1) throw ConfigError("CapaBoostConfig: num_copies must be >= 1, received " + std::to_string(num_copies_));
    if (!(density_ > 0.0 && density_ <= 1.0)) throw ConfigError("CapaBoostConfig: density must be in (0, 1]");
    if (auto* l = lora(); l && l->use_dora()) throw ConfigError("CapaBoostConfig: LoRA with use_dora is not supported");
    detail::capaboost_mask_form(mask_type_);
  }
  std::shared_ptr<torch::nn::Module> make_tuner(TunableSlot& slot, const std::string& name,
                                                const std::shared_ptr<const AdapterConfig>& self) const override;

  nlohmann::ordered_json to_json() const override {
    nlohmann::ordered_json j;
    j["peft_type"] = "CAPABOOST";
    j["num_copies"] = num_copies_;
    j["density"] = density_;
    j["seed"] = seed_;
    j["mask_type"] = mask_type_;
    j["base_config"] = inner_->to_json();
    j["inference_mode"] = inner_->frozen();
    detail::CommonConfigFields::stamp(j);
    return j;
  }
  static std::shared_ptr<CapaBoostConfig> from_json(const nlohmann::ordered_json& j, const std::string& source) {
    auto it = j.find("base_config");
    if (it == j.end() || !it->is_object() || !it->contains("peft_type") || !(*it)["peft_type"].is_string())
      throw ConfigError("'" + source + "': CAPABOOST needs an object 'base_config' with the inner method's config "
                        "(a string 'peft_type' and its fields)");
    const auto type = (*it)["peft_type"].get<std::string>();
    std::shared_ptr<CapaBoostConfig> c;
    if (type == "LORA") c = std::make_shared<CapaBoostConfig>(LoraConfig::from_json(*it, source + " base_config"));
    else if (type == "BOTTLENECK") c = std::make_shared<CapaBoostConfig>(BottleneckConfig::from_json(*it, source + " base_config"));
    else throw ConfigError("'" + source + "': CAPABOOST base_config must be LORA or BOTTLENECK, received " + type);
    detail::read_field(j, "num_copies", c->num_copies_, source);
    detail::read_field(j, "density", c->density_, source);
    detail::read_field(j, "seed", c->seed_, source);
    detail::read_field(j, "mask_type", c->mask_type_, source);
    return c;
  }
  bool frozen() const override { return inner_->frozen(); }
  void set_frozen(bool f) override { inner_->set_frozen(f); }
  std::shared_ptr<AdapterConfig> clone() const override {
    auto c = std::make_shared<CapaBoostConfig>(*this);
    c->inner_ = inner_->clone();
    return c;
  }

 private:
  std::shared_ptr<AdapterConfig> inner_;
};

/// CapaBoost over LoRA on a Linear: shared A [r, in], B [out, r]; masks [d, r, in], [d, out, r].
class CapaBoostLoraImpl : public torch::nn::Cloneable<CapaBoostLoraImpl>, public Tuner {
 public:
  CapaBoostLoraImpl(int64_t in, int64_t out, LoraSpec spec, int64_t copies, double density, uint64_t seed, std::string module,
                    std::pair<int64_t, int64_t> form = {0, 0})
      : in_features(in), out_features(out), spec(std::move(spec)), copies(copies), density(density), seed(seed),
        module(std::move(module)), form(form) {
    reset();
  }
  int64_t in_features, out_features;
  LoraSpec spec;
  int64_t copies;
  double density;
  uint64_t seed;
  std::string module;
  std::pair<int64_t, int64_t> form;  // N:M, or {0, 0} for random masks
  at::Tensor lora_A, lora_B, mask_A, mask_B;

  void reset() override {
    lora_A = detail::register_keep_grad(*this, "lora_A", lora_A, at::empty({spec.r, in_features}));
    lora_B = detail::register_keep_grad(*this, "lora_B", lora_B, at::empty({out_features, spec.r}));
    init_lora_pair(lora_A, lora_B, spec.init, spec.r);
    // Buffers: they follow the weights to any device and dtype, and are not trainable or saved.
    mask_A = register_buffer("mask_A", detail::capaboost_masks(copies, {spec.r, in_features}, density, seed, module, "A", form));
    mask_B = register_buffer("mask_B", detail::capaboost_masks(copies, {out_features, spec.r}, density, seed, module, "B", form));
    torch::NoGradGuard g;  // entries under no mask: zero, never trained
    lora_A.mul_(detail::capaboost_live(mask_A));
    lora_B.mul_(detail::capaboost_live(mask_B));
    dead_ = detail::capaboost_dead(mask_A) + detail::capaboost_dead(mask_B);
  }
  int64_t dead_parameters() const override { return dead_; }
  Placement placement() const override { return Placement::parallel; }
  std::string method() const override { return "capaboost_lora"; }
  const std::shared_ptr<const AdapterConfig>& config() const override { return spec.config; }
  torch::nn::Module& as_module() override { return *this; }
  bool mergeable() const override { return true; }

  /// The d masked copies stacked: A [d·r, in] and B [out, d·r], so that B_s A_s = Σ_i (B ⊙ M_i^B)(A ⊙ M_i^A).
  std::pair<at::Tensor, at::Tensor> stacked() const {
    auto a = (lora_A.unsqueeze(0) * mask_A).reshape({copies * spec.r, in_features});
    auto b = (lora_B.unsqueeze(0) * mask_B).permute({1, 0, 2}).reshape({out_features, copies * spec.r});
    return {a, b};
  }
  at::Tensor parallel(const at::Tensor& x, const at::Tensor& y) override {
    auto [a, b] = stacked();
    at::Tensor h;
    if (spec.dropout > 0 && is_training()) {  // a fresh dropout mask per copy: [d, N, in] x [d, in, r]
      const auto rows = x.reshape({-1, in_features});
      auto xs = at::dropout(rows.unsqueeze(0).expand({copies, rows.size(0), in_features}), spec.dropout, true);
      h = at::bmm(xs, a.view({copies, spec.r, in_features}).transpose(1, 2)).permute({1, 0, 2}).reshape({-1, copies * spec.r});
    } else {
      h = at::matmul(x, a.t()).reshape({-1, copies * spec.r});
    }
    auto out = at::addmm(y.reshape({-1, out_features}), h, b.t(), 1, spec.scaling);
    return out.view(y.sizes());
  }
  WeightSet delta(const WeightSet&) const override {
    auto [a, b] = stacked();
    return {at::mm(b, a).mul_(spec.scaling), {}};
  }
  std::vector<std::pair<std::string, at::Tensor>> adapter_tensors() const override {
    return {{"lora_A.weight", lora_A}, {"lora_B.weight", lora_B}};
  }
  void pretty_print(std::ostream& s) const override {
    s << "peft::CapaBoostLora(in_features=" << in_features << ", out_features=" << out_features << ", r=" << spec.r
      << ", copies=" << copies;
    if (form.first) s << ", mask=" << form.first << ":" << form.second << ")";
    else s << ", density=" << density << ")";
  }

 private:
  int64_t dead_ = 0;
};
TORCH_MODULE(CapaBoostLora);

/// CapaBoost over a bottleneck adapter: shared Down [b, in] and Up [out, b] under d masks each.
class CapaBoostAdapterImpl : public torch::nn::Cloneable<CapaBoostAdapterImpl>, public Tuner {
 public:
  CapaBoostAdapterImpl(int64_t in, int64_t out, int64_t size, std::string act, double scaling, Placement where,
                       int64_t copies, double density, uint64_t seed, std::string module,
                       std::shared_ptr<const AdapterConfig> config, std::pair<int64_t, int64_t> form = {0, 0})
      : in_features(in), out_features(out), size(size), act_name(std::move(act)), scaling(scaling), where(where),
        copies(copies), density(density), seed(seed), module(std::move(module)), form(form), config_(std::move(config)) {
    reset();
  }
  int64_t in_features, out_features, size;
  std::string act_name;
  double scaling;
  Placement where;
  int64_t copies;
  double density;
  uint64_t seed;
  std::string module;
  std::pair<int64_t, int64_t> form;
  torch::nn::Linear adapter_down{nullptr}, adapter_up{nullptr};
  at::Tensor mask_down, mask_up;

  void reset() override {
    act_ = nn::activation(act_name);
    std::tie(adapter_down, adapter_up) = detail::register_bottleneck(*this, in_features, size, out_features);
    mask_down = register_buffer("mask_down", detail::capaboost_masks(copies, {size, in_features}, density, seed, module, "down", form));
    mask_up = register_buffer("mask_up", detail::capaboost_masks(copies, {out_features, size}, density, seed, module, "up", form));
    torch::NoGradGuard g;  // entries under no mask: zero, never trained (the biases are unmasked)
    adapter_down->weight.mul_(detail::capaboost_live(mask_down));
    adapter_up->weight.mul_(detail::capaboost_live(mask_up));
    dead_ = detail::capaboost_dead(mask_down) + detail::capaboost_dead(mask_up);
  }
  int64_t dead_parameters() const override { return dead_; }
  Placement placement() const override { return where; }
  std::string method() const override { return "capaboost_adapter"; }
  const std::shared_ptr<const AdapterConfig>& config() const override { return config_; }
  torch::nn::Module& as_module() override { return *this; }

  /// Σ_i Up_i(act(Down_i(h))) as one stacked product: Down [d·b, in], Up [out, d·b]; each copy adds the
  /// (unmasked) up bias.
  at::Tensor branch(const at::Tensor& h) {
    auto down = (adapter_down->weight.unsqueeze(0) * mask_down).reshape({copies * size, in_features});
    auto up = (adapter_up->weight.unsqueeze(0) * mask_up).permute({1, 0, 2}).reshape({out_features, copies * size});
    auto z = act_(at::linear(h, down, adapter_down->bias.repeat({copies})));
    return at::linear(z, up, adapter_up->bias * static_cast<double>(copies));
  }
  at::Tensor output(const at::Tensor& y) override { return y + scaling * branch(y); }
  at::Tensor parallel(const at::Tensor& x, const at::Tensor& y) override { return y + scaling * branch(x); }
  std::vector<std::pair<std::string, at::Tensor>> adapter_tensors() const override {
    return detail::bottleneck_tensors(adapter_down, adapter_up);
  }
  void pretty_print(std::ostream& s) const override {
    s << "peft::CapaBoostAdapter(" << placement_name(where) << ", " << in_features << " -> " << size << " -> "
      << out_features << ", copies=" << copies << ", density=" << density << ")";
  }

 private:
  std::function<at::Tensor(const at::Tensor&)> act_;
  std::shared_ptr<const AdapterConfig> config_;
  int64_t dead_ = 0;
};
TORCH_MODULE(CapaBoostAdapter);

inline std::shared_ptr<torch::nn::Module> CapaBoostConfig::make_tuner(TunableSlot& slot, const std::string& name,
                                                                      const std::shared_ptr<const AdapterConfig>& self) const {
  const auto s = static_cast<uint64_t>(seed_);
  const auto form = detail::capaboost_mask_form(mask_type_);
  if (const auto* l = lora()) {
    auto* lin = dynamic_cast<LinearImpl*>(&slot.as_module());
    if (!lin) throw MatchError("CapaBoost-LoRA cannot adapt module '" + name + "' of kind " + slot.op_kind() + " (expected Linear)");
    auto [r, alpha] = l->rank_alpha(name);
    LoraSpec spec{r, alpha, lora_scaling(alpha, r, l->use_rslora()), l->lora_dropout(), l->init_lora_weights().mode, self};
    return std::make_shared<CapaBoostLoraImpl>(lin->options.in_features(), lin->options.out_features(), spec, num_copies_,
                                               density_, s, name, form);
  }
  const auto* a = adapter();
  auto [in, out, size] = a->shape_for(slot, name);
  return std::make_shared<CapaBoostAdapterImpl>(in, out, size, a->non_linearity(), a->scaling(), a->placement(), num_copies_,
                                                density_, s, name, self, form);
}

PEFT_REGISTER_METHOD(capaboost, CapaBoostConfig, "CAPABOOST", "CapaBoost")

}  // namespace peft
