/**
 * The headless training loop: stage 1 trains NetL on ground-truth masks (BCE), stage 2 trains NetR with
 * NetL frozen (L1). Batches are a pure function of (seed, stage, step), so a run resumed from a checkpoint
 * continues exactly as the uninterrupted run would have. Checkpoints (weights, optimizer state, position)
 * are written atomically every `checkpointEvery` steps and on SIGINT/SIGTERM.
 *
 * @module
 */

import {
  Adam,
  add,
  assignData,
  backward,
  clipGradNorm,
  concat,
  decodeSafetensors,
  disposeGuidance,
  encodeSafetensors,
  engine,
  full,
  type HostTensor,
  l1Loss,
  mseLoss,
  noGrad,
  type Preset,
  PRESETS,
  Rng,
  scale,
  SpairModel,
  square,
  sum,
  type Task,
  TASKS,
  type Tensor,
  tensor,
  tidy,
  UserError,
  type Variant,
  VARIANTS,
} from "../mod.ts";
import { editDistance } from "../engine/errors.ts";
import { isKeyOf, namesOf } from "../layers/vocabulary.ts";
import { listPairs, type Pair } from "./datasets.ts";
import {
  type Image,
  readImage,
  TEMP_FILE_PATTERN,
  toPlanarRgb,
  writeFileAtomic,
  writeImageAtomic,
} from "./image_io.ts";
import { rgbToY, SSIM_KERNEL, ssimRgb, ssimY } from "./metrics.ts";
import { diffMask, SYNTH_TAU } from "./synth.ts";
import { balancedPosWeight, ssimLoss, weightedBceWithLogits } from "./losses.ts";
import {
  CHECKPOINT_KEY,
  isCheckpoint,
  MODEL_PREFIX,
  modelTensorsOf,
  OPTIM_PREFIX,
  tensorsUnder,
} from "./checkpoint_format.ts";

/** Everything that defines a training run (saved as `config.json` in the run folder). */
export interface TrainConfig {
  task: Task;
  /** Training pairs folder and its layout (see `train/datasets.ts`). */
  data: string;
  layout: string;
  /** Validation pairs folder ("" for none). */
  val: string;
  preset: Preset;
  variant: Variant;
  crop: number;
  /** Candidate crop positions drawn per sample; the one whose mask is closest to half degraded wins
   * (1 = uniform random crops). Small crops of large photos otherwise often hold no degradation, or
   * only degradation, and give NetR and SFM nothing to learn from. */
  cropFocus: number;
  /** Weights file a new run starts from (a `model.safetensors` of the same preset and variant, e.g. a bundled
   * model, to fine-tune it); "" = fresh initialization. Both stages continue from it. */
  init: string;
  /** Photometric jitter of training crops: each crop's input and target get the same brightness factor in
   * [1 - j, 1 + j] and gamma in [e^-j, e^j] (0 = off), so the model does not tie restoration to one exposure. */
  jitter: number;
  batch: number;
  /** Steps of stage 1 (NetL) and stage 2 (NetR). Net1 skips stage 1: it uses no mask. */
  stepsL: number;
  stepsR: number;
  lr: number;
  /** The learning rate halves every this many epochs (an epoch = one crop of every training pair). */
  lrHalveEpochs: number;
  /** Global gradient-norm limit (gradients are scaled down to it before each update); 0 = no clipping. */
  clipGradNorm: number;
  /** NetR's output convolution at the start: `zero` (NetR starts as the identity) or `default` (PyTorch's
   * initialization, so every layer gets gradient from the first step). */
  outputInit: "zero" | "default";
  /** NetR's loss: `l1` (SPAIR.md section 3), `mse`, or their sum `l1+mse`. L1's gradient is only the sign of
   * each pixel's error, so NetR can sit at the identity when a degradation's errors have no consistent sign
   * (raindrops: the refracted view is brighter here and darker there than what it hides); the squared
   * error weighs large errors more, and L1 keeps clean pixels where they are. `l1+ssim` and `l1+mse+ssim`
   * add 1 - SSIM (the evaluation's structural similarity, see `ssimLoss`), for models whose outputs gain PSNR
   * but lose SSIM. */
  loss: "l1" | "mse" | "l1+mse" | "l1+ssim" | "l1+mse+ssim";
  /** Weight of the MSE term (for `mse`, `l1+mse` and `l1+mse+ssim`). */
  mseWeight: number;
  /** Weight of the 1 - SSIM term (for `l1+ssim` and `l1+mse+ssim`). */
  ssimWeight: number;
  /** Mask threshold on mean |degraded - clean| when a pair has no mask file. */
  tau: number;
  /** NetL's BCE weight on degraded sites; 0 = balance the training masks' density (capped at 10). */
  posWeight: number;
  seed: number;
  checkpointEvery: number;
  validateEvery: number;
  /** Side of the centre crop of each validation pair (0 = whole image). */
  valCrop: number;
  /** Validation pairs used (the first N, sorted). */
  valCount: number;
  logEvery: number;
}

/** Defaults per SPAIR.md section 3, scaled to what a CPU finishes. */
export function defaultConfig(task: Task): TrainConfig {
  return {
    task,
    data: "",
    layout: "auto",
    val: "",
    preset: "tiny",
    variant: "SPAIR",
    crop: 256,
    cropFocus: 1,
    init: "",
    jitter: 0,
    batch: 8,
    stepsL: 1000,
    stepsR: 4000,
    lr: 2e-4,
    lrHalveEpochs: 50,
    clipGradNorm: 0,
    outputInit: "zero",
    loss: "l1",
    mseWeight: 1,
    ssimWeight: 1,
    tau: SYNTH_TAU[task],
    posWeight: 0,
    seed: 1,
    checkpointEvery: 50,
    validateEvery: 200,
    valCrop: 128,
    valCount: 6,
    logEvery: 10,
  };
}

/** A user-facing training error (printed as one line). */
export class TrainError extends UserError {}

/** Keys newer than the first run format: a run's config.json written before them gets their defaults. */
const LATER_KEYS = [
  "cropFocus",
  "init",
  "jitter",
  "clipGradNorm",
  "outputInit",
  "loss",
  "mseWeight",
  "ssimWeight",
  "posWeight",
] as const;

/** Throws `<key> must be a, b or c, got <value>` unless `value` is one of `allowed`. */
function mustBeOneOf(key: string, value: unknown, allowed: readonly string[]): void {
  if (allowed.includes(value as string)) return;
  const list = allowed.length > 1 ? `${allowed.slice(0, -1).join(", ")} or ${allowed.at(-1)}` : allowed[0];
  throw new TrainError(`${key} must be ${list}, got ${value}`);
}

/** Settings a resumed run may change (`train --resume DIR --lr 1e-4`): none of them changes what a
 * checkpoint means. New data or jitter on resume make a curriculum (say, narrow synthetic pairs first, then
 * wide ones). Each change is recorded in the `history` list of the run's config.json. */
export const RESUMABLE_KEYS = [
  "data",
  "val",
  "jitter",
  "stepsL",
  "stepsR",
  "lr",
  "lrHalveEpochs",
  "checkpointEvery",
  "logEvery",
  "validateEvery",
] as const satisfies readonly (keyof TrainConfig)[];

/** The valid key closest to `key` (case-insensitive edit distance). */
export function nearestKey(key: string, valid: readonly string[]): string {
  const k = key.toLowerCase();
  return valid.reduce((best, v) =>
    editDistance(k, v.toLowerCase()) < editDistance(k, best.toLowerCase()) ? v : best
  );
}

/** Throws a {@link TrainError} naming the first key of `object` that is not a config key (and the nearest
 * one that is). `extra` lists further accepted keys. */
function checkConfigKeys(object: Record<string, unknown>, extra: readonly string[] = []): void {
  const valid = [...Object.keys(defaultConfig("rain")), ...extra];
  for (const key of Object.keys(object)) {
    if (!valid.includes(key)) {
      throw new TrainError(`unknown key '${key}' (did you mean '${nearestKey(key, valid)}'?)`);
    }
  }
}

/** Reads a `--config FILE` (a JSON object of config keys; a run's config.json works too, its `history`
 * is ignored). Unknown keys are refused with the nearest valid key, so a typo is never silently dropped. */
export async function readConfigFile(path: string): Promise<Partial<TrainConfig>> {
  let object: Record<string, unknown>;
  try {
    object = JSON.parse(await Deno.readTextFile(path));
  } catch (e) {
    throw new TrainError(`${path}: unreadable config file (${(e as Error).message.split("\n")[0]})`);
  }
  if (typeof object !== "object" || object === null || Array.isArray(object)) {
    throw new TrainError(`${path}: a config file holds one JSON object of settings`);
  }
  try {
    checkConfigKeys(object, ["history"]);
  } catch (e) {
    throw new TrainError(`${path}: ${(e as Error).message}`);
  }
  const { history: _history, ...config } = object;
  return config as Partial<TrainConfig>;
}

/** Checks a config and returns it, or throws a one-line {@link TrainError}. */
export function validateConfig(c: TrainConfig): TrainConfig {
  const defaults = defaultConfig(c.task);
  for (const key of LATER_KEYS) if (c[key] === undefined) Object.assign(c, { [key]: defaults[key] });
  for (const [key, value] of Object.entries(defaults)) {
    const got = (c as unknown as Record<string, unknown>)[key];
    if (typeof value === "number" && !(typeof got === "number" && Number.isFinite(got))) {
      throw new TrainError(`${key} must be a finite number, got ${JSON.stringify(got) ?? "nothing"}`);
    }
    if (typeof value === "string" && got !== undefined && typeof got !== "string") {
      throw new TrainError(`${key} must be a string, got ${JSON.stringify(got) ?? "nothing"}`);
    }
  }
  const positive = [
    "crop",
    "cropFocus",
    "batch",
    "checkpointEvery",
    "validateEvery",
    "logEvery",
    "lrHalveEpochs",
  ] as const;
  for (const key of positive) {
    if (!Number.isInteger(c[key]) || c[key] < 1) throw new TrainError(`${key} must be a positive integer`);
  }
  for (const key of ["stepsL", "stepsR", "valCrop", "valCount", "seed"] as const) {
    if (!Number.isInteger(c[key]) || c[key] < 0) {
      throw new TrainError(`${key} must be a non-negative integer`);
    }
  }
  if (c.crop % 4 !== 0) throw new TrainError(`crop must be a multiple of 4, got ${c.crop}`);
  if (c.valCrop % 4 !== 0) throw new TrainError(`valCrop must be a multiple of 4, got ${c.valCrop}`);
  if (!(c.lr > 0)) throw new TrainError(`lr must be positive`);
  if (!(c.clipGradNorm >= 0)) throw new TrainError(`clipGradNorm must be 0 (off) or positive`);
  mustBeOneOf("outputInit", c.outputInit, ["zero", "default"]);
  mustBeOneOf("loss", c.loss, ["l1", "mse", "l1+mse", "l1+ssim", "l1+mse+ssim"]);
  if (!(c.mseWeight > 0)) throw new TrainError(`mseWeight must be positive`);
  if (!(c.ssimWeight > 0)) throw new TrainError(`ssimWeight must be positive`);
  if (c.loss.endsWith("ssim") && c.crop < SSIM_KERNEL.length) {
    throw new TrainError(
      `loss ${c.loss} needs crops of at least ${SSIM_KERNEL.length} pixels, got ${c.crop}`,
    );
  }
  if (!(c.tau >= 0 && c.tau < 1)) throw new TrainError(`tau must lie in [0, 1)`);
  if (!(c.posWeight >= 0)) throw new TrainError(`posWeight must be 0 (auto) or positive`);
  if (!(c.jitter >= 0 && c.jitter < 1)) throw new TrainError(`jitter must lie in [0, 1), got ${c.jitter}`);
  if (!TASKS.includes(c.task)) throw new TrainError(`unknown task ${c.task} (expected ${TASKS.join("|")})`);
  if (!isKeyOf(PRESETS, c.preset)) {
    throw new TrainError(`unknown preset ${c.preset} (expected ${namesOf(PRESETS)})`);
  }
  if (!isKeyOf(VARIANTS, c.variant)) {
    throw new TrainError(`unknown variant ${c.variant} (expected ${namesOf(VARIANTS)})`);
  }
  if (!c.data) throw new TrainError("no training data: pass --data DIR");
  return c;
}

/** One decoded pair: planar RGB images and the ground-truth mask (all at the same size). */
export interface LoadedPair {
  name: string;
  width: number;
  height: number;
  input: Float32Array;
  target: Float32Array;
  mask: Float32Array;
}

/** Ground-truth mask per SPAIR.md section 2: mean over RGB of |degraded - clean| > tau. */
export const thresholdMask = (
  input: Float32Array,
  target: Float32Array,
  plane: number,
  tau: number,
): Float32Array => diffMask(input, target, plane, tau);

/** Reads a pair (and its mask file, when the dataset ships one), checking that sizes agree. */
export async function loadPair(pair: Pair, tau: number): Promise<LoadedPair> {
  const [a, b] = await Promise.all([readImage(pair.input), readImage(pair.target)]);
  if (a.width !== b.width || a.height !== b.height) {
    throw new TrainError(
      `${pair.input} is ${a.width}x${a.height} but ${pair.target} is ${b.width}x${b.height}`,
    );
  }
  const input = toPlanarRgb(a);
  const target = toPlanarRgb(b);
  const plane = a.width * a.height;
  let mask: Float32Array;
  if (pair.mask) {
    const m = await readImage(pair.mask);
    if (m.width !== a.width || m.height !== a.height) {
      throw new TrainError(
        `${pair.mask} is ${m.width}x${m.height} but ${pair.input} is ${a.width}x${a.height}`,
      );
    }
    mask = new Float32Array(plane);
    for (let i = 0; i < plane; i++) mask[i] = m.data[i * m.channels] > 0.5 ? 1 : 0;
  } else {
    mask = thresholdMask(input, target, plane, tau);
  }
  return { name: pair.name, width: a.width, height: a.height, input, target, mask };
}

/** A deterministic seed from a few integers (so batches depend only on seed, stage and step). */
function mix(...values: number[]): number {
  let h = 0x811c9dc5;
  for (const v of values) {
    h = Math.imul(h ^ (v >>> 0), 0x01000193) >>> 0;
    h = Math.imul(h ^ (h >>> 15), 0x2c1b3c6d) >>> 0;
  }
  return h >>> 0;
}

/** Host-side batch: input, target and mask crops, [B,3,S,S], [B,3,S,S], [B,1,S,S]. */
export interface HostBatch {
  input: Float32Array;
  target: Float32Array;
  mask: Float32Array;
  size: number;
  count: number;
}

/** The batch of step `step` (1-based) of `stage`: pairs in a per-epoch shuffled order, random crops and
 * flips, and photometric jitter, all derived from (seed, stage, step) alone. */
export function sampleBatch(
  pairs: LoadedPair[],
  config: Pick<TrainConfig, "seed" | "batch" | "crop"> & { cropFocus?: number; jitter?: number },
  stage: number,
  step: number,
): HostBatch {
  const { batch, crop } = config;
  const stepsPerEpoch = Math.ceil(pairs.length / batch);
  const epoch = Math.floor((step - 1) / stepsPerEpoch);
  const order = new Rng(mix(config.seed, stage, epoch, 1)).shuffle([...pairs.keys()]);
  const rng = new Rng(mix(config.seed, stage, step, 2));
  // Its own stream, so that runs without jitter keep their batches.
  const jitterRng = new Rng(mix(config.seed, stage, step, 3));
  const jitter = config.jitter ?? 0;
  const s = crop;
  const input = new Float32Array(batch * 3 * s * s);
  const target = new Float32Array(batch * 3 * s * s);
  const mask = new Float32Array(batch * s * s);
  for (let b = 0; b < batch; b++) {
    const p = pairs[order[(((step - 1) % stepsPerEpoch) * batch + b) % pairs.length]];
    if (p.width < s || p.height < s) {
      throw new TrainError(`${p.name} is ${p.width}x${p.height}, smaller than the ${s}x${s} crop`);
    }
    let [y0, x0] = [rng.int(p.height - s + 1), rng.int(p.width - s + 1)];
    if ((config.cropFocus ?? 1) > 1) {
      let best = balance(p, x0, y0, s);
      for (let k = 1; k < config.cropFocus!; k++) {
        const [y, x] = [rng.int(p.height - s + 1), rng.int(p.width - s + 1)];
        const score = balance(p, x, y, s);
        if (score > best) [best, y0, x0] = [score, y, x];
      }
    }
    const flipX = rng.next() < 0.5;
    const flipY = rng.next() < 0.5;
    const plane = p.width * p.height;
    for (let y = 0; y < s; y++) {
      const sy = y0 + (flipY ? s - 1 - y : y);
      for (let x = 0; x < s; x++) {
        const src = sy * p.width + x0 + (flipX ? s - 1 - x : x);
        const dst = y * s + x;
        mask[b * s * s + dst] = p.mask[src];
        for (let c = 0; c < 3; c++) {
          input[(b * 3 + c) * s * s + dst] = p.input[c * plane + src];
          target[(b * 3 + c) * s * s + dst] = p.target[c * plane + src];
        }
      }
    }
    if (jitter > 0) {
      const gain = jitterRng.uniform(1 - jitter, 1 + jitter);
      const gamma = Math.exp(jitterRng.uniform(-jitter, jitter));
      for (let i = b * 3 * s * s; i < (b + 1) * 3 * s * s; i++) {
        input[i] = Math.min(1, gain * input[i] ** gamma);
        target[i] = Math.min(1, gain * target[i] ** gamma);
      }
    }
  }
  return { input, target, mask, size: s, count: batch };
}

/** min(d, 1 - d) for the mask density d of a crop: 0.5 when half of it is degraded, 0 when none or all. */
function balance(p: LoadedPair, x0: number, y0: number, s: number): number {
  let sum = 0;
  for (let y = y0; y < y0 + s; y++) {
    for (let x = x0; x < x0 + s; x++) sum += p.mask[y * p.width + x];
  }
  const d = sum / (s * s);
  return Math.min(d, 1 - d);
}

/** Learning rate at `step` of a stage: `lr` halved every `lrHalveEpochs` epochs. */
export function learningRate(config: TrainConfig, step: number, pairCount: number): number {
  const stepsPerEpoch = Math.ceil(pairCount / config.batch);
  const epoch = Math.floor((step - 1) / stepsPerEpoch);
  return config.lr * 0.5 ** Math.floor(epoch / config.lrHalveEpochs);
}

/** Where a run stands: stage 1 (NetL) or 2 (NetR) and the last completed step of that stage. */
export interface RunPosition {
  stage: 1 | 2;
  step: number;
}

/** Paths of a run folder's files. */
export function runFiles(dir: string) {
  return {
    config: `${dir}/config.json`,
    checkpoint: `${dir}/checkpoint.safetensors`,
    log: `${dir}/log.jsonl`,
    model: `${dir}/model.safetensors`,
    previews: `${dir}/previews`,
  };
}

/** Writes bytes to `path` atomically and durably (temp file, fsync, rename); see `image_io.ts`. */
export { writeFileAtomic };

/** Progress report of {@link train}. */
export interface TrainProgress {
  stage: 1 | 2;
  step: number;
  steps: number;
  epoch: number;
  loss: number;
  /** Training steps per second of this stage in this process. */
  stepsPerSecond: number;
  /** Images per second (steps per second times the batch). */
  imagesPerSecond: number;
  etaSeconds: number;
}

/** Options of {@link train}. */
export interface TrainOptions {
  /** Starts a new run in the folder with this config (omit to resume the folder's run). */
  config?: TrainConfig;
  onProgress?: (p: TrainProgress) => void;
  onMessage?: (line: string) => void;
  /** Stop (after a checkpoint) once this many steps ran in this process; tests use it. */
  maxStepsThisRun?: number;
  /** Settings to change when resuming (only {@link RESUMABLE_KEYS}; others are refused). */
  changes?: Partial<TrainConfig>;
  /** Test hook: sees each step's gradients after backward, before they are checked and applied. */
  inspectGradients?: (stage: 1 | 2, step: number, params: Tensor[]) => void;
}

/** Result of {@link train}. */
export interface TrainResult {
  finished: boolean;
  /** The signal (SIGINT, SIGTERM) that stopped the run early, if one did. */
  signal?: Deno.Signal;
  position: RunPosition;
  /** Milliseconds spent training in this process. */
  elapsedMs: number;
}

interface CheckpointMeta {
  position: RunPosition;
  optimizer: { kind: string; step: number; lrs: number[] } | null;
  trainMs: number;
}

async function saveCheckpoint(
  dir: string,
  model: SpairModel,
  optimizer: Adam | null,
  config: TrainConfig,
  meta: CheckpointMeta,
): Promise<void> {
  const tensors: Record<string, HostTensor> = {};
  for (const [name, t] of Object.entries(await model.stateDict())) tensors[`${MODEL_PREFIX}${name}`] = t;
  if (optimizer) {
    const state = optimizer.stateDict();
    for (const [name, t] of Object.entries(state.tensors)) {
      tensors[`${OPTIM_PREFIX}${name}`] = { shape: [...t.shape], data: await t.data() };
    }
    meta.optimizer = state.meta as CheckpointMeta["optimizer"];
  }
  // The model's metadata too, so that restore, eval and --init take a checkpoint of a run in progress.
  const metadata = {
    [CHECKPOINT_KEY]: JSON.stringify(meta),
    preset: config.preset,
    variant: config.variant,
    task: config.task,
    tau: String(config.tau),
    stage: String(meta.position.stage),
    step: String(meta.position.step),
  };
  await writeFileAtomic(runFiles(dir).checkpoint, encodeSafetensors(tensors, metadata));
}

/** The checkpoint's metadata, or null unless it is well formed. */
function parseCheckpointMeta(text: string): CheckpointMeta | null {
  let meta: CheckpointMeta;
  try {
    meta = JSON.parse(text);
  } catch {
    return null;
  }
  const count = (v: unknown) => Number.isSafeInteger(v) && (v as number) >= 0;
  const p = meta?.position;
  const o = meta?.optimizer;
  const fine = typeof meta === "object" && meta !== null && (p?.stage === 1 || p?.stage === 2) &&
    count(p.step) && typeof meta.trainMs === "number" && meta.trainMs >= 0 &&
    (o === null || (typeof o === "object" && typeof o.kind === "string" && count(o.step) &&
      Array.isArray(o.lrs) && o.lrs.every((v) => typeof v === "number")));
  return fine ? meta : null;
}

async function readCheckpoint(
  dir: string,
): Promise<{ meta: CheckpointMeta; model: Record<string, HostTensor>; optim: Record<string, HostTensor> }> {
  const path = runFiles(dir).checkpoint;
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch {
    throw new TrainError(`${path}: checkpoint not found (nothing to resume)`);
  }
  let decoded;
  try {
    decoded = decodeSafetensors(bytes);
  } catch (e) {
    throw new TrainError(`${path}: corrupt checkpoint (${(e as Error).message})`);
  }
  if (!isCheckpoint(decoded.metadata)) throw new TrainError(`${path}: not a training checkpoint`);
  const meta = parseCheckpointMeta(decoded.metadata[CHECKPOINT_KEY]);
  if (!meta) throw new TrainError(`${path}: corrupt checkpoint (its position metadata is garbled)`);
  const model = tensorsUnder(decoded.tensors, MODEL_PREFIX);
  const optim = tensorsUnder(decoded.tensors, OPTIM_PREFIX);
  return { meta, model, optim };
}

/** The tensors of a run's `init` weights file, checked against its preset and variant. */
async function readInitWeights(config: TrainConfig): Promise<Record<string, HostTensor>> {
  const path = config.init;
  let decoded;
  try {
    decoded = decodeSafetensors(await Deno.readFile(path));
  } catch (e) {
    throw new TrainError(
      e instanceof Deno.errors.NotFound
        ? `${path}: init weights not found`
        : `${path}: not readable safetensors weights (${(e as Error).message})`,
    );
  }
  const { preset, variant } = decoded.metadata;
  if (preset !== config.preset || variant !== config.variant) {
    throw new TrainError(
      `${path} holds ${preset ?? "unnamed"} ${variant ?? "unnamed"} weights; this run trains ` +
        `${config.preset} ${config.variant}`,
    );
  }
  // The names and shapes must be the model's: a file that merely carries the right metadata is refused here.
  const tensors = modelTensorsOf(decoded.tensors, decoded.metadata);
  const probe = new SpairModel({ preset: config.preset, variant: config.variant }, 0);
  try {
    probe.loadStateDict(tensors, path);
  } catch (e) {
    throw new TrainError((e as Error).message);
  } finally {
    for (const p of probe.parameters()) p.dispose();
  }
  return tensors;
}

/** Loads the pairs of a folder, reporting each problem by file name. */
export async function loadPairs(
  dir: string,
  layout: string,
  tau: number,
  limit = Infinity,
): Promise<LoadedPair[]> {
  const pairs = (await listPairs(dir, layout as Parameters<typeof listPairs>[1])).slice(0, limit);
  const out: LoadedPair[] = [];
  for (const p of pairs) out.push(await loadPair(p, tau));
  return out;
}

function centreCrop(p: LoadedPair, size: number): LoadedPair {
  const w = size > 0 ? Math.min(size, p.width) : p.width;
  const h = size > 0 ? Math.min(size, p.height) : p.height;
  const cw = Math.floor(w / 4) * 4;
  const ch = Math.floor(h / 4) * 4;
  const x0 = Math.floor((p.width - cw) / 2);
  const y0 = Math.floor((p.height - ch) / 2);
  const crop = (src: Float32Array, channels: number) => {
    const out = new Float32Array(channels * cw * ch);
    for (let c = 0; c < channels; c++) {
      for (let y = 0; y < ch; y++) {
        const o = (c * p.height + y0 + y) * p.width + x0;
        out.set(src.subarray(o, o + cw), (c * ch + y) * cw);
      }
    }
    return out;
  };
  return {
    name: p.name,
    width: cw,
    height: ch,
    input: crop(p.input, 3),
    target: crop(p.target, 3),
    mask: crop(p.mask, 1),
  };
}

/** Validation metrics of one evaluation: PSNR pooled over all validation crops (one MSE, so a crop
 * without degradation cannot make the mean infinite), SSIM averaged. */
export interface Validation {
  psnr: number;
  ssim: number;
  inputPsnr: number;
  inputSsim: number;
  /** Mask quality of NetL against the ground truth: intersection over union and pixel accuracy. */
  maskIoU: number;
  maskAccuracy: number;
}

/** Squared error summed over the task's channels (Y on [0, 255] for rain streaks, RGB on [0, 255] otherwise)
 * and the number of values, for a pooled PSNR. */
function squaredError(task: Task, a: Float32Array, b: Float32Array, w: number, h: number): [number, number] {
  const [x, y] = task === "rain" ? [rgbToY(a, w, h), rgbToY(b, w, h)] : [a, b];
  const k = task === "rain" ? 1 : 255;
  let sum = 0;
  for (let i = 0; i < x.length; i++) sum += (k * (x[i] - y[i])) ** 2;
  return [sum, x.length];
}

function taskSsim(task: Task, a: Float32Array, b: Float32Array, w: number, h: number): number {
  return task === "rain" ? ssimY(a, b, w, h) : ssimRgb(a, b, w, h);
}

/** Runs the model on the validation crops; writes a preview (input | mask | output | target) of the first. */
export async function validate(
  model: SpairModel,
  task: Task,
  pairs: LoadedPair[],
  previewPath?: string,
): Promise<Validation> {
  const sums = {
    se: 0,
    inputSe: 0,
    count: 0,
    ssim: 0,
    inputSsim: 0,
    inter: 0,
    union: 0,
    correct: 0,
    total: 0,
  };
  for (const [index, p] of pairs.entries()) {
    const { restored, mask } = noGrad(() =>
      tidy(() => {
        const out = model.forward(tensor(p.input, [1, 3, p.height, p.width]));
        out.logits.dispose();
        return { restored: out.restored, mask: out.mask };
      })
    );
    const out = await restored.data();
    const m = await mask.data();
    restored.dispose();
    mask.dispose();
    for (let i = 0; i < out.length; i++) out[i] = Math.min(1, Math.max(0, out[i]));
    const [se, n] = squaredError(task, out, p.target, p.width, p.height);
    sums.se += se;
    sums.inputSe += squaredError(task, p.input, p.target, p.width, p.height)[0];
    sums.count += n;
    sums.ssim += taskSsim(task, out, p.target, p.width, p.height);
    sums.inputSsim += taskSsim(task, p.input, p.target, p.width, p.height);
    for (let i = 0; i < m.length; i++) {
      const a = m[i] > 0.5, b = p.mask[i] > 0.5;
      if (a && b) sums.inter++;
      if (a || b) sums.union++;
      if (a === b) sums.correct++;
    }
    sums.total += m.length;
    if (index === 0 && previewPath) await writePreview(previewPath, p, m, out);
  }
  const psnr = (se: number) => 10 * Math.log10((255 * 255) / Math.max(se / sums.count, 1e-10));
  return {
    psnr: psnr(sums.se),
    ssim: sums.ssim / pairs.length,
    inputPsnr: psnr(sums.inputSe),
    inputSsim: sums.inputSsim / pairs.length,
    maskIoU: sums.union ? sums.inter / sums.union : 1,
    maskAccuracy: sums.correct / sums.total,
  };
}

async function writePreview(
  path: string,
  p: LoadedPair,
  mask: Float32Array,
  out: Float32Array,
): Promise<void> {
  const { width: w, height: h } = p;
  const sheetW = 4 * w;
  const data = new Float32Array(sheetW * h * 3);
  const plane = w * h;
  const panels: ((c: number, i: number) => number)[] = [
    (c, i) => p.input[c * plane + i],
    (_c, i) => mask[i],
    (c, i) => out[c * plane + i],
    (c, i) => p.target[c * plane + i],
  ];
  panels.forEach((value, k) => {
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        for (let c = 0; c < 3; c++) data[(y * sheetW + k * w + x) * 3 + c] = value(c, y * w + x);
      }
    }
  });
  const image: Image = { width: sheetW, height: h, channels: 3, bitDepth: 8, format: "png", data };
  await writeImageAtomic(path, image);
}

async function appendLog(path: string, entry: Record<string, unknown>): Promise<void> {
  await Deno.writeTextFile(path, JSON.stringify(entry) + "\n", { append: true });
}

/** NetR's training loss (see {@link TrainConfig.loss}). */
function restorationLoss(config: TrainConfig, y: Tensor, target: Tensor): Tensor {
  if (config.loss === "mse") return scale(mseLoss(y, target), config.mseWeight);
  let loss = l1Loss(y, target);
  if (config.loss.includes("mse")) loss = add(loss, scale(mseLoss(y, target), config.mseWeight));
  if (config.loss.endsWith("ssim")) loss = add(loss, scale(ssimLoss(y, target), config.ssimWeight));
  return loss;
}

/** Drops log lines written after the checkpoint a resumed run restarts from (their steps will rerun). At the
 * end of stage 1 (`redoneValidation`) the resumed run validates NetL again, so that line goes too. */
async function trimLog(path: string, position: RunPosition, redoneValidation: boolean): Promise<void> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch {
    return;
  }
  const kept = text.split("\n").filter((line) => {
    if (!line.trim()) return false;
    try {
      const e = JSON.parse(line) as { stage?: number; step?: number; val?: unknown };
      if (e.stage === undefined || e.step === undefined) return true;
      if (redoneValidation && e.val && e.stage === position.stage && e.step === position.step) return false;
      return e.stage < position.stage || (e.stage === position.stage && e.step <= position.step);
    } catch {
      return false;
    }
  });
  await writeFileAtomic(path, kept.map((l) => l + "\n").join(""));
}

/** Writes the final weights file (weights plus the metadata `deno task restore` needs). */
export async function saveModel(
  path: string,
  model: SpairModel,
  config: TrainConfig,
  extra: Record<string, string>,
) {
  const metadata: Record<string, string> = {
    preset: config.preset,
    variant: config.variant,
    task: config.task,
    tau: String(config.tau),
    crop: String(config.crop),
    batch: String(config.batch),
    stepsL: String(config.stepsL),
    stepsR: String(config.stepsR),
    ...(config.init ? { init: config.init } : {}),
    ...extra,
  };
  await writeFileAtomic(path, await model.saveSafetensors(metadata));
}

async function assertNoRun(dir: string): Promise<void> {
  try {
    await Deno.stat(runFiles(dir).config);
  } catch {
    return;
  }
  throw new TrainError(`${dir} already holds a run: pass --resume ${dir} to continue it, or another --run`);
}

/** Starts a new run in `dir` (which must not hold one already). */
export async function createRun(dir: string, config: TrainConfig): Promise<void> {
  validateConfig(config);
  await assertNoRun(dir);
  await Deno.mkdir(dir, { recursive: true });
  await writeFileAtomic(runFiles(dir).config, JSON.stringify(config, null, 2) + "\n");
}

/** One change of a resumed run's settings, as recorded in config.json's `history`. */
export interface ConfigChange {
  /** When it was made (ISO time) and where the run stood. */
  time: string;
  stage: 1 | 2;
  step: number;
  changed: Record<string, { from: unknown; to: unknown }>;
}

async function readRunFile(dir: string): Promise<{ config: TrainConfig; history: ConfigChange[] }> {
  const path = runFiles(dir).config;
  try {
    await Deno.stat(path);
  } catch {
    throw new TrainError(`${dir}: no training run to resume (no config.json there)`);
  }
  try {
    const { history = [], ...config } = JSON.parse(await Deno.readTextFile(path));
    checkConfigKeys(config);
    return { config: validateConfig(config), history };
  } catch (e) {
    if (e instanceof TrainError) throw new TrainError(`${path}: ${e.message}`);
    throw new TrainError(`${path}: no readable run config (${(e as Error).message.split("\n")[0]})`);
  }
}

/** Reads a run folder's config. */
export async function readRunConfig(dir: string): Promise<TrainConfig> {
  return (await readRunFile(dir)).config;
}

/** The run folder's lock file: an exclusive OS file lock held while a process trains in the folder. The
 * OS releases it when the process dies, however it dies, so a killed run never blocks its resume. */
export function lockPath(dir: string): string {
  return `${dir}/lock`;
}

/** Takes the run folder's lock, or throws a {@link TrainError} naming the process that holds it. */
export async function lockRun(dir: string): Promise<{ release(): void }> {
  const path = lockPath(dir);
  for (let attempt = 0;; attempt++) {
    const file = await Deno.open(path, { read: true, write: true, create: true });
    if (!(await file.tryLock(true))) {
      file.close();
      const holder = await Deno.readTextFile(path).then((t) => t.trim(), () => "");
      throw new TrainError(
        `${dir} is in use by another training process${holder ? ` (${holder})` : ""}; ` +
          `wait for it to finish or stop it (Ctrl-C) first`,
      );
    }
    // A holder that released and removed the file between our open and lock leaves us a dead inode.
    const [mine, named] = await Promise.all([file.stat(), Deno.stat(path).catch(() => null)]);
    if (named?.ino !== mine.ino && attempt < 3) {
      file.close();
      continue;
    }
    await file.truncate(0);
    await file.write(new TextEncoder().encode(`pid ${Deno.pid} since ${new Date().toISOString()}\n`));
    return {
      release() {
        Deno.removeSync(path);
        file.close();
      },
    };
  }
}

/** Removes temp files that an interrupted atomic write left in the run folder (ours only: the run's own
 * file names or previews followed by `.tmp-<8 hex digits>`). */
async function removeStaleTemps(dir: string): Promise<void> {
  const names = Object.values(runFiles(dir)).map((p) => p.slice(dir.length + 1));
  for (
    const [folder, ours] of [
      [dir, (base: string) => names.includes(base)],
      [runFiles(dir).previews, (base: string) => /^stage[12]-step\d{6}\.png$/.test(base)],
    ] as const
  ) {
    const entries: Deno.DirEntry[] = [];
    try {
      for await (const e of Deno.readDir(folder)) entries.push(e);
    } catch {
      continue; // no previews folder yet
    }
    for (const e of entries) {
      if (e.isFile && TEMP_FILE_PATTERN.test(e.name) && ours(e.name.replace(TEMP_FILE_PATTERN, ""))) {
        await Deno.remove(`${folder}/${e.name}`).catch(() => {});
      }
    }
  }
}

/** Applies the settings a resume may change (see {@link RESUMABLE_KEYS}) and refuses any other. */
function applyResumeChanges(
  config: TrainConfig,
  changes: Partial<TrainConfig>,
): { config: TrainConfig; changed: ConfigChange["changed"] } {
  const changed: ConfigChange["changed"] = {};
  for (const [key, to] of Object.entries(changes)) {
    const from = (config as unknown as Record<string, unknown>)[key];
    if (to === undefined || to === from) continue;
    if (!(RESUMABLE_KEYS as readonly string[]).includes(key)) {
      throw new TrainError(
        `${key} cannot change when resuming (a resume may change ${RESUMABLE_KEYS.join(", ")}); ` +
          `start a new run with --run to change it`,
      );
    }
    changed[key] = { from, to };
  }
  return { config: validateConfig({ ...config, ...changes }), changed };
}

/** Runs (or resumes) the training run in `dir` to its end or until stopped by a signal. */
export async function train(dir: string, options: TrainOptions = {}): Promise<TrainResult> {
  if (options.config && options.changes) throw new TrainError("changes apply to a resumed run only");
  const files = runFiles(dir);
  const say = options.onMessage ?? (() => {});
  let config: TrainConfig;
  let history: ConfigChange[] = [];
  let changed: ConfigChange["changed"] = {};
  if (options.config) {
    config = validateConfig(options.config);
    await assertNoRun(dir);
  } else {
    ({ config, history } = await readRunFile(dir));
    ({ config, changed } = applyResumeChanges(config, options.changes ?? {}));
  }
  // Data first: a bad file stops a new run before anything is written.
  const trainPairs = await loadPairs(config.data, config.layout, config.tau);
  const small = trainPairs.find((p) => p.width < config.crop || p.height < config.crop);
  if (small) {
    throw new TrainError(
      `${config.data}: ${small.name} is ${small.width}x${small.height}, smaller than the ` +
        `${config.crop}x${config.crop} crop (lower --crop)`,
    );
  }
  const valPairs = config.val
    ? (await loadPairs(config.val, config.layout, config.tau, config.valCount)).map((p) =>
      centreCrop(p, config.valCrop)
    )
    : [];
  const skipL = config.variant === "Net1";
  let position: RunPosition = { stage: skipL || config.stepsL === 0 ? 2 : 1, step: 0 };
  let resumed: Awaited<ReturnType<typeof readCheckpoint>> | null = null;
  if (!options.config && await Deno.stat(files.checkpoint).then(() => true, () => false)) {
    resumed = await readCheckpoint(dir);
    position = resumed.meta.position;
  }
  // The starting weights are checked before anything is written, like the data.
  const initWeights = !resumed && config.init ? await readInitWeights(config) : undefined;
  if (changed.stepsL && position.stage === 2 && !skipL) {
    throw new TrainError(`stepsL cannot change: stage 1 of ${dir} is finished`);
  }
  const stageSteps0 = position.stage === 1 ? config.stepsL : config.stepsR;
  if (position.step > stageSteps0) {
    throw new TrainError(
      `${position.stage === 1 ? "stepsL" : "stepsR"} ${stageSteps0} is below the ${position.step} steps ` +
        `stage ${position.stage} of ${dir} has done`,
    );
  }
  if (options.config) await Deno.mkdir(dir, { recursive: true });
  const lock = await lockRun(dir);
  try {
    if (options.config) await createRun(dir, config);
    await removeStaleTemps(dir);
    if (Object.keys(changed).length) {
      history.push({ time: new Date().toISOString(), ...position, changed });
      await writeFileAtomic(files.config, JSON.stringify({ ...config, history }, null, 2) + "\n");
      say(
        `changed ${
          Object.entries(changed).map(([k, v]) => `${k} ${v.from} -> ${v.to}`).join(", ")
        } (recorded in ${files.config})`,
      );
    }
    return await trainLocked(dir, config, trainPairs, valPairs, position, resumed, options, initWeights);
  } finally {
    lock.release();
  }
}

async function trainLocked(
  dir: string,
  config: TrainConfig,
  trainPairs: LoadedPair[],
  valPairs: LoadedPair[],
  position: RunPosition,
  resumed: Awaited<ReturnType<typeof readCheckpoint>> | null,
  options: TrainOptions,
  initWeights?: Record<string, HostTensor>,
): Promise<TrainResult> {
  const files = runFiles(dir);
  const say = options.onMessage ?? (() => {});
  say(`${trainPairs.length} training pairs from ${config.data}, ${valPairs.length} validation pairs`);
  const skipL = config.variant === "Net1";
  let trainMs = 0;
  const model = new SpairModel({ preset: config.preset, variant: config.variant }, config.seed);
  if (initWeights) {
    model.loadStateDict(initWeights, config.init);
    say(`starting from the weights of ${config.init}`);
  } else if (!resumed && config.outputInit === "zero") {
    // NetR starts as the identity (its output conv adds a zero residual to the input), so restoration
    // improves on the input from the first step instead of first unlearning a random residual.
    assignData(model.netR.tail.weight, new Float32Array(model.netR.tail.weight.size));
    assignData(model.netR.tail.bias, new Float32Array(model.netR.tail.bias.size));
  }
  if (resumed) {
    model.loadStateDict(resumed.model, files.checkpoint);
    trainMs = resumed.meta.trainMs;
    await trimLog(files.log, position, position.stage === 1 && position.step === config.stepsL);
    say(`resuming stage ${position.stage} after step ${position.step}`);
  } else {
    // Killed before its first checkpoint: the run starts over, so its log does too.
    await trimLog(files.log, position, false);
  }
  await Deno.mkdir(files.previews, { recursive: true });

  let stopRequested: Deno.Signal | undefined;
  const onSignals = new Map<Deno.Signal, () => void>();
  const signals: Deno.Signal[] = Deno.build.os === "windows" ? ["SIGINT"] : ["SIGINT", "SIGTERM"];
  for (const s of signals) {
    onSignals.set(s, () => (stopRequested ??= s));
    Deno.addSignalListener(s, onSignals.get(s)!);
  }
  const started = performance.now();
  let stepsThisRun = 0;
  try {
    for (const stage of [1, 2] as const) {
      if (stage < position.stage) continue;
      const steps = stage === 1 ? config.stepsL : config.stepsR;
      if (stage === 1 && (skipL || steps === 0)) continue;
      const net = stage === 1 ? model.netL : model.netR;
      const optimizer = new Adam(net.parameters(), { lr: config.lr });
      const params = optimizer.groups.flatMap((g) => g.params);
      const density = trainPairs.reduce((a, p) => a + p.mask.reduce((x, y) => x + y, 0) / p.mask.length, 0) /
        trainPairs.length;
      const posWeight = config.posWeight || balancedPosWeight(density);
      if (stage === 1) {
        say(
          `NetL: masks cover ${(100 * density).toFixed(1)}% of pixels; BCE positive weight ${
            posWeight.toFixed(2)
          }`,
        );
      }
      let firstStep = 1;
      if (resumed && resumed.meta.position.stage === stage) {
        firstStep = resumed.meta.position.step + 1;
        if (resumed.meta.optimizer) {
          const tensors: Record<string, Tensor> = {};
          for (const [k, t] of Object.entries(resumed.optim)) tensors[k] = tensor(t.data, t.shape);
          // Optimizer state is keyed by parameter name; names are the model's full dotted names (as saved).
          const names = [...model.namedParameters().keys()].filter((n) =>
            n.startsWith(stage === 1 ? "netL." : "netR.")
          );
          const missing = names.filter((n) => !(`exp_avg.${n}` in tensors));
          if (missing.length) {
            throw new TrainError(
              `${files.checkpoint}: optimizer state lacks ${missing[0]} (${missing.length} parameters)`,
            );
          }
          optimizer.loadStateDict({ meta: resumed.meta.optimizer, tensors });
          for (const t of Object.values(tensors)) t.dispose();
        }
      }
      /** Loss and summed squared gradients ([2], one readback) of a step on `batch`; the gradients stay in
       * the parameters' `.grad` for the update. */
      const stepHealth = (batch: HostBatch, step: number, dryRun: boolean) => {
        const shape = [batch.count, 3, batch.size, batch.size];
        return tidy(() => {
          optimizer.zeroGrad();
          const x = tensor(batch.input, shape);
          let l: Tensor;
          if (stage === 1) {
            const out = model.netL.forward(x);
            const target = tensor(batch.mask, [batch.count, 1, batch.size, batch.size]);
            l = weightedBceWithLogits(out.logits, target, posWeight);
          } else {
            const guidance = skipL ? undefined : model.guidance(x);
            const y = model.netR.forward(x, guidance);
            l = restorationLoss(config, y, tensor(batch.target, shape));
            if (guidance) disposeGuidance(guidance);
          }
          backward(l);
          if (!dryRun) options.inspectGradients?.(stage, step, params);
          // [loss, sum of squared gradients]: one readback tells whether anything became NaN or Inf. The
          // gradients are joined by buffer copies first: two dispatches, not three per parameter.
          const grads = params.flatMap((p) => (p.grad ? [p.grad.view([p.grad.size])] : []));
          const squares = grads.length > 0 ? sum(square(concat(grads, 0))).view([1]) : full([1], 0);
          return concat([l.view([1]), squares], 0);
        });
      };
      let stageStart = performance.now();
      let stageSteps = 0;
      let next = firstStep <= steps ? sampleBatch(trainPairs, config, stage, firstStep) : null;
      if (next) {
        // Compile the step's GPU kernels up front (a dry run records nothing), so a first run on a cold shader
        // cache reports "compiling GPU kernels n/m" instead of stalling silently in its first step.
        const requests = engine().collectPipelines(() => stepHealth(next!, firstStep, true).dispose());
        optimizer.zeroGrad(); // the dry run's gradients hold nothing
        await engine().compilePipelines(requests);
        stageStart = performance.now(); // steps/s and the ETA count training, not compiling
      }
      for (let step = firstStep; step <= steps; step++) {
        const batch = next!;
        const lr = learningRate(config, step, trainPairs.length);
        optimizer.setLr(lr);
        const health = stepHealth(batch, step, false);
        engine().flush();
        // Prepare the next batch on the CPU while the GPU runs this step.
        next = step < steps ? sampleBatch(trainPairs, config, stage, step + 1) : null;
        const [value, gradSquares] = await health.data();
        health.dispose();
        // Checked before the update and before any checkpoint: a run stopped here keeps its last
        // checkpoint, every weight in it finite.
        if (!Number.isFinite(value) || !Number.isFinite(gradSquares)) {
          throw new TrainError(
            `${
              Number.isFinite(value)
                ? `gradient norm became ${Math.sqrt(gradSquares)}`
                : `loss became ${value}`
            }` +
              ` at stage ${stage} step ${step}; stopped before the update. The last checkpoint is kept; ` +
              `continue from it with a lower learning rate: deno task train --resume ${dir} --lr ${
                config.lr / 4
              }`,
          );
        }
        tidy(() => {
          if (config.clipGradNorm > 0) clipGradNorm(params, config.clipGradNorm).dispose();
          optimizer.step();
        });
        stepsThisRun++;
        stageSteps++;
        position = { stage, step };
        const elapsed = (performance.now() - stageStart) / 1000;
        const imagesPerSecond = (stageSteps * batch.count) / elapsed;
        const epoch = Math.floor((step - 1) / Math.ceil(trainPairs.length / config.batch)) + 1;
        options.onProgress?.({
          stage,
          step,
          steps,
          epoch,
          loss: value,
          stepsPerSecond: stageSteps / elapsed,
          imagesPerSecond,
          etaSeconds: ((steps - step) * batch.count) / imagesPerSecond,
        });
        if (step % config.logEvery === 0 || step === steps) {
          await appendLog(files.log, {
            stage,
            step,
            epoch,
            loss: value,
            lr,
            stepsPerSecond: stageSteps / elapsed,
            imagesPerSecond,
          });
        }
        const last = step === steps;
        const limitReached = options.maxStepsThisRun !== undefined && stepsThisRun >= options.maxStepsThisRun;
        if (step % config.checkpointEvery === 0 || last || stopRequested || limitReached) {
          await saveCheckpoint(dir, model, optimizer, config, {
            position,
            optimizer: null,
            trainMs: trainMs + performance.now() - started,
          });
        }
        if (valPairs.length && stage === 2 && (step % config.validateEvery === 0 || last)) {
          const v = await validate(
            model,
            config.task,
            valPairs,
            `${files.previews}/stage${stage}-step${String(step).padStart(6, "0")}.png`,
          );
          await appendLog(files.log, { stage, step, val: v });
          say(
            `validation at step ${step}: PSNR ${v.psnr.toFixed(2)} dB (input ${v.inputPsnr.toFixed(2)}), ` +
              `SSIM ${v.ssim.toFixed(4)} (input ${v.inputSsim.toFixed(4)}), mask IoU ${v.maskIoU.toFixed(3)}`,
          );
        } else if (valPairs.length && stage === 1 && step % config.validateEvery === 0 && !last) {
          // NetL's progress; the end of the stage is validated below.
          const v = await validate(model, config.task, valPairs);
          await appendLog(files.log, { stage, step, val: v });
          say(
            `NetL validation at step ${step}: mask IoU ${v.maskIoU.toFixed(3)}, accuracy ${
              v.maskAccuracy.toFixed(4)
            }`,
          );
        }
        if (stopRequested || limitReached) {
          optimizer.dispose();
          return { finished: false, position, elapsedMs: performance.now() - started, signal: stopRequested };
        }
      }
      optimizer.dispose();
      if (stage === 1 && valPairs.length) {
        const v = await validate(model, config.task, valPairs);
        await appendLog(files.log, { stage, step: steps, val: v });
        say(`NetL trained: mask IoU ${v.maskIoU.toFixed(3)}, accuracy ${v.maskAccuracy.toFixed(4)}`);
      }
      resumed = null;
    }
    const totalMs = trainMs + performance.now() - started;
    await saveModel(files.model, model, config, { trainSeconds: (totalMs / 1000).toFixed(0) });
    return { finished: true, position, elapsedMs: performance.now() - started };
  } finally {
    for (const s of signals) Deno.removeSignalListener(s, onSignals.get(s)!);
    for (const p of model.parameters()) p.dispose();
  }
}
