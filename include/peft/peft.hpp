#pragma once
/// \file peft.hpp
/// The umbrella header: everything a user needs.
///
///     #include <peft/peft.hpp>
///     peft::Linear fc(peft::LinearOptions(64, 64));
///     peft::attach(*model, peft::LoraConfig().r(8).target_modules({"fc"}));
///
/// The library is layered; each folder includes only the ones above it in this list:
///   core/      the frame: Tuner, TunableSlot, AdapterConfig, target matching, whole-model operations
///   slots/     the frozen ops adapters attach to: Linear, Embedding, Conv2d, LayerNorm
///   nn/        building blocks made of slots: attention, feed-forward, transformer block, RMSNorm
///   tuners/    one header per method, each registering itself in tuners/registry.hpp
///   io/        safetensors, adapter files in PEFT's layout, checkpoint merge
///   serve/     many adapters at once: mixed batches (each row its own adapter), the adapter pool
///   text/      Unicode, tokenizers (WordPiece, byte-level BPE), corpora, tokenised datasets, loaders
///   models/    the model zoo (ViT, BERT, LLaMA) and Hugging Face checkpoints
///   train/     training helpers
///   subspace/  adapters as flat vectors; training in a random or learned subspace

#include <peft/core/adapter_config.hpp>
#include <peft/core/checkpoint.hpp>
#include <peft/core/context.hpp>
#include <peft/core/detail/compat.hpp>
#include <peft/core/error.hpp>
#include <peft/core/model.hpp>
#include <peft/core/target_modules.hpp>
#include <peft/core/tunable.hpp>
#include <peft/core/tuner.hpp>
#include <peft/core/version.hpp>

#include <peft/slots/conv2d.hpp>
#include <peft/slots/embedding.hpp>
#include <peft/slots/layer_norm.hpp>
#include <peft/slots/linear.hpp>

#include <peft/nn/attention.hpp>
#include <peft/nn/block.hpp>

#include <peft/nn/feed_forward.hpp>
#include <peft/nn/rms_norm.hpp>

#include <peft/tuners/bitfit.hpp>
#include <peft/tuners/bottleneck.hpp>
#include <peft/tuners/capaboost.hpp>
#include <peft/tuners/ia3.hpp>
#include <peft/tuners/lora.hpp>
#include <peft/tuners/lora_weighted.hpp>
#include <peft/tuners/pasta.hpp>
#include <peft/tuners/prefix.hpp>
#include <peft/tuners/prompt.hpp>
#include <peft/tuners/registry.hpp>
#include <peft/tuners/rlrr.hpp>

#include <peft/io/adapter_io.hpp>
#include <peft/io/merge_checkpoint.hpp>
#include <peft/io/safetensors.hpp>
#include <peft/serve/adapter_pool.hpp>
#include <peft/serve/mixed_batch.hpp>

#include <peft/text/bpe.hpp>
#include <peft/text/corpora.hpp>
#include <peft/text/dataset.hpp>
#include <peft/text/encoding.hpp>
#include <peft/text/tokenizer.hpp>
#include <peft/text/unicode.hpp>
#include <peft/text/wordpiece.hpp>

#include <peft/models/bert.hpp>
#include <peft/models/common.hpp>
#include <peft/models/llama.hpp>
#include <peft/models/pretrained.hpp>
#include <peft/models/vit.hpp>

#include <peft/train/recipes.hpp>
#include <peft/train/train.hpp>

#include <peft/subspace/flat_view.hpp>
#include <peft/subspace/intrinsic.hpp>
#include <peft/subspace/projection.hpp>
#include <peft/subspace/unified.hpp>
