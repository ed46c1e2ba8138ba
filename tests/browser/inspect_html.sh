#!/usr/bin/env bash
# The `muse inspect --html` page in a real browser (Debian's headless Chromium): it loads
# without console errors, draws every kernel, and clicking each kernel shows its code.
# Installs Chromium with apt-get when it is missing. Run from the repository root.
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
muse="${MUSE_BIN:-target/debug/muse}"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
fail=0
for args in "models/mamba_xattn_xz.muse --set depth=1" "models/muse_small.muse --set depth=1 --backward"; do
  # shellcheck disable=SC2086
  "$muse" inspect $args --html "$dir/page.html" > "$dir/table.txt" 2>/dev/null
  kernels=$(grep -cE "^ *[0-9]+  (k[0-9]+|gemm(\+k[0-9]+)?) " "$dir/table.txt")
  chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --user-data-dir="$dir/profile" --enable-logging=stderr --v=0 \
    --virtual-time-budget=5000 --dump-dom "file://$dir/page.html#selftest" > "$dir/dom.html" 2> "$dir/console.log"
  result=$(grep -o 'data-selftest="[^"]*"' "$dir/dom.html" | head -1)
  drawn=$(grep -o 'class="kernel ' "$dir/dom.html" | wc -l)
  errors=$(grep -E "CONSOLE|Uncaught" "$dir/console.log" || true)
  echo "inspect page ($args): $kernels kernels in the table, $drawn drawn, clicks: ${result:-none}"
  if [ "$result" != "data-selftest=\"$kernels/$kernels\"" ] || [ "$drawn" != "$kernels" ] || [ -n "$errors" ]; then
    echo "FAILED: $errors"
    fail=1
  fi
done
exit $fail
