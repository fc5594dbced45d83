#pragma once
// The Fashion-MNIST experiment shared by the main example and the accuracy benchmark: the data (Debian's
// dataset-fashion-mnist, read with LibTorch's MNIST dataset), the VTAB-1k style downstream tasks, the
// upstream-pretrained ViT (cached as safetensors), every method's setup, and one training run.

#include <peft/peft.hpp>
#include <peft/train/train.hpp>

#include <torch/data/datasets/mnist.h>
#include <torch/torch.h>
#include <zlib.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

namespace fashion {

namespace fs = std::filesystem;
namespace M = peft::models;

/// Where cached files go: $PEFT_CACHE_DIR, else $XDG_CACHE_HOME/peft-cpp, else ~/.cache/peft-cpp.
inline fs::path cache_root() {
  if (const char* d = std::getenv("PEFT_CACHE_DIR"); d && *d) return d;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return fs::path(x) / "peft-cpp";
  if (const char* h = std::getenv("HOME"); h && *h) return fs::path(h) / ".cache" / "peft-cpp";
  return fs::temp_directory_path() / "peft-cpp-cache";
}

/// The gzipped idx files: $PEFT_FASHION_MNIST, else where Debian's dataset-fashion-mnist puts them.
inline fs::path data_source() {
  if (const char* d = std::getenv("PEFT_FASHION_MNIST"); d && *d) return d;
  return "/usr/share/datasets/fashion-mnist";
}

/// Decompresses the four idx files into the cache once (LibTorch's MNIST reader wants them plain).
inline fs::path prepare_data() {
  const auto src = data_source();
  const auto dst = cache_root() / "fashion-mnist";
  fs::create_directories(dst);
  for (const char* name : {"train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"}) {
    const auto out = dst / name;
    if (fs::exists(out)) continue;
    const auto gz = src / (std::string(name) + ".gz");
    if (!fs::exists(gz))
      throw std::runtime_error("Fashion-MNIST not found: '" + gz.string() +
                               "' is missing. Install Debian's package: apt-get install dataset-fashion-mnist "
                               "(or point PEFT_FASHION_MNIST at a folder with the .gz idx files)");
    gzFile in = gzopen(gz.string().c_str(), "rb");
    if (!in) throw std::runtime_error("cannot open '" + gz.string() + "'");
    const auto tmp = out.string() + ".tmp";
    std::FILE* f = std::fopen(tmp.c_str(), "wb");
    if (!f) {
      gzclose(in);
      throw std::runtime_error("cannot write '" + tmp + "'");
    }
    char buf[1 << 16];
    int n = 0;
    while ((n = gzread(in, buf, sizeof buf)) > 0) std::fwrite(buf, 1, static_cast<std::size_t>(n), f);
    const bool ok = n == 0;
    gzclose(in);
    std::fclose(f);
    if (!ok) throw std::runtime_error("'" + gz.string() + "' is not a valid gzip file");
    fs::rename(tmp, out);
  }
  return dst;
}

struct Split {
  torch::Tensor x;  // [N, 1, 28, 28] float, normalized
  torch::Tensor y;  // [N] int64
};

constexpr double kMean = 0.2860, kStd = 0.3530;

/// The raw split in [0, 1] with labels 0-9.
inline Split load_split(bool train) {
  torch::data::datasets::MNIST ds(prepare_data().string(),
                                  train ? torch::data::datasets::MNIST::Mode::kTrain : torch::data::datasets::MNIST::Mode::kTest);
  return {ds.images(), ds.targets()};
}

inline Split take(const Split& s, const torch::Tensor& idx) { return {s.x.index_select(0, idx), s.y.index_select(0, idx)}; }

/// A downstream task, VTAB-1k style: 800 train + 200 validation examples from the training split,
/// evaluated on the task's whole test split.
struct Task {
  std::string name;
  std::string description;
  int64_t num_classes = 0;
  Split train, val, test;
};

inline const std::vector<std::string>& task_names() {
  static const std::vector<std::string> names = {"classes", "rotation", "inverted"};
  return names;
}

/// Applies a task's transform to raw images/labels; `gen` draws the rotations.
inline Split transform(const std::string& task, const Split& raw, torch::Generator& gen) {
  if (task == "classes") {
    auto keep = (raw.y >= 5).nonzero().squeeze(1);
    auto s = take(raw, keep);
    return {(s.x - kMean) / kStd, s.y - 5};
  }
  if (task == "rotation") {
    auto k = torch::randint(0, 4, {raw.x.size(0)}, gen, torch::kLong);
    auto x = raw.x.clone();
    for (int64_t r = 1; r < 4; ++r) {
      auto idx = (k == r).nonzero().squeeze(1);
      x.index_copy_(0, idx, torch::rot90(raw.x.index_select(0, idx), r, {2, 3}));
    }
    return {(x - kMean) / kStd, k};
  }
  if (task == "inverted") return {((1.0 - raw.x) - kMean) / kStd, raw.y.clone()};
  throw std::invalid_argument("unknown task '" + task + "' (expected classes, rotation or inverted)");
}

inline Task make_task(const std::string& name, const Split& train_raw, const Split& test_raw, uint64_t data_seed = 1000) {
  Task t;
  t.name = name;
  auto gen = torch::make_generator<torch::CPUGeneratorImpl>(data_seed);
  auto pool = transform(name, train_raw, gen);
  auto test = transform(name, test_raw, gen);
  auto perm = torch::randperm(pool.x.size(0), gen, torch::kLong);
  t.train = take(pool, perm.slice(0, 0, 800));
  t.val = take(pool, perm.slice(0, 800, 1000));
  t.test = test;
  if (name == "classes") t.num_classes = 5, t.description = "new classes: sandal, shirt, sneaker, bag, ankle boot (5-9)";
  else if (name == "rotation") t.num_classes = 4, t.description = "structured: which of 4 rotations (all classes)";
  else t.num_classes = 10, t.description = "shifted domain: all 10 classes, inverted intensities";
  return t;
}

/// The small ViT of the experiment: 28x28, patch 7 (16 patches + CLS), hidden 96, 4 layers, 4 heads.
inline M::ViTConfig vit_config(int64_t num_labels) {
  M::ViTConfig c;
  c.image_size = 28, c.patch_size = 7, c.num_channels = 1;
  c.hidden_size = 96, c.num_hidden_layers = 4, c.num_attention_heads = 4, c.intermediate_size = 192;
  c.num_labels = num_labels;
  return c;
}

/// Upstream pretraining: the model learns classes 0-4 from all their training images. The checkpoint is
/// cached (HF ViT layout: config.json + model.safetensors), keyed by config, seed and steps.
inline fs::path pretrained_checkpoint(const Split& train_raw, int64_t steps = 1500, uint64_t seed = 0, bool verbose = true) {
  auto cfg = vit_config(5);
  const std::string key = cfg.to_json().dump() + "|seed=" + std::to_string(seed) + "|steps=" + std::to_string(steps);
  const auto dir = cache_root() / "upstream" / ("vit-" + std::to_string(std::hash<std::string>{}(key) % 1000000007ULL));
  if (fs::exists(dir / "model.safetensors")) return dir;
  if (verbose) std::cerr << "pretraining the upstream ViT on classes 0-4 (" << steps << " steps; cached in " << dir << ")\n";
  torch::manual_seed(static_cast<int64_t>(seed));
  M::ViTForImageClassification vit(cfg);
  auto keep = (train_raw.y < 5).nonzero().squeeze(1);
  Split up = take(train_raw, keep);
  up.x = (up.x - kMean) / kStd;
  auto opt = peft::train::make_adamw(vit, 1e-3, 0.05);
  peft::train::WarmupCosine sched(steps, steps / 10, 1e-3);
  peft::train::Progress bar(steps, "upstream", 250);
  auto gen = torch::make_generator<torch::CPUGeneratorImpl>(seed);
  vit->train();
  for (int64_t s = 0; s < steps; ++s) {
    sched.apply(opt, s);
    auto idx = torch::randint(0, up.x.size(0), {128}, gen, torch::kLong);
    auto loss = torch::nn::functional::cross_entropy(vit->forward(up.x.index_select(0, idx)), up.y.index_select(0, idx));
    opt.zero_grad();
    loss.backward();
    opt.step();
    if (verbose) bar.update(s + 1, loss.item<double>());
  }
  fs::create_directories(dir);
  peft::save_pretrained(vit, dir.string());
  return dir;
}

/// A fresh downstream model: the pretrained ViT with a new head for the task.
inline M::ViTForImageClassification downstream_model(const fs::path& checkpoint, int64_t num_classes) {
  M::ViTForImageClassification vit(vit_config(num_classes));
  // The backbone only: the upstream head (classes 0-4) is skipped, the new one keeps its fresh init.
  auto report = peft::load_pretrained(vit->vit, checkpoint.string(), peft::LoadOptions().strict(false));
  if (report.skipped.size() != 2)
    throw std::runtime_error("upstream checkpoint '" + checkpoint.string() + "': expected to skip only its head");
  return vit;
}

/// Saves `model`'s adapter to `dir` (HF PEFT layout), loads it into a fresh copy of the pretrained
/// model, and returns the outputs of both on `probe` (eval mode, no gradients), for the caller to compare.
inline std::pair<torch::Tensor, torch::Tensor> save_and_reload(M::ViTForImageClassificationImpl& model, const fs::path& checkpoint,
                                                               int64_t num_classes, const fs::path& dir,
                                                               const torch::Tensor& probe, const torch::Device& device) {
  peft::save_adapter(model, dir);
  auto fresh = downstream_model(checkpoint, num_classes);
  fresh->to(device);
  peft::load_adapter(*fresh, dir);
  torch::NoGradGuard g;
  model.eval(), fresh->eval();
  auto x = probe.to(device);
  return {model.forward(x), fresh->forward(x)};
}

/// One method of the comparison: how it is attached to the model.
struct Method {
  std::string name;
  std::string label;
  std::function<void(M::ViTForImageClassificationImpl&)> setup;
  bool adapter = true;  // false: linear probe and full fine-tuning (no adapter to save)
};

inline const std::vector<Method>& methods() {
  auto with = [](auto cfg) {
    return [cfg](M::ViTForImageClassificationImpl& m) { peft::attach(m, cfg); };
  };
  const std::vector<std::string> head = {"classifier"};
  auto lora = peft::LoraConfig().r(8).lora_alpha(8).target_modules({"query", "value"}).modules_to_save(head);
  static const std::vector<Method> all = {
      {"linear", "linear probe",
       [](M::ViTForImageClassificationImpl& m) {
         for (auto& p : m.parameters()) p.set_requires_grad(false);
         for (auto& p : m.classifier->parameters()) p.set_requires_grad(true);
       },
       false},
      {"full", "full fine-tuning", [](M::ViTForImageClassificationImpl& m) { for (auto& p : m.parameters()) p.set_requires_grad(true); }, false},
      {"bitfit", "BitFit", with(peft::BitFitConfig().modules_to_save(head))},
      {"lora", "LoRA r=8 (q, v)", with(lora)},
      {"dora", "DoRA r=8 (q, v)", with(peft::LoraConfig(lora).use_dora(true))},
      {"houlsby", "Houlsby adapter (b=8)", with(peft::BottleneckConfig().bottleneck_size(8).modules_to_save(head))},
      {"pfeiffer", "Pfeiffer adapter (b=8)", with(peft::BottleneckConfig().variant("pfeiffer").bottleneck_size(8).modules_to_save(head))},
      {"parallel", "parallel adapter (b=8, s=4)",
       with(peft::BottleneckConfig().variant("parallel").bottleneck_size(8).scaling(4.0).modules_to_save(head))},
      {"prefix", "prefix tuning (n=8)", with(peft::PrefixTuningConfig().num_virtual_tokens(8).modules_to_save(head))},
      {"vpt_shallow", "VPT-shallow (n=8)",
       with(peft::PromptTuningConfig().num_virtual_tokens(8).prompt_tuning_init("XAVIER").modules_to_save(head))},
      {"vpt_deep", "VPT-deep (n=8)",
       with(peft::PromptTuningConfig().num_virtual_tokens(8).deep(true).prompt_tuning_init("XAVIER").modules_to_save(head))},
      {"ia3", "IA3 (k, v, FFN)",
       with(peft::IA3Config()
                .target_modules(".*\\.(key|value)|.*layer\\.\\d+\\.output\\.dense")
                .feedforward_modules(".*layer\\.\\d+\\.output\\.dense")
                .modules_to_save(head))},
      {"pasta", "PASTA (CLS, M=1)", with(peft::PastaConfig().num_special_tokens(1).modules_to_save(head))},
      {"capaboost", "CapaBoost-LoRA r=8 (d=2, rho=0.5)", with(peft::CapaBoostConfig(lora).num_copies(2).density(0.5))},
      // The paper's comparison: CapaBoost at LoRA r=8's live parameter count (0.75 x 11 ~ 8).
      {"capaboost_r11", "CapaBoost-LoRA r=11 (d=2, rho=0.5)",
       with(peft::CapaBoostConfig(peft::LoraConfig(lora).r(11)).num_copies(2).density(0.5))},
      {"rlrr", "RLRR + SSF", with(peft::RLRRConfig().modules_to_save(head))},
  };
  return all;
}

inline const Method& method(const std::string& name) {
  for (const auto& m : methods())
    if (m.name == name) return m;
  std::string known;
  for (const auto& m : methods()) known += (known.empty() ? "" : ", ") + m.name;
  throw std::invalid_argument("unknown method '" + name + "' (expected one of " + known + ")");
}

struct RunOptions {
  int64_t steps = 300;
  int64_t batch = 32;
  double lr = 1e-3;
  /// The classification head's own rate (its parameters are named "classifier..."); 0: `lr`. A
  /// head trained from scratch and a tuner of a pretrained model want different rates (PASTA's
  /// vectors and a linear probe's head broke at each other's).
  double head_lr = 0.0;
  double weight_decay = 0.0;
  int64_t seed = 0;
  bool progress = true;
  bool test = true;  // evaluate on the test split at the end
  torch::Device device = torch::kCPU;
  peft::train::JsonlLog* log = nullptr;
  /// Data parallelism (fashion_mnist --distributed): this rank of `world` trains on its equal share
  /// of every batch of `batch` rows; `parallel` wraps the model (peft::dist::DataParallel) for the
  /// run and the returned object keeps it alive. Only rank 0 shows progress and writes the log.
  int rank = 0, world = 1;
  std::function<std::shared_ptr<void>(torch::nn::Module&)> parallel;
};

struct RunResult {
  double val_accuracy = 0, test_accuracy = 0;
  double first_loss = 0, last_loss = 0;  // mean of the first / last 10 training losses
  double train_seconds = 0;
  int64_t trainable = 0, total = 0;
  int64_t peak_rss_growth = 0;  // bytes over the RSS at the start of training
};

/// Trains `model` (already set up for its method) on the task and evaluates it.
inline RunResult run(M::ViTForImageClassificationImpl& model, const Task& task, const std::string& method_name,
                     const RunOptions& o) {
  RunResult r;
  model.to(o.device);
  const auto count = peft::count_parameters(model);
  r.trainable = count.trainable, r.total = count.all;
  auto x = task.train.x.to(o.device), y = task.train.y.to(o.device);
  // AdamW in make_adamw's groups (decay / no decay), each split into body and head when the head has
  // its own rate; the schedule is a factor on each group's rate.
  std::vector<peft::train::PrefixRate> rates;
  if (o.head_lr > 0) rates.push_back({"classifier", o.head_lr});
  auto opt = peft::train::make_adamw(model, o.lr, o.weight_decay, rates);
  const auto base_lr = peft::train::group_rates(opt);
  peft::train::WarmupCosine sched(o.steps, o.steps / 10, o.lr);
  peft::train::Progress bar(o.steps, method_name + "/" + task.name, 100);
  auto gen = torch::make_generator<torch::CPUGeneratorImpl>(static_cast<uint64_t>(o.seed) + 17);
  const auto keep_parallel = o.parallel ? o.parallel(model) : nullptr;
  if (o.batch % o.world != 0) throw std::runtime_error("batch " + std::to_string(o.batch) + " does not divide among " + std::to_string(o.world) + " ranks");
  const int64_t rows = o.batch / o.world, first_row = o.rank * rows;
  const bool main_rank = o.rank == 0;
  peft::train::reset_peak_rss();
  const auto rss0 = peft::train::rss().current;
  std::vector<double> losses;
  model.train();
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t s = 0; s < o.steps; ++s) {
    sched.apply(opt, s, base_lr);
    auto idx = torch::randint(0, x.size(0), {o.batch}, gen, torch::kLong).narrow(0, first_row, rows).to(o.device);
    auto loss = torch::nn::functional::cross_entropy(model.forward(x.index_select(0, idx)), y.index_select(0, idx));
    opt.zero_grad();
    loss.backward();
    opt.step();
    losses.push_back(loss.item<double>());
    if (o.progress && main_rank) bar.update(s + 1, losses.back());
    if (o.log && main_rank)
      o.log->write({{"event", "step"}, {"method", method_name}, {"task", task.name}, {"seed", o.seed}, {"lr", sched.lr(s)},
                    {"step", s + 1}, {"loss", losses.back()}});
  }
  r.train_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.peak_rss_growth = std::max<int64_t>(0, peft::train::rss().peak - rss0);
  const auto k = std::min<std::size_t>(10, losses.size());
  for (std::size_t i = 0; i < k; ++i) r.first_loss += losses[i] / static_cast<double>(k), r.last_loss += losses[losses.size() - 1 - i] / static_cast<double>(k);
  auto fwd = [&](const torch::Tensor& b) { return model.forward(b.to(o.device)); };
  r.val_accuracy = peft::train::evaluate(model, fwd, task.val.x, task.val.y).accuracy;
  if (o.test) r.test_accuracy = peft::train::evaluate(model, fwd, task.test.x, task.test.y).accuracy;
  if (o.log)
    o.log->write({{"event", "run"}, {"method", method_name}, {"task", task.name}, {"seed", o.seed}, {"lr", o.lr},
                  {"val_accuracy", r.val_accuracy}, {"test_accuracy", o.test ? nlohmann::json(r.test_accuracy) : nlohmann::json(nullptr)},
                  {"train_seconds", r.train_seconds}, {"trainable", r.trainable}});
  return r;
}

}  // namespace fashion
