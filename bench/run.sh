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

# (d) again in alternating rounds: muse's step, then torch.compile's, MUSE_BENCH_ROUNDS
# times (default 5). On a shared machine a step's time moves by tens of percent within
# minutes, so the ratio of two figures measured minutes apart says little; each round's
# ratio compares neighbours, and their median is the figure to quote.
rounds="${MUSE_BENCH_ROUNDS:-5}"
for r in $(seq "$rounds"); do
  MUSE_BENCH_ONLY=train cargo run -q --release -p muse-bench --bin kernels -- "$repeats" | sed "s/^{/{\"round\": $r, /" >> "$out/rounds.jsonl"
  MUSE_PEERS_ONLY=torch.compile "$venv/bin/python" bench/peers_train.py "$((repeats < 10 ? repeats : 10))" 2>/dev/null \
    | sed "s/^{/{\"round\": $r, /" >> "$out/rounds.jsonl"
done
"$venv/bin/python" - "$out/rounds.jsonl" <<'PY'
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print()
print(f"{'case (alternating rounds)':<26} {'round':>5} {'muse ms':>9} {'torch.compile':>14} {'muse speed-up':>14}")
for case in dict.fromkeys(r["case"] for r in rows):
    ratios = []
    for rnd in sorted({r["round"] for r in rows}):
        m = next((r["ms"] for r in rows if r["case"] == case and r["round"] == rnd and r["impl"] == "muse"), None)
        t = next((r["ms"] for r in rows if r["case"] == case and r["round"] == rnd and r["impl"] == "torch.compile"), None)
        if m is None or t is None:
            continue
        ratios.append(t / m)
        print(f"{case:<26} {rnd:>5} {m:>9.2f} {t:>14.2f} {t / m:>13.2f}x")
    if ratios:
        print(f"{case:<26} {'median':>5} {'':>9} {'':>14} {statistics.median(ratios):>13.2f}x")
PY
