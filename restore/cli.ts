/**
 * `restore` and `eval` commands: load weights (bundled by default), restore files or folders tile by tile,
 * write outputs atomically in the input's format; evaluate a paired dataset the way the paper does. Each
 * command's flags are declared once in its {@link CommandSpec}, which parses them and prints `--help`.
 *
 * @module
 */

import { engine, initEngine } from "../engine/device.ts";
import { UserError } from "../engine/errors.ts";
import type { SpairModel } from "../layers/spair.ts";
import {
  namesOf,
  type Preset,
  PRESETS,
  type Task,
  TASKS,
  type Variant,
  VARIANTS,
} from "../layers/vocabulary.ts";
import { type RestoreOptions, restorePlanar } from "./restore.ts";
import { loadModel, type ModelInfo } from "./weights.ts";
import {
  DEFAULT_MAX_PIXELS,
  fromPlanarRgb,
  ImageError,
  maskToImage,
  readImage,
  toPlanarRgb,
  writeImageAtomic,
} from "../train/image_io.ts";
import { type Layout, LAYOUTS, listPairs } from "../train/datasets.ts";
import { evaluate, formatSummary, writeEvalOutputs } from "./eval.ts";
import { type CommandSpec, type FlagValues, helpText, parseFlags } from "../cli/flags.ts";
import { Progress, showKernelCompiles, StatusLine } from "../cli/progress.ts";

/** A command-line mistake or unusable input, reported as one line. */
export class RestoreUsageError extends UserError {}

const IMAGE_EXTENSIONS = /\.(png|jpe?g)$/i;

/** The bundled weights of a task (`weights/<task>.safetensors` next to this package). */
export function bundledWeights(task: Task): string {
  return new URL(`../weights/${task}.safetensors`, import.meta.url).pathname;
}

/** `restore`'s flags, help and examples. */
export const RESTORE_SPEC: CommandSpec = {
  name: "restore",
  summary: "restore images (PNG, JPEG) with a trained SPAIR model; outputs keep the input's format",
  usage: ["IMAGE_OR_FOLDER... [flags]"],
  positionals: "IMAGE_OR_FOLDER...",
  flags: [
    {
      name: "out",
      short: "o",
      kind: "string",
      default: "restored",
      value: "PATH",
      help: "output folder, or output file for a single input with an image extension",
    },
    {
      name: "task",
      kind: "choice",
      choices: TASKS,
      defaultText: "rain, or the task the weights name",
      help: "degradation to remove; picks the bundled weights",
    },
    {
      name: "weights",
      kind: "string",
      value: "FILE",
      defaultText: "weights/<task>.safetensors",
      help:
        "safetensors weights written by `deno task train`: a model.safetensors, or a run's checkpoint.safetensors",
    },
    {
      name: "mask",
      kind: "string",
      value: "PATH",
      help: "also write the predicted degradation mask (folder, or a .png file for one input)",
    },
    { name: "tile", kind: "positive-int", default: 512, help: "largest tile side in pixels" },
    {
      name: "overlap",
      kind: "positive-int",
      default: 96,
      help: "overlap between neighbouring tiles in pixels",
    },
    {
      name: "global-layers",
      kind: "choice",
      choices: ["auto", "exact", "per-tile"],
      default: "auto",
      help: "image-wide layers of tiled images: over the whole image (exact) or per tile",
    },
    {
      name: "max-pixels",
      kind: "positive-int",
      default: DEFAULT_MAX_PIXELS,
      help: "refuse larger images, from their header (50 MP take about 11 GB of memory)",
    },
    { name: "overwrite", kind: "boolean", help: "allow an output to replace one of the inputs" },
    {
      name: "preset",
      kind: "choice",
      choices: Object.keys(PRESETS),
      help: "refuse weights of another preset",
    },
    {
      name: "variant",
      kind: "choice",
      choices: Object.keys(VARIANTS),
      help: "refuse weights of another variant",
    },
  ],
  examples: [
    {
      command: "restore samples/rain.png --mask restored/",
      does: "restore the bundled sample; write it and its mask to restored/",
    },
    {
      command: "restore photos/ -o clean/ --task raindrop --tile 256",
      does: "restore a folder of raindrop photos in 256 px tiles",
    },
  ],
};

/** `eval`'s flags, help and examples. */
export const EVAL_SPEC: CommandSpec = {
  name: "eval",
  summary: "measure PSNR/SSIM (Lab error for shadows) of a model on a paired dataset",
  usage: ["--task TASK --data DIR [flags]"],
  flags: [
    { name: "task", kind: "choice", choices: TASKS, help: "task of the dataset and its metrics (required)" },
    { name: "data", kind: "string", value: "DIR", help: "paired dataset folder (required)" },
    {
      name: "layout",
      kind: "choice",
      choices: LAYOUTS,
      default: "auto",
      help: "dataset folder layout (see docs/training.md)",
    },
    {
      name: "weights",
      kind: "string",
      value: "FILE",
      defaultText: "weights/<task>.safetensors",
      help: "safetensors weights to evaluate (a model.safetensors, or a run's checkpoint.safetensors)",
    },
    {
      name: "out",
      kind: "string",
      value: "DIR",
      defaultText: "runs/eval-<task>-<variant>",
      help: "folder for the CSV, JSON and summary",
    },
    { name: "tile", kind: "positive-int", default: 512, help: "largest tile side in pixels" },
  ],
  examples: [
    {
      command: "eval --task rain --data data/rain100l",
      does: "evaluate the bundled rain weights on Rain100L",
    },
    {
      command: "eval --task shadow --data data/ISTD/test --layout istd --weights runs/x/model.safetensors",
      does: "evaluate trained shadow weights on ISTD's test set",
    },
  ],
};

/** Parses by `spec`; prints the help and returns null when asked for it. */
function parseOrHelp(
  spec: CommandSpec,
  args: string[],
): { values: FlagValues; positionals: string[] } | null {
  const parsed = parseFlags(spec, args, (m) => new RestoreUsageError(m));
  if (parsed.help) {
    console.log(helpText(spec));
    return null;
  }
  return parsed;
}

/** Loads weights from a file, with one-line errors for a missing or unusable file. */
export async function loadWeightsFile(
  path: string,
  expected: { preset?: Preset; variant?: Variant } = {},
): Promise<{ model: SpairModel; info: ModelInfo }> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    const why = e instanceof Deno.errors.NotFound ? "weights file not found" : `cannot read weights (${e})`;
    throw new RestoreUsageError(`${path}: ${why}`);
  }
  try {
    return loadModel(bytes, path, expected);
  } catch (e) {
    throw new RestoreUsageError((e as Error).message.split("\n")[0]);
  }
}

async function expandInputs(inputs: string[]): Promise<{ path: string; name: string }[]> {
  const out: { path: string; name: string }[] = [];
  for (const input of inputs) {
    let stat: Deno.FileInfo;
    try {
      stat = await Deno.stat(input);
    } catch {
      throw new ImageError(input, "file not found");
    }
    if (stat.isDirectory) {
      const names: string[] = [];
      for await (const e of Deno.readDir(input)) {
        if (e.isFile && IMAGE_EXTENSIONS.test(e.name)) names.push(e.name);
      }
      if (names.length === 0) throw new RestoreUsageError(`${input}: no PNG or JPEG images in this folder`);
      for (const name of names.sort()) out.push({ path: `${input.replace(/\/$/, "")}/${name}`, name });
    } else {
      out.push({ path: input, name: input.split("/").pop()! });
    }
  }
  return out;
}

function dirOf(path: string): string {
  return path.includes("/") ? path.replace(/\/[^/]*$/, "") || "/" : ".";
}

/** Where an output goes: `out` is a file path when it has an image extension and there is one input. */
function outputPath(out: string, name: string, single: boolean, suffix = ""): string {
  if (single && IMAGE_EXTENSIONS.test(out)) return out;
  const stem = name.replace(/\.[^.]+$/, "");
  const ext = name.slice(stem.length);
  return `${out.replace(/\/$/, "")}/${stem}${suffix}${ext}`;
}

/** The real path of an existing file, or null. */
async function realPathOf(path: string): Promise<string | null> {
  return await Deno.realPath(path).catch(() => null);
}

/** Checks the planned outputs before any work: two inputs must not write the same file, and no output
 * may replace an input unless `overwrite` is set. */
async function checkOutputs(
  plan: { input: { path: string }; outputs: string[] }[],
  overwrite: boolean,
): Promise<void> {
  const writers = new Map<string, string>();
  const inputs = new Map<string, string>();
  for (const { input } of plan) {
    const real = await realPathOf(input.path);
    if (real) inputs.set(real, input.path);
  }
  for (const { input, outputs } of plan) {
    for (const output of outputs) {
      // The same file under any spelling (./x, dir/../x, a symlinked folder).
      const name = output.split("/").pop()!;
      const key = (await realPathOf(output)) ??
        ((await realPathOf(dirOf(output))) ?? `${Deno.cwd()}/${dirOf(output)}`) + `/${name}`;
      const other = writers.get(key);
      if (other !== undefined) {
        throw new RestoreUsageError(
          `${other} and ${input.path} would both be written to ${output}; restore them into ` +
            `different output folders (-o), or rename one`,
        );
      }
      writers.set(key, input.path);
      const replaced = inputs.get(key);
      if (replaced !== undefined && !overwrite) {
        throw new RestoreUsageError(
          `${output} would replace the input ${replaced}; choose another output (-o) or pass --overwrite`,
        );
      }
    }
  }
}

/** `restore INPUT... [flags]` (see {@link RESTORE_SPEC}). */
export async function runRestore(args: string[]): Promise<void> {
  const parsed = parseOrHelp(RESTORE_SPEC, args);
  if (!parsed) return;
  const { values, positionals } = parsed;
  if (positionals.length === 0) {
    throw new RestoreUsageError(
      "no input: deno task restore IMAGE_OR_FOLDER... [-o OUT] [--task rain]; see --help",
    );
  }
  const task = values.task as Task | undefined;
  const out = values.out as string;
  const mask = values.mask as string | undefined;
  const tile = values.tile as number;
  const overlap = values.overlap as number;
  const globalLayers = values["global-layers"] as RestoreOptions["globalLayers"];
  const inputs = await expandInputs(positionals);
  const single = inputs.length === 1;
  const weightsPath = (values.weights as string | undefined) ?? bundledWeights(task ?? "rain");
  const outIsFile = single && IMAGE_EXTENSIONS.test(out);
  const maskIsFile = mask !== undefined && single && IMAGE_EXTENSIONS.test(mask);
  const maskPathOf = (name: string) =>
    maskIsFile ? mask! : outputPath(mask!, name, false, "_mask").replace(/\.jpe?g$/i, ".png");
  await checkOutputs(
    inputs.map((input) => ({
      input,
      outputs: [outputPath(out, input.name, single), ...(mask === undefined ? [] : [maskPathOf(input.name)])],
    })),
    values.overwrite === true,
  );
  await initEngine();
  const status = new StatusLine();
  const stopCompiles = showKernelCompiles(status);
  const { model, info } = await loadWeightsFile(weightsPath, {
    preset: values.preset as Preset | undefined,
    variant: values.variant as Variant | undefined,
  });
  if (task && info.task && task !== info.task) {
    console.error(`warning: ${weightsPath} was trained for ${info.task}, not ${task}`);
  }
  if (mask !== undefined && !model.netR.usesGuidance) {
    throw new RestoreUsageError(
      `--mask: ${weightsPath} is a ${info.variant} model (the dense baseline), which predicts no mask; drop --mask`,
    );
  }
  await Deno.mkdir(outIsFile ? dirOf(out) : out, { recursive: true })
    .catch((e) => {
      throw new RestoreUsageError(`${out}: cannot create the output folder (${e.message})`);
    });
  if (mask !== undefined && !maskIsFile) await Deno.mkdir(mask, { recursive: true });
  // Fail before minutes of work, not after: probe that the output folders take files.
  for (
    const dir of new Set([
      outIsFile ? dirOf(out) : out,
      ...(mask === undefined ? [] : [maskIsFile ? dirOf(mask) : mask]),
    ])
  ) {
    const probe = `${dir}/.spair-write-test-${crypto.randomUUID().slice(0, 8)}`;
    try {
      await Deno.writeFile(probe, new Uint8Array());
      await Deno.remove(probe);
    } catch (e) {
      throw new RestoreUsageError(
        `${dir}: output folder is not writable (${(e as Error).message.split("\n")[0]})`,
      );
    }
  }
  status.print(
    `restoring ${inputs.length} image${
      single ? "" : "s"
    } with ${weightsPath} (${info.preset} ${info.variant}` +
      `${info.task ? `, ${info.task}` : ""}) on ${engine().adapterDescription}`,
  );
  const progress = new Progress(inputs.length);
  const failures: string[] = [];
  for (const [index, input] of inputs.entries()) {
    try {
      await restoreOne(index, input);
    } catch (e) {
      // One bad file must not cost the others: report it, go on, and fail at the end.
      if (single) throw e;
      const message = (e as Error).message?.split("\n")[0] ?? String(e);
      failures.push(message.startsWith(input.path) ? message : `${input.path}: ${message}`);
      status.print(`[${index + 1}/${inputs.length}] failed: ${failures.at(-1)}`);
    }
  }
  stopCompiles();
  if (failures.length) {
    console.error(`${failures.length} of ${inputs.length} images failed:`);
    for (const line of failures) console.error(`  ${line}`);
    throw new RestoreUsageError(
      `${failures.length} of ${inputs.length} images failed (listed above); the others were restored`,
    );
  }

  async function restoreOne(index: number, input: { path: string; name: string }): Promise<void> {
    const started = performance.now();
    const image = await readImage(input.path, { maxPixels: values["max-pixels"] as number });
    const planar = toPlanarRgb(image);
    const overall = (partial = 0) => progress.report(index, "images", partial);
    if (status.tty) status.update(`${overall()}: ${input.name}`);
    const result = await restorePlanar(model, planar, image.width, image.height, {
      tile,
      overlap,
      globalLayers,
      // Large images take minutes on a CPU adapter: show that tiles are moving.
      onTile: (done, total) => {
        if (total > 1) status.update(`${overall(done / total)}: ${input.name} tile ${done}/${total}`);
      },
    });
    if (!result.exactGlobalLayers) {
      status.print(
        `  ${input.name}: large image, SFM statistics and SNL rows/columns computed per tile ` +
          `(--global-layers exact computes them over the whole image, in more time and memory)`,
      );
    }
    const target = outputPath(out, input.name, single);
    await writeImageAtomic(target, fromPlanarRgb(result.restored, image));
    let maskNote = "";
    if (mask !== undefined && result.mask) {
      const maskPath = maskPathOf(input.name);
      await writeImageAtomic(maskPath, maskToImage(result.mask, image.width, image.height), "png");
      maskNote = `, mask ${maskPath}`;
    }
    const degraded = result.mask
      ? `${(100 * result.mask.reduce((a, b) => a + b, 0) / result.mask.length).toFixed(1)}% degraded, `
      : "";
    progress.report(index + 1, "images");
    status.print(
      `[${
        index + 1
      }/${inputs.length}] ${input.path} -> ${target}${maskNote} (${image.width}x${image.height}, ` +
        `${degraded}${((performance.now() - started) / 1000).toFixed(1)} s)` +
        (index + 1 < inputs.length ? `; ${progress.report(index + 1, "images")}` : ""),
    );
  }
}

/** `eval --task T --data DIR [flags]` (see {@link EVAL_SPEC}). */
export async function runEval(args: string[]): Promise<void> {
  const parsed = parseOrHelp(EVAL_SPEC, args);
  if (!parsed) return;
  const { values } = parsed;
  const task = values.task as Task | undefined;
  if (!task) throw new RestoreUsageError(`--task is required (${namesOf(TASKS)})`);
  const data = values.data as string | undefined;
  if (!data) throw new RestoreUsageError("--data DIR is required");
  const tile = values.tile as number;
  const pairs = await listPairs(data, values.layout as Layout);
  const weightsPath = (values.weights as string | undefined) ?? bundledWeights(task);
  await initEngine();
  const status = new StatusLine();
  const stopCompiles = showKernelCompiles(status);
  const { model, info } = await loadWeightsFile(weightsPath);
  status.print(
    `evaluating ${pairs.length} pairs of ${data} with ${weightsPath} (${info.preset} ${info.variant})`,
  );
  const progress = new Progress(pairs.length);
  if (status.tty) status.update(progress.report(0, "images"));
  const report = await evaluate({
    task,
    pairs,
    restore: async (planar, w, h) => {
      // Net1's mask is null (it uses none), so only the other variants' masks are scored.
      return await restorePlanar(model, planar, w, h, { tile });
    },
    onProgress: (done, _total, row) => {
      const left = done < pairs.length ? `; ${progress.report(done, "images")}` : "";
      status.print(`[${done}/${pairs.length}] ${row.name} ${(row.restoreMs / 1000).toFixed(1)} s${left}`);
      if (status.tty && done < pairs.length) status.update(progress.report(done, "images"));
    },
  });
  stopCompiles();
  const out = (values.out as string | undefined) ?? `runs/eval-${task}-${info.variant}`;
  const paths = await writeEvalOutputs(report, out);
  console.log(formatSummary(report));
  console.error(`wrote ${paths.csv}, ${paths.summary}, ${paths.json}`);
}
