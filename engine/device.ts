/**
 * The engine's connection to a WebGPU device: adapter selection, pipeline cache, command batching,
 * uniform arena, buffer pool and error reporting. Web-standard APIs only (runs in Deno and browsers).
 *
 * Work is recorded into one command encoder and submitted in batches; nothing is read back unless a caller
 * asks for data. Errors raised by WebGPU (validation, out-of-memory) are captured per op with error scopes
 * and rethrown, naming the op, at the next synchronization point ({@link Engine.sync} or a readback).
 *
 * @module
 */

import { BufferPool, type MemoryStats } from "./pool.ts";
import { UserError } from "./errors.ts";
import {
  type DeferredBatch,
  type KernelPlan,
  type KernelSource,
  type KernelStep,
  TEXTURE_ROW_TEXELS,
} from "../wgsl/plan.ts";

/** {@link Engine.memory}: the buffer pool's counters and the operand textures' bytes. */
export interface EngineMemoryStats extends MemoryStats {
  /** Bytes of GEMM operand textures held by the engine: pooled for reuse (at most 256 MiB) or in use. */
  textureBytes: number;
  /** Of the live buffers, those the engine keeps derived from live tensors (packed convolution weights,
   * `Engine.derivedBuffer`); they go when their tensor is disposed, or written unless they are refilled. */
  derivedBuffers: number;
}

/** Thrown when no WebGPU adapter exists; the message says how to get one (a {@link UserError}: the CLI prints
 * it as one line). */
export class NoAdapterError extends UserError {
  /**
   * Builds the message, with installation advice.
   *
   * @param detail why no adapter was found (e.g. the runtime's error message), if known
   */
  constructor(detail = "") {
    super(
      "no WebGPU adapter found" + (detail ? ` (${detail})` : "") +
        ": install your GPU's driver, or on a GPU-less Linux machine run " +
        "`sudo apt-get install -y mesa-vulkan-drivers libvulkan1` (software Vulkan, llvmpipe)",
    );
  }
}

/** A WebGPU validation or out-of-memory error, attributed to the engine op that caused it. */
export class GpuOpError extends Error {
  /**
   * Builds the message `<op>: GPU <kind> error: <message>`.
   *
   * @param op name of the engine op that was recording when the error occurred
   * @param kind WebGPU error kind: `validation`, `out-of-memory` or `uncaptured`
   * @param message the WebGPU error message
   */
  constructor(readonly op: string, readonly kind: string, message: string) {
    super(`${op}: GPU ${kind} error: ${message}`);
    this.name = "GpuOpError";
  }
}

/** Options for {@link Engine.create}. */
export interface EngineOptions {
  /** Adapter preference passed to `navigator.gpu.requestAdapter` (`high-performance` or `low-power`). */
  powerPreference?: GPUPowerPreference;
  /** Limits to request instead of the adapter's maxima (tests use small ones to exercise chunking). */
  limits?: Record<string, number>;
  /** An existing device to use (the engine then does not own it). */
  device?: GPUDevice;
}

// WebGPU flag values, spelled out so the module does not depend on global GPU* constants.
const USAGE_MAP_READ = 0x1;
const USAGE_COPY_DST = 0x8;
const USAGE_UNIFORM = 0x40;
const STAGE_COMPUTE = 0x4;
const MAP_MODE_READ = 0x1;
const TEXTURE_COPY_DST = 0x2;
const TEXTURE_BINDING = 0x4;

/** Texels per row of the textures made by {@link Engine.textureOf} (8,192 floats). */
export const TEXTURE_WIDTH = TEXTURE_ROW_TEXELS;
/** Most bytes of operand textures kept for reuse between dispatches (beyond it they are destroyed). */
const TEXTURE_POOL_BYTES = 256 << 20;
/** Most bind groups kept for reuse (the cache starts over past it). */
const BIND_GROUP_CACHE = 8192;
/** Bytes of one rgba32float texture row. */
const TEXTURE_ROW_BYTES = TEXTURE_WIDTH * 16;
const textureBytes = (t: GPUTexture) => t.height * TEXTURE_ROW_BYTES;

/** Texture copies of a plan's buffers that several of its steps read (`shared`), by buffer (`held`; see
 * `#runStep`): each mirrors its buffer at the same texel positions, up to `capacity` floats, and holds the
 * buffer's current values in the float ranges `valid` (sorted, disjoint). `extent`: the furthest float any
 * step of the plan reads of a shared buffer (the size its copy is made for). */
type PlanTextures = {
  held: Map<GPUBuffer, { texture: GPUTexture; capacity: number; valid: [number, number][] }>;
  shared: Set<GPUBuffer>;
  extent: Map<GPUBuffer, number>;
};

/** A float range [start, end) a plan step reads of a texture-bound buffer, or writes of a buffer. */
export type FloatRange = [start: number, end: number];

/** The float range of `buffer` (bound as plan buffer `name`) a texture read covers: `sizes[name]` (a count
 * from 0, or a range), else the whole buffer. Starts are rounded down to a texel (4 floats). */
function readRange(
  name: string,
  buffer: GPUBuffer,
  sizes: Record<string, number | FloatRange>,
): FloatRange {
  const size = sizes[name] ?? buffer.size / 4;
  const [start, end] = typeof size === "number" ? [0, size] : size;
  return [Math.floor(start / 4) * 4, end];
}

/** The parts of [start, end) that `ranges` (sorted, disjoint) do not cover. */
function rangesMissing(ranges: FloatRange[], start: number, end: number): FloatRange[] {
  const out: FloatRange[] = [];
  let at = start;
  for (const [a, b] of ranges) {
    if (b <= at) continue;
    if (a >= end) break;
    if (a > at) out.push([at, a]);
    at = Math.max(at, b);
    if (at >= end) break;
  }
  if (at < end) out.push([at, end]);
  return out;
}

/** `ranges` with [start, end) added (sorted, disjoint, touching ranges merged). */
function rangesAdd(ranges: FloatRange[], start: number, end: number): FloatRange[] {
  const out: FloatRange[] = [];
  let [s, e] = [start, end];
  for (const [a, b] of ranges) {
    if (b < s || a > e) out.push([a, b]);
    else [s, e] = [Math.min(s, a), Math.max(e, b)];
  }
  out.push([s, e]);
  return out.sort((x, y) => x[0] - y[0]);
}

/** `ranges` without [start, end). */
function rangesRemove(ranges: FloatRange[], start: number, end: number): FloatRange[] {
  const out: FloatRange[] = [];
  for (const [a, b] of ranges) {
    if (b <= start || a >= end) out.push([a, b]);
    else {
      if (a < start) out.push([a, start]);
      if (b > end) out.push([end, b]);
    }
  }
  return out;
}

/** How a kernel binding is bound: read-only storage, read-write storage, or texture. */
export type BindingKind = "r" | "w" | "t";

/** A pipeline some work needs, found by {@link Engine.collectPipelines} and built by
 * {@link Engine.compilePipelines}. */
export interface PipelineRequest {
  /** The kernel's source and cache key. */
  kernel: KernelSource;
  /** Binding kinds (see {@link Engine.pipeline}). */
  kinds: BindingKind[];
}

/** {@link Engine.pipelineStats}: how many distinct pipelines exist and how long creating them took. */
export interface PipelineStats {
  /** Distinct pipelines created (one per kernel code and binding signature). */
  pipelines: number;
  /** Wall-clock milliseconds spent creating them. Where the driver compiles at first dispatch
   * ({@link Engine.compilesAtFirstDispatch}), this includes the compile only for pipelines made by
   * {@link Engine.compilePipelines}; the others compile, untimed, in the work that first uses them. */
  compileMs: number;
  /** Of those, pipelines whose machine code a helper thread compiled (see {@link Engine.compileThreads}). */
  helperCompiled: number;
}

/** Code length (characters) of the first pipeline of a lazily compiled batch: the smallest at least this
 * long, whose compile (0.3 s or more when the shader cache misses, 20 ms when it hits) tells which it is. */
const PROBE_CODE_LENGTH = 8192;
/** Pipelines per submission of {@link Engine.compilePipelines} once the shader cache has hit. */
const WARM_GROUP = 8;
/** Bytes of new buffers and textures touched per pipeline of the group about to be created in
 * {@link Engine.compilePipelines} (about 35 ms of page faults on the queue thread, against 40-50 ms to
 * create a pipeline on this one, on a 2-core llvmpipe VM). */
const UNTOUCHED_BYTES_PER_PIPELINE = 12 << 20;

/**
 * How {@link Engine.derivedBuffer} refills a derived buffer whose source was written, batched with others:
 * `step` fills one (its bindings: the source, then the target); `batch` makes one step of up to 8 such
 * steps, bound to their sources in order, then their targets in order.
 */
export interface DerivedRepack {
  /** The step that fills one buffer. */
  step: KernelStep;
  /** Makes one step of several `step`s (of this same repack kind). */
  batch: (steps: KernelStep[]) => Pick<KernelStep, "kernel" | "uniforms" | "workgroups">;
}

/** A deferred step ({@link KernelStep.defer}) with its bound buffers and the scratch buffers it owns. */
interface DeferredJob {
  step: KernelStep;
  buffers: GPUBuffer[];
  owned: GPUBuffer[];
}

/** Most derived buffers one batched refill dispatch takes (besides the adapter's storage-binding limit). */
const MAX_REPACK_BATCH = 8;

/** {@link Engine.compileThreads}' default: the CPU count up to 4 where Deno runs and Mesa's shader cache is on
 * (helpers hand their machine code over through it), else 1. */
function defaultCompileThreads(): number {
  const deno = (globalThis as { Deno?: { env: { get(name: string): string | undefined } } }).Deno;
  if (!deno) return 1;
  let cacheOff: string | undefined;
  try {
    cacheOff = deno.env.get("MESA_SHADER_CACHE_DISABLE") ?? deno.env.get("MESA_GLSL_CACHE_DISABLE");
  } catch {
    return 1; // no env permission: cannot tell whether the cache is on
  }
  if (cacheOff && /^(1|true|yes)$/i.test(cacheOff)) return 1;
  return Math.max(1, Math.min(4, navigator.hardwareConcurrency ?? 1));
}

/** One dispatch timed by {@link Engine.startProfile}: its kernel's cache key and GPU time. */
export interface ProfiledDispatch {
  /** Cache key of the dispatched kernel (its prefix names the kernel family). */
  key: string;
  /** GPU-timestamp time of the dispatch in ms (NaN when the adapter's timestamps are unusable). */
  ms: number;
}

/** Called after each pipeline is created (see {@link Engine.onPipelineCompile}): its key, the time it took,
 * the number of pipelines now, and, inside {@link Engine.compilePipelines}, its place in that batch. */
export type PipelineCompileListener = (
  info: { key: string; ms: number; count: number; batch?: { done: number; total: number } },
) => void;

const USAGE_COPY_SRC = 0x4;
const USAGE_STORAGE = 0x80;
const USAGE_QUERY_RESOLVE = 0x200;
/** Dispatches timed per profiling query set (two timestamps each; WebGPU allows 4,096 queries per set). */
const PROFILE_DISPATCHES = 2048;

const UNIFORM_SLOT = 256;
const UNIFORM_SLOTS = 4096;

/** A WebGPU device plus everything needed to run kernels on it efficiently. */
export class Engine {
  /** Storage buffer pool; its counters are the engine's memory statistics. */
  readonly pool: BufferPool;
  /** Adapter description, e.g. `llvmpipe (LLVM 15.0.6, 256 bits)`. */
  readonly adapterDescription: string;
  #pipelines = new Map<string, { pipeline: GPUComputePipeline; layout: GPUBindGroupLayout }>();
  #encoder: GPUCommandEncoder | null = null;
  /** {@link derivedBuffer}'s buffers by source buffer and key. */
  #derived = new Map<GPUBuffer, Map<string, GPUBuffer>>();
  /** Derived buffers with a {@link DerivedRepack} whose source was written since: refilled all together, in
   * batched dispatches, when the first of them is asked for again. */
  #stale = new Map<GPUBuffer, Map<string, { target: GPUBuffer; repack: DerivedRepack }>>();
  /** The repack of each batchable derived buffer, by source and key. */
  #repacks = new Map<GPUBuffer, Map<string, DerivedRepack>>();
  /** Deferred steps ({@link KernelStep.defer}) by kind, with their bound buffers and the scratch they own. */
  #deferred = new Map<string, { kind: DeferredBatch; jobs: DeferredJob[] }>();
  /** The buffers deferred steps read and write: reading one they write, or writing or releasing one they
   * use, runs the deferred steps first. */
  #deferredReads = new Set<GPUBuffer>();
  #deferredWrites = new Set<GPUBuffer>();
  /** Stand-ins bound to the empty slots of a batched deferred dispatch. */
  #slotDummies: GPUBuffer[] = [];
  #pass: GPUComputePassEncoder | null = null;
  #uniformBuffer: GPUBuffer;
  #uniformData = new Uint8Array(UNIFORM_SLOT * UNIFORM_SLOTS);
  #uniformUsed = 0;
  #outstanding = new Set<Promise<void>>();
  #texturesInFlight: GPUTexture[] = [];
  /** Operand textures kept for reuse, by row count (creating one per dispatch costs llvmpipe page faults). */
  #texturePool = new Map<number, GPUTexture[]>();
  #texturePoolBytes = 0;
  /** Bind groups by layout and bound resources: a training step binds the same pooled buffers and textures
   * step after step, and creating a bind group cost the host more than recording its dispatch (~15 of a
   * NetR step's ~40 ms). A destroyed resource is never bound again, so its entries are never hit. */
  #bindGroups = new Map<string, GPUBindGroup>();
  #resourceIds = new WeakMap<object, number>();
  #nextResourceId = 1;
  /** One view per operand texture (bind groups are cached by view). */
  #views = new WeakMap<GPUTexture, GPUTextureView>();
  /** Textures taken since the last dispatch; pooled again once the dispatch reading them is recorded. */
  #pendingTextures: GPUTexture[] = [];
  #firstError: GpuOpError | null = null;
  #uncaptured: GpuOpError | null = null;
  #currentOp = "";
  #opAllocations: { dispose(): void }[] | null = null;
  #bindingLimit: number;
  #opDepth = 0;
  /**
   * Whether memory-bound kernels (element-wise ops, the strided copies behind pad, slice, concat and permute)
   * read their full-size inputs through rgba32float textures (a buffer-to-texture copy, then texel fetches)
   * instead of storage loads. On CPU rasterizers (llvmpipe, lavapipe, SwiftShader, WARP) a storage load is
   * gathered lane by lane and costs several times a copy plus a fetch; on GPUs the copy is extra memory
   * traffic. Defaults to true on those software adapters only; both paths compute the same values. It is
   * also the engine's CPU-adapter switch for grid shapes: with it, the SNL query passes walk whole lines per
   * invocation and the sparse site kernels run their grids in rounds (`wgsl/snl.ts`, `wgsl/sparse_conv.ts`),
   * since there a workgroup that exits at once costs about as much as a working one.
   */
  readsViaTextures: boolean;
  /** Dispatches recorded since creation (for tests and benchmarks). */
  dispatchCount = 0;
  /** Queue submissions since creation. */
  submitCount = 0;
  /** Called after each pipeline is created, e.g. to show "compiling GPU kernels" progress on a first run. */
  onPipelineCompile: PipelineCompileListener | null = null;
  #compileMs = 0;
  #helperCompiled = 0;
  /** While profiling: the query set of the current submit, its dispatches' keys, and earlier submits'. */
  #profile: {
    querySet: GPUQuerySet | null;
    keys: string[];
    pending: { staging: GPUBuffer; keys: string[] }[];
    resolves: GPUBuffer[];
  } | null = null;
  /**
   * Whether the driver compiles a pipeline's machine code at its first dispatch rather than at creation
   * (llvmpipe and lavapipe do: creation only translates the shader). {@link compilePipelines} then runs
   * each new pipeline once on dummy bindings, so the compile happens, and is timed, up front.
   */
  compilesAtFirstDispatch: boolean;
  /**
   * Threads {@link compilePipelines} compiles on where the driver compiles at first dispatch: this one plus
   * helper workers (`engine/compile_worker.ts`), each with its own device, whose machine code reaches this
   * thread through the driver's on-disk shader cache. Defaults to the CPU count up to 4 in Deno on llvmpipe
   * or lavapipe with Mesa's shader cache enabled, 1 (no helpers) elsewhere.
   */
  compileThreads: number;
  /**
   * First dispatches taking at least this long (ms; of one pipeline, or of a group of 8 once the cache has
   * hit) were a shader-cache miss, and helper threads (see {@link compileThreads}) start for the rest of the
   * batch. Cache hits take 10-30 ms on llvmpipe, misses of mid-sized kernels 0.3-1 s and of the large GEMMs
   * 2-4 s; small kernels compile alone either way.
   */
  cacheMissMs = 150;
  #powerPreference: GPUPowerPreference | undefined;
  /** Bindings of {@link compilePipelines}' one-workgroup dispatches: storage buffers, a texture, zero uniforms. */
  #dummies: { buffers: GPUBuffer[]; texture: GPUTexture | null; uniforms: GPUBuffer | null } = {
    buffers: [],
    texture: null,
    uniforms: null,
  };
  /** Set while {@link collectPipelines} runs: the pipelines asked for, by cache key; nothing is recorded. */
  #collecting: Map<string, PipelineRequest> | null = null;
  /** Buffers the last {@link collectPipelines} created and nothing has written yet (see #touchUntouched). */
  #untouched: { buffer: GPUBuffer; size: number }[] = [];
  /** Operand textures the last {@link collectPipelines} created (its dry run takes and pools textures as the
   * real run will, without filling them); touched ahead like {@link #untouched}. */
  #untouchedTextures: GPUTexture[] = [];
  /** A buffer {@link #touchUntouched} cleared, the source it copies into untouched textures (any contents do:
   * a pooled texture's are overwritten before they are read). */
  #touchSource: { buffer: GPUBuffer; size: number } | null = null;

  private constructor(
    readonly device: GPUDevice,
    readonly adapterInfo: GPUAdapterInfo | null,
    requestedBindingLimit = Infinity,
    ownsDevice = false,
    powerPreference?: GPUPowerPreference,
  ) {
    this.pool = new BufferPool(device);
    this.pool.onRelease = (buffer) => {
      this.#touch(buffer, true);
      this.#dropDerived(buffer);
    };
    // WebGPU raises requested limits below the spec default up to it; honour a smaller request ourselves.
    this.#bindingLimit = Math.min(device.limits.maxStorageBufferBindingSize, requestedBindingLimit);
    this.adapterDescription = adapterInfo?.description || adapterInfo?.vendor || "unknown adapter";
    this.readsViaTextures = /llvmpipe|lavapipe|swiftshader|microsoft basic render|warp/i.test(
      this.adapterDescription,
    );
    this.compilesAtFirstDispatch = /llvmpipe|lavapipe/i.test(this.adapterDescription);
    this.compileThreads = this.compilesAtFirstDispatch && ownsDevice ? defaultCompileThreads() : 1;
    this.#powerPreference = powerPreference;
    this.#uniformBuffer = device.createBuffer({
      size: this.#uniformData.byteLength,
      usage: USAGE_UNIFORM | USAGE_COPY_DST,
    });
    device.addEventListener("uncapturederror", (event) => {
      const error = (event as GPUUncapturedErrorEvent).error;
      this.#uncaptured ??= new GpuOpError(this.#currentOp || "engine", "uncaptured", error.message);
    });
  }

  /** Requests an adapter and a device with the adapter's maximum limits. */
  static async create(options: EngineOptions = {}): Promise<Engine> {
    if (options.device) return new Engine(options.device, options.device.adapterInfo ?? null);
    const gpu = (globalThis.navigator as Navigator | undefined)?.gpu;
    if (!gpu) throw new NoAdapterError("navigator.gpu is not available in this runtime");
    let adapter: GPUAdapter | null = null;
    try {
      adapter = await gpu.requestAdapter({ powerPreference: options.powerPreference });
    } catch (e) {
      throw new NoAdapterError(e instanceof Error ? e.message : String(e));
    }
    if (!adapter) throw new NoAdapterError();
    const requiredLimits: Record<string, number> = {};
    const limits = adapter.limits as unknown as Record<string, number>;
    for (const key in limits) {
      const value = limits[key];
      if (typeof value === "number") requiredLimits[key] = value;
    }
    Object.assign(requiredLimits, options.limits ?? {});
    const features = [...adapter.features].filter((f) =>
      f === "timestamp-query" || f === "shader-f16"
    ) as GPUFeatureName[];
    const device = await adapter.requestDevice({ requiredLimits, requiredFeatures: features });
    return new Engine(
      device,
      adapter.info ?? null,
      options.limits?.maxStorageBufferBindingSize,
      true,
      options.powerPreference,
    );
  }

  /** Device limits in force. */
  get limits(): GPUSupportedLimits {
    return this.device.limits;
  }

  /** Largest byte size one storage binding may have (the device's limit, or a smaller requested one). */
  get maxBindingBytes(): number {
    return this.#bindingLimit;
  }

  /** Registers a tensor allocated by the running op, so it is released if the op throws. */
  trackAllocation(t: { dispose(): void }): void {
    this.#opAllocations?.push(t);
  }

  /** Memory counters of the buffer pool, plus the operand textures the engine holds. */
  memory(): EngineMemoryStats {
    const held = [...this.#pendingTextures, ...this.#texturesInFlight];
    return {
      ...this.pool.stats(),
      textureBytes: held.reduce((n, t) => n + textureBytes(t), this.#texturePoolBytes),
      derivedBuffers: [...this.#derived.values(), ...this.#stale.values()].reduce((n, e) => n + e.size, 0),
    };
  }

  /**
   * Runs `fn` as the engine op `name`: WebGPU errors raised by the work it records are reported as
   * {@link GpuOpError}s naming `name`. Nested calls are attributed to the outermost op.
   */
  op<T>(name: string, fn: () => T): T {
    if (this.#opDepth > 0) return fn();
    this.#opDepth++;
    this.#currentOp = name;
    this.#opAllocations = [];
    this.device.pushErrorScope("out-of-memory");
    this.device.pushErrorScope("validation");
    try {
      return fn();
    } catch (e) {
      // An op that fails part-way must not leak the outputs it already allocated.
      for (const t of this.#opAllocations) t.dispose();
      throw e;
    } finally {
      this.#opAllocations = null;
      const validation = this.device.popErrorScope();
      const memory = this.device.popErrorScope();
      this.#opDepth--;
      const settled: Promise<void> = Promise.all([validation, memory]).then(([v, m]) => {
        if (v) this.#firstError ??= new GpuOpError(name, "validation", v.message);
        else if (m) this.#firstError ??= new GpuOpError(name, "out-of-memory", m.message);
      }).finally(() => this.#outstanding.delete(settled));
      this.#outstanding.add(settled);
    }
  }

  /** Compiles (once) and returns the pipeline for a kernel with the given binding signature: per binding
   * `r` (read-only storage), `w` (read-write storage) or `t` (rgba32float texture, see {@link TEXTURE_WIDTH}). */
  pipeline(kernel: KernelSource, kinds: BindingKind[]): {
    pipeline: GPUComputePipeline;
    layout: GPUBindGroupLayout;
  } {
    const key = pipelineKey(kernel, kinds);
    let entry = this.#pipelines.get(key);
    if (!entry) {
      const start = performance.now();
      const { layout, descriptor } = this.#pipelineDescriptor(kernel, kinds);
      entry = { pipeline: this.device.createComputePipeline(descriptor), layout };
      this.#pipelineCreated(key, entry, performance.now() - start);
    }
    return entry;
  }

  #pipelineDescriptor(kernel: KernelSource, kinds: BindingKind[]) {
    const entries: GPUBindGroupLayoutEntry[] = [{
      binding: 0,
      visibility: STAGE_COMPUTE,
      buffer: { type: "uniform", hasDynamicOffset: true, minBindingSize: UNIFORM_SLOT },
    }];
    kinds.forEach((kind, i) =>
      entries.push(
        kind === "t"
          ? { binding: i + 1, visibility: STAGE_COMPUTE, texture: { sampleType: "unfilterable-float" } }
          : {
            binding: i + 1,
            visibility: STAGE_COMPUTE,
            buffer: { type: kind === "w" ? "storage" : "read-only-storage" },
          },
      )
    );
    const layout = this.device.createBindGroupLayout({ entries, label: kernel.key });
    const module = this.device.createShaderModule({ code: kernel.code, label: kernel.key });
    const descriptor: GPUComputePipelineDescriptor = {
      layout: this.device.createPipelineLayout({ bindGroupLayouts: [layout] }),
      compute: { module, entryPoint: "main" },
      label: kernel.key,
    };
    return { layout, descriptor };
  }

  #pipelineCreated(
    key: string,
    entry: { pipeline: GPUComputePipeline; layout: GPUBindGroupLayout },
    ms: number,
    batch?: { done: number; total: number },
  ): void {
    this.#pipelines.set(key, entry);
    this.#compileMs += ms;
    this.onPipelineCompile?.({ key, ms, count: this.#pipelines.size, batch });
  }

  /** Distinct pipelines created so far and the time spent creating them. */
  pipelineStats(): PipelineStats {
    return {
      pipelines: this.#pipelines.size,
      compileMs: this.#compileMs,
      helperCompiled: this.#helperCompiled,
    };
  }

  /**
   * Runs `fn` without recording or submitting any GPU work (dispatches, copies, uploads are skipped; tensors
   * are still allocated, their contents undefined) and returns the pipelines it would need that are not
   * compiled yet. Pass them to {@link compilePipelines} before the real run, e.g. a model forward on an input
   * of the real shape inside `noGrad`. `fn` must not read data back.
   */
  collectPipelines(fn: () => unknown): PipelineRequest[] {
    if (this.#collecting) throw new Error("collectPipelines: already collecting");
    this.flush();
    this.#collecting = new Map();
    if (this.compilesAtFirstDispatch) this.pool.listCreated();
    this.#untouchedTextures = [];
    try {
      fn();
      return [...this.#collecting.values()];
    } finally {
      this.#poolPendingTextures();
      this.#collecting = null;
      this.#untouched = this.pool.takeCreated();
    }
  }

  /**
   * Creates the given pipelines with `createComputePipelineAsync`, all requested at once: browsers (Dawn)
   * compile them in parallel; Deno compiles one at a time but the caller can still show progress. On lazily
   * compiling drivers helper threads join at the first cache miss (see {@link cacheMissMs}).
   */
  async compilePipelines(
    requests: PipelineRequest[],
    onProgress?: (done: number, total: number) => void,
  ): Promise<void> {
    const todo = requests.filter((r) => !this.#pipelines.has(pipelineKey(r.kernel, r.kinds)));
    let done = 0;
    onProgress?.(0, todo.length);
    const lazy = this.compilesAtFirstDispatch;
    // Creates a group of pipelines; on lazily compiling drivers it runs each once, all in one submission, and
    // returns the time those first dispatches took (the machine-code compiles), else 0.
    const createGroup = async (group: PipelineRequest[]): Promise<number> => {
      this.#touchUntouched(UNTOUCHED_BYTES_PER_PIPELINE * group.length);
      const made = [];
      for (const { kernel, kinds } of group) {
        const start = performance.now();
        const { layout, descriptor } = this.#pipelineDescriptor(kernel, kinds);
        const pipeline = await this.device.createComputePipelineAsync(descriptor);
        made.push({
          key: pipelineKey(kernel, kinds),
          pipeline,
          layout,
          kinds,
          ms: performance.now() - start,
        });
      }
      const dispatched = performance.now();
      if (lazy) await this.#dispatchOnce(made);
      const dispatchMs = performance.now() - dispatched;
      for (const { key, pipeline, layout, ms } of made) {
        done++;
        if (!this.#pipelines.has(key)) {
          this.#pipelineCreated(key, { pipeline, layout }, ms + dispatchMs / made.length, {
            done,
            total: todo.length,
          });
        }
        onProgress?.(done, todo.length);
      }
      return dispatchMs;
    };
    const create = (r: PipelineRequest) => createGroup([r]);
    if (!lazy) {
      await Promise.all(todo.map(create));
      return;
    }
    // A lazily compiling driver compiles in the submitting thread, so helpers compile in threads of their
    // own. Largest first: the big kernels dominate, and a pool balances best when the long jobs start early.
    // On a warm shader cache helpers only cost (a device each, and every pipeline is then created twice), so
    // they start at the first cache miss; a mid-sized pipeline goes first to find out early. While the cache
    // hits, pipelines go in groups with one wait each (a wait costs about 10 ms on llvmpipe).
    const queue = [...todo].sort((a, b) => b.kernel.code.length - a.kernel.code.length);
    const probe = queue.findLastIndex((r) => r.kernel.code.length >= PROBE_CODE_LENGTH);
    if (probe > 0) queue.unshift(...queue.splice(probe, 1));
    let groupSize = 1;
    try {
      while (queue.length > 0) {
        const dispatchMs = await createGroup(queue.splice(0, groupSize));
        const helpers = Math.min(this.compileThreads - 1, queue.length - 1);
        if (helpers > 0 && dispatchMs >= this.cacheMissMs) {
          await this.#compileWithHelpers(queue, helpers, create);
          return;
        }
        groupSize = WARM_GROUP;
      }
    } finally {
      // What is left is touched by the run that uses it.
      this.#untouched = [];
      this.#untouchedTextures = [];
      this.#touchSource = null;
    }
  }

  /**
   * Clears up to `bytes` of the buffers the last {@link collectPipelines} created, in a submission of its own.
   * A buffer's first write costs llvmpipe a page fault per 4 KB page (about 3 ms per MB on a 2-core VM, most
   * of a first restore's extra second); the driver's queue thread takes them here, while this thread creates
   * pipelines, instead of in the first real run. WebGPU zero-fills new buffers anyway, so this adds no work.
   * Then the same for the operand textures the dry run created.
   */
  #touchUntouched(bytes: number): void {
    if (!this.compilesAtFirstDispatch) return;
    if (this.#untouched.length === 0 && this.#untouchedTextures.length === 0) return;
    const encoder = this.device.createCommandEncoder();
    let cleared = 0;
    while (cleared < bytes && this.#untouched.length > 0) {
      const { buffer, size } = this.#untouched.pop()!;
      if (!this.pool.isFree(buffer)) continue; // a tensor holds it now: its contents are not ours to clear
      encoder.clearBuffer(buffer);
      cleared += size;
      if (size > (this.#touchSource?.size ?? 0)) this.#touchSource = { buffer, size };
    }
    // Textures are written by a copy from a cleared buffer (free now, so alive), a band of rows at a time;
    // only pooled ones: a taken texture's copy may be recorded and not yet read.
    const source = this.#touchSource;
    const bandRows = source && this.pool.isFree(source.buffer)
      ? Math.floor(source.size / TEXTURE_ROW_BYTES)
      : 0;
    while (bandRows > 0 && cleared < bytes && this.#untouchedTextures.length > 0) {
      const texture = this.#untouchedTextures.pop()!;
      if (!this.#texturePool.get(texture.height)?.includes(texture)) continue;
      for (let y = 0; y < texture.height; y += bandRows) {
        const rows = Math.min(bandRows, texture.height - y);
        encoder.copyBufferToTexture(
          { buffer: source!.buffer, bytesPerRow: TEXTURE_ROW_BYTES },
          { texture, origin: [0, y] },
          [TEXTURE_WIDTH, rows],
        );
      }
      cleared += textureBytes(texture);
    }
    if (cleared === 0) return;
    this.flush();
    this.device.queue.submit([encoder.finish()]);
  }

  /**
   * Compiles `queue` here and on `helpers` worker threads. A helper's pipeline is created here too once it
   * is done: the driver then finds its machine code in the on-disk cache. A helper that fails (no adapter,
   * another adapter, an error) is dropped and its request goes back to the queue, so the worst case is
   * compiling everything here.
   */
  async #compileWithHelpers(
    queue: PipelineRequest[],
    helpers: number,
    create: (r: PipelineRequest) => Promise<unknown>,
  ): Promise<void> {
    const compiledElsewhere: PipelineRequest[] = [];
    const inFlight = new Map<Worker, PipelineRequest>();
    const workers = new Set<Worker>();
    let wake: (() => void) | null = null;
    const notify = () => {
      wake?.();
      wake = null;
    };
    const give = (w: Worker) => {
      const request = queue.shift();
      if (request) {
        inFlight.set(w, request);
        w.postMessage({ type: "compile", request });
      }
    };
    const drop = (w: Worker) => {
      const request = inFlight.get(w);
      if (request) queue.unshift(request);
      inFlight.delete(w);
      workers.delete(w);
      w.terminate();
      notify();
    };
    for (let i = 0; i < helpers; i++) {
      let w: Worker;
      try {
        w = new Worker(new URL("./compile_worker.ts", import.meta.url).href, { type: "module" });
      } catch {
        break;
      }
      workers.add(w);
      w.onmessage = (event: MessageEvent) => {
        const message = event.data;
        if (message.type === "ready" && message.adapter === this.adapterDescription) give(w);
        else if (message.type === "done") {
          compiledElsewhere.push(inFlight.get(w)!);
          inFlight.delete(w);
          give(w);
          notify();
        } else drop(w);
      };
      w.onerror = (event: ErrorEvent) => {
        event.preventDefault();
        drop(w);
      };
      w.postMessage({ type: "init", powerPreference: this.#powerPreference });
    }
    try {
      while (true) {
        // Loading a helper's pipeline is a cache hit: take those first, so progress follows the work done.
        const loaded = compiledElsewhere.shift();
        if (loaded) this.#helperCompiled++;
        const request = loaded ?? queue.shift();
        if (request) await create(request);
        else if (inFlight.size > 0) await new Promise<void>((resolve) => (wake = resolve));
        else break;
      }
    } finally {
      for (const w of workers) w.terminate();
    }
  }

  /** Runs one workgroup of each pipeline on dummy bindings with zero uniforms, in one submission, and waits
   * for it (see {@link compilesAtFirstDispatch}); out-of-range accesses are clamped by WebGPU's robustness
   * rules. */
  async #dispatchOnce(
    pipelines: { pipeline: GPUComputePipeline; layout: GPUBindGroupLayout; kinds: BindingKind[] }[],
  ) {
    this.flush();
    const d = this.#dummies;
    d.texture ??= this.device.createTexture({
      size: [TEXTURE_WIDTH, this.#textureHeight(1)],
      format: "rgba32float",
      usage: TEXTURE_BINDING | TEXTURE_COPY_DST,
    });
    d.uniforms ??= this.device.createBuffer({ size: UNIFORM_SLOT, usage: USAGE_UNIFORM }); // zeros
    const encoder = this.device.createCommandEncoder();
    for (const { pipeline, layout, kinds } of pipelines) {
      while (d.buffers.length < kinds.length) {
        d.buffers.push(this.device.createBuffer({ size: 4096, usage: USAGE_STORAGE }));
      }
      const entries: GPUBindGroupEntry[] = [{
        binding: 0,
        resource: { buffer: d.uniforms, size: UNIFORM_SLOT },
      }];
      kinds.forEach((kind, i) =>
        entries.push({
          binding: i + 1,
          resource: kind === "t" ? d.texture!.createView() : { buffer: d.buffers[i] },
        })
      );
      const pass = encoder.beginComputePass();
      pass.setPipeline(pipeline);
      pass.setBindGroup(0, this.device.createBindGroup({ layout, entries }), [0]);
      pass.dispatchWorkgroups(1);
      pass.end();
    }
    this.device.queue.submit([encoder.finish()]);
    await this.device.queue.onSubmittedWorkDone();
  }

  /** Number of compiled pipelines (tests check that shapes do not force recompiles). */
  get pipelineCount(): number {
    return this.#pipelines.size;
  }

  #computePass(profileKey?: string): GPUComputePassEncoder {
    const profile = this.#profile;
    if (profile && profileKey !== undefined) {
      // One pass per dispatch, timestamped at its start and end.
      if (this.#pass) {
        this.#pass.end();
        this.#pass = null;
      }
      if (profile.keys.length === PROFILE_DISPATCHES) this.flush();
      this.#encoder ??= this.device.createCommandEncoder();
      profile.querySet ??= this.device.createQuerySet({ type: "timestamp", count: 2 * PROFILE_DISPATCHES });
      const index = 2 * profile.keys.length;
      profile.keys.push(profileKey);
      this.#pass = this.#encoder.beginComputePass({
        timestampWrites: {
          querySet: profile.querySet,
          beginningOfPassWriteIndex: index,
          endOfPassWriteIndex: index + 1,
        },
      });
      return this.#pass;
    }
    if (!this.#pass) {
      this.#encoder ??= this.device.createCommandEncoder();
      this.#pass = this.#encoder.beginComputePass();
    }
    return this.#pass;
  }

  /**
   * Starts timing every dispatch with GPU timestamps (each then runs in its own compute pass, which adds a
   * little overhead). Needs the `timestamp-query` feature; returns false without it.
   */
  startProfile(): boolean {
    if (!this.device.features.has("timestamp-query")) return false;
    this.flush();
    this.#profile = { querySet: null, keys: [], pending: [], resolves: [] };
    return true;
  }

  /** Stops profiling and returns every dispatch recorded since {@link startProfile}, in order. */
  async stopProfile(): Promise<ProfiledDispatch[]> {
    const profile = this.#profile;
    if (!profile) return [];
    this.flush();
    this.#profile = null;
    const out: ProfiledDispatch[] = [];
    for (const { staging, keys } of profile.pending) {
      await staging.mapAsync(MAP_MODE_READ);
      const stamps = new BigUint64Array(staging.getMappedRange().slice(0));
      staging.unmap();
      staging.destroy();
      keys.forEach((key, i) => {
        const ns = Number(stamps[2 * i + 1] - stamps[2 * i]);
        out.push({ key, ms: stamps[2 * i + 1] >= stamps[2 * i] && stamps[2 * i] > 0n ? ns / 1e6 : NaN });
      });
    }
    for (const b of profile.resolves) b.destroy();
    profile.querySet?.destroy();
    return out;
  }

  #commandEncoder(): GPUCommandEncoder {
    if (this.#pass) {
      this.#pass.end();
      this.#pass = null;
    }
    this.#encoder ??= this.device.createCommandEncoder();
    return this.#encoder;
  }

  /** Records one dispatch. `bindings` are bound at 1..n; `kinds` gives each one's kind (see {@link pipeline}). */
  dispatch(
    kernel: KernelSource,
    uniforms: ArrayBuffer,
    bindings: ({ buffer: GPUBuffer; offset?: number; size?: number } | GPUTextureView)[],
    kinds: BindingKind[],
    workgroups: [number, number, number],
  ): void {
    if (uniforms.byteLength > UNIFORM_SLOT) throw new Error(`${kernel.key}: uniform block over 256 bytes`);
    if (this.#collecting) {
      const key = pipelineKey(kernel, kinds);
      if (!this.#pipelines.has(key)) this.#collecting.set(key, { kernel, kinds });
      this.#poolPendingTextures();
      return;
    }
    if (this.#deferredWrites.size > 0) {
      bindings.forEach((b, i) => "buffer" in b && this.#touch(b.buffer, kinds[i] === "w"));
    }
    if (this.#uniformUsed === UNIFORM_SLOTS) this.flush();
    if (this.#derived.size > 0) {
      bindings.forEach((b, i) => kinds[i] === "w" && "buffer" in b && this.#invalidateDerived(b.buffer));
    }
    const { pipeline, layout } = this.pipeline(kernel, kinds);
    const slot = this.#uniformUsed++;
    this.#uniformData.set(new Uint8Array(uniforms), slot * UNIFORM_SLOT);
    const bindGroup = this.#bindGroup(layout, bindings);
    const pass = this.#computePass(this.#profile ? kernel.key : undefined);
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, bindGroup, [slot * UNIFORM_SLOT]);
    pass.dispatchWorkgroups(workgroups[0], workgroups[1], workgroups[2]);
    this.dispatchCount++;
    this.#poolPendingTextures();
  }

  /** Pools the textures taken since the last dispatch, once the dispatch that reads them is recorded: later
   * copies may refill them, as those are recorded after it. */
  #poolPendingTextures(): void {
    for (const texture of this.#pendingTextures) {
      const bytes = textureBytes(texture);
      if (this.#texturePoolBytes + bytes > TEXTURE_POOL_BYTES) {
        this.#texturesInFlight.push(texture); // destroyed after the next submit
        continue;
      }
      const free = this.#texturePool.get(texture.height) ?? [];
      free.push(texture);
      this.#texturePool.set(texture.height, free);
      this.#texturePoolBytes += bytes;
    }
    this.#pendingTextures = [];
  }

  #resourceId(resource: object): number {
    let id = this.#resourceIds.get(resource);
    if (id === undefined) this.#resourceIds.set(resource, id = this.#nextResourceId++);
    return id;
  }

  #bindGroup(
    layout: GPUBindGroupLayout,
    bindings: ({ buffer: GPUBuffer; offset?: number; size?: number } | GPUTextureView)[],
  ): GPUBindGroup {
    let key = String(this.#resourceId(layout));
    for (const b of bindings) {
      key += "buffer" in b
        ? `|${this.#resourceId(b.buffer)}:${b.offset ?? 0}:${b.size ?? ""}`
        : `|${this.#resourceId(b)}`;
    }
    let group = this.#bindGroups.get(key);
    if (group) return group;
    const entries: GPUBindGroupEntry[] = [{
      binding: 0,
      resource: { buffer: this.#uniformBuffer, size: UNIFORM_SLOT },
    }];
    bindings.forEach((b, i) =>
      entries.push({
        binding: i + 1,
        resource: "buffer" in b ? { buffer: b.buffer, offset: b.offset ?? 0, size: b.size } : b,
      })
    );
    group = this.device.createBindGroup({ layout, entries });
    if (this.#bindGroups.size >= BIND_GROUP_CACHE) this.#bindGroups.clear();
    this.#bindGroups.set(key, group);
    return group;
  }

  #viewOf(texture: GPUTexture): GPUTextureView {
    let view = this.#views.get(texture);
    if (!view) this.#views.set(texture, view = texture.createView());
    return view;
  }

  /**
   * Records a copy of the first `floats` values of `buffer` into an rgba32float texture of
   * {@link TEXTURE_WIDTH} texels per row (value i is texel i / 4, component i % 4, at
   * (texel % TEXTURE_WIDTH, texel / TEXTURE_WIDTH)). Texture loads are far cheaper than storage loads on
   * some drivers (llvmpipe), so GEMM kernels read their operands this way. The texture returns to a pool
   * (by size) once the next {@link dispatch} is recorded, and later copies reuse it (commands run in
   * recording order, so a copy never overtakes an earlier read).
   * Texels past `floats` are unspecified; kernels never read them.
   */
  textureOf(buffer: GPUBuffer, floats: number, start = 0): GPUTextureView {
    const texture = this.#textureFor(floats);
    this.#copyRange(buffer, texture, start, floats);
    this.#pendingTextures.push(texture);
    return this.#viewOf(texture);
  }

  /** A texture for `floats` values taken from the pool (or made), which the caller returns to the pool
   * (through `#pendingTextures`) once the last dispatch reading it is recorded. */
  #textureFor(floats: number): GPUTexture {
    const texels = Math.max(1, Math.ceil(floats / 4));
    const rows = Math.ceil(texels / TEXTURE_WIDTH);
    if (rows > this.device.limits.maxTextureDimension2D) {
      throw new Error(`tensor of ${floats} values is too large for a ${TEXTURE_WIDTH}-wide texture`);
    }
    const height = this.#textureHeight(rows);
    let texture = this.#pooledTexture(height);
    if (texture) {
      this.#texturePoolBytes -= textureBytes(texture);
    } else {
      texture = this.device.createTexture({
        size: [TEXTURE_WIDTH, height],
        format: "rgba32float",
        usage: TEXTURE_BINDING | TEXTURE_COPY_DST,
      });
      if (this.#collecting && this.compilesAtFirstDispatch) this.#untouchedTextures.push(texture);
    }
    return texture;
  }

  /** Records a copy of `buffer`'s values [start, end) (start a multiple of 4) into the same positions of
   * `texture` (value i at texel i / 4): up to a partial first row, full rows and a partial last row. A dry
   * run ({@link collectPipelines}) copies nothing. */
  #copyRange(buffer: GPUBuffer, texture: GPUTexture, start: number, end: number): void {
    if (this.#collecting) return;
    this.#touch(buffer, false);
    const encoder = this.#commandEncoder();
    const last = Math.max(1, Math.ceil(end / 4));
    let texel = Math.floor(start / 4);
    const copy = (texels: number, rows: number) => {
      encoder.copyBufferToTexture(
        { buffer, offset: texel * 16, bytesPerRow: TEXTURE_ROW_BYTES },
        { texture, origin: [texel % TEXTURE_WIDTH, Math.floor(texel / TEXTURE_WIDTH)] },
        [texels, rows],
      );
      texel += texels * rows;
    };
    if (texel % TEXTURE_WIDTH !== 0 && texel < last) {
      copy(Math.min(last, (Math.floor(texel / TEXTURE_WIDTH) + 1) * TEXTURE_WIDTH) - texel, 1);
    }
    const rows = Math.floor((last - texel) / TEXTURE_WIDTH);
    if (rows > 0) copy(TEXTURE_WIDTH, rows);
    if (texel < last) copy(last - texel, 1);
  }

  /**
   * The height of a new operand texture of `rows` rows: rounded up to a quarter of its power of two, as
   * buffers are (see `bucketSize`), so that tensors of nearby sizes share pooled textures. llvmpipe compiles
   * a separate variant of a pipeline for each combination of power-of-two and other heights among its
   * textures; a power-of-two height gets an extra row so every texture is of the second kind, and each
   * pipeline compiles once (and once only in {@link compilePipelines}, whose dummy texture is 3 rows high).
   */
  #textureHeight(rows: number): number {
    let height = rows;
    if (rows > 4) {
      const step = 2 ** Math.floor(Math.log2(rows)) / 4;
      height = Math.ceil(rows / step) * step;
    }
    if (!this.compilesAtFirstDispatch || (height & (height - 1)) !== 0) return height;
    return height === 1 ? 3 : height + 1;
  }

  /** A pooled texture of at least `height` rows and at most twice that (new memory costs llvmpipe page
   * faults on first use), the smallest there is; taken out of the pool. */
  #pooledTexture(height: number): GPUTexture | undefined {
    let best = 0;
    for (const [h, free] of this.#texturePool) {
      if (free.length > 0 && h >= height && h <= 2 * height && (best === 0 || h < best)) best = h;
    }
    return best === 0 ? undefined : this.#texturePool.get(best)!.pop();
  }

  /**
   * Records every step of a kernel plan. `buffers` maps the plan's input names and `out` to GPU buffers;
   * scratch buffers are taken from the pool and returned once recorded (later reuse is ordered on the
   * queue, so this is safe). `sizes` bounds what the steps binding a buffer as a texture read of it, by
   * name: the first n floats, or a float range (default: the whole buffer, or a scratch buffer's requested
   * size); only that part is copied into the texture, at the same positions.
   */
  runPlan(
    plan: KernelPlan,
    buffers: Record<string, GPUBuffer>,
    sizes: Record<string, number | FloatRange> = {},
  ): void {
    const scratch: GPUBuffer[] = [];
    const bound: Record<string, GPUBuffer> = { ...buffers };
    for (const [name, floats] of Object.entries(plan.scratch)) {
      const b = this.pool.acquire(Math.max(4, floats * 4));
      scratch.push(b);
      bound[name] = b;
    }
    // Texture copies of scratch buffers cover the plan's requested size, not the pooled bucket's.
    const extents = { ...plan.scratch, ...sizes };
    const owned = new Set<GPUBuffer>();
    const copies: PlanTextures = { held: new Map(), shared: new Set(), extent: new Map() };
    // Buffers that more than one step reads as a texture: their copies are held and shared.
    const reads = new Map<GPUBuffer, number>();
    for (const step of plan.steps) {
      for (const name of new Set(step.textures ?? [])) {
        const buffer = bound[name];
        if (!buffer) continue;
        reads.set(buffer, (reads.get(buffer) ?? 0) + 1);
        const end = readRange(name, buffer, extents)[1];
        copies.extent.set(buffer, Math.max(end, copies.extent.get(buffer) ?? 0));
      }
    }
    for (const [buffer, n] of reads) if (n > 1) copies.shared.add(buffer);
    for (const step of plan.steps) {
      if (step.defer) {
        this.#defer(step, step.defer, bound, scratch, owned);
        this.#dropCopies(step, bound, copies);
      } else this.#runStep(step, bound, extents, copies);
    }
    // Every dispatch that reads them is recorded: the copies may be refilled from now on.
    for (const { texture } of copies.held.values()) this.#pendingTextures.push(texture);
    for (const b of scratch) if (!owned.has(b)) this.pool.release(b);
  }

  /** Keeps a deferred step (and the scratch buffers it binds, added to `owned`) until its buffers are used. */
  #defer(
    step: KernelStep,
    kind: DeferredBatch,
    bound: Record<string, GPUBuffer>,
    scratch: GPUBuffer[],
    owned: Set<GPUBuffer>,
  ): void {
    if (this.#collecting) {
      // A dry run compiles the batched kernel the step will run in.
      const size = kind.size(this.#storageBindings());
      const batch = kind.batch([step], size);
      this.dispatch(batch.kernel, batch.uniforms, [], this.#slotKinds(step, size), batch.workgroups);
      return;
    }
    const buffers = step.buffers.map((name) => {
      const buffer = bound[name];
      if (!buffer) throw new Error(`${step.kernel.key}: plan buffer '${name}' is not bound`);
      return buffer;
    });
    if (step.textures?.length || step.ranges) {
      throw new Error(`${step.kernel.key}: a deferred step binds storage only`);
    }
    // Deferred steps run in the order they came: one that conflicts with an earlier one runs after it.
    const writes = (i: number) => step.writes.includes(step.buffers[i]);
    buffers.forEach((b, i) => this.#touch(b, writes(i)));
    const mine = buffers.filter((b) => scratch.includes(b));
    for (const b of mine) owned.add(b);
    let entry = this.#deferred.get(kind.key);
    if (!entry) this.#deferred.set(kind.key, entry = { kind, jobs: [] });
    entry.jobs.push({ step, buffers, owned: mine });
    buffers.forEach((b, i) => (writes(i) ? this.#deferredWrites : this.#deferredReads).add(b));
  }

  /** Binding kinds of a batched deferred dispatch of `size` slots of `step`'s bindings. */
  #slotKinds(step: KernelStep, size: number): BindingKind[] {
    const one = step.buffers.map((name): BindingKind => step.writes.includes(name) ? "w" : "r");
    return Array.from({ length: size }, () => one).flat();
  }

  /** Runs the deferred steps if recording a read (or, with `write`, a write or release) of `buffer` now
   * would overtake them: they write it, or (a write) they read it. */
  #touch(buffer: GPUBuffer, write: boolean): void {
    if (this.#deferredWrites.size === 0) return;
    if (this.#deferredWrites.has(buffer) || (write && this.#deferredReads.has(buffer))) this.#runDeferred();
  }

  /** Records every deferred step: per kind, `size` per dispatch (empty slots bind stand-ins). */
  #runDeferred(): void {
    const kinds = [...this.#deferred.values()];
    this.#deferred.clear();
    this.#deferredReads.clear();
    this.#deferredWrites.clear();
    for (const { kind, jobs } of kinds) {
      const size = kind.size(this.#storageBindings());
      const kinds = this.#slotKinds(jobs[0].step, size);
      const perSlot = jobs[0].buffers.length;
      for (let i = 0; i < jobs.length; i += size) {
        const part = jobs.slice(i, i + size);
        const batch = kind.batch(part.map((j) => j.step), size);
        const bindings = kinds.map((_, b) => ({
          buffer: part[Math.floor(b / perSlot)]?.buffers[b % perSlot] ?? this.#slotDummy(b),
        }));
        this.dispatch(batch.kernel, batch.uniforms, bindings, kinds, batch.workgroups);
      }
      for (const job of jobs) for (const b of job.owned) this.pool.release(b);
    }
  }

  #slotDummy(i: number): GPUBuffer {
    while (this.#slotDummies.length <= i) {
      this.#slotDummies.push(this.device.createBuffer({ size: 16, usage: USAGE_STORAGE }));
    }
    return this.#slotDummies[i];
  }

  /**
   * Records one step of a plan. A buffer that several steps read as a texture is copied once: later steps
   * reuse the copy (held out of the pool) until a step writes the buffer (an SNL step's six line passes read
   * the same channels-last copies; about 0.3 ms per 8 MB copy on llvmpipe). Other copies return to the pool
   * right after their step, so plans reading a buffer once hold no more textures than before.
   */
  #runStep(
    step: KernelStep,
    bound: Record<string, GPUBuffer>,
    sizes: Record<string, number | FloatRange>,
    copies: PlanTextures,
  ): void {
    const textures = step.textures ?? [];
    const kinds: BindingKind[] = step.buffers.map((name) =>
      textures.includes(name) ? "t" : step.writes.includes(name) ? "w" : "r"
    );
    const bindings = step.buffers.map((name, i) => {
      const buffer = bound[name];
      if (!buffer) throw new Error(`${step.kernel.key}: plan buffer '${name}' is not bound`);
      if (kinds[i] === "t") {
        const [start, end] = readRange(name, buffer, sizes);
        // A copy read by this step only goes back to the pool right after it, as `textureOf`'s do.
        if (!copies.shared.has(buffer)) return this.textureOf(buffer, end, start);
        let copy = copies.held.get(buffer);
        if (copy && copy.capacity < end) {
          this.#pendingTextures.push(copy.texture);
          copy = undefined;
        }
        if (!copy) {
          const capacity = Math.max(end, copies.extent.get(buffer) ?? 0);
          copies.held.set(buffer, copy = { texture: this.#textureFor(capacity), capacity, valid: [] });
        }
        // Only what the copy lacks of the range (steps writing declared ranges leave the rest valid).
        for (const [a, b] of rangesMissing(copy.valid, start, end)) {
          this.#copyRange(buffer, copy.texture, a, b);
        }
        copy.valid = rangesAdd(copy.valid, start, end);
        return this.#viewOf(copy.texture);
      }
      const range = step.ranges?.[name];
      return range ? { buffer, offset: range[0], size: range[1] } : { buffer };
    });
    this.dispatch(step.kernel, step.uniforms, bindings, kinds, step.workgroups);
    this.#dropCopies(step, bound, copies);
  }

  /** The copies of the buffers `step` writes are stale (in the step's {@link KernelStep.writeRanges} only,
   * where it declares them): whole stale copies go back to the pool after the next dispatch (this one's reads
   * are recorded). */
  #dropCopies(step: KernelStep, bound: Record<string, GPUBuffer>, copies: PlanTextures): void {
    for (const name of step.writes) {
      const copy = copies.held.get(bound[name]);
      if (!copy) continue;
      const range = step.writeRanges?.[name];
      if (range) {
        copy.valid = rangesRemove(copy.valid, range[0], range[1]);
        continue;
      }
      copies.held.delete(bound[name]);
      this.#pendingTextures.push(copy.texture);
    }
  }

  /**
   * A buffer derived from `source` by the work `fill` records into it (a convolution's packed weights), kept
   * and returned again for the same `source` and `key` until `source` is written (by a dispatch, copy, clear
   * or upload) or released: inference and a frozen network then pack their weights once, not per call.
   * With `repack`, a written source's buffer is refilled rather than dropped, and every such buffer waiting
   * for it is refilled at once, a batch per dispatch, when the first is asked for (after an optimizer step,
   * a network's weights are packed in a few dispatches instead of one per weight).
   * Returns null while {@link collectPipelines} runs (nothing is recorded then).
   */
  derivedBuffer(
    source: GPUBuffer,
    key: string,
    floats: number,
    fill: (target: GPUBuffer) => void,
    repack?: DerivedRepack,
  ): GPUBuffer | null {
    if (this.#collecting) return null;
    const hit = this.#derived.get(source)?.get(key);
    if (hit) return hit;
    if (this.#stale.get(source)?.has(key)) {
      this.#repackStale();
      const refilled = this.#derived.get(source)?.get(key);
      if (refilled) return refilled;
    }
    const target = this.pool.acquire(Math.max(4, floats * 4));
    fill(target);
    this.#setDerived(source, key, target, repack);
    return target;
  }

  #setDerived(source: GPUBuffer, key: string, target: GPUBuffer, repack?: DerivedRepack): void {
    let entries = this.#derived.get(source);
    if (!entries) this.#derived.set(source, entries = new Map());
    entries.set(key, target);
    if (!repack) return;
    let repacks = this.#repacks.get(source);
    if (!repacks) this.#repacks.set(source, repacks = new Map());
    repacks.set(key, repack);
  }

  /** `source` is about to be written: its derived buffers go stale (those with a repack) or go. */
  #invalidateDerived(source: GPUBuffer): void {
    const entries = this.#derived.get(source);
    if (!entries) return;
    this.#derived.delete(source);
    const repacks = this.#repacks.get(source);
    for (const [key, target] of entries) {
      const repack = repacks?.get(key);
      if (!repack) {
        this.pool.release(target);
        continue;
      }
      let stale = this.#stale.get(source);
      if (!stale) this.#stale.set(source, stale = new Map());
      stale.set(key, { target, repack });
    }
  }

  /** Refills every stale derived buffer: one dispatch per batch of those sharing a batch kernel. */
  #repackStale(): void {
    const groups = new Map<
      DerivedRepack["batch"],
      { source: GPUBuffer; key: string; target: GPUBuffer; repack: DerivedRepack }[]
    >();
    for (const [source, entries] of this.#stale) {
      for (const [key, { target, repack }] of entries) {
        const group = groups.get(repack.batch) ?? [];
        group.push({ source, key, target, repack });
        groups.set(repack.batch, group);
      }
    }
    this.#stale.clear();
    const size = Math.max(1, Math.min(MAX_REPACK_BATCH, Math.floor(this.#storageBindings() / 2)));
    for (const [batch, jobs] of groups) {
      for (let i = 0; i < jobs.length; i += size) {
        const part = jobs.slice(i, i + size);
        const step = batch(part.map((j) => j.repack.step));
        this.dispatch(
          step.kernel,
          step.uniforms,
          [...part.map((j) => ({ buffer: j.source })), ...part.map((j) => ({ buffer: j.target }))],
          [...part.map((): BindingKind => "r"), ...part.map((): BindingKind => "w")],
          step.workgroups,
        );
        for (const j of part) this.#setDerived(j.source, j.key, j.target, j.repack);
      }
    }
  }

  #storageBindings(): number {
    return this.device.limits.maxStorageBuffersPerShaderStage;
  }

  /** `source` is released (or its contents lost): its derived buffers, stale or not, go. */
  #dropDerived(source: GPUBuffer): void {
    const entries = this.#derived.get(source);
    this.#derived.delete(source);
    for (const b of entries?.values() ?? []) this.pool.release(b);
    const stale = this.#stale.get(source);
    this.#stale.delete(source);
    for (const { target } of stale?.values() ?? []) this.pool.release(target);
    this.#repacks.delete(source);
  }

  /** Records a buffer-to-buffer copy. */
  copy(src: GPUBuffer, srcOffset: number, dst: GPUBuffer, dstOffset: number, bytes: number): void {
    if (this.#collecting) return;
    this.#touch(src, false);
    this.#touch(dst, true);
    this.#invalidateDerived(dst);
    this.#commandEncoder().copyBufferToBuffer(src, srcOffset, dst, dstOffset, bytes);
  }

  /** Records zero-filling `bytes` bytes of `buffer` from `offset` (both multiples of 4). */
  clear(buffer: GPUBuffer, offset: number, bytes: number): void {
    if (this.#collecting) return;
    this.#touch(buffer, true);
    this.#invalidateDerived(buffer);
    this.#commandEncoder().clearBuffer(buffer, offset, bytes);
  }

  /** Uploads data into a buffer, after all work recorded so far (so a reused buffer is not overwritten
   * before earlier recorded reads of it run). */
  write(buffer: GPUBuffer, offset: number, data: ArrayBufferView): void {
    if (this.#collecting) return;
    this.#touch(buffer, true);
    this.#invalidateDerived(buffer);
    if (this.#encoder) this.flush();
    this.device.queue.writeBuffer(buffer, offset, data.buffer, data.byteOffset, data.byteLength);
  }

  /** Submits all recorded work. Does not wait for it. */
  flush(): void {
    if (this.#pass) {
      this.#pass.end();
      this.#pass = null;
    }
    if (!this.#encoder) return;
    const profile = this.#profile;
    if (profile?.querySet && profile.keys.length > 0) {
      const bytes = 16 * profile.keys.length;
      const resolve = this.device.createBuffer({ size: bytes, usage: USAGE_QUERY_RESOLVE | USAGE_COPY_SRC });
      const staging = this.device.createBuffer({ size: bytes, usage: USAGE_MAP_READ | USAGE_COPY_DST });
      this.#encoder.resolveQuerySet(profile.querySet, 0, 2 * profile.keys.length, resolve, 0);
      this.#encoder.copyBufferToBuffer(resolve, 0, staging, 0, bytes);
      profile.pending.push({ staging, keys: profile.keys });
      // The query set is reused: this resolve runs before any later pass overwrites it (queue order).
      profile.keys = [];
      profile.resolves.push(resolve);
    }
    if (this.#uniformUsed > 0) {
      this.device.queue.writeBuffer(
        this.#uniformBuffer,
        0,
        this.#uniformData,
        0,
        this.#uniformUsed * UNIFORM_SLOT,
      );
      this.#uniformUsed = 0;
    }
    this.device.queue.submit([this.#encoder.finish()]);
    this.#encoder = null;
    this.submitCount++;
    // Destroying after submit is safe: WebGPU keeps a texture alive until the work using it completes.
    for (const t of this.#texturesInFlight) t.destroy();
    this.#texturesInFlight = [];
  }

  /** Submits recorded work, waits for the GPU to finish it, and throws the first captured GPU error. */
  async sync(): Promise<void> {
    this.flush();
    await this.device.queue.onSubmittedWorkDone();
    await this.checkErrors();
  }

  /** Throws the first GPU error captured since the last check (awaits outstanding error scopes). */
  async checkErrors(): Promise<void> {
    while (this.#outstanding.size > 0) await Promise.all([...this.#outstanding]);
    const error = this.#firstError ?? this.#uncaptured;
    this.#firstError = null;
    this.#uncaptured = null;
    if (!error) return;
    // The failed command buffer may have held the fills of derived buffers: forget them, so later work
    // makes them again.
    for (const source of new Set([...this.#derived.keys(), ...this.#stale.keys()])) this.#dropDerived(source);
    throw error;
  }

  /** Reads `bytes` bytes of a buffer back to the CPU (submits pending work first). */
  async read(buffer: GPUBuffer, offset: number, bytes: number): Promise<ArrayBuffer> {
    if (this.#collecting) throw new Error("collectPipelines: the collected work must not read data back");
    this.#touch(buffer, false);
    const staging = this.device.createBuffer({
      size: Math.ceil(bytes / 4) * 4,
      usage: USAGE_MAP_READ | USAGE_COPY_DST,
    });
    this.#commandEncoder().copyBufferToBuffer(buffer, offset, staging, 0, Math.ceil(bytes / 4) * 4);
    this.flush();
    try {
      await staging.mapAsync(MAP_MODE_READ);
    } catch (e) {
      await this.checkErrors();
      throw e;
    }
    const copy = staging.getMappedRange().slice(0, bytes);
    staging.unmap();
    staging.destroy();
    await this.checkErrors();
    return copy;
  }

  /** Releases pooled memory and the device. */
  destroy(): void {
    this.flush();
    this.pool.trim();
    this.#bindGroups.clear();
    for (const free of this.#texturePool.values()) for (const t of free) t.destroy();
    this.#texturePool.clear();
    this.#uniformBuffer.destroy();
    for (const b of this.#dummies.buffers) b.destroy();
    this.#dummies.texture?.destroy();
    this.#dummies.uniforms?.destroy();
    this.device.destroy();
  }
}

function pipelineKey(kernel: KernelSource, kinds: BindingKind[]): string {
  return kernel.key + "|" + kinds.join("");
}

let defaultEngine: Engine | null = null;
let pendingInit: Promise<Engine> | null = null;

/**
 * Creates (once) and returns the default engine used by all tensor ops. Throws {@link NoAdapterError}
 * when the runtime has no WebGPU adapter.
 *
 * ```ts
 * import { initEngine } from "@spair/spair-gpu";
 * const e = await initEngine({ powerPreference: "high-performance" });
 * console.log(e.adapterDescription, e.limits.maxStorageBufferBindingSize);
 * ```
 */
export function initEngine(options: EngineOptions = {}): Promise<Engine> {
  if (defaultEngine) return Promise.resolve(defaultEngine);
  pendingInit ??= Engine.create(options).then((e) => (defaultEngine = e)).finally(() => {
    pendingInit = null;
  });
  return pendingInit;
}

/** The default engine; throws if {@link initEngine} has not completed. */
export function engine(): Engine {
  if (!defaultEngine) throw new Error("spair-gpu engine not initialized: call `await initEngine()` first");
  return defaultEngine;
}

/** Makes `e` the default engine (for tests that need a device with special limits). Returns the previous. */
export function setEngine(e: Engine | null): Engine | null {
  const previous = defaultEngine;
  defaultEngine = e;
  return previous;
}
