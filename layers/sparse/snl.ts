/**
 * SNL, SPAIR's region-guided sparse non-local module (paper eq. 3-5; SPAIR.md section 2), and its dense
 * (criss-cross) variant used by the Net4 ablation.
 *
 * One step ({@link snlStep}): every degraded site p attends, separately in each direction d in {left,
 * right, up, down}, to the clean sites strictly on that side of it in its row or column:
 * `a_pq = softmax_q(<f_p, f_q> / sqrt(C))`, `g_d(p) = sum_q a_pq f_q`. The directions are fused with
 * `w(p) = softmax(E(p))` over the directions that have at least one clean site, `h_p = sum_d w_d g_d(p)`,
 * and the output is `F_p + h_p` at degraded sites and exactly `F_p` at clean sites (a degraded site without
 * any clean site in its row and column is also left unchanged). In dense mode every site is a query and every
 * other site of its row/column a key (no mask).
 *
 * Kernels (`wgsl/snl.ts`) visit only degraded queries and clean keys, through per-row/column lists built
 * on the GPU from the compacted mask, with a streaming softmax: no attention matrix and no C-sized scratch
 * is ever stored (14 words per site besides inputs and outputs), and cost follows queries x clean keys in
 * their lines. The backward recomputes the attention from the saved per-query logsumexp; gradients into keys are
 * gathered per clean site over the queries of its row and column (no atomics, deterministic).
 *
 * {@link SNLModule} is two steps with separate fusion convolutions `E = conv3x3(F)` (C -> 4, with bias),
 * joined by a sparse 1x1 convolution on degraded sites (`F'' = F' + W F' + b` there, `F'` elsewhere),
 * which uses `sparseConv2d` from `./sparse_conv.ts`. With `mode = "dense"` the same module is the dense
 * non-local block of Net4 (dense steps and a dense 1x1); {@link DenseNonLocal} names that configuration.
 *
 * @module
 */

import { engine } from "../../engine/device.ts";
import { record } from "../../engine/autograd.ts";
import { Module, uniformInit } from "../../engine/module.ts";
import type { Rng } from "../../engine/random.ts";
import { Tensor, tidy } from "../../engine/tensor.ts";
import { add, zeros } from "../../engine/ops/elementwise.ts";
import { conv2d } from "../../engine/ops/conv.ts";
import {
  SNL_CHANNELS_LAST_F,
  snlBackwardPlan,
  snlForwardPlan,
  snlListsPlan,
  snlListsSize,
  type SnlShape,
  snlUsesTextures,
} from "../../wgsl/snl.ts";
import type { ActiveSites } from "./active.ts";
import { sparseConv2d } from "./sparse_conv.ts";

/** `"sparse"`: SPAIR's SNL (degraded queries, clean keys). `"dense"`: criss-cross attention of every site
 * over all other sites of its row and column (Net4's dense non-local ablation). */
export type SnlMode = "sparse" | "dense";

/** Directions of the fusion logits' channels, in order. */
export const SNL_DIRECTIONS = ["left", "right", "up", "down"] as const;

function checkInputs(f: Tensor, e: Tensor, sites: ActiveSites | null, mode: SnlMode): void {
  if (f.rank !== 4) throw new Error(`snlStep: expected features [N, C, H, W], got [${f.shape}]`);
  const [N, , H, W] = f.shape;
  if (e.rank !== 4 || e.shape[0] !== N || e.shape[1] !== 4 || e.shape[2] !== H || e.shape[3] !== W) {
    throw new Error(`snlStep: fusion logits must be [${N}, 4, ${H}, ${W}], got [${e.shape}]`);
  }
  if (mode !== "sparse" && mode !== "dense") throw new Error(`snlStep: unknown mode '${mode}'`);
  if (mode === "sparse" && !sites) throw new Error("snlStep: sparse mode needs the active sites of the mask");
  if (sites && (sites.n !== N || sites.h !== H || sites.w !== W)) {
    throw new Error(`snlStep: mask [${sites.mask.shape}] does not match features [${f.shape}]`);
  }
}

/**
 * One SNL step (SPAIR.md section 2): `F_p + sum_d w_d(p) g_d(p)` at degraded sites, `F_p` (bit-identical)
 * at clean sites.
 *
 * Differentiable with respect to `f` and `fusionLogits`. The op keeps its own handles to the site buffers
 * for its backward, so `sites` may be disposed right after the call.
 *
 * @param f features [N, C, H, W]
 * @param fusionLogits E [N, 4, H, W], channels in {@link SNL_DIRECTIONS} order (left, right, up, down);
 *   only its values at query sites matter
 * @param sites active (degraded) sites of the mask [N, 1, H, W]; unused (may be null) in dense mode
 * @param mode `"sparse"` (default) or `"dense"` (every site queries every other site of its row/column)
 * @returns [N, C, H, W]
 *
 * ```ts
 * import { compactMask, initEngine, snlStep, tensor, zeros } from "@spair/spair-gpu";
 * await initEngine();
 * const f = tensor(Array.from({ length: 8 * 16 * 16 }, (_, i) => Math.sin(i)), [1, 8, 16, 16]);
 * const maskData = new Float32Array(256);
 * maskData.fill(1, 96, 160); // rows 6-9 degraded
 * const sites = compactMask(tensor(maskData, [1, 1, 16, 16]));
 * const fusionLogits = zeros([1, 4, 16, 16]); // equal weight for the four directions
 * const out = snlStep(f, fusionLogits, sites); // rows 6-9 attend to clean sites; the rest equals f
 * sites.dispose();
 * ```
 */
export function snlStep(
  f: Tensor,
  fusionLogits: Tensor,
  sites: ActiveSites | null,
  mode: SnlMode = "sparse",
): Tensor {
  checkInputs(f, fusionLogits, sites, mode);
  const [N, C, H, W] = f.shape;
  const dense = mode === "dense";
  const e = engine();
  const shape: SnlShape = { N, C, H, W, dense, serialChunks: e.readsViaTextures };
  shape.textures = snlUsesTextures(shape, e.readsViaTextures);
  const { out, stats, copy } = e.op("snlStep", () => {
    const lists = dense ? null : siteLists(sites!.rank, N, H, W);
    const out = Tensor.empty(f.shape);
    e.copy(f.buffer, 0, out.buffer, 0, f.size * 4);
    const stats = zeros([N * H * W, 4, 2]);
    // The channels-last copy of F the texture path reads; kept for the backward when there is one.
    const copy = shape.textures ? Tensor.empty([N, H, W, C]) : null;
    e.runPlan(snlForwardPlan(shape), {
      F: f.buffer,
      E: fusionLogits.buffer,
      lists: lists?.buffer ?? f.buffer,
      rank: sites?.rank.buffer ?? f.buffer,
      stats: stats.buffer,
      out: out.buffer,
      ...(copy ? { [SNL_CHANNELS_LAST_F]: copy.buffer } : {}),
    });
    lists?.dispose();
    return { out, stats, copy };
  });
  const saved = [f, stats];
  if (!dense) saved.push(sites!.rank);
  if (copy) saved.push(copy);
  record(
    "snlStep",
    [f, fusionLogits],
    out,
    (g, [sf, sstats, ...rest]) =>
      e.op("snlStep backward", () => {
        const srank = dense ? null : rest.shift()!;
        const scopy = rest.shift() ?? null;
        const dE = Tensor.empty(fusionLogits.shape);
        const dF = f.requiresGrad ? Tensor.empty(f.shape) : null;
        // The texture path's plan writes all of dF; the storage path adds to a copy of dOut.
        if (dF && !shape.textures) e.copy(g.buffer, 0, dF.buffer, 0, g.size * 4);
        const lists = srank ? siteLists(srank, N, H, W) : null;
        const buffers: Record<string, GPUBuffer> = {
          F: sf.buffer,
          dOut: g.buffer,
          stats: sstats.buffer,
          lists: lists?.buffer ?? sf.buffer,
          rank: srank?.buffer ?? sf.buffer,
          out: dE.buffer,
        };
        if (dF) buffers.dF = dF.buffer;
        if (scopy) buffers[SNL_CHANNELS_LAST_F] = scopy.buffer;
        e.runPlan(snlBackwardPlan(shape, !!dF, !!scopy), buffers);
        lists?.dispose();
        if (!fusionLogits.requiresGrad) {
          dE.dispose();
          return [dF, null];
        }
        return [dF, dE];
      }),
    saved,
  );
  stats.dispose();
  copy?.dispose();
  return out;
}

/**
 * The per-row/column site lists of a mask's sites (from their `rank`), kept by the engine until the sites
 * are released ({@link Engine.derivedBuffer}): a module's two steps, their backward passes and every later
 * call with the same sites share one build. `dispose` releases a list built without the engine's cache
 * (while pipelines are collected).
 */
function siteLists(rank: Tensor, N: number, H: number, W: number): { buffer: GPUBuffer; dispose(): void } {
  const e = engine();
  const floats = snlListsSize(N, H, W);
  const plan = snlListsPlan(N, H, W);
  const fill = (target: GPUBuffer) => e.runPlan(plan, { rank: rank.buffer, lists: target });
  const kept = e.derivedBuffer(rank.buffer, `snl-lists:${N}x${H}x${W}`, floats, fill);
  if (kept) return { buffer: kept, dispose() {} };
  const own = Tensor.empty([floats]);
  fill(own.buffer);
  return { buffer: own.buffer, dispose: () => own.dispose() };
}

/**
 * SPAIR's SNL module (SPAIR.md section 2): two {@link snlStep}s with separate fusion convolutions, joined
 * by a sparse 1x1 convolution on degraded sites:
 * `F1 = step(F, conv3x3_e1(F))`, `F2 = F1 + W F1 + b` at degraded sites (`F1` elsewhere),
 * `out = step(F2, conv3x3_e2(F2))`. Clean sites of the output equal the input bit for bit (sparse mode).
 *
 * Parameters: `e1.weight` [4, C, 3, 3], `e1.bias` [4], `mid.weight` [C, C, 1, 1], `mid.bias` [C],
 * `e2.weight`, `e2.bias`; PyTorch's default conv initialization (uniform, bound 1/sqrt(fan_in)).
 *
 * `mode = "dense"` gives Net4's dense non-local block: both steps in dense (criss-cross) mode and a dense
 * 1x1 residual `F1 + W F1 + b` at every site; `sites` is then ignored.
 */
export class SNLModule extends Module {
  /** First fusion convolution `e1.weight` [4, C, 3, 3]: features to per-direction logits. */
  readonly e1Weight: Tensor;
  /** First fusion convolution bias `e1.bias` [4]. */
  readonly e1Bias: Tensor;
  /** Sparse 1x1 convolution between the steps, `mid.weight` [C, C, 1, 1]. */
  readonly midWeight: Tensor;
  /** Bias of the 1x1 convolution, `mid.bias` [C]. */
  readonly midBias: Tensor;
  /** Second fusion convolution `e2.weight` [4, C, 3, 3]. */
  readonly e2Weight: Tensor;
  /** Second fusion convolution bias `e2.bias` [4]. */
  readonly e2Bias: Tensor;

  /**
   * Creates the parameters with PyTorch's default conv initialization.
   *
   * @param channels C, the feature width
   * @param rng parameter initialization
   * @param mode `"sparse"` (SPAIR) or `"dense"` (Net4)
   */
  constructor(readonly channels: number, rng: Rng, readonly mode: SnlMode = "sparse") {
    super();
    const C = channels;
    this.e1Weight = this.param("e1.weight", uniformInit([4, C, 3, 3], C * 9, rng));
    this.e1Bias = this.param("e1.bias", uniformInit([4], C * 9, rng));
    this.midWeight = this.param("mid.weight", uniformInit([C, C, 1, 1], C, rng));
    this.midBias = this.param("mid.bias", uniformInit([C], C, rng));
    this.e2Weight = this.param("e2.weight", uniformInit([4, C, 3, 3], C * 9, rng));
    this.e2Bias = this.param("e2.bias", uniformInit([4], C * 9, rng));
  }

  /**
   * Applies the module: two SNL steps joined by the 1x1 residual.
   *
   * @param f features [N, C, H, W]
   * @param sites active sites of the level's mask (ignored, may be null, in dense mode)
   * @returns [N, C, H, W]
   */
  forward(f: Tensor, sites: ActiveSites | null): Tensor {
    if (f.rank !== 4 || f.shape[1] !== this.channels) {
      throw new Error(`SNLModule: expected [N, ${this.channels}, H, W], got [${f.shape}]`);
    }
    return tidy(() => {
      const f1 = snlStep(f, conv2d(f, this.e1Weight, this.e1Bias, { padding: 1 }), sites, this.mode);
      let f2: Tensor;
      if (this.mode === "dense") {
        f2 = add(f1, conv2d(f1, this.midWeight, this.midBias));
      } else {
        // The residual sparse conv leaves clean sites bit-identical (also -0) and adds at active ones.
        f2 = sparseConv2d(f1, sites!, this.midWeight, this.midBias, { residual: true });
      }
      return snlStep(f2, conv2d(f2, this.e2Weight, this.e2Bias, { padding: 1 }), sites, this.mode);
    });
  }
}

/** Net4's dense non-local block: an {@link SNLModule} in dense (criss-cross) mode. */
export class DenseNonLocal extends SNLModule {
  /**
   * Creates the parameters (same names and shapes as {@link SNLModule}).
   *
   * @param channels feature width C
   * @param rng parameter initialization
   */
  constructor(channels: number, rng: Rng) {
    super(channels, rng, "dense");
  }
}
