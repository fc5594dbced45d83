// What each method costs against full fine-tuning on one BERT-shaped encoder and batch: training step
// time (forward + backward + AdamW step; median after warm-up), peak memory of a step (CPU: peak RSS
// growth; CUDA: max_memory_allocated), optimizer-state bytes and trainable parameters; and inference
// latency of the base model, LoRA unmerged and LoRA merged. Writes JSON and Markdown to --out.
//
//   ./build/benchmarks/method_bench --config small      # hidden 256 x 4 layers, seq 128, batch 8
//   ./build/benchmarks/method_bench --config gemm       # hidden 1024 x 2 layers (GEMM-bound)
//   ./build/benchmarks/method_bench --config bert-base --device cuda

#include "bench_program.hpp"
#include <peft/peft.hpp>

#include "bench_common.hpp"
#include "bench_models.hpp"

#include <CLI/CLI.hpp>
#include "common/cli_checks.hpp"
#include <fmt/format.h>
#include <torch/torch.h>
#include <torch/version.h>

// Set by CMake when LibTorch is built with CUDA (Debian's CPU LibTorch ships c10/cuda headers that do
// not compile, so their presence says nothing).
#ifdef PEFT_BENCH_CUDA_STATS
#include <c10/cuda/CUDACachingAllocator.h>
#include <cuda_runtime_api.h>
#endif

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <thread>

namespace method_bench {

namespace M = peft::models;

namespace {

using bench::build;
using bench::Model;
using bench::Shape;
using bench::shapes;
using bench::Variant;
using bench::variants;

/// The analytic floor of a training step's memory: what must exist at the peak, counted from the shapes.
///   weights     every parameter at its dtype;
///   optimizer   AdamW's two moments (read from the optimizer);
///   activations what backward needs, per layer, as this library's ops save it. a = batch x seq x hidden and
///               s = batch x heads x seq x seq elements at the activations' dtype, i = a x intermediate / hidden.
///               Attention keeps q, k, v (3a) and either the probabilities (1s, the math attention of
///               nn/attention.hpp, plus its dropout mask as bools, s bytes) or, where SDPA has a fused kernel
///               (LibTorch 2.x without dropout on the CPU; CUDA), its output (1a).
///                 BERT, frozen base: block input 1a, q k v 3a, attention, two hidden-dropout float masks 2a,
///                 two LayerNorm inputs 2a, GELU input 4a (without dropout: no masks); full fine-tuning adds
///                 the inputs of the weights: context 1a, FFN input 1a, GELU output 4a.
///                 LLaMA, frozen base: RMSNorm inputs 2a, the attention projections' input 1a (LoRA's), q k v
///                 3a (keys and values repeated to every head), attention, gate i, up i, silu(gate) i; full
///                 fine-tuning adds both normalized inputs 2a (RMSNorm weights), context 1a, the gate/up input
///                 1a and the down projection's input i.
///               With checkpointing: each layer keeps only its input (1a) and one layer is recomputed (+1 layer).
///               Tuner-internal tensors (rank-r products, prefix keys) are small and left out, but for one:
///               on a half-precision base every tuned Linear widens its input to float32, and its adapter
///               keeps that copy for its weight gradient (batch x seq x in_features floats per site; PEFT's
///               LoRA does the same).
///   gradients   one per trainable parameter where they outlive the step (LibTorch 1.13's zero_grad() zeroes
///               them). Where zero_grad() frees them (2.x), backward creates them as it frees activations, so
///               they count only by what they exceed the activations at the end of backward (the last layer
///               recomputed or kept).
struct Floor {
  int64_t weights = 0, gradients = 0, optimizer = 0, activations = 0;
  double total() const { return static_cast<double>(weights + gradients + optimizer + activations); }
};
Floor memory_floor(torch::nn::Module& model, const Shape& sh, int64_t optimizer_bytes, bool checkpointing, bool full,
                   bool dropout, bool fused_attention, bool gradients_persist) {
  // Float32 copies of tuned Linears' inputs where the activations are half precision.
  int64_t widened = 0;
  for (const auto& m : model.modules(false)) {
    const auto* slot = dynamic_cast<const peft::TunableSlot*>(m.get());
    if (!slot || std::string(slot->op_kind()) != "Linear" || !slot->adapters_enabled()) continue;
    bool tuned = false;  // the active names are the model's: is one of them attached here?
    for (const auto& name : slot->active_adapters()) tuned = tuned || slot->adapter(name) != nullptr;
    if (tuned) widened += sh.batch * sh.seq * slot->features().first * 4;
  }
  Floor f;
  const auto params = model.parameters();
  at::ScalarType act = params.empty() ? at::kFloat : params.front().scalar_type();
  int64_t gradients = 0;
  for (const auto& p : params) {
    const auto bytes = static_cast<int64_t>(p.numel() * p.element_size());
    f.weights += bytes;
    if (p.requires_grad()) gradients += bytes;
    else act = p.scalar_type();  // activations follow the frozen base's dtype
  }
  f.optimizer = optimizer_bytes;
  const int64_t e = static_cast<int64_t>(c10::elementSize(act));
  const int64_t a = sh.batch * sh.seq * sh.hidden * e, s = sh.batch * sh.heads * sh.seq * sh.seq * e;
  const int64_t attention = fused_attention ? a : s + (dropout ? s / e : 0);
  int64_t layer = 0;
  if (sh.llama) {
    const int64_t i = a * sh.intermediate / sh.hidden;
    layer = 6 * a + attention + 3 * i;
    if (full) layer += 4 * a + i;
  } else {
    layer = 6 * a + attention + 4 * a + (dropout ? 2 * a : 0);
    if (full) layer += 6 * a;
  }
  if (e < 4) layer += widened / sh.layers;
  f.activations = checkpointing ? sh.layers * a + layer : sh.layers * layer;
  f.gradients = gradients_persist ? gradients : std::max<int64_t>(0, gradients + layer - f.activations);
  return f;
}

}  // namespace

int run(int argc, char** argv) {
  CLI::App app{"Training-step cost of every method against full fine-tuning, and LoRA inference overhead"};
  std::string config = "small", device = "cpu", dtype = "float32", out = "benchmarks/results";
  int reps = 10, warmup = 3;
  unsigned threads = std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::string> only;
  app.add_option("--config", config, "model shape")->check(CLI::IsMember({"small", "gemm", "bert-base", "llama-tiny", "llama-1b"}));
  app.add_option("--device", device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--dtype", dtype, "float32 or bfloat16")->check(CLI::IsMember({"float32", "bfloat16"}));
  app.add_option("--reps", reps, "timed repetitions (median)")->check(cli_checks::Positive);
  app.add_option("--warmup", warmup, "untimed repetitions first")->check(cli_checks::NonNegative);
  app.add_option("--threads", threads, "intra-op threads")->check(cli_checks::Positive);
  app.add_option("--methods", only, "run only these variants");
  app.add_option("--out", out, "folder for method_bench_<config>_<device>.{json,md}");
  int64_t batch = 0, seq = 0;
  app.add_option("--batch", batch, "batch size instead of the shape's")->check(cli_checks::Positive);
  app.add_option("--seq", seq, "sequence length instead of the shape's")->check(cli_checks::Positive);
  bool skip_full = false;
  app.add_flag("--skip-full", skip_full, "leave full fine-tuning out (ratios to it are then not reported)");
  std::string suffix;
  app.add_option("--suffix", suffix, "appended to the output file names (method_bench_<config>_<device><suffix>)");
  double dropout = -1;
  app.add_option("--dropout", dropout, "BERT's hidden and attention dropout instead of the config's 0.1")
      ->check(CLI::Range(0.0, 0.99));
  bool checkpointing = false;
  bool no_inference = false;
  app.add_flag("--no-inference", no_inference, "training rows only (leave out the base / LoRA unmerged / merged forward timings)");
  app.add_flag("--checkpointing", checkpointing, "activation checkpointing of every transformer block (training rows)");
  std::string base_dtype = "same";
  app.add_option("--base-dtype", base_dtype,
                 "frozen weights in bfloat16 or float16 under float32 trainables (peft::cast_mixed); same: as --dtype")
      ->check(CLI::IsMember({"same", "bfloat16", "float16"}));
  std::string profile;
  app.add_option("--profile", profile,
                 "folder: after timing, record 3 training steps of each method and 3 forwards of each inference "
                 "variant with LibTorch's profiler (Chrome traces; benchmarks/profile_summary.py reads them)");
  CLI11_PARSE(app, argc, argv);
  try {
    torch::set_num_threads(static_cast<int>(threads));
    if (!profile.empty()) std::filesystem::create_directories(profile);
    const bool cuda = device == "cuda";
    if (cuda && !torch::cuda::is_available()) throw std::runtime_error("--device cuda: no CUDA device available");
    const torch::Device dev = cuda ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU);
    const auto st = dtype == "bfloat16" ? torch::kBFloat16 : torch::kFloat32;
    auto sh = shapes().at(config);
    if (batch > 0) sh.batch = batch;
    if (seq > 0) sh.seq = seq;
    sh.dropout = dropout;
    torch::manual_seed(0);
    auto ids = torch::randint(103, sh.vocab, {sh.batch, sh.seq}, torch::kLong);
    ids.select(1, 0).fill_(101);
    ids.select(1, sh.seq - 1).fill_(102);
    ids = ids.to(dev);

    struct Row {
      std::string name;
      int64_t trainable = 0, total = 0, optimizer_bytes = 0;
      double step_ms = 0, peak_mb = 0;
      Floor floor;
    };
    std::vector<Row> rows;
    for (const auto& v : variants(sh.llama)) {
      if (v.name == "full" ? skip_full : !only.empty() && std::find(only.begin(), only.end(), v.name) == only.end()) continue;
      // Peak memory of training: from before the model exists to the end of two steps (weights,
      // gradients, optimizer state, activations).
      int64_t cpu_before = 0, cuda_before = 0;
      if (cuda) {
#ifdef PEFT_BENCH_CUDA_STATS
        torch::cuda::synchronize();
        c10::cuda::CUDACachingAllocator::emptyCache();
        c10::cuda::CUDACachingAllocator::resetPeakStats(dev.has_index() ? dev.index() : 0);
        cuda_before = c10::cuda::CUDACachingAllocator::getDeviceStats(dev.has_index() ? dev.index() : 0).allocated_bytes[0].current;
#else
        throw std::runtime_error("this LibTorch has no CUDA allocator statistics");
#endif
      } else {
        peft::train::reset_peak_rss();
        cpu_before = peft::train::rss().current;
      }
      Row r;
      r.name = v.name;
      {
        torch::manual_seed(0);
        auto built = build(sh);
        auto& model = built.module;
        for (auto& p : model->parameters()) p.set_requires_grad(false);
        v.setup(*model);
        model->to(dev, st);
        if (base_dtype != "same") peft::cast_mixed(model, base_dtype == "float16" ? torch::kHalf : torch::kBFloat16, torch::kFloat);
        if (checkpointing) peft::enable_gradient_checkpointing(*model);
        // The peak counts from before the model was built, so it includes the weights; but not the setup's
        // transients: a base built in float32 and cast to bf16 held both for a moment, which a model
        // loaded in bf16 never does.
        if (cuda) {
#ifdef PEFT_BENCH_CUDA_STATS
          torch::cuda::synchronize();
          c10::cuda::CUDACachingAllocator::resetPeakStats(dev.has_index() ? dev.index() : 0);
#endif
        } else {
          peft::train::reset_peak_rss();
        }
        model->train();
        auto opt = peft::train::make_adamw(model, 1e-4, 0.01);
        auto step = [&] {
          opt.zero_grad();
          built.forward(ids).to(torch::kFloat).pow(2).mean().backward();
          opt.step();
        };
        step();  // creates the optimizer state
        step();
        const auto c = peft::count_parameters(model);
        r.trainable = c.trainable, r.total = c.all;
        r.optimizer_bytes = peft::train::optimizer_state_bytes(opt);
        // Whether gradients outlive a step: zero_grad() zeroes them in LibTorch 1.13 and frees them in 2.x.
        opt.zero_grad();
        bool gradients_persist = false;
        for (const auto& p : model->parameters()) gradients_persist = gradients_persist || p.grad().defined();
        const bool dropout = sh.dropout != 0 && !sh.llama;  // LLaMA has none; BERT's default is 0.1
        r.floor = memory_floor(*model, sh, r.optimizer_bytes, checkpointing, v.name == "full", dropout,
                               peft::nn::has_sdpa() && (cuda || !dropout), gradients_persist);
        if (cuda) {
#ifdef PEFT_BENCH_CUDA_STATS
          torch::cuda::synchronize();
          r.peak_mb = static_cast<double>(c10::cuda::CUDACachingAllocator::getDeviceStats(dev.has_index() ? dev.index() : 0)
                                              .allocated_bytes[0].peak - cuda_before) / 1e6;
#endif
        } else {
          r.peak_mb = static_cast<double>(std::max<int64_t>(0, peft::train::rss().peak - cpu_before)) / 1e6;
        }
        r.step_ms = bench::median_ms(step, warmup, reps, cuda);
        if (!profile.empty()) bench::profile_to(profile + "/cpp_" + config + "_train_" + v.name + ".json", step, 3, cuda);
      }
      fmt::print(stderr, "{:<18} step {:8.1f} ms  peak +{:7.1f} MB (floor {:7.1f} MB)  optimizer {:8.2f} MB  trainable {}\n", r.name,
                 r.step_ms, r.peak_mb, r.floor.total() / 1e6, static_cast<double>(r.optimizer_bytes) / 1e6, r.trainable);
      rows.push_back(r);
    }

    // Inference: base, LoRA (q, v) unmerged, merged.
    double base_ms = 0, unmerged_ms = 0, merged_ms = 0;
    if (!no_inference) {
      torch::manual_seed(0);
      auto built = build(sh);
      auto& model = built.module;
      for (auto& p : model->parameters()) p.set_requires_grad(false);
      model->to(dev, st);
      model->eval();
      torch::NoGradGuard g;
      auto infer = [&] { built.forward(ids); };
      base_ms = bench::median_ms(infer, warmup, reps, cuda);
      auto profile_infer = [&](const char* what) {
        if (!profile.empty()) bench::profile_to(profile + "/cpp_" + config + "_infer_" + what + ".json", infer, 3, cuda);
      };
      profile_infer("base");
      peft::attach(model, peft::LoraConfig().r(8).lora_alpha(16).target_modules(sh.llama ? std::vector<std::string>{"q_proj", "v_proj"}
                                                                                   : std::vector<std::string>{"query", "value"})
                             .init_lora_weights(false));
      unmerged_ms = bench::median_ms(infer, warmup, reps, cuda);
      profile_infer("unmerged");
      peft::merge_adapter(model);
      merged_ms = bench::median_ms(infer, warmup, reps, cuda);
      profile_infer("merged");
      fmt::print(stderr, "inference: base {:.1f} ms, LoRA unmerged {:.1f} ms ({:.3f}x), merged {:.1f} ms ({:.3f}x)\n", base_ms,
                 unmerged_ms, unmerged_ms / base_ms, merged_ms, merged_ms / base_ms);
    }

    // Report.
    const std::string date = bench::utc_date(), cpu = bench::cpu_model();
    std::string gpu;
#ifdef PEFT_BENCH_CUDA_STATS
    if (cuda) {
      cudaDeviceProp prop{};
      if (cudaGetDeviceProperties(&prop, dev.has_index() ? dev.index() : 0) == cudaSuccess) gpu = prop.name;
    }
#endif
    // Ratios to full fine-tuning, when it ran (0: not measured).
    const bool have_full = !rows.empty() && rows.front().name == "full";
    const double full_ms = have_full ? rows.front().step_ms : 0.0, full_mb = have_full ? rows.front().peak_mb : 0.0;
    nlohmann::ordered_json j;
    j["benchmark"] = "method_step";
    j["date"] = date;
    j["machine"] = {{"cpu", cpu}, {"cores", std::thread::hardware_concurrency()},
                    {"gpu", cuda ? nlohmann::json(gpu) : nlohmann::json(nullptr)}};
    j["libtorch"] = TORCH_VERSION;
    j["threads"] = threads;
    j["device"] = device;
    j["dtype"] = dtype;
    j["shape"] = {{"name", config}, {"hidden", sh.hidden}, {"layers", sh.layers}, {"heads", sh.heads}, {"seq", sh.seq}, {"batch", sh.batch}};
    j["reps"] = reps;
    j["checkpointing"] = checkpointing;
    j["base_dtype"] = base_dtype;
    std::string md = "| method | trainable | step ms | step / full | peak training MB | peak / full | floor MB | peak / floor | optimizer MB |\n"
                     "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    auto out_md = std::back_inserter(md);
    for (const auto& r : rows) {
      j["methods"].push_back({{"method", r.name}, {"trainable", r.trainable}, {"total", r.total}, {"step_ms", r.step_ms},
                              {"step_ratio", full_ms > 0 ? r.step_ms / full_ms : 0.0}, {"peak_mb", r.peak_mb},
                              {"peak_ratio", full_mb > 0 ? r.peak_mb / full_mb : 0.0}, {"optimizer_bytes", r.optimizer_bytes},
                              {"floor", {{"weights", r.floor.weights}, {"gradients", r.floor.gradients},
                                         {"optimizer", r.floor.optimizer}, {"activations", r.floor.activations},
                                         {"total_mb", r.floor.total() / 1e6}}},
                              {"peak_over_floor", r.peak_mb / (r.floor.total() / 1e6)}});
      fmt::format_to(out_md, "| {} | {} | {:.1f} | {:.3f} | {:.1f} | {:.3f} | {:.1f} | {:.2f} | {:.2f} |\n", r.name, r.trainable,
                     r.step_ms, full_ms > 0 ? r.step_ms / full_ms : 0.0, r.peak_mb, full_mb > 0 ? r.peak_mb / full_mb : 0.0,
                     r.floor.total() / 1e6, r.peak_mb / (r.floor.total() / 1e6), static_cast<double>(r.optimizer_bytes) / 1e6);
    }
    if (!no_inference) {
      j["inference"] = {{"base_ms", base_ms}, {"lora_unmerged_ms", unmerged_ms}, {"lora_merged_ms", merged_ms},
                        {"unmerged_ratio", unmerged_ms / base_ms}, {"merged_ratio", merged_ms / base_ms}};
      fmt::format_to(out_md, "\nInference: base {:.1f} ms, LoRA unmerged {:.1f} ms ({:.3f}x), merged {:.1f} ms ({:.3f}x).\n",
                     base_ms, unmerged_ms, unmerged_ms / base_ms, merged_ms, merged_ms / base_ms);
    }
    fmt::format_to(out_md, "{} {} (hidden {} x {} layers, seq {}, batch {}, vocabulary {}), {} {}{}{}; {}{}, {} threads, LibTorch {}, {}.\n",
                   sh.llama ? "LLaMA-shaped decoder" : "BERT-shaped encoder", config, sh.hidden, sh.layers, sh.seq, sh.batch,
                   sh.vocab, device, dtype, base_dtype == "same" ? std::string() : ", frozen base in " + base_dtype,
                   checkpointing ? ", activation checkpointing" : "", cpu, gpu.empty() ? std::string() : ", " + gpu, threads,
                   TORCH_VERSION, date);
    fmt::print("{}", md);
    std::filesystem::create_directories(out);
    const auto stem = std::filesystem::path(out) / ("method_bench_" + config + "_" + device + suffix);
    std::ofstream(stem.string() + ".json") << j.dump(2) << "\n";
    std::ofstream(stem.string() + ".md") << md;
    return 0;
  } catch (const std::exception& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
}

}  // namespace method_bench

PEFT_BENCH_PROGRAM(method_bench, "training-step time and memory of every method against full fine-tuning, LoRA inference overhead")
