#!/usr/bin/env bash
# CTest hf.smollm2_adapter: SmolLM2 fine-tuned by examples/smollm2_finetune (a few steps) with LoRA, then
# with prefix tuning (started from a phrase's keys and values), each adapter loaded by real PEFT onto
# transformers' LlamaForCausalLM; the logits must be ours. Skipped
# (exit 77) without the pinned venv (scripts/python_env.sh) or the data (scripts/fetch_data.sh).
#   hf_smollm2.sh <smollm2_finetune binary> <repository root> <work dir>
set -euo pipefail
bin=$1 root=$2 work=$3
. "$root/tests/venv.sh"
rm -rf "$work" && mkdir -p "$work"
data=${PEFT_DATA_DIR:-$HOME/.cache/peft-cpp}
for method in lora prefix; do
  set +e
  "$bin" --method $method --steps 2 --lr 5e-3 --train 8 --val 4 --batch 4 --new-tokens 2 --threads 2 \
         --out "$work/$method" --logits-out "$work/$method.safetensors"
  rc=$?
  set -e
  [ $rc -eq 77 ] && exit 77
  [ $rc -eq 0 ] || exit $rc
  "$py" "$root/tests/hf_smollm2.py" "$data/smollm2" "$work/$method" "$work/$method.safetensors"
done
