/**
 * SNL benchmark: SPAIR's SNL module (two sparse non-local steps joined by a sparse 1x1, with their fusion
 * convolutions), forward + backward, on 1x32x256x256 features at several mask densities, plus the same
 * module in dense (criss-cross) mode as the unmasked reference point. Each case is checked against a float64
 * CPU reference of one SNL step at sampled sites before timing.
 *
 * What the numbers mean. The attention work of a sparse step is the number of (degraded query, clean key in
 * its row or column) pairs, which for a random mask of density r is about r (1 - r) (H + W) H W: it peaks at
 * 50% and vanishes at 0% and at 100% (no clean key: the step's kernels exit at once). The 100% run
 * therefore measures only the module's fixed cost (the two dense 3x3 fusion convolutions, the 1x1, copies),
 * and the 90% run has the same pair count as the 10% run (r (1 - r) is symmetric) with nine times the
 * queries. The unmasked cost that SNL avoids is the dense mode, where all H W sites attend over their
 * H + W - 2 row/column neighbours. Each record's note gives the pair count; the acceptance check compares
 * the 10% run with the dense-mode run (the same module attending without the mask): it must take at most
 * 25% of it. The note of the 10% record also gives its ratios to the 90% and 100% runs.
 *
 * Run: `deno run -A bench/snl.ts [--repeats N] [--densities 0.01,0.1,...] [--dense false]` prints one JSON
 * line per record.
 *
 * @module
 */

import * as ops from "../mod.ts";
import { compactMask } from "../layers/sparse/active.ts";
import { SNLModule, snlStep } from "../layers/sparse/snl.ts";
import type { BenchRecord } from "./peers.ts";
import { randomUniform } from "./reference.ts";

// ---- float64 CPU reference of one SNL step (also used by tests/snl_test.ts) ----

/** A feature map, fusion logits and mask on the CPU ([N,C,H,W], [N,4,H,W], [N,1,H,W]; mask 1 = degraded). */
export interface SnlProblem {
  N: number;
  C: number;
  H: number;
  W: number;
  f: Float32Array;
  e: Float32Array;
  mask: Float32Array;
  dense: boolean;
}

/** Per-query quantities of the reference: scores, attention and fused output at one site. */
interface QueryRef {
  /** Image-local key sites per direction. */
  keys: number[][];
  /** Attention weights per direction. */
  attn: number[][];
  /** Fusion weights (0 for empty directions). */
  w: number[];
  /** g_d per direction (C values each; zeros when empty). */
  g: Float64Array[];
}

function isQuery(p: SnlProblem, site: number): boolean {
  return p.dense || p.mask[site] > 0.5;
}

function isKey(p: SnlProblem, site: number): boolean {
  return p.dense || p.mask[site] <= 0.5;
}

/** Image-local sites strictly on side d (0 left, 1 right, 2 up, 3 down) of (y, x) that are keys. */
function keysOf(p: SnlProblem, b: number, y: number, x: number, d: number): number[] {
  const out: number[] = [];
  const { H, W } = p;
  const push = (yy: number, xx: number) => {
    if (isKey(p, b * H * W + yy * W + xx)) out.push(yy * W + xx);
  };
  if (d === 0) { for (let xx = 0; xx < x; xx++) push(y, xx); }
  else if (d === 1) { for (let xx = x + 1; xx < W; xx++) push(y, xx); }
  else if (d === 2) { for (let yy = 0; yy < y; yy++) push(yy, x); }
  else for (let yy = y + 1; yy < H; yy++) push(yy, x);
  return out;
}

function feature(p: SnlProblem, data: Float32Array, b: number, s: number): Float64Array {
  const v = new Float64Array(p.C);
  for (let c = 0; c < p.C; c++) v[c] = data[(b * p.C + c) * p.H * p.W + s];
  return v;
}

function dotF(a: Float64Array, b: Float64Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

/** Attention and fusion of the query at image b, site s = y * W + x (float64). */
function queryRef(p: SnlProblem, b: number, s: number): QueryRef {
  const { C, H, W } = p;
  const y = Math.floor(s / W), x = s % W;
  const fp = feature(p, p.f, b, s);
  const tau = 1 / Math.sqrt(C);
  const keys: number[][] = [], attn: number[][] = [], g: Float64Array[] = [];
  const logits: number[] = [];
  for (let d = 0; d < 4; d++) {
    const ks = keysOf(p, b, y, x, d);
    const scores = ks.map((k) => tau * dotF(fp, feature(p, p.f, b, k)));
    const m = Math.max(...scores);
    const ex = scores.map((v) => Math.exp(v - m));
    const z = ex.reduce((a, v) => a + v, 0);
    const a = ex.map((v) => v / z);
    const gd = new Float64Array(C);
    ks.forEach((k, j) => {
      const fk = feature(p, p.f, b, k);
      for (let c = 0; c < C; c++) gd[c] += a[j] * fk[c];
    });
    keys.push(ks);
    attn.push(a);
    g.push(gd);
    logits.push(p.e[(b * 4 + d) * H * W + s]);
  }
  const valid = keys.map((k) => k.length > 0);
  const emax = Math.max(...logits.filter((_, d) => valid[d]));
  const ew = logits.map((v, d) => (valid[d] ? Math.exp(v - emax) : 0));
  const z = ew.reduce((a, v) => a + v, 0);
  return { keys, attn, g, w: ew.map((v) => (z > 0 ? v / z : 0)) };
}

/** Reference output F'[b, :, s] (C values) of one SNL step at image b, site s. */
export function snlForwardRefAt(p: SnlProblem, b: number, s: number): Float64Array {
  const out = feature(p, p.f, b, s);
  if (!isQuery(p, b * p.H * p.W + s)) return out;
  const q = queryRef(p, b, s);
  for (let d = 0; d < 4; d++) for (let c = 0; c < p.C; c++) out[c] += q.w[d] * q.g[d][c];
  return out;
}

/** The full reference output (float64), for small problems. */
export function snlForwardRef(p: SnlProblem): Float64Array {
  const { N, C, H, W } = p;
  const out = new Float64Array(N * C * H * W);
  for (let b = 0; b < N; b++) {
    for (let s = 0; s < H * W; s++) {
      const v = snlForwardRefAt(p, b, s);
      for (let c = 0; c < C; c++) out[(b * C + c) * H * W + s] = v[c];
    }
  }
  return out;
}

/** Gradient quantities of query (b, s) for upstream gradient `dOut`: dE at the site, D_d = w_d <dh, g_d>. */
function queryGrad(p: SnlProblem, q: QueryRef, dOut: Float32Array, b: number, s: number) {
  const dh = feature(p, dOut, b, s);
  const raw = q.g.map((gd) => dotF(dh, gd));
  const mix = raw.reduce((a, v, d) => a + q.w[d] * v, 0);
  return { dh, dE: raw.map((v, d) => q.w[d] * (v - mix)), D: raw.map((v, d) => q.w[d] * v) };
}

/**
 * Reference gradients at image b, site s, for `loss = sum(F' * dOut)`: dL/dF[b, :, s] (C values) and
 * dL/dE[b, :, s] (4 values), float64. Cost: the site's own row and column attention plus, when the site is
 * a key, the attention of every query in its row and column.
 */
export function snlGradRefAt(
  p: SnlProblem,
  dOut: Float32Array,
  b: number,
  s: number,
): { dF: Float64Array; dE: number[] } {
  const { C, H, W } = p;
  const tau = 1 / Math.sqrt(C);
  const dF = feature(p, dOut, b, s);
  let dE = [0, 0, 0, 0];
  const fs = feature(p, p.f, b, s);
  if (isQuery(p, b * H * W + s)) {
    const q = queryRef(p, b, s);
    const gq = queryGrad(p, q, dOut, b, s);
    dE = gq.dE;
    for (let d = 0; d < 4; d++) {
      q.keys[d].forEach((k, j) => {
        const fk = feature(p, p.f, b, k);
        const ds = q.attn[d][j] * (q.w[d] * dotF(gq.dh, fk) - gq.D[d]);
        for (let c = 0; c < C; c++) dF[c] += tau * ds * fk[c];
      });
    }
  }
  if (isKey(p, b * H * W + s)) {
    const y = Math.floor(s / W), x = s % W;
    const others: number[] = [];
    for (let xx = 0; xx < W; xx++) if (xx !== x) others.push(y * W + xx);
    for (let yy = 0; yy < H; yy++) if (yy !== y) others.push(yy * W + x);
    for (const t of others) {
      if (!isQuery(p, b * H * W + t)) continue;
      const q = queryRef(p, b, t);
      const gq = queryGrad(p, q, dOut, b, t);
      for (let d = 0; d < 4; d++) {
        const j = q.keys[d].indexOf(s);
        if (j < 0) continue;
        const a = q.attn[d][j];
        const fq = feature(p, p.f, b, t);
        const ds = a * (q.w[d] * dotF(gq.dh, fs) - gq.D[d]);
        for (let c = 0; c < C; c++) dF[c] += tau * ds * fq[c] + a * q.w[d] * gq.dh[c];
      }
    }
  }
  return { dF, dE };
}

// ---- benchmark ----

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/** Deterministic uniform numbers in [lo, hi) (mulberry32, the shared benchmark stream). */
export function seededArray(n: number, seed: number, lo = -1, hi = 1): Float32Array {
  return randomUniform(seed, n, lo, hi);
}

/** Number of (query, key) pairs of a problem: the attention work of one step. */
export function snlPairs(p: Pick<SnlProblem, "N" | "H" | "W" | "mask" | "dense">): number {
  const { N, H, W } = p;
  if (p.dense) return N * H * W * (H + W - 2);
  let pairs = 0;
  for (let b = 0; b < N; b++) {
    const rowClean = new Array(H).fill(0), colClean = new Array(W).fill(0);
    for (let y = 0; y < H; y++) {
      for (let x = 0; x < W; x++) {
        if (p.mask[b * H * W + y * W + x] <= 0.5) {
          rowClean[y]++;
          colClean[x]++;
        }
      }
    }
    for (let y = 0; y < H; y++) {
      for (let x = 0; x < W; x++) if (p.mask[b * H * W + y * W + x] > 0.5) pairs += rowClean[y] + colClean[x];
    }
  }
  return pairs;
}

/** Options of {@link benchSnl}. */
export interface BenchSnlOptions {
  /** Timed runs per case (default 3; the dense-mode case takes tens of seconds per run on llvmpipe). */
  repeats?: number;
  /** Untimed warm-up runs (default 1). */
  warmup?: number;
  /** Feature shape [N, C, H, W] (default [1, 32, 256, 256]). */
  shape?: [number, number, number, number];
  /** Also time the module in dense (criss-cross) mode (default true). */
  dense?: boolean;
  /** Sampled sites for the correctness check (default 24). */
  samples?: number;
  /** Densities run after `densities` (default [0.9]: the 100% run has no clean keys, see the module doc). */
  extraDensities?: number[];
}

/**
 * SNL module forward + backward (loss = sum(out * r)), median ms after warm-up, at each mask density, then
 * the dense-mode module. Each case is first checked: one sparse step's output and input/logit gradients at
 * sampled sites against the float64 reference (scale-relative error <= 1e-3 counts as correct).
 */
export async function benchSnl(
  densities = [0.01, 0.05, 0.1, 0.25, 0.5, 1],
  opts: BenchSnlOptions = {},
): Promise<BenchRecord[]> {
  await ops.initEngine();
  const e = ops.engine();
  const repeats = opts.repeats ?? 3;
  const warmup = opts.warmup ?? 1;
  const samples = opts.samples ?? 24;
  const [N, C, H, W] = opts.shape ?? [1, 32, 256, 256];
  const f = seededArray(N * C * H * W, 1);
  const r = seededArray(N * C * H * W, 2);
  const u = seededArray(N * H * W, 3, 0, 1);
  const x = ops.tensor(f, [N, C, H, W]);
  x.requiresGrad = true;
  const rt = ops.tensor(r, [N, C, H, W]);
  interface Case {
    density: number;
    dense: boolean;
    problem: SnlProblem;
    times: number[];
    maxRelError: number;
    error?: string;
    run?: () => Promise<void>;
    release?: () => void;
  }
  const cases: Case[] = [...densities, ...(opts.extraDensities ?? [0.9])].map((density) => ({
    density,
    dense: false,
  })).concat(opts.dense ?? true ? [{ density: 1, dense: true }] : []).map(({ density, dense }) => ({
    density,
    dense,
    problem: {
      N,
      C,
      H,
      W,
      f,
      e: seededArray(N * 4 * H * W, 4),
      mask: u.map((v) => (v < density ? 1 : 0)),
      dense,
    },
    times: [],
    maxRelError: NaN,
  }));
  // Check and warm up every case, then time them round-robin so that load from other processes on a
  // shared machine spreads over all cases alike.
  for (const c of cases) {
    try {
      c.maxRelError = await checkStep(c.problem, r, samples);
      const m = ops.tensor(c.problem.mask, [N, 1, H, W]);
      const sites = compactMask(m);
      const module = new SNLModule(C, new ops.Rng(5), c.dense ? "dense" : "sparse");
      c.run = async () => {
        ops.tidy(() => ops.backward(ops.sum(ops.mul(module.forward(x, sites), rt))));
        for (const p of [x, ...module.parameters()]) {
          p.grad?.dispose();
          p.grad = null;
        }
        await e.sync();
      };
      c.release = () => {
        ops.dispose([m, ...module.parameters()]);
        sites.dispose();
      };
      for (let i = 0; i < warmup; i++) await c.run();
    } catch (err) {
      c.error = err instanceof Error ? err.message : String(err);
    }
  }
  for (let i = 0; i < repeats; i++) {
    for (const c of cases) {
      if (!c.run || c.error) continue;
      try {
        const t0 = performance.now();
        await c.run();
        c.times.push(performance.now() - t0);
      } catch (err) {
        c.error = err instanceof Error ? err.message : String(err);
      }
    }
  }
  const records: BenchRecord[] = cases.map((c) => {
    c.release?.();
    const times = c.error || c.times.length === 0 ? [NaN] : c.times;
    const active = c.problem.mask.reduce((a, v) => a + v, 0);
    const note = c.error
      ? `failed: ${c.error}`
      : `pairs per step ${snlPairs(c.problem)}; active ${active} of ` +
        `${
          N * H * W
        }; gflops not defined for this suite; ${repeats} runs (round-robin over the cases) after ` +
        `${warmup} warm-up; check: one step, ${samples} sampled sites`;
    return {
      suite: "snl",
      engine: "spair-gpu",
      adapter: e.adapterDescription,
      op: c.dense ? "snl_module_dense_fwd_bwd" : "snl_module_fwd_bwd",
      shape: `N${N} C${C} ${H}x${W} ${c.dense ? "dense" : `density ${c.density}`}`,
      medianMs: +median(times).toFixed(2),
      minMs: +Math.min(...times).toFixed(2),
      maxMs: +Math.max(...times).toFixed(2),
      gflops: NaN,
      correct: !c.error && c.maxRelError <= 1e-3,
      maxRelError: c.maxRelError,
      note,
    };
  });
  ops.dispose([x, rt]);
  acceptance(records);
  return records;
}

/**
 * Adds the acceptance comparison to the notes: the 10% run against the dense-mode run (the cost of the
 * same attention without the mask; bar: at most 25%) and, for reference, against the 90% and 100% runs.
 */
function acceptance(records: BenchRecord[]): void {
  const sparse = (d: number) =>
    records.find((r) => r.op === "snl_module_fwd_bwd" && r.shape.endsWith(`density ${d}`));
  const ten = sparse(0.1);
  const dense = records.find((r) => r.op === "snl_module_dense_fwd_bwd");
  if (!ten) return;
  const parts: string[] = [];
  if (dense) {
    const ratio = ten.medianMs / dense.medianMs;
    parts.push(`t(10%)/t(dense) = ${ratio.toFixed(3)} (bar <= 0.25: ${ratio <= 0.25 ? "met" : "NOT met"})`);
  }
  for (const d of [0.9, 1]) {
    const r = sparse(d);
    if (r) parts.push(`t(10%)/t(${d * 100}%) = ${(ten.medianMs / r.medianMs).toFixed(3)}`);
  }
  ten.note += `; acceptance: ${parts.join(", ")}`;
}

/** Scale-relative max error of one step's output and gradients at sampled sites (float64 reference). */
async function checkStep(p: SnlProblem, r: Float32Array, samples: number): Promise<number> {
  const { N, C, H, W } = p;
  const m = ops.tensor(p.mask, [N, 1, H, W]);
  const sites = compactMask(m);
  const x = ops.tensor(p.f, [N, C, H, W]);
  const le = ops.tensor(p.e, [N, 4, H, W]);
  x.requiresGrad = true;
  le.requiresGrad = true;
  const out = ops.tidy(() => {
    const y = snlStep(x, le, sites, p.dense ? "dense" : "sparse");
    ops.backward(ops.sum(ops.mul(y, ops.tensor(r, y.shape))));
    return y;
  });
  const [got, gx, ge] = [await out.data(), await x.grad!.data(), await le.grad!.data()];
  ops.dispose([m, x, le, out, x.grad, le.grad]);
  sites.dispose();
  // Sample degraded and clean sites alike (the same seeded choice every run).
  const pick = seededArray(samples, 7, 0, N * H * W);
  // Per tensor (output, grad f, grad E): max |error| / max |reference|; the worst of the three is returned.
  const err = [0, 0, 0], scale = [0, 0, 0];
  const cmp = (k: number, a: number, b: number) => {
    err[k] = Math.max(err[k], Math.abs(a - b));
    scale[k] = Math.max(scale[k], Math.abs(b));
  };
  for (const v of pick) {
    const g = Math.floor(v);
    const b = Math.floor(g / (H * W)), s = g % (H * W);
    const want = snlForwardRefAt(p, b, s);
    const grad = snlGradRefAt(p, r, b, s);
    for (let c = 0; c < C; c++) {
      cmp(0, got[(b * C + c) * H * W + s], want[c]);
      cmp(1, gx[(b * C + c) * H * W + s], grad.dF[c]);
    }
    for (let d = 0; d < 4; d++) cmp(2, ge[(b * 4 + d) * H * W + s], grad.dE[d]);
  }
  return Math.max(...err.map((e, k) => (scale[k] === 0 ? e : e / scale[k])));
}

if (import.meta.main) {
  if (!Deno.env.get("XDG_RUNTIME_DIR")) Deno.env.set("XDG_RUNTIME_DIR", "/tmp");
  const arg = (name: string) => {
    const i = Deno.args.indexOf(name);
    return i >= 0 ? Deno.args[i + 1] : undefined;
  };
  const repeats = Number(arg("--repeats") ?? 3);
  const densities = arg("--densities")?.split(",").map(Number);
  const dense = arg("--dense") !== "false";
  for (const rec of await benchSnl(densities, { repeats, dense })) console.log(JSON.stringify(rec));
}
