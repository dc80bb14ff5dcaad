/**
 * Softmax and log-softmax over an axis, composed from primitive ops (their gradients follow). The max
 * subtracted for stability is taken without gradient: the result does not depend on it.
 *
 * @module
 */

import { noGrad } from "../graph.ts";
import type { Tensor } from "../tensor.ts";
import { div, exp, log, sub } from "./elementwise.ts";
import { max, sum } from "./reduce.ts";

/** softmax(x) along `axis`. */
export function softmax(x: Tensor, axis = -1): Tensor {
  const m = noGrad(() => max(x, axis, true));
  const shifted = sub(x, m);
  const e = exp(shifted);
  const s = sum(e, axis, true);
  const y = div(e, s);
  for (const t of [m, shifted, e, s]) t.dispose();
  return y;
}

/** log(softmax(x)) along `axis`, computed stably. */
export function logSoftmax(x: Tensor, axis = -1): Tensor {
  const m = noGrad(() => max(x, axis, true));
  const shifted = sub(x, m);
  const e = exp(shifted);
  const s = sum(e, axis, true);
  const ls = log(s);
  const y = sub(shifted, ls);
  for (const t of [m, shifted, e, s, ls]) t.dispose();
  return y;
}
