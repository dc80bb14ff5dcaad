/**
 * Shape ops: reshape (free view), permute, slice, pad, concat, and their backward rules.
 * Kernel: `wgsl/gather.ts` (strided gather/scatter copies).
 *
 * @module
 */

import { engine } from "../device.ts";
import { record } from "../autograd.ts";
import { type Shape, sizeOf, stridesOf, Tensor } from "../tensor.ts";
import { type StridedCopy, stridedCopyStep } from "../../wgsl/gather.ts";

function copy(src: Tensor, out: Tensor, spec: StridedCopy): void {
  engine().runPlan({ outSize: out.size, scratch: {}, steps: [stridedCopyStep(spec)] }, {
    src: src.buffer,
    out: out.buffer,
  });
}

/** Same data, new shape (one dimension may be -1). No copy. */
export function reshape(x: Tensor, shape: readonly number[]): Tensor {
  const resolved = [...shape];
  const unknown = resolved.indexOf(-1);
  if (unknown >= 0) {
    resolved[unknown] = x.size / sizeOf(resolved.filter((_, i) => i !== unknown));
  }
  const y = x.view(resolved);
  return record("reshape", [x], y, (g) => [g.view(x.shape)]);
}

/** Reorders axes: output axis i is input axis `dims[i]`. */
export function permute(x: Tensor, dims: readonly number[]): Tensor {
  if (dims.length !== x.rank || [...dims].sort().some((d, i) => d !== i)) {
    throw new Error(`permute: [${dims}] is not a permutation of ${x.rank} axes`);
  }
  const strides = stridesOf(x.shape);
  const outShape = dims.map((d) => x.shape[d]);
  const y = engine().op("permute", () => {
    const out = Tensor.empty(outShape);
    copy(x, out, { kind: "gather", shape: outShape, strides: dims.map((d) => strides[d]) });
    return out;
  });
  const inverse = dims.map((_, i) => dims.indexOf(i));
  return record("permute", [x], y, (g) => [permute(g, inverse)]);
}

/** Swaps the last two axes. */
export function transpose(x: Tensor): Tensor {
  const dims = [...Array(x.rank).keys()];
  [dims[x.rank - 2], dims[x.rank - 1]] = [dims[x.rank - 1], dims[x.rank - 2]];
  return permute(x, dims);
}

/** Pads each axis with `pads[i] = [before, after]` elements of `value` (negative pads crop). */
export function pad(x: Tensor, pads: readonly (readonly [number, number])[], value = 0): Tensor {
  if (pads.length !== x.rank) {
    throw new Error(`pad: need ${x.rank} [before, after] pairs, got ${pads.length}`);
  }
  const outShape = x.shape.map((d, i) => d + pads[i][0] + pads[i][1]);
  if (outShape.some((d) => d < 0)) throw new Error(`pad: negative output shape [${outShape}]`);
  const y = engine().op("pad", () => {
    const out = Tensor.empty(outShape);
    copy(x, out, {
      kind: "gather",
      shape: outShape,
      strides: stridesOf(x.shape),
      extent: x.shape,
      start: pads.map((p) => -p[0]),
      value,
    });
    return out;
  });
  return record("pad", [x], y, (g) => [pad(g, pads.map(([b, a]) => [-b, -a] as [number, number]))]);
}

/** Takes `[starts[i], ends[i])` along every axis (ends exclusive; negative values count from the end). */
export function slice(x: Tensor, starts: readonly number[], ends: readonly number[]): Tensor {
  const pads = x.shape.map((d, i) => {
    const s = starts[i] < 0 ? starts[i] + d : starts[i];
    const e = ends[i] < 0 ? ends[i] + d : Math.min(ends[i], d);
    if (!(s >= 0 && s <= e && e <= d)) {
      throw new Error(`slice: bad range [${starts[i]}, ${ends[i]}) on axis ${i}`);
    }
    return [-s, e - d] as [number, number];
  });
  return pad(x, pads);
}

/** Concatenates tensors along `axis` (other axes must match). */
export function concat(inputs: readonly Tensor[], axis: number): Tensor {
  // Copy the list: the backward rule must not see later changes to the caller's array.
  const xs = [...inputs];
  if (xs.length === 0) throw new Error("concat: no tensors");
  const rank = xs[0].rank;
  const ax = axis < 0 ? axis + rank : axis;
  for (const t of xs) {
    if (t.rank !== rank || t.shape.some((d, i) => i !== ax && d !== xs[0].shape[i])) {
      throw new Error(`concat: shapes [${xs[0].shape}] and [${t.shape}] differ off axis ${ax}`);
    }
  }
  const outShape = [...xs[0].shape];
  outShape[ax] = xs.reduce((s, t) => s + t.shape[ax], 0);
  const outStrides = stridesOf(outShape);
  const offsets: number[] = [];
  const y = engine().op("concat", () => {
    const out = Tensor.empty(outShape);
    let offset = 0;
    for (const t of xs) {
      offsets.push(offset);
      if (t.size > 0) {
        copy(t, out, { kind: "scatter", shape: t.shape, strides: outStrides, base: offset * outStrides[ax] });
      }
      offset += t.shape[ax];
    }
    return out;
  });
  return record("concat", [...xs], y, (g) =>
    xs.map((t, k) => {
      if (!t.requiresGrad) return null;
      const starts = outShape.map((_, i) => (i === ax ? offsets[k] : 0));
      const ends = outShape.map((d, i) => (i === ax ? offsets[k] + t.shape[ax] : d));
      return slice(g, starts, ends);
    }));
}

/** Splits along `axis` into pieces of the given sizes (the inverse of {@link concat}). */
export function split(x: Tensor, sizes: readonly number[], axis: number): Tensor[] {
  const ax = axis < 0 ? axis + x.rank : axis;
  let offset = 0;
  return sizes.map((n) => {
    const starts = x.shape.map((_, i) => (i === ax ? offset : 0));
    const ends = x.shape.map((d, i) => (i === ax ? offset + n : d));
    offset += n;
    return slice(x, starts, ends);
  });
}

/** Shape helper for callers: whether two shapes are equal. */
export function sameShape(a: Shape, b: Shape): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}
