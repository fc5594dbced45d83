#pragma once
/// \file tuners/lora_weighted.hpp
/// Combining LoRA adapters into a new one, as Hugging Face PEFT's `add_weighted_adapter` does.
///
///     peft::add_weighted_adapter(*model, {"french", "legal"}, {0.7, 0.5}, "french_legal",
///                                peft::WeightedAdapterOptions().combination_type("ties").density(0.4));
///     peft::set_adapter(*model, "french_legal");       // an ordinary adapter: train, save, merge it
///
/// With w_i the weights and s_i the adapters' scalings, per adapted module:
/// | type            | new rank     | result                                                                   |
/// |-----------------|--------------|--------------------------------------------------------------------------|
/// | linear          | r (all equal)| A = Σ √|w_i s_i| sgn(w_i s_i) A_i,  B = Σ √|w_i s_i| B_i                  |
/// | cat             | Σ r_i        | A = [w_1 s_1 A_1; w_2 s_2 A_2; ...],  B = [B_1, B_2, ...]  (exact: B A = Σ w_i s_i B_i A_i) |
/// | svd             | svd_rank     | the best rank-k factors of Σ w_i s_i B_i A_i: B = U_k S_k, A = V_kᵀ       |
/// | ties            | r            | TIES on the A's and on the B's (weights as for linear): keep each one's top `density` by magnitude, elect the sign per entry (sum or count), average the agreeing weighted entries |
/// | dare_linear     | r            | DARE: keep each entry with probability `density`, rescale by 1/density, then linear |
/// | dare_ties       | r            | DARE's random pruning, then TIES' sign election and disjoint mean        |
/// | magnitude_prune | r            | keep each one's top `density` by magnitude, then linear                  |
/// | ties_svd, dare_linear_svd, dare_ties_svd, magnitude_prune_svd | svd_rank | the same on the deltas s_i B_i A_i, then svd |
///
/// The new adapter is a copy of the first adapter's config with r = lora_alpha = the new rank (scaling
/// 1), no rank or alpha patterns, and target_modules the union of the adapters' (a list, or the regexes
/// joined with "|"). One adapter is always combined as linear. Deviations from PEFT, on purpose: an
/// existing adapter name is an error (PEFT returns silently), use_rslora is off in the result (PEFT copies
/// it, which scales the combination by √r), and the SVD is the reduced one (PEFT's default computes the
/// full U and V, an [n, n] matrix for an embedding over n tokens; the top singular triplets are the same).

#include <peft/core/error.hpp>
#include <peft/core/model.hpp>
#include <peft/tuners/lora.hpp>

#include <torch/arg.h>

#include <fmt/format.h>

#include <array>
#include <cmath>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace peft {

struct WeightedAdapterOptions {
  /// linear, cat, svd, ties, ties_svd, dare_linear, dare_linear_svd, dare_ties, dare_ties_svd,
  /// magnitude_prune, magnitude_prune_svd (PEFT's default is svd).
  TORCH_ARG(std::string, combination_type) = "svd";
  /// Rank of an svd result (default: the largest rank of the adapters).
  TORCH_ARG(std::optional<int64_t>, svd_rank) = std::nullopt;
  /// Quantile in (0, 1] at which the SVD factors' entries are clamped (PEFT's svd_clamp); none: no clamp.
  TORCH_ARG(std::optional<double>, svd_clamp) = std::nullopt;
  /// Fraction of entries kept by the pruning types (ties, dare_*, magnitude_prune); required for them.
  TORCH_ARG(std::optional<double>, density) = std::nullopt;
  /// TIES' sign election: "total" (sign of the sum) or "frequency" (sign of the count).
  TORCH_ARG(std::string, majority_sign_method) = "total";
  /// Random source of DARE's pruning; none: the default generator.
  TORCH_ARG(std::optional<at::Generator>, generator) = std::nullopt;
};

namespace merge {

/// Keeps the round(density · n) (truncated) largest-magnitude entries; density >= 1 keeps all.
inline at::Tensor magnitude_prune_tensor(const at::Tensor& t, double density) {
  if (density >= 1) return t;
  const auto k = static_cast<int64_t>(density * static_cast<double>(t.numel()));
  auto mask = at::zeros({t.numel()}, t.options());
  if (k > 0) mask.index_fill_(0, std::get<1>(t.abs().reshape({-1}).topk(k, -1, true)), 1);
  return t * mask.view(t.sizes());
}
/// Keeps each entry with probability `density` and rescales by 1 / density (DARE); density >= 1 keeps all.
inline at::Tensor random_prune_tensor(const at::Tensor& t, double density, const std::optional<at::Generator>& gen) {
  if (density >= 1) return t;
  auto keep = at::bernoulli(at::full_like(t, density), gen ? c10::optional<at::Generator>(*gen) : c10::nullopt);
  return t * keep / density;
}
/// Σ w_i t_i.
inline at::Tensor weighted_sum(const std::vector<at::Tensor>& ts, const std::vector<double>& w) {
  auto out = at::zeros_like(ts.front());
  for (std::size_t i = 0; i < ts.size(); ++i) out = out + ts[i] * w[i];
  return out;
}
/// TIES' elect-and-merge on (already pruned) tensors: the majority sign per entry (of the sum, or of the
/// count of signs), then the mean of the weighted entries that have it.
inline at::Tensor disjoint_merge(const std::vector<at::Tensor>& ts, const std::vector<double>& w, const std::string& method) {
  auto stacked = at::stack(ts);
  auto sign = stacked.sign();
  at::Tensor magnitude;
  if (method == "total") magnitude = stacked.sum(0);
  else if (method == "frequency") magnitude = sign.sum(0);
  else throw ConfigError("add_weighted_adapter: majority_sign_method must be \"total\" or \"frequency\", received \"" + method + "\"");
  auto majority = at::where(magnitude >= 0, at::ones_like(magnitude), -at::ones_like(magnitude));
  auto agree = (sign == majority).to(stacked.scalar_type());
  std::vector<int64_t> shape(static_cast<std::size_t>(stacked.dim()), 1);
  shape[0] = static_cast<int64_t>(w.size());
  auto weights = at::tensor(w, stacked.options()).view(shape);
  return (stacked * weights * agree).sum(0) / agree.sum(0).clamp_min(1.0);
}
/// One combination of `ts` with weights `w`: the type's name without "_svd".
inline at::Tensor combine(const std::string& type, const std::vector<at::Tensor>& ts, const std::vector<double>& w,
                          const WeightedAdapterOptions& o) {
  auto density = [&] {
    if (!o.density()) throw ConfigError("add_weighted_adapter: combination_type " + type + " needs a density");
    if (*o.density() < 0) throw ConfigError(fmt::format("add_weighted_adapter: density must be >= 0, received {}", *o.density()));
    return *o.density();
  };
  if (type == "linear") return weighted_sum(ts, w);
  std::vector<at::Tensor> pruned;
  if (type == "ties" || type == "magnitude_prune") {
    const double d = density();
    for (const auto& t : ts) pruned.push_back(magnitude_prune_tensor(t, d));
  } else if (type == "dare_linear" || type == "dare_ties") {
    const double d = density();
    for (const auto& t : ts) pruned.push_back(random_prune_tensor(t, d, o.generator()));
  } else {
    throw ConfigError("add_weighted_adapter: unknown combination_type '" + type + "'");
  }
  if (type == "ties" || type == "dare_ties") return disjoint_merge(pruned, w, o.majority_sign_method());
  return weighted_sum(pruned, w);
}

}  // namespace merge

/// Adds adapter `name`, combined from `adapters` with `weights` (see the file comment). Returns what
/// attach() returns for it. Refuses (before changing anything) unknown or non-LoRA adapters, DoRA,
/// Conv2d modules, ranks that the type needs equal, and a name already taken.
inline AttachResult add_weighted_adapter(ModelRef model, const std::vector<std::string>& adapters,
                                         const std::vector<double>& weights, const std::string& name,
                                         WeightedAdapterOptions options = {}) {
  auto fail = [](const std::string& m) { throw ConfigError("add_weighted_adapter: " + m); };
  if (adapters.empty()) fail("no adapters to combine");
  if (adapters.size() != weights.size())
    fail(fmt::format("{} adapters but {} weights (one weight per adapter)", adapters.size(), weights.size()));
  if (adapter_config(model, name)) throw StateError("add_weighted_adapter: the model already has an adapter named '" + name + "'");
  std::vector<std::shared_ptr<const LoraConfig>> configs;
  for (const auto& a : adapters) {
    auto cfg = adapter_config(model, a);
    if (!cfg)
      throw StateError(fmt::format("add_weighted_adapter: no adapter named '{}' in the model (adapters: {})", a,
                                   detail::join(adapter_names(model))));
    auto lora = std::dynamic_pointer_cast<const LoraConfig>(cfg);
    if (!lora) fail(fmt::format("adapter '{}' is {}, expected LORA", a, cfg->peft_type()));
    if (lora->use_dora()) fail(fmt::format("adapter '{}' is DoRA, whose magnitude vectors do not combine", a));
    configs.push_back(lora);
  }
  for (const auto& r : detail::all_saved_copies(model)) {
    int n = 0;
    for (const auto& a : adapters) n += r.copies->has(a) ? 1 : 0;
    if (n > 1) fail(fmt::format("several of the adapters train their own copy of module '{}' (modules_to_save), which cannot be combined", r.name));
  }
  std::string type = adapters.size() == 1 ? std::string("linear") : options.combination_type();
  const bool svd = type == "svd" || (type.size() > 4 && type.compare(type.size() - 4, 4, "_svd") == 0);
  const std::string base_type = type == "svd" ? "linear" : svd ? type.substr(0, type.size() - 4) : type;
  static const std::set<std::string> known = {"linear", "cat", "ties", "dare_linear", "dare_ties", "magnitude_prune"};
  if (!known.count(base_type) || (svd && base_type == "cat"))
    fail("unknown combination_type '" + type + "' (expected linear, cat, svd, ties, ties_svd, dare_linear, dare_linear_svd, "
         "dare_ties, dare_ties_svd, magnitude_prune or magnitude_prune_svd)");
  std::vector<int64_t> ranks;
  for (const auto& c : configs) {
    int64_t r = c->r();
    for (const auto& [k, v] : c->rank_pattern()) r = std::max(r, v);
    ranks.push_back(r);
  }
  int64_t new_rank = 0;
  if (type == "cat") {
    for (auto r : ranks) new_rank += r;
  } else if (svd) {
    new_rank = options.svd_rank().value_or(*std::max_element(ranks.begin(), ranks.end()));
    if (new_rank <= 0) fail(fmt::format("svd_rank must be positive, received {}", new_rank));
  } else {
    if (std::set<int64_t>(ranks.begin(), ranks.end()).size() != 1)
      fail("combination_type " + type + " needs adapters of one rank (use cat or svd for different ranks)");
    new_rank = ranks.front();
  }
  if (options.svd_clamp() && !(*options.svd_clamp() > 0 && *options.svd_clamp() <= 1))
    fail(fmt::format("svd_clamp must be a quantile in (0, 1], received {}", *options.svd_clamp()));
  // target_modules: the union of lists, or the regexes joined.
  TargetModules targets;
  const bool lists = configs.front()->target_modules().is_list();
  for (const auto& c : configs)
    if (c->target_modules().is_list() != lists)
      fail("the adapters' target_modules mix lists and regular expressions; PEFT cannot combine those either");
  if (lists) {
    std::vector<std::string> u;
    for (const auto& c : configs)
      for (const auto& t : c->target_modules().list())
        if (std::find(u.begin(), u.end(), t) == u.end()) u.push_back(t);
    targets = TargetModules(u);
  } else {
    std::string joined;
    for (const auto& c : configs) joined += (joined.empty() ? "" : "|") + ("(" + c->target_modules().regex() + ")");
    targets = TargetModules(joined);
  }
  // Every module the new adapter will adapt is Linear or Embedding, with every source adapter there LoRA.
  for (const auto& s : tunable_slots(model))
    for (const auto& a : adapters)
      if (auto* t = s.slot->adapter(a); t && !dynamic_cast<LoraLinearImpl*>(&t->as_module()) &&
                                        !dynamic_cast<LoraEmbeddingImpl*>(&t->as_module()))
        fail(fmt::format("adapter '{}' on module '{}' ({}) is not LoRA on Linear or Embedding", a, s.name, s.slot->op_kind()));

  LoraConfig cfg = *configs.front();
  cfg.r(new_rank).lora_alpha(static_cast<double>(new_rank)).use_rslora(false).target_modules(targets);
  cfg.rank_pattern({}).alpha_pattern({});
  auto result = attach(model, cfg, name);

  torch::NoGradGuard no_grad;
  // Everything is computed before anything is written; on an error the new adapter goes again.
  std::vector<std::array<at::Tensor, 4>> writes;  // target A, target B, new A, new B
  try {
  for (const auto& s : tunable_slots(model)) {
    auto* target = s.slot->adapter(name);
    if (!target) continue;
    at::Tensor tA, tB;  // the new adapter's A [rank, in] and B [out, rank]
    if (auto* l = dynamic_cast<LoraLinearImpl*>(&target->as_module())) tA = l->lora_A, tB = l->lora_B;
    else if (auto* e = dynamic_cast<LoraEmbeddingImpl*>(&target->as_module())) tA = e->lora_embedding_A, tB = e->lora_embedding_B;
    else fail(fmt::format("module '{}' ({}) cannot hold the combination", s.name, s.slot->op_kind()));
    std::vector<at::Tensor> As, Bs;
    std::vector<double> w, scale;
    for (std::size_t i = 0; i < adapters.size(); ++i) {
      auto* t = s.slot->adapter(adapters[i]);
      if (!t) continue;
      if (auto* l = dynamic_cast<LoraLinearImpl*>(&t->as_module()))
        As.push_back(l->lora_A), Bs.push_back(l->lora_B), scale.push_back(l->spec.scaling);
      else if (auto* e = dynamic_cast<LoraEmbeddingImpl*>(&t->as_module()))
        As.push_back(e->lora_embedding_A), Bs.push_back(e->lora_embedding_B), scale.push_back(e->spec.scaling);
      w.push_back(weights[i]);
    }
    if (As.empty()) {
      fail(fmt::format("module '{}' is targeted by the combined target_modules but none of the adapters adapts it", s.name));
    }
    const auto dtype = tA.scalar_type();
    at::Tensor newA, newB;
    if (type == "cat") {
      std::vector<at::Tensor> as;
      for (std::size_t i = 0; i < As.size(); ++i) as.push_back(As[i] * (w[i] * scale[i]));
      newA = at::cat(as, 0), newB = at::cat(Bs, 1);
    } else if (svd) {
      std::vector<at::Tensor> deltas;
      for (std::size_t i = 0; i < As.size(); ++i) deltas.push_back(at::mm(Bs[i], As[i]) * scale[i]);
      auto delta = merge::combine(base_type, deltas, w, options);
      auto [U, S, Vh] = at::linalg_svd(delta, /*full_matrices=*/false);
      const int64_t k = std::min(new_rank, S.size(0));
      U = at::mm(U.narrow(1, 0, k), at::diag(S.narrow(0, 0, k)));
      Vh = Vh.narrow(0, 0, k);
      if (options.svd_clamp()) {
        const auto hi = at::quantile(at::cat({U.flatten(), Vh.flatten()}), *options.svd_clamp()).item<double>();
        U = U.clamp(-hi, hi), Vh = Vh.clamp(-hi, hi);
      }
      newA = Vh, newB = U;
    } else {
      for (std::size_t i = 0; i < As.size(); ++i)
        if (As[i].sizes() != As.front().sizes())
          fail(fmt::format("module '{}': the adapters' ranks differ there ({} and {}); combination_type {} needs one rank",
                           s.name, As.front().size(0), As[i].size(0), type));
      std::vector<double> wA, wB;
      for (std::size_t i = 0; i < w.size(); ++i) {
        const double ws = w[i] * scale[i], root = std::sqrt(std::fabs(ws));
        wA.push_back(ws >= 0 ? root : -root), wB.push_back(root);
      }
      newA = merge::combine(base_type, As, wA, options), newB = merge::combine(base_type, Bs, wB, options);
    }
    writes.push_back({tA, tB, newA.to(dtype), newB.to(dtype)});
  }
  } catch (...) {
    delete_adapter(model, name);
    throw;
  }
  for (auto& [tA, tB, newA, newB] : writes) {
    tA.zero_(), tB.zero_();
    tA.narrow(0, 0, newA.size(0)).copy_(newA);
    tB.narrow(1, 0, newB.size(1)).copy_(newB);
  }
  return result;
}

}  // namespace peft
