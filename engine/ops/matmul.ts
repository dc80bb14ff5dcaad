/**
 * Batched matrix multiplication and its backward rule. Kernel: `wgsl/matmul.ts` (register-blocked GEMM,
 * split-K for long reductions).
 *
 * @module
 */

import { engine } from "../device.ts";
import { record } from "../graph.ts";
import { Tensor } from "../tensor.ts";
import { matmulPlan, type MatmulShape } from "../../wgsl/matmul.ts";
import { memoizePlans } from "../../wgsl/plan.ts";
import { sum } from "./reduce.ts";

const cachedMatmulPlan = memoizePlans((shape: MatmulShape) => matmulPlan(shape));

function runMatmul(a: Tensor, b: Tensor, shape: MatmulShape, outShape: number[]): Tensor {
  const out = Tensor.empty(outShape);
  engine().runPlan(cachedMatmulPlan(shape), { a: a.buffer, b: b.buffer, out: out.buffer }, {
    a: a.size,
    b: b.size,
  });
  return out;
}

/**
 * a @ b for a [..., M, K] and b [..., K, N]. Leading (batch) dimensions must be equal, or one operand may
 * be 2-D and is then shared by every batch.
 */
export function matmul(a: Tensor, b: Tensor): Tensor {
  if (a.rank < 2 || b.rank < 2) {
    throw new Error(`matmul: operands must be at least 2-D, got [${a.shape}] and [${b.shape}]`);
  }
  const [M, K] = a.shape.slice(-2);
  const [K2, N] = b.shape.slice(-2);
  if (K !== K2) throw new Error(`matmul: inner dimensions differ: [${a.shape}] @ [${b.shape}]`);
  const batchA = a.shape.slice(0, -2);
  const batchB = b.shape.slice(0, -2);
  const broadcastA = batchA.length === 0 && batchB.length > 0;
  const broadcastB = batchB.length === 0 && batchA.length > 0;
  if (
    !broadcastA && !broadcastB && (batchA.length !== batchB.length || batchA.some((d, i) => d !== batchB[i]))
  ) {
    throw new Error(`matmul: batch dimensions differ: [${a.shape}] @ [${b.shape}]`);
  }
  const batchShape = broadcastA ? batchB : batchA;
  const batch = batchShape.reduce((p, d) => p * d, 1);
  const y = engine().op(
    "matmul",
    () => runMatmul(a, b, { batch, M, N, K, broadcastA, broadcastB }, [...batchShape, M, N]),
  );
  return record("matmul", [a, b], y, (g, [sa, sb]) =>
    engine().op("matmul backward", () => {
      let da: Tensor | null = null;
      let db: Tensor | null = null;
      if (a.requiresGrad) {
        // dA = g @ B^T, summed over the batch when A was shared.
        const full = runMatmul(g, sb, { batch, M, N: K, K: N, transB: true, broadcastB }, [
          ...batchShape,
          M,
          K,
        ]);
        if (broadcastA) {
          da = sum(full.view([batch, M, K]), 0);
          full.dispose();
        } else da = full;
      }
      if (b.requiresGrad) {
        // dB = A^T @ g; a shared B folds the batch into the reduction axis.
        db = broadcastB
          ? runMatmul(sa, g, { batch: 1, M: K, N, K: batch * M, transA: true }, [K, N])
          : runMatmul(sa, g, { batch, M: K, N, K: M, transA: true, broadcastA }, [...batchShape, K, N]);
      }
      return [da, db];
    }), [a, b]);
}
