#!/usr/bin/env python3
"""Side by side with Hugging Face transformers + PEFT: the same methods on the same checkpoint (one
model.safetensors that both sides load), the same batches, threads, dtype and torch, in one run.

The C++ side is benchmarks/compare_bench, built against the LibTorch inside the torch wheel this script
imports (scripts/run.sh builds it in build-torch2/), so both sides run the very same kernels:

    .venv/bin/python benchmarks/compare_hf_peft.py                       # CPU, every table (about 40 min on 2 cores)
    .venv/bin/python benchmarks/compare_hf_peft.py --device cuda --dtype bfloat16 --out benchmarks/results/compare_hf_peft_cuda
    .venv/bin/python benchmarks/compare_hf_peft.py --quick --out /tmp/c  # a smoke run (CTest)

Every measurement runs in a fresh process on each side (this script re-invoked with --worker for
PEFT, compare_bench for C++); the two sides alternate which goes first from one (config, method) group
to the next. A group times, for one method: the training step (forward, loss, backward, AdamW) at
each --train-batches, then inference (forward under no_grad) at each --infer-batches unmerged and,
for LoRA, DoRA and IA3, merged, and for LLaMA shapes greedy generation of --gen-tokens with the KV
cache. Each side reports its raw times; this script takes the medians the same way for both. Peak
memory: two training steps of LoRA and of full fine-tuning in a fresh process each, peak RSS growth
from before the checkpoint is loaded (CUDA: the caching allocator's peak). Writes <out>.json and
<out>.md with the ratio C++ / PEFT for every cell.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# name: (architecture, Hugging Face config, sequence length, warm-up, repetitions)
CONFIGS = {
    # tests/fixtures' tiny LLaMA shape (method_bench's llama-tiny): overhead-bound
    "llama-tiny": ("llama", dict(vocab_size=2048, hidden_size=256, num_hidden_layers=2, num_attention_heads=8,
                                 num_key_value_heads=2, intermediate_size=688, tie_word_embeddings=False), 128, 2, 7),
    # SmolLM2-135M's shape (random weights: timing does not depend on their values)
    "smollm2-135m": ("llama", dict(vocab_size=49152, hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                                   num_key_value_heads=3, intermediate_size=1536, tie_word_embeddings=True,
                                   rope_theta=100000.0, rms_norm_eps=1e-5), 64, 1, 3),
    # BERT-base (12 x 768), encoder without the pooler
    "bert-base": ("bert", dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                               intermediate_size=3072, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0), 128, 1, 3),
}
METHODS = ["lora_qv", "lora_all", "dora_qv", "ia3", "prefix"]
MERGEABLE = {"lora_qv", "lora_all", "dora_qv", "ia3"}


# ---------------------------------------------------------------------------------------------------
# The Python side (runs in its own process: --worker)


def rss_bytes(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak_rss():
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peft_config(method, arch):
    from peft import IA3Config, LoraConfig, PrefixTuningConfig

    llama = arch == "llama"
    qv = ["q_proj", "v_proj"] if llama else ["query", "value"]
    task = "CAUSAL_LM" if llama else "FEATURE_EXTRACTION"
    lora = dict(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=qv, init_lora_weights=False, task_type=task)
    if method == "lora_qv":
        return LoraConfig(**lora)
    if method == "lora_all":
        return LoraConfig(**{**lora, "target_modules": "all-linear"})
    if method == "dora_qv":
        return LoraConfig(**lora, use_dora=True)
    if method == "ia3":
        kv = r".*\.(k_proj|v_proj|down_proj)" if llama else r".*\.(key|value)|.*layer\.\d+\.output\.dense"
        ffn = r".*\.down_proj" if llama else r".*layer\.\d+\.output\.dense"
        return IA3Config(target_modules=kv, feedforward_modules=ffn, task_type=task)
    if method == "prefix":
        return PrefixTuningConfig(num_virtual_tokens=20, task_type=task)
    raise ValueError(method)


def worker(spec):
    import torch
    import transformers
    import peft  # noqa: F401  (imported before the memory baseline, as LibTorch is on the C++ side)

    torch.set_num_threads(spec["threads"])
    device, cuda = spec["device"], spec["device"].startswith("cuda")
    dtype = torch.bfloat16 if spec["dtype"] == "bfloat16" else torch.float32
    arch, method, seq = spec["arch"], spec["method"], spec["seq"]
    llama = arch == "llama"
    out = {"side": "python", "method": method, "torch": torch.__version__, "threads": torch.get_num_threads()}

    def load():
        if llama:
            m = transformers.LlamaForCausalLM.from_pretrained(spec["model"], dtype=dtype)
        else:
            m = transformers.BertModel.from_pretrained(spec["model"], dtype=dtype, add_pooling_layer=False)
        m = m.to(device)
        for p in m.parameters():
            p.requires_grad_(False)
        if spec.get("checkpointing"):  # what PEFT's recipes turn on; non-reentrant: frozen inputs are fine
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if method == "full":
            for p in m.parameters():
                p.requires_grad_(True)
        elif method != "base":
            from peft import get_peft_model

            m = get_peft_model(m, peft_config(method, arch))
        return m

    vocab = None

    def tokens(batch, length):
        torch.manual_seed(0)
        ids = torch.randint(3, vocab, (batch, length), dtype=torch.long)
        if not llama and vocab > 102:
            ids[:, 0], ids[:, -1] = 101, 102
        return ids.to(device)

    def loss(m, ids):
        if llama:
            logits = m(input_ids=ids).logits
            return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
        return m(input_ids=ids).last_hidden_state.float().pow(2).mean()

    def adamw(m):
        params = [p for p in m.parameters() if p.requires_grad]
        # CPU: PyTorch's default AdamW (a loop over tensors), as the C++ side's; CUDA: fused on both sides.
        return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, fused=True if cuda else None)

    def times_ms(fn):
        for _ in range(spec["warmup"]):
            fn()
        t = []
        for _ in range(spec["reps"]):
            if cuda:
                torch.cuda.synchronize()
            a = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
            t.append(1000 * (time.perf_counter() - a))
        return t

    if spec.get("memory_batch"):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        else:
            reset_peak_rss()
            before = rss_bytes("VmRSS")
        m = load()
        vocab = m.config.vocab_size
        m.train()
        opt = adamw(m)
        ids = tokens(spec["memory_batch"], seq)
        # The peak of loading (a transient the two loaders differ in) is reported apart; the training peak
        # counts from the same baseline but only what is resident from here on.
        if cuda:
            torch.cuda.synchronize()
            load_peak = torch.cuda.max_memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        else:
            load_peak = rss_bytes("VmHWM")
            reset_peak_rss()
        for _ in range(2):
            opt.zero_grad()
            loss(m, ids).backward()
            opt.step()
        peak = torch.cuda.max_memory_allocated() if cuda else rss_bytes("VmHWM")
        out.update(memory_batch=spec["memory_batch"], peak_mb=(peak - before) / 1e6, load_peak_mb=(load_peak - before) / 1e6,
                   trainable=sum(p.numel() for p in m.parameters() if p.requires_grad))
        return out

    m = load()
    vocab = m.config.vocab_size
    out["trainable"] = sum(p.numel() for p in m.parameters() if p.requires_grad)
    if method != "base":
        m.train()
        opt = adamw(m)
        out["train_ms"] = {}
        for b in spec["train_batches"]:
            ids = tokens(b, seq)

            def step():
                opt.zero_grad()
                loss(m, ids).backward()
                opt.step()

            out["train_ms"][str(b)] = times_ms(step)
    m.eval()

    def infer(model, key):
        out[key + "_ms"] = {}
        for b in spec["infer_batches"]:
            ids = tokens(b, seq)
            out[key + "_ms"][str(b)] = times_ms(lambda: model(input_ids=ids))
            if method == "base" and b == spec["infer_batches"][0]:  # same weights, same math: compared with C++
                y = model(input_ids=ids)
                y = y.logits if llama else y.last_hidden_state
                out["check_forward"] = y.double().abs().mean().item()
            if llama and spec["gen_tokens"] > 0:
                p = tokens(b, spec["prompt"])
                mask = torch.ones_like(p)
                res = {}

                def gen():
                    res["g"] = model.generate(input_ids=p, attention_mask=mask, max_new_tokens=spec["gen_tokens"],
                                              do_sample=False, pad_token_id=0)

                out.setdefault("generate_" + key + "_ms", {})[str(b)] = times_ms(gen)
                if res["g"].shape[1] != spec["prompt"] + spec["gen_tokens"]:
                    raise RuntimeError("generation stopped early")
                if method == "base" and b == spec["infer_batches"][0]:
                    out["check_generate"] = res["g"][0].tolist()

    with torch.no_grad():
        infer(m, "infer")
        if method in MERGEABLE:
            infer(m.merge_and_unload(), "merged")
    return out


# ---------------------------------------------------------------------------------------------------
# The orchestrator


def ensure_checkpoint(name, cache):
    """config.json + model.safetensors of `name` with seeded random weights, written once by transformers."""
    path = os.path.join(cache, name)
    if os.path.exists(os.path.join(path, "model.safetensors")):
        return path
    import torch
    import transformers

    arch, kw, _, _, _ = CONFIGS[name]
    torch.manual_seed(0)
    if arch == "llama":
        # No end-of-sequence token: generation runs its full length on both sides.
        cfg = transformers.LlamaConfig(max_position_embeddings=2048, bos_token_id=None, eos_token_id=None, pad_token_id=None, **kw)
        model = transformers.LlamaForCausalLM(cfg)
    else:
        cfg = transformers.BertConfig(max_position_embeddings=512, **kw)
        model = transformers.BertModel(cfg, add_pooling_layer=False)
    tmp = path + ".tmp"
    model.save_pretrained(tmp)
    os.replace(tmp, path)
    return path


def run_side(side, spec, bench):
    if side == "python":
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    else:
        cmd = [bench, "--model", spec["model"], "--method", spec["method"], "--seq", str(spec["seq"]),
               "--warmup", str(spec["warmup"]), "--reps", str(spec["reps"]), "--threads", str(spec["threads"]),
               "--device", spec["device"].split(":")[0], "--dtype", spec["dtype"], "--gen-tokens", str(spec["gen_tokens"]),
               "--prompt", str(spec["prompt"])]
        if spec.get("memory_batch"):
            cmd += ["--memory-batch", str(spec["memory_batch"])]
        if spec.get("checkpointing"):
            cmd += ["--checkpointing"]
        if spec["train_batches"]:
            cmd += ["--train-batches"] + [str(b) for b in spec["train_batches"]]
        if spec["infer_batches"]:
            cmd += ["--infer-batches"] + [str(b) for b in spec["infer_batches"]]
    env = dict(os.environ)
    if spec.get("mmap_threshold"):  # glibc: every block this large is its own mapping, handed back when freed
        env["MALLOC_MMAP_THRESHOLD_"] = str(spec["mmap_threshold"])
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"{side} side failed ({' '.join(cmd[:6])} ...):\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def medians(result):
    return {k: {b: statistics.median(v) for b, v in cells.items()} for k, cells in result.items() if k.endswith("_ms")}


def fmt_cell(c, p):
    return f"{c:.1f} / {p:.1f} | **{c / p:.2f}**" if c < 100 and p < 100 else f"{c:.0f} / {p:.0f} | **{c / p:.2f}**"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--bench", default=os.path.join(ROOT, "build-torch2", "benchmarks", "compare_bench"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    ap.add_argument("--train-batches", nargs="+", type=int, default=[1, 4, 8, 32])
    ap.add_argument("--infer-batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--memory-config", default="bert-base", choices=list(CONFIGS))
    ap.add_argument("--memory-batch", type=int, default=32, help="0: no memory table")
    ap.add_argument("--memory-only", action="store_true", help="only the memory table")
    ap.add_argument("--warmup", type=int, default=None, help="instead of each config's")
    ap.add_argument("--reps", type=int, default=None, help="instead of each config's")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeat", type=int, default=1,
                    help="run each (config, method) group this many times per side, alternating which side goes first; "
                         "the medians pool every repetition")
    ap.add_argument("--cache", default=os.path.join(os.path.expanduser("~"), ".cache", "peft-cpp", "compare"),
                    help="where the shared checkpoints are written once")
    ap.add_argument("--replace-into", default=None,
                    help="an earlier result (path without extension): this run's rows replace its rows of the same "
                         "model and method (marked as re-run), the rest is kept, and the result is written there")
    ap.add_argument("--rerun-note", default="", help="with --replace-into: why these rows were measured again")
    ap.add_argument("--quick", action="store_true", help="smoke run: llama-tiny, LoRA and prefix, batches 1 2, one rep")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "compare_hf_peft_cpu"),
                    help="path without extension")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if args.quick:
        args.configs, args.methods, args.train_batches, args.infer_batches = ["llama-tiny"], ["lora_qv", "prefix"], [1, 2], [1]
        args.gen_tokens, args.warmup, args.reps, args.memory_config, args.memory_batch = 4, 0, 1, "llama-tiny", 2
    if not os.access(args.bench, os.X_OK):
        print(f"no C++ benchmark at {args.bench}: build the target compare_bench (scripts/run.sh test builds build-torch2/)",
              file=sys.stderr)
        return 2

    import torch
    import transformers
    import peft

    t0 = time.time()
    rows, memory, libtorch, checks = [], [], None, {}
    group = 0
    for name in [] if args.memory_only else args.configs:
        arch, _, seq, warmup, reps = CONFIGS[name]
        model = ensure_checkpoint(name, args.cache)
        for method in ["base"] + args.methods:
            spec = dict(model=model, arch=arch, method=method, seq=seq, device=args.device, dtype=args.dtype,
                        threads=args.threads, warmup=args.warmup if args.warmup is not None else warmup,
                        reps=args.reps if args.reps is not None else reps,
                        train_batches=[] if method == "base" else args.train_batches, infer_batches=args.infer_batches,
                        gen_tokens=args.gen_tokens if arch == "llama" else 0, prompt=args.prompt)
            order = ["python", "cpp"] if group % 2 == 0 else ["cpp", "python"]
            group += 1
            res = {side: run_side(side, spec, args.bench) for side in order}
            for rep in range(1, args.repeat):  # again, the other side first each time (ABBA); raw times pooled
                for side in (order[::-1] if rep % 2 else order):
                    again = run_side(side, spec, args.bench)
                    for key, cells in again.items():
                        if key.endswith("_ms"):
                            for b, times in cells.items():
                                res[side][key][b] = res[side][key][b] + times
            libtorch = res["cpp"].get("libtorch", libtorch)
            cpp, py = medians(res["cpp"]), medians(res["python"])
            if set(cpp) != set(py):
                raise RuntimeError(f"{name} {method}: the sides measured different things: {sorted(cpp)} vs {sorted(py)}")
            if method == "base":  # the two sides must compute the same thing before their times mean anything
                fc, fp = res["cpp"]["check_forward"], res["python"]["check_forward"]
                if abs(fc - fp) > 1e-3 * abs(fp):
                    raise RuntimeError(f"{name}: the base model's output differs between the sides ({fc} vs {fp})")
                if res["cpp"].get("check_generate") != res["python"].get("check_generate"):
                    raise RuntimeError(f"{name}: greedy generation differs between the sides: "
                                       f"{res['cpp'].get('check_generate')} vs {res['python'].get('check_generate')}")
                checks[name] = {"forward_mean_abs": {"cpp": fc, "python": fp},
                                "generate_row0_equal": "check_generate" in res["cpp"]}
            row = {"config": name, "seq": seq, "method": method, "first": order[0], "repeat": args.repeat,
                   "trainable": {"cpp": res["cpp"]["trainable"], "python": res["python"]["trainable"]},
                   "cpp": cpp, "python": py,
                   "ratio": {k: {b: cpp[k][b] / py[k][b] for b in cpp[k]} for k in cpp}}
            rows.append(row)
            print(f"[{time.time() - t0:6.0f} s] {name:12s} {method:8s} trainable {row['trainable']['cpp']}/{row['trainable']['python']}  " +
                  "  ".join(f"{k[:-3]}[{b}] {row['ratio'][k][b]:.2f}" for k in row["ratio"] for b in row["ratio"][k]), flush=True)
    if args.memory_batch:
        arch, _, seq, _, _ = CONFIGS[args.memory_config]
        model = ensure_checkpoint(args.memory_config, args.cache)
        # Twice: with glibc's defaults (what a user's process shows), and with every block of 128 KiB or more
        # mapped on its own (MALLOC_MMAP_THRESHOLD_), so that freed tensors leave the resident set at once
        # and the peak is the live tensors' (the default threshold grows up to 32 MiB, and freed blocks
        # below it stay in the heap, in amounts that depend on each side's order of allocations).
        for i, (method, ckpt) in enumerate([("full", False), ("lora_qv", False), ("lora_qv", True)]):
            entry = {"config": args.memory_config, "seq": seq, "batch": args.memory_batch, "method": method, "checkpointing": ckpt}
            for j, mmap in enumerate([0, 131072]):
                spec = dict(model=model, arch=arch, method=method, seq=seq, device=args.device, dtype=args.dtype,
                            threads=args.threads, warmup=0, reps=1, train_batches=[], infer_batches=[], gen_tokens=0,
                            prompt=args.prompt, memory_batch=args.memory_batch, checkpointing=ckpt, mmap_threshold=mmap)
                order = ["python", "cpp"] if (i + j) % 2 == 0 else ["cpp", "python"]
                res = {side: run_side(side, spec, args.bench) for side in order}
                tag = "" if not mmap else "_mmap"
                entry.update({"cpp_mb" + tag: res["cpp"]["peak_mb"], "python_mb" + tag: res["python"]["peak_mb"],
                              "cpp_load_mb" + tag: res["cpp"]["load_peak_mb"], "python_load_mb" + tag: res["python"]["load_peak_mb"],
                              "trainable": res["cpp"]["trainable"]})
                print(f"[{time.time() - t0:6.0f} s] memory {method}{' + checkpointing' if ckpt else ''}"
                      f"{' (mmap threshold 128 KiB)' if mmap else ''}: C++ {res['cpp']['peak_mb']:.0f} MB, PEFT {res['python']['peak_mb']:.0f} MB",
                      flush=True)
            memory.append(entry)

    cuda = args.device.startswith("cuda")
    device_name = torch.cuda.get_device_name() if cuda else cpu_model()
    result = {"benchmark": "compare_hf_peft", "date": time.strftime("%Y-%m-%d", time.gmtime()), "device": device_name,
              "device_kind": args.device, "cores": os.cpu_count(), "dtype": args.dtype, "threads": args.threads,
              "torch": torch.__version__, "libtorch": libtorch, "transformers": transformers.__version__,
              "peft": peft.__version__, "python": platform.python_version(), "seconds": round(time.time() - t0),
              "configs": {n: {"arch": CONFIGS[n][0], "seq": CONFIGS[n][2], "warmup": args.warmup if args.warmup is not None else CONFIGS[n][3],
                              "reps": args.reps if args.reps is not None else CONFIGS[n][4], **CONFIGS[n][1]} for n in args.configs},
              "gen_tokens": args.gen_tokens, "prompt": args.prompt, "checks": checks, "rows": rows, "memory": memory}
    if args.replace_into:
        with open(args.replace_into + ".json") as f:
            old = json.load(f)
        for r in rows:
            r["rerun"] = result["date"]
        fresh = {(r["config"], r["method"]): r for r in rows}
        old["rows"] = [fresh.pop((r["config"], r["method"]), r) for r in old["rows"]] + list(fresh.values())
        if rows:
            old.setdefault("reruns", []).append({"date": result["date"], "seconds": result["seconds"], "note": args.rerun_note,
                                                 "rows": [[r["config"], r["method"]] for r in rows]})
        if memory:
            old["memory"] = memory
            old["memory_run"] = {"date": result["date"], "seconds": result["seconds"], "note": args.rerun_note}
        result, args.out = old, args.replace_into
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=2)
    with open(args.out + ".md", "w") as f:
        f.write(markdown(result, args))
    print(markdown(result, args))
    print(f"wrote {args.out}.json and {args.out}.md")
    return 0


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def label(row):
    return row["method"] + (" †" if "rerun" in row else "")


def markdown(result, args):
    rows = result["rows"]
    md = []
    tb = [str(b) for b in args.train_batches]
    md.append("Training step (forward, loss, backward, AdamW), ms, C++ / PEFT and the ratio (below 1: C++ faster):\n")
    md.append("| model (seq) | method | " + " | ".join(f"batch {b} | ratio" for b in tb) + " |")
    md.append("|---|---|" + "---:|---:|" * len(tb))
    for r in rows:
        if "train_ms" in r["cpp"]:
            md.append(f"| {r['config']} ({r['seq']}) | {label(r)} | " +
                      " | ".join(fmt_cell(r["cpp"]["train_ms"][b], r["python"]["train_ms"][b]) for b in tb) + " |")
    ib = [str(b) for b in args.infer_batches]
    for kind, title in [("", "Inference (forward under no_grad)"), ("generate_", f"Greedy generation of {result['gen_tokens']} tokens after "
                                                                             f"{result['prompt']} with the KV cache")]:
        cols = [(k, b) for b in ib for k in ("infer", "merged")]
        body = []
        for r in rows:
            if kind + "infer_ms" not in r["cpp"]:
                continue
            cells = []
            for k, b in cols:
                key = kind + k + "_ms"
                cells.append(fmt_cell(r["cpp"][key][b], r["python"][key][b]) if key in r["cpp"] else "| ")
            body.append(f"| {r['config']} ({r['seq']}) | {label(r)} | " + " | ".join(cells) + " |")
        if body:
            md.append(f"\n{title}, ms, C++ / PEFT and the ratio:\n")
            md.append("| model (seq) | method | " + " | ".join(f"batch {b} {'unmerged' if k == 'infer' else 'merged'} | ratio"
                                                          for k, b in cols) + " |")
            md.append("|---|---|" + "---:|---:|" * len(cols))
            md += body
    if result["memory"]:
        md.append("\nPeak memory of two training steps, MB: the peak RSS during the steps less the RSS before the checkpoint "
                  "was loaded (weights, gradients, optimizer state, activations; CUDA: the allocator's peak), with glibc's "
                  "defaults and with MALLOC_MMAP_THRESHOLD_=131072 (freed tensors leave the resident set at once: the live "
                  "tensors' peak). Loading's own peak (default allocator) is reset before the steps and shown apart:\n")
        md.append("| model (seq, batch) | method | trainable | C++ | PEFT | C++ / PEFT | C++, mmap 128K | PEFT, mmap 128K | "
                  "C++ / PEFT | loading: C++ | PEFT |")
        md.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for m in result["memory"]:
            what = m["method"] + (" + activation checkpointing" if m.get("checkpointing") else "")
            cells = [f"{m['cpp_mb']:.0f} | {m['python_mb']:.0f} | **{m['cpp_mb'] / m['python_mb']:.2f}**"]
            if "cpp_mb_mmap" in m:
                cells.append(f"{m['cpp_mb_mmap']:.0f} | {m['python_mb_mmap']:.0f} | **{m['cpp_mb_mmap'] / m['python_mb_mmap']:.2f}**")
            else:
                cells.append(" | | ")
            cells.append(f"{m.get('cpp_load_mb', 0):.0f} | {m.get('python_load_mb', 0):.0f}")
            md.append(f"| {m['config']} ({m['seq']}, {m['batch']}) | {what} | {m['trainable']:,} | " + " | ".join(cells) + " |")
        full = next((m for m in result["memory"] if m["method"] == "full"), None)
        for m in result["memory"]:
            if full and m["method"] != "full":
                what = m["method"] + (" with activation checkpointing" if m.get("checkpointing") else "")
                line = (f"\n{what} / full fine-tuning: C++ {m['cpp_mb'] / full['cpp_mb']:.2f}, "
                        f"PEFT {m['python_mb'] / full['python_mb']:.2f}")
                if "cpp_mb_mmap" in m:
                    line += (f" (mmap 128K: C++ {m['cpp_mb_mmap'] / full['cpp_mb_mmap']:.2f}, "
                             f"PEFT {m['python_mb_mmap'] / full['python_mb_mmap']:.2f})")
                md.append(line + ".")
    reps_text = ", ".join(f"{n}: {c['reps']} after {c['warmup']}" for n, c in result["configs"].items())
    md.append(f"\n{result['dtype']} on {result['device']} ({result['cores']} cores), {result['threads']} threads on both sides; "
              f"torch {result['torch']} (C++: its LibTorch {result['libtorch']}), transformers {result['transformers']}, "
              f"peft {result['peft']}, Python {result['python']}; medians of each config's repetitions after its warm-up "
              f"({reps_text}); "
              f"LoRA r=8, alpha 16; prefix 20 virtual tokens; {result['date']}, {result['seconds']} s.")
    if result.get("memory_run"):
        m = result["memory_run"]
        md.append(f"\nThe memory table is from a separate run on {m['date']} ({m['seconds']} s). {m['note']}")
    for r in result.get("reruns", []):
        md.append(f"\n† measured again on {r['date']} ({r['seconds']} s), both sides, same settings: {r['note']}")
    return "\n".join(md) + "\n"


if __name__ == "__main__":
    sys.exit(main())
