/**
 * `deno task synth`: turns a folder of clean photos into degraded/clean/mask training triples on disk, and
 * the in-memory generator the training code uses. Also writes the contact sheets of docs/synth.md.
 *
 * @module
 */

import {
  fromPlanarRgb,
  type Image,
  maskToImage,
  readImage,
  toPlanarRgb,
  writeImageAtomic,
} from "./image_io.ts";
import { SYNTH_RANGES, SYNTH_TASKS, synthesize, type SynthRanges, type SynthTask } from "./synth.ts";
import { UserError } from "../engine/errors.ts";
import { type CommandSpec, helpText, parseFlags } from "../cli/flags.ts";

/** A usage or input problem, reported to the user as one line. */
export class SynthUsageError extends UserError {}

/** One synthesized training triple; `name` is `<stem>_<k>`. */
export interface SynthPair {
  name: string;
  degraded: Image;
  clean: Image;
  mask: Image;
}

/** The seed of variant `k` of image `i`: a deterministic hash of (seed, i, k), so runs reproduce exactly. */
export function pairSeed(seed: number, i: number, k: number): number {
  let x = (seed >>> 0) ^ Math.imul(i + 1, 0x9e3779b1) ^ Math.imul(k + 1, 0x85ebca77);
  x = Math.imul(x ^ (x >>> 16), 0x7feb352d);
  x = Math.imul(x ^ (x >>> 15), 0x846ca68b);
  return (x ^ (x >>> 16)) >>> 0;
}

const IMAGE_EXT = /\.(png|jpe?g)$/i;

/** The PNG/JPEG files of a folder, sorted by name; a missing or empty folder is a {@link SynthUsageError}. */
export async function listImages(dir: string): Promise<string[]> {
  const files: string[] = [];
  try {
    for await (const e of Deno.readDir(dir)) {
      if (e.isFile && IMAGE_EXT.test(e.name)) files.push(`${dir}/${e.name}`);
    }
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new SynthUsageError(`input folder ${dir} does not exist`);
    throw new SynthUsageError(`cannot read input folder ${dir}: ${(e as Error).message}`);
  }
  if (files.length === 0) throw new SynthUsageError(`input folder ${dir} has no PNG or JPEG images`);
  return files.sort();
}

function stemOf(path: string): string {
  return path.replace(/^.*[\\/]/, "").replace(/\.[^.]+$/, "");
}

/** Centre crop to at most `crop` = [w, h], so large photos give fixed-size pairs. */
function centerCrop(img: Image, crop: [number, number] | undefined): Image {
  if (!crop) return img;
  const cw = Math.min(crop[0], img.width), ch = Math.min(crop[1], img.height);
  if (cw === img.width && ch === img.height) return img;
  const x0 = Math.floor((img.width - cw) / 2), y0 = Math.floor((img.height - ch) / 2);
  const c = img.channels;
  const data = new Float32Array(cw * ch * c);
  for (let y = 0; y < ch; y++) {
    data.set(
      img.data.subarray(((y0 + y) * img.width + x0) * c, ((y0 + y) * img.width + x0 + cw) * c),
      y * cw * c,
    );
  }
  return { ...img, width: cw, height: ch, data };
}

/**
 * Synthesizes `perImage` degraded variants of each clean file, in file order, in memory. Each photo is first
 * downscaled by `scale` (area average), then centre-cropped to `crop`. The clean image is returned as RGB
 * (gray replicated, alpha dropped) with the source bit depth; the mask is 8-bit gray 0/1.
 */
export async function* synthesizePairs(
  task: SynthTask,
  cleanFiles: string[],
  seed: number,
  perImage: number,
  crop?: [number, number],
  scale = 1,
  ranges: SynthRanges = "standard",
): AsyncGenerator<SynthPair> {
  for (let i = 0; i < cleanFiles.length; i++) {
    const photo = await readImage(cleanFiles[i]);
    const src = centerCrop(
      scale < 1 ? downscale(photo, Math.max(1, Math.round(photo.width * scale))) : photo,
      crop,
    );
    const planar = toPlanarRgb(src);
    const rgbLike: Image = { ...src, channels: 3, format: "png", data: new Float32Array(0) };
    const clean = fromPlanarRgb(planar, rgbLike);
    for (let k = 0; k < perImage; k++) {
      const r = synthesize(task, planar, src.width, src.height, pairSeed(seed, i, k), ranges);
      yield {
        name: `${stemOf(cleanFiles[i])}_${k}`,
        degraded: fromPlanarRgb(r.degraded, rgbLike),
        clean,
        mask: maskToImage(r.mask, src.width, src.height),
      };
    }
  }
}

/** `synth`'s flags, help and examples. */
export const SYNTH_SPEC: CommandSpec = {
  name: "synth",
  summary: "synthesize degraded/clean/mask training pairs from a folder of clean photos",
  usage: ["--task TASK --in DIR --out DIR [flags]", "--contact-sheets DIR --in DIR"],
  flags: [
    { name: "task", kind: "choice", choices: SYNTH_TASKS, help: "degradation to synthesize (required)" },
    { name: "in", kind: "string", value: "DIR", help: "folder of clean PNG/JPEG photos (required)" },
    {
      name: "out",
      kind: "string",
      value: "DIR",
      help: "output folder: input/, target/ and mask/ (required)",
    },
    { name: "seed", kind: "non-negative-int", default: 0, help: "seed of the synthesis" },
    { name: "per-image", kind: "positive-int", default: 1, help: "pairs per photo" },
    {
      name: "ranges",
      kind: "choice",
      choices: SYNTH_RANGES,
      default: "standard",
      help: "parameter ranges: standard, wide (for training) or outside (beyond wide, for testing)",
    },
    {
      name: "crop",
      kind: "string",
      value: "WxH",
      help: "centre crop of each photo, e.g. 256x256 (default: whole)",
    },
    {
      name: "scale",
      kind: "string",
      value: "F",
      default: "1",
      help: "downscale factor in (0, 1] before cropping",
    },
    {
      name: "contact-sheets",
      kind: "string",
      value: "DIR",
      help: "instead: write one JPEG contact sheet per task of the first three photos",
    },
  ],
  examples: [
    {
      command: "synth --task rain --in photos/ --out data/rain --per-image 4",
      does: "four rainy versions of each photo",
    },
    {
      command: "synth --task shadow --in photos/ --out data/shadow --crop 256x256 --seed 7",
      does: "shadowed 256 px crops",
    },
  ],
};

const USAGE = "see `synth --help`";

/**
 * `synth` command. Writes `OUT/input/<stem>_<k>.png` (degraded), `OUT/target/<stem>_<k>.png` (clean) and
 * `OUT/mask/<stem>_<k>.png` (8-bit 0/255), each atomically, with a progress line on stderr. With
 * `--contact-sheets DIR` it instead writes one JPEG contact sheet per task of the first three inputs.
 */
export async function runSynth(args: string[]): Promise<void> {
  const parsed = parseFlags(SYNTH_SPEC, args, (m) => new SynthUsageError(m));
  if (parsed.help) {
    console.log(helpText(SYNTH_SPEC));
    return;
  }
  const values = parsed.values as Record<string, string | undefined>;
  const seed = parsed.values.seed as number;
  const perImage = parsed.values["per-image"] as number;
  const ranges = (values.ranges ?? "standard") as SynthRanges;
  if (!values.in) throw new SynthUsageError(`--in is required; ${USAGE}`);
  const files = await listImages(values.in);
  if (values["contact-sheets"] !== undefined) {
    await Deno.mkdir(values["contact-sheets"], { recursive: true });
    for (const task of SYNTH_TASKS) {
      const path = `${values["contact-sheets"]}/${task}.jpg`;
      await writeImageAtomic(path, await contactSheet(task, files.slice(0, 3), seed, ranges), "jpeg", 80);
      console.error(`wrote ${path}`);
    }
    return;
  }
  const task = values.task as SynthTask;
  if (!SYNTH_TASKS.includes(task)) {
    throw new SynthUsageError(
      `--task must be one of ${SYNTH_TASKS.join(", ")}, got ${values.task ?? "nothing"}`,
    );
  }
  if (!values.out) throw new SynthUsageError(`--out is required; ${USAGE}`);
  let crop: [number, number] | undefined;
  if (values.crop !== undefined) {
    const m = values.crop.match(/^(\d+)x(\d+)$/);
    if (!m || Number(m[1]) < 1 || Number(m[2]) < 1) {
      throw new SynthUsageError(`--crop must look like 256x256, got ${values.crop}`);
    }
    crop = [Number(m[1]), Number(m[2])];
  }
  const scale = Number(values.scale ?? "1");
  if (!(scale > 0 && scale <= 1)) {
    throw new SynthUsageError(`--scale must be a number in (0, 1], got ${values.scale}`);
  }
  const out = values.out;
  for (const sub of ["input", "target", "mask"]) await Deno.mkdir(`${out}/${sub}`, { recursive: true });
  const total = files.length * perImage;
  const t0 = performance.now();
  const tty = Deno.stderr.isTerminal();
  const enc = new TextEncoder();
  let done = 0;
  let maskSum = 0;
  for await (const pair of synthesizePairs(task, files, seed, perImage, crop, scale, ranges)) {
    await writeImageAtomic(`${out}/input/${pair.name}.png`, pair.degraded, "png");
    await writeImageAtomic(`${out}/target/${pair.name}.png`, pair.clean, "png");
    await writeImageAtomic(`${out}/mask/${pair.name}.png`, pair.mask, "png");
    done++;
    maskSum += pair.mask.data.reduce((a, b) => a + b, 0) / pair.mask.data.length;
    const secs = (performance.now() - t0) / 1000;
    const line = `synth ${task}: ${done}/${total} pairs  mask ${(100 * maskSum / done).toFixed(1)}%  ` +
      `${(secs / done).toFixed(2)} s/pair  ETA ${((secs / done) * (total - done)).toFixed(0)} s`;
    Deno.stderr.writeSync(enc.encode(tty ? `\r${line.padEnd(78)}` : `${line}\n`));
  }
  if (tty) Deno.stderr.writeSync(enc.encode("\n"));
}

/** Area-average downscale of an interleaved image to the given width (aspect kept). */
export function downscale(img: Image, width: number): Image {
  if (img.width <= width) return img;
  const height = Math.max(1, Math.round((img.height * width) / img.width));
  const c = img.channels;
  const data = new Float32Array(width * height * c);
  const fx = img.width / width, fy = img.height / height;
  for (let y = 0; y < height; y++) {
    const ya = Math.floor(y * fy), yb = Math.max(ya + 1, Math.floor((y + 1) * fy));
    for (let x = 0; x < width; x++) {
      const xa = Math.floor(x * fx), xb = Math.max(xa + 1, Math.floor((x + 1) * fx));
      const cnt = (yb - ya) * (xb - xa);
      for (let ch = 0; ch < c; ch++) {
        let acc = 0;
        for (let yy = ya; yy < yb; yy++) {
          for (let xx = xa; xx < xb; xx++) acc += img.data[(yy * img.width + xx) * c + ch];
        }
        data[(y * width + x) * c + ch] = acc / cnt;
      }
    }
  }
  return { ...img, width, height, data };
}

/**
 * A contact sheet for one task: one row per file of (degraded | mask | clean) tiles 320 px wide, 4 px gaps
 * on white; the mask is shown in red over a darkened clean image, so the eye can check where it falls.
 */
export async function contactSheet(
  task: SynthTask,
  files: string[],
  seed: number,
  ranges: SynthRanges = "standard",
  tileWidth = 320,
): Promise<Image> {
  const rows: Image[][] = [];
  let i = 0;
  for await (const pair of synthesizePairs(task, files, seed, 1, undefined, 1, ranges)) {
    const n = pair.clean.width * pair.clean.height;
    const overlay = new Float32Array(n * 3);
    for (let p = 0; p < n; p++) {
      const m = pair.mask.data[p];
      for (let c = 0; c < 3; c++) {
        overlay[p * 3 + c] = pair.clean.data[p * 3 + c] * 0.35 + (c === 0 ? 0.65 * m : 0);
      }
    }
    const tiles = [pair.degraded, { ...pair.clean, data: overlay }, pair.clean].map((t) =>
      downscale(t, tileWidth)
    );
    rows.push(tiles);
    i++;
  }
  if (i === 0) throw new SynthUsageError("contact sheet: no images");
  const gap = 4;
  const width = 3 * tileWidth + 4 * gap;
  const height = rows.reduce((a, r) => a + r[0].height + gap, gap);
  const data = new Float32Array(width * height * 3).fill(1);
  let y0 = gap;
  for (const row of rows) {
    row.forEach((t, col) => {
      const x0 = gap + col * (tileWidth + gap);
      for (let y = 0; y < t.height; y++) {
        data.set(t.data.subarray(y * t.width * 3, (y + 1) * t.width * 3), ((y0 + y) * width + x0) * 3);
      }
    });
    y0 += row[0].height + gap;
  }
  return { width, height, channels: 3, bitDepth: 8, format: "jpeg", data };
}
