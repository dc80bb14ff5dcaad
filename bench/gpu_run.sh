#!/usr/bin/env bash
# One prepared run on a lent GPU machine (the `device` tool): the kernels, model, train and profile suites,
# each under its own time limit so a slow suite cannot take the others' results with it. Prepare here with
# `bash ../shared/tools/gpu_prepare.sh` (packs deno, the npm packages and the Vulkan loader into .deno/ and
# .gl/), then run `bash bench/gpu_run.sh` there with carry [".gl", ".deno"]; results land in $OUT (at most
# 8 files come back). QUICK=1 shrinks every case, to try the script here against llvmpipe first.
set -uo pipefail
: "${OUT:?set OUT to the results folder}"
if [ -z "${QUICK:-}" ]; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
export XDG_RUNTIME_DIR=/tmp
[ -x /tmp/deno ] || { xz -dc .deno/deno.xz >/tmp/deno && chmod +x /tmp/deno; }
[ -d node_modules ] || tar -xJf .deno/node_modules.tar.xz
suite() { # seconds name flags...
  local limit=$1 name=$2
  shift 2
  timeout "$limit" /tmp/deno run -A --node-modules-dir=auto bench/main.ts ${QUICK:+--quick} "$@" \
    --json "$OUT/$name.jsonl" --summary "$OUT/$name.md" >>"$OUT/log" 2>&1
  echo "$name: exit $?" >>"$OUT/log"
}
{ date -u; nvidia-smi -L 2>&1 || true; } >"$OUT/log"
suite "${T_KERNELS:-150}" kernels --suite kernels
suite "${T_MODEL:-200}" model --suite model --presets tiny,small,base --sizes 256,512,1024
suite "${T_TRAIN:-120}" train --suite train,profile
