// Finite-difference gradient checks for every differentiable op in mod.ts and for a small composite network.
//
// For each case: loss = sum_k sum(out_k * r_k) with fixed random r_k. The analytic gradient comes from
// backward(loss); the numerical one from central differences (L(x + h e_i) - L(x - h e_i)) / (2h) computed in
// float32 on the GPU, on a seeded random subset of coordinates of every input. All perturbed losses of a case
// are recorded first and read back in one transfer. Inputs are kept away from kinks (relu/abs/clamp at their
// thresholds, ties in max/maximum/maxPool) by at least several eps so that every difference is smooth.
import assert from "node:assert/strict";
import { randomArray, testEngine } from "./_setup.ts";
import * as ops from "../mod.ts";
import type { Tensor } from "../mod.ts";

/** Finite-difference step. */
const EPS = 1e-2;
/**
 * Accepted error: |numerical - analytic| <= TOL * max(1, |analytic|). With float32 losses of size O(1-10),
 * roundoff contributes ~1e-6 / eps ~ 1e-4 and truncation ~eps^2 * |f'''| ~ 1e-4, so observed errors stay
 * below ~1.5e-3 on llvmpipe; a wrong rule (missing factor, wrong sign, dropped broadcast sum, misplaced tap)
 * is off by O(1).
 */
const TOL = 1e-2;
/** Coordinates checked per input (all of them when the input is smaller). */
const SAMPLES = 12;

interface Input {
  shape: number[];
  data: Float32Array;
  /** Whether to check this input's gradient (default true). */
  grad?: boolean;
}

interface Case {
  inputs: Record<string, Input>;
  fn: (x: Record<string, Tensor>) => Tensor | Tensor[];
  eps?: number;
}

// ---- seeded input generators ----

let seedCounter = 1000;
const nextSeed = () => seedCounter++;
const size = (shape: number[]) => shape.reduce((p, d) => p * d, 1);

/** Uniform in [lo, hi). */
function rand(shape: number[], lo = -1, hi = 1): Input {
  return { shape, data: randomArray(size(shape), nextSeed(), lo, hi) };
}

/** Uniform in [-spread, spread) pushed at least `margin` away from every kink (kinks >= 2 * margin apart). */
function avoiding(shape: number[], kinks: number[], margin: number, spread = 1): Input {
  const data = randomArray(size(shape), nextSeed(), -spread, spread);
  for (let i = 0; i < data.length; i++) {
    for (const k of kinks) {
      const d = data[i] - k;
      if (Math.abs(d) < margin) data[i] = k + d + (d >= 0 ? margin : -margin);
    }
  }
  return { shape, data };
}

/** Values `offset + step * n` for random integers n in [-10, 10]: two grids with offsets 0 and step / 2 never
 * come closer than step / 2, which keeps maximum/minimum/l1 away from ties. */
function grid(shape: number[], step: number, offset: number): Input {
  const u = randomArray(size(shape), nextSeed(), -10.5, 10.5);
  return { shape, data: u.map((v) => offset + step * Math.round(v)) };
}

/** A random permutation of distinct values spaced `step` apart (no ties for max and maxPool). */
function distinct(shape: number[], step = 0.05): Input {
  const n = size(shape);
  const keys = randomArray(n, nextSeed());
  const order = [...Array(n).keys()].sort((a, b) => keys[a] - keys[b]);
  const data = new Float32Array(n);
  order.forEach((pos, rank) => (data[pos] = (rank - n / 2) * step));
  return { shape, data };
}

/** 0/1 mask. */
function mask(shape: number[]): Input {
  const u = randomArray(size(shape), nextSeed());
  return { shape, data: u.map((v) => (v > 0 ? 1 : 0)), grad: false };
}

const noGradInput = (i: Input): Input => ({ ...i, grad: false });

// ---- the check ----

function upload(inputs: Record<string, Input>, requiresGrad: boolean): Record<string, Tensor> {
  const out: Record<string, Tensor> = {};
  for (const [name, input] of Object.entries(inputs)) {
    out[name] = ops.tensor(input.data, input.shape);
    out[name].requiresGrad = requiresGrad && input.grad !== false;
  }
  return out;
}

function asList(y: Tensor | Tensor[]): Tensor[] {
  return Array.isArray(y) ? y : [y];
}

/** sum_k sum(out_k * r_k) */
function weightedLoss(outs: Tensor[], rs: Tensor[]): Tensor {
  let loss: Tensor | null = null;
  outs.forEach((o, k) => {
    const term = ops.sum(ops.mul(o, rs[k]));
    loss = loss ? ops.add(loss, term) : term;
  });
  return loss!;
}

/** Sample indices: all of them for small inputs, else SAMPLES distinct seeded ones. */
function sampleIndices(n: number, seed: number, count = SAMPLES): number[] {
  if (n <= count) return [...Array(n).keys()];
  const picked = new Set<number>();
  const u = randomArray(4 * count, seed, 0, 1);
  for (let k = 0; picked.size < count; k++) {
    picked.add(k < u.length ? Math.floor(u[k] * n) : (k * 7919) % n);
  }
  return [...picked];
}

interface Sample {
  input: string;
  index: number;
  analytic: number;
  numerical: number;
}

/** Runs the gradient check of one case and returns the compared samples (asserting on failure). */
async function gradcheck(name: string, c: Case): Promise<Sample[]> {
  const eps = c.eps ?? EPS;
  const gradNames = Object.keys(c.inputs).filter((n) => c.inputs[n].grad !== false);
  // Output shapes, then one fixed random weight tensor per output.
  const outShapes = ops.noGrad(() =>
    ops.tidy(() => asList(c.fn(upload(c.inputs, false))).map((o) => [...o.shape]))
  );
  const rData = outShapes.map((s, k) => randomArray(size(s), 77 + k));

  // Analytic gradients.
  const grads = ops.tidy(() => {
    const xs = upload(c.inputs, true);
    const rs = outShapes.map((s, k) => ops.tensor(rData[k], s));
    ops.backward(weightedLoss(asList(c.fn(xs)), rs));
    return gradNames.map((n) => {
      assert.ok(xs[n].grad, `${name}: no gradient for ${n}`);
      assert.deepEqual([...xs[n].grad!.shape], c.inputs[n].shape, `${name}: gradient shape of ${n}`);
      return xs[n].grad!;
    });
  });
  const analytic: Float32Array[] = [];
  try {
    for (const g of grads) analytic.push(await g.data());
  } finally {
    ops.dispose(grads);
  }

  // Numerical gradients: two forward passes per sampled coordinate, losses gathered into one tensor.
  const plan: { input: string; index: number; step: number }[] = [];
  const losses = ops.noGrad(() =>
    ops.tidy(() => {
      const base = upload(c.inputs, false);
      const rs = outShapes.map((s, k) => ops.tensor(rData[k], s));
      const list: Tensor[] = [];
      gradNames.forEach((n, g) => {
        const input = c.inputs[n];
        for (const index of sampleIndices(input.data.length, 5000 + g)) {
          const plus = input.data.slice();
          const minus = input.data.slice();
          plus[index] += eps;
          minus[index] -= eps;
          plan.push({ input: n, index, step: plus[index] - minus[index] });
          for (const data of [plus, minus]) {
            list.push(ops.tidy(() => {
              const loss = weightedLoss(asList(c.fn({ ...base, [n]: ops.tensor(data, input.shape) })), rs);
              return ops.reshape(loss, [1]);
            }));
          }
        }
      });
      return ops.concat(list, 0);
    })
  );
  let values: Float32Array;
  try {
    values = await losses.data();
  } finally {
    losses.dispose();
  }

  const samples: Sample[] = plan.map((p, k) => ({
    input: p.input,
    index: p.index,
    analytic: analytic[gradNames.indexOf(p.input)][p.index],
    numerical: (values[2 * k] - values[2 * k + 1]) / p.step,
  }));
  const bad = samples.filter((s) =>
    !(Math.abs(s.numerical - s.analytic) <= TOL * Math.max(1, Math.abs(s.analytic)))
  );
  assert.equal(
    bad.length,
    0,
    `${name}: ${bad.length}/${samples.length} gradient samples off, e.g. ` +
      bad.slice(0, 4).map((s) => `${s.input}[${s.index}] analytic ${s.analytic} numerical ${s.numerical}`)
        .join("; "),
  );
  gradNames.forEach((n, g) => {
    assert.ok(analytic[g].every(Number.isFinite), `${name}: non-finite gradient of ${n}`);
    // Guard against vacuous checks: some sampled derivative of every input must be clearly nonzero.
    const largest = Math.max(...samples.filter((s) => s.input === n).map((s) => Math.abs(s.numerical)));
    assert.ok(
      largest > 1e-3,
      `${name}: all sampled derivatives of ${n} are ~0 (${largest}); the check is vacuous`,
    );
  });
  return samples;
}

function gradTest(name: string, c: () => Case): void {
  Deno.test(`gradcheck: ${name}`, async () => {
    await gradcheck(name, c());
  });
}

// ---- element-wise unary ----

const S = [2, 3, 4];
gradTest("neg", () => ({ inputs: { x: rand(S) }, fn: ({ x }) => ops.neg(x) }));
gradTest("relu", () => ({ inputs: { x: avoiding(S, [0], 0.1) }, fn: ({ x }) => ops.relu(x) }));
gradTest("leakyRelu (default slope)", () => ({
  inputs: { x: avoiding(S, [0], 0.1) },
  fn: ({ x }) => ops.leakyRelu(x),
}));
gradTest("leakyRelu (slope 0.2)", () => ({
  inputs: { x: avoiding(S, [0], 0.1) },
  fn: ({ x }) => ops.leakyRelu(x, 0.2),
}));
gradTest("sigmoid", () => ({ inputs: { x: rand(S, -3, 3) }, fn: ({ x }) => ops.sigmoid(x) }));
gradTest("tanh", () => ({ inputs: { x: rand(S, -2, 2) }, fn: ({ x }) => ops.tanh(x) }));
gradTest("exp", () => ({ inputs: { x: rand(S, -1.5, 1.5) }, fn: ({ x }) => ops.exp(x) }));
gradTest("log", () => ({ inputs: { x: rand(S, 0.5, 2) }, fn: ({ x }) => ops.log(x) }));
gradTest("sqrt", () => ({ inputs: { x: rand(S, 0.5, 2) }, fn: ({ x }) => ops.sqrt(x) }));
gradTest("abs", () => ({ inputs: { x: avoiding(S, [0], 0.1) }, fn: ({ x }) => ops.abs(x) }));
gradTest("square", () => ({ inputs: { x: rand(S, -2, 2) }, fn: ({ x }) => ops.square(x) }));
gradTest("clamp", () => ({
  inputs: { x: avoiding(S, [-0.5, 0.4], 0.08) },
  fn: ({ x }) => ops.clamp(x, -0.5, 0.4),
}));
gradTest("scale", () => ({ inputs: { x: rand(S) }, fn: ({ x }) => ops.scale(x, -1.7) }));
gradTest("addScalar", () => ({ inputs: { x: rand(S) }, fn: ({ x }) => ops.addScalar(x, 0.3) }));

// ---- element-wise binary with broadcasting ----

gradTest("add (b [3,1] broadcast)", () => ({
  inputs: { a: rand([2, 3, 4]), b: rand([3, 1]) },
  fn: ({ a, b }) => ops.add(a, b),
}));
gradTest("add (scalar b [1])", () => ({
  inputs: { a: rand([2, 3, 4]), b: rand([1]) },
  fn: ({ a, b }) => ops.add(a, b),
}));
gradTest("sub (both broadcast: [2,1,4] - [3,4])", () => ({
  inputs: { a: rand([2, 1, 4]), b: rand([3, 4]) },
  fn: ({ a, b }) => ops.sub(a, b),
}));
gradTest("mul (b [4] broadcast)", () => ({
  inputs: { a: rand([2, 3, 4]), b: rand([4]) },
  fn: ({ a, b }) => ops.mul(a, b),
}));
gradTest("mul (same shape)", () => ({
  inputs: { a: rand([3, 5]), b: rand([3, 5]) },
  fn: ({ a, b }) => ops.mul(a, b),
}));
gradTest("div (both broadcast: [2,3,1] / [1,4])", () => ({
  inputs: { a: rand([2, 3, 1]), b: avoiding([1, 4], [0], 0.5) },
  fn: ({ a, b }) => ops.div(a, b),
}));
gradTest("maximum ([2,3,4] vs [3,4])", () => ({
  inputs: { a: grid([2, 3, 4], 0.1, 0.05), b: grid([3, 4], 0.1, 0) },
  fn: ({ a, b }) => ops.maximum(a, b),
}));
gradTest("minimum ([3,1] vs [2,3,4])", () => ({
  inputs: { a: grid([3, 1], 0.1, 0.05), b: grid([2, 3, 4], 0.1, 0) },
  fn: ({ a, b }) => ops.minimum(a, b),
}));
gradTest("where (cond [2,1,4], a [2,3,4], b [3,1])", () => ({
  inputs: { cond: mask([2, 1, 4]), a: rand([2, 3, 4]), b: rand([3, 1]) },
  fn: ({ cond, a, b }) => ops.where(cond, a, b),
}));
gradTest("expand ([3,1] -> [2,3,4])", () => ({
  inputs: { x: rand([3, 1]) },
  fn: ({ x }) => ops.expand(x, [2, 3, 4]),
}));

// ---- reductions ----

gradTest("sum over [0,2]", () => ({ inputs: { x: rand(S) }, fn: ({ x }) => ops.sum(x, [0, 2]) }));
gradTest("sum over 1 keepdim", () => ({ inputs: { x: rand(S) }, fn: ({ x }) => ops.sum(x, 1, true) }));
gradTest("sum over all", () => ({ inputs: { x: rand(S) }, fn: ({ x }) => ops.sum(x) }));
gradTest("mean over [1]", () => ({ inputs: { x: rand(S) }, fn: ({ x }) => ops.mean(x, [1]) }));
gradTest(
  "mean over [0,2] keepdim",
  () => ({ inputs: { x: rand(S) }, fn: ({ x }) => ops.mean(x, [0, 2], true) }),
);
gradTest("mean over all", () => ({ inputs: { x: rand(S) }, fn: ({ x }) => ops.mean(x) }));
gradTest("max over -1", () => ({ inputs: { x: distinct(S) }, fn: ({ x }) => ops.max(x, -1) }));
gradTest(
  "max over [0,1] keepdim",
  () => ({ inputs: { x: distinct(S) }, fn: ({ x }) => ops.max(x, [0, 1], true) }),
);
gradTest("max over all", () => ({ inputs: { x: distinct(S) }, fn: ({ x }) => ops.max(x) }));

// ---- shape ops ----

gradTest("reshape", () => ({ inputs: { x: rand(S) }, fn: ({ x }) => ops.reshape(x, [4, -1]) }));
gradTest("permute [2,0,1]", () => ({ inputs: { x: rand(S) }, fn: ({ x }) => ops.permute(x, [2, 0, 1]) }));
gradTest("transpose", () => ({ inputs: { x: rand(S) }, fn: ({ x }) => ops.transpose(x) }));
gradTest("slice", () => ({
  inputs: { x: rand([2, 3, 5]) },
  fn: ({ x }) => ops.slice(x, [1, 1, 1], [2, 3, -1]),
}));
gradTest("pad (with crop and value)", () => ({
  inputs: { x: rand(S) },
  fn: ({ x }) => ops.pad(x, [[0, 0], [1, 2], [-1, 1]], 0.5),
}));
gradTest("concat along 1", () => ({
  inputs: { a: rand([2, 1, 4]), b: rand([2, 3, 4]), c: rand([2, 2, 4]) },
  fn: ({ a, b, c }) => ops.concat([a, b, c], 1),
}));
gradTest("concat along -1", () => ({
  inputs: { a: rand([3, 2]), b: rand([3, 3]) },
  fn: ({ a, b }) => ops.concat([a, b], -1),
}));
gradTest("split along 1 into [1,2,3]", () => ({
  inputs: { x: rand([2, 6, 3]) },
  fn: ({ x }) => ops.split(x, [1, 2, 3], 1),
}));

// ---- matmul ----

gradTest("matmul batched [2,3,5] @ [2,5,4]", () => ({
  inputs: { a: rand([2, 3, 5]), b: rand([2, 5, 4]) },
  fn: ({ a, b }) => ops.matmul(a, b),
}));
gradTest("matmul shared B [2,3,5] @ [5,4]", () => ({
  inputs: { a: rand([2, 3, 5]), b: rand([5, 4]) },
  fn: ({ a, b }) => ops.matmul(a, b),
}));
gradTest("matmul shared A [3,5] @ [2,2,5,4]", () => ({
  inputs: { a: rand([3, 5]), b: rand([2, 2, 5, 4]) },
  fn: ({ a, b }) => ops.matmul(a, b),
}));
gradTest("matmul split-K [3,1024] @ [1024,2]", () => ({
  inputs: { a: rand([3, 1024]), b: rand([1024, 2]) },
  fn: ({ a, b }) => ops.matmul(a, b),
}));

// ---- convolutions ----

gradTest("conv2d stride 2, padding 1, bias", () => ({
  inputs: { x: rand([2, 3, 7, 7]), w: rand([4, 3, 3, 3]), b: rand([4]) },
  fn: ({ x, w, b }) => ops.conv2d(x, w, b, { stride: 2, padding: 1 }),
}));
gradTest("conv2d dilation 2, padding 2, bias", () => ({
  inputs: { x: rand([1, 2, 9, 9]), w: rand([3, 2, 3, 3]), b: rand([3]) },
  fn: ({ x, w, b }) => ops.conv2d(x, w, b, { dilation: 2, padding: 2 }),
}));
gradTest("conv2d 2x3 kernel, stride [2,1], padding [0,1], no bias", () => ({
  inputs: { x: rand([2, 2, 6, 8]), w: rand([3, 2, 2, 3]) },
  fn: ({ x, w }) => ops.conv2d(x, w, null, { stride: [2, 1], padding: [0, 1] }),
}));
gradTest("conv2d split-K weight gradient (24x24)", () => ({
  inputs: { x: rand([1, 2, 24, 24]), w: rand([3, 2, 3, 3]), b: rand([3]) },
  fn: ({ x, w, b }) => ops.conv2d(x, w, b, { padding: 1 }),
}));
gradTest("conv2d split-K forward with bias (Cin 128)", () => ({
  // x's gradient (an unsplit GEMM with a 128-channel tile) is covered elsewhere; skipping it saves a compile.
  inputs: { x: noGradInput(rand([1, 128, 3, 3])), w: rand([2, 128, 3, 3]), b: rand([2]) },
  fn: ({ x, w, b }) => ops.conv2d(x, w, b, { padding: 1 }),
}));
gradTest("conv2d split-K input gradient (Cout 128)", () => ({
  inputs: { x: rand([1, 2, 4, 4]), w: noGradInput(rand([128, 2, 3, 3])) },
  fn: ({ x, w }) => ops.conv2d(x, w, null, { padding: 1 }),
}));
gradTest("convTranspose2d stride 2, padding 1, outputPadding 1, bias", () => ({
  inputs: { x: rand([2, 3, 4, 4]), w: rand([3, 2, 3, 3]), b: rand([2]) },
  fn: ({ x, w, b }) => ops.convTranspose2d(x, w, b, { stride: 2, padding: 1, outputPadding: 1 }),
}));
gradTest("convTranspose2d dilation 2, stride 2, padding 2, outputPadding 1, bias", () => ({
  inputs: { x: rand([1, 2, 3, 3]), w: rand([2, 3, 3, 3]), b: rand([3]) },
  fn: ({ x, w, b }) => ops.convTranspose2d(x, w, b, { stride: 2, padding: 2, dilation: 2, outputPadding: 1 }),
}));
gradTest("convTranspose2d 2x2 kernel stride 2, no bias", () => ({
  inputs: { x: rand([1, 3, 3, 4]), w: rand([3, 2, 2, 2]) },
  fn: ({ x, w }) => ops.convTranspose2d(x, w, null, { stride: 2 }),
}));

// ---- pooling and resampling ----

gradTest("maxPool2d 2x2", () => ({ inputs: { x: distinct([2, 2, 6, 6]) }, fn: ({ x }) => ops.maxPool2d(x) }));
gradTest("maxPool2d 3x3 stride 2 (overlapping, unused last row)", () => ({
  inputs: { x: distinct([1, 2, 8, 8]) },
  fn: ({ x }) => ops.maxPool2d(x, 3, 2),
}));
gradTest("avgPool2d 2x2", () => ({ inputs: { x: rand([2, 2, 6, 6]) }, fn: ({ x }) => ops.avgPool2d(x) }));
gradTest(
  "avgPool2d 3x3 stride 2",
  () => ({ inputs: { x: rand([1, 2, 8, 8]) }, fn: ({ x }) => ops.avgPool2d(x, 3, 2) }),
);
gradTest("upsampleNearest scale 2", () => ({
  inputs: { x: rand([1, 2, 3, 4]) },
  fn: ({ x }) => ops.upsampleNearest(x),
}));
gradTest("upsampleNearest size [5,7]", () => ({
  inputs: { x: rand([1, 2, 3, 4]) },
  fn: ({ x }) => ops.upsampleNearest(x, { size: [5, 7] }),
}));
for (const alignCorners of [false, true]) {
  gradTest(`upsampleBilinear scale 2, alignCorners ${alignCorners}`, () => ({
    inputs: { x: rand([1, 2, 3, 4]) },
    fn: ({ x }) => ops.upsampleBilinear(x, { alignCorners }),
  }));
  gradTest(`upsampleBilinear size [7,5] from 4x6, alignCorners ${alignCorners}`, () => ({
    inputs: { x: rand([1, 2, 4, 6]) },
    fn: ({ x }) => ops.upsampleBilinear(x, { size: [7, 5], alignCorners }),
  }));
}

// ---- softmax and losses ----

gradTest(
  "softmax axis 1",
  () => ({ inputs: { x: rand([2, 5, 3], -2, 2) }, fn: ({ x }) => ops.softmax(x, 1) }),
);
gradTest("softmax axis -1", () => ({ inputs: { x: rand([3, 6], -2, 2) }, fn: ({ x }) => ops.softmax(x) }));
gradTest(
  "logSoftmax axis 1",
  () => ({ inputs: { x: rand([2, 5, 3], -2, 2) }, fn: ({ x }) => ops.logSoftmax(x, 1) }),
);
gradTest(
  "logSoftmax axis -1",
  () => ({ inputs: { x: rand([3, 6], -2, 2) }, fn: ({ x }) => ops.logSoftmax(x) }),
);
gradTest("l1Loss", () => ({
  inputs: { x: grid([2, 3, 4], 0.1, 0.05), y: grid([2, 3, 4], 0.1, 0) },
  fn: ({ x, y }) => ops.l1Loss(x, y),
}));
gradTest("mseLoss", () => ({
  inputs: { x: rand([2, 3, 4]), y: rand([2, 3, 4]) },
  fn: ({ x, y }) => ops.mseLoss(x, y),
}));
gradTest("bceWithLogits", () => ({
  inputs: { x: avoiding([2, 3, 4], [0], 0.1, 3), y: rand([2, 3, 4], 0, 1) },
  fn: ({ x, y }) => ops.bceWithLogits(x, y),
}));

// ---- composite network ----

const NET_EPS = 3e-3;

/** Inputs of conv -> relu -> maxPool -> conv -> upsample -> concat(skip) -> conv -> mseLoss. */
function netInputs(): Record<string, Input> {
  seedCounter = 425562;
  return {
    x: rand([1, 2, 8, 8]),
    w1: rand([4, 2, 3, 3], -0.5, 0.5),
    b1: rand([4], -0.2, 0.2),
    w2: rand([4, 4, 3, 3], -0.5, 0.5),
    b2: rand([4], -0.2, 0.2),
    w3: rand([1, 8, 3, 3], -0.5, 0.5),
    b3: rand([1], -0.2, 0.2),
    target: noGradInput(rand([1, 1, 8, 8])),
  };
}

function net(p: Record<string, Tensor>, preActivation?: { z1?: Tensor }): Tensor {
  const z1 = ops.conv2d(p.x, p.w1, p.b1, { padding: 1 });
  if (preActivation) preActivation.z1 = z1;
  const a1 = ops.relu(z1);
  const pooled = ops.maxPool2d(a1);
  const z2 = ops.conv2d(pooled, p.w2, p.b2, { padding: 1 });
  const up = ops.upsampleBilinear(z2);
  const cat = ops.concat([up, a1], 1);
  const z3 = ops.conv2d(cat, p.w3, p.b3, { padding: 1 });
  return ops.mseLoss(z3, p.target);
}

Deno.test("gradcheck: composite net (conv relu maxPool conv upsample concat conv mseLoss)", async () => {
  const inputs = netInputs();
  // Precondition: no single-coordinate perturbation moves a relu input across 0 or swaps a maxPool winner.
  // A perturbation of x, w1 or b1 by eps moves each pre-activation by at most delta.
  const maxAbs = (d: Float32Array) => Math.max(...d.map(Math.abs));
  const delta = NET_EPS * Math.max(1, maxAbs(inputs.x.data), maxAbs(inputs.w1.data));
  const z1T = ops.noGrad(() =>
    ops.tidy(() => {
      const holder: { z1?: Tensor } = {};
      net(upload(inputs, false), holder);
      return holder.z1!;
    })
  );
  const z1 = await z1T.data();
  z1T.dispose();
  assert.ok(maxAbs(z1) > 0.5 && z1.some((v) => v < 0), "pre-activations should have both signs");
  const nearest = Math.min(...z1.map(Math.abs));
  assert.ok(
    nearest > delta,
    `a relu input is within ${nearest} of 0 (perturbation ${delta}); pick another seed`,
  );
  for (let c = 0; c < 4; c++) {
    for (let oy = 0; oy < 4; oy++) {
      for (let ox = 0; ox < 4; ox++) {
        const corner = c * 64 + oy * 16 + ox * 2;
        const window = [0, 1, 8, 9].map((d) => Math.max(0, z1[corner + d])).sort((a, b) => b - a);
        if (window[0] > 0) assert.ok(window[0] - window[1] > 2 * delta, `maxPool near-tie in channel ${c}`);
      }
    }
  }
  const samples = await gradcheck("composite net", { inputs, fn: (p) => net(p), eps: NET_EPS });
  // x, w1, w2, w3 are sampled; b1, b2 (4 values) and b3 (1 value) are checked in full.
  assert.equal(samples.length, 4 * SAMPLES + 4 + 4 + 1);
});

Deno.test("composite net gradients are bit-for-bit deterministic across runs", async () => {
  const inputs = netInputs();
  const run = async () => {
    const { loss, grads } = ops.tidy(() => {
      const p = upload(inputs, true);
      const loss = net(p);
      const value = ops.reshape(loss, [1]);
      ops.backward(loss);
      return { loss: value, grads: Object.keys(p).filter((n) => p[n].requiresGrad).map((n) => p[n].grad!) };
    });
    try {
      const out = [new Uint32Array((await loss.data()).buffer)];
      for (const g of grads) out.push(new Uint32Array((await g.data()).buffer));
      return out;
    } finally {
      ops.dispose([loss, grads]);
    }
  };
  const first = await run();
  const second = await run();
  assert.equal(first.length, 8);
  assert.ok(first.slice(1).every((g) => g.some((bits) => (bits & 0x7fffffff) !== 0)), "all-zero gradient");
  first.forEach((a, k) => assert.deepEqual(second[k], a, `tensor ${k} differs between runs`));
});

Deno.test("gradcheck leaves no live buffers behind", async () => {
  await testEngine.sync();
  assert.equal(testEngine.memory().liveBuffers, 0);
});

Deno.test("concat's backward is unaffected by later changes to the caller's input array", async () => {
  const a = ops.tensor([1, 2], [2]);
  const b = ops.tensor([3], [1]);
  a.requiresGrad = b.requiresGrad = true;
  const list = [a, b];
  const y = ops.concat(list, 0);
  list.push(ops.tensor([9], [1])); // mutating the argument must not change the recorded op
  const loss = ops.sum(ops.mul(y, ops.tensor([1, 10, 100], [3])));
  ops.backward(loss);
  assert.deepEqual([...await a.grad!.data()], [1, 10]);
  assert.deepEqual([...await b.grad!.data()], [100]);
  ops.dispose([a, b, y, loss, list, a.grad, b.grad]);
});
