// Optimizers against torch.optim trajectories (tests/fixtures/gen_optim_fixtures.py), state round trip,
// and the step learning-rate schedule.
import assert from "node:assert/strict";
import { relativeError, testEngine } from "./_setup.ts";
import * as ops from "../mod.ts";

interface OptimCase {
  name: string;
  shape: number[];
  start: number[];
  grads: number[][];
  after: number[][];
  options: { kind: "adam" | "sgd" } & Record<string, unknown>;
}

const fixtures: { cases: OptimCase[] } = JSON.parse(
  Deno.readTextFileSync(new URL("./fixtures/optim.json", import.meta.url)),
);

function makeOptimizer(c: OptimCase, params: ops.Tensor[]): ops.Adam | ops.SGD {
  return c.options.kind === "adam"
    ? new ops.Adam(params, c.options as ops.AdamOptions)
    : new ops.SGD(params, c.options as ops.SgdOptions);
}

for (const c of fixtures.cases) {
  Deno.test(`optimizer matches torch.optim: ${c.name}`, async () => {
    const p = ops.keep(ops.tensor(c.start, c.shape));
    p.requiresGrad = true;
    const opt = makeOptimizer(c, [p]);
    for (let k = 0; k < c.grads.length; k++) {
      opt.zeroGrad();
      p.grad = ops.tensor(c.grads[k], c.shape);
      opt.step();
      const err = relativeError(await p.data(), c.after[k]);
      assert.ok(err < 1e-5, `${c.name} step ${k + 1}: error ${err}`);
    }
    opt.zeroGrad();
    opt.dispose();
    p.dispose();
  });
}

Deno.test("optimizer state round-trips: a restored Adam continues exactly like the original", async () => {
  const c = fixtures.cases.find((x) => x.name === "adam_l2")!;
  const p = ops.tensor(c.start, c.shape);
  p.requiresGrad = true;
  p.name = "w";
  const opt = makeOptimizer(c, [p]);
  for (let k = 0; k < 3; k++) {
    opt.zeroGrad();
    p.grad = ops.tensor(c.grads[k], c.shape);
    opt.step();
  }
  // Save state (as a checkpoint would), then continue in a fresh optimizer on a copy of the parameter.
  const state = opt.stateDict();
  const saved: Record<string, Float32Array> = {};
  for (const [k, t] of Object.entries(state.tensors)) saved[k] = await t.data();
  const q = ops.tensor(await p.data(), c.shape);
  q.requiresGrad = true;
  q.name = "w";
  const restored = makeOptimizer(c, [q]);
  const tensors: Record<string, ops.Tensor> = {};
  for (const [k, d] of Object.entries(saved)) tensors[k] = ops.tensor(d, c.shape);
  restored.loadStateDict({ meta: JSON.parse(JSON.stringify(state.meta)), tensors });
  ops.dispose(tensors);
  for (let k = 3; k < c.grads.length; k++) {
    for (const [o, t] of [[opt, p], [restored, q]] as const) {
      o.zeroGrad();
      t.grad = ops.tensor(c.grads[k], c.shape);
      o.step();
    }
  }
  assert.deepEqual(await q.data(), await p.data());
  assert.ok(relativeError(await q.data(), c.after[c.after.length - 1]) < 1e-5);
  for (const o of [opt, restored]) {
    o.zeroGrad();
    o.dispose();
  }
  ops.dispose([p, q]);
  await testEngine.sync();
});

Deno.test("stepLr halves the learning rate every N epochs", () => {
  assert.equal(ops.stepLr(2e-4, 0, 50), 2e-4);
  assert.equal(ops.stepLr(2e-4, 49, 50), 2e-4);
  assert.equal(ops.stepLr(2e-4, 50, 50), 1e-4);
  assert.equal(ops.stepLr(2e-4, 149, 50), 5e-5);
});

Deno.test("clipGradNorm scales gradients to the global norm limit, in place, and returns the norm", async () => {
  const a = ops.tensor([1, 2, 3], [3]);
  const b = ops.tensor([0, 0, 0, 0], [2, 2]);
  const frozen = ops.tensor([5], [1]); // no gradient: skipped
  a.grad = ops.tensor([3, 0, 4], [3]);
  b.grad = ops.tensor([0, 12, 0, 0], [2, 2]);
  const before = [a.grad, b.grad];
  // Global norm sqrt(9 + 16 + 144) = 13: a limit of 6.5 halves every gradient.
  const norm = ops.clipGradNorm([a, b, frozen], 6.5);
  assert.ok(Math.abs((await norm.data())[0] - 13) < 1e-5);
  assert.equal(a.grad, before[0], "gradients are scaled in place");
  const scale = 6.5 / (13 + 1e-6);
  [...await a.grad.data()].forEach((v, i) => assert.ok(Math.abs(v - [3, 0, 4][i] * scale) < 1e-6));
  [...await b.grad!.data()].forEach((v, i) => assert.ok(Math.abs(v - [0, 12, 0, 0][i] * scale) < 1e-6));
  // Under the limit nothing changes.
  const again = ops.clipGradNorm([a, b], 100);
  assert.ok(Math.abs((await again.data())[0] - 6.5) < 1e-4);
  [...await a.grad.data()].forEach((v, i) => assert.ok(Math.abs(v - [3, 0, 4][i] * scale) < 1e-6));
  assert.throws(() => ops.clipGradNorm([a], 0), /maxNorm must be positive/);
  ops.dispose([a, b, frozen, a.grad, b.grad, norm, again]);
});
