#!/usr/bin/env bash
# Before | predicted mask | after | reference grids of the bundled models on the four samples (docs/img/grid-*.png,
# shown in the README and docs/results.md), and the quick-start figure. Usage: bench/sample_grids.sh (env: DENO)
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
