#!/usr/bin/env python3
"""Reference outputs of the feature networks muse writes in .muse, from PyTorch with random
weights (no download): `inception OUT_DIR` builds pytorch-fid's FID Inception-v3 exactly as
pytorch_fid.inception.fid_inception_v3 does (torchvision's Inception-v3, 1008 classes, no
auxiliary head, the FID blocks) but keeps random weights and random BatchNorm statistics,
and writes
  weights.safetensors   its state dict (names and layouts as PyTorch has them)
  inputs.safetensors    `image` [N, 299, 299, 3] channels last in -1..1, and `small` [N, 23,
                        37, 3] in 0..1 with `resized`, pytorch-fid's preprocessing of it
                        (bilinear to 299x299, align_corners=False, then 2x - 1)
  expected.safetensors  `features` [N, 2048]: pool3 of `image`
`clip OUT_DIR` does the same for transformers' CLIPModel at ViT-B/32's configuration (both
towers): weights.safetensors, inputs.safetensors (`image` [N, 224, 224, 3], `text_ids`,
`text_mask`) and expected.safetensors (`image_embeds`, `text_embeds` before normalisation,
`cosine` of each pair).
Needs torch, torchvision, pytorch-fid, transformers and safetensors (scripts/fetch-torch.sh).
"""
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file


def fid_inception_random(seed):
    import pytorch_fid.inception as pi

    torch.manual_seed(seed)
    # fid_inception_v3's construction, without its weight download.
    net = pi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = pi.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pi.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pi.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pi.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pi.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pi.FIDInceptionE_1(1280)
    net.Mixed_7c = pi.FIDInceptionE_2(2048)
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            # He initialisation keeps the activations' scale through 94 layers.
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0.0, 0.1)
            m.running_mean.normal_(0.0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    net.fc = torch.nn.Identity()  # pool3 is what precedes it
    return net.eval()


def inception(out):
    net = fid_inception_random(0)
    g = torch.Generator().manual_seed(1)
    n = 2
    image = torch.rand(n, 3, 299, 299, generator=g) * 2 - 1
    small = torch.rand(n, 3, 23, 37, generator=g)
    with torch.no_grad():
        features = net(image)
        resized = 2 * F.interpolate(small, size=(299, 299), mode="bilinear", align_corners=False) - 1
    sd = {k: v.contiguous() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    save_file(sd, os.path.join(out, "weights.safetensors"))
    nhwc = lambda t: t.permute(0, 2, 3, 1).contiguous()
    save_file({"image": nhwc(image), "small": nhwc(small), "resized": nhwc(resized)}, os.path.join(out, "inputs.safetensors"))
    save_file({"features": features.contiguous()}, os.path.join(out, "expected.safetensors"))
    print(f"inception: {len(sd)} tensors, features mean |f| {features.abs().mean():.4g}")


def clip(out):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    # CLIPConfig's defaults are ViT-B/32's (the image tower 768 wide, 12 layers of 12 heads,
    # 32x32 patches of 224x224 images; the text tower 512 wide, 12 layers of 8 heads).
    model = CLIPModel(CLIPConfig()).eval()
    assert model.config.text_config.eos_token_id == 49407, model.config.text_config.eos_token_id
    g = torch.Generator().manual_seed(2)
    n, ctx = 3, 77
    image = torch.randn(n, 3, 224, 224, generator=g)
    ids = torch.full((n, ctx), 49407, dtype=torch.long)  # CLIP pads with <|endoftext|>
    mask = torch.zeros(n, ctx, dtype=torch.long)
    for i, length in enumerate([5, 12, 30]):
        ids[i, 0] = 49406  # <|startoftext|>
        ids[i, 1:length] = torch.randint(0, 49406, (length - 1,), generator=g)
        mask[i, : length + 1] = 1  # through the end-of-text token
    with torch.no_grad():
        image_embeds = model.visual_projection(model.vision_model(pixel_values=image).pooler_output)
        text_embeds = model.text_projection(model.text_model(input_ids=ids, attention_mask=mask).pooler_output)
        cosine = torch.nn.functional.cosine_similarity(image_embeds, text_embeds, dim=-1)
    sd = {k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    save_file(sd, os.path.join(out, "weights.safetensors"))
    inputs = {"image": image.permute(0, 2, 3, 1).contiguous(), "text_ids": ids.int(), "text_mask": mask.bool()}
    save_file(inputs, os.path.join(out, "inputs.safetensors"))
    save_file({"image_embeds": image_embeds, "text_embeds": text_embeds, "cosine": cosine}, os.path.join(out, "expected.safetensors"))
    print(f"clip: {len(sd)} tensors, {sum(v.numel() for v in sd.values())} values")


def clip_io(out):
    """CLIP's tokenizer (a small vocabulary in CLIP's BPE format: every byte, alone and
    ending a word, some merges, the two special tokens) as tokenizer.json, the ids and masks
    transformers' CLIPTokenizer gives some captions padded to 77, and 8-bit images with what
    CLIPImageProcessorPil (OpenAI's PIL preprocessing: bicubic, centre crop, CLIP's mean
    and std) makes of them."""
    import json

    import numpy as np
    from transformers import CLIPImageProcessorPil, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars]
    merges = ["r e", "re d</w>", "c i", "ci r", "cir c", "circ l", "circl e</w>", "t h", "th e</w>", "o n</w>",
              "a b", "ab o", "abo v", "abov e</w>", "l e", "le f", "lef t</w>"]
    for m in merges:
        vocab.append(m.replace(" ", ""))
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    with open(os.path.join(out, "vocab.json"), "w") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f)
    with open(os.path.join(out, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(vocab=os.path.join(out, "vocab.json"), merges=os.path.join(out, "merges.txt"))
    tok.save_pretrained(os.path.join(out, "tok"))
    captions = ["a large red circle on the left", "A  Red Circle ABOVE a white square!", "", "x" * 200,
                "a blue square to the left of a green triangle"]
    enc = tok(captions, padding="max_length", max_length=77, truncation=True)
    with open(os.path.join(out, "captions.json"), "w") as f:
        json.dump({"captions": captions, "input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}, f)
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(3, 16, 16, 3), dtype=np.uint8)
    images[1] = 40  # flat areas and sharp edges, as the built-in data set's
    images[1, 4:12, 3:9] = [230, 25, 25]
    pv = CLIPImageProcessorPil()(images=list(images), return_tensors="pt")["pixel_values"]
    save_file({"images": torch.from_numpy(images.astype(np.int32)), "pixel_values": pv.permute(0, 2, 3, 1).contiguous()},
              os.path.join(out, "images.safetensors"))
    print(f"clip_io: {len(vocab)} tokens, {len(captions)} captions, {len(images)} images")


if __name__ == "__main__":
    what, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    {"inception": inception, "clip": clip, "clip_io": clip_io}[what](out)
