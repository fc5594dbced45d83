"""The other direction: real PEFT loads the adapters our library trained and saved.

    python tests/hf_reverse.py <dir>     (dir: what `peft_hf_tests "[.reverse]"` wrote)

For each case, PeftModel.from_pretrained puts our adapter on the transformers model from the same
fixture checkpoint; its logits (and greedy tokens for LLaMA) must equal ours (atol 1e-4), and PEFT's
merge_and_unload must give the weights our merge gave. Prints one table row per case; exits 1 on any
mismatch. Run with PYTHONPATH=.venv/peft-0.13 for the oldest PEFT we support (its cases only).
"""
import json
import os
import sys
import tempfile

import torch
import peft
import transformers
from peft import PeftModel
from safetensors.torch import load_file

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "hf", "models")
CLASSES = {"ViTForImageClassification": transformers.ViTForImageClassification,
           "BertForSequenceClassification": transformers.BertForSequenceClassification,
           "LlamaForCausalLM": transformers.LlamaForCausalLM}
OLD = int(peft.__version__.split(".")[1]) < 14


def base_model(name):
    path = os.path.join(FIXTURES, name)
    with open(os.path.join(path, "config.json")) as f:
        arch = json.load(f)["architectures"][0]
    return CLASSES[arch].from_pretrained(path, attn_implementation="eager").eval()


def run(model, io):
    keys = ("pixel_values",) if "pixel_values" in io else ("input_ids", "attention_mask", "token_type_ids")
    with torch.no_grad():
        return model(**{k: io[k] for k in keys if k in io}).logits.float()


def main(out):
    torch.set_num_threads(1)
    with open(os.path.join(out, "manifest.json")) as f:
        manifest = json.load(f)
    failures = 0
    print(f"peft {peft.__version__}, transformers {transformers.__version__}, torch {torch.__version__}")
    for name, info in manifest.items():
        if OLD and not info["oldest_peft"]:
            continue
        d = os.path.join(out, name)
        io = load_file(os.path.join(d, "io.safetensors"))
        model = PeftModel.from_pretrained(base_model(info["model"]), os.path.join(d, "adapter")).eval()
        logits = run(model, io)
        diff = (logits - io["ours_logits"]).abs().max().item()
        ok = diff < 1e-4
        tokens = "-"
        if info["causal"]:
            prompt = {"input_ids": io["input_ids"][:1], "attention_mask": io["attention_mask"][:1]}
            with torch.no_grad():
                gen = model.generate(**prompt, max_new_tokens=5, do_sample=False, pad_token_id=0)
            gen = gen[:, prompt["input_ids"].shape[1]:]
            same = gen.shape == io["ours_generated"].shape and bool((gen == io["ours_generated"]).all())
            tokens = "equal" if same else "DIFFER"
            ok = ok and same
        merged = "-"
        if info["merged"]:
            plain = model.merge_and_unload()
            with tempfile.TemporaryDirectory() as tmp:
                plain.save_pretrained(tmp, safe_serialization=True)
                theirs = load_file(os.path.join(tmp, "model.safetensors"))
            ours = load_file(os.path.join(d, "merged", "model.safetensors"))
            worst, missing = 0.0, [k for k in theirs if k not in ours]
            for k, v in theirs.items():
                if k in ours:
                    worst = max(worst, (v.float() - ours[k].float()).abs().max().item())
            merged = f"{worst:.1e}" + (f" ({len(missing)} keys missing: {missing[:3]})" if missing else "")
            ok = ok and worst < 1e-5 and not missing
        print(f"REVERSE | peft {peft.__version__} | {name:<27} | logits {diff:.1e} | tokens {tokens:<6} | merged weights {merged}"
              f" | {'ok' if ok else 'FAILED'}")
        failures += not ok
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
