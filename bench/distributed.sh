#!/usr/bin/env bash
# Data-parallel throughput on this machine: one process against two ranks under mpirun, one
# core each (OMP_NUM_THREADS=1, ranks bound to cores), training mamba_xattn_xz at the same
# global batch (--batch B --accumulate 2). Prints items/s (median over the steps after the
# first 10) and the seconds per step in the all-reduce (MPI_Allreduce of the loss and every
# gradient, waiting for the slower rank included), with the gradients on the wire as f32
# and as bf16 (--reduce-dtype bf16), for docs/performance.md.
#
#   bash bench/distributed.sh [STEPS] [DIM] [BATCH]     (defaults 60, 128, 8)
set -euo pipefail
cd "$(dirname "$0")/.."
steps="${1:-60}"
dim="${2:-128}"
batch="${3:-8}"
cargo build --release --quiet
muse=$PWD/target/release/muse
dir=$(mktemp -d /tmp/muse-bench-dist.XXXXXX)
trap 'rm -rf "$dir"' EXIT
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
"$muse" train models/vq_tokenizer.muse --set resolution=16 --set channels=16 --set levels=1 \
  --set codebook=64 --set code_dim=16 --set groups=4 --set encoder=patch --steps 200 --batch 16 \
  --lr 2e-3 --warmup 20 --out "$dir/vq" --device cpu >/dev/null 2>&1
gen=(models/mamba_xattn_xz.muse --tokenizer "$dir/vq" --set "dim=$dim" --samples 1024 --steps "$steps"
  --batch "$batch" --accumulate 2 --warmup 10 --checkpoint-every 100000 --device cpu)
taskset -c 0 "$muse" train "${gen[@]}" --out "$dir/one" >/dev/null 2>&1
mpirun -np 2 --bind-to core --oversubscribe "$muse" train "${gen[@]}" --out "$dir/two" >/dev/null 2>&1
mpirun -np 2 --bind-to core --oversubscribe "$muse" train "${gen[@]}" --reduce-dtype bf16 --out "$dir/bf16" >/dev/null 2>&1
python3 - "$dir" "$dim" "$batch" <<'PY'
import json, statistics, sys
d, dim, batch = sys.argv[1:]
def stats(run):
    rows = [json.loads(l) for l in open(f"{d}/{run}/metrics.jsonl")][10:]
    return statistics.median(r["items_per_s"] for r in rows), statistics.median(r.get("allreduce_s", 0.0) for r in rows)
(one, _), (two, red), (narrow, red16) = stats("one"), stats("two"), stats("bf16")
print(f"mamba_xattn_xz dim {dim}, global batch {batch} x 2: 1 process {one:.1f} items/s, "
      f"2 ranks {two:.1f} items/s ({two / one:.2f}x), all-reduce {1000 * red:.1f} ms per step; "
      f"bf16 on the wire {narrow:.1f} items/s ({narrow / one:.2f}x), all-reduce {1000 * red16:.1f} ms per step")
PY
