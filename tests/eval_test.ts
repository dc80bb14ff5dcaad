// restore/eval.ts with fake restore functions on tiny synthetic pairs.
import assert from "node:assert/strict";
import { join } from "node:path";
import { PNG } from "pngjs";
import type { Pair, PairImages } from "../train/datasets.ts";
import {
  deriveShadowMask,
  evaluate,
  formatCsv,
  formatSummary,
  PSNR_CAP,
  SHADOW_THRESHOLD,
  writeEvalOutputs,
} from "../restore/eval.ts";
import { labRmse, psnrRgb, psnrY, ssimRgb, ssimY } from "../train/metrics.ts";

const W = 16, H = 14, N = W * H;

/** Deterministic 8-bit-level planar RGB: a gradient target, and an input with noise and a dark square. */
function synth(seed: number, withMask: boolean): PairImages {
  const target = new Float32Array(3 * N);
  const input = new Float32Array(3 * N);
  const mask = new Float32Array(N);
  let s = seed;
  const rnd = () => ((s = (s * 1103515245 + 12345) % 2147483648) / 2147483648);
  for (let c = 0; c < 3; c++) {
    for (let y = 0; y < H; y++) {
      for (let x = 0; x < W; x++) {
        const p = y * W + x;
        const t = 40 + 6 * x + 5 * y + 15 * c;
        const inShadow = x >= 4 && x < 11 && y >= 3 && y < 10;
        mask[p] = inShadow ? 1 : 0;
        const v = (inShadow ? Math.round(t * 0.5) : t) + Math.round((rnd() - 0.5) * 12);
        target[c * N + p] = t / 255;
        input[c * N + p] = Math.min(255, Math.max(0, v)) / 255;
      }
    }
  }
  return { width: W, height: H, input, target, mask: withMask ? mask : undefined };
}

const pairs: Pair[] = [
  { name: "a", input: "/x/input/a.png", target: "/x/target/a.png" },
  { name: "b", input: "/x/input/b.png", target: "/x/target/b.png" },
];
const images = new Map([["a", synth(1, true)], ["b", synth(2, false)]]);
const readPair = (p: Pair) => Promise.resolve(images.get(p.name)!);
const identity = (x: Float32Array) => Promise.resolve(x);
const oracle = (_x: Float32Array, w: number, h: number) => {
  // The restore sees only the input; find the pair whose input size matches (both do) by call order.
  const img = [...images.values()][oracleCalls++ % images.size];
  assert.equal(w * h, img.width * img.height);
  return Promise.resolve(img.target.slice());
};
let oracleCalls = 0;

Deno.test("eval rain: identity restore reports the input's Y metrics in both rows", async () => {
  const progress: number[] = [];
  const report = await evaluate({
    task: "rain",
    pairs,
    restore: identity,
    readPair,
    onProgress: (d) => progress.push(d),
  });
  assert.deepEqual(progress, [1, 2]);
  assert.deepEqual(report.metrics, ["psnrY", "ssimY"]);
  assert.equal(report.count, 2);
  for (const row of report.rows) {
    const img = images.get(row.name)!;
    assert.equal(row.restored.psnrY, psnrY(img.input, img.target, W, H));
    assert.equal(row.restored.ssimY, ssimY(img.input, img.target, W, H));
    assert.deepEqual(row.restored, row.input);
    assert.ok(row.restored.psnrY! > 10 && row.restored.psnrY! < 30, `${row.restored.psnrY}`);
  }
  const mean = (report.rows[0].restored.psnrY! + report.rows[1].restored.psnrY!) / 2;
  assert.ok(Math.abs(report.mean.restored.psnrY! - mean) < 1e-12);
});

Deno.test("eval raindrop/blur: returning the target gives the PSNR cap and SSIM 1", async () => {
  for (const task of ["raindrop", "blur"] as const) {
    oracleCalls = 0;
    const report = await evaluate({ task, pairs, restore: oracle, readPair });
    assert.deepEqual(report.mean.restored, { psnr: PSNR_CAP, ssim: 1 });
    const img = images.get("a")!;
    assert.equal(report.rows[0].input.psnr, psnrRgb(img.input, img.target, W, H));
    assert.equal(report.rows[0].input.ssim, ssimRgb(img.input, img.target, W, H));
    assert.ok(report.mean.input.ssim! < 0.95);
    // The report survives JSON (no Infinity / NaN inside).
    assert.deepEqual(JSON.parse(JSON.stringify(report)), report);
  }
});

Deno.test("eval: output is clamped and rounded to 8 bits unless quantize is false", async () => {
  const one = [pairs[0]];
  // target + 0.4/255 rounds back to the target; target + 3 clamps to 1.
  const img = images.get("a")!;
  const nearTarget = () => Promise.resolve(img.target.map((v) => v + 0.4 / 255));
  const q = await evaluate({ task: "blur", pairs: one, restore: nearTarget, readPair });
  assert.equal(q.rows[0].restored.psnr, PSNR_CAP);
  const nq = await evaluate({ task: "blur", pairs: one, restore: nearTarget, readPair, quantize: false });
  assert.ok(Math.abs(nq.rows[0].restored.psnr! - 20 * Math.log10(255 / 0.4)) < 1e-3);
  const white = await evaluate({
    task: "blur",
    pairs: one,
    restore: () => Promise.resolve(new Float32Array(3 * N).fill(3)),
    readPair,
  });
  assert.equal(white.rows[0].restored.psnr, psnrRgb(new Float32Array(3 * N).fill(1), img.target, W, H));
  await assert.rejects(
    evaluate({ task: "blur", pairs: one, restore: () => Promise.resolve(new Float32Array(5)), readPair }),
    /\/x\/input\/a\.png: restore returned 5 values, expected 672 \(3x14x16\)/,
  );
});

Deno.test("eval shadow: dataset mask or derived mask, per-image and pooled Lab errors", async () => {
  oracleCalls = 0;
  const perfect = await evaluate({ task: "shadow", pairs, restore: oracle, readPair });
  assert.deepEqual(perfect.mean.restored, { labShadow: 0, labNonShadow: 0, labAll: 0 });
  const report = await evaluate({ task: "shadow", pairs, restore: identity, readPair });
  assert.deepEqual(report.rows.map((r) => r.maskSource), ["dataset", "derived"]);
  const a = images.get("a")!;
  const la = labRmse(a.input, a.target, a.mask!, W, H);
  assert.deepEqual(report.rows[0].restored, {
    labShadow: la.shadow,
    labNonShadow: la.nonShadow,
    labAll: la.all,
  });
  // The darkened square (half brightness) is found by the derived mask; noise (<= 6/255) is not.
  const b = images.get("b")!;
  const derived = deriveShadowMask(b.input, b.target, W, H);
  const truth = synth(2, true).mask!;
  const agree = derived.reduce((n, v, i) => n + (v === truth[i] ? 1 : 0), 0);
  assert.ok(agree >= N - 2, `derived mask agrees on ${agree}/${N} pixels (threshold ${SHADOW_THRESHOLD})`);
  assert.ok(report.rows[0].restored.labShadow! > 3 * report.rows[0].restored.labNonShadow!);
  // Pooled errors weight images by pixel counts; both images are the same size, so "all" equals the mean.
  assert.ok(Math.abs(report.pooled!.restored.labAll! - report.mean.restored.labAll!) < 1e-9);
  assert.ok(formatSummary(report).includes("| restored (per pixel) |"));
});

Deno.test("formatCsv, formatSummary and writeEvalOutputs", async () => {
  const report = await evaluate({ task: "rain", pairs, restore: identity, readPair });
  const csv = formatCsv(report).trimEnd().split("\n");
  assert.equal(csv[0], "name,width,height,psnrY,ssimY,input_psnrY,input_ssimY,restore_ms");
  assert.equal(csv.length, 3);
  const f = csv[1].split(",");
  assert.equal(f[0], "a");
  assert.equal(Number(f[3]), report.rows[0].restored.psnrY);
  const md = formatSummary(report);
  assert.ok(md.startsWith("# Evaluation: rain (2 images)\n"));
  assert.ok(md.includes("| | PSNR-Y (dB) | SSIM-Y |"));
  assert.ok(
    md.includes(
      `| restored | ${report.mean.restored.psnrY!.toFixed(2)} | ${report.mean.restored.ssimY!.toFixed(4)} |`,
    ),
  );
  const dir = await Deno.makeTempDir({ prefix: "spair_eval_" });
  try {
    const out = join(dir, "nested", "out");
    const paths = await writeEvalOutputs(report, out);
    assert.equal(await Deno.readTextFile(paths.csv), formatCsv(report));
    assert.equal(await Deno.readTextFile(paths.summary), md);
    assert.deepEqual(JSON.parse(await Deno.readTextFile(paths.json)), report);
    // Only the three outputs remain (no temporary files).
    const names = [];
    for await (const e of Deno.readDir(out)) names.push(e.name);
    assert.deepEqual(names.sort(), ["per_image.csv", "report.json", "summary.md"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("eval reads pairs from disk by default", async () => {
  const dir = await Deno.makeTempDir({ prefix: "spair_eval_" });
  try {
    const png = (v: number) => {
      const p = new PNG({ width: 12, height: 11 });
      for (let i = 0; i < p.data.length; i++) p.data[i] = i % 4 === 3 ? 255 : (v + i) % 256;
      return new Uint8Array(PNG.sync.write(p));
    };
    await Deno.writeFile(join(dir, "in.png"), png(10));
    await Deno.writeFile(join(dir, "gt.png"), png(10));
    const report = await evaluate({
      task: "raindrop",
      pairs: [{ name: "p", input: join(dir, "in.png"), target: join(dir, "gt.png") }],
      restore: identity,
    });
    assert.deepEqual(report.rows[0].input, { psnr: PSNR_CAP, ssim: 1 });
    assert.equal(report.rows[0].width, 12);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("eval scores a predicted mask against the dataset's mask: IoU per image and pooled", async () => {
  // Pair a has the 7x7 square (x 4..10, y 3..9) as its mask; b has no mask, so it is not scored.
  const predicted = new Float32Array(N);
  for (let y = 3; y < 10; y++) for (let x = 4; x < 14; x++) predicted[y * W + x] = 1; // 7x10, covers the square
  const restore = (x: Float32Array) => Promise.resolve({ restored: x, mask: predicted });
  const report = await evaluate({ task: "rain", pairs, restore, readPair });
  assert.equal(report.rows[0].maskIoU, 49 / 70);
  assert.equal(report.rows[1].maskIoU, undefined);
  assert.deepEqual(report.maskIoU, { iou: 49 / 70, images: 1 });
  assert.ok(formatSummary(report).includes("pooled over 1 images): 0.700"));
  // Plain arrays (no mask) report none; a mask of the wrong size is refused with the file's name.
  assert.equal((await evaluate({ task: "rain", pairs, restore: identity, readPair })).maskIoU, undefined);
  const bad = (x: Float32Array) => Promise.resolve({ restored: x, mask: new Float32Array(3) });
  await assert.rejects(
    evaluate({ task: "rain", pairs, restore: bad, readPair }),
    /a\.png: restore returned a mask of 3/,
  );
});
