#!/usr/bin/env bash
# The CUDA backend's checks that need a GPU, prepared for a lent H200 where nothing can be
# fetched and there is no Rust: the binaries are built here and travel with the checkout.
#
#   scripts/gpu-check.sh prepare   (here) builds muse and the bench binaries in release mode
#                                  into .gpu/bin (git-ignored; carry ".gpu" to the GPU
#                                  machine) and prints the device call to make
#   scripts/gpu-check.sh           (there) runs every step, then prints one table last
#
# On a machine with no GPU the same command is the dry run: the correctness steps run on
# cuda-sim (the generated CUDA on the CPU), every step that needs a GPU says so and is
# skipped, and the table is printed all the same.
#
# Steps: (1) every model's forward and backward on the GPU against the CPU backend at the
# tests' tiny configs and (2) at each model's own config (f32 within 1e-3; with bf16
# storage, forward values within 2e-2 and gradients within 1 in relative L2); (3) training
# steps with the optimizer on the GPU against the CPU; (3b) the data-parallel sums through
# NCCL with one rank, in buckets during the backward pass; (4) one training step under
# compute-sanitizer memcheck and (5) racecheck; (6) each kernel of the Mamba block,
# layernorm and softmax against its memory floor; (7) the benchmarks of bench/ on the GPU
# against PyTorch eager, torch.compile and JAX on the same GPU, and (8) the training steps
# at the research log's scale. A time budget (MUSE_GPU_CHECK_BUDGET seconds, default 480)
# skips the benchmarks that would not fit, saying so.
set -uo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
budget="${MUSE_GPU_CHECK_BUDGET:-480}"
bin=.gpu/bin

if [ "${1:-}" = "prepare" ]; then
  set -e
  cargo build --release -p muse -p muse-bench
  mkdir -p "$bin"
  for b in muse gpu_check kernels; do
    cp "target/release/$b" "$bin/$b"
    strip "$bin/$b" 2>/dev/null || true
  done
  du -sh "$bin"
  echo "now: run(command=\"scripts/gpu-check.sh 2>&1 | tee \$OUT/gpu-check.log\", carry=[\".gpu\"], timeout_s=580)"
  exit 0
fi

# Binaries: the prepared ones, else this checkout's release build (the dry run here).
if [ ! -x "$bin/gpu_check" ]; then
  if command -v cargo >/dev/null; then
    cargo build -q --release -p muse -p muse-bench || exit 1
  fi
  bin=target/release
fi
if [ ! -x "$bin/gpu_check" ]; then
  echo "no binaries: run scripts/gpu-check.sh prepare on a machine with Rust and carry .gpu" >&2
  exit 1
fi

# CUDA's libraries where a Python's nvidia-* packages put them (the GPU machine has no
# toolkit libraries on the loader path, but PyTorch's packages have NVRTC and cuBLAS).
if [ -z "${MUSE_CUDA_LIBS:-}" ] && command -v python3 >/dev/null; then
  MUSE_CUDA_LIBS=$(python3 - <<'PY' 2>/dev/null
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
dirs = sorted({d for r in roots for d in glob.glob(os.path.join(r, "nvidia", "*", "lib"))
               if any(glob.glob(os.path.join(d, f"lib{n}.so*")) for n in ("nvrtc", "cublas", "nccl"))})
print(":".join(dirs))
PY
  )
  export MUSE_CUDA_LIBS
fi
[ -d /usr/local/cuda ] && export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export MUSE_CACHE_DIR="${MUSE_CACHE_DIR:-${TMPDIR:-/tmp}/muse-gpu-check-cache}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1

if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  gpu=1
  dev=cuda
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
else
  gpu=0
  dev=cuda-sim
  echo "DRY RUN: no GPU here (nvidia-smi finds none); correctness runs on cuda-sim, GPU-only steps are skipped"
fi
echo "binaries: $bin; MUSE_CUDA_LIBS=${MUSE_CUDA_LIBS:-}"

results=$(mktemp -d)
status=0
elapsed() { echo $(($(date +%s) - start)); }
# step NAME NEEDS_GPU COMMAND...: runs a step, its JSON lines into the results.
step() {
  local name=$1 needs=$2
  shift 2
  echo
  echo "== $name ($(elapsed) s)"
  if [ "$needs" = gpu ] && [ "$gpu" = 0 ]; then
    echo "SKIPPED: needs a GPU"
    echo "{\"check\": \"skipped\", \"case\": \"$name\", \"value\": 0, \"limit\": 0, \"ok\": true, \"goal\": false, \"note\": \"needs a GPU\"}" >>"$results/json"
    return
  fi
  if [ "$(elapsed)" -gt "$budget" ]; then
    echo "SKIPPED: over the time budget of $budget s"
    echo "{\"check\": \"skipped\", \"case\": \"$name\", \"value\": 0, \"limit\": 0, \"ok\": true, \"goal\": false, \"note\": \"over the time budget\"}" >>"$results/json"
    return
  fi
  "$@" 2>&1 | tee -a "$results/log" | grep -v '^{' | grep -v '^{"case"'
  local rc=${PIPESTATUS[0]}
  grep '^{' "$results/log" >>"$results/json.new" 2>/dev/null
  : >"$results/log"
  [ -f "$results/json.new" ] && cat "$results/json.new" >>"$results/json" && rm -f "$results/json.new"
  if [ "$rc" != 0 ]; then
    echo "FAILED: $name (exit $rc)"
    status=1
  fi
}

step "1 every model, tiny configs, $dev vs cpu" any "$bin/gpu_check" models "$dev" tiny
step "1b every model, tiny configs, bf16 storage, $dev vs cpu" any "$bin/gpu_check" models "$dev" tiny bf16
step "2 every model, own configs, cuda vs cpu" gpu "$bin/gpu_check" models cuda bench
step "2b every model, own configs, bf16 storage, cuda vs cpu" gpu "$bin/gpu_check" models cuda bench bf16
step "3 training steps, $dev vs cpu" any "$bin/gpu_check" train "$dev" 5
sanitize() {
  local tool=$1
  compute-sanitizer --tool "$tool" --error-exitcode 9 --print-limit 20 "$bin/gpu_check" train cuda 1
}
step "3b data-parallel sums with one rank (NCCL on a GPU), $dev" any "$bin/gpu_check" reduce "$dev"
step "4 compute-sanitizer memcheck, one training step" gpu sanitize memcheck
step "5 compute-sanitizer racecheck, one training step" gpu sanitize racecheck
step "6 kernels against their memory floor, $dev" any "$bin/gpu_check" kernels "$dev"
bench() {
  MUSE_DEVICE=cuda "$bin/kernels" 20
  python3 bench/peers.py 20 || echo "peers failed" >&2
  python3 bench/peers_train.py 10 || echo "peers_train failed" >&2
}
research() {
  MUSE_DEVICE=cuda MUSE_BENCH_ONLY=train MUSE_BENCH_RESEARCH=1 "$bin/kernels" 5
  MUSE_PEERS_SCALE=research python3 bench/peers_train.py 5 || echo "peers_train failed" >&2
}
MUSE_PEERS_DEVICE=cuda step "7 benchmarks on the GPU: muse, PyTorch eager, torch.compile, JAX" gpu bench
MUSE_PEERS_DEVICE=cuda step "8 training steps at the research log's scale" gpu research

echo
echo "== table ($(elapsed) s)"
python3 - "$results/json" <<'PY'
import json, math, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
checks = [r for r in rows if "check" in r]
bench = [r for r in rows if "impl" in r]
print(f"{'check':<9} {'case':<52} {'value':>10} {'limit':>7}  verdict")
for r in checks:
    if r["check"] == "skipped":
        print(f"{'-':<9} {r['case']:<52} {'':>10} {'':>7}  skipped: {r['note']}")
        continue
    v = r["value"]
    verdict = ("goal met" if r["ok"] else "goal missed") if r.get("goal") else ("ok" if r["ok"] else "FAIL")
    print(f"{r['check']:<9} {r['case'][:52]:<52} {v:>10.3g} {r['limit']:>7.0e}  {verdict}")
if bench:
    print()
    print(f"{'benchmark':<30} {'impl':<14} {'ms':>10}  {'muse speed-up':>13}")
    cases = list(dict.fromkeys(r["case"] for r in bench))
    for c in cases:
        mine = next((r["ms"] for r in bench if r["case"] == c and r["impl"] == "muse"), None)
        for r in (r for r in bench if r["case"] == c):
            ratio = "" if mine is None or r["impl"] == "muse" or not r["ms"] or math.isnan(r["ms"]) else f"{r['ms'] / mine:.2f}x"
            print(f"{c:<30} {r['impl']:<14} {r['ms']:>10.3f}  {ratio:>13}")
PY
echo "total $(elapsed) s; $([ $status = 0 ] && echo 'every check passed' || echo 'SOME CHECKS FAILED')"
exit $status
