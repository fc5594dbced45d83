// The accuracy benchmark: every method against full fine-tuning and a linear probe on three
// VTAB-1k style Fashion-MNIST tasks, from one upstream-pretrained ViT. Per method and task the
// learning rate is chosen on the 200 validation images (seed 0), then 3 seeds run at that rate and are
// evaluated once on the task's test split. Writes JSON and Markdown to --out.
//
//   ./build/benchmarks/accuracy_bench                 # the full run (~30 min on 2 cores)
//   ./build/benchmarks/accuracy_bench --quick         # every method a few steps: the CI smoke test

#include "bench_program.hpp"
#include "bench_common.hpp"
#include "common/fashion_experiment.hpp"

#include <CLI/CLI.hpp>
#include "common/cli_checks.hpp"
#include <fmt/format.h>
#include <torch/version.h>

#include <sys/utsname.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <map>
#include <numeric>
#include <thread>

namespace accuracy_bench {

namespace {

/// The starting grid of learning rates; the search widens it while the best rate sits at an edge.
std::vector<double> lr_grid(const std::string& method) {
  if (method == "linear") return {1e-2, 3e-2, 1e-1};
  if (method == "full") return {3e-4, 1e-3, 3e-3};
  return {1e-3, 3e-3, 1e-2, 3e-2};
}
}  // namespace

int run(int argc, char** argv) {
  CLI::App app{"Accuracy against trainable parameters: every PEFT method vs full fine-tuning and a linear probe"};
  bool quick = false;
  std::vector<std::string> tasks = fashion::task_names(), method_names;
  for (const auto& m : fashion::methods()) method_names.push_back(m.name);
  std::vector<std::string> all_methods = method_names;
  int64_t steps = 400, seeds = 3, upstream_steps = 1500;
  unsigned threads = std::max(1u, std::thread::hardware_concurrency());
  std::string out = "benchmarks/results", device = "cpu", log_path;
  app.add_flag("--quick", quick, "every method a few steps on one task, with checks (the CI smoke test)");
  app.add_option("--tasks", tasks, "tasks to run")->check(CLI::IsMember(fashion::task_names()));
  app.add_option("--methods", method_names, "methods to run")->check(CLI::IsMember(all_methods));
  app.add_option("--steps", steps, "training steps per run (batch 32)")->check(cli_checks::Positive);
  app.add_option("--seeds", seeds, "seeds per method and task")->check(cli_checks::Positive);
  app.add_option("--upstream-steps", upstream_steps, "steps of the (cached) upstream pretraining")->check(cli_checks::Positive);
  app.add_option("--threads", threads, "intra-op threads")->check(cli_checks::Positive);
  app.add_option("--device", device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--out", out, "folder for accuracy.json and accuracy.md");
  app.add_option("--log", log_path, "append every step and run as JSON lines to this file");
  CLI11_PARSE(app, argc, argv);

  try {
    torch::set_num_threads(static_cast<int>(threads));
    if (device == "cuda" && !torch::cuda::is_available()) throw std::runtime_error("--device cuda: no CUDA device available");
    const torch::Device dev = device == "cuda" ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU);
    if (quick) {
      tasks = {"classes"};
      steps = std::min<int64_t>(steps, 40);
      seeds = 1;
      upstream_steps = std::min<int64_t>(upstream_steps, 150);
    }
    peft::train::JsonlLog log;
    if (!log_path.empty()) log = peft::train::JsonlLog(log_path);
    auto train_raw = fashion::load_split(true), test_raw = fashion::load_split(false);
    const auto ckpt = fashion::pretrained_checkpoint(train_raw, upstream_steps);
    const auto wall0 = std::chrono::steady_clock::now();

    struct Summary {
      std::string label;
      int64_t trainable = 0, total = 0;
      std::map<std::string, std::vector<double>> acc;  // task -> test accuracy per seed
      std::map<std::string, double> lr;                // task -> chosen learning rate
      std::map<std::string, std::vector<double>> grid; // task -> rates tried (sorted)
      std::map<std::string, double> head_lr;           // task -> the head's rate (0: the method's)
      std::vector<double> seconds, peak_mb;
    };
    std::map<std::string, Summary> results;
    int failures = 0;

    for (const auto& tname : tasks) {
      auto task = fashion::make_task(tname, train_raw, test_raw);
      if (quick) task.test = fashion::take(task.test, torch::arange(0, 500, torch::kLong));
      fmt::print(stderr, "== task {}: {}\n", tname, task.description);
      double head_rate = 3e-2;  // until the linear probe (listed first) has chosen its rate
      for (const auto& mname : method_names) {
        const auto& m = fashion::method(mname);
        auto& s = results[mname];
        s.label = m.label;
        auto train_once = [&](double lr, int64_t seed) {
          torch::manual_seed(seed);
          auto vit = fashion::downstream_model(ckpt, task.num_classes);
          m.setup(*vit);
          fashion::RunOptions o;
          o.steps = steps, o.lr = lr, o.seed = seed, o.device = dev, o.log = log.is_open() ? &log : nullptr;
          // The head trains at the linear probe's rate for the task (a head from scratch on frozen
          // features is exactly what the probe tunes); full fine-tuning keeps one rate.
          o.head_lr = (mname == "linear" || mname == "full") ? 0.0 : head_rate;
          o.progress = false;
          vit->to(dev);
          auto val_loss = [&] {
            return peft::train::evaluate(*vit, [&](const torch::Tensor& b) { return vit->forward(b.to(dev)); }, task.val.x,
                                         task.val.y).loss;
          };
          const double val_before = quick ? val_loss() : 0.0;
          auto r = fashion::run(*vit, task, mname, o);
          s.trainable = r.trainable, s.total = r.total;
          s.seconds.push_back(r.train_seconds);
          s.peak_mb.push_back(static_cast<double>(r.peak_rss_growth) / 1e6);
          if (quick) {  // smoke checks: the validation loss fell, and the adapter reloads exactly
            const double val_after = val_loss();
            bool ok = val_after < val_before;
            std::string reload = "-";
            if (m.adapter) {
              auto [trained, reloaded] = fashion::save_and_reload(*vit, ckpt, task.num_classes, fashion::cache_root() / "quick-adapters" / mname,
                                                                  task.val.x.slice(0, 0, 32), dev);
              const bool same = torch::equal(trained, reloaded);
              reload = same ? "exact" : "DIFFERS";
              ok = ok && same;
            }
            fmt::print(stderr, "{:<12} val loss {:.4f} -> {:.4f}, adapter reload {}: {}\n", mname, val_before, val_after, reload,
                       ok ? "ok" : "FAILED");
            failures += ok ? 0 : 1;
          }
          return r;
        };
        // Learning rate from the validation split (seed 0); the test split is read only for the
        // chosen rate's runs.
        // A best rate at an edge of the grid widens it by one step that way (up to 4 times each way).
        double best_lr = lr_grid(mname)[1], best_val = -1;  // --quick: the grid's second value
        fashion::RunResult best;
        std::map<double, double> tried;  // lr -> validation accuracy
        if (!quick) {
          std::vector<double> todo = lr_grid(mname);
          for (int widen = 0; !todo.empty() && widen <= 8; ++widen) {
            for (double lr : todo) {
              auto r = train_once(lr, 0);
              tried[lr] = r.val_accuracy;
              if (r.val_accuracy > best_val) best_val = r.val_accuracy, best_lr = lr, best = r;
            }
            todo.clear();
            const double lo = tried.begin()->first, hi = tried.rbegin()->first;
            if (best_lr == lo && lo > 1e-5) todo.push_back(bench::lr_below(lo));
            else if (best_lr == hi && hi < 1.0) todo.push_back(bench::lr_above(hi));
          }
          s.acc[tname].push_back(best.test_accuracy);
        }
        auto& grid = s.grid[tname];  // empty with --quick
        for (const auto& [lr, v] : tried) grid.push_back(lr);
        s.head_lr[tname] = (mname == "linear" || mname == "full") ? 0.0 : head_rate;
        if (mname == "linear") head_rate = best_lr;
        for (int64_t seed = quick ? 0 : 1; seed < seeds; ++seed) s.acc[tname].push_back(train_once(best_lr, seed).test_accuracy);
        s.lr[tname] = best_lr;
        fmt::print(stderr, "{:<12} {:<9} lr {:.0e}{}  test {:.2f}% +- {:.2f}  ({:.1f} s/run)\n", mname, tname, best_lr,
                   s.grid[tname].size() > 1 && (best_lr == s.grid[tname].front() || best_lr == s.grid[tname].back()) ? " (EDGE)" : "",
                   100 * bench::mean(s.acc[tname]), 100 * bench::stdev(s.acc[tname]), bench::median(s.seconds));
      }
    }
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();

    // Report.
    struct utsname u{};
    uname(&u);
    nlohmann::ordered_json j;
    j["benchmark"] = "accuracy";
    j["date"] = bench::utc_date();
    j["machine"] = {{"cpu", bench::cpu_model()}, {"cores", std::thread::hardware_concurrency()}, {"os", std::string(u.sysname) + " " + u.release}};
    j["libtorch"] = TORCH_VERSION;
    j["threads"] = threads;
    j["device"] = device;
    j["quick"] = quick;
    j["protocol"] = {{"model", fashion::vit_config(5).to_json()},
                     {"upstream", "classes 0-4, all training images, " + std::to_string(upstream_steps) + " steps, batch 128"},
                     {"train_examples", 800}, {"val_examples", 200}, {"steps", steps}, {"batch", 32}, {"seeds", seeds},
                     {"schedule", "AdamW, warmup 10% + cosine, no weight decay"},
                     {"lr_selection", "best validation accuracy, seed 0, over a grid (linear 1e-2..1e-1, full 3e-4..3e-3, PEFT "
                                      "1e-3..3e-2) widened one 1-3-10 step at a time while the best rate is at its edge"},
                     {"head_lr", "PEFT methods train the classification head at the linear probe's chosen rate for the task"}};
    j["wall_seconds"] = wall;
    nlohmann::ordered_json rows = nlohmann::ordered_json::array();
    for (const auto& mname : method_names) {
      const auto& s = results[mname];
      nlohmann::ordered_json r;
      r["method"] = mname;
      r["label"] = s.label;
      r["trainable"] = s.trainable;
      r["percent"] = 100.0 * static_cast<double>(s.trainable) / static_cast<double>(std::max<int64_t>(1, s.total));
      std::vector<double> task_means;
      for (const auto& t : tasks) {
        const auto& a = s.acc.at(t);
        const auto& g = s.grid.at(t);
        const bool edge = g.size() > 1 && (s.lr.at(t) == g.front() || s.lr.at(t) == g.back());
        r["tasks"][t] = {{"mean", bench::mean(a)}, {"std", bench::stdev(a)}, {"runs", a}, {"lr", s.lr.at(t)}, {"lr_grid", g},
                         {"lr_at_edge", edge}, {"head_lr", s.head_lr.at(t)}};
        task_means.push_back(bench::mean(a));
      }
      r["mean"] = bench::mean(task_means);
      r["train_seconds_median"] = bench::median(s.seconds);
      r["peak_memory_mb_median"] = bench::median(s.peak_mb);
      rows.push_back(r);
    }
    j["results"] = rows;

    std::ostringstream md;
    md << bench::accuracy_table(rows, tasks, 2);
    md << fmt::format("\n{}, {} threads, LibTorch {}, {}; {:.0f} min in all.\n", bench::cpu_model(), threads, TORCH_VERSION,
                      bench::utc_date(), wall / 60);
    std::cout << md.str();
    if (!quick) {
      std::filesystem::create_directories(out);
      std::ofstream(std::filesystem::path(out) / "accuracy.json") << j.dump(2) << "\n";
      std::ofstream(std::filesystem::path(out) / "accuracy.md") << md.str();
      fmt::print(stderr, "wrote {}/accuracy.json and accuracy.md\n", out);
    }
    if (failures) {
      fmt::print(stderr, "{} method(s) failed the smoke checks\n", failures);
      return 1;
    }
    return 0;
  } catch (const std::exception& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
}

}  // namespace accuracy_bench

PEFT_BENCH_PROGRAM(accuracy_bench, "accuracy against trainable parameters on Fashion-MNIST (every method, full fine-tuning, linear probe)")
