// Every op's forward output and input gradients against PyTorch fixtures (tests/fixtures/gen_fixtures.py).
import assert from "node:assert/strict";
import { relativeError, testEngine } from "./_setup.ts";
import { loadOpFixtures, type OpFixture } from "./fixtures/load.ts";
import * as ops from "../mod.ts";
import type { Tensor } from "../mod.ts";

/** Tolerance on the scale-relative max error (see docs/engine.md). */
const TOLERANCE = 1e-4;

type P = Record<string, unknown>;
const RUN: Record<string, (x: Record<string, Tensor>, p: P) => Tensor> = {
  neg: (x) => ops.neg(x.x),
  relu: (x) => ops.relu(x.x),
  leakyRelu: (x, p) => ops.leakyRelu(x.x, p.slope as number),
  sigmoid: (x) => ops.sigmoid(x.x),
  tanh: (x) => ops.tanh(x.x),
  exp: (x) => ops.exp(x.x),
  log: (x) => ops.log(x.x),
  sqrt: (x) => ops.sqrt(x.x),
  abs: (x) => ops.abs(x.x),
  clamp: (x, p) => ops.clamp(x.x, p.min as number, p.max as number),
  add: (x) => ops.add(x.a, x.b),
  sub: (x) => ops.sub(x.a, x.b),
  mul: (x) => ops.mul(x.a, x.b),
  div: (x) => ops.div(x.a, x.b),
  where: (x) => ops.where(x.cond, x.a, x.b),
  sum: (x, p) => ops.sum(x.x, p.axes as number[], p.keepdim as boolean),
  mean: (x, p) => ops.mean(x.x, p.axes as number[], p.keepdim as boolean),
  max: (x, p) => ops.max(x.x, p.axes as number[], p.keepdim as boolean),
  reshape: (x, p) => ops.reshape(x.x, p.shape as number[]),
  permute: (x, p) => ops.permute(x.x, p.dims as number[]),
  slice: (x, p) => ops.slice(x.x, p.starts as number[], p.ends as number[]),
  concat: (x, p) => ops.concat(Object.keys(x).sort().map((k) => x[k]), p.axis as number),
  pad: (x, p) => ops.pad(x.x, p.pads as [number, number][], p.value as number),
  matmul: (x) => ops.matmul(x.a, x.b),
  conv2d: (x, p) => ops.conv2d(x.x, x.w, x.b ?? null, p),
  conv2dResidual: (x, p) => ops.conv2d(x.x, x.w, x.b ?? null, { ...p, residual: x.r }),
  conv2dDense: (x, p) => ops.concat([x.x, ops.conv2d(x.x, x.w, x.b ?? null, { ...p, relu: true })], 1),
  convTranspose2d: (x, p) => ops.convTranspose2d(x.x, x.w, x.b ?? null, p),
  maxPool2d: (x, p) => ops.maxPool2d(x.x, p.kernel as number, p.stride as number),
  avgPool2d: (x, p) => ops.avgPool2d(x.x, p.kernel as number, p.stride as number),
  upsampleNearest: (x, p) => ops.upsampleNearest(x.x, p),
  upsampleBilinear: (x, p) => ops.upsampleBilinear(x.x, p),
  softmax: (x, p) => ops.softmax(x.x, p.axis as number),
  logSoftmax: (x, p) => ops.logSoftmax(x.x, p.axis as number),
  l1Loss: (x) => ops.l1Loss(x.x, x.y),
  mseLoss: (x) => ops.mseLoss(x.x, x.y),
  bceWithLogits: (x) => ops.bceWithLogits(x.x, x.y),
};

async function check(fx: OpFixture): Promise<void> {
  const run = RUN[fx.op];
  assert.ok(run, `no runner for op ${fx.op}`);
  // Record everything synchronously inside tidy (inputs and temporaries are released at its end), then read.
  const { out, grads } = ops.tidy(() => {
    const inputs: Record<string, Tensor> = {};
    for (const [name, t] of Object.entries(fx.inputs)) {
      inputs[name] = ops.tensor(t.data, t.shape);
      inputs[name].requiresGrad = name in fx.grads;
    }
    const out = run(inputs, fx.params);
    const grads: Record<string, Tensor> = {};
    if (Object.keys(fx.grads).length > 0) {
      const g = ops.tensor(fx.gradOutput.data, fx.gradOutput.shape);
      ops.backward(ops.sum(ops.mul(out, g)));
      for (const name of Object.keys(fx.grads)) {
        assert.ok(inputs[name].grad, `${fx.name}: no gradient for ${name}`);
        grads[name] = inputs[name].grad!;
      }
    }
    return { out, grads };
  });
  try {
    assert.deepEqual([...out.shape], fx.output.shape, `${fx.name}: output shape`);
    const outErr = relativeError(await out.data(), fx.output.data);
    assert.ok(outErr <= TOLERANCE, `${fx.name}: forward error ${outErr}`);
    for (const [name, want] of Object.entries(fx.grads)) {
      assert.deepEqual([...grads[name].shape], want.shape, `${fx.name}: grad ${name} shape`);
      const err = relativeError(await grads[name].data(), want.data);
      assert.ok(err <= TOLERANCE, `${fx.name}: gradient of ${name} error ${err}`);
    }
  } finally {
    ops.dispose([out, grads]);
  }
}

for (const fx of loadOpFixtures()) {
  Deno.test(`pytorch fixture: ${fx.name}`, () => check(fx));
}

Deno.test("fixture run leaves no live buffers behind", async () => {
  await testEngine.sync();
  // Every test disposed its tensors; only pooled (free) buffers may remain.
  assert.equal(testEngine.memory().liveBuffers, 0);
});
