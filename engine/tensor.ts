/**
 * Tensors: contiguous float32 NCHW arrays in GPU buffers, with deterministic release.
 *
 * A tensor handle owns one reference to a storage buffer. `dispose()` drops it; the buffer returns to the
 * pool when the last handle (user handles, reshaped views, activations saved for backward) is gone.
 * {@link tidy} disposes every handle created inside it except the ones it returns.
 *
 * @module
 */

import { engine } from "./device.ts";
import type { GradNode } from "./graph.ts";
import type { KernelPlan } from "../wgsl/plan.ts";

/** A tensor shape, outermost dimension first. */
export type Shape = readonly number[];

/** Number of elements of a shape. */
export function sizeOf(shape: Shape): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** Row-major strides of a contiguous shape. */
export function stridesOf(shape: Shape): number[] {
  const strides = new Array<number>(shape.length);
  let s = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    strides[i] = s;
    s *= shape[i];
  }
  return strides;
}

/** Reference-counted GPU storage shared by tensor handles. */
export class Storage {
  /** Number of tensor handles sharing the buffer; it returns to the pool at 0. */
  refs = 1;
  /**
   * Wraps a buffer with one reference.
   *
   * @param buffer the pooled storage buffer (row-major float32)
   * @param bytes bytes in use (the buffer may be larger: pool buckets round up)
   */
  constructor(readonly buffer: GPUBuffer, readonly bytes: number) {}
}

type Scope = Set<Tensor>;
const scopes: Scope[] = [];
let nextId = 1;

/** A float32 tensor on the GPU. Create with {@link tensor}, {@link zeros}, {@link full} or an op. */
export class Tensor {
  /** Unique id (for debugging and maps). */
  readonly id: number = nextId++;
  /** Number of elements. */
  readonly size: number;
  /** Whether gradients flow into this tensor. Set on leaves (parameters) by the user. */
  requiresGrad = false;
  /** Accumulated gradient of a leaf after {@link backward}. */
  grad: Tensor | null = null;
  /** The recorded op that produced this tensor (null for leaves and untracked results). */
  gradFn: GradNode | null = null;
  /** Optional name (parameters carry their state-dict name here). */
  name?: string;
  #disposed = false;

  /** @internal Use {@link tensor}, {@link zeros} or ops to create tensors. */
  constructor(readonly shape: Shape, readonly storage: Storage, tracked = true) {
    for (const d of shape) {
      if (!Number.isInteger(d) || d < 0) throw new Error(`invalid tensor shape [${shape.join(", ")}]`);
    }
    this.size = sizeOf(shape);
    if (tracked && scopes.length > 0) scopes[scopes.length - 1].add(this);
  }

  /** Allocates an uninitialized tensor from the engine's pool. */
  static empty(shape: Shape): Tensor {
    const bytes = Math.max(4, sizeOf(shape) * 4);
    const e = engine();
    const t = new Tensor(shape, new Storage(e.pool.acquire(bytes), bytes));
    e.trackAllocation(t);
    return t;
  }

  /** The GPU buffer holding the data (row-major float32, possibly larger than needed). */
  get buffer(): GPUBuffer {
    if (this.#disposed) throw new Error(`tensor ${this.describe()} used after dispose`);
    return this.storage.buffer;
  }

  /** Number of dimensions. */
  get rank(): number {
    return this.shape.length;
  }

  /** Whether {@link dispose} was called. */
  get disposed(): boolean {
    return this.#disposed;
  }

  /** A new handle to the same storage with another shape of the same size (no copy). */
  view(shape: Shape, tracked = true): Tensor {
    if (sizeOf(shape) !== this.size) {
      throw new Error(`cannot view [${this.shape}] (${this.size} elements) as [${shape}]`);
    }
    if (this.#disposed) throw new Error(`tensor ${this.describe()} used after dispose`);
    this.storage.refs++;
    return new Tensor(shape, this.storage, tracked);
  }

  /** Drops this handle's reference; the buffer is pooled once no handle refers to it. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const scope of scopes) scope.delete(this);
    if (--this.storage.refs === 0) engine().pool.release(this.storage.buffer);
  }

  /** Reads the data back to the CPU (submits pending work; resolves when the GPU is done). */
  async data(): Promise<Float32Array> {
    const bytes = await engine().read(this.buffer, 0, this.size * 4);
    return new Float32Array(bytes);
  }

  /** Reads a one-element tensor as a number. */
  async item(): Promise<number> {
    if (this.size !== 1) throw new Error(`item() needs a one-element tensor, got [${this.shape}]`);
    return (await this.data())[0];
  }

  /** Short description for messages, e.g. `#12 [2, 3]`. */
  describe(): string {
    return `${this.name ?? "#" + this.id} [${this.shape.join(", ")}]`;
  }
}

/**
 * Creates a tensor from CPU data (float32; `shape` defaults to 1-D).
 *
 * ```ts
 * import { initEngine, tensor } from "@spair/spair-gpu";
 * await initEngine();
 * const x = tensor([1, 2, 3, 4, 5, 6], [2, 3]);
 * console.log(x.shape, await x.data()); // [2, 3] Float32Array [1, 2, 3, 4, 5, 6]
 * x.dispose();
 * ```
 */
export function tensor(data: ArrayLike<number>, shape: Shape = [data.length]): Tensor {
  if (data.length !== sizeOf(shape)) {
    throw new Error(`tensor: ${data.length} values do not fill shape [${shape.join(", ")}]`);
  }
  const t = Tensor.empty(shape);
  const values = data instanceof Float32Array ? data : Float32Array.from(data);
  if (values.length > 0) engine().write(t.buffer, 0, values);
  return t;
}

/** Runs `fn`; disposes every tensor created inside except those in its result (tensors, arrays and plain
 * objects of tensors are searched), which move to the enclosing scope. */
export function tidy<T>(fn: () => T): T {
  const scope: Scope = new Set();
  scopes.push(scope);
  let result: T;
  try {
    result = fn();
  } catch (e) {
    scopes.pop();
    for (const t of scope) t.dispose();
    throw e;
  }
  scopes.pop();
  const kept = new Set<Tensor>();
  collectTensors(result, kept);
  for (const t of scope) if (!kept.has(t)) t.dispose();
  if (scopes.length > 0) {
    const parent = scopes[scopes.length - 1];
    for (const t of kept) if (scope.has(t)) parent.add(t);
  }
  return result;
}

/** Removes tensors from every enclosing {@link tidy} scope so they outlive it. Returns its argument. */
export function keep<T>(value: T): T {
  const found = new Set<Tensor>();
  collectTensors(value, found);
  for (const t of found) for (const scope of scopes) scope.delete(t);
  return value;
}

/** Adds every tensor found in `value` (tensor, array, plain object; not recursing into tensors) to `out`. */
export function collectTensors(value: unknown, out: Set<Tensor>): void {
  if (value instanceof Tensor) out.add(value);
  else if (Array.isArray(value)) { for (const v of value) collectTensors(v, out); }
  else if (value && typeof value === "object" && Object.getPrototypeOf(value) === Object.prototype) {
    for (const v of Object.values(value)) collectTensors(v, out);
  }
}

/** Disposes every tensor found in `value`. */
export function dispose(value: unknown): void {
  const found = new Set<Tensor>();
  collectTensors(value, found);
  for (const t of found) t.dispose();
}

/** Overwrites a tensor's values in place with CPU data (after all work recorded so far). */
export function assignData(t: Tensor, values: ArrayLike<number>): void {
  if (values.length !== t.size) throw new Error(`assignData: ${values.length} values for ${t.describe()}`);
  engine().write(t.buffer, 0, values instanceof Float32Array ? values : Float32Array.from(values));
}

/**
 * Records `plan` with its named inputs bound to tensors and `out` to `out`; returns `out`. Inputs read as
 * textures are copied at their exact float count, not the pooled buffer's size.
 */
export function runPlanInto(plan: KernelPlan, inputs: Record<string, Tensor>, out: Tensor): Tensor {
  const bound: Record<string, GPUBuffer> = { out: out.buffer };
  const sizes: Record<string, number> = {};
  for (const [name, t] of Object.entries(inputs)) {
    bound[name] = t.buffer;
    sizes[name] = t.size;
  }
  engine().runPlan(plan, bound, sizes);
  return out;
}
