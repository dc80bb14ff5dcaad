/**
 * Batched matrix multiply: out[b] = op(A[b]) x op(B[b]) on the shared register-blocked GEMM body.
 *
 * @module
 */

import {
  gemmBaseUniforms,
  type GemmHooks,
  gemmKernelCode,
  gemmSchedule,
  type GemmTile,
  packI32,
  reduceSplitsStep,
  tileKey,
} from "./gemm.ts";
import { foldWorkgroups, type KernelPlan, type KernelStep } from "./plan.ts";

/** Shape of a (batched) matmul. */
export interface MatmulShape {
  batch: number;
  M: number;
  N: number;
  K: number;
  /** A is stored [batch, K, M] instead of [batch, M, K]. */
  transA?: boolean;
  /** B is stored [batch, N, K] instead of [batch, K, N]. */
  transB?: boolean;
  /** A has no batch dimension and is shared by every batch. */
  broadcastA?: boolean;
  /** B has no batch dimension and is shared by every batch. */
  broadcastB?: boolean;
}

/** Default tile: rows of A are uniform per workgroup (broadcast loads), lanes own columns of B. */
export const MATMUL_TILE: GemmTile = { tm: 16, tn: 16, wg: 16, ku: 4 };

function matmulHooks(transA: boolean, transB: boolean, tm: number, tn: number): GemmHooks {
  const setup = [
    "  let aBase = batch * u.aBatchStride;",
    "  let bBase = batch * u.bBatchStride;",
  ];
  if (!transA) { for (let i = 0; i < tm; i++) setup.push(`  let aRow_${i} = aBase + rowc_${i} * u.kLen;`); }
  if (transB) { for (let j = 0; j < tn; j++) setup.push(`  let bCol_${j} = bBase + colc_${j} * u.kLen;`); }
  return {
    params: ["aBatchStride", "bBatchStride"],
    inputs: [{ name: "a" }, { name: "b" }],
    setup: setup.join("\n"),
    loadA: (i, s) => transA ? `a[aBase + k_${s} * u.rows + rowc_${i}]` : `a[aRow_${i} + k_${s}]`,
    loadB: (j, s) => transB ? `b[bCol_${j} + k_${s}]` : `b[bBase + k_${s} * u.cols + colc_${j}]`,
    outIndex: (i, j) => `(batch * u.rows + row_${i}) * u.cols + col_${j}`,
  };
}

/** Plan for out[b] = op(A[b]) x op(B[b]); inputs `a`, `b`, output `out` [batch, M, N]. */
export function matmulPlan(p: MatmulShape, tile: GemmTile = MATMUL_TILE): KernelPlan {
  const { batch, M, N, K } = p;
  const transA = !!p.transA, transB = !!p.transB;
  const outSize = batch * M * N;
  if (outSize === 0) return { outSize, scratch: {}, steps: [] };
  if (K === 0) return { outSize, scratch: {}, steps: [fillZeroStep(outSize)] };
  const extent = { rows: M, cols: N, kLen: K, batches: batch };
  const sched = gemmSchedule(extent, tile);
  const split = sched.splits > 1;
  const hooks = matmulHooks(transA, transB, tile.tm, tile.tn);
  const code = gemmKernelCode(tile, hooks, split);
  const key = `matmul-${transA ? "t" : "n"}${transB ? "t" : "n"}-${tileKey(tile)}${split ? "-split" : ""}`;
  const uniforms = packI32([
    ...gemmBaseUniforms(extent, sched, outSize),
    p.broadcastA ? 0 : M * K,
    p.broadcastB ? 0 : K * N,
  ]);
  const gemm: KernelStep = {
    kernel: { key, code },
    uniforms,
    buffers: ["a", "b", split ? "partials" : "out"],
    writes: [split ? "partials" : "out"],
    workgroups: foldWorkgroups(sched.workgroups),
  };
  if (!split) return { outSize, scratch: {}, steps: [gemm] };
  return {
    outSize,
    scratch: { partials: sched.splits * outSize },
    steps: [gemm, reduceSplitsStep(outSize, sched.splits)],
  };
}

/** K = 0: the product is all zeros (the output buffer is not assumed to be cleared). */
function fillZeroStep(n: number): KernelStep {
  const code = `struct Params { n: i32, }
@group(0) @binding(0) var<uniform> u: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lane: u32) {
  let i = i32((wid.x + wid.y * nwg.x) * 64u + lane);
  if (i < u.n) { out[i] = 0.0; }
}`;
  return {
    kernel: { key: "fill-zero", code },
    uniforms: packI32([n]),
    buffers: ["out"],
    writes: ["out"],
    workgroups: foldWorkgroups(Math.ceil(n / 64)),
  };
}
