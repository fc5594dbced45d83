#pragma once
/// \file nn/attention.hpp
/// Multi-head self-attention as a tunable composite op, and the pieces every model's attention shares:
/// the attention kernel (LibTorch 2.x `scaled_dot_product_attention` or an equivalent math path),
/// padding/causal masks, rotary embeddings, grouped-query attention, a KV cache and key/value prefixes
/// supplied by tuners (prefix tuning).
///
///     peft::nn::MultiHeadAttention attn(peft::nn::MultiHeadAttentionOptions(512, 8).num_kv_heads(2));
///     peft::nn::AttentionInputs in;
///     in.mask = peft::nn::make_attention_mask(pad_mask, x.size(1), /*past=*/0, /*causal=*/true, x);
///     auto y = attn->forward(x, in);

#include <peft/core/detail/compat.hpp>
#include <peft/core/detail/strings.hpp>
#include <peft/core/error.hpp>
#include <peft/core/tunable.hpp>
#include <peft/slots/linear.hpp>

#include <torch/arg.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/nn/pimpl.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <vector>

namespace peft::nn {

/// Which kernel computes attention. `automatic` is `sdpa` where LibTorch has it (2.x), else `math`.
enum class AttentionBackend { automatic, math, sdpa };

/// The process-wide backend choice (tests compare the two paths).
inline AttentionBackend& attention_backend() {
  static AttentionBackend b = AttentionBackend::automatic;
  return b;
}
/// Whether this LibTorch has scaled_dot_product_attention.
inline constexpr bool has_sdpa() { return PEFT_TORCH2 != 0; }

/// The most negative finite value of `dtype`: masked scores get it, so a fully masked row (a padding
/// query) gives a uniform softmax instead of NaN.
inline double lowest(at::ScalarType dtype) {
  switch (dtype) {
    case at::kHalf: return -65504.0;
    case at::kBFloat16: return -3.3895313892515355e38;
    case at::kDouble: return std::numeric_limits<double>::lowest();
    default: return static_cast<double>(std::numeric_limits<float>::lowest());
  }
}

/// Key and value tensors of one attention layer, [B, H_kv, S, D].
struct LayerKV {
  at::Tensor k, v;
  int64_t length() const { return k.defined() ? k.size(2) : 0; }
};

/// The KV cache of a whole model for incremental decoding: one entry per layer, filled by forward.
struct KVCache {
  std::vector<LayerKV> layers;
  explicit KVCache(std::size_t num_layers = 0) : layers(num_layers) {}
  /// Tokens already cached (0 for an empty cache).
  int64_t length() const { return layers.empty() ? 0 : layers.front().length(); }
};

/// Implemented by tuners that give attention extra keys and values (prefix tuning). Such a tuner
/// returns Tuner::inside_op() == true; the attention op prepends its prefix to the keys and values of
/// every batch row, and every query attends to it.
class AttentionPrefix {
 public:
  virtual ~AttentionPrefix() = default;
  /// Keys and values [batch, H_kv, P, D] in the dtype/device of the attention weights.
  virtual LayerKV prefix(int64_t batch) const = 0;
  /// P, the number of prefix positions.
  virtual int64_t prefix_length() const { return prefix(1).k.size(2); }
};

/// How many prefix positions the active tuners of an attention op add. As in PEFT, where prefixes
/// reach the model as a past key/value cache, the model's own tokens take positions after them.
inline int64_t active_prefix_length(const TunableSlot& attention) {
  if (!attention.adapters_enabled()) return 0;
  int64_t n = 0;
  for (const auto& name : attention.active_adapters())
    if (const auto* p = dynamic_cast<const AttentionPrefix*>(attention.adapter(name))) n += p->prefix_length();
  return n;
}

/// Implemented by attention ops, so that tuners can size what they hand to the attention (prefix
/// tuning: keys and values per key/value head).
class AttentionShape {
 public:
  virtual ~AttentionShape() = default;
  virtual int64_t num_heads() const = 0;
  virtual int64_t num_kv_heads() const = 0;
  virtual int64_t head_dim() const = 0;
};

/// Rotary position embedding tables, [B or 1, T, D] each (LLaMA's rotate-half convention).
struct Rotary {
  at::Tensor cos, sin;
  /// sin with its first half negated, so that rotate_half(x) * sin = swap_halves(x) * sin_rotated: lets
  /// the CUDA path apply RoPE in three kernels instead of five (computed once per forward, not per layer).
  at::Tensor sin_rotated;
  bool defined() const { return cos.defined(); }
};

/// RoPE scaling of a config's `rope_scaling` (only "linear" and "llama3" change the frequencies).
struct RopeScaling {
  std::string type;  ///< "" (none), "linear", "llama3"
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

/// cos/sin tables for `position_ids` ([B, T] or [T], int64, on the model's device).
inline Rotary rotary_tables(const at::Tensor& position_ids, int64_t head_dim, double theta, at::ScalarType dtype,
                            const RopeScaling& scaling = {}) {
  auto opts = position_ids.options().dtype(at::kFloat);
  auto inv_freq = 1.0 / at::pow(theta, at::arange(0, head_dim, 2, opts) / static_cast<double>(head_dim));
  if (scaling.type == "linear") {
    inv_freq = inv_freq / scaling.factor;
  } else if (scaling.type == "llama3") {
    const double low_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor;
    const double high_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor;
    auto wavelen = 2 * M_PI / inv_freq;
    auto scaled = at::where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq);
    auto smooth = (scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor) /
                  (scaling.high_freq_factor - scaling.low_freq_factor);
    auto smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled;
    auto medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen);
    inv_freq = at::where(medium, smoothed, scaled);
  }
  auto pos = position_ids.dim() == 1 ? position_ids.unsqueeze(0) : position_ids;
  auto freqs = pos.to(at::kFloat).unsqueeze(-1) * inv_freq;  // [B, T, D/2]
  auto emb = at::cat({freqs, freqs}, -1);
  auto sin = freqs.sin();
  return {emb.cos().to(dtype), at::cat({sin, sin}, -1).to(dtype), at::cat({-sin, sin}, -1).to(dtype)};
}

/// Applies rotary embeddings to x [B, H, T, D].
inline at::Tensor apply_rotary(const at::Tensor& x, const Rotary& r) {
  const int64_t half = x.size(-1) / 2;
  if (x.is_cuda() && r.sin_rotated.defined()) {  // x cos + [x2, x1] [-sin, sin]: the same products, fewer passes
    auto sizes = x.sizes().vec();
    sizes.back() = 2;
    sizes.push_back(half);
    auto swapped = x.reshape(sizes).flip(-2).reshape(x.sizes());
    return at::addcmul(x * r.cos.unsqueeze(1), swapped, r.sin_rotated.unsqueeze(1));
  }
  auto rotated = at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  return x * r.cos.unsqueeze(1) + rotated * r.sin.unsqueeze(1);
}

/// Additive attention mask [B, 1, T, S] for T queries over S = past + T keys, or an undefined tensor
/// when nothing is masked. `padding` is [B, S] (1 = real token, 0 = padding) or undefined; `causal`
/// lets query i see keys up to past + i only. Built on `like`'s device in its dtype.
inline at::Tensor make_attention_mask(const at::Tensor& padding, int64_t q_len, int64_t past, bool causal,
                                      const at::Tensor& like) {
  const int64_t s_len = past + q_len;
  if (padding.defined() && (padding.dim() != 2 || padding.size(1) != s_len))
    throw InputError("attention_mask must be [batch, " + std::to_string(s_len) + "] (past " + std::to_string(past) +
                     " + new " + std::to_string(q_len) + " tokens), received " + peft::detail::shape_str(padding.sizes().vec()));
  if (!causal && !padding.defined()) return {};
  at::Tensor allowed;  // [B or 1, 1, T, S]
  if (causal) {
    auto q_pos = at::arange(past, s_len, like.options().dtype(at::kLong)).unsqueeze(1);
    auto k_pos = at::arange(0, s_len, like.options().dtype(at::kLong)).unsqueeze(0);
    allowed = (k_pos <= q_pos).view({1, 1, q_len, s_len});
  }
  if (padding.defined()) {
    auto keep = padding.to(like.device()).to(at::kBool).view({padding.size(0), 1, 1, s_len});
    allowed = allowed.defined() ? (allowed & keep) : keep.expand({padding.size(0), 1, q_len, s_len});
  }
  return at::zeros(allowed.sizes(), like.options()).masked_fill(allowed.logical_not(), lowest(like.scalar_type()));
}

/// What an attention op needs besides its input.
struct AttentionInputs {
  /// Additive mask [B or 1, 1, T, S] (make_attention_mask), or undefined.
  at::Tensor mask;
  /// Causal masking when `mask` is undefined (a causal model without padding or cache).
  bool causal = false;
  /// Rotary tables for the new tokens, or undefined.
  Rotary rotary;
  /// This layer's cache: keys/values of earlier tokens, extended in place with the new ones.
  LayerKV* cache = nullptr;
};

namespace detail {

/// The budget of one chunk's score block [rows, heads, T, S] in bytes (settable: tests force many chunks).
inline int64_t& attention_chunk_bytes() {
  static int64_t bytes = int64_t{32} << 20;
  return bytes;
}

/// softmax(q kᵀ · scale + mask) v with dropout on the probabilities, as an autograd function that keeps
/// for backward what that needs and no more: q, k, v, the probabilities and the dropout mask as bools
/// (autograd over the plain ops keeps the probabilities, a float mask and the dropped probabilities:
/// 9 bytes per score instead of 3 × 4 in float32). Forward and backward run over chunks of (batch, head)
/// rows, so the score-sized temporaries are one chunk's, not the whole batch's. The values are those of
/// the plain ops: the same products in the same order, the same float noise 1/(1-p) (the mask is drawn
/// by one bernoulli_ over the whole tensor, so a recompute after restoring the RNG draws it again).
struct MathAttentionFunction : torch::autograd::Function<MathAttentionFunction> {
  /// Calls f(b0, nb, h0, nh) over chunks of batch rows and heads of about attention_chunk_bytes().
  template <class F>
  static void chunks(const at::Tensor& q, int64_t s, F&& f) {
    const int64_t b = q.size(0), h = q.size(1), t = q.size(2);
    const int64_t per_head = std::max<int64_t>(1, t * s * static_cast<int64_t>(std::max<size_t>(4, q.element_size())));
    const int64_t heads = std::clamp<int64_t>(attention_chunk_bytes() / per_head, 1, h);
    const int64_t rows = heads < h ? 1 : std::clamp<int64_t>(attention_chunk_bytes() / (per_head * h), 1, b);
    for (int64_t b0 = 0; b0 < b; b0 += rows)
      for (int64_t h0 = 0; h0 < h; h0 += heads) f(b0, std::min(rows, b - b0), h0, std::min(heads, h - h0));
  }
  static at::Tensor part(const at::Tensor& x, int64_t b0, int64_t nb, int64_t h0, int64_t nh) {
    return x.narrow(0, b0, nb).narrow(1, h0, nh);
  }
  /// A mask [B or 1, 1 or H, T, S] cut to the chunk (its broadcast dimensions stay whole).
  static at::Tensor mask_part(const at::Tensor& m, int64_t b0, int64_t nb, int64_t h0, int64_t nh) {
    auto r = m.size(0) == 1 ? m : m.narrow(0, b0, nb);
    return r.size(1) == 1 ? r : r.narrow(1, h0, nh);
  }

  /// `mask` (additive, [B or 1, 1 or H, T, S]) is no autograd input: it is a constant of the batch, and
  /// LibTorch 1.13 refuses undefined tensors among a function's inputs.
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k,
                            const at::Tensor& v, const c10::optional<at::Tensor>& mask, bool causal, double dropout_p) {
    const int64_t t = q.size(2), s = k.size(2);
    const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
    auto probs = at::empty({q.size(0), q.size(1), t, s}, q.options());
    at::Tensor keep;  // bool: the positions dropout keeps
    if (dropout_p > 0) keep = at::empty(probs.sizes(), q.options().dtype(at::kBool)).bernoulli_(1 - dropout_p);
    at::Tensor future;
    if (causal) future = at::ones({t, s}, q.options().dtype(at::kBool)).triu(s - t + 1);
    auto out = at::empty({q.size(0), q.size(1), t, v.size(-1)}, q.options());
    const auto soft = at::promote_types(q.scalar_type(), at::kFloat);
    chunks(q, s, [&](int64_t b0, int64_t nb, int64_t h0, int64_t nh) {
      auto scores = at::matmul(part(q, b0, nb, h0, nh), part(k, b0, nb, h0, nh).transpose(-2, -1)).mul_(scale);
      if (mask) scores.add_(mask_part(*mask, b0, nb, h0, nh));
      if (causal) scores.masked_fill_(future, lowest(scores.scalar_type()));
      auto p = part(probs, b0, nb, h0, nh);
      p.copy_(at::softmax(scores, -1, soft));
      scores = at::Tensor();
      auto dropped = keep.defined() ? p * part(keep, b0, nb, h0, nh).to(p.scalar_type()).div_(1 - dropout_p) : p;
      part(out, b0, nb, h0, nh).copy_(at::matmul(dropped, part(v, b0, nb, h0, nh)));
    });
    ctx->save_for_backward({q, k, v, probs, keep});
    ctx->saved_data["causal"] = causal;
    ctx->saved_data["dropout_p"] = dropout_p;
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &q = saved[0], &k = saved[1], &v = saved[2], &probs = saved[3], &keep = saved[4];
    const bool causal = ctx->saved_data["causal"].toBool();
    const double dropout_p = ctx->saved_data["dropout_p"].toDouble();
    const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
    const auto& go = grads[0];
    const int64_t t = q.size(2), s = k.size(2);
    at::Tensor future;
    if (causal) future = at::ones({t, s}, q.options().dtype(at::kBool)).triu(s - t + 1);
    auto gq = at::empty(q.sizes(), q.options()), gk = at::empty(k.sizes(), k.options()),
         gv = at::empty(v.sizes(), v.options());
    const auto soft = at::promote_types(q.scalar_type(), at::kFloat);
    chunks(q, s, [&](int64_t b0, int64_t nb, int64_t h0, int64_t nh) {
      auto g = part(go, b0, nb, h0, nh);
      auto p = part(probs, b0, nb, h0, nh);
      auto gp = at::matmul(g, part(v, b0, nb, h0, nh).transpose(-2, -1));  // d out / d dropped
      if (keep.defined()) {
        auto noise = part(keep, b0, nb, h0, nh).to(p.scalar_type()).div_(1 - dropout_p);
        part(gv, b0, nb, h0, nh).copy_(at::matmul((p * noise).transpose(-2, -1), g));
        gp.mul_(noise);
      } else {
        part(gv, b0, nb, h0, nh).copy_(at::matmul(p.transpose(-2, -1), g));
      }
      auto gs = at::_softmax_backward_data(gp.to(soft), p.to(soft), -1, soft).to(q.scalar_type());
      gp = at::Tensor();
      if (causal) gs.masked_fill_(future, 0);
      gs.mul_(scale);
      part(gq, b0, nb, h0, nh).copy_(at::matmul(gs, part(k, b0, nb, h0, nh)));
      part(gk, b0, nb, h0, nh).copy_(at::matmul(gs.transpose(-2, -1), part(q, b0, nb, h0, nh)));
    });
    return {gq, gk, gv, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace detail

namespace functional {

/// Repeats each of H_kv key/value heads H/H_kv times (grouped-query attention).
inline at::Tensor repeat_kv(const at::Tensor& x, int64_t groups) {
  if (groups == 1) return x;
  const auto b = x.size(0), h = x.size(1), s = x.size(2), d = x.size(3);
  return x.unsqueeze(2).expand({b, h, groups, s, d}).reshape({b, h * groups, s, d});
}

/// softmax(q kᵀ / sqrt(D) + mask) v for q [B, H, T, D] and k, v [B, H_kv, S, D], H a multiple of H_kv
/// (grouped-query attention: each key/value head serves H / H_kv query heads).
inline at::Tensor attend(const at::Tensor& q, at::Tensor k, at::Tensor v, const at::Tensor& mask, bool causal,
                         double dropout_p) {
  const int64_t groups = k.size(1) > 0 ? q.size(1) / k.size(1) : 1;
  if (k.size(1) * groups != q.size(1) || v.size(1) != k.size(1))
    throw InputError("attention: " + std::to_string(q.size(1)) + " query heads do not divide into " +
                     std::to_string(k.size(1)) + " key and " + std::to_string(v.size(1)) + " value heads");
  at::Tensor m = mask;
  if (causal && !m.defined() && q.size(-2) != k.size(-2)) {  // bottom-right aligned (cached decoding)
    m = make_attention_mask({}, q.size(-2), k.size(-2) - q.size(-2), true, q);
  }
  if (m.defined()) causal = false;
  AttentionBackend backend = attention_backend();
  if (backend == AttentionBackend::automatic) backend = has_sdpa() ? AttentionBackend::sdpa : AttentionBackend::math;
  // In training the math path runs as one autograd function that keeps 9 bytes per score, not 12
  // (MathAttentionFunction); without autograd the plain ops keep nothing anyway.
  const bool records = at::GradMode::is_enabled() && (q.requires_grad() || k.requires_grad() || v.requires_grad()) &&
                       !(m.defined() && m.requires_grad());
#if PEFT_TORCH2
  if (backend == AttentionBackend::sdpa) {
    c10::optional<at::Tensor> opt;
    if (m.defined()) opt = m;
#if PEFT_HAS_SDPA_GQA
    // Without a mask the CUDA flash kernel reads grouped key/value heads as they are instead of copies
    // repeated H / H_kv times (as transformers does). Only where a fused kernel takes them: otherwise
    // (fp32, a mask, an old GPU) SDPA would fall back to its math path, slower than the copies.
    if (groups > 1 && !m.defined() && q.is_cuda() &&
        at::_fused_sdp_choice(q, k, v, opt, dropout_p, causal, c10::nullopt, /*enable_gqa=*/true) > 0)
      return at::scaled_dot_product_attention(q, k, v, opt, dropout_p, causal, c10::nullopt, /*enable_gqa=*/true);
#endif
    k = repeat_kv(k, groups);
    v = repeat_kv(v, groups);
    // Where SDPA has no fused kernel for these inputs (on CPU: dropout, a mask before 2.x's CPU flash
    // kernel took one) it runs the plain ops under autograd; training takes the lean function instead.
    if (!records || at::_fused_sdp_choice(q, k, v, opt, dropout_p, causal, c10::nullopt
#if PEFT_HAS_SDPA_GQA
                                          , /*enable_gqa=*/false
#endif
                                          ) > 0)
      return at::scaled_dot_product_attention(q, k, v, opt, dropout_p, causal);
    return detail::MathAttentionFunction::apply(q, k, v, opt, causal, dropout_p);
  }
#else
  if (backend == AttentionBackend::sdpa)
    throw StateError("scaled_dot_product_attention needs LibTorch 2.x; this build uses " +
                     std::string(peft::detail::torch_version()));
#endif
  k = repeat_kv(k, groups);
  v = repeat_kv(v, groups);
  if (records)
    return detail::MathAttentionFunction::apply(q, k, v, m.defined() ? c10::optional<at::Tensor>(m) : c10::nullopt, causal,
                                                dropout_p);
  auto scores = at::matmul(q, k.transpose(-2, -1)) * (1.0 / std::sqrt(static_cast<double>(q.size(-1))));
  if (m.defined()) {
    scores = scores + m;
  } else if (causal) {
    const int64_t t = q.size(-2), s = k.size(-2);
    auto future = at::ones({t, s}, q.options().dtype(at::kBool)).triu(s - t + 1);
    scores = scores.masked_fill(future, lowest(scores.scalar_type()));
  }
  // Softmax in at least float32 (as Hugging Face does for half types); double stays double.
  auto probs = at::softmax(scores, -1, at::promote_types(scores.scalar_type(), at::kFloat)).to(q.scalar_type());
  if (dropout_p > 0) probs = at::dropout(probs, dropout_p, true);
  return at::matmul(probs, v);
}

/// The shared core of every model's self-attention: projections -> heads -> rotary -> cache ->
/// tuner prefixes -> attention -> merged heads [B, T, H*D] (before the output projection).
inline at::Tensor self_attention(const at::Tensor& x, Linear& q_proj, Linear& k_proj, Linear& v_proj, int64_t heads,
                                 int64_t kv_heads, int64_t head_dim, const AttentionInputs& in,
                                 const std::vector<Tuner*>& inside, double dropout_p) {
  const int64_t b = x.size(0), t = x.size(1);
  auto q = q_proj(x).view({b, t, heads, head_dim}).transpose(1, 2);
  auto k = k_proj(x).view({b, t, kv_heads, head_dim}).transpose(1, 2);
  auto v = v_proj(x).view({b, t, kv_heads, head_dim}).transpose(1, 2);
  if (in.rotary.defined()) {
    q = apply_rotary(q, in.rotary);
    k = apply_rotary(k, in.rotary);
  }
  if (in.cache) {
    if (in.cache->k.defined()) {
      k = at::cat({in.cache->k, k}, 2);
      v = at::cat({in.cache->v, v}, 2);
    }
    in.cache->k = k;
    in.cache->v = v;
  }
  at::Tensor mask = in.mask;
  bool causal = in.causal;
  int64_t prefix_len = 0;
  std::vector<at::Tensor> pk, pv;
  for (Tuner* tuner : inside) {
    auto* p = dynamic_cast<AttentionPrefix*>(tuner);
    if (!p) continue;
    LayerKV kv = p->prefix(b);
    if (kv.k.dim() != 4 || kv.k.size(0) != b || kv.k.size(1) != kv_heads || kv.k.size(3) != head_dim ||
        !kv.v.defined() || kv.v.sizes() != kv.k.sizes())
      throw StateError(tuner->method() + " tuner gave attention prefixes of shape " + peft::detail::shape_str(kv.k.sizes().vec()) +
                       "; expected [" + std::to_string(b) + ", " + std::to_string(kv_heads) + ", P, " +
                       std::to_string(head_dim) + "] for keys and values");
    pk.push_back(kv.k.to(k.scalar_type()));
    pv.push_back(kv.v.to(v.scalar_type()));
    prefix_len += kv.k.size(2);
  }
  if (prefix_len > 0) {
    pk.push_back(k);
    pv.push_back(v);
    k = at::cat(pk, 2);
    v = at::cat(pv, 2);
    if (!mask.defined() && causal) {
      mask = make_attention_mask({}, t, k.size(2) - prefix_len - t, true, q);
      causal = false;
    }
    if (mask.defined()) {  // every query sees the prefix
      auto sizes = mask.sizes().vec();
      sizes[3] = prefix_len;
      mask = at::cat({at::zeros(sizes, mask.options()), mask}, 3);
    }
  }
  auto out = attend(q, k, v, mask, causal, dropout_p);
  return out.transpose(1, 2).reshape({b, t, heads * head_dim});
}

}  // namespace functional

/// Options of MultiHeadAttention.
struct MultiHeadAttentionOptions {
  MultiHeadAttentionOptions(int64_t hidden_size, int64_t num_heads)
      : hidden_size_(hidden_size), num_heads_(num_heads), num_kv_heads_(num_heads),
        head_dim_(num_heads > 0 ? hidden_size / num_heads : 0) {}
  TORCH_ARG(int64_t, hidden_size);
  TORCH_ARG(int64_t, num_heads);
  /// Fewer key/value heads than query heads: grouped-query attention.
  TORCH_ARG(int64_t, num_kv_heads);
  TORCH_ARG(int64_t, head_dim);
  /// Bias on the q/k/v projections.
  TORCH_ARG(bool, qkv_bias) = true;
  /// Bias on the output projection.
  TORCH_ARG(bool, out_bias) = true;
  /// Dropout on the attention probabilities (training only).
  TORCH_ARG(double, dropout) = 0.0;

 public:
  void validate() const {
    if (hidden_size_ <= 0 || num_heads_ <= 0 || num_kv_heads_ <= 0 || head_dim_ <= 0)
      throw ConfigError("attention: hidden_size, num_heads, num_kv_heads and head_dim must be positive");
    if (num_heads_ % num_kv_heads_ != 0)
      throw ConfigError("attention: num_heads (" + std::to_string(num_heads_) + ") must be a multiple of num_kv_heads (" +
                        std::to_string(num_kv_heads_) + ")");
  }
};

/// Self-attention with separate q_proj / k_proj / v_proj / o_proj Linear slots (LLaMA's layout).
/// The whole op is itself a slot: tuners attach to it at input, parallel or output placement, and
/// prefix tuners supply extra keys and values.
class MultiHeadAttentionImpl : public CompositeSlot<MultiHeadAttentionImpl>, public AttentionShape {
 public:
  explicit MultiHeadAttentionImpl(MultiHeadAttentionOptions options_) : options(std::move(options_)) { reset(); }

  void reset() override {
    options.validate();
    const auto& o = options;
    const int64_t kv = o.num_kv_heads() * o.head_dim();
    q_proj = register_module("q_proj", Linear(LinearOptions(o.hidden_size(), o.num_heads() * o.head_dim()).bias(o.qkv_bias())));
    k_proj = register_module("k_proj", Linear(LinearOptions(o.hidden_size(), kv).bias(o.qkv_bias())));
    v_proj = register_module("v_proj", Linear(LinearOptions(o.hidden_size(), kv).bias(o.qkv_bias())));
    o_proj = register_module("o_proj", Linear(LinearOptions(o.num_heads() * o.head_dim(), o.hidden_size()).bias(o.out_bias())));
    reset_adapters();
  }

  /// x [B, T, hidden] -> [B, T, hidden].
  at::Tensor forward(const at::Tensor& x, const AttentionInputs& in = {}) {
    return tuned(x, [this, in](const at::Tensor& h) {
      auto ctx = functional::self_attention(h, q_proj, k_proj, v_proj, options.num_heads(), options.num_kv_heads(),
                                            options.head_dim(), in, inside_tuners(),
                                            is_training() ? options.dropout() : 0.0);
      return o_proj(ctx);
    });
  }

  const char* op_kind() const override { return "Attention"; }
  std::pair<int64_t, int64_t> features() const override { return {options.hidden_size(), options.hidden_size()}; }
  int64_t num_heads() const override { return options.num_heads(); }
  int64_t num_kv_heads() const override { return options.num_kv_heads(); }
  int64_t head_dim() const override { return options.head_dim(); }
  void pretty_print_op(std::ostream& s) const {
    s << "peft::nn::MultiHeadAttention(hidden=" << options.hidden_size() << ", heads=" << options.num_heads()
      << ", kv_heads=" << options.num_kv_heads() << ", head_dim=" << options.head_dim() << ")";
  }

  MultiHeadAttentionOptions options;
  Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
};
TORCH_MODULE(MultiHeadAttention);

}  // namespace peft::nn
