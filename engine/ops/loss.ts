/**
 * Losses (mean reduction), composed from primitive ops so their gradients follow.
 *
 * @module
 */

import type { Tensor } from "../tensor.ts";
import { noGrad, record } from "../graph.ts";
import { fusionEnabled } from "../fusion.ts";
import { abs, add, addScalar, exp, log, mul, neg, relu, square, sub } from "./elementwise.ts";
import { map } from "./map.ts";
import { mean, sum } from "./reduce.ts";

function disposeAll(...ts: Tensor[]): void {
  for (const t of ts) t.dispose();
}

/**
 * mean(value(x - y)) for x and y of one shape as one op: the per-element terms (divided by n) in one kernel,
 * their sum, and the gradient `slope(x - y) * g / n` in one kernel (the composed ops take three passes
 * besides the sum forward, and three backward). WGSL over `a` = x, `b` = y.
 */
function pointwiseLoss(name: string, x: Tensor, y: Tensor, value: string, slope: string): Tensor {
  const out = noGrad(() => {
    const terms = map(`(${value}) * k.x`, [x, y], [1 / x.size]);
    const m = sum(terms);
    terms.dispose();
    return m;
  });
  return record(name, [x, y], out, (g, [sx, sy]) => {
    const gx = map(`${slope} * c * k.x`, [sx, sy, g], [1 / x.size]);
    const gy = y.requiresGrad ? map("-a", [gx]) : null;
    if (x.requiresGrad) return [gx, gy];
    gx.dispose();
    return [null, gy];
  }, [x, y]);
}

const sameShape = (x: Tensor, y: Tensor) => x.rank === y.rank && x.shape.every((d, i) => d === y.shape[i]);

/** mean(|x - y|) */
export function l1Loss(x: Tensor, y: Tensor): Tensor {
  if (fusionEnabled() && sameShape(x, y)) return pointwiseLoss("l1Loss", x, y, "abs(a - b)", "sign(a - b)");
  const d = sub(x, y);
  const a = abs(d);
  const out = mean(a);
  disposeAll(d, a);
  return out;
}

/** mean((x - y)^2) */
export function mseLoss(x: Tensor, y: Tensor): Tensor {
  if (fusionEnabled() && sameShape(x, y)) {
    return pointwiseLoss("mseLoss", x, y, "(a - b) * (a - b)", "2.0 * (a - b)");
  }
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
