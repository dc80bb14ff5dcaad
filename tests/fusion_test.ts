// Fused kernels against the composed ops they replace, over a whole fixed-seed training run: the NetR loss
// curve of 20 Adam steps must match the unfused path to 1e-4 (relative).
import assert from "node:assert/strict";
import { randomArray } from "./_setup.ts";
import * as ops from "../mod.ts";
import { blockMask, syntheticGuidance } from "../bench/model.ts";

async function lossCurve(fused: boolean, steps: number): Promise<number[]> {
  const previous = ops.setFusion(fused);
  const [n, h, w] = [2, 32, 48];
  const model = new ops.SpairModel({ preset: "tiny", variant: "SPAIR" }, 5);
  const x = ops.tensor(randomArray(n * 3 * h * w, 21, 0, 1), [n, 3, h, w]);
  const target = ops.tensor(randomArray(n * 3 * h * w, 22, 0, 1), [n, 3, h, w]);
  const maskData = blockMask(n, h, w, 0.3, 23);
  const optimizer = new ops.Adam(model.netR.parameters(), { lr: 2e-3 });
  const losses: ops.Tensor[] = [];
  try {
    for (let step = 0; step < steps; step++) {
      losses.push(ops.tidy(() => {
        const g = syntheticGuidance(model, x, maskData);
        optimizer.zeroGrad();
        const loss = ops.l1Loss(model.netR.forward(x, g), target);
        ops.backward(loss);
        optimizer.step();
        ops.disposeGuidance(g);
        return loss;
      }));
    }
    const values: number[] = [];
    for (const l of losses) values.push(await l.item());
    return values;
  } finally {
    ops.setFusion(previous);
    optimizer.zeroGrad();
    optimizer.dispose();
    ops.dispose([x, target, ...losses, ...model.parameters()]);
  }
}

Deno.test("20 fixed-seed NetR training steps: fused and unfused losses agree to 1e-4", async () => {
  const fused = await lossCurve(true, 20);
  const unfused = await lossCurve(false, 20);
  for (let i = 0; i < fused.length; i++) {
    const rel = Math.abs(fused[i] - unfused[i]) / Math.abs(unfused[i]);
    assert.ok(rel <= 1e-4, `step ${i}: fused ${fused[i]} vs unfused ${unfused[i]} (relative ${rel})`);
  }
  // The run must actually train, or equal curves would prove nothing.
  assert.ok(fused[19] < 0.95 * fused[0], `loss ${fused[0]} -> ${fused[19]}`);
});
