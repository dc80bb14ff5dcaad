#!/usr/bin/env bash
# Trains the bundled tiny models (SPAIR and the Net1 baseline) for the given tasks on pairs synthesized
# from ../shared/data/clean. Resumable: rerun the same command after an interruption.
# Usage: weights/train_bundled.sh rain raindrop ...   (env: STEPS_L, STEPS_R, CROP, BATCH, LR, ROOT)
set -euo pipefail
cd "$(dirname "$0")/.."
DENO=${DENO:-deno}
CLEAN=${CLEAN:-../shared/data/clean}
ROOT=${ROOT:-runs/bundled}
STEPS_L=${STEPS_L:-150}
STEPS_R=${STEPS_R:-100}
CROP=${CROP:-64}
BATCH=${BATCH:-8}
LR=${LR:-1e-3}
declare -A SEED=([rain]=101 [raindrop]=102 [shadow]=103 [blur]=104)
for task in "$@"; do
  data="$ROOT/data/$task"
  [ -d "$data/train/input" ] || $DENO run -A cli.ts synth --task "$task" --in "$CLEAN/train" --out "$data/train" \
    --seed "${SEED[$task]}" --per-image 2
  [ -d "$data/val/input" ] || $DENO run -A cli.ts synth --task "$task" --in "$CLEAN/val" --out "$data/val" \
    --seed "$((SEED[$task] + 800))" --per-image 1
  for variant in SPAIR Net1; do
    run="$ROOT/$task-$variant"
    if [ -f "$run/model.safetensors" ]; then continue; fi
    if [ -f "$run/config.json" ]; then
      $DENO run -A cli.ts train --resume "$run"
    else
      $DENO run -A cli.ts train --task "$task" --variant "$variant" --data "$data/train" --val "$data/val" \
        --run "$run" --crop "$CROP" --batch "$BATCH" --steps-l "$STEPS_L" --steps-r "$STEPS_R" --lr "$LR" \
        --lr-halve-epochs 15 --checkpoint-every 10 --validate-every 25 --val-crop 128 --seed 1
    fi
  done
  mkdir -p weights/baselines
  cp "$ROOT/$task-SPAIR/model.safetensors" "weights/$task.safetensors"
  cp "$ROOT/$task-Net1/model.safetensors" "weights/baselines/$task-net1.safetensors"
done
