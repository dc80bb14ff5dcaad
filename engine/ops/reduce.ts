/**
 * Reductions over axes (sum, mean, max) and their backward rules. Kernel: `wgsl/reduce.ts`.
 *
 * @module
 */

import { engine } from "../device.ts";
import { record } from "../graph.ts";
import { type Shape, sizeOf, Tensor } from "../tensor.ts";
import { type ReduceOp, reducePlan } from "../../wgsl/reduce.ts";
import { map } from "./map.ts";
import { reshape } from "./shape.ts";

/** Normalizes possibly negative axes to sorted unique non-negative ones (all axes when undefined). */
export function normalizeAxes(axes: number | readonly number[] | undefined, rank: number): number[] {
  const list = axes === undefined ? [...Array(rank).keys()] : typeof axes === "number" ? [axes] : [...axes];
  const out = list.map((a) => {
    const n = a < 0 ? a + rank : a;
    if (!Number.isInteger(n) || n < 0 || n >= rank) {
      throw new Error(`axis ${a} out of range for rank ${rank}`);
    }
    return n;
  });
  return [...new Set(out)].sort((p, q) => p - q);
}

function keepdimShape(shape: Shape, axes: number[]): number[] {
  return shape.map((d, i) => (axes.includes(i) ? 1 : d));
}

function reducedShape(shape: Shape, axes: number[], keepdim: boolean): number[] {
  return keepdim ? keepdimShape(shape, axes) : shape.filter((_, i) => !axes.includes(i));
}

/** Reduces one contiguous block of axes [first, last] (no autodiff). */
function reduceBlock(op: ReduceOp, x: Tensor, first: number, last: number): Tensor {
  const outer = sizeOf(x.shape.slice(0, first));
  const len = sizeOf(x.shape.slice(first, last + 1));
  const inner = sizeOf(x.shape.slice(last + 1));
  const out = Tensor.empty(keepdimShape(x.shape, [...Array(last - first + 1).keys()].map((i) => i + first)));
  engine().runPlan(reducePlan(op, outer, len, inner), { x: x.buffer, out: out.buffer });
  return out;
}

/** Raw reduction with keepdim shape (no autodiff): contiguous runs of axes are reduced in one plan each. */
function reduceRaw(op: ReduceOp, x: Tensor, axes: number[]): Tensor {
  return engine().op(op, () => {
    if (axes.length === 0) return map("a", [x]);
    const runs: [number, number][] = [];
    for (const a of axes) {
      const last = runs[runs.length - 1];
      if (last && last[1] === a - 1) last[1] = a;
      else runs.push([a, a]);
    }
    if (runs.length === 2 && runs[0][0] === 0) {
      // Leading axes and one later block (a bias gradient's [N, C, H, W] over 0, 2, 3): one plan.
      const [[, l0], [f1, l1]] = runs;
      const size = (from: number, to: number) => sizeOf(x.shape.slice(from, to));
      const out = Tensor.empty(keepdimShape(x.shape, axes));
      const plan = reducePlan(op, size(l0 + 1, f1), size(f1, l1 + 1), size(l1 + 1, x.rank), size(0, l0 + 1));
      engine().runPlan(plan, { x: x.buffer, out: out.buffer });
      return out;
    }
    let current = x;
    for (let k = runs.length - 1; k >= 0; k--) {
      const next = reduceBlock(op, current, runs[k][0], runs[k][1]);
      if (current !== x) current.dispose();
      current = next;
    }
    return current;
  });
}

function viewAs(t: Tensor, shape: Shape): Tensor {
  const v = t.view(shape);
  t.dispose();
  return v;
}

/** Sum over `axes` (all when omitted). */
export function sum(x: Tensor, axes?: number | readonly number[], keepdim = false): Tensor {
  const ax = normalizeAxes(axes, x.rank);
  const y = viewAs(reduceRaw("sum", x, ax), reducedShape(x.shape, ax, keepdim));
  return record("sum", [x], y, (g) => [map("a", [g.view(keepdimShape(x.shape, ax))], [], x.shape)]);
}

/** Mean over `axes` (all when omitted). */
export function mean(x: Tensor, axes?: number | readonly number[], keepdim = false): Tensor {
  const ax = normalizeAxes(axes, x.rank);
  const count = sizeOf(ax.map((a) => x.shape[a]));
  const total = reduceRaw("sum", x, ax);
  const y = viewAs(map("a * k.x", [total], [1 / count]), reducedShape(x.shape, ax, keepdim));
  total.dispose();
  return record("mean", [x], y, (g) => [
    map("a * k.x", [g.view(keepdimShape(x.shape, ax))], [1 / count], x.shape),
  ]);
}

/** Maximum over `axes` (all when omitted). Ties share the gradient equally (like `torch.amax`). */
export function max(x: Tensor, axes?: number | readonly number[], keepdim = false): Tensor {
  const ax = normalizeAxes(axes, x.rank);
  const m = reduceRaw("max", x, ax);
  const y = record("max", [x], m.view(reducedShape(x.shape, ax, keepdim)), (g, [sx, sm]) => {
    const mask = map("select(0.0, 1.0, a == b)", [sx, sm]);
    const count = reduceRaw("sum", mask, ax);
    return [map("a * b / c", [g.view(keepdimShape(x.shape, ax)), mask, count], [], x.shape)];
  }, [x, m]);
  m.dispose();
  return y;
}

/** Sums `g` over broadcast axes so it takes `shape` (the inverse of broadcasting). */
export function sumTo(g: Tensor, shape: Shape): Tensor {
  const offset = g.rank - shape.length;
  if (offset < 0) throw new Error(`sumTo: cannot reduce [${g.shape}] to larger rank [${shape}]`);
  const axes: number[] = [];
  g.shape.forEach((d, i) => {
    if (i < offset || (shape[i - offset] === 1 && d !== 1)) axes.push(i);
  });
  // Nothing to sum (the operand was not broadcast): the same values, without a copy.
  if (axes.length === 0) return g.view(shape);
  const summed = sum(g, axes, true);
  const out = reshape(summed, shape);
  summed.dispose();
  return out;
}
