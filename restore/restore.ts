/**
 * Whole-image restoration with a trained SPAIR model: weights with their architecture in the file's
 * metadata, and tiled inference with overlap and feathered blending for images larger than one tile.
 * Web-standard APIs only, so the browser demo uses the same code.
 *
 * @module
 */

import { noGrad } from "../engine/autograd.ts";
import { engine } from "../engine/device.ts";
import { decodeSafetensors } from "../engine/safetensors.ts";
import { keep, type Tensor, tensor, tidy } from "../engine/tensor.ts";
import { compactMask } from "./sparse/active.ts";
import { SC_LAYERS } from "./sparse/sparse_conv.ts";
import { SFM_EPS, sfmWithStatistics } from "./sparse/sfm.ts";
import {
  type GlobalLayerHooks,
  type Preset,
  PRESETS,
  type SpairConfig,
  SpairModel,
  type Variant,
} from "./spair.ts";

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
   * Default 512; lowered to {@link maxTileForBinding} where the adapter's storage bindings are small. */
  tile?: number;
  /** Overlap between neighbouring tiles in pixels (default 96): each tile's outer {@link RECEPTIVE_RADIUS}
   * px of it are dropped and the rest is blended with a linear ramp. */
  overlap?: number;
  /**
   * How a tiled run computes SPAIR's image-wide layers (SFM statistics, SNL rows and columns):
   * `"exact"` measures them over the whole image in extra passes over the tiles (one per image-wide
   * layer, at most four), so the result equals the untiled one to float rounding; `"per-tile"` computes
   * them inside each tile (one pass, small differences in degraded regions); `"auto"` (default) is exact
   * for models without a non-local module (Net2, Net3: SFM needs only sums) and otherwise while the whole
   * image's non-local feature map fits in {@link EXACT_GLOBAL_BYTES}.
   */
  globalLayers?: "auto" | "exact" | "per-tile";
  /** Called after each tile of each pass (`total` counts all passes). */
  onTile?: (done: number, total: number) => void;
}

/** Result of {@link restorePlanar}. */
export interface Restored {
  /** Planar RGB [3, H, W], clamped to [0, 1]. */
  restored: Float32Array;
  /** [H, W] predicted mask, 1 where NetL found a degradation. */
  mask: Float32Array;
  /** Whether the image-wide layers saw the whole image (always true untiled and for Net1). */
  exactGlobalLayers: boolean;
}

/** Largest whole-image feature map (bytes, full resolution, float32) that `globalLayers: "auto"` computes
 * SPAIR's non-local modules on: 256 MiB, e.g. 4 megapixels for the tiny preset (16 channels). The map
 * lives in host memory and, during its module, on the device with a few times its size. */
export const EXACT_GLOBAL_BYTES = 256 * 1024 * 1024;

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
 * Largest tile side (a multiple of 4) whose widest full-resolution activation fits one storage binding of
 * `bindingBytes`: the decoder's SC block holds C + 6g channels per pixel (a dense block C + 4g). Larger
 * tiles would fail on adapters with small binding limits (llvmpipe: 128 MiB, so 360 px for `base`).
 */
export function maxTileForBinding(config: SpairConfig, bindingBytes: number): number {
  const { width, growth } = PRESETS[config.preset];
  const sparse = config.variant !== "Net1" && config.variant !== "Net2";
  const channels = width + (sparse ? SC_LAYERS : 4) * growth;
  return Math.floor(Math.sqrt(bindingBytes / (4 * channels)) / 4) * 4;
}

/** Thrown by a hook to end a forward pass once it holds the input of the layer it measures. */
class StopForward extends Error {}

/** One tile: its span in the image, its padded size, and the part of the padded image it owns (`core`;
 * the cores partition the padded image, each at least {@link RECEPTIVE_RADIUS} px from inner tile edges
 * when the overlap allows). */
interface TileRegion {
  y0: number;
  y1: number;
  x0: number;
  x1: number;
  ph: number;
  pw: number;
  core: [number, number, number, number];
}

/** Cores along one axis: boundaries halfway through each overlap, on the 4-pixel grid. */
function coreBounds(spans: [number, number][], padded: number): number[] {
  const bounds = [0];
  for (let i = 1; i < spans.length; i++) bounds.push(Math.floor((spans[i][0] + spans[i - 1][1]) / 8) * 4);
  bounds.push(padded);
  return bounds;
}

/** Image-wide layers of a model in forward order. */
function globalLayers(model: SpairModel): { kind: "sfm" | "nonLocal"; level: 0 | 1 }[] {
  const f = model.netR.features;
  const layers: { kind: "sfm" | "nonLocal"; level: 0 | 1 }[] = [];
  if (f.sfm) layers.push({ kind: "sfm", level: 0 }, { kind: "sfm", level: 1 });
  if (f.nonLocal !== "none") layers.push({ kind: "nonLocal", level: 1 }, { kind: "nonLocal", level: 0 });
  return layers;
}

/** Running sums of one SFM layer's statistics over the tiles (float64). */
class SfmAccumulator {
  readonly sums: Float64Array;
  readonly counts = new Float64Array(2);
  constructor(readonly channels: number) {
    // Per channel: degraded sum, degraded sum of squares, clean sum, clean sum of squares.
    this.sums = new Float64Array(4 * channels);
  }

  /** Adds the sites of rows [r0, r1) and columns [c0, c1) of a [1, C, h, w] map and its [h, w] mask. */
  add(f: Float32Array, mask: Float32Array, h: number, w: number, rows: number[], cols: number[]): void {
    const [r0, r1] = rows;
    const [c0, c1] = cols;
    for (let y = r0; y < r1; y++) {
      for (let x = c0; x < c1; x++) this.counts[mask[y * w + x] > 0.5 ? 0 : 1]++;
    }
    for (let c = 0; c < this.channels; c++) {
      let [ds, dq, cs, cq] = [0, 0, 0, 0];
      for (let y = r0; y < r1; y++) {
        for (let x = c0; x < c1; x++) {
          const v = f[(c * h + y) * w + x];
          if (mask[y * w + x] > 0.5) [ds, dq] = [ds + v, dq + v * v];
          else [cs, cq] = [cs + v, cq + v * v];
        }
      }
      this.sums[4 * c] += ds;
      this.sums[4 * c + 1] += dq;
      this.sums[4 * c + 2] += cs;
      this.sums[4 * c + 3] += cq;
    }
  }

  /** Host statistics in the layout of {@link SfmStatistics}: per region mean and std, and validity. */
  finish(): {
    degradedMean: Float32Array;
    degradedStd: Float32Array;
    cleanMean: Float32Array;
    cleanStd: Float32Array;
    valid: number;
  } {
    const C = this.channels;
    const out = {
      degradedMean: new Float32Array(C),
      degradedStd: new Float32Array(C),
      cleanMean: new Float32Array(C),
      cleanStd: new Float32Array(C),
      valid: this.counts[0] > 0.5 && this.counts[1] > 0.5 ? 1 : 0,
    };
    const [nd, nc] = [Math.max(this.counts[0], 1), Math.max(this.counts[1], 1)];
    for (let c = 0; c < C; c++) {
      const dm = this.sums[4 * c] / nd;
      const cm = this.sums[4 * c + 2] / nc;
      out.degradedMean[c] = dm;
      out.cleanMean[c] = cm;
      out.degradedStd[c] = Math.sqrt(Math.max(this.sums[4 * c + 1] / nd - dm * dm, 0) + SFM_EPS);
      out.cleanStd[c] = Math.sqrt(Math.max(this.sums[4 * c + 3] / nc - cm * cm, 0) + SFM_EPS);
    }
    return out;
  }
}

/** A whole-image [C, H, W] host map at one level, filled from tile cores. */
interface HostMap {
  data: Float32Array;
  channels: number;
  height: number;
  width: number;
}

/** Copies rows [rows) and columns [cols) of a [C, h, w] tile map into `map` with the tile at (oy, ox). */
function copyWindow(
  map: HostMap,
  oy: number,
  ox: number,
  h: number,
  w: number,
  rows: [number, number],
  cols: [number, number],
  tile: Float32Array,
): void {
  for (let c = 0; c < map.channels; c++) {
    for (let y = rows[0]; y < rows[1]; y++) {
      const src = (c * h + y) * w;
      const dst = (c * map.height + oy + y) * map.width + ox;
      map.data.set(tile.subarray(src + cols[0], src + cols[1]), dst + cols[0]);
    }
  }
}

/** The [C, h, w] window of `map` at (oy, ox), as a new array. */
function readWindow(map: HostMap, oy: number, ox: number, h: number, w: number): Float32Array {
  const out = new Float32Array(map.channels * h * w);
  for (let c = 0; c < map.channels; c++) {
    for (let y = 0; y < h; y++) {
      const src = (c * map.height + oy + y) * map.width + ox;
      out.set(map.data.subarray(src, src + w), (c * h + y) * w);
    }
  }
  return out;
}

/**
 * Restores a planar RGB image [3, H, W] in [0, 1] with a model, tile by tile when it exceeds `tile`.
 * Each tile is padded by edge replication to a multiple of 4 (NetR halves the size twice). Convolutions
 * see the whole-image context because tiles overlap by more than the receptive radius; SPAIR's image-wide
 * layers (SFM statistics, SNL rows and columns) are computed over the whole image in extra passes (see
 * {@link RestoreOptions.globalLayers}), so the tiled result equals the untiled one to float rounding.
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
  const tile = Math.max(
    16,
    Math.min(
      Math.floor((options.tile ?? 512) / 4) * 4,
      maxTileForBinding(model.config, engine().maxBindingBytes),
    ),
  );
  const overlap = Math.min(options.overlap ?? 96, Math.floor(tile / 2));
  // Contributions start RECEPTIVE_RADIUS px inside a tile (when the overlap allows) and ramp in after.
  const margin = Math.min(RECEPTIVE_RADIUS, Math.floor(overlap / 3));
  const rampWidth = overlap - 2 * margin;
  const plane = width * height;
  const [PH, PW] = [Math.ceil(height / 4) * 4, Math.ceil(width / 4) * 4];
  const ySpans = tileSpans(height, tile, overlap);
  const xSpans = tileSpans(width, tile, overlap);
  const [yCores, xCores] = [coreBounds(ySpans, PH), coreBounds(xSpans, PW)];
  const tiles: TileRegion[] = [];
  ySpans.forEach(([y0, y1], i) =>
    xSpans.forEach(([x0, x1], j) =>
      tiles.push({
        y0,
        y1,
        x0,
        x1,
        ph: Math.ceil((y1 - y0) / 4) * 4,
        pw: Math.ceil((x1 - x0) / 4) * 4,
        core: [yCores[i], yCores[i + 1], xCores[j], xCores[j + 1]],
      })
    )
  );
  const width0 = PRESETS[model.config.preset].width;
  const mode = options.globalLayers ?? "auto";
  // Exact when nothing is tiled, when the model has no image-wide layer (Net1), or by the mode's rule.
  // Auto: SFM alone needs only per-channel sums (no memory), so only a non-local map is bounded.
  const exact = tiles.length === 1 || globalLayers(model).length === 0 || mode === "exact" ||
    (mode === "auto" &&
      (model.netR.features.nonLocal === "none" || width0 * PH * PW * 4 <= EXACT_GLOBAL_BYTES));
  const passes = tiles.length > 1 && exact ? globalLayers(model) : [];
  const total = tiles.length * (passes.length + 1);
  let done = 0;

  const sfmStats = new Map<number, ReturnType<SfmAccumulator["finish"]>>();
  const nonLocalOut = new Map<number, HostMap>();
  /** Hooks of a pass over `region`: earlier image-wide layers use the whole-image results; the pass's own
   * layer hands its input to `capture` and stops the forward pass. */
  const hooksFor = (
    region: TileRegion,
    target: { kind: "sfm" | "nonLocal"; level: 0 | 1 } | undefined,
    capture: (features: Tensor, mask: Tensor) => void,
  ): GlobalLayerHooks | undefined => {
    if (passes.length === 0) return undefined;
    const stop = (kind: "sfm" | "nonLocal", level: 0 | 1, features: Tensor, mask: Tensor) => {
      if (target?.kind !== kind || target.level !== level) return false;
      capture(keep(features), keep(mask));
      throw new StopForward();
    };
    return {
      sfm(level, features, mask) {
        stop("sfm", level, features, mask);
        const s = sfmStats.get(level)!;
        const C = s.degradedMean.length;
        const stat = (v: Float32Array) => tensor(v, [1, C, 1, 1]);
        return sfmWithStatistics(features, mask, {
          degradedMean: stat(s.degradedMean),
          degradedStd: stat(s.degradedStd),
          cleanMean: stat(s.cleanMean),
          cleanStd: stat(s.cleanStd),
          valid: tensor([s.valid], [1, 1, 1, 1]),
        });
      },
      nonLocal(level, features, mask) {
        stop("nonLocal", level, features, mask);
        const map = nonLocalOut.get(level)!;
        const [h, w] = [region.ph >> level, region.pw >> level];
        const window = readWindow(map, region.y0 >> level, region.x0 >> level, h, w);
        return tensor(window, [1, map.channels, h, w]);
      },
    };
  };

  const tileInput = (r: TileRegion) => {
    const [th, tw] = [r.y1 - r.y0, r.x1 - r.x0];
    const input = new Float32Array(3 * r.ph * r.pw);
    for (let c = 0; c < 3; c++) {
      for (let y = 0; y < r.ph; y++) {
        const sy = r.y0 + Math.min(y, th - 1);
        for (let x = 0; x < r.pw; x++) {
          input[(c * r.ph + y) * r.pw + x] = planar[c * plane + sy * width + r.x0 + Math.min(x, tw - 1)];
        }
      }
    }
    return input;
  };

  // NetL's outputs per tile, kept on the host after the first pass: later passes skip NetL.
  const netLOutputs = new Map<TileRegion, { logits: Float32Array; f0: Float32Array; f1: Float32Array }>();
  /** Runs the model on a tile up to the end or to a hook's StopForward; returns the restored tile and
   * its mask in the first case. */
  const runTile = async (r: TileRegion, hooks: GlobalLayerHooks | undefined) => {
    const saved = netLOutputs.get(r);
    let fresh: Tensor[] | undefined;
    let result: { restored: Tensor; mask: Tensor } | undefined;
    try {
      result = noGrad(() =>
        tidy(() => {
          const x = tensor(tileInput(r), [1, 3, r.ph, r.pw]);
          let g;
          if (saved) {
            const f0 = tensor(saved.f0, [1, saved.f0.length / (r.ph * r.pw), r.ph, r.pw]);
            const hw = (r.ph >> 1) * (r.pw >> 1);
            const f1 = tensor(saved.f1, [1, saved.f1.length / hw, r.ph >> 1, r.pw >> 1]);
            g = model.guidanceFrom(tensor(saved.logits, [1, 1, r.ph, r.pw]), [f0, f1]);
          } else {
            g = model.guidance(x);
            if (passes.length > 0) fresh = keep([g.logits, ...g.features]);
          }
          return { restored: model.netR.forward(x, g, hooks), mask: g.masks[0] };
        })
      );
    } catch (e) {
      if (!(e instanceof StopForward)) throw e;
    } finally {
      if (fresh) {
        const [logits, f0, f1] = await Promise.all(fresh.map((t) => t.data()));
        netLOutputs.set(r, { logits, f0, f1 });
        for (const t of fresh) t.dispose();
      }
    }
    return result;
  };

  // Measuring passes: one per image-wide layer, each ending at that layer.
  for (const target of passes) {
    const level = target.level;
    const [LH, LW] = [PH >> level, PW >> level];
    let accumulator: SfmAccumulator | undefined;
    let features: HostMap | undefined;
    let maskMap: HostMap | undefined;
    for (const r of tiles) {
      let captured: [Tensor, Tensor] | undefined;
      await runTile(r, hooksFor(r, target, (f, m) => (captured = [f, m])));
      if (!captured) throw new Error(`restore: the ${target.kind} layer at level ${level} was not reached`);
      const [f, m] = captured;
      const [fData, mData] = await Promise.all([f.data(), m.data()]);
      const C = f.shape[1];
      const [h, w] = [r.ph >> level, r.pw >> level];
      const rows: [number, number] = [(r.core[0] - r.y0) >> level, (r.core[1] - r.y0) >> level];
      const cols: [number, number] = [(r.core[2] - r.x0) >> level, (r.core[3] - r.x0) >> level];
      if (target.kind === "sfm") {
        accumulator ??= new SfmAccumulator(C);
        accumulator.add(fData, mData, h, w, rows, cols);
      } else {
        features ??= { data: new Float32Array(C * LH * LW), channels: C, height: LH, width: LW };
        maskMap ??= { data: new Float32Array(LH * LW), channels: 1, height: LH, width: LW };
        copyWindow(features, r.y0 >> level, r.x0 >> level, h, w, rows, cols, fData);
        copyWindow(maskMap, r.y0 >> level, r.x0 >> level, h, w, rows, cols, mData);
      }
      f.dispose();
      m.dispose();
      options.onTile?.(++done, total);
    }
    if (target.kind === "sfm") {
      sfmStats.set(level, accumulator!.finish());
    } else {
      const module = level === 0 ? model.netR.nonLocal0! : model.netR.nonLocal1!;
      const out = noGrad(() =>
        tidy(() => {
          const mask = tensor(maskMap!.data, [1, 1, LH, LW]);
          const sites = module.mode === "sparse" ? compactMask(mask) : null;
          const result = module.forward(tensor(features!.data, [1, features!.channels, LH, LW]), sites);
          sites?.dispose();
          return result;
        })
      );
      const data = await out.data();
      out.dispose();
      nonLocalOut.set(level, { data, channels: features!.channels, height: LH, width: LW });
    }
  }

  // Final pass: every tile end to end, blended.
  const accum = new Float32Array(3 * plane);
  const maskAccum = new Float32Array(plane);
  const weights = new Float32Array(plane);
  for (const r of tiles) {
    const { y0, y1, x0, x1, ph, pw } = r;
    const [th, tw] = [y1 - y0, x1 - x0];
    const { restored, mask } = (await runTile(r, hooksFor(r, undefined, () => {})))!;
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
  for (let i = 0; i < plane; i++) {
    const w = weights[i];
    maskAccum[i] = maskAccum[i] / w >= 0.5 ? 1 : 0;
    for (let c = 0; c < 3; c++) {
      const v = accum[c * plane + i] / w;
      accum[c * plane + i] = v < 0 ? 0 : v > 1 ? 1 : v;
    }
  }
  return { restored: accum, mask: maskAccum, exactGlobalLayers: exact };
}
