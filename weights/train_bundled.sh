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

# Recipe "half-scale": raindrops, on pairs synthesized at half scale (see the data step below). SPAIR: NetL 800
# steps (positive weight 5, crop focus 4, lr 1e-3 halved every 20 epochs); then NetR, like Net1: 300 steps of
# L1 + 20 MSE on uniform crops, lr 1e-3 halved every 15 epochs (L1 alone stays at the identity here).
half_scale() { # task variant
  local run="$ROOT/$1-$2" data="$ROOT/data/$1-half"
  local netr=(--loss l1+mse --mse-weight 20 --crop-focus 1 --lr-halve-epochs 15 --validate-every 25)
  local common=(--task "$1" --variant "$2" --data "$data/train" --val "$data/val" --run "$run" --crop 64
    --batch 8 --lr 1e-3 --checkpoint-every 10 --val-crop 128 --seed 1)
  if [ "$2" = Net1 ]; then
    [ -f "$run/config.json" ] || { $DENO run -A cli.ts train "${common[@]}" --steps-l 0 --steps-r 300 "${netr[@]}"; return; }
  elif ! grep -q '"loss": "l1+mse"' "$run/config.json" 2>/dev/null; then
    if [ -f "$run/config.json" ]; then
      $DENO run -A cli.ts train --resume "$run"
    else
      $DENO run -A cli.ts train "${common[@]}" --steps-l 800 --steps-r 0 --pos-weight 5 --crop-focus 4 \
        --lr-halve-epochs 20 --validate-every 100
    fi
    set_config "$run" "{stepsR:300,loss:'l1+mse',mseWeight:20,cropFocus:1,lrHalveEpochs:15,validateEvery:25}"
  fi
  $DENO run -A cli.ts train --resume "$run"
}

# Recipe "long + wide" (rain SPAIR): NetL 400 steps and NetR 4,800 steps on the standard pairs (lr 1e-3
# halved every 500 epochs), then a curriculum step (wide_phase): NetR continues to step 6,400 on pairs of the
# wide synthesizer ranges (4 per photo) with photometric jitter 0.15.
long_wide() { # task variant
  long_start "$1" "$2" 4800 250
  wide_phase "$ROOT/$1-$2" "$ROOT/data/$1-wide" 6400
}

# The first phase of the long recipes: NetL 400 steps, NetR to step $3 on the standard pairs, 64x64 crops,
# batch 8, lr 1e-3 halved every 500 epochs, validation every $4 steps.
long_start() { # task variant steps validate-every
  [ -f "$ROOT/$1-$2/config.json" ] && return
  $DENO run -A cli.ts train --task "$1" --variant "$2" --data "$ROOT/data/$1/train" --val "$ROOT/data/$1/val" \
    --run "$ROOT/$1-$2" --crop 64 --batch 8 --steps-l 400 --steps-r "$3" --lr 1e-3 --lr-halve-epochs 500 \
    --checkpoint-every 50 --validate-every "$4" --val-crop 128 --seed 1
}

# The curriculum step of "long + wide": finishes the run's current phase, then continues NetR to step $3 on the
# wide-range pairs in $2 with photometric jitter 0.15. The resume changes data, val and jitter (RESUMABLE_KEYS).
wide_phase() { # run wide-data steps
  if ! grep -q '"jitter": 0.15' "$1/config.json"; then
    $DENO run -A cli.ts train --resume "$1" # finishes the previous phase after an interruption
    rm -f "$1/model.safetensors"
    $DENO run -A cli.ts train --resume "$1" --data "$2/train" --val "$2/val" --jitter 0.15 \
      --steps-r "$3" --validate-every 400
  fi
  $DENO run -A cli.ts train --resume "$1"
}

# Recipe "long + wide + mix" (rain SPAIR): "long + wide", then a fine-tuning run (`--init`) on the wide pairs
# plus as many wide pairs made at half scale (thinner, shorter streaks, as in the 384x256 evaluation crops):
# NetL 1,200 more steps, then NetR 800, lr 5e-4, jitter 0.15, seed 2. Writes $ROOT/$1-$2-mix.
mix() { # task variant
  local run="$ROOT/$1-$2-mix" data="$ROOT/data/$1-mix"
  long_wide "$1" "$2"
  for s in train val; do
    for sub in input target mask; do
      mkdir -p "$data/$s/$sub"
      cp "$ROOT/data/$1-wide/$s/$sub/"* "$data/$s/$sub/"
      for f in "$ROOT/data/$1-wide-half/$s/$sub/"*; do cp "$f" "$data/$s/$sub/h_$(basename "$f")"; done
    done
  done
  if [ -f "$run/config.json" ]; then $DENO run -A cli.ts train --resume "$run"; return; fi
  $DENO run -A cli.ts train --task "$1" --variant "$2" --init "$ROOT/$1-$2/model.safetensors" \
    --data "$data/train" --val "$data/val" --val-count 12 --run "$run" --crop 64 --batch 8 --steps-l 1200 \
    --steps-r 800 --lr 5e-4 --lr-halve-epochs 500 --jitter 0.15 --checkpoint-every 50 --validate-every 200 \
    --val-crop 128 --seed 2
}

# Recipe "long + wide + mix, equal time" (rain Net1): "long + wide + mix", then the mix run continued to NetR
# step $3, so that the baseline trains at least as long as the SPAIR model (issue 18: the same wall-clock budget).
mix_equal_time() { # task variant steps
  mix "$1" "$2"
  $DENO run -A cli.ts train --resume "$ROOT/$1-$2-mix" --steps-r "$3"
}

# Recipe "long + MSE" (blur SPAIR): NetL 400 steps, NetR on the standard pairs with L1 to step 1,450 (lr 1e-3
# halved every 500 epochs), then L1 + 20 MSE to step 3,200 (L1 alone had moved validation PSNR by 0.07 dB in
# 1,450 steps). Continuing on wide-range pairs made it worse on the evaluation pairs (experiments/blur-SPAIR-wide).
long_mse() { # task variant
  local run="$ROOT/$1-$2"
  long_start "$1" "$2" 1450 400
  if ! grep -q '"loss": "l1+mse"' "$run/config.json"; then
    $DENO run -A cli.ts train --resume "$run"
    set_config "$run" "{loss:'l1+mse',mseWeight:20,stepsR:3200}"
  fi
  $DENO run -A cli.ts train --resume "$run"
}

# Recipe "long + MSE, equal time" (blur Net1): "long + MSE", then NetR continued to step $3, where its training
# time matched the blur SPAIR's 76 minutes on the machine that trained it (issue 18: the same wall-clock budget).
long_mse_equal_time() { # task variant steps
  long_mse "$1" "$2"
  $DENO run -A cli.ts train --resume "$ROOT/$1-$2" --steps-r "$3"
}

set_config() { # run json-object: merges the fields into the run's config.json, drops its final weights
  $DENO eval "const p='$1/config.json'; const c=JSON.parse(Deno.readTextFileSync(p));
    Object.assign(c,$2); Deno.writeTextFileSync(p, JSON.stringify(c,null,2))"
  rm -f "$1/model.safetensors"
}

for task in "$@"; do
  data="$ROOT/data/$task"
  # Raindrop pairs are made at half scale, four per photo: drop sizes follow the image size, and at half scale
  # they match the 384x256 evaluation crops (results.md).
  synth=(--per-image 2)
  if [ "$task" = raindrop ]; then data="$ROOT/data/raindrop-half"; synth=(--per-image 4 --scale 0.5); fi
  [ -d "$data/train/input" ] || $DENO run -A cli.ts synth --task "$task" --in "$CLEAN/train" --out "$data/train" \
    --seed "${SEED[$task]}" "${synth[@]}"
  [ -d "$data/val/input" ] || $DENO run -A cli.ts synth --task "$task" --in "$CLEAN/val" --out "$data/val" \
    --seed "$((SEED[$task] + 800))" --per-image 1 "${synth[@]:2}"
  if [ "$task" = rain ]; then
    # Wide-range pairs for the curriculum step of "long + wide", full and half scale.
    [ -d "$ROOT/data/rain-wide/train/input" ] || $DENO run -A cli.ts synth --task rain --ranges wide \
      --in "$CLEAN/train" --out "$ROOT/data/rain-wide/train" --seed 111 --per-image 4
    [ -d "$ROOT/data/rain-wide/val/input" ] || $DENO run -A cli.ts synth --task rain --ranges wide \
      --in "$CLEAN/val" --out "$ROOT/data/rain-wide/val" --seed 911 --per-image 1
    [ -d "$ROOT/data/rain-wide-half/train/input" ] || $DENO run -A cli.ts synth --task rain --ranges wide \
      --in "$CLEAN/train" --out "$ROOT/data/rain-wide-half/train" --seed 121 --per-image 4 --scale 0.5
    [ -d "$ROOT/data/rain-wide-half/val/input" ] || $DENO run -A cli.ts synth --task rain --ranges wide \
      --in "$CLEAN/val" --out "$ROOT/data/rain-wide-half/val" --seed 921 --per-image 1 --scale 0.5
  fi
  spair="$ROOT/$task-SPAIR" net1="$ROOT/$task-Net1"
  case "$task" in
    rain) mix rain SPAIR; mix_equal_time rain Net1 5088; spair="$ROOT/rain-SPAIR-mix"; net1="$ROOT/rain-Net1-mix" ;;
    raindrop) half_scale raindrop SPAIR; half_scale raindrop Net1 ;;
    shadow) refocused shadow SPAIR 300 104 1e-3 2 5e-4 500; uniform shadow Net1 ;;
    blur) long_mse blur SPAIR; long_mse_equal_time blur Net1 7154 ;;
  esac
  mkdir -p weights/baselines
  cp "$spair/model.safetensors" "weights/$task.safetensors"
  cp "$net1/model.safetensors" "weights/baselines/$task-net1.safetensors"
done
