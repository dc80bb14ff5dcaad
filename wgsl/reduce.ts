/**
 * Axis reduction kernel over a tensor viewed as [outer, R, inner]: each invocation folds a chunk of at most
 * {@link REDUCE_CHUNK} elements along R, so a long reduction becomes a few passes of partial results and no
 * invocation comes near llvmpipe's 65,535-iteration loop cap.
 *
 * @module
 */

import { foldWorkgroups, type KernelPlan, type KernelStep } from "./plan.ts";

/** Elements folded by one invocation per pass. */
export const REDUCE_CHUNK = 512;
const WORKGROUP = 64;

/** Supported reductions. */
export type ReduceOp = "sum" | "max";

function reduceKernel(op: ReduceOp): { key: string; code: string } {
  const init = op === "sum" ? "0.0" : "-3.402823e38";
  const fold = op === "sum" ? "acc + v" : "max(acc, v)";
  return {
    key: `reduce:${op}`,
    code: `struct Params { outer: u32, len: u32, inner: u32, chunks: u32, lead: u32 }
@group(0) @binding(0) var<uniform> u: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let id = (wg.x + wg.y * nwg.x) * ${WORKGROUP}u + lid;
  let parts = u.lead * u.chunks;
  if (id >= u.outer * parts * u.inner) { return; }
  // id enumerates [outer, lead, chunk, inner]; inner is fastest so neighbouring lanes read neighbouring
  // addresses. The source is [lead, outer, len, inner], reduced over lead and len.
  let i = id % u.inner;
  let part = (id / u.inner) % parts;
  let o = id / (u.inner * parts);
  let a = part / u.chunks;
  let start = (part % u.chunks) * ${REDUCE_CHUNK}u;
  let stop = min(start + ${REDUCE_CHUNK}u, u.len);
  let base = (a * u.outer + o) * u.len;
  var acc = ${init};
  for (var r = start; r < stop; r++) {
    let v = src[(base + r) * u.inner + i];
    acc = ${fold};
  }
  dst[id] = acc;
}
`,
  };
}

/** Most elements per output that {@link workgroupReduceKernel} folds in one pass (1,024 per invocation). */
const WORKGROUP_REDUCE_MAX = 65536;
/** Most outputs (workgroups) for {@link workgroupReduceKernel}. */
const WORKGROUP_REDUCE_OUTPUTS = 4096;
/** Outputs up to which {@link reducePlan}'s one-pass fold takes 4 * WORKGROUP_REDUCE_MAX values each (4,096
 * per invocation, far under the loop cap). */
const FEW_OUTPUTS = 4;

/** Folds every invocation's `acc` into `partial[0]` (workgroup array `partial`, a barrier per halving). */
const workgroupFold = (fold: (a: string, b: string) => string) =>
  `  partial[lid] = acc;
  workgroupBarrier();
  for (var step = ${WORKGROUP / 2}u; step > 0u; step >>= 1u) {
    if (lid < step) { partial[lid] = ${fold("partial[lid]", "partial[lid + step]")}; }
    workgroupBarrier();
  }`;

/** One workgroup per output: its 64 invocations stride over the [lead, len] elements, then fold their sums
 * in workgroup memory. One dispatch where {@link reduceKernel} takes two (a bias gradient). */
function workgroupReduceKernel(op: ReduceOp): { key: string; code: string } {
  const init = op === "sum" ? "0.0" : "-3.402823e38";
  const fold = (a: string, b: string) => (op === "sum" ? `${a} + ${b}` : `max(${a}, ${b})`);
  return {
    key: `reduce-wg:${op}`,
    code: `struct Params { outer: u32, len: u32, inner: u32, lead: u32 }
@group(0) @binding(0) var<uniform> u: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
var<workgroup> partial: array<f32, ${WORKGROUP}>;
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let id = wg.x + wg.y * nwg.x;
  let inRange = id < u.outer * u.inner;
  let i = id % u.inner;
  let o = id / u.inner;
  var acc = ${init};
  if (inRange) {
    for (var a = 0u; a < u.lead; a++) {
      let base = (a * u.outer + o) * u.len;
      for (var r = lid; r < u.len; r += ${WORKGROUP}u) {
        let v = src[(base + r) * u.inner + i];
        acc = ${fold("acc", "v")};
      }
    }
  }
${workgroupFold(fold)}
  if (inRange && lid == 0u) { dst[id] = partial[0]; }
}
`,
  };
}

/**
 * Plan reducing input `x` viewed as [lead, outer, len, inner] over `lead` and `len` to `out` [outer, inner]
 * (`lead` 1: an axis block; more: two blocks, the leading axes and a later one, as a bias gradient's
 * [N, C, H*W] over N and H*W, in the same passes).
 */
export function reducePlan(op: ReduceOp, outer: number, len: number, inner: number, lead = 1): KernelPlan {
  const outputs = outer * inner;
  // A few outputs (a loss) take one workgroup each up to 4x as many values: one pass instead of two.
  const max = outputs <= FEW_OUTPUTS ? 4 * WORKGROUP_REDUCE_MAX : WORKGROUP_REDUCE_MAX;
  if (lead * len > REDUCE_CHUNK && lead * len <= max && outputs <= WORKGROUP_REDUCE_OUTPUTS) {
    return {
      outSize: outputs,
      scratch: {},
      steps: [{
        kernel: workgroupReduceKernel(op),
        uniforms: new Uint32Array([outer, len, inner, lead]).buffer,
        buffers: ["x", "out"],
        writes: ["out"],
        workgroups: foldWorkgroups(outputs),
      }],
    };
  }
  const kernel = reduceKernel(op);
  const steps: KernelStep[] = [];
  const scratch: Record<string, number> = {};
  let source = "x";
  let remaining = len;
  let pass = 0;
  do {
    const chunks = Math.ceil(remaining / REDUCE_CHUNK);
    const parts = lead * chunks;
    const target = parts === 1 ? "out" : `partial${pass}`;
    if (target !== "out") scratch[target] = outer * parts * inner;
    steps.push({
      kernel,
      uniforms: new Uint32Array([outer, remaining, inner, chunks, lead]).buffer,
      buffers: [source, target],
      writes: [target],
      workgroups: foldWorkgroups(Math.ceil((outer * parts * inner) / WORKGROUP)),
    });
    source = target;
    remaining = parts; // the partials [outer, parts, inner] reduce over parts next
    lead = 1;
    pass++;
  } while (source !== "out");
  return { outSize: outer * inner, scratch, steps };
}

/**
 * A ReLU convolution's output gradient and bias gradient in one dispatch: `dy = g` where the output `y` is
 * positive, else 0, and `db[c] = sum over n, h, w of dy` (inputs `g`, `y`, outputs `dy`, `db`; [N, C, HW]).
 * One workgroup per channel, as {@link reducePlan}'s one-pass fold; null where that does not apply (more
 * than 65,536 values per channel or more than 4,096 channels).
 */
export function reluBiasGradPlan(N: number, C: number, HW: number): KernelPlan | null {
  if (N * HW > WORKGROUP_REDUCE_MAX || C > WORKGROUP_REDUCE_OUTPUTS || N * HW === 0) return null;
  const code = `struct Params { N: u32, C: u32, HW: u32 }
@group(0) @binding(0) var<uniform> u: Params;
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> db: array<f32>;
var<workgroup> partial: array<f32, ${WORKGROUP}>;
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let c = wg.x + wg.y * nwg.x;
  let inRange = c < u.C;
  var acc = 0.0;
  if (inRange) {
    for (var n = 0u; n < u.N; n++) {
      let base = (n * u.C + c) * u.HW;
      for (var r = lid; r < u.HW; r += ${WORKGROUP}u) {
        let v = select(0.0, g[base + r], y[base + r] > 0.0);
        dy[base + r] = v;
        acc += v;
      }
    }
  }
${workgroupFold((a, b) => `${a} + ${b}`)}
  if (inRange && lid == 0u) { db[c] = partial[0]; }
}
`;
  return {
    outSize: N * C * HW,
    scratch: {},
    steps: [{
      kernel: { key: "relu-bias-grad", code },
      uniforms: new Uint32Array([N, C, HW]).buffer,
      buffers: ["g", "y", "out", "db"],
      writes: ["out", "db"],
      workgroups: foldWorkgroups(C),
    }],
  };
}
