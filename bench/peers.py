"""The peers' side of bench/run.sh: the same cases as bench/src/kernels.rs in PyTorch
(eager and torch.compile) and JAX (jit), on the CPU, same shapes. Prints one JSON object
per line: {"case", "impl", "ms" (median), "note"}."""

import json
import os
import statistics
import sys
import time

REPEATS = int(sys.argv[1]) if len(sys.argv) > 1 else 20
# MUSE_PEERS_DEVICE=cuda: PyTorch on the GPU (scripts/gpu-check.sh); JAX takes its default.
DEVICE = os.environ.get("MUSE_PEERS_DEVICE", "cpu")
SYNC = [lambda: None]


def timed(fn, repeats=REPEATS):
    fn()  # warm-up (and compilation)
    fn()
    SYNC[0]()
    ms = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        SYNC[0]()
        ms.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ms)


def emit(case, impl, ms, note=""):
    print(json.dumps({"case": case, "impl": impl, "ms": round(ms, 4), "note": note}), flush=True)


def torch_cases():
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    torch.set_default_device(DEVICE)
    if DEVICE != "cpu":
        SYNC[0] = torch.cuda.synchronize
    n = 16 * 1024 * 1024
    x = torch.randn(n)
    chain = lambda x: (x * 1.5 + 0.5) * x - 0.25
    big = torch.randn(8192, 1024)
    w, b = torch.ones(1024), torch.zeros(1024)
    B, L, D, N = 8, 64, 128, 16
    E, R = 2 * D, (D + 15) // 16
    p = {
        "in_proj": torch.randn(2 * E, D) * 0.02,
        "conv_w": torch.randn(E, 1, 4) * 0.5,
        "conv_b": torch.zeros(E),
        "x_proj": torch.randn(R + 2 * N, E) * 0.02,
        "dt_w": torch.randn(E, R) * 0.5,
        "dt_b": torch.full((E,), -4.0),
        "A_log": torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(E, 1),
        "D": torch.ones(E),
        "out_proj": torch.randn(D, E) * 0.02,
    }
    for v in p.values():
        v.requires_grad_(True)
    xm = torch.randn(B, L, D, requires_grad=True)
    r = torch.randn(B, L, D)

    def mamba(x):
        xz = x @ p["in_proj"].T
        u, z = xz.chunk(2, -1)
        u = F.conv1d(u.transpose(1, 2), p["conv_w"], p["conv_b"], padding=3, groups=E)[..., :L]
        u = F.silu(u).transpose(1, 2)
        d, Bm, Cm = (u @ p["x_proj"].T).split([R, N, N], -1)
        dt = F.softplus(d @ p["dt_w"].T + p["dt_b"])
        A = -torch.exp(p["A_log"])
        dA = torch.exp(dt[..., None] * A)
        dBu = (dt * u)[..., None] * Bm[:, :, None, :]
        h = torch.zeros(B, E, N)
        ys = []
        for t in range(L):
            h = dA[:, t] * h + dBu[:, t]
            ys.append((h * Cm[:, t, None, :]).sum(-1))
        y = torch.stack(ys, 1) + u * p["D"]
        return (y * F.silu(z)) @ p["out_proj"].T

    def mamba_step(f):
        def run():
            for v in list(p.values()) + [xm]:
                v.grad = None
            (f(xm) * r).sum().backward()
        return run

    threads = torch.get_num_threads()
    with torch.no_grad():
        for impl, wrap in [("torch eager", lambda f: f), ("torch.compile", torch.compile)]:
            f = wrap(chain)
            emit("elementwise_16M", impl, timed(lambda: f(x)), f"{threads} threads")
            ln = wrap(lambda t: F.layer_norm(t, (1024,), w, b))
            emit("layernorm_8192x1024", impl, timed(lambda: ln(big)))
            sm = wrap(lambda t: torch.softmax(t, -1))
            emit("softmax_8192x1024", impl, timed(lambda: sm(big)))
    for case, (m, k, nn) in [("gemm_512x512x512", (512, 512, 512)), ("gemm_512x128x512", (512, 128, 512))]:
        a, b2 = torch.randn(m, k), torch.randn(k, nn)
        ms = timed(lambda: a @ b2)
        emit(case, "torch eager", ms, f"{2 * m * k * nn / (ms * 1e-3) / 1e9:.1f} GFLOP/s ({torch.backends.mkldnn.is_available() and 'oneDNN/MKL' or 'BLAS'})")
        import numpy as np
        an, bn = a.numpy(), b2.numpy()
        ms = timed(lambda: an @ bn)
        emit(case, "numpy", ms, f"{2 * m * k * nn / (ms * 1e-3) / 1e9:.1f} GFLOP/s (numpy's BLAS: OpenBLAS)")
    emit("mamba_block_fwd_bwd", "torch eager", timed(mamba_step(mamba), 10))
    try:
        emit("mamba_block_fwd_bwd", "torch.compile", timed(mamba_step(torch.compile(mamba)), 10))
    except Exception as e:  # compilation of the unrolled scan can fail on some setups
        emit("mamba_block_fwd_bwd", "torch.compile", float("nan"), f"failed: {type(e).__name__}")


def jax_cases():
    import jax
    import jax.numpy as jnp

    key = jax.random.PRNGKey(0)
    n = 16 * 1024 * 1024
    x = jax.random.normal(key, (n,))
    chain = jax.jit(lambda x: (x * 1.5 + 0.5) * x - 0.25)
    emit("elementwise_16M", "jax jit", timed(lambda: chain(x).block_until_ready()))
    big = jax.random.normal(key, (8192, 1024))

    def ln(t):
        mu = t.mean(-1, keepdims=True)
        var = ((t - mu) ** 2).mean(-1, keepdims=True)
        return (t - mu) * jax.lax.rsqrt(var + 1e-5)

    lnj = jax.jit(ln)
    emit("layernorm_8192x1024", "jax jit", timed(lambda: lnj(big).block_until_ready()))
    smj = jax.jit(lambda t: jax.nn.softmax(t, -1))
    emit("softmax_8192x1024", "jax jit", timed(lambda: smj(big).block_until_ready()))

    B, L, D, N = 8, 64, 128, 16
    E, R = 2 * D, (D + 15) // 16
    ks = jax.random.split(key, 8)
    p = {
        "in_proj": jax.random.normal(ks[0], (2 * E, D)) * 0.02,
        "conv_w": jax.random.normal(ks[1], (E, 4)) * 0.5,
        "conv_b": jnp.zeros(E),
        "x_proj": jax.random.normal(ks[2], (R + 2 * N, E)) * 0.02,
        "dt_w": jax.random.normal(ks[3], (E, R)) * 0.5,
        "dt_b": jnp.full((E,), -4.0),
        "A_log": jnp.tile(jnp.log(jnp.arange(1, N + 1, dtype=jnp.float32)), (E, 1)),
        "D": jnp.ones(E),
        "out_proj": jax.random.normal(ks[4], (D, E)) * 0.02,
    }
    xm = jax.random.normal(ks[5], (B, L, D))
    r = jax.random.normal(ks[6], (B, L, D))

    def mamba(p, x):
        u, z = jnp.split(x @ p["in_proj"].T, 2, -1)
        up = jnp.pad(u, ((0, 0), (3, 0), (0, 0)))
        u = sum(up[:, k : k + L] * p["conv_w"][:, k] for k in range(4)) + p["conv_b"]
        u = jax.nn.silu(u)
        dbc = u @ p["x_proj"].T
        d, Bm, Cm = dbc[..., :R], dbc[..., R : R + N], dbc[..., R + N :]
        dt = jax.nn.softplus(d @ p["dt_w"].T + p["dt_b"])
        A = -jnp.exp(p["A_log"])
        dA = jnp.exp(dt[..., None] * A)
        dBu = (dt * u)[..., None] * Bm[:, :, None, :]

        def step(h, t):
            h = dA[:, t] * h + dBu[:, t]
            return h, (h * Cm[:, t, None, :]).sum(-1)

        _, ys = jax.lax.scan(step, jnp.zeros((B, E, N)), jnp.arange(L))
        y = jnp.moveaxis(ys, 0, 1) + u * p["D"]
        return (y * jax.nn.silu(z)) @ p["out_proj"].T

    grad = jax.jit(jax.grad(lambda p, x: (mamba(p, x) * r).sum(), argnums=(0, 1)))
    emit("mamba_block_fwd_bwd", "jax jit", timed(lambda: jax.block_until_ready(grad(p, xm)), 10))


if __name__ == "__main__":
    torch_cases()
    jax_cases()
