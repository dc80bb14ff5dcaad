/**
 * The autodiff graph's recording side: grad mode (`noGrad`, `enableGrad`) and {@link record}, which ops call
 * next to their forward computation. Ops import this module, and `autograd.ts` (the backward walk, which
 * runs ops) imports them, so imports run one way: graph <- ops <- autograd.
 *
 * @module
 */

import type { Tensor } from "./tensor.ts";

/**
 * Backward rule: output gradient and the saved tensors in, one gradient (or null) per input out. `priors`
 * holds the gradient each input has gathered so far from its other consumers (or null). A rule whose kernel
 * can add it to its output for free (a convolution's input gradient) does so and sets that entry to null;
 * otherwise backward adds the two.
 */
export type BackwardRule = (grad: Tensor, saved: Tensor[], priors: (Tensor | null)[]) => (Tensor | null)[];

/** A recorded op in the autograd graph. */
export interface GradNode {
  /** Op name (for error messages). */
  readonly name: string;
  /** The op's inputs, in the order of the gradients the rule returns. */
  readonly inputs: Tensor[];
  /** Maps the output gradient to the input gradients. */
  readonly rule: BackwardRule;
  /** Handles to tensors the rule needs, released after the rule runs. */
  saved: Tensor[];
}

let gradEnabled = true;

/** Whether ops are currently recorded for autodiff. */
export function isGradEnabled(): boolean {
  return gradEnabled;
}

function withGradMode<T>(enabled: boolean, fn: () => T): T {
  const previous = gradEnabled;
  gradEnabled = enabled;
  try {
    return fn();
  } finally {
    gradEnabled = previous;
  }
}

/** Runs `fn` without recording ops (inference mode). */
export function noGrad<T>(fn: () => T): T {
  return withGradMode(false, fn);
}

/** Runs `fn` with op recording enabled (inside a {@link noGrad} region, for example). */
export function enableGrad<T>(fn: () => T): T {
  return withGradMode(true, fn);
}

/** Whether an op on these inputs would be recorded. */
export function needsGrad(inputs: readonly Tensor[]): boolean {
  return gradEnabled && inputs.some((t) => t.requiresGrad);
}

/**
 * Records `output = op(inputs)` with its backward rule. `saved` tensors are kept alive (new handles to the
 * same storage) until the rule has run. Does nothing when no input needs a gradient.
 */
export function record(
  name: string,
  inputs: Tensor[],
  output: Tensor,
  rule: BackwardRule,
  saved: Tensor[] = [],
): Tensor {
  if (!needsGrad(inputs)) return output;
  output.requiresGrad = true;
  output.gradFn = { name, inputs, rule, saved: saved.map((t) => t.view(t.shape, false)) };
  return output;
}

/** Detaches a tensor from the graph: a new handle to the same data that requires no gradient. */
export function detach(t: Tensor): Tensor {
  return t.view(t.shape);
}
