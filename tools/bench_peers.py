#!/usr/bin/env python3
"""PyTorch and ONNX Runtime on the same checkpoints as `vit-workbench bench`, measured the same
way: warm-up runs, then timed runs (at least --runs and --min-seconds), median and p90, a fixed
thread count, one synthetic input.

    python3 tools/make_bench_models.py                      # -> target/bench-models/
    python3 tools/bench_peers.py target/bench-models/* --threads 2 [--batch 1 8] [--csv peers.csv]

Variants per model:
- torch fp32 eager, and torch.ao.quantization.quantize_dynamic({nn.Linear}, qint8) on the
  x86 (fbgemm) and onednn engines: the PyTorch tutorial's recipe;
- ONNX Runtime fp32 and onnxruntime.quantization.quantize_dynamic(QInt8) of the same export.

Fairness rules learned the hard way on a 2-core machine:
- the ONNX export returns the logits only (exporting the whole ModelOutput ran ~2.5x slower);
- one InferenceSession is alive at a time: an idle session's spinning threads steal the cores
  from whatever is measured next;
- torch runs on 1 thread while ORT is timed, so torch's own pool does not compete.

--hold-avx2: PyTorch held to AVX2 + FMA on a CPU with more, through each library's own switch
(ATen's ATEN_CPU_CAPABILITY, oneDNN's ONEDNN_MAX_CPU_ISA, MKL's MKL_ENABLE_INSTRUCTIONS,
fbgemm's FBGEMM_ENABLE_INSTRUCTIONS), to compare with `VITWB_ISA=avx2 vit-workbench bench`: the
AVX2 tier emulated on this machine's cores. ONNX Runtime has no such switch (MLAS reads CPUID), so
it is left out. The switches must be set before torch loads, hence before the imports below.
"""
import os
import sys

AVX2_SWITCHES = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2",
}
if "--hold-avx2" in sys.argv:
    os.environ.update(AVX2_SWITCHES)

import argparse
import copy
import csv
import gc
import platform
import statistics
import tempfile
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


class Logits(torch.nn.Module):
    """The model with a plain tensor output, so the export holds nothing but the logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model(pixel_values=pixel_values).logits


def export_onnx(model, x, path):
    wrapped = Logits(model).eval()
    try:
        torch.onnx.export(wrapped, (x,), path, input_names=["pixel_values"], output_names=["logits"],
                          opset_version=17, dynamo=False)
    except Exception:  # newer torch: only the dynamo exporter
        torch.onnx.export(wrapped, (x,), path, input_names=["pixel_values"], output_names=["logits"], dynamo=True)


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="transformers-layout checkpoint folders")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, nargs="+", default=[1])
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--min-seconds", type=float, default=3.0)
    ap.add_argument("--skip", nargs="*", default=[], choices=["torch", "ort"], help="peers to leave out")
    ap.add_argument("--csv", help="also write the rows here")
    ap.add_argument("--hold-avx2", action="store_true",
                    help="PyTorch held to AVX2+FMA (see above); ONNX Runtime, which cannot be, is skipped")
    a = ap.parse_args()
    if a.hold_avx2:
        a.skip = sorted(set(a.skip) | {"ort"})
        capability = torch.backends.cpu.get_cpu_capability()
        if capability != "AVX2":
            sys.exit(f"--hold-avx2: torch reports CPU capability {capability}, not AVX2")

    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    torch.set_grad_enabled(False)
    rows = []
    held = " | torch held to AVX2 (" + ", ".join(f"{k}={v}" for k, v in AVX2_SWITCHES.items()) + ")" if a.hold_avx2 else ""
    print(f"cpu: {cpu_name()} | torch {torch.__version__}, onnxruntime {ort.__version__} | "
          f"{a.threads} threads | engines {torch.backends.quantized.supported_engines}{held}")
    print(f"{'model':<32} {'batch':>5} {'peer':<26} {'p50 ms':>8} {'p90 ms':>8} {'img/s':>7} {'runs':>5}")

    def report(model_name, batch, peer, p50, p90, n):
        print(f"{model_name:<32} {batch:>5} {peer:<26} {p50:>8.2f} {p90:>8.2f} {1000 * batch / p50:>7.1f} {n:>5}", flush=True)
        rows.append(dict(model=model_name, batch=batch, peer=peer, threads=a.threads, p50_ms=round(p50, 3),
                         p90_ms=round(p90, 3), images_per_s=round(1000 * batch / p50, 2), runs=n, cpu=cpu_name()))

    for path in a.models:
        name = path.rstrip("/").split("/")[-1]
        fp32 = ViTForImageClassification.from_pretrained(path, attn_implementation="eager").eval()
        for batch in a.batch:
            torch.manual_seed(0)
            x = torch.randn(batch, 3, 224, 224)
            if "torch" not in a.skip:
                torch.set_num_threads(a.threads)
                variants = [("torch fp32 eager", fp32, None)]
                for engine in ["x86", "onednn"]:
                    if engine in torch.backends.quantized.supported_engines:
                        torch.backends.quantized.engine = engine
                        q = torch.ao.quantization.quantize_dynamic(copy.deepcopy(fp32), {torch.nn.Linear}, dtype=torch.qint8)
                        variants.append((f"torch int8 dynamic ({engine})", q, engine))
                for peer, model, engine in variants:
                    if engine:
                        torch.backends.quantized.engine = engine
                    report(name, batch, peer, *measure(lambda: model(pixel_values=x), a.warmup, a.runs, a.min_seconds))
                del variants
                gc.collect()
            if "ort" not in a.skip:
                torch.set_num_threads(1)
                with tempfile.TemporaryDirectory() as tmp:
                    f32_path = os.path.join(tmp, "model.onnx")
                    q_path = os.path.join(tmp, "model.int8.onnx")
                    export_onnx(fp32, x, f32_path)
                    quantize_dynamic(f32_path, q_path, weight_type=QuantType.QInt8)
                    feed = {"pixel_values": x.numpy()}
                    for peer, file in [("ort fp32", f32_path), ("ort int8 dynamic (QInt8)", q_path)]:
                        opts = ort.SessionOptions()
                        opts.intra_op_num_threads = a.threads
                        opts.inter_op_num_threads = 1
                        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                        session = ort.InferenceSession(file, opts, providers=["CPUExecutionProvider"])
                        report(name, batch, peer, *measure(lambda: session.run(None, feed), a.warmup, a.runs, a.min_seconds))
                        del session  # one live session at a time: its idle threads spin
                        gc.collect()
    if a.csv:
        with open(a.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
            w.writeheader()
            w.writerows(rows)
        print("wrote", a.csv, file=sys.stderr)


if __name__ == "__main__":
    main()
