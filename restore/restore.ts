/**
 * Whole-image restoration with a trained SPAIR model: tiles for images larger than one tile (see
 * `tiles.ts`), the image-wide layers measured over the whole image (see `global_layers.ts`), and a
 * feathered blend of the tiles. Web-standard APIs only, so the browser demo uses the same code.
 *
 * @module
 */

import { noGrad } from "../engine/autograd.ts";
import { engine } from "../engine/device.ts";
import { UserError } from "../engine/errors.ts";
import { keep, type Tensor, tensor, tidy } from "../engine/tensor.ts";
import type { GlobalLayer, SpairModel } from "../layers/spair.ts";
import { PRESETS } from "../layers/vocabulary.ts";
import { EXACT_GLOBAL_BYTES, GlobalLayerResults } from "./global_layers.ts";
import { Blender, maxTileForBinding, tileInput, tileLayout, type TileRegion } from "./tiles.ts";

export { EXACT_GLOBAL_BYTES } from "./global_layers.ts";
export { maxTileForBinding, RECEPTIVE_RADIUS, tileSpans } from "./tiles.ts";
export { loadModel, type ModelInfo, WeightsError } from "./weights.ts";

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
  /** Called as the GPU kernels a first run needs are compiled, before any tile (see
   * {@link precompileRestore}). */
  onCompile?: (done: number, total: number) => void;
}

/** Result of {@link restorePlanar}. */
export interface Restored {
  /** Planar RGB [3, H, W], clamped to [0, 1]. */
  restored: Float32Array;
  /** [H, W] predicted mask, 1 where NetL found a degradation; null for Net1, which uses no mask (its NetL
   * is not trained and is not run). */
  mask: Float32Array | null;
  /** Whether the image-wide layers saw the whole image (always true untiled and for Net1). */
  exactGlobalLayers: boolean;
}

/** Refuses what would give a silently wrong result: sizes that are not positive integers, a data length
 * that does not match, tile or overlap numbers that are not positive integers, and NaN or infinite pixels
 * (one spreads over most of the output through the image-wide layers). */
function checkRestoreArguments(
  planar: Float32Array,
  width: number,
  height: number,
  options: RestoreOptions,
): void {
  for (const [name, value] of [["width", width], ["height", height]] as const) {
    if (!Number.isSafeInteger(value) || value < 1) {
      throw new UserError(`restore: ${name} must be a positive integer, got ${value}`);
    }
  }
  if (!(planar instanceof Float32Array) || planar.length !== 3 * width * height) {
    throw new UserError(
      `restore: expected ${
        3 * width * height
      } values for a ${width}x${height} RGB image, got ${planar?.length}`,
    );
  }
  for (const key of ["tile", "overlap"] as const) {
    const value = options[key];
    if (value !== undefined && (!Number.isSafeInteger(value) || value < (key === "tile" ? 1 : 0))) {
      throw new UserError(
        `restore: ${key} must be a ${key === "tile" ? "positive" : "non-negative"} integer, got ${value}`,
      );
    }
  }
  for (let i = 0; i < planar.length; i++) {
    if (!Number.isFinite(planar[i])) {
      const plane = width * height;
      const [c, p] = [Math.floor(i / plane), i % plane];
      throw new UserError(
        `restore: the input holds ${planar[i]} at pixel (${p % width}, ${Math.floor(p / width)}) ` +
          `channel ${c}; pixels must be finite`,
      );
    }
  }
}

/** The tiles of a restoration: the tile side (options, bounded by the adapter's bindings) and overlap. */
function restoreLayout(model: SpairModel, width: number, height: number, options: RestoreOptions) {
  const tile = Math.max(
    16,
    Math.min(
      Math.floor((options.tile ?? 512) / 4) * 4,
      maxTileForBinding(model.config, engine().maxBindingBytes),
    ),
  );
  const overlap = Math.min(options.overlap ?? 96, Math.floor(tile / 2));
  return tileLayout(width, height, tile, overlap);
}

/** How many tiles {@link restorePlanar} cuts a `width` x `height` image into with these options. */
export function restoreTileCount(
  model: SpairModel,
  width: number,
  height: number,
  options: RestoreOptions = {},
): number {
  return restoreLayout(model, width, height, options).tiles.length;
}

/**
 * Compiles, before any work, the GPU pipelines a restoration of a `width` x `height` image needs: a dry run
 * of the networks on each tile shape lists them (`Engine.collectPipelines`, nothing executes), then
 * `Engine.compilePipelines` builds them (in parallel in browsers; on llvmpipe one by one, each timed). A
 * first run on a cold shader cache can then show "n/m" progress instead of stalling inside the first tile.
 * Returns how many were compiled (0 when all exist). The image-wide passes of a tiled run add a few small
 * kernels, compiled when first used.
 */
export async function precompileRestore(
  model: SpairModel,
  width: number,
  height: number,
  options: RestoreOptions = {},
  onProgress?: (done: number, total: number) => void,
): Promise<number> {
  // A model's tile shapes are checked once: later calls skip the dry run (host work of a whole forward).
  const done = precompiled.get(model) ?? new Set<string>();
  precompiled.set(model, done);
  const shapes = new Map<string, [number, number]>();
  for (const r of restoreLayout(model, width, height, options).tiles) {
    if (!done.has(`${r.ph}x${r.pw}`)) shapes.set(`${r.ph}x${r.pw}`, [r.ph, r.pw]);
  }
  if (shapes.size === 0) return 0;
  const requests = engine().collectPipelines(() => {
    for (const [h, w] of shapes.values()) {
      noGrad(() =>
        tidy(() => {
          const x = tensor(new Float32Array(3 * h * w), [1, 3, h, w]);
          model.netR.forward(x, model.netR.usesGuidance ? model.guidance(x) : undefined);
        })
      );
    }
  });
  if (requests.length > 0) await engine().compilePipelines(requests, onProgress);
  for (const key of shapes.keys()) done.add(key);
  return requests.length;
}

/** Tile shapes whose pipelines {@link precompileRestore} has created, per model. */
const precompiled = new WeakMap<SpairModel, Set<string>>();

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
 * console.log(restored.length === planar.length, mask?.length === width * height); // mask: null for Net1
 * ```
 */
export async function restorePlanar(
  model: SpairModel,
  planar: Float32Array,
  width: number,
  height: number,
  options: RestoreOptions = {},
): Promise<Restored> {
  checkRestoreArguments(planar, width, height, options);
  const layout = restoreLayout(model, width, height, options);
  await precompileRestore(model, width, height, options, options.onCompile);
  const { tiles, paddedHeight: PH, paddedWidth: PW } = layout;
  const layers = model.netR.globalLayers;
  const mode = options.globalLayers ?? "auto";
  // Exact when nothing is tiled, when the model has no image-wide layer (Net1), or by the mode's rule.
  // Auto: SFM alone needs only per-channel sums (no memory), so only a non-local map is bounded.
  const exact = tiles.length === 1 || layers.length === 0 || mode === "exact" ||
    (mode === "auto" &&
      (model.netR.features.nonLocal === "none" ||
        PRESETS[model.config.preset].width * PH * PW * 4 <= EXACT_GLOBAL_BYTES));
  // One measuring pass per image-wide layer, each ending at that layer, then the final pass.
  const passes = tiles.length > 1 && exact ? layers : [];
  const total = tiles.length * (passes.length + 1);
  let done = 0;
  const global = passes.length > 0 ? new GlobalLayerResults(model, PH, PW) : undefined;

  // NetL's outputs per tile, kept on the host after the first pass: later passes skip NetL.
  const guided = model.netR.usesGuidance;
  const netLOutputs = new Map<TileRegion, { logits: Float32Array; f0: Float32Array; f1: Float32Array }>();
  /** Runs NetR on tile `r` to the end, or to `stopAt` (then returns that layer's input). */
  const runTile = async <T>(
    r: TileRegion,
    stopAt: GlobalLayer | undefined,
    use: (out: { restored?: Tensor; features?: Tensor; mask?: Tensor }) => Promise<T>,
  ): Promise<T> => {
    const saved = netLOutputs.get(r);
    let fresh: Tensor[] | undefined;
    const out = noGrad(() =>
      tidy(() => {
        const x = tensor(tileInput(planar, width, height, r), [1, 3, r.ph, r.pw]);
        if (!guided) return { restored: model.netR.forward(x) };
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
        const hooks = global?.hooksFor(r);
        if (stopAt) return model.netR.forward(x, g, { hooks, stopAt });
        return { restored: model.netR.forward(x, g, { hooks }), mask: g.masks[0] };
      })
    );
    try {
      if (fresh) {
        const [logits, f0, f1] = await Promise.all(fresh.map((t) => t.data()));
        netLOutputs.set(r, { logits, f0, f1 });
      }
      return await use(out);
    } finally {
      for (const t of [...(fresh ?? []), ...Object.values(out)]) t?.dispose();
    }
  };

  for (const layer of passes) {
    for (const r of tiles) {
      await runTile(r, layer, ({ features, mask }) => global!.add(layer, r, features!, mask!));
      options.onTile?.(++done, total);
    }
    await global!.finish(layer);
  }
  const blender = new Blender(layout, guided);
  for (const r of tiles) {
    await runTile(r, undefined, async ({ restored, mask }) => {
      const [rData, mData] = await Promise.all([restored!.data(), mask?.data()]);
      blender.add(r, rData, mData);
    });
    options.onTile?.(++done, total);
  }
  return { ...blender.finish(), exactGlobalLayers: exact };
}
