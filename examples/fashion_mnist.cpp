// The main example: a ViT pretrained on Fashion-MNIST classes 0-4 learns classes 5-9 from 1000 images,
// once with full fine-tuning and once with LoRA (or any --method), and the two are compared: test
// accuracy, trainable share, wall time and peak memory. The adapter is saved in HF PEFT's layout and
// reloaded into a fresh model to check that it reproduces the outputs.
//
//   ./build/examples/fashion_mnist                         # LoRA vs full fine-tuning on new classes
//   ./build/examples/fashion_mnist --method vpt_deep --task rotation --steps 500
//   torchrun --no-python --nproc-per-node 2 ./build/examples/fashion_mnist --distributed --threads 1
//   scripts/peft-launch -n 2 ./build/examples/fashion_mnist --distributed --threads 1   # without Python

#include "common/fashion_experiment.hpp"

#ifdef PEFT_HAS_DISTRIBUTED  // CMake's peft_enable_distributed: Gloo's headers were found
#include <peft/train/distributed.hpp>
#endif

#include <CLI/CLI.hpp>
#include "common/cli_checks.hpp"
#include <fmt/format.h>

#include <cstdio>
#include <thread>

int main(int argc, char** argv) {
  CLI::App app{"Fine-tune a pretrained ViT on a Fashion-MNIST task: a PEFT method against full fine-tuning"};
  std::string method = "lora", task_name = "classes", device = "cpu", out = "fashion_adapter", log_path;
  int64_t steps = 300, seed = 0, upstream_steps = 1500;
  double lr = 0, full_lr = 1e-3;
  unsigned threads = std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::string> method_names;
  for (const auto& m : fashion::methods()) method_names.push_back(m.name);
  app.add_option("--method", method, "PEFT method to compare with full fine-tuning")->check(CLI::IsMember(method_names));
  app.add_option("--task", task_name, "downstream task")->check(CLI::IsMember(fashion::task_names()));
  app.add_option("--steps", steps, "training steps (batch 32)")->check(cli_checks::Positive);
  app.add_option("--lr", lr, "learning rate of the method (default: 1e-2; 1e-1 for the linear probe)")->check(cli_checks::NonNegative);
  app.add_option("--full-lr", full_lr, "learning rate of full fine-tuning")->check(cli_checks::Positive);
  app.add_option("--device", device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--threads", threads, "intra-op threads")->check(cli_checks::Positive);
  app.add_option("--seed", seed, "seed of the head init and the batches");
  app.add_option("--upstream-steps", upstream_steps, "steps of the (cached) upstream pretraining")->check(cli_checks::Positive);
  app.add_option("--out", out, "where the adapter is saved (HF PEFT layout)");
  app.add_option("--log", log_path, "append metrics as JSON lines to this file");
  bool distributed = false;
  app.add_flag("--distributed", distributed,
               "data-parallel over the ranks torchrun or scripts/peft-launch started (c10d: Gloo, NCCL with --device cuda); "
               "each batch of 32 is split among them, rank 0 prints and saves");
  CLI11_PARSE(app, argc, argv);

  try {
    torch::set_num_threads(static_cast<int>(threads));
    if (device == "cuda" && !torch::cuda::is_available()) throw std::runtime_error("--device cuda: no CUDA device available");
    torch::Device dev = device == "cuda" ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU);
#ifdef PEFT_HAS_DISTRIBUTED
    std::shared_ptr<peft::dist::Group> group;
    if (distributed) {
      const auto env = peft::dist::Environment::from_env();
      if (dev.is_cuda()) dev = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(env.local_rank % torch::cuda::device_count()));
      peft::dist::GroupOptions go;
      go.device = dev;
      group = peft::dist::Group::create(env, go);
      if (group->is_main())
        fmt::print("data-parallel: {} ranks ({}), this is rank {}\n", group->world_size(), group->backend(), group->rank());
    }
#else
    if (distributed) throw std::runtime_error("--distributed: built without Gloo's headers (apt-get install libgloo-dev, then rebuild)");
    struct NoGroup {
      int rank() const { return 0; }
      bool is_main() const { return true; }
      void barrier(std::chrono::milliseconds) {}
    };
    std::shared_ptr<NoGroup> group;
#endif
    const bool main_rank = !group || group->is_main();
    if (!main_rank && !std::freopen("/dev/null", "w", stdout)) throw std::runtime_error("cannot silence rank " + std::to_string(group->rank()));  // rank 0 alone prints
    if (lr == 0) lr = method == "linear" ? 1e-1 : 1e-2;  // what the accuracy benchmark's validation chose
    peft::train::JsonlLog log;
    if (!log_path.empty() && main_rank) log = peft::train::JsonlLog(log_path);

    // Rank 0 prepares the data and the upstream checkpoint (cached files) before the others read them.
    const auto prep = std::chrono::hours(2);  // the upstream pretraining may take a while on a laptop
    if (group && !main_rank) group->barrier(prep);
    auto train_raw = fashion::load_split(true), test_raw = fashion::load_split(false);
    const auto ckpt = fashion::pretrained_checkpoint(train_raw, upstream_steps, 0, main_rank);
    if (group && main_rank) group->barrier(prep);
    const auto task = fashion::make_task(task_name, train_raw, test_raw);
    fmt::print("task: {}; {} train / {} validation / {} test images\n", task.description, task.train.x.size(0),
               task.val.x.size(0), task.test.x.size(0));

    struct Row {
      std::string label;
      fashion::RunResult r;
    };
    std::vector<Row> rows;
    auto train_one = [&](const fashion::Method& m, double rate) {
      torch::manual_seed(seed);
      auto vit = fashion::downstream_model(ckpt, task.num_classes);
      m.setup(*vit);
      fashion::RunOptions o;
      o.steps = steps, o.lr = rate, o.seed = seed, o.device = dev, o.log = log.is_open() ? &log : nullptr;
#ifdef PEFT_HAS_DISTRIBUTED
      if (group) {
        o.rank = group->rank(), o.world = group->world_size();
        o.parallel = [&](torch::nn::Module& model) { return std::make_shared<peft::dist::DataParallel>(model, group); };
      }
#endif
      rows.push_back({m.label, fashion::run(*vit, task, m.name, o)});
      return vit;
    };
    train_one(fashion::method("full"), full_lr);
    auto tuned = train_one(fashion::method(method), lr);

    fmt::print("\n{:<32} {:>9} {:>12} {:>10} {:>9} {:>12}\n", "method", "test acc", "trainable", "% of model", "time (s)",
               "peak mem MB");
    for (const auto& [label, r] : rows)
      fmt::print("{:<32} {:8.2f}% {:>12} {:9.3f}% {:9.1f} {:12.1f}\n", label, 100 * r.test_accuracy, peft::detail::thousands(r.trainable),
                 100.0 * static_cast<double>(r.trainable) / static_cast<double>(r.total), r.train_seconds,
                 static_cast<double>(r.peak_rss_growth) / 1e6);

    if (!main_rank) return 0;  // rank 0 alone saves the adapter
    if (fashion::method(method).adapter) {
      // Reload into a fresh copy of the pretrained model: the outputs must be the same.
      auto [trained, reloaded] = fashion::save_and_reload(*tuned, ckpt, task.num_classes, out, task.test.x.slice(0, 0, 64), dev);
      const bool same = torch::allclose(trained, reloaded, 1e-5, 1e-5);
      fmt::print("\nadapter saved to {} (HF PEFT layout: adapter_config.json + adapter_model.safetensors); reloaded: {}\n", out,
                 same ? "same outputs" : "OUTPUTS DIFFER");
      if (!same) return 1;
    }
    return 0;
  } catch (const std::exception& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
}
