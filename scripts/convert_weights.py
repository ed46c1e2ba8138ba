#!/usr/bin/env python3
"""Converts public PyTorch checkpoints into the safetensors files muse loads by name.

  convert_weights.py inception pt_inception-2015-12-05-6726825d.pth fid_inception.safetensors
  convert_weights.py clip pytorch_model.bin clip_vit_b32.safetensors

pytorch-fid's FID Inception weights (https://github.com/mseitzer/pytorch-fid/releases,
the file FID_WEIGHTS_URL names) are a state dict whose names and layouts are already those
of models/inception_fid.muse (torchvision's module names, convolutions [out, in, kh, kw]),
so the conversion keeps every float tensor as it is and drops BatchNorm's step counters;
then `muse eval RUN --fid-weights fid_inception.safetensors`.

CLIP ViT-B/32 (Hugging Face's openai/clip-vit-base-patch32): its `model.safetensors` already
has the names and layouts of models/clip_vit_b32.muse and loads as it is; a
`pytorch_model.bin` converts by keeping every tensor but the position-id buffers. Then
`muse eval RUN --clip-weights clip_vit_b32.safetensors --clip-tokenizer tokenizer.json`
(the same repository's tokenizer.json). Needs torch and safetensors.
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


def clip(src, dst):
    sd = torch.load(src, map_location="cpu", weights_only=True)
    out = {k: v.float().contiguous() for k, v in sd.items() if not k.endswith("position_ids")}
    missing = [k for k in ("vision_model.embeddings.class_embedding", "text_projection.weight", "logit_scale") if k not in out]
    if missing:
        sys.exit(f"{src}: not a CLIPModel state dict (no {', '.join(missing)})")
    save_file(out, dst)
    print(f"wrote {dst}: {len(out)} tensors")


if __name__ == "__main__":
    kinds = {"inception": inception, "clip": clip}
    if len(sys.argv) != 4 or sys.argv[1] not in kinds:
        sys.exit(__doc__)
    kinds[sys.argv[1]](sys.argv[2], sys.argv[3])
