/**
 * SPAIR's image-wide layers over a tiled image: SFM's statistics and the non-local modules' rows and
 * columns are measured over the whole image in one pass over the tiles per layer, then every tile uses the
 * whole-image results through {@link GlobalLayerHooks}, so a tiled restoration equals the untiled one to
 * float rounding.
 *
 * - SFM: each tile's core contributes the partial moments of `sfmMoments` (layers/sparse/sfm.ts, the same
 *   statistics SFM computes); they merge exactly on the host, in float64.
 * - Non-local: the tiles' cores fill a whole-image feature map and mask on the host; the module runs once
 *   on the whole map and each tile reads its window of the result.
 *
 * @module
 */

import { noGrad } from "../engine/autograd.ts";
import { concat, slice } from "../engine/ops/shape.ts";
import { type Tensor, tensor, tidy } from "../engine/tensor.ts";
import { compactMask } from "../layers/sparse/active.ts";
import { SFM_EPS, sfmMoments, sfmWithStatistics } from "../layers/sparse/sfm.ts";
import type { GlobalLayer, GlobalLayerHooks, SpairModel } from "../layers/spair.ts";
import { copyWindow, coreWindow, type HostMap, readWindow, type TileRegion } from "./tiles.ts";

/** Largest whole-image feature map (bytes, full resolution, float32) that `globalLayers: "auto"` computes
 * SPAIR's non-local modules on: 256 MiB, e.g. 4 megapixels for the tiny preset (16 channels). The map
 * lives in host memory and, during its module, on the device with a few times its size. */
export const EXACT_GLOBAL_BYTES = 256 * 1024 * 1024;

/** SFM statistics on the host, in the layout of `SfmStatistics`. */
interface HostSfmStatistics {
  degradedMean: Float32Array;
  degradedStd: Float32Array;
  cleanMean: Float32Array;
  cleanStd: Float32Array;
  valid: number;
}

/** Count, mean and sum of squared deviations per channel of one region, merged over tiles (float64). */
class RegionMoments {
  count = 0;
  readonly mean: Float64Array;
  readonly m2: Float64Array;
  constructor(channels: number) {
    this.mean = new Float64Array(channels);
    this.m2 = new Float64Array(channels);
  }

  /** Merges a part with `count` sites (Chan et al.'s pairwise update, exact in exact arithmetic). */
  merge(count: number, mean: Float32Array, m2: Float32Array): void {
    if (count < 0.5) return;
    const total = this.count + count;
    for (let c = 0; c < this.mean.length; c++) {
      const delta = mean[c] - this.mean[c];
      this.mean[c] += (delta * count) / total;
      this.m2[c] += m2[c] + (delta * delta * this.count * count) / total;
    }
    this.count = total;
  }

  /** Mean and sqrt(biased variance + SFM_EPS), as SFM defines them. */
  finish(): { mean: Float32Array; std: Float32Array } {
    const n = Math.max(this.count, 1);
    return {
      mean: Float32Array.from(this.mean),
      std: Float32Array.from(this.m2, (m2) => Math.sqrt(m2 / n + SFM_EPS)),
    };
  }
}

/** One SFM layer's statistics merged over the tiles' cores. */
class SfmAccumulator {
  readonly degraded: RegionMoments;
  readonly clean: RegionMoments;
  constructor(readonly channels: number) {
    this.degraded = new RegionMoments(channels);
    this.clean = new RegionMoments(channels);
  }

  /** Adds the moments of a core window of `features` [1, C, h, w] and `mask` [1, 1, h, w]. */
  async add(features: Tensor, mask: Tensor, rows: [number, number], cols: [number, number]): Promise<void> {
    const C = this.channels;
    const packed = noGrad(() =>
      tidy(() => {
        const f = slice(features, [0, 0, rows[0], cols[0]], [1, C, rows[1], cols[1]]);
        const m = slice(mask, [0, 0, rows[0], cols[0]], [1, 1, rows[1], cols[1]]);
        const s = sfmMoments(f, m);
        // One readback per tile: [nd, mean_d (C), m2_d (C), nc, mean_c (C), m2_c (C)].
        return concat(
          [s.degradedCount, s.degradedMean, s.degradedM2, s.cleanCount, s.cleanMean, s.cleanM2],
          1,
        );
      })
    );
    const v = await packed.data();
    packed.dispose();
    this.degraded.merge(v[0], v.subarray(1, 1 + C), v.subarray(1 + C, 1 + 2 * C));
    const o = 1 + 2 * C;
    this.clean.merge(v[o], v.subarray(o + 1, o + 1 + C), v.subarray(o + 1 + C, o + 1 + 2 * C));
  }

  finish(): HostSfmStatistics {
    const d = this.degraded.finish();
    const c = this.clean.finish();
    return {
      degradedMean: d.mean,
      degradedStd: d.std,
      cleanMean: c.mean,
      cleanStd: c.std,
      valid: this.degraded.count > 0.5 && this.clean.count > 0.5 ? 1 : 0,
    };
  }
}

/** Measures a model's image-wide layers over the tiles of one image, layer by layer in forward order, and
 * supplies the whole-image results to tile passes. */
export class GlobalLayerResults {
  readonly #sfm = new Map<number, HostSfmStatistics>();
  readonly #nonLocal = new Map<number, HostMap>();
  #accumulator: SfmAccumulator | undefined;
  #features: HostMap | undefined;
  #mask: HostMap | undefined;

  /** Results for `model` on an image padded to `paddedHeight` x `paddedWidth`. */
  constructor(readonly model: SpairModel, readonly paddedHeight: number, readonly paddedWidth: number) {}

  /** Hooks for a pass over tile `r`: the image-wide layers measured so far use the whole-image results. */
  hooksFor(r: TileRegion): GlobalLayerHooks {
    return {
      sfm: (level, features, mask) => {
        const s = this.#sfm.get(level);
        if (!s) throw new Error(`restore: SFM at level ${level} used before it was measured`);
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
      nonLocal: (level) => {
        const map = this.#nonLocal.get(level);
        if (!map) {
          throw new Error(`restore: the non-local layer at level ${level} used before it was measured`);
        }
        const [h, w] = [r.ph >> level, r.pw >> level];
        const window = readWindow(map, r.y0 >> level, r.x0 >> level, h, w);
        return tensor(window, [1, map.channels, h, w]);
      },
    };
  }

  /** Adds tile `r`'s input of `layer` (features [1, C, h, w] and mask [1, 1, h, w] at the layer's level). */
  async add(layer: GlobalLayer, r: TileRegion, features: Tensor, mask: Tensor): Promise<void> {
    const { rows, cols } = coreWindow(r, layer.level);
    const C = features.shape[1];
    if (layer.kind === "sfm") {
      this.#accumulator ??= new SfmAccumulator(C);
      await this.#accumulator.add(features, mask, rows, cols);
      return;
    }
    const [LH, LW] = [this.paddedHeight >> layer.level, this.paddedWidth >> layer.level];
    this.#features ??= { data: new Float32Array(C * LH * LW), channels: C, height: LH, width: LW };
    this.#mask ??= { data: new Float32Array(LH * LW), channels: 1, height: LH, width: LW };
    const [fData, mData] = await Promise.all([features.data(), mask.data()]);
    const [h, w] = [features.shape[2], features.shape[3]];
    copyWindow(this.#features, r.y0 >> layer.level, r.x0 >> layer.level, h, w, rows, cols, fData);
    copyWindow(this.#mask, r.y0 >> layer.level, r.x0 >> layer.level, h, w, rows, cols, mData);
  }

  /** Computes `layer` over the whole image from what the tiles added. */
  async finish(layer: GlobalLayer): Promise<void> {
    if (layer.kind === "sfm") {
      this.#sfm.set(layer.level, this.#accumulator!.finish());
      this.#accumulator = undefined;
      return;
    }
    const [features, maskMap] = [this.#features!, this.#mask!];
    const module = layer.level === 0 ? this.model.netR.nonLocal0! : this.model.netR.nonLocal1!;
    const shape = [1, features.channels, features.height, features.width];
    const out = noGrad(() =>
      tidy(() => {
        const mask = tensor(maskMap.data, [1, 1, features.height, features.width]);
        const sites = module.mode === "sparse" ? compactMask(mask) : null;
        const result = module.forward(tensor(features.data, shape), sites);
        sites?.dispose();
        return result;
      })
    );
    const data = await out.data();
    out.dispose();
    this.#nonLocal.set(layer.level, { ...features, data });
    this.#features = this.#mask = undefined;
  }
}
