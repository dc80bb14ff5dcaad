/**
 * Restoration quality of the bundled models: for each task, the unrestored input, the Net1 dense baseline
 * and SPAIR on pairs synthesized from `../shared/data/clean/val` with a fixed seed, measured as the paper
 * does (PSNR/SSIM on Y for rain streaks, RGB for raindrops and blur, Lab error for shadows).
 *
 * Usage: deno run -A bench/quality.ts [--data runs/bundled/eval] [--out bench/results/quality]
 *   [--tasks rain,raindrop,...] [--variants Net1,SPAIR] [--summary-only]
 * Generalization: the same with `--data runs/bundled/eval-outside --out bench/results/quality/outside` on pairs
 * made with `--ranges outside` (seeds 711-714; docs/results.md).
 * Pairs come from `deno task synth --task T --in ../shared/data/clean/val --out DIR/T --seed 70x --crop 384x256`
 * (see weights/train_bundled.sh). Writes one report per task and model (`--out/<task>-<variant>.json`, every
 * per-image number) and prints a markdown table of all reports present.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { engine, initEngine, restorePlanar, type Task, TASKS } from "../mod.ts";
import { listPairs } from "../train/datasets.ts";
import { type EvalReport, evaluate } from "../restore/eval.ts";
import { loadWeightsFile } from "../restore/cli.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    data: { type: "string", default: "runs/bundled/eval" },
    out: { type: "string", default: "bench/results/quality" },
    tasks: { type: "string", default: TASKS.join(",") },
    variants: { type: "string", default: "Net1,SPAIR" },
    "summary-only": { type: "boolean" },
  },
});

const models: Record<string, (t: Task) => string> = {
  Net1: (t) => `weights/baselines/${t}-net1.safetensors`,
  SPAIR: (t) => `weights/${t}.safetensors`,
};
await Deno.mkdir(values.out, { recursive: true });
const tasks = values.tasks.split(",") as Task[];
if (!values["summary-only"]) {
  await initEngine();
  for (const task of tasks) {
    const pairs = await listPairs(`${values.data}/${task}`, "pairs");
    for (const variant of values.variants.split(",")) {
      const { model } = await loadWeightsFile(models[variant](task));
      const started = performance.now();
      const report = await evaluate({
        task,
        pairs,
        restore: async (planar, w, h) => {
          return await restorePlanar(model, planar, w, h); // Net1's mask is null: it uses none
        },
      });
      for (const p of model.parameters()) p.dispose();
      const seconds = (performance.now() - started) / 1000;
      console.error(`${task} ${variant}: ${seconds.toFixed(0)} s`);
      const record = {
        adapter: engine().adapterDescription,
        date: new Date().toISOString(),
        variant,
        report,
      };
      await Deno.writeTextFile(
        `${values.out}/${task}-${variant}.json`,
        JSON.stringify(record, null, 1) + "\n",
      );
    }
  }
}

// The summary: every task with every report present in --out.
const lines: string[] = [];
for (const task of tasks) {
  const reports: Record<string, EvalReport> = {};
  for (const variant of Object.keys(models)) {
    try {
      reports[variant] = JSON.parse(await Deno.readTextFile(`${values.out}/${task}-${variant}.json`)).report;
    } catch {
      // not measured (yet)
    }
  }
  const first = Object.values(reports)[0];
  if (!first) continue;
  const fmt = (v: number | null | undefined, name: string) =>
    v === null || v === undefined ? "n/a" : name.startsWith("ssim") ? v.toFixed(4) : v.toFixed(2);
  // SPAIR's mask against the ground truth (Net1 predicts none); older reports lack it.
  const iou = Object.values(reports).some((r) => r.maskIoU);
  lines.push(`| ${task} (${first.count} pairs) | ${first.labels.join(" | ")} |${iou ? " mask IoU |" : ""}`);
  lines.push(`| --- | ${first.labels.map(() => "---:").join(" | ")} |${iou ? " ---: |" : ""}`);
  const row = (label: string, m: Record<string, number | null>, r?: EvalReport) =>
    `| ${label} | ${first.metrics.map((k) => fmt(m[k], k)).join(" | ")} |` +
    (iou ? ` ${r?.maskIoU ? r.maskIoU.iou.toFixed(3) : "-"} |` : "");
  lines.push(row("input", first.mean.input));
  for (const [variant, r] of Object.entries(reports)) lines.push(row(variant, r.mean.restored, r));
  lines.push("");
}
console.log(lines.join("\n"));
