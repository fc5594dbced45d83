#pragma once
/// \file embedding.hpp
/// peft::Embedding: a drop-in for torch::nn::Embedding that adapters can attach to.

#include <peft/core/tunable.hpp>

#include <torch/nn/functional/embedding.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/pimpl.h>

namespace peft {

using EmbeddingOptions = torch::nn::EmbeddingOptions;

class EmbeddingImpl : public TunableImpl<EmbeddingImpl, torch::nn::EmbeddingImpl, EmbeddingOptions> {
 public:
  EmbeddingImpl(int64_t num_embeddings, int64_t embedding_dim)
      : EmbeddingImpl(EmbeddingOptions(num_embeddings, embedding_dim)) {}
  explicit EmbeddingImpl(const EmbeddingOptions& options_) : TunableImpl(options_) { reset(); }

  at::Tensor forward(const at::Tensor& indices) { return tuned_forward(indices); }

  const char* op_kind() const override { return "Embedding"; }
  at::Tensor run(const at::Tensor& x, const WeightSet& w) const {
    namespace F = torch::nn::functional;
    auto o = F::EmbeddingFuncOptions()
                 .padding_idx(options.padding_idx())
                 .max_norm(options.max_norm())
                 .norm_type(options.norm_type())
                 .scale_grad_by_freq(options.scale_grad_by_freq())
                 .sparse(options.sparse());
    return F::embedding(x, w.weight, o);
  }
  void pretty_print_op(std::ostream& s) const {
    s << "peft::Embedding(num_embeddings=" << options.num_embeddings()
      << ", embedding_dim=" << options.embedding_dim();
    if (options.padding_idx()) s << ", padding_idx=" << *options.padding_idx();
    s << ")";
  }
};
TORCH_MODULE(Embedding);

}  // namespace peft
