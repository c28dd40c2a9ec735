#!/bin/sh
# bench/render.sh: the templates/ benchmarks of issue 3, on one core.
#   - render: personalised ~2 KB messages per second (target >= 300,000);
#   - DKIM: signed messages per second for rsa-2048 and ed25519, beside
#     `openssl speed` for the same key types (the ceiling; target >= 90%).
# Usage: bench/render.sh [BUILDDIR]   (default: build)
set -eu
cd "$(dirname "$0")/.."
dir=${1:-build}
[ -x "$dir/bench/render-bench" ] || ninja -C "$dir" bench/render-bench >/dev/null
out=$(taskset -c 0 "$dir/bench/render-bench" -n 100000 --dkim-rsa 3000 --dkim-ed 60000 2>&1 ||
      "$dir/bench/render-bench" -n 100000 --dkim-rsa 3000 --dkim-ed 60000)
echo "$out"
speed=$(openssl speed -seconds 3 rsa2048 ed25519 2>/dev/null)
rsa=$(echo "$speed" | awk '/^rsa 2048 bits/ {print $(NF-1)}')
ed=$(echo "$speed" | awk '/Ed25519/ {print $(NF-1)}')
ours_rsa=$(echo "$out" | awk '/^dkim rsa-2048 sign:/ {print $4}')
ours_ed=$(echo "$out" | awk '/^dkim ed25519 sign:/ {print $4}')
echo "openssl speed rsa2048: $rsa sign/s; ed25519: $ed sign/s"
awk -v a="$ours_rsa" -v b="$rsa" 'BEGIN { if (b > 0) printf "dkim rsa-2048 / openssl speed: %.1f%%\n", 100 * a / b }'
awk -v a="$ours_ed" -v b="$ed" 'BEGIN { if (b > 0) printf "dkim ed25519 / openssl speed: %.1f%%\n", 100 * a / b }'
