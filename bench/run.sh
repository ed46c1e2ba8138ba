#!/usr/bin/env bash
# Runs the CPU benchmarks of muse and of its peers (PyTorch eager, torch.compile, JAX jit)
# with the same shapes, and prints them side by side with muse's ratio to each.
# The peers live in a virtual environment outside the repository, made here on first use
# (MUSE_BENCH_VENV, default ~/.cache/muse/bench-venv).
set -euo pipefail
cd "$(dirname "$0")/.."
repeats="${1:-20}"
venv="${MUSE_BENCH_VENV:-$HOME/.cache/muse/bench-venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q torch jax jaxlib
fi
out="$(mktemp -d)"
cargo run -q --release -p muse-bench --bin kernels -- "$repeats" | tee "$out/muse.jsonl"
{ "$venv/bin/python" bench/peers.py "$repeats"; "$venv/bin/python" bench/peers_train.py "$((repeats < 10 ? repeats : 10))"; } | tee "$out/peers.jsonl"
"$venv/bin/python" - "$out" <<'PY'
import json, sys, math, pathlib
rows = [json.loads(l) for f in ("muse.jsonl", "peers.jsonl") for l in (pathlib.Path(sys.argv[1]) / f).read_text().splitlines() if l.strip()]
cases = []
for r in rows:
    if r["case"] not in cases:
        cases.append(r["case"])
print()
print(f"{'case':<26} {'impl':<14} {'ms':>10}  {'muse speed-up':>13}  note")
for c in cases:
    mine = next((r["ms"] for r in rows if r["case"] == c and r["impl"] == "muse"), None)
    for r in rows:
        if r["case"] != c:
            continue
        ratio = "" if mine is None or r["impl"] == "muse" or math.isnan(r["ms"]) else f"{r['ms'] / mine:.2f}x"
        print(f"{c:<26} {r['impl']:<14} {r['ms']:>10.3f}  {ratio:>13}  {r['note']}")
PY
