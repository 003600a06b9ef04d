#!/usr/bin/env python3
"""Random-weight ViT-B/16 and DeiT-Ti checkpoints (transformers layout) for the performance
benchmark. Weights are random, so only speed is meaningful; shapes equal the real models.
Not committed: written to target/bench-models/ by default.

    python3 tools/make_bench_models.py [--out target/bench-models]
"""
import argparse
import os

import torch
from transformers import ViTConfig, ViTForImageClassification

SPECS = {
    # google/vit-base-patch16-224
    "vit-base-patch16-224-random": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    # facebook/deit-tiny-patch16-224
    "deit-tiny-patch16-224-random": dict(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768),
}

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "bench-models"))
    a = ap.parse_args()
    for name, sizes in SPECS.items():
        torch.manual_seed(0)
        cfg = ViTConfig(image_size=224, patch_size=16, num_labels=1000, layer_norm_eps=1e-12, **sizes)
        model = ViTForImageClassification(cfg).eval()
        d = os.path.join(a.out, name)
        model.save_pretrained(d)
        print("wrote", d)
