#!/usr/bin/env python3
"""What PyTorch's tutorial recipe loses on real weights: `quantize_dynamic(model, {nn.Linear},
dtype=torch.qint8)` on an engine (default x86) against fp32, on the shared HF ViT-Ti and photos,
with the same PIL preprocessing as the workbench. Prints mean KL(p_fp32 || p_int8), max |dlogit|
and top-1 flips, the numbers `vit-workbench compare --scheme torch` reproduces (README:
Quantization schemes).

    python3 tools/torch_quant_loss.py [--shared ../shared] [--engine x86|fbgemm|onednn|qnnpack]
"""
import argparse
import copy
import os
import warnings

import numpy as np
import torch
from PIL import Image

warnings.filterwarnings("ignore")
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

ap = argparse.ArgumentParser()
ap.add_argument("--shared", default=os.path.join(ROOT, "..", "shared"))
ap.add_argument("--engine", default="x86")
a = ap.parse_args()
torch.backends.quantized.engine = a.engine
torch.set_grad_enabled(False)

from transformers import ViTForImageClassification  # noqa: E402
from torch.ao.quantization import quantize_dynamic  # noqa: E402

model = ViTForImageClassification.from_pretrained(os.path.join(a.shared, "models", "vit-tiny-patch16-224")).eval()
q = quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)
photos = sorted(p for p in os.listdir(os.path.join(a.shared, "images")) if p.lower().endswith((".png", ".jpg")))
kls, dmax, flips = [], 0.0, 0
for p in photos:
    im = Image.open(os.path.join(a.shared, "images", p)).convert("RGB").resize((224, 224), Image.BILINEAR)
    x = (np.asarray(im, dtype=np.float32) / 255.0 - 0.5) / 0.5
    x = torch.from_numpy(x.transpose(2, 0, 1).copy())[None]
    lf, lq = model(pixel_values=x).logits[0].double(), q(pixel_values=x).logits[0].double()
    pf, lpq = lf.log_softmax(-1), lq.log_softmax(-1)
    kls.append(float((pf.exp() * (pf - lpq)).sum()))
    dmax = max(dmax, float((lf - lq).abs().max()))
    flips += int(lf.argmax() != lq.argmax())
    print(f"{p}: KL {kls[-1]:.5f}, top-1 fp32 {int(lf.argmax())} int8 {int(lq.argmax())}")
print(f"{a.engine}: {len(photos)} photos, mean KL {np.mean(kls):.5f}, max |dlogit| {dmax:.3f}, top-1 flips {flips}")
