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
import { type KernelPlan, type KernelSource, type KernelStep, TEXTURE_ROW_TEXELS } from "../wgsl/plan.ts";

/** {@link Engine.memory}: the buffer pool's counters and the operand textures' bytes. */
export interface EngineMemoryStats extends MemoryStats {
  /** Bytes of GEMM operand textures held by the engine: pooled for reuse (at most 256 MiB) or in use. */
  textureBytes: number;
}

/** Thrown when no WebGPU adapter exists; the message says how to get one. */
export class NoAdapterError extends Error {
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
    this.name = "NoAdapterError";
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
/** Bytes of one rgba32float texture row. */
const TEXTURE_ROW_BYTES = TEXTURE_WIDTH * 16;
const textureBytes = (t: GPUTexture) => t.height * TEXTURE_ROW_BYTES;

/** How a kernel binding is bound: read-only storage, read-write storage, or texture. */
export type BindingKind = "r" | "w" | "t";

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
  #pass: GPUComputePassEncoder | null = null;
  #uniformBuffer: GPUBuffer;
  #uniformData = new Uint8Array(UNIFORM_SLOT * UNIFORM_SLOTS);
  #uniformUsed = 0;
  #outstanding = new Set<Promise<void>>();
  #texturesInFlight: GPUTexture[] = [];
  /** Operand textures kept for reuse, by row count (creating one per dispatch costs llvmpipe page faults). */
  #texturePool = new Map<number, GPUTexture[]>();
  #texturePoolBytes = 0;
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
   * traffic. Defaults to true on those software adapters only; both paths compute the same values.
   */
  readsViaTextures: boolean;
  /** Dispatches recorded since creation (for tests and benchmarks). */
  dispatchCount = 0;
  /** Queue submissions since creation. */
  submitCount = 0;

  private constructor(
    readonly device: GPUDevice,
    readonly adapterInfo: GPUAdapterInfo | null,
    requestedBindingLimit = Infinity,
  ) {
    this.pool = new BufferPool(device);
    // WebGPU raises requested limits below the spec default up to it; honour a smaller request ourselves.
    this.#bindingLimit = Math.min(device.limits.maxStorageBufferBindingSize, requestedBindingLimit);
    this.adapterDescription = adapterInfo?.description || adapterInfo?.vendor || "unknown adapter";
    this.readsViaTextures = /llvmpipe|lavapipe|swiftshader|microsoft basic render|warp/i.test(
      this.adapterDescription,
    );
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
    return new Engine(device, adapter.info ?? null, options.limits?.maxStorageBufferBindingSize);
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
    const key = kernel.key + "|" + kinds.join("");
    let entry = this.#pipelines.get(key);
    if (!entry) {
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
      const pipeline = this.device.createComputePipeline({
        layout: this.device.createPipelineLayout({ bindGroupLayouts: [layout] }),
        compute: { module, entryPoint: "main" },
        label: kernel.key,
      });
      entry = { pipeline, layout };
      this.#pipelines.set(key, entry);
    }
    return entry;
  }

  /** Number of compiled pipelines (tests check that shapes do not force recompiles). */
  get pipelineCount(): number {
    return this.#pipelines.size;
  }

  #computePass(): GPUComputePassEncoder {
    if (!this.#pass) {
      this.#encoder ??= this.device.createCommandEncoder();
      this.#pass = this.#encoder.beginComputePass();
    }
    return this.#pass;
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
    if (this.#uniformUsed === UNIFORM_SLOTS) this.flush();
    const { pipeline, layout } = this.pipeline(kernel, kinds);
    const slot = this.#uniformUsed++;
    this.#uniformData.set(new Uint8Array(uniforms), slot * UNIFORM_SLOT);
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
    const bindGroup = this.device.createBindGroup({ layout, entries });
    const pass = this.#computePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, bindGroup, [slot * UNIFORM_SLOT]);
    pass.dispatchWorkgroups(workgroups[0], workgroups[1], workgroups[2]);
    this.dispatchCount++;
    // Operand textures may be refilled by later copies: those are recorded after this dispatch.
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

  /**
   * Records a copy of the first `floats` values of `buffer` into an rgba32float texture of
   * {@link TEXTURE_WIDTH} texels per row (value i is texel i / 4, component i % 4, at
   * (texel % TEXTURE_WIDTH, texel / TEXTURE_WIDTH)). Texture loads are far cheaper than storage loads on
   * some drivers (llvmpipe), so GEMM kernels read their operands this way. The texture returns to a pool
   * (by size) once the next {@link dispatch} is recorded, and later copies reuse it (commands run in
   * recording order, so a copy never overtakes an earlier read).
   * Texels past `floats` are unspecified; kernels never read them.
   */
  textureOf(buffer: GPUBuffer, floats: number): GPUTextureView {
    const texels = Math.max(1, Math.ceil(floats / 4));
    const rows = Math.ceil(texels / TEXTURE_WIDTH);
    if (rows > this.device.limits.maxTextureDimension2D) {
      throw new Error(`tensor of ${floats} values is too large for a ${TEXTURE_WIDTH}-wide texture`);
    }
    let texture = this.#texturePool.get(rows)?.pop();
    if (texture) {
      this.#texturePoolBytes -= textureBytes(texture);
    } else {
      texture = this.device.createTexture({
        size: [TEXTURE_WIDTH, rows],
        format: "rgba32float",
        usage: TEXTURE_BINDING | TEXTURE_COPY_DST,
      });
    }
    this.#pendingTextures.push(texture);
    const encoder = this.#commandEncoder();
    const fullRows = Math.floor(texels / TEXTURE_WIDTH);
    const rowBytes = TEXTURE_ROW_BYTES;
    if (fullRows > 0) {
      encoder.copyBufferToTexture({ buffer, bytesPerRow: rowBytes }, { texture }, [TEXTURE_WIDTH, fullRows]);
    }
    const rest = texels - fullRows * TEXTURE_WIDTH;
    if (rest > 0) {
      encoder.copyBufferToTexture(
        { buffer, offset: fullRows * rowBytes, bytesPerRow: rowBytes },
        { texture, origin: [0, fullRows] },
        [rest, 1],
      );
    }
    return texture.createView();
  }

  /**
   * Records every step of a kernel plan. `buffers` maps the plan's input names and `out` to GPU buffers;
   * scratch buffers are taken from the pool and returned once recorded (later reuse is ordered on the
   * queue, so this is safe).
   */
  runPlan(plan: KernelPlan, buffers: Record<string, GPUBuffer>, sizes: Record<string, number> = {}): void {
    const scratch: GPUBuffer[] = [];
    const bound: Record<string, GPUBuffer> = { ...buffers };
    for (const [name, floats] of Object.entries(plan.scratch)) {
      const b = this.pool.acquire(Math.max(4, floats * 4));
      scratch.push(b);
      bound[name] = b;
    }
    // Texture copies of scratch buffers cover the plan's requested size, not the pooled bucket's.
    const extents = { ...plan.scratch, ...sizes };
    for (const step of plan.steps) this.#runStep(step, bound, extents);
    for (const b of scratch) this.pool.release(b);
  }

  #runStep(step: KernelStep, bound: Record<string, GPUBuffer>, sizes: Record<string, number>): void {
    const textures = step.textures ?? [];
    const kinds: BindingKind[] = step.buffers.map((name) =>
      textures.includes(name) ? "t" : step.writes.includes(name) ? "w" : "r"
    );
    const bindings = step.buffers.map((name, i) => {
      const buffer = bound[name];
      if (!buffer) throw new Error(`${step.kernel.key}: plan buffer '${name}' is not bound`);
      if (kinds[i] === "t") return this.textureOf(buffer, sizes[name] ?? buffer.size / 4);
      const range = step.ranges?.[name];
      return range ? { buffer, offset: range[0], size: range[1] } : { buffer };
    });
    this.dispatch(step.kernel, step.uniforms, bindings, kinds, step.workgroups);
  }

  /** Records a buffer-to-buffer copy. */
  copy(src: GPUBuffer, srcOffset: number, dst: GPUBuffer, dstOffset: number, bytes: number): void {
    this.#commandEncoder().copyBufferToBuffer(src, srcOffset, dst, dstOffset, bytes);
  }

  /** Records zero-filling `bytes` bytes of `buffer` from `offset` (both multiples of 4). */
  clear(buffer: GPUBuffer, offset: number, bytes: number): void {
    this.#commandEncoder().clearBuffer(buffer, offset, bytes);
  }

  /** Uploads data into a buffer, after all work recorded so far (so a reused buffer is not overwritten
   * before earlier recorded reads of it run). */
  write(buffer: GPUBuffer, offset: number, data: ArrayBufferView): void {
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
    if (error) throw error;
  }

  /** Reads `bytes` bytes of a buffer back to the CPU (submits pending work first). */
  async read(buffer: GPUBuffer, offset: number, bytes: number): Promise<ArrayBuffer> {
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
    for (const free of this.#texturePool.values()) for (const t of free) t.destroy();
    this.#texturePool.clear();
    this.#uniformBuffer.destroy();
    this.device.destroy();
  }
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
