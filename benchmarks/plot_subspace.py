#!/usr/bin/env python3
"""Renders benchmarks/results/subspace.json (written by subspace_bench): the source task's validation
accuracy over the plane of mixtures alpha I_adapter + beta I_lora + (1 - alpha - beta) I_prefix, one
panel per method decoding the mixture (the paper's landscape figure), and the stage-2 scores as % of
full space beside the random-subspace and head-alone controls.

    apt-get install python3-matplotlib
    python3 benchmarks/plot_subspace.py [benchmarks/results/subspace.json]   # -> subspace.png, subspace.svg
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.tri as mtri  # noqa: E402

METHODS = ("adapter", "lora", "prefix")
LABELS = {"adapter": "Houlsby adapter", "lora": "LoRA", "prefix": "prefix"}


def main() -> int:
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "results", "subspace.json")
    with open(path) as f:
        data = json.load(f)
    single = data["single_task"]
    land = single.get("landscape")
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.6), gridspec_kw={"width_ratios": [1, 1, 1, 1.35]})
    if land:
        pts = land["points"]
        a = [p["alpha"] for p in pts]
        b = [p["beta"] for p in pts]
        tri = mtri.Triangulation(a, b)
        lo = min(100 * p[m] for p in pts for m in METHODS)
        hi = max(100 * p[m] for p in pts for m in METHODS)
        for ax, m in zip(axes[:3], METHODS):
            z = [100 * p[m] for p in pts]
            cs = ax.tricontourf(tri, z, levels=12, cmap="viridis", vmin=lo, vmax=hi)
            ax.scatter(a, b, c="white", s=4, alpha=0.5)
            for (x, y, name) in ((1, 0, "I_adapter"), (0, 1, "I_lora"), (0, 0, "I_prefix")):
                ax.scatter([x], [y], marker="*", s=180, color="red", zorder=4, edgecolor="black")
                ax.annotate(name, (x, y), textcoords="offset points", xytext=(-20 if x else 6, 8), fontsize=9)
            ax.set_xlabel("alpha (adapter's code)")
            ax.set_ylabel("beta (LoRA's code)")
            ax.set_title(f"decoded through {LABELS[m]}'s U\n{land['task']} validation accuracy (%)", fontsize=10)
            ax.set_xlim(-0.05, 1.1)
            ax.set_ylim(-0.05, 1.1)
            fig.colorbar(cs, ax=ax, fraction=0.046)
    # Stage 2: % of full space per method, averaged over the tasks, for each setting and control.
    ax = axes[3]
    width = 0.13
    bars = []
    for s_name, s_label in (("single_task", "single"), ("multi_task", "multi")):
        if s_name not in data:
            continue
        st = data[s_name]
        tasks = st["stage2_tasks"]
        for key, label in (("ratio", "subspace z"), ("random_ratio", "random r-dim"), ("probe_ratio", "head alone")):
            vals = [100 * sum(st["stage2"][t][m][key] for t in tasks) / len(tasks) for m in METHODS]
            bars.append((f"{s_label} (r={st['r']}): {label}", vals))
    for i, (label, vals) in enumerate(bars):
        xs = [j + (i - (len(bars) - 1) / 2) * width for j in range(len(METHODS))]
        ax.bar(xs, vals, width=width, label=label, color=plt.cm.tab20(i))
    ax.axhline(100, color="black", lw=0.8)
    ax.set_xticks(range(len(METHODS)))
    ax.set_xticklabels([LABELS[m] for m in METHODS])
    ax.set_ylabel("test accuracy, % of the method's full space")
    ax.set_ylim(40, 110)
    ax.set_title("stage 2: z alone, mean over the stage-2 tasks", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Unified subspace on all-MiniLM-L6-v2 ({data['date']}, LibTorch {data['libtorch']}, {data['threads']} threads)",
                 fontsize=11)
    fig.tight_layout()
    out = os.path.splitext(path)[0]
    fig.savefig(out + ".png", dpi=110)
    fig.savefig(out + ".svg")
    print(f"wrote {out}.png and {out}.svg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
