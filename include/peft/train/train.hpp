#pragma once
/// \file train.hpp
/// What a fine-tuning loop needs around the adapters: an AdamW over the trainable parameters (weight
/// decay on matrices only), a warmup + cosine learning-rate schedule, batched evaluation, a progress
/// display (a bar on a terminal, plain lines otherwise), a JSONL metrics log, and peak-memory probes.
///
///     auto opt = peft::train::make_adamw(*model, 1e-3, 0.01);
///     peft::train::WarmupCosine sched(steps, steps / 10, 1e-3);
///     peft::train::Progress bar(steps, "lora");
///     for (int64_t s = 0; s < steps; ++s) {
///       sched.apply(opt, s);
///       ... loss.backward(); opt.step(); opt.zero_grad();
///       bar.update(s + 1, loss.item<double>());
///     }

#include <peft/core/detail/compat.hpp>
#include <peft/core/error.hpp>
#include <peft/core/model.hpp>

#include <nlohmann/json.hpp>
#include <torch/nn/functional/loss.h>
#include <torch/optim/adamw.h>
#include <torch/utils.h>

#include <unistd.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace peft::train {

/// The parameters that train (requires_grad), each once even when tied.
inline std::vector<at::Tensor> trainable_parameters(ModelRef model) {
  std::vector<at::Tensor> out;
  std::unordered_set<const void*> seen;
  for (const auto& p : model->parameters(true))
    if (p.requires_grad() && seen.insert(p.unsafeGetTensorImpl()).second) out.push_back(p);
  return out;
}

/// torch::optim::AdamW (same options, same math, same state, so it saves, loads and schedules the same)
/// whose step can run LibTorch's fused multi-tensor kernel `_fused_adamw_` (LibTorch >= 2.4): one
/// launch per parameter group, device and dtype instead of about eight per parameter. On CUDA with
/// the full fine-tuning of a BERT-base that is ~1600 launches and as many passes over 100M+ elements
/// replaced by one pass. `Fused::automatic` (the default) fuses where every parameter with a gradient
/// is a dense floating tensor on CUDA; `Fused::always` also on the CPU (StateError where this LibTorch
/// lacks the kernel); `Fused::never` is torch::optim::AdamW's own step. amsgrad is never fused.
class AdamW : public torch::optim::AdamW {
 public:
  enum class Fused { automatic, always, never };
  using torch::optim::AdamW::AdamW;

  AdamW& fused(Fused f) {
#if !PEFT_HAS_FUSED_ADAMW
    if (f == Fused::always)
      throw StateError(std::string("AdamW: the fused step needs LibTorch >= 2.4; this build uses ") + detail::torch_version());
#endif
    fused_ = f;
    return *this;
  }
  Fused fused() const { return fused_; }
  /// Whether the next step takes the fused kernel.
  bool fuses() const {
#if PEFT_HAS_FUSED_ADAMW
    if (fused_ == Fused::never) return false;
    bool any = false;
    for (const auto& g : param_groups()) {
      if (static_cast<const torch::optim::AdamWOptions&>(g.options()).amsgrad()) return false;
      for (const auto& p : g.params()) {
        if (!p.grad().defined()) continue;
        if (!p.is_floating_point() || p.is_sparse() || p.grad().is_sparse() || p.grad().scalar_type() != p.scalar_type())
          return false;
        if (fused_ == Fused::automatic && !p.is_cuda()) return false;
        any = true;
      }
    }
    return any;
#else
    return false;
#endif
  }

  at::Tensor step(LossClosure closure = nullptr) override {
    if (!fuses()) return torch::optim::AdamW::step(std::move(closure));
#if PEFT_HAS_FUSED_ADAMW
    at::Tensor loss;
    if (closure) {
      at::AutoGradMode grad_on(true);
      loss = closure();
    }
    at::NoGradGuard no_grad;
    struct Bucket {
      std::vector<at::Tensor> params, grads, exp_avgs, exp_avg_sqs, steps;
    };
    for (auto& group : param_groups()) {
      const auto& o = static_cast<const torch::optim::AdamWOptions&>(group.options());
      std::map<std::pair<std::string, int>, Bucket> buckets;  // by device and dtype
      for (auto& p : group.params()) {
        if (!p.grad().defined()) continue;
        void* key = p.unsafeGetTensorImpl();
        auto it = state_.find(key);
        if (it == state_.end()) {
          auto s = std::make_unique<torch::optim::AdamWParamState>();
          s->step(0);
          s->exp_avg(at::zeros_like(p, at::MemoryFormat::Preserve));
          s->exp_avg_sq(at::zeros_like(p, at::MemoryFormat::Preserve));
          it = state_.emplace(key, std::move(s)).first;
        }
        auto& s = static_cast<torch::optim::AdamWParamState&>(*it->second);
        // The kernel reads the step count from a float tensor on the parameter's device; it follows the
        // state's integer count (which a loaded state may have changed) without reading the device.
        auto& st = steps_[key];
        if (!st.first.defined() || st.second != s.step() || st.first.device() != p.device())
          st = {at::full({}, static_cast<double>(s.step()), p.options().dtype(at::kFloat)), s.step()};
        s.step(s.step() + 1);
        st.second = s.step();
        auto& b = buckets[{p.device().str(), static_cast<int>(p.scalar_type())}];
        b.params.push_back(p);
        b.grads.push_back(p.grad());
        b.exp_avgs.push_back(s.exp_avg());
        b.exp_avg_sqs.push_back(s.exp_avg_sq());
        b.steps.push_back(st.first);
      }
      for (auto& [where, b] : buckets) {
        at::_foreach_add_(b.steps, 1);
        at::_fused_adamw_(b.params, b.grads, b.exp_avgs, b.exp_avg_sqs, {}, b.steps, o.lr(), std::get<0>(o.betas()),
                          std::get<1>(o.betas()), o.weight_decay(), o.eps(), /*amsgrad=*/false, /*maximize=*/false,
                          c10::nullopt, c10::nullopt);
      }
    }
    return loss;
#else
    return torch::optim::AdamW::step(std::move(closure));
#endif
  }

 private:
  Fused fused_ = Fused::automatic;
  std::unordered_map<void*, std::pair<at::Tensor, int64_t>> steps_;
};

/// A learning rate for the trainable parameters whose qualified name starts with `prefix` (e.g. the
/// classification head, "classifier": a head trained from scratch and a tuner of a pretrained model
/// want different rates).
struct PrefixRate {
  std::string prefix;
  double lr;
};

/// AdamW over the trainable parameters: matrices (and larger) with `weight_decay`, vectors and scalars
/// (biases, norms, scales, IA3/PASTA vectors) without. Each of those two splits further by `rates`
/// (first matching prefix wins; unmatched parameters at `lr`), in the order: decay [lr, rates...], then
/// no decay [lr, rates...], empty groups left out. Throws StateError when nothing trains and ConfigError
/// for a prefix that matches no trainable parameter. The step is fused on CUDA (peft::train::AdamW).
/// Schedules keep the groups' ratios with WarmupCosine::apply(opt, step, group_rates(opt)).
inline AdamW make_adamw(ModelRef model, double lr, double weight_decay, const std::vector<PrefixRate>& rates,
                        double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8) {
  // buckets[decay][k]: k = 0 the default rate, k = i + 1 rates[i]
  std::vector<std::vector<at::Tensor>> buckets[2];
  for (auto& b : buckets) b.resize(rates.size() + 1);
  std::vector<bool> used(rates.size(), false);
  std::unordered_set<const void*> seen;
  for (const auto& item : model->named_parameters(true)) {
    const auto& p = item.value();
    if (!p.requires_grad() || !seen.insert(p.unsafeGetTensorImpl()).second) continue;
    std::size_t k = 0;
    for (std::size_t i = 0; i < rates.size() && k == 0; ++i)
      if (item.key().rfind(rates[i].prefix, 0) == 0) k = i + 1, used[i] = true;
    buckets[p.dim() >= 2 ? 0 : 1][k].push_back(p);
  }
  if (seen.empty()) throw StateError("make_adamw: the model has no trainable parameters (attach an adapter or unfreeze something)");
  for (std::size_t i = 0; i < rates.size(); ++i)
    if (!used[i]) throw ConfigError("make_adamw: no trainable parameter's name starts with \"" + rates[i].prefix + "\"");
  std::vector<torch::optim::OptimizerParamGroup> groups;
  for (int d = 0; d < 2; ++d)
    for (std::size_t k = 0; k <= rates.size(); ++k) {
      if (buckets[d][k].empty()) continue;
      const double rate = k == 0 ? lr : rates[k - 1].lr;
      groups.emplace_back(buckets[d][k], std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(rate)
                                                                                          .betas({beta1, beta2})
                                                                                          .eps(eps)
                                                                                          .weight_decay(d == 0 ? weight_decay : 0.0)));
    }
  return AdamW(groups, torch::optim::AdamWOptions(lr).weight_decay(weight_decay));
}

/// AdamW over the trainable parameters in two groups: matrices (and larger) with `weight_decay`, vectors
/// and scalars (biases, norms, scales, IA3/PASTA vectors) without. Throws StateError when nothing trains.
/// The step is fused on CUDA (peft::train::AdamW).
inline AdamW make_adamw(ModelRef model, double lr, double weight_decay = 0.0, double beta1 = 0.9,
                        double beta2 = 0.999, double eps = 1e-8) {
  return make_adamw(model, lr, weight_decay, std::vector<PrefixRate>{}, beta1, beta2, eps);
}

/// Each param group's current learning rate (read before a schedule changes them: the rates it was built with).
inline std::vector<double> group_rates(torch::optim::Optimizer& opt) {
  std::vector<double> out;
  for (auto& g : opt.param_groups()) out.push_back(g.options().get_lr());
  return out;
}

/// Bytes of optimizer state (AdamW: two moments per trainable element) currently held.
inline int64_t optimizer_state_bytes(torch::optim::Optimizer& opt) {
  int64_t bytes = 0;
  for (auto& entry : opt.state())  // keyed by parameter; the key type differs across LibTorch versions
    if (auto* s = dynamic_cast<torch::optim::AdamWParamState*>(entry.second.get()))
      for (const auto* t : {&s->exp_avg(), &s->exp_avg_sq(), &s->max_exp_avg_sq()})
        if (t->defined()) bytes += static_cast<int64_t>(t->numel() * t->element_size());
  return bytes;
}

/// Linear warmup from 0 to `base_lr` over `warmup` steps, then cosine decay to `min_ratio`·base_lr at
/// step `total`.
class WarmupCosine {
 public:
  WarmupCosine(int64_t total, int64_t warmup, double base_lr, double min_ratio = 0.0)
      : total_(total), warmup_(warmup), base_(base_lr), min_(min_ratio) {
    if (total <= 0 || warmup < 0 || warmup > total)
      throw ConfigError("WarmupCosine: expected 0 <= warmup <= total and total > 0, received warmup " +
                        std::to_string(warmup) + ", total " + std::to_string(total));
  }
  /// The learning rate for 0-based `step`.
  double lr(int64_t step) const {
    if (step < warmup_) return base_ * static_cast<double>(step + 1) / static_cast<double>(warmup_);
    const double t = total_ == warmup_ ? 1.0 : static_cast<double>(step - warmup_) / static_cast<double>(total_ - warmup_);
    constexpr double pi = 3.14159265358979323846;
    const double c = 0.5 * (1.0 + std::cos(pi * std::min(1.0, t)));
    return base_ * (min_ + (1.0 - min_) * c);
  }
  /// Sets every param group's learning rate for `step`.
  void apply(torch::optim::Optimizer& opt, int64_t step) const {
    const double v = lr(step);
    for (auto& g : opt.param_groups()) g.options().set_lr(v);
  }
  /// Groups at different rates (make_adamw with PrefixRate): group g gets base_rates[g] * lr(step) / base_lr.
  void apply(torch::optim::Optimizer& opt, int64_t step, const std::vector<double>& base_rates) const {
    auto& groups = opt.param_groups();
    if (base_rates.size() != groups.size())
      throw ConfigError("WarmupCosine::apply: " + std::to_string(base_rates.size()) + " base rates for " +
                        std::to_string(groups.size()) + " param groups");
    const double f = base_ == 0 ? 0.0 : lr(step) / base_;
    for (std::size_t g = 0; g < groups.size(); ++g) groups[g].options().set_lr(base_rates[g] * f);
  }

 private:
  int64_t total_, warmup_;
  double base_, min_;
};

/// Accuracy and mean cross-entropy of a classifier over a dataset.
struct EvalResult {
  double accuracy = 0;
  double loss = 0;
  int64_t count = 0;
};

/// Runs `forward` (inputs -> logits) over `inputs` / `labels` in batches, in eval mode and without
/// gradients, restoring the module's mode afterwards.
inline EvalResult evaluate(torch::nn::Module& model, const std::function<at::Tensor(const at::Tensor&)>& forward,
                           const at::Tensor& inputs, const at::Tensor& labels, int64_t batch = 256) {
  if (inputs.size(0) != labels.size(0))
    throw InputError("evaluate: " + std::to_string(inputs.size(0)) + " inputs but " + std::to_string(labels.size(0)) + " labels");
  torch::NoGradGuard g;
  const bool was_training = model.is_training();
  model.eval();
  EvalResult r;
  double loss_sum = 0;
  int64_t correct = 0;
  for (int64_t i = 0; i < inputs.size(0); i += batch) {
    const auto n = std::min(batch, inputs.size(0) - i);
    auto logits = forward(inputs.narrow(0, i, n)).to(at::kFloat);
    auto y = labels.narrow(0, i, n).to(logits.device());
    loss_sum += torch::nn::functional::cross_entropy(logits, y).item<double>() * static_cast<double>(n);
    correct += logits.argmax(-1).eq(y).sum().item<int64_t>();
  }
  r.count = inputs.size(0);
  r.accuracy = r.count ? static_cast<double>(correct) / static_cast<double>(r.count) : 0.0;
  r.loss = r.count ? loss_sum / static_cast<double>(r.count) : 0.0;
  if (was_training) model.train();
  return r;
}

/// Appends one JSON object per line to a file (metrics logs). Each record is flushed at once.
class JsonlLog {
 public:
  JsonlLog() = default;
  explicit JsonlLog(const std::string& path) : path_(path), out_(path, std::ios::app) {
    if (!out_) throw IoError("cannot open metrics log '" + path + "' for appending");
  }
  bool is_open() const { return out_.is_open(); }
  void write(const nlohmann::json& record) {
    if (!out_.is_open()) return;
    out_ << record.dump() << "\n";
    out_.flush();
  }

 private:
  std::string path_;
  std::ofstream out_;
};

/// Progress of a training loop: on a terminal a bar redrawn in place (step, loss, steps/s, eta); when
/// stderr is not a terminal, a plain line every `every` steps and at the end.
class Progress {
 public:
  Progress(int64_t total, std::string label, int64_t every = 50)
      : total_(total), label_(std::move(label)), every_(std::max<int64_t>(1, every)), tty_(isatty(fileno(stderr)) != 0),
        start_(std::chrono::steady_clock::now()) {}
  void update(int64_t step, double loss) {
    const double secs = elapsed();
    const double rate = secs > 0 ? static_cast<double>(step) / secs : 0.0;
    const double eta = rate > 0 ? static_cast<double>(total_ - step) / rate : 0.0;
    char line[256];
    if (tty_) {
      const int width = 24;
      const int filled = total_ > 0 ? static_cast<int>(width * step / total_) : width;
      std::string bar(static_cast<std::size_t>(filled), '#');
      bar.resize(width, '.');
      std::snprintf(line, sizeof line, "\r%-14s [%s] %lld/%lld loss %.4f  %.1f steps/s  eta %.0fs ", label_.c_str(),
                    bar.c_str(), static_cast<long long>(step), static_cast<long long>(total_), loss, rate, eta);
      std::cerr << line << std::flush;
      if (step >= total_) std::cerr << "\n";
    } else if (step % every_ == 0 || step >= total_) {
      std::snprintf(line, sizeof line, "%s step %lld/%lld loss %.4f %.1f steps/s eta %.0fs", label_.c_str(),
                    static_cast<long long>(step), static_cast<long long>(total_), loss, rate, eta);
      std::cerr << line << "\n";
    }
  }
  double elapsed() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  int64_t total_;
  std::string label_;
  int64_t every_;
  bool tty_;
  std::chrono::steady_clock::time_point start_;
};

/// Resident memory of this process, from /proc/self/status: current (VmRSS) and peak (VmHWM), bytes.
/// Zero where /proc is not available.
struct Rss {
  int64_t current = 0, peak = 0;
};
inline Rss rss() {
  Rss r;
  std::ifstream in("/proc/self/status");
  std::string key;
  while (in >> key) {
    int64_t kb = 0;
    if (key == "VmRSS:" && in >> kb) r.current = kb * 1024;
    else if (key == "VmHWM:" && in >> kb) r.peak = kb * 1024;
    in.ignore(1 << 20, '\n');
  }
  return r;
}
/// Hands freed heap memory back to the system (glibc malloc_trim), then resets the peak (VmHWM) to the
/// current RSS (Linux: /proc/self/clear_refs), so that a later rss().peak - rss().current measures what
/// the code in between needed. Returns false if the peak could not be reset.
inline bool reset_peak_rss() {
#if defined(__GLIBC__)
  malloc_trim(0);
#endif
  std::ofstream out("/proc/self/clear_refs");
  if (!out) return false;
  out << "5";
  return static_cast<bool>(out.flush());
}

}  // namespace peft::train
