#!/usr/bin/env python3
"""Builds the parity fixtures under tests/fixtures/ (committed; small).

Needs: torch, transformers, timm, pillow, safetensors, numpy (PyPI). Run from the repo root:

    python3 tools/make_fixtures.py [--shared ../shared]
    python3 tools/make_fixtures.py --only torch-x86   # just the torch x86 references below

What it writes, per tiny random-weight model (32-dim, 2 layers, 2 heads, 32x32 input, patch 8,
10 classes) in each layout the engine loads:
  tests/fixtures/<name>/config.json, model.safetensors or pytorch_model.bin   (the checkpoint)
  tests/fixtures/<name>/reference.safetensors: pixel_values [2,3,32,32], logits [2,10],
                                              attn.<layer> [2,heads,T,T] (softmax probabilities)
and, for the preprocessing recipes on real photos (PIL is the reference resampler):
  tests/fixtures/preprocess/<recipe>__<photo>.png  the 8-bit image after resize + crop, before
                                                  normalisation (normalisation is exact arithmetic)
  tests/fixtures/real_reference.json                top-5 of the real ViT-Ti in both layouts
and the references of the `torch` quantization scheme (PyTorch's tutorial recipe,
`quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)` on the x86 engine), made from the
committed fixture checkpoints without rewriting them:
  tests/fixtures/<name>/torch_x86.safetensors: logits [2,10] of the quantized model on the
      fixture's pixel_values, and per quantized nn.Linear its input `L.x` and output `L.y` in
      that forward, under the export layout's layer names `L` (`blocks.N.qkv|proj|fc1|fc2`,
      `heads.I`; a transformers model's q, k and v outputs concatenated in that order)
  tests/fixtures/quant_linear/torch_x86.safetensors: single layers `caseN.{x,weight,bias,y}`
"""
import argparse
import json
import math
import os
import shutil

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FIX = os.path.join(ROOT, "tests", "fixtures")

DIM, DEPTH, HEADS, MLP, IMG, PATCH, CLASSES = 32, 2, 2, 64, 32, 8, 10
LABELS = {str(i): f"fixture class {i}" for i in range(CLASSES)}


def randomize(model, seed):
    """Replace the library's tiny init (std 0.02) by weights large enough that attention is far from
    uniform and every parameter matters, so a wrong mapping shows up in the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and ("norm" in name.lower() and name.endswith("weight")):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p[0].numel() if p.dim() > 1 else 1
                p.copy_(torch.randn(p.shape, generator=g) * (1.5 / math.sqrt(fan_in)))
    return model.eval()


def inputs(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((2, 3, IMG, IMG), generator=g)


def torch_int8(model):
    """torch's dynamic int8 quantization of every nn.Linear, with per-channel weights (the
    closest torch scheme to ours; torch quantizes activations per tensor, we per row)."""
    import copy
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    return quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)


def write_reference(out_dir, pixels, logits, attns, logits_int8):
    tensors = {"pixel_values": pixels.contiguous(), "logits": logits.contiguous(),
               "logits_int8_torch": logits_int8.contiguous()}
    for i, a in enumerate(attns):
        tensors[f"attn.{i}"] = a.contiguous()
    save_file(tensors, os.path.join(out_dir, "reference.safetensors"))


def fresh_dir(name):
    d = os.path.join(FIX, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


def hf_models():
    from transformers import (DeiTConfig, DeiTForImageClassification,
                              DeiTForImageClassificationWithTeacher, ViTConfig,
                              ViTForImageClassification)
    common = dict(hidden_size=DIM, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
                  intermediate_size=MLP, image_size=IMG, patch_size=PATCH, num_labels=CLASSES,
                  id2label=LABELS, label2id={v: int(k) for k, v in LABELS.items()},
                  attn_implementation="eager")
    specs = [
        # (fixture, class, config, safetensors?, layer_norm_eps)
        ("hf_vit", ViTForImageClassification, ViTConfig, True, 1e-12),
        # facebook/deit-*-patch16-224 are ViTForImageClassification shipped as pytorch_model.bin
        ("hf_vit_bin", ViTForImageClassification, ViTConfig, False, 1e-12),
        ("hf_deit", DeiTForImageClassification, DeiTConfig, False, 1e-12),
        ("hf_deit_distilled", DeiTForImageClassificationWithTeacher, DeiTConfig, True, 1e-12),
    ]
    for seed, (name, cls, cfg_cls, safetensors, eps) in enumerate(specs, start=1):
        torch.manual_seed(seed)
        model = randomize(cls(cfg_cls(layer_norm_eps=eps, **common)), seed)
        d = fresh_dir(name)
        model.save_pretrained(d, safe_serialization=safetensors)
        if not safetensors and not os.path.exists(os.path.join(d, "pytorch_model.bin")):
            # transformers 5 always writes safetensors; write the legacy pickle by hand.
            for f in os.listdir(d):
                if f.endswith(".safetensors"):
                    os.remove(os.path.join(d, f))
            torch.save(model.state_dict(), os.path.join(d, "pytorch_model.bin"))
        x = inputs(100 + seed)
        with torch.no_grad():
            out = model(pixel_values=x, output_attentions=True)
            q_logits = torch_int8(model)(pixel_values=x).logits
        write_reference(d, x, out.logits, out.attentions, q_logits)
        print(name, "logits", tuple(out.logits.shape))


def timm_models():
    import timm
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer
    timm.layers.set_fused_attn(False)
    args = dict(img_size=IMG, patch_size=PATCH, embed_dim=DIM, depth=DEPTH, num_heads=HEADS,
                mlp_ratio=MLP / DIM, num_classes=CLASSES)
    specs = [
        ("timm_vit", VisionTransformer, "vit_fixture_patch8_32"),
        ("timm_deit_distilled", VisionTransformerDistilled, "deit_fixture_distilled_patch8_32"),
    ]
    for seed, (name, cls, arch) in enumerate(specs, start=10):
        torch.manual_seed(seed)
        model = randomize(cls(**args), seed)
        d = fresh_dir(name)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  os.path.join(d, "model.safetensors"))
        config = {
            "architecture": arch,
            "num_classes": CLASSES,
            "num_features": DIM,
            "global_pool": "token",
            "model_args": {k: v for k, v in args.items() if k != "num_classes"},
            "pretrained_cfg": {
                "input_size": [3, IMG, IMG], "interpolation": "bicubic", "crop_pct": 0.875,
                "crop_mode": "center", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                "num_classes": CLASSES, "first_conv": "patch_embed.proj", "classifier": "head",
                "label_names": [LABELS[str(i)] for i in range(CLASSES)],
            },
        }
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        captured = []
        hooks = [b.attn.attn_drop.register_forward_hook(lambda m, i, o: captured.append(o))
                 for b in model.blocks]
        x = inputs(100 + seed)
        with torch.no_grad():
            logits = model(x)
        for h in hooks:
            h.remove()
        with torch.no_grad():
            q_logits = torch_int8(model)(x)
        write_reference(d, x, logits, captured, q_logits)
        print(name, "logits", tuple(logits.shape))


# The preprocessing recipes, written the way the reference libraries run them on a PIL image.
def torchvision_round(v):
    return int(round(v))  # Python's round: half to even, as torchvision's CenterCrop uses


def resize_shorter(img, size, resample):
    w, h = img.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    return img.resize((new_w, new_h), resample)


def center_crop(img, size):
    w, h = img.size
    top = torchvision_round((h - size) / 2.0)
    left = torchvision_round((w - size) / 2.0)
    return img.crop((left, top, left + size, top + size))


RECIPES = {
    # google/vit-base-patch16-224 and the shared HF ViT-Ti: ViTImageProcessor (PIL, bilinear)
    "hf_vit": lambda im: im.resize((224, 224), Image.BILINEAR),
    # timm vit_tiny_patch16_224.augreg_in21k_ft_in1k: bicubic, crop_pct 0.9 -> Resize(248) + crop
    "timm_crop90_bicubic": lambda im: center_crop(resize_shorter(im, math.floor(224 / 0.9), Image.BICUBIC), 224),
    # DeiT: shorter side 256 bicubic, centre crop 224
    "deit": lambda im: center_crop(resize_shorter(im, 256, Image.BICUBIC), 224),
}


def preprocess_refs(shared):
    out = os.path.join(FIX, "preprocess")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    for photo in ["chelsea.png", "rocket.jpg"]:
        im = Image.open(os.path.join(shared, "images", photo)).convert("RGB")
        for recipe, fn in RECIPES.items():
            res = fn(im)
            assert res.size == (224, 224)
            res.save(os.path.join(out, f"{recipe}__{os.path.splitext(photo)[0]}.png"))
    print("preprocess references written")


def real_references(shared):
    """Top-5 of the real ViT-Ti in both layouts with each layout's own (PIL) preprocessing."""
    import timm
    from safetensors.torch import load_file
    from transformers import ViTForImageClassification
    models = os.path.join(shared, "models")
    labels = open(os.path.join(models, "imagenet1k_labels.txt")).read().splitlines()
    tm = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    tm.load_state_dict(load_file(os.path.join(models, "vit_tiny_patch16_224.augreg_in21k_ft_in1k", "model.safetensors")))
    tm.eval()
    hf = ViTForImageClassification.from_pretrained(os.path.join(models, "vit-tiny-patch16-224")).eval()

    def tensor(im, mean, std):
        a = np.asarray(im, dtype=np.float32) / 255.0
        a = (a - np.array(mean, dtype=np.float32)) / np.array(std, dtype=np.float32)
        return torch.from_numpy(a.transpose(2, 0, 1).copy())[None]

    result = {}
    for photo in sorted(os.listdir(os.path.join(shared, "images"))):
        if not photo.lower().endswith((".png", ".jpg", ".jpeg")):
            continue
        im = Image.open(os.path.join(shared, "images", photo)).convert("RGB")
        entry = {}
        for layout, model, recipe in [("timm", tm, "timm_crop90_bicubic"), ("hf", hf, "hf_vit")]:
            x = tensor(RECIPES[recipe](im), [0.5] * 3, [0.5] * 3)
            with torch.no_grad():
                logits = model(x) if layout == "timm" else model(pixel_values=x).logits
            p = logits.softmax(-1)[0]
            top = p.topk(5)
            entry[layout] = [{"index": int(i), "label": labels[int(i)], "probability": float(v)}
                             for v, i in zip(top.values, top.indices)]
        result[photo] = entry
        print(photo, entry["timm"][0]["label"], round(entry["timm"][0]["probability"], 3),
              entry["hf"][0]["label"], round(entry["hf"][0]["probability"], 3))
    with open(os.path.join(FIX, "real_reference.json"), "w") as f:
        json.dump(result, f, indent=1)


def quant_linear():
    """One Linear layer quantized by torch, for the layer-level rounding-bound test."""
    d = fresh_dir("quant_linear")
    g = torch.Generator().manual_seed(7)
    lin = torch.nn.Linear(100, 40)
    with torch.no_grad():
        lin.weight.copy_(torch.randn((40, 100), generator=g) * torch.linspace(0.05, 2.0, 40)[:, None])
        lin.bias.copy_(torch.randn(40, generator=g))
    # Rows of very different magnitude: per-row and per-tensor activation scales differ.
    x = torch.randn((7, 100), generator=g) * torch.tensor([0.01, 0.1, 1.0, 3.0, 10.0, 0.5, 30.0])[:, None]
    q = torch_int8(torch.nn.Sequential(lin))
    with torch.no_grad():
        y_int8 = q(x)
        y = lin(x)
    wq = q[0].weight()
    save_file({"x": x.contiguous(), "weight": lin.weight.detach().contiguous(), "bias": lin.bias.detach().contiguous(),
               "y_fp32": y.contiguous(), "y_int8_torch": y_int8.contiguous(),
               "torch_weight_scales": wq.q_per_channel_scales().float().contiguous()},
              os.path.join(d, "reference.safetensors"))
    print("quant_linear written, torch int8 max error", float((y_int8 - y).abs().max()))


def torch_x86_quantize(model):
    """The PyTorch tutorial recipe: default dynamic qconfig (per-tensor symmetric qint8 weights by
    MinMaxObserver; activations quint8, per tensor, reduce_range) on the x86 engine (fbgemm)."""
    import copy
    from torch.ao.quantization import quantize_dynamic
    torch.backends.quantized.engine = "x86"
    return quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)


def load_fixture_model(name):
    d = os.path.join(FIX, name)
    if name.startswith("timm_"):
        from timm.models.deit import VisionTransformerDistilled
        from timm.models.vision_transformer import VisionTransformer
        from safetensors.torch import load_file
        cfg = json.load(open(os.path.join(d, "config.json")))
        cls = VisionTransformerDistilled if "distilled" in name else VisionTransformer
        model = cls(num_classes=cfg["num_classes"], **cfg["model_args"])
        model.load_state_dict(load_file(os.path.join(d, "model.safetensors")))
        return model.eval(), lambda m, x: m(x)
    from transformers import AutoModelForImageClassification
    model = AutoModelForImageClassification.from_pretrained(d, attn_implementation="eager")
    return model.eval(), lambda m, x: m(pixel_values=x).logits


def workbench_layer_name(torch_name):
    """Our layer name for a torch nn.Linear, and the part of it (q/k/v) or None."""
    import re
    m = re.match(r".*layers\.(\d+)\.attention\.([qkv])_proj$", torch_name)
    if m:
        return f"blocks.{m[1]}.qkv", m[2]
    m = re.match(r".*(?:layers|blocks)\.(\d+)\.(?:attention\.o_proj|attn\.proj|attn\.qkv|mlp\.fc1|mlp\.fc2)$", torch_name)
    if m:
        kind = {"o_proj": "proj", "proj": "proj", "qkv": "qkv", "fc1": "fc1", "fc2": "fc2"}[torch_name.split(".")[-1]]
        return f"blocks.{m[1]}.{kind}", None
    heads = {"classifier": 0, "cls_classifier": 0, "head": 0, "distillation_classifier": 1, "head_dist": 1}
    return f"heads.{heads[torch_name]}", None


def torch_x86_references():
    from safetensors.torch import load_file
    for name in ["hf_vit", "hf_deit", "hf_deit_distilled", "timm_vit", "timm_deit_distilled"]:
        model, run = load_fixture_model(name)
        x = load_file(os.path.join(FIX, name, "reference.safetensors"))["pixel_values"]
        q = torch_x86_quantize(model)
        seen = {}
        hooks = []
        for lname, mod in q.named_modules():
            if type(mod).__name__ == "Linear" and "quantized.dynamic" in type(mod).__module__:
                def hook(m, i, o, lname=lname):
                    seen[lname] = (i[0].clone(), o.clone())
                hooks.append(mod.register_forward_hook(hook))
        with torch.no_grad():
            tensors = {"logits": run(q, x).clone()}
        for h in hooks:
            h.remove()
        parts = {}
        for lname, (i, o) in seen.items():
            ours, part = workbench_layer_name(lname)
            tensors[ours + ".x"] = i.contiguous()
            if part is None:
                tensors[ours + ".y"] = o.contiguous()
            else:
                parts.setdefault(ours, {})[part] = o
        for ours, p in parts.items():
            tensors[ours + ".y"] = torch.cat([p["q"], p["k"], p["v"]], dim=-1).contiguous()
        save_file(tensors, os.path.join(FIX, name, "torch_x86.safetensors"))
        print(name, "torch x86 int8:", len(hooks), "quantized linears")
    # Single layers: a wide input range, exact .5 ties, an all-positive input (zero point 0),
    # weights whose most negative value is the tensor's largest magnitude (code -128).
    g = torch.Generator().manual_seed(15)
    cases = []
    x = torch.randn((7, 100), generator=g) * torch.tensor([0.01, 0.1, 1.0, 3.0, 10.0, 0.5, 30.0])[:, None]
    cases.append((x, torch.randn((40, 100), generator=g), torch.randn(40, generator=g)))
    x = torch.arange(-64, 63, dtype=torch.float32).reshape(1, 127).repeat(3, 1) / 4.0
    w = torch.randn((20, 127), generator=g)
    w[3, 5] = -w.abs().max() * 1.5
    cases.append((x, w, torch.randn(20, generator=g)))
    x = torch.rand((13, 45), generator=g) * 5.0
    cases.append((x, torch.randn((9, 45), generator=g) * 0.02, torch.zeros(9)))
    tensors = {}
    for i, (x, w, b) in enumerate(cases):
        lin = torch.nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            lin.weight.copy_(w)
            lin.bias.copy_(b)
            y = torch_x86_quantize(torch.nn.Sequential(lin))(x)
        tensors.update({f"case{i}.x": x.contiguous(), f"case{i}.weight": w.contiguous(),
                        f"case{i}.bias": b.contiguous(), f"case{i}.y": y.contiguous()})
    save_file(tensors, os.path.join(FIX, "quant_linear", "torch_x86.safetensors"))
    print("quant_linear torch x86 cases written")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=os.path.join(ROOT, "..", "shared"))
    ap.add_argument("--only", choices=["torch-x86"], help="write only these references")
    a = ap.parse_args()
    torch.set_grad_enabled(False)
    if a.only == "torch-x86":
        torch_x86_references()
        raise SystemExit(0)
    hf_models()
    timm_models()
    quant_linear()
    torch_x86_references()
    preprocess_refs(a.shared)
    real_references(a.shared)
