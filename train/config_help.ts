/**
 * One line of meaning per training-run setting, for `train --help`. The flags themselves come from the keys
 * of `defaultConfig` (`stepsR` is `--steps-r`); the type makes this table list exactly those keys.
 *
 * @module
 */

import type { TrainConfig } from "./train.ts";

/** Meaning of each {@link TrainConfig} key. */
export const CONFIG_HELP: Record<keyof TrainConfig, string> = {
  task: "degradation to learn",
  data: "training pairs folder (required for a new run)",
  layout: "layout of the pairs folders (see docs/training.md)",
  val: "validation pairs folder (empty: none)",
  preset: "model size",
  variant: "ablation variant of the paper's table 6 (SPAIR: full model)",
  crop: "training crop side in pixels (a multiple of 4)",
  cropFocus: "candidate crops per sample; the one closest to half degraded wins (1: uniform)",
  init:
    "weights file to start from, e.g. a bundled model to fine-tune (same preset and variant; empty: fresh)",
  jitter: "photometric jitter: brightness x [1-J, 1+J] and gamma in [e^-J, e^J] on input and target (0: off)",
  batch: "images per step",
  stepsL: "steps of stage 1 (NetL, the mask)",
  stepsR: "steps of stage 2 (NetR, the restoration)",
  lr: "Adam learning rate",
  lrHalveEpochs: "the learning rate halves every this many epochs",
  clipGradNorm: "global gradient-norm limit (0: no clipping)",
  outputInit: "NetR's output convolution at the start: zero (identity) or default",
  loss: "NetR's loss: l1, mse, l1+mse, l1+ssim or l1+mse+ssim",
  mseWeight: "weight of the MSE term (for the losses with mse)",
  ssimWeight: "weight of the 1 - SSIM term (for the losses with ssim)",
  tau: "mask threshold on mean |degraded - clean| for pairs without a mask file",
  posWeight: "NetL's BCE weight on degraded sites (0: balanced from the masks)",
  seed: "seed of initialization and batches",
  checkpointEvery: "steps between checkpoints",
  validateEvery: "steps between validations",
  valCrop: "side of the centre crop of each validation pair (0: whole image)",
  valCount: "validation pairs used (the first N)",
  logEvery: "steps between log lines",
};
