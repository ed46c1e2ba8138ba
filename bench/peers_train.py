"""One training step (forward, backward, grad-norm clipping at 1.0, AdamW) of two muse models
at their default config, batch 16, in PyTorch (eager and torch.compile) and JAX (jit), on the
CPU. Companion of bench/peers.py (same timing: 2 warm-up steps, then the median of REPEATS
steps; same impl names); prints one JSON object per line: {"case", "impl", "ms", "note"}.

The ports follow models/muse_small.muse and models/mamba_xattn_xz.muse with models/std/*.muse
op for op: the same parameter tensors (muse's names and shapes, checked against the counts of
`muse check`), the same initialisation, pre-norm layers, tanh GELU, attention with the key mask
as a -1e9 fill, Mamba's causal depthwise conv, softplus, selective scan, D skip and silu(z) gate,
and the masked mean of the label-smoothed (0.1) cross-entropy. Every impl starts from the same
parameters and inputs, so their step-0 losses and gradient norms (printed on stderr) must agree.
"""

import json
import math
import os
import statistics
import sys
import time

import numpy as np

REPEATS = int(sys.argv[1]) if len(sys.argv) > 1 else 20
# Also time variants that lost on this 2-core machine (each costs a compilation, up to ~70 s):
# torch.compile with the clip+AdamW update compiled too, and JAX without buffer donation.
ALL_VARIANTS = os.environ.get("MUSE_PEERS_ALL_VARIANTS") == "1"
# MUSE_PEERS_ONLY=torch.compile: that impl alone (bench/run.sh's alternating rounds).
ONLY = os.environ.get("MUSE_PEERS_ONLY")

B = 16
CFG = dict(codebook=256, grid=8, text_vocab=1024, text_len=16, dim=128, depth=4, heads=4,
           text_depth=2, d_state=16, expand=2, smoothing=0.1)
# MUSE_PEERS_DEVICE=cuda: PyTorch on the GPU (scripts/gpu-check.sh); JAX takes its default.
DEVICE = os.environ.get("MUSE_PEERS_DEVICE", "cpu")
# MUSE_PEERS_SCALE=research: the research log's scale (12 layers, width 1024, 256 image
# tokens, batch 32), as bench/src/kernels.rs's MUSE_BENCH_RESEARCH=1.
RESEARCH = os.environ.get("MUSE_PEERS_SCALE") == "research"
if RESEARCH:
    B = 32
    CFG.update(dim=1024, depth=12, grid=16, heads=16, codebook=8192)
# `muse check` of models/*.muse: (parameters, tensors)
EXPECTED = {"muse_small": (1_657_216, 105), "mamba_xattn_xz": (1_331_584, 89)}
MODELS = list(EXPECTED)
LR, BETAS, EPS, WD, CLIP = 1e-4, (0.9, 0.96), 1e-8, 0.045, 1.0


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def emit(case, impl, ms, note=""):
    print(json.dumps({"case": case, "impl": impl, "ms": round(ms, 4), "note": note}), flush=True)


def timed_train(step, sync, label, repeats=REPEATS):
    """step() runs one training step and returns (loss, grad norm before clipping)."""
    t = time.perf_counter()
    loss0, gn0 = (float(v) for v in sync(step()))  # warm-up (and compilation)
    first_s = time.perf_counter() - t
    sync(step())
    ms = []
    out = None
    for _ in range(repeats):
        t = time.perf_counter()
        out = sync(step())
        ms.append((time.perf_counter() - t) * 1e3)
    lossn = float(out[0])
    log(f"[{label}] step 0: loss {loss0:.6f}, grad norm {gn0:.6f} (first step {first_s:.1f} s); "
        f"step {repeats + 1}: loss {lossn:.6f}")
    return statistics.median(ms), loss0, lossn


# ---------------------------------------------------------------- parameters (numpy, muse init)

def init_params(model, seed=0):
    """muse's parameters of `model` in muse's order and names, initialised as models/std/*.muse
    does (normal(0.02) for linear/embedding/pos_emb, ones/zeros for norms, Mamba's inits)."""
    c = CFG
    d, heads = c["dim"], c["heads"]
    rng = np.random.default_rng(seed)
    P = {}

    def normal(name, shape, std=0.02):
        P[name] = (rng.standard_normal(shape) * std).astype(np.float32)

    def const(name, shape, v):
        P[name] = np.full(shape, v, np.float32)

    def uniform(name, shape, lo, hi):
        P[name] = rng.uniform(lo, hi, shape).astype(np.float32)

    def linear(n, out, inp, bias=False):
        normal(n + ".weight", (out, inp))
        if bias:
            const(n + ".bias", (out,), 0.0)

    def layernorm(n, w):
        const(n + ".weight", (w,), 1.0)
        const(n + ".bias", (w,), 0.0)

    def attention(n, w):
        for p in ("to_q", "to_k", "to_v", "to_out"):
            linear(f"{n}.{p}", w, w)

    def mlp(n, w, mult=4):
        linear(n + ".fc1", mult * w, w, bias=True)
        linear(n + ".fc2", w, mult * w, bias=True)

    # text_encoder
    normal("text_encoder.tok_emb.weight", (c["text_vocab"], d))
    normal("text_encoder.pos_emb", (c["text_len"], d))
    for i in range(c["text_depth"]):
        n = f"text_encoder.layers.{i}"
        layernorm(n + ".norm1", d)
        attention(n + ".self_attn", d)
        layernorm(n + ".norm2", d)
        mlp(n + ".mlp", d)
    layernorm("text_encoder.norm_f", d)
    # token_input
    normal("token_input.tok_emb.weight", (c["codebook"] + 1, d))
    normal("token_input.pos_emb", (c["grid"] ** 2, d))
    for i in range(c["depth"]):
        if model == "muse_small":
            n = f"layers.{i}.layer"
            layernorm(n + ".norm1", d)
            attention(n + ".self_attn", d)
            layernorm(n + ".norm2", d)
            attention(n + ".cross_attn", d)
            layernorm(n + ".norm3", d)
            mlp(n + ".mlp", d)
        else:
            n = f"layers.{i}"
            const(n + ".norm.weight", (d,), 1.0)  # rmsnorm
            attention(n + ".xattn", d)
            m = n + ".mixer"
            e, N, r, w = c["expand"] * d, c["d_state"], math.ceil(d / 16), 4
            linear(m + ".in_proj", 2 * e, d)
            uniform(m + ".conv1d.weight", (e, 1, w), -1 / math.sqrt(w), 1 / math.sqrt(w))
            uniform(m + ".conv1d.bias", (e,), -1 / math.sqrt(w), 1 / math.sqrt(w))
            linear(m + ".x_proj", r + 2 * N, e)
            uniform(m + ".dt_proj.weight", (e, r), -1 / math.sqrt(r), 1 / math.sqrt(r))
            dt = np.maximum(np.exp(rng.uniform(math.log(1e-3), math.log(0.1), (e,))), 1e-4)
            P[m + ".dt_proj.bias"] = (dt + np.log(1.0 - np.exp(-dt))).astype(np.float32)
            P[m + ".A_log"] = np.log(np.tile(np.arange(1, N + 1, dtype=np.float32), (e, 1)))
            const(m + ".D", (e,), 1.0)
            linear(m + ".out_proj", d, e)
    layernorm("head.norm_f", d)
    linear("head.to_logits", c["codebook"], d)

    count = sum(v.size for v in P.values())
    if not RESEARCH:
        assert (count, len(P)) == EXPECTED[model], (model, count, len(P), EXPECTED[model])
    return P


def make_inputs(seed=1):
    c = CFG
    rng = np.random.default_rng(seed)
    n, s = c["grid"] ** 2, c["text_len"]
    targets = rng.integers(0, c["codebook"], (B, n)).astype(np.int32)
    loss_mask = rng.random((B, n)) < 0.5
    loss_mask[:, 0] = True
    tokens = np.where(loss_mask, c["codebook"], targets).astype(np.int32)  # MASK id = codebook
    text_ids = rng.integers(0, c["text_vocab"], (B, s)).astype(np.int32)
    text_mask = rng.random((B, s)) < 0.5
    text_mask[:, :4] = True
    return dict(tokens=tokens, targets=targets, loss_mask=loss_mask, text_ids=text_ids,
                text_mask=text_mask)


# ---------------------------------------------------------------- PyTorch

def torch_loss_fn(model):
    import torch
    import torch.nn.functional as F

    c = CFG
    heads = c["heads"]

    def ln(P, n, x):
        return F.layer_norm(x, (x.shape[-1],), P[n + ".weight"], P[n + ".bias"], 1e-5)

    def attention(P, n, x, ctx, key_mask=None):
        b, q_len, d = x.shape
        s_len = ctx.shape[1]
        q = F.linear(x, P[n + ".to_q.weight"]).view(b, q_len, heads, -1).transpose(1, 2)
        k = F.linear(ctx, P[n + ".to_k.weight"]).view(b, s_len, heads, -1).transpose(1, 2)
        v = F.linear(ctx, P[n + ".to_v.weight"]).view(b, s_len, heads, -1).transpose(1, 2)
        s = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(d // heads))
        if key_mask is not None:
            s = torch.where(key_mask[:, None, None, :], s, -1e9)
        o = torch.softmax(s, -1) @ v
        return F.linear(o.transpose(1, 2).reshape(b, q_len, d), P[n + ".to_out.weight"])

    def mlp(P, n, x):
        h = F.gelu(F.linear(x, P[n + ".fc1.weight"], P[n + ".fc1.bias"]), approximate="tanh")
        return F.linear(h, P[n + ".fc2.weight"], P[n + ".fc2.bias"])

    def text_encoder(P, ids, mask):
        t = F.embedding(ids, P["text_encoder.tok_emb.weight"]) + P["text_encoder.pos_emb"]
        for i in range(c["text_depth"]):
            n = f"text_encoder.layers.{i}"
            tn = ln(P, n + ".norm1", t)
            t = t + attention(P, n + ".self_attn", tn, tn, mask)
            t = t + mlp(P, n + ".mlp", ln(P, n + ".norm2", t))
        return ln(P, "text_encoder.norm_f", t)

    def mamba(P, m, x, xz_add):
        b, L, d = x.shape
        e, N = c["expand"] * d, c["d_state"]
        r = math.ceil(d / 16)
        xz = F.linear(x, P[m + ".in_proj.weight"]) + xz_add
        u, z = xz.chunk(2, -1)
        # depthwise causal conv: Conv1d(E, E, 4, groups=E, padding=3) then the causal cut
        u = F.conv1d(u.transpose(1, 2), P[m + ".conv1d.weight"], P[m + ".conv1d.bias"],
                     padding=3, groups=e)[..., :L]
        u = F.silu(u).transpose(1, 2)
        dlow, bm, cm = F.linear(u, P[m + ".x_proj.weight"]).split([r, N, N], -1)
        dt = F.softplus(F.linear(dlow, P[m + ".dt_proj.weight"], P[m + ".dt_proj.bias"]))
        A = -torch.exp(P[m + ".A_log"])
        da = torch.exp(dt[..., None] * A)                 # [B, L, E, N]
        db = (dt * u)[..., None] * bm[:, :, None, :]      # [B, L, E, N]
        # unbind once: indexing da[:, t] in the loop would make autograd's backward of each
        # index materialise a zero-filled gradient of the whole [B, L, E, N] tensor.
        da_t, db_t = da.unbind(1), db.unbind(1)
        h = db_t[0]
        hs = [h]
        for t in range(1, L):
            h = torch.addcmul(db_t[t], da_t[t], h)
            hs.append(h)
        y = (torch.stack(hs, 1) @ cm[..., None]).squeeze(-1) + u * P[m + ".D"]
        return F.linear(y * F.silu(z), P[m + ".out_proj.weight"])

    def loss_fn(P, tokens, targets, loss_mask, text_ids, text_mask):
        text = text_encoder(P, text_ids, text_mask)
        h = F.embedding(tokens, P["token_input.tok_emb.weight"]) + P["token_input.pos_emb"]
        for i in range(c["depth"]):
            if model == "muse_small":
                n = f"layers.{i}.layer"
                hn = ln(P, n + ".norm1", h)
                h = h + attention(P, n + ".self_attn", hn, hn)
                h = h + attention(P, n + ".cross_attn", ln(P, n + ".norm2", h), text, text_mask)
                h = h + mlp(P, n + ".mlp", ln(P, n + ".norm3", h))
            else:
                n = f"layers.{i}"
                xn = F.rms_norm(h, (h.shape[-1],), P[n + ".norm.weight"], 1e-5)
                a = attention(P, n + ".xattn", xn, text, text_mask)
                h = h + mamba(P, n + ".mixer", xn, a.repeat(1, 1, 2 * c["expand"]))
        logits = F.linear(ln(P, "head.norm_f", h), P["head.to_logits.weight"])
        # F.cross_entropy's label smoothing is muse's: (1-s)*nll - s*mean(log_softmax)
        ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none",
                             label_smoothing=c["smoothing"])
        m = loss_mask.flatten().to(logits.dtype)
        return (ce * m).sum() / m.sum().clamp(min=1.0)

    return loss_fn


def torch_cases(model, results):
    import torch

    threads = torch.get_num_threads()
    torch.set_default_device(DEVICE)
    P0 = init_params(model)
    count = f"{sum(v.size for v in P0.values())} params in {len(P0)} tensors"
    X = make_inputs()
    tx = {k: torch.from_numpy(v.astype(np.int64) if v.dtype == np.int32 else v).to(DEVICE) for k, v in X.items()}
    args = (tx["tokens"], tx["targets"], tx["loss_mask"], tx["text_ids"], tx["text_mask"])
    loss_fn = torch_loss_fn(model)
    case = f"train {model} B={B}"

    def fresh(opt_kind):
        P = {k: torch.tensor(v, requires_grad=True) for k, v in P0.items()}
        kw = {"fused": True} if opt_kind == "fused" else {"foreach": opt_kind == "foreach"}
        opt = torch.optim.AdamW(P.values(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WD, **kw)
        return P, opt

    # Which AdamW is fastest here: time the update alone on random gradients.
    opt_ms = {}
    for kind in ("for-loop", "foreach", "fused"):
        P, opt = fresh(kind)
        for p in P.values():
            p.grad = torch.randn_like(p) * 1e-3
        opt.step()
        ts = []
        for _ in range(15):
            t = time.perf_counter()
            opt.step()
            ts.append((time.perf_counter() - t) * 1e3)
        opt_ms[kind] = statistics.median(ts)
    best_opt = min(opt_ms, key=opt_ms.get)
    log(f"[{model}] torch AdamW update alone, ms: " + ", ".join(f"{k} {v:.2f}" for k, v in opt_ms.items()))
    foreach_clip = best_opt != "for-loop"

    def make_step(P, opt, fwd, update):
        params = list(P.values())

        def step():
            for p in params:
                p.grad = None
            loss = fwd(P, *args)
            loss.backward()
            gn = update(params)
            return loss.detach(), gn

        return step

    def eager_update(opt):
        def update(params):
            gn = torch.nn.utils.clip_grad_norm_(params, CLIP, foreach=foreach_clip)
            opt.step()
            return gn
        return update

    def sync(out):
        if DEVICE != "cpu":
            torch.cuda.synchronize()
        return out
    if ONLY in (None, "torch eager"):
        P, opt = fresh(best_opt)
        ms, l0, _ = timed_train(make_step(P, opt, loss_fn, eager_update(opt)), sync, f"{model} torch eager")
        results[("torch eager", model)] = l0
        emit(case, "torch eager", ms,
             f"{count}; AdamW {best_opt}; clip_grad_norm_ foreach={foreach_clip}; {threads} threads")
    if ONLY not in (None, "torch.compile"):
        return

    # torch.compile of the forward+loss with the eager update above. Compiling the clip+AdamW
    # update as well (with foreach AdamW) measured no faster here: the update alone is ~2 ms
    # eager fused vs ~3 ms compiled, against 0.1-1 s steps, and costs 50-70 s of compilation,
    # so it is timed only with MUSE_PEERS_ALL_VARIANTS=1.
    variants = []
    try:
        cfwd = torch.compile(loss_fn)
        P, opt = fresh(best_opt)
        ms, l0, _ = timed_train(make_step(P, opt, cfwd, eager_update(opt)), sync,
                                f"{model} torch.compile (fwd+loss)")
        variants.append((ms, f"compiled fwd+loss, eager AdamW {best_opt}", l0))
    except Exception as e:  # noqa: BLE001
        log(f"[{model}] torch.compile failed: {type(e).__name__}: {e}")
        emit(case, "torch.compile", float("nan"), f"failed: {type(e).__name__}")
        return
    if ALL_VARIANTS:
        try:
            P, opt = fresh("foreach")

            @torch.compile
            def cupdate(params):
                gn = torch.nn.utils.clip_grad_norm_(params, CLIP, foreach=True)
                opt.step()
                return gn

            ms, l0, _ = timed_train(make_step(P, opt, cfwd, cupdate), sync,
                                    f"{model} torch.compile (fwd+loss, clip+AdamW)")
            variants.append((ms, "compiled fwd+loss and compiled clip+AdamW step (foreach)", l0))
        except Exception as e:  # noqa: BLE001
            log(f"[{model}] compiling the optimizer step failed: {type(e).__name__}: {e}")
    ms, how, l0 = min(variants, key=lambda v: v[0])
    results[("torch.compile", model)] = l0
    others = "; ".join(f"{h}: {m:.1f} ms" for m, h, _ in variants if h != how)
    emit(case, "torch.compile", ms, f"{count}; {how}" + (f" (vs {others})" if others else "")
         + f"; {threads} threads")


# ---------------------------------------------------------------- JAX

def jax_loss_fn(model, scan_kind):
    import jax
    import jax.numpy as jnp

    c = CFG
    heads = c["heads"]

    def ln(P, n, x):
        xc = x - x.mean(-1, keepdims=True)
        y = xc * jax.lax.rsqrt((xc * xc).mean(-1, keepdims=True) + 1e-5)
        return y * P[n + ".weight"] + P[n + ".bias"]

    def rmsnorm(P, n, x):
        return x * jax.lax.rsqrt((x * x).mean(-1, keepdims=True) + 1e-5) * P[n + ".weight"]

    def attention(P, n, x, ctx, key_mask=None):
        b, q_len, d = x.shape
        s_len = ctx.shape[1]
        q = (x @ P[n + ".to_q.weight"].T).reshape(b, q_len, heads, -1)
        k = (ctx @ P[n + ".to_k.weight"].T).reshape(b, s_len, heads, -1)
        v = (ctx @ P[n + ".to_v.weight"].T).reshape(b, s_len, heads, -1)
        s = jnp.einsum("bqhd,bkhd->bhqk", q, k) * (1.0 / math.sqrt(d // heads))
        if key_mask is not None:
            s = jnp.where(key_mask[:, None, None, :], s, -1e9)
        o = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s, -1), v).reshape(b, q_len, d)
        return o @ P[n + ".to_out.weight"].T

    def mlp(P, n, x):
        h = jax.nn.gelu(x @ P[n + ".fc1.weight"].T + P[n + ".fc1.bias"], approximate=True)
        return h @ P[n + ".fc2.weight"].T + P[n + ".fc2.bias"]

    def text_encoder(P, ids, mask):
        t = P["text_encoder.tok_emb.weight"][ids] + P["text_encoder.pos_emb"]
        for i in range(c["text_depth"]):
            n = f"text_encoder.layers.{i}"
            tn = ln(P, n + ".norm1", t)
            t = t + attention(P, n + ".self_attn", tn, tn, mask)
            t = t + mlp(P, n + ".mlp", ln(P, n + ".norm2", t))
        return ln(P, "text_encoder.norm_f", t)

    def softplus(x):
        return jnp.where(x > 20.0, x, jnp.log1p(jnp.exp(jnp.minimum(x, 20.0))))

    def mamba(P, m, x, xz_add):
        b, L, d = x.shape
        e, N = c["expand"] * d, c["d_state"]
        r = math.ceil(d / 16)
        xz = x @ P[m + ".in_proj.weight"].T + xz_add
        u, z = xz[..., :e], xz[..., e:]
        w = P[m + ".conv1d.weight"]
        width = w.shape[-1]
        up = jnp.pad(u, ((0, 0), (width - 1, 0), (0, 0)))
        u = P[m + ".conv1d.bias"] + sum(up[:, k:k + L] * w[:, 0, k] for k in range(width))
        u = jax.nn.silu(u)
        dbc = u @ P[m + ".x_proj.weight"].T
        dlow, bm, cm = dbc[..., :r], dbc[..., r:r + N], dbc[..., r + N:]
        dt = softplus(dlow @ P[m + ".dt_proj.weight"].T + P[m + ".dt_proj.bias"])
        A = -jnp.exp(P[m + ".A_log"])
        da = jnp.exp(dt[..., None] * A)                # [B, L, E, N]
        db = (dt * u)[..., None] * bm[:, :, None, :]   # [B, L, E, N]
        if scan_kind == "associative":
            _, hs = jax.lax.associative_scan(
                lambda l, r_: (r_[0] * l[0], r_[0] * l[1] + r_[1]), (da, db), axis=1)
        else:
            def stepf(h, ab):
                h = ab[0] * h + ab[1]
                return h, h
            _, hs = jax.lax.scan(stepf, jnp.zeros((b, e, N), x.dtype),
                                 (jnp.moveaxis(da, 1, 0), jnp.moveaxis(db, 1, 0)))
            hs = jnp.moveaxis(hs, 0, 1)
        y = jnp.einsum("blen,bln->ble", hs, cm) + u * P[m + ".D"]
        return (y * jax.nn.silu(z)) @ P[m + ".out_proj.weight"].T

    def loss_fn(P, X):
        text = text_encoder(P, X["text_ids"], X["text_mask"])
        h = P["token_input.tok_emb.weight"][X["tokens"]] + P["token_input.pos_emb"]
        for i in range(c["depth"]):
            if model == "muse_small":
                n = f"layers.{i}.layer"
                hn = ln(P, n + ".norm1", h)
                h = h + attention(P, n + ".self_attn", hn, hn)
                h = h + attention(P, n + ".cross_attn", ln(P, n + ".norm2", h), text, X["text_mask"])
                h = h + mlp(P, n + ".mlp", ln(P, n + ".norm3", h))
            else:
                n = f"layers.{i}"
                xn = rmsnorm(P, n + ".norm", h)
                a = attention(P, n + ".xattn", xn, text, X["text_mask"])
                h = h + mamba(P, n + ".mixer", xn, jnp.concatenate([a] * (2 * c["expand"]), -1))
        logits = ln(P, "head.norm_f", h) @ P["head.to_logits.weight"].T
        lp = jax.nn.log_softmax(logits, -1)
        nll = -jnp.take_along_axis(lp, X["targets"][..., None], -1)[..., 0]
        s = c["smoothing"]
        nll = (1.0 - s) * nll - s * lp.mean(-1)
        m = X["loss_mask"].astype(logits.dtype)
        return (nll * m).sum() / jnp.maximum(m.sum(), 1.0)

    return loss_fn


def jax_train_step(loss_fn, donate):
    import jax
    import jax.numpy as jnp

    b1, b2 = BETAS

    def train_step(params, opt, X):
        loss, g = jax.value_and_grad(loss_fn)(params, X)
        gn = jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree_util.tree_leaves(g)))
        coef = jnp.minimum(1.0, CLIP / (gn + 1e-6))
        t = opt["t"] + 1
        bc1 = 1.0 - b1 ** t
        bc2 = 1.0 - b2 ** t
        new_p, new_m, new_v = {}, {}, {}
        for k, p in params.items():
            gk = g[k] * coef
            mk = b1 * opt["m"][k] + (1.0 - b1) * gk
            vk = b2 * opt["v"][k] + (1.0 - b2) * gk * gk
            p = p * (1.0 - LR * WD)  # decoupled weight decay, as torch.optim.AdamW
            new_p[k] = p - (LR / bc1) * mk / (jnp.sqrt(vk) / jnp.sqrt(bc2) + EPS)
            new_m[k], new_v[k] = mk, vk
        return new_p, {"t": t, "m": new_m, "v": new_v}, loss, gn

    return jax.jit(train_step, donate_argnums=(0, 1) if donate else ())


def jax_cases(model, results):
    import jax
    import jax.numpy as jnp

    P0 = init_params(model)
    count = f"{sum(v.size for v in P0.values())} params in {len(P0)} tensors"
    X = {k: jnp.asarray(v) for k, v in make_inputs().items()}
    case = f"train {model} B={B}"

    def run(scan_kind, donate):
        fn = jax_train_step(jax_loss_fn(model, scan_kind), donate)
        state = {
            "p": {k: jnp.asarray(v) for k, v in P0.items()},
            "o": {"t": jnp.zeros((), jnp.float32),
                  "m": {k: jnp.zeros(v.shape, jnp.float32) for k, v in P0.items()},
                  "v": {k: jnp.zeros(v.shape, jnp.float32) for k, v in P0.items()}},
        }

        def step():
            state["p"], state["o"], loss, gn = fn(state["p"], state["o"], X)
            return loss, gn

        label = f"{model} jax jit ({'scan' if scan_kind == 'sequential' else scan_kind}, donate={donate})"
        return timed_train(step, jax.block_until_ready, label)

    variants = []
    kinds = ["sequential", "associative"] if model != "muse_small" else ["sequential"]
    for kind in kinds:
        for donate in (True, False) if ALL_VARIANTS else (True,):
            try:
                ms, l0, _ = run(kind, donate)
                how = ("lax.scan" if kind == "sequential" else "lax.associative_scan") if model != "muse_small" else ""
                variants.append((ms, ", ".join(x for x in (how, f"donate_argnums={'(0, 1)' if donate else 'none'}") if x), l0))
            except Exception as e:  # noqa: BLE001
                log(f"[{model}] jax ({kind}, donate={donate}) failed: {type(e).__name__}: {e}")
    if not variants:
        emit(case, "jax jit", float("nan"), "failed")
        return
    ms, how, l0 = min(variants, key=lambda v: v[0])
    results[("jax jit", model)] = l0
    others = "; ".join(f"{h}: {m:.1f} ms" for m, h, _ in variants if h != how)
    emit(case, "jax jit", ms, f"{count}; value_and_grad + hand-written clip/AdamW; {how}"
         + (f" (vs {others})" if others else ""))


if __name__ == "__main__":
    results = {}
    for model in MODELS if ONLY != "jax jit" else []:
        try:
            torch_cases(model, results)
        except Exception as e:  # noqa: BLE001
            log(f"[{model}] torch failed: {type(e).__name__}: {e}")
    for model in MODELS if ONLY in (None, "jax jit") else []:
        try:
            jax_cases(model, results)
        except Exception as e:  # noqa: BLE001
            log(f"[{model}] jax failed: {type(e).__name__}: {e}")
    for model in MODELS:
        l0 = {impl: v for (impl, m), v in results.items() if m == model}
        if l0:
            spread = max(l0.values()) - min(l0.values())
            log(f"[{model}] step-0 loss per impl: " + ", ".join(f"{k} {v:.6f}" for k, v in l0.items())
                + f" (spread {spread:.2e}; ln(256) = {math.log(256):.4f})")
