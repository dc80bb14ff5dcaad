/**
 * The `kernels` suite: the engine's dense kernels (conv2d forward, conv2d forward + input grad + weight grad,
 * matmul 1024^3, on the inputs the peer benchmarks use) and SPAIR's sparse modules (SC and SNL across mask
 * densities, SFM forward + backward). Every case is checked against a float64 reference on sampled outputs.
 *
 * @module
 */

import * as ops from "../mod.ts";
import {
  BENCH_CONV,
  BENCH_MATMUL,
  conv2dFlops,
  type Conv2dShape,
  DEFAULT_REL_TOLERANCE,
  gather,
  makeConvCase,
  makeMatmulCase,
  type MatmulShape,
  mulberry32,
  randomUniform,
  sampledMaxRelError,
  sampleIndices,
} from "./reference.ts";
import type { BenchRecord } from "./peers.ts";
import { type GpuTimer, measure, type Measurement } from "./timing.ts";

/** Timing settings of a kernel case. */
export interface KernelTiming {
  /** Most timed samples. */
  repeats: number;
  /** Untimed runs first (the first also gives `firstRunMs`). */
  warmup?: number;
  /** Stop sampling once timed samples add up to this (ms). */
  budgetMs?: number;
  /** GPU timestamp timer, if available. */
  timer?: GpuTimer | null;
  /** Runs shorter than this (ms) are batched into one submit per sample (see {@link measure}). */
  batchTargetMs?: number;
}

/** A record from a {@link Measurement}: wall-clock stats, GPU stats when present, correctness. */
export function measuredRecord(
  base: { suite: string; op: string; shape: string },
  m: Measurement,
  flops: number,
  maxRelError: number,
  note?: string,
  tolerance = DEFAULT_REL_TOLERANCE,
): BenchRecord {
  const notes = [
    `${m.runs} samples x ${m.batch} run(s) after warm-up; first run (with compilation) ${
      (m.firstRunMs / 1000).toFixed(2)
    } s`,
    ...(note ? [note] : []),
  ];
  return {
    ...base,
    engine: "spair-gpu",
    adapter: ops.engine().adapterDescription,
    medianMs: m.medianMs,
    minMs: m.minMs,
    maxMs: m.maxMs,
    q1Ms: m.q1Ms,
    q3Ms: m.q3Ms,
    runs: m.runs,
    firstRunMs: m.firstRunMs,
    gpuMedianMs: m.gpu?.medianMs,
    gpuMinMs: m.gpu?.minMs,
    gpuMaxMs: m.gpu?.maxMs,
    gflops: flops > 0 ? +(flops / m.medianMs / 1e6).toFixed(3) : NaN,
    correct: maxRelError <= tolerance,
    maxRelError,
    note: notes.join("; "),
  };
}

function convShapeLabel(s: Conv2dShape): string {
  return `N${s.n} C${s.cin}->${s.cout} ${s.h}x${s.w} k${s.kh}x${s.kw} s${s.stride} p${s.pad}`;
}

/** The engine's conv2d forward and forward + input grad + weight grad (default: the shared peer case). */
export async function benchConv(t: KernelTiming, shape: Conv2dShape = BENCH_CONV): Promise<BenchRecord[]> {
  const c = makeConvCase(shape);
  const s = c.shape;
  const x = ops.keep(ops.tensor(c.x, [s.n, s.cin, s.h, s.w]));
  const w = ops.keep(ops.tensor(c.w, [s.cout, s.cin, s.kh, s.kw]));
  const dy = ops.keep(ops.tensor(c.dy, [s.n, s.cout, c.dy.length / (s.n * s.cout * s.h), s.w]));
  const options = { stride: s.stride, padding: s.pad };
  const flops = conv2dFlops(s);
  const base = { suite: "kernels", shape: convShapeLabel(s) };
  const out: BenchRecord[] = [];

  let y: ops.Tensor | null = null;
  const fwd = await measure(() => {
    y?.dispose();
    y = ops.noGrad(() => ops.conv2d(x, w, null, options));
  }, t);
  const fwdErr = sampledMaxRelError(gather(await y!.data(), c.y.at), c.y.ref);
  out.push(measuredRecord({ ...base, op: "conv2d_fwd" }, fwd, flops, fwdErr));

  x.requiresGrad = true;
  w.requiresGrad = true;
  const bwd = await measure(() => {
    y?.dispose();
    x.grad?.dispose();
    w.grad?.dispose();
    x.grad = w.grad = null;
    y = ops.conv2d(x, w, null, options);
    ops.backward(y, dy);
  }, t);
  const errors = [
    sampledMaxRelError(gather(await y!.data(), c.y.at), c.y.ref),
    sampledMaxRelError(gather(await x.grad!.data(), c.dx.at), c.dx.ref),
    sampledMaxRelError(gather(await w.grad!.data(), c.dw.at), c.dw.ref),
  ];
  const note = `errors y ${errors[0].toExponential(2)} dx ${errors[1].toExponential(2)} dw ${
    errors[2].toExponential(2)
  }`;
  out.push(measuredRecord({ ...base, op: "conv2d_fwd_bwd" }, bwd, 3 * flops, Math.max(...errors), note));
  ops.dispose([x, w, dy, y!, x.grad!, w.grad!]);
  x.grad = w.grad = null;
  return out;
}

/** The engine's matmul (default 1024^3, the shared peer case). */
export async function benchMatmul(
  t: KernelTiming,
  shape: MatmulShape = BENCH_MATMUL,
): Promise<BenchRecord[]> {
  const c = makeMatmulCase(shape);
  const { m, n, k } = c.shape;
  const a = ops.keep(ops.tensor(c.a, [m, k]));
  const b = ops.keep(ops.tensor(c.b, [k, n]));
  let out: ops.Tensor | null = null;
  const r = await measure(() => {
    out?.dispose();
    out = ops.matmul(a, b);
  }, t);
  const err = sampledMaxRelError(gather(await out!.data(), c.c.at), c.c.ref);
  ops.dispose([a, b, out!]);
  return [measuredRecord({ suite: "kernels", op: "matmul", shape: `${m}x${n}x${k}` }, r, 2 * m * n * k, err)];
}

/** Float64 SFM of channel plane `f` (HW values) with mask `m` (1 = degraded), as in layers/sparse/sfm.ts. */
function sfmPlaneRef(f: Float32Array, m: Float32Array): Float64Array {
  const stat = (want: boolean) => {
    let n = 0, s = 0;
    for (let i = 0; i < f.length; i++) if ((m[i] > 0.5) === want) (n++, s += f[i]);
    const mean = n ? s / n : 0;
    let v = 0;
    for (let i = 0; i < f.length; i++) if ((m[i] > 0.5) === want) v += (f[i] - mean) ** 2;
    return { n, mean, std: Math.sqrt((n ? v / n : 0) + 1e-5) };
  };
  const d = stat(true), c = stat(false);
  const out = new Float64Array(f.length);
  for (let i = 0; i < f.length; i++) {
    out[i] = d.n && c.n && m[i] > 0.5 ? (f[i] - d.mean) * c.std / d.std + c.mean : f[i];
  }
  return out;
}

/**
 * SFM forward + backward (gradient of the features for cotangent r) on [1, C, S, S] features at each mask
 * density; the forward output is checked against a float64 reference at sampled elements.
 */
export async function benchSfm(
  t: KernelTiming,
  densities: number[] = [0.1, 0.5],
  channels = 32,
  size = 256,
): Promise<BenchRecord[]> {
  const HW = size * size;
  const xData = randomUniform(21, channels * HW);
  const x = ops.keep(ops.tensor(xData, [1, channels, size, size]));
  const r = ops.keep(ops.tensor(randomUniform(22, channels * HW), [1, channels, size, size]));
  x.requiresGrad = true;
  const out: BenchRecord[] = [];
  for (const density of densities) {
    const rand = mulberry32(23 + Math.round(density * 1e6));
    const maskData = new Float32Array(HW).map(() => (rand() < density ? 1 : 0));
    const mask = ops.keep(ops.tensor(maskData, [1, 1, size, size]));
    let y: ops.Tensor | null = null;
    const m = await measure(() => {
      y?.dispose();
      x.grad?.dispose();
      x.grad = null;
      y = ops.sfm(x, mask);
      ops.backward(y, r);
    }, t);
    const got = await y!.data();
    const at = sampleIndices(24, channels * HW, 64);
    const planes = new Map<number, Float64Array>();
    const ref = at.map((i) => {
      const ch = Math.floor(i / HW);
      if (!planes.has(ch)) planes.set(ch, sfmPlaneRef(xData.subarray(ch * HW, (ch + 1) * HW), maskData));
      return planes.get(ch)![i % HW];
    });
    const err = sampledMaxRelError(gather(got, at), ref);
    // Forward reads F about 3 times and writes once; backward about twice that: a bandwidth-bound op.
    out.push(measuredRecord(
      { suite: "kernels", op: "sfm_fwd_bwd", shape: `N1 C${channels} ${size}x${size} density ${density}` },
      m,
      0,
      err,
      `${maskData.reduce((a, v) => a + v, 0)} degraded sites; forward checked (64 samples)`,
    ));
    ops.dispose([y!, mask, x.grad!]);
    x.grad = null;
  }
  ops.dispose([x, r]);
  return out;
}

/** Sizes of the kernels suite. */
export interface KernelSizes {
  conv: Conv2dShape;
  matmul: MatmulShape;
  /** SC/SNL/SFM feature size (H = W) and width. */
  sparseSize: number;
  sparseChannels: number;
  /** SC and SNL mask densities. */
  densities: number[];
  /** SFM mask densities. */
  sfmDensities: number[];
  /** Whether SNL also runs in dense (criss-cross) mode, its all-pairs reference point. */
  snlDense: boolean;
}

/** Full-size kernels suite: the shared peer cases and 256x256 C=32 sparse modules. */
export const FULL_KERNELS: KernelSizes = {
  conv: BENCH_CONV,
  matmul: BENCH_MATMUL,
  sparseSize: 256,
  sparseChannels: 32,
  densities: [0.01, 0.05, 0.1, 0.25, 0.5, 1],
  sfmDensities: [0.1, 0.5],
  snlDense: true,
};

/** Tiny sizes for smoke tests (`--quick`). */
export const QUICK_KERNELS: KernelSizes = {
  conv: { ...BENCH_CONV, cin: 8, cout: 8, h: 32, w: 32 },
  matmul: { m: 128, n: 128, k: 128 },
  sparseSize: 32,
  sparseChannels: 8,
  densities: [0.1, 1],
  sfmDensities: [0.1],
  snlDense: false,
};

/**
 * SC and SNL modules (forward + backward) across mask densities and SFM, recorded with suite "kernels".
 * SC and SNL keep their own timing loops (wall clock; SNL times its cases round-robin), with `repeats`
 * timed runs after one warm-up.
 */
export async function benchSparse(
  sizes: KernelSizes,
  t: KernelTiming,
  sparseRepeats: number,
  log: (r: BenchRecord) => void,
): Promise<void> {
  const { benchSparseConv } = await import("./sparse_conv.ts");
  const { benchSnl } = await import("./snl.ts");
  const S = sizes.sparseSize, C = sizes.sparseChannels;
  await benchSparseConv(sizes.densities, {
    size: S,
    channels: C,
    growth: Math.max(4, C / 2),
    repeats: sparseRepeats,
    // The correctness run before timing already compiles everything; it serves as the warm-up.
    warmup: 1,
    log: (r) => log({ ...r, suite: "kernels", runs: sparseRepeats }),
  });
  for (
    const r of await benchSnl(sizes.densities, {
      repeats: sparseRepeats,
      shape: [1, C, S, S],
      dense: sizes.snlDense,
    })
  ) {
    log({ ...r, suite: "kernels", runs: sparseRepeats });
  }
  for (const r of await benchSfm(t, sizes.sfmDensities, C, S)) log(r);
}
