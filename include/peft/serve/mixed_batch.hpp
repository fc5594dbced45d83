#pragma once
/// \file serve/mixed_batch.hpp
/// Many adapters in one batch: each row of a batch runs with its own adapter (or the base model).
///
///     // rows 0 and 2 use "alice", row 1 the base model, row 3 "bob"
///     {
///       peft::MixedBatch rows(*lm, {"alice", "__base__", "alice", "bob"});
///       auto logits = lm->forward(ids);                        // or generate(*lm, ids, ...)
///     }
///
/// While a MixedBatch is open (it is a scope, like torch::NoGradGuard), every tunable slot of that model
/// ignores its active adapters and computes row r with the adapter named for row r: the frozen op runs
/// once for the whole batch and the adapters' products run batched. For LoRA (and DoRA) on Linear the
/// rows' A and B are gathered into [B, r, in] / [B, out, r] stacks (zeros for rows without the adapter,
/// lower ranks zero-padded to the largest) and run as two batched products (bmm, baddbmm): no loop over
/// the adapters, whatever their number. When every row uses one adapter the slot runs it directly.
/// The gathered stacks are built once per scope and reused for every forward inside it (a whole
/// generate() call), unless gradients flow to the adapters, in which case they are rebuilt each forward
/// so that training a mixed batch works too.
///
/// Supported: LoRA and DoRA on Linear, LoRA on Embedding, IA3 on Linear. Anything else a selected adapter
/// has (prefix tuning, bottleneck adapters, ...) is refused when the MixedBatch is made, naming the
/// adapter and the module, as is a slot with a merged adapter (the merged weights would reach every row).

#include <peft/core/error.hpp>
#include <peft/core/model.hpp>
#include <peft/core/tunable.hpp>
#include <peft/slots/embedding.hpp>
#include <peft/slots/linear.hpp>
#include <peft/tuners/ia3.hpp>
#include <peft/tuners/lora.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace peft {

/// The row name for "no adapter" (PEFT's adapter_names uses the same).
inline constexpr const char* kBaseAdapter = "__base__";

/// How a mixed batch runs the LoRA products of rows with different adapters.
enum class MixedKernel {
  /// gather_bmm, or the adapter's own path when every row uses one adapter.
  automatic,
  /// Gather each row's A and B, two batched products.
  gather_bmm,
  /// One pair of products per distinct adapter on its rows (index_select, index_add), as PEFT does:
  /// kept to compare against.
  loop
};

struct MixedBatchOptions {
  TORCH_ARG(MixedKernel, kernel) = MixedKernel::automatic;
};

namespace detail {

/// What one selected adapter is at one slot.
enum class MixedKind { none, lora, dora, ia3_in, ia3_out, lora_embedding };

inline const char* mixed_kernel_name(MixedKernel k) {
  switch (k) {
    case MixedKernel::automatic: return "automatic";
    case MixedKernel::gather_bmm: return "gather_bmm";
    case MixedKernel::loop: return "loop";
  }
  return "?";
}

/// The per-row selection behind a MixedBatch: the hook every slot of the model calls.
class MixedPlan : public RowAdapterHook {
 public:
  MixedPlan(ModelRef model, std::vector<std::string> adapters, std::vector<int64_t> rows, MixedBatchOptions options)
      : adapters_(std::move(adapters)), rows_(std::move(rows)), options_(options) {
    const auto known = adapter_names(model);
    for (const auto& a : adapters_)
      if (std::find(known.begin(), known.end(), a) == known.end())
        throw StateError(fmt::format("mixed batch: no adapter named '{}' is loaded in the model (loaded: {})", a,
                                     known.empty() ? std::string("none") : join(known)));
    for (std::size_t i = 0; i < rows_.size(); ++i)
      if (rows_[i] < -1 || rows_[i] >= static_cast<int64_t>(adapters_.size()))
        throw InputError(fmt::format("mixed batch: row {} has adapter index {}, expected -1 (base) to {}", i, rows_[i],
                                     static_cast<int64_t>(adapters_.size()) - 1));
    for (const auto& s : tunable_slots(model)) {
      Entry e;
      e.name = s.name.empty() ? std::string("<root>") : s.name;
      e.tuners.assign(adapters_.size(), nullptr);
      e.kinds.assign(adapters_.size(), MixedKind::none);
      bool any = false;
      for (std::size_t p = 0; p < adapters_.size(); ++p) {
        Tuner* t = s.slot->adapter(adapters_[p]);
        if (!t) continue;
        e.tuners[p] = t;
        e.kinds[p] = classify(*s.slot, *t, adapters_[p], e.name);
        any = true;
      }
      // Merged adapters live in the base weights, and so in every row; an active adapter that acts
      // inside its op (attention prefixes) cannot be switched off per row.
      const auto& merged = s.slot->merged_adapters();
      if (!merged.empty() && (any || !s.slot->adapter_names().empty()))
        throw StateError(fmt::format("mixed batch: module '{}' has merged adapter(s) {} in its weights, which every row "
                                     "would then use; unmerge first (peft::unmerge_adapter)",
                                     e.name, join(merged)));
      if (s.slot->adapters_enabled())
        for (const auto& a : s.slot->active_adapters())
          if (Tuner* t = s.slot->adapter(a); t && t->inside_op() && std::find(adapters_.begin(), adapters_.end(), a) == adapters_.end())
            throw StateError(fmt::format("mixed batch: adapter '{}' ({}) is active on module '{}' and acts inside its op, "
                                         "where a mixed batch cannot switch it off per row; deactivate it (set_adapter) "
                                         "or delete it first",
                                         a, t->method(), e.name));
      // Which adapter each row uses here (a row whose adapter does not adapt this module uses the base).
      e.here.assign(rows_.size(), -1);
      for (std::size_t i = 0; i < rows_.size(); ++i)
        if (rows_[i] >= 0 && e.tuners[static_cast<std::size_t>(rows_[i])]) e.here[i] = rows_[i], e.any = true;
      e.uniform = e.any && std::all_of(e.here.begin(), e.here.end(), [&](int64_t p) { return p == e.here[0]; });
      slots_.emplace(s.slot, std::move(e));
    }
  }

  const std::vector<std::string>& adapters() const { return adapters_; }
  const std::vector<int64_t>& rows() const { return rows_; }
  MixedKernel kernel() const { return options_.kernel(); }

  at::Tensor run(TunableSlot& slot, const at::Tensor& x, const std::function<at::Tensor(const at::Tensor&)>& op) override {
    auto it = slots_.find(&slot);
    if (it == slots_.end()) return {};
    Entry& e = it->second;
    const auto b = static_cast<int64_t>(rows_.size());
    if (x.dim() == 0 || x.size(0) != b)
      throw InputError(fmt::format("mixed batch: module '{}' received a tensor of shape {} whose first dimension is "
                                   "not the batch's {} rows (one adapter name per row)",
                                   e.name, shape_str(x.sizes().vec()), b));
    if (!e.any) return op(x);
    if (options_.kernel() == MixedKernel::automatic && e.uniform)
      return run_single(*e.tuners[static_cast<std::size_t>(e.here[0])], slot, x, op);
    return run_mixed(e, slot, e.here, x, op);
  }

 private:
  struct Entry {
    std::string name;
    std::vector<Tuner*> tuners;  // per selected adapter; nullptr where it does not adapt this slot
    std::vector<MixedKind> kinds;
    std::vector<int64_t> here;   // per row: its adapter's position if that adapter adapts this slot, else -1
    bool any = false;            // some row uses an adapter here
    bool uniform = false;        // every row uses the same one
    // Built on first use (see MixedBatch): per-row stacks, on the device and in the dtype of use.
    bool cached = false;
    c10::Device cached_device = at::kCPU;
    at::ScalarType cached_dtype = at::kFloat;
    at::Tensor a_rows, b_rows, scale_rows, dropout_rows, gain_rows, ia3_in_rows, ia3_out_rows;
    float max_dropout = 0;
  };

  static MixedKind classify(TunableSlot& slot, Tuner& t, const std::string& adapter, const std::string& module) {
    if (dynamic_cast<LoraLinearImpl*>(&t)) return MixedKind::lora;
    if (dynamic_cast<DoraLinearImpl*>(&t)) return MixedKind::dora;
    if (auto* ia3 = dynamic_cast<IA3LinearImpl*>(&t)) return ia3->feedforward ? MixedKind::ia3_in : MixedKind::ia3_out;
    if (dynamic_cast<LoraEmbeddingImpl*>(&t)) return MixedKind::lora_embedding;
    throw ConfigError(fmt::format("mixed batch: adapter '{}' on module '{}' ({}) is {} with placement {}; a mixed batch "
                                  "runs LoRA and DoRA on Linear, LoRA on Embedding and IA3 on Linear",
                                  adapter, module, slot.op_kind(), t.method(), placement_name(t.placement())));
  }

  /// One tuner on the whole batch, exactly as the slot's frame runs it.
  static at::Tensor run_single(Tuner& t, TunableSlot& slot, const at::Tensor& x,
                               const std::function<at::Tensor(const at::Tensor&)>& op) {
    switch (t.placement()) {
      case Placement::input:
        return op(in_own_dtype(t, x, [&](const at::Tensor& a) { return t.input(a); }));
      case Placement::output: {
        auto y = op(x);
        return in_own_dtype(t, y, [&](const at::Tensor& a) { return t.output(a); });
      }
      case Placement::parallel: {
        auto y = op(x);
        WeightSet base = slot.base_weights();
        base.output = y;
        return in_own_dtype(t, y, [&](const at::Tensor& yy) {
          return t.parallel_with(cast_floating(x, yy.scalar_type()), yy, base);
        });
      }
      case Placement::weight: break;
    }
    throw StateError("mixed batch: a weight-placed tuner cannot run per row");
  }

  /// Whether gradients reach the adapters the rows use here (then the stacks are rebuilt each forward).
  static bool grads_flow(const Entry& e, const std::vector<int64_t>& here) {
    if (!at::GradMode::is_enabled()) return false;
    for (auto p : here)
      if (p >= 0)
        for (const auto& t : e.tuners[static_cast<std::size_t>(p)]->adapter_tensors())
          if (t.second.requires_grad()) return true;
    return false;
  }

  /// Per-row stacks for the LoRA/DoRA/IA3 rows of this slot, in `opts`' dtype and device.
  void build(Entry& e, TunableSlot& slot, const std::vector<int64_t>& here, const at::TensorOptions& opts) {
    const auto b = static_cast<int64_t>(here.size());
    e.a_rows = e.b_rows = e.scale_rows = e.dropout_rows = e.gain_rows = e.ia3_in_rows = e.ia3_out_rows = at::Tensor();
    auto kind = [&](int64_t p) { return p >= 0 ? e.kinds[static_cast<std::size_t>(p)] : MixedKind::none; };
    auto is_lora = [&](int64_t p) { return kind(p) == MixedKind::lora || kind(p) == MixedKind::dora; };
    int64_t rmax = 0, in = 0, out = 0;
    bool dora = false;
    for (auto p : here)
      if (is_lora(p)) {
        const auto [A, B] = pair_of(e, p);
        rmax = std::max(rmax, A.size(0)), in = A.size(1), out = B.size(0);
        dora = dora || kind(p) == MixedKind::dora;
      }
    if (rmax > 0) {
      // Per adapter: A and B zero-padded to rmax (once); then one stack per row, zeros for other rows.
      std::map<int64_t, std::pair<at::Tensor, at::Tensor>> padded;
      std::vector<at::Tensor> as, bs, gs;
      std::map<int64_t, at::Tensor> gains;
      std::vector<float> scale(static_cast<std::size_t>(b), 0.f), drop(static_cast<std::size_t>(b), 0.f);
      const auto zero_a = at::zeros({rmax, in}, opts), zero_b = at::zeros({out, rmax}, opts);
      const auto ones = at::ones({out}, opts);
      const auto w = slot.base_weights().weight;
      for (int64_t i = 0; i < b; ++i) {
        const auto p = here[static_cast<std::size_t>(i)];
        if (!is_lora(p)) {
          as.push_back(zero_a), bs.push_back(zero_b), gs.push_back(ones);
          continue;
        }
        auto found = padded.find(p);
        if (found == padded.end()) {
          auto [A, B] = pair_of(e, p);
          A = A.to(opts), B = B.to(opts);
          if (A.size(0) < rmax) {
            A = at::constant_pad_nd(A, {0, 0, 0, rmax - A.size(0)});
            B = at::constant_pad_nd(B, {0, rmax - B.size(1)});
          }
          found = padded.emplace(p, std::make_pair(A, B)).first;
          if (kind(p) == MixedKind::dora) {
            // g = m / ||W + s B A|| (the norm detached, as DoRA's own forward).
            auto* d = e.tuners[static_cast<std::size_t>(p)]->as_module().as<DoraLinearImpl>();
            gains[p] = (d->lora_magnitude_vector / d->weight_norm(w.to(d->lora_A.scalar_type()))).to(opts);
          }
        }
        as.push_back(found->second.first), bs.push_back(found->second.second);
        gs.push_back(kind(p) == MixedKind::dora ? gains[p] : ones);
        const auto& spec = spec_of(e, p);
        scale[static_cast<std::size_t>(i)] = static_cast<float>(spec.scaling);
        drop[static_cast<std::size_t>(i)] = static_cast<float>(spec.dropout);
      }
      e.scale_rows = at::tensor(scale).to(opts).view({b, 1, 1});
      e.a_rows = at::stack(as) * e.scale_rows;  // [B, rmax, in], each row's scaling folded in
      e.b_rows = at::stack(bs);                 // [B, out, rmax]
      e.dropout_rows = at::tensor(drop).view({b, 1, 1});
      e.max_dropout = *std::max_element(drop.begin(), drop.end());
      if (dora) e.gain_rows = at::stack(gs).unsqueeze(1);  // [B, 1, out]
    }
    // IA3: one vector per row (ones for other rows), on the input or on the output.
    for (const auto which : {MixedKind::ia3_in, MixedKind::ia3_out}) {
      int64_t width = 0;
      for (auto p : here)
        if (kind(p) == which) width = e.tuners[static_cast<std::size_t>(p)]->as_module().as<IA3LinearImpl>()->ia3_l.numel();
      if (width == 0) continue;
      const auto ones = at::ones({width}, opts);
      std::vector<at::Tensor> ls;
      for (auto p : here)
        ls.push_back(kind(p) == which
                         ? e.tuners[static_cast<std::size_t>(p)]->as_module().as<IA3LinearImpl>()->ia3_l.view({-1}).to(opts)
                         : ones);
      (which == MixedKind::ia3_in ? e.ia3_in_rows : e.ia3_out_rows) = at::stack(ls).unsqueeze(1);  // [B, 1, width]
    }
  }

  static std::pair<at::Tensor, at::Tensor> pair_of(const Entry& e, int64_t p) {
    auto& m = e.tuners[static_cast<std::size_t>(p)]->as_module();
    if (auto* l = m.as<LoraLinearImpl>()) return {l->lora_A, l->lora_B};
    auto* d = m.as<DoraLinearImpl>();
    return {d->lora_A, d->lora_B};
  }
  static const LoraSpec& spec_of(const Entry& e, int64_t p) {
    auto& m = e.tuners[static_cast<std::size_t>(p)]->as_module();
    if (auto* l = m.as<LoraLinearImpl>()) return l->spec;
    return m.as<DoraLinearImpl>()->spec;
  }

  /// The dtype the adapters compute in at this slot (their parameters').
  static at::ScalarType adapter_dtype(const Entry& e, const std::vector<int64_t>& here, at::ScalarType fallback) {
    for (auto p : here)
      if (p >= 0) return tuner_dtype(*e.tuners[static_cast<std::size_t>(p)], fallback);
    return fallback;
  }

  at::Tensor run_mixed(Entry& e, TunableSlot& slot, const std::vector<int64_t>& here, const at::Tensor& x,
                       const std::function<at::Tensor(const at::Tensor&)>& op) {
    bool embedding = false;
    for (auto p : here)
      if (p >= 0 && e.kinds[static_cast<std::size_t>(p)] == MixedKind::lora_embedding) embedding = true;
    if (embedding) return run_embedding(e, slot, here, x, op);

    const auto b = static_cast<int64_t>(here.size());
    // Half-precision activations: the adapters compute in their own dtype and the result is rounded
    // once, as the slot's frame does for one adapter.
    const auto act = x.scalar_type();
    const auto mine = is_half(x) ? adapter_dtype(e, here, act) : act;
    const auto opts = x.options().dtype(mine);
    const bool fresh = grads_flow(e, here);
    if (fresh || !e.cached || e.cached_device != x.device() || e.cached_dtype != mine) {
      build(e, slot, here, opts);
      e.cached = !fresh;
      e.cached_device = x.device();
      e.cached_dtype = mine;
    }
    const bool dora = e.gain_rows.defined();

    at::Tensor h = x;
    if (e.ia3_in_rows.defined()) {
      const auto scaled = cast_floating(x, mine).reshape({b, -1, x.size(-1)}) * e.ia3_in_rows;
      h = cast_floating(scaled.view(x.sizes()), act);
    }
    at::Tensor y = op(h);
    if (e.a_rows.defined()) {
      const int64_t in = e.a_rows.size(2), out = e.b_rows.size(1);
      auto x3 = cast_floating(h, mine).reshape({b, -1, in});
      auto y3 = cast_floating(y, mine).reshape({b, -1, out});
      at::Tensor xd = x3;
      bool dropped = false;
      if (e.max_dropout > 0 && slot.as_module().is_training()) {
        const auto p = e.dropout_rows.to(x3.device(), mine);
        xd = x3 * (at::rand_like(x3) >= p).to(mine) / (1 - p);
        dropped = true;
      }
      at::Tensor out3;
      if (options_.kernel() == MixedKernel::loop && !dora) {
        out3 = y3;
        std::map<int64_t, std::vector<int64_t>> groups;
        for (int64_t i = 0; i < b; ++i)
          if (const auto p = here[static_cast<std::size_t>(i)]; p >= 0 && e.kinds[static_cast<std::size_t>(p)] == MixedKind::lora)
            groups[p].push_back(i);
        for (const auto& [p, idx_v] : groups) {
          auto [A, B] = pair_of(e, p);
          const auto idx = at::tensor(idx_v, at::kLong).to(x3.device());
          auto a = at::matmul(xd.index_select(0, idx), A.to(mine).t());
          auto d = at::matmul(a, B.to(mine).t()) * spec_of(e, p).scaling;
          out3 = out3.index_add(0, idx, d);
        }
      } else {
        auto a = at::bmm(xd, e.a_rows.transpose(1, 2));  // [B, T, rmax], scaled
        if (!dora) {
          out3 = at::baddbmm(y3, a, e.b_rows.transpose(1, 2));
        } else {
          // DoRA rows: y + (g - 1) (x_d Wᵀ) + g s B A x_d; LoRA rows have g = 1.
          const auto lora = at::bmm(a, e.b_rows.transpose(1, 2));
          const auto base = slot.base_weights();
          at::Tensor xw;
          if (dropped) xw = at::matmul(xd, base.weight.to(mine).t());
          else xw = base.bias.defined() ? y3 - base.bias.to(mine) : y3;
          out3 = y3 + (e.gain_rows - 1) * xw + e.gain_rows * lora;
        }
      }
      y = cast_floating(out3.view(y.sizes()), act);
    }
    if (e.ia3_out_rows.defined()) {
      const auto scaled = cast_floating(y, mine).reshape({b, -1, y.size(-1)}) * e.ia3_out_rows;
      y = cast_floating(scaled.view(y.sizes()), act);
    }
    if (fresh) e.cached = false;
    return y;
  }

  /// LoRA on an Embedding, rows grouped by adapter (a lookup per group; the products are tiny).
  at::Tensor run_embedding(Entry& e, TunableSlot&, const std::vector<int64_t>& here, const at::Tensor& ids,
                           const std::function<at::Tensor(const at::Tensor&)>& op) {
    at::Tensor y = op(ids);
    const auto act = y.scalar_type();
    std::map<int64_t, std::vector<int64_t>> groups;
    for (std::size_t i = 0; i < here.size(); ++i)
      if (here[i] >= 0) groups[here[i]].push_back(static_cast<int64_t>(i));
    auto out = y;
    for (const auto& [p, idx_v] : groups) {
      auto* t = e.tuners[static_cast<std::size_t>(p)]->as_module().as<LoraEmbeddingImpl>();
      if (!t) throw StateError("mixed batch: internal error (an Embedding row without LoRA)");
      const auto idx = at::tensor(idx_v, at::kLong).to(ids.device());
      const auto mine = is_half(y) ? t->lora_embedding_A.scalar_type() : act;
      const int64_t pad = t->options.padding_idx() ? *t->options.padding_idx() : -1;
      auto a = at::embedding(t->lora_embedding_A.t(), ids.index_select(0, idx), pad);
      auto d = at::matmul(a.to(mine), t->lora_embedding_B.t().to(mine)) * t->spec.scaling;
      auto rows = cast_floating(out.index_select(0, idx), mine) + d;
      out = out.index_copy(0, idx, cast_floating(rows, act));
    }
    return out;
  }

  std::vector<std::string> adapters_;
  std::vector<int64_t> rows_;
  MixedBatchOptions options_;
  std::unordered_map<const TunableSlot*, Entry> slots_;
};

}  // namespace detail

class AdapterPool;

/// A scope in which each row of the batch runs with its own adapter (see the file comment). The
/// adapters it names must stay attached while it is open (an AdapterPool keeps them loaded).
class MixedBatch {
 public:
  /// `rows`: one adapter name per batch row; "__base__" (kBaseAdapter) or "" for the base model.
  MixedBatch(ModelRef model, const std::vector<std::string>& rows, MixedBatchOptions options = {}) {
    std::vector<std::string> adapters;
    std::vector<int64_t> index;
    index.reserve(rows.size());
    for (const auto& r : rows) {
      if (r.empty() || r == kBaseAdapter) {
        index.push_back(-1);
        continue;
      }
      auto it = std::find(adapters.begin(), adapters.end(), r);
      if (it == adapters.end()) it = adapters.insert(adapters.end(), r);
      index.push_back(it - adapters.begin());
    }
    open(model, std::move(adapters), std::move(index), options);
  }
  /// `index` (int64 [B]): for each row, its adapter's position in `adapters`, or -1 for the base model.
  MixedBatch(ModelRef model, std::vector<std::string> adapters, const at::Tensor& index, MixedBatchOptions options = {}) {
    if (index.dim() != 1 || at::isFloatingType(index.scalar_type()) || index.scalar_type() == at::kBool)
      throw InputError("mixed batch: the adapter index must be an integer [batch] tensor, received shape " +
                       detail::shape_str(index.sizes().vec()) + " of " + std::string(c10::toString(index.scalar_type())));
    auto cpu = index.to(at::kCPU, at::kLong).contiguous();
    std::vector<int64_t> rows(cpu.data_ptr<int64_t>(), cpu.data_ptr<int64_t>() + cpu.numel());
    open(model, std::move(adapters), std::move(rows), options);
  }
  MixedBatch(const MixedBatch&) = delete;
  MixedBatch& operator=(const MixedBatch&) = delete;

  /// The distinct adapters of the batch, and each row's position among them (-1: base).
  const std::vector<std::string>& adapters() const { return plan_->adapters(); }
  const std::vector<int64_t>& rows() const { return plan_->rows(); }
  int64_t size() const { return static_cast<int64_t>(plan_->rows().size()); }

 private:
  void open(ModelRef model, std::vector<std::string> adapters, std::vector<int64_t> rows, MixedBatchOptions options) {
    if (rows.empty()) throw InputError("mixed batch: no rows (expected one adapter name per batch row)");
    plan_ = std::make_shared<detail::MixedPlan>(model, std::move(adapters), rows, options);
    scope_ = std::make_unique<BatchScope>(keys::adapter_index, at::tensor(rows, at::kLong),
                                          std::static_pointer_cast<void>(plan_));
  }
  std::shared_ptr<detail::MixedPlan> plan_;
  std::unique_ptr<BatchScope> scope_;
  std::shared_ptr<void> lease_;  // an AdapterPool's pin on the batch's adapters
  friend class AdapterPool;
  MixedBatch(ModelRef model, const std::vector<std::string>& rows, MixedBatchOptions options, std::shared_ptr<void> lease)
      : MixedBatch(model, rows, options) {
    lease_ = std::move(lease);
  }
};

}  // namespace peft
