#pragma once
/// \file core/checkpoint.hpp
/// Activation checkpointing: run a piece of a model without keeping its intermediate activations and
/// recompute it in backward. What it keeps is its inputs; what it costs is one more forward of the
/// piece. LibTorch's C++ API has no such utility (Python's is torch.utils.checkpoint).
///
///     // a whole model: every transformer block of the zoo (and any CompositeSlot that is a "Block")
///     peft::enable_gradient_checkpointing(*model);
///     // any function of tensors (here a user's module)
///     auto y = peft::checkpoint([mlp](const at::Tensor& x) mutable { return mlp->forward(x); }, x);
///
/// Gradients equal those without checkpointing, bit for bit where the ops are deterministic:
///   - the CPU generator's state (and that of every CUDA device among the inputs) is taken before the
///     forward and put back for the recompute, so dropout draws the same masks; the generators are left
///     as they were after the recompute;
///   - the per-batch context (BatchScope entries: the attention mask, PASTA's special-token positions,
///     input ids) is taken in forward and re-established in the recompute, which the autograd engine may
///     run on another thread;
///   - both runs record a graph (the first one only to find the leaves the function reaches, then drops
///     it), so they choose the same kernels.
/// Gradients reach the inputs and every leaf tensor requiring grad that the function uses, wherever it
/// lives (a block's parameters, a tuner's encoder shared by all layers), as proper edges of the graph:
/// backward() and torch::autograd::grad both work. A captured tensor requiring grad that has a history
/// of its own is refused (pass it as an input). The function runs again in backward: what it captures
/// must still be alive then (capture by value). Autocast state is not carried into the recompute.

#include <peft/core/context.hpp>
#include <peft/core/error.hpp>

#include <ATen/ATen.h>
#include <ATen/core/ivalue.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/functions/accumulate_grad.h>
#include <ATen/SequenceNumber.h>

#include <functional>
#include <unordered_set>
#include <utility>
#include <vector>

namespace peft {

namespace detail {

using CheckpointFn = std::function<std::vector<at::Tensor>(const std::vector<at::Tensor>&)>;

/// What the recompute needs: the function, the generators' states and the batch context.
struct CheckpointState : torch::CustomClassHolder {
  CheckpointFn fn;
  std::vector<bool> input_requires_grad;
  at::Tensor cpu_rng;
  std::vector<std::pair<at::Device, at::Tensor>> cuda_rng;  // per CUDA device among the inputs
  BatchSnapshot context;
  std::vector<at::Tensor> params;  // the leaves requiring grad that fn reached, besides its inputs
  std::vector<at::Tensor> values;  // forward's outputs, until the node takes them
};

/// The leaf tensors requiring grad that the graph of `outputs` reaches, other than `inputs`, walking
/// only nodes created since sequence number `start` (fn's own). A node older than that means fn used
/// a tensor with a history from outside: its gradient could not flow, so that is refused.
inline std::vector<at::Tensor> reached_leaves(const std::vector<at::Tensor>& outputs, const std::vector<at::Tensor>& inputs,
                                              uint64_t start) {
  std::vector<at::Tensor> leaves;
  std::vector<torch::autograd::Node*> stack;
  std::unordered_set<torch::autograd::Node*> seen;
  auto add_leaf = [&](const at::Tensor& v) {
    for (const auto& i : inputs)
      if (i.is_same(v)) return;
    for (const auto& l : leaves)
      if (l.is_same(v)) return;
    leaves.push_back(v);
  };
  for (const auto& o : outputs) {
    if (!o.defined() || !o.requires_grad()) continue;
    if (const auto& g = o.grad_fn()) stack.push_back(g.get());
    else add_leaf(o);  // fn returned a leaf itself
  }
  while (!stack.empty()) {
    auto* node = stack.back();
    stack.pop_back();
    if (!seen.insert(node).second) continue;
    if (auto* acc = dynamic_cast<torch::autograd::AccumulateGrad*>(node)) {
      add_leaf(acc->variable);
      continue;
    }
    if (node->sequence_nr() < start)
      throw StateError(std::string("checkpoint: the function uses a tensor that requires grad and was computed outside it (") +
                       node->name() + "); its gradient cannot flow through the recompute: pass it as an input");
    for (const auto& e : node->next_edges())
      if (e.function) stack.push_back(e.function.get());
  }
  return leaves;
}

/// Sets the generators to the states taken in forward for its lifetime, then back to what they were.
class RngFork {
 public:
  explicit RngFork(const CheckpointState& s) {
    at::Generator cpu = at::detail::getDefaultCPUGenerator();
    cpu_ = cpu.get_state();
    cpu.set_state(s.cpu_rng);
    for (const auto& [device, state] : s.cuda_rng) {
      at::Generator g = at::globalContext().defaultGenerator(device);
      cuda_.emplace_back(device, g.get_state());
      g.set_state(state);
    }
  }
  RngFork(const RngFork&) = delete;
  RngFork& operator=(const RngFork&) = delete;
  ~RngFork() {
    at::Generator cpu = at::detail::getDefaultCPUGenerator();  // a handle: copies share the generator
    cpu.set_state(cpu_);
    for (const auto& [device, state] : cuda_) {
      at::Generator g = at::globalContext().defaultGenerator(device);
      g.set_state(state);
    }
  }

 private:
  at::Tensor cpu_;
  std::vector<std::pair<at::Device, at::Tensor>> cuda_;
};

struct CheckpointFunction : torch::autograd::Function<CheckpointFunction> {
  // The outputs were computed by checkpoint() already (their graph dropped): forward only hands them
  // over and keeps the inputs. `params` are arguments so that the node has edges to them.
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, c10::intrusive_ptr<CheckpointState> state,
                                                at::TensorList inputs, at::TensorList params) {
    (void)params;
    ctx->save_for_backward(inputs.vec());
    auto outputs = std::move(state->values);
    state->values.clear();
    ctx->saved_data["state"] = c10::IValue::make_capsule(std::move(state));
    return outputs;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grads) {
    auto state = c10::static_intrusive_pointer_cast<CheckpointState>(ctx->saved_data["state"].toCapsule());
    const auto saved = ctx->get_saved_variables();
    std::vector<at::Tensor> inputs;
    inputs.reserve(saved.size());
    for (std::size_t i = 0; i < saved.size(); ++i) {
      auto d = saved[i].detach();
      if (state->input_requires_grad[i]) d.requires_grad_(true);
      inputs.push_back(std::move(d));
    }
    std::vector<at::Tensor> outputs;
    {
      RngFork fork(*state);
      BatchScope scope(state->context);
      at::AutoGradMode grad_mode(true);
      outputs = state->fn(inputs);
    }
    torch::autograd::variable_list outs, gouts;
    for (std::size_t i = 0; i < outputs.size() && i < grads.size(); ++i) {
      if (!outputs[i].defined() || !outputs[i].requires_grad() || !grads[i].defined()) continue;
      outs.push_back(outputs[i]);
      gouts.push_back(grads[i]);
    }
    // Targets: the inputs that require grad, then the parameters.
    torch::autograd::variable_list targets;
    for (std::size_t i = 0; i < inputs.size(); ++i)
      if (state->input_requires_grad[i]) targets.push_back(inputs[i]);
    for (const auto& p : state->params) targets.push_back(p);
    torch::autograd::variable_list found(targets.size());
    if (!outs.empty() && !targets.empty())
      found = torch::autograd::grad(outs, targets, gouts, /*retain_graph=*/false, /*create_graph=*/false, /*allow_unused=*/true);
    // One gradient per forward argument: the state (none), each input, each parameter.
    torch::autograd::variable_list result;
    result.reserve(1 + inputs.size() + state->params.size());
    result.emplace_back();
    std::size_t k = 0;
    for (std::size_t i = 0; i < inputs.size(); ++i) result.push_back(state->input_requires_grad[i] ? found[k++] : at::Tensor());
    for (std::size_t i = 0; i < state->params.size(); ++i) result.push_back(found[k++]);
    return result;
  }
};

}  // namespace detail

/// Runs `fn(inputs)` keeping only its inputs; backward recomputes it. Gradients reach the inputs that
/// require grad and every leaf tensor requiring grad that fn uses (a module's parameters, a tuner's
/// shared encoder), found in the graph of this first run, which is then dropped. Outside grad mode it
/// is a plain call.
inline std::vector<at::Tensor> checkpoint(detail::CheckpointFn fn, const std::vector<at::Tensor>& inputs) {
  if (!at::GradMode::is_enabled()) return fn(inputs);
  auto state = c10::make_intrusive<detail::CheckpointState>();
  std::vector<at::Tensor> detached;
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    const auto& t = inputs[i];
    if (!t.defined())
      throw InputError("checkpoint: input " + std::to_string(i) + " is undefined; pass only defined tensors (capture the rest by value)");
    const bool grad = t.requires_grad() && t.is_floating_point();
    state->input_requires_grad.push_back(grad);
    auto d = t.detach();
    if (grad) d.requires_grad_(true);
    detached.push_back(std::move(d));
  }
  state->cpu_rng = at::detail::getDefaultCPUGenerator().get_state();
  for (const auto& t : inputs) {
    if (!t.is_cuda()) continue;
    bool seen = false;
    for (const auto& d : state->cuda_rng) seen = seen || d.first == t.device();
    if (!seen) state->cuda_rng.emplace_back(t.device(), at::globalContext().defaultGenerator(t.device()).get_state());
  }
  state->context = batch_snapshot();
  // The first run records a graph, only to learn which leaves fn reaches (the node's edges); the
  // recompute in backward runs in grad mode too, so both runs pick the same kernels.
  const uint64_t start = at::sequence_number::peek();
  auto outputs = fn(detached);
  state->params = detail::reached_leaves(outputs, detached, start);
  bool any_input = false;
  for (bool g : state->input_requires_grad) any_input = any_input || g;
  if (!any_input && state->params.empty()) return outputs;  // nothing to differentiate
  for (auto& o : outputs) state->values.push_back(o.defined() ? o.variable_data() : o);
  outputs.clear();  // drops the graph and its saved activations
  state->fn = std::move(fn);
  // TensorList, not std::vector: Function::apply counts the tensors of an ArrayRef one by one.
  return detail::CheckpointFunction::apply(state, at::TensorList(inputs), at::TensorList(state->params));
}

/// One input, one output.
inline at::Tensor checkpoint(std::function<at::Tensor(const at::Tensor&)> fn, const at::Tensor& x) {
  auto out = checkpoint([fn = std::move(fn)](const std::vector<at::Tensor>& in) { return std::vector<at::Tensor>{fn(in[0])}; },
                        std::vector<at::Tensor>{x});
  return out[0];
}

}  // namespace peft
