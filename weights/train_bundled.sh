#!/usr/bin/env bash
# Trains the bundled tiny models (SPAIR and the Net1 baseline) for the given tasks on pairs synthesized
# from ../shared/data/clean, with the recipes of docs/models.md. Resumable: rerun the same command after an
# interruption. Usage: weights/train_bundled.sh rain raindrop shadow blur   (env: DENO, CLEAN, ROOT)
set -euo pipefail
cd "$(dirname "$0")/.."
DENO=${DENO:-deno}
CLEAN=${CLEAN:-../shared/data/clean}
ROOT=${ROOT:-runs/bundled}
declare -A SEED=([rain]=101 [raindrop]=102 [shadow]=103 [blur]=104)

# Recipe "uniform": 150 NetL + 100 NetR steps, uniform 64x64 crops, lr 1e-3 halved every 15 epochs.
uniform() { # task variant
  local run="$ROOT/$1-$2" data="$ROOT/data/$1"
  if [ -f "$run/config.json" ]; then $DENO run -A cli.ts train --resume "$run"; return; fi
  $DENO run -A cli.ts train --task "$1" --variant "$2" --data "$data/train" --val "$data/val" --run "$run" \
    --crop 64 --batch 8 --steps-l 150 --steps-r 100 --lr 1e-3 --lr-halve-epochs 15 --checkpoint-every 10 \
    --validate-every 25 --val-crop 128 --seed 1
}

# Recipe "uniform+focus": "uniform" up to NetR step $4 (100 or 104: where the bundled runs switched), then
# focused crops (best of 8), lr $5 halved every 100 epochs, up to NetR step $3. A config change and a resume;
# batches are a function of the config, seed and step, so this replays the bundled runs.
continued() { # task variant steps switch lr
  local run="$ROOT/$1-$2"
  [ -f "$run/config.json" ] || uniform "$1" "$2"
  if ! grep -q '"cropFocus": 8' "$run/config.json"; then
    set_config "$run" "{stepsR:$4}"
    $DENO run -A cli.ts train --resume "$run"
    set_config "$run" "{stepsR:$3,cropFocus:8,lrHalveEpochs:100,lr:$5}"
  fi
  $DENO run -A cli.ts train --resume "$run"
}

# Recipe "continued" and then a second phase: crop focus $2 at lr $3 up to NetR step $4.
refocused() { # task variant steps switch lr focus2 lr2 steps2
  local run="$ROOT/$1-$2"
  if ! grep -q "\"cropFocus\": $6" "$run/config.json" 2>/dev/null; then
    continued "$1" "$2" "$3" "$4" "$5"
    set_config "$run" "{stepsR:$8,cropFocus:$6,lr:$7}"
  fi
  $DENO run -A cli.ts train --resume "$run"
}

set_config() { # run json-object: merges the fields into the run's config.json, drops its final weights
  $DENO eval "const p='$1/config.json'; const c=JSON.parse(Deno.readTextFileSync(p));
    Object.assign(c,$2); Deno.writeTextFileSync(p, JSON.stringify(c,null,2))"
  rm -f "$1/model.safetensors"
}

for task in "$@"; do
  data="$ROOT/data/$task"
  [ -d "$data/train/input" ] || $DENO run -A cli.ts synth --task "$task" --in "$CLEAN/train" --out "$data/train" \
    --seed "${SEED[$task]}" --per-image 2
  [ -d "$data/val/input" ] || $DENO run -A cli.ts synth --task "$task" --in "$CLEAN/val" --out "$data/val" \
    --seed "$((SEED[$task] + 800))" --per-image 1
  case "$task" in
    rain) uniform rain SPAIR; uniform rain Net1 ;;
    raindrop) continued raindrop SPAIR 200 104 5e-4; continued raindrop Net1 200 100 5e-4 ;;
    shadow) refocused shadow SPAIR 300 104 1e-3 2 5e-4 500; uniform shadow Net1 ;;
    blur) continued blur SPAIR 200 100 1e-3; uniform blur Net1 ;;
  esac
  mkdir -p weights/baselines
  cp "$ROOT/$task-SPAIR/model.safetensors" "weights/$task.safetensors"
  cp "$ROOT/$task-Net1/model.safetensors" "weights/baselines/$task-net1.safetensors"
done
