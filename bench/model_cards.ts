/**
 * Markdown model cards of finished training runs (for docs/models.md): data, steps, crop, batch, wall time,
 * final validation metrics and NetL's mask quality, read from each run folder.
 *
 * Usage: deno run -A bench/model_cards.ts RUN_DIR...
 *
 * @module
 */

import { decodeSafetensors } from "../mod.ts";

const rows = [
  "| run | task | variant | params | data (pairs) | crop x batch | NetL steps | NetR steps | lr | train time | val PSNR (input) | val SSIM (input) | mask IoU |",
  "| --- | --- | --- | ---: | --- | --- | ---: | ---: | ---: | ---: | --- | --- | ---: |",
];
for (const dir of Deno.args) {
  const config = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
  const model = decodeSafetensors(await Deno.readFile(`${dir}/model.safetensors`));
  // Net1 uses no NetL: count what the variant runs.
  const params = Object.entries(model.tensors)
    .filter(([name]) => config.variant !== "Net1" || name.startsWith("netR."))
    .reduce((s, [, t]) => s + t.data.length, 0);
  const log = (await Deno.readTextFile(`${dir}/log.jsonl`)).trim().split("\n").map((l) => JSON.parse(l));
  const vals = log.filter((l) => l.val);
  const last = vals.at(-1)?.val;
  const pairs = [...Deno.readDirSync(`${config.data}/input`)].length;
  const minutes = Number(model.metadata.trainSeconds) / 60;
  rows.push(
    `| ${dir.split("/").pop()} | ${config.task} | ${config.variant} | ${params.toLocaleString("en-US")} | ` +
      `${config.data} (${pairs}) | ${config.crop} x ${config.batch} | ` +
      `${config.variant === "Net1" ? "-" : config.stepsL} | ${config.stepsR} | ${config.lr} | ` +
      `${minutes.toFixed(0)} min | ${
        last ? `${last.psnr.toFixed(2)} (${last.inputPsnr.toFixed(2)})` : "-"
      } | ` +
      `${last ? `${last.ssim.toFixed(4)} (${last.inputSsim.toFixed(4)})` : "-"} | ` +
      `${config.variant === "Net1" ? "-" : last?.maskIoU.toFixed(3) ?? "-"} |`,
  );
}
console.log(rows.join("\n"));
