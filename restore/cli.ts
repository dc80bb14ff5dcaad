/**
 * `restore` and `eval` commands: load weights (bundled by default), restore files or folders tile by tile,
 * write outputs atomically in the input's format; evaluate a paired dataset the way the paper does.
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  engine,
  initEngine,
  loadModel,
  type ModelInfo,
  type Preset,
  type RestoreOptions,
  restorePlanar,
  type SpairModel,
  type Task,
  TASKS,
  type Variant,
} from "../mod.ts";
import {
  fromPlanarRgb,
  ImageError,
  maskToImage,
  readImage,
  toPlanarRgb,
  writeImageAtomic,
} from "./image_io.ts";
import { type Layout, LAYOUTS, listPairs } from "./datasets.ts";
import { evaluate, formatSummary, writeEvalOutputs } from "./eval.ts";

/** A command-line mistake or unusable input, reported as one line. */
export class RestoreUsageError extends Error {}

const IMAGE_EXTENSIONS = /\.(png|jpe?g)$/i;

/** The bundled weights of a task (`weights/<task>.safetensors` next to this package). */
export function bundledWeights(task: Task): string {
  return new URL(`../weights/${task}.safetensors`, import.meta.url).pathname;
}

function parseTask(value: string | undefined): Task | undefined {
  if (value === undefined) return undefined;
  if (!TASKS.includes(value as Task)) {
    throw new RestoreUsageError(`unknown task '${value}' (expected ${TASKS.join("|")})`);
  }
  return value as Task;
}

function positiveInt(name: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) {
    throw new RestoreUsageError(`--${name} must be a positive integer, got ${value}`);
  }
  return n;
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

/** `restore INPUT... [-o OUT] [--task T] [--weights FILE] [--mask FILE_OR_DIR] [--tile N] [--overlap N]
 * [--global-layers auto|exact|per-tile]`. */
export async function runRestore(args: string[]): Promise<void> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: true,
      options: {
        out: { type: "string", short: "o", default: "restored" },
        task: { type: "string" },
        weights: { type: "string" },
        mask: { type: "string" },
        tile: { type: "string" },
        overlap: { type: "string" },
        "global-layers": { type: "string", default: "auto" },
        preset: { type: "string" },
        variant: { type: "string" },
      },
    });
  } catch (e) {
    throw new RestoreUsageError((e as Error).message.split("\n")[0]);
  }
  const { values, positionals } = parsed;
  if (positionals.length === 0) {
    throw new RestoreUsageError("no input: deno task restore IMAGE_OR_FOLDER... [-o OUT] [--task rain]");
  }
  const task = parseTask(values.task);
  const tile = positiveInt("tile", values.tile, 512);
  const overlap = positiveInt("overlap", values.overlap, 96);
  const globalLayers = values["global-layers"] as RestoreOptions["globalLayers"];
  if (!["auto", "exact", "per-tile"].includes(globalLayers!)) {
    throw new RestoreUsageError(`--global-layers must be auto, exact or per-tile, got ${globalLayers}`);
  }
  const inputs = await expandInputs(positionals);
  const single = inputs.length === 1;
  const weightsPath = values.weights ?? bundledWeights(task ?? "rain");
  await initEngine();
  const { model, info } = await loadWeightsFile(weightsPath, {
    preset: values.preset as Preset | undefined,
    variant: values.variant as Variant | undefined,
  });
  if (task && info.task && task !== info.task) {
    console.error(`warning: ${weightsPath} was trained for ${info.task}, not ${task}`);
  }
  const outIsFile = single && IMAGE_EXTENSIONS.test(values.out);
  await Deno.mkdir(outIsFile ? dirOf(values.out) : values.out, { recursive: true })
    .catch((e) => {
      throw new RestoreUsageError(`${values.out}: cannot create the output folder (${e.message})`);
    });
  const maskIsFile = values.mask !== undefined && single && IMAGE_EXTENSIONS.test(values.mask);
  if (values.mask !== undefined && !maskIsFile) await Deno.mkdir(values.mask, { recursive: true });
  // Fail before minutes of work, not after: probe that the output folders take files.
  for (
    const dir of new Set([
      outIsFile ? dirOf(values.out) : values.out,
      ...(values.mask === undefined ? [] : [maskIsFile ? dirOf(values.mask) : values.mask]),
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
  console.error(
    `restoring ${inputs.length} image${
      single ? "" : "s"
    } with ${weightsPath} (${info.preset} ${info.variant}` +
      `${info.task ? `, ${info.task}` : ""}) on ${engine().adapterDescription}`,
  );
  const tty = Deno.stderr.isTerminal();
  const encoder = new TextEncoder();
  for (const [index, input] of inputs.entries()) {
    const started = performance.now();
    const image = await readImage(input.path);
    const planar = toPlanarRgb(image);
    let lastReport = performance.now();
    const result = await restorePlanar(model, planar, image.width, image.height, {
      tile,
      overlap,
      globalLayers,
      onTile: (done, total) => {
        // Large images take minutes on a CPU adapter: show that tiles are moving.
        if (total > 1 && (tty || performance.now() - lastReport > 10_000 || done === total)) {
          lastReport = performance.now();
          const line = `  ${input.name}: tile ${done}/${total}`;
          Deno.stderr.writeSync(
            encoder.encode(tty ? `\r\x1b[K${line}${done === total ? "\n" : ""}` : `${line}\n`),
          );
        }
      },
    });
    if (!result.exactGlobalLayers) {
      console.error(
        `  ${input.name}: large image, SFM statistics and SNL rows/columns computed per tile ` +
          `(--global-layers exact computes them over the whole image, in more time and memory)`,
      );
    }
    const target = outputPath(values.out, input.name, single);
    await writeImageAtomic(target, fromPlanarRgb(result.restored, image));
    let maskNote = "";
    if (values.mask !== undefined) {
      const maskPath = maskIsFile ? values.mask : outputPath(values.mask, input.name, false, "_mask")
        .replace(/\.jpe?g$/i, ".png");
      await writeImageAtomic(maskPath, maskToImage(result.mask, image.width, image.height), "png");
      maskNote = `, mask ${maskPath}`;
    }
    const density = result.mask.reduce((a, b) => a + b, 0) / result.mask.length;
    console.error(
      `[${
        index + 1
      }/${inputs.length}] ${input.path} -> ${target}${maskNote} (${image.width}x${image.height}, ` +
        `${(100 * density).toFixed(1)}% degraded, ${((performance.now() - started) / 1000).toFixed(1)} s)`,
    );
  }
}

/** `eval --task T --data DIR [--layout L] [--weights FILE] [--out DIR] [--tile N]`. */
export async function runEval(args: string[]): Promise<void> {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        task: { type: "string" },
        data: { type: "string" },
        layout: { type: "string", default: "auto" },
        weights: { type: "string" },
        out: { type: "string" },
        tile: { type: "string" },
        input: { type: "boolean" },
      },
    }));
  } catch (e) {
    throw new RestoreUsageError((e as Error).message.split("\n")[0]);
  }
  const task = parseTask(values.task);
  if (!task) throw new RestoreUsageError(`--task is required (${TASKS.join("|")})`);
  if (!values.data) throw new RestoreUsageError("--data DIR is required");
  if (!LAYOUTS.includes(values.layout as Layout)) {
    throw new RestoreUsageError(`unknown layout '${values.layout}' (expected ${LAYOUTS.join("|")})`);
  }
  const tile = positiveInt("tile", values.tile, 512);
  const pairs = await listPairs(values.data, values.layout as Layout);
  const weightsPath = values.weights ?? bundledWeights(task);
  await initEngine();
  const { model, info } = await loadWeightsFile(weightsPath);
  console.error(
    `evaluating ${pairs.length} pairs of ${values.data} with ${weightsPath} (${info.preset} ${info.variant})`,
  );
  const report = await evaluate({
    task,
    pairs,
    restore: async (planar, w, h) => (await restorePlanar(model, planar, w, h, { tile })).restored,
    onProgress: (done, total, row) =>
      console.error(`[${done}/${total}] ${row.name} ${(row.restoreMs / 1000).toFixed(1)} s`),
  });
  const out = values.out ?? `runs/eval-${task}-${info.variant}`;
  const paths = await writeEvalOutputs(report, out);
  console.log(formatSummary(report));
  console.error(`wrote ${paths.csv}, ${paths.summary}, ${paths.json}`);
}
