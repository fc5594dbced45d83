// The accuracy benchmark: every method against full fine-tuning and a linear probe on three
// VTAB-1k style Fashion-MNIST tasks, from one upstream-pretrained ViT. Per method and task the
// learning rate is chosen on the 200 validation images (seed 0), then 3 seeds run at that rate and are
// evaluated once on the task's test split. Writes JSON and Markdown to --out.
//
//   ./build/benchmarks/accuracy_bench                 # the full run (~30 min on 2 cores)
//   ./build/benchmarks/accuracy_bench --quick         # every method a few steps: the CI smoke test

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

namespace {

std::vector<double> lr_grid(const std::string& method) {
  if (method == "linear") return {1e-2, 3e-2, 1e-1};
  if (method == "full") return {3e-4, 1e-3, 3e-3};
  return {1e-3, 3e-3, 1e-2, 3e-2};
}

double mean(const std::vector<double>& v) { return v.empty() ? 0 : std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size()); }
double stdev(const std::vector<double>& v) {
  if (v.size() < 2) return 0;
  const double m = mean(v);
  double s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return std::sqrt(s / static_cast<double>(v.size() - 1));
}
}  // namespace

int main(int argc, char** argv) {
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
      std::vector<double> seconds, peak_mb;
    };
    std::map<std::string, Summary> results;
    int failures = 0;

    for (const auto& tname : tasks) {
      auto task = fashion::make_task(tname, train_raw, test_raw);
      if (quick) task.test = fashion::take(task.test, torch::arange(0, 500, torch::kLong));
      fmt::print(stderr, "== task {}: {}\n", tname, task.description);
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
        double best_lr = lr_grid(mname)[1], best_val = -1;  // --quick: the grid's second value
        fashion::RunResult best;
        if (!quick) {
          for (double lr : lr_grid(mname)) {
            auto r = train_once(lr, 0);
            if (r.val_accuracy > best_val) best_val = r.val_accuracy, best_lr = lr, best = r;
          }
          s.acc[tname].push_back(best.test_accuracy);
        }
        for (int64_t seed = quick ? 0 : 1; seed < seeds; ++seed) s.acc[tname].push_back(train_once(best_lr, seed).test_accuracy);
        s.lr[tname] = best_lr;
        fmt::print(stderr, "{:<12} {:<9} lr {:.0e}  test {:.2f}% +- {:.2f}  ({:.1f} s/run)\n", mname, tname, best_lr,
                   100 * mean(s.acc[tname]), 100 * stdev(s.acc[tname]), bench::median(s.seconds));
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
                     {"lr_selection", "best validation accuracy over a grid (linear 1e-2..1e-1, full 3e-4..3e-3, PEFT 1e-3..3e-2), seed 0"}};
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
        r["tasks"][t] = {{"mean", mean(a)}, {"std", stdev(a)}, {"runs", a}, {"lr", s.lr.at(t)}};
        task_means.push_back(mean(a));
      }
      r["mean"] = mean(task_means);
      r["train_seconds_median"] = bench::median(s.seconds);
      r["peak_memory_mb_median"] = bench::median(s.peak_mb);
      rows.push_back(r);
    }
    j["results"] = rows;

    std::ostringstream md;
    md << "| method | trainable | % of model |";
    for (const auto& t : tasks) md << " " << t << " |";
    md << " mean | train s/run | peak MB |\n|---|---:|---:|";
    for (std::size_t i = 0; i < tasks.size(); ++i) md << "---:|";
    md << "---:|---:|---:|\n";
    for (const auto& r : rows) {
      md << fmt::format("| {} | {} | {:.2f} |", r["label"].get<std::string>(), r["trainable"].get<int64_t>(),
                        r["percent"].get<double>());
      for (const auto& t : tasks)
        md << fmt::format(" {:.1f} ± {:.1f} |", 100 * r["tasks"][t]["mean"].get<double>(), 100 * r["tasks"][t]["std"].get<double>());
      md << fmt::format(" {:.1f} | {:.1f} | {:.0f} |\n", 100 * r["mean"].get<double>(), r["train_seconds_median"].get<double>(),
                        r["peak_memory_mb_median"].get<double>());
    }
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
