// Broadcast element-wise ops: the axis collapsing and the f32-reciprocal index split of the strided kernel.
import assert from "node:assert/strict";
import { randomArray } from "./_setup.ts";
import * as ops from "../mod.ts";
import { collapseAxes } from "../wgsl/elementwise.ts";

Deno.test("collapseAxes merges axes every input walks as one and drops length-1 axes", () => {
  // out [N,C,H,W] = [2,3,4,5]; a full-size, b a channel mask [2,1,4,5], c a per-channel bias [1,3,1,1].
  const full = [60, 20, 5, 1], mask = [20, 0, 5, 1], bias = [0, 1, 0, 0];
  assert.deepEqual(collapseAxes([2, 3, 4, 5], [full, mask]), {
    shape: [2, 3, 20],
    strides: [[60, 20, 1], [20, 0, 1]],
  });
  assert.deepEqual(collapseAxes([2, 3, 4, 5], [full, bias]), {
    shape: [2, 3, 20],
    strides: [[60, 20, 1], [0, 1, 0]],
  });
  assert.deepEqual(collapseAxes([2, 1, 4, 5], [[20, 20, 5, 1], [0, 0, 5, 1]]), {
    shape: [2, 20],
    strides: [[20, 1], [0, 1]],
  });
  assert.deepEqual(collapseAxes([1, 1], [[1, 1]]), { shape: [1], strides: [[0]] });
});

Deno.test("broadcast select and add over 4.2M values (f32-reciprocal index split) match a CPU reference", async () => {
  // Odd lengths and a size just under 2^22, the largest the reciprocal split takes: every quotient path runs.
  const [N, C, H, W] = [3, 7, 199, 1001];
  const size = N * C * H * W;
  assert.ok(size < 1 << 22 && size > (1 << 22) - 200000);
  const a = randomArray(size, 61), m = randomArray(N * H * W, 62).map((v) => (v > 0 ? 1 : 0));
  const bias = randomArray(C, 63);
  const ta = ops.tensor(a, [N, C, H, W]),
    tm = ops.tensor(m, [N, 1, H, W]),
    tb = ops.tensor(bias, [1, C, 1, 1]);
  const y = ops.map("select(a + c, 0.0, b != 0.0)", [ta, tm, tb]);
  const got = await y.data();
  let bad = 0;
  for (let n = 0; n < N; n++) {
    for (let c = 0; c < C; c++) {
      for (let p = 0; p < H * W; p++) {
        const i = (n * C + c) * H * W + p;
        const want = m[n * H * W + p] !== 0 ? 0 : Math.fround(a[i] + bias[c]);
        if (got[i] !== want) bad++;
      }
    }
  }
  assert.equal(bad, 0, `${bad} of ${size} values differ`);
  ops.dispose([ta, tm, tb, y]);
});
