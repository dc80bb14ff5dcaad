/**
 * Element-wise ops with broadcasting, and their backward rules (one table entry per op).
 *
 * Kernel: `wgsl/elementwise.ts`. Tests: `tests/ops_fixtures_test.ts` (PyTorch) and
 * `tests/gradcheck_test.ts` (finite differences).
 *
 * @module
 */

import { engine } from "../device.ts";
import { record } from "../autograd.ts";
import { type Shape, sizeOf, stridesOf, Tensor } from "../tensor.ts";
import {
  collapseAxes,
  elementwiseKernel,
  elementwiseStep,
  elementwiseUniforms,
  MAX_RANK,
} from "../../wgsl/elementwise.ts";
import { FLOAT_DIVISION_LIMIT } from "../../wgsl/plan.ts";
import { MAX_TEXTURE_FLOATS } from "../../wgsl/gemm.ts";
import { sumTo } from "./reduce.ts";

/** Broadcast shape of several shapes (NumPy rules). */
export function broadcastShapes(...shapes: Shape[]): number[] {
  const rank = Math.max(...shapes.map((s) => s.length));
  const out = new Array<number>(rank).fill(1);
  for (const shape of shapes) {
    for (let i = 0; i < shape.length; i++) {
      const d = shape[shape.length - 1 - i];
      const j = rank - 1 - i;
      if (out[j] === 1) out[j] = d;
      else if (d !== 1 && d !== out[j]) {
        throw new Error(`shapes ${shapes.map((s) => `[${s.join(", ")}]`).join(" and ")} do not broadcast`);
      }
    }
  }
  return out;
}

/**
 * Applies a WGSL expression element-wise (no autodiff): inputs are `a`, `b`, `c`, constants `k.x`..`k.w`.
 * The output has the broadcast shape of the inputs (or `shape`, which inputs must broadcast to).
 */
export function map(expr: string, inputs: Tensor[], constants: number[] = [], shape?: Shape): Tensor {
  const outShape = shape ? [...shape] : broadcastShapes(...inputs.map((t) => t.shape));
  if (shape) broadcastShapes(outShape, ...inputs.map((t) => t.shape));
  if (outShape.length > MAX_RANK) throw new Error(`element-wise ops support rank <= ${MAX_RANK}`);
  const e = engine();
  return e.op(`map(${expr})`, () => {
    const out = Tensor.empty(outShape);
    const size = out.size;
    if (size === 0) return out;
    const names = ["a", "b", "c"].slice(0, inputs.length);
    const buffers: Record<string, GPUBuffer> = { out: out.buffer };
    inputs.forEach((t, i) => (buffers[names[i]] = t.buffer));
    // Inputs of the output's size are read at the output's index and, over one storage binding, bound chunk
    // by chunk with it; the others (single values, broadcast operands) are bound whole in every chunk.
    const whole = inputs.map((t) => t.size !== size);
    const flat = inputs.every((t, i) => !whole[i] || t.size === 1);
    if (inputs.some((t, i) => whole[i] && t.size * 4 > e.maxBindingBytes)) {
      throw new Error(`map(${expr}): broadcasting tensors over ${e.maxBindingBytes} bytes is not supported`);
    }
    const strides = flat ? [] : inputs.map((t) => {
      const s = stridesOf(t.shape);
      const offset = outShape.length - t.shape.length;
      return outShape.map((_, d) => (d < offset || t.shape[d - offset] === 1 ? 0 : s[d - offset]));
    });
    // Chunks of whole 256-byte blocks (the storage-offset alignment).
    const chunk = size * 4 > e.maxBindingBytes ? Math.floor(e.maxBindingBytes / 256) * 64 : size;
    const textured = flat && e.readsViaTextures && chunk === size && size <= MAX_TEXTURE_FLOATS &&
      whole.some((w) => !w);
    if (textured) {
      const textures = names.filter((_, i) => !whole[i]);
      const sizes = Object.fromEntries(textures.map((n) => [n, size]));
      const kernel = elementwiseKernel(expr, inputs.length, "flat-texture", 0, whole);
      const uniforms = elementwiseUniforms(size, 0, constants, [], []);
      const step = elementwiseStep(kernel, uniforms, [...names, "out"], size, undefined, textures, 4);
      e.runPlan({ outSize: size, scratch: {}, steps: [step] }, buffers, sizes);
      return out;
    }
    const walk = flat ? { shape: [], strides: [] } : collapseAxes(outShape, strides);
    const kernel = flat ? elementwiseKernel(expr, inputs.length, "flat", 0, whole) : elementwiseKernel(
      expr,
      inputs.length,
      "strided",
      walk.shape.length,
      inputs.map(() => false),
      size <= FLOAT_DIVISION_LIMIT,
    );
    for (let base = 0; base < size; base += chunk) {
      const count = Math.min(chunk, size - base);
      const ranges: Record<string, [number, number]> | undefined = chunk < size ? {} : undefined;
      if (ranges) {
        ranges.out = [base * 4, count * 4];
        names.forEach((n, i) => whole[i] || (ranges[n] = [base * 4, count * 4]));
      }
      // The flat kernel indexes inside the chunk; the strided one counts coordinates from `base` and reads a
      // chunk-bound input relative to its binding's start.
      const uniforms = flat ? elementwiseUniforms(count, 0, constants, [], []) : elementwiseUniforms(
        count,
        base,
        constants,
        walk.shape,
        walk.strides,
        whole.map((w) => (w || !ranges ? 0 : base)),
      );
      e.runPlan({
        outSize: size,
        scratch: {},
        steps: [elementwiseStep(kernel, uniforms, [...names, "out"], count, ranges)],
      }, buffers);
    }
    return out;
  });
}

/** A tensor of the given shape filled with `value`. */
export function full(shape: Shape, value: number): Tensor {
  const e = engine();
  return e.op("full", () => {
    const out = Tensor.empty(shape);
    const size = sizeOf(shape);
    // Zeros are a buffer clear (a fill the queue does without a dispatch).
    if (Object.is(value, 0)) {
      e.clear(out.buffer, 0, size * 4);
      return out;
    }
    const chunk = Math.floor(e.maxBindingBytes / 256) * 64;
    const kernel = elementwiseKernel("k.x", 0, "flat", 0, []);
    for (let base = 0; base < size; base += chunk) {
      const count = Math.min(chunk, size - base);
      e.runPlan({
        outSize: size,
        scratch: {},
        steps: [elementwiseStep(kernel, elementwiseUniforms(count, 0, [value], [], []), ["out"], count, {
          out: [base * 4, count * 4],
        })],
      }, { out: out.buffer });
    }
    return out;
  });
}

/** Zeros of the given shape. */
export function zeros(shape: Shape): Tensor {
  return full(shape, 0);
}

/** Ones of the given shape. */
export function ones(shape: Shape): Tensor {
  return full(shape, 1);
}

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
