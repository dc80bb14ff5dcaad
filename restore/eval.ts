/**
 * Benchmark evaluation: runs an injected restore function over a paired dataset and measures each
 * output against its target with the task's metrics (SPAIR.md section 4), next to the same metrics for
 * the unrestored input as a baseline. The CLI (`deno task eval`) wires model loading and argument
 * parsing; this module only needs pairs, a reader and a restore function.
 *
 * Conventions:
 * - `rain`: PSNR / SSIM on the Y channel; `raindrop`, `blur`: PSNR / SSIM on RGB; `shadow`: Lab error
 *   (ISTD protocol, see {@link labRmse}) over shadow, non-shadow and all pixels.
 * - The restored image is clamped to [0, 1] and, by default, rounded to 8-bit levels, because published
 *   numbers are measured on saved 8-bit PNGs.
 * - PSNR is capped at {@link PSNR_CAP} dB so that identical images (MSE 0) give a finite value that
 *   averages and serializes to JSON; real restorations never come near it.
 * - Shadow pairs without a ground-truth mask get one derived from the data: a pixel is shadow when the
 *   mean over R, G, B of |input - target| exceeds {@link SHADOW_THRESHOLD} (shadows change pixels by far
 *   more than ISTD's global colour drift does).
 * - Dataset means are plain means of per-image values; for shadows the per-pixel pooled errors (the
 *   ISTD script's "per pixel" numbers) are reported as well. A region absent from an image (e.g. no
 *   shadow pixel) is `null` for that image and skipped in the means.
 *
 * @module
 */

import { join } from "node:path";
import { type Pair, type PairImages, readPair as readPairFromDisk } from "../train/datasets.ts";
import { type LabError, labRmse, psnrRgb, psnrY, quantize8, ssimRgb, ssimY } from "../train/metrics.ts";

import { type Task, TASKS } from "../layers/vocabulary.ts";
import { diffMask } from "../train/synth.ts";

export { type Task, TASKS };

/** PSNR values are capped here (dB); identical images report exactly this. */
export const PSNR_CAP = 100;

/** Mean |input - target| over RGB above which a pixel counts as shadow when a pair has no mask. */
export const SHADOW_THRESHOLD = 0.05;

/** Metric values of one image keyed by metric name; `null` where undefined (empty shadow region). */
export type Metrics = Record<string, number | null>;

/** Per-image result. */
export interface EvalRow {
  name: string;
  width: number;
  height: number;
  /** Metrics of the restored image against the target. */
  restored: Metrics;
  /** Metrics of the unrestored input against the target (baseline). */
  input: Metrics;
  /** Wall time of the restore call in milliseconds. */
  restoreMs: number;
  /** Shadow task only: whether the mask came from the dataset or was derived (see module docs). */
  maskSource?: "dataset" | "derived";
  /** IoU of the model's predicted mask with the dataset's mask, when both exist (1 when both are empty). */
  maskIoU?: number;
}

/** Whole-dataset result; plain data, safe to `JSON.stringify` and read back. */
export interface EvalReport {
  task: Task;
  /** Metric names in column order, e.g. `["psnrY", "ssimY"]`. */
  metrics: string[];
  /** Human-readable metric labels in the same order. */
  labels: string[];
  count: number;
  /** Means of per-image values. */
  mean: { restored: Metrics; input: Metrics };
  /** Shadow task only: errors pooled over all pixels of the dataset. */
  pooled?: { restored: Metrics; input: Metrics };
  /** IoU of predicted and dataset masks pooled over all pixels of the images that have both (intersections
   * summed over unions summed), and how many images that is; absent when none has both. */
  maskIoU?: { iou: number; images: number };
  /** Whether restored images were rounded to 8-bit levels before measuring. */
  quantized: boolean;
  psnrCap: number;
  rows: EvalRow[];
}

/** Options of {@link evaluate}. */
export interface EvalOptions {
  task: Task;
  pairs: Pair[];
  /** Restores planar RGB `[3, H, W]` in [0, 1]; returns the same shape, or it and the predicted `[H, W]`
   * mask (1 = degraded), which is then scored against the dataset's mask. */
  restore: (
    planarRgb: Float32Array,
    w: number,
    h: number,
  ) => Promise<Float32Array | { restored: Float32Array; mask?: Float32Array | null }>;
  /** Loads a pair; defaults to {@link readPairFromDisk} (`train/datasets.ts` `readPair`). */
  readPair?: (pair: Pair) => Promise<PairImages>;
  /** Called after each image. */
  onProgress?: (done: number, total: number, row: EvalRow) => void;
  /** Round restored output to 8-bit levels before measuring (default true). */
  quantize?: boolean;
}

const METRICS: Record<Task, { names: string[]; labels: string[] }> = {
  rain: { names: ["psnrY", "ssimY"], labels: ["PSNR-Y (dB)", "SSIM-Y"] },
  raindrop: { names: ["psnr", "ssim"], labels: ["PSNR (dB)", "SSIM"] },
  blur: { names: ["psnr", "ssim"], labels: ["PSNR (dB)", "SSIM"] },
  shadow: {
    names: ["labShadow", "labNonShadow", "labAll"],
    labels: ["Lab error shadow", "Lab error non-shadow", "Lab error all"],
  },
};

type Sums = LabError["sums"];

const cap = (v: number) => Math.min(v, PSNR_CAP);
const orNull = (v: number) => (Number.isNaN(v) ? null : v);

/** Derives a shadow mask `[H, W]` (0/1) from a pair: mean |input - target| over RGB > {@link SHADOW_THRESHOLD}. */
export function deriveShadowMask(
  input: Float32Array,
  target: Float32Array,
  w: number,
  h: number,
): Float32Array {
  return diffMask(input, target, w * h, SHADOW_THRESHOLD);
}

function measure(
  task: Task,
  out: Float32Array,
  target: Float32Array,
  w: number,
  h: number,
  mask?: Float32Array,
): { metrics: Metrics; sums?: Sums } {
  if (task === "rain") {
    return { metrics: { psnrY: cap(psnrY(out, target, w, h)), ssimY: ssimY(out, target, w, h) } };
  }
  if (task === "shadow") {
    const e: LabError = labRmse(out, target, mask!, w, h);
    return {
      metrics: { labShadow: orNull(e.shadow), labNonShadow: orNull(e.nonShadow), labAll: e.all },
      sums: e.sums,
    };
  }
  return { metrics: { psnr: cap(psnrRgb(out, target, w, h)), ssim: ssimRgb(out, target, w, h) } };
}

function meanOf(rows: Metrics[], names: string[]): Metrics {
  const out: Metrics = {};
  for (const k of names) {
    const vals = rows.map((r) => r[k]).filter((v): v is number => v !== null);
    out[k] = vals.length > 0 ? vals.reduce((a, b) => a + b, 0) / vals.length : null;
  }
  return out;
}

function pool(sums: Sums[]): Metrics {
  const t = sums.reduce(
    (a, s) => ({
      shadow: a.shadow + s.shadow,
      nonShadow: a.nonShadow + s.nonShadow,
      shadowPixels: a.shadowPixels + s.shadowPixels,
      nonShadowPixels: a.nonShadowPixels + s.nonShadowPixels,
    }),
    { shadow: 0, nonShadow: 0, shadowPixels: 0, nonShadowPixels: 0 },
  );
  const all = t.shadowPixels + t.nonShadowPixels;
  return {
    labShadow: t.shadowPixels > 0 ? t.shadow / t.shadowPixels : null,
    labNonShadow: t.nonShadowPixels > 0 ? t.nonShadow / t.nonShadowPixels : null,
    labAll: all > 0 ? (t.shadow + t.nonShadow) / all : null,
  };
}

/**
 * Restores every pair with `options.restore` and measures restored and unrestored input against the
 * target (see the module documentation for the per-task metrics and conventions). Pairs are processed
 * one at a time in the given order. Throws if `restore` returns the wrong number of values.
 */
export async function evaluate(options: EvalOptions): Promise<EvalReport> {
  const { task, pairs, restore, onProgress } = options;
  if (!TASKS.includes(task)) throw new Error(`unknown task "${task}" (expected one of ${TASKS.join(", ")})`);
  const read = options.readPair ?? readPairFromDisk;
  const quantized = options.quantize ?? true;
  const { names, labels } = METRICS[task];
  const rows: EvalRow[] = [];
  const sumsRestored: Sums[] = [];
  const sumsInput: Sums[] = [];
  const iouSums = { inter: 0, union: 0, images: 0 };
  for (const pair of pairs) {
    const img = await read(pair);
    const { width: w, height: h } = img;
    const t0 = performance.now();
    // A copy, so that a restore that works in place cannot alter the baseline measurement.
    const result = await restore(img.input.slice(), w, h);
    const restoreMs = performance.now() - t0;
    const raw = result instanceof Float32Array ? result : result.restored;
    const predicted = result instanceof Float32Array ? undefined : result.mask ?? undefined;
    if (predicted && predicted.length !== w * h) {
      throw new Error(
        `${pair.input}: restore returned a mask of ${predicted.length} values, expected ${w * h}`,
      );
    }
    if (raw.length !== 3 * w * h) {
      throw new Error(
        `${pair.input}: restore returned ${raw.length} values, expected ${3 * w * h} (3x${h}x${w})`,
      );
    }
    const out = quantized ? quantize8(raw) : raw.map((v) => Math.min(1, Math.max(0, v)));
    let mask: Float32Array | undefined;
    let maskSource: EvalRow["maskSource"];
    if (task === "shadow") {
      maskSource = img.mask ? "dataset" : "derived";
      mask = img.mask ?? deriveShadowMask(img.input, img.target, w, h);
    }
    const r = measure(task, out, img.target, w, h, mask);
    const b = measure(task, img.input, img.target, w, h, mask);
    if (r.sums && b.sums) {
      sumsRestored.push(r.sums);
      sumsInput.push(b.sums);
    }
    const row: EvalRow = {
      name: pair.name,
      width: w,
      height: h,
      restored: r.metrics,
      input: b.metrics,
      restoreMs,
    };
    if (maskSource) row.maskSource = maskSource;
    if (predicted && img.mask) {
      let inter = 0, union = 0;
      for (let i = 0; i < w * h; i++) {
        const a = predicted[i] > 0.5, b = img.mask[i] > 0.5;
        inter += a && b ? 1 : 0;
        union += a || b ? 1 : 0;
      }
      row.maskIoU = union ? inter / union : 1;
      [iouSums.inter, iouSums.union, iouSums.images] = [
        iouSums.inter + inter,
        iouSums.union + union,
        iouSums.images + 1,
      ];
    }
    rows.push(row);
    onProgress?.(rows.length, pairs.length, row);
  }
  const report: EvalReport = {
    task,
    metrics: names,
    labels,
    count: rows.length,
    mean: {
      restored: meanOf(rows.map((r) => r.restored), names),
      input: meanOf(rows.map((r) => r.input), names),
    },
    quantized,
    psnrCap: PSNR_CAP,
    rows,
  };
  if (task === "shadow") report.pooled = { restored: pool(sumsRestored), input: pool(sumsInput) };
  if (iouSums.images) {
    report.maskIoU = { iou: iouSums.union ? iouSums.inter / iouSums.union : 1, images: iouSums.images };
  }
  return report;
}

function fmt(v: number | null, digits: number): string {
  return v === null ? "" : v.toFixed(digits);
}

function csvField(s: string): string {
  return /[",\n]/.test(s) ? `"${s.replaceAll('"', '""')}"` : s;
}

/**
 * Per-image CSV: `name,width,height,<metric>...,input_<metric>...,restore_ms`, one line per image, full
 * precision, empty fields for `null`.
 */
export function formatCsv(report: EvalReport): string {
  const header = ["name", "width", "height", ...report.metrics, ...report.metrics.map((m) => `input_${m}`)];
  const lines = [[...header, "restore_ms"].join(",")];
  for (const r of report.rows) {
    const vals = [...report.metrics.map((m) => r.restored[m]), ...report.metrics.map((m) => r.input[m])];
    lines.push(
      [
        csvField(r.name),
        r.width,
        r.height,
        ...vals.map((v) => (v === null ? "" : String(v))),
        r.restoreMs.toFixed(1),
      ]
        .join(","),
    );
  }
  return lines.join("\n") + "\n";
}

/** Markdown summary: a table of dataset means for the restored output and the input baseline. */
export function formatSummary(report: EvalReport): string {
  const digits = report.metrics.map((m) => (m.startsWith("ssim") ? 4 : m.startsWith("psnr") ? 2 : 3));
  const row = (label: string, m: Metrics) =>
    `| ${label} | ${report.metrics.map((k, i) => fmt(m[k], digits[i])).join(" | ")} |`;
  const lines = [
    `# Evaluation: ${report.task} (${report.count} image${report.count === 1 ? "" : "s"})`,
    "",
    `| | ${report.labels.join(" | ")} |`,
    `|---|${report.metrics.map(() => "---:").join("|")}|`,
    row(report.pooled ? "restored (per image)" : "restored", report.mean.restored),
    row(report.pooled ? "input (per image)" : "input", report.mean.input),
  ];
  if (report.pooled) {
    lines.push(
      row("restored (per pixel)", report.pooled.restored),
      row("input (per pixel)", report.pooled.input),
    );
  }
  const ms = report.rows.reduce((a, r) => a + r.restoreMs, 0) / Math.max(1, report.count);
  if (report.maskIoU) {
    lines.push(
      "",
      `Mask IoU (predicted against the dataset's masks, pooled over ${report.maskIoU.images} images): ` +
        `${report.maskIoU.iou.toFixed(3)}`,
    );
  }
  lines.push(
    "",
    `Means over images; restored output ${
      report.quantized ? "rounded to 8 bits" : "clamped, not rounded"
    }; ` +
      `PSNR capped at ${report.psnrCap} dB. Mean restore time ${ms.toFixed(1)} ms per image.`,
  );
  if (report.task === "shadow") {
    const derived = report.rows.filter((r) => r.maskSource === "derived").length;
    lines.push(
      `Lab error = mean |dL|+|da|+|db| at 256x256 (ISTD protocol); ${derived} of ${report.count} masks derived ` +
        `from |input - target| > ${SHADOW_THRESHOLD}.`,
    );
  }
  return lines.join("\n") + "\n";
}

async function writeAtomic(path: string, text: string): Promise<void> {
  const tmp = `${path}.tmp-${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`;
  try {
    await Deno.writeTextFile(tmp, text);
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw new Error(`${path}: cannot write (${(e as Error).message})`);
  }
}

/**
 * Writes `per_image.csv`, `summary.md` and `report.json` into `outDir` (created if needed), each
 * atomically (temporary file + rename). Returns the three paths.
 */
export async function writeEvalOutputs(
  report: EvalReport,
  outDir: string,
): Promise<{ csv: string; summary: string; json: string }> {
  await Deno.mkdir(outDir, { recursive: true });
  const paths = {
    csv: join(outDir, "per_image.csv"),
    summary: join(outDir, "summary.md"),
    json: join(outDir, "report.json"),
  };
  await writeAtomic(paths.csv, formatCsv(report));
  await writeAtomic(paths.summary, formatSummary(report));
  await writeAtomic(paths.json, JSON.stringify(report, null, 1) + "\n");
  return paths;
}
