/**
 * Restoration quality of the bundled models: for each task, the unrestored input, the Net1 dense baseline
 * and SPAIR on pairs synthesized from `../shared/data/clean/val` with a fixed seed, measured as the paper
 * does (PSNR/SSIM on Y for rain streaks, RGB for raindrops and blur, Lab error for shadows).
 *
 * Usage: deno run -A bench/quality.ts [--data runs/bundled/eval] [--json FILE] [--tasks rain,raindrop,...]
 * Pairs come from `deno task synth --task T --in ../shared/data/clean/val --out DIR/T --seed 70x --crop 384x256`
 * (see weights/train_bundled.sh). Prints a markdown table; `--json` keeps every per-image number.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { engine, initEngine, restorePlanar, type Task, TASKS } from "../mod.ts";
import { listPairs } from "../train/datasets.ts";
import { type EvalReport, evaluate } from "../train/eval.ts";
import { loadWeightsFile } from "../train/restore_cli.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    data: { type: "string", default: "runs/bundled/eval" },
    json: { type: "string" },
    tasks: { type: "string", default: TASKS.join(",") },
  },
});

await initEngine();
const models: Record<string, (t: Task) => string> = {
  Net1: (t) => `weights/baselines/${t}-net1.safetensors`,
  SPAIR: (t) => `weights/${t}.safetensors`,
};
const results: Record<string, Record<string, EvalReport>> = {};
const lines: string[] = [];
for (const task of values.tasks.split(",") as Task[]) {
  const pairs = await listPairs(`${values.data}/${task}`, "pairs");
  results[task] = {};
  for (const [variant, path] of Object.entries(models)) {
    const { model } = await loadWeightsFile(path(task));
    const started = performance.now();
    results[task][variant] = await evaluate({
      task,
      pairs,
      restore: async (planar, w, h) => (await restorePlanar(model, planar, w, h)).restored,
    });
    for (const p of model.parameters()) p.dispose();
    console.error(`${task} ${variant}: ${((performance.now() - started) / 1000).toFixed(0)} s`);
  }
  const first = results[task].SPAIR;
  const fmt = (v: number | null | undefined, name: string) =>
    v === null || v === undefined ? "n/a" : name.startsWith("ssim") ? v.toFixed(4) : v.toFixed(2);
  const header = `| ${task} (${pairs.length} pairs) | ${first.labels.join(" | ")} |`;
  lines.push(header, `| --- | ${first.labels.map(() => "---:").join(" | ")} |`);
  const row = (label: string, m: Record<string, number | null>) =>
    `| ${label} | ${first.metrics.map((k) => fmt(m[k], k)).join(" | ")} |`;
  lines.push(row("input", first.mean.input));
  for (const variant of Object.keys(models)) lines.push(row(variant, results[task][variant].mean.restored));
  lines.push("");
}
const summary = lines.join("\n");
console.log(summary);
if (values.json) {
  await Deno.writeTextFile(
    values.json,
    JSON.stringify(
      { adapter: engine().adapterDescription, date: new Date().toISOString(), results },
      null,
      1,
    ) +
      "\n",
  );
}
