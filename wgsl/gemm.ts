/**
 * GEMM bodies shared by matmul and the three implicit-GEMM conv kernels: the texture-operand generator
 * ({@link texGemmCode}, the main path; see its section below) and, for operands too large for a texture,
 * the storage-load register-blocked body described here.
 *
 * C[row, col] = sum_k A(row, k) * B(k, col). Each workgroup owns `tm` rows, so every A load is uniform
 * across the workgroup (GPUs serve it from cache; llvmpipe does not: there a workgroup-uniform storage load
 * costs the same lane-by-lane gather as any other, 30 ns per lane, measured). Lanes own columns: `tn`
 * columns each, interleaved so that neighbouring lanes touch neighbouring columns (coalesced on GPUs). No
 * workgroup memory and no barriers: both are expensive on llvmpipe and the uniform-A scheme does not need
 * them.
 *
 * The k loop advances `ku` steps per iteration with the body unrolled in straight-line code, and the k range
 * can be split across workgroups (`splits`), so the loop-iteration count of every invocation stays bounded
 * (llvmpipe silently stops any invocation after 65,535 loop iterations). With `splits > 1` each split writes
 * its partial sums to scratch and {@link reduceSplitsStep} adds them in a fixed order (deterministic).
 *
 * @module
 */

import {
  batchedEntry,
  type DeferredBatch,
  foldWorkgroups,
  type KernelStep,
  slotSwitch,
  texelCoords,
  TEXTURE_ROW_TEXELS,
} from "./plan.ts";

/** Target bound on the loop iterations of one invocation (llvmpipe stops at 65,535). */
export const MAX_LOOP_ITERATIONS = 4096;

/** Register-block shape of one generated GEMM kernel. */
export interface GemmTile {
  /** Rows per workgroup (uniform across its lanes). */
  tm: number;
  /** Columns per lane. */
  tn: number;
  /** Lanes per workgroup; a workgroup covers `wg * tn` columns. */
  wg: number;
  /** k steps unrolled per loop iteration. */
  ku: number;
}

/** One storage binding of a generated kernel (bindings 1.. in order). */
export interface GemmBinding {
  name: string;
  /** WGSL element type; defaults to f32. */
  type?: string;
}

/**
 * Hooks that specialise the GEMM body. All expressions are WGSL over i32 values. Names available to hooks:
 * `u.<field>` (uniforms), `batch`, `split`, `row_i` / `rowc_i` (row index of block row i, and the same
 * clamped into range for loads), `col_j` / `colc_j` (likewise for columns), and in step hooks `k_s`
 * (the k index of unrolled step s; `s` is the step number, or "t" in the remainder loop).
 */
export interface GemmHooks {
  /** Extra uniform i32 fields after the generator's own ones. */
  params: string[];
  /** Storage buffers read by the kernel (the output binding is appended by the generator). */
  inputs: GemmBinding[];
  /** Extra WGSL module-scope declarations (helpers). */
  decls?: string;
  /** Per-invocation statements run before the k loop (batch offsets, per-row/column precomputation). */
  setup: string;
  /** Statements run at each k step before the loads (e.g. decomposing k); declare names suffixed `_s`. */
  step?: (s: string, unrolled: number | null) => string;
  /** f32 expression for A(row i, k_s); must be uniform across the workgroup. */
  loadA: (i: number, s: string, unrolled: number | null) => string;
  /** f32 expression for B(k_s, column j). */
  loadB: (j: number, s: string, unrolled: number | null) => string;
  /** i32 index expression into the output for (row_i, col_j); only evaluated for in-range rows/columns. */
  outIndex: (i: number, j: number) => string;
  /** kLen is always a multiple of ku (step hooks may then rely on a compile-time step number). */
  noRemainder?: boolean;
  /** Optional transform of the final value (e.g. adding a bias); not applied to split partials. */
  epilogue?: (value: string, i: number, j: number) => string;
}

/** Uniform fields every GEMM kernel starts with. */
const BASE_PARAMS = [
  "rows",
  "cols",
  "kLen",
  "rowBlocks",
  "colBlocks",
  "splits",
  "batches",
  "stepsPerSplit",
  "outElems",
];

/** Problem extent and scheduling of one GEMM dispatch. */
export interface GemmExtent {
  rows: number;
  cols: number;
  kLen: number;
  batches: number;
}

/** How a GEMM is split: `splits` k-ranges of `stepsPerSplit` loop iterations each. */
export interface GemmSchedule {
  splits: number;
  stepsPerSplit: number;
  rowBlocks: number;
  colBlocks: number;
  workgroups: number;
}

/**
 * Chooses the k split: as few splits as keep every invocation under {@link MAX_LOOP_ITERATIONS}, plus more
 * when the output alone would leave too few workgroups to fill the machine.
 */
export function gemmSchedule(e: GemmExtent, t: GemmTile, minWorkgroups = 64): GemmSchedule {
  const rowBlocks = Math.ceil(e.rows / t.tm);
  const colBlocks = Math.ceil(e.cols / (t.tn * t.wg));
  const steps = Math.floor(e.kLen / t.ku);
  const outBlocks = rowBlocks * colBlocks * e.batches;
  let splits = Math.max(1, Math.ceil(steps / MAX_LOOP_ITERATIONS));
  // Small outputs with long k: split further for parallelism, but keep >= 64 steps per split.
  while (outBlocks * splits < minWorkgroups && steps / (splits * 2) >= 64) splits *= 2;
  const stepsPerSplit = Math.max(1, Math.ceil(steps / splits));
  splits = Math.max(1, Math.ceil(steps / stepsPerSplit));
  return { splits, stepsPerSplit, rowBlocks, colBlocks, workgroups: outBlocks * splits };
}

/** Packs i32 uniform values in field order. */
export function packI32(values: number[]): ArrayBuffer {
  if (values.length * 4 > 256) throw new Error("uniform block over 256 bytes");
  const buf = new ArrayBuffer(Math.max(16, Math.ceil(values.length / 4) * 16));
  const view = new Int32Array(buf);
  values.forEach((v, i) => {
    if (!Number.isInteger(v) || v > 0x7fffffff || v < -0x80000000) throw new Error(`bad uniform value ${v}`);
    view[i] = v;
  });
  return buf;
}

function paramsStruct(fields: string[]): string {
  return `struct Params {\n${fields.map((f) => `  ${f}: i32,`).join("\n")}\n}`;
}

/** WGSL source of one register-blocked GEMM kernel. `split` selects writing scratch partials. */
export function gemmKernelCode(t: GemmTile, h: GemmHooks, split: boolean): string {
  const { tm, tn, wg, ku } = t;
  const fields = [...BASE_PARAMS, ...h.params];
  const lines: string[] = [];
  const range = (n: number) => Array.from({ length: n }, (_, i) => i);
  const bindings = [...h.inputs.map((b) => ({ ...b, write: false })), {
    name: "out",
    type: "f32",
    write: true,
  }];
  lines.push(paramsStruct(fields));
  lines.push("@group(0) @binding(0) var<uniform> u: Params;");
  bindings.forEach((b, i) => {
    const access = b.write ? "read_write" : "read";
    lines.push(`@group(0) @binding(${i + 1}) var<storage, ${access}> ${b.name}: array<${b.type ?? "f32"}>;`);
  });
  if (h.decls) lines.push(h.decls);
  lines.push(`@compute @workgroup_size(${wg})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lane_u: u32) {
  let lane = i32(lane_u);
  let id = i32(wid.x + wid.y * nwg.x);
  if (id >= u.colBlocks * u.rowBlocks * u.splits * u.batches) { return; }
  let colBlock = id % u.colBlocks;
  var rest = id / u.colBlocks;
  let rowBlock = rest % u.rowBlocks;
  rest = rest / u.rowBlocks;
  let split = rest % u.splits;
  let batch = rest / u.splits;
  let row0 = rowBlock * ${tm};
  let col0 = colBlock * ${tn * wg} + lane;`);
  for (const i of range(tm)) {
    lines.push(`  let row_${i} = row0 + ${i};\n  let rowc_${i} = min(row_${i}, u.rows - 1);`);
  }
  for (const j of range(tn)) {
    lines.push(`  let col_${j} = col0 + ${j * wg};\n  let colc_${j} = min(col_${j}, u.cols - 1);`);
  }
  lines.push(h.setup);
  for (const i of range(tm)) for (const j of range(tn)) lines.push(`  var c_${i}_${j} = 0.0;`);
  const body = (s: string, unrolled: number | null) => {
    const out: string[] = [];
    if (h.step) out.push(h.step(s, unrolled));
    for (const i of range(tm)) out.push(`    let a_${s}_${i} = ${h.loadA(i, s, unrolled)};`);
    for (const j of range(tn)) out.push(`    let b_${s}_${j} = ${h.loadB(j, s, unrolled)};`);
    for (const i of range(tm)) {
      for (const j of range(tn)) out.push(`    c_${i}_${j} = fma(a_${s}_${i}, b_${s}_${j}, c_${i}_${j});`);
    }
    return out.join("\n");
  };
  lines.push(`  let totalSteps = u.kLen / ${ku};
  let stepBegin = split * u.stepsPerSplit;
  let stepEnd = min(stepBegin + u.stepsPerSplit, totalSteps);
  for (var ko = stepBegin; ko < stepEnd; ko++) {`);
  for (const s of range(ku)) {
    lines.push(`    let k_${s} = ko * ${ku} + ${s};`);
    lines.push(body(String(s), s));
  }
  lines.push("  }");
  if (ku > 1 && !h.noRemainder) {
    // Remainder of k (fewer than ku steps) runs in the last split only.
    lines.push(`  if (split == u.splits - 1) {
  for (var k_t = totalSteps * ${ku}; k_t < u.kLen; k_t++) {`);
    lines.push(body("t", null));
    lines.push("  }\n  }");
  }
  for (const i of range(tm)) {
    for (const j of range(tn)) {
      const idx = h.outIndex(i, j);
      const value = split ? `c_${i}_${j}` : (h.epilogue ? h.epilogue(`c_${i}_${j}`, i, j) : `c_${i}_${j}`);
      const target = split ? `split * u.outElems + ${idx}` : idx;
      lines.push(`  if (row_${i} < u.rows && col_${j} < u.cols) { out[${target}] = ${value}; }`);
    }
  }
  lines.push("}");
  return lines.join("\n");
}

/** Uniform values of the generator's base fields, to be followed by the hook's own params. */
export function gemmBaseUniforms(e: GemmExtent, s: GemmSchedule, outElems: number): number[] {
  return [e.rows, e.cols, e.kLen, s.rowBlocks, s.colBlocks, s.splits, e.batches, s.stepsPerSplit, outElems];
}

const REDUCE_WG = 64;

/**
 * Deterministic sum of `splits` partial outputs: out[i] = sum_s part[s * n + i] (+ bias[(i / inner) % len]).
 * With `tail`, values from index `tail.from` on go to the buffer `tail.name` instead (a weight gradient's
 * column sums: the bias gradient). Each invocation loops `splits` times, far under the loop cap. With
 * `deferred` (a weight gradient's reduction, read only by the optimizer after the whole backward pass; no
 * bias), the step may wait and run batched with others ({@link KernelStep.defer}).
 */
export function reduceSplitsStep(
  n: number,
  splits: number,
  bias?: { name: string; inner: number; len: number },
  tail?: { name: string; from: number },
  deferred = false,
): KernelStep {
  const code = `struct Params { n: i32, splits: i32, inner: i32, len: i32,${tail ? " tailFrom: i32," : ""} }
@group(0) @binding(0) var<uniform> u: Params;
@group(0) @binding(1) var<storage, read> part: array<f32>;
${bias ? "@group(0) @binding(2) var<storage, read> bias: array<f32>;\n" : ""}@group(0) @binding(${
    bias ? 3 : 2
  }) var<storage, read_write> out: array<f32>;
${
    tail
      ? `@group(0) @binding(${bias ? 4 : 3}) var<storage, read_write> tail: array<f32>;\n`
      : ""
  }@compute @workgroup_size(${REDUCE_WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lane: u32) {
  let i = i32((wid.x + wid.y * nwg.x) * ${REDUCE_WG}u + lane);
  if (i >= u.n) { return; }
  var acc = ${bias ? "bias[(i / u.inner) % u.len]" : "0.0"};
  for (var s = 0; s < u.splits; s++) { acc += part[s * u.n + i]; }
  ${tail ? "if (i >= u.tailFrom) { tail[i - u.tailFrom] = acc; } else { out[i] = acc; }" : "out[i] = acc;"}
}`;
  return {
    kernel: { key: `gemm-reduce${bias ? "-bias" : ""}${tail ? "-tail" : ""}`, code },
    uniforms: packI32([n, splits, bias?.inner ?? 1, bias?.len ?? 1, ...(tail ? [tail.from] : [])]),
    buffers: [...(bias ? ["partials", bias.name, "out"] : ["partials", "out"]), ...(tail ? [tail.name] : [])],
    writes: tail ? ["out", tail.name] : ["out"],
    workgroups: foldWorkgroups(Math.ceil(n / REDUCE_WG)),
    ...(deferred && !bias ? { defer: tail ? REDUCE_TAIL_BATCH : REDUCE_BATCH } : {}),
  };
}

/** Most reductions one batched dispatch takes (its uniform block holds 4 numbers per reduction). */
const MAX_REDUCE_BATCH = 16;

/**
 * Batched split-K reductions ({@link reduceSplitsStep} without a bias): slot j sums `part{j}` into `out{j}`
 * (and, with `tail`, from `tailFrom` on into `tail{j}`); invocations are numbered across the slots (slot j
 * from `start`), as in the weight repack. The same additions in the same order as the single step.
 */
function reduceBatch(tail: boolean): DeferredBatch {
  const perSlot = tail ? 3 : 2;
  const name = `gemm-reduce${tail ? "-tail" : ""}`;
  return {
    key: name,
    size: (storageBindings) => Math.max(1, Math.min(MAX_REDUCE_BATCH, Math.floor(storageBindings / perSlot))),
    batch: (steps, size) => {
      if (steps.length < 1 || steps.length > size) throw new Error(`reduce batch: 1 to ${size} steps`);
      const params = new Int32Array(4 * size);
      let start = 0;
      steps.forEach((st, j) => {
        const [n, splits, , , tailFrom] = new Int32Array(st.uniforms);
        params.set([start, n, splits, tail ? tailFrom : n], 4 * j);
        start += n;
      });
      for (let j = steps.length; j < size; j++) params.set([start, 0, 0, 0], 4 * j);
      const slots = Array.from({ length: size }, (_, j) => j);
      const store = (j: number) =>
        tail
          ? `if (i >= job.tailFrom) { tail${j}[i - job.tailFrom] = acc; } else { out${j}[i] = acc; }`
          : `out${j}[i] = acc;`;
      const code = `struct Job { start: i32, n: i32, splits: i32, tailFrom: i32, }
struct Params { job: array<Job, ${size}>, }
@group(0) @binding(0) var<uniform> u: Params;
${
        slots.map((j) =>
          [
            `@group(0) @binding(${perSlot * j + 1}) var<storage, read> part${j}: array<f32>;`,
            `@group(0) @binding(${perSlot * j + 2}) var<storage, read_write> out${j}: array<f32>;`,
            ...(tail
              ? [`@group(0) @binding(${perSlot * j + 3}) var<storage, read_write> tail${j}: array<f32>;`]
              : []),
          ].join("\n")
        ).join("\n")
      }
${batchedEntry(size, REDUCE_WG, "u.job", "job")}
  var acc = 0.0;
${
        slotSwitch(size, (j) =>
          `      for (var s = 0; s < job.splits; s++) { acc += part${j}[s * job.n + i]; }
      ${store(j)}`)
      }
}`;
      return {
        kernel: { key: `${name}-batch${size}`, code },
        uniforms: params.buffer,
        workgroups: foldWorkgroups(Math.max(1, Math.ceil(start / REDUCE_WG))),
      };
    },
  };
}

const REDUCE_BATCH = reduceBatch(false);
const REDUCE_TAIL_BATCH = reduceBatch(true);

/** 0, 1, ..., n - 1 (cached: the code generators ask for the same small ranges thousands of times). */
function indices(n: number): number[] {
  let list = INDICES[n];
  if (!list) {
    list = INDICES[n] = [];
    for (let i = 0; i < n; i++) list.push(i);
  }
  return list;
}
const INDICES: number[][] = [];

/** Key fragment naming a tile shape. */
export function tileKey(t: GemmTile): string {
  return `tm${t.tm}-tn${t.tn}-wg${t.wg}-ku${t.ku}`;
}

// ---------------------------------------------------------------------------------------------------------
// Texture-operand GEMM.
//
// Storage loads are gathered lane by lane with bounds checks on software rasterizers (llvmpipe: ~12 ns per
// float), while one rgba32float texel load (~3 ns) delivers 4 floats. So both operands are read as
// textures, every texel fetch feeds 4 useful floats, and each invocation owns a tm x tn register block
// (tm * tn * 4 FMAs per (tm + tn) texels). Invocations are independent (no workgroup memory, no barriers).

/** Largest operand read through a texture; bigger ones fall back to the storage-load kernels. 8,192 rows is
 * a common maxTextureDimension2D; the margin covers the engine sizing a texture from a pooled buffer, whose
 * bucket can be 25% larger than the tensor, when a plan's float counts are not passed to runPlan. */
export const MAX_TEXTURE_FLOATS = TEXTURE_ROW_TEXELS * 4 * 6144;

/** Register block of a texture GEMM (rows x columns per invocation) and invocations per workgroup. */
export interface TexTile {
  tm: number;
  tn: number;
  wg: number;
}

/** How a texture operand packs 4 floats into one texel. */
export type TexOperand =
  | {
    /** "k": 4 consecutive k values of one row (column); "free": 4 consecutive rows (columns) at one k. */
    layout: "k" | "free";
    /** i32 WGSL texel index. For "k": block row (column) `idx`; for "free": group `idx` (rows 4*idx..+3) at
     * k sub-step `s` of the iteration. */
    texel: (idx: number, s: number) => string;
  }
  | {
    /** Any other arrangement: the operand lists its texel loads and says where each value lies. */
    layout: "custom";
    /** The loads of one iteration: `name` (declared with `let`) = texel `texel`, or zero where the bool WGSL
     * expression `mask` is false; with `gate` (a texture input of the same layout), also zero in each
     * component where the gate's texel is not positive (a ReLU's backward mask, read from its output). */
    loads: { name: string; texel: string; mask?: string; gate?: string }[];
    /** f32 WGSL expression (over the loaded names) for block row (column) `idx` at k sub-step `s`. */
    value: (idx: number, s: number) => string;
  };

/** A texture-operand GEMM kernel: bindings are `inputs` (textures or storage) followed by `out`. */
export interface TexGemmSpec {
  tm: number;
  tn: number;
  /** Invocations per workgroup. */
  wg: number;
  /** k values per loop iteration: 4 (a "k" operand needs it), 1 when both operands are "free", or whatever
   * custom operands take. */
  kSub: number;
  a: TexOperand;
  b: TexOperand;
  /** Extra uniform i32 fields after the base ones. */
  params: string[];
  /** Bindings before `out`; the first two are the A and B textures, others (e.g. bias) are storage. */
  inputs: (GemmBinding & { texture?: boolean })[];
  decls?: string;
  /** Per-invocation statements before the loop. Names: u.*, batch, split, row0, col0, rowc_i, colc_j,
   * stepBegin, stepEnd. */
  setup: string;
  /** Statements at the start / end of every loop iteration (loop index `ks`). */
  preStep?: string;
  postStep?: string;
  outIndex: (i: number, j: number) => string;
  /** Extra store condition of row `i` of the block (bool WGSL expression) besides the row/column range. */
  outGuard?: (i: number) => string;
  epilogue?: (value: string, i: number, j: number) => string;
  /** Statements after the loop, before the stores, that the epilogue reads (not emitted for split kernels). */
  epilogueSetup?: string;
  /** Statements after the loop that {@link outIndex} reads (emitted for split kernels too). */
  storeSetup?: string;
  /**
   * Stores of 4 neighbouring columns at once and without guards, used when tn is a multiple of 4 (a quarter
   * of the store source, and no branches): `index` is the vec4i of {@link outIndex} over columns 4q..4q+3,
   * with columns past `u.cols` clamped to the last, of block row `i` (a WGSL i32: the row, clamped to the
   * last in range); `lastRow` is the block's last row in range by {@link outGuard} (a WGSL i32, relative to
   * row0); `epilogue` maps the accumulators' vec4f as {@link epilogue} does each; `add` is a vec4f WGSL
   * expression, given the vec4i of output indices, added to those outputs where the bool WGSL expression
   * `when` holds (a residual, read only then: a load per output cost the kernels without one 5-30%; never
   * `out` itself, as rows past the end store twice). Its declarations go in {@link storeSetup} and
   * {@link epilogueSetup}.
   */
  vectorStore?: {
    index: (i: string, q: number) => string;
    lastRow: string;
    epilogue?: (v: string, i: number, q: number) => string;
    add?: { when: string; value: (at: string) => string };
  };
  /**
   * Also sum each column's B values over k: a weight gradient's B is dy, so these are the bias gradient, and
   * no separate reduction pass is needed. Row block 0 stores them: without a split to the binding `sums`
   * (after `out`), with one into the partials after the block's outputs, at `outElems - cols + column`.
   */
  columnSums?: boolean;
}

const TEX_BASE_PARAMS = [
  "rows",
  "cols",
  "rowBlocks",
  "colBlocks",
  "splits",
  "batches",
  "outElems",
  "steps",
  "stepsPerSplit",
];

/** Schedule of a texture GEMM: `steps` loop iterations split so no invocation exceeds the loop bound. */
export function texSchedule(
  rows: number,
  cols: number,
  steps: number,
  batches: number,
  tm: number,
  tn: number,
  minInvocations = 512,
): GemmSchedule {
  const rowBlocks = Math.ceil(rows / tm);
  const colBlocks = Math.ceil(cols / tn);
  const outBlocks = rowBlocks * colBlocks * batches;
  let splits = Math.max(1, Math.ceil(steps / MAX_LOOP_ITERATIONS));
  // Few output blocks with a long k: split further for parallelism, keeping >= 64 iterations per split.
  while (outBlocks * splits < minInvocations && steps / (splits * 2) >= 64) splits *= 2;
  const stepsPerSplit = Math.max(1, Math.ceil(steps / splits));
  splits = Math.max(1, Math.ceil(steps / stepsPerSplit));
  return { splits, stepsPerSplit, rowBlocks, colBlocks, workgroups: outBlocks * splits };
}

/** Uniform values of the texture GEMM's base fields. */
export function texBaseUniforms(
  rows: number,
  cols: number,
  steps: number,
  batches: number,
  s: GemmSchedule,
  outElems: number,
): number[] {
  return [rows, cols, s.rowBlocks, s.colBlocks, s.splits, batches, outElems, steps, s.stepsPerSplit];
}

/** Workgroup count of a texture GEMM dispatch. */
export function texWorkgroups(s: GemmSchedule, wg: number): [number, number, number] {
  return foldWorkgroups(Math.ceil(s.workgroups / wg));
}

/**
 * WGSL source of a texture-operand GEMM. `split` writes partial sums for {@link reduceSplitsStep}.
 *
 * Neighbouring invocations own neighbouring row blocks and share their columns, so the B texel addresses
 * are uniform across a SIMD group (cheaper on llvmpipe, which gathers texels lane by lane): put the operand
 * with more texels per iteration on the B side.
 */
export function texGemmCode(t: TexGemmSpec, split: boolean): string {
  const { tm, tn, wg, kSub } = t;
  const range = indices;
  const lines: string[] = [paramsStruct([...TEX_BASE_PARAMS, ...t.params])];
  lines.push("@group(0) @binding(0) var<uniform> u: Params;");
  t.inputs.forEach((b, i) => {
    if (b.texture) {
      lines.push(`@group(0) @binding(${i + 1}) var ${b.name}: texture_2d<f32>;`);
      lines.push(`fn ld_${b.name}(t: i32) -> vec4f {
  return textureLoad(${b.name}, ${texelCoords("t", "i32")}, 0);
}`);
    } else {
      lines.push(`@group(0) @binding(${i + 1}) var<storage, read> ${b.name}: array<${b.type ?? "f32"}>;`);
    }
  });
  lines.push(`@group(0) @binding(${t.inputs.length + 1}) var<storage, read_write> out: array<f32>;`);
  if (t.columnSums && !split) {
    lines.push(`@group(0) @binding(${t.inputs.length + 2}) var<storage, read_write> sums: array<f32>;`);
  }
  if (t.decls) lines.push(t.decls);
  lines.push(`fn fma4(a: vec4f, b: vec4f, c: f32) -> f32 {
  return fma(a.w, b.w, fma(a.z, b.z, fma(a.y, b.y, fma(a.x, b.x, c))));
}`);
  // fma4 of one row's k vector with 4 columns at once; m[e] holds the 4 columns' k value e.
  if (tn % 4 === 0) {
    lines.push(`fn fma4x4(a: vec4f, m: mat4x4f, c: vec4f) -> vec4f {
  return fma(vec4f(a.w), m[3], fma(vec4f(a.z), m[2], fma(vec4f(a.y), m[1], fma(vec4f(a.x), m[0], c))));
}`);
  }
  const texA = t.inputs[0].name, texB = t.inputs[1].name;
  lines.push(`@compute @workgroup_size(${wg})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lane: u32) {
  let id = i32((wid.x + wid.y * nwg.x) * ${wg}u + lane);
  if (id >= u.colBlocks * u.rowBlocks * u.splits * u.batches) { return; }
  let rowBlock = id % u.rowBlocks;
  var rest = id / u.rowBlocks;
  let colBlock = rest % u.colBlocks;
  rest = rest / u.colBlocks;
  let split = rest % u.splits;
  let batch = rest / u.splits;
  let row0 = rowBlock * ${tm};
  let col0 = colBlock * ${tn};
  let stepBegin = split * u.stepsPerSplit;
  let stepEnd = min(stepBegin + u.stepsPerSplit, u.steps);`);
  for (const i of range(tm)) lines.push(`  let rowc_${i} = min(row0 + ${i}, u.rows - 1);`);
  for (const j of range(tn)) lines.push(`  let colc_${j} = min(col0 + ${j}, u.cols - 1);`);
  lines.push(t.setup);
  // With tn a multiple of 4, the accumulators are vectors of 4 neighbouring columns: the same FMAs in the
  // same order per column, in a quarter of the source (its length drives pipeline creation on llvmpipe,
  // whose SIMD lanes are invocations, so a vec4 compiles to the same scalar operations).
  const vec = tn % 4 === 0;
  const acc = (i: number, j: number) => vec ? `c_${i}_${j >> 2}.${"xyzw"[j & 3]}` : `c_${i}_${j}`;
  for (const i of range(tm)) {
    if (vec) { for (const q of range(tn / 4)) lines.push(`  var c_${i}_${q} = vec4f(0.0);`); }
    else for (const j of range(tn)) lines.push(`  var c_${i}_${j} = 0.0;`);
  }
  if (t.columnSums) { for (const j of range(tn)) lines.push(`  var colSum_${j} = 0.0;`); }
  lines.push("  for (var ks = stepBegin; ks < stepEnd; ks++) {");
  if (t.preStep) lines.push(t.preStep);
  const comp = ["x", "y", "z", "w"];
  // Texel loads of one iteration, then the FMAs that consume them.
  const loads = (op: TexOperand, tex: string, p: string, n: number) => {
    if (op.layout === "custom") {
      for (const l of op.loads) {
        const raw = `ld_${tex}(${l.texel})`;
        const v = l.gate ? `select(vec4f(0.0), ${raw}, ld_${l.gate}(${l.texel}) > vec4f(0.0))` : raw;
        lines.push(`    let ${l.name} = ${l.mask ? `select(vec4f(0.0), ${v}, ${l.mask})` : v};`);
      }
    } else if (op.layout === "k") {
      for (const i of range(n)) lines.push(`    let ${p}_${i} = ld_${tex}(${op.texel(i, 0)});`);
    } else {
      for (const s of range(kSub)) {
        for (const g of range(n / 4)) lines.push(`    let ${p}_${s}_${g} = ld_${tex}(${op.texel(g, s)});`);
      }
    }
  };
  const value = (op: TexOperand, p: string, i: number, s: number) =>
    op.layout === "custom"
      ? op.value(i, s)
      : op.layout === "k"
      ? `${p}_${i}.${comp[s]}`
      : `${p}_${s}_${i >> 2}.${comp[i & 3]}`;
  loads(t.a, texA, "ta", tm);
  loads(t.b, texB, "tb", tn);
  // Each accumulator (a vector of 4 columns, or one column) takes its kSub FMAs back to back: with register
  // blocks larger than the register file (llvmpipe: 16 AVX2 registers) a spilled accumulator is then loaded
  // and stored once per iteration. They go through `fma4x4` (or `fma4`) on vectors of 4 consecutive k values,
  // the same FMAs in the same order per column: the source is then a fraction as long, and parsing it was
  // most of a pipeline's creation time on a warm shader cache.
  const vectors = new Map<string, string>();
  const shared = (code: string, prefix: string) => {
    let name = vectors.get(code);
    if (!name) {
      name = `${prefix}_${vectors.size}`;
      vectors.set(code, name);
      lines.push(`    let ${name} = ${code};`);
    }
    return name;
  };
  // Each vector is named once per (operand, index, group): a first restore runs this generator cold, where
  // rebuilding the same strings per row cost a tenth of a second.
  const named = new Map<string, string>();
  const memo = (key: string, make: () => string) => {
    let name = named.get(key);
    if (name === undefined) named.set(key, name = make());
    return name;
  };
  const kVector = (op: TexOperand, p: string, i: number, g: number) =>
    memo(`${p} ${i} ${g}`, () => kVectorOf(op, p, i, g));
  // A vec4f of 4 values: a loaded texel's name when they are its x, y, z, w, else a shared construction.
  const vectorOf = (parts: string[], prefix: string) => {
    const whole = parts[0].match(/^(\w+)\.x$/)?.[1];
    if (whole && parts.every((v, c) => v === `${whole}.${comp[c]}`)) return whole;
    return shared(`vec4f(${parts.join(", ")})`, prefix);
  };
  const kVectorOf = (op: TexOperand, p: string, i: number, g: number) =>
    vectorOf(range(4).map((c) => value(op, p, i, 4 * g + c)), "kv");
  // 4 columns' B values at k sub-step s (a vector), or at the 4 sub-steps of group g (a matrix, column e =
  // sub-step 4g + e), declared once per iteration.
  const columnVector = (q: number, s: number) => memo(`bv ${q} ${s}`, () => columnVectorOf(q, s));
  const columnVectorOf = (q: number, s: number) =>
    vectorOf(range(4).map((c) => value(t.b, "tb", 4 * q + c, s)), "bv");
  const columnMatrix = (q: number, g: number) => memo(`bm ${q} ${g}`, () => columnMatrixOf(q, g));
  const columnMatrixOf = (q: number, g: number) =>
    shared(
      `mat4x4f(${
        range(4).map((e) =>
          `vec4f(${range(4).map((c) => value(t.b, "tb", 4 * q + c, 4 * g + e)).join(", ")})`
        ).join(", ")
      })`,
      "bm",
    );
  const accumulate: string[] = [];
  for (const i of range(tm)) {
    if (vec) {
      for (const q of range(tn / 4)) {
        let sum = `c_${i}_${q}`;
        if (kSub % 4 === 0) {
          for (const g of range(kSub / 4)) {
            sum = `fma4x4(${kVector(t.a, "ta", i, g)}, ${columnMatrix(q, g)}, ${sum})`;
          }
        } else {
          for (const s of range(kSub)) {
            sum = `fma(vec4f(${value(t.a, "ta", i, s)}), ${columnVector(q, s)}, ${sum})`;
          }
        }
        accumulate.push(`    c_${i}_${q} = ${sum};`);
      }
      continue;
    }
    for (const j of range(tn)) {
      let sum = `c_${i}_${j}`;
      if (kSub % 4 === 0) {
        for (const g of range(kSub / 4)) {
          sum = `fma4(${kVector(t.a, "ta", i, g)}, ${kVector(t.b, "tb", j, g)}, ${sum})`;
        }
      } else {
        for (const s of range(kSub)) {
          sum = `fma(${value(t.a, "ta", i, s)}, ${value(t.b, "tb", j, s)}, ${sum})`;
        }
      }
      accumulate.push(`    c_${i}_${j} = ${sum};`);
    }
  }
  lines.push(...accumulate);
  if (t.columnSums) {
    for (const j of range(tn)) {
      const terms = kSub % 4 === 0
        ? range(kSub / 4).map((g) => `dot(${kVector(t.b, "tb", j, g)}, vec4f(1.0))`)
        : range(kSub).map((st) => value(t.b, "tb", j, st));
      lines.push(`    colSum_${j} += ${terms.join(" + ")};`);
    }
  }
  if (t.postStep) lines.push(t.postStep);
  lines.push("  }");
  if (!split && t.epilogueSetup) lines.push(t.epilogueSetup);
  if (t.storeSetup) lines.push(t.storeSetup);
  // Guards as flags joined by \`&\`: \`&&\` short-circuits, which the shader translators turn into a branch
  // per operand (twice the creation time of a 16x16 block on llvmpipe, for the same machine code).
  const vs = vec && !t.columnSums ? t.vectorStore : undefined;
  for (const i of range(vs ? 0 : tm)) {
    const guard = t.outGuard ? ` & (${t.outGuard(i)})` : "";
    lines.push(`  let storeRow_${i} = (row0 + ${i} < u.rows)${guard};`);
  }
  if (vs) {
    // Stores without guards (256 guarded ones were most of a 16x16 block's pipeline creation on llvmpipe):
    // a column past the end computed the last column's value from the same clamped loads, so it stores that
    // value at that column's index; a row past the end stores at the block's last row, and rows go last to
    // first, so that row's own value is written last.
    const put = range(4).map((e) => `  out[at.${"xyzw"[e]}] = w.${"xyzw"[e]};`);
    const add = vs.add ? `\n  if (${vs.add.when}) { w = w + ${vs.add.value("at")}; }` : "";
    lines.splice(
      lines.findIndex((l) => l.startsWith("@compute")),
      0,
      `fn put4(at: vec4i, v: vec4f) {\n  var w = v;${add}\n${put.join("\n")}\n}`,
    );
    lines.push(`  let lastRow = min(u.rows - 1 - row0, ${vs.lastRow});`);
    for (let i = tm - 1; i >= 0; i--) {
      for (const q of range(tn / 4)) {
        const v = split || !vs.epilogue ? `c_${i}_${q}` : vs.epilogue(`c_${i}_${q}`, i, q);
        const index = vs.index(`min(${i}, lastRow)`, q);
        lines.push(`  put4(${split ? `split * u.outElems + ${index}` : index}, ${v});`);
      }
    }
  } else {
    for (const j of range(tn)) lines.push(`  let storeCol_${j} = col0 + ${j} < u.cols;`);
  }
  for (const i of range(vs ? 0 : tm)) {
    for (const j of range(tn)) {
      const idx = t.outIndex(i, j);
      const v = split ? acc(i, j) : (t.epilogue ? t.epilogue(acc(i, j), i, j) : acc(i, j));
      const target = split ? `split * u.outElems + ${idx}` : idx;
      lines.push(`  if (storeRow_${i} & storeCol_${j}) { out[${target}] = ${v}; }`);
    }
  }
  if (t.columnSums) {
    const target = (j: number) =>
      split ? `out[split * u.outElems + u.outElems - u.cols + col0 + ${j}]` : `sums[col0 + ${j}]`;
    for (const j of range(tn)) {
      lines.push(`  if ((rowBlock == 0) & storeCol_${j}) { ${target(j)} = colSum_${j}; }`);
    }
  }
  lines.push("}");
  return lines.join("\n");
}
