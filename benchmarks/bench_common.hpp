#pragma once
// What the benchmark programs share: timing medians, the machine/date stamp of their reports, and the
// accuracy benchmarks' statistics, learning-rate ladder and table.

#include <peft/core/detail/compat.hpp>

#include <torch/cuda.h>
#if PEFT_TORCH2
#include <torch/csrc/autograd/profiler_kineto.h>
#endif

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <utility>
#include <cmath>
#include <numeric>
#include <sstream>
#include <ctime>
#include <fstream>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace bench {

/// The median of `v` (0 for an empty one).
inline double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

inline double mean(const std::vector<double>& v) {
  return v.empty() ? 0 : std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
}
/// The sample standard deviation (0 for fewer than two values).
inline double stdev(const std::vector<double>& v) {
  if (v.size() < 2) return 0;
  const double m = mean(v);
  double s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return std::sqrt(s / static_cast<double>(v.size() - 1));
}

/// One step down or up the 1-3-10 ladder of learning rates (grids are widened along it).
inline double lr_below(double lr) { return std::abs(std::log10(lr) - std::round(std::log10(lr))) < 0.01 ? lr * 0.3 : lr / 3.0; }
inline double lr_above(double lr) { return std::abs(std::log10(lr) - std::round(std::log10(lr))) < 0.01 ? lr * 3.0 : lr / 0.3; }

/// The Markdown table of an accuracy benchmark's result rows (method label, trainable count and share,
/// mean ± std per task in %, the mean over tasks, median train seconds and peak MB).
inline std::string accuracy_table(const nlohmann::ordered_json& rows, const std::vector<std::string>& tasks, int percent_digits) {
  std::ostringstream md;
  md << "| method | trainable | % of model |";
  for (const auto& t : tasks) md << " " << t << " |";
  md << " mean | train s/run | peak MB |\n|---|---:|---:|";
  for (std::size_t i = 0; i < tasks.size(); ++i) md << "---:|";
  md << "---:|---:|---:|\n";
  for (const auto& r : rows) {
    md << fmt::format("| {} | {} | {:.{}f} |", r["label"].get<std::string>(), r["trainable"].get<int64_t>(), r["percent"].get<double>(),
                      percent_digits);
    for (const auto& t : tasks)
      md << fmt::format(" {:.1f} ± {:.1f} |", 100 * r["tasks"][t]["mean"].get<double>(), 100 * r["tasks"][t]["std"].get<double>());
    md << fmt::format(" {:.1f} | {:.1f} | {:.0f} |\n", 100 * r["mean"].get<double>(), r["train_seconds_median"].get<double>(),
                      r["peak_memory_mb_median"].get<double>());
  }
  return md.str();
}

/// Wall times of `f` in milliseconds, `reps` runs after `warmup` untimed ones; with `cuda`, each run
/// is bracketed by device synchronization.
template <class F>
std::vector<double> times_ms(F&& f, int warmup, int reps, bool cuda = false) {
  for (int i = 0; i < warmup; ++i) f();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    if (cuda) torch::cuda::synchronize();
    const auto a = std::chrono::steady_clock::now();
    f();
    if (cuda) torch::cuda::synchronize();
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count());
  }
  return t;
}

/// Median of times_ms (the upper middle value for an even count).
template <class F>
double median_ms(F&& f, int warmup, int reps, bool cuda = false) {
  auto t = times_ms(std::forward<F>(f), warmup, reps, cuda);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

/// Runs `f` `reps` times under LibTorch's Kineto profiler (CPU ops, and CUDA kernels when `cuda`) and
/// writes a Chrome trace to `path` (benchmarks/profile_summary.py reads it). LibTorch 2.x only.
template <class F>
void profile_to(const std::string& path, F&& f, int reps, bool cuda) {
#if PEFT_TORCH2
  namespace P = torch::autograd::profiler;
  namespace I = torch::profiler::impl;
  I::ProfilerConfig cfg(I::ProfilerState::KINETO);
  std::set<I::ActivityType> acts{I::ActivityType::CPU};
  if (cuda) acts.insert(I::ActivityType::CUDA);
  if (cuda) torch::cuda::synchronize();
  P::prepareProfiler(cfg, acts);
  P::enableProfiler(cfg, acts);
  for (int i = 0; i < reps; ++i) f();
  if (cuda) torch::cuda::synchronize();
  P::disableProfiler()->save(path);
#else
  (void)path, (void)f, (void)reps, (void)cuda;
  throw std::runtime_error("--profile needs LibTorch 2.x (Kineto)");
#endif
}

/// The CPU's model name from /proc/cpuinfo.
inline std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown CPU";
}

/// Today's date (UTC), YYYY-MM-DD.
inline std::string utc_date() {
  const std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d", std::gmtime(&t));
  return buf;
}

}  // namespace bench
