#pragma once
/// \file lora.hpp
/// LoRA (arXiv 2106.09685): y = base(x) + s * B A dropout(x), s = lora_alpha / r (or / sqrt(r) with
/// use_rslora). A parallel tuner on Linear, Embedding and Conv2d slots; mergeable (W += s B A).
///
///     peft::attach(model, peft::LoraConfig().r(8).lora_alpha(16).target_modules({"query", "value"}));

#include <peft/core/adapter_config.hpp>
#include <peft/core/detail/json_fields.hpp>
#include <peft/core/tuner.hpp>
#include <peft/core/version.hpp>
#include <peft/slots/conv2d.hpp>
#include <peft/slots/embedding.hpp>
#include <peft/slots/linear.hpp>
#include <peft/tuners/registry.hpp>

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/functional/dropout.h>
#include <torch/nn/init.h>

#include <cmath>
#include <regex>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace peft {

/// init_lora_weights: true (kaiming-uniform A, zero B), "gaussian" (A ~ N(0, 1/r), zero B), or false
/// (both random: the adapter changes the output from the start, for tests).
struct LoraInit {
  std::string mode = "true";
  LoraInit() = default;
  LoraInit(bool b) : mode(b ? "true" : "false") {}
  LoraInit(const char* m) : mode(m) {}
  LoraInit(std::string m) : mode(std::move(m)) {}
  bool operator==(const LoraInit& o) const { return mode == o.mode; }
};

/// The scale both the unmerged forward and every merge use.
inline double lora_scaling(double lora_alpha, int64_t r, bool use_rslora) {
  return use_rslora ? lora_alpha / std::sqrt(static_cast<double>(r)) : lora_alpha / static_cast<double>(r);
}

/// PEFT's pattern lookup for rank_pattern / alpha_pattern: the first key that matches the end of the
/// module name at a dot boundary (as a regex).
template <class V>
const V* find_pattern(const std::vector<std::pair<std::string, V>>& patterns, const std::string& name) {
  for (const auto& [key, value] : patterns) {
    try {
      if (std::regex_match(name, std::regex("(.*\\.)?(" + key + ")"))) return &value;
    } catch (const std::regex_error& e) {
      throw ConfigError("pattern key '" + key + "' is not a valid regex: " + e.what());
    }
  }
  return nullptr;
}

using RankPattern = std::vector<std::pair<std::string, int64_t>>;
using AlphaPattern = std::vector<std::pair<std::string, double>>;

/// LoRA's configuration, with HF PEFT's field names (LoraConfig).
class LoraConfig : public AdapterConfig {
 public:
  LoraConfig() = default;

  TORCH_ARG(int64_t, r) = 8;
  TORCH_ARG(double, lora_alpha) = 8;
  TORCH_ARG(double, lora_dropout) = 0.0;
  TORCH_ARG(TargetModules, target_modules);
  TORCH_ARG(TargetModules, exclude_modules);
  /// "none", "all" or "lora_only": which base biases also train (and are saved with the adapter).
  TORCH_ARG(std::string, bias) = "none";
  TORCH_ARG(bool, use_rslora) = false;
  TORCH_ARG(bool, use_dora) = false;
  TORCH_ARG(bool, fan_in_fan_out) = false;
  TORCH_ARG(std::vector<std::string>, modules_to_save);
  /// Per-module rank / alpha overrides, matched in order (see find_pattern).
  TORCH_ARG(RankPattern, rank_pattern);
  TORCH_ARG(AlphaPattern, alpha_pattern);
  TORCH_ARG(LoraInit, init_lora_weights);
  TORCH_ARG(std::vector<int64_t>, layers_to_transform);
  TORCH_ARG(std::vector<std::string>, layers_pattern);
  TORCH_ARG(std::string, task_type);
  TORCH_ARG(std::string, base_model_name_or_path);
  TORCH_ARG(std::string, revision);
  TORCH_ARG(bool, inference_mode) = false;

 public:
  std::string peft_type() const override { return "LORA"; }
  TargetRules target_rules() const override {
    return {target_modules_, exclude_modules_, layers_to_transform_, layers_pattern_};
  }
  std::vector<std::string> saved_modules() const override { return modules_to_save_; }
  std::string task() const override { return task_type_; }
  void add_saved_modules(const std::vector<std::string>& names) override { detail::append_new(modules_to_save_, names); }
  std::string bias_mode() const override { return bias_; }

  /// Rank and alpha for one module after rank_pattern / alpha_pattern.
  std::pair<int64_t, double> rank_alpha(const std::string& module_name) const {
    const int64_t* r = find_pattern(rank_pattern_, module_name);
    const double* a = find_pattern(alpha_pattern_, module_name);
    return {r ? *r : r_, a ? *a : lora_alpha_};
  }
  double scaling(const std::string& module_name) const {
    auto [r, a] = rank_alpha(module_name);
    return lora_scaling(a, r, use_rslora_);
  }

  void validate() const override {
    auto fail = [](const std::string& m) { throw ConfigError("LoraConfig: " + m); };
    if (r_ <= 0) fail("r must be positive, received " + std::to_string(r_));
    for (const auto& [k, v] : rank_pattern_)
      if (v <= 0) fail("rank_pattern['" + k + "'] must be positive, received " + std::to_string(v));
    if (!(lora_dropout_ >= 0.0 && lora_dropout_ < 1.0))
      fail("lora_dropout must be in [0, 1), received " + std::to_string(lora_dropout_));
    if (bias_ != "none" && bias_ != "all" && bias_ != "lora_only")
      fail("bias must be \"none\", \"all\" or \"lora_only\", received \"" + bias_ + "\"");
    if (!(init_lora_weights_.mode == "true" || init_lora_weights_.mode == "false" ||
          init_lora_weights_.mode == "gaussian"))
      fail("init_lora_weights must be true, false or \"gaussian\", received \"" + init_lora_weights_.mode + "\"");
    if (target_modules_.empty()) fail("target_modules is empty: name the modules to adapt");
  }

  bool targets(const TunableSlot& slot, const std::string& name) const override {
    return AdapterConfig::targets(slot, name);
  }

  /// Every lora_A tensor's rank (its first dimension) must be r or a rank_pattern value.
  std::vector<std::string> check_file_shapes(const std::map<std::string, std::vector<int64_t>>& shapes) const override {
    std::vector<std::string> problems;
    std::set<int64_t> ranks{r_};
    for (const auto& [k, v] : rank_pattern_) ranks.insert(v);
    auto join_ranks = [&] {
      std::string out;
      for (auto v : ranks) out += (out.empty() ? "" : ", ") + std::to_string(v);
      return out;
    };
    for (const auto& [key, shape] : shapes) {
      if (key.find("lora_A") == std::string::npos && key.find("lora_embedding_A") == std::string::npos) continue;
      if (shape.empty() || !ranks.count(shape[0]))
        problems.push_back("tensor '" + key + "' has rank " + (shape.empty() ? std::string("?") : std::to_string(shape[0])) +
                           " (its first dimension), but adapter_config.json allows only " + join_ranks() +
                           " (r and rank_pattern)");
      if (problems.size() >= 3) break;
    }
    return problems;
  }

  std::shared_ptr<torch::nn::Module> make_tuner(TunableSlot& slot, const std::string& name,
                                                const std::shared_ptr<const AdapterConfig>& self) const override;

  nlohmann::ordered_json to_json() const override {
    nlohmann::ordered_json j;
    nlohmann::ordered_json ranks = nlohmann::ordered_json::object(), alphas = nlohmann::ordered_json::object();
    for (const auto& [k, v] : rank_pattern_) ranks[k] = v;
    for (const auto& [k, v] : alpha_pattern_) alphas[k] = v;
    j["peft_type"] = "LORA";
    j["base_model_name_or_path"] = detail::null_if_empty(base_model_name_or_path_);
    j["revision"] = detail::null_if_empty(revision_);
    j["task_type"] = detail::null_if_empty(task_type_);
    j["inference_mode"] = inference_mode_;
    j["r"] = r_;
    j["target_modules"] = target_modules_.to_json();
    // PEFT before 0.14 rejects keys it does not know: fields newer PEFT added are written only when set.
    if (!exclude_modules_.empty()) j["exclude_modules"] = exclude_modules_.to_json();
    // an integral alpha is written as an integer, as PEFT does; one past 2^53 (or not finite) stays a
    // double: converting it to int64 would be undefined (the config fuzzer found 8.9e25)
    const bool integral = std::isfinite(lora_alpha_) && lora_alpha_ == std::floor(lora_alpha_) &&
                          std::fabs(lora_alpha_) < 9.0e15;
    j["lora_alpha"] = integral ? nlohmann::ordered_json(static_cast<int64_t>(lora_alpha_)) : nlohmann::ordered_json(lora_alpha_);
    j["lora_dropout"] = lora_dropout_;
    j["fan_in_fan_out"] = fan_in_fan_out_;
    j["bias"] = bias_;
    j["use_rslora"] = use_rslora_;
    j["modules_to_save"] = detail::null_if_empty(modules_to_save_);
    if (init_lora_weights_.mode == "true" || init_lora_weights_.mode == "false")
      j["init_lora_weights"] = init_lora_weights_.mode == "true";
    else
      j["init_lora_weights"] = init_lora_weights_.mode;
    j["layers_to_transform"] = detail::null_if_empty(layers_to_transform_);
    j["layers_pattern"] = detail::null_if_empty(layers_pattern_);
    j["rank_pattern"] = ranks;
    j["alpha_pattern"] = alphas;
    j["use_dora"] = use_dora_;
    return j;
  }

  /// Reads adapter_config.json as PEFT writes it: unknown keys ignored, missing ones defaulted.
  static LoraConfig from_json(const nlohmann::ordered_json& j, const std::string& source) {
    using detail::read_field;
    LoraConfig c;
    read_field(j, "r", c.r_, source);
    read_field(j, "lora_alpha", c.lora_alpha_, source);
    read_field(j, "lora_dropout", c.lora_dropout_, source);
    if (j.contains("target_modules")) c.target_modules_ = TargetModules::from_json(j["target_modules"], "target_modules");
    if (j.contains("exclude_modules")) c.exclude_modules_ = TargetModules::from_json(j["exclude_modules"], "exclude_modules");
    read_field(j, "bias", c.bias_, source);
    read_field(j, "use_rslora", c.use_rslora_, source);
    read_field(j, "use_dora", c.use_dora_, source);
    read_field(j, "fan_in_fan_out", c.fan_in_fan_out_, source);
    c.modules_to_save_ = detail::read_string_list(j, "modules_to_save", source);
    auto read_patterns = [&](const char* key, auto& out) {
      auto it = j.find(key);
      if (it == j.end() || it->is_null()) return;
      if (!it->is_object()) throw ConfigError("'" + source + "': field '" + key + "' must be an object");
      for (auto e = it->begin(); e != it->end(); ++e) {
        using V = typename std::decay_t<decltype(out)>::value_type::second_type;
        constexpr bool integral = std::is_integral_v<V>;
        if (!e.value().is_number() || (integral && !detail::holds_integer(e.value())))
          throw ConfigError("'" + source + "': field '" + key + "': ['" + e.key() + "'] must be " +
                            (integral ? "an integer" : "a number") + ", received " + e.value().dump());
        if constexpr (integral) out.emplace_back(e.key(), static_cast<V>(detail::to_int64(e.value())));
        else out.emplace_back(e.key(), e.value().get<V>());
      }
    };
    read_patterns("rank_pattern", c.rank_pattern_);
    read_patterns("alpha_pattern", c.alpha_pattern_);
    if (auto it = j.find("init_lora_weights"); it != j.end() && !it->is_null()) {
      if (it->is_boolean()) c.init_lora_weights_ = LoraInit(it->get<bool>());
      else if (it->is_string()) c.init_lora_weights_ = LoraInit(it->get<std::string>());
      else throw ConfigError("'" + source + "': field 'init_lora_weights' has the wrong type (received " + it->dump() + ")");
    }
    c.layers_to_transform_ = detail::read_int_list(j, "layers_to_transform", source);
    c.layers_pattern_ = detail::read_string_list(j, "layers_pattern", source);
    read_field(j, "task_type", c.task_type_, source);
    read_field(j, "base_model_name_or_path", c.base_model_name_or_path_, source);
    read_field(j, "revision", c.revision_, source);
    read_field(j, "inference_mode", c.inference_mode_, source);
    // Features of PEFT's LoRA we do not implement must not load silently as something else.
    if (auto it = j.find("lora_bias"); it != j.end() && it->is_boolean() && it->get<bool>())
      throw ConfigError("'" + source + "': lora_bias=true is not supported");
    if (auto it = j.find("layer_replication"); it != j.end() && !it->is_null())
      throw ConfigError("'" + source + "': layer_replication is not supported");
    if (auto it = j.find("target_parameters"); it != j.end() && it->is_array() && !it->empty())
      throw ConfigError("'" + source + "': target_parameters is not supported");
    return c;
  }

  bool frozen() const override { return inference_mode_; }
  void set_frozen(bool f) override { inference_mode_ = f; }
  std::shared_ptr<AdapterConfig> clone() const override { return std::make_shared<LoraConfig>(*this); }
};

/// PEFT's init for a LoRA pair whose A has fan-in layout: A kaiming-uniform (or N(0, 1/r) for
/// "gaussian"), B zero (or kaiming-uniform too for init false, so the adapter is active from the start).
inline void init_lora_pair(at::Tensor& A, at::Tensor& B, const std::string& init, int64_t r) {
  torch::NoGradGuard g;
  if (init == "gaussian") torch::nn::init::normal_(A, 0.0, 1.0 / static_cast<double>(r));
  else torch::nn::init::kaiming_uniform_(A, std::sqrt(5.0));
  if (init == "false") torch::nn::init::kaiming_uniform_(B, std::sqrt(5.0));
  else B.zero_();
}

/// PEFT's init for an embedding pair: A zero (N(0, 1) for init false), B N(0, 1).
inline void init_lora_embedding_pair(at::Tensor& A, at::Tensor& B, const std::string& init) {
  torch::NoGradGuard g;
  if (init == "false") torch::nn::init::normal_(A);
  else A.zero_();
  torch::nn::init::normal_(B);
}

/// The unscaled LoRA branch of a Conv2d: B(A(x)), A with the base's stride, padding and dilation.
inline at::Tensor lora_conv2d_branch(const at::Tensor& x, const at::Tensor& A, const at::Tensor& B,
                                     const torch::nn::Conv2dOptions& o) {
  namespace F = torch::nn::functional;
  auto a = F::conv2d(x, A, F::Conv2dFuncOptions().stride(o.stride()).padding(o.padding()).dilation(o.dilation()));
  return F::conv2d(a, B);
}

/// What every LoRA tuner shares: rank, scaling, dropout, config.
struct LoraSpec {
  int64_t r = 8;
  double alpha = 8;
  double scaling = 1;
  double dropout = 0;
  std::string init = "true";
  std::shared_ptr<const AdapterConfig> config;
};

/// LoRA on a Linear slot: A [r, in], B [out, r].
class LoraLinearImpl : public torch::nn::Cloneable<LoraLinearImpl>, public Tuner {
 public:
  LoraLinearImpl(int64_t in_features, int64_t out_features, LoraSpec spec)
      : in_features(in_features), out_features(out_features), spec(std::move(spec)) {
    reset();
  }
  int64_t in_features, out_features;
  LoraSpec spec;
  at::Tensor lora_A, lora_B;

  void reset() override {
    lora_A = detail::register_keep_grad(*this, "lora_A", lora_A, at::empty({spec.r, in_features}));
    lora_B = detail::register_keep_grad(*this, "lora_B", lora_B, at::empty({out_features, spec.r}));
    reset_parameters();
  }
  void reset_parameters() { init_lora_pair(lora_A, lora_B, spec.init, spec.r); }

  Placement placement() const override { return Placement::parallel; }
  std::string method() const override { return "lora"; }
  const std::shared_ptr<const AdapterConfig>& config() const override { return spec.config; }
  torch::nn::Module& as_module() override { return *this; }
  bool mergeable() const override { return true; }

  /// y + s * B A dropout(x): two GEMMs, the second fused with the scale and the add (addmm); the
  /// input is viewed, not copied, and dropout is skipped entirely at p = 0 or in eval mode.
  at::Tensor parallel(const at::Tensor& x, const at::Tensor& y) override {
    at::Tensor in = x;
    if (spec.dropout > 0 && is_training()) in = torch::nn::functional::dropout(x, torch::nn::functional::DropoutFuncOptions().p(spec.dropout).training(true));
    // Two 2-D products on views (no matmul folding, fewer dispatched ops per call: at batch 1 on a GPU
    // the host's dispatch, not the kernels, is what an adapted module costs).
    const auto a = at::mm(in.reshape({-1, in.size(-1)}), lora_A.t());
    auto out = at::addmm(y.reshape({-1, out_features}), a, lora_B.t(), 1, spec.scaling);
    return out.view(y.sizes());
  }
  WeightSet delta(const WeightSet&) const override {
    return {at::mm(lora_B, lora_A).mul_(spec.scaling), {}};
  }
  std::vector<std::pair<std::string, at::Tensor>> adapter_tensors() const override {
    return {{"lora_A.weight", lora_A}, {"lora_B.weight", lora_B}};
  }
  void pretty_print(std::ostream& s) const override {
    s << "peft::LoraLinear(in_features=" << in_features << ", out_features=" << out_features << ", r=" << spec.r
      << ", alpha=" << spec.alpha << ", scaling=" << spec.scaling << ", dropout=" << spec.dropout << ")";
  }
};
TORCH_MODULE(LoraLinear);

/// LoRA on an Embedding slot: A [r, num_embeddings], B [dim, r] (PEFT's lora_embedding_A/B).
class LoraEmbeddingImpl : public torch::nn::Cloneable<LoraEmbeddingImpl>, public Tuner {
 public:
  LoraEmbeddingImpl(const EmbeddingOptions& options, LoraSpec spec) : options(options), spec(std::move(spec)) { reset(); }
  EmbeddingOptions options;
  LoraSpec spec;
  at::Tensor lora_embedding_A, lora_embedding_B;

  void reset() override {
    lora_embedding_A = detail::register_keep_grad(*this, "lora_embedding_A", lora_embedding_A,
                                                  at::empty({spec.r, options.num_embeddings()}));
    lora_embedding_B = detail::register_keep_grad(*this, "lora_embedding_B", lora_embedding_B,
                                                  at::empty({options.embedding_dim(), spec.r}));
    init_lora_embedding_pair(lora_embedding_A, lora_embedding_B, spec.init);
  }
  Placement placement() const override { return Placement::parallel; }
  std::string method() const override { return "lora"; }
  const std::shared_ptr<const AdapterConfig>& config() const override { return spec.config; }
  torch::nn::Module& as_module() override { return *this; }
  bool mergeable() const override { return true; }

  at::Tensor parallel(const at::Tensor& x, const at::Tensor& y) override {
    // Dropout does not apply to indices (as in PEFT).
    const int64_t pad = options.padding_idx() ? *options.padding_idx() : -1;
    auto a = at::embedding(lora_embedding_A.t(), x, pad);
    auto out = at::addmm(y.reshape({-1, options.embedding_dim()}), a.reshape({-1, spec.r}), lora_embedding_B.t(), 1,
                         spec.scaling);
    return out.view(y.sizes());
  }
  WeightSet delta(const WeightSet&) const override {
    return {at::mm(lora_embedding_B, lora_embedding_A).t().mul(spec.scaling), {}};
  }
  std::vector<std::pair<std::string, at::Tensor>> adapter_tensors() const override {
    return {{"lora_embedding_A", lora_embedding_A}, {"lora_embedding_B", lora_embedding_B}};
  }
  void pretty_print(std::ostream& s) const override {
    s << "peft::LoraEmbedding(num_embeddings=" << options.num_embeddings() << ", embedding_dim=" << options.embedding_dim()
      << ", r=" << spec.r << ", alpha=" << spec.alpha << ")";
  }
};
TORCH_MODULE(LoraEmbedding);

/// LoRA on a Conv2d slot: A is a conv [r, in, kh, kw] with the base's stride/padding/dilation, B a
/// 1x1 conv [out, r, 1, 1] (PEFT's layout).
class LoraConv2dImpl : public torch::nn::Cloneable<LoraConv2dImpl>, public Tuner {
 public:
  LoraConv2dImpl(const Conv2dOptions& options, LoraSpec spec) : options(options), spec(std::move(spec)) { reset(); }
  Conv2dOptions options;
  LoraSpec spec;
  at::Tensor lora_A, lora_B;

  void reset() override {
    auto k = options.kernel_size();
    lora_A = detail::register_keep_grad(*this, "lora_A", lora_A, at::empty({spec.r, options.in_channels(), k->at(0), k->at(1)}));
    lora_B = detail::register_keep_grad(*this, "lora_B", lora_B, at::empty({options.out_channels(), spec.r, 1, 1}));
    init_lora_pair(lora_A, lora_B, spec.init, spec.r);
  }
  Placement placement() const override { return Placement::parallel; }
  std::string method() const override { return "lora"; }
  const std::shared_ptr<const AdapterConfig>& config() const override { return spec.config; }
  torch::nn::Module& as_module() override { return *this; }
  bool mergeable() const override { return true; }

  at::Tensor parallel(const at::Tensor& x, const at::Tensor& y) override {
    namespace F = torch::nn::functional;
    at::Tensor in = x;
    if (spec.dropout > 0 && is_training()) in = F::dropout(x, F::DropoutFuncOptions().p(spec.dropout).training(true));
    return at::add(y, lora_conv2d_branch(in, lora_A, lora_B, options), spec.scaling);
  }
  WeightSet delta(const WeightSet&) const override {
    // Composition of the two convolutions as one kernel.
    auto d = torch::nn::functional::conv2d(lora_A.permute({1, 0, 2, 3}), lora_B).permute({1, 0, 2, 3});
    return {d.mul(spec.scaling).contiguous(), {}};
  }
  std::vector<std::pair<std::string, at::Tensor>> adapter_tensors() const override {
    return {{"lora_A.weight", lora_A}, {"lora_B.weight", lora_B}};
  }
  void pretty_print(std::ostream& s) const override {
    s << "peft::LoraConv2d(" << options.in_channels() << ", " << options.out_channels() << ", r=" << spec.r
      << ", alpha=" << spec.alpha << ")";
  }
};
TORCH_MODULE(LoraConv2d);

/// What the DoRA tuners (Linear, Embedding, Conv2d) share: a parallel tuner that needs the frozen
/// weight (the slot calls parallel_with()), and a merge that remembers ||W + s ΔW|| so that unmerge
/// undoes it exactly. `Derived` provides dtype(), weight_norm(W) and unmerged(W', norm), and a `spec`.
template <class Derived>
class DoraTuner : public Tuner {
 public:
  Placement placement() const override { return Placement::parallel; }
  std::string method() const override { return "dora"; }
  const std::shared_ptr<const AdapterConfig>& config() const override { return self().spec.config; }
  torch::nn::Module& as_module() override { return static_cast<Derived&>(*this); }
  bool mergeable() const override { return true; }
  at::Tensor parallel(const at::Tensor&, const at::Tensor&) override {
    throw StateError("DoRA needs the frozen weight: the slot calls parallel_with()");
  }
  void merge(WeightSet& base) const override {
    merged_norm_ = self().weight_norm(base.weight.to(self().dtype()));
    Tuner::merge(base);
  }
  void unmerge(WeightSet& base) const override {
    if (!merged_norm_.defined()) throw StateError("DoRA: unmerge without a merge");
    base.weight.copy_(self().unmerged(base.weight.to(self().dtype()), merged_norm_).to(base.weight.scalar_type()));
    merged_norm_ = at::Tensor();
  }

 protected:
  /// Registers lora_magnitude_vector (ones of `shape`, or a clone()'s copied values).
  void register_magnitude(at::IntArrayRef shape) {
    auto& d = static_cast<Derived&>(*this);
    d.lora_magnitude_vector = detail::register_keep_grad(
        d, "lora_magnitude_vector", d.lora_magnitude_vector,
        d.lora_magnitude_vector.defined() ? d.lora_magnitude_vector.clone() : at::ones(shape));
  }
  /// m = ||W|| (B A = 0 at init), computed where W lives (a model may already be on the GPU).
  void init_magnitude(const at::Tensor& weight) {
    auto& d = static_cast<Derived&>(*this);
    d.to(weight.device());
    torch::NoGradGuard g;
    d.lora_magnitude_vector.copy_(d.weight_norm(weight.to(d.dtype())));
  }

 private:
  const Derived& self() const { return static_cast<const Derived&>(*this); }
  mutable at::Tensor merged_norm_;  // ||W + s ΔW|| at merge time
};

/// DoRA (arXiv 2402.09353) on a Linear slot: LoRA plus a magnitude vector m [out] over the
/// row-normalized adapted weight, W' = (m / ||W + s B A||) (W + s B A), the norm detached from the graph.
/// Computed as Hugging Face PEFT does, without forming W' for the input:
///     y = base(x) + (g - 1) * (x_d Wᵀ) + g * s * (x_d Aᵀ Bᵀ),   g = m / ||W + s B A||,  x_d = dropout(x),
/// where x_d Wᵀ is base(x) - b when no dropout is drawn (the frame's `base.output`).
class DoraLinearImpl : public torch::nn::Cloneable<DoraLinearImpl>, public DoraTuner<DoraLinearImpl> {
 public:
  /// `weight`: the frozen W, used once to initialize m = ||W|| (B = 0 at init).
  DoraLinearImpl(const at::Tensor& weight, LoraSpec spec)
      : in_features(weight.size(1)), out_features(weight.size(0)), spec(std::move(spec)) {
    reset();
    init_magnitude(weight);
  }
  int64_t in_features, out_features;
  LoraSpec spec;
  at::Tensor lora_A, lora_B, lora_magnitude_vector;

  void reset() override {
    lora_A = detail::register_keep_grad(*this, "lora_A", lora_A, at::empty({spec.r, in_features}));
    lora_B = detail::register_keep_grad(*this, "lora_B", lora_B, at::empty({out_features, spec.r}));
    register_magnitude({out_features});
    init_lora_pair(lora_A, lora_B, spec.init, spec.r);
  }

  at::ScalarType dtype() const { return lora_A.scalar_type(); }

  /// ||W + s B A|| per output row, detached.
  at::Tensor weight_norm(const at::Tensor& w) const {
    torch::NoGradGuard g;
    return (w + at::mm(lora_B, lora_A) * spec.scaling).norm(2, {1});
  }
  at::Tensor parallel_with(const at::Tensor& x, const at::Tensor& y, const WeightSet& base) override {
    at::Tensor xd = x;
    if (spec.dropout > 0 && is_training())
      xd = torch::nn::functional::dropout(x, torch::nn::functional::DropoutFuncOptions().p(spec.dropout).training(true));
    const auto w = base.weight.to(lora_A.scalar_type());
    const auto g = lora_magnitude_vector / weight_norm(w);
    const auto lora = at::matmul(at::matmul(xd, lora_A.t()), lora_B.t()) * spec.scaling;
    // x_d Wᵀ: without dropout it is the frozen op's own output less its bias, which the frame hands
    // over (one GEMM less forward and one less backward per adapted module); otherwise computed here.
    const bool reuse = xd.is_same(x) && base.output.defined() && base.output.scalar_type() == w.scalar_type();
    const auto xw = !reuse ? at::matmul(xd, w.t()) : base.bias.defined() ? base.output - base.bias : base.output;
    return y + (g - 1) * xw + g * lora;
  }
  WeightSet delta(const WeightSet& base) const override {
    const auto w = base.weight.to(lora_A.scalar_type());
    const auto adapted = w + at::mm(lora_B, lora_A) * spec.scaling;
    return {(lora_magnitude_vector / adapted.norm(2, {1})).unsqueeze(1) * adapted - w, {}};
  }
  /// W from the merged W' and the norm at merge time.
  at::Tensor unmerged(const at::Tensor& merged, const at::Tensor& norm) const {
    return merged / (lora_magnitude_vector / norm).unsqueeze(1) - at::mm(lora_B, lora_A) * spec.scaling;
  }
  std::vector<std::pair<std::string, at::Tensor>> adapter_tensors() const override {
    return {{"lora_A.weight", lora_A}, {"lora_B.weight", lora_B}, {"lora_magnitude_vector", lora_magnitude_vector}};
  }
  void pretty_print(std::ostream& s) const override {
    s << "peft::DoraLinear(in_features=" << in_features << ", out_features=" << out_features << ", r=" << spec.r
      << ", alpha=" << spec.alpha << ", scaling=" << spec.scaling << ")";
  }

};
TORCH_MODULE(DoraLinear);

/// DoRA on an Embedding slot, as PEFT computes it: the magnitude m [dim] scales each embedding
/// dimension of the adapted table, W' = (W + s (B A)ᵀ) · diag(m / ||W + s (B A)ᵀ||), the norm taken over
/// the vocabulary (per column of W) and detached:  y = g ⊙ (embed(x, W) + s · embed(x, Aᵀ) Bᵀ).
class DoraEmbeddingImpl : public torch::nn::Cloneable<DoraEmbeddingImpl>, public DoraTuner<DoraEmbeddingImpl> {
 public:
  DoraEmbeddingImpl(const EmbeddingOptions& options, const at::Tensor& weight, LoraSpec spec)
      : options(options), spec(std::move(spec)) {
    reset();
    init_magnitude(weight);
  }
  EmbeddingOptions options;
  LoraSpec spec;
  at::Tensor lora_embedding_A, lora_embedding_B, lora_magnitude_vector;

  void reset() override {
    lora_embedding_A = detail::register_keep_grad(*this, "lora_embedding_A", lora_embedding_A,
                                                  at::empty({spec.r, options.num_embeddings()}));
    lora_embedding_B = detail::register_keep_grad(*this, "lora_embedding_B", lora_embedding_B,
                                                  at::empty({options.embedding_dim(), spec.r}));
    register_magnitude({options.embedding_dim()});
    init_lora_embedding_pair(lora_embedding_A, lora_embedding_B, spec.init);
  }
  at::ScalarType dtype() const { return lora_embedding_A.scalar_type(); }

  /// The adapted table W + s (B A)ᵀ [num_embeddings, dim].
  at::Tensor adapted(const at::Tensor& w) const { return w + at::mm(lora_embedding_B, lora_embedding_A).t() * spec.scaling; }
  /// ||W + s (B A)ᵀ|| per embedding dimension [dim], detached.
  at::Tensor weight_norm(const at::Tensor& w) const {
    torch::NoGradGuard g;
    return adapted(w).norm(2, {0});
  }
  at::Tensor parallel_with(const at::Tensor& x, const at::Tensor& y, const WeightSet& base) override {
    const int64_t pad = options.padding_idx() ? *options.padding_idx() : -1;
    const auto g = lora_magnitude_vector / weight_norm(base.weight.to(lora_embedding_A.scalar_type()));
    auto a = at::embedding(lora_embedding_A.t(), x, pad);
    return (y + at::matmul(a, lora_embedding_B.t()) * spec.scaling) * g;
  }
  WeightSet delta(const WeightSet& base) const override {
    const auto w = base.weight.to(lora_embedding_A.scalar_type());
    const auto a = adapted(w);
    return {a * (lora_magnitude_vector / a.norm(2, {0})) - w, {}};
  }
  at::Tensor unmerged(const at::Tensor& merged, const at::Tensor& norm) const {
    return merged / (lora_magnitude_vector / norm) - at::mm(lora_embedding_B, lora_embedding_A).t() * spec.scaling;
  }
  std::vector<std::pair<std::string, at::Tensor>> adapter_tensors() const override {
    return {{"lora_embedding_A", lora_embedding_A}, {"lora_embedding_B", lora_embedding_B},
            {"lora_magnitude_vector", lora_magnitude_vector}};
  }
  void pretty_print(std::ostream& s) const override {
    s << "peft::DoraEmbedding(num_embeddings=" << options.num_embeddings() << ", embedding_dim=" << options.embedding_dim()
      << ", r=" << spec.r << ", alpha=" << spec.alpha << ")";
  }

};
TORCH_MODULE(DoraEmbedding);

/// DoRA on a Conv2d slot, as PEFT computes it: the magnitude m [1, out, 1, 1] scales each output
/// channel's adapted kernel to norm m, W' = g (W + s ΔW), g = m / ||W + s ΔW|| over (in, kh, kw),
/// detached; ΔW = B A as one kernel.  y = base(x) + (g - 1)(base(x) - b) + g · s · B(A(x)).
class DoraConv2dImpl : public torch::nn::Cloneable<DoraConv2dImpl>, public DoraTuner<DoraConv2dImpl> {
 public:
  DoraConv2dImpl(const Conv2dOptions& options, const at::Tensor& weight, LoraSpec spec)
      : options(options), spec(std::move(spec)) {
    reset();
    init_magnitude(weight);
  }
  Conv2dOptions options;
  LoraSpec spec;
  at::Tensor lora_A, lora_B, lora_magnitude_vector;

  void reset() override {
    auto k = options.kernel_size();
    lora_A = detail::register_keep_grad(*this, "lora_A", lora_A, at::empty({spec.r, options.in_channels(), k->at(0), k->at(1)}));
    lora_B = detail::register_keep_grad(*this, "lora_B", lora_B, at::empty({options.out_channels(), spec.r, 1, 1}));
    register_magnitude({1, options.out_channels(), 1, 1});
    init_lora_pair(lora_A, lora_B, spec.init, spec.r);
  }
  at::ScalarType dtype() const { return lora_A.scalar_type(); }

  /// s · B A as a kernel shaped like W.
  at::Tensor lora_kernel(const at::Tensor& w) const {
    return at::mm(lora_B.view({lora_B.size(0), spec.r}), lora_A.view({spec.r, -1})).view(w.sizes()) * spec.scaling;
  }
  /// ||W + s ΔW|| per output channel, shaped [1, out, 1, 1], detached.
  at::Tensor weight_norm(const at::Tensor& w) const {
    torch::NoGradGuard g;
    return (w + lora_kernel(w)).norm(2, {1, 2, 3}, true).transpose(0, 1);
  }
  at::Tensor parallel_with(const at::Tensor& x, const at::Tensor& y, const WeightSet& base) override {
    namespace F = torch::nn::functional;
    at::Tensor in = x;
    if (spec.dropout > 0 && is_training()) in = F::dropout(x, F::DropoutFuncOptions().p(spec.dropout).training(true));
    const auto g = lora_magnitude_vector / weight_norm(base.weight.to(lora_A.scalar_type()));
    auto lora = lora_conv2d_branch(in, lora_A, lora_B, options) * spec.scaling;
    // (g - 1) times the bias-free base output; with dropout PEFT recomputes it from the dropped input.
    at::Tensor plain;
    if (in.is_same(x)) plain = base.bias.defined() ? y - base.bias.view({1, -1, 1, 1}) : y;
    else plain = F::conv2d(in, base.weight.to(lora_A.scalar_type()),
                           F::Conv2dFuncOptions().stride(options.stride()).padding(options.padding()).dilation(options.dilation()));
    return y + (g - 1) * plain + g * lora;
  }
  WeightSet delta(const WeightSet& base) const override {
    const auto w = base.weight.to(lora_A.scalar_type());
    const auto adapted = w + lora_kernel(w);
    const auto g = (lora_magnitude_vector / adapted.norm(2, {1, 2, 3}, true).transpose(0, 1)).transpose(0, 1);
    return {g * adapted - w, {}};
  }
  at::Tensor unmerged(const at::Tensor& merged, const at::Tensor& norm) const {
    const auto w = merged / (lora_magnitude_vector / norm).transpose(0, 1);
    return w - lora_kernel(w);
  }
  std::vector<std::pair<std::string, at::Tensor>> adapter_tensors() const override {
    return {{"lora_A.weight", lora_A}, {"lora_B.weight", lora_B}, {"lora_magnitude_vector", lora_magnitude_vector}};
  }
  void pretty_print(std::ostream& s) const override {
    s << "peft::DoraConv2d(" << options.in_channels() << ", " << options.out_channels() << ", r=" << spec.r
      << ", alpha=" << spec.alpha << ")";
  }

};
TORCH_MODULE(DoraConv2d);

inline std::shared_ptr<torch::nn::Module> LoraConfig::make_tuner(TunableSlot& slot, const std::string& name,
                                                                 const std::shared_ptr<const AdapterConfig>& self) const {
  auto [r, alpha] = rank_alpha(name);
  if (r <= 0) throw ConfigError("LoraConfig: rank for module '" + name + "' must be positive, received " + std::to_string(r));
  LoraSpec spec{r, alpha, lora_scaling(alpha, r, use_rslora_), lora_dropout_, init_lora_weights_.mode, self};
  auto& m = slot.as_module();
  if (auto* lin = dynamic_cast<LinearImpl*>(&m)) {
    if (use_dora_) return std::make_shared<DoraLinearImpl>(slot.base_weights().weight, spec);
    return std::make_shared<LoraLinearImpl>(lin->options.in_features(), lin->options.out_features(), spec);
  }
  if (auto* emb = dynamic_cast<EmbeddingImpl*>(&m)) {
    if (use_dora_) return std::make_shared<DoraEmbeddingImpl>(emb->options, slot.base_weights().weight, spec);
    return std::make_shared<LoraEmbeddingImpl>(emb->options, spec);
  }
  if (auto* conv = dynamic_cast<Conv2dImpl*>(&m)) {
    if (conv->options.groups() != 1)
      throw MatchError("LoRA on Conv2d '" + name + "': groups=" + std::to_string(conv->options.groups()) + " is not supported (expected 1)");
    if (!detail::holds<torch::enumtype::kZeros>(conv->options.padding_mode()))
      throw MatchError("LoRA on Conv2d '" + name + "': only padding_mode zeros is supported");
    if (use_dora_) return std::make_shared<DoraConv2dImpl>(conv->options, slot.base_weights().weight, spec);
    return std::make_shared<LoraConv2dImpl>(conv->options, spec);
  }
  throw MatchError("LoRA cannot adapt module '" + name + "' of kind " + slot.op_kind() +
                   " (expected Linear, Embedding or Conv2d)");
}

PEFT_REGISTER_METHOD(lora, LoraConfig, "LORA", "LoRA")

}  // namespace peft
