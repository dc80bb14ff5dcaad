/**
 * Command-line entry point: `deno run -A cli.ts <command>` (see `deno task`).
 *
 * Commands: `restore` (restore images with the bundled or given weights), `train` (two-stage training with
 * checkpoints and `--resume`), `eval` (PSNR/SSIM or Lab error on a paired dataset), `synth` (synthesize
 * degraded/clean pairs), `demo` (engine demo), `doctor` (check for a WebGPU adapter). Errors are reported
 * as one line, never a stack trace.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { engine, initEngine, NoAdapterError } from "./mod.ts";
import { fitDemo } from "./train/demo.ts";
import { runSynth, SynthUsageError } from "./train/synth_cli.ts";
import { RestoreUsageError, runEval, runRestore } from "./train/restore_cli.ts";
import { ImageError } from "./train/image_io.ts";
import { DatasetError } from "./train/datasets.ts";
import {
  defaultConfig,
  runFiles,
  train,
  type TrainConfig,
  TrainError,
  validateConfig,
} from "./train/train.ts";
import { type Task, TASKS } from "./layers/restore.ts";

/** An error whose message is meant for the user as-is (printed as one line). */
export class UsageError extends Error {}

function quietMesa(): void {
  // Mesa's Vulkan loader prints "XDG_RUNTIME_DIR is invalid or not set" when the variable is missing on
  // headless machines; it is harmless, so give it a valid directory before the adapter is requested.
  try {
    if (!Deno.env.get("XDG_RUNTIME_DIR")) {
      Deno.env.set("XDG_RUNTIME_DIR", Deno.makeTempDirSync({ prefix: "xdg-" }));
    }
  } catch {
    // Without env permission the warning is merely printed.
  }
}

async function demo(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: { steps: { type: "string", default: "150" } } });
  const steps = Number(values.steps);
  if (!Number.isInteger(steps) || steps < 1) {
    throw new UsageError(`--steps must be a positive integer, got ${values.steps}`);
  }
  await initEngine();
  console.log(`spair-gpu engine demo on ${engine().adapterDescription}: fitting a tiny conv net (Adam)`);
  const encoder = new TextEncoder();
  const result = await fitDemo({
    steps,
    onProgress: (p) => {
      const eta = (p.elapsedMs / p.step) * (p.steps - p.step) / 1000;
      const line = `step ${String(p.step).padStart(4)}/${p.steps}  loss ${p.loss.toExponential(3)}  ` +
        `${(p.step / (p.elapsedMs / 1000)).toFixed(1)} steps/s  ETA ${eta.toFixed(1)} s`;
      // Rewrite one line on a terminal; print one line per update into logs and pipes.
      const text = Deno.stdout.isTerminal() ? `\r${line.padEnd(72)}` : `${line}\n`;
      Deno.stdout.writeSync(encoder.encode(text));
    },
  });
  console.log(
    `${Deno.stdout.isTerminal() ? "\n" : ""}loss ${result.firstLoss.toExponential(3)} -> ${
      result.lastLoss.toExponential(3)
    } ` +
      `(${(result.firstLoss / result.lastLoss).toFixed(1)}x lower) in ${result.steps} steps`,
  );
}

/** The browser test drives Debian's Chromium; install it when missing and we are root on Linux. */
async function installChromium(): Promise<void> {
  const path = Deno.env.get("SPAIR_CHROMIUM") ?? "/usr/bin/chromium";
  if (await Deno.stat(path).then(() => true, () => false)) return;
  if (Deno.build.os !== "linux" || Deno.uid?.() !== 0) return;
  console.error("spair-gpu: installing Debian's Chromium for the browser test (apt-get install -y chromium)");
  await aptInstall(["chromium"], (m) => new UsageError(m));
}

/** `apt-get update` then `apt-get install -y` of `packages`; a failure throws `fail(message)`. */
async function aptInstall(packages: string[], fail: (message: string) => Error): Promise<void> {
  for (const cmd of [["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", ...packages]]) {
    const status = await new Deno.Command(cmd[0], {
      args: cmd.slice(1),
      stdout: "null",
      stderr: "inherit",
      env: { DEBIAN_FRONTEND: "noninteractive" },
    }).output().catch(() => null);
    if (!status?.success) throw fail(`\`${cmd.join(" ")}\` failed`);
  }
}

/** Checks for a WebGPU adapter. With `--install`, installs Mesa's software Vulkan driver when none is
 * found on a Debian/Ubuntu machine where we are root (what the README's quick start relies on). */
async function doctor(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: { install: { type: "boolean" }, quiet: { type: "boolean" }, browser: { type: "boolean" } },
  });
  if (values.browser && values.install) await installChromium();
  const describe = async () => (await navigator.gpu?.requestAdapter())?.info?.description ?? null;
  const adapter = await describe().catch(() => null);
  if (!adapter && values.install && Deno.build.os === "linux" && Deno.uid?.() === 0) {
    console.error(
      "spair-gpu: no GPU adapter; installing Mesa's software Vulkan driver (apt-get install -y mesa-vulkan-drivers libvulkan1)",
    );
    await aptInstall(["mesa-vulkan-drivers", "libvulkan1"], (m) => new NoAdapterError(m));
    // The adapter list is fixed per process: check again in a fresh one.
    const check = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", new URL(import.meta.url).pathname, "doctor", "--quiet"],
    }).output();
    if (!check.success) throw new NoAdapterError("still none after installing Mesa");
    return;
  }
  if (!adapter) throw new NoAdapterError();
  if (!values.quiet) console.log(`WebGPU adapter: ${adapter}`);
}

const TRAIN_FLAGS: Record<string, [keyof TrainConfig, "string" | "number"]> = {
  task: ["task", "string"],
  data: ["data", "string"],
  val: ["val", "string"],
  layout: ["layout", "string"],
  preset: ["preset", "string"],
  variant: ["variant", "string"],
  crop: ["crop", "number"],
  "crop-focus": ["cropFocus", "number"],
  "clip-grad-norm": ["clipGradNorm", "number"],
  "output-init": ["outputInit", "string"],
  loss: ["loss", "string"],
  "mse-weight": ["mseWeight", "number"],
  batch: ["batch", "number"],
  "steps-l": ["stepsL", "number"],
  "steps-r": ["stepsR", "number"],
  lr: ["lr", "number"],
  "lr-halve-epochs": ["lrHalveEpochs", "number"],
  tau: ["tau", "number"],
  "pos-weight": ["posWeight", "number"],
  seed: ["seed", "number"],
  "checkpoint-every": ["checkpointEvery", "number"],
  "validate-every": ["validateEvery", "number"],
  "val-crop": ["valCrop", "number"],
  "val-count": ["valCount", "number"],
  "log-every": ["logEvery", "number"],
};

/** `train --task T --data DIR [--val DIR] [--run DIR] [--config FILE] [flags]` or `train --resume DIR`. */
async function trainCommand(args: string[]): Promise<void> {
  const options = Object.fromEntries(Object.keys(TRAIN_FLAGS).map((k) => [k, { type: "string" as const }]));
  const { values } = parseArgs({
    args,
    options: {
      ...options,
      run: { type: "string" },
      config: { type: "string" },
      resume: { type: "string" },
      "max-steps": { type: "string" },
    },
  }) as { values: Record<string, string | undefined> };
  let dir = values.resume;
  let newConfig: TrainConfig | undefined;
  if (!dir) {
    let fileConfig: Partial<TrainConfig> = {};
    if (values.config) {
      try {
        fileConfig = JSON.parse(await Deno.readTextFile(values.config));
      } catch (e) {
        throw new UsageError(
          `${values.config}: unreadable config file (${(e as Error).message.split("\n")[0]})`,
        );
      }
    }
    const task = (values.task ?? fileConfig.task ?? "rain") as Task;
    if (!TASKS.includes(task)) throw new UsageError(`unknown task '${task}' (expected ${TASKS.join("|")})`);
    const config: TrainConfig = { ...defaultConfig(task), ...fileConfig };
    for (const [flag, [key, kind]] of Object.entries(TRAIN_FLAGS)) {
      const v = values[flag];
      if (v === undefined) continue;
      if (kind === "number" && !Number.isFinite(Number(v))) {
        throw new UsageError(`--${flag} expects a number, got ${v}`);
      }
      (config as unknown as Record<string, unknown>)[key] = kind === "number" ? Number(v) : v;
    }
    dir = values.run ??
      `runs/${config.task}-${config.variant}-${new Date().toISOString().replace(/[:.]/g, "-")}`;
    newConfig = validateConfig(config);
  }
  await initEngine();
  const tty = Deno.stderr.isTerminal();
  const encoder = new TextEncoder();
  let lastPrinted = 0;
  const result = await train(dir, {
    config: newConfig,
    maxStepsThisRun: values["max-steps"] ? Number(values["max-steps"]) : undefined,
    onMessage: (line) => console.error(`${tty ? "\r\x1b[K" : ""}${line}`),
    onProgress: (p) => {
      const eta = p.etaSeconds >= 60
        ? `${(p.etaSeconds / 60).toFixed(1)} min`
        : `${p.etaSeconds.toFixed(0)} s`;
      const line = `${p.stage === 1 ? "NetL" : "NetR"} epoch ${p.epoch} step ${p.step}/${p.steps} loss ` +
        `${p.loss.toFixed(5)} ${p.imagesPerSecond.toFixed(2)} img/s ETA ${eta}`;
      if (tty) Deno.stderr.writeSync(encoder.encode(`\r\x1b[K${line}`));
      else if (performance.now() - lastPrinted > 10_000 || p.step === p.steps) {
        lastPrinted = performance.now();
        console.error(line);
      }
    },
  });
  if (tty) Deno.stderr.writeSync(encoder.encode("\n"));
  console.error(
    result.finished
      ? `done: weights in ${runFiles(dir).model}`
      : `stopped after stage ${result.position.stage} step ${result.position.step}; continue with ` +
        `deno task train --resume ${dir}`,
  );
}

const COMMANDS: Record<string, (args: string[]) => Promise<void>> = {
  demo,
  doctor,
  train: trainCommand,
  synth: runSynth,
  restore: runRestore,
  eval: runEval,
};
const LATER: Record<string, string> = {};

/** Runs the CLI; returns the process exit code. */
export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  const run = COMMANDS[command ?? ""];
  if (!run) {
    const message = LATER[command ?? ""] ??
      `unknown command '${command ?? ""}'; commands: ${
        [...Object.keys(COMMANDS), ...Object.keys(LATER)].join(", ")
      }`;
    console.error(`spair-gpu: ${message}`);
    return 2;
  }
  quietMesa();
  try {
    await run(rest);
    return 0;
  } catch (e) {
    const known = e instanceof UsageError || e instanceof NoAdapterError || e instanceof TrainError ||
      e instanceof SynthUsageError || e instanceof RestoreUsageError || e instanceof ImageError ||
      e instanceof DatasetError ||
      (e as Error)?.name === "TypeError";
    const message = e instanceof Error ? e.message.split("\n")[0] : String(e);
    console.error(`spair-gpu ${command}: ${message}`);
    if (!known && Deno.env.get("SPAIR_DEBUG")) console.error(e);
    return 1;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
