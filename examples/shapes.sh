#!/usr/bin/env bash
# The README's main command: on the built-in shapes data set, train an image tokenizer
# (VQ-VAE), then the research log's best Mamba variant (mamba_xattn_xz) on its tokens, then
# sample a grid of images from held-in and held-out prompts. Everything runs through
# muse's compiled CPU kernels; results go to runs/shapes/ (samples/grid.png, metrics.jsonl of
# each run). Re-running continues finished runs instantly and resumes interrupted ones.
#
#   bash examples/shapes.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/shapes}"
cargo build --release --quiet
muse=target/release/muse
start=$(date +%s)

# Train, or continue a run already there (a finished run returns at once).
train() {
  local dir="$1"; shift
  if [ -f "$dir/latest.json" ]; then
    "$muse" train --resume "$dir"
  else
    "$muse" train "$@" --out "$dir"
  fi
}

# The patch encoder codes each 2x2 patch from its own pixels, so flat background is one code
# and the generator learns colour and place from far cleaner tokens (docs/training.md).
echo "== 1/3 image tokenizer: 16x16 shapes -> 8x8 grid of 64 codes"
train "$out/vq" models/vq_tokenizer.muse --data shapes --set encoder=patch \
  --set resolution=16 --set channels=16 --set levels=1 --set codebook=64 --set code_dim=16 --set groups=4 \
  --steps 2000 --batch 16 --lr 2e-3 --warmup 50 --checkpoint-every 500

# Batch 8 for 6000 steps sees as many images as 16 for 3000 in the same time, and twice as
# many updates learn the shape word twice as well (docs/training.md).
echo "== 2/3 mamba_xattn_xz on the image tokens (4096 captioned images)"
train "$out/mamba" models/mamba_xattn_xz.muse --data shapes --tokenizer "$out/vq" --samples 4096 \
  --steps 6000 --batch 8 --lr 1e-3 --warmup 50 --checkpoint-every 1000

echo "== 3/3 sampling"
cat > "$out/prompts.txt" <<'PROMPTS'
a large red circle in the center
a large blue square in the center
a large yellow triangle in the center
a large white circle on the left
a large purple diamond on the right
a large yellow square at the top
a large red square at the bottom
a blue circle to the left of a yellow square
a large green circle in the center
PROMPTS
# Guidance 3: it judged best (docs/training.md).
"$muse" sample "$out/mamba" --prompts "$out/prompts.txt" --steps 12 --cfg 3 --seed 0 --out "$out/samples"
echo "done in $(( $(date +%s) - start )) s: $out/samples/grid.png (prompts in $out/samples/prompts.txt;"
echo "the last one, a green circle, is a held-out combination the model never saw)"
