#!/usr/bin/env python3
"""Fixtures made by the real Hugging Face libraries (transformers and peft, unmodified).

Builds tiny random models from configs (no download), attaches adapters with peft, saves both with
save_pretrained, and records inputs and outputs. The C++ conformance tests (tests/hf_test.cpp) load
each case with our zoo and adapters and must reproduce these outputs and these files.

    tests/fixtures/hf/models/<model>/{config.json, model.safetensors}      transformers' save_pretrained
    tests/fixtures/hf/<peft version>/<case>/adapter/...                    peft's save_pretrained
    tests/fixtures/hf/<peft version>/<case>/io.safetensors                 inputs, base and adapted outputs
    tests/fixtures/hf/<peft version>/manifest.json                         cases, their model, versions

Run in the pinned environment (./scripts/run.sh python-env):
    .venv/bin/python scripts/make_hf_fixtures.py                   # models + newest peft's cases
    PYTHONPATH=.venv/peft-0.13 .venv/bin/python scripts/make_hf_fixtures.py --old   # peft 0.13's cases
"""
import argparse
import json
import os
import shutil

import torch

import peft
import transformers
from peft import (IA3Config, LoraConfig, PeftModel, PrefixTuningConfig, PromptTuningConfig, TaskType,
                  get_peft_model)
from safetensors.torch import save_file

# Paths relative to the repository root (they end up in adapter_config.json's base_model_name_or_path).
REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
ROOT = os.path.join("tests", "fixtures", "hf")
MODELS = os.path.join(ROOT, "models")


# ------------------------------------------------------------------------------------------- models
def model_configs():
    T = transformers
    return {
        "vit": (T.ViTForImageClassification,
                T.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                            image_size=16, patch_size=4, num_channels=3, num_labels=5, qkv_bias=True,
                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)),
        "bert": (T.BertForSequenceClassification,
                 T.BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=64, max_position_embeddings=64, type_vocab_size=2, num_labels=3,
                              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)),
        # grouped-query attention, a non-default rope_theta, untied embeddings
        "llama": (T.LlamaForCausalLM,
                  T.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                rope_theta=5000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
                                bos_token_id=1, eos_token_id=2, pad_token_id=0)),
        # Llama 3.1's rope scaling and a head_dim that is not hidden / heads
        "llama_scaled": (T.LlamaForCausalLM,
                         T.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                       max_position_embeddings=64, rms_norm_eps=1e-5, tie_word_embeddings=False,
                                       rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0,
                                                            low_freq_factor=1.0, high_freq_factor=4.0,
                                                            original_max_position_embeddings=16),
                                       bos_token_id=1, eos_token_id=2, pad_token_id=0)),
        "llama_tied": (T.LlamaForCausalLM,
                       T.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                                     rms_norm_eps=1e-5, tie_word_embeddings=True,
                                     bos_token_id=1, eos_token_id=2, pad_token_id=0)),
    }


def make_models():
    seeds = {"vit": 100, "bert": 101, "llama": 102, "llama_tied": 103, "llama_scaled": 104}
    for name, (cls, cfg) in model_configs().items():
        torch.manual_seed(seeds[name])
        cfg._attn_implementation = "eager"
        model = cls(cfg).eval()
        # Random norms and biases too (a fresh model has ones and zeros there, which hides mistakes).
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith("bias") or "norm" in n.lower():
                    p.add_(0.1 * torch.randn_like(p))
                if n.startswith("classifier"):  # O(1) logits, so that differences are measured against something
                    p.normal_(0.0, 0.5)
        d = os.path.join(MODELS, name)
        shutil.rmtree(d, ignore_errors=True)
        model.save_pretrained(d, safe_serialization=True)
        for junk in ("generation_config.json",):
            if os.path.exists(os.path.join(d, junk)):
                os.remove(os.path.join(d, junk))


def load_model(name):
    cls, _ = model_configs()[name]
    return cls.from_pretrained(os.path.join(MODELS, name), attn_implementation="eager").eval()


# -------------------------------------------------------------------------------------------- inputs
def inputs(name):
    g = torch.Generator().manual_seed(7)
    if name == "vit":
        return {"pixel_values": torch.randn(2, 3, 16, 16, generator=g)}
    ids = torch.randint(3, 96, (2, 7), generator=g)
    mask = torch.ones(2, 7, dtype=torch.int64)
    if name == "bert":
        mask[1, 5:] = 0  # a padded row
        types = torch.zeros(2, 7, dtype=torch.int64)
        types[:, 4:] = 1
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return {"input_ids": ids, "attention_mask": mask}


def outputs(model, x, causal):
    with torch.no_grad():
        out = {"logits": model(**x).logits.float()}
        if causal:
            prompt = {"input_ids": x["input_ids"][:1], "attention_mask": x["attention_mask"][:1]}
            gen = model.generate(**prompt, max_new_tokens=5, do_sample=False, pad_token_id=0)
            out["generated"] = gen[:, prompt["input_ids"].shape[1]:].to(torch.int64)
    return out


# --------------------------------------------------------------------------------------------- cases
def cases(old):
    """name -> (model, peft config factory, init). `init` randomizes what peft initializes to identity."""
    lora_common = dict(init_lora_weights=False, lora_dropout=0.0)
    new = {
        "bert_lora": ("bert", lambda: LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8,
                                                 target_modules=["query", "value"], **lora_common), None),
        "bert_lora_modules_to_save": ("bert", lambda: LoraConfig(r=2, lora_alpha=4, target_modules=["key", "dense"],
                                                                 modules_to_save=["classifier"], **lora_common),
                                      "classifier"),
        "llama_lora_patterns": ("llama", lambda: LoraConfig(
            task_type=TaskType.CAUSAL_LM, r=4, lora_alpha=8, use_rslora=True,
            target_modules=r".*\.(q_proj|v_proj|down_proj)",
            rank_pattern={"down_proj": 2}, alpha_pattern={"v_proj": 3}, **lora_common), None),
        "llama_lora_all_linear": ("llama", lambda: LoraConfig(task_type=TaskType.CAUSAL_LM, r=2, lora_alpha=2,
                                                              target_modules="all-linear", **lora_common), None),
        "llama_lora_embedding": ("llama", lambda: LoraConfig(task_type=TaskType.CAUSAL_LM, r=4, lora_alpha=4,
                                                             target_modules=["embed_tokens", "q_proj"],
                                                             **lora_common), None),
        "llama_scaled_lora": ("llama_scaled", lambda: LoraConfig(task_type=TaskType.CAUSAL_LM, r=4, lora_alpha=8,
                                                                 target_modules=["q_proj", "k_proj", "o_proj"],
                                                                 **lora_common), None),
        "llama_tied_lora": ("llama_tied", lambda: LoraConfig(task_type=TaskType.CAUSAL_LM, r=4, lora_alpha=16,
                                                             target_modules=["q_proj", "o_proj", "gate_proj"],
                                                             **lora_common), None),
        "bert_dora": ("bert", lambda: LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, use_dora=True,
                                                 target_modules=["query", "value", "intermediate.dense"],
                                                 **lora_common), None),
        # transformers 5 renamed ViT's modules at run time (vit.layers.N.attention.q_proj, ...; its
        # checkpoints keep the old names), so PEFT's ViT adapters name them so: only the patch
        # projection keeps its name in both.
        "vit_dora_conv": ("vit", lambda: LoraConfig(r=4, lora_alpha=4, use_dora=True, target_modules=["projection"],
                                                    **lora_common), None),
        "llama_dora_embedding": ("llama", lambda: LoraConfig(task_type=TaskType.CAUSAL_LM, r=4, lora_alpha=8,
                                                             use_dora=True, target_modules=["embed_tokens", "v_proj"],
                                                             **lora_common), None),
        "bert_ia3": ("bert", lambda: IA3Config(task_type=TaskType.SEQ_CLS, target_modules=["key", "value", "output.dense"],
                                               feedforward_modules=["output.dense"], init_ia3_weights=False), None),
        "llama_ia3": ("llama", lambda: IA3Config(task_type=TaskType.CAUSAL_LM, init_ia3_weights=False), None),
        "llama_prompt": ("llama", lambda: PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=4), None),
        "llama_prefix": ("llama", lambda: PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=3), None),
        "bert_prefix": ("bert", lambda: PrefixTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=3), None),
        "llama_tied_prompt": ("llama_tied", lambda: PromptTuningConfig(task_type=TaskType.CAUSAL_LM,
                                                                       num_virtual_tokens=2), None),
        "llama_tied_prefix": ("llama_tied", lambda: PrefixTuningConfig(task_type=TaskType.CAUSAL_LM,
                                                                       num_virtual_tokens=2), None),
    }
    if old:  # the oldest PEFT we support: its files for the common methods
        # (llama_tied: its rope_theta is the default, which transformers 4.x reads from a 5.x config)
        keep = ("bert_lora", "bert_lora_modules_to_save", "bert_dora", "bert_ia3", "llama_tied_lora",
                "llama_tied_prompt", "llama_tied_prefix")
        return {k: v for k, v in new.items() if k in keep}
    return new


def randomize(model, what):
    """Gives adapter parameters that init to identity (IA3 ones, PEFT's fresh prompts are random already)
    and a modules_to_save copy random values, so a wrong mapping cannot pass."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad and ("ia3_l" in n or "lora_magnitude" in n or (what and f"{what}.modules_to_save" in n)):
                p.add_(0.2 * torch.randn_like(p))
            elif p.requires_grad and "lora_B" in n or "lora_embedding_A" in n:  # larger than init=False gives
                p.add_(0.3 * torch.randn_like(p))


def make_case(out, name, model_name, factory, extra):
    base = load_model(model_name)
    x = inputs(model_name)
    causal = model_name.startswith("llama")
    io = {k: v for k, v in x.items()}
    io.update({"base_" + k: v for k, v in outputs(base, x, causal).items()})
    torch.manual_seed(sum(map(ord, name)))
    model = get_peft_model(base, factory())
    randomize(model, extra)
    model.eval()
    io.update({"adapted_" + k: v for k, v in outputs(model, x, causal).items()})
    d = os.path.join(out, name)
    shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(os.path.join(d, "adapter"))
    os.remove(os.path.join(d, "adapter", "README.md"))  # a model card template
    # PEFT round trip: the saved adapter reloads onto a fresh base and gives the same outputs.
    again = PeftModel.from_pretrained(load_model(model_name), os.path.join(d, "adapter")).eval()
    check = outputs(again, x, causal)
    assert torch.allclose(check["logits"], io["adapted_logits"], atol=1e-5), name
    save_file({k: v.contiguous() for k, v in io.items()}, os.path.join(d, "io.safetensors"))
    return {"model": model_name, "causal": causal}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", action="store_true", help="only the cases of the oldest supported peft")
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.chdir(REPO)
    if not args.old:
        make_models()
    out = os.path.join(ROOT, "peft-" + peft.__version__)
    os.makedirs(out, exist_ok=True)
    manifest = {"peft": peft.__version__, "transformers": transformers.__version__,
                "torch": torch.__version__.split("+")[0], "cases": {}}
    for name, (model_name, factory, extra) in cases(args.old).items():
        manifest["cases"][name] = make_case(out, name, model_name, factory, extra)
        print("made", name)
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
