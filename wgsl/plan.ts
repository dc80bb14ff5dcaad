/**
 * Kernel plans: the contract between kernel generators (in `wgsl/`) and the engine's executor.
 *
 * A generator returns a {@link KernelPlan}: one or more compute dispatches over named buffers. The engine
 * binds the plan's named inputs, allocates `out` and any scratch buffers from its pool, records every step
 * into the current command encoder (no readback), and releases the scratch buffers afterwards.
 *
 * Binding layout of every kernel: `@group(0) @binding(0) var<uniform> u: Params;` (the step's `uniforms`,
 * at most 256 bytes, bound with a dynamic offset), then `@binding(1..)` one storage buffer per entry of
 * `step.buffers`, in order. Entries listed in `step.writes` are declared `var<storage, read_write>`, the
 * others `var<storage, read>`. Entry point is `main`. Buffers hold f32 (or vec4<f32>) values.
 *
 * @module
 */

/** One compiled-once WGSL module; `key` must change whenever `code` does (pipelines are cached by key). */
export interface KernelSource {
  /** Cache key naming the kernel and its compile-time constants, e.g. `conv-pack-nhwc4-strided`. */
  key: string;
  /** WGSL source with entry point `main`. */
  code: string;
}

/** One dispatch of a plan. */
export interface KernelStep {
  /** The WGSL module to dispatch. */
  kernel: KernelSource;
  /** Uniform block contents (at most 256 bytes). Shapes travel here so they never force a recompile. */
  uniforms: ArrayBuffer;
  /** Names of the buffers bound at bindings 1..n: a plan input, `out`, or a scratch name. */
  buffers: string[];
  /** Which of `buffers` this step writes. */
  writes: string[];
  /** Workgroup counts; each at most 65,535 (fold large counts into y and z). */
  workgroups: [number, number, number];
  /** Optional sub-ranges (byte offset, byte size) to bind instead of whole buffers, by buffer name. Lets
   * element-wise kernels walk tensors larger than `maxStorageBufferBindingSize` in chunks. */
  ranges?: Record<string, [number, number]>;
  /** Buffers (a subset of `buffers`) bound as `texture_2d<f32>` views of their data instead of storage:
   * rgba32float, `TEXTURE_WIDTH` (2,048) texels per row, value i at texel i / 4, component i % 4. On
   * llvmpipe a texel load costs about a quarter of one storage load per float. */
  textures?: string[];
}

/** Texels per row of the engine's texture views of plan inputs (see {@link KernelStep.textures}). */
export const TEXTURE_ROW_TEXELS = 2048;
const TEXTURE_ROW_SHIFT = Math.log2(TEXTURE_ROW_TEXELS);

/** WGSL coordinates, of type `type`, of texel `t` (a non-negative WGSL expression of that type) in such a view. */
export function texelCoords(t: string, type: "i32" | "u32" = "u32"): string {
  const suffix = type === "u32" ? "u" : "";
  return `vec2<${type}>((${t}) & ${TEXTURE_ROW_TEXELS - 1}${suffix}, (${t}) >> ${TEXTURE_ROW_SHIFT}u)`;
}

/** A sequence of dispatches that computes `out` (f32 elements) from named inputs. */
export interface KernelPlan {
  /** Number of f32 elements of the output buffer `out`. */
  outSize: number;
  /** Scratch buffers (name -> f32 element count) that the engine allocates for the plan's duration. */
  scratch: Record<string, number>;
  /** Dispatches, recorded in order. */
  steps: KernelStep[];
}

/** Splits a workgroup count over x and y so that neither exceeds `maxPerDim`. Kernels then use
 * `id = wg.x + wg.y * num_workgroups.x` and guard `id < count`. */
export function foldWorkgroups(count: number, maxPerDim = 65535): [number, number, number] {
  if (count <= maxPerDim) return [Math.max(1, count), 1, 1];
  const y = Math.ceil(count / maxPerDim);
  if (y > maxPerDim) throw new Error(`dispatch of ${count} workgroups exceeds ${maxPerDim}^2`);
  return [Math.ceil(count / y), y, 1];
}

/**
 * Memoizes a plan builder by its (JSON-serializable) arguments: generating a big kernel's WGSL source costs
 * milliseconds of CPU, which ops would otherwise pay on every call. Plans are never mutated, so sharing is
 * safe. The cache is dropped whole when it reaches `limit` entries.
 */
export function memoizePlans<A extends unknown[]>(build: (...args: A) => KernelPlan, limit = 256) {
  const cache = new Map<string, KernelPlan>();
  return (...args: A): KernelPlan => {
    const key = JSON.stringify(args);
    let plan = cache.get(key);
    if (!plan) {
      if (cache.size >= limit) cache.clear();
      plan = build(...args);
      cache.set(key, plan);
    }
    return plan;
  };
}
