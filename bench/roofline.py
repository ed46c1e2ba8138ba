#!/usr/bin/env python3
"""Roofline estimate of a training step on an H200 from `muse inspect`'s bytes and FLOPs per
kernel (forward + backward), before any GPU measurement: each generated kernel takes at least
max(bytes / bandwidth, FLOPs / f32 peak), each product max(bytes / bandwidth, FLOPs / product
peak), every launch at least the launch floor. Usage: bench/roofline.py [MUSE_BIN]."""
import subprocess, sys

BW = 4.3e12           # bytes/s, measured copy bandwidth of the H200 (docs/cuda.md)
F32 = 67e12           # FLOP/s, f32 on CUDA cores (H200 SXM datasheet)
TF32 = 495e12         # FLOP/s, TF32 tensor cores, dense (datasheet)
BF16 = 790e12         # FLOP/s, bf16 products, measured on the lent H200
LAUNCH = 2.5e-6       # s, a launch's floor without CUDA graphs

muse = sys.argv[1] if len(sys.argv) > 1 else "target/release/muse"
CASES = [
    ("mamba_xattn_xz", "bench config", 16, []),
    ("muse_small", "bench config", 16, []),
    ("mamba_xattn_xz", "research-log scale", 32, ["dim=1024", "depth=12", "grid=16", "heads=16", "codebook=8192"]),
    ("muse_small", "research-log scale", 32, ["dim=1024", "depth=12", "grid=16", "heads=16", "codebook=8192"]),
]

def rows(model, batch, sets):
    cmd = [muse, "inspect", f"models/{model}.muse", "--backward", "--batch", str(batch), "--device", "cuda-sim"]
    for s in sets:
        cmd += ["--set", s]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        f = line.split()
        if len(f) > 7 and f[0].isdigit() and f[4].isdigit() and f[5].isdigit() and f[6].isdigit():
            yield f[1], f[2], int(f[4]) + int(f[5]), int(f[6])

print(f"{'model':<16} {'config':<19} {'B':>3} {'launches':>8} {'GB moved':>9} {'GFLOP':>8} "
      f"{'kernels ms':>10} {'products ms (f32/tf32/bf16)':>28} {'launch floor ms':>15} {'step ms (tf32)':>14}")
for model, label, batch, sets in CASES:
    launches = moved = flops = 0
    kern = prod32 = prodtf = prodbf = 0.0
    for name, kind, nbytes, nflops in rows(model, batch, sets):
        launches += 1
        moved += nbytes
        flops += nflops
        if kind == "matmul":
            prod32 += max(nbytes / BW, nflops / F32)
            prodtf += max(nbytes / BW, nflops / TF32)
            prodbf += max(nbytes / 2 / BW, nflops / BF16)
        else:
            kern += max(nbytes / BW, nflops / F32)
    floor = launches * LAUNCH
    step = max(kern + prodtf, floor)
    print(f"{model:<16} {label:<19} {batch:>3} {launches:>8} {moved / 1e9:>9.2f} {flops / 1e9:>8.1f} "
          f"{kern * 1e3:>10.3f} {prod32 * 1e3:>9.3f}/{prodtf * 1e3:.3f}/{prodbf * 1e3:.3f} {floor * 1e3:>15.3f} {step * 1e3:>14.3f}")
