/**
 * Command-line entry point: `deno run -A cli.ts <command>` (see `deno task`), `cli.ts help` for the list and
 * `cli.ts <command> --help` for a command's flags.
 *
 * Commands: `restore` (restore images with the bundled or given weights), `train` (two-stage training with
 * checkpoints and `--resume`), `eval` (PSNR/SSIM or Lab error on a paired dataset), `synth` (synthesize
 * degraded/clean pairs), `bench` (benchmarks, from a source checkout), `demo` (engine demo), `doctor`
 * (check for a WebGPU adapter). Each command's flags are declared once in a table (`cli/flags.ts`) that
 * parses them and prints the help. User-facing errors (`UserError`) are reported as one line, never a
 * stack trace.
 *
 * @module
 */

import { engine, initEngine, NoAdapterError } from "./engine/device.ts";
import { UserError } from "./engine/errors.ts";
import { isKeyOf, PRESETS, type Task, TASK_INFO, TASKS, VARIANTS } from "./layers/vocabulary.ts";
import { fitDemo } from "./train/demo.ts";
import { runSynth, SYNTH_SPEC } from "./train/synth_cli.ts";
import { EVAL_SPEC, RESTORE_SPEC, runEval, runRestore } from "./restore/cli.ts";
import { LAYOUTS } from "./train/datasets.ts";
import {
  defaultConfig,
  readConfigFile,
  runFiles,
  train,
  type TrainConfig,
  validateConfig,
} from "./train/train.ts";
import { CONFIG_HELP } from "./train/config_help.ts";
import { type CommandSpec, type Flag, type FlagValues, helpText, kebab, parseFlags } from "./cli/flags.ts";
import { formatSeconds, showKernelCompiles, StatusLine } from "./cli/progress.ts";

/** A command-line mistake (printed as one line). */
export class UsageError extends UserError {}

/** Parses by `spec`; prints the help and returns null when asked for it. */
function parseOrHelp(
  spec: CommandSpec,
  args: string[],
): { values: FlagValues; positionals: string[] } | null {
  const parsed = parseFlags(spec, args, (m) => new UsageError(m));
  if (parsed.help) {
    console.log(helpText(spec, prefixOf(spec.name)));
    return null;
  }
  return parsed;
}

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

const DEMO_SPEC: CommandSpec = {
  name: "demo",
  summary: "engine demo: fit a tiny convolutional network with Adam and print the falling loss",
  usage: ["[--steps N]"],
  flags: [{ name: "steps", kind: "positive-int", default: 150, help: "training steps" }],
  examples: [
    { command: "demo", does: "fit for 150 steps" },
    { command: "demo --steps 20", does: "a quick check that the GPU engine works" },
  ],
};

async function demo(args: string[]): Promise<void> {
  const parsed = parseOrHelp(DEMO_SPEC, args);
  if (!parsed) return;
  const steps = parsed.values.steps as number;
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

const DOCTOR_SPEC: CommandSpec = {
  name: "doctor",
  summary: "check for a WebGPU adapter (and install Mesa's software driver with --install)",
  usage: ["[--install] [--browser] [--quiet]"],
  flags: [
    {
      name: "install",
      kind: "boolean",
      help: "on Debian/Ubuntu as root: install Mesa's software Vulkan driver when no adapter is found",
    },
    { name: "browser", kind: "boolean", help: "with --install: also install Chromium for the browser test" },
    { name: "quiet", kind: "boolean", help: "print nothing when an adapter is found" },
  ],
  examples: [
    { command: "doctor", does: "print the WebGPU adapter" },
    { command: "doctor --install", does: "install a software GPU driver when there is no adapter" },
  ],
};

/** Checks for a WebGPU adapter. With `--install`, installs Mesa's software Vulkan driver when none is
 * found on a Debian/Ubuntu machine where we are root (what the README's quick start relies on). */
async function doctor(args: string[]): Promise<void> {
  const parsed = parseOrHelp(DOCTOR_SPEC, args);
  if (!parsed) return;
  const values = parsed.values;
  if (values.browser && values.install) await installChromium();
  const describe = async () => (await navigator.gpu?.requestAdapter())?.info?.description ?? null;
  const adapter = await describe().catch(() => null);
  if (!adapter && values.install && canInstallMesa()) {
    await installMesa();
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

/** Whether `apt-get` can install Mesa here: Linux, as root. */
const canInstallMesa = () => Deno.build.os === "linux" && Deno.uid?.() === 0;

async function installMesa(): Promise<void> {
  console.error(
    "spair-gpu: no GPU adapter; installing Mesa's software Vulkan driver (apt-get install -y mesa-vulkan-drivers libvulkan1)",
  );
  await aptInstall(["mesa-vulkan-drivers", "libvulkan1"], (m) => new NoAdapterError(m));
}

/** Set by the `restore` task: install Mesa's software driver when there is no adapter, as `doctor --install`
 * does. Checked inside the restore process: a separate doctor process cost 0.3 s of a 4 s warm restore. */
const INSTALL_ENV = "SPAIR_INSTALL_DRIVER";

/** `restore`; under the task, first makes sure of an adapter, installing Mesa (then restoring in a fresh
 * process, as the adapter list is fixed per process) when there is none. */
async function restore(args: string[]): Promise<number | void> {
  const help = args.some((a) => a === "-h" || a === "--help");
  if (Deno.env.get(INSTALL_ENV) === "1" && !help && canInstallMesa()) {
    const missing = await initEngine().then(() => false, (e) => {
      if (e instanceof NoAdapterError) return true;
      throw e;
    });
    if (missing) {
      await installMesa();
      const { code } = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", new URL(import.meta.url).pathname, "restore", ...args],
        env: { [INSTALL_ENV]: "0" },
      }).spawn().status;
      return code;
    }
  }
  await runRestore(args);
}

/** Flag values of a config key: choice lists from the project's vocabulary, numbers checked by
 * `validateConfig` (whose messages name the key). */
const CONFIG_CHOICES: Partial<Record<keyof TrainConfig, readonly string[]>> = {
  task: TASKS,
  preset: Object.keys(PRESETS),
  variant: Object.keys(VARIANTS),
  layout: LAYOUTS,
};

/** One flag per key of the run config (`stepsR` is `--steps-r`), from `defaultConfig`'s keys. */
function configFlags(): Flag[] {
  const defaults = defaultConfig("rain");
  return (Object.keys(defaults) as (keyof TrainConfig)[]).map((key) => {
    const value = defaults[key];
    const perTask = TASKS.some((t) => defaultConfig(t)[key] !== value) && key !== "task";
    const choices = CONFIG_CHOICES[key];
    return {
      name: kebab(key),
      kind: choices ? "choice" : typeof value === "number" ? "number" : "string",
      choices,
      value: choices
        ? undefined
        : typeof value === "number"
        ? Number.isInteger(value) && key !== "clipGradNorm" ? "N" : "X"
        : key === "data" || key === "val"
        ? "DIR"
        : "TEXT",
      defaultText: perTask
        ? `per task: ${TASKS.map((t) => `${t} ${defaultConfig(t)[key]}`).join(", ")}`
        : value === ""
        ? undefined
        : String(value),
      help: CONFIG_HELP[key],
    };
  });
}

/** `train`'s flags: the run config's keys, then the run's folder and controls. */
const TRAIN_SPEC: CommandSpec = {
  name: "train",
  summary: "train SPAIR in two stages (NetL, then NetR) with checkpoints; resume with --resume",
  usage: ["--task TASK --data DIR [--val DIR] [--run DIR] [--config FILE] [flags]", "--resume DIR [flags]"],
  flags: [
    ...configFlags(),
    {
      name: "run",
      kind: "string",
      value: "DIR",
      defaultText: "runs/<task>-<variant>-<time>",
      help: "folder of a new run (config, checkpoints, log, weights)",
    },
    { name: "config", kind: "string", value: "FILE", help: "JSON file of settings; flags override it" },
    {
      name: "resume",
      kind: "string",
      value: "DIR",
      help:
        "continue the run in DIR; data, val, jitter, steps, lr, lr-halve-epochs and the intervals may change",
    },
    { name: "max-steps", kind: "positive-int", help: "stop after this many steps in this process" },
  ],
  notes: [
    "Settings are saved in the run folder's config.json; a --config file uses the same keys (camelCase).",
  ],
  examples: [
    {
      command: "train --task rain --data data/rain/train --val data/rain/test --run runs/rain",
      does: "train the tiny SPAIR model on rain pairs",
    },
    { command: "train --resume runs/rain --steps-r 8000", does: "continue that run and train NetR longer" },
  ],
};

/** `train --task T --data DIR [--val DIR] [--run DIR] [--config FILE] [flags]` or `train --resume DIR`. */
async function trainCommand(args: string[]): Promise<number | void> {
  const parsed = parseOrHelp(TRAIN_SPEC, args);
  if (!parsed) return;
  const { values } = parsed;
  // The config keys given as flags, by key.
  const given: Record<string, unknown> = {};
  for (const key of Object.keys(defaultConfig("rain"))) {
    if (values[kebab(key)] !== undefined) given[key] = values[kebab(key)];
  }
  let dir = values.resume as string | undefined;
  let newConfig: TrainConfig | undefined;
  let changes: Partial<TrainConfig> | undefined;
  if (dir) {
    if (values.config !== undefined || values.run !== undefined) {
      throw new UsageError("--config and --run start a new run; a resumed run keeps its folder and settings");
    }
    if (Object.keys(given).length > 0) changes = given as Partial<TrainConfig>;
  } else {
    const fileConfig = values.config ? await readConfigFile(values.config as string) : {};
    const task = (given.task ?? fileConfig.task ?? "rain") as Task;
    if (!isKeyOf(TASK_INFO, task)) {
      throw new UsageError(`unknown task '${task}' (expected ${TASKS.join("|")})`);
    }
    const config = { ...defaultConfig(task), ...fileConfig, ...given } as TrainConfig;
    dir = (values.run as string | undefined) ??
      `runs/${config.task}-${config.variant}-${new Date().toISOString().replace(/[:.]/g, "-")}`;
    newConfig = validateConfig(config);
  }
  await initEngine();
  const status = new StatusLine();
  const stopCompiles = showKernelCompiles(status);
  const result = await train(dir, {
    config: newConfig,
    changes,
    maxStepsThisRun: values["max-steps"] as number | undefined,
    onMessage: (line) => status.print(line),
    onProgress: (p) => {
      const line = `${p.stage === 1 ? "NetL" : "NetR"} epoch ${p.epoch} step ${p.step}/${p.steps} loss ` +
        `${p.loss.toFixed(5)} ${p.stepsPerSecond.toFixed(2)} steps/s ${p.imagesPerSecond.toFixed(2)} img/s ` +
        `ETA ${formatSeconds(p.etaSeconds)}`;
      status.update(line, p.step === p.steps);
    },
  });
  status.clear();
  stopCompiles();
  console.error(
    result.finished
      ? `done: weights in ${runFiles(dir).model}`
      : `stopped after stage ${result.position.stage} step ${result.position.step}; continue with ` +
        `deno task train --resume ${dir}`,
  );
  // Stopped by Ctrl-C or a kill: the shell's convention, 128 + the signal's number.
  if (result.signal) return result.signal === "SIGINT" ? 130 : 143;
}

/** A command: its table (null for bench, whose table lives with it) and what runs it. */
interface Command {
  summary: string;
  spec?: CommandSpec;
  /** Resolves to the exit code, or nothing for 0. */
  run: (args: string[]) => Promise<number | void>;
}

/** `bench` runs from a source checkout (bench/ is not in the published package). */
async function bench(args: string[]): Promise<void> {
  const url = new URL("./bench/main.ts", import.meta.url);
  if (url.protocol === "file:" && !(await Deno.stat(url).then(() => true, () => false))) {
    throw new UsageError("bench needs a source checkout of spair-gpu (bench/ is not in the package)");
  }
  const module = await import(url.href);
  await module.benchCommand(args);
}

const COMMANDS: Record<string, Command> = {
  restore: { summary: RESTORE_SPEC.summary, spec: RESTORE_SPEC, run: restore },
  train: { summary: TRAIN_SPEC.summary, spec: TRAIN_SPEC, run: trainCommand },
  eval: { summary: EVAL_SPEC.summary, spec: EVAL_SPEC, run: runEval },
  synth: { summary: SYNTH_SPEC.summary, spec: SYNTH_SPEC, run: runSynth },
  bench: { summary: "benchmarks: kernels, model, training step and peer WebGPU libraries", run: bench },
  demo: { summary: DEMO_SPEC.summary, spec: DEMO_SPEC, run: demo },
  doctor: { summary: DOCTOR_SPEC.summary, spec: DOCTOR_SPEC, run: doctor },
};

/** The command tables, for tests (bench's is `BENCH_SPEC` in bench/main.ts). */
export const COMMAND_SPECS: CommandSpec[] = Object.values(COMMANDS).flatMap((c) => c.spec ? [c.spec] : []);

/** How a command's usage lines start: `deno task restore` or `deno run -A cli.ts doctor`. */
function prefixOf(command: string): string {
  return command === "doctor" || command === "demo" ? "deno run -A cli.ts" : "deno task";
}

/** `cli.ts help`: the commands and how to get their help. */
export function generalHelp(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((c) => c.length)) + 2;
  return [
    "spair-gpu: SPAIR image restoration on a WebGPU tensor engine",
    "",
    "usage:",
    "  deno task <command> [flags]         (or: deno run -A cli.ts <command> [flags])",
    "  deno task <command> --help          flags of a command, with defaults and examples",
    "",
    "commands:",
    ...Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(width)}${c.summary}`),
    "",
    "examples:",
    "  deno task restore samples/rain.png --mask restored/",
    "      restore the bundled sample image",
    "  deno task train --task rain --data data/rain/train --run runs/rain",
    "      train a model on your own pairs",
  ].join("\n");
}

/** Runs the CLI; returns the process exit code. */
export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === "help" || command === "--help" || command === "-h") {
    const topic = rest[0] === undefined ? undefined : COMMANDS[rest[0]];
    if (topic) return await main([rest[0], "--help"]);
    console.log(generalHelp());
    return rest[0] === undefined ? 0 : 2;
  }
  const entry = COMMANDS[command ?? ""];
  if (!entry) {
    console.error(
      command === undefined
        ? generalHelp()
        : `spair-gpu: unknown command '${command}'; commands: ${Object.keys(COMMANDS).join(", ")} ` +
          "(deno run -A cli.ts help)",
    );
    return 2;
  }
  quietMesa();
  try {
    return (await entry.run(rest)) ?? 0;
  } catch (e) {
    const known = e instanceof UserError || (e as Error)?.name === "TypeError";
    const message = e instanceof Error ? e.message.split("\n")[0] : String(e);
    console.error(`spair-gpu ${command}: ${message}`);
    if (!known && Deno.env.get("SPAIR_DEBUG")) console.error(e);
    return 1;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
