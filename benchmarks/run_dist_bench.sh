#!/usr/bin/env bash
# The data-parallel benchmark: dist_bench on the BERT-base shape under four launches, in interleaved
# rounds (A B C D, then D C B A): one process with 2 threads, one process with 1 thread, 2 ranks of 1
# thread over loopback (peft-launch), 2 ranks of 1 thread in two network namespaces joined by a
# rate-limited link (scripts/dist_netns.sh, root). Writes benchmarks/results/dist_bench_cpu.{jsonl,md}.
#
#   benchmarks/run_dist_bench.sh [BUILD_DIR] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build} rounds=${2:-2}
bench=$build/benchmarks/dist_bench
out=benchmarks/results/dist_bench_cpu.jsonl
all=(full lora_qv lora_all dora_qv ia3 houlsby prefix bitfit pasta capaboost_lora_qv rlrr)
common=(--config bert-base --seq 128 --batch 4 --steps 4 --warmup 1 --out "$out")
: >"$out"
A() { "$bench" "${common[@]}" --threads 2 --label "1 process, 2 threads" --methods "${all[@]}"; }
B() { "$bench" "${common[@]}" --threads 1 --label "1 process, 1 thread" --methods full lora_qv; }
C() { scripts/peft-launch -n 2 --master-port 29850 "$bench" "${common[@]}" --threads 1 --label "2 ranks, loopback" --methods "${all[@]}"; }
D() { scripts/dist_netns.sh --rate 1gbit --delay-ms 0.5 --master-port 29860 -- "$bench" "${common[@]}" --threads 1 \
        --label "2 ranks, two namespaces, 1 Gbit/s" --methods "${all[@]}"; }
t0=$(date +%s)
for ((r = 0; r < rounds; r++)); do
  order=(A B C D); ((r % 2)) && order=(D C B A)
  for f in "${order[@]}"; do echo "== [$(($(date +%s) - t0)) s] round $r: $f" >&2; $f >/dev/null; done
done
python3 - "$out" <<'PY'
import json, statistics, sys, platform, os
rows = [json.loads(l) for l in open(sys.argv[1])]
md = sys.argv[1].replace(".jsonl", ".md")
labels = ["1 process, 2 threads", "1 process, 1 thread", "2 ranks, loopback", "2 ranks, two namespaces, 1 Gbit/s"]
def pooled(label, method):
    v = [t for r in rows if r["label"] == label and r["method"] == method for t in r["step_ms"]]
    return statistics.median(v) if v else None
def wait(label, method):
    v = [r["wait_ms_per_step"] for r in rows if r["label"] == label and r["method"] == method]
    return statistics.median(v) if v else None
methods = list(dict.fromkeys(r["method"] for r in rows))
dist = {r["method"]: r for r in rows if r["world"] == 2}
full = dist["full"]["bytes_all_reduced_per_step"]
r0 = rows[0]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
o = [f"# Data-parallel fine-tuning on the CPU: bytes on the wire and step time\n",
     f"dist_bench, BERT-base shape (hidden 768, 12 layers, vocabulary 30522), seq {r0['seq']}, global batch {r0['global_batch']} "
     f"(2 per rank with 2 ranks), fp32, AdamW; LibTorch {r0['torch']}, Gloo; {os.cpu_count()} cores ({cpu}); {r0['date']}. "
     f"Step = forward + backward (with the gradient all-reduce) + AdamW, all ranks starting together; median of "
     f"{sum(len(r['step_ms']) for r in rows if r['label'] == labels[0] and r['method'] == 'full')} timed steps pooled over interleaved rounds.\n",
     "## Bytes all-reduced per step (each rank's payload)\n",
     "| method | trainable | bytes / step | of full fine-tuning | buckets |", "|---|---:|---:|---:|---:|"]
for m in methods:
    if m in dist:
        d = dist[m]
        o.append(f"| {m} | {d['trainable']:,} | {d['bytes_all_reduced_per_step']:,} | {100 * d['bytes_all_reduced_per_step'] / full:.3f}% | {d['buckets']} |")
o += ["", "Frozen weights never travel: the only other traffic is the trainable parameters broadcast once at the start (the same bytes as one step) and a 96-byte fingerprint of the frozen weights.", "",
      "## Step time, ms (median)\n", "| method | " + " | ".join(labels) + " | speed-up, 2 ranks (loopback) over 1 process with 2 threads / 1 thread | not overlapped all-reduce wait, loopback / 1 Gbit/s |",
      "|---|" + "---:|" * len(labels) + "---:|---:|"]
for m in methods:
    t = [pooled(l, m) for l in labels]
    cell = lambda x: f"{x:,.0f}" if x is not None else ""
    sp = []
    for base in (t[0], t[1]):
        sp.append(f"{base / t[2]:.2f}x" if base and t[2] else "")
    w = [wait(l, m) for l in labels[2:]]
    o.append(f"| {m} | " + " | ".join(cell(x) for x in t) + f" | {sp[0]} / {sp[1]} | " + " / ".join(f"{x:.0f}" if x is not None else "" for x in w) + " |")
open(md, "w").write("\n".join(o) + "\n")
print("\n".join(o))
PY
