#pragma once
/// \file peft.hpp
/// The umbrella header: everything a user needs.
///
///     #include <peft/peft.hpp>
///     peft::Linear fc(peft::LinearOptions(64, 64));
///     peft::attach(*model, peft::LoraConfig().r(8).target_modules({"fc"}));

#include <peft/adapter_config.hpp>
#include <peft/detail/compat.hpp>
#include <peft/adapter_io.hpp>
#include <peft/bitfit.hpp>
#include <peft/bottleneck.hpp>
#include <peft/capaboost.hpp>
#include <peft/ia3.hpp>
#include <peft/pasta.hpp>
#include <peft/prefix.hpp>
#include <peft/prompt.hpp>
#include <peft/rlrr.hpp>
#include <peft/conv2d.hpp>
#include <peft/embedding.hpp>
#include <peft/error.hpp>
#include <peft/layer_norm.hpp>
#include <peft/linear.hpp>
#include <peft/lora.hpp>
#include <peft/merge_checkpoint.hpp>
#include <peft/model.hpp>
#include <peft/models.hpp>
#include <peft/safetensors.hpp>
#include <peft/target_modules.hpp>
#include <peft/train.hpp>
#include <peft/tunable.hpp>
#include <peft/tuner.hpp>
#include <peft/version.hpp>
