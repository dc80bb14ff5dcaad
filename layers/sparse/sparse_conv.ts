/**
 * SC, SPAIR's sparse convolution (paper eq. 2; SPAIR.md section 2), and the SC module that replaces the
 * dense block in every decoder level of NetR.
 *
 * {@link sparseConv2d} is a submanifold sparse convolution over the active sites of a mask:
 * `out_p = M_p * (b + sum_{p'} K_{p'} F_{p+p'} M_{p+p'})`, kernel 3x3 (padding 1) or 1x1. Tensors stay
 * dense NCHW, but kernels (`wgsl/sparse_conv.ts`) visit only the compacted active-site list, so the work
 * follows the number of degraded sites; the output is cleared densely (a store-only fill) and written at
 * active sites. Clean sites' inputs are never read.
 *
 * {@link SCModule} is 6 densely connected sparse 3x3 convolutions with ReLU (layer i sees the input
 * concatenated with all previous outputs), a sparse 1x1 back to the input width, and a residual. It runs as
 * one fused op: every layer reads and writes channel slices of one dense-block buffer in place (no concat
 * copies), and its hand-written backward accumulates input gradients into one gradient buffer at active
 * sites only. Both buffers are compact (rows of active-list entries, not NCHW maps), so their features stay
 * together in memory at any density; only the input, output and their gradients are dense. It computes the
 * same function as the composition of {@link sparseConv2d}, ReLU, concat and add (tests compare the two,
 * forward and gradients).
 *
 * @module
 */

import { engine, type FloatRange } from "../../engine/device.ts";
import { noGrad, record } from "../../engine/autograd.ts";
import { Tensor } from "../../engine/tensor.ts";
import { zeros } from "../../engine/ops/elementwise.ts";
import { PACK_WEIGHT_KEY, packWeightBatch, packWeightStep } from "../../wgsl/conv2d.ts";
import { Module, uniformInit } from "../../engine/module.ts";
import { fusionEnabled } from "../../engine/fusion.ts";
import type { Rng } from "../../engine/random.ts";
import {
  type ChannelSlice,
  neighbourBitsStep,
  neighbourEntriesStep,
  reluGateStep,
  siteCopyStep,
  siteGemmPlan as buildSiteGemmPlan,
  type SiteGemmSpec,
  sparseWeightGradPlan as buildWeightGradPlan,
  weightCols,
} from "../../wgsl/sparse_conv.ts";
import { type KernelPlan, type KernelStep, memoizePlans } from "../../wgsl/plan.ts";
import type { ActiveSites } from "./active.ts";

// Plans by spec, built once: their WGSL is long, and building it per call cost ~10 ms of host time per tiny
// NetR training step.
const siteGemmPlan = memoizePlans(buildSiteGemmPlan);
const sparseWeightGradPlan = memoizePlans(buildWeightGradPlan);

/**
 * Largest dense block (floats: channels x list capacity) that CPU adapters keep in channel quads and read
 * through textures (`ChannelSlice.quad`): 32 MiB (the 128-channel block at 256x256). On llvmpipe a texel load
 * moves 4 channels of an entry for about a third of one storage load's cost, and the copies into textures cost
 * about 0.35 ms per 8 MB; but new texture memory costs page faults (about 35 ms per 12 MB), and larger copies
 * crowd the engine's texture pool, which at 512x512 is already full of the convolutions' operands: with a 128
 * MiB limit NetR small's forward at 512 made the block's texture anew every run (2.3-2.9 instead of 2.0-2.5
 * s). With 64 MiB one model-suite pair (tiny, then small, in one process) read NetR tiny and small at 512 at
 * 955 and 2,437 ms against the session start's 835 and 2,053, but such pairs vary by 20% either way; the
 * limit is kept at the 256x256 benchmark's block, where the gain is measured.
 */
const SC_TEXTURE_MAX_FLOATS = 1 << 23;

/** Number of densely connected 3x3 layers in an SC module (SPAIR.md section 2). */
export const SC_LAYERS = 6;

function run(
  plan: KernelPlan,
  buffers: Record<string, { buffer: GPUBuffer }>,
  sizes?: Record<string, number | FloatRange>,
): void {
  const bound: Record<string, GPUBuffer> = {};
  for (const [name, t] of Object.entries(buffers)) bound[name] = t.buffer;
  engine().runPlan(plan, bound, sizes);
}

/**
 * Plans recorded as one engine plan, their buffer and scratch names made unique per part: the engine then
 * copies a buffer that several steps read as a texture once, and after a step that writes a declared range
 * of it only that range again (see `KernelStep.writeRanges`), where separate plans copied it whole each time. Nothing is recorded before {@link run}, so the tensors
 * the parts bind must stay alive until then.
 */
class PlanBatch {
  #steps: KernelStep[] = [];
  #scratch: Record<string, number> = {};
  #bound: Record<string, GPUBuffer> = {};
  #sizes: Record<string, number | FloatRange> = {};
  #parts = 0;

  add(
    plan: KernelPlan,
    buffers: Record<string, { buffer: GPUBuffer }>,
    sizes: Record<string, number | FloatRange> = {},
  ): void {
    const part = this.#parts++;
    const name = (n: string) => `${n}.${part}`;
    for (const [n, t] of Object.entries(buffers)) this.#bound[name(n)] = t.buffer;
    for (const [n, floats] of Object.entries(plan.scratch)) this.#scratch[name(n)] = floats;
    for (const [n, floats] of Object.entries(sizes)) this.#sizes[name(n)] = floats;
    for (const step of plan.steps) {
      if (step.ranges) throw new Error("PlanBatch: steps with buffer ranges are not supported");
      this.#steps.push({
        ...step,
        buffers: step.buffers.map(name),
        writes: step.writes.map(name),
        ...(step.textures ? { textures: step.textures.map(name) } : {}),
        ...(step.writeRanges
          ? {
            writeRanges: Object.fromEntries(Object.entries(step.writeRanges).map(([n, r]) => [name(n), r])),
          }
          : {}),
      });
    }
  }

  run(): void {
    engine().runPlan({ outSize: 0, scratch: this.#scratch, steps: this.#steps }, this.#bound, this.#sizes);
  }
}

/** The site buffers the kernels read: list, counts and (k = 3) neighbour bits. */
function siteBuffers(indices: Tensor, counts: Tensor, nbits?: Tensor): Record<string, Tensor> {
  return nbits ? { indices, counts, nbits } : { indices, counts };
}

function siteStep(sites: ActiveSites, step: KernelStep, out: Tensor): void {
  engine().runPlan({ outSize: out.size, scratch: {}, steps: [step] }, {
    counts: sites.counts.buffer,
    indices: sites.indices.buffer,
    rank: sites.rank.buffer,
    out: out.buffer,
  });
}

/** Neighbour-activity bits of every active site (u32 per list entry; see `neighbourBitsStep`). */
function neighbourBits(sites: ActiveSites): Tensor {
  const nbits = Tensor.empty([sites.capacity]);
  siteStep(
    sites,
    neighbourBitsStep({ N: sites.n, H: sites.h, W: sites.w, cap: sites.capacity, serial: serialRounds() }),
    nbits,
  );
  return nbits;
}

/** List entries of every active site's 3x3 neighbours (u32 [9, capacity]; see `neighbourEntriesStep`). */
function neighbourEntries(sites: ActiveSites): Tensor {
  const nbr = Tensor.empty([9, sites.capacity]);
  siteStep(
    sites,
    neighbourEntriesStep({ N: sites.n, H: sites.h, W: sites.w, cap: sites.capacity, serial: serialRounds() }),
    nbr,
  );
  return nbr;
}

function checkSites(op: string, x: Tensor, sites: ActiveSites): void {
  if (x.rank !== 4 || x.shape[0] !== sites.n || x.shape[2] !== sites.h || x.shape[3] !== sites.w) {
    throw new Error(
      `${op}: input [${x.shape}] does not match the active sites' mask [${sites.mask.shape}]`,
    );
  }
}

function kernelSize(op: string, w: Tensor, cin: number, bias: Tensor | null): 1 | 3 {
  const [cout, wcin, kh, kw] = w.shape;
  if (w.rank !== 4 || wcin !== cin || kh !== kw || (kh !== 1 && kh !== 3)) {
    throw new Error(`${op}: weight [${w.shape}] must be [Cout, ${cin}, k, k] with k = 1 or 3`);
  }
  if (bias && (bias.rank !== 1 || bias.shape[0] !== cout)) {
    throw new Error(`${op}: bias [${bias.shape}] must be [${cout}]`);
  }
  return kh as 1 | 3;
}

/** Weights in the `[K][taps][cols]` layout of the site kernels: forward (`[Cin][k][k][Cout]`) or input
 * gradient (`[Cout][k][k][Cin]`, taps mirrored by the kernel), the last axis zero-padded to
 * {@link weightCols}; one dispatch (not a permute and a pad). */
function weightLayout(w: Tensor, forInputGrad: boolean): { buffer: GPUBuffer; dispose(): void } {
  const [Cout, Cin, kh, kw] = w.shape;
  const taps = kh * kw;
  const [K, cols, kStride, colStride] = forInputGrad
    ? [Cout, Cin, Cin * taps, taps]
    : [Cin, Cout, taps, Cin * taps];
  const padded = weightCols(cols);
  const step = packWeightStep("out", K, cols, taps, kStride, colStride, false, padded);
  const floats = K * taps * padded;
  const e = engine();
  // Kept until the weights change, and repacked with the others after an optimizer step (as a dense
  // convolution's packed weights are).
  const kept = e.derivedBuffer(
    w.buffer,
    `${PACK_WEIGHT_KEY}:${new Int32Array(step.uniforms).join(",")}`,
    floats,
    (target) => e.runPlan({ outSize: floats, scratch: {}, steps: [step] }, { w: w.buffer, out: target }),
    { step, batch: packWeightBatch },
  );
  if (kept) return { buffer: kept, dispose: () => {} };
  const out = Tensor.empty([K, kh, kw, padded]);
  e.runPlan({ outSize: out.size, scratch: {}, steps: [step] }, { w: w.buffer, out: out.buffer });
  return out;
}

type Geometry = { N: number; H: number; W: number; k: 1 | 3; cap: number };

/** CPU adapters (the engine prefers texture reads there) run the site kernels in rounds (`siteRounds`). */
const serialRounds = () => engine().readsViaTextures;

function gemmSpec(g: Geometry, o: Partial<SiteGemmSpec> & Pick<SiteGemmSpec, "K" | "cols" | "src" | "dst">) {
  return {
    ...g,
    flip: false,
    bias: false,
    relu: false,
    accumulate: false,
    srcIsOut: false,
    serial: serialRounds(),
    ...o,
  };
}

/**
 * Weight and bias gradients of a sparse conv (both fully written). The bias gradient is always computed (a
 * few adds per site; one kernel variant) and disposed when `withBias` is false.
 */
function weightGrads(
  g: Geometry,
  site: Record<string, Tensor>,
  x: Tensor,
  xSlice: ChannelSlice,
  dy: Tensor,
  dySlice: ChannelSlice,
  wShape: readonly number[],
  withBias: boolean,
  sizes?: Record<string, number | FloatRange>,
  batch?: PlanBatch,
): { dw: Tensor; db: Tensor | null } {
  const [Cout, Cin] = wShape;
  const dw = Tensor.empty(wShape);
  const db = Tensor.empty([Cout]);
  const plan = sparseWeightGradPlan({
    ...g,
    Cin,
    Cout,
    x: xSlice,
    dy: dySlice,
    bias: true,
    serial: serialRounds(),
  });
  if (batch) {
    if (!withBias) throw new Error("weightGrads: a batched run keeps the bias gradient");
    batch.add(plan, { ...site, x, dy, out: dw, dbias: db }, sizes);
  } else run(plan, { ...site, x, dy, out: dw, dbias: db }, sizes);
  if (withBias) return { dw, db };
  db.dispose();
  return { dw, db: null };
}

/** Options of {@link sparseConv2d}. */
export interface SparseConv2dOptions {
  /** Add the input to the output: `x + sparseConv2d(x)` (`x` itself at clean sites, bit for bit) in one op;
   * needs Cout = Cin (default false). */
  residual?: boolean;
}

/**
 * Submanifold sparse convolution (SPAIR's SC): `out_p = M_p * (b + sum_t K_t x_{p+d_t} M_{p+d_t})`.
 *
 * Computed over the active sites of `sites` only; the output is exactly 0 at clean sites, and clean sites'
 * inputs are never read, so the result equals `M * conv2d(x * M, weight, padding (k-1)/2)` plus the bias at
 * active sites. Differentiable with respect to `x` (its gradient is 0 at clean sites), `weight` and `bias`.
 *
 * @param x features [N, Cin, H, W]
 * @param sites active sites of the mask [N, 1, H, W] (from `compactMask`); the op keeps its own handles to
 *   the site buffers for its backward, so `sites` may be disposed right after the call
 * @param weight [Cout, Cin, k, k] with k = 1 or 3 (padding (k - 1) / 2, stride 1, dilation 1)
 * @param bias [Cout] or null
 * @param options `residual`: add `x` to the output (see {@link SparseConv2dOptions})
 * @returns [N, Cout, H, W]
 *
 * ```ts
 * import { compactMask, initEngine, sparseConv2d, tensor } from "@spair/spair-gpu";
 * await initEngine();
 * const x = tensor(new Float32Array(1 * 4 * 8 * 8).fill(1), [1, 4, 8, 8]);
 * const maskData = new Float32Array(64);
 * maskData.fill(1, 0, 16); // top two rows degraded
 * const sites = compactMask(tensor(maskData, [1, 1, 8, 8]));
 * const w = tensor(new Float32Array(6 * 4 * 3 * 3).fill(0.1), [6, 4, 3, 3]);
 * const y = sparseConv2d(x, sites, w, null); // [1, 6, 8, 8], zero outside the top two rows
 * sites.dispose();
 * ```
 */
export function sparseConv2d(
  x: Tensor,
  sites: ActiveSites,
  weight: Tensor,
  bias: Tensor | null,
  options: SparseConv2dOptions = {},
): Tensor {
  checkSites("sparseConv2d", x, sites);
  const [N, Cin, H, W] = x.shape;
  const k = kernelSize("sparseConv2d", weight, Cin, bias);
  const Cout = weight.shape[0];
  const residual = options.residual ?? false;
  if (residual && Cout !== Cin) {
    throw new Error(`sparseConv2d: a residual needs as many output channels as input (${Cout} vs ${Cin})`);
  }
  const geo: Geometry = { N, H, W, k, cap: sites.capacity };
  const e = engine();
  const nbits = k === 3 ? e.op("sparseConv2d", () => neighbourBits(sites)) : undefined;
  const site = siteBuffers(sites.indices, sites.counts, nbits);
  const y = e.op("sparseConv2d", () => {
    // With the residual, the output starts as a copy of x and the active sites' results are added to it.
    const out = residual ? Tensor.empty(x.shape) : zeros([N, Cout, H, W]);
    if (residual) e.copy(x.buffer, 0, out.buffer, 0, x.size * 4);
    const wt = weightLayout(weight, false);
    const spec = gemmSpec(geo, {
      K: Cin,
      cols: Cout,
      src: { channels: Cin, offset: 0 },
      dst: { channels: Cout, offset: 0 },
      bias: !!bias,
      accumulate: residual,
    });
    run(siteGemmPlan(spec), { ...site, src: x, wt, out, ...(bias ? { bias } : {}) });
    wt.dispose();
    return out;
  });
  const inputs = bias ? [x, weight, bias] : [x, weight];
  const result = record(
    "sparseConv2d",
    inputs,
    y,
    (g, [sx, sw, indices, counts, bits]) =>
      e.op("sparseConv2d backward", () => {
        const s = siteBuffers(indices, counts, bits);
        let dx: Tensor | null = null;
        if (x.requiresGrad) {
          // The residual passes g on everywhere; the convolution's gradient adds at active sites.
          dx = residual ? Tensor.empty(x.shape) : zeros(x.shape);
          if (residual) e.copy(g.buffer, 0, dx.buffer, 0, g.size * 4);
          const wt = weightLayout(sw, true);
          const spec = gemmSpec(geo, {
            K: Cout,
            cols: Cin,
            src: { channels: Cout, offset: 0 },
            dst: { channels: Cin, offset: 0 },
            flip: true,
            accumulate: residual,
          });
          run(siteGemmPlan(spec), { ...s, src: g, wt, out: dx });
          wt.dispose();
        }
        let dw: Tensor | null = null, db: Tensor | null = null;
        if (weight.requiresGrad || bias?.requiresGrad) {
          const whole = (c: number) => ({ channels: c, offset: 0 });
          ({ dw, db } = weightGrads(geo, s, sx, whole(Cin), g, whole(Cout), weight.shape, !!bias));
          if (!weight.requiresGrad) {
            dw.dispose();
            dw = null;
          }
        }
        return bias ? [dx, dw, db] : [dx, dw];
      }),
    [x, weight, sites.indices, sites.counts, ...(nbits ? [nbits] : [])],
  );
  nbits?.dispose();
  return result;
}

/**
 * The SC module as one fused, differentiable op: `x + fuse(concat(x, y_0..y_5))` at active sites, `x`
 * elsewhere, with `y_i = relu(sparseConv3x3_i(concat(x, y_0..y_{i-1})))`. `weights`/`biases` hold the six
 * 3x3 layers then the 1x1 fuse. Clean sites of the output are `x` itself (bit-identical).
 */
export function scModule(x: Tensor, sites: ActiveSites, weights: Tensor[], biases: Tensor[]): Tensor {
  checkSites("scModule", x, sites);
  const [N, C, H, W] = x.shape;
  if (weights.length !== SC_LAYERS + 1 || biases.length !== SC_LAYERS + 1) {
    throw new Error(`scModule: expected ${SC_LAYERS + 1} weights and biases`);
  }
  const growth = weights[0].shape[0];
  const Ct = C + SC_LAYERS * growth;
  weights.forEach((w, i) => {
    const cin = i < SC_LAYERS ? C + i * growth : Ct;
    const k = kernelSize("scModule", w, cin, biases[i]);
    const cout = i < SC_LAYERS ? growth : C;
    if (k !== (i < SC_LAYERS ? 3 : 1) || w.shape[0] !== cout) {
      throw new Error(
        `scModule: layer ${i} weight [${w.shape}] should be [${cout}, ${cin}, ${i < SC_LAYERS ? 3 : 1}, ...]`,
      );
    }
  });
  const g3: Geometry = { N, H, W, k: 3, cap: sites.capacity };
  const g1: Geometry = { N, H, W, k: 1, cap: sites.capacity };
  const e = engine();
  const nbr = e.op("scModule", () => neighbourEntries(sites));
  const site = { indices: sites.indices, counts: sites.counts, nbr };
  const geometry = { N, H, W, cap: sites.capacity, serial: serialRounds() };
  const whole = (channels: number): ChannelSlice => ({ channels, offset: 0 });
  // CPU adapters keep the block and its gradient in channel quads and read them through textures (see
  // SC_TEXTURE_MAX_FLOATS); a texture copy covers the channels a kernel reads, [0, c): the first c x cap values.
  const cap = sites.capacity;
  const quad = serialRounds() && C % 4 === 0 && growth % 4 === 0 && Ct * cap <= SC_TEXTURE_MAX_FLOATS;
  const upTo = (name: string, channels: number) => (quad ? { [name]: channels * cap } : undefined);
  // Channels from `offset` of F or dF, the dense block and its gradient, kept compact: C + 6g rows of list
  // entries, so the features of active sites sit together at any density.
  const rows = (offset: number): ChannelSlice => ({
    channels: Ct,
    offset,
    compact: true,
    ...(quad ? { quad } : {}),
  });
  // F = concat(x, y_0..y_5), written in place at active list entries (entries past the count are never read).
  const { out, block } = e.op("scModule", () =>
    noGrad(() => {
      const block = Tensor.empty([Ct, sites.capacity]);
      // One plan: on the quad path the block's texture copy then grows by each layer's new rows only.
      const batch = new PlanBatch();
      const later: { dispose(): void }[] = [];
      batch.add(
        { outSize: 0, scratch: {}, steps: [siteCopyStep(geometry, whole(C), rows(0), C)] },
        { ...site, src: x, out: block },
      );
      for (let i = 0; i < SC_LAYERS; i++) {
        const wt = weightLayout(weights[i], false);
        const spec = gemmSpec(g3, {
          K: C + i * growth,
          cols: growth,
          src: rows(0),
          dst: rows(C + i * growth),
          bias: true,
          relu: true,
          srcIsOut: true,
        });
        const src: Record<string, Tensor> = quad ? { src: block } : {};
        batch.add(
          siteGemmPlan(spec),
          { ...site, ...src, wt, bias: biases[i], out: block },
          upTo("src", spec.K),
        );
        later.push(wt);
      }
      // The output is x (a buffer copy), plus the fuse's result added at active sites.
      const out = Tensor.empty(x.shape);
      e.copy(x.buffer, 0, out.buffer, 0, x.size * 4);
      const wt = weightLayout(weights[SC_LAYERS], false);
      const spec = gemmSpec(g1, {
        K: Ct,
        cols: C,
        src: rows(0),
        dst: whole(C),
        bias: true,
        accumulate: true,
      });
      batch.add(
        siteGemmPlan(spec),
        { ...site, src: block, wt, bias: biases[SC_LAYERS], out },
        upTo("src", Ct),
      );
      later.push(wt);
      batch.run();
      for (const t of later) t.dispose();
      return { out, block };
    }));
  const inputs = [x];
  for (let i = 0; i <= SC_LAYERS; i++) inputs.push(weights[i], biases[i]);
  const result = record("scModule", inputs, out, (g, saved) =>
    e.op("scModule backward", () => {
      const [F, indices, counts, neighbours, ...ws] = saved;
      const s = { indices, counts, nbr: neighbours };
      const grads: (Tensor | null)[] = new Array(inputs.length).fill(null);
      const wantParams = (i: number) => weights[i].requiresGrad || biases[i].requiresGrad;
      // One plan for the whole backward (texture copies shared: F once, dF once per layer); what its steps
      // bind is released after it is recorded.
      const batch = new PlanBatch();
      const later: { dispose(): void }[] = [];
      const keepGrads = (i: number, dw: Tensor, db: Tensor | null) => {
        grads[1 + 2 * i] = weights[i].requiresGrad ? dw : (later.push(dw), null);
        grads[2 + 2 * i] = biases[i].requiresGrad ? db : (db && later.push(db), null);
      };
      const pass = (step: KernelStep, buffers: Record<string, Tensor>) =>
        batch.add({ outSize: 0, scratch: {}, steps: [step] }, buffers);
      // The weight gradients read all of F (one texture copy for all of them).
      const wholeF = upTo("x", Ct);
      // dF, the gradient w.r.t. the block (compact like F): rows < C start as the residual's gradient g, the
      // others at 0; every sparse layer adds its input gradient there.
      const dF = Tensor.empty([Ct, sites.capacity]);
      pass(siteCopyStep(geometry, whole(C), rows(0), C, Ct - C), { ...s, src: g, out: dF });
      // The quad path reads g at the active sites from dF's first C rows (texels), where it was just copied,
      // instead of from the dense g (a storage load per value).
      const gRows = quad ? { tensor: dF, slice: rows(0), size: [0, C * cap] as FloatRange } : null;
      if (wantParams(SC_LAYERS)) {
        const shape = weights[SC_LAYERS].shape;
        const { dw, db } = gRows
          ? weightGrads(g1, s, F, rows(0), dF, gRows.slice, shape, true, { ...wholeF, dy: gRows.size }, batch)
          : weightGrads(g1, s, F, rows(0), g, whole(C), shape, true, wholeF, batch);
        keepGrads(SC_LAYERS, dw, db);
      }
      // Layer i's ReLU backward zeroes its own rows of dF where its output is 0, once every gradient has
      // arrived there: fused, by the input gradient that writes them last (the 1x1's for the top layer, layer
      // i + 1's below it); unfused, by a pass of its own.
      const fused = fusionEnabled();
      const gateOf = (i: number) => (fused ? { gate: { lo: C + i * growth, hi: C + (i + 1) * growth } } : {});
      const gateBuffer: Record<string, Tensor> = fused ? { gate: F } : {};
      {
        const wt = weightLayout(ws[SC_LAYERS], true);
        const spec = gemmSpec(g1, {
          K: C,
          cols: Ct,
          src: gRows ? gRows.slice : whole(C),
          dst: rows(0),
          flip: true,
          accumulate: true,
          ...gateOf(SC_LAYERS - 1),
        });
        const sizes: Record<string, FloatRange> = gRows ? { src: gRows.size } : {};
        batch.add(siteGemmPlan(spec), { ...s, src: gRows ? dF : g, wt, out: dF, ...gateBuffer }, sizes);
        later.push(wt);
      }
      for (let i = SC_LAYERS - 1; i >= 0; i--) {
        const own = rows(C + i * growth);
        if (!fused) pass(reluGateStep(geometry, own, growth), { ...s, y: F, out: dF });
        // Layer i's weight and input gradients read its own rows of dF: one copy of them for both.
        const dFSize: FloatRange = [(C + i * growth) * cap, (C + (i + 1) * growth) * cap];
        if (wantParams(i)) {
          const sizes = quad ? { ...wholeF, dy: dFSize } : undefined;
          const { dw, db } = weightGrads(g3, s, F, rows(0), dF, own, weights[i].shape, true, sizes, batch);
          keepGrads(i, dw, db);
        }
        if (i > 0 || x.requiresGrad) {
          const wt = weightLayout(ws[i], true);
          const spec = gemmSpec(g3, {
            K: growth,
            cols: C + i * growth,
            src: own,
            dst: rows(0),
            flip: true,
            accumulate: true,
            srcIsOut: true,
            ...(i > 0 ? gateOf(i - 1) : {}),
          });
          const src: Record<string, Tensor> = quad ? { src: dF } : {};
          batch.add(
            siteGemmPlan(spec),
            { ...s, ...src, wt, out: dF, ...(i > 0 ? gateBuffer : {}) },
            quad ? { src: dFSize } : {},
          );
          later.push(wt);
        }
      }
      if (x.requiresGrad) {
        // dx = g at clean sites (the residual), dF's first C rows at active sites.
        const dx = Tensor.empty(x.shape);
        e.copy(g.buffer, 0, dx.buffer, 0, x.size * 4);
        pass(siteCopyStep(geometry, rows(0), whole(C), C), { ...s, src: dF, out: dx });
        grads[0] = dx;
      }
      batch.run();
      for (const t of later) t.dispose();
      dF.dispose();
      return grads;
    }), [block, sites.indices, sites.counts, nbr, ...weights]);
  block.dispose();
  nbr.dispose();
  return result;
}

/**
 * SPAIR's SC module (SPAIR.md section 2): six densely connected sparse 3x3 convolutions with ReLU, growth
 * `growth` channels each (layer i sees the input concatenated with all previous outputs), a sparse 1x1 back
 * to `channels`, added to the input. Parameters: `conv0.weight` [g, C, 3, 3], `conv0.bias` [g], ...,
 * `conv5.weight` [g, C + 5g, 3, 3], `fuse.weight` [C, C + 6g, 1, 1], `fuse.bias` [C], initialized like
 * PyTorch's `Conv2d` (uniform, bound 1/sqrt(fan_in)).
 *
 * Invariants: output equals the input exactly at clean sites; outputs at degraded sites ignore clean
 * sites' inputs.
 */
export class SCModule extends Module {
  /** The six 3x3 weights then the 1x1 fuse weight. */
  readonly weights: Tensor[] = [];
  /** The matching biases. */
  readonly biases: Tensor[] = [];

  /**
   * Creates the parameters with PyTorch's default `Conv2d` initialization.
   *
   * @param channels input and output width C
   * @param growth channels added by each 3x3 layer
   * @param rng initialization stream
   */
  constructor(readonly channels: number, readonly growth: number, rng: Rng) {
    super();
    for (let i = 0; i <= SC_LAYERS; i++) {
      const fuse = i === SC_LAYERS;
      const cin = channels + i * growth;
      const k = fuse ? 1 : 3;
      const cout = fuse ? channels : growth;
      const name = fuse ? "fuse" : `conv${i}`;
      this.weights.push(this.param(`${name}.weight`, uniformInit([cout, cin, k, k], cin * k * k, rng)));
      this.biases.push(this.param(`${name}.bias`, uniformInit([cout], cin * k * k, rng)));
    }
  }

  /** Applies the module to `x` [N, channels, H, W] at the active sites `sites`. */
  forward(x: Tensor, sites: ActiveSites): Tensor {
    if (x.shape[1] !== this.channels) {
      throw new Error(`SCModule: input [${x.shape}] should have ${this.channels} channels`);
    }
    return scModule(x, sites, this.weights, this.biases);
  }
}
