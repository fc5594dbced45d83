#pragma once
/// \file recipes.hpp
/// Presets named after the papers' settings: the adapter config and the training hyperparameters the
/// authors published, with the file they come from. A recipe is a starting point on the paper's
/// backbone and data; a different model or data set may want its own learning rate.
///
///     auto r = peft::recipes::rlrr_vtab("cifar");
///     peft::attach(*vit, *r.config);
///     auto opt = peft::train::make_adamw(*vit, r.lr, r.weight_decay);
///     auto sched = r.schedule(steps_per_epoch);        // warm-up then cosine, per step
///
/// | recipe | backbone | method | lr | batch | epochs | schedule | weight decay | source |
/// |---|---|---|---|---|---|---|---|---|
/// | rlrr_vtab(task) | ViT-B/16 IN-21k | RLRR + SSF, zero head | per task, 1e-3 to 1e-2 | 32 | 100 | 10 warm-up epochs + cosine | 5e-5 (5e-2 on 4 tasks) | zstarN70/RLRR train_vtab.py, VTABConfig.py |
/// | capaboost_glue(task) | DeBERTa-v3-base | CapaBoost-LoRA r=8, alpha=16, d=2, rho=0.5 | 1.5e-3 (searched 1e-4 to 5e-3) | 32 | 60 | 200 warm-up steps + linear | 0.01 | LINs-lab/CapaBoost scripts/run_lora.sh |
/// | pasta_glue(task) | BERT-large-cased | PASTA, M = 2 single / 3 pairs | 2.5e-4 | 32 | 150 | linear, no warm-up | 0 | luka-group/PASTA scripts/CoLA.sh, main_glue.py |
/// | pasta_conll() | BERT-large-cased | PASTA | 3e-3 | 16 | 100 | linear, no warm-up | 0 | luka-group/PASTA scripts/CoNLL03.sh |

#include <peft/core/error.hpp>
#include <peft/tuners/capaboost.hpp>
#include <peft/tuners/lora.hpp>
#include <peft/tuners/pasta.hpp>
#include <peft/tuners/rlrr.hpp>
#include <peft/train/train.hpp>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

namespace peft::recipes {

/// A paper's setting: the adapter config and how the authors trained it.
struct Recipe {
  std::string name;    ///< e.g. "rlrr_vtab/cifar"
  std::string paper;   ///< arXiv id
  std::string source;  ///< the official file the numbers come from
  std::string backbone;
  std::shared_ptr<AdapterConfig> config;
  std::string optimizer = "AdamW";
  double lr = 0;
  std::vector<double> lr_searched;  ///< the authors' grid, where published
  double weight_decay = 0;
  int64_t batch_size = 32;
  int64_t epochs = 0;
  int64_t warmup_epochs = 0;  ///< warm-up in epochs (RLRR) ...
  int64_t warmup_steps = 0;   ///< ... or in steps (CapaBoost)
  std::string decay = "linear";  ///< after warm-up: "cosine" or "linear" (to zero)
  double warmup_lr = 0, min_lr = 0;
  double drop_path = 0;
  int64_t max_length = 0;  ///< tokens per sequence (text recipes)

  /// The learning rate of every step, for `steps_per_epoch` steps an epoch.
  std::vector<double> schedule(int64_t steps_per_epoch) const {
    if (steps_per_epoch <= 0) throw ConfigError("recipe " + name + ": steps_per_epoch must be positive");
    const int64_t total = epochs * steps_per_epoch;
    const int64_t warm = std::min(total, warmup_steps + warmup_epochs * steps_per_epoch);
    std::vector<double> lrs(static_cast<std::size_t>(total));
    if (decay == "cosine") {
      train::WarmupCosine c(total, warm, lr, lr > 0 ? min_lr / lr : 0.0);
      for (int64_t s = 0; s < total; ++s) {
        lrs[static_cast<std::size_t>(s)] =
            s < warm ? warmup_lr + (lr - warmup_lr) * static_cast<double>(s) / static_cast<double>(warm) : c.lr(s);
      }
    } else {  // HF's linear schedule: warm-up from 0, then linear to 0
      for (int64_t s = 0; s < total; ++s)
        lrs[static_cast<std::size_t>(s)] =
            s < warm ? lr * static_cast<double>(s) / static_cast<double>(warm)
                     : lr * std::max(0.0, static_cast<double>(total - s) / static_cast<double>(std::max<int64_t>(1, total - warm)));
    }
    return lrs;
  }
};

namespace detail {
struct VtabTask {
  const char* name;
  double lr, drop_path, weight_decay;
};
/// RLRR's per-task settings for VTAB-1k (VTABConfig.py of the official code).
inline const std::vector<VtabTask>& rlrr_vtab_tasks() {
  static const std::vector<VtabTask> t = {
      {"caltech101", 1e-3, 0.1, 5e-5},     {"cifar", 3e-3, 0.1, 5e-5},          {"clevr_count", 5e-3, 0.5, 5e-5},
      {"clevr_dist", 1e-2, 0.2, 5e-5},     {"diabetic_retinopathy", 5e-3, 0.1, 5e-5}, {"dmlab", 5e-3, 0.3, 5e-5},
      {"dsprites_loc", 1e-2, 0.1, 5e-5},   {"dsprites_ori", 5e-3, 0.1, 5e-5},   {"dtd", 2e-3, 0.1, 5e-5},
      {"eurosat", 1e-3, 0.1, 5e-5},        {"kitti", 3e-3, 0.3, 5e-2},          {"oxford_flowers102", 3e-3, 0.3, 5e-2},
      {"oxford_iiit_pet", 1e-3, 0.1, 5e-5}, {"patch_camelyon", 3e-3, 0.3, 5e-2}, {"resisc45", 3e-3, 0.0, 5e-5},
      {"smallnorb_azi", 5e-3, 0.3, 5e-2},  {"smallnorb_ele", 1e-3, 0.3, 5e-5},  {"sun397", 1e-3, 0.1, 5e-5},
      {"svhn", 5e-3, 0.3, 5e-5},
  };
  return t;
}
inline bool is_pair_task(const std::string& task) { return task != "cola" && task != "sst2"; }
inline void check_glue(const std::string& recipe, const std::string& task) {
  static const std::vector<std::string> glue = {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"};
  if (std::find(glue.begin(), glue.end(), task) == glue.end())
    throw ConfigError(recipe + ": unknown GLUE task '" + task + "' (expected cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte or wnli)");
}
}  // namespace detail

/// RLRR on VTAB-1k (arXiv 2403.19067): RLRR + SSF with the paper's init, the head trained in full from
/// zero, AdamW, 10 warm-up epochs from 1e-7 then cosine to 1e-8 over 100 epochs, batch 32; the
/// learning rate, drop-path rate and weight decay of `task`. `head`: the classification head's name.
inline Recipe rlrr_vtab(const std::string& task = "cifar", const std::string& head = "classifier") {
  const auto& tasks = detail::rlrr_vtab_tasks();
  auto it = std::find_if(tasks.begin(), tasks.end(), [&](const auto& t) { return task == t.name; });
  if (it == tasks.end()) {
    std::string names;
    for (const auto& t : tasks) names += (names.empty() ? "" : ", ") + std::string(t.name);
    throw ConfigError("rlrr_vtab: unknown VTAB-1k task '" + task + "' (expected one of " + names + ")");
  }
  Recipe r;
  r.name = "rlrr_vtab/" + task, r.paper = "arXiv 2403.19067", r.backbone = "ViT-B/16 (ImageNet-21k)";
  r.source = "zstarN70/RLRR: train_vtab.py, RLRRDatasets/VTABConfig.py";
  r.config = std::make_shared<RLRRConfig>(RLRRConfig().init("paper").ssf(true).zero_head(true).modules_to_save({head}));
  r.lr = it->lr, r.weight_decay = it->weight_decay, r.drop_path = it->drop_path;
  r.batch_size = 32, r.epochs = 100, r.warmup_epochs = 10, r.decay = "cosine", r.warmup_lr = 1e-7, r.min_lr = 1e-8;
  return r;
}

/// CapaBoost-LoRA on GLUE (arXiv 2407.01320): LoRA r=8, alpha=16 on query and value, d=2 copies at
/// density 0.5, AdamW with weight decay 0.01, 200 warm-up steps then linear, batch 32, 60 epochs,
/// sequences of 512; lr 1.5e-3 (the authors searched 1e-4, 5e-4, 1e-3, 5e-3).
inline Recipe capaboost_glue(const std::string& task = "rte") {
  detail::check_glue("capaboost_glue", task);
  Recipe r;
  r.name = "capaboost_glue/" + task, r.paper = "arXiv 2407.01320", r.backbone = "DeBERTa-v3-base";
  r.source = "LINs-lab/CapaBoost: scripts/run_lora.sh";
  const auto lora = LoraConfig().r(8).lora_alpha(16).target_modules({"query", "value"});
  r.config = std::make_shared<CapaBoostConfig>(CapaBoostConfig(lora).num_copies(2).density(0.5));
  r.lr = 1.5e-3, r.lr_searched = {1e-4, 5e-4, 1e-3, 5e-3};
  r.weight_decay = 0.01, r.batch_size = 32, r.epochs = 60, r.warmup_steps = 200, r.decay = "linear", r.max_length = 512;
  return r;
}

/// PASTA on GLUE (arXiv 2210.04382): M = 2 special tokens for single sentences (CoLA, SST-2), 3 for
/// pairs, dropout 0.1 on the added vectors, the classifier trained in full; AdamW without weight
/// decay, lr 2.5e-4, linear decay without warm-up, batch 32, 150 epochs, sequences of 128.
inline Recipe pasta_glue(const std::string& task = "mrpc", const std::string& head = "classifier") {
  detail::check_glue("pasta_glue", task);
  Recipe r;
  r.name = "pasta_glue/" + task, r.paper = "arXiv 2210.04382", r.backbone = "BERT-large-cased";
  r.source = "luka-group/PASTA: scripts/CoLA.sh, main_glue.py";
  r.config = std::make_shared<PastaConfig>(
      PastaConfig().num_special_tokens(detail::is_pair_task(task) ? 3 : 2).pasta_dropout(0.1).modules_to_save({head}));
  r.lr = 2.5e-4, r.weight_decay = 0.0, r.batch_size = 32, r.epochs = 150, r.decay = "linear", r.max_length = 128;
  return r;
}

/// PASTA on CoNLL-2003 NER: lr 3e-3, batch 16, 100 epochs, otherwise as pasta_glue (single sentences).
inline Recipe pasta_conll(const std::string& head = "classifier") {
  Recipe r;
  r.name = "pasta_conll", r.paper = "arXiv 2210.04382", r.backbone = "BERT-large-cased";
  r.source = "luka-group/PASTA: scripts/CoNLL03.sh";
  r.config = std::make_shared<PastaConfig>(PastaConfig().num_special_tokens(2).pasta_dropout(0.1).modules_to_save({head}));
  r.lr = 3e-3, r.weight_decay = 0.0, r.batch_size = 16, r.epochs = 100, r.decay = "linear", r.max_length = 128;
  return r;
}

}  // namespace peft::recipes
