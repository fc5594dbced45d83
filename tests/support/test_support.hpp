#pragma once
// Shared test helpers: an AllClose matcher for tensors, a finite-difference gradient check in double,
// temporary directories, and small models built from tunable slots.

#include <peft/peft.hpp>

#include <catch2/catch.hpp>
#include "support/skip.hpp"
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <sstream>
#include <string>

namespace peft_test {

/// Matches a tensor whose values are within atol + rtol*|expected| of `expected`, same shape.
class AllClose : public Catch::MatcherBase<torch::Tensor> {
 public:
  AllClose(torch::Tensor expected, double atol = 1e-5, double rtol = 1e-5)
      : expected_(std::move(expected)), atol_(atol), rtol_(rtol) {}
  bool match(const torch::Tensor& actual) const override {
    if (!actual.defined() || actual.sizes() != expected_.sizes()) return false;
    auto a = actual.detach().to(torch::kCPU, torch::kDouble), e = expected_.detach().to(torch::kCPU, torch::kDouble);
    max_err_ = a.numel() ? (a - e).abs().max().item<double>() : 0.0;
    return torch::allclose(a, e, rtol_, atol_);
  }
  std::string describe() const override {
    std::ostringstream s;
    s << "is close to a tensor of shape " << expected_.sizes() << " (atol " << atol_ << ", rtol " << rtol_
      << "; max abs error " << max_err_ << ")";
    return s.str();
  }

 private:
  torch::Tensor expected_;
  double atol_, rtol_;
  mutable double max_err_ = -1;
};

/// Central-difference check of d(sum(f() * probe))/d(param) against autograd, in double, for every
/// element of every given parameter. Returns the largest absolute difference.
inline double gradcheck(const std::function<torch::Tensor()>& f, std::vector<torch::Tensor> params, double eps = 1e-6) {
  auto probe = torch::randn_like(f().detach());
  for (auto& p : params) {
    if (p.grad().defined()) p.mutable_grad() = torch::Tensor();
  }
  (f() * probe).sum().backward();
  double worst = 0;
  torch::NoGradGuard g;
  for (auto& p : params) {
    REQUIRE(p.grad().defined());
    auto flat = p.view({-1});
    auto grad = p.grad().reshape({-1});
    for (int64_t i = 0; i < flat.numel(); ++i) {
      const double orig = flat[i].item<double>();
      flat[i] = orig + eps;
      const double up = (f() * probe).sum().item<double>();
      flat[i] = orig - eps;
      const double down = (f() * probe).sum().item<double>();
      flat[i] = orig;
      worst = std::max(worst, std::abs((up - down) / (2 * eps) - grad[i].item<double>()));
    }
  }
  return worst;
}

/// A fresh empty directory under the system temp dir, removed on destruction.
class TempDir {
 public:
  TempDir() {
    static std::mt19937_64 rng(std::random_device{}());
    path_ = std::filesystem::temp_directory_path() / ("peft_test_" + std::to_string(rng()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::filesystem::path& path() const { return path_; }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}
inline void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

/// A safetensors image from a raw header text and data buffer (for malformed-file tests).
inline std::string raw_safetensors(const std::string& header, const std::string& data, int64_t length_override = -1) {
  std::string out(8, '\0');
  uint64_t n = length_override >= 0 ? static_cast<uint64_t>(length_override) : header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

/// A transformer-shaped toy: layers.N.attn.{q,k,v,o}, layers.N.mlp.{fc1,fc2}, norms, embeddings, head.
struct BlockImpl : torch::nn::Module {
  peft::Linear q{nullptr}, k{nullptr}, v{nullptr}, o{nullptr}, fc1{nullptr}, fc2{nullptr};
  peft::LayerNorm norm{nullptr};
  BlockImpl(int64_t d) {
    auto attn = register_module("attn", std::make_shared<torch::nn::Module>());
    q = attn->register_module("q", peft::Linear(d, d));
    k = attn->register_module("k", peft::Linear(d, d));
    v = attn->register_module("v", peft::Linear(d, d));
    o = attn->register_module("o", peft::Linear(d, d));
    auto mlp = register_module("mlp", std::make_shared<torch::nn::Module>());
    fc1 = mlp->register_module("fc1", peft::Linear(d, 2 * d));
    fc2 = mlp->register_module("fc2", peft::Linear(2 * d, d));
    norm = register_module("norm", peft::LayerNorm(peft::LayerNormOptions({d})));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    auto h = norm(x);
    auto att = torch::softmax(torch::matmul(q(h), k(h).transpose(-1, -2)) / std::sqrt(double(h.size(-1))), -1);
    auto a = x + o(torch::matmul(att, v(h)));
    return a + fc2(torch::gelu(fc1(a)));
  }
};
TORCH_MODULE(Block);

struct ToyModelImpl : torch::nn::Cloneable<ToyModelImpl> {
  int64_t vocab, d, layers_n;
  peft::Embedding embed{nullptr};
  torch::nn::ModuleList layers{nullptr};
  peft::Linear head{nullptr};
  ToyModelImpl(int64_t vocab = 32, int64_t d = 16, int64_t n = 2) : vocab(vocab), d(d), layers_n(n) { reset(); }
  void reset() override {
    embed = register_module("embed", peft::Embedding(vocab, d));
    layers = register_module("layers", torch::nn::ModuleList());
    for (int64_t i = 0; i < layers_n; ++i) layers->push_back(Block(d));
    head = register_module("head", peft::Linear(d, 3));
  }
  torch::Tensor forward(const torch::Tensor& ids) {
    auto h = embed(ids);
    for (auto& l : *layers) h = l->as<BlockImpl>()->forward(h);
    return head(h.mean(1));
  }
};
TORCH_MODULE(ToyModel);

/// Copies every parameter and buffer of `from` into `to` (same architecture).
inline void copy_weights(torch::nn::Module& to, torch::nn::Module& from) {
  torch::NoGradGuard g;
  auto src = from.named_parameters(true);
  for (auto& p : to.named_parameters(true)) p.value().copy_(src[p.key()]);
}

/// Tiny model-zoo configs shared by the test files.
inline peft::models::ViTConfig tiny_vit() {
  peft::models::ViTConfig c;
  c.hidden_size = 32, c.num_hidden_layers = 2, c.num_attention_heads = 4, c.intermediate_size = 64;
  c.image_size = 28, c.patch_size = 7, c.num_channels = 1, c.num_labels = 10;
  return c;
}
inline peft::models::BertConfig tiny_bert() {
  peft::models::BertConfig c;
  c.vocab_size = 200, c.hidden_size = 32, c.num_hidden_layers = 2, c.num_attention_heads = 4;
  c.intermediate_size = 64, c.max_position_embeddings = 64, c.num_labels = 3;
  c.cls_token_id = 101, c.sep_token_id = 102;  // BERT's vocabulary
  return c;
}
inline peft::models::LlamaConfig tiny_llama() { return peft::models::LlamaConfig::tiny(100, 32, 2, 4, 2, 64); }

}  // namespace peft_test
