"""Loads an adapter that our smollm2_finetune trained and saved onto transformers' SmolLM2 with real PEFT
and checks that the logits equal the ones our model wrote, and that the adapter changed them.
    hf_smollm2.py <model dir> <adapter dir> <logits.safetensors>"""
import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

model_dir, adapter_dir, logits_file = sys.argv[1:4]
ours = load_file(logits_file)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
model = PeftModel.from_pretrained(model, adapter_dir).eval()
with torch.no_grad():
    theirs = model(ours["input_ids"]).logits
    with model.disable_adapter():
        base = model(ours["input_ids"]).logits
err = (theirs - ours["logits"]).abs().max().item()
moved = (base - ours["logits"]).abs().max().item()
kind = model.peft_config["default"].peft_type.value
print(f"SmolLM2 + our {kind} adapter in HF PEFT {__import__('peft').__version__}: max |logit difference| {err:.2e}; "
      f"the adapter moved the logits by up to {moved:.2e}")
assert err < 2e-3, f"logits differ by {err}"
assert moved > 20 * err, f"the adapter barely changed the logits ({moved} vs error {err})"
print("ok")
