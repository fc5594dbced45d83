#!/usr/bin/env bash
# The pinned Python environment (git-ignored .venv/) that makes the Hugging Face fixtures, checks our
# adapters with real PEFT and provides LibTorch 2.x for the second build:
#   .venv/              torch, transformers, peft, safetensors, numpy at scripts/python/requirements.txt
#   .venv/peft-0.13/    the oldest PEFT we support (scripts/python/requirements-peft-0.13.txt), used
#                       through PYTHONPATH=.venv/peft-0.13
# Re-running it is a no-op while the pins are satisfied (a stamp holds the requirement files' hash).
# PyPI's Linux torch wheel is the CUDA build (~2.5 GB with its nvidia-* wheels); it runs on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${PEFT_VENV:-.venv}
reqs=(scripts/python/requirements.txt scripts/python/requirements-peft-0.13.txt)
want=$(cat "${reqs[@]}" | sha256sum | cut -d' ' -f1)
stamp="$venv/.peft-pins"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "python env: $venv satisfies the pins"
  exit 0
fi
py=/usr/bin/python3
[ -x "$py" ] || py=$(command -v python3)
if [ ! -x "$venv/bin/python" ]; then
  echo "python env: creating $venv with $($py --version)"
  "$py" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install -r scripts/python/requirements.txt
rm -rf "$venv/peft-0.13"
"${pip[@]}" install --no-deps --target "$venv/peft-0.13" -r scripts/python/requirements-peft-0.13.txt
"$venv/bin/python" - <<'PY'
import peft, torch, transformers
print(f"python env: torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")
PY
echo "$want" > "$stamp"
