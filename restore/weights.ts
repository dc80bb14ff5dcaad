/**
 * Weights files: a SPAIR model from safetensors bytes whose metadata names its preset and variant (as
 * `deno task train` writes them). Web-standard APIs only, so the browser demo uses the same code.
 *
 * @module
 */

import { UserError } from "../engine/errors.ts";
import { decodeSafetensors } from "../engine/safetensors.ts";
import { type SpairConfig, SpairModel } from "../layers/spair.ts";
import {
  isKeyOf,
  type Preset,
  PRESETS,
  type Task,
  TASK_INFO,
  type Variant,
  VARIANTS,
} from "../layers/vocabulary.ts";
import { isCheckpoint, modelTensorsOf } from "../train/checkpoint_format.ts";

/** A weights file that cannot be used: not safetensors, not SPAIR's, or for another model. */
export class WeightsError extends UserError {}

/** What a weights file says about itself (safetensors `__metadata__`). */
export interface ModelInfo {
  /** Model size. */
  preset: Preset;
  /** Ablation variant. */
  variant: Variant;
  /** The task the weights were trained for, when known. */
  task?: Task;
  /** All metadata strings of the file. */
  metadata: Record<string, string>;
}

/**
 * Builds a model from safetensors weights whose metadata names `preset` and `variant` (as written by
 * `deno task train`: a final `model.safetensors` or a run's `checkpoint.safetensors`). `source` names the
 * bytes in error messages; `expected` rejects files of another preset or variant with one clear message.
 *
 * ```ts
 * import { initEngine, loadModel } from "@spair/spair-gpu";
 * await initEngine();
 * const bytes = await Deno.readFile("rain.safetensors"); // or new Uint8Array(await (await fetch(url)).arrayBuffer())
 * const { model, info } = loadModel(bytes, "rain.safetensors", { variant: "SPAIR" });
 * console.log(info.preset, info.variant, info.task);
 * ```
 */
export function loadModel(
  bytes: Uint8Array,
  source = "weights",
  expected: Partial<SpairConfig> = {},
): { model: SpairModel; info: ModelInfo } {
  let decoded;
  try {
    decoded = decodeSafetensors(bytes);
  } catch (e) {
    throw new WeightsError(`${source}: not a safetensors weights file (${(e as Error).message})`);
  }
  const metadata = decoded.metadata;
  const { preset, variant } = metadata;
  if (!isKeyOf(PRESETS, preset) || !isKeyOf(VARIANTS, variant)) {
    if (isCheckpoint(metadata)) {
      throw new WeightsError(
        `${source}: a training checkpoint that does not name its model (written before checkpoints did); ` +
          `resume the run once to rewrite it, or use the run's model.safetensors`,
      );
    }
    throw new WeightsError(
      `${source}: metadata does not name a SPAIR preset and variant (was it written by spair-gpu?)`,
    );
  }
  for (const key of ["preset", "variant"] as const) {
    if (expected[key] && expected[key] !== metadata[key]) {
      throw new WeightsError(`${source}: weights are for ${key} ${metadata[key]}, expected ${expected[key]}`);
    }
  }
  const model = new SpairModel({ preset, variant });
  try {
    model.loadStateDict(modelTensorsOf(decoded.tensors, metadata), source);
  } catch (e) {
    for (const p of model.parameters()) p.dispose();
    throw e;
  }
  const task = isKeyOf(TASK_INFO, metadata.task) ? metadata.task : undefined;
  return { model, info: { preset, variant, task, metadata } };
}
