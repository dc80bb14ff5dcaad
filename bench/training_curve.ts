/**
 * Validation curves of training runs as an SVG chart and a markdown table (for docs/training.md).
 *
 * Usage: deno run -A bench/training_curve.ts --out docs/img/training-rain.svg RUN_DIR[=label]...
 *   [--gain] [--offset STEPS,...]
 * `--gain` plots PSNR minus the input's PSNR (for runs whose validation set changes, as in a curriculum) and
 * each SPAIR run's mask IoU (dashed, right axis); `--offset` shifts each run's steps (a fine-tuning run drawn
 * after the run it started from).
 *
 * @module
 */

import { parseArgs } from "node:util";

interface Point {
  step: number;
  psnr: number;
  inputPsnr: number;
  ssim: number;
  maskIoU: number;
}

const { values, positionals } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: {
    out: { type: "string" },
    title: { type: "string", default: "validation PSNR" },
    gain: { type: "boolean" },
    offset: { type: "string" },
  },
});

const series: { label: string; net1: boolean; points: Point[]; loss: { step: number; loss: number }[] }[] =
  [];
const offsets = (values.offset ?? "").split(",").map(Number);
for (const [k, arg] of positionals.entries()) {
  const [dir, label] = arg.split("=");
  const shift = offsets[k] || 0;
  const lines = (await Deno.readTextFile(`${dir}/log.jsonl`)).trim().split("\n").map((l) => JSON.parse(l));
  const config = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
  series.push({
    label: label ?? dir.split("/").pop()!,
    net1: config.variant === "Net1",
    points: lines.filter((l) => l.stage === 2 && l.val).map((l) => ({
      ...l.val,
      step: l.step + shift,
      psnr: values.gain ? l.val.psnr - l.val.inputPsnr : l.val.psnr,
      inputPsnr: values.gain ? 0 : l.val.inputPsnr,
    })),
    loss: lines.filter((l) => l.stage === 2 && l.loss !== undefined).map((l) => ({
      step: l.step,
      loss: l.loss,
    })),
  });
}

const all = series.flatMap((s) => s.points);
const inputPsnr = all[0]?.inputPsnr ?? 0;
const maxStep = Math.max(...all.map((p) => p.step));
const ys = [...all.map((p) => p.psnr), inputPsnr];
const [lo, hi] = [Math.floor(Math.min(...ys) - 0.5), Math.ceil(Math.max(...ys) + 0.5)];
const [W, H, L, B] = [560, 300, 50, 40];
const x = (s: number) => L + (s / maxStep) * (W - L - 20);
const y = (v: number) => H - B - ((v - lo) / (hi - lo)) * (H - B - 20);
const colours = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd"];
const parts: string[] = [
  `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`,
  `<rect width="${W}" height="${H}" fill="white"/>`,
  `<text x="${W / 2}" y="14" text-anchor="middle">${values.title}</text>`,
  `<line x1="${L}" y1="${H - B}" x2="${W - 20}" y2="${H - B}" stroke="black"/>`,
  `<line x1="${L}" y1="20" x2="${L}" y2="${H - B}" stroke="black"/>`,
  `<text x="${W / 2}" y="${H - 8}" text-anchor="middle">NetR step</text>`,
  `<text x="12" y="${H / 2}" transform="rotate(-90 12 ${H / 2})" text-anchor="middle">${
    values.gain ? "PSNR gain over the input (dB)" : "PSNR (dB)"
  }</text>`,
];
for (let v = lo; v <= hi; v++) {
  parts.push(`<text x="${L - 6}" y="${y(v) + 4}" text-anchor="end">${v}</text>`);
  parts.push(`<line x1="${L}" y1="${y(v)}" x2="${W - 20}" y2="${y(v)}" stroke="#eee"/>`);
}
for (const s of [0, maxStep / 2, maxStep]) {
  parts.push(`<text x="${x(s)}" y="${H - B + 16}" text-anchor="middle">${Math.round(s)}</text>`);
}
parts.push(
  `<line x1="${x(0)}" y1="${y(inputPsnr)}" x2="${x(maxStep)}" y2="${
    y(inputPsnr)
  }" stroke="gray" stroke-dasharray="4"/>`,
  `<text x="${W - 24}" y="${y(inputPsnr) - 4}" text-anchor="end" fill="gray">input ${
    inputPsnr.toFixed(2)
  }</text>`,
);
// Mask IoU on [0, 1] spans the plot's height (right axis).
const yIou = (v: number) => H - B - v * (H - B - 20);
if (values.gain) {
  for (const v of [0, 0.5, 1]) {
    parts.push(`<text x="${W - 16}" y="${yIou(v) + 4}" font-size="10">${v}</text>`);
  }
}
series.forEach((s, i) => {
  const pts = s.points.map((p) => `${x(p.step).toFixed(1)},${y(p.psnr).toFixed(1)}`).join(" ");
  parts.push(`<polyline points="${pts}" fill="none" stroke="${colours[i % 4]}" stroke-width="2"/>`);
  if (values.gain && !s.net1) {
    const iou = s.points.map((p) => `${x(p.step).toFixed(1)},${yIou(p.maskIoU).toFixed(1)}`).join(" ");
    parts.push(
      `<polyline points="${iou}" fill="none" stroke="${
        colours[i % 4]
      }" stroke-dasharray="3" stroke-width="1"/>`,
    );
  }
  parts.push(`<text x="${L + 10}" y="${36 + 16 * i}" fill="${colours[i % 4]}">${s.label}</text>`);
});
parts.push("</svg>");
if (values.out) await Deno.writeTextFile(values.out, parts.join("\n") + "\n");

const table = [
  `| run | step | ${values.gain ? "PSNR gain (dB)" : "PSNR (dB)"} | input PSNR | SSIM | mask IoU |`,
  "| --- | ---: | ---: | ---: | ---: | ---: |",
];
for (const s of series) {
  for (const p of s.points) {
    table.push(
      `| ${s.label} | ${p.step} | ${p.psnr.toFixed(2)} | ${values.gain ? "-" : p.inputPsnr.toFixed(2)} | ${
        p.ssim.toFixed(4)
      } | ${s.net1 ? "-" : p.maskIoU.toFixed(3)} |`,
    );
  }
}
console.log(table.join("\n"));
