#!/usr/bin/env python3
"""PyTorch reference for class-specific attribution (Chefer, Gur, Wolf, ICCV 2021): writes
tests/fixtures/attribution.safetensors from the committed tiny fixtures (run make_fixtures.py first;
this script only reads them). Needs torch, timm, transformers, safetensors (PyPI).

    python3 tools/make_attribution_fixtures.py

The models are the libraries' own (timm VisionTransformer / VisionTransformerDistilled,
transformers ViTForImageClassification) loaded from the fixture checkpoints; the attention
probabilities are taken where the library multiplies them with the values, their gradients by
autograd. Per layer: R += mean_heads((dA * A).clamp(min=0)) @ R from R = I, for one class logit.

int8 / mobile: every nn.Linear (and the patch-embedding Conv2d, which vit-workbench quantizes
too) is replaced by a fake-quantized layer: weights symmetric int8 per output channel, input rows
quantized symmetric int8 per row, round half to even, with a straight-through gradient. Mobile
additionally folds 1/sqrt(head_dim) into the q rows before quantizing (timm only).

Keys: <fixture>.<variant>.img<i>.class<c>.relevance [T, T] and .logits [classes].
"""
import copy
import os

import timm
import torch
from safetensors.torch import load_file, save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FIX = os.path.join(ROOT, "tests", "fixtures")


class RowFakeQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        amax = x.abs().amax(-1, keepdim=True)
        inv = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
        return torch.round(torch.clamp(x * inv, -127.0, 127.0)) * (amax / 127.0)

    @staticmethod
    def backward(ctx, g):
        return g


def quantize_weight(w):
    w2 = w.reshape(w.shape[0], -1)
    amax = w2.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    return (torch.round(torch.clamp(w2 * inv, -127.0, 127.0)) * (amax / 127.0)).reshape(w.shape)


class FQLinear(torch.nn.Module):
    def __init__(self, lin, row_scale=None):
        super().__init__()
        w, b = lin.weight.detach().clone(), None if lin.bias is None else lin.bias.detach().clone()
        if row_scale is not None:
            rows, s = row_scale
            w[:rows] *= s
            if b is not None:
                b[:rows] *= s
        self.weight, self.bias = quantize_weight(w), b

    def forward(self, x):
        return torch.nn.functional.linear(RowFakeQuant.apply(x), self.weight, self.bias)


class FQPatch(torch.nn.Module):
    """The patch Conv2d as a fake-quantized linear layer on flattened (C, P, P) patches."""

    def __init__(self, conv):
        super().__init__()
        self.p = conv.kernel_size[0]
        self.weight = quantize_weight(conv.weight.detach()).reshape(conv.out_channels, -1)
        self.bias = conv.bias.detach()

    def forward(self, x):
        b, c, h, w = x.shape
        p = self.p
        patches = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * p * p)
        y = torch.nn.functional.linear(RowFakeQuant.apply(patches), self.weight, self.bias)
        return y.reshape(b, h // p, w // p, -1).permute(0, 3, 1, 2)


def relevance(attns, tokens):
    r = torch.eye(tokens)
    for a in attns:
        cam = (a.grad * a).clamp(min=0).mean(dim=1)[0]
        r = r + cam @ r
    return r


def timm_model(name, variant):
    import json
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer
    timm.layers.set_fused_attn(False)
    cfg = json.load(open(os.path.join(FIX, name, "config.json")))
    cls = VisionTransformerDistilled if "distilled" in cfg["architecture"] else VisionTransformer
    model = cls(num_classes=cfg["num_classes"], **cfg["model_args"])
    model.load_state_dict(load_file(os.path.join(FIX, name, "model.safetensors")))
    model.eval()
    if variant != "fp32":
        model.patch_embed.proj = FQPatch(model.patch_embed.proj)
        for blk in model.blocks:
            a = blk.attn
            fold = None
            if variant == "mobile":
                fold = (a.qkv.in_features, a.scale)
                a.scale = 1.0
            a.qkv = FQLinear(a.qkv, fold)
            a.proj = FQLinear(a.proj)
            blk.mlp.fc1 = FQLinear(blk.mlp.fc1)
            blk.mlp.fc2 = FQLinear(blk.mlp.fc2)
        model.head = FQLinear(model.head)
        if hasattr(model, "head_dist"):
            model.head_dist = FQLinear(model.head_dist)
    captured = []

    def hook(m, i, o):
        if o.requires_grad:
            o.retain_grad()
        captured.append(o)

    for blk in model.blocks:
        blk.attn.attn_drop.register_forward_hook(hook)
    heads = 2 if hasattr(model, "head_dist") else 1

    def run(x):
        captured.clear()
        return model(x), list(captured), heads

    return run


def hf_model(name, variant):
    from transformers import ViTForImageClassification
    model = ViTForImageClassification.from_pretrained(os.path.join(FIX, name), attn_implementation="eager").eval()
    if variant != "fp32":
        emb = model.vit.embeddings.patch_embeddings
        emb.projection = FQPatch(emb.projection)
        # transformers 5 names: vit.layers.N.attention.{q,k,v,o}_proj, mlp.fc{1,2}.
        for layer in model.vit.layers:
            for n in ["q_proj", "k_proj", "v_proj", "o_proj"]:
                setattr(layer.attention, n, FQLinear(getattr(layer.attention, n)))
            layer.mlp.fc1 = FQLinear(layer.mlp.fc1)
            layer.mlp.fc2 = FQLinear(layer.mlp.fc2)
        model.classifier = FQLinear(model.classifier)

    def run(x):
        out = model(pixel_values=x, output_attentions=True)
        for a in out.attentions:
            if a.requires_grad:
                a.retain_grad()
        return out.logits, list(out.attentions), 1

    return run


CASES = [
    ("timm_vit", timm_model, ["fp32", "int8", "mobile"]),
    ("timm_deit_distilled", timm_model, ["fp32", "int8"]),
    ("hf_vit", hf_model, ["fp32", "int8"]),
]


def main():
    out = {}
    for name, make, variants in CASES:
        pixels = load_file(os.path.join(FIX, name, "reference.safetensors"))["pixel_values"]
        for variant in variants:
            run = make(name, variant)
            for i in range(pixels.shape[0]):
                x = pixels[i:i + 1].clone()
                with torch.no_grad():
                    logits, _, _ = run(x)
                top1 = int(logits[0].argmax())
                for c in [top1, (top1 + 3) % logits.shape[1]]:
                    # Gradients must flow even where no parameter requires them (fake-quant layers).
                    logits, attns, heads = run(x.clone().requires_grad_(True))
                    logits[0, c].backward()
                    tokens = attns[0].shape[-1]
                    r = relevance(attns, tokens).detach()
                    key = f"{name}.{variant}.img{i}.class{c}"
                    out[f"{key}.relevance"] = r.contiguous()
                    out[f"{key}.logits"] = logits[0].detach().contiguous()
                    row = r[:heads].mean(0)
                    print(key, "tokens", tokens, "row[:4]", [round(float(v), 4) for v in row[:4]])
    save_file(out, os.path.join(FIX, "attribution.safetensors"))
    print("wrote", len(out), "tensors")


if __name__ == "__main__":
    main()
