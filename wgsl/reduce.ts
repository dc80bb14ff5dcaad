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
    code: `struct Params { outer: u32, len: u32, inner: u32, chunks: u32 }
@group(0) @binding(0) var<uniform> u: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let id = (wg.x + wg.y * nwg.x) * ${WORKGROUP}u + lid;
  if (id >= u.outer * u.chunks * u.inner) { return; }
  // id enumerates [outer, chunk, inner]; inner is fastest so neighbouring lanes read neighbouring addresses.
  let i = id % u.inner;
  let chunk = (id / u.inner) % u.chunks;
  let o = id / (u.inner * u.chunks);
  let start = chunk * ${REDUCE_CHUNK}u;
  let stop = min(start + ${REDUCE_CHUNK}u, u.len);
  var acc = ${init};
  for (var r = start; r < stop; r++) {
    let v = src[(o * u.len + r) * u.inner + i];
    acc = ${fold};
  }
  dst[id] = acc;
}
`,
  };
}

/** Plan reducing input `x` viewed as [outer, len, inner] to `out` [outer, inner]. */
export function reducePlan(op: ReduceOp, outer: number, len: number, inner: number): KernelPlan {
  const kernel = reduceKernel(op);
  const steps: KernelStep[] = [];
  const scratch: Record<string, number> = {};
  let source = "x";
  let remaining = len;
  let pass = 0;
  do {
    const chunks = Math.ceil(remaining / REDUCE_CHUNK);
    const target = chunks === 1 ? "out" : `partial${pass}`;
    if (target !== "out") scratch[target] = outer * chunks * inner;
    steps.push({
      kernel,
      uniforms: new Uint32Array([outer, remaining, inner, chunks]).buffer,
      buffers: [source, target],
      writes: [target],
      workgroups: foldWorkgroups(Math.ceil((outer * chunks * inner) / WORKGROUP)),
    });
    source = target;
    remaining = chunks;
    pass++;
  } while (source !== "out");
  return { outSize: outer * inner, scratch, steps };
}
