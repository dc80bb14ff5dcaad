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
  /** Overlap between neighbouring tiles in pixels, blended with linear ramps. Default 32. */
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

/** Tile starts along one axis: tiles of `tile` covering `size` with at least `overlap` shared. */
export function tileStarts(size: number, tile: number, overlap: number): number[] {
  if (size <= tile) return [0];
  const count = Math.ceil((size - overlap) / (tile - overlap));
  const stride = (size - tile) / (count - 1);
  return Array.from({ length: count }, (_, i) => Math.round(i * stride));
}

/** Weight of position `i` in a tile of `length` starting at `start` of an axis of `size`: ramps over the
 * parts shared with a neighbour, 1 elsewhere (so weights sum to 1 after normalization). */
function ramp(i: number, start: number, length: number, size: number, overlap: number): number {
  let w = 1;
  if (start > 0 && i < overlap) w = Math.min(w, (i + 0.5) / overlap);
  if (start + length < size && i >= length - overlap) w = Math.min(w, (length - i - 0.5) / overlap);
  return w;
}

/**
 * Restores a planar RGB image [3, H, W] in [0, 1] with a model, tile by tile when it exceeds `tile`.
 * Each tile is padded by edge replication to a multiple of 4 (NetR halves the size twice).
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
  const overlap = Math.min(options.overlap ?? 32, Math.floor(tile / 2));
  const plane = width * height;
  const ys = tileStarts(height, tile, overlap);
  const xs = tileStarts(width, tile, overlap);
  const accum = new Float32Array(3 * plane);
  const maskAccum = new Float32Array(plane);
  const weights = new Float32Array(plane);
  const total = ys.length * xs.length;
  let done = 0;
  for (const y0 of ys) {
    for (const x0 of xs) {
      const th = Math.min(tile, height - y0);
      const tw = Math.min(tile, width - x0);
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
        const wy = ramp(y, y0, th, height, overlap);
        for (let x = 0; x < tw; x++) {
          const w = wy * ramp(x, x0, tw, width, overlap);
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
