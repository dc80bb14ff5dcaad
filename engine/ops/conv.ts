/**
 * 2-D convolution and transposed convolution (NCHW, PyTorch weight layouts) with backward rules.
 * Kernels: `wgsl/conv2d.ts` (implicit GEMM forward, input gradient, split-K weight gradient). A transposed
 * convolution is the input gradient of a convolution, so both ops share the same three kernels.
 *
 * @module
 */

import { engine } from "../device.ts";
import { record } from "../graph.ts";
import { runPlanInto as run, Tensor } from "../tensor.ts";
import {
  conv2dForwardPlan,
  conv2dInputGradPlan,
  type Conv2dShape,
  conv2dWeightGradPlan,
  PACK_WEIGHT_KEY,
  packWeightBatch,
} from "../../wgsl/conv2d.ts";
import { type KernelPlan, type KernelStep, memoizePlans } from "../../wgsl/plan.ts";
import { add, map } from "./elementwise.ts";
import { sum } from "./reduce.ts";
import { reluBiasGradPlan } from "../../wgsl/reduce.ts";
import { concat, pad, reshape, slice } from "./shape.ts";
import { fusionEnabled } from "../fusion.ts";

// Plans by shape, built once (their WGSL source is long).
const forwardPlan = memoizePlans((s: Conv2dShape, hasBias: boolean, relu: boolean, residual: boolean) =>
  conv2dForwardPlan(s, hasBias, undefined, undefined, undefined, relu, residual)
);
const inputGradPlan = memoizePlans((s: Conv2dShape, hasBias: boolean, residual: boolean, gate: boolean) =>
  conv2dInputGradPlan(s, undefined, undefined, hasBias, residual, gate)
);
const weightGradPlan = memoizePlans((s: Conv2dShape, biasGrad: boolean, gate: boolean) =>
  conv2dWeightGradPlan(s, undefined, undefined, biasGrad, gate)
);

/** A plan's weight-packing step (reads `w`, writes scratch `wp`), split from the rest of the plan. */
interface PackSplit {
  pack: KernelStep;
  rest: KernelPlan;
  key: string;
}
const packSplits = new WeakMap<KernelPlan, PackSplit | null>();

function packSplit(plan: KernelPlan): PackSplit | null {
  let split = packSplits.get(plan);
  if (split === undefined) {
    const pack = plan.steps.find((st) => st.kernel.key === PACK_WEIGHT_KEY);
    split = null;
    if (pack && pack.buffers[0] === "w" && pack.writes[0] === "wp" && plan.scratch.wp) {
      const { wp: _, ...scratch } = plan.scratch;
      const rest = { ...plan, scratch, steps: plan.steps.filter((st) => st !== pack) };
      split = { pack, rest, key: `${pack.kernel.key}:${new Int32Array(pack.uniforms).join(",")}` };
    }
    packSplits.set(plan, split);
  }
  return split;
}

/**
 * Runs a convolution plan whose weights `inputs.w` are packed by its first step, with the packed weights
 * kept for the next call until `w` changes ({@link Engine.derivedBuffer}): restoring and a frozen NetL
 * pack each weight once instead of per call.
 */
function runPacked(plan: KernelPlan, inputs: Record<string, Tensor>, out: Tensor): Tensor {
  const split = packSplit(plan);
  if (!split) return run(plan, inputs, out);
  const e = engine();
  const floats = plan.scratch.wp;
  const w = inputs.w.buffer;
  const wp = e.derivedBuffer(
    w,
    split.key,
    floats,
    (target) => e.runPlan({ outSize: floats, scratch: {}, steps: [split.pack] }, { w, wp: target }),
    { step: split.pack, batch: packWeightBatch },
  );
  if (!wp) return run(plan, inputs, out);
  const bound: Record<string, GPUBuffer> = { out: out.buffer, wp };
  const sizes: Record<string, number> = { wp: floats };
  for (const [name, t] of Object.entries(inputs)) {
    bound[name] = t.buffer;
    sizes[name] = t.size;
  }
  e.runPlan(split.rest, bound, sizes);
  return out;
}

/** A number for both spatial axes or `[height, width]`. */
export type Pair = number | readonly [number, number];

/** Options of {@link conv2d}. */
export interface Conv2dOptions {
  /** Step between kernel applications, in pixels (default 1). */
  stride?: Pair;
  /** Zero padding added to each side, in pixels (default 0). */
  padding?: Pair;
  /** Spacing between kernel taps (default 1). */
  dilation?: Pair;
}

/** Options of {@link conv2d} alone. */
export interface Conv2dOnlyOptions extends Conv2dOptions {
  /** Apply ReLU to the output: `relu(conv2d(...))` in one op, fused into the kernel's output write where
   * the kernel allows (default false). */
  relu?: boolean;
  /** A tensor of the output's shape added to the output, `add(conv2d(...), residual)` in one op, fused into
   * the kernel's output write where the kernel allows (a residual connection). Not with `relu`. */
  residual?: Tensor;
}

/** Options of {@link convTranspose2d}. */
export interface ConvTranspose2dOptions extends Conv2dOptions {
  /** Extra rows/columns added to the bottom/right of the output; smaller than `stride` (default 0). */
  outputPadding?: Pair;
}

function pair(p: Pair | undefined, fallback: number): [number, number] {
  if (p === undefined) return [fallback, fallback];
  return typeof p === "number" ? [p, p] : [p[0], p[1]];
}

function check(x: Tensor, w: Tensor, op: string, channelAxis: number): void {
  if (x.rank !== 4 || w.rank !== 4) {
    throw new Error(`${op}: expected 4-D input and weight, got [${x.shape}] and [${w.shape}]`);
  }
  if (x.shape[1] !== w.shape[channelAxis]) {
    throw new Error(
      `${op}: input has ${x.shape[1]} channels but weight [${w.shape}] expects ${w.shape[channelAxis]}`,
    );
  }
}

/** Geometry of a convolution with input x [N,Cin,H,W] and weight [Cout,Cin,kh,kw]. */
function convShape(
  N: number,
  Cin: number,
  H: number,
  W: number,
  Cout: number,
  kh: number,
  kw: number,
  o: Conv2dOptions,
  Hout?: number,
  Wout?: number,
): Conv2dShape {
  const [strideH, strideW] = pair(o.stride, 1);
  const [padH, padW] = pair(o.padding, 0);
  const [dilH, dilW] = pair(o.dilation, 1);
  Hout ??= Math.floor((H + 2 * padH - dilH * (kh - 1) - 1) / strideH) + 1;
  Wout ??= Math.floor((W + 2 * padW - dilW * (kw - 1) - 1) / strideW) + 1;
  if (Hout < 1 || Wout < 1) throw new Error(`conv2d: input ${H}x${W} too small for kernel ${kh}x${kw}`);
  return { N, Cin, H, W, Cout, kh, kw, strideH, strideW, padH, padW, dilH, dilW, Hout, Wout };
}

/**
 * Convolution of x [N,Cin,H,W] with weight [Cout,Cin,kh,kw] and optional bias [Cout]; returns
 * [N,Cout,Hout,Wout] with PyTorch's `conv2d` output size.
 *
 * ```ts
 * import { conv2d, initEngine, tensor } from "@spair/spair-gpu";
 * await initEngine();
 * const x = tensor(new Float32Array(1 * 3 * 16 * 16).fill(1), [1, 3, 16, 16]);
 * const w = tensor(new Float32Array(8 * 3 * 3 * 3).fill(0.1), [8, 3, 3, 3]);
 * const y = conv2d(x, w, null, { stride: 2, padding: 1 });
 * console.log(y.shape); // [1, 8, 8, 8]
 * ```
 */
export function conv2d(
  x: Tensor,
  w: Tensor,
  bias: Tensor | null = null,
  options: Conv2dOnlyOptions = {},
): Tensor {
  check(x, w, "conv2d", 1);
  const [N, Cin, H, W] = x.shape;
  const [Cout, , kh, kw] = w.shape;
  const s = convShape(N, Cin, H, W, Cout, kh, kw, options);
  const relu = options.relu ?? false;
  const residual = options.residual ?? null;
  if (residual) {
    if (relu) throw new Error("conv2d: `relu` and `residual` together are not supported");
    const want = [N, Cout, s.Hout, s.Wout];
    if (residual.rank !== 4 || residual.shape.some((d, i) => d !== want[i])) {
      throw new Error(`conv2d: residual ${residual.describe()} does not match the output shape [${want}]`);
    }
    // Large convolutions run in bands (fitsBindings); their residual is a separate add.
    if (s.Hout > 1 && !fitsBindings(s, !!bias)) {
      const y = conv2d(x, w, bias, { ...options, residual: undefined });
      const out = add(y, residual);
      y.dispose();
      return out;
    }
  }
  if (s.Hout > 1 && !fitsBindings(s, !!bias)) return conv2dInBands(x, w, bias, s, relu);
  const e = engine();
  const inputs: Record<string, Tensor> = { x, w };
  if (bias) inputs.bias = bias;
  if (residual) inputs.res = residual;
  const name = relu ? "conv2d+relu" : residual ? "conv2d+residual" : "conv2d";
  const y = e.op(name, () => {
    const plan = forwardPlan(s, !!bias, relu, !!residual);
    const out = runPacked(plan, inputs, Tensor.empty([N, Cout, s.Hout, s.Wout]));
    if (residual && !plan.appliesResidual) {
      const sum = add(out, residual);
      out.dispose();
      return sum;
    }
    if (!relu || plan.appliesRelu) return out;
    const activated = map("max(a, 0.0)", [out]); // a split kernel: the bias came in its reduction
    out.dispose();
    return activated;
  });
  // With ReLU the rule first masks the incoming gradient where the output is zero (relu'(v) = [v > 0] =
  // [relu(v) > 0]), so it keeps the output, not the pre-activation. A residual's gradient is the output's.
  return record(
    name,
    [x, w, ...(bias ? [bias] : []), ...(residual ? [residual] : [])],
    y,
    (g, [sx, sw, sy], priors) =>
      e.op("conv2d backward", () => {
        const grads = convBackward(s, { x, w, bias }, g, sx, sw, relu ? sy : null, priors);
        if (residual) grads.push(residual.requiresGrad ? g.view(g.shape, false) : null);
        return grads;
      }),
    relu ? [x, w, y] : [x, w],
  );
}

/**
 * Gradients of a convolution (+ ReLU when `y`, its output, is given) for x, w and the bias (when there is
 * one), from the output gradient `g`. With fusion on, the kernels do more than their products where they can:
 * - the weight gradient also sums dy's columns: the bias gradient;
 * - the input gradient adds the gradient x has gathered so far (`priors[0]`, then set to null);
 * - with ReLU, both read g gated by y > 0, so no masked copy of g is written. Only if every kernel needed can
 *   gate (and the bias gradient comes from the weight gradient); otherwise one pass masks g (and sums the
 *   bias gradient with it).
 */
function convBackward(
  s: Conv2dShape,
  p: { x: Tensor; w: Tensor; bias: Tensor | null },
  g: Tensor,
  sx: Tensor,
  sw: Tensor,
  y: Tensor | null,
  priors: (Tensor | null)[],
): (Tensor | null)[] {
  const e = engine();
  const fusing = fusionEnabled();
  const biasGrad = p.bias?.requiresGrad === true;
  const prior = fusing && p.x.requiresGrad ? priors[0] : null;
  const plans = (gate: boolean) => ({
    dx: p.x.requiresGrad ? inputGradPlan(s, false, !!prior, gate) : null,
    dw: p.w.requiresGrad ? weightGradPlan(s, biasGrad && fusing, gate) : null,
  });
  let { dx, dw } = plans(!!y && fusing);
  const gated = !!y && fusing && (!dx || dx.appliesGate === true) && (!dw || dw.appliesGate === true) &&
    (!biasGrad || dw?.appliesBias === true);
  if (y && fusing && !gated) ({ dx, dw } = plans(false));
  const dbInDw = dw?.appliesBias === true;
  const masked = y && !gated && biasGrad && !dbInDw ? reluBiasGradPlan(s.N, s.Cout, s.Hout * s.Wout) : null;
  let dy = g, db: Tensor | null = null;
  if (masked) {
    dy = Tensor.empty(g.shape);
    db = Tensor.empty([s.Cout]);
    e.runPlan(masked, { g: g.buffer, y: y!.buffer, out: dy.buffer, db: db.buffer });
  } else if (y && !gated) dy = map("select(0.0, a, b > 0.0)", [g, y]);
  if (dbInDw) db = Tensor.empty([s.Cout]);
  const gate: Record<string, Tensor> = gated ? { y: y! } : {};
  let dxOut: Tensor | null = null;
  if (dx) {
    const res = prior && dx.appliesResidual === true ? prior : null;
    if (res) priors[0] = null;
    dxOut = runPacked(dx, { dy, w: sw, ...gate, ...(res ? { res } : {}) }, Tensor.empty(p.x.shape));
  }
  const grads: (Tensor | null)[] = [
    dxOut,
    dw ? run(dw, { x: sx, dy, ...gate, ...(dbInDw ? { db: db! } : {}) }, Tensor.empty(p.w.shape)) : null,
  ];
  if (p.bias) grads.push(biasGrad ? (db ?? sum(dy, [0, 2, 3])) : null);
  if (dy !== g) dy.dispose();
  return grads;
}

/** Whether every tensor and scratch buffer of the forward and backward plans fits one storage binding. */
function fitsBindings(s: Conv2dShape, hasBias: boolean): boolean {
  const limit = engine().maxBindingBytes / 4;
  const tensors = [s.N * s.Cin * s.H * s.W, s.N * s.Cout * s.Hout * s.Wout, s.Cout * s.Cin * s.kh * s.kw];
  const plans = [
    forwardPlan(s, hasBias, false, false),
    inputGradPlan(s, false, false, false),
    weightGradPlan(s, true, false),
  ];
  return tensors.every((n) => n <= limit) &&
    plans.every((p) => Object.values(p.scratch).every((n) => n <= limit));
}

/**
 * A convolution too large for one storage binding, computed as horizontal bands of output rows: each band
 * slices its input rows (with the halo, zero rows standing in for padding) and the bands are concatenated.
 * Built from differentiable ops, so gradients follow.
 */
function conv2dInBands(x: Tensor, w: Tensor, bias: Tensor | null, s: Conv2dShape, relu: boolean): Tensor {
  // The fewest bands whose convolution fits (one output row per band at most).
  let rows = s.Hout;
  for (let bands = 2; bands <= s.Hout; bands++) {
    rows = Math.ceil(s.Hout / bands);
    const inRows = (rows - 1) * s.strideH + s.dilH * (s.kh - 1) + 1;
    if (fitsBindings({ ...s, H: inRows, Hout: rows, padH: 0 }, !!bias)) break;
  }
  const parts: Tensor[] = [];
  for (let r0 = 0; r0 < s.Hout; r0 += rows) {
    const r1 = Math.min(s.Hout, r0 + rows);
    // Input rows [first, last] feed output rows [r0, r1); rows outside the image are the zero padding.
    const first = r0 * s.strideH - s.padH;
    const last = (r1 - 1) * s.strideH - s.padH + s.dilH * (s.kh - 1);
    const band = pad(x, [[0, 0], [0, 0], [-first, last - (s.H - 1)], [0, 0]]);
    parts.push(conv2d(band, w, bias, {
      stride: [s.strideH, s.strideW],
      padding: [0, s.padW],
      dilation: [s.dilH, s.dilW],
      relu,
    }));
    band.dispose();
  }
  const out = concat(parts, 2);
  for (const p of parts) p.dispose();
  return out;
}

/**
 * Transposed convolution of x [N,Cin,H,W] with weight [Cin,Cout,kh,kw] (PyTorch layout) and optional bias.
 * Output size: (H - 1) * stride - 2 * padding + dilation * (kh - 1) + outputPadding + 1.
 */
export function convTranspose2d(
  x: Tensor,
  w: Tensor,
  bias: Tensor | null = null,
  options: ConvTranspose2dOptions = {},
): Tensor {
  check(x, w, "convTranspose2d", 0);
  const [N, Cin, H, W] = x.shape;
  const [, Cout, kh, kw] = w.shape;
  const [strideH, strideW] = pair(options.stride, 1);
  const [padH, padW] = pair(options.padding, 0);
  const [dilH, dilW] = pair(options.dilation, 1);
  const [opH, opW] = pair(options.outputPadding, 0);
  if (opH >= strideH && opH > 0 || opW >= strideW && opW > 0) {
    throw new Error("convTranspose2d: outputPadding must be smaller than stride");
  }
  const Ho = (H - 1) * strideH - 2 * padH + dilH * (kh - 1) + opH + 1;
  const Wo = (W - 1) * strideW - 2 * padW + dilW * (kw - 1) + opW + 1;
  // The equivalent convolution maps [N, Cout, Ho, Wo] to [N, Cin, H, W] with weight [Cin, Cout, kh, kw].
  const s = convShape(N, Cout, Ho, Wo, Cin, kh, kw, options, H, W);
  if (H > 1 && !fitsBindings(s, false)) return convTranspose2dInBands(x, w, bias, options, Ho, Wo);
  const e = engine();
  // The bias is added in the kernel's output write where the plan can (the texture paths), else after.
  const plan = inputGradPlan(s, !!bias, false, false);
  const fusedBias = bias !== null && plan.appliesBias === true;
  const inputs: Record<string, Tensor> = fusedBias ? { dy: x, w, bias } : { dy: x, w };
  const y = e.op("convTranspose2d", () => runPacked(plan, inputs, Tensor.empty([N, Cout, Ho, Wo])));
  const core = record(
    "convTranspose2d",
    fusedBias ? [x, w, bias] : [x, w],
    y,
    (g, [sx, sw]) =>
      e.op("convTranspose2d backward", () => [
        x.requiresGrad
          ? runPacked(forwardPlan(s, false, false, false), { x: g, w: sw }, Tensor.empty(x.shape))
          : null,
        w.requiresGrad ? run(weightGradPlan(s, false, false), { x: g, dy: sx }, Tensor.empty(w.shape)) : null,
        fusedBias && bias.requiresGrad ? sum(g, [0, 2, 3]) : null,
      ]),
    [x, w],
  );
  if (!bias || fusedBias) return core;
  const b = reshape(bias, [1, Cout, 1, 1]);
  const withBias = add(core, b);
  core.dispose();
  b.dispose();
  return withBias;
}

/**
 * A transposed convolution (output [N, Cout, Ho, Wo]) too large for one storage binding, computed over
 * horizontal bands of input rows: each band's output rows are placed at their offset (crops at the borders
 * stand in for padding) and the placed bands are summed, so rows that overlapping bands both reach get
 * both contributions.
 */
function convTranspose2dInBands(
  x: Tensor,
  w: Tensor,
  bias: Tensor | null,
  options: ConvTranspose2dOptions,
  Ho: number,
  Wo: number,
): Tensor {
  const [N, Cin, H, W] = x.shape;
  const [, Cout, kh, kw] = w.shape;
  const [strideH] = pair(options.stride, 1);
  const [padH, padW] = pair(options.padding, 0);
  const [dilH] = pair(options.dilation, 1);
  const [, opW] = pair(options.outputPadding, 0);
  const bandOptions = {
    ...options,
    padding: [0, padW] as [number, number],
    outputPadding: [0, opW] as [number, number],
  };
  const bandRowsOut = (rows: number) => (rows - 1) * strideH + dilH * (kh - 1) + 1;
  let rows = H;
  for (let bands = 2; bands <= H; bands++) {
    rows = Math.ceil(H / bands);
    // The band's equivalent convolution, as convTranspose2d builds it.
    if (fitsBindings(convShape(N, Cout, bandRowsOut(rows), Wo, Cin, kh, kw, bandOptions, rows, W), false)) {
      break;
    }
  }
  let sum: Tensor | null = null;
  for (let r0 = 0; r0 < H; r0 += rows) {
    const r1 = Math.min(H, r0 + rows);
    const band = slice(x, [0, 0, r0, 0], [N, Cin, r1, W]);
    const out = convTranspose2d(band, w, null, bandOptions);
    band.dispose();
    // The band's first output row is full-output row r0 * stride - padH.
    const top = r0 * strideH - padH;
    const placed = pad(out, [[0, 0], [0, 0], [top, Ho - top - out.shape[2]], [0, 0]]);
    out.dispose();
    if (sum) {
      const next = add(sum, placed);
      sum.dispose();
      placed.dispose();
      sum = next;
    } else {
      sum = placed;
    }
  }
  if (!bias) return sum!;
  const b = reshape(bias, [1, Cout, 1, 1]);
  const withBias = add(sum!, b);
  sum!.dispose();
  b.dispose();
  return withBias;
}
