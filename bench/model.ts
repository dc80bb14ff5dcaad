/**
 * The `model` and `train` suites: SPAIR's NetL and NetR (SPAIR variant) forward latency per preset and image
 * size, and one training step of each (NetL: BCE on the mask; NetR: L1 on the image; Adam) per preset.
 *
 * NetR runs on synthetic guidance: NetL's real features with a fixed block mask of a given density (default
 * 10%), because untrained NetL weights mark nearly every pixel degraded, which would time NetR's sparse
 * modules at 100% density instead of the sparse regime they are built for.
 *
 * Cost grows about 4x per size step (2x side) and per preset step (2x width), so each case's run time is
 * estimated from the previous one and cases over the {@link Budget} are skipped with the estimate recorded.
 *
 * @module
 */

import * as ops from "../mod.ts";
import type { Guidance, Preset } from "../layers/spair.ts";
import type { BenchRecord } from "./peers.ts";
import { measuredRecord } from "./kernels.ts";
import { Budget, type GpuTimer, measure } from "./timing.ts";
import { mulberry32, randomUniform } from "./reference.ts";

/**
 * Forward FLOPs of NetL and of NetR (the SPAIR variant) on an N x 3 x H x W batch, counted from the layer
 * shapes (docs/architecture.md): 2 x multiply-adds of every convolution and transposed convolution at its
 * output size; in the SC modules and the SNL modules' 1x1 convolution, only at the degraded sites (`density`
 * of each level's sites); the SNL attention as 8 x C x (H + W) per degraded site (two steps, each a score
 * and a weighted sum over the site's row and column). Element-wise ops, SFM, pooling and copies count 0.
 */
export function spairForwardFlops(
  preset: Preset,
  n: number,
  h: number,
  w: number,
  density: number,
): { netL: number; netR: number } {
  const { width: C, growth: G } = ops.PRESETS[preset];
  const px = [n * h * w, (n * h * w) / 4, (n * h * w) / 16];
  const conv = (cin: number, cout: number, k: number, pixels: number) => 2 * cin * cout * k * k * pixels;
  const dense = (c: number, g: number, pixels: number, layers = 4) => {
    let f = conv(c + layers * g, c, 1, pixels);
    for (let i = 0; i < layers; i++) f += conv(c + i * g, g, 3, pixels);
    return f;
  };
  const encoder = (c: number, g: number) =>
    conv(3, c, 3, px[0]) + dense(c, g, px[0]) + conv(c, 2 * c, 3, px[1]) + dense(2 * c, g, px[1]) +
    conv(2 * c, 4 * c, 3, px[2]) + dense(4 * c, g, px[2]);
  // 2x2 stride-2 transposed conv (cin -> cout at the finer level), then the 1x1 fusion of [up, skip].
  const join = (cin: number, cout: number, pixels: number) =>
    conv(cin, cout, 1, pixels) + conv(2 * cout, cout, 1, pixels);
  const c = C / 2, g = G / 2;
  const netL = encoder(c, g) + join(4 * c, 2 * c, px[1]) + dense(2 * c, g, px[1]) + join(2 * c, c, px[0]) +
    dense(c, g, px[0]) + conv(c, 1, 3, px[0]);
  const snl = (ch: number, pixels: number, lineSites: number) =>
    2 * conv(ch, 4, 3, pixels) + density * conv(ch, ch, 1, pixels) + density * pixels * 8 * ch * lineSites;
  const netR = encoder(C, G) + conv(C / 2, C, 1, px[0]) + conv(C, 2 * C, 1, px[1]) +
    join(4 * C, 2 * C, px[1]) + density * dense(2 * C, G, px[1], 6) + snl(2 * C, px[1], (h + w) / 2) +
    join(2 * C, C, px[0]) + density * dense(C, G, px[0], 6) + snl(C, px[0], h + w) + conv(C, 3, 3, px[0]);
  return { netL, netR };
}

/** Options of {@link benchModel} and {@link benchTrain}. */
export interface ModelBenchOptions {
  presets?: Preset[];
  /** Most timed samples per case. */
  repeats?: number;
  /** Stop sampling a case once its timed samples add up to this (ms). */
  caseBudgetMs?: number;
  /** Skip rule (per-run limit and suite deadline). */
  budget?: Budget;
  /** Degraded fraction of NetR's synthetic mask (default 0.1). */
  density?: number;
  timer?: GpuTimer | null;
  log?: (r: BenchRecord) => void;
  /** GFLOP/s of the conv 64->64 forward kernel measured in the same run: model records report their
   * rate as a fraction of it. */
  convGflops?: number;
}

/** A [n, 1, h, w] mask of 8x8 blocks, each degraded with probability `density` (blob-like, as real masks
 * are, so the half-resolution level keeps about the same density). */
export function blockMask(n: number, h: number, w: number, density: number, seed = 31): Float32Array {
  const rand = mulberry32(seed);
  const bh = Math.ceil(h / 8), bw = Math.ceil(w / 8);
  const blocks = new Float32Array(n * bh * bw).map(() => (rand() < density ? 1 : 0));
  const out = new Float32Array(n * h * w);
  for (let b = 0; b < n; b++) {
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) out[(b * h + y) * w + x] = blocks[(b * bh + (y >> 3)) * bw + (x >> 3)];
    }
  }
  return out;
}

/** NetR guidance from NetL's features on `x` and the given mask. Dispose with `disposeGuidance`. */
export function syntheticGuidance(model: ops.SpairModel, x: ops.Tensor, maskData: Float32Array): Guidance {
  return ops.noGrad(() => {
    const { logits, features } = model.netL.forward(x);
    logits.dispose();
    const [n, , h, w] = x.shape;
    const mask = ops.tensor(maskData, [n, 1, h, w]);
    const [m0, m1] = ops.maskPyramid(mask, 2);
    mask.dispose();
    return { masks: [m0, m1], sites: [ops.compactMask(m0), ops.compactMask(m1)], features };
  });
}

/** Estimates of one run per case key, measured or extrapolated, for the skip rule. */
class Estimates {
  #ms = new Map<string, { ms: number; basis: string }>();
  set(key: string, ms: number, basis: string): void {
    this.#ms.set(key, { ms, basis });
  }
  /** 4x the first known predecessor's time (the cost ratio of one size or preset step). */
  from(predecessors: [string, string][]): { ms: number; basis: string } | undefined {
    for (const [key, label] of predecessors) {
      const p = this.#ms.get(key);
      if (p) return { ms: 4 * p.ms, basis: `4x ${(p.ms / 1000).toFixed(1)} s ${p.basis} at ${label}` };
    }
    return undefined;
  }
}

function skippedRecord(suite: string, op: string, shape: string, reason: string): BenchRecord {
  return {
    suite,
    engine: "spair-gpu",
    adapter: ops.engine().adapterDescription,
    op,
    shape,
    medianMs: NaN,
    minMs: NaN,
    maxMs: NaN,
    gflops: NaN,
    correct: false,
    maxRelError: NaN,
    skipped: reason,
  };
}

const PRESET_ORDER: Preset[] = ["tiny", "small", "base"];

/** Expected time of a case from its estimated run: the warm-up run plus the timed samples {@link measure}
 * takes (up to `repeats`, stopping once they add up to `caseBudgetMs`). */
function caseCost(runMs: number | undefined, opts: ModelBenchOptions): number | undefined {
  if (runMs === undefined) return undefined;
  const repeats = opts.repeats ?? 3;
  const samples = Math.max(1, Math.min(repeats, Math.ceil((opts.caseBudgetMs ?? Infinity) / runMs)));
  return runMs * (1 + samples);
}

function allFinite(data: Float32Array): boolean {
  for (let i = 0; i < data.length; i++) if (!Number.isFinite(data[i])) return false;
  return true;
}

/** NetL + NetR forward as one record: the sum of the two medians and the FLOPs of both. */
function combinedForward(
  preset: Preset,
  shape: string,
  [l, r]: BenchRecord[],
  convGflops?: number,
): BenchRecord {
  const ms = l.medianMs + r.medianMs;
  const gflops = (l.gflops * l.medianMs + r.gflops * r.medianMs) / ms;
  return {
    suite: "model",
    engine: "spair-gpu",
    adapter: l.adapter,
    op: `spair_${preset}_forward`,
    shape,
    medianMs: ms,
    minMs: l.minMs + r.minMs,
    maxMs: l.maxMs + r.maxMs,
    gflops: +gflops.toFixed(3),
    correct: l.correct && r.correct,
    maxRelError: Math.max(l.maxRelError, r.maxRelError),
    firstRunMs: (l.firstRunMs ?? NaN) + (r.firstRunMs ?? NaN),
    note: "NetL + NetR: sum of the two medians above; FLOPs of both (spairForwardFlops)",
    ...(convGflops ? { convUtilization: +(gflops / convGflops).toFixed(4) } : {}),
  };
}

/**
 * NetL and NetR forward latency (inference, batch 1) per preset at each size, after a warm-up run whose
 * time (with shader compilation) is reported as `firstRunMs`. `correct` means finite outputs (there is no
 * reference for the whole model).
 */
export async function benchModel(sizes: number[], opts: ModelBenchOptions = {}): Promise<BenchRecord[]> {
  const presets = opts.presets ?? PRESET_ORDER;
  const budget = opts.budget ?? new Budget(Infinity);
  const density = opts.density ?? 0.1;
  const est = new Estimates();
  const out: BenchRecord[] = [];
  const emit = (r: BenchRecord) => {
    out.push(r);
    opts.log?.(r);
  };
  const models = new Map<Preset, ops.SpairModel>();
  // Size-major order: when the time limit runs out, the largest images go first, not the largest preset.
  for (const size of sizes) {
    const shape = `1x3x${size}x${size}`;
    const prevSize = sizes[sizes.indexOf(size) - 1];
    const x = ops.keep(ops.tensor(randomUniform(2, 3 * size * size, 0, 1), [1, 3, size, size]));
    for (const preset of presets) {
      if (!models.has(preset)) models.set(preset, new ops.SpairModel({ preset, variant: "SPAIR" }, 1));
      const model = models.get(preset)!;
      const params = `params NetL ${model.netL.parameterCount()} NetR ${model.netR.parameterCount()}`;
      const prevPreset = PRESET_ORDER[PRESET_ORDER.indexOf(preset) - 1];
      const pair: BenchRecord[] = [];
      for (const net of ["netl", "netr"] as const) {
        const key = (p: string, s: number) => `${net}/${p}/${s}`;
        const e = est.from([[key(preset, prevSize), `${prevSize} px`], [key(prevPreset, size), prevPreset]]);
        const op = `${net}_${preset}_forward`;
        const reason = budget.skipReason(e?.ms, e?.basis ?? "", caseCost(e?.ms, opts));
        if (reason) {
          if (e) est.set(key(preset, size), e.ms, "estimated");
          emit(skippedRecord("model", op, shape, reason));
          continue;
        }
        try {
          let check: () => Promise<boolean>;
          let release: () => void;
          let m;
          let fitted = false;
          if (net === "netl") {
            let r: ops.NetLOutput | null = null;
            const drop = () => r && ops.dispose([r.logits, ...r.features]);
            m = await measure(() => {
              drop();
              r = ops.noGrad(() => model.netL.forward(x));
            }, { repeats: opts.repeats, budgetMs: opts.caseBudgetMs, timer: opts.timer, batchTargetMs: 0 });
            check = async () => allFinite(await r!.logits.data());
            release = drop;
          } else {
            const g = syntheticGuidance(model, x, blockMask(1, size, size, density));
            // Where the SC block at full capacity would not fit one storage binding, size the site lists to
            // the active count (one readback, before timing), as a caller on such an adapter must.
            if (ops.maxTileForBinding(model.config, ops.engine().maxBindingBytes) < size) {
              for (const sites of g.sites) await sites.fitCapacity();
              fitted = true;
            }
            let y: ops.Tensor | null = null;
            m = await measure(() => {
              y?.dispose();
              y = ops.noGrad(() => model.netR.forward(x, g));
            }, { repeats: opts.repeats, budgetMs: opts.caseBudgetMs, timer: opts.timer, batchTargetMs: 0 });
            check = async () => allFinite(await y!.data());
            release = () => {
              y?.dispose();
              ops.disposeGuidance(g);
            };
          }
          const finite = await check();
          release();
          est.set(key(preset, size), m.medianMs, "measured");
          const flops = spairForwardFlops(preset, 1, size, size, density)[net === "netl" ? "netL" : "netR"];
          const note = `untrained weights; ${params}` +
            (net === "netr" ? `; synthetic ${density * 100}% block mask (8x8 blocks)` : "") +
            (fitted ? "; site lists fitted to the active count (ActiveSites.fitCapacity)" : "") +
            "; correct = finite output";
          const record = measuredRecord({ suite: "model", op, shape }, m, flops, finite ? 0 : Infinity, note);
          if (opts.convGflops) record.convUtilization = +(record.gflops / opts.convGflops).toFixed(4);
          emit(record);
          pair.push(record);
        } catch (err) {
          emit(skippedRecord("model", op, shape, `failed: ${err instanceof Error ? err.message : err}`));
        }
      }
      if (pair.length === 2) emit(combinedForward(preset, shape, pair, opts.convGflops));
    }
    x.dispose();
  }
  for (const model of models.values()) ops.dispose(model.parameters());
  return out;
}

/**
 * One training step per preset at `size` x `size`, batch `batch`: NetL (BCE on a block mask) and NetR
 * (L1 on a target image, synthetic guidance), each with its own Adam optimizer, as in `train/train.ts`.
 * Records carry `imagesPerSecond`; `correct` means a finite loss.
 */
export async function benchTrain(
  size: number,
  batch: number,
  opts: ModelBenchOptions = {},
): Promise<BenchRecord[]> {
  const presets = opts.presets ?? PRESET_ORDER;
  const budget = opts.budget ?? new Budget(Infinity);
  const density = opts.density ?? 0.1;
  const est = new Estimates();
  const out: BenchRecord[] = [];
  const shape = `${batch}x3x${size}x${size}`;
  const maskData = blockMask(batch, size, size, density);
  for (const preset of presets) {
    const model = new ops.SpairModel({ preset, variant: "SPAIR" }, 1);
    const x = ops.keep(ops.tensor(randomUniform(3, batch * 3 * size * size, 0, 1), [batch, 3, size, size]));
    const target = ops.keep(ops.tensor(randomUniform(4, batch * 3 * size * size, 0, 1), x.shape));
    const maskT = ops.keep(ops.tensor(maskData, [batch, 1, size, size]));
    const prevPreset = PRESET_ORDER[PRESET_ORDER.indexOf(preset) - 1];
    for (const net of ["netl", "netr"] as const) {
      const op = `${net}_${preset}_train_step`;
      const e = est.from([[`${net}/${prevPreset}`, prevPreset]]);
      const reason = budget.skipReason(e?.ms, e?.basis ?? "", caseCost(e?.ms, opts));
      if (reason) {
        if (e) est.set(`${net}/${preset}`, e.ms, "estimated");
        const r = skippedRecord("train", op, shape, reason);
        out.push(r);
        opts.log?.(r);
        continue;
      }
      const module = net === "netl" ? model.netL : model.netR;
      const optimizer = new ops.Adam(module.parameters(), { lr: 1e-4 });
      let loss: ops.Tensor | null = null;
      try {
        const m = await measure(() => {
          loss?.dispose();
          loss = ops.tidy(() => {
            optimizer.zeroGrad();
            let l: ops.Tensor;
            if (net === "netl") {
              l = ops.bceWithLogits(model.netL.forward(x).logits, maskT);
            } else {
              // As in training: NetL runs frozen (no gradient) in every NetR step.
              const g = syntheticGuidance(model, x, maskData);
              l = ops.l1Loss(model.netR.forward(x, g), target);
              ops.backward(l);
              ops.disposeGuidance(g);
              optimizer.step();
              return l;
            }
            ops.backward(l);
            optimizer.step();
            return l;
          });
        }, { repeats: opts.repeats, budgetMs: opts.caseBudgetMs, timer: opts.timer, batchTargetMs: 0 });
        const value = await loss!.item();
        est.set(`${net}/${preset}`, m.medianMs, "measured");
        const note = `Adam; ${net === "netl" ? "BCE on a" : "L1, NetL frozen forward in the step, a"} ${
          density * 100
        }% block mask; loss ${value.toPrecision(4)}; correct = finite loss`;
        const r = measuredRecord(
          { suite: "train", op, shape },
          m,
          0,
          Number.isFinite(value) ? 0 : Infinity,
          note,
        );
        r.imagesPerSecond = +(batch / (m.medianMs / 1000)).toFixed(3);
        r.stepsPerSecond = +(1000 / m.medianMs).toFixed(3);
        out.push(r);
        opts.log?.(r);
      } catch (err) {
        const r = skippedRecord("train", op, shape, `failed: ${err instanceof Error ? err.message : err}`);
        out.push(r);
        opts.log?.(r);
      } finally {
        // Assigned in the closure above, which TypeScript's narrowing does not see.
        (loss as ops.Tensor | null)?.dispose();
        optimizer.zeroGrad();
        optimizer.dispose();
      }
    }
    ops.dispose([x, target, maskT, ...model.parameters()]);
  }
  return out;
}
