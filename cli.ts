/**
 * Command-line entry point: `deno run -A cli.ts <command>` (see `deno task`).
 *
 * Commands: `demo` (engine demo: fit a tiny conv net with a live progress line). `train`, `restore`, `eval`
 * and `synth` arrive with the training and restoration work. Errors are reported as one line, never a
 * stack trace.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { engine, initEngine, NoAdapterError } from "./mod.ts";
import { fitDemo } from "./train/demo.ts";

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

/** Checks for a WebGPU adapter. With `--install`, installs Mesa's software Vulkan driver when none is
 * found on a Debian/Ubuntu machine where we are root (what the README's quick start relies on). */
async function doctor(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: { install: { type: "boolean" }, quiet: { type: "boolean" } },
  });
  const describe = async () => (await navigator.gpu?.requestAdapter())?.info?.description ?? null;
  const adapter = await describe().catch(() => null);
  if (!adapter && values.install && Deno.build.os === "linux" && Deno.uid?.() === 0) {
    console.error(
      "spair-gpu: no GPU adapter; installing Mesa's software Vulkan driver (apt-get install -y mesa-vulkan-drivers libvulkan1)",
    );
    for (
      const cmd of [["apt-get", "update", "-qq"], [
        "apt-get",
        "install",
        "-y",
        "-qq",
        "mesa-vulkan-drivers",
        "libvulkan1",
      ]]
    ) {
      const status = await new Deno.Command(cmd[0], {
        args: cmd.slice(1),
        stdout: "null",
        stderr: "inherit",
        env: { DEBIAN_FRONTEND: "noninteractive" },
      }).output().catch(() => null);
      if (!status?.success) throw new NoAdapterError(`\`${cmd.join(" ")}\` failed`);
    }
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

const COMMANDS: Record<string, (args: string[]) => Promise<void>> = { demo, doctor };
const LATER: Record<string, string> = {
  train: "training (`deno task train`) is not implemented yet",
  restore: "restoration (`deno task restore`) is not implemented yet",
  eval: "evaluation (`deno task eval`) is not implemented yet",
  synth: "synthetic degradations (`deno task synth`) are not implemented yet",
};

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
    const known = e instanceof UsageError || e instanceof NoAdapterError ||
      (e as Error)?.name === "TypeError";
    const message = e instanceof Error ? e.message.split("\n")[0] : String(e);
    console.error(`spair-gpu ${command}: ${message}`);
    if (!known && Deno.env.get("SPAIR_DEBUG")) console.error(e);
    return 1;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
