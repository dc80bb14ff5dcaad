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
import { noGrad } from "./graph.ts";

export {
  type BackwardRule,
  detach,
  enableGrad,
  type GradNode,
  isGradEnabled,
  needsGrad,
  noGrad,
  record,
} from "./graph.ts";

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
        const gathered = (input: Tensor) => (input.gradFn ? grads.get(input) : input.grad) ?? null;
        const priors = node.inputs.map((input) => input.requiresGrad ? gathered(input) : null);
        const unfolded = [...priors];
        const inputGrads = tidy(() => node.rule(g, node.saved, priors));
        g.dispose();
        node.inputs.forEach((input, i) => {
          if (!inputGrads[i]) return;
          const ig = keepOut(inputGrads[i]!);
          if (!input.requiresGrad) return ig.dispose();
          assertSameShape(node.name, input.shape, ig.shape);
          const target = gathered(input);
          let sum = ig;
          if (target && priors[i] === null && unfolded[i] === target) {
            target.dispose(); // the rule added it to its output
          } else if (target) {
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
