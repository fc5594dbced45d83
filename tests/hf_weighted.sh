#!/usr/bin/env bash
# CTest hf.weighted_adapters: our add_weighted_adapter against PEFT's, on the same four adapters (every
# combination type). Needs the pinned Python environment; without it the test reports skipped (77).
#   hf_weighted.sh <peft_hf_tests binary> <repository root> <work dir>
set -euo pipefail
tests_bin=$1 root=$2 work=$3
. "$root/tests/venv.sh"
rm -rf "$work" && mkdir -p "$work"
PEFT_WEIGHTED_DIR="$work" "$tests_bin" "[.weighted_write]"
"$py" "$root/tests/hf_weighted.py" "$work"
PEFT_WEIGHTED_DIR="$work" "$tests_bin" "[.weighted_check]"
