#!/usr/bin/env python3
"""Small hostile inputs that are easier to make with Python than in the Rust tests.

tests/fixtures/hostile/evil_pickle/pytorch_model.bin: a PyTorch-style zip whose pickle, when
unpickled by Python, would run `touch <marker>` (os.system). The loader must refuse it without
executing anything.

tests/fixtures/hostile/huge_pickle/pytorch_model.bin: a torch.save'd state dict whose pickle is
edited so that `classifier.weight` claims the contiguous shape [10^9, 192] over a storage of
7x192 floats: loading it naively allocates 768 GB. The loader must refuse it from the declared
shape, before allocating.
"""
import io
import os
import pickle
import zipfile

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "hostile", "evil_pickle")


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/vit-workbench-pwned",))


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"vit.embeddings.cls_token": Evil()}, protocol=2))
        z.writestr("archive/version", "3\n")
    with open(os.path.join(OUT, "pytorch_model.bin"), "wb") as f:
        f.write(buf.getvalue())
    # A config that matches the tiny HF ViT fixture, so only the weights are hostile.
    src = os.path.join(OUT, "..", "..", "hf_vit", "config.json")
    with open(src) as a, open(os.path.join(OUT, "config.json"), "w") as b:
        b.write(a.read())
    print("wrote", OUT)

    import torch  # only for the second fixture

    huge = os.path.join(OUT, "..", "huge_pickle")
    os.makedirs(huge, exist_ok=True)
    buf = io.BytesIO()
    torch.save({"classifier.weight": torch.zeros(7, 192)}, buf)
    src_zip = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name in src_zip.namelist():
            data = src_zip.read(name)
            if name.endswith("data.pkl"):
                # The size tuple (7, 192) is BININT1 7, BININT1 192, TUPLE2; make it (10^9, 192).
                size = b"K\x07K\xc0\x86"
                assert data.count(size) == 1, data
                data = data.replace(size, b"J" + (10**9).to_bytes(4, "little") + b"K\xc0\x86")
            z.writestr(name, data)
    with open(os.path.join(huge, "pytorch_model.bin"), "wb") as f:
        f.write(out.getvalue())
    with open(src) as a, open(os.path.join(huge, "config.json"), "w") as b:
        b.write(a.read())
    print("wrote", huge)
