/**
 * Peer benchmarks: the same workloads as the engine's own bench, run on two peer WebGPU libraries in
 * this Deno process on the same adapter, each with a sampled float64 correctness check.
 *
 * - TensorFlow.js (`@tensorflow/tfjs-core` + `@tensorflow/tfjs-backend-webgpu`)
 * - jax-js (`@jax-js/jax`, device `"webgpu"`)
 *
 * Workloads (see {@link PeerOp}): 3x3 conv2d forward, conv2d forward + input grad + weight grad, and a
 * 1024³ float32 matmul. Inputs and references come from `./reference.ts`, so the engine's bench can
 * produce bit-identical inputs.
 *
 * Timing: each timed run covers dispatch *and* GPU completion (tfjs: a 1-element slice of every output
 * is read back; jax-js: `blockUntilReady` on every output, which maps a staging buffer after the work).
 * Uploads and layout conversions happen before the timed region; full read-backs for the correctness
 * check happen after it.
 *
 * @module
 */

import {
  adjointRelError,
  BENCH_CONV,
  BENCH_MATMUL,
  conv2dFlops,
  conv2dOutSize,
  type Conv2dShape,
  type ConvCase,
  DEFAULT_REL_TOLERANCE,
  DEFAULT_SAMPLES,
  gather,
  makeConvCase,
  makeMatmulCase,
  type MatmulCase,
  type MatmulShape,
  nchwIndexToNhwc,
  nchwToNhwc,
  oihwIndexToHwio,
  oihwToHwio,
  sampledMaxRelError,
} from "./reference.ts";

type Tf = typeof import("@tensorflow/tfjs-core");
type Jax = typeof import("@jax-js/jax");
type TfTensor = import("@tensorflow/tfjs-core").Tensor;
type TfTensor4D = import("@tensorflow/tfjs-core").Tensor4D;
type JaxArray = import("@jax-js/jax").Array;

/** One benchmark result line. */
export interface BenchRecord {
  /** Benchmark suite; `"peers"` for records from this module. */
  suite: string;
  /** Library and version, e.g. `"tfjs-webgpu@4.22.0"`, `"jax-js@0.1.25"`. */
  engine: string;
  /** `GPUAdapterInfo.description` of the adapter. */
  adapter: string;
  /** Workload, one of {@link PeerOp}. */
  op: string;
  /** Human-readable problem size, e.g. `"N1 C64->64 256x256 k3x3 s1 p1"` or `"1024x1024x1024"`. */
  shape: string;
  /** Median wall time of the timed runs in ms (including GPU completion); NaN if the case failed. */
  medianMs: number;
  /** Fastest timed run in ms; NaN if the case failed. */
  minMs: number;
  /** Slowest timed run in ms; NaN if the case failed. */
  maxMs: number;
  /** Useful GFLOP/s at the median time (see {@link PeerOp} for the FLOP counts); NaN if failed. */
  gflops: number;
  /** Whether every sampled output element is within tolerance of the float64 reference. */
  correct: boolean;
  /** Worst sampled relative error over all outputs (`sampledMaxRelError`); NaN/Infinity if unknown. */
  maxRelError: number;
  /** Details: run counts, per-output errors, method, or the error message when the case threw. */
  note?: string;
  /** First quartile of the timed runs (ms), where recorded. */
  q1Ms?: number;
  /** Third quartile of the timed runs (ms), where recorded. */
  q3Ms?: number;
  /** Number of timed samples, where recorded. */
  runs?: number;
  /** Wall time of the first (warm-up) run, including pipeline compilation, where recorded. */
  firstRunMs?: number;
  /** GPU-timestamp median / min / max per run (ms), when the adapter supports timestamp queries. */
  gpuMedianMs?: number;
  /** Fastest run by GPU timestamps (ms). */
  gpuMinMs?: number;
  /** Slowest run by GPU timestamps (ms). */
  gpuMaxMs?: number;
  /** Training throughput (images per second at the median), for the train suite. */
  imagesPerSecond?: number;
  /** Training steps per second at the median, for the train suite. */
  stepsPerSecond?: number;
  /** For model records: GFLOP/s as a fraction of the conv 64->64 forward kernel's in the same run. */
  convUtilization?: number;
  /** Why the case was not run (time budget); the timings are then NaN (null in JSON). */
  skipped?: string;
}

/**
 * Workloads:
 * - `conv2d_fwd`: `y = conv2d(x, w)`; FLOPs `2*N*Cout*Hout*Wout*Cin*kh*kw`.
 * - `conv2d_fwd_bwd`: `y`, `dx` and `dw` for cotangent `dy`; FLOPs 3x the forward.
 * - `matmul`: `c = a @ b`; FLOPs `2*M*N*K`.
 */
export type PeerOp = "conv2d_fwd" | "conv2d_fwd_bwd" | "matmul";

/** Peer libraries. */
export type PeerEngine = "tfjs" | "jax-js";

/** All workloads, in run order. */
export const PEER_OPS: readonly PeerOp[] = ["conv2d_fwd", "conv2d_fwd_bwd", "matmul"];

/** All peer libraries, in run order. */
export const PEER_ENGINES: readonly PeerEngine[] = ["jax-js", "tfjs"];

/**
 * Default timed runs per workload. On a software adapter the conv cases take many seconds per run
 * (llvmpipe, 2 cores, idle machine: jax-js fwd ~5 s, fwd+bwd ~18 s; tfjs fwd ~12 s, fwd+bwd 70-110 s,
 * mostly its weight-gradient kernel), so they are timed once to keep the default run near 3 min.
 * Raise with `repeats` / `repeatsByOp` for medians on faster adapters.
 */
export const DEFAULT_REPEATS: Readonly<Record<PeerOp, number>> = Object.freeze({
  conv2d_fwd: 1,
  conv2d_fwd_bwd: 1,
  matmul: 3,
});

/**
 * Default untimed warm-up runs per workload. The conv cases skip warm-up: on llvmpipe their first run
 * (including pipeline compilation) was measured no slower than later runs, because compilation is a
 * negligible part of a multi-second run. Records say when the timed runs include the first run.
 */
export const DEFAULT_WARMUP: Readonly<Record<PeerOp, number>> = Object.freeze({
  conv2d_fwd: 0,
  conv2d_fwd_bwd: 0,
  matmul: 1,
});

/** Options of {@link runPeerBenchmarks}. */
export interface PeerBenchOptions {
  /** Timed runs for every workload (overrides {@link DEFAULT_REPEATS}; `repeatsByOp` wins over it). */
  repeats?: number;
  /** Warm-up runs for every workload (overrides {@link DEFAULT_WARMUP}; `warmupByOp` wins over it). */
  warmup?: number;
  /** Per-workload timed runs. */
  repeatsByOp?: Partial<Record<PeerOp, number>>;
  /** Per-workload warm-up runs. */
  warmupByOp?: Partial<Record<PeerOp, number>>;
  /** Libraries to run (default: all, {@link PEER_ENGINES}). */
  engines?: readonly PeerEngine[];
  /** Workloads to run (default: all, {@link PEER_OPS}). */
  ops?: readonly PeerOp[];
  /** Convolution geometry (default `BENCH_CONV`: N1 64→64 256x256 3x3 s1 p1). */
  conv?: Conv2dShape;
  /** Matmul size (default `BENCH_MATMUL`: 1024³). */
  matmul?: MatmulShape;
  /** Sampled elements checked per output tensor (default 64). */
  samples?: number;
  /** Relative-error tolerance (default `DEFAULT_REL_TOLERANCE`, 1e-3). */
  tolerance?: number;
  /**
   * Send the libraries' `console.log/info/debug/warn` output to stderr while running, so stdout carries
   * only what `log` prints (default true). The original console is restored around each `log` call.
   */
  quiet?: boolean;
  /** Called with every record as soon as it is ready. */
  log?: (rec: BenchRecord) => void;
}

/** A prepared benchmark case: inputs are on the device, `run` is the timed unit. */
interface CaseRunner {
  /** Dispatch the work and wait for GPU completion, keeping the outputs of this run. */
  run(): Promise<void>;
  /** Read back the outputs of the last run and compare them with the references. */
  check(): Promise<Record<string, number>>;
  /** Free device memory. */
  dispose(): void;
  /** Method description for the record's note. */
  method: string;
}

type CaseFactory = (op: PeerOp) => Promise<CaseRunner>;

/** Lazily built shared inputs and references. */
interface Cases {
  conv(): ConvCase;
  mm(): MatmulCase;
}

interface PeerLib {
  engine: string;
  factory: CaseFactory;
}

const SUITE = "peers";

function errorMessage(e: unknown): string {
  if (e instanceof Error) return `${e.name}: ${e.message}`;
  return String(e);
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

function convShapeString(s: Conv2dShape): string {
  return `N${s.n} C${s.cin}->${s.cout} ${s.h}x${s.w} k${s.kh}x${s.kw} s${s.stride} p${s.pad}`;
}

/** Version of an npm package resolved through the import map, from its cache path (or `"?"`). */
function resolvedVersion(specifier: string): string {
  try {
    const m = import.meta.resolve(specifier).match(/\/(\d+\.\d+\.\d+[^/]*)\//);
    return m ? m[1] : "?";
  } catch {
    return "?";
  }
}

function fmtErr(errs: Record<string, number>): string {
  return Object.entries(errs).map(([k, v]) => `${k}=${v.toExponential(2)}`).join(" ");
}

/** Redirect console noise to stderr; returns a function that restores the original methods. */
function redirectConsole(): () => void {
  const c = console as unknown as Record<string, (...args: unknown[]) => void>;
  const names = ["log", "info", "debug", "warn"] as const;
  const saved = names.map((n) => c[n]);
  for (const n of names) c[n] = (...args: unknown[]) => console.error(...args);
  return () => names.forEach((n, i) => (c[n] = saved[i]));
}

// ------------------------------------------------------------------------------------------ tfjs

async function loadTfjs(cases: Cases): Promise<PeerLib> {
  const tf: Tf = await import("@tensorflow/tfjs-core");
  await import("@tensorflow/tfjs-backend-webgpu");
  if (!(await tf.setBackend("webgpu"))) throw new Error("tf.setBackend('webgpu') failed");
  await tf.ready();
  const engine = `tfjs-webgpu@${tf.version_core}`;

  /** Wait for GPU completion by reading back one element of every output. */
  const sync = async (ts: TfTensor[]): Promise<void> => {
    const probes = ts.map((t) => tf.slice(t, new Array(t.rank).fill(0), new Array(t.rank).fill(1)));
    await Promise.all(probes.map((p) => p.data()));
    tf.dispose(probes);
  };

  const factory: CaseFactory = async (op) => {
    if (op === "matmul") {
      const c = cases.mm();
      const { m, n, k } = c.shape;
      const a = tf.tensor2d(c.a, [m, k]);
      const b = tf.tensor2d(c.b, [k, n]);
      await sync([a, b]); // tfjs uploads lazily on first use; do it before timing
      let out: TfTensor | undefined;
      return {
        method: "tf.matMul",
        run: async () => {
          out?.dispose();
          out = tf.matMul(a, b);
          await sync([out]);
        },
        check: async () => ({ c: sampledMaxRelError(gather(await out!.data(), c.c.at), c.c.ref) }),
        dispose: () => tf.dispose([a, b, ...(out ? [out] : [])]),
      };
    }
    const conv = cases.conv();
    const s = conv.shape;
    const [ho, wo] = conv2dOutSize(s);
    // NCHW/OIHW → NHWC/HWIO on the CPU, outside the timed region.
    const xData = nchwToNhwc(conv.x, s.n, s.cin, s.h, s.w);
    const wData = oihwToHwio(conv.w, s.cout, s.cin, s.kh, s.kw);
    const dyData = nchwToNhwc(conv.dy, s.n, s.cout, ho, wo);
    const x = tf.tensor4d(xData, [s.n, s.h, s.w, s.cin]);
    const w = tf.tensor4d(wData, [s.kh, s.kw, s.cin, s.cout]);
    const dy = tf.tensor4d(dyData, [s.n, ho, wo, s.cout]);
    const mapY = nchwIndexToNhwc(s.cout, ho, wo);
    const mapX = nchwIndexToNhwc(s.cin, s.h, s.w);
    const mapW = oihwIndexToHwio(s.cout, s.cin, s.kh, s.kw);
    await sync([x, w, dy]); // tfjs uploads lazily on first use; do it before timing
    let outs: TfTensor[] = [];
    const fwd = () => tf.conv2d(x, w, s.stride, s.pad);
    if (op === "conv2d_fwd") {
      return {
        method: "tf.conv2d NHWC/HWIO (layouts converted before timing)",
        run: async () => {
          tf.dispose(outs);
          outs = [fwd()];
          await sync(outs);
        },
        check: async () => ({
          y: sampledMaxRelError(gather(await outs[0].data(), conv.y.at, mapY), conv.y.ref),
        }),
        dispose: () => tf.dispose([x, w, dy, ...outs]),
      };
    }
    // tfjs-core's npm main bundle registers no gradient functions (they live in the ESM-only
    // register_all_gradients module), so tf.grads cannot differentiate conv2d here; call the same
    // backprop kernels that Conv2D's gradient config would.
    return {
      method: "tf.conv2d + tf.conv2dTranspose (Conv2DBackpropInput) + Conv2DBackpropFilter kernel, NHWC/HWIO",
      run: async () => {
        tf.dispose(outs);
        const y = fwd();
        const dx = tf.conv2dTranspose(dy, w as TfTensor4D, [s.n, s.h, s.w, s.cin], s.stride, s.pad);
        const dw = tf.engine().runKernel(tf.Conv2DBackpropFilter, { x, dy }, {
          strides: s.stride,
          pad: s.pad,
          dataFormat: "NHWC",
          filterShape: [s.kh, s.kw, s.cin, s.cout],
        }) as TfTensor;
        outs = [y, dx, dw];
        await sync(outs);
      },
      check: async () => {
        const [y, dx, dw] = await Promise.all(outs.map((t) => t.data()));
        return {
          y: sampledMaxRelError(gather(y, conv.y.at, mapY), conv.y.ref),
          dx: sampledMaxRelError(gather(dx, conv.dx.at, mapX), conv.dx.ref),
          dw: sampledMaxRelError(gather(dw, conv.dw.at, mapW), conv.dw.ref),
          "dx·x": adjointRelError(dyData, y, dx, xData),
          "dw·w": adjointRelError(dyData, y, dw, wData),
        };
      },
      dispose: () => tf.dispose([x, w, dy, ...outs]),
    };
  };
  return { engine, factory };
}

// ---------------------------------------------------------------------------------------- jax-js

async function loadJax(cases: Cases): Promise<PeerLib> {
  const jax: Jax = await import("@jax-js/jax");
  const { numpy: np, lax } = jax;
  const devices = await jax.init("webgpu");
  if (!devices.includes("webgpu")) throw new Error(`jax-js: webgpu device unavailable (got ${devices})`);
  jax.defaultDevice("webgpu");
  const engine = `jax-js@${resolvedVersion("@jax-js/jax")}`;

  /** Upload to the default (webgpu) device and wait until resident. */
  const upload = (data: Float32Array<ArrayBuffer>, shape: number[]): Promise<JaxArray> =>
    np.array(data).reshape(shape).blockUntilReady();

  /**
   * Prepared case following jax-js ownership rules: every call consumes its arguments, so inputs are
   * passed as `.ref`; outputs are disposed before the next run or consumed by `data()` in `check`.
   */
  const makeRunner = (
    method: string,
    inputs: JaxArray[],
    fn: ((...args: JaxArray[]) => JaxArray[]) & { dispose(): void },
    refs: { name: string; at: number[]; ref: Float64Array }[],
    extra?: (outs: ArrayLike<number>[]) => Record<string, number>,
  ): CaseRunner => {
    let outs: JaxArray[] = [];
    const drop = () => {
      for (const o of outs) o.dispose();
      outs = [];
    };
    return {
      method,
      run: async () => {
        drop();
        outs = fn(...inputs.map((a) => a.ref));
        await jax.blockUntilReady(outs);
      },
      check: async () => {
        const data: ArrayLike<number>[] = await Promise.all(outs.map((o) => o.data())); // consumes outs
        outs = [];
        return {
          ...Object.fromEntries(
            refs.map((r, i) => [r.name, sampledMaxRelError(gather(data[i], r.at), r.ref)]),
          ),
          ...extra?.(data),
        };
      },
      dispose: () => {
        drop();
        for (const a of inputs) a.dispose();
        fn.dispose();
      },
    };
  };

  const factory: CaseFactory = async (op) => {
    if (op === "matmul") {
      const c = cases.mm();
      const { m, n, k } = c.shape;
      const inputs = [await upload(c.a, [m, k]), await upload(c.b, [k, n])];
      return makeRunner("jit(np.matmul)", inputs, jax.jit((a: JaxArray, b: JaxArray) => [np.matmul(a, b)]), [
        { name: "c", ...c.c },
      ]);
    }
    const conv = cases.conv();
    const s = conv.shape;
    const [ho, wo] = conv2dOutSize(s);
    const convFn = (x: JaxArray, w: JaxArray) =>
      lax.conv(x, w, [s.stride, s.stride], [[s.pad, s.pad], [s.pad, s.pad]]);
    const x = await upload(conv.x, [s.n, s.cin, s.h, s.w]);
    const w = await upload(conv.w, [s.cout, s.cin, s.kh, s.kw]);
    if (op === "conv2d_fwd") {
      return makeRunner(
        "jit(lax.conv) NCHW/OIHW",
        [x, w],
        jax.jit((a: JaxArray, b: JaxArray) => [convFn(a, b)]),
        [
          { name: "y", ...conv.y },
        ],
      );
    }
    const dy = await upload(conv.dy, [s.n, s.cout, ho, wo]);
    const fwdBwd = (a: JaxArray, b: JaxArray, g: JaxArray): JaxArray[] => {
      const [y, pullback] = jax.vjp(convFn, [a, b]);
      const [dx, dw] = pullback(g) as JaxArray[];
      pullback.dispose();
      return [y, dx, dw];
    };
    return makeRunner("jit(vjp(lax.conv)) NCHW/OIHW", [x, w, dy], jax.jit(fwdBwd), [
      { name: "y", ...conv.y },
      { name: "dx", ...conv.dx },
      { name: "dw", ...conv.dw },
    ], ([y, dx, dw]) => ({
      "dx·x": adjointRelError(conv.dy, y, dx, conv.x),
      "dw·w": adjointRelError(conv.dy, y, dw, conv.w),
    }));
  };
  return { engine, factory };
}

// ---------------------------------------------------------------------------------------- driver

/**
 * Run the peer benchmarks and return one record per (library, workload).
 *
 * Never throws for library failures: a library that fails to load/initialise or a case that throws
 * yields a record with `correct: false`, NaN timings and the error message in `note`. Results outside
 * the tolerance are reported as `correct: false` with the per-output errors in `note`.
 *
 * Run counts: `repeatsByOp[op] ?? repeats ?? DEFAULT_REPEATS[op]` timed runs after
 * `warmupByOp[op] ?? warmup ?? DEFAULT_WARMUP[op]` untimed ones. With defaults a full run took 145 s on a 2-core llvmpipe
 * machine (up to ~2.5x more when other jobs compete for the CPU), dominated by tfjs's conv fwd+bwd
 * (70-110 s, mostly its weight-gradient kernel).
 */
export async function runPeerBenchmarks(opts: PeerBenchOptions = {}): Promise<BenchRecord[]> {
  const quiet = opts.quiet !== false;
  let restoreConsole: (() => void) | undefined;
  const mute = () => {
    if (quiet && !restoreConsole) restoreConsole = redirectConsole();
  };
  const unmute = () => {
    restoreConsole?.();
    restoreConsole = undefined;
  };
  const records: BenchRecord[] = [];
  const emit = (rec: BenchRecord) => {
    records.push(rec);
    if (!opts.log) return;
    unmute();
    try {
      opts.log(rec);
    } finally {
      mute();
    }
  };

  mute();
  try {
    const ops = opts.ops ?? PEER_OPS;
    const engines = opts.engines ?? PEER_ENGINES;
    const tol = opts.tolerance ?? DEFAULT_REL_TOLERANCE;
    const samples = opts.samples ?? DEFAULT_SAMPLES;
    const convShape = opts.conv ?? BENCH_CONV;
    const mmShape = opts.matmul ?? BENCH_MATMUL;
    let convCase: ConvCase | undefined;
    let mmCase: MatmulCase | undefined;
    const cases: Cases = {
      conv: () => (convCase ??= makeConvCase(convShape, samples)),
      mm: () => (mmCase ??= makeMatmulCase(mmShape, samples)),
    };

    let adapter = "unknown";
    try {
      const a = await navigator.gpu?.requestAdapter();
      adapter = a?.info?.description || a?.info?.vendor || "unknown";
    } catch (e) {
      adapter = `unavailable (${errorMessage(e)})`;
    }

    const flops: Record<PeerOp, number> = {
      conv2d_fwd: conv2dFlops(convShape),
      conv2d_fwd_bwd: 3 * conv2dFlops(convShape),
      matmul: 2 * mmShape.m * mmShape.n * mmShape.k,
    };
    const shapeOf = (op: PeerOp) =>
      op === "matmul" ? `${mmShape.m}x${mmShape.n}x${mmShape.k}` : convShapeString(convShape);

    for (const engineId of engines) {
      let lib: PeerLib | undefined;
      let initError: string | undefined;
      try {
        lib = engineId === "tfjs" ? await loadTfjs(cases) : await loadJax(cases);
      } catch (e) {
        initError = `init failed: ${errorMessage(e)}`;
      }
      for (const op of ops) {
        const base = { suite: SUITE, engine: lib?.engine ?? engineId, adapter, op, shape: shapeOf(op) };
        const failed = (note: string): BenchRecord => ({
          ...base,
          medianMs: NaN,
          minMs: NaN,
          maxMs: NaN,
          gflops: NaN,
          correct: false,
          maxRelError: NaN,
          note,
        });
        if (!lib) {
          emit(failed(initError ?? "init failed"));
          continue;
        }
        const repeats = Math.max(1, opts.repeatsByOp?.[op] ?? opts.repeats ?? DEFAULT_REPEATS[op]);
        const warmup = Math.max(0, opts.warmupByOp?.[op] ?? opts.warmup ?? DEFAULT_WARMUP[op]);
        let runner: CaseRunner | undefined;
        try {
          runner = await lib.factory(op);
          for (let i = 0; i < warmup; i++) await runner.run();
          const times: number[] = [];
          for (let i = 0; i < repeats; i++) {
            const t0 = performance.now();
            await runner.run();
            times.push(performance.now() - t0);
          }
          const errs = await runner.check();
          const maxRelError = Math.max(...Object.values(errs));
          const correct = Object.values(errs).every((e) => e <= tol);
          const medianMs = median(times);
          const notes = [
            runner.method,
            `runs=${repeats} warmup=${warmup}${
              warmup === 0 ? " (first run includes pipeline compilation)" : ""
            }`,
            `err ${fmtErr(errs)} (tol ${tol}, ${samples} samples/output)`,
          ];
          if (!correct) notes.push("WRONG RESULT");
          emit({
            ...base,
            medianMs,
            minMs: Math.min(...times),
            maxMs: Math.max(...times),
            gflops: flops[op] / (medianMs * 1e6),
            correct,
            maxRelError,
            note: notes.join("; "),
          });
        } catch (e) {
          emit(failed(errorMessage(e)));
        } finally {
          try {
            runner?.dispose();
          } catch {
            // best effort
          }
        }
      }
    }
  } finally {
    unmute();
  }
  return records;
}
