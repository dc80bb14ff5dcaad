/**
 * `deno task bench`: the engine's kernels and, in the same process on the same adapter, the same workloads
 * in peer WebGPU libraries (tfjs-backend-webgpu, jax-js). Prints one JSON line per measurement; every
 * result is checked against float64 references on sampled outputs, and a wrong result is reported as wrong
 * (`correct: false`), never as fast.
 *
 * Usage: deno task bench [--suite engine,sparse,model,peers|all] [--repeats N] [--json FILE]
 *
 * Suites: `engine` (conv2d forward, forward+backward, matmul 1024^3), `sparse` (SC and SNL modules across
 * mask densities), `model` (SPAIR forward latency per preset at 512x512), `peers` (tfjs-webgpu and jax-js
 * on the engine workloads).
 *
 * @module
 */

import { parseArgs } from "node:util";
import * as ops from "../mod.ts";
import {
  BENCH_CONV,
  BENCH_MATMUL,
  conv2dFlops,
  type ConvCase,
  DEFAULT_REL_TOLERANCE,
  gather,
  makeConvCase,
  makeMatmulCase,
  sampledMaxRelError,
} from "./reference.ts";
import type { BenchRecord } from "./peers.ts";

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

async function timeRuns(repeats: number, warmup: number, run: () => Promise<void>): Promise<number[]> {
  for (let i = 0; i < warmup; i++) await run();
  const times: number[] = [];
  for (let i = 0; i < repeats; i++) {
    const t0 = performance.now();
    await run();
    times.push(performance.now() - t0);
  }
  return times;
}

function record(
  op: string,
  shape: string,
  times: number[],
  flops: number,
  maxRelError: number,
  note?: string,
): BenchRecord {
  const medianMs = median(times);
  return {
    suite: "engine",
    engine: "spair-gpu",
    adapter: ops.engine().adapterDescription,
    op,
    shape,
    medianMs: +medianMs.toFixed(2),
    minMs: +Math.min(...times).toFixed(2),
    maxMs: +Math.max(...times).toFixed(2),
    gflops: +(flops / medianMs / 1e6).toFixed(2),
    correct: maxRelError <= DEFAULT_REL_TOLERANCE,
    maxRelError,
    note,
  };
}

function convShapeLabel(c: ConvCase): string {
  const s = c.shape;
  return `N${s.n} C${s.cin}->${s.cout} ${s.h}x${s.w} k${s.kh}x${s.kw} s${s.stride} p${s.pad}`;
}

/** The engine's conv2d forward and forward + input grad + weight grad on the shared benchmark case. */
export async function benchConv(
  repeats: number,
  c: ConvCase = makeConvCase(BENCH_CONV),
): Promise<BenchRecord[]> {
  const s = c.shape;
  const x = ops.keep(ops.tensor(c.x, [s.n, s.cin, s.h, s.w]));
  const w = ops.keep(ops.tensor(c.w, [s.cout, s.cin, s.kh, s.kw]));
  const dy = ops.keep(ops.tensor(c.dy, [s.n, s.cout, c.dy.length / (s.n * s.cout * s.h), s.w]));
  const options = { stride: s.stride, padding: s.pad };
  const flops = conv2dFlops(s);
  const out: BenchRecord[] = [];

  let y: ops.Tensor | null = null;
  const forwardTimes = await timeRuns(repeats, 1, async () => {
    y?.dispose();
    y = ops.noGrad(() => ops.conv2d(x, w, null, options));
    await ops.engine().sync();
  });
  const yData = await y!.data();
  out.push(
    record(
      "conv2d_fwd",
      convShapeLabel(c),
      forwardTimes,
      flops,
      sampledMaxRelError(gather(yData, c.y.at), c.y.ref),
    ),
  );

  x.requiresGrad = true;
  w.requiresGrad = true;
  const backwardTimes = await timeRuns(repeats, 1, async () => {
    y?.dispose();
    x.grad?.dispose();
    w.grad?.dispose();
    x.grad = w.grad = null;
    y = ops.conv2d(x, w, null, options);
    ops.backward(y, dy);
    await ops.engine().sync();
  });
  const errors = [
    sampledMaxRelError(gather(await y!.data(), c.y.at), c.y.ref),
    sampledMaxRelError(gather(await x.grad!.data(), c.dx.at), c.dx.ref),
    sampledMaxRelError(gather(await w.grad!.data(), c.dw.at), c.dw.ref),
  ];
  out.push(record(
    "conv2d_fwd_bwd",
    convShapeLabel(c),
    backwardTimes,
    3 * flops,
    Math.max(...errors),
    `errors y ${errors[0].toExponential(2)} dx ${errors[1].toExponential(2)} dw ${
      errors[2].toExponential(2)
    }`,
  ));
  ops.dispose([x, w, dy, y!, x.grad!, w.grad!]);
  x.grad = w.grad = null;
  return out;
}

/** The engine's matmul on the shared benchmark case. */
export async function benchMatmul(repeats: number): Promise<BenchRecord[]> {
  const c = makeMatmulCase(BENCH_MATMUL);
  const { m, n, k } = c.shape;
  const a = ops.keep(ops.tensor(c.a, [m, k]));
  const b = ops.keep(ops.tensor(c.b, [k, n]));
  let out: ops.Tensor | null = null;
  const times = await timeRuns(repeats, 1, async () => {
    out?.dispose();
    out = ops.matmul(a, b);
    await ops.engine().sync();
  });
  const err = sampledMaxRelError(gather(await out!.data(), c.c.at), c.c.ref);
  ops.dispose([a, b, out!]);
  return [record("matmul", `${m}x${n}x${k}`, times, 2 * m * n * k, err)];
}

if (import.meta.main) {
  if (!Deno.env.get("XDG_RUNTIME_DIR")) Deno.env.set("XDG_RUNTIME_DIR", "/tmp");
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      suite: { type: "string", default: "all" },
      repeats: { type: "string", default: "5" },
      json: { type: "string" },
    },
  });
  const repeats = Number(values.repeats);
  const suites = new Set(
    values.suite === "all" ? ["engine", "sparse", "model", "peers"] : values.suite!.split(","),
  );
  const known = ["engine", "sparse", "model", "peers"];
  const unknown = [...suites].filter((s) => !known.includes(s));
  if (unknown.length) {
    console.error(`bench: unknown suite ${unknown.join(", ")} (expected ${known.join(", ")} or all)`);
    Deno.exit(2);
  }
  const lines: string[] = [];
  const emit = (r: BenchRecord | Record<string, unknown>) => {
    const line = JSON.stringify(r);
    lines.push(line);
    console.log(line);
  };
  await ops.initEngine();
  const e = ops.engine();
  emit({
    suite: "info",
    adapter: e.adapterDescription,
    vendor: e.adapterInfo?.vendor ?? "",
    architecture: e.adapterInfo?.architecture ?? "",
    deno: Deno.version.deno,
    date: new Date().toISOString(),
  });
  if (suites.has("engine")) {
    for (const r of await benchConv(repeats)) emit(r);
    for (const r of await benchMatmul(repeats)) emit(r);
  }
  if (suites.has("sparse")) {
    const { benchSparseConv } = await import("./sparse_conv.ts");
    const { benchSnl } = await import("./snl.ts");
    await benchSparseConv(undefined, { log: emit });
    for (const r of await benchSnl()) emit(r);
  }
  if (suites.has("model")) {
    const { benchModel } = await import("./model.ts");
    await benchModel(undefined, 512, 3, emit);
  }
  if (suites.has("peers")) {
    const { runPeerBenchmarks } = await import("./peers.ts");
    await runPeerBenchmarks({ log: emit });
  }
  if (values.json) await Deno.writeTextFile(values.json, lines.join("\n") + "\n");
}
