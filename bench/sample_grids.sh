#!/usr/bin/env bash
# Before | predicted mask | after | reference grids of the bundled models on the four samples (docs/img/grid-*.png,
# shown in the README and docs/results.md), the quick-start figure and the README's real blurred photo.
# Usage: bench/sample_grids.sh (env: DENO)
set -euo pipefail
cd "$(dirname "$0")/.."
DENO=${DENO:-deno}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for task in rain raindrop shadow blur; do
  $DENO run -A cli.ts restore "samples/$task.png" --task "$task" --out "$out/$task.png" --mask "$out/${task}_mask.png"
  $DENO run -A bench/figures.ts "docs/img/grid-$task.png" "samples/$task.png" "$out/${task}_mask.png" \
    "$out/$task.png" "samples/clean/$task.png"
done
cp docs/img/grid-rain.png docs/img/quickstart-rain.png
# The README's real photo: a 480x320 centre crop of a real motion-blurred photo, its mask and the blur model's output.
$DENO run -A bench/crop.ts ../shared/data/real/mate-storm-motion-blur.png "$out/real-blur.png" 480 320
$DENO run -A cli.ts restore "$out/real-blur.png" --task blur --out "$out/real-blur-out.png" --mask "$out/real-blur-mask.png"
$DENO run -A bench/figures.ts docs/img/real-blur.png "$out/real-blur.png" "$out/real-blur-mask.png" "$out/real-blur-out.png"
