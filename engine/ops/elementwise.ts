/**
 * Element-wise ops with broadcasting, and their backward rules (one table entry per op).
 *
 * Kernel: `wgsl/elementwise.ts` (through `map.ts`). Tests: `tests/ops_fixtures_test.ts` (PyTorch) and
 * `tests/gradcheck_test.ts` (finite differences).
 *
 * @module
 */

import { record } from "../graph.ts";
import type { Shape, Tensor } from "../tensor.ts";
import { map } from "./map.ts";
import { sumTo } from "./reduce.ts";

export { broadcastShapes, full, map, ones, zeros } from "./map.ts";

/** Broadcasts `x` to `shape` (a copy). Its gradient sums over the broadcast axes. */
export function expand(x: Tensor, shape: Shape): Tensor {
  const out = map("a", [x], [], shape);
  return record("expand", [x], out, (g) => [sumTo(g, x.shape)]);
}

// ---- unary ops: forward expression in `a`; backward expression in g (grad), x (input), y (output) ----

interface UnaryRule {
  forward: string;
  /** Backward expression; `g`, `x`, `y` are rewritten to the kernel's inputs. */
  backward: string;
}

const UNARY: Record<string, UnaryRule> = {
  neg: { forward: "-a", backward: "-g" },
  relu: { forward: "max(a, 0.0)", backward: "select(0.0, g, x > 0.0)" },
  leakyRelu: { forward: "select(a * k.x, a, a > 0.0)", backward: "select(g * k.x, g, x > 0.0)" },
  sigmoid: { forward: "1.0 / (1.0 + exp(-a))", backward: "g * y * (1.0 - y)" },
  // tanh via exp(-2|a|) so large |a| never overflows to inf/inf.
  tanh: {
    forward: "sign(a) * (1.0 - exp(-2.0 * abs(a))) / (1.0 + exp(-2.0 * abs(a)))",
    backward: "g * (1.0 - y * y)",
  },
  exp: { forward: "exp(a)", backward: "g * y" },
  log: { forward: "log(a)", backward: "g / x" },
  sqrt: { forward: "sqrt(a)", backward: "g * 0.5 / y" },
  abs: { forward: "abs(a)", backward: "g * sign(x)" },
  clamp: { forward: "clamp(a, k.x, k.y)", backward: "select(0.0, g, x > k.x && x < k.y)" },
  scale: { forward: "a * k.x", backward: "g * k.x" },
  addScalar: { forward: "a + k.x", backward: "g" },
  square: { forward: "a * a", backward: "2.0 * g * x" },
};

function unary(name: string, x: Tensor, constants: number[] = []): Tensor {
  const rule = UNARY[name];
  const y = map(rule.forward, [x], constants);
  const usesX = /(?<!\.)\bx\b/.test(rule.backward);
  const usesY = /(?<!\.)\by\b/.test(rule.backward);
  const saved = [...(usesX ? [x] : []), ...(usesY ? [y] : [])];
  return record(name, [x], y, (g, s) => {
    const vars: Tensor[] = [g, ...s];
    const names = ["g", ...(usesX ? ["x"] : []), ...(usesY ? ["y"] : [])];
    const expr = rule.backward.replace(/(?<!\.)\b[gxy]\b/g, (v) => "abc"[names.indexOf(v)]);
    return [map(expr, vars, constants)];
  }, saved);
}

/** -x */
export const neg = (x: Tensor): Tensor => unary("neg", x);
/** max(x, 0) */
export const relu = (x: Tensor): Tensor => unary("relu", x);
/** x for x > 0, slope * x otherwise. */
export const leakyRelu = (x: Tensor, slope = 0.01): Tensor => unary("leakyRelu", x, [slope]);
/** 1 / (1 + exp(-x)) */
export const sigmoid = (x: Tensor): Tensor => unary("sigmoid", x);
/** Hyperbolic tangent. */
export const tanh = (x: Tensor): Tensor => unary("tanh", x);
/** e^x */
export const exp = (x: Tensor): Tensor => unary("exp", x);
/** Natural logarithm. */
export const log = (x: Tensor): Tensor => unary("log", x);
/** Square root. */
export const sqrt = (x: Tensor): Tensor => unary("sqrt", x);
/** |x| (gradient 0 at 0). */
export const abs = (x: Tensor): Tensor => unary("abs", x);
/** x * x */
export const square = (x: Tensor): Tensor => unary("square", x);
/** Clamps to [min, max] (gradient 0 outside the open interval). */
export const clamp = (x: Tensor, min: number, max: number): Tensor => unary("clamp", x, [min, max]);
/** x * s for a number s. */
export const scale = (x: Tensor, s: number): Tensor => unary("scale", x, [s]);
/** x + s for a number s. */
export const addScalar = (x: Tensor, s: number): Tensor => unary("addScalar", x, [s]);

// ---- binary ops with broadcasting; gradients are summed back to each input's shape ----

interface BinaryRule {
  forward: string;
  /** Gradient expressions for a and b in g, a, b (null: same as g). */
  da: string | null;
  db: string | null;
}

const BINARY: Record<string, BinaryRule> = {
  add: { forward: "a + b", da: null, db: null },
  sub: { forward: "a - b", da: null, db: "-g" },
  mul: { forward: "a * b", da: "g * b", db: "g * a" },
  div: { forward: "a / b", da: "g / b", db: "-g * a / (b * b)" },
  maximum: { forward: "max(a, b)", da: "select(0.0, g, a >= b)", db: "select(0.0, g, b > a)" },
  minimum: { forward: "min(a, b)", da: "select(0.0, g, a <= b)", db: "select(0.0, g, b < a)" },
};

function binaryGrad(expr: string | null, g: Tensor, a: Tensor, b: Tensor, shape: Shape): Tensor {
  if (expr === null) return sumTo(g, shape);
  const uses = ["g", "a", "b"].filter((v) => new RegExp(`\\b${v}\\b`).test(expr));
  const tensors = uses.map((v) => (v === "g" ? g : v === "a" ? a : b));
  const kernelExpr = expr.replace(/(?<!\.)\b[gab]\b/g, (v) => "abc"[uses.indexOf(v)]);
  const full = map(kernelExpr, tensors, [], g.shape);
  if (full.shape.length === shape.length && full.shape.every((d, i) => d === shape[i])) return full;
  const reduced = sumTo(full, shape);
  full.dispose();
  return reduced;
}

function binary(name: string, a: Tensor, b: Tensor): Tensor {
  const rule = BINARY[name];
  const y = map(rule.forward, [a, b]);
  const needs = [rule.da, rule.db].some((e) => e !== null && /\b[ab]\b/.test(e));
  return record(name, [a, b], y, (g, s) => {
    const [sa, sb] = needs ? s : [a, b];
    return [
      a.requiresGrad ? binaryGrad(rule.da, g, sa, sb, a.shape) : null,
      b.requiresGrad ? binaryGrad(rule.db, g, sa, sb, b.shape) : null,
    ];
  }, needs ? [a, b] : []);
}

/** a + b (broadcasting). */
export const add = (a: Tensor, b: Tensor): Tensor => binary("add", a, b);
/** a - b (broadcasting). */
export const sub = (a: Tensor, b: Tensor): Tensor => binary("sub", a, b);
/** a * b (broadcasting). */
export const mul = (a: Tensor, b: Tensor): Tensor => binary("mul", a, b);
/** a / b (broadcasting). */
export const div = (a: Tensor, b: Tensor): Tensor => binary("div", a, b);
/** Element-wise maximum (broadcasting; ties send the gradient to a). */
export const maximum = (a: Tensor, b: Tensor): Tensor => binary("maximum", a, b);
/** Element-wise minimum (broadcasting; ties send the gradient to a). */
export const minimum = (a: Tensor, b: Tensor): Tensor => binary("minimum", a, b);

/** Selects `a` where `cond` is nonzero, else `b` (broadcasting; `cond` gets no gradient). */
export function where(cond: Tensor, a: Tensor, b: Tensor): Tensor {
  const y = map("select(c, b, a != 0.0)", [cond, a, b]);
  return record("where", [cond, a, b], y, (g, [c]) => [
    null,
    a.requiresGrad ? reduceTo(map("select(0.0, a, b != 0.0)", [g, c], [], g.shape), a.shape) : null,
    b.requiresGrad ? reduceTo(map("select(a, 0.0, b != 0.0)", [g, c], [], g.shape), b.shape) : null,
  ], [cond]);
}

function reduceTo(t: Tensor, shape: Shape): Tensor {
  if (t.shape.length === shape.length && t.shape.every((d, i) => d === shape[i])) return t;
  const r = sumTo(t, shape);
  t.dispose();
  return r;
}
