/**
 * Losses (mean reduction), composed from primitive ops so their gradients follow.
 *
 * @module
 */

import type { Tensor } from "../tensor.ts";
import { abs, add, addScalar, exp, log, mul, neg, relu, square, sub } from "./elementwise.ts";
import { mean } from "./reduce.ts";

function disposeAll(...ts: Tensor[]): void {
  for (const t of ts) t.dispose();
}

/** mean(|x - y|) */
export function l1Loss(x: Tensor, y: Tensor): Tensor {
  const d = sub(x, y);
  const a = abs(d);
  const out = mean(a);
  disposeAll(d, a);
  return out;
}

/** mean((x - y)^2) */
export function mseLoss(x: Tensor, y: Tensor): Tensor {
  const d = sub(x, y);
  const s = square(d);
  const out = mean(s);
  disposeAll(d, s);
  return out;
}

/** Binary cross-entropy on logits x against targets y in [0, 1], mean over elements:
 * max(x, 0) - x * y + log(1 + exp(-|x|)) (stable for any x). */
export function bceWithLogits(x: Tensor, y: Tensor): Tensor {
  const r = relu(x);
  const xy = mul(x, y);
  const a = abs(x);
  const na = neg(a);
  const e = exp(na);
  const e1 = addScalar(e, 1);
  const l = log(e1);
  const d = sub(r, xy);
  const terms = add(d, l);
  const out = mean(terms);
  disposeAll(r, xy, a, na, e, e1, l, d, terms);
  return out;
}
