/**
 * Training losses beyond the engine's: BCE with a positive-class weight, as `torch.nn.BCEWithLogitsLoss`
 * with `pos_weight`. Degraded sites are a minority (about 5-30% of pixels), and with plain BCE a short
 * NetL run settles on "nothing is degraded"; weighting positives restores the balance. And 1 - SSIM, the
 * evaluation's structural similarity as a loss.
 *
 * @module
 */

import {
  abs,
  add,
  addScalar,
  conv2d,
  div,
  exp,
  log,
  mean,
  mul,
  neg,
  relu,
  reshape,
  scale,
  sub,
  type Tensor,
  tensor,
} from "../mod.ts";
import { SSIM_KERNEL } from "./metrics.ts";

/** mean((1 - y) x + (1 + (w - 1) y) softplus(-x)) over all elements: BCE-with-logits where positive
 * targets count `posWeight` times. Equals plain BCE for `posWeight` 1. */
export function weightedBceWithLogits(logits: Tensor, target: Tensor, posWeight: number): Tensor {
  // softplus(-x) = max(-x, 0) + log(1 + exp(-|x|)), stable for any x.
  const softplusNeg = add(relu(neg(logits)), log(addScalar(exp(neg(abs(logits))), 1)));
  const negativeTerm = mul(addScalar(neg(target), 1), logits);
  const weight = addScalar(scale(target, posWeight - 1), 1);
  return mean(add(negativeTerm, mul(weight, softplusNeg)));
}

/** The weight that balances positives and negatives of a mask density `d`, capped to [1, 10]. */
export function balancedPosWeight(density: number): number {
  if (!(density > 0)) return 1;
  return Math.min(10, Math.max(1, (1 - density) / density));
}

/**
 * `1 - SSIM(y, target)`: the mean structural similarity of `train/metrics.ts` (SPAIR.md section 4: Gaussian
 * window 11x11, sigma 1.5, K1 0.01, K2 0.03, data range 1, population covariance) over every channel of every
 * image, differentiable. Windows are the ones lying wholly inside the image, as the metric averages (its reflect
 * padding never reaches them), so the value equals `1 - ssim` of each image, averaged. Images need at least
 * 11 x 11 pixels.
 *
 * @param y output [N, C, H, W]
 * @param target reference [N, C, H, W]
 */
export function ssimLoss(y: Tensor, target: Tensor): Tensor {
  const [N, C, H, W] = y.shape;
  const taps = SSIM_KERNEL.length;
  if (H < taps || W < taps) {
    throw new Error(`ssimLoss: images of ${H}x${W} are smaller than the ${taps}x${taps} window`);
  }
  // Every channel as an image of its own, blurred by the separable window without padding.
  const a = reshape(y, [N * C, 1, H, W]);
  const b = reshape(target, [N * C, 1, H, W]);
  const along = tensor(Float32Array.from(SSIM_KERNEL), [1, 1, 1, taps]);
  const down = tensor(Float32Array.from(SSIM_KERNEL), [1, 1, taps, 1]);
  const blur = (t: Tensor) => conv2d(conv2d(t, along), down);
  const [mx, my] = [blur(a), blur(b)];
  const [mxx, myy, mxy] = [mul(mx, mx), mul(my, my), mul(mx, my)];
  const vx = sub(blur(mul(a, a)), mxx);
  const vy = sub(blur(mul(b, b)), myy);
  const vxy = sub(blur(mul(a, b)), mxy);
  const c1 = 0.01 ** 2, c2 = 0.03 ** 2;
  const numerator = mul(addScalar(scale(mxy, 2), c1), addScalar(scale(vxy, 2), c2));
  const denominator = mul(addScalar(add(mxx, myy), c1), addScalar(add(vx, vy), c2));
  return addScalar(neg(mean(div(numerator, denominator))), 1);
}
