/**
 * Timing helpers shared by the engine's benchmark suites: robust statistics, GPU timestamp queries, a
 * measurement loop with warm-up and batched submits, and the time budget that lets a long suite skip cases
 * it cannot afford on a slow (software) adapter.
 *
 * @module
 */

import * as ops from "../mod.ts";

/** Summary statistics of a set of run times (ms). */
export interface Stats {
  /** Median. */
  medianMs: number;
  /** Fastest run. */
  minMs: number;
  /** Slowest run. */
  maxMs: number;
  /** First quartile (linear interpolation). */
  q1Ms: number;
  /** Third quartile (linear interpolation). */
  q3Ms: number;
  /** Number of timed samples. */
  runs: number;
}

function quantile(sorted: number[], q: number): number {
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos), hi = Math.ceil(pos);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

const round = (v: number, digits = 3) => +v.toFixed(digits);

/** Median, min, max and quartiles of `times` (ms, rounded to µs); all NaN for an empty list. */
export function stats(times: number[]): Stats {
  if (times.length === 0) return { medianMs: NaN, minMs: NaN, maxMs: NaN, q1Ms: NaN, q3Ms: NaN, runs: 0 };
  const s = [...times].sort((a, b) => a - b);
  return {
    medianMs: round(quantile(s, 0.5)),
    minMs: round(s[0]),
    maxMs: round(s[s.length - 1]),
    q1Ms: round(quantile(s, 0.25)),
    q3Ms: round(quantile(s, 0.75)),
    runs: s.length,
  };
}

// WebGPU flag values, spelled out so the module does not depend on global GPU* constants.
const USAGE_MAP_READ = 0x1;
const USAGE_COPY_SRC = 0x4;
const USAGE_COPY_DST = 0x8;
const USAGE_QUERY_RESOLVE = 0x200;
const MAP_MODE_READ = 0x1;

/**
 * GPU time of a span of queue work, from timestamp queries written by two empty compute passes submitted
 * before and after the work. The engine owns its passes, so brackets on the queue are the only way to
 * time its work without changing it; queue order makes them bracket everything submitted in between.
 */
export class GpuTimer {
  #querySet: GPUQuerySet;
  #resolve: GPUBuffer;
  #read: GPUBuffer;

  private constructor(readonly device: GPUDevice) {
    this.#querySet = device.createQuerySet({ type: "timestamp", count: 2 });
    this.#resolve = device.createBuffer({ size: 16, usage: USAGE_QUERY_RESOLVE | USAGE_COPY_SRC });
    this.#read = device.createBuffer({ size: 16, usage: USAGE_MAP_READ | USAGE_COPY_DST });
  }

  /** A timer on `device`, or null when the device was created without the "timestamp-query" feature. */
  static create(device: GPUDevice): GpuTimer | null {
    if (!device.features.has("timestamp-query")) return null;
    try {
      return new GpuTimer(device);
    } catch {
      return null;
    }
  }

  #mark(index: number): void {
    const encoder = this.device.createCommandEncoder();
    const pass = encoder.beginComputePass({
      timestampWrites: index === 0
        ? { querySet: this.#querySet, beginningOfPassWriteIndex: 0 }
        : { querySet: this.#querySet, endOfPassWriteIndex: 1 },
    });
    pass.end();
    if (index === 1) {
      encoder.resolveQuerySet(this.#querySet, 0, 2, this.#resolve, 0);
      encoder.copyBufferToBuffer(this.#resolve, 0, this.#read, 0, 16);
    }
    this.device.queue.submit([encoder.finish()]);
  }

  /** Marks the start of the span (submit pending engine work first). */
  begin(): void {
    this.#mark(0);
  }

  /** Marks the end of the span (submit the span's engine work first, do not wait for it). */
  end(): void {
    this.#mark(1);
  }

  /** The last span's GPU time in ms (waits for it); NaN when the timestamps are unusable. */
  async read(): Promise<number> {
    await this.#read.mapAsync(MAP_MODE_READ);
    const [t0, t1] = new BigUint64Array(this.#read.getMappedRange().slice(0));
    this.#read.unmap();
    // Timestamps are nanoseconds; zeros or a reversed pair mean the adapter did not write them.
    return t1 > t0 && t0 > 0n ? Number(t1 - t0) / 1e6 : NaN;
  }

  /** Frees the query set and buffers. */
  destroy(): void {
    this.#querySet.destroy();
    this.#resolve.destroy();
    this.#read.destroy();
  }
}

/** Options of {@link measure}. */
export interface MeasureOptions {
  /** Untimed runs first (at least 1: the first run compiles the pipelines and is reported apart). */
  warmup?: number;
  /** Most timed samples (default 5). */
  repeats?: number;
  /** Stop taking samples once the timed ones add up to this many ms (at least one is always taken). */
  budgetMs?: number;
  /** Runs shorter than this (ms) are batched into one sample of about this length (default 20), so that
   * per-submit overhead does not dominate fast kernels on fast adapters; 0 disables batching. */
  batchTargetMs?: number;
  /** GPU timestamp timer, when the device has the feature. */
  timer?: GpuTimer | null;
}

/** Result of {@link measure}: wall-clock statistics per run, and GPU-time statistics when available. */
export interface Measurement extends Stats {
  /** Wall time of the first (warm-up) run, which includes pipeline compilation. */
  firstRunMs: number;
  /** Runs per timed sample (each sample's time is divided by it). */
  batch: number;
  /** GPU-timestamp statistics per run, if timestamps were available and valid. */
  gpu?: Stats;
}

/**
 * Times `record`, which enqueues one run's GPU work without waiting for it (it may dispose the previous
 * run's outputs). Each sample covers `batch` runs: flush, GPU begin mark, the runs (each submitted once
 * recorded), end mark, then waiting for the queue; the wall time includes GPU completion.
 */
export async function measure(
  record: () => void | Promise<void>,
  opts: MeasureOptions = {},
): Promise<Measurement> {
  const e = ops.engine();
  const warmup = Math.max(1, opts.warmup ?? 1);
  const repeats = Math.max(1, opts.repeats ?? 5);
  const budget = opts.budgetMs ?? Infinity;
  const timer = opts.timer ?? null;
  const sample = async (batch: number): Promise<[number, number]> => {
    e.flush();
    await e.device.queue.onSubmittedWorkDone();
    const t0 = performance.now();
    timer?.begin();
    // Each run is submitted as soon as it is recorded, so recording the next overlaps the GPU's work.
    for (let i = 0; i < batch; i++) {
      await record();
      e.flush();
    }
    timer?.end();
    await e.sync();
    const wall = performance.now() - t0;
    const gpu = timer ? await timer.read() : NaN;
    return [wall / batch, gpu / batch];
  };
  let firstRunMs = NaN;
  let last = 0;
  for (let i = 0; i < warmup; i++) {
    [last] = await sample(1);
    if (i === 0) firstRunMs = last;
  }
  const target = opts.batchTargetMs ?? 20;
  // Size the batch from a run without compilation: the first one can take seconds more than the rest.
  if (target > 0 && warmup === 1 && last < 10 * target) [last] = await sample(1);
  const batch = target > 0 && last < target ? Math.min(1000, Math.ceil(target / Math.max(last, 0.01))) : 1;
  const wall: number[] = [], gpu: number[] = [];
  let spent = 0;
  for (let i = 0; i < repeats && (i === 0 || spent < budget); i++) {
    const [w, g] = await sample(batch);
    wall.push(w);
    if (Number.isFinite(g)) gpu.push(g);
    spent += w * batch;
  }
  return {
    ...stats(wall),
    firstRunMs: round(firstRunMs),
    batch,
    gpu: gpu.length === wall.length ? stats(gpu) : undefined,
  };
}

/**
 * Time budget of a suite run: a per-run limit for cases whose cost grows (model size, image size) and an
 * overall deadline. A case is skipped, with the reason recorded, when its estimated single run exceeds the
 * limit or its warm-up plus one timed run would pass the deadline.
 */
export class Budget {
  /** Absolute deadline (performance.now() ms). */
  readonly deadline: number;

  /**
   * @param perRunMs Largest acceptable estimated time of one run.
   * @param totalMs Time from now after which budgeted cases are skipped (Infinity: none).
   */
  constructor(readonly perRunMs: number, totalMs = Infinity) {
    this.deadline = performance.now() + totalMs;
  }

  /** Remaining time before the deadline (ms). */
  remainingMs(): number {
    return this.deadline - performance.now();
  }

  /**
   * Why a case must be skipped, or null to run it. `estimateMs` is the estimated single-run time (undefined:
   * unknown, run it unless the deadline has passed); `basis` says where the estimate comes from; `caseMs` is
   * the whole case's expected time (default: warm-up plus one timed run).
   */
  skipReason(estimateMs: number | undefined, basis: string, caseMs = 2 * (estimateMs ?? 0)): string | null {
    const s = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
    const remaining = this.remainingMs();
    if (remaining <= 0) return `suite time budget used up`;
    if (estimateMs === undefined) return null;
    if (estimateMs > this.perRunMs) {
      return `estimated ${s(estimateMs)} per run (${basis}) exceeds the ${s(this.perRunMs)} per-run budget`;
    }
    if (caseMs > remaining) {
      const why = `the case (${s(caseMs)} with warm-up) would pass the time limit (${s(remaining)} left)`;
      return `estimated ${s(estimateMs)} per run (${basis}); ${why}`;
    }
    return null;
  }
}
