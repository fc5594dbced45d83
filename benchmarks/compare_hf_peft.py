#!/usr/bin/env python3
"""Times Hugging Face transformers + PEFT on the shapes of benchmarks/method_bench.cpp, next to this
library on the same machine, and prints the C++ / Python time ratio per configuration.

Run on a machine with a GPU, PyTorch, transformers and peft, after building this library against that
PyTorch's LibTorch (CMake: -DTorch_DIR=$(python3 -c "import torch;print(torch.utils.cmake_prefix_path)")/Torch):

    python3 benchmarks/compare_hf_peft.py --bench build/benchmarks/method_bench --device cuda

For each configuration it builds a transformers BertModel from a config with random weights, attaches
the same LoRA (r=8, alpha=16 on query and value), feeds the same batch shape, and times one training step
(forward + backward + AdamW step) and one inference forward (median of --reps after --warmup), then runs
method_bench for the same configuration and reads its JSON.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

SHAPES = {
    # name: hidden, layers, heads, seq, batch, vocab (as in method_bench.cpp)
    "small": (256, 4, 4, 128, 8, 2048),
    "gemm": (1024, 2, 16, 128, 8, 2048),
    "bert-base": (768, 12, 12, 512, 16, 30522),
}


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


def time_python(name, device, dtype, warmup, reps, batch=None):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertModel

    hidden, layers, heads, seq, default_batch, vocab = SHAPES[name]
    batch = batch or default_batch
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=4 * hidden, max_position_embeddings=max(512, seq), hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    tdtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    model = BertModel(cfg, add_pooling_layer=False).to(device=device, dtype=tdtype)
    ids = torch.randint(103, vocab, (batch, seq), device=device)
    cuda = device.startswith("cuda")

    base_model = model
    base_model.eval()
    with torch.no_grad():
        base_ms = median_ms(lambda: base_model(input_ids=ids), warmup, reps, cuda)

    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"]))
    peft_model.train()
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.01)

    def step():
        opt.zero_grad()
        out = peft_model(input_ids=ids).last_hidden_state
        out.float().pow(2).mean().backward()
        opt.step()

    step_ms = median_ms(step, warmup, reps, cuda)
    peft_model.eval()
    with torch.no_grad():
        unmerged_ms = median_ms(lambda: peft_model(input_ids=ids), warmup, reps, cuda)
    return {"step_ms": step_ms, "base_ms": base_ms, "lora_unmerged_ms": unmerged_ms}


def time_cpp(bench, name, device, dtype, warmup, reps):
    with tempfile.TemporaryDirectory() as out:
        cmd = [bench, "--config", name, "--device", device.split(":")[0], "--dtype", dtype, "--methods", "lora_qv",
               "--warmup", str(warmup), "--reps", str(reps), "--out", out]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        device_name = device.split(":")[0]
        with open(os.path.join(out, f"method_bench_{name}_{device_name}.json")) as f:
            j = json.load(f)
    lora = next(m for m in j["methods"] if m["method"] == "lora_qv")
    return {"step_ms": lora["step_ms"], "base_ms": j["inference"]["base_ms"],
            "lora_unmerged_ms": j["inference"]["lora_unmerged_ms"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench", default="build/benchmarks/method_bench")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--configs", nargs="+", default=["small", "gemm", "bert-base"], choices=list(SHAPES))
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--out", default="benchmarks/results/compare_hf_peft.json")
    args = ap.parse_args()

    import torch
    import transformers
    import peft

    rows = []
    for name in args.configs:
        py = time_python(name, args.device, args.dtype, args.warmup, args.reps)
        cpp = time_cpp(args.bench, name, args.device, args.dtype, args.warmup, args.reps)
        row = {"config": name, "python": py, "cpp": cpp,
               "ratio": {k: cpp[k] / py[k] for k in py}}
        rows.append(row)
        print(f"{name:10s} train step C++ {cpp['step_ms']:8.2f} ms  Python {py['step_ms']:8.2f} ms  ratio {row['ratio']['step_ms']:.3f} | "
              f"LoRA inference C++ {cpp['lora_unmerged_ms']:8.2f} ms  Python {py['lora_unmerged_ms']:8.2f} ms  "
              f"ratio {row['ratio']['lora_unmerged_ms']:.3f}")
    result = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
              "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
              "dtype": args.dtype, "date": time.strftime("%Y-%m-%d"), "rows": rows}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
