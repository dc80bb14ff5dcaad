/**
 * Tile geometry of whole-image restoration: tiles on the U-Net's 4-pixel grid that overlap by more than the
 * receptive radius, the core each tile owns, edge-replicated tile inputs, host-side whole-image maps, and
 * the feathered blend of the tiles' outputs.
 *
 * @module
 */

import { SC_LAYERS } from "../layers/sparse/sparse_conv.ts";
import { PRESETS, VARIANTS } from "../layers/vocabulary.ts";
import type { SpairConfig } from "../layers/spair.ts";

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

/**
 * Largest tile side (a multiple of 4) whose widest full-resolution activation fits one storage binding of
 * `bindingBytes`: the decoder's SC block holds C + 6g channels per pixel (a dense block C + 4g). Larger
 * tiles would fail on adapters with small binding limits (llvmpipe: 128 MiB, so 360 px for `base`).
 */
export function maxTileForBinding(config: SpairConfig, bindingBytes: number): number {
  const { width, growth } = PRESETS[config.preset];
  const channels = width + (VARIANTS[config.variant].sc ? SC_LAYERS : 4) * growth;
  return Math.floor(Math.sqrt(bindingBytes / (4 * channels)) / 4) * 4;
}

/** One tile: its span in the image, its padded size, and the part of the padded image it owns (`core`:
 * rows [core[0], core[1]), columns [core[2], core[3]); the cores partition the padded image, each at least
 * {@link RECEPTIVE_RADIUS} px from inner tile edges when the overlap allows). */
export interface TileRegion {
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

/** The tiles of an image and how their outputs blend. */
export interface TileLayout {
  width: number;
  height: number;
  /** Height and width padded to multiples of 4. */
  paddedHeight: number;
  paddedWidth: number;
  tiles: TileRegion[];
  /** Pixels at inner tile edges that contribute nothing. */
  margin: number;
  /** Width of the linear blend ramp after the margin. */
  ramp: number;
}

/** Lays out tiles of at most `tile` px (a multiple of 4, at least 16) overlapping by `overlap` px. */
export function tileLayout(width: number, height: number, tile: number, overlap: number): TileLayout {
  // Contributions start RECEPTIVE_RADIUS px inside a tile (when the overlap allows) and ramp in after.
  const margin = Math.min(RECEPTIVE_RADIUS, Math.floor(overlap / 3));
  const [paddedHeight, paddedWidth] = [Math.ceil(height / 4) * 4, Math.ceil(width / 4) * 4];
  const ySpans = tileSpans(height, tile, overlap);
  const xSpans = tileSpans(width, tile, overlap);
  const [yCores, xCores] = [coreBounds(ySpans, paddedHeight), coreBounds(xSpans, paddedWidth)];
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
  return { width, height, paddedHeight, paddedWidth, tiles, margin, ramp: overlap - 2 * margin };
}

/** A tile's input [3, ph, pw] cut from planar RGB `planar` [3, H, W], padded by edge replication. */
export function tileInput(planar: Float32Array, width: number, height: number, r: TileRegion): Float32Array {
  const plane = width * height;
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
}

/** The tile's core at `level` (0 full, 1 half resolution) in tile coordinates: [rows, columns). */
export function coreWindow(r: TileRegion, level: number): { rows: [number, number]; cols: [number, number] } {
  return {
    rows: [(r.core[0] - r.y0) >> level, (r.core[1] - r.y0) >> level],
    cols: [(r.core[2] - r.x0) >> level, (r.core[3] - r.x0) >> level],
  };
}

/** A whole-image [C, H, W] host map at one level, filled from tile cores. */
export interface HostMap {
  data: Float32Array;
  channels: number;
  height: number;
  width: number;
}

/** Copies rows [rows) and columns [cols) of a [C, h, w] tile map into `map` with the tile at (oy, ox). */
export function copyWindow(
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
export function readWindow(map: HostMap, oy: number, ox: number, h: number, w: number): Float32Array {
  const out = new Float32Array(map.channels * h * w);
  for (let c = 0; c < map.channels; c++) {
    for (let y = 0; y < h; y++) {
      const src = (c * map.height + oy + y) * map.width + ox;
      out.set(map.data.subarray(src, src + w), (c * h + y) * w);
    }
  }
  return out;
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

/** Accumulates tiles' restored images and masks with feathered weights into the whole image. */
export class Blender {
  readonly #accum: Float32Array;
  readonly #mask: Float32Array | null;
  readonly #weights: Float32Array;

  /** Starts an empty image of `layout`'s size, with a mask unless `withMask` is false. */
  constructor(readonly layout: TileLayout, withMask = true) {
    const plane = layout.width * layout.height;
    this.#accum = new Float32Array(3 * plane);
    this.#mask = withMask ? new Float32Array(plane) : null;
    this.#weights = new Float32Array(plane);
  }

  /** Adds tile `r`'s restored [3, ph, pw] and mask [ph, pw] (required when the blender has a mask). */
  add(r: TileRegion, restored: Float32Array, mask?: Float32Array): void {
    if (this.#mask && !mask) throw new Error("Blender.add: this blender blends masks; the tile has none");
    const { width, height, margin, ramp } = this.layout;
    const plane = width * height;
    const { y0, y1, x0, x1, ph, pw } = r;
    const [th, tw] = [y1 - y0, x1 - x0];
    for (let y = 0; y < th; y++) {
      const wy = blendWeight(y0 + y, y0, y1, height, margin, ramp);
      if (wy === 0) continue;
      for (let x = 0; x < tw; x++) {
        const w = wy * blendWeight(x0 + x, x0, x1, width, margin, ramp);
        if (w === 0) continue;
        const o = (y0 + y) * width + x0 + x;
        this.#weights[o] += w;
        if (this.#mask) this.#mask[o] += w * mask![y * pw + x];
        for (let c = 0; c < 3; c++) this.#accum[c * plane + o] += w * restored[(c * ph + y) * pw + x];
      }
    }
  }

  /** The blended image, clamped to [0, 1], and the mask (1 where the blended mask is at least 0.5; null
   * without one). */
  finish(): { restored: Float32Array; mask: Float32Array | null } {
    const plane = this.layout.width * this.layout.height;
    const [accum, mask, weights] = [this.#accum, this.#mask, this.#weights];
    for (let i = 0; i < plane; i++) {
      const w = weights[i];
      if (mask) mask[i] = mask[i] / w >= 0.5 ? 1 : 0;
      for (let c = 0; c < 3; c++) {
        const v = accum[c * plane + i] / w;
        accum[c * plane + i] = v < 0 ? 0 : v > 1 ? 1 : v;
      }
    }
    return { restored: accum, mask };
  }
}
