// Reductions over a leading block and a later one (a bias gradient's sum over N, H and W, one plan of two
// passes), at sizes where chunks of several images meet in the partial sums, against a CPU reference in
// float64.
import assert from "node:assert/strict";
import { randomArray, relativeError } from "./_setup.ts";
import * as ops from "../mod.ts";

function reference(x: Float32Array, [N, C, H, W]: number[], op: "sum" | "mean" | "max"): Float64Array {
  const out = new Float64Array(C).fill(op === "max" ? -Infinity : 0);
  for (let n = 0; n < N; n++) {
    for (let c = 0; c < C; c++) {
      for (let i = 0; i < H * W; i++) {
        const v = x[(n * C + c) * H * W + i];
        out[c] = op === "max" ? Math.max(out[c], v) : out[c] + v;
      }
    }
  }
  if (op === "mean") out.forEach((v, c) => (out[c] = v / (N * H * W)));
  return out;
}

for (
  const shape of [
    [3, 5, 24, 30], // 5 outputs of 2,160 values
    [8, 16, 64, 64], // a NetR bias gradient at batch 8, 64x64
    [2, 300, 7, 90], // many outputs
    [8, 3, 96, 96], // few outputs of 73,728 values: one pass
    [4, 2, 256, 256], // few outputs of 262,144 values: the most one pass takes
    [5, 1, 256, 256], // one output of 327,680 values: two passes
  ]
) {
  Deno.test(`sum, mean and max of [${shape}] over axes 0, 2, 3 match a float64 reference`, async () => {
    const [N, C, H, W] = shape;
    const data = randomArray(N * C * H * W, 71 + C);
    const x = ops.tensor(data, shape);
    for (const op of ["sum", "mean", "max"] as const) {
      const y = ops[op](x, [0, 2, 3]);
      assert.deepEqual(y.shape, [C]);
      const err = relativeError(await y.data(), reference(data, shape, op));
      assert.ok(err < 1e-5, `${op}: relative error ${err}`);
      y.dispose();
    }
    x.dispose();
  });
}
