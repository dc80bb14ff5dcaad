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

Deno.test("Adam updates many parameters per dispatch exactly as one by one", async () => {
  // Each Adam fixture's parameter ten times in one optimizer (more parameters than one dispatch takes)
  // follows torch.optim's trajectory; and AdamW on 13 parameters of different sizes equals 13
  // single-parameter optimizers (one segment per dispatch), bit for bit.
  for (const c of fixtures.cases.filter((c) => c.options.kind === "adam")) {
    const params = Array.from({ length: 10 }, () => ops.keep(ops.tensor(c.start, c.shape)));
    const opt = makeOptimizer(c, params);
    for (let k = 0; k < c.grads.length; k++) {
      opt.zeroGrad();
      for (const p of params) p.grad = ops.tensor(c.grads[k], c.shape);
      opt.step();
      for (const [i, p] of params.entries()) {
        const err = relativeError(await p.data(), c.after[k]);
        assert.ok(err < 1e-5, `${c.name} step ${k + 1}, copy ${i}: error ${err}`);
      }
    }
    opt.zeroGrad();
    opt.dispose();
    ops.dispose(params);
  }

  const sizes = [5, 1, 300, 64, 7, 1000, 3, 3, 129, 16, 2, 700, 9];
  const rand = (n: number, seed: number) =>
    Float32Array.from({ length: n }, (_, i) => Math.sin(seed * 97 + i * 1.7));
  const together = sizes.map((n, i) => ops.keep(ops.tensor(rand(n, i), [n])));
  const alone = sizes.map((n, i) => ops.keep(ops.tensor(rand(n, i), [n])));
  const options = { lr: 0.05, weightDecay: 0.1, decoupled: true };
  const all = new ops.Adam(together, options);
  const singles = alone.map((p) => new ops.Adam([p], options));
  for (let k = 0; k < 3; k++) {
    sizes.forEach((n, i) => {
      together[i].grad = ops.tensor(rand(n, 100 * k + i + 50), [n]);
      alone[i].grad = ops.tensor(rand(n, 100 * k + i + 50), [n]);
    });
    all.step();
    singles.forEach((o) => o.step());
    all.zeroGrad();
    singles.forEach((o) => o.zeroGrad());
  }
  for (let i = 0; i < sizes.length; i++) {
    assert.deepEqual(await together[i].data(), await alone[i].data(), `parameter ${i} of ${sizes[i]} values`);
  }
  all.dispose();
  singles.forEach((o) => o.dispose());
  ops.dispose([...together, ...alone]);
});

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

Deno.test("an addition passes its gradient on without a copy, and clipGradNorm scales a shared buffer once", async () => {
  const a = ops.tensor([1, 2], [2]);
  const b = ops.tensor([5, 6], [2]);
  a.requiresGrad = b.requiresGrad = true;
  const k = ops.tensor([3, 4], [2]);
  const y = ops.add(a, b);
  ops.backward(ops.sum(ops.mul(y, k)));
  // Both gradients are k = [3, 4], views of the addition's output gradient.
  assert.equal(a.grad!.buffer, b.grad!.buffer);
  // Global norm sqrt(2 * 25); a limit of half of it halves both (scaling the shared buffer twice would
  // quarter them).
  const norm = ops.clipGradNorm([a, b], Math.sqrt(50) / 2);
  assert.ok(Math.abs((await norm.data())[0] - Math.sqrt(50)) < 1e-5);
  for (const g of [a.grad!, b.grad!]) {
    [...await g.data()].forEach((v, i) => assert.ok(Math.abs(v - [1.5, 2][i]) < 1e-5, `${v}`));
  }
  ops.dispose([a, b, k, y, a.grad!, b.grad!, norm]);
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
