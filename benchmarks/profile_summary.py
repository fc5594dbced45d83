#!/usr/bin/env python3
"""Summarizes the Chrome traces that `method_bench --profile DIR` (C++, LibTorch's Kineto profiler) and
`compare_hf_peft.py --profile DIR` (Python, torch.profiler) write: for each trace, per profiled step, the
GPU kernel time, the number of kernels, the span from the first kernel's start to the last one's end
(kernel time / span = how busy the GPU was: a low share means the host did not keep it fed), the CPU
operators dispatched, and the kernels that took the most time. With pairs of traces from both sides
(cpp_*.json beside py_*.json of the same phase) it prints them side by side.

    python3 benchmarks/profile_summary.py DIR [--steps 3] [--top 12] [--out DIR/summary.md]
"""
import argparse
import collections
import glob
import json
import os
import re
import sys


def load(path):
    with open(path) as f:
        j = json.load(f)
    return j["traceEvents"] if isinstance(j, dict) else j


def short(name, width=90):
    name = re.sub(r"\s+", " ", name)
    return name if len(name) <= width else name[: width - 3] + "..."


def summarize(path, steps):
    ev = [e for e in load(path) if e.get("ph") == "X"]
    kernels = [e for e in ev if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    ops = [e for e in ev if e.get("cat") == "cpu_op"]
    runtime = [e for e in ev if e.get("cat") == "cuda_runtime" and "Launch" in e.get("name", "")]
    s = {"file": os.path.basename(path), "kernels": len(kernels) / steps, "ops": len(ops) / steps,
         "launches": len(runtime) / steps}
    if kernels:
        start = min(e["ts"] for e in kernels)
        end = max(e["ts"] + e["dur"] for e in kernels)
        busy = sum(e["dur"] for e in kernels)
        s.update(kernel_ms=busy / 1000 / steps, span_ms=(end - start) / 1000 / steps, busy=busy / max(end - start, 1e-9))
        by = collections.defaultdict(lambda: [0, 0.0])
        for e in kernels:
            by[e["name"]][0] += 1
            by[e["name"]][1] += e["dur"]
        s["top"] = sorted(((v[1] / 1000 / steps, v[0] / steps, k) for k, v in by.items()), reverse=True)
    else:  # a CPU run: operators by inclusive time (nested operators count inside their parents too)
        by = collections.defaultdict(lambda: [0, 0.0])
        for e in ops:
            by[e["name"]][0] += 1
            by[e["name"]][1] += e["dur"]
        s["top"] = sorted(((v[1] / 1000 / steps, v[0] / steps, k) for k, v in by.items()), reverse=True)
    return s


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--steps", type=int, default=3, help="steps (or forwards) recorded in each trace")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    files = sorted(glob.glob(os.path.join(args.dir, "**", "*.json"), recursive=True))
    if not files:
        print(f"no traces under {args.dir}", file=sys.stderr)
        return 1
    rows = {os.path.relpath(f, args.dir): summarize(f, args.steps) for f in files}
    md = ["| trace | kernel ms / step | GPU span ms / step | GPU busy | kernels / step | launches / step | CPU ops / step |",
          "|---|---:|---:|---:|---:|---:|---:|"]
    for name, s in rows.items():
        md.append(f"| {name} | {s.get('kernel_ms', 0):.2f} | {s.get('span_ms', 0):.2f} | {100 * s.get('busy', 0):.0f}% | "
                  f"{s['kernels']:.0f} | {s['launches']:.0f} | {s['ops']:.0f} |")
    for name, s in rows.items():
        md += ["", f"**{name}**: top kernels (ms / step, calls / step)", ""]
        md += [f"- {ms:.3f} ms, {n:.0f}x: `{short(k)}`" for ms, n, k in s["top"][: args.top]]
    text = "\n".join(md) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
