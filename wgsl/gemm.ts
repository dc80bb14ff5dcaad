/**
 * Register-blocked GEMM body shared by matmul and the three implicit-GEMM conv kernels.
 *
 * C[row, col] = sum_k A(row, k) * B(k, col). Each workgroup owns `tm` rows, so every A load is uniform
 * across the workgroup (software rasterizers turn it into one scalar load + broadcast; GPUs serve it from
 * cache). Lanes own columns: `tn` columns each, interleaved so that neighbouring lanes touch neighbouring
 * columns (coalesced on GPUs). No workgroup memory and no barriers: both are expensive on llvmpipe and the
 * uniform-A scheme does not need them.
 *
 * The k loop advances `ku` steps per iteration with the body unrolled in straight-line code, and the k range
 * can be split across workgroups (`splits`), so the loop-iteration count of every invocation stays bounded
 * (llvmpipe silently stops any invocation after 65,535 loop iterations). With `splits > 1` each split writes
 * its partial sums to scratch and {@link reduceSplitsStep} adds them in a fixed order (deterministic).
 *
 * @module
 */

import { foldWorkgroups, type KernelStep } from "./plan.ts";

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
 * Each invocation loops `splits` times, far under the loop cap.
 */
export function reduceSplitsStep(
  n: number,
  splits: number,
  bias?: { name: string; inner: number; len: number },
): KernelStep {
  const code = `struct Params { n: i32, splits: i32, inner: i32, len: i32, }
@group(0) @binding(0) var<uniform> u: Params;
@group(0) @binding(1) var<storage, read> part: array<f32>;
${bias ? "@group(0) @binding(2) var<storage, read> bias: array<f32>;\n" : ""}@group(0) @binding(${
    bias ? 3 : 2
  }) var<storage, read_write> out: array<f32>;
@compute @workgroup_size(${REDUCE_WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lane: u32) {
  let i = i32((wid.x + wid.y * nwg.x) * ${REDUCE_WG}u + lane);
  if (i >= u.n) { return; }
  var acc = ${bias ? "bias[(i / u.inner) % u.len]" : "0.0"};
  for (var s = 0; s < u.splits; s++) { acc += part[s * u.n + i]; }
  out[i] = acc;
}`;
  return {
    kernel: { key: `gemm-reduce${bias ? "-bias" : ""}`, code },
    uniforms: packI32([n, splits, bias?.inner ?? 1, bias?.len ?? 1]),
    buffers: bias ? ["partials", bias.name, "out"] : ["partials", "out"],
    writes: ["out"],
    workgroups: foldWorkgroups(Math.ceil(n / REDUCE_WG)),
  };
}

/** Key fragment naming a tile shape. */
export function tileKey(t: GemmTile): string {
  return `tm${t.tm}-tn${t.tn}-wg${t.wg}-ku${t.ku}`;
}
