#!/usr/bin/env python3
"""Renders benchmarks/results/memory_bert-base_cpu*.jsonl (benchmarks/run_memory_bench.sh): peak training
memory against batch x sequence length for full fine-tuning and LoRA, with and without activation
checkpointing, each beside its analytic floor (weights + gradients + optimizer state + saved
activations counted from the shapes); and writes the Markdown table beside it.

    apt-get install python3-matplotlib
    python3 benchmarks/plot_memory.py [benchmarks/results/memory_bert-base_cpu.jsonl]   # -> memory_bert-base_cpu.{md,png,svg}
"""
import json
import os
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# (method, checkpointing, frozen base dtype, label, colour)
SERIES = [("full", False, "same", "full fine-tuning", "tab:red"),
          ("full", True, "same", "full fine-tuning + checkpointing", "tab:orange"),
          ("lora_qv", False, "same", "LoRA q,v", "tab:blue"),
          ("lora_qv", True, "same", "LoRA q,v + checkpointing", "tab:green"),
          ("lora_qv", False, "bfloat16", "LoRA q,v, bf16 base", "tab:purple"),
          ("lora_qv", True, "bfloat16", "LoRA q,v, bf16 base + checkpointing", "tab:brown")]


def main() -> int:
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "results", "memory_bert-base_cpu.jsonl")
    rows = [json.loads(line) for line in open(path)]
    stem = path[: -len(".jsonl")]
    first = rows[0]

    def pick(method, ckpt, batch, base="same"):
        return [r for r in rows if r["method"] == method and r["checkpointing"] == ckpt and r["batch"] == batch
                and r.get("base_dtype", "same") == base]

    batches = sorted({r["batch"] for r in rows})
    md = ["# Peak training memory against its analytic floor (BERT-base shape, CPU)", "",
          f"method_bench --config bert-base --seq {first['seq']}, fp32 (bf16 base: the frozen weights in bfloat16 by "
          f"`cast_mixed`, LoRA and its AdamW state in float32), dropout 0.1, AdamW, {first['threads']} threads, "
          f"LibTorch {first['libtorch']}, {first['cpu']}, {first['date']}. Peak: the resident set's growth over two steps "
          "from before the model is built, with MALLOC_MMAP_THRESHOLD_=131072 (freed tensors leave the resident set: the live "
          "tensors' peak). Floor: weights + gradients + AdamW state + the activations backward keeps, counted from the shapes "
          "(method_bench.cpp, `memory_floor`). Step: median; at batch 16 the LoRA rows pool two runs in ABBA order.", "",
          "| batch x seq | method | base | checkpointing | peak MB | floor MB | peak / floor | step ms | peak / full's |",
          "|---:|---|---|---|---:|---:|---:|---:|---:|"]
    for b in sorted(batches, reverse=True):
        full_peak = statistics.median(r["peak_mb"] for r in pick("full", False, b)) if pick("full", False, b) else None
        for method, ckpt, base, label, _ in SERIES:
            rs = pick(method, ckpt, b, base)
            if not rs:
                continue
            peak = statistics.median(r["peak_mb"] for r in rs)
            floor = rs[0]["floor_mb"]
            steps = [r["step_ms"] for r in rs]
            md.append(f"| {b} x {first['seq']} | {method} | {'bf16' if base == 'bfloat16' else 'fp32'} | {'yes' if ckpt else 'no'} | "
                      f"{peak:,.0f} | {floor:,.0f} | {peak / floor:.2f} | {statistics.median(steps):,.0f} | "
                      + (f"{peak / full_peak:.2f} |" if full_peak else " |"))
    lora16 = [r["step_ms"] for r in pick("lora_qv", False, 16)]
    ckpt16 = [r["step_ms"] for r in pick("lora_qv", True, 16)]
    if lora16 and ckpt16:
        md += ["", f"Checkpointing's step-time cost for LoRA at batch 16: {statistics.median(ckpt16):,.0f} / "
                   f"{statistics.median(lora16):,.0f} ms = {statistics.median(ckpt16) / statistics.median(lora16):.2f}x "
                   f"(per run: {', '.join(f'{x:,.0f}' for x in ckpt16)} against {', '.join(f'{x:,.0f}' for x in lora16)})."]
    with open(stem + ".md", "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for method, ckpt, base, label, color in SERIES:
        xs, peaks, floors = [], [], []
        for b in batches:
            rs = pick(method, ckpt, b, base)
            if rs:
                xs.append(b * first["seq"])
                peaks.append(statistics.median(r["peak_mb"] for r in rs) / 1e3)
                floors.append(rs[0]["floor_mb"] / 1e3)
        if not xs:
            continue
        ax.plot(xs, peaks, "o-", color=color, label=f"{label}: measured")
        ax.plot(xs, floors, "--", color=color, alpha=0.6, label=f"{label}: analytic floor")
    ax.set_xlabel("tokens per batch (batch x sequence length 512)")
    ax.set_ylabel("peak training memory, GB")
    ax.set_title(f"BERT-base shape, CPU, LibTorch {first['libtorch']}: peak memory against batch size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5)
    fig.tight_layout()
    fig.savefig(stem + ".png", dpi=120)
    fig.savefig(stem + ".svg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
