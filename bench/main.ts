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
 * `model` (NetL and NetR forward per preset at 256/512/1024 px, with FLOPs counted from the layer shapes and
 * the rate as a share of the conv 64->64 kernel's, measured in the same run), `train` (one NetL and one NetR
 * Adam step per preset at 64x64, batch 8; steps/s and images/s), `profile` (one NetR training step and one
 * NetL + NetR forward by kernel family: GPU-timestamp time and dispatch count), `peers` (tfjs-webgpu and
 * jax-js on conv and matmul). `engine` and `sparse` are the older names of the dense and sparse halves of
 * `kernels`.
 *
 * Budget: model and train cases whose estimated run (4x the previous size or preset) exceeds `--budget`
 * seconds (default 30 for `all`, else 60), or whose warm-up and timed runs would pass `--time-limit`
 * (default 14 min for `all`, none otherwise), are skipped and recorded with the reason. The other suites
 * are not budgeted: on an idle 2-core llvmpipe machine they take about 5 minutes together. `--quick` shrinks every case for smoke
 * tests.
 *
 * @module
 */

import * as ops from "../mod.ts";
import { type CommandSpec, FlagError, helpText, parseFlags } from "../cli/flags.ts";
import type { Preset } from "../layers/spair.ts";
import { type BenchRecord, PEER_ENGINES, type PeerEngine } from "./peers.ts";
import { adapterSlug, environmentRecord } from "./env.ts";
import { benchConv, benchMatmul, benchSparse, FULL_KERNELS, QUICK_KERNELS } from "./kernels.ts";
import { benchModel, benchTrain } from "./model.ts";
import { benchProfile, profileMarkdown } from "./profile.ts";
import { markdownSummary } from "./summary.ts";
import { Budget, GpuTimer } from "./timing.ts";

/** Internal parts a suite name selects. */
type Part = "dense" | "sparse" | "model" | "train" | "peers" | "profile";

/** Suite names and aliases accepted by `--suite`. */
export const SUITES: Readonly<Record<string, Part[]>> = {
  all: ["dense", "peers", "sparse", "model", "train"],
  kernels: ["dense", "sparse"],
  model: ["model"],
  profile: ["profile"],
  train: ["train"],
  peers: ["peers"],
  engine: ["dense"],
  sparse: ["sparse"],
};

const UsageError = FlagError;

/** `bench`'s flags, help and examples (the same table parses the arguments). */
export const BENCH_SPEC: CommandSpec = {
  name: "bench",
  summary: "benchmarks: kernels, model, training step and peer WebGPU libraries (JSON lines + summary)",
  usage: ["[flags]"],
  flags: [
    {
      name: "suite",
      kind: "string",
      value: Object.keys(SUITES).join("|"),
      default: "all",
      help: "suites to run, comma-separated",
    },
    {
      name: "adapter",
      kind: "choice",
      choices: ["low-power", "high-performance"],
      defaultText: "the default adapter",
      help: "GPU power preference",
    },
    { name: "json", kind: "string", value: "FILE", help: "also write the JSON lines to FILE" },
    { name: "summary", kind: "string", value: "FILE.md", help: "also write the markdown summary to FILE.md" },
    { name: "repeats", kind: "positive", defaultText: "per suite", help: "timed runs per case" },
    {
      name: "budget",
      kind: "positive",
      value: "SECONDS",
      defaultText: "30 for all, else 60",
      help: "skip model/train cases estimated to run longer",
    },
    {
      name: "time-limit",
      kind: "positive",
      value: "MINUTES",
      defaultText: "14 for all, else none",
      help: "skip model/train cases that would end after this",
    },
    {
      name: "peers",
      kind: "string",
      value: PEER_ENGINES.join(","),
      defaultText: "all",
      help: "peer libraries",
    },
    {
      name: "presets",
      kind: "string",
      value: Object.keys(ops.PRESETS).join(","),
      defaultText: "all",
      help: "model presets",
    },
    {
      name: "sizes",
      kind: "string",
      value: "256,512,1024",
      defaultText: "256,512,1024",
      help: "model input sizes",
    },
    { name: "quick", kind: "boolean", help: "shrink every case (smoke test)" },
  ],
  examples: [
    { command: "bench --suite kernels", does: "time the engine's kernels" },
    {
      command: "bench --suite model --presets tiny --sizes 256 --json out.jsonl",
      does: "time the tiny model at 256 px and keep the records",
    },
  ],
};

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
  const parsed = parseFlags(BENCH_SPEC, args);
  if (parsed.help) throw new UsageError("--help is handled by benchCommand");
  const values = parsed.values as Record<string, string | undefined>;
  const numbers = parsed.values as Record<string, number | undefined>;
  const suiteNames = values.suite!.split(",");
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
  const repeats = numbers.repeats;
  return {
    parts,
    suiteNames,
    adapter,
    json: values.json,
    summary: values.summary,
    repeats: repeats === undefined ? undefined : Math.ceil(repeats),
    // 30 s in `all` keeps the model and train suites to a few minutes on llvmpipe (see the module doc).
    budgetS: numbers.budget ?? (suiteNames.includes("all") ? 30 : 60),
    // `all` must fit in 15 minutes on a 2-core llvmpipe machine; single suites run unbounded by default.
    timeLimitMin: numbers["time-limit"] ??
      (suiteNames.includes("all") ? 14 : Infinity),
    peers: list("peers", values.peers, PEER_ENGINES),
    presets: list<Preset>("presets", values.presets, Object.keys(ops.PRESETS) as Preset[]),
    sizes,
    quick: parsed.values.quick === true,
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

  // The conv 64->64 forward kernel's rate is the yardstick of the model suite's utilization.
  let convGflops: number | undefined;
  if (a.parts.has("dense") || a.parts.has("model")) {
    // Dense kernels are timed as the engine is used, many runs per submit: samples of about a second, so the
    // ~10-20 ms an await on the queue costs on llvmpipe is spread over several runs (the batch is recorded).
    const t = { repeats: a.repeats ?? 5, budgetMs: 10_000, timer, batchTargetMs: 1_000 };
    for (const r of await benchConv(t, sizes.conv)) {
      log(r);
      if (r.op === "conv2d_fwd" && r.correct) convGflops = r.gflops;
    }
    if (a.parts.has("dense")) { for (const r of await benchMatmul(t, sizes.matmul)) log(r); }
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
    await benchModel(a.sizes ?? (a.quick ? [32] : [256, 512, 1024]), { ...common, budget, convGflops });
  }
  if (a.parts.has("train")) {
    const budget = new Budget(perRunMs, deadlineMs - (performance.now() - start));
    await benchTrain(a.quick ? 32 : 64, a.quick ? 1 : 8, { ...common, budget });
  }
  let profile = "";
  if (a.parts.has("profile")) {
    const results = await benchProfile(a.quick ? { batch: 1, size: 32, forwardSize: 32 } : {});
    profile = profileMarkdown(results);
    for (const r of results) emit({ suite: "profile", ...r });
  }
  timer?.destroy();
  file?.close();

  const md = markdownSummary(env, records, (performance.now() - start) / 1000) +
    (profile ? `\n## Profile by kernel family\n\n${profile}` : "");
  console.log("\n" + md);
  if (a.summary) await Deno.writeTextFile(a.summary, md);
  console.error(
    `bench: ${records.length} records in ${((performance.now() - start) / 60_000).toFixed(1)} min; to ` +
      `contribute: --json bench/results/${adapterSlug(env.adapter)}-${env.date.slice(0, 10)}.jsonl`,
  );
}

/** `cli.ts bench [flags]`: prints the help, or runs the suites and exits (peer libraries' devices can keep
 * the event loop alive). */
export async function benchCommand(args: string[]): Promise<void> {
  if (parseFlags(BENCH_SPEC, args).help) {
    console.log(helpText(BENCH_SPEC));
    return;
  }
  await runBench(parseBenchArgs(args), args);
  Deno.exit(0);
}

if (import.meta.main) {
  if (!Deno.env.get("XDG_RUNTIME_DIR")) Deno.env.set("XDG_RUNTIME_DIR", "/tmp");
  try {
    await benchCommand(Deno.args);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    console.error(`bench: ${e.message}`);
    Deno.exit(2);
  }
}
