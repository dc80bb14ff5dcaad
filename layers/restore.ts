/**
 * Whole-image restoration with a trained SPAIR model: weights with their architecture in the file's
 * metadata, and tiled inference with overlap and feathered blending for images larger than one tile.
 * Web-standard APIs only, so the browser demo uses the same code.
 *
 * @module
 */

import { noGrad } from "../engine/autograd.ts";
import { decodeSafetensors } from "../engine/safetensors.ts";
import { tensor, tidy } from "../engine/tensor.ts";
import { type Preset, PRESETS, type SpairConfig, SpairModel, type Variant } from "./spair.ts";

/** The four degradations SPAIR restores. */
export type Task = "rain" | "raindrop" | "shadow" | "blur";

/** The tasks, in a fixed order. */
export const TASKS: readonly Task[] = ["rain", "raindrop", "shadow", "blur"];

const VARIANTS: readonly Variant[] = ["Net1", "Net2", "Net3", "Net4", "SPAIR"];

/** What a weights file says about itself (safetensors `__metadata__`). */
export interface ModelInfo {
  /** Model size. */
  preset: Preset;
  /** Ablation variant. */
  variant: Variant;
  /** The task the weights were trained for, when known. */
  task?: Task;
  /** All metadata strings of the file. */
  metadata: Record<string, string>;
}

/**
 * Builds a model from safetensors weights whose metadata names `preset` and `variant` (as written by
 * `deno task train`). `source` names the bytes in error messages; `expected` rejects files of another
 * preset or variant with one clear message.
 *
 * ```ts
 * import { initEngine, loadModel } from "@spair/spair-gpu";
 * await initEngine();
 * const bytes = await Deno.readFile("rain.safetensors"); // or new Uint8Array(await (await fetch(url)).arrayBuffer())
 * const { model, info } = loadModel(bytes, "rain.safetensors", { variant: "SPAIR" });
 * console.log(info.preset, info.variant, info.task);
 * ```
 */
export function loadModel(
  bytes: Uint8Array,
  source = "weights",
  expected: Partial<SpairConfig> = {},
): { model: SpairModel; info: ModelInfo } {
  let decoded;
  try {
    decoded = decodeSafetensors(bytes);
  } catch (e) {
    throw new Error(`${source}: not a safetensors weights file (${(e as Error).message})`);
  }
  const metadata = decoded.metadata;
  const preset = metadata.preset as Preset;
  const variant = metadata.variant as Variant;
  if (!(preset in PRESETS) || !VARIANTS.includes(variant)) {
    throw new Error(
      `${source}: metadata does not name a SPAIR preset and variant (was it written by spair-gpu?)`,
    );
  }
  for (const key of ["preset", "variant"] as const) {
    if (expected[key] && expected[key] !== metadata[key]) {
      throw new Error(`${source}: weights are for ${key} ${metadata[key]}, expected ${expected[key]}`);
    }
  }
  const model = new SpairModel({ preset, variant });
  try {
    model.loadStateDict(decoded.tensors, source);
  } catch (e) {
    for (const p of model.parameters()) p.dispose();
    throw e;
  }
  const task = TASKS.includes(metadata.task as Task) ? metadata.task as Task : undefined;
  return { model, info: { preset, variant, task, metadata } };
}

/** Options of {@link restorePlanar}. */
export interface RestoreOptions {
  /** Largest tile side in pixels (rounded down to a multiple of 4); images within it run in one piece.
   * Default 512. */
  tile?: number;
  /** Overlap between neighbouring tiles in pixels (default 96): each tile's outer {@link RECEPTIVE_RADIUS}
   * px of it are dropped and the rest is blended with a linear ramp. */
  overlap?: number;
  /** Called after each tile. */
  onTile?: (done: number, total: number) => void;
}

/** Result of {@link restorePlanar}. */
export interface Restored {
  /** Planar RGB [3, H, W], clamped to [0, 1]. */
  restored: Float32Array;
  /** [H, W] predicted mask, 1 where NetL found a degradation. */
  mask: Float32Array;
}

/** Pixels a tiny/small/base U-Net output depends on in each direction (measured: a one-pixel change moves
 * outputs up to 40 px away). Tile borders inside the image are kept this far from the pixels a tile
 * contributes, so a convolutional model gives the whole-image result there. */
export const RECEPTIVE_RADIUS = 40;

/** Tiles along one axis as [start, end) spans: starts on multiples of 4 (the U-Net's downsampling grid
 * stays that of the whole image), at most `tile` long except the last (up to `tile` + 3, ending at
 * `size`), neighbours sharing at least `overlap` pixels. */
export function tileSpans(size: number, tile: number, overlap: number): [number, number][] {
  if (size <= tile) return [[0, size]];
  const last = Math.floor((size - tile) / 4) * 4;
  const count = Math.ceil(last / Math.max(4, tile - overlap - 4)) + 1;
  const starts = Array.from({ length: count }, (_, i) => Math.floor((i * last) / (count - 1) / 4) * 4);
  return starts.map((s, i) => [s, i === count - 1 ? size : s + tile]);
}

/** Weight of absolute position `p` in the tile [start, end) of an axis of `size`: 0 within `margin` of a
 * tile edge inside the image, then a linear ramp over `ramp` pixels, 1 elsewhere. */
function blendWeight(
  p: number,
  start: number,
  end: number,
  size: number,
  margin: number,
  ramp: number,
): number {
  const fromStart = start > 0 ? p - start : Infinity;
  const fromEnd = end < size ? end - 1 - p : Infinity;
  const d = Math.min(fromStart, fromEnd) - margin;
  return d < 0 ? 0 : Math.min(1, (d + 1) / (ramp + 1));
}

/**
 * Restores a planar RGB image [3, H, W] in [0, 1] with a model, tile by tile when it exceeds `tile`.
 * Each tile is padded by edge replication to a multiple of 4 (NetR halves the size twice). Dense models
 * (Net1) give the whole-image result to float rounding when `overlap` >= 2 x {@link RECEPTIVE_RADIUS} + 1;
 * SPAIR's SFM statistics and SNL rows/columns are per tile, so its tiled output differs in degraded regions.
 *
 * ```ts
 * import { initEngine, loadModel, restorePlanar } from "@spair/spair-gpu";
 * await initEngine();
 * const { model } = loadModel(await Deno.readFile("rain.safetensors"), "rain.safetensors");
 * const [width, height] = [320, 240];
 * const planar = new Float32Array(3 * width * height).fill(0.5); // R plane, then G, then B
 * const { restored, mask } = await restorePlanar(model, planar, width, height, {
 *   onTile: (done, total) => console.log(`tile ${done}/${total}`),
 * });
 * console.log(restored.length === planar.length, mask.length === width * height);
 * ```
 */
export async function restorePlanar(
  model: SpairModel,
  planar: Float32Array,
  width: number,
  height: number,
  options: RestoreOptions = {},
): Promise<Restored> {
  if (planar.length !== 3 * width * height) {
    throw new Error(`restore: expected ${3 * width * height} values for a ${width}x${height} RGB image`);
  }
  const tile = Math.max(16, Math.floor((options.tile ?? 512) / 4) * 4);
  const overlap = Math.min(options.overlap ?? 96, Math.floor(tile / 2));
  // Contributions start RECEPTIVE_RADIUS px inside a tile (when the overlap allows) and ramp in after.
  const margin = Math.min(RECEPTIVE_RADIUS, Math.floor(overlap / 3));
  const rampWidth = overlap - 2 * margin;
  const plane = width * height;
  const ySpans = tileSpans(height, tile, overlap);
  const xSpans = tileSpans(width, tile, overlap);
  const accum = new Float32Array(3 * plane);
  const maskAccum = new Float32Array(plane);
  const weights = new Float32Array(plane);
  const total = ySpans.length * xSpans.length;
  let done = 0;
  for (const [y0, y1] of ySpans) {
    for (const [x0, x1] of xSpans) {
      const th = y1 - y0;
      const tw = x1 - x0;
      const ph = Math.ceil(th / 4) * 4;
      const pw = Math.ceil(tw / 4) * 4;
      const input = new Float32Array(3 * ph * pw);
      for (let c = 0; c < 3; c++) {
        for (let y = 0; y < ph; y++) {
          const sy = y0 + Math.min(y, th - 1);
          for (let x = 0; x < pw; x++) {
            input[(c * ph + y) * pw + x] = planar[c * plane + sy * width + x0 + Math.min(x, tw - 1)];
          }
        }
      }
      const { restored, mask } = noGrad(() =>
        tidy(() => {
          const out = model.forward(tensor(input, [1, 3, ph, pw]));
          out.logits.dispose();
          return { restored: out.restored, mask: out.mask };
        })
      );
      const [rData, mData] = await Promise.all([restored.data(), mask.data()]);
      restored.dispose();
      mask.dispose();
      for (let y = 0; y < th; y++) {
        const wy = blendWeight(y0 + y, y0, y1, height, margin, rampWidth);
        if (wy === 0) continue;
        for (let x = 0; x < tw; x++) {
          const w = wy * blendWeight(x0 + x, x0, x1, width, margin, rampWidth);
          if (w === 0) continue;
          const o = (y0 + y) * width + x0 + x;
          weights[o] += w;
          maskAccum[o] += w * mData[y * pw + x];
          for (let c = 0; c < 3; c++) accum[c * plane + o] += w * rData[(c * ph + y) * pw + x];
        }
      }
      options.onTile?.(++done, total);
    }
  }
  for (let i = 0; i < plane; i++) {
    const w = weights[i];
    maskAccum[i] = maskAccum[i] / w >= 0.5 ? 1 : 0;
    for (let c = 0; c < 3; c++) {
      const v = accum[c * plane + i] / w;
      accum[c * plane + i] = v < 0 ? 0 : v > 1 ? 1 : v;
    }
  }
  return { restored: accum, mask: maskAccum };
}
