#pragma once
/// \file projection.hpp
/// Fixed random maps from a small space R^d into an adapter's flat space R^D, for training in a random
/// subspace: θ = θ0 + P z, only z trains (intrinsic dimension, Li et al. arXiv 1804.08838; Aghajanyan
/// et al. arXiv 2012.13255).
///
/// - IdentityProjection: P = I (d = D): subspace training is then ordinary training.
/// - DenseProjection: a Gaussian [D, d] matrix with unit-length columns, held in memory (D·d floats).
/// - FastfoodProjection: P = (H G Π H B)[:D, :d] / norm, never materialised: B random signs, H the
///   Walsh-Hadamard transform of size L = 2^⌈log2 D⌉ (O(L log L) additions), Π a random permutation,
///   G Gaussian; the norm makes the columns unit-length in expectation, as the dense one's are. Its
///   memory is 3·L numbers, so d can be large.
///
/// Each is seeded: the same (D, d, seed) gives the same P on every machine (LibTorch's CPU generator).
/// z and P z are differentiable, so an optimizer on z trains through P.

#include <peft/core/error.hpp>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <string>

namespace peft::subspace {

class Projection {
 public:
  virtual ~Projection() = default;
  /// d, the size of z.
  virtual int64_t in_dim() const = 0;
  /// D, the size of the flat space.
  virtual int64_t out_dim() const = 0;
  /// P z for z of shape [d]; differentiable in z. Runs on z's device and dtype.
  virtual at::Tensor forward(const at::Tensor& z) const = 0;
  virtual std::string name() const = 0;
  /// P as a dense [D, d] matrix (its columns P e_i): for tests and small sizes.
  at::Tensor dense(const at::TensorOptions& options = at::kFloat) const {
    at::NoGradGuard g;
    const auto eye = at::eye(in_dim(), options);
    std::vector<at::Tensor> cols;
    for (int64_t i = 0; i < in_dim(); ++i) cols.push_back(forward(eye[i]));
    return at::stack(cols, 1);
  }

 protected:
  void check_input(const at::Tensor& z) const {
    if (!z.defined() || z.dim() != 1 || z.size(0) != in_dim())
      throw InputError(name() + ": expected z of shape [" + std::to_string(in_dim()) + "], received " +
                       (z.defined() ? std::to_string(z.dim()) + "-d tensor of " + std::to_string(z.numel()) + " values"
                                    : std::string("none")));
  }
  static void check_dims(int64_t D, int64_t d, const std::string& who) {
    if (D < 1 || d < 1) throw ConfigError(who + ": dimensions must be positive, received D = " + std::to_string(D) +
                                          ", d = " + std::to_string(d));
  }
};

class IdentityProjection : public Projection {
 public:
  explicit IdentityProjection(int64_t D) : D_(D) { check_dims(D, D, "IdentityProjection"); }
  int64_t in_dim() const override { return D_; }
  int64_t out_dim() const override { return D_; }
  std::string name() const override { return "IdentityProjection"; }
  at::Tensor forward(const at::Tensor& z) const override {
    check_input(z);
    return z;
  }

 private:
  int64_t D_;
};

class DenseProjection : public Projection {
 public:
  DenseProjection(int64_t D, int64_t d, uint64_t seed) : D_(D), d_(d) {
    check_dims(D, d, "DenseProjection");
    auto gen = at::detail::createCPUGenerator(seed);
    auto p = at::randn({D, d}, gen, at::kFloat);
    matrix_ = p / p.norm(2, {0}, true);
  }
  int64_t in_dim() const override { return d_; }
  int64_t out_dim() const override { return D_; }
  std::string name() const override { return "DenseProjection"; }
  const at::Tensor& matrix() const { return matrix_; }
  at::Tensor forward(const at::Tensor& z) const override {
    check_input(z);
    return at::mv(matrix_.to(z.options().requires_grad(false)), z);
  }

 private:
  int64_t D_, d_;
  at::Tensor matrix_;
};

/// The unnormalised Walsh-Hadamard transform along the last dimension (a power of two): Sylvester's
/// order, H_2n = [[H_n, H_n], [H_n, -H_n]]; log2(L) passes of sums and differences, differentiable.
inline at::Tensor walsh_hadamard(const at::Tensor& x) {
  const int64_t L = x.size(-1);
  if (L < 1 || (L & (L - 1)) != 0)
    throw InputError("walsh_hadamard: the last dimension must be a power of two, received " + std::to_string(L));
  const auto shape = x.sizes().vec();
  auto y = x.reshape({-1, L});
  for (int64_t h = 1; h < L; h *= 2) {
    auto v = y.view({y.size(0), L / (2 * h), 2, h});
    auto a = v.select(2, 0), b = v.select(2, 1);
    y = at::stack({a + b, a - b}, 2).reshape({-1, L});
  }
  return y.reshape(shape);
}

class FastfoodProjection : public Projection {
 public:
  FastfoodProjection(int64_t D, int64_t d, uint64_t seed) : D_(D), d_(d) {
    check_dims(D, d, "FastfoodProjection");
    if (d > D) throw ConfigError("FastfoodProjection: d = " + std::to_string(d) + " exceeds D = " + std::to_string(D));
    L_ = 1;
    while (L_ < D) L_ *= 2;
    auto gen = at::detail::createCPUGenerator(seed);
    signs_ = at::randint(0, 2, {L_}, gen, at::kFloat) * 2 - 1;
    perm_ = at::randperm(L_, gen, at::kLong);
    gauss_ = at::randn({L_}, gen, at::kFloat);
    // Columns of H G Π H B have squared norm L·|G|²; keeping the first D of L rows leaves D/L of it
    // in expectation: unit columns come from dividing by sqrt(D·|G|²).
    scale_ = 1.0 / std::sqrt(static_cast<double>(D_) * gauss_.pow(2).sum().item<double>());
  }
  int64_t in_dim() const override { return d_; }
  int64_t out_dim() const override { return D_; }
  int64_t padded_dim() const { return L_; }
  std::string name() const override { return "FastfoodProjection"; }
  /// B's signs, Π (as indices: (Π x)_k = x_{perm[k]}), G, and the scale, for tests.
  const at::Tensor& signs() const { return signs_; }
  const at::Tensor& perm() const { return perm_; }
  const at::Tensor& gauss() const { return gauss_; }
  double scale() const { return scale_; }

  at::Tensor forward(const at::Tensor& z) const override {
    check_input(z);
    const auto o = z.options().requires_grad(false);
    auto x = at::constant_pad_nd(z, {0, L_ - d_});
    x = walsh_hadamard(x * signs_.to(o));
    x = x.index_select(0, perm_.to(z.device())) * gauss_.to(o);
    x = walsh_hadamard(x);
    return x.narrow(0, 0, D_) * scale_;
  }

 private:
  int64_t D_, d_, L_ = 1;
  at::Tensor signs_, perm_, gauss_;
  double scale_ = 1;
};

}  // namespace peft::subspace
