// CUDA variants of the core tests, each checked against the same computation on the CPU: LoRA math and
// merge, every model of the zoo forward and backward in fp32 and bf16, and every method attached to a
// model that already lives on the GPU (train step, merge, save there and load on the CPU); activation
// checkpointing, the math attention and a bf16 frozen base under float32 LoRA.
// Where no CUDA device is present every case here is skipped (PEFT_SKIP: the runner exits 77).

#include "support/method_battery.hpp"

// Everything below lives in this file's own namespace, so that the test sources can be compiled
// together (CMake's unity build) without their helpers meeting.
namespace peft_tests_cuda {

using namespace peft_test;
namespace M = peft::models;

namespace {

/// At the top of every case: skipped (exit 77) where no CUDA device is present.
#define PEFT_NEEDS_CUDA() \
  if (!torch::cuda::is_available()) PEFT_SKIP("no CUDA device, this test needs one")

const torch::Device kCuda(torch::kCUDA);

/// ‖a − b‖ / ‖b‖ in double on the CPU.
double rel_err(const torch::Tensor& a, const torch::Tensor& b) {
  auto x = a.detach().to(torch::kCPU, torch::kDouble), y = b.detach().to(torch::kCPU, torch::kDouble);
  return ((x - y).norm() / y.norm().clamp_min(1e-30)).item<double>();
}

/// Gradients of the trainable parameters, in registration order, with their names (order, not names,
/// pairs a clone with its original: torch::nn::Sequential's clone renames its children "0", "1", ...).
std::vector<std::pair<std::string, torch::Tensor>> trainable_grads(torch::nn::Module& m) {
  std::vector<std::pair<std::string, torch::Tensor>> g;
  for (const auto& p : m.named_parameters())
    if (p.value().requires_grad()) {
      INFO(p.key());
      REQUIRE(p.value().grad().defined());
      g.emplace_back(p.key(), p.value().grad().detach().to(torch::kCPU, torch::kFloat));
    }
  return g;
}

/// The same parameters train in both, and their gradients agree to `tol` (relative).
void check_same_grads(const std::vector<std::pair<std::string, torch::Tensor>>& got,
                      const std::vector<std::pair<std::string, torch::Tensor>>& want, double tol) {
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < want.size(); ++i) {
    INFO(want[i].first << " / " << got[i].first);
    CHECK(got[i].second.sizes() == want[i].second.sizes());
    CHECK(torch::isfinite(got[i].second).all().item<bool>());
    CHECK(rel_err(got[i].second, want[i].second) < tol);
  }
}

template <class Ptr>
Ptr clone_to(const Ptr& m, torch::Device dev, torch::Dtype dtype = torch::kFloat) {
  auto c = std::dynamic_pointer_cast<typename Ptr::element_type>(m->clone());
  c->to(dev, dtype);
  return c;
}

/// One model of the zoo with LoRA on its attention, and its forward on an input for the device.
struct ZooCase {
  std::string name;
  std::shared_ptr<torch::nn::Module> cpu;
  std::function<torch::Tensor(torch::nn::Module&, torch::Device)> forward;
};

std::vector<ZooCase> zoo() {
  std::vector<ZooCase> z;
  torch::manual_seed(31);
  auto px = torch::randn({2, 1, 28, 28});
  auto vit = std::make_shared<M::ViTForImageClassificationImpl>(tiny_vit());
  peft::attach(*vit, peft::LoraConfig().r(4).lora_alpha(8).target_modules({"query", "value"}).init_lora_weights(false));
  z.push_back({"ViT", vit, [px](torch::nn::Module& m, torch::Device d) {
                 return dynamic_cast<M::ViTForImageClassificationImpl&>(m).forward(px.to(d));
               }});
  auto ids = torch::randint(3, 200, {2, 9});
  auto mask = torch::ones({2, 9}, torch::kLong);
  mask[1].slice(0, 6).zero_();
  auto bert = std::make_shared<M::BertForSequenceClassificationImpl>(tiny_bert());
  peft::attach(*bert, peft::LoraConfig().r(4).lora_alpha(8).target_modules("all-linear").init_lora_weights(false));
  z.push_back({"BERT", bert, [ids, mask](torch::nn::Module& m, torch::Device d) {
                 return dynamic_cast<M::BertForSequenceClassificationImpl&>(m).forward(ids.to(d), mask.to(d));
               }});
  auto lids = torch::randint(3, 100, {2, 7});
  auto lmask = torch::ones({2, 7}, torch::kLong);
  lmask[0].slice(0, 0, 2).zero_();  // left padding
  auto llama = std::make_shared<M::LlamaForCausalLMImpl>(tiny_llama());
  peft::attach(*llama, peft::LoraConfig().r(4).lora_alpha(8).target_modules({"q_proj", "v_proj", "down_proj"}).init_lora_weights(false));
  // The logits of the real tokens: what a padding position computes is unspecified (HF's too), and the
  // CPU and GPU attention kernels fill fully masked rows differently.
  z.push_back({"LLaMA", llama, [lids, lmask](torch::nn::Module& m, torch::Device d) {
                 auto logits = dynamic_cast<M::LlamaForCausalLMImpl&>(m).forward(lids.to(d), lmask.to(d));
                 return logits.index({lmask.to(d).to(torch::kBool)});
               }});
  return z;
}

}  // namespace

TEST_CASE("CUDA: LoRA on a Linear computes what it computes on the CPU, forward and backward", "[cuda][lora]") {
  PEFT_NEEDS_CUDA();
  torch::manual_seed(30);
  torch::nn::Sequential cpu;
  cpu->push_back("fc", peft::Linear(64, 48));
  peft::attach(cpu, peft::LoraConfig().r(8).lora_alpha(16).target_modules({"fc"}).init_lora_weights(false));
  auto gpu = std::dynamic_pointer_cast<torch::nn::SequentialImpl>(cpu->clone());
  gpu->to(kCuda);
  auto x = torch::randn({4, 10, 64});
  auto xc = x.clone().requires_grad_(true), xg = x.to(kCuda).requires_grad_(true);
  auto probe = torch::randn({4, 10, 48});
  auto yc = cpu->forward(xc), yg = gpu->forward(xg);
  CHECK(yg.device().is_cuda());
  CHECK(rel_err(yg, yc) < 1e-5);
  (yc * probe).sum().backward();
  (yg * probe.to(kCuda)).sum().backward();
  CHECK(rel_err(xg.grad(), xc.grad()) < 1e-5);
  auto gc = trainable_grads(*cpu);
  REQUIRE(gc.size() == 2);  // lora_A and lora_B; the frozen weight gets none
  check_same_grads(trainable_grads(*gpu), gc, 1e-5);
  // bf16 on the GPU: bf16 rounding only.
  gpu->to(torch::kBFloat16);
  auto y16 = gpu->forward(x.to(kCuda, torch::kBFloat16));
  CHECK(y16.scalar_type() == torch::kBFloat16);
  CHECK(rel_err(y16, yc) < 2e-2);
}

TEST_CASE("CUDA: the fused RMSNorm and grouped-query attention kernels agree with the formulas", "[cuda][kernels]") {
  PEFT_NEEDS_CUDA();
  namespace F = peft::nn::functional;
  torch::manual_seed(32);
  for (auto dt : {torch::kFloat, torch::kBFloat16}) {
    INFO(c10::toString(dt));
    const double tol = dt == torch::kFloat ? 1e-5 : 2e-2;
    // RMSNorm: LLaMA's formula in double on the CPU against LibTorch's fused kernel on the GPU.
    auto x = torch::randn({3, 7, 64}, torch::kDouble), w = 1 + 0.1 * torch::randn({64}, torch::kDouble);
    auto probe = torch::randn({3, 7, 64}, torch::kDouble);
    auto xr = x.clone().requires_grad_(true), wr = w.clone().requires_grad_(true);
    (F::rms_norm(xr, wr, 1e-6) * probe).sum().backward();
    auto xg = x.to(kCuda, dt).requires_grad_(true), wg = w.to(kCuda, dt).requires_grad_(true);
    auto yg = F::rms_norm(xg, wg, 1e-6);
    CHECK(yg.scalar_type() == dt);
    CHECK(rel_err(yg, F::rms_norm(x, w, 1e-6)) < tol);
    (yg.to(torch::kFloat) * probe.to(kCuda, torch::kFloat)).sum().backward();
    CHECK(rel_err(xg.grad(), xr.grad()) < tol);
    CHECK(rel_err(wg.grad(), wr.grad()) < tol);

    // Grouped-query attention (8 query heads over 2 key/value heads), causal, no mask: in bf16 the flash
    // kernel reads the grouped heads directly; the reference repeats them, in double on the CPU.
    auto q = torch::randn({2, 8, 16, 64}, torch::kDouble), k = torch::randn({2, 2, 16, 64}, torch::kDouble),
         v = torch::randn({2, 2, 16, 64}, torch::kDouble), go = torch::randn({2, 8, 16, 64}, torch::kDouble);
    auto qr = q.clone().requires_grad_(true), kr = k.clone().requires_grad_(true), vr = v.clone().requires_grad_(true);
    (F::attend(qr, kr, vr, {}, true, 0.0) * go).sum().backward();
    auto qg = q.to(kCuda, dt).requires_grad_(true), kg = k.to(kCuda, dt).requires_grad_(true),
         vg = v.to(kCuda, dt).requires_grad_(true);
#if PEFT_HAS_SDPA_GQA
    if (dt == torch::kBFloat16)  // the case is meant to take the grouped path on a recent GPU
      CHECK(at::_fused_sdp_choice(qg, kg, vg, {}, 0.0, true, c10::nullopt, true) > 0);
#endif
    auto og = F::attend(qg, kg, vg, {}, true, 0.0);
    REQUIRE(og.sizes() == q.sizes());
    (og.to(torch::kFloat) * go.to(kCuda, torch::kFloat)).sum().backward();
    CHECK(rel_err(og, F::attend(q, k, v, {}, true, 0.0)) < tol);
    CHECK(rel_err(qg.grad(), qr.grad()) < tol);
    CHECK(rel_err(kg.grad(), kr.grad()) < tol);
    CHECK(rel_err(vg.grad(), vr.grad()) < tol);
    // Rotary embeddings: the GPU's three-kernel form against the rotate-half formula in double on the CPU.
    auto pos = torch::arange(16, torch::kLong);
    const auto rot_cpu = peft::nn::rotary_tables(pos, 64, 10000.0, torch::kDouble);
    const auto rot_gpu = peft::nn::rotary_tables(pos.to(kCuda), 64, 10000.0, dt);
    auto qr2 = q.clone().requires_grad_(true), qg2 = q.to(kCuda, dt).requires_grad_(true);
    (peft::nn::apply_rotary(qr2, rot_cpu) * go).sum().backward();
    auto rg = peft::nn::apply_rotary(qg2, rot_gpu);
    (rg.to(torch::kFloat) * go.to(kCuda, torch::kFloat)).sum().backward();
    CHECK(rel_err(rg, peft::nn::apply_rotary(q, rot_cpu)) < tol);
    CHECK(rel_err(qg2.grad(), qr2.grad()) < tol);
    // One new query over 16 cached keys (decoding): bottom-right causal mask, the repeated path.
    auto q1 = q.narrow(2, 15, 1);
    CHECK(rel_err(F::attend(q1.to(kCuda, dt), kg.detach(), vg.detach(), {}, true, 0.0), F::attend(q1, k, v, {}, true, 0.0)) < tol);
  }
}

TEST_CASE("CUDA: make_adamw fuses its step on the GPU and steps as the CPU loop does", "[cuda][adamw]") {
  PEFT_NEEDS_CUDA();
  torch::manual_seed(33);
  torch::nn::Sequential cpu;
  cpu->push_back("fc", peft::Linear(64, 48));
  peft::attach(cpu, peft::LoraConfig().r(8).lora_alpha(16).target_modules({"fc"}).bias("lora_only").init_lora_weights(false));
  auto gpu = std::dynamic_pointer_cast<torch::nn::SequentialImpl>(cpu->clone());
  gpu->to(kCuda);
  auto oc = peft::train::make_adamw(cpu, 1e-2, 0.1), og = peft::train::make_adamw(gpu, 1e-2, 0.1);
  auto x = torch::randn({16, 64});
  for (int step = 0; step < 5; ++step) {
    oc.zero_grad();
    og.zero_grad();
    cpu->forward(x).pow(2).mean().backward();
    gpu->forward(x.to(kCuda)).pow(2).mean().backward();
    CHECK_FALSE(oc.fuses());
#if PEFT_HAS_FUSED_ADAMW
    CHECK(og.fuses());
#endif
    oc.step();
    og.step();
  }
  // A cloned Sequential names its children "0", "1", ...: pair the parameters by order.
  auto pc = cpu->named_parameters(), pg = gpu->named_parameters();
  REQUIRE(pc.size() == pg.size());
  for (std::size_t i = 0; i < pc.size(); ++i) {
    INFO(pc[i].key() << " / " << pg[i].key());
    CHECK(rel_err(pg[i].value(), pc[i].value()) < 1e-5);
  }
}

TEST_CASE("CUDA: merging and unmerging on the GPU", "[cuda][merge]") {
  PEFT_NEEDS_CUDA();
  for (const auto& cfg : std::vector<std::shared_ptr<peft::AdapterConfig>>{
           std::make_shared<peft::LoraConfig>(peft::LoraConfig().r(4).lora_alpha(8).target_modules({"query", "value"}).init_lora_weights(false)),
           std::make_shared<peft::LoraConfig>(peft::LoraConfig().r(4).lora_alpha(8).use_dora(true).target_modules({"query", "value"})),
           std::make_shared<peft::LoraConfig>(peft::LoraConfig().r(4).use_rslora(true).target_modules({"projection"}).init_lora_weights(false)),
           std::make_shared<peft::IA3Config>(peft::IA3Config().target_modules({"key", "value"})),
           std::make_shared<peft::BitFitConfig>(),
           std::make_shared<peft::RLRRConfig>()}) {
    INFO(cfg->to_json().dump());
    auto vit = make_vit();
    vit->to(kCuda);
    peft::attach(*vit, *cfg);
    randomize_adapters(*vit);
    torch::NoGradGuard g;
    auto px = torch::randn({2, 1, 28, 28}, kCuda);
    auto out = vit->forward(px);
    std::vector<torch::Tensor> before;
    for (auto& p : vit->parameters()) before.push_back(p.clone());
    peft::merge_adapter(*vit);
    CHECK(rel_err(vit->forward(px), out) < 1e-5);
    peft::unmerge_adapter(*vit);
    auto after = vit->parameters();
    // The CPU battery's bound (method_battery.hpp): DoRA's unmerge divides by the merged norm, so it
    // restores W to fp32 rounding, not bit for bit (seen on the H100: 1.6e-6).
    for (std::size_t i = 0; i < before.size(); ++i) CHECK(rel_err(after[i], before[i]) < 1e-5);
    peft::merge_and_unload(*vit);
    CHECK(peft::tunable_slots(*vit).front().slot->adapter_names().empty());
    CHECK(rel_err(vit->forward(px), out) < 1e-5);
  }
}

TEST_CASE("CUDA: every model of the zoo, forward and backward, fp32 and bf16", "[cuda][models]") {
  PEFT_NEEDS_CUDA();
  for (auto& z : zoo()) {
    INFO(z.name);
    auto& cpu = *z.cpu;
    cpu.train(false);
    auto gpu = z.cpu->clone();
    gpu->to(kCuda);
    // fp32: the same numbers as the CPU, forward and the adapters' gradients.
    auto yc = z.forward(cpu, torch::kCPU), yg = z.forward(*gpu, kCuda);
    REQUIRE(yg.device().is_cuda());
    CHECK(rel_err(yg, yc) < 1e-4);
    cpu.zero_grad(), gpu->zero_grad();
    auto probe = torch::randn_like(yc);
    (yc * probe).sum().backward();
    (yg * probe.to(kCuda)).sum().backward();
    auto gc = trainable_grads(cpu);
    REQUIRE(!gc.empty());
    check_same_grads(trainable_grads(*gpu), gc, 1e-3);
    for (const auto& p : gpu->named_parameters()) {
      INFO(p.key());
      CHECK(p.value().grad().defined() == p.value().requires_grad());  // frozen means frozen, on the GPU too
    }
    // bf16: the whole model in bf16 on the GPU, within bf16 rounding of the fp32 result; finite gradients.
    auto g16 = z.cpu->clone();
    g16->to(kCuda, torch::kBFloat16);
    auto y16 = z.forward(*g16, kCuda);
    CHECK(y16.scalar_type() == torch::kBFloat16);
    CHECK(rel_err(y16, yc) < 5e-2);
    (y16.to(torch::kFloat) * probe.to(kCuda)).sum().backward();
    check_same_grads(trainable_grads(*g16), gc, 1e-1);
  }
}

TEST_CASE("CUDA: every method attaches to a model on the GPU, trains, and saves for the CPU", "[cuda][methods]") {
  PEFT_NEEDS_CUDA();
  const auto methods = every_method_on_vit();
  for (const auto& [name, cfg] : methods) {
    INFO(name);
    auto vit = make_vit();
    vit->to(kCuda);
    peft::attach(*vit, *cfg);  // tuners are made on the GPU, where the model is
    for (const auto& p : vit->named_parameters()) {
      INFO(p.key());
      CHECK(p.value().device().is_cuda());
    }
    randomize_adapters(*vit);
    auto px = torch::randn({2, 1, 28, 28});
    // A few AdamW steps on the GPU: the loss goes down, only trainables get gradients.
    vit->train();
    auto opt = peft::train::make_adamw(vit, 1e-2, 0.0);
    auto labels = torch::tensor({3, 7}, torch::kLong).to(kCuda);
    double first = 0, last = 0;
    for (int step = 0; step < 5; ++step) {
      opt.zero_grad();
      auto loss = torch::nn::functional::cross_entropy(vit->forward(px.to(kCuda)), labels);
      loss.backward();
      opt.step();
      (step == 0 ? first : last) = loss.item<double>();
    }
    CHECK(last < first);
    for (const auto& p : vit->named_parameters()) {
      INFO(p.key());
      CHECK(p.value().grad().defined() == p.value().requires_grad());
    }
    vit->eval();
    torch::NoGradGuard g;
    auto out = vit->forward(px.to(kCuda));
    // Saved from the GPU, loaded on the CPU: the same outputs.
    TempDir dir;
    peft::save_adapter(*vit, dir.path());
    auto cpu = make_vit();
    peft::load_adapter(*cpu, dir.path());
    CHECK(rel_err(out, cpu->forward(px)) < 1e-4);
    // And back onto a GPU model.
    auto gpu2 = make_vit();
    gpu2->to(kCuda);
    peft::load_adapter(*gpu2, dir.path());
    CHECK(rel_err(gpu2->forward(px.to(kCuda)), out) < 1e-6);
  }
}

TEST_CASE("CUDA: LLaMA generation with LoRA and with prefixes matches the CPU", "[cuda][generate]") {
  PEFT_NEEDS_CUDA();
  torch::manual_seed(33);
  M::LlamaForCausalLM lm(tiny_llama());
  lm->eval();
  peft::attach(lm, peft::LoraConfig().r(4).target_modules({"q_proj", "v_proj"}).init_lora_weights(false));
  peft::attach(lm, peft::PrefixTuningConfig().num_virtual_tokens(3), "prefix");
  peft::set_adapter(lm, std::vector<std::string>{"default", "prefix"});
  auto gpu = std::dynamic_pointer_cast<M::LlamaForCausalLMImpl>(lm->clone());
  gpu->to(kCuda);
  torch::NoGradGuard g;
  auto ids = torch::randint(3, 100, {2, 5});
  auto o = M::GenerationOptions().max_new_tokens(6);
  CHECK(torch::equal(M::generate(*gpu, ids.to(kCuda), o).cpu(), M::generate(*lm, ids, o)));
  CHECK(rel_err(gpu->forward(ids.to(kCuda)), lm->forward(ids)) < 1e-4);
}

TEST_CASE("CUDA: checkpointing restores the GPU's dropout draws, the lean math attention, a bf16 base under fp32 LoRA",
          "[cuda][memory]") {
  PEFT_NEEDS_CUDA();
  // 1. Checkpointed gradients equal the plain ones on the GPU with dropout on (hidden, attention, LoRA):
  //    the CUDA generator's state is put back for the recompute. A fused kernel may add in another order
  //    from run to run, so the bar is float rounding; another dropout draw is off by far more (checked).
  auto bert_config = tiny_bert();
  REQUIRE(bert_config.hidden_dropout_prob > 0);
  auto ids = torch::tensor({{101, 7, 8, 9, 102, 0}, {101, 12, 13, 102, 20, 102}}, torch::kLong).to(kCuda);
  auto mask = torch::tensor({{1, 1, 1, 1, 1, 0}, {1, 1, 1, 1, 1, 1}}, torch::kLong).to(kCuda);
  auto bert_grads = [&](bool ckpt, uint64_t seed) {
    torch::manual_seed(3);
    M::BertForSequenceClassification bert(bert_config);
    bert->to(kCuda);
    peft::attach(bert, peft::LoraConfig().r(4).lora_dropout(0.2).target_modules({"query", "value", "dense"}));
    torch::manual_seed(4);
    randomize_adapters(*bert);
    if (ckpt) peft::enable_gradient_checkpointing(*bert);
    bert->train();
    torch::manual_seed(seed);
    bert->forward(ids, mask).pow(2).sum().backward();
    return trainable_grads(*bert);
  };
  const auto plain = bert_grads(false, 17);
  check_same_grads(bert_grads(true, 17), plain, 1e-5);
  const auto other_draw = bert_grads(false, 18);
  double largest = 0;
  for (std::size_t i = 0; i < plain.size(); ++i) largest = std::max(largest, rel_err(other_draw[i].second, plain[i].second));
  CHECK(largest > 1e-2);

  // 2. The math attention's autograd function on the GPU: autograd over the plain ops, with the bool
  //    dropout mask drawn as the function draws it (the CUDA generator, reseeded).
  {
    namespace N = peft::nn;
    struct Reset {
      ~Reset() { N::attention_backend() = N::AttentionBackend::automatic; }
    } reset;
    N::attention_backend() = N::AttentionBackend::math;
    const auto opt = torch::TensorOptions().dtype(torch::kDouble).device(kCuda);
    const int64_t B = 2, H = 3, T = 6, D = 4;
    torch::manual_seed(1);
    auto q0 = torch::randn({B, H, T, D}, opt), k0 = torch::randn({B, H, T, D}, opt), v0 = torch::randn({B, H, T, D}, opt);
    auto go = torch::randn({B, H, T, D}, opt);
    auto q = q0.clone().requires_grad_(), k = k0.clone().requires_grad_(), v = v0.clone().requires_grad_();
    torch::manual_seed(5);
    auto out = N::functional::attend(q, k, v, {}, /*causal=*/true, 0.3);
    out.backward(go);
    auto q2 = q0.clone().requires_grad_(), k2 = k0.clone().requires_grad_(), v2 = v0.clone().requires_grad_();
    torch::manual_seed(5);
    auto keep = torch::empty({B, H, T, T}, opt.dtype(torch::kBool)).bernoulli_(0.7);
    auto scores = (torch::matmul(q2, k2.transpose(-2, -1)) / std::sqrt(static_cast<double>(D)))
                      .masked_fill(torch::ones({T, T}, opt.dtype(torch::kBool)).triu(1), N::lowest(torch::kDouble));
    auto ref = torch::matmul(torch::softmax(scores, -1) * keep.to(torch::kDouble) / 0.7, v2);
    ref.backward(go);
    CHECK(rel_err(out, ref) < 1e-12);
    CHECK(rel_err(q.grad(), q2.grad()) < 1e-12);
    CHECK(rel_err(k.grad(), k2.grad()) < 1e-12);
    CHECK(rel_err(v.grad(), v2.grad()) < 1e-12);
  }

  // 3. A bf16 frozen base under float32 LoRA on the GPU, checkpointed: it learns as the float32 base
  //    does, and its adapter file is float32 and loads into a float32 model on the CPU.
  torch::manual_seed(5);
  M::LlamaForCausalLM llama(tiny_llama());
  auto fp32_cpu = std::dynamic_pointer_cast<M::LlamaForCausalLMImpl>(llama->clone());
  auto fp32_gpu = clone_to(llama.ptr(), kCuda);
  llama->to(kCuda);
  const auto cfg = peft::LoraConfig().r(4).lora_alpha(8).target_modules("all-linear").init_lora_weights(false);
  torch::manual_seed(6);
  peft::attach(llama, cfg);
  torch::manual_seed(6);
  peft::attach(*fp32_gpu, cfg);
  peft::cast_mixed(llama, torch::kBFloat16);
  peft::enable_gradient_checkpointing(*llama);
  for (const auto& p : llama->named_parameters()) {
    INFO(p.key());
    CHECK(p.value().is_cuda());
    CHECK(p.value().scalar_type() == (p.value().requires_grad() ? torch::kFloat : torch::kBFloat16));
  }
  auto tokens = torch::randint(0, 100, {4, 12}, torch::kLong).to(kCuda);
  const auto mixed = train_next_token(*llama, tokens, 60), reference = train_next_token(*fp32_gpu, tokens, 60);
  INFO("loss, bfloat16 base: " << mixed.front() << " -> " << mixed.back() << "; float32 base: " << reference.front()
                               << " -> " << reference.back());
  CHECK(mixed.back() < mixed.front() - 0.3);
  CHECK(std::abs(mixed.back() - reference.back()) < 0.05 * reference.back());
  TempDir dir;
  peft::save_adapter(*llama, dir.path());
  for (const auto& item : peft::load_safetensors(dir / "adapter_model.safetensors").tensors) {
    INFO(item.key());
    CHECK(item.value().scalar_type() == torch::kFloat);
  }
  peft::load_adapter(*fp32_cpu, dir.path());
  llama->eval(), fp32_cpu->eval();
  torch::NoGradGuard g;
  CHECK(rel_err(llama->forward(tokens), fp32_cpu->forward(tokens.cpu())) < 3e-2);
}

}  // namespace peft_tests_cuda
