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

import { noGrad } from "../../engine/autograd.ts";
import type { Tensor } from "../../engine/tensor.ts";
import { tidy } from "../../engine/tensor.ts";
import { add, addScalar, div, map, mul, sqrt, sub, where } from "../../engine/ops/elementwise.ts";
import { sum } from "../../engine/ops/reduce.ts";

/** Variance floor of SPAIR.md: sigma = sqrt(biased variance + 1e-5). */
export const SFM_EPS = 1e-5;

/** Mean and standard deviation of `f` over the sites where `weight` (0/1, [N,1,H,W]) is 1. */
function regionStats(f: Tensor, weight: Tensor, count: Tensor): { mean: Tensor; std: Tensor } {
  const mean = div(sum(mul(f, weight), [2, 3], true), count);
  const centered = mul(sub(f, mean), weight);
  const variance = div(sum(mul(centered, centered), [2, 3], true), count);
  return { mean, std: sqrt(addScalar(variance, SFM_EPS)) };
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
  if (mask.rank !== 4 || mask.shape[1] !== 1 || mask.shape[0] !== f.shape[0]) {
    throw new Error(`sfm: mask [${mask.shape}] does not match features [${f.shape}]`);
  }
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
