#!/usr/bin/env bash
# Makes the Python that the tests against PyTorch use, once, in a cache folder: a virtual
# environment with pinned torch, torchvision, pytorch-fid, transformers and safetensors from PyPI (about
# 6 GB with PyTorch's CUDA libraries, which it loads even on a CPU; ~4 minutes here).
# Prints its python; `cargo test` finds it there by itself (tests/torch_reference.rs).
#   MUSE_TORCH_HOME  where to put it (default ~/.cache/muse/torch-2.15.0)
set -euo pipefail
home="${MUSE_TORCH_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/muse/torch-2.15.0}"
if [[ -f "$home/.complete" ]]; then
  echo "$home/bin/python"
  exit 0
fi
rm -rf "$home"
python3 -m venv "$home" >&2
"$home/bin/pip" install --quiet --disable-pip-version-check \
  torch==2.15.0 torchvision==0.29.2 pytorch-fid==0.3.0 transformers==5.24.0 safetensors==0.8.0 numpy scipy >&2
"$home/bin/python" -c "import torch, torchvision, pytorch_fid, transformers, safetensors" >&2
touch "$home/.complete"
echo "$home/bin/python"
