/**
 * The tensor naming of training checkpoints, shared by the trainer that writes them and by every reader of
 * model weights: a checkpoint holds the model's tensors under `model.` and the optimizer's under `optim.`,
 * and its metadata carries the run position under `checkpoint`. Web-standard code only (the browser demo
 * loads weights through it).
 *
 * @module
 */

import type { HostTensor } from "../engine/safetensors.ts";

/** Metadata key of a checkpoint's position record; its presence marks a file as a checkpoint. */
export const CHECKPOINT_KEY = "checkpoint";
/** Name prefix of the model's tensors in a checkpoint. */
export const MODEL_PREFIX = "model.";
/** Name prefix of the optimizer's tensors in a checkpoint. */
export const OPTIM_PREFIX = "optim.";

/** Whether safetensors metadata belongs to a training checkpoint rather than a final weights file. */
export function isCheckpoint(metadata: Record<string, string>): boolean {
  return metadata[CHECKPOINT_KEY] !== undefined;
}

/** The tensors whose names start with `prefix`, under their names without it. */
export function tensorsUnder(
  tensors: Record<string, HostTensor>,
  prefix: string,
): Record<string, HostTensor> {
  const out: Record<string, HostTensor> = {};
  for (const [name, t] of Object.entries(tensors)) {
    if (name.startsWith(prefix)) out[name.slice(prefix.length)] = t;
  }
  return out;
}

/** The model's tensors of a weights file or a checkpoint, under the model's own names. */
export function modelTensorsOf(
  tensors: Record<string, HostTensor>,
  metadata: Record<string, string>,
): Record<string, HostTensor> {
  return isCheckpoint(metadata) ? tensorsUnder(tensors, MODEL_PREFIX) : tensors;
}
