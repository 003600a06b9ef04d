#!/usr/bin/env python3
"""PyTorch on the same checkpoints, measured like `vit-workbench bench`: warm-up runs, then
timed runs (at least N and S seconds), median and p90, batch 1, a fixed thread count.

    python3 tools/bench_pytorch.py target/bench-models/vit-base-patch16-224-random [...] --threads 2

Variants: fp32 eager, and torch.ao.quantization.quantize_dynamic({nn.Linear}, qint8) on the
x86 (fbgemm) and onednn quantized engines.
"""
import argparse
import copy
import statistics
import time
import warnings

import torch
from transformers import ViTForImageClassification

warnings.filterwarnings("ignore")


def measure(fn, warmup, runs, seconds):
    for _ in range(warmup):
        fn()
    samples = []
    t_start = time.perf_counter()
    while len(samples) < runs or time.perf_counter() - t_start < seconds:
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    samples.sort()
    p90 = samples[min(len(samples) - 1, int(round(0.9 * (len(samples) - 1))))]
    return statistics.median(samples), p90, len(samples)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--min-seconds", type=float, default=3.0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_grad_enabled(False)
    x = torch.randn(1, 3, 224, 224)
    print(f"torch {torch.__version__}, {a.threads} threads, batch 1")
    print(f"{'model':<40} {'variant':<22} {'p50 ms':>8} {'p90 ms':>8} {'runs':>5}")
    for path in a.models:
        fp32 = ViTForImageClassification.from_pretrained(path, attn_implementation="eager").eval()
        rows = [("fp32 eager", fp32)]
        for engine in ["x86", "onednn"]:
            if engine in torch.backends.quantized.supported_engines:
                torch.backends.quantized.engine = engine
                q = torch.ao.quantization.quantize_dynamic(copy.deepcopy(fp32), {torch.nn.Linear}, dtype=torch.qint8)
                rows.append((f"int8 dynamic ({engine})", q))
        for name, model in rows:
            if "int8" in name:
                torch.backends.quantized.engine = name.split("(")[1].rstrip(")")
            p50, p90, n = measure(lambda: model(pixel_values=x), a.warmup, a.runs, a.min_seconds)
            print(f"{path.rstrip('/').split('/')[-1]:<40} {name:<22} {p50:>8.2f} {p90:>8.2f} {n:>5}")
