#!/usr/bin/env python3
"""Renders benchmarks/results/accuracy.json (written by accuracy_bench) or text_accuracy.json (text_bench)
as accuracy against trainable parameters, one point per method, log x: the papers' first figure.

    apt-get install python3-matplotlib
    python3 benchmarks/plot_accuracy.py [benchmarks/results/accuracy.json]   # -> accuracy.png, accuracy.svg
    python3 benchmarks/plot_accuracy.py benchmarks/results/text_accuracy.json
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> int:
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "results", "accuracy.json")
    with open(path) as f:
        data = json.load(f)
    rows = data["results"]
    fig, ax = plt.subplots(figsize=(10, 5.5))
    markers = "osD^v<>pPXh*"
    for i, r in enumerate(rows):
        x, y = r["trainable"], 100 * r["mean"]
        baseline = r["method"] in ("full", "linear")
        ax.scatter([x], [y], marker="s" if baseline else markers[i % len(markers)], s=70,
                   color="black" if baseline else plt.cm.tab20(i % 20), zorder=3,
                   label=f"{r['label']} ({y:.1f}%)")
    full = next((r for r in rows if r["method"] == "full"), None)
    if full:
        ax.axhline(100 * full["mean"], color="gray", linestyle="--", linewidth=1, zorder=1)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("mean test accuracy over tasks (%)")
    tasks = ", ".join(rows[0]["tasks"].keys()) if rows else ""
    machine = data.get("machine", {})
    setting = "all-MiniLM-L6-v2 on real text" if data.get("benchmark") == "text_accuracy" else "Fashion-MNIST VTAB-1k style"
    ax.set_title(
        f"{setting} ({tasks}); {data['protocol']['seeds']} seeds\n"
        f"{machine.get('cpu', '')}, {data.get('threads')} threads, LibTorch {data.get('libtorch')}, {data.get('date')}",
        fontsize=9,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    base = os.path.splitext(path)[0]
    for ext in ("png", "svg"):
        fig.savefig(f"{base}.{ext}", dpi=130)
        print(f"wrote {base}.{ext}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
