#!/usr/bin/env bash
# Fetches the CUDA pieces muse needs without a GPU, once, into a cache folder:
#   NVRTC (compiles generated CUDA C to PTX and cubins), ptxas (registers, spills and shared
#   memory per kernel), the runtime's headers (cuda_bf16.h for --dtype bf16) and NCCL
#   (libnccl.so.2: its loader and its bootstrap over MPI are tested without a GPU).
# The wheels are PyPI's, pinned; nothing is installed into any Python. Prints the folder.
#   MUSE_CUDA_HOME  where to put them (default ~/.cache/muse/cuda-13.0.88)
set -euo pipefail
home="${MUSE_CUDA_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/muse/cuda-13.0.88}"
wheels=(nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.88)
nccl=nvidia-nccl-cu13==2.32.3
fetch_nccl() {
  [[ -f "$home/nvidia/nccl/lib/libnccl.so.2" ]] && return 0
  mkdir -p "$home/nccl-wheel"
  python3 -m pip download --quiet --no-deps --dest "$home/nccl-wheel" "$nccl" >&2
  python3 - "$home" "$home"/nccl-wheel/*.whl >&2 <<'PY'
import sys, zipfile
home, wheel = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    z.extract("nvidia/nccl/lib/libnccl.so.2", home)
PY
  rm -rf "$home/nccl-wheel"
}
if [[ -f "$home/.complete" ]]; then
  fetch_nccl
  echo "$home"
  exit 0
fi
mkdir -p "$home/wheels"
python3 -m pip download --quiet --no-deps --dest "$home/wheels" "${wheels[@]}" >&2
for w in "$home"/wheels/*.whl; do
  python3 -m zipfile -e "$w" "$home" >&2
done
lib="$home/nvidia/cu13/lib"
bin="$home/nvidia/cu13/bin"
chmod +x "$bin"/* 2>/dev/null || true
ls "$lib"/libnvrtc.so.* >/dev/null
ls "$bin/ptxas" >/dev/null
ls "$home/nvidia/cu13/include/cuda_bf16.h" >/dev/null
rm -rf "$home/wheels"
fetch_nccl
touch "$home/.complete"
echo "$home"
