/**
 * spair-gpu: a WebGPU tensor engine with reverse-mode autodiff, and the SPAIR image-restoration model.
 *
 * ```ts
 * import { initEngine, tensor, conv2d, relu, sum, backward } from "@spair/spair-gpu";
 * await initEngine();
 * const x = tensor(new Float32Array(1 * 3 * 8 * 8).fill(0.5), [1, 3, 8, 8]);
 * const w = tensor(new Float32Array(4 * 3 * 3 * 3).fill(0.1), [4, 3, 3, 3]);
 * w.requiresGrad = true;
 * const loss = sum(relu(conv2d(x, w, null, { padding: 1 })));
 * backward(loss);
 * console.log(await loss.item(), (await w.grad!.data()).slice(0, 4));
 * ```
 *
 * @module
 */

export {
  type BindingKind,
  type DerivedRepack,
  Engine,
  engine,
  type EngineMemoryStats,
  type EngineOptions,
  type FloatRange,
  GpuOpError,
  initEngine,
  NoAdapterError,
  type PipelineCompileListener,
  type PipelineRequest,
  type PipelineStats,
  type ProfiledDispatch,
  setEngine,
} from "./engine/device.ts";
export type { BufferPool, MemoryStats } from "./engine/pool.ts";
export type { DeferredBatch, KernelPlan, KernelSource, KernelStep } from "./wgsl/plan.ts";
export {
  assignData,
  collectTensors,
  dispose,
  keep,
  type Shape,
  sizeOf,
  Storage,
  stridesOf,
  Tensor,
  tensor,
  tidy,
} from "./engine/tensor.ts";
export {
  backward,
  type BackwardRule,
  detach,
  enableGrad,
  type GradNode,
  isGradEnabled,
  noGrad,
  record,
} from "./engine/autograd.ts";
export {
  abs,
  add,
  addScalar,
  broadcastShapes,
  clamp,
  div,
  exp,
  expand,
  full,
  leakyRelu,
  log,
  map,
  maximum,
  minimum,
  mul,
  neg,
  ones,
  relu,
  scale,
  sigmoid,
  sqrt,
  square,
  sub,
  tanh,
  where,
  zeros,
} from "./engine/ops/elementwise.ts";
export { max, mean, sum, sumTo } from "./engine/ops/reduce.ts";
export { concat, pad, permute, reshape, slice, split, transpose } from "./engine/ops/shape.ts";
export { matmul } from "./engine/ops/matmul.ts";
export {
  conv2d,
  type Conv2dOnlyOptions,
  type Conv2dOptions,
  convTranspose2d,
  type ConvTranspose2dOptions,
  type Pair,
} from "./engine/ops/conv.ts";
export { avgPool2d, maxPool2d } from "./engine/ops/pool.ts";
export { type ResizeOptions, upsampleBilinear, upsampleNearest } from "./engine/ops/resample.ts";
export { logSoftmax, softmax } from "./engine/ops/softmax.ts";
export { bceWithLogits, l1Loss, mseLoss } from "./engine/ops/loss.ts";
export {
  Adam,
  type AdamOptions,
  clipGradNorm,
  type Optimizer,
  type OptimizerState,
  type ParamGroup,
  SGD,
  type SgdOptions,
  stepLr,
  type UpdateItem,
} from "./engine/optim.ts";
export { Module, uniformInit } from "./engine/module.ts";
export {
  type DecodeOptions,
  decodeSafetensors,
  encodeSafetensors,
  type HostTensor,
} from "./engine/safetensors.ts";
export { Rng } from "./engine/random.ts";
export { ActiveSites, binarizeMask, compactMask, maskPyramid } from "./layers/sparse/active.ts";
export {
  sfm,
  type SfmMoments,
  sfmMoments,
  type SfmStatistics,
  sfmWithStatistics,
} from "./layers/sparse/sfm.ts";
export { fusionEnabled, setFusion, withFusion } from "./engine/fusion.ts";
export { SCModule, sparseConv2d, type SparseConv2dOptions } from "./layers/sparse/sparse_conv.ts";
export { DenseNonLocal, type SnlMode, SNLModule, snlStep } from "./layers/sparse/snl.ts";
export { Conv2d, DenseBlock, Upsample2x } from "./layers/blocks.ts";
export {
  type DecoderJoin,
  disposeGuidance,
  type Encoder,
  type GlobalLayer,
  type GlobalLayerHooks,
  type GlobalLayerInput,
  type Guidance,
  NetL,
  type NetLOutput,
  NetR,
  type NetRForwardOptions,
  type SpairConfig,
  SpairModel,
  variantFeatures,
} from "./layers/spair.ts";
export {
  type Preset,
  PRESETS,
  type Task,
  TASK_INFO,
  TASKS,
  type Variant,
  type VariantFeatures,
  VARIANTS,
} from "./layers/vocabulary.ts";
export { UserError } from "./engine/errors.ts";
export {
  EXACT_GLOBAL_BYTES,
  loadModel,
  maxTileForBinding,
  type ModelInfo,
  precompileRestore,
  RECEPTIVE_RADIUS,
  type Restored,
  type RestoreOptions,
  restorePlanar,
  restoreTileCount,
  tileSpans,
  WeightsError,
} from "./restore/restore.ts";
