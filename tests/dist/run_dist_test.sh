#!/usr/bin/env bash
# The data-parallel tests: 2 ranks of tests/dist/dist_worker.cpp over 127.0.0.1 (Gloo).
#   run_dist_test.sh WORKER SOURCE_DIR WORK_DIR SCENARIO PORT
# equivalence      lora, a three-method mix (with gradient accumulation, tiny buckets and a tensor no
#                  backward reaches), and lora with activation checkpointing (the recompute inside backward): after k steps both ranks hold bit-identical parameters, equal (1e-5)
#                  to one process trained on the whole batches; the worker checks the bytes on the wire
# launcher         the same through scripts/peft-launch
# frozen_mismatch  one rank's frozen weights differ: both refuse, naming the problem
# peer_dies        rank 1 exits mid-training: rank 0 fails with DistributedError within seconds, no adapter file
# peer_hangs       rank 1 hangs: rank 0 fails with DistributedError after its 3 s timeout, no adapter file
# bad_environment  a malformed or incomplete torchrun environment, and a rank whose peer never comes:
#                  DistributedError naming the variable / the rendezvous, within the timeout
# torchrun         torchrun --no-python launches the worker (skipped without the pinned .venv)
set -uo pipefail
worker=$1 src=$2 work=$3 scenario=$4 port=$5
dir=$work/$scenario
rm -rf "$dir"; mkdir -p "$dir"
export MASTER_ADDR=127.0.0.1
fail() { echo "FAIL ($scenario): $*" >&2; exit 1; }

# Starts ranks 0..n-1 of WORKER with the given args in the background; their pids in `pids`.
start() {
  local n=$1 log=$2; shift 2
  pids=()
  for ((r = 0; r < n; r++)); do
    RANK=$r LOCAL_RANK=$r WORLD_SIZE=$n MASTER_PORT=$port "$worker" "$@" >"$log.rank$r" 2>&1 &
    pids+=($!)
  done
}
show() { for f in "$1".rank*; do echo "--- $f"; cat "$f"; done; }

case "$scenario" in
  equivalence|launcher)
    for spec in "lora:4:1:$((25 << 20)):0" "mix:3:2:512:0" "lora:3:1:4096:1"; do
      IFS=: read -r method steps acc bucket ckpt <<<"$spec"
      args=(train --method "$method" --steps "$steps" --accumulate "$acc" --bucket-bytes "$bucket" --checkpointing "$ckpt")
      [ "$ckpt" = 1 ] && method=$method-checkpointing
      env -u RANK -u WORLD_SIZE "$worker" "${args[@]}" --steps 0 --out "$dir/$method-init" >/dev/null || fail "$method: initial state"
      env -u RANK -u WORLD_SIZE "$worker" "${args[@]}" --out "$dir/$method-single" >"$dir/$method-single.log" 2>&1 \
        || { cat "$dir/$method-single.log"; fail "$method: one process"; }
      if [ "$scenario" = launcher ]; then
        "$src/scripts/peft-launch" -n 2 --master-port "$port" "$worker" "${args[@]}" --out "$dir/$method-dist" \
          >"$dir/$method-dist.log" 2>&1 || { cat "$dir/$method-dist.log"; fail "$method: peft-launch"; }
      else
        start 2 "$dir/$method-dist" "${args[@]}" --out "$dir/$method-dist"
        for p in "${pids[@]}"; do wait "$p" || { show "$dir/$method-dist"; fail "$method: a rank failed"; }; done
      fi
      port=$((port + 1))
      "$worker" compare "$dir/$method-single" "$dir/$method-dist" 2 "$dir/$method-init" || fail "$method: compare"
      cat "$dir/$method-dist/rank0.json"
      if [ "$method" = lora ]; then
        [ -f "$dir/$method-dist/adapter/adapter_model.safetensors" ] || fail "rank 0 did not save the adapter"
      fi
    done
    ;;
  frozen_mismatch)
    start 2 "$dir/run" train --method lora --steps 2 --perturb-frozen 1 --out "$dir/out"
    for p in "${pids[@]}"; do wait "$p"; rc=$?; [ "$rc" = 2 ] || { show "$dir/run"; fail "a rank exited $rc, expected 2 (DistributedError)"; }; done
    grep -q "frozen weights differ between ranks" "$dir/run.rank0" || { show "$dir/run"; fail "no clear message"; }
    [ ! -e "$dir/out" ] || fail "an output was written"
    grep -h "DistributedError" "$dir"/run.rank0
    ;;
  peer_dies|peer_hangs)
    mode=exit; [ "$scenario" = peer_hangs ] && mode=hang
    t0=$(date +%s%N)
    start 2 "$dir/run" train --method lora --steps 6 --fail-rank 1 --fail-at 3 --fail-mode "$mode" --timeout-ms 3000 --out "$dir/out"
    wait "${pids[0]}"; rc=$?
    t1=$(date +%s%N)
    kill -KILL "${pids[1]}" 2>/dev/null; wait "${pids[1]}" 2>/dev/null
    elapsed=$(((t1 - t0) / 1000000))
    [ "$rc" = 2 ] || { show "$dir/run"; fail "rank 0 exited $rc, expected 2 (DistributedError)"; }
    grep -q "DistributedError: \[peft.distributed\] rank 0 of 2 (gloo): gradient all-reduce" "$dir/run.rank0" || { show "$dir/run"; fail "no clear message"; }
    ((elapsed < 60000)) || fail "rank 0 took ${elapsed} ms to notice"
    [ ! -e "$dir/out" ] || fail "rank 0 left an output behind: $(ls -R "$dir/out")"
    echo "rank 0 failed after ${elapsed} ms (including start-up):"; grep -h "DistributedError" "$dir/run.rank0"
    ;;
  bad_environment)
    expect() {  # expect LOG PATTERN: the worker exited 2 (DistributedError) with PATTERN in its log
      grep -q "$2" "$1" || { cat "$1"; fail "expected '$2'"; }
      grep -h "DistributedError" "$1"
    }
    WORLD_SIZE=2 "$worker" train --out "$dir/o1" >"$dir/1.log" 2>&1; [ $? = 2 ] || fail "RANK unset: exit code"
    expect "$dir/1.log" "WORLD_SIZE=2 but RANK is not set"
    RANK=2 WORLD_SIZE=2 "$worker" train --out "$dir/o2" >"$dir/2.log" 2>&1; [ $? = 2 ] || fail "RANK out of range: exit code"
    expect "$dir/2.log" "RANK='2': expected an integer in \\[0, 1\\]"
    RANK=0 WORLD_SIZE=2 MASTER_PORT=http "$worker" train --out "$dir/o3" >"$dir/3.log" 2>&1; [ $? = 2 ] || fail "bad port: exit code"
    expect "$dir/3.log" "MASTER_PORT='http'"
    t0=$(date +%s%N)
    RANK=0 WORLD_SIZE=2 MASTER_PORT=$port "$worker" train --timeout-ms 2000 --out "$dir/o4" >"$dir/4.log" 2>&1; rc=$?
    elapsed=$((($(date +%s%N) - t0) / 1000000))
    [ $rc = 2 ] || { cat "$dir/4.log"; fail "a missing peer: exit code $rc"; }
    expect "$dir/4.log" "rank 0 of 2: rendezvous at 127.0.0.1:$port (gloo) failed within 2000 ms"
    ((elapsed < 30000)) || fail "a missing peer took ${elapsed} ms"
    for o in o1 o2 o3 o4; do [ ! -e "$dir/$o" ] || fail "$o was written"; done
    ;;
  torchrun)
    tr=$src/.venv/bin/torchrun
    [ -x "$tr" ] || { echo "PEFT_SKIPPED: no $tr (scripts/python_env.sh makes the venv)"; exit 77; }
    # torchrun's agent hosts the rendezvous store in its own torch; an older LibTorch's store client
    # speaks an older protocol (LibTorch 1.13 against torch 2.x times out), so the versions must match.
    ours=$("$worker" version) theirs=$("$src/.venv/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])')
    [ "$ours" = "$theirs" ] || { echo "PEFT_SKIPPED: torchrun is torch $theirs, this build's LibTorch $ours (use scripts/peft-launch)"; exit 77; }
    env -u RANK -u WORLD_SIZE "$worker" train --method lora --steps 3 --out "$dir/single" >/dev/null || fail "one process"
    "$tr" --no-python --nproc-per-node 2 --master-addr 127.0.0.1 --master-port "$port" "$worker" train --method lora --steps 3 \
      --out "$dir/dist" >"$dir/torchrun.log" 2>&1 || { cat "$dir/torchrun.log"; fail "torchrun"; }
    "$worker" compare "$dir/single" "$dir/dist" 2 || fail "compare"
    ;;
  *) fail "unknown scenario" ;;
esac
echo "PASS ($scenario)"
