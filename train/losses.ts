/**
 * Training losses beyond the engine's: BCE with a positive-class weight, as `torch.nn.BCEWithLogitsLoss`
 * with `pos_weight`. Degraded sites are a minority (about 5-30% of pixels), and with plain BCE a short
 * NetL run settles on "nothing is degraded"; weighting positives restores the balance.
 *
 * @module
 */

import { abs, add, addScalar, exp, log, mean, mul, neg, relu, scale, type Tensor } from "../mod.ts";

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
