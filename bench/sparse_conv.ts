/**
 * SC benchmark: SPAIR's SC module (six densely connected sparse 3x3 convolutions with ReLU, a sparse 1x1
 * fuse and the residual; `layers/sparse/sparse_conv.ts`), forward + backward (gradients of the input and
 * all 14 parameters), on 1x32x256x256 features with growth 16 (the `small` preset's decoder width) at
 * several densities of a random mask.
 *
 * Timing: median wall time of `repeats` runs after `warmup` runs, each run = forward, backward of
 * `sum(out * r)`, and `engine().sync()` (GPU completion included). Mask compaction is outside the timed
 * region (NetR compacts each level's mask once and shares it between its SC and SNL modules).
 *
 * Correctness: before timing, the output at sampled sites (degraded and clean) is compared with a float64 CPU
 * evaluation of the dense masked formula (`M * (conv(F * M) + b)` per layer, ReLU, concat, fuse, residual)
 * on the receptive field of each sample; clean samples must equal the input exactly.
 *
 * The useful FLOP count is 3 x (2 x active sites x sum over layers of Cin x Cout x taps) (forward, input
 * gradient, weight gradient); the acceptance check of the suite is that the 10% run takes at most 25% of the
 * 100% run (cost follows the number of active sites).
 *
 * Run: `deno run -A bench/sparse_conv.ts [--densities 0.01,0.1,1] [--repeats N] [--warmup N]` prints one JSON
 * line per record, then a summary line with the 10% / 100% ratio.
 *
 * @module
 */

import { parseArgs } from "node:util";
import process from "node:process";
import * as ops from "../mod.ts";
import { compactMask } from "../layers/sparse/active.ts";
import { SC_LAYERS, SCModule } from "../layers/sparse/sparse_conv.ts";
import { DEFAULT_REL_TOLERANCE, mulberry32, randomUniform, sampledMaxRelError } from "./reference.ts";
import type { BenchRecord } from "./peers.ts";

/** A record of {@link benchSparseConv}: a {@link BenchRecord} plus the run's process CPU time. */
export interface SparseConvRecord extends BenchRecord {
  /** Median CPU time of this process over the timed runs in ms (llvmpipe's worker threads run in-process, so
   * on a shared machine this tracks the work done better than wall time). */
  cpuMs: number;
  /** Number of active (degraded) sites. */
  activeSites: number;
}

/** Options of {@link benchSparseConv}. */
export interface SparseConvBenchOptions {
  /** Batch size (default 1). */
  n?: number;
  /** Module width C (default 32). */
  channels?: number;
  /** Growth g of each 3x3 layer (default 16). */
  growth?: number;
  /** Image height and width (default 256). */
  size?: number;
  /** Timed runs per density (default 3). */
  repeats?: number;
  /** Untimed runs per density before timing (default 1). */
  warmup?: number;
  /** Output sites checked against the CPU reference per density (default 24; half degraded if possible). */
  samples?: number;
  /** Seed of inputs, weights and masks (default 7). */
  seed?: number;
  /** Called with each record as soon as it is measured. */
  log?: (r: SparseConvRecord) => void;
}

interface HostModule {
  C: number;
  g: number;
  w: Float32Array[];
  b: Float32Array[];
}

/**
 * Float64 SC-module output (all C channels) at site (y, x) of image 0 from the dense masked formula,
 * evaluating each layer only on the receptive field the sample needs (memoized per layer and site).
 */
function referenceAt(
  m: HostModule,
  x: Float32Array,
  mask: Float32Array,
  H: number,
  W: number,
  y: number,
  xx: number,
): Float64Array {
  const { C, g } = m;
  const HW = H * W;
  const out = new Float64Array(C);
  const site = y * W + xx;
  if (mask[site] <= 0.5) {
    for (let c = 0; c < C; c++) out[c] = x[c * HW + site];
    return out;
  }
  const memo = new Map<number, Float64Array>();
  // Channel ch of the dense block F at site s (x for ch < C, else layer (ch - C) / g's output).
  const feature = (ch: number, s: number): number => {
    if (ch < C) return x[ch * HW + s];
    const layer = Math.floor((ch - C) / g);
    return layerOut(layer, s)[(ch - C) % g];
  };
  const layerOut = (i: number, s: number): Float64Array => {
    const key = i * HW + s;
    const hit = memo.get(key);
    if (hit) return hit;
    const v = new Float64Array(g);
    if (mask[s] > 0.5) {
      const cin = C + i * g, w = m.w[i], sy = Math.floor(s / W), sx = s % W;
      for (let co = 0; co < g; co++) v[co] = m.b[i][co];
      for (let t = 0; t < 9; t++) {
        const ny = sy + Math.floor(t / 3) - 1, nx = sx + (t % 3) - 1;
        if (ny < 0 || ny >= H || nx < 0 || nx >= W || mask[ny * W + nx] <= 0.5) continue;
        const ns = ny * W + nx;
        for (let ci = 0; ci < cin; ci++) {
          const f = feature(ci, ns);
          if (f === 0) continue;
          for (let co = 0; co < g; co++) v[co] += w[(co * cin + ci) * 9 + t] * f;
        }
      }
      for (let co = 0; co < g; co++) v[co] = Math.max(v[co], 0);
    }
    memo.set(key, v);
    return v;
  };
  const ct = C + SC_LAYERS * g, fw = m.w[SC_LAYERS], fb = m.b[SC_LAYERS];
  for (let co = 0; co < C; co++) out[co] = fb[co];
  for (let ci = 0; ci < ct; ci++) {
    const f = feature(ci, site);
    for (let co = 0; co < C; co++) out[co] += fw[co * ct + ci] * f;
  }
  for (let co = 0; co < C; co++) out[co] += x[co * HW + site];
  return out;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/**
 * Benchmarks the SC module's forward + backward at each mask density (suite `"sc"`, op
 * `"sc_module_fwd_bwd"`). Each record's `note` gives the active-site count, the sampled error split into
 * degraded and clean samples, and the run counts.
 */
export async function benchSparseConv(
  densities: number[] = [0.01, 0.05, 0.1, 0.25, 0.5, 1],
  opts: SparseConvBenchOptions = {},
): Promise<SparseConvRecord[]> {
  const n = opts.n ?? 1, C = opts.channels ?? 32, g = opts.growth ?? 16, S = opts.size ?? 256;
  const repeats = opts.repeats ?? 3, warmup = opts.warmup ?? 1, samples = opts.samples ?? 24;
  const seed = opts.seed ?? 7;
  const H = S, W = S, HW = H * W;
  const e = ops.engine();
  const module = new SCModule(C, g, new ops.Rng(seed));
  const host: HostModule = {
    C,
    g,
    w: await Promise.all(module.weights.map((t) => t.data())),
    b: await Promise.all(module.biases.map((t) => t.data())),
  };
  const xData = randomUniform(seed + 1, n * C * HW);
  const x = ops.keep(ops.tensor(xData, [n, C, H, W]));
  x.requiresGrad = true;
  const r = ops.keep(ops.tensor(randomUniform(seed + 2, n * C * HW), [n, C, H, W]));
  let macsPerSite = 0;
  for (let i = 0; i < SC_LAYERS; i++) macsPerSite += (C + i * g) * g * 9;
  macsPerSite += (C + SC_LAYERS * g) * C;
  const records: SparseConvRecord[] = [];
  for (const density of densities) {
    const rand = mulberry32(seed + 3 + Math.round(density * 1e6));
    const maskData = new Float32Array(n * HW).map(() => (rand() < density ? 1 : 0));
    const mask = ops.tensor(maskData, [n, 1, H, W]);
    const sites = compactMask(mask);
    const active = (await sites.readCounts()).total;

    const clearGrads = () => {
      for (const p of [x, ...module.parameters()]) {
        p.grad?.dispose();
        p.grad = null;
      }
    };
    const run = async (keepOutput: boolean): Promise<ops.Tensor | null> => {
      clearGrads();
      const out = module.forward(x, sites);
      ops.backward(out, r);
      await e.sync();
      if (keepOutput) return out;
      out.dispose();
      return null;
    };

    // Correctness on sampled sites (image 0), half of them degraded when the mask has any.
    const out = (await run(true))!;
    const outData = await out.data();
    out.dispose();
    const pick = mulberry32(seed + 99);
    const degraded: number[] = [], clean: number[] = [];
    const half = Math.ceil(samples / 2);
    for (let tries = 0; tries < 200000 && (degraded.length < half || clean.length < half); tries++) {
      const s = Math.floor(pick() * HW);
      const list = maskData[s] > 0.5 ? degraded : clean;
      if (list.length < half) list.push(s);
    }
    const got: number[] = [], ref: number[] = [];
    let cleanExact = true;
    for (const s of [...degraded, ...clean]) {
      const want = referenceAt(host, xData, maskData, H, W, Math.floor(s / W), s % W);
      for (let c = 0; c < C; c++) {
        got.push(outData[c * HW + s]);
        ref.push(want[c]);
        if (maskData[s] <= 0.5 && outData[c * HW + s] !== xData[c * HW + s]) cleanExact = false;
      }
    }
    const maxRelError = cleanExact ? sampledMaxRelError(got, ref) : Infinity;

    for (let i = 1; i < warmup; i++) await run(false);
    const times: number[] = [], cpu: number[] = [];
    for (let i = 0; i < repeats; i++) {
      const c0 = process.cpuUsage();
      const t0 = performance.now();
      await run(false);
      times.push(performance.now() - t0);
      const c = process.cpuUsage(c0);
      cpu.push((c.user + c.system) / 1000);
    }
    const medianMs = median(times);
    const flops = 3 * 2 * active * macsPerSite;
    const record: SparseConvRecord = {
      suite: "sc",
      engine: "spair-gpu",
      adapter: e.adapterDescription,
      op: "sc_module_fwd_bwd",
      shape: `N${n} C${C} g${g} ${H}x${W} density ${density}`,
      medianMs: +medianMs.toFixed(2),
      minMs: +Math.min(...times).toFixed(2),
      maxMs: +Math.max(...times).toFixed(2),
      gflops: +(flops / medianMs / 1e6).toFixed(3),
      correct: maxRelError <= DEFAULT_REL_TOLERANCE,
      maxRelError,
      note:
        `${active} active sites (${(100 * active / (n * HW)).toFixed(2)}%); ${degraded.length} degraded + ` +
        `${clean.length} clean samples (clean ${cleanExact ? "bit-identical" : "CHANGED"}); ` +
        `${repeats} timed runs after ${warmup} warm-up`,
      cpuMs: +median(cpu).toFixed(1),
      activeSites: active,
    };
    records.push(record);
    opts.log?.(record);
    clearGrads();
    mask.dispose();
    sites.dispose();
  }
  ops.dispose([x, r, module.parameters()]);
  return records;
}

/** The acceptance ratio: median wall time (or CPU time) at density `lo` over the same at density `hi`. */
export function densityRatio(records: SparseConvRecord[], lo = 0.1, hi = 1, cpu = false): number {
  const r = (d: number) => records.find((r) => r.shape.endsWith(`density ${d}`));
  const value = (d: number) => (cpu ? r(d)?.cpuMs : r(d)?.medianMs) ?? NaN;
  return value(lo) / value(hi);
}

if (import.meta.main) {
  if (!Deno.env.get("XDG_RUNTIME_DIR")) Deno.env.set("XDG_RUNTIME_DIR", "/tmp");
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      densities: { type: "string", default: "0.01,0.05,0.1,0.25,0.5,1" },
      repeats: { type: "string", default: "3" },
      warmup: { type: "string", default: "1" },
      size: { type: "string", default: "256" },
    },
  });
  await ops.initEngine();
  const densities = values.densities.split(",").map(Number);
  const records = await benchSparseConv(densities, {
    repeats: Number(values.repeats),
    warmup: Number(values.warmup),
    size: Number(values.size),
    log: (r) => console.log(JSON.stringify(r)),
  });
  const ratio = densityRatio(records);
  const cpuRatio = densityRatio(records, 0.1, 1, true);
  const round = (v: number) => (Number.isFinite(v) ? +v.toFixed(3) : null);
  console.log(JSON.stringify({
    suite: "sc",
    summary: "median time at 10% density / at 100% (acceptance: <= 0.25); same for process CPU time",
    ratio: round(ratio),
    cpuRatio: round(cpuRatio),
    pass: Number.isFinite(ratio) ? ratio <= 0.25 : null,
    allCorrect: records.every((r) => r.correct),
  }));
}
