// One rank of the data-parallel tests (tests/dist/run_dist_test.sh starts them; CTest runs the script).
//
//   dist_worker train --method lora|mix|full --steps K --out DIR [--accumulate A] [--bucket-bytes N]
//                     [--fail-rank R --fail-at S --fail-mode exit|hang] [--perturb-frozen R] [--timeout-ms T]
//                     [--checkpointing 1]
//       trains a tiny seeded BERT classifier with SGD on a seeded stream of global batches, this rank
//       on its rows (one process without RANK/WORLD_SIZE: all rows); writes DIR/rank<r>.safetensors
//       (the trainable parameters) and DIR/rank<r>.json (bytes counted), rank 0 also DIR/adapter.
//       Checks itself that only the trainable parameters travelled.
//   dist_worker compare SINGLE_DIR DIST_DIR WORLD
//       every rank of DIST_DIR holds bit-identical parameters, equal (1e-5) to SINGLE_DIR's one process.

#include <peft/peft.hpp>
#include <peft/train/distributed.hpp>

#include <torch/torch.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <thread>

namespace fs = std::filesystem;
namespace M = peft::models;

namespace {

// The last occurrence wins, so a later flag overrides an earlier one.
std::string arg(int argc, char** argv, const std::string& name, const std::string& fallback) {
  std::string v = fallback;
  for (int i = 2; i + 1 < argc; ++i)
    if (argv[i] == name) v = argv[i + 1];
  return v;
}

int fail(const std::string& m) {
  std::cerr << "dist_worker: " << m << "\n";
  return 1;
}

int train(int argc, char** argv) {
  const std::string method = arg(argc, argv, "--method", "lora"), out = arg(argc, argv, "--out", "");
  const int64_t steps = std::stoll(arg(argc, argv, "--steps", "4")), accumulate = std::stoll(arg(argc, argv, "--accumulate", "1"));
  const int64_t global_batch = 8, seq = 12;
  const int fail_rank = std::stoi(arg(argc, argv, "--fail-rank", "-1")), fail_at = std::stoi(arg(argc, argv, "--fail-at", "-1"));
  const std::string fail_mode = arg(argc, argv, "--fail-mode", "exit");
  const int perturb = std::stoi(arg(argc, argv, "--perturb-frozen", "-1"));
  const bool checkpointing = arg(argc, argv, "--checkpointing", "0") == "1";
  if (out.empty()) return fail("--out is required");
  torch::set_num_threads(1);

  peft::dist::GroupOptions go;
  go.timeout = std::chrono::milliseconds(std::stoll(arg(argc, argv, "--timeout-ms", "20000")));
  auto group = peft::dist::Group::from_environment(go);
  const int rank = group->rank();

  M::BertConfig c;
  c.vocab_size = 200, c.hidden_size = 32, c.num_hidden_layers = 2, c.num_attention_heads = 4;
  c.intermediate_size = 64, c.max_position_embeddings = 64, c.num_labels = 3;
  c.hidden_dropout_prob = 0, c.attention_probs_dropout_prob = 0;
  c.initializer_range = 0.3;  // a model whose gradients are far from zero, so that training moves every tensor  // the same function on every split of the batch
  torch::manual_seed(1);
  M::BertForSequenceClassification bert(c);
  torch::manual_seed(100 + rank);  // each rank's adapter starts elsewhere: the broadcast makes them rank 0's
  if (method == "lora") {
    peft::attach(bert, peft::LoraConfig().r(4).target_modules({"query", "value", "dense"}));
  } else if (method == "mix") {  // three methods in one model, and a trainable tensor no backward reaches
    peft::attach(bert, peft::LoraConfig().r(2).target_modules({"query"}), "lora");
    peft::attach(bert, peft::IA3Config().target_modules({"key", "output.dense"}).feedforward_modules({"output.dense"}), "ia3");
    peft::attach(bert, peft::BitFitConfig().target_modules({"value"}), "bitfit");
    peft::set_adapter(bert, std::vector<std::string>{"lora", "ia3", "bitfit"});
    bert->register_parameter("never_used", torch::randn({5}));
  } else if (method == "full") {
    for (auto& p : bert->parameters()) p.set_requires_grad(true);
  } else {
    return fail("unknown --method " + method);
  }
  // Make LoRA's B non-zero, so the first steps move every tensor (seeded per rank like the init).
  {
    torch::NoGradGuard g;
    for (auto& p : bert->named_parameters())
      if (p.key().find("lora_B") != std::string::npos) p.value().normal_(0, 0.1);
  }
  if (perturb == rank) {
    torch::NoGradGuard g;
    for (auto& p : bert->named_parameters())
      if (!p.value().requires_grad()) {
        p.value().add_(1e-2);
        break;
      }
  }

  // Activation checkpointing: the recompute runs inside backward, and the gradients still reach the
  // hooks through the outer graph.
  if (checkpointing && peft::enable_gradient_checkpointing(*bert) == 0) return fail("no block to checkpoint");

  peft::dist::DataParallelOptions dpo;
  dpo.bucket_bytes = std::stoll(arg(argc, argv, "--bucket-bytes", std::to_string(25LL << 20)));
  peft::dist::DataParallel dp(bert, group, dpo);
  const auto trainable = peft::count_parameters(bert);
  torch::optim::SGD opt(peft::train::trainable_parameters(bert), torch::optim::SGDOptions(0.02).momentum(0.9));
  auto gen = torch::make_generator<torch::CPUGeneratorImpl>(7);  // the same global batches on every rank
  bert->train();
  const auto [b0, b1] = dp.local_rows(global_batch);
  for (int64_t s = 0; s < steps; ++s) {
    if (rank == fail_rank && s == fail_at) {
      std::cerr << "dist_worker: rank " << rank << " " << (fail_mode == "exit" ? "exits" : "hangs") << " at step " << s << "\n";
      if (fail_mode == "exit") std::_Exit(3);
      std::this_thread::sleep_for(std::chrono::hours(1));
    }
    opt.zero_grad();
    for (int64_t a = 0; a < accumulate; ++a) {
      auto ids = torch::randint(0, c.vocab_size, {global_batch, seq}, gen, torch::kLong);
      auto y = torch::randint(0, c.num_labels, {global_batch}, gen, torch::kLong);
      auto loss = torch::nn::functional::cross_entropy(bert->forward(ids.slice(0, b0, b1)), y.slice(0, b0, b1)) / accumulate;
      if (a + 1 < accumulate) {
        auto guard = dp.no_sync();
        loss.backward();
      } else {
        loss.backward();
      }
    }
    opt.step();
  }

  // Only the trainable parameters travelled: rank 0's initial values once, the gradients once per step.
  const auto& st = dp.stats();
  const int64_t bytes = trainable.trainable * 4, frozen_bytes = (trainable.all - trainable.trainable) * 4;
  nlohmann::json j = {{"rank", rank},
                      {"world", group->world_size()},
                      {"trainable_numel", trainable.trainable},
                      {"frozen_bytes", frozen_bytes},
                      {"bytes_per_step", st.bytes_per_step},
                      {"buckets", st.buckets},
                      {"steps_synchronised", st.steps},
                      {"bytes_broadcast", group->bytes_broadcast()},
                      {"bytes_all_reduced", group->bytes_all_reduced()}};
  if (group->world_size() > 1) {
    const int64_t fingerprint = 2 * 6 * 8;  // two all-reduces of six float64 at construction
    if (st.bytes_per_step != bytes || group->bytes_broadcast() != bytes ||
        group->bytes_all_reduced() != steps * bytes + fingerprint || st.steps != steps)
      return fail("bytes on the wire do not match the trainable parameters: " + j.dump());
  }
  fs::create_directories(out);
  torch::OrderedDict<std::string, at::Tensor> params;
  for (const auto& p : bert->named_parameters())
    if (p.value().requires_grad()) params.insert(p.key(), p.value());
  peft::save_safetensors((fs::path(out) / ("rank" + std::to_string(rank) + ".safetensors")).string(), params);
  std::ofstream(fs::path(out) / ("rank" + std::to_string(rank) + ".json")) << j.dump() << "\n";
  if (group->is_main() && method == "lora") peft::save_adapter(bert, fs::path(out) / "adapter");
  group->barrier();
  std::cout << j.dump() << std::endl;
  return 0;
}

int compare(int argc, char** argv) {
  if (argc < 5) return fail("usage: compare SINGLE_DIR DIST_DIR WORLD");
  const fs::path single = argv[2], dist = argv[3];
  const int world = std::stoi(argv[4]);
  auto ref = peft::load_safetensors((single / "rank0.safetensors").string()).tensors;
  auto first = peft::load_safetensors((dist / "rank0.safetensors").string()).tensors;
  double worst = 0;
  int64_t moved = 0;
  for (int r = 0; r < world; ++r) {
    auto mine = peft::load_safetensors((dist / ("rank" + std::to_string(r) + ".safetensors")).string()).tensors;
    if (mine.size() != ref.size()) return fail("rank " + std::to_string(r) + " holds " + std::to_string(mine.size()) + " tensors, one process " + std::to_string(ref.size()));
    for (const auto& item : ref) {
      const auto& name = item.key();
      if (!mine.contains(name)) return fail("rank " + std::to_string(r) + " lacks " + name);
      if (!torch::equal(mine[name], first[name])) return fail("rank " + std::to_string(r) + " and rank 0 differ in " + name);
      const double d = (mine[name] - item.value()).abs().max().item<double>();
      worst = std::max(worst, d);
      if (d > 1e-5) return fail(name + ": data-parallel differs from one process by " + std::to_string(d));
    }
  }
  // The runs must have trained something: compare with the shared initial state is not available here,
  // so count tensors whose values differ from a fresh single-process run of zero steps, if given.
  if (argc >= 6) {
    auto init = peft::load_safetensors((fs::path(argv[5]) / "rank0.safetensors").string()).tensors;
    double least = 1e9;
    for (const auto& item : ref) {
      if (item.key() == "never_used") continue;
      const double d = (item.value() - init[item.key()]).abs().max().item<double>();
      least = std::min(least, d);
      if (d > 1e-3) ++moved;  // 100x the tolerance: the comparison above means something
    }
    std::cout << "the tensor that moved least moved by " << least << "\n";
    if (moved != static_cast<int64_t>(ref.size()) - (ref.contains("never_used") ? 1 : 0))
      return fail("only " + std::to_string(moved) + " of " + std::to_string(ref.size()) + " tensors moved in training");
  }
  std::cout << "compare: " << world << " ranks bit-identical; largest difference from one process " << worst << "; " << moved
            << " tensors moved\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc < 2) return fail("usage: dist_worker train|compare ...");
    const std::string mode = argv[1];
    if (mode == "train") return train(argc, argv);
    if (mode == "compare") return compare(argc, argv);
    if (mode == "version") return std::cout << peft::detail::torch_version() << "\n", 0;
    return fail("unknown mode " + mode);
  } catch (const peft::dist::DistributedError& e) {
    std::cerr << "dist_worker: DistributedError: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "dist_worker: error: " << e.what() << "\n";
    return 1;
  }
}
