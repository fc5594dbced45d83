#!/usr/bin/env bash
# CTest benchmark.compare_quick: benchmarks/compare_hf_peft.py --quick (LoRA and prefix on the tiny LLaMA
# shape, one repetition) against real transformers + PEFT. The script refuses to time anything unless
# both sides load the same checkpoint and compute the same base output and the same greedy tokens.
# Needs the pinned Python environment; without it the test reports skipped (exit 77), not passed.
#   compare_quick.sh <compare_bench binary> <repository root> <work dir>
set -euo pipefail
bench=$1 root=$2 work=$3
. "$root/tests/venv.sh"
rm -rf "$work" && mkdir -p "$work"
"$py" "$root/benchmarks/compare_hf_peft.py" --quick --bench "$bench" --threads 2 --cache "$work/cache" --out "$work/compare"
"$py" - "$work/compare.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
methods = [row["method"] for row in r["rows"]]
assert methods == ["base", "lora_qv", "prefix"], methods
assert r["checks"]["llama-tiny"]["generate_row0_equal"], r["checks"]
for row in r["rows"]:
    assert row["trainable"]["cpp"] == row["trainable"]["python"], row
    for key, cells in row["ratio"].items():
        assert all(v > 0 for v in cells.values()), (row["method"], key, cells)
assert [(m["method"], m["checkpointing"]) for m in r["memory"]] == [("full", False), ("lora_qv", False), ("lora_qv", True)], r["memory"]
assert all(m["cpp_mb"] > 0 and m["python_mb"] > 0 for m in r["memory"]), r["memory"]
print("compare_quick: both sides agree on the model and the trainable counts; every cell timed")
PY
