#!/usr/bin/env python3
"""Many LoRA adapters in one batch: our peft::MixedBatch against Hugging Face PEFT's adapter_names, on
SmolLM2-135M (the real checkpoint from scripts/fetch_data.sh), in one interleaved run.

    .venv/bin/python benchmarks/multi_adapter_compare.py                       # q_proj, v_proj: about 5 min on 2 cores
    .venv/bin/python benchmarks/multi_adapter_compare.py --targets all-linear  # every Linear of the blocks

A batch of --rows rows, row i with adapter a{i mod N} for N in --counts (128 rank-8 LoRA adapters on
q_proj and v_proj, PEFT's default for LLaMA, or on every Linear of the blocks with --targets all-linear;
random values, made here once and loaded by both sides):
a prefill of --prompt tokens per row with the KV cache, then --steps greedy decoding steps. Conditions:
  ours mixed   peft::MixedBatch (gathered A/B stacks, batched products)
  ours loop    peft::MixedBatch with MixedKernel::loop (one product pair per distinct adapter, as PEFT)
  peft         PeftModel(..., adapter_names=[...]) (PEFT slices the batch per distinct adapter)
  single       every row on a0 the ordinary way (no per-row selection), both sides: the ceiling
The C++ side is benchmarks/multi_adapter_bench built against the LibTorch inside the torch wheel this
script imports (build-torch2/), one process that stays loaded and answers one command per measurement;
both sides get the same threads and float32. Measurements alternate between the sides, the side that
goes first alternating too; each cell is the median over --reps. Writes <out>.md and <out>.jsonl.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from compare_hf_peft import cpu_model  # the same machine stamp as the other comparison

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = os.environ.get("PEFT_DATA_DIR", os.path.expanduser("~/.cache/peft-cpp"))


TARGETS = {"qv": ["q_proj", "v_proj"],  # PEFT's default for LLaMA
           "all-linear": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}


def make_adapters(model_dir, out, count, targets, seed=0):
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model
    have = [i for i in range(count) if os.path.exists(os.path.join(out, f"a{i}", "adapter_model.safetensors"))]
    if len(have) == count:
        return
    base = transformers.LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS[targets], task_type="CAUSAL_LM"))
    g = torch.Generator().manual_seed(seed)
    for i in range(count):
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_A" in name:
                    p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
                elif "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.02)
        tmp = os.path.join(out, f"a{i}")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
    print(f"made {count} adapters in {out}", flush=True)


class Ours:
    def __init__(self, bench, model_dir, adapters, count, args):
        cmd = [bench, "--model", model_dir, "--adapters", adapters, "--count", str(count), "--threads", str(args.threads),
               "--rows", str(args.rows), "--prompt", str(args.prompt), "--steps", str(args.steps)]
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.ready = json.loads(self.p.stdout.readline())

    def run(self, condition, n):
        self.p.stdin.write(f"{condition} {n}\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError("multi_adapter_bench exited")
        return json.loads(line)

    def close(self):
        self.p.stdin.write("quit 1\n")
        self.p.stdin.flush()
        self.p.wait()


class Peft:
    def __init__(self, model_dir, adapters, count, args):
        import torch
        import transformers
        from peft import PeftModel
        self.torch = torch
        self.args = args
        base = transformers.LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        t = time.perf_counter()
        self.model = PeftModel.from_pretrained(base, os.path.join(adapters, "a0"), adapter_name="a0")
        for i in range(1, count):
            self.model.load_adapter(os.path.join(adapters, f"a{i}"), adapter_name=f"a{i}")
        self.model.eval()
        self.load_s = time.perf_counter() - t
        vocab = base.config.vocab_size
        self.ids = ((torch.arange(args.rows * args.prompt) * 7919) % (vocab - 10) + 5).view(args.rows, args.prompt)

    def run(self, condition, n):
        torch = self.torch
        kw = {}
        if condition == "peft":
            kw["adapter_names"] = [f"a{i % n}" for i in range(self.args.rows)]
        else:
            self.model.set_adapter("a0")
        with torch.no_grad():
            t = time.perf_counter()
            out = self.model(input_ids=self.ids, use_cache=True, **kw)
            nxt = out.logits[:, -1].argmax(-1)
            prefill = time.perf_counter() - t
            toks = [nxt[:, None]]
            past = out.past_key_values
            t = time.perf_counter()
            for _ in range(self.args.steps):
                out = self.model(input_ids=nxt[:, None], past_key_values=past, use_cache=True, **kw)
                past = out.past_key_values
                nxt = out.logits[:, -1].argmax(-1)
                toks.append(nxt[:, None])
            decode = time.perf_counter() - t
        return {"condition": condition, "adapters": n, "prefill_s": prefill, "decode_s": decode,
                "tokens": torch.cat(toks, 1).flatten().tolist()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=os.path.join(DATA, "smollm2"))
    ap.add_argument("--bench", default=os.path.join(ROOT, "build-torch2", "benchmarks", "multi_adapter_bench"))
    ap.add_argument("--work", default=os.path.join(DATA, "multi_adapter"))
    ap.add_argument("--counts", default="1,8,32,128")
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--targets", choices=sorted(TARGETS), default="qv",
                    help="the adapters' target modules: qv (PEFT's default for LLaMA) or all-linear")
    ap.add_argument("--out", help="default: benchmarks/results/multi_adapter_cpu_<targets>")
    args = ap.parse_args()
    args.out = args.out or os.path.join(ROOT, "benchmarks", "results", f"multi_adapter_cpu_{args.targets}")
    import torch
    import peft
    import transformers
    torch.set_num_threads(args.threads)
    counts = [int(c) for c in args.counts.split(",")]
    total = max(counts)
    adapters = os.path.join(args.work, f"adapters_{args.targets}")
    os.makedirs(adapters, exist_ok=True)
    make_adapters(args.model, adapters, total, args.targets)
    ours = Ours(args.bench, args.model, adapters, total, args)
    theirs = Peft(args.model, adapters, total, args)
    print(f"loaded {total} adapters: ours {ours.ready['load_s']:.1f} s, PEFT {theirs.load_s:.1f} s", flush=True)
    # (side, condition, n): the ours/PEFT pairs alternate which goes first
    schedule = [("ours", "single", 1), ("peft", "single", 1)]
    for n in counts:
        schedule += [("ours", "mixed", n), ("ours", "loop", n), ("peft", "peft", n)]
    results = {}
    for rep in range(args.reps + 1):  # rep 0: warm-up, not recorded
        order = schedule if rep % 2 else list(reversed(schedule))
        for side, cond, n in order:
            r = (ours if side == "ours" else theirs).run(cond, n)
            if rep:
                results.setdefault((side, cond, n), []).append(r)
            print(f"rep {rep} {side:4} {cond:6} {n:3}: prefill {r['prefill_s']:.3f} s, decode {r['decode_s']:.3f} s", flush=True)
    ours.close()

    def med(side, cond, n, key):
        return statistics.median(r[key] for r in results[(side, cond, n)])

    def tok_s(side, cond, n, key):
        tokens = args.rows * (args.steps if key == "decode_s" else args.prompt)
        return tokens / med(side, cond, n, key)

    def agree(a, b):
        ta, tb = results[a][0]["tokens"], results[b][0]["tokens"]
        return sum(x == y for x, y in zip(ta, tb)) / len(ta)

    stamp = (f"{time.strftime('%Y-%m-%d')}, {cpu_model()}, {args.threads} threads, float32, torch {torch.__version__} "
             f"(both sides), transformers {transformers.__version__}, peft {peft.__version__}")
    md = [f"# Many adapters in one batch: SmolLM2-135M, {args.rows} rows, rank-8 LoRA on {', '.join(TARGETS[args.targets])}", "",
          f"{stamp}. Prompt {args.prompt} tokens per row, then {args.steps} greedy decoding steps with the KV cache; "
          f"medians of {args.reps} interleaved repetitions (after one warm-up), one run of "
          f"`benchmarks/multi_adapter_compare.py --targets {args.targets}`. tokens/s: decoded tokens of all rows per "
          f"second. N adapters: row i uses a{{i mod N}}, all {total} loaded on both sides; {args.rows} rows hold at most "
          f"{args.rows} distinct ones, so N = {total} is N = {args.rows} with more adapters resident.", "",
          f"Single adapter (all rows on a0, no per-row selection): ours {tok_s('ours', 'single', 1, 'decode_s'):.0f} tokens/s, "
          f"PEFT {tok_s('peft', 'single', 1, 'decode_s'):.0f} tokens/s.", "",
          "| N adapters | ours mixed (tok/s) | ours per-adapter loop | PEFT adapter_names | ours / PEFT | "
          "ours / our single | prefill ours / PEFT (tok/s) | greedy tokens equal to PEFT's |",
          "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    rows = []
    for n in counts:
        mixed, loop, pf = (tok_s("ours", "mixed", n, "decode_s"), tok_s("ours", "loop", n, "decode_s"),
                           tok_s("peft", "peft", n, "decode_s"))
        single = tok_s("ours", "single", 1, "decode_s")
        pre_o, pre_p = tok_s("ours", "mixed", n, "prefill_s"), tok_s("peft", "peft", n, "prefill_s")
        same = agree(("ours", "mixed", n), ("peft", "peft", n))
        md.append(f"| {n} | {mixed:.0f} | {loop:.0f} | {pf:.0f} | {mixed / pf:.2f}x | {mixed / single:.2f}x | "
                  f"{pre_o:.0f} / {pre_p:.0f} | {100 * same:.1f}% |")
        rows.append({"adapters": n, "targets": args.targets, "rows": args.rows, "ours_mixed_tok_s": mixed, "ours_loop_tok_s": loop, "peft_tok_s": pf,
                     "ours_single_tok_s": single, "peft_single_tok_s": tok_s("peft", "single", 1, "decode_s"),
                     "prefill_ours_tok_s": pre_o, "prefill_peft_tok_s": pre_p, "tokens_equal": same, "stamp": stamp,
                     "raw_decode_s": {f"{side} {cond}": [r["decode_s"] for r in results[(side, cond, m)]]
                                      for (side, cond, m) in results if m == n or cond == "single"}})
    md.append("")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(md))
    with open(args.out + ".jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
