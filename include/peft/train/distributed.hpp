#pragma once
/// \file distributed.hpp
/// Data-parallel fine-tuning across processes and machines on PyTorch's own c10d: Gloo on the CPU,
/// NCCL on CUDA (where this LibTorch build has it and `PEFT_WITH_NCCL` is defined). Launch with
/// `torchrun --no-python --nproc-per-node N ./program ...` or `scripts/peft-launch -n N ./program ...`;
/// the rendezvous reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).
/// Only the trainable parameters travel: rank 0's initial values are broadcast once, and after each
/// backward their gradients are averaged, packed into a few flat buckets whose all-reduce starts while
/// backward is still running. Frozen weights never leave a rank (a fingerprint of them is compared
/// once, so a rank that loaded another checkpoint is refused). Without the environment, or with
/// WORLD_SIZE=1, everything runs unchanged in one process.
///
///     #include <peft/train/distributed.hpp>
///     auto group = peft::dist::Group::from_environment();            // world 1 without torchrun
///     peft::attach(*model, peft::LoraConfig().r(8).target_modules({"query", "value"}));
///     peft::dist::DataParallel dp(*model, group);                    // rank 0's adapter everywhere
///     auto opt = peft::train::make_adamw(*model, 1e-3);
///     for (...) {
///       auto [b, e] = dp.local_rows(global_batch);                    // this rank's rows of the batch
///       auto loss = loss_fn(model->forward(x.slice(0, b, e)), y.slice(0, b, e));   // a mean
///       opt.zero_grad();
///       loss.backward();                                             // gradients averaged on return
///       opt.step();
///     }
///     if (group->is_main()) peft::save_adapter(*model, "out");       // rank 0 alone writes
///
/// This header is opt-in (peft.hpp does not include it): it brings c10d's and Gloo's headers (Debian:
/// libgloo-dev), and no extra library: Gloo and NCCL live inside LibTorch.

#include <peft/core/detail/compat.hpp>
#include <peft/core/error.hpp>
#include <peft/core/model.hpp>
#include <peft/train/train.hpp>

#if !__has_include(<torch/csrc/distributed/c10d/TCPStore.hpp>)
#error "peft/train/distributed.hpp: this LibTorch has no c10d headers (torch/csrc/distributed/c10d)"
#endif
#if !__has_include(<gloo/context.h>)
#error "peft/train/distributed.hpp: Gloo's headers are missing (Debian: apt-get install libgloo-dev)"
#endif
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO
#endif
#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#if defined(PEFT_WITH_NCCL)
#ifndef USE_C10D_NCCL
#define USE_C10D_NCCL
#endif
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <functional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace peft::dist {

/// A collective failed or timed out (a peer died, hung or is unreachable), the rendezvous failed, or
/// the ranks disagree (environment, frozen weights, trainable parameters).
class DistributedError : public Error {
 public:
  explicit DistributedError(const std::string& m) : Error("distributed", m) {}
};

/// Who this process is, from torchrun's environment variables.
struct Environment {
  int rank = 0, world_size = 1, local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  bool agent_store = false;  ///< TORCHELASTIC_USE_AGENT_STORE=True: torchrun's agent hosts the store
  int restart_count = 0;     ///< TORCHELASTIC_RESTART_COUNT: keeps a restarted group's keys apart

  /// Reads the environment. Unset WORLD_SIZE means one process. Malformed or inconsistent values
  /// throw DistributedError naming the variable, what it holds and what was expected.
  static Environment from_env() {
    Environment e;
    auto integer = [](const char* name, int fallback, int lo, int hi) {
      const char* v = std::getenv(name);
      if (!v || !*v) return fallback;
      char* end = nullptr;
      const long x = std::strtol(v, &end, 10);
      if (*end != '\0' || x < lo || x > hi)
        throw DistributedError(std::string("environment variable ") + name + "='" + v + "': expected an integer in [" +
                               std::to_string(lo) + ", " + std::to_string(hi) + "]");
      return static_cast<int>(x);
    };
    e.world_size = integer("WORLD_SIZE", 1, 1, 1 << 20);
    if (e.world_size == 1 && !std::getenv("RANK")) return e;
    if (e.world_size > 1 && !std::getenv("RANK"))
      throw DistributedError("WORLD_SIZE=" + std::to_string(e.world_size) +
                             " but RANK is not set: launch with torchrun or scripts/peft-launch, which set both");
    e.rank = integer("RANK", 0, 0, e.world_size - 1);
    e.local_rank = integer("LOCAL_RANK", e.rank, 0, e.world_size - 1);
    if (const char* a = std::getenv("MASTER_ADDR"); a && *a) e.master_addr = a;
    e.master_port = integer("MASTER_PORT", 29500, 1, 65535);
    if (const char* s = std::getenv("TORCHELASTIC_USE_AGENT_STORE")) e.agent_store = std::string(s) == "True";
    e.restart_count = integer("TORCHELASTIC_RESTART_COUNT", 0, 0, 1 << 20);
    return e;
  }
};

struct GroupOptions {
  /// "auto" (NCCL when `device` is CUDA and this build has it, Gloo otherwise), "gloo" or "nccl".
  std::string backend = "auto";
  /// The device collectives run on: gradients live there. NCCL needs CUDA; Gloo takes CPU tensors
  /// (CUDA tensors are staged through the host by Gloo itself).
  torch::Device device = torch::kCPU;
  /// How long a rendezvous or a collective may wait for the other ranks before it fails.
  std::chrono::milliseconds timeout = std::chrono::minutes(5);
  /// The network interface Gloo binds to; empty: $GLOO_SOCKET_IFNAME, else the address that routes to
  /// MASTER_ADDR (loopback when it is a loopback address, the host's own name otherwise).
  std::string interface;
};

namespace detail {
#if PEFT_TORCH2
using Backend = ::c10d::Backend;
#else
using Backend = ::c10d::ProcessGroup;
#endif
using WorkPtr = decltype(std::declval<Backend&>().allreduce(std::declval<std::vector<at::Tensor>&>()));

inline bool loopback(const std::string& host) {
  return host == "localhost" || host.rfind("127.", 0) == 0 || host == "::1";
}
}  // namespace detail

/// One process group: this rank's place in it, and the collectives the data-parallel wrapper needs,
/// each counting the bytes it hands to the network. With world size 1 there is no backend and every
/// collective is a no-op, so single-process code runs unchanged.
class Group {
 public:
  /// torchrun's environment: one process (no network) when WORLD_SIZE is unset or 1.
  static std::shared_ptr<Group> from_environment(const GroupOptions& o = {}) { return create(Environment::from_env(), o); }

  static std::shared_ptr<Group> create(const Environment& env, const GroupOptions& o = {}) {
    auto g = std::shared_ptr<Group>(new Group());
    g->env_ = env, g->options_ = o;
    if (env.world_size == 1) return g;
    std::string backend = o.backend;
    if (backend == "auto") backend = o.device.is_cuda() && nccl_available() ? "nccl" : "gloo";
    if (backend != "gloo" && backend != "nccl")
      throw DistributedError("backend '" + o.backend + "': expected auto, gloo or nccl");
    if (backend == "nccl" && !nccl_available())
      throw DistributedError("backend 'nccl': this program was built without NCCL (define PEFT_WITH_NCCL in a CUDA build of LibTorch)");
    if (backend == "nccl" && !o.device.is_cuda())
      throw DistributedError("backend 'nccl' needs a CUDA device; got " + o.device.str());
    const std::string where = env.master_addr + ":" + std::to_string(env.master_port);
    try {
      ::c10d::TCPStoreOptions so;
      so.port = static_cast<uint16_t>(env.master_port);
      so.isServer = env.rank == 0 && !env.agent_store;
      so.numWorkers = env.world_size;
      so.waitWorkers = !env.agent_store;
      so.timeout = o.timeout;
#if PEFT_TORCH2
      so.multiTenant = true;
#endif
      auto tcp = c10::make_intrusive<::c10d::TCPStore>(env.master_addr, so);
      auto store = c10::make_intrusive<::c10d::PrefixStore>("peft/" + std::to_string(env.restart_count), tcp);
      g->store_ = store;
      if (backend == "gloo") {
        auto go = ::c10d::ProcessGroupGloo::Options::create(o.timeout);
        std::string iface = o.interface;
        if (iface.empty())
          if (const char* v = std::getenv("GLOO_SOCKET_IFNAME"); v && *v) iface = v;
        if (!iface.empty())
          go->devices.push_back(::c10d::ProcessGroupGloo::createDeviceForInterface(iface));
        else if (detail::loopback(env.master_addr))
          go->devices.push_back(::c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
        else
          go->devices.push_back(::c10d::ProcessGroupGloo::createDefaultDevice());
        g->backend_ = c10::make_intrusive<::c10d::ProcessGroupGloo>(store, env.rank, env.world_size, go);
      } else {
#if defined(PEFT_WITH_NCCL)
        auto no = ::c10d::ProcessGroupNCCL::Options::create();
        no->timeout = o.timeout;
        g->backend_ = c10::make_intrusive<::c10d::ProcessGroupNCCL>(store, env.rank, env.world_size, no);
#endif
      }
    } catch (const DistributedError&) {
      throw;
    } catch (const std::exception& e) {
      throw DistributedError("rank " + std::to_string(env.rank) + " of " + std::to_string(env.world_size) +
                             ": rendezvous at " + where + " (" + backend + ") failed within " +
                             std::to_string(o.timeout.count()) + " ms: " + first_line(e.what()));
    }
    g->name_ = backend;
    return g;
  }

  /// Whether this program was compiled with the NCCL backend.
  static constexpr bool nccl_available() {
#if defined(PEFT_WITH_NCCL)
    return true;
#else
    return false;
#endif
  }

  int rank() const { return env_.rank; }
  int world_size() const { return env_.world_size; }
  int local_rank() const { return env_.local_rank; }
  /// Rank 0: the one that saves, logs and shows progress.
  bool is_main() const { return env_.rank == 0; }
  /// "none" (one process), "gloo" or "nccl".
  const std::string& backend() const { return name_; }
  const GroupOptions& options() const { return options_; }
  const Environment& environment() const { return env_; }

  /// Sums `t` over all ranks in place, asynchronously: wait on the result (or through `wait`).
  detail::WorkPtr all_reduce_async(at::Tensor& t, ::c10d::ReduceOp op = ::c10d::ReduceOp::SUM) {
    if (!backend_) return {};
    std::vector<at::Tensor> v{t};
    ::c10d::AllreduceOptions ao;
    ao.reduceOp = op;
    bytes_all_reduced_ += static_cast<int64_t>(t.numel() * t.element_size());
    try {
      return backend_->allreduce(v, ao);
    } catch (const std::exception& e) {
      throw failure("all-reduce of " + std::to_string(t.numel() * t.element_size()) + " bytes", e);
    }
  }
  /// Waits for `w`, turning a failure or a timeout into a DistributedError that says what failed.
  void wait(const detail::WorkPtr& w, const std::string& what) {
    if (!w) return;
    try {
      w->wait();
    } catch (const std::exception& e) {
      throw failure(what, e);
    }
  }
  void all_reduce(at::Tensor& t, ::c10d::ReduceOp op = ::c10d::ReduceOp::SUM) {
    auto w = all_reduce_async(t, op);
    wait(w, "all-reduce of " + std::to_string(t.numel() * t.element_size()) + " bytes");
  }
  /// Rank `root`'s `t` everywhere.
  void broadcast(at::Tensor& t, int root = 0) {
    if (!backend_) return;
    std::vector<at::Tensor> v{t};
    ::c10d::BroadcastOptions bo;
    bo.rootRank = root;
    bytes_broadcast_ += static_cast<int64_t>(t.numel() * t.element_size());
    const std::string what = "broadcast of " + std::to_string(t.numel() * t.element_size()) + " bytes";
    detail::WorkPtr w;
    try {
      w = backend_->broadcast(v, bo);
    } catch (const std::exception& e) {
      throw failure(what, e);
    }
    wait(w, what);
  }
  /// Returns when every rank has called it (an all-reduce of one number, so it works on every backend).
  void barrier() {
    if (!backend_) return;
    auto t = torch::zeros({1}, torch::TensorOptions().device(options_.device));
    std::vector<at::Tensor> v{t};
    detail::WorkPtr w;
    try {
      w = backend_->allreduce(v);
    } catch (const std::exception& e) {
      throw failure("barrier", e);
    }
    wait(w, "barrier");
  }

  /// A barrier through the rendezvous store with its own timeout, for waits longer than a collective
  /// may take: e.g. the other ranks waiting while rank 0 downloads or prepares files.
  void barrier(std::chrono::milliseconds timeout) {
    if (!store_) return;
    const std::string key = "barrier/" + std::to_string(barriers_++);
    try {
      if (store_->add(key, 1) == env_.world_size) store_->set(key + "/done", std::vector<uint8_t>{1});
      store_->wait({key + "/done"}, timeout);
    } catch (const std::exception& e) {
      throw failure("barrier (" + std::to_string(timeout.count()) + " ms)", e);
    }
  }

  /// Bytes handed to all-reduce / broadcast so far by this rank (payload, as DDP counts it).
  int64_t bytes_all_reduced() const { return bytes_all_reduced_; }
  int64_t bytes_broadcast() const { return bytes_broadcast_; }

 private:
  Group() = default;
  static std::string first_line(const std::string& s) {
    // c10::Error carries a C++ backtrace after the first lines; the message is enough here.
    std::istringstream in(s);
    std::string line, out;
    for (int i = 0; i < 3 && std::getline(in, line); ++i) {
      if (line.rfind("Exception raised from", 0) == 0 || line.rfind("frame #", 0) == 0) break;
      out += (out.empty() ? "" : " ") + line;
    }
    return out;
  }
  DistributedError failure(const std::string& what, const std::exception& e) const {
    return DistributedError("rank " + std::to_string(env_.rank) + " of " + std::to_string(env_.world_size) + " (" + name_ +
                            "): " + what + " failed (a peer died, hung past the " + std::to_string(options_.timeout.count()) +
                            " ms timeout, or is unreachable): " + first_line(e.what()));
  }

  Environment env_;
  GroupOptions options_;
  std::string name_ = "none";
  c10::intrusive_ptr<detail::Backend> backend_;
  c10::intrusive_ptr<::c10d::Store> store_;
  int64_t barriers_ = 0;
  int64_t bytes_all_reduced_ = 0, bytes_broadcast_ = 0;
};

struct DataParallelOptions {
  /// Gradients are packed into flat buckets of about this size (DDP's default: 25 MiB); a bucket's
  /// all-reduce starts as soon as its last gradient is ready, while backward goes on.
  int64_t bucket_bytes = 25LL << 20;
  /// Start from rank 0's trainable parameters (the adapters' random init differs between ranks).
  bool broadcast_parameters = true;
  /// Compare a fingerprint of the frozen weights (count, size, sum, norm) across ranks once: a rank
  /// that loaded another checkpoint is refused instead of silently training a different model.
  bool check_frozen = true;
};

/// Makes one model's trainable parameters data-parallel over a Group. While it lives, every
/// `backward()` that reaches them ends with their gradients averaged over the ranks (each rank's loss
/// should be a mean over the same number of rows: then the average is the gradient of the whole
/// batch). Gradients of parameters a backward did not reach count as zeros, so every rank runs the
/// same collectives in the same order. Gradient accumulation: backward inside `no_sync()` stays local;
/// the next synchronised backward averages the accumulated sum.
class DataParallel {
 public:
  struct Stats {
    int64_t parameters = 0;          ///< trainable tensors
    int64_t numel = 0;               ///< their elements
    int64_t buckets = 0;
    int64_t bytes_per_step = 0;      ///< gradient bytes all-reduced by each synchronised backward
    int64_t broadcast_bytes = 0;     ///< bytes broadcast at construction
    int64_t steps = 0;               ///< synchronised backwards so far
    double wait_seconds = 0;         ///< time spent waiting for all-reduces after backward (not overlapped)
  };

  DataParallel(ModelRef model, std::shared_ptr<Group> group, DataParallelOptions o = {})
      : group_(std::move(group)), options_(o) {
    if (!group_) throw DistributedError("DataParallel: no group");
    params_ = train::trainable_parameters(model);
    stats_.parameters = static_cast<int64_t>(params_.size());
    for (const auto& p : params_) {
      stats_.numel += p.numel();
      if (p.is_sparse()) throw DistributedError("DataParallel: sparse parameters are not supported");
    }
    if (group_->world_size() == 1) return;  // one process: nothing to synchronise
    if (params_.empty()) throw DistributedError("DataParallel: the model has no trainable parameters");
    // Buckets in reverse registration order (backward reaches the last layers first), one dtype and
    // device each.
    std::vector<size_t> order(params_.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = order.size() - 1 - i;
    slot_.assign(params_.size(), {0, 0});
    for (size_t i : order) {
      const auto& p = params_[i];
      const int64_t bytes = p.numel() * static_cast<int64_t>(p.element_size());
      if (buckets_.empty() || buckets_.back().dtype != p.scalar_type() || buckets_.back().device != p.device() ||
          (buckets_.back().bytes > 0 && buckets_.back().bytes + bytes > options_.bucket_bytes))
        buckets_.push_back(Bucket{p.scalar_type(), p.device(), 0, 0, {}, {}, {}});
      auto& b = buckets_.back();
      slot_[i] = {buckets_.size() - 1, b.params.size()};
      b.params.push_back(i);
      b.offsets.push_back(b.numel);
      b.numel += p.numel();
      b.bytes += bytes;
    }
    for (auto& b : buckets_) {
      b.flat = torch::empty({b.numel}, torch::TensorOptions().dtype(b.dtype).device(b.device));
      stats_.bytes_per_step += b.bytes;
    }
    stats_.buckets = static_cast<int64_t>(buckets_.size());
    check_ranks_agree(model);
    if (options_.broadcast_parameters) broadcast_parameters();
    install_hooks();
  }
  ~DataParallel() { remove_hooks(); }
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  Group& group() { return *group_; }
  const Stats& stats() const { return stats_; }

  /// This rank's rows [begin, end) of a global batch of `n` rows: an equal share each, so that the
  /// mean of the ranks' mean losses is the mean over the batch. `n` must divide by the world size.
  std::pair<int64_t, int64_t> local_rows(int64_t n) const {
    const int64_t w = group_->world_size();
    if (n % w != 0)
      throw DistributedError("global batch of " + std::to_string(n) + " rows does not divide among " + std::to_string(w) +
                             " ranks: use a multiple of the world size");
    const int64_t k = n / w;
    return {group_->rank() * k, (group_->rank() + 1) * k};
  }

  /// While the returned guard lives, backward accumulates gradients locally (no communication).
  class NoSync {
   public:
    explicit NoSync(DataParallel& d) : d_(&d), prev_(d.no_sync_.exchange(true)) {}
    ~NoSync() { d_->no_sync_.store(prev_); }
    NoSync(const NoSync&) = delete;
    NoSync& operator=(const NoSync&) = delete;

   private:
    DataParallel* d_;
    bool prev_;
  };
  NoSync no_sync() { return NoSync(*this); }

  /// Averages the current gradients now. backward() does this by itself; call it after computing
  /// gradients some other way (e.g. assigning `.grad()` directly).
  void synchronize() {
    if (group_->world_size() == 1) return;
    std::lock_guard<std::mutex> lock(mutex_);
    if (!in_round_) begin_round();
    finish_round();
  }

 private:
  struct Bucket {
    at::ScalarType dtype;
    torch::Device device;
    int64_t numel = 0, bytes = 0;
    std::vector<size_t> params;   // indices into params_
    std::vector<int64_t> offsets; // element offsets in flat
    at::Tensor flat;
    size_t pending = 0;
    detail::WorkPtr work;
  };

  struct PostHook : torch::autograd::FunctionPostHook {
    std::function<void()> fn;
    explicit PostHook(std::function<void()> f) : fn(std::move(f)) {}
    torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                              const torch::autograd::variable_list& /*inputs*/) override {
      fn();
      return outputs;
    }
  };

  at::Tensor view(size_t i) {
    auto& b = buckets_[slot_[i].first];
    const auto& p = params_[i];
    return b.flat.narrow(0, b.offsets[slot_[i].second], p.numel()).view(p.sizes());
  }

  void check_ranks_agree(ModelRef model) {
    // [trainable tensors, trainable elements, frozen tensors, frozen elements, frozen sum, frozen norm²]
    std::vector<double> f(6, 0.0);
    f[0] = static_cast<double>(stats_.parameters), f[1] = static_cast<double>(stats_.numel);
    if (options_.check_frozen) {
      torch::NoGradGuard ng;
      std::vector<at::Tensor> sums, sq;
      for (const auto& p : model->parameters(true))
        if (!p.requires_grad()) {
          f[2] += 1, f[3] += static_cast<double>(p.numel());
          if (p.numel() == 0 || !p.is_floating_point()) continue;
          sums.push_back(p.sum().to(torch::kDouble));
          sq.push_back(p.norm().to(torch::kDouble).pow(2));
        }
      if (!sums.empty()) {
        f[4] = torch::stack(sums).sum().cpu().item<double>();
        f[5] = torch::stack(sq).sum().cpu().item<double>();
      }
    }
    auto lo = torch::tensor(f, torch::kDouble).to(group_->options().device), hi = lo.clone();
    group_->all_reduce(lo, ::c10d::ReduceOp::MIN);
    group_->all_reduce(hi, ::c10d::ReduceOp::MAX);
    lo = lo.cpu(), hi = hi.cpu();
    auto a = lo.accessor<double, 1>(), b = hi.accessor<double, 1>();
    if (a[0] != b[0] || a[1] != b[1])
      throw DistributedError("rank " + std::to_string(group_->rank()) + ": the ranks' trainable parameters differ (" +
                             std::to_string(static_cast<int64_t>(a[0])) + " to " + std::to_string(static_cast<int64_t>(b[0])) +
                             " tensors, " + std::to_string(static_cast<int64_t>(a[1])) + " to " +
                             std::to_string(static_cast<int64_t>(b[1])) + " elements): attach the same adapters on every rank");
    if (!options_.check_frozen) return;
    auto close = [](double x, double y) { return std::abs(x - y) <= 1e-5 * std::max({1.0, std::abs(x), std::abs(y)}); };
    if (a[2] != b[2] || a[3] != b[3] || !close(a[4], b[4]) || !close(a[5], b[5])) {
      std::ostringstream m;
      m.precision(10);
      m << "rank " << group_->rank() << ": the frozen weights differ between ranks (" << a[3] << " to " << b[3]
        << " elements, sum " << a[4] << " to " << b[4] << ", squared norm " << a[5] << " to " << b[5]
        << "): every rank must load the same base model";
      throw DistributedError(m.str());
    }
  }

  void broadcast_parameters() {
    torch::NoGradGuard ng;
    for (auto& b : buckets_) {
      for (size_t j = 0; j < b.params.size(); ++j) view(b.params[j]).copy_(params_[b.params[j]]);
      group_->broadcast(b.flat, 0);
      for (size_t j = 0; j < b.params.size(); ++j) params_[b.params[j]].copy_(view(b.params[j]));
    }
    stats_.broadcast_bytes = group_->bytes_broadcast();
  }

  void install_hooks() {
    for (size_t i = 0; i < params_.size(); ++i) {
      auto acc = torch::autograd::impl::grad_accumulator(params_[i]);
      if (!acc) throw DistributedError("DataParallel: trainable parameter " + std::to_string(i) + " has no gradient accumulator");
      const auto key = acc->add_post_hook(std::make_unique<PostHook>([this, i] { on_grad_ready(i); }));
      hooks_.emplace_back(acc, key);
    }
  }
  void remove_hooks() {
    for (auto& [acc, key] : hooks_) acc->del_post_hook(key);
    hooks_.clear();
  }

  void begin_round() {
    ready_.assign(params_.size(), false);
    for (auto& b : buckets_) b.pending = b.params.size(), b.work = {};
    next_launch_ = 0;
    in_round_ = true;
  }

  // Called by autograd right after parameter i's gradient was accumulated into .grad().
  void on_grad_ready(size_t i) {
    if (no_sync_.load()) return;
    std::lock_guard<std::mutex> lock(mutex_);
    if (!in_round_) {
      begin_round();
      torch::autograd::Engine::get_default_engine().queue_callback([this] {
        std::lock_guard<std::mutex> l(mutex_);
        finish_round();
      });
    } else if (ready_[i]) {
      in_round_ = false;
      throw DistributedError("rank " + std::to_string(group_->rank()) +
                             ": a previous backward did not finish its gradient all-reduce (an error inside it?); the ranks "
                             "are out of step: restart the group");
    }
    if (stage(i) == 0) launch_ready();
  }

  // Copies parameter i's gradient (zero when it has none) into its bucket; returns the bucket's pending count.
  size_t stage(size_t i) {
    torch::NoGradGuard ng;
    ready_[i] = true;
    const auto& g = params_[i].grad();
    if (g.defined()) view(i).copy_(g);
    else view(i).zero_();
    return --buckets_[slot_[i].first].pending;
  }

  // Launches ready buckets strictly in index order: every rank issues the same collectives in the same order.
  void launch_ready() {
    while (next_launch_ < buckets_.size() && buckets_[next_launch_].pending == 0) {
      auto& b = buckets_[next_launch_];
      b.flat.div_(group_->world_size());
      b.work = group_->all_reduce_async(b.flat);
      ++next_launch_;
    }
  }

  void finish_round() {
    torch::NoGradGuard ng;
    try {
      for (size_t i = 0; i < params_.size(); ++i)
        if (!ready_[i]) stage(i);  // not reached by this backward: its current gradient (or zero) takes part
      launch_ready();
      const auto t0 = std::chrono::steady_clock::now();
      for (size_t k = 0; k < buckets_.size(); ++k)
        group_->wait(buckets_[k].work, "gradient all-reduce of bucket " + std::to_string(k) + " (" +
                                           std::to_string(buckets_[k].bytes) + " bytes)");
      stats_.wait_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    } catch (...) {
      in_round_ = false;
      throw;
    }
    for (size_t i = 0; i < params_.size(); ++i) {
      auto& p = params_[i];
      if (p.grad().defined()) p.mutable_grad().copy_(view(i));
      else p.mutable_grad() = view(i).clone();
    }
    for (auto& b : buckets_) b.work = {};
    in_round_ = false;
    ++stats_.steps;
  }

  std::shared_ptr<Group> group_;
  DataParallelOptions options_;
  std::vector<at::Tensor> params_;
  std::vector<std::pair<size_t, size_t>> slot_;  // parameter -> (bucket, position in bucket)
  std::vector<Bucket> buckets_;
  std::vector<std::pair<std::shared_ptr<torch::autograd::Node>, uintptr_t>> hooks_;
  std::vector<bool> ready_;
  size_t next_launch_ = 0;
  bool in_round_ = false;
  std::atomic<bool> no_sync_{false};
  std::mutex mutex_;
  Stats stats_;
};

}  // namespace peft::dist
