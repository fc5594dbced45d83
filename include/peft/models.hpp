#pragma once
/// \file models.hpp
/// The model zoo (ViT, BERT, LLaMA with Hugging Face's module paths), the building blocks they are
/// made of, and whole-checkpoint loading and saving.

#include <peft/models/bert.hpp>
#include <peft/models/common.hpp>
#include <peft/models/llama.hpp>
#include <peft/models/pretrained.hpp>
#include <peft/models/vit.hpp>
#include <peft/nn/attention.hpp>
#include <peft/nn/block.hpp>
#include <peft/nn/context.hpp>
#include <peft/nn/feed_forward.hpp>
#include <peft/nn/rms_norm.hpp>
