/**
 * `deno task bench`: the engine's kernels, SPAIR's model and training step and, in the same process on the
 * same adapter, the shared workloads in peer WebGPU libraries (tfjs-backend-webgpu, jax-js). Prints one
 * JSON line per measurement (the first line describes the environment), then a markdown summary. Every
 * kernel result is checked against float64 references on sampled outputs, and a wrong result is reported as
 * wrong (`correct: false`), never as fast.
 *
 * ```sh
 * deno task bench [--suite kernels,model,train,peers|all] [--adapter low-power|high-performance]
 *   [--json FILE] [--summary FILE.md] [--repeats N] [--budget SECONDS] [--time-limit MINUTES]
 *   [--peers tfjs,jax-js] [--presets tiny,small,base] [--sizes 256,512,1024] [--quick]
 * ```
 *
 * Suites: `kernels` (conv2d forward and forward+backward, matmul 1024^3, SC/SNL across mask densities, SFM),
 * `model` (NetL and NetR forward per preset at 256/512/1024 px), `train` (one NetL and one NetR Adam step
 * per preset at 128x128, batch 4), `peers` (tfjs-webgpu and jax-js on conv and matmul). `engine` and
 * `sparse` are the older names of the dense and sparse halves of `kernels`.
 *
 * Budget: model and train cases whose estimated run (4x the previous size or preset) exceeds `--budget`
 * seconds (default 30 for `all`, else 60), or whose warm-up and timed runs would pass `--time-limit`
 * (default 14 min for `all`, none otherwise), are skipped and recorded with the reason. The other suites
 * are not budgeted: on an idle 2-core llvmpipe machine they take about 5 minutes together. `--quick` shrinks every case for smoke
 * tests.
 *
 * @module
 */

import { parseArgs } from "node:util";
import * as ops from "../mod.ts";
import type { Preset } from "../layers/spair.ts";
import { type BenchRecord, PEER_ENGINES, type PeerEngine } from "./peers.ts";
import { adapterSlug, environmentRecord } from "./env.ts";
import { benchConv, benchMatmul, benchSparse, FULL_KERNELS, QUICK_KERNELS } from "./kernels.ts";
import { benchModel, benchTrain } from "./model.ts";
import { markdownSummary } from "./summary.ts";
import { Budget, GpuTimer } from "./timing.ts";

/** Internal parts a suite name selects. */
type Part = "dense" | "sparse" | "model" | "train" | "peers";

/** Suite names and aliases accepted by `--suite`. */
export const SUITES: Readonly<Record<string, Part[]>> = {
  all: ["dense", "peers", "sparse", "model", "train"],
  kernels: ["dense", "sparse"],
  model: ["model"],
  train: ["train"],
  peers: ["peers"],
  engine: ["dense"],
  sparse: ["sparse"],
};

class UsageError extends Error {}

function positive(name: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!(n > 0)) throw new UsageError(`--${name} must be a positive number, got ${v}`);
  return n;
}

function list<T extends string>(name: string, v: string | undefined, allowed: readonly T[]): T[] | undefined {
  if (v === undefined) return undefined;
  return v.split(",").map((s) => {
    if (!(allowed as readonly string[]).includes(s)) {
      throw new UsageError(`--${name}: unknown value '${s}' (expected ${allowed.join(", ")})`);
    }
    return s as T;
  });
}

/** Parsed command line. */
export interface BenchArgs {
  parts: Set<Part>;
  suiteNames: string[];
  adapter?: GPUPowerPreference;
  json?: string;
  summary?: string;
  repeats?: number;
  budgetS: number;
  timeLimitMin: number;
  peers?: PeerEngine[];
  presets?: Preset[];
  sizes?: number[];
  quick: boolean;
}

/** Parses `deno task bench` arguments; throws a usage error with a one-line message. */
export function parseBenchArgs(args: string[]): BenchArgs {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        suite: { type: "string", default: "all" },
        adapter: { type: "string" },
        json: { type: "string" },
        summary: { type: "string" },
        repeats: { type: "string" },
        budget: { type: "string" },
        "time-limit": { type: "string" },
        peers: { type: "string" },
        presets: { type: "string" },
        sizes: { type: "string" },
        quick: { type: "boolean", default: false },
      },
    }));
  } catch (e) {
    throw new UsageError(e instanceof Error ? e.message : String(e));
  }
  const suiteNames = values.suite.split(",");
  const parts = new Set<Part>();
  for (const s of suiteNames) {
    const p = SUITES[s];
    if (!p) throw new UsageError(`unknown suite '${s}' (expected ${Object.keys(SUITES).join(", ")})`);
    p.forEach((x) => parts.add(x));
  }
  const adapter = values.adapter;
  if (adapter !== undefined && adapter !== "low-power" && adapter !== "high-performance") {
    throw new UsageError(`--adapter must be low-power or high-performance, got ${adapter}`);
  }
  const sizes = values.sizes?.split(",").map((s) => {
    const n = Number(s);
    if (!(n > 0 && n % 4 === 0)) throw new UsageError(`--sizes: ${s} is not a positive multiple of 4`);
    return n;
  });
  const repeats = positive("repeats", values.repeats);
  return {
    parts,
    suiteNames,
    adapter,
    json: values.json,
    summary: values.summary,
    repeats: repeats === undefined ? undefined : Math.ceil(repeats),
    // 30 s in `all` keeps the model and train suites to a few minutes on llvmpipe (see the module doc).
    budgetS: positive("budget", values.budget) ?? (suiteNames.includes("all") ? 30 : 60),
    // `all` must fit in 15 minutes on a 2-core llvmpipe machine; single suites run unbounded by default.
    timeLimitMin: positive("time-limit", values["time-limit"]) ??
      (suiteNames.includes("all") ? 14 : Infinity),
    peers: list("peers", values.peers, PEER_ENGINES),
    presets: list<Preset>("presets", values.presets, ["tiny", "small", "base"]),
    sizes,
    quick: values.quick,
  };
}

/** Runs the selected suites; returns the records (the environment record first). */
export async function runBench(a: BenchArgs, rawArgs: string[]): Promise<void> {
  const start = performance.now();
  await ops.initEngine({ powerPreference: a.adapter });
  const env = await environmentRecord(a.adapter ?? "default", rawArgs);
  const records: BenchRecord[] = [];
  const file = a.json ? await Deno.open(a.json, { write: true, create: true, truncate: true }) : null;
  const encoder = new TextEncoder();
  // Lines go out (and to the file) as soon as they exist, so an interrupted run keeps what it measured.
  const emit = (r: object) => {
    const line = JSON.stringify(r) + "\n";
    console.log(line.trimEnd());
    file?.writeSync(encoder.encode(line));
  };
  emit(env);
  const log = (r: BenchRecord) => {
    records.push(r);
    emit(r);
  };
  const timer = GpuTimer.create(ops.engine().device);
  const sizes = a.quick ? QUICK_KERNELS : FULL_KERNELS;
  const deadlineMs = a.timeLimitMin * 60_000 - (performance.now() - start);
  const all = a.suiteNames.includes("all");

  if (a.parts.has("dense")) {
    // Dense kernels are timed as the engine is used, many runs per submit: samples of about a second, so the
    // ~10-20 ms an await on the queue costs on llvmpipe is spread over several runs (the batch is recorded).
    const t = { repeats: a.repeats ?? 5, budgetMs: 10_000, timer, batchTargetMs: 1_000 };
    for (const r of await benchConv(t, sizes.conv)) log(r);
    for (const r of await benchMatmul(t, sizes.matmul)) log(r);
  }
  if (a.parts.has("peers")) {
    const { runPeerBenchmarks } = await import("./peers.ts");
    // Peer defaults: the slow conv cases once (they take 10-120 s per run on llvmpipe), matmul 3 times.
    await runPeerBenchmarks({
      log,
      engines: a.peers,
      conv: sizes.conv,
      matmul: sizes.matmul,
      repeatsByOp: a.repeats ? { matmul: a.repeats } : undefined,
    });
  }
  if (a.parts.has("sparse")) {
    // SC and SNL take 0.5-15 s per run on llvmpipe: one timed run after warm-up in `all`.
    await benchSparse(
      sizes,
      { repeats: a.repeats ?? 5, budgetMs: 5_000, timer },
      a.repeats ?? (all ? 1 : 3),
      log,
    );
  }
  const perRunMs = a.budgetS * 1000;
  // Leave a share of the time limit for the train suite when both budgeted suites run.
  const trainReserve = a.parts.has("train") ? Math.min(4 * 60_000, deadlineMs / 4) : 0;
  const common = {
    repeats: a.repeats ?? 3,
    caseBudgetMs: 10_000,
    timer,
    log,
    presets: a.presets ?? (a.quick ? ["tiny" as Preset] : undefined),
  };
  if (a.parts.has("model")) {
    const budget = new Budget(perRunMs, deadlineMs - (performance.now() - start) - trainReserve);
    await benchModel(a.sizes ?? (a.quick ? [32] : [256, 512, 1024]), { ...common, budget });
  }
  if (a.parts.has("train")) {
    const budget = new Budget(perRunMs, deadlineMs - (performance.now() - start));
    await benchTrain(a.quick ? 32 : 128, a.quick ? 1 : 4, { ...common, budget });
  }
  timer?.destroy();
  file?.close();

  const md = markdownSummary(env, records, (performance.now() - start) / 1000);
  console.log("\n" + md);
  if (a.summary) await Deno.writeTextFile(a.summary, md);
  console.error(
    `bench: ${records.length} records in ${((performance.now() - start) / 60_000).toFixed(1)} min; to ` +
      `contribute: --json bench/results/${adapterSlug(env.adapter)}-${env.date.slice(0, 10)}.jsonl`,
  );
}

if (import.meta.main) {
  if (!Deno.env.get("XDG_RUNTIME_DIR")) Deno.env.set("XDG_RUNTIME_DIR", "/tmp");
  let args: BenchArgs;
  try {
    args = parseBenchArgs(Deno.args);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    console.error(`bench: ${e.message}`);
    Deno.exit(2);
  }
  await runBench(args, Deno.args);
  // WebGPU devices held by peer libraries can keep the event loop alive.
  Deno.exit(0);
}
