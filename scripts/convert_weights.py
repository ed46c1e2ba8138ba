#!/usr/bin/env python3
"""Converts public PyTorch checkpoints into the safetensors files muse loads by name.

  convert_weights.py inception pt_inception-2015-12-05-6726825d.pth fid_inception.safetensors

pytorch-fid's FID Inception weights (https://github.com/mseitzer/pytorch-fid/releases,
the file FID_WEIGHTS_URL names) are a state dict whose names and layouts are already those
of models/inception_fid.muse (torchvision's module names, convolutions [out, in, kh, kw]),
so the conversion keeps every float tensor as it is and drops BatchNorm's step counters;
then `muse eval RUN --fid-weights fid_inception.safetensors`. Needs torch and safetensors.
"""
import sys

import torch
from safetensors.torch import save_file


def inception(src, dst):
    sd = torch.load(src, map_location="cpu", weights_only=True)
    if "state_dict" in sd:
        sd = sd["state_dict"]
    out = {k: v.float().contiguous() for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    missing = [k for k in ("Conv2d_1a_3x3.conv.weight", "Mixed_7c.branch_pool.bn.running_var") if k not in out]
    if missing:
        sys.exit(f"{src}: not an FID Inception state dict (no {', '.join(missing)})")
    save_file(out, dst)
    print(f"wrote {dst}: {len(out)} tensors")


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("inception",):
        sys.exit(__doc__)
    {"inception": inception}[sys.argv[1]](sys.argv[2], sys.argv[3])
