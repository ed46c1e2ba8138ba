#!/usr/bin/env bash
# Fetches the CUDA pieces muse needs without a GPU, once, into a cache folder:
#   NVRTC (compiles generated CUDA C to PTX and cubins), ptxas (registers, spills and shared
#   memory per kernel) and the runtime's headers (cuda_bf16.h for --dtype bf16).
# The wheels are PyPI's, pinned; nothing is installed into any Python. Prints the folder.
#   MUSE_CUDA_HOME  where to put them (default ~/.cache/muse/cuda-13.0.88)
set -euo pipefail
home="${MUSE_CUDA_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/muse/cuda-13.0.88}"
wheels=(nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.88)
if [[ -f "$home/.complete" ]]; then
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
touch "$home/.complete"
echo "$home"
