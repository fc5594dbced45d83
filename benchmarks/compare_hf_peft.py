#!/usr/bin/env python3
"""Side by side with Hugging Face transformers + PEFT: the same LoRA (r=8, alpha=16 on the attention's
query and value) on the same model shape, batch, dtype, device and torch, timed by this script in Python
and by benchmarks/method_bench (this library, built against the same PyTorch's LibTorch) in C++.

Build the C++ side against the PyTorch this script imports, then run, e.g. on a GPU:

    cmake -S . -B build -DCMAKE_PREFIX_PATH=$(python3 -c "import torch;print(torch.utils.cmake_prefix_path)")
    cmake --build build --target method_bench
    python3 benchmarks/compare_hf_peft.py --device cuda --dtype bfloat16 --configs bert-base llama-1b --batches 1 8 32

For every (config, batch) it measures, on each side: the training step (forward + backward + AdamW on
the adapter) and inference of the base model, of the LoRA model unmerged and merged (median of --reps
after --warmup; CUDA runs are bracketed by device synchronization). The two sides run one after the
other for each cell (interleaved over the cells), with the same number of intra-op threads. The weights
are random on both sides (timing does not depend on their values). Writes <out>.json and <out>.md with
the ratio C++ / Python for every cell.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

# name: hidden, layers, heads, seq, batch, vocab, llama, kv_heads, intermediate (as in method_bench.cpp)
SHAPES = {
    "small": (256, 4, 4, 128, 8, 2048, False, 0, 0),
    "gemm": (1024, 2, 16, 128, 8, 2048, False, 0, 0),
    "bert-base": (768, 12, 12, 512, 16, 30522, False, 0, 0),
    "llama-tiny": (256, 2, 8, 128, 4, 2048, True, 2, 688),
    "llama-1b": (2048, 16, 32, 512, 4, 32000, True, 8, 5632),
}
METRICS = ["step_ms", "base_ms", "lora_unmerged_ms", "lora_merged_ms"]


def median_ms(fn, warmup, reps, cuda):
    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times)


def profile_to(path, fn, cuda, reps=3):
    """Records `reps` calls of fn with torch.profiler into a Chrome trace (profile_summary.py reads it)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    if cuda:
        torch.cuda.synchronize()
    with profile(activities=acts) as prof:
        for _ in range(reps):
            fn()
        if cuda:
            torch.cuda.synchronize()
    prof.export_chrome_trace(path)


def build_python_model(name, seq):
    import transformers

    hidden, layers, heads, _, _, vocab, llama, kv_heads, inter = SHAPES[name]
    if llama:
        cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                                       num_attention_heads=heads, num_key_value_heads=kv_heads,
                                       intermediate_size=inter, max_position_embeddings=max(2048, seq),
                                       rms_norm_eps=1e-6, tie_word_embeddings=False)
        return transformers.LlamaModel(cfg), ["q_proj", "v_proj"]
    cfg = transformers.BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                                  num_attention_heads=heads, intermediate_size=4 * hidden,
                                  max_position_embeddings=max(512, seq + 32), hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0)
    return transformers.BertModel(cfg, add_pooling_layer=False), ["query", "value"]


def time_python(name, device, dtype, batch, seq, warmup, reps, profile=None, fused=False):
    import torch
    from peft import LoraConfig, get_peft_model

    vocab = SHAPES[name][5]
    torch.manual_seed(0)
    model, targets = build_python_model(name, seq)
    tdtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    model = model.to(device=device, dtype=tdtype)
    for p in model.parameters():
        p.requires_grad_(False)
    ids = torch.randint(103, vocab, (batch, seq), device=device)
    cuda = device.startswith("cuda")
    model.eval()
    with torch.no_grad():
        base_ms = median_ms(lambda: model(input_ids=ids), warmup, reps, cuda)
        if profile:
            profile_to(f"{profile}/py_{name}_infer_base.json", lambda: model(input_ids=ids), cuda)

    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=targets,
                                                  init_lora_weights=False))
    peft_model.train()
    # fused=True where the C++ side fuses its step too (CUDA): PyTorch's fastest AdamW, not its default.
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.01,
                            fused=fused or None)

    def step():
        opt.zero_grad()
        out = peft_model(input_ids=ids).last_hidden_state
        out.float().pow(2).mean().backward()
        opt.step()

    step_ms = median_ms(step, warmup, reps, cuda)
    if profile:
        profile_to(f"{profile}/py_{name}_train_lora_qv.json", step, cuda)
    peft_model.eval()
    with torch.no_grad():
        unmerged_ms = median_ms(lambda: peft_model(input_ids=ids), warmup, reps, cuda)
        if profile:
            profile_to(f"{profile}/py_{name}_infer_unmerged.json", lambda: peft_model(input_ids=ids), cuda)
        merged = peft_model.merge_and_unload()
        merged_ms = median_ms(lambda: merged(input_ids=ids), warmup, reps, cuda)
        if profile:
            profile_to(f"{profile}/py_{name}_infer_merged.json", lambda: merged(input_ids=ids), cuda)
    del opt, peft_model, merged, model
    if cuda:
        torch.cuda.empty_cache()
    return {"step_ms": step_ms, "base_ms": base_ms, "lora_unmerged_ms": unmerged_ms, "lora_merged_ms": merged_ms}


def time_cpp(bench, name, device, dtype, batch, seq, warmup, reps, threads, profile=None):
    with tempfile.TemporaryDirectory() as out:
        dev = device.split(":")[0]
        # dropout 0 as in the Python model's config (BERT's default is 0.1: the C++ side would draw masks)
        cmd = [bench, "--config", name, "--device", dev, "--dtype", dtype, "--methods", "lora_qv", "--skip-full",
               "--dropout", "0",
               "--batch", str(batch), "--seq", str(seq), "--warmup", str(warmup), "--reps", str(reps),
               "--threads", str(threads), "--out", out] + (["--profile", profile] if profile else [])
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(out, f"method_bench_{name}_{dev}.json")) as f:
            j = json.load(f)
    lora = next(m for m in j["methods"] if m["method"] == "lora_qv")
    return {"step_ms": lora["step_ms"], "base_ms": j["inference"]["base_ms"],
            "lora_unmerged_ms": j["inference"]["lora_unmerged_ms"], "lora_merged_ms": j["inference"]["lora_merged_ms"],
            "libtorch": j["libtorch"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench", default="build/benchmarks/method_bench")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--configs", nargs="+", default=["bert-base"], choices=list(SHAPES))
    ap.add_argument("--batches", nargs="+", type=int, default=None, help="batch sizes (default: each shape's)")
    ap.add_argument("--seq", type=int, default=0, help="sequence length (default: each shape's)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", default="benchmarks/results/compare_hf_peft_cpu", help="path without extension")
    ap.add_argument("--profile", default=None,
                    help="folder: also record each cell with the profilers (<folder>/<config>_b<batch>/{cpp,py}_*.json); "
                         "summarize with benchmarks/profile_summary.py")
    args = ap.parse_args()

    import torch
    import transformers
    import peft

    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    device_name = torch.cuda.get_device_name() if cuda else platform.processor() or "cpu"
    rows = []
    for name in args.configs:
        seq = args.seq or SHAPES[name][3]
        for batch in args.batches or [SHAPES[name][4]]:
            prof = None
            if args.profile:
                prof = os.path.join(args.profile, f"{name}_b{batch}")
                os.makedirs(prof, exist_ok=True)
            py = time_python(name, args.device, args.dtype, batch, seq, args.warmup, args.reps, prof, fused=cuda)
            cpp = time_cpp(args.bench, name, args.device, args.dtype, batch, seq, args.warmup, args.reps, args.threads,
                           prof)
            row = {"config": name, "batch": batch, "seq": seq, "python": py, "cpp": {k: cpp[k] for k in METRICS},
                   "ratio": {k: cpp[k] / py[k] for k in METRICS}, "libtorch": cpp["libtorch"]}
            rows.append(row)
            print(f"{name:10s} batch {batch:3d}  " + "  ".join(
                f"{k[:-3]} {cpp[k]:.2f}/{py[k]:.2f} ms ({row['ratio'][k]:.3f})" for k in METRICS), flush=True)
    result = {"benchmark": "compare_hf_peft", "date": time.strftime("%Y-%m-%d", time.gmtime()),
              "device": device_name, "dtype": args.dtype, "threads": args.threads, "torch": torch.__version__,
              "libtorch": rows[0]["libtorch"] if rows else None, "transformers": transformers.__version__,
              "peft": peft.__version__, "python": platform.python_version(), "warmup": args.warmup, "reps": args.reps,
              "method": "LoRA r=8 alpha=16 on attention query/value, dropout 0",
              "optimizer": "AdamW, fused on both sides" if cuda else "AdamW (PyTorch's default foreach; LibTorch's loop)",
              "rows": rows}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=2)
    md = ["| shape | batch | train step ms (C++ / PEFT) | ratio | base inference ms | ratio | LoRA unmerged ms | ratio | LoRA merged ms | ratio |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cells = [f"{r['cpp'][k]:.2f} / {r['python'][k]:.2f} | {r['ratio'][k]:.3f}" for k in METRICS]
        md.append(f"| {r['config']} (seq {r['seq']}) | {r['batch']} | " + " | ".join(cells) + " |")
    md.append("")
    md.append(f"{result['method']}; {result['optimizer']}; {args.dtype} on {device_name}, {args.threads} threads; torch {torch.__version__} "
              f"(C++: its LibTorch {result['libtorch']}), transformers {transformers.__version__}, peft {peft.__version__}, "
              f"Python {result['python']}; median of {args.reps} after {args.warmup} warm-up; {result['date']}.")
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"wrote {args.out}.json and {args.out}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
