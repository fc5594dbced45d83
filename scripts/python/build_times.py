#!/usr/bin/env python3
"""Summaries for scripts/build_times.sh (standard library only).

  build_times.py ninja BUILD_DIR            per-target compile times from BUILD_DIR/.ninja_log
  build_times.py longest BUILD_DIR TEXT      the output with TEXT in its path that took longest
  build_times.py flags BUILD_DIR SOURCE      SOURCE's compile flags (compile_commands.json) for one
                                            more compile: no output, dependency file or prefix header
  build_times.py trace TRACE.json [N]       where a clang -ftime-trace file says the time went: the
                                            phases, the N costliest headers (inclusive) and templates
"""
import collections
import json
import os
import re
import shlex
import subprocess
import sys


def steps_of(build):
    # .ninja_log v5: start_ms end_ms mtime output hash; a rebuilt output appears again (last one wins)
    steps = {}
    with open(f"{build}/.ninja_log") as f:
        for line in f:
            if line.startswith("#"):
                continue
            start, end, _, out, _ = line.rstrip("\n").split("\t")
            steps[out] = (int(start), int(end))
    return steps


def ninja(build):
    steps = steps_of(build)
    per = collections.OrderedDict()
    first = min(s for s, _ in steps.values())
    last = max(e for _, e in steps.values())
    for out, (s, e) in steps.items():
        m = re.search(r"CMakeFiles/([^/]+)\.dir/(.*)$", out)
        if not m:
            continue  # links, symlinks and CTest files: counted in the wall time, not per target
        target, obj = m.group(1), m.group(2)
        t = per.setdefault(target, {"units": 0, "cpu": 0.0, "longest": 0.0, "pch": 0.0})
        sec = (e - s) / 1000.0
        if obj.endswith(".gch"):
            t["pch"] += sec
        else:
            t["units"] += 1
            t["longest"] = max(t["longest"], sec)
        t["cpu"] += sec
    rows = sorted(per.items(), key=lambda kv: -kv[1]["cpu"])
    print("| target | translation units | compile s (sum) | longest unit s | of which PCH s |")
    print("|---|---:|---:|---:|---:|")
    total = 0.0
    for name, t in rows:
        total += t["cpu"]
        print(f"| {name} | {t['units']} | {t['cpu']:.0f} | {t['longest']:.0f} | {t['pch']:.0f} |")
    print(f"| **all** | {sum(t['units'] for _, t in rows)} | **{total:.0f}** | | |")
    print(f"\nfirst step to last: {(last - first) / 1000.0:.0f} s")


def flags(build, source):
    with open(f"{build}/compile_commands.json") as f:
        commands = json.load(f)
    command = next(c["command"] for c in commands if os.path.samefile(c["file"], source))
    out, skip = [], False
    for x in shlex.split(command)[1:]:
        if skip:
            skip = False
        elif x in ("-o", "-c", "-MT", "-MF", "-include"):
            skip = True  # and its argument
        elif x not in ("-MD", "-Winvalid-pch"):
            out.append(x)
    print(" ".join(shlex.quote(x) for x in out))


def trace(path, n=15):
    with open(path) as f:
        events = json.load(f)["traceEvents"]
    totals = {}
    headers = collections.Counter()
    templates = collections.Counter()
    backend = collections.Counter()
    for ev in events:
        name, dur = ev.get("name"), ev.get("dur", 0) / 1e6
        if name and name.startswith("Total "):
            totals[name[len("Total "):]] = dur
        elif name == "Source":
            headers[ev["args"]["detail"]] += dur
        elif name in ("InstantiateFunction", "InstantiateClass"):
            # one name per template: arguments folded, so std::vector<A> and std::vector<B> add up
            templates[re.sub(r"<.*", "<...>", ev["args"]["detail"])] += dur
        elif name in ("OptFunction", "CodeGen Function"):
            backend[ev["args"]["detail"]] += dur
    print("phases (s): " + ", ".join(f"{k} {totals[k]:.1f}" for k in ("Frontend", "Backend", "ExecuteCompiler")
                                     if k in totals))
    print(f"\ncostliest headers (inclusive parse s; a header's time includes what it includes):")
    for h, d in headers.most_common(n):
        print(f"  {d:7.2f}  {re.sub(r'^.*/include/', '', h)}")
    print(f"\ncostliest templates (instantiation s, summed over their arguments; nested ones count in both):")
    for t, d in templates.most_common(n):
        print(f"  {d:7.2f}  {t[:140]}")
    top = backend.most_common(n)
    try:  # the backend names functions by their mangled names
        names = subprocess.run(["c++filt"], input="\n".join(f for f, _ in top), capture_output=True, text=True,
                               check=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        names = [f for f, _ in top]
    print(f"\ncostliest functions in the backend (optimisation and code generation s, those over 50 ms; "
          f"their sum: {sum(backend.values()):.1f}):")
    for (f, d), nm in zip(top, names):
        print(f"  {d:7.2f}  {nm[:140]}")


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "ninja":
        ninja(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "longest":
        steps = {o: e - s for o, (s, e) in steps_of(sys.argv[2]).items() if sys.argv[3] in o}
        print(max(steps, key=steps.get))
    elif len(sys.argv) == 4 and sys.argv[1] == "flags":
        flags(sys.argv[2], sys.argv[3])
    elif len(sys.argv) >= 3 and sys.argv[1] == "trace":
        trace(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 15)
    else:
        sys.exit(__doc__)
