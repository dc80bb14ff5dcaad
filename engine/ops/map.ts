/**
 * The element-wise kernel as a raw op (no autodiff): `map` of a WGSL expression with broadcasting, and the
 * fills. Reductions and the differentiable element-wise ops (`elementwise.ts`) build on it, so imports run
 * one way: map <- reduce <- elementwise.
 *
 * Kernel: `wgsl/elementwise.ts`.
 *
 * @module
 */

import { engine } from "../device.ts";
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
