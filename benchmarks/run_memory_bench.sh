#!/usr/bin/env bash
# Peak training memory against its analytic floor, with and without activation checkpointing, at the
# BERT-base shape (seq 512) for batches 2-16: method_bench --no-inference, one process per point, with
# glibc's mmap threshold at 128 KiB so that freed tensors leave the resident set (the RSS peak is the live
# tensors' peak). At batch 16, LoRA q,v plain and checkpointed run in ABBA order for the step-time cost.
# With BF16=1 (a LibTorch with fast bf16 matrix products on this CPU: 2.x on AVX512-BF16 or AMX) it adds
# LoRA q,v on a bf16 frozen base (cast_mixed; float32 adapters), with and without checkpointing, at the
# batches BF16_BATCHES (default 16 8 4 2).
# Writes benchmarks/results/memory_bert-base_cpu<SUFFIX>.jsonl; plot_memory.py draws it and writes the table.
#
#   benchmarks/run_memory_bench.sh [BUILD_DIR [SUFFIX]]     e.g. build-torch2 _libtorch2.11
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
bench=$build/benchmarks/method_bench
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
out=benchmarks/results/memory_bert-base_cpu${2:-}.jsonl
: >"$out"
t0=$(date +%s)
n=0
point() {  # point BATCH REPS METHOD [--checkpointing]
  local batch=$1 reps=$2 method=$3; shift 3
  echo "== [$(($(date +%s) - t0)) s] batch $batch $method $*" >&2
  n=$((n + 1))
  MALLOC_MMAP_THRESHOLD_=131072 "$bench" --config bert-base --seq 512 --batch "$batch" --threads 2 --warmup 0 --reps "$reps" \
    --no-inference --methods "$method" $([ "$method" = full ] || echo --skip-full) "$@" --out "$tmp" --suffix "_$n" >/dev/null
  python3 - "$tmp/method_bench_bert-base_cpu_$n.json" "$batch" "$*" >>"$out" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
for m in j["methods"]:
    print(json.dumps({"batch": int(sys.argv[2]), "seq": j["shape"]["seq"], "checkpointing": j["checkpointing"], "method": m["method"],
                      "base_dtype": j.get("base_dtype", "same"),
                      "step_ms": m["step_ms"], "reps": j["reps"], "peak_mb": m["peak_mb"], "floor_mb": m["floor"]["total_mb"],
                      "floor": m["floor"], "trainable": m["trainable"], "libtorch": j["libtorch"], "date": j["date"],
                      "cpu": j["machine"]["cpu"], "threads": j["threads"]}))
PY
}
# Batch 16: the issue's shape. LoRA plain / checkpointed in ABBA order, full fine-tuning both ways.
# (ONLY_BF16=1: only the bf16-base rows below.)
if [ "${ONLY_BF16:-0}" != 1 ]; then
point 16 2 lora_qv
point 16 2 lora_qv --checkpointing
point 16 1 full
point 16 1 full --checkpointing
point 16 2 lora_qv --checkpointing
point 16 2 lora_qv
# Smaller batches for the peak against batch x seq (BATCHES: which).
for b in ${BATCHES-8 4 2}; do
  point "$b" 1 full
  point "$b" 1 lora_qv
  point "$b" 1 lora_qv --checkpointing
  point "$b" 1 full --checkpointing
done
fi
if [ "${BF16:-0}" = 1 ]; then
  for b in ${BF16_BATCHES-16 8 4 2}; do
    point "$b" 1 lora_qv --base-dtype bfloat16
    point "$b" 1 lora_qv --base-dtype bfloat16 --checkpointing
  done
fi
echo "== [$(($(date +%s) - t0)) s] done" >&2
