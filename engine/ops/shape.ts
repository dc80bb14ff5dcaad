/**
 * Shape ops: reshape (free view), permute, slice, pad, concat, and their backward rules.
 * Kernel: `wgsl/gather.ts` (strided gather/scatter copies).
 *
 * @module
 */

import { engine } from "../device.ts";
import { record } from "../graph.ts";
import { type Shape, sizeOf, stridesOf, Tensor } from "../tensor.ts";
import { type StridedCopy, stridedCopyStep } from "../../wgsl/gather.ts";
import { MAX_TEXTURE_FLOATS } from "../../wgsl/gemm.ts";

function copy(src: Tensor, out: Tensor, spec: StridedCopy): void {
  const e = engine();
  const viaTexture = e.readsViaTextures && src.size <= MAX_TEXTURE_FLOATS;
  e.runPlan(
    { outSize: out.size, scratch: {}, steps: [stridedCopyStep(spec, viaTexture)] },
    { src: src.buffer, out: out.buffer },
    { src: src.size },
  );
}

// Tensors larger than one storage binding cannot be bound by the copy kernels; pad, slice and concat then
// move them with buffer-to-buffer copies, one per contiguous run (no binding, so no size limit).

/** Most buffer copies one pad or concat may record. */
const MAX_COPY_RUNS = 1 << 16;

/**
 * Up to this many runs, a pad, slice or concat whose contiguous runs hold at least {@link MIN_RUN_FLOATS}
 * values is done with buffer copies even when it fits a binding: a copy is a plain memcpy on every adapter,
 * while the copy kernel pays index arithmetic per value (on llvmpipe a channel concat of a dense block ran
 * 2-3x slower as a kernel).
 */
const FEW_RUNS = 256;
const MIN_RUN_FLOATS = 1024;

/** Runs (count, floats each) of a pad or slice done by {@link padByCopies}. */
function padRuns(x: Tensor, out: Tensor, pads: readonly (readonly [number, number])[]): [number, number] {
  let k = x.rank - 1;
  while (k > 0 && pads[k][0] === 0 && pads[k][1] === 0) k--;
  const xStrides = stridesOf(x.shape);
  const overlap = (i: number) =>
    Math.max(0, Math.min(out.shape[i], pads[i][0] + x.shape[i]) - Math.max(0, pads[i][0]));
  let runs = 1;
  for (let a = 0; a < k; a++) runs *= overlap(a);
  return [runs, overlap(k) * xStrides[k]];
}

function exceedsBinding(tensors: readonly Tensor[]): boolean {
  const limit = engine().maxBindingBytes;
  return tensors.some((t) => t.size * 4 > limit);
}

/** `pad` with zero padding as buffer copies: clear the output, then copy each contiguous run of `x`. */
function padByCopies(
  x: Tensor,
  out: Tensor,
  pads: readonly (readonly [number, number])[],
  value: number,
): void {
  const e = engine();
  const grows = pads.some(([before, after]) => before > 0 || after > 0);
  if (grows && value !== 0) {
    throw new Error(`pad: padding a tensor of ${x.size * 4} bytes with ${value} is not supported (only 0)`);
  }
  if (grows) e.clear(out.buffer, 0, out.size * 4);
  // Axes after the last padded axis k are copied whole, so one run spans axis k's overlap times their size.
  let k = x.rank - 1;
  while (k > 0 && pads[k][0] === 0 && pads[k][1] === 0) k--;
  // Per axis, the output coordinates [lo, hi) that read the source (coordinate - before).
  const lo = pads.map(([before]) => Math.max(0, before));
  const hi = pads.map(([before], i) => Math.min(out.shape[i], before + x.shape[i]));
  if (lo.some((l, i) => hi[i] <= l)) return;
  const xStrides = stridesOf(x.shape);
  const outStrides = stridesOf(out.shape);
  const runBytes = (hi[k] - lo[k]) * xStrides[k] * 4;
  let runs = 1;
  for (let a = 0; a < k; a++) runs *= hi[a] - lo[a];
  if (runs > MAX_COPY_RUNS) {
    throw new Error(`pad: [${x.shape}] is too large for one binding and too fragmented to copy in runs`);
  }
  const coord = lo.slice(0, k);
  for (let r = 0; r < runs; r++) {
    let src = (lo[k] - pads[k][0]) * xStrides[k];
    let dst = lo[k] * outStrides[k];
    for (let a = 0; a < k; a++) {
      src += (coord[a] - pads[a][0]) * xStrides[a];
      dst += coord[a] * outStrides[a];
    }
    e.copy(x.buffer, src * 4, out.buffer, dst * 4, runBytes);
    for (let a = k - 1; a >= 0; a--) {
      if (++coord[a] < hi[a]) break;
      coord[a] = lo[a];
    }
  }
}

/** `concat` as buffer copies: every operand is one contiguous run per index of the axes before `axis`. */
function concatByCopies(xs: readonly Tensor[], out: Tensor, axis: number, offsets: readonly number[]): void {
  const e = engine();
  const outer = sizeOf(out.shape.slice(0, axis));
  const inner = sizeOf(out.shape.slice(axis + 1));
  if (outer * xs.length > MAX_COPY_RUNS) {
    throw new Error(`concat: [${out.shape}] is too large for one binding and too fragmented to copy in runs`);
  }
  xs.forEach((t, k) => {
    const run = t.shape[axis] * inner;
    if (run === 0) return;
    for (let o = 0; o < outer; o++) {
      e.copy(t.buffer, o * run * 4, out.buffer, (o * out.shape[axis] + offsets[k]) * inner * 4, run * 4);
    }
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
    if (out.size === 0) return out;
    const [runs, runFloats] = padRuns(x, out, pads);
    const zeroFill = value === 0 || pads.every(([before, after]) => before <= 0 && after <= 0);
    if (exceedsBinding([x, out]) || (zeroFill && runs <= FEW_RUNS && runFloats >= MIN_RUN_FLOATS)) {
      padByCopies(x, out, pads, value);
      return out;
    }
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
      offset += t.shape[ax];
    }
    const outer = sizeOf(outShape.slice(0, ax));
    const inner = sizeOf(outShape.slice(ax + 1));
    const fewRuns = outer * xs.length <= FEW_RUNS && xs.every((t) => t.shape[ax] * inner >= MIN_RUN_FLOATS);
    if (fewRuns || exceedsBinding([...xs, out])) {
      concatByCopies(xs, out, ax, offsets);
      return out;
    }
    for (const [k, t] of xs.entries()) {
      const offset = offsets[k];
      if (t.size > 0) {
        copy(t, out, { kind: "scatter", shape: t.shape, strides: outStrides, base: offset * outStrides[ax] });
      }
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
