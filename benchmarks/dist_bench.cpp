// Data-parallel training cost (peft/train/distributed.hpp): for full fine-tuning and each method on one
// encoder shape, the bytes all-reduced per step and the median step time (forward + backward with the
// gradient all-reduce + AdamW) of this launch: one process, or N ranks from torchrun / peft-launch /
// scripts/dist_netns.sh, each training on its equal share of the global batch. Rank 0 appends one JSON
// line per method to --out.
//
//   ./build/benchmarks/dist_bench --config bert-base --seq 128 --batch 4 --methods full lora_qv
//   scripts/peft-launch -n 2 ./build/benchmarks/dist_bench --threads 1 --label loopback ...

#include "bench_program.hpp"
#include <peft/peft.hpp>
#include <peft/train/distributed.hpp>

#include "bench_common.hpp"
#include "bench_models.hpp"

#include <CLI/CLI.hpp>
#include "common/cli_checks.hpp"
#include <fmt/format.h>
#include <torch/torch.h>

#include <chrono>
#include <fstream>
#include <thread>

namespace dist_bench {

int run(int argc, char** argv) {
  CLI::App app{"Data-parallel step time and bytes on the wire, per method"};
  std::string config = "bert-base", out, label = "run";
  std::vector<std::string> methods{"full", "lora_qv"};
  int64_t seq = 128, batch = 4, steps = 4, warmup = 1;
  unsigned threads = std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::string> configs;
  for (const auto& [k, v] : bench::shapes()) configs.push_back(k);
  app.add_option("--config", config, "encoder shape")->check(CLI::IsMember(configs));
  app.add_option("--seq", seq, "sequence length")->check(cli_checks::Positive);
  app.add_option("--batch", batch, "global batch (split among the ranks)")->check(cli_checks::Positive);
  app.add_option("--methods", methods, "methods (method_bench's names)");
  app.add_option("--steps", steps, "timed steps")->check(cli_checks::Positive);
  app.add_option("--warmup", warmup, "untimed steps first")->check(cli_checks::NonNegative);
  app.add_option("--threads", threads, "intra-op threads per rank")->check(cli_checks::Positive);
  app.add_option("--label", label, "what this launch is (one process, loopback, two hosts...)");
  app.add_option("--out", out, "append JSON lines here (rank 0)");
  CLI11_PARSE(app, argc, argv);
  try {
    torch::set_num_threads(static_cast<int>(threads));
    auto group = peft::dist::Group::from_environment();
    auto sh = bench::shapes().at(config);
    sh.seq = seq, sh.batch = batch, sh.dropout = 0;
    const auto all = bench::variants(sh.llama);
    for (const auto& name : methods) {
      auto it = std::find_if(all.begin(), all.end(), [&](const auto& v) { return v.name == name; });
      if (it == all.end()) throw std::runtime_error("unknown method " + name);
      torch::manual_seed(1);
      auto built = bench::build(sh);
      for (auto& p : built.module->parameters()) p.set_requires_grad(false);
      it->setup(*built.module);
      built.module->train();
      peft::dist::DataParallel dp(*built.module, group);
      auto opt = peft::train::make_adamw(*built.module, 1e-4);
      const auto [b0, b1] = dp.local_rows(batch);
      auto gen = torch::make_generator<torch::CPUGeneratorImpl>(3);
      auto ids = torch::randint(103, sh.vocab, {batch, seq}, gen, torch::kLong);
      ids.select(1, 0).fill_(101);
      ids.select(1, seq - 1).fill_(102);
      ids = ids.slice(0, b0, b1);
      std::vector<double> ms;
      double wait0 = 0;
      for (int64_t s = 0; s < warmup + steps; ++s) {
        if (s == warmup) wait0 = dp.stats().wait_seconds;
        group->barrier();  // every rank starts the step together: the time is the slowest rank's
        const auto t0 = std::chrono::steady_clock::now();
        opt.zero_grad();
        built.forward(ids).pow(2).mean().backward();
        opt.step();
        if (s >= warmup) ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
      }
      const auto count = peft::count_parameters(*built.module);
      nlohmann::ordered_json j = {{"label", label},
                                  {"config", config},
                                  {"seq", seq},
                                  {"global_batch", batch},
                                  {"world", group->world_size()},
                                  {"backend", group->backend()},
                                  {"threads_per_rank", threads},
                                  {"method", name},
                                  {"trainable", count.trainable},
                                  {"total", count.all},
                                  {"gradient_bytes_per_step", count.trainable * 4},
                                  {"bytes_all_reduced_per_step", dp.stats().bytes_per_step},
                                  {"buckets", dp.stats().buckets},
                                  {"step_ms", ms},
                                  {"step_ms_median", bench::median(ms)},
                                  {"wait_ms_per_step", 1e3 * (dp.stats().wait_seconds - wait0) / static_cast<double>(steps)},
                                  {"torch", peft::detail::torch_version()},
                                  {"date", bench::utc_date()}};
      if (group->is_main()) {
        fmt::print("{}\n", j.dump());
        if (!out.empty()) std::ofstream(out, std::ios::app) << j.dump() << "\n";
      }
    }
    group->barrier();
    return 0;
  } catch (const std::exception& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
}

}  // namespace dist_bench

PEFT_BENCH_PROGRAM(dist_bench, "data-parallel step time and bytes on the wire, per method")
