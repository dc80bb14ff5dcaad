/**
 * SFM, the spatial feature modulation of SPAIR (paper eq. 1; SPAIR.md section 2): per image and channel,
 * degraded features are re-normalized to the mean and standard deviation of the clean ones.
 *
 * `F_S = sigma_clean * (F - mu_degraded) / sigma_degraded + mu_clean`, output `F_S` at degraded sites and
 * exactly `F` at clean sites; the identity for an image without degraded or without clean sites.
 * Statistics are per-channel reductions over the whole plane, so SFM is composed from dense engine ops
 * (its cost is a few passes over the feature map) and its gradient follows by autodiff, including the
 * paths through both regions' statistics.
 *
 * @module
 */

import { noGrad, record } from "../../engine/autograd.ts";
import { engine } from "../../engine/device.ts";
import { fusionEnabled } from "../../engine/fusion.ts";
import { runPlanInto, Tensor, tidy } from "../../engine/tensor.ts";
import {
  SFM_MAX_PLANE,
  SFM_STATS_STRIDE,
  sfmBackwardPlan,
  type SfmGeometry,
  sfmModulatePlan,
  sfmStatsPlan,
} from "../../wgsl/sfm.ts";
import { MAX_TEXTURE_FLOATS } from "../../wgsl/gemm.ts";
import type { KernelPlan } from "../../wgsl/plan.ts";
import { add, addScalar, div, map, mul, sqrt, sub, where } from "../../engine/ops/elementwise.ts";
import { sum } from "../../engine/ops/reduce.ts";

/** Variance floor of SPAIR.md: sigma = sqrt(biased variance + 1e-5). */
export const SFM_EPS = 1e-5;

/** Mean and sum of squared deviations from it of `f` over the sites where `weight` (0/1, [N,1,H,W]) is 1;
 * `count` is their number (at least 1). */
function regionMoments(f: Tensor, weight: Tensor, count: Tensor): { mean: Tensor; m2: Tensor } {
  const mean = div(sum(mul(f, weight), [2, 3], true), count);
  const centered = mul(sub(f, mean), weight);
  return { mean, m2: sum(mul(centered, centered), [2, 3], true) };
}

/** Mean and standard deviation of `f` over the sites where `weight` (0/1, [N,1,H,W]) is 1. */
function regionStats(f: Tensor, weight: Tensor, count: Tensor): { mean: Tensor; std: Tensor } {
  const { mean, m2 } = regionMoments(f, weight, count);
  return { mean, std: sqrt(addScalar(div(m2, count), SFM_EPS)) };
}

/** Partial SFM statistics of one image region per region of the mask: site counts ([N, 1, 1, 1]), means
 * and sums of squared deviations from them ([N, C, 1, 1]). */
export interface SfmMoments {
  /** Degraded sites (mask 1). */
  degradedCount: Tensor;
  /** Mean of the degraded sites (0 without any). */
  degradedMean: Tensor;
  /** Sum of squared deviations of the degraded sites from their mean. */
  degradedM2: Tensor;
  /** Clean sites (mask 0). */
  cleanCount: Tensor;
  /** Mean of the clean sites (0 without any). */
  cleanMean: Tensor;
  /** Sum of squared deviations of the clean sites from their mean. */
  cleanM2: Tensor;
}

/**
 * The statistics SFM measures, as partial sums (no gradient): moments of disjoint parts of an image merge
 * exactly into the whole image's (Chan et al.), so tiled restoration measures SFM over a whole image tile
 * by tile with this and merges on the host.
 */
export function sfmMoments(f: Tensor, mask: Tensor): SfmMoments {
  return noGrad(() =>
    tidy(() => {
      const degradedCount = sum(mask, [2, 3], true);
      const cleanCount = map("f32(k.x) - a", [degradedCount], [mask.shape[2] * mask.shape[3]]);
      const d = regionMoments(f, mask, map("max(a, 1.0)", [degradedCount]));
      const c = regionMoments(f, map("1.0 - a", [mask]), map("max(a, 1.0)", [cleanCount]));
      return {
        degradedCount,
        degradedMean: d.mean,
        degradedM2: d.m2,
        cleanCount,
        cleanMean: c.mean,
        cleanM2: c.m2,
      };
    })
  );
}

/**
 * Applies SFM to features `f` [N, C, H, W] with mask `mask` [N, 1, H, W] (1 = degraded): per image and
 * channel, degraded sites are renormalized to the clean region's mean and standard deviation; clean sites,
 * and images without both regions, pass through unchanged. Differentiable with respect to `f`; the mask
 * gets no gradient.
 *
 * ```ts
 * import { initEngine, sfm, tensor } from "@spair/spair-gpu";
 * await initEngine();
 * const f = tensor(Array.from({ length: 2 * 4 * 4 }, (_, i) => i % 7), [1, 2, 4, 4]);
 * const mask = tensor(Array.from({ length: 16 }, (_, i) => (i < 4 ? 1 : 0)), [1, 1, 4, 4]);
 * const out = sfm(f, mask); // [1, 2, 4, 4]; row 0 now has rows 1-3's statistics
 * ```
 */
export function sfm(f: Tensor, mask: Tensor): Tensor {
  if (
    f.rank !== 4 || mask.rank !== 4 || mask.shape[1] !== 1 || mask.shape[0] !== f.shape[0] ||
    mask.shape[2] !== f.shape[2] || mask.shape[3] !== f.shape[3]
  ) {
    throw new Error(`sfm: mask [${mask.shape}] does not match features [${f.shape}]`);
  }
  const geometry = fusedGeometry(f);
  if (geometry) return fusedSfm(f, mask, geometry);
  return tidy(() => {
    const { degradedCount, cleanCount, clean, gate } = noGrad(() => {
      const degradedCount = sum(mask, [2, 3], true);
      const cleanCount = map("f32(k.x) - a", [degradedCount], [mask.shape[2] * mask.shape[3]]);
      // Modulate only images that have both regions; elsewhere SFM is the identity.
      const valid = map("select(0.0, 1.0, a > 0.5 && b > 0.5)", [degradedCount, cleanCount]);
      return {
        degradedCount: map("max(a, 1.0)", [degradedCount]),
        cleanCount: map("max(a, 1.0)", [cleanCount]),
        clean: map("1.0 - a", [mask]),
        gate: mul(mask, valid),
      };
    });
    const d = regionStats(f, mask, degradedCount);
    const c = regionStats(f, clean, cleanCount);
    return modulate(f, gate, d, c);
  });
}

/** The fused kernels' geometry for `f`, or null where they do not apply (fusion off, odd plane sizes,
 * planes too large for their loops, tensors too large for one binding). */
function fusedGeometry(f: Tensor): SfmGeometry | null {
  if (!fusionEnabled() || f.size === 0) return null;
  const [batch, channels, h, w] = f.shape;
  const plane = h * w;
  const e = engine();
  if (plane % 4 !== 0 || plane > SFM_MAX_PLANE || batch * channels > 65535) return null;
  if (f.size * 4 > e.maxBindingBytes || f.size > MAX_TEXTURE_FLOATS) return null;
  return { batch, channels, plane, textures: e.readsViaTextures };
}

/** Runs a plan over named tensors into a new tensor of `shape`, as the engine op `name`. */
function runPlan(name: string, plan: KernelPlan, inputs: Record<string, Tensor>, shape: number[]): Tensor {
  return engine().op(name, () => runPlanInto(plan, inputs, Tensor.empty(shape)));
}

/** SFM in two fused passes (statistics, then modulation) and a two-pass backward. */
function fusedSfm(f: Tensor, mask: Tensor, g: SfmGeometry): Tensor {
  const stats = runPlan("sfm", sfmStatsPlan(g, SFM_EPS), { f, mask }, [
    g.batch,
    g.channels,
    SFM_STATS_STRIDE,
  ]);
  const out = runPlan("sfm", sfmModulatePlan(g), { f, mask, stats }, [...f.shape]);
  record("sfm", [f, mask], out, (grad, [fSaved, maskSaved, statsSaved]) => [
    runPlan("sfm_backward", sfmBackwardPlan(g), { g: grad, f: fSaved, mask: maskSaved, stats: statsSaved }, [
      ...f.shape,
    ]),
    null,
  ], [f, mask, stats]);
  stats.dispose();
  return out;
}

function modulate(
  f: Tensor,
  gate: Tensor,
  degraded: { mean: Tensor; std: Tensor },
  clean: { mean: Tensor; std: Tensor },
): Tensor {
  const modulated = add(div(mul(sub(f, degraded.mean), clean.std), degraded.std), clean.mean);
  return where(gate, modulated, f);
}

/** SFM statistics of a batch, [N, C, 1, 1] each, and `valid` [N, 1, 1, 1]: 1 where the image has both
 * regions. */
export interface SfmStatistics {
  /** Mean of the degraded region. */
  degradedMean: Tensor;
  /** sqrt(biased variance + {@link SFM_EPS}) of the degraded region. */
  degradedStd: Tensor;
  /** Mean of the clean region. */
  cleanMean: Tensor;
  /** sqrt(biased variance + {@link SFM_EPS}) of the clean region. */
  cleanStd: Tensor;
  /** 1 for images with degraded and clean sites, 0 for the others (SFM is the identity there). */
  valid: Tensor;
}

/**
 * SFM with statistics given by the caller instead of measured on `f`: tiled restoration measures them
 * over the whole image, then modulates each tile with them. `sfm(f, mask)` equals
 * `sfmWithStatistics(f, mask, s)` for `s` measured on `f`.
 */
export function sfmWithStatistics(f: Tensor, mask: Tensor, s: SfmStatistics): Tensor {
  return tidy(() => {
    const gate = noGrad(() => mul(mask, s.valid));
    return modulate(f, gate, { mean: s.degradedMean, std: s.degradedStd }, {
      mean: s.cleanMean,
      std: s.cleanStd,
    });
  });
}
