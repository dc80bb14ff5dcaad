/**
 * Paired-dataset discovery for training and evaluation: finds (degraded input, clean target, optional
 * mask) file triples in the folder layouts of the SPAIR benchmarks (SPAIR.md section 5) and of our own
 * synthesizer, so that users can point at downloaded data without renaming anything.
 *
 * Layouts (`dir` is the folder passed by the user):
 * - `pairs`: `dir/input/`, `dir/target/`, optional `dir/mask/`; files are matched by stem (name without
 *   extension). Our synthesizer's output and MPRNet-style Rain13K / GoPro test folders look like this.
 * - `rain13k`: `input/` + `target/` as above, or Rain100-style `rainy/rain-001.png` + `norain/norain-001.png`
 *   (a leading `rain-` / `norain-` is ignored when matching).
 * - `agan`: `data/N_rain.png` + `gt/N_clean.png`.
 * - `istd`: `A/` (shadow image), `B/` (shadow mask, optional), `C/` (shadow-free), or the same with a
 *   prefix, e.g. `train_A/`, `train_B/`, `train_C/`; files match by stem.
 * - `gopro`: `dir/SEQ/blur/*.png` + `dir/SEQ/sharp/*.png` for every sequence folder SEQ; names are
 *   `SEQ/stem`.
 * - `realblur`: a list file with lines `gt_path blur_path` relative to the list's folder; `dir` is the
 *   list file itself or a folder holding exactly one `*.txt` list. Names are the blur path without
 *   extension.
 * - `auto` (default): detected from the folder's contents in the order above.
 *
 * Only `.png`, `.jpg` and `.jpeg` files (any case) count as images; hidden files are ignored. Pairs come
 * back sorted by name in natural order (`2` before `10`).
 *
 * @module
 */

import { join, relative, resolve } from "node:path";
import { readImage, toPlanarRgb } from "./image_io.ts";
import { UserError } from "../engine/errors.ts";

/** One training / evaluation sample: file paths of the degraded input, its clean target and an optional mask. */
export interface Pair {
  /** Identifier unique within the dataset, e.g. `"001"` or `"GOPR0384_11_00/000001"` (may contain `/`). */
  name: string;
  /** Degraded image path. */
  input: string;
  /** Clean ground-truth path. */
  target: string;
  /** Ground-truth degradation mask path (ISTD shadow masks, synthesizer masks), when the dataset has one. */
  mask?: string;
}

/** Dataset layouts understood by {@link listPairs}. */
export type Layout = "auto" | "pairs" | "rain13k" | "agan" | "istd" | "gopro" | "realblur";

/** All accepted layout names, for CLI help and validation. */
export const LAYOUTS: readonly Layout[] = ["auto", "pairs", "rain13k", "agan", "istd", "gopro", "realblur"];

/** A dataset folder or list is missing, empty, inconsistent or malformed; the message is one line naming it. */
export class DatasetError extends UserError {
  constructor(message: string) {
    super(message.replace(/\s+/g, " ").trim());
    this.name = "DatasetError";
  }
}

const IMAGE_EXT = /\.(png|jpe?g)$/i;
const collator = new Intl.Collator("en", { numeric: true });

function stemOf(file: string): string {
  return file.replace(/\.[^.]*$/, "");
}

async function statOrNull(path: string): Promise<Deno.FileInfo | null> {
  try {
    return await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw new DatasetError(`${path}: cannot read (${(e as Error).message})`);
  }
}

async function isDir(path: string): Promise<boolean> {
  return (await statOrNull(path))?.isDirectory ?? false;
}

async function entries(dir: string): Promise<Deno.DirEntry[]> {
  const out: Deno.DirEntry[] = [];
  try {
    for await (const e of Deno.readDir(dir)) if (!e.name.startsWith(".")) out.push(e);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new DatasetError(`${dir}: no such folder`);
    throw new DatasetError(`${dir}: cannot read (${(e as Error).message})`);
  }
  return out.sort((a, b) => collator.compare(a.name, b.name));
}

/** Image files of `dir` keyed by `key(stem)`; two files with the same key are an error. */
async function imagesByKey(dir: string, key: (stem: string) => string): Promise<Map<string, string>> {
  const map = new Map<string, string>();
  for (const e of await entries(dir)) {
    if (!(e.isFile || e.isSymlink) || !IMAGE_EXT.test(e.name)) continue;
    const k = key(stemOf(e.name));
    const prev = map.get(k);
    if (prev !== undefined) throw new DatasetError(`${dir}: ${prev} and ${e.name} have the same name`);
    map.set(k, e.name);
  }
  return map;
}

interface MatchSpec {
  inputDir: string;
  targetDir: string;
  maskDir?: string;
  inputKey?: (stem: string) => string;
  targetKey?: (stem: string) => string;
  /** Prefix for pair names (GoPro sequences). */
  namePrefix?: string;
}

/** Matches an input folder with a target folder (and optional mask folder) by key; unmatched files throw. */
async function matchFolders(spec: MatchSpec): Promise<Pair[]> {
  const id = (s: string) => s;
  const inputs = await imagesByKey(spec.inputDir, spec.inputKey ?? id);
  const targets = await imagesByKey(spec.targetDir, spec.targetKey ?? id);
  const masks = spec.maskDir
    ? await imagesByKey(spec.maskDir, spec.inputKey ?? id)
    : new Map<string, string>();
  const pairs: Pair[] = [];
  for (const [k, file] of inputs) {
    const t = targets.get(k);
    if (t === undefined) {
      throw new DatasetError(`${join(spec.inputDir, file)} has no matching target in ${spec.targetDir}/`);
    }
    const pair: Pair = {
      name: (spec.namePrefix ?? "") + k,
      input: join(spec.inputDir, file),
      target: join(spec.targetDir, t),
    };
    const m = masks.get(k);
    if (m !== undefined && spec.maskDir) pair.mask = join(spec.maskDir, m);
    pairs.push(pair);
  }
  for (const [k, file] of targets) {
    if (!inputs.has(k)) {
      throw new DatasetError(`${join(spec.targetDir, file)} has no matching input in ${spec.inputDir}/`);
    }
  }
  return pairs;
}

function noPairs(dir: string, layout: Layout, expects: string): DatasetError {
  return new DatasetError(`${dir}: no image pairs found (layout ${layout} expects ${expects})`);
}

async function listPairsLayout(dir: string): Promise<Pair[]> {
  const maskDir = join(dir, "mask");
  return await matchFolders({
    inputDir: join(dir, "input"),
    targetDir: join(dir, "target"),
    maskDir: (await isDir(maskDir)) ? maskDir : undefined,
  });
}

const RAIN100_PREFIX = /^(no)?rain[-_]/i;

async function listRain13k(dir: string): Promise<Pair[]> {
  if ((await isDir(join(dir, "input"))) || !(await isDir(join(dir, "rainy")))) {
    return await matchFolders({ inputDir: join(dir, "input"), targetDir: join(dir, "target") });
  }
  const strip = (s: string) => s.replace(RAIN100_PREFIX, "");
  return await matchFolders({
    inputDir: join(dir, "rainy"),
    targetDir: join(dir, "norain"),
    inputKey: strip,
    targetKey: strip,
  });
}

async function listAgan(dir: string): Promise<Pair[]> {
  return await matchFolders({
    inputDir: join(dir, "data"),
    targetDir: join(dir, "gt"),
    inputKey: (s) => s.replace(/_rain$/i, ""),
    targetKey: (s) => s.replace(/_clean$/i, ""),
  });
}

/** ISTD folder prefixes present in `dir`: "" for A/B/C, "train_" for train_A/..., and so on. */
async function istdPrefixes(dir: string): Promise<string[]> {
  const names = new Set((await entries(dir)).filter((e) => e.isDirectory).map((e) => e.name));
  const prefixes: string[] = [];
  for (const n of names) {
    const m = /^(.*_)?A$/.exec(n);
    if (m && names.has(`${m[1] ?? ""}C`)) prefixes.push(m[1] ?? "");
  }
  return prefixes;
}

async function listIstd(dir: string): Promise<Pair[]> {
  const prefixes = await istdPrefixes(dir);
  if (prefixes.length > 1) {
    const found = prefixes.map((p) => `${p}A/`).join(", ");
    throw new DatasetError(`${dir}: several ISTD splits (${found}); pass the folder of one split`);
  }
  const p = prefixes[0] ?? "";
  const maskDir = join(dir, `${p}B`);
  return await matchFolders({
    inputDir: join(dir, `${p}A`),
    targetDir: join(dir, `${p}C`),
    maskDir: (await isDir(maskDir)) ? maskDir : undefined,
  });
}

async function goproSequences(dir: string): Promise<string[]> {
  const seqs: string[] = [];
  for (const e of await entries(dir)) {
    if (
      e.isDirectory && (await isDir(join(dir, e.name, "blur"))) && (await isDir(join(dir, e.name, "sharp")))
    ) {
      seqs.push(e.name);
    }
  }
  return seqs;
}

async function listGopro(dir: string): Promise<Pair[]> {
  const pairs: Pair[] = [];
  for (const seq of await goproSequences(dir)) {
    pairs.push(
      ...(await matchFolders({
        inputDir: join(dir, seq, "blur"),
        targetDir: join(dir, seq, "sharp"),
        namePrefix: `${seq}/`,
      })),
    );
  }
  return pairs;
}

async function findListFile(dir: string): Promise<string> {
  const info = await statOrNull(dir);
  if (info?.isFile) return dir;
  const lists = (await entries(dir)).filter((e) => e.isFile && /\.txt$/i.test(e.name)).map((e) => e.name);
  if (lists.length === 0) throw noPairs(dir, "realblur", "a list file of `gt_path blur_path` lines");
  if (lists.length > 1) {
    throw new DatasetError(
      `${dir}: several list files (${lists.join(", ")}); pass one of them as the dataset`,
    );
  }
  return join(dir, lists[0]);
}

async function listRealblur(dir: string): Promise<Pair[]> {
  const listPath = await findListFile(dir);
  let text: string;
  try {
    text = await Deno.readTextFile(listPath);
  } catch (e) {
    throw new DatasetError(`${listPath}: cannot read (${(e as Error).message})`);
  }
  const base = resolve(listPath, "..");
  const pairs: Pair[] = [];
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (line === "" || line.startsWith("#")) continue;
    const parts = line.split(/\s+/);
    if (parts.length !== 2) {
      throw new DatasetError(`${listPath}:${i + 1}: expected "gt_path blur_path", got "${line}"`);
    }
    const [gt, blur] = parts.map((p) => join(base, p));
    for (const p of [gt, blur]) {
      if (!(await statOrNull(p))?.isFile) throw new DatasetError(`${listPath}:${i + 1}: ${p} does not exist`);
    }
    pairs.push({ name: stemOf(relative(base, blur)).replaceAll("\\", "/"), input: blur, target: gt });
  }
  return pairs;
}

const EXPECTS: Record<Exclude<Layout, "auto">, string> = {
  pairs: "input/ and target/",
  rain13k: "input/ and target/, or rainy/ and norain/",
  agan: "data/*_rain and gt/*_clean",
  istd: "A/ and C/ (or *_A/ and *_C/)",
  gopro: "SEQ/blur/ and SEQ/sharp/ per sequence",
  realblur: "a list file of `gt_path blur_path` lines",
};

const LISTERS: Record<Exclude<Layout, "auto">, (dir: string) => Promise<Pair[]>> = {
  pairs: listPairsLayout,
  rain13k: listRain13k,
  agan: listAgan,
  istd: listIstd,
  gopro: listGopro,
  realblur: listRealblur,
};

/**
 * Guesses the layout of `dir` from its contents: a file is a RealBlur list; then `input/`+`target/`
 * (pairs), `rainy/`+`norain/` (rain13k), `data/`+`gt/` (agan), `A/`+`C/` or `*_A/`+`*_C/` (istd), sequence
 * folders with `blur/`+`sharp/` (gopro), `*.txt` lists (realblur). Throws {@link DatasetError} otherwise.
 */
export async function detectLayout(dir: string): Promise<Exclude<Layout, "auto">> {
  const info = await statOrNull(dir);
  if (info === null) throw new DatasetError(`${dir}: no such folder`);
  if (info.isFile) return "realblur";
  const all = await entries(dir);
  const dirs = new Set(all.filter((e) => e.isDirectory).map((e) => e.name));
  if (dirs.has("input") && dirs.has("target")) return "pairs";
  if (dirs.has("rainy") && dirs.has("norain")) return "rain13k";
  if (dirs.has("data") && dirs.has("gt")) return "agan";
  if ((await istdPrefixes(dir)).length > 0) return "istd";
  if ((await goproSequences(dir)).length > 0) return "gopro";
  if (all.some((e) => e.isFile && /\.txt$/i.test(e.name))) return "realblur";
  throw new DatasetError(
    `${dir}: cannot detect the dataset layout (expected input/+target/, rainy/+norain/, data/+gt/, A/+C/, ` +
      `SEQ/blur/+SEQ/sharp/ or a RealBlur list file)`,
  );
}

/**
 * Lists the image pairs of the dataset at `dir` in the given layout (see the module documentation),
 * sorted by name. Throws {@link DatasetError} with a one-line message naming the folder or file when the
 * folder is missing, has no pairs, has an input without target or a target without input, has two
 * files with the same stem, or when `layout` is unknown.
 */
export async function listPairs(dir: string, layout: Layout = "auto"): Promise<Pair[]> {
  if (!(LAYOUTS as readonly string[]).includes(layout)) {
    throw new DatasetError(`unknown dataset layout "${layout}" (expected one of ${LAYOUTS.join(", ")})`);
  }
  dir = dir.replace(/[\\/]+$/, "") || dir;
  const info = await statOrNull(dir);
  if (info === null) throw new DatasetError(`${dir}: no such folder`);
  if (info.isFile && layout !== "realblur" && layout !== "auto") {
    throw new DatasetError(`${dir}: is a file, not a folder`);
  }
  const concrete = layout === "auto" ? await detectLayout(dir) : layout;
  const required: Partial<Record<Layout, string[]>> = { pairs: ["input", "target"], agan: ["data", "gt"] };
  for (const sub of required[concrete] ?? []) {
    if (!(await isDir(join(dir, sub)))) throw noPairs(dir, concrete, EXPECTS[concrete]);
  }
  if (concrete === "rain13k" && !(await isDir(join(dir, "input"))) && !(await isDir(join(dir, "rainy")))) {
    throw noPairs(dir, concrete, EXPECTS[concrete]);
  }
  if (concrete === "istd" && (await istdPrefixes(dir)).length === 0) {
    throw noPairs(dir, concrete, EXPECTS[concrete]);
  }
  const pairs = await LISTERS[concrete](dir);
  if (pairs.length === 0) throw noPairs(dir, concrete, EXPECTS[concrete]);
  return pairs.sort((a, b) => collator.compare(a.name, b.name));
}

/** Throws {@link DatasetError} `"<input> is WxH but <target> is WxH"` when the two images' sizes differ. */
export function checkPairSizes(
  pair: Pair,
  a: { width: number; height: number },
  b: { width: number; height: number },
): void {
  if (a.width !== b.width || a.height !== b.height) {
    throw new DatasetError(
      `${pair.input} is ${a.width}x${a.height} but ${pair.target} is ${b.width}x${b.height}`,
    );
  }
}

/** A decoded pair: planar RGB `[3, H, W]` input and target in [0, 1], and the mask `[H, W]` if any. */
export interface PairImages {
  width: number;
  height: number;
  input: Float32Array;
  target: Float32Array;
  /** First channel of the mask image, in [0, 1]. */
  mask?: Float32Array;
}

/**
 * Reads a pair's images (and mask) with `train/image_io.ts` and checks that their sizes agree
 * ({@link checkPairSizes}; a mismatched mask throws the same kind of message).
 */
export async function readPair(pair: Pair): Promise<PairImages> {
  const [a, b] = await Promise.all([readImage(pair.input), readImage(pair.target)]);
  checkPairSizes(pair, a, b);
  const out: PairImages = { width: a.width, height: a.height, input: toPlanarRgb(a), target: toPlanarRgb(b) };
  if (pair.mask !== undefined) {
    const m = await readImage(pair.mask);
    if (m.width !== a.width || m.height !== a.height) {
      throw new DatasetError(
        `${pair.input} is ${a.width}x${a.height} but ${pair.mask} is ${m.width}x${m.height}`,
      );
    }
    const n = m.width * m.height;
    const mask = new Float32Array(n);
    for (let i = 0; i < n; i++) mask[i] = m.data[i * m.channels];
    out.mask = mask;
  }
  return out;
}
