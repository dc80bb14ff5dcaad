/**
 * Reverse-mode automatic differentiation.
 *
 * Every differentiable op calls {@link record} next to its forward computation, giving the backward rule
 * that maps the output gradient to input gradients. Recording happens only while gradients are enabled and
 * some input requires a gradient, so inference never keeps activations. {@link backward} walks the graph
 * from a scalar, accumulates gradients into leaves (`tensor.grad`), and releases each node's saved
 * activations as soon as its rule has run.
 *
 * @module
 */

import { type Shape, type Tensor, tidy } from "./tensor.ts";
import { add, full } from "./ops/elementwise.ts";

/** Backward rule: output gradient and the saved tensors in, one gradient (or null) per input out. */
export type BackwardRule = (grad: Tensor, saved: Tensor[]) => (Tensor | null)[];

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

/** Runs `fn` without recording ops (inference mode). */
export function noGrad<T>(fn: () => T): T {
  const previous = gradEnabled;
  gradEnabled = false;
  try {
    return fn();
  } finally {
    gradEnabled = previous;
  }
}

/** Runs `fn` with op recording enabled (inside a {@link noGrad} region, for example). */
export function enableGrad<T>(fn: () => T): T {
  const previous = gradEnabled;
  gradEnabled = true;
  try {
    return fn();
  } finally {
    gradEnabled = previous;
  }
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

function topologicalOrder(root: Tensor): Tensor[] {
  const order: Tensor[] = [];
  const visited = new Set<Tensor>();
  const stack: [Tensor, number][] = [[root, 0]];
  while (stack.length > 0) {
    const top = stack[stack.length - 1];
    const [t, i] = top;
    const inputs = t.gradFn?.inputs ?? [];
    if (i === 0) {
      if (visited.has(t)) {
        stack.pop();
        continue;
      }
      visited.add(t);
    }
    if (i < inputs.length) {
      top[1]++;
      const next = inputs[i];
      if (next.gradFn && !visited.has(next)) stack.push([next, 0]);
    } else {
      stack.pop();
      order.push(t);
    }
  }
  return order;
}

/**
 * Backpropagates from `root` (a scalar unless `grad` is given) and accumulates into the `.grad` of every
 * leaf that requires a gradient. The graph is consumed: saved activations are released.
 *
 * ```ts
 * import { backward, initEngine, mul, sum, tensor } from "@spair/spair-gpu";
 * await initEngine();
 * const x = tensor([1, 2, 3]);
 * x.requiresGrad = true;
 * backward(sum(mul(x, x))); // d/dx sum(x²) = 2x
 * console.log(await x.grad!.data()); // Float32Array [2, 4, 6]
 * ```
 */
export function backward(root: Tensor, grad?: Tensor): void {
  if (!root.gradFn) {
    throw new Error(`backward: ${root.describe()} was not produced by a recorded op (nothing requires grad)`);
  }
  if (!grad && root.size !== 1) throw new Error(`backward: ${root.describe()} is not a scalar; pass a grad`);
  noGrad(() => {
    const order = topologicalOrder(root);
    const grads = new Map<Tensor, Tensor>();
    grads.set(root, grad ? grad.view(grad.shape, false) : keepOut(full(root.shape, 1)));
    for (let k = order.length - 1; k >= 0; k--) {
      const out = order[k];
      const node = out.gradFn!;
      const g = grads.get(out);
      grads.delete(out);
      if (g) {
        const inputGrads = tidy(() => node.rule(g, node.saved));
        g.dispose();
        node.inputs.forEach((input, i) => {
          if (!inputGrads[i]) return;
          const ig = keepOut(inputGrads[i]!);
          if (!input.requiresGrad) return ig.dispose();
          assertSameShape(node.name, input.shape, ig.shape);
          const target = input.gradFn ? grads.get(input) : input.grad;
          let sum = ig;
          if (target) {
            sum = keepOut(add(target, ig));
            target.dispose();
            ig.dispose();
          }
          if (input.gradFn) grads.set(input, sum);
          else input.grad = sum;
        });
      }
      for (const s of node.saved) s.dispose();
      node.saved = [];
      out.gradFn = null;
    }
    for (const g of grads.values()) g.dispose();
  });
}

function keepOut(t: Tensor): Tensor {
  // Gradients live outside the caller's tidy scopes; backward disposes intermediate ones itself.
  const moved = t.view(t.shape, false);
  t.dispose();
  return moved;
}

function assertSameShape(op: string, expected: Shape, got: Shape): void {
  if (expected.length !== got.length || expected.some((d, i) => d !== got[i])) {
    throw new Error(`backward of ${op}: gradient shape [${got}] does not match input shape [${expected}]`);
  }
}
