#!/usr/bin/env bash
# Two builds of the training benchmark (bench/src/train.rs) in alternating rounds on the
# same machine: the median over rounds of each model's step time, and the median of the
# per-round ratios new/old (a shared machine's drift hits both sides of a round alike).
#
#   bash bench/ab.sh OLD_BINARY NEW_BINARY [ROUNDS] [MODEL...]
#
# Build each side with `cargo build --release -p muse-bench --bin train` at its commit and
# copy target/release/train away between the builds.
set -euo pipefail
old=$1 new=$2 rounds=${3:-6}
shift 3 || shift $#
models=("${@:-muse_small mamba_xattn_xz}")
[ $# -eq 0 ] && models=(muse_small mamba_xattn_xz)
out=$(mktemp -d)
for r in $(seq 1 "$rounds"); do
  # Alternate which side goes first.
  if (( r % 2 )); then order=(old new); else order=(new old); fi
  for side in "${order[@]}"; do
    bin=$old; [ "$side" = new ] && bin=$new
    "$bin" 10 "${models[@]}" 2>/dev/null | sed "s/^/$r $side /" >> "$out/all"
  done
done
python3 - "$out/all" <<'PY'
import json, sys, statistics as st
rows = {}
for line in open(sys.argv[1]):
    r, side, js = line.split(" ", 2)
    j = json.loads(js)
    rows.setdefault(j["case"], {}).setdefault(int(r), {})[side] = j["ms"]
for case, by_round in rows.items():
    old = [v["old"] for v in by_round.values() if "old" in v and "new" in v]
    new = [v["new"] for v in by_round.values() if "old" in v and "new" in v]
    ratios = [n / o for o, n in zip(old, new)]
    print(f"{case}: old {st.median(old):.1f} ms, new {st.median(new):.1f} ms (medians of {len(old)} rounds); "
          f"new/old per round {', '.join(f'{x:.3f}' for x in ratios)}; median {st.median(ratios):.3f}")
PY
