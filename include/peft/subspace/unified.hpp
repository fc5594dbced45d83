#pragma once
/// \file unified.hpp
/// The unified optimization subspace (Yi et al., arXiv 2210.13311): adapter, LoRA and prefix solutions
/// of one task share a low-dimensional subspace. Each method k gets learned maps between its flat
/// space R^{D_k} (a FlatView) and a shared R^r:
///
///   encode  I_k = W2 tanh(W1 Δθ_k + b1) + b2        (Linear(D_k, r), tanh, Linear(r, r))
///   decode  Δθ̂_k = U_k I                            (Linear(r, D_k) without bias)
///
/// all weights and biases N(0, 0.02), as in the official code. Stage 1 (`UnifiedSubspace::step`) draws
/// one solution per method and a random convex mixture (α ~ U(0, 1), β ~ U(0, 1 − α), the rest to the
/// last method; the same stick-breaking for any number of methods), I = Σ w_k I_k, and minimises
///
///   Σ_k [ L_task(θ0_k + U_k I) + α_rec ‖Δθ_k − U_k I_k‖₂ ]        (the plain, non-squared distance)
///
/// over the maps only: one forward and backward per method and step. Stage 2 freezes everything and
/// trains z ∈ R^r alone (init N(0, 0.02)) through one method's U_k: `Intrinsic(view, projection(k),
/// 0.02)`. Stage 3 decodes that z through another method's U_j with no training: `apply(j, z)`.
///
///     peft::subspace::UnifiedSubspace uni(peft::subspace::UnifiedOptions().r(4).alpha_rec(0.1));
///     uni.add_method("lora", FlatView::of_adapter(*lora_model), {lora_solution});    // Δθ vectors
///     uni.add_method("prefix", FlatView::of_adapter(*prefix_model), {prefix_solution});
///     torch::optim::Adam opt(uni.parameters(), 1e-4);
///     for (...) { opt.zero_grad(); uni.step([&](std::size_t k) { return task_loss(k); }); opt.step(); }
///     uni.save("subspace.safetensors");

#include <peft/core/error.hpp>
#include <peft/io/safetensors.hpp>
#include <peft/subspace/flat_view.hpp>
#include <peft/subspace/projection.hpp>
#include <peft/tuners/bottleneck.hpp>
#include <peft/tuners/lora.hpp>
#include <peft/tuners/prefix.hpp>

#include <ATen/CPUGeneratorImpl.h>
#include <nlohmann/json.hpp>
#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace peft::subspace {

/// One method's maps to and from the shared subspace.
class SubspaceMapImpl : public torch::nn::Cloneable<SubspaceMapImpl> {
 public:
  SubspaceMapImpl(int64_t D, int64_t r, uint64_t seed = 0) : D(D), r(r), seed(seed) { reset(); }
  int64_t D, r;
  uint64_t seed;
  torch::nn::Linear encoder{nullptr}, encoder_low{nullptr}, decoder{nullptr};

  void reset() override {
    encoder = register_module("encoder", torch::nn::Linear(D, r));
    encoder_low = register_module("encoder_low", torch::nn::Linear(r, r));
    decoder = register_module("decoder", torch::nn::Linear(torch::nn::LinearOptions(r, D).bias(false)));
    at::NoGradGuard g;
    auto gen = at::detail::createCPUGenerator(seed);  // seeded here: the global generator is not touched
    for (auto& p : parameters()) p.normal_(0.0, 0.02, gen);
  }
  /// I_k: a solution's code in R^r.
  at::Tensor encode(const at::Tensor& delta) { return encoder_low(at::tanh(encoder(delta))); }
  /// U_k z: a code's delta in the method's flat space.
  at::Tensor decode(const at::Tensor& z) { return decoder(z); }
};
TORCH_MODULE(SubspaceMap);

/// A learned decoder U_k as a fixed projection (stages 2 and 3): gradients reach z, never U_k.
class DecoderProjection : public Projection {
 public:
  DecoderProjection(at::Tensor u, std::string method) : u_(u.detach()), method_(std::move(method)) {}
  int64_t in_dim() const override { return u_.size(1); }
  int64_t out_dim() const override { return u_.size(0); }
  std::string name() const override { return "DecoderProjection(" + method_ + ")"; }
  at::Tensor forward(const at::Tensor& z) const override {
    check_input(z);
    return at::mv(u_.to(z.options().requires_grad(false)), z);
  }

 private:
  at::Tensor u_;
  std::string method_;
};

struct UnifiedOptions {
  /// The subspace's dimension (paper: 4 single-task, 100 multi-task).
  TORCH_ARG(int64_t, r) = 4;
  /// Weight of the reconstruction term (paper: 0.1 single-task, 10 multi-task).
  TORCH_ARG(double, alpha_rec) = 0.1;
  /// Seeds the maps' init and every step's draws (solutions and mixture).
  TORCH_ARG(uint64_t, seed) = 0;
};

/// The paper's three sources at one trainable count on an encoder of `layers` blocks of width `hidden`:
/// a Houlsby adapter of width b without biases (4·L·d·b), LoRA of rank b on query and value (the same
/// 4·L·d·b) and prefix tuning of `prefix_tokens` tokens reparameterised through an MLP (HF PEFT's
/// layout: n·d + d·h + h + h·2Ld + 2Ld) whose width h is chosen to come nearest. The paper: b = 12 /
/// r = 10 / 120 tokens at h = 24, 1,105,920 each on T5-base.
struct MatchedSources {
  BottleneckConfig adapter;
  LoraConfig lora;
  PrefixTuningConfig prefix;
  int64_t adapter_count = 0, lora_count = 0, prefix_count = 0;
};
inline MatchedSources matched_sources(int64_t hidden, int64_t layers, int64_t b, int64_t prefix_tokens) {
  if (hidden < 1 || layers < 1 || b < 1 || prefix_tokens < 1)
    throw ConfigError("matched_sources: hidden, layers, width and prefix tokens must be positive");
  MatchedSources m;
  m.adapter = BottleneckConfig().variant("houlsby").bottleneck_size(b).bias(false);
  m.lora = LoraConfig().r(b).lora_alpha(2 * b).target_modules({"query", "value"});
  m.adapter_count = m.lora_count = 4 * layers * hidden * b;
  const int64_t out = 2 * layers * hidden, fixed = prefix_tokens * hidden + out, per_h = hidden + 1 + out;
  const int64_t h = std::max<int64_t>(1, (m.lora_count - fixed + per_h / 2) / per_h);
  m.prefix = PrefixTuningConfig().num_virtual_tokens(prefix_tokens).prefix_projection(true).encoder_hidden_size(h);
  m.prefix_count = fixed + h * per_h;
  return m;
}

class UnifiedSubspace {
 public:
  explicit UnifiedSubspace(UnifiedOptions options = {}) : o_(options), rng_(options.seed()) {
    if (o_.r() < 1) throw ConfigError("UnifiedSubspace: r must be positive, received " + std::to_string(o_.r()));
    if (!(o_.alpha_rec() >= 0)) throw ConfigError("UnifiedSubspace: alpha_rec must be non-negative");
  }

  /// Adds a method: `view` on a model that carries that method's adapter (its θ0 is the adapter's
  /// init) and the method's solutions, each a Δθ vector of view.numel() values (view.delta() after
  /// training). In the multi-task setting `tasks` tags each solution with its task (default: all task
  /// 0); a step then draws one task and one of that task's solutions per method. The maps are created
  /// here, from the seed and the method's position.
  void add_method(const std::string& name, FlatView view, std::vector<at::Tensor> solutions, std::vector<int64_t> tasks = {}) {
    if (tasks.empty()) tasks.assign(solutions.size(), 0);
    if (tasks.size() != solutions.size())
      throw InputError("UnifiedSubspace: method '" + name + "' has " + std::to_string(solutions.size()) + " solutions and " +
                       std::to_string(tasks.size()) + " task tags");
    for (const auto& m : methods_)
      if (m.name == name) throw StateError("UnifiedSubspace: method '" + name + "' was added already");
    if (solutions.empty()) throw InputError("UnifiedSubspace: method '" + name + "' needs at least one solution");
    for (auto& s : solutions) {
      if (!s.defined() || s.dim() != 1 || s.size(0) != view.numel())
        throw InputError("UnifiedSubspace: a solution of '" + name + "' has " + (s.defined() ? std::to_string(s.numel()) : "no") +
                         " values, its adapter has " + std::to_string(view.numel()));
      s = s.detach().to(view.options());
    }
    SubspaceMap map(view.numel(), o_.r(), o_.seed() * 1000003ULL + methods_.size());
    map->to(view.options().device(), view.options().dtype().toScalarType());
    methods_.push_back({name, std::move(view), std::move(solutions), std::move(tasks), map});
  }

  std::size_t size() const { return methods_.size(); }
  const UnifiedOptions& options() const { return o_; }
  std::size_t index(const std::string& name) const {
    for (std::size_t k = 0; k < methods_.size(); ++k)
      if (methods_[k].name == name) return k;
    throw StateError("UnifiedSubspace: no method '" + name + "'");
  }
  const std::string& name(std::size_t k) const { return at(k).name; }
  FlatView& view(std::size_t k) { return at(k).view; }
  SubspaceMap& map(std::size_t k) { return at(k).map; }
  const std::vector<at::Tensor>& solutions(std::size_t k) const { return at(k).solutions; }
  const std::vector<int64_t>& solution_tasks(std::size_t k) const { return at(k).tasks; }

  /// Every map's parameters: what stage 1 trains.
  std::vector<at::Tensor> parameters() const {
    std::vector<at::Tensor> out;
    for (const auto& m : methods_)
      for (const auto& p : m.map->parameters()) out.push_back(p);
    return out;
  }

  /// Random convex weights for the methods: stick-breaking with uniform pieces (the paper's α, β and
  /// 1 − α − β for three methods).
  std::vector<double> draw_weights() {
    std::uniform_real_distribution<double> u(0.0, 1.0);
    std::vector<double> w(methods_.size(), 0.0);
    double left = 1.0;
    for (std::size_t k = 0; k + 1 < w.size(); ++k) {
      w[k] = u(rng_) * left;
      left -= w[k];
    }
    if (!w.empty()) w.back() = left;
    return w;
  }

  struct StepLosses {
    std::vector<double> weights, task, reconstruction;
    double total = 0;
    int64_t task_id = 0;
  };

  /// The task tags of the first method's solutions, sorted and unique.
  std::vector<int64_t> task_ids() const {
    if (methods_.empty()) return {};
    auto ids = methods_.front().tasks;
    std::sort(ids.begin(), ids.end());
    ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
    return ids;
  }

  /// Stage 1, one step: accumulates into the maps' gradients (call the optimizer after). `task_loss(k)`
  /// runs a forward of method k's model on a batch and returns the loss; the model holds θ0_k + U_k I
  /// while it runs. `weights` overrides the mixture draw (tests, landscapes).
  StepLosses step(const std::function<at::Tensor(std::size_t)>& task_loss, std::vector<double> weights = {}) {
    return step_tasks([&](std::size_t k, int64_t) { return task_loss(k); }, std::move(weights));
  }
  /// The multi-task step: draws a task among the tags (uniformly), one solution of that task per
  /// method, and calls `task_loss(k, task)`. StepLosses::task_id says which task was drawn.
  StepLosses step_tasks(const std::function<at::Tensor(std::size_t, int64_t)>& task_loss, std::vector<double> weights = {}) {
    if (methods_.empty()) throw StateError("UnifiedSubspace: no methods added");
    if (weights.empty()) weights = draw_weights();
    if (weights.size() != methods_.size())
      throw InputError("UnifiedSubspace: " + std::to_string(weights.size()) + " mixture weights for " +
                       std::to_string(methods_.size()) + " methods");
    StepLosses out;
    out.weights = weights;
    const auto ids = task_ids();
    std::uniform_int_distribution<std::size_t> pick_task(0, ids.size() - 1);
    out.task_id = ids[pick_task(rng_)];
    std::vector<at::Tensor> codes, picked;
    for (auto& m : methods_) {
      std::vector<std::size_t> of_task;
      for (std::size_t i = 0; i < m.tasks.size(); ++i)
        if (m.tasks[i] == out.task_id) of_task.push_back(i);
      if (of_task.empty())
        throw StateError("UnifiedSubspace: method '" + m.name + "' has no solution of task " + std::to_string(out.task_id));
      std::uniform_int_distribution<std::size_t> pick(0, of_task.size() - 1);
      picked.push_back(m.solutions[of_task[pick(rng_)]]);
      codes.push_back(m.map->encode(picked.back()));
    }
    at::Tensor mix = codes[0] * weights[0];
    for (std::size_t k = 1; k < codes.size(); ++k) mix = mix + codes[k] * weights[k];
    // One surrogate whose gradient is the chain rule: each model's task gradient g_k (taken with the
    // maps' graph cut) enters as <θ_k, g_k>; the reconstruction terms enter as themselves.
    at::Tensor surrogate = at::zeros({}, mix.options());
    for (std::size_t k = 0; k < methods_.size(); ++k) {
      auto& m = methods_[k];
      const auto theta = m.view.init() + m.map->decode(mix);
      auto lg = m.view.loss_and_grad(theta.detach(), [&] { return task_loss(k, out.task_id); });
      const auto rec = at::norm(picked[k] - m.map->decode(codes[k]));
      surrogate = surrogate + (theta * lg.grad).sum() + o_.alpha_rec() * rec;
      out.task.push_back(lg.loss.item<double>());
      out.reconstruction.push_back(rec.item<double>());
      out.total += out.task.back() + o_.alpha_rec() * out.reconstruction.back();
    }
    surrogate.backward();
    return out;
  }

  /// The stage-1 objective at mixture `weights` without gradients, on each method's solution number
  /// `solution`; also the task metric over the plane of mixtures when `task_loss` returns one.
  StepLosses evaluate(const std::function<at::Tensor(std::size_t)>& task_loss, const std::vector<double>& weights,
                      std::size_t solution = 0) {
    if (weights.size() != methods_.size())
      throw InputError("UnifiedSubspace: " + std::to_string(weights.size()) + " mixture weights for " +
                       std::to_string(methods_.size()) + " methods");
    at::NoGradGuard g;
    StepLosses out;
    out.weights = weights;
    std::vector<at::Tensor> codes;
    for (auto& m : methods_) codes.push_back(m.map->encode(m.solutions.at(std::min(solution, m.solutions.size() - 1))));
    at::Tensor mix = codes[0] * weights[0];
    for (std::size_t k = 1; k < codes.size(); ++k) mix = mix + codes[k] * weights[k];
    for (std::size_t k = 0; k < methods_.size(); ++k) {
      auto& m = methods_[k];
      m.view.assign(m.view.init() + m.map->decode(mix));
      out.task.push_back(task_loss(k).item<double>());
      const auto& picked = m.solutions.at(std::min(solution, m.solutions.size() - 1));
      out.reconstruction.push_back(at::norm(picked - m.map->decode(codes[k])).item<double>());
      out.total += out.task.back() + o_.alpha_rec() * out.reconstruction.back();
    }
    return out;
  }

  /// I_k of a Δθ of method k.
  at::Tensor encode(std::size_t k, const at::Tensor& delta) {
    at::NoGradGuard g;
    return at(k).map->encode(delta.to(at(k).view.options()));
  }
  /// θ0_k + U_k z.
  at::Tensor decode(std::size_t k, const at::Tensor& z) {
    at::NoGradGuard g;
    auto& m = at(k);
    return m.view.init() + m.map->decode(z.to(m.view.options()));
  }
  /// Sets method k's model to θ0_k + U_k z (stage 3: decode a z found with another method).
  void apply(std::size_t k, const at::Tensor& z) { at(k).view.assign(decode(k, z)); }
  /// U_k as a fixed projection, for stage 2: Intrinsic(view(k), projection(k), 0.02) trains z alone.
  std::shared_ptr<DecoderProjection> projection(std::size_t k) {
    return std::make_shared<DecoderProjection>(at(k).map->decoder->weight, at(k).name);
  }

  /// The maps as one safetensors file ("<method>.encoder.weight", ...), with r, alpha_rec and each
  /// method's size in the metadata.
  void save(const std::string& path) const {
    torch::OrderedDict<std::string, at::Tensor> t;
    nlohmann::json methods = nlohmann::json::array();
    for (const auto& m : methods_) {
      for (const auto& p : m.map->named_parameters()) t.insert(m.name + "." + p.key(), p.value().detach().cpu().contiguous());
      methods.push_back({{"name", m.name}, {"numel", m.view.numel()}});
    }
    save_safetensors(path, t,
                     {{"format", "pt"}, {"peft_subspace", nlohmann::json{{"r", o_.r()}, {"alpha_rec", o_.alpha_rec()}, {"methods", methods}}.dump()}});
  }
  /// Loads maps saved by save() into the methods added here (same names and sizes); checks everything
  /// before changing anything.
  void load(const std::string& path) {
    auto c = load_safetensors(path);
    const auto meta = c.metadata.find("peft_subspace");
    if (meta == c.metadata.end()) throw FormatError(path + ": not a subspace file (no peft_subspace metadata)");
    const auto j = nlohmann::json::parse(meta->second);
    if (j.value("r", int64_t{-1}) != o_.r())
      throw FormatError(path + ": r = " + j["r"].dump() + ", this subspace has r = " + std::to_string(o_.r()));
    for (const auto& m : methods_)
      for (const auto& p : m.map->named_parameters()) {
        const auto key = m.name + "." + p.key();
        if (!c.tensors.contains(key)) throw FormatError(path + ": no tensor '" + key + "'");
        if (c.tensors[key].sizes() != p.value().sizes())
          throw FormatError(path + ": '" + key + "' has shape " + detail::shape_str(c.tensors[key].sizes().vec()) + ", expected " +
                            detail::shape_str(p.value().sizes().vec()));
      }
    at::NoGradGuard g;
    for (auto& m : methods_)
      for (auto& p : m.map->named_parameters()) p.value().copy_(c.tensors[m.name + "." + p.key()]);
  }

 private:
  struct Method {
    std::string name;
    FlatView view;
    std::vector<at::Tensor> solutions;
    std::vector<int64_t> tasks;
    SubspaceMap map;
  };
  Method& at(std::size_t k) {
    if (k >= methods_.size()) throw StateError("UnifiedSubspace: no method #" + std::to_string(k));
    return methods_[k];
  }
  const Method& at(std::size_t k) const {
    if (k >= methods_.size()) throw StateError("UnifiedSubspace: no method #" + std::to_string(k));
    return methods_[k];
  }

  UnifiedOptions o_;
  std::mt19937_64 rng_;
  std::vector<Method> methods_;
};

}  // namespace peft::subspace
