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
  /**
   * The float range [start, end) of a buffer that the step writes at most, by name: a texture copy of the
   * buffer that the plan holds for later steps stays valid outside it, so they copy only what changed (an SC
   * layer writes its own channel rows of the dense block that the next layer reads). Without an entry, a
   * write makes the whole copy stale.
   */
  writeRanges?: Record<string, [number, number]>;
  /**
   * The step may run later, batched with others of its kind: the engine keeps it (and the scratch buffers it
   * binds) until one of its buffers is next used, bound, copied, read or released, then runs every kept step
   * of the kind, `size` per dispatch. For steps whose output nothing reads soon: a weight gradient's split-K
   * reduction, read only by the optimizer's step after the whole backward pass.
   */
  defer?: DeferredBatch;
}

/** How deferred steps of one kind ({@link KernelStep.defer}) run together. */
export interface DeferredBatch {
  /** Names the kind: steps with the same key are batched. */
  key: string;
  /** Steps per batched dispatch, given the adapter's storage buffers per shader stage. */
  size: (storageBindings: number) => number;
  /** One dispatch of `size` slots running `steps` (at most `size`; the rest are empty, bound to dummy
   * buffers). Slot j binds step j's buffers, in order. */
  batch: (steps: KernelStep[], size: number) => Pick<KernelStep, "kernel" | "uniforms" | "workgroups">;
}

/** Texels per row of the engine's texture views of plan inputs (see {@link KernelStep.textures}). */
export const TEXTURE_ROW_TEXELS = 2048;
const TEXTURE_ROW_SHIFT = Math.log2(TEXTURE_ROW_TEXELS);

/** Index walks of up to this many elements divide through f32 reciprocals ({@link DIVMOD_WGSL}, exact
 * there); larger ones use integer division, which SIMD CPUs run lane by lane. */
export const FLOAT_DIVISION_LIMIT = 1 << 22;

/** WGSL `divmod(n, d, inv)` = (n / d, n % d) for n < {@link FLOAT_DIVISION_LIMIT}, `inv` the f32 1 / d. */
export const DIVMOD_WGSL =
  `// (n / d, n % d) for n < 2^22: f32(n) is exact and n * inv is off by less than one, so one correction step
// makes it exact on any rounding (with IEEE rounding it is already exact for every divisor tested).
fn divmod(n: u32, d: u32, inv: f32) -> vec2<u32> {
  var q = u32(f32(n) * inv);
  if (q * d > n) { q -= 1u; } else if (n - q * d >= d) { q += 1u; }
  return vec2<u32>(q, n - q * d);
}`;

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
  /** Set by plans asked for a ReLU epilogue (e.g. the convolutions'): whether `out` already has it. */
  appliesRelu?: boolean;
  /** Set by plans asked for a bias they may not be able to give: whether `out` already has the bias (a
   * transposed convolution's epilogue), or whether the plan writes the bias gradient `db` (a weight
   * gradient's column sums). */
  appliesBias?: boolean;
  /** Set by plans asked to add a residual `res` to their output: whether `out` already has it. */
  appliesResidual?: boolean;
  /** Set by plans asked to gate their `dy` by a ReLU's output `y` (zero where y <= 0; a convolution+ReLU's
   * backward): whether they read dy gated, so that no masked copy of dy is needed. */
  appliesGate?: boolean;
}

/**
 * The entry of a batched kernel: `slots` jobs in one dispatch of `wg`-invocation workgroups, their invocations
 * numbered one job after the other. `jobs` names the uniform array of job structs, each starting with `start`
 * (the job's first invocation) and `n` (its invocation count). Declares `j` (the slot), `job` (its struct;
 * named by `job`) and `i` (the invocation within the job); invocations past their job's `n` return. Used by
 * the weight repack and the deferred reductions (one dispatch for several small jobs).
 */
export function batchedEntry(slots: number, wg: number, jobs: string, job: string): string {
  return `@compute @workgroup_size(${wg})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lane: u32) {
  let g = i32((wid.x + wid.y * nwg.x) * ${wg}u + lane);
  var j = 0;
  for (var m = 1; m < ${slots}; m++) {
    if (g >= ${jobs}[m].start) { j = m; }
  }
  let ${job} = ${jobs}[j];
  let i = g - ${job}.start;
  if (i >= ${job}.n) { return; }`;
}

/** WGSL `switch j` over a batched kernel's `slots` (see {@link batchedEntry}): slot j runs `body(j)`, the last
 * slot as the default. */
export function slotSwitch(slots: number, body: (j: number) => string): string {
  const cases = Array.from({ length: slots }, (_, j) =>
    `    ${j === slots - 1 ? "default" : `case ${j}`}: {
${body(j)}
    }`);
  return `  switch j {\n${cases.join("\n")}\n  }`;
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

/** One binding of a {@link defineKernel} kernel: read-only storage, read-write storage, or texture. */
export interface KernelBinding {
  /** WGSL variable name; also the default plan-buffer name the step binds. */
  name: string;
  /** `r` read-only storage, `w` read-write storage, `t` rgba32float texture (see {@link KernelStep.textures}). */
  kind: "r" | "w" | "t";
  /** WGSL element type of a storage binding (default `f32`). */
  type?: string;
}

/** A kernel's contract, declared once: {@link defineKernel} derives its WGSL header, uniform packing and
 * binding list from it. */
export interface KernelDefinition {
  /** Cache key: must name every choice that changes the code (the code is generated from this definition). */
  key: string;
  /** Uniform fields in order, each `u32` or `f32` (at most 64). */
  uniforms: Record<string, "u32" | "f32">;
  /** Bindings 1..n, in order. */
  bindings: KernelBinding[];
  /** WGSL after the generated header: helper functions and `@compute ... fn main`. */
  body: string;
}

/** A kernel made by {@link defineKernel}: its source and a step builder whose uniforms and bindings are
 * checked against the definition. */
export interface DefinedKernel {
  /** The generated module. */
  source: KernelSource;
  /**
   * A dispatch of this kernel. `values` gives every uniform field; `buffers` maps binding names to plan
   * buffer names where they differ.
   */
  step(
    values: Record<string, number>,
    workgroups: [number, number, number],
    buffers?: Record<string, string>,
  ): KernelStep;
}

/**
 * Declares a kernel once: generates the `Params` struct and the binding declarations of its WGSL, packs the
 * uniform block from named values, and lists the step's buffers, writes and textures, so the three can
 * never disagree.
 */
export function defineKernel(def: KernelDefinition): DefinedKernel {
  const fields = Object.entries(def.uniforms);
  if (fields.length > 64) throw new Error(`${def.key}: more than 64 uniform fields`);
  // A struct of at least 4 scalars keeps the uniform block's size a multiple of 16 bytes.
  const padded = [...fields];
  while (padded.length % 4 !== 0 || padded.length === 0) padded.push([`pad${padded.length}`, "u32"]);
  const header = [
    `struct Params { ${padded.map(([n, t]) => `${n}: ${t},`).join(" ")} }`,
    "@group(0) @binding(0) var<uniform> u: Params;",
    ...def.bindings.map((b, i) =>
      b.kind === "t"
        ? `@group(0) @binding(${i + 1}) var ${b.name}: texture_2d<f32>;`
        : `@group(0) @binding(${i + 1}) var<storage, ${
          b.kind === "w" ? "read_write" : "read"
        }> ${b.name}: array<${b.type ?? "f32"}>;`
    ),
  ].join("\n");
  const source = { key: def.key, code: `${header}\n${def.body}` };
  return {
    source,
    step(values, workgroups, buffers = {}) {
      const data = new ArrayBuffer(padded.length * 4);
      const u32 = new Uint32Array(data), f32 = new Float32Array(data);
      fields.forEach(([name, type], i) => {
        const v = values[name];
        if (v === undefined || !Number.isFinite(v)) throw new Error(`${def.key}: uniform '${name}' is ${v}`);
        if (type === "u32") u32[i] = v;
        else f32[i] = v;
      });
      for (const name of Object.keys(values)) {
        if (!(name in def.uniforms)) throw new Error(`${def.key}: unknown uniform '${name}'`);
      }
      const planName = (b: KernelBinding) => buffers[b.name] ?? b.name;
      return {
        kernel: source,
        uniforms: data,
        buffers: def.bindings.map(planName),
        writes: def.bindings.filter((b) => b.kind === "w").map(planName),
        textures: def.bindings.filter((b) => b.kind === "t").map(planName),
        workgroups,
      };
    },
  };
}
