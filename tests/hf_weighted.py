"""PEFT's add_weighted_adapter on the adapters `peft_hf_tests "[.weighted_write]"` wrote.

    python tests/hf_weighted.py <dir>

Loads the LLaMA fixture with transformers, the four adapters a, b, c, d with PEFT, combines them in every
case below with PeftModel.add_weighted_adapter, and writes each result (PEFT's adapter state dict and
config) plus cases.json, for `peft_hf_tests "[.weighted_check]"` to compare with our add_weighted_adapter.
DARE's random pruning is compared at density 1 (no pruning: the sign election of dare_ties still runs);
at lower density its definition is tested in serve_test.cpp.
"""
import json
import os
import sys
import warnings

import torch
import transformers
from peft import PeftModel
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "hf", "models", "llama")
W3 = [0.7, -0.4, 1.3]
CASES = [
    dict(name="linear", adapters=["a", "b", "c"], weights=W3, combination_type="linear"),
    dict(name="single", adapters=["b"], weights=[2.0], combination_type="svd"),
    dict(name="cat", adapters=["a", "d", "c"], weights=W3, combination_type="cat"),
    dict(name="svd", adapters=["a", "d", "c"], weights=W3, combination_type="svd", svd_rank=6),
    dict(name="svd_default_rank", adapters=["a", "d"], weights=[1.0, 0.5], combination_type="svd"),
    dict(name="ties", adapters=["a", "b", "c"], weights=W3, combination_type="ties", density=0.5),
    dict(name="ties_frequency", adapters=["a", "b", "c"], weights=W3, combination_type="ties", density=0.3,
         majority_sign_method="frequency"),
    dict(name="magnitude_prune", adapters=["a", "b", "c"], weights=W3, combination_type="magnitude_prune", density=0.3),
    dict(name="dare_linear", adapters=["a", "b", "c"], weights=W3, combination_type="dare_linear", density=1.0),
    dict(name="dare_ties", adapters=["a", "b", "c"], weights=W3, combination_type="dare_ties", density=1.0),
    dict(name="ties_svd", adapters=["a", "b", "d"], weights=W3, combination_type="ties_svd", density=0.5, svd_rank=4),
    dict(name="magnitude_prune_svd", adapters=["a", "c"], weights=[1.0, 1.0], combination_type="magnitude_prune_svd",
         density=0.5),
]


def main(out):
    warnings.simplefilter("ignore")  # PEFT's notes on embedding layers and density 1
    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM.from_pretrained(FIXTURE, attn_implementation="eager").eval()
    model = PeftModel.from_pretrained(base, os.path.join(out, "a"), adapter_name="a")
    for n in "bcd":
        model.load_adapter(os.path.join(out, n), adapter_name=n)
    for case in CASES:
        kwargs = {k: case[k] for k in ("svd_rank", "density", "majority_sign_method") if k in case}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # density 1: "no pruning will be performed"
            model.add_weighted_adapter(case["adapters"], case["weights"], case["name"],
                                       combination_type=case["combination_type"], **kwargs)
        state = get_peft_model_state_dict(model, adapter_name=case["name"])
        save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(out, f"peft_{case['name']}.safetensors"))
        cfg = model.peft_config[case["name"]]
        with open(os.path.join(out, f"peft_{case['name']}.json"), "w") as f:
            json.dump({"r": cfg.r, "lora_alpha": cfg.lora_alpha, "target_modules": sorted(cfg.target_modules)}, f)
        print(f"{case['name']}: {len(state)} tensors, r={cfg.r}")
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump(CASES, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
