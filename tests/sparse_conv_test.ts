// SC sparse convolution (layers/sparse/sparse_conv.ts): sparseConv2d and SCModule against a dense masked
// reference built from engine ops, PyTorch fixtures (tests/fixtures/gen_sparse_conv_fixtures.py), SPAIR.md's
// SC invariants as properties, llvmpipe's loop cap, and a finite-difference check of the SC module.
import assert from "node:assert/strict";
import { randomArray, relativeError, testEngine } from "./_setup.ts";
import { loadOpFixtures } from "./fixtures/load.ts";
import * as ops from "../mod.ts";
import type { Tensor } from "../mod.ts";
import { type ActiveSites, compactMask } from "../layers/sparse/active.ts";
import { SC_LAYERS, SCModule, scModule, sparseConv2d } from "../layers/sparse/sparse_conv.ts";
import {
  neighbourBitsStep,
  SITE_ROUND_BUDGET,
  siteRounds,
  sparseWeightGradPlan,
} from "../wgsl/sparse_conv.ts";

/** Tolerance on the scale-relative max error (see docs/engine.md). */
const TOLERANCE = 1e-4;

function randomMask(n: number, h: number, w: number, densities: number[], seed: number): Float32Array {
  const r = randomArray(n * h * w, seed, 0, 1);
  return r.map((v, i) => (v < densities[Math.floor(i / (h * w))] ? 1 : 0));
}

/** Dense masked reference of SC from engine ops: M * (conv2d(x * M, w) + b). */
function denseReference(x: Tensor, mask: Tensor, w: Tensor, b: Tensor | null): Tensor {
  const k = w.shape[2];
  const conv = ops.conv2d(ops.mul(x, mask), w, null, { padding: (k - 1) / 2 });
  const biased = b ? ops.add(conv, ops.reshape(b, [1, b.shape[0], 1, 1])) : conv;
  return ops.mul(biased, mask);
}

/** The SC module composed from sparseConv2d, relu, concat and add (the fused op must equal it). */
function composedModule(x: Tensor, sites: ActiveSites, ws: Tensor[], bs: Tensor[]): Tensor {
  const feats = [x];
  for (let i = 0; i < SC_LAYERS; i++) {
    feats.push(ops.relu(sparseConv2d(ops.concat([...feats], 1), sites, ws[i], bs[i])));
  }
  return ops.add(x, sparseConv2d(ops.concat([...feats], 1), sites, ws[SC_LAYERS], bs[SC_LAYERS]));
}

/** Dense reference of the SC module: the dense masked convs composed. */
function denseModule(x: Tensor, mask: Tensor, ws: Tensor[], bs: Tensor[]): Tensor {
  const feats = [x];
  for (let i = 0; i < SC_LAYERS; i++) {
    feats.push(ops.relu(denseReference(ops.concat([...feats], 1), mask, ws[i], bs[i])));
  }
  return ops.add(x, denseReference(ops.concat([...feats], 1), mask, ws[SC_LAYERS], bs[SC_LAYERS]));
}

interface Compared {
  out: number;
  grads: Record<string, number>;
}

/**
 * Runs `fn` and `ref` on the same inputs with the loss sum(out * r) and returns the relative errors of the
 * output and of every input's gradient.
 */
async function compare(
  inputs: Record<string, { shape: number[]; data: Float32Array }>,
  maskData: { shape: number[]; data: Float32Array },
  fn: (x: Record<string, Tensor>, sites: ActiveSites, mask: Tensor) => Tensor,
  ref: (x: Record<string, Tensor>, sites: ActiveSites, mask: Tensor) => Tensor,
  seed: number,
): Promise<Compared> {
  const mask = ops.tensor(maskData.data, maskData.shape);
  const sites = compactMask(mask);
  const run = (f: typeof fn) =>
    ops.tidy(() => {
      const xs: Record<string, Tensor> = {};
      for (const [k, v] of Object.entries(inputs)) {
        xs[k] = ops.tensor(v.data, v.shape);
        xs[k].requiresGrad = true;
      }
      const out = f(xs, sites, mask);
      const r = ops.tensor(randomArray(out.size, seed), out.shape);
      ops.backward(ops.sum(ops.mul(out, r)));
      const grads: Record<string, Tensor> = {};
      for (const k of Object.keys(xs)) grads[k] = xs[k].grad!;
      return { out, grads };
    });
  const got = run(fn);
  const want = run(ref);
  try {
    const result: Compared = { out: relativeError(await got.out.data(), await want.out.data()), grads: {} };
    for (const k of Object.keys(inputs)) {
      result.grads[k] = relativeError(await got.grads[k].data(), await want.grads[k].data());
    }
    return result;
  } finally {
    ops.dispose([got, want, mask]);
    sites.dispose();
  }
}

function assertClose(name: string, c: Compared, tol = TOLERANCE): void {
  assert.ok(c.out <= tol, `${name}: forward error ${c.out}`);
  for (const [k, e] of Object.entries(c.grads)) assert.ok(e <= tol, `${name}: gradient of ${k} error ${e}`);
}

let seedCounter = 100;
function convCase(n: number, cin: number, cout: number, h: number, w: number, k: number, bias: boolean) {
  const s = seedCounter += 10;
  const inputs: Record<string, { shape: number[]; data: Float32Array }> = {
    x: { shape: [n, cin, h, w], data: randomArray(n * cin * h * w, s, -1, 1) },
    w: { shape: [cout, cin, k, k], data: randomArray(cout * cin * k * k, s + 1, -0.5, 0.5) },
  };
  if (bias) inputs.b = { shape: [cout], data: randomArray(cout, s + 2, -1, 1) };
  return inputs;
}

const sparseFn = (x: Record<string, Tensor>, sites: ActiveSites) =>
  sparseConv2d(x.x, sites, x.w, x.b ?? null);
const denseFn = (x: Record<string, Tensor>, _s: ActiveSites, mask: Tensor) =>
  denseReference(x.x, mask, x.w, x.b ?? null);

for (const k of [3, 1]) {
  for (const densities of [[0], [0.03], [0.3], [1], [0, 0.03, 0.3, 1]]) {
    const n = densities.length;
    Deno.test(`sparseConv2d k=${k} equals the dense masked reference: 13x17, densities [${densities}]`, async () => {
      for (const [cin, cout, bias] of [[5, 7, true], [20, 19, false]] as const) {
        const inputs = convCase(n, cin, cout, 13, 17, k, bias);
        const mask = { shape: [n, 1, 13, 17], data: randomMask(n, 13, 17, densities, seedCounter + 5) };
        const c = await compare(inputs, mask, sparseFn, denseFn, seedCounter + 6);
        assertClose(`Cin ${cin} Cout ${cout}`, c);
      }
    });
  }
}

for (const k of [3, 1]) {
  Deno.test(`sparseConv2d k=${k} with the residual equals x + the dense masked reference, all gradients`, async () => {
    for (const [densities, bias] of [[[0.3], true], [[0, 0.03, 0.3, 1], false]] as const) {
      const n = densities.length;
      const inputs = convCase(n, 6, 6, 13, 17, k, bias);
      const mask = { shape: [n, 1, 13, 17], data: randomMask(n, 13, 17, [...densities], seedCounter + 5) };
      const residual = (x: Record<string, Tensor>, sites: ActiveSites) =>
        sparseConv2d(x.x, sites, x.w, x.b ?? null, { residual: true });
      const dense = (x: Record<string, Tensor>, _s: ActiveSites, m: Tensor) =>
        ops.add(x.x, denseReference(x.x, m, x.w, x.b ?? null));
      assertClose(`densities [${densities}]`, await compare(inputs, mask, residual, dense, seedCounter + 6));
    }
    const x = ops.tensor(randomArray(2 * 6 * 4 * 4, 5), [2, 6, 4, 4]);
    const full = ops.tensor(new Float32Array(2 * 16).fill(1), [2, 1, 4, 4]);
    const sites = compactMask(full);
    const w = ops.tensor(randomArray(5 * 6 * k * k, 6), [5, 6, k, k]);
    assert.throws(() => sparseConv2d(x, sites, w, null, { residual: true }), /residual needs as many output/);
    ops.dispose([x, w, full]);
    sites.dispose();
  });
}

/** Inputs of an SC module with C channels and growth g (weights scaled like PyTorch's default init). */
function moduleCase(n: number, c: number, g: number, h: number, w: number, seed: number) {
  const inputs: Record<string, { shape: number[]; data: Float32Array }> = {
    x: { shape: [n, c, h, w], data: randomArray(n * c * h * w, seed, -1, 1) },
  };
  for (let i = 0; i <= SC_LAYERS; i++) {
    const cin = c + i * g, k = i < SC_LAYERS ? 3 : 1, cout = i < SC_LAYERS ? g : c;
    const bound = 1 / Math.sqrt(cin * k * k);
    inputs[`w${i}`] = {
      shape: [cout, cin, k, k],
      data: randomArray(cout * cin * k * k, seed + 2 * i + 1, -bound, bound),
    };
    inputs[`b${i}`] = { shape: [cout], data: randomArray(cout, seed + 2 * i + 2, -bound, bound) };
  }
  return inputs;
}

const params = (x: Record<string, Tensor>, p: string) =>
  [...Array(SC_LAYERS + 1).keys()].map((i) => x[`${p}${i}`]);

// C = 8, g = 4: on CPU adapters the module keeps its dense block in channel quads read through textures.
for (const [densities, c, g] of [[[0.3], 5, 3], [[0, 0.03, 0.3, 1], 5, 3], [[0.3, 1], 8, 4]] as const) {
  Deno.test(`SC module (fused) equals its composition and the dense reference: C ${c}, g ${g}, densities [${densities}]`, async () => {
    const n = densities.length;
    const inputs = moduleCase(n, c, g, 13, 17, 900 + n + c);
    const mask = { shape: [n, 1, 13, 17], data: randomMask(n, 13, 17, [...densities], 950 + n) };
    const fused = (x: Record<string, Tensor>, sites: ActiveSites) =>
      scModule(x.x, sites, params(x, "w"), params(x, "b"));
    const composed = (x: Record<string, Tensor>, sites: ActiveSites) =>
      composedModule(x.x, sites, params(x, "w"), params(x, "b"));
    const dense = (x: Record<string, Tensor>, _s: ActiveSites, m: Tensor) =>
      denseModule(x.x, m, params(x, "w"), params(x, "b"));
    assertClose("fused vs composed", await compare(inputs, mask, fused, composed, 960));
    assertClose("fused vs dense", await compare(inputs, mask, fused, dense, 961));
  });
}

// ---- PyTorch fixtures (float64 dense masked formulas) ----

for (const fx of loadOpFixtures("sparse_conv.json")) {
  Deno.test(`sparse conv matches PyTorch: ${fx.name}`, async () => {
    const mask = ops.tensor(fx.inputs.mask.data, fx.inputs.mask.shape);
    const sites = compactMask(mask);
    let module: SCModule | null = null;
    const { out, grads } = ops.tidy(() => {
      const xs: Record<string, Tensor> = {};
      for (const [name, t] of Object.entries(fx.inputs)) {
        if (name === "mask") continue;
        xs[name] = ops.tensor(t.data, t.shape);
        xs[name].requiresGrad = true;
      }
      let out: Tensor;
      if (fx.op === "sparseConv2d") {
        out = sparseConv2d(xs.x, sites, xs.w, xs.b ?? null);
      } else {
        // Through the module class, with the fixture's weights loaded by parameter name.
        module = new SCModule(fx.inputs.x.shape[1], fx.params.growth as number, new ops.Rng(1));
        const dict: Record<string, { shape: number[]; data: Float32Array }> = {};
        for (let i = 0; i <= SC_LAYERS; i++) {
          const name = i < SC_LAYERS ? `conv${i}` : "fuse";
          dict[`${name}.weight`] = fx.inputs[`w${i}`];
          dict[`${name}.bias`] = fx.inputs[`b${i}`];
        }
        module.loadStateDict(dict);
        out = module.forward(xs.x, sites);
      }
      ops.backward(ops.sum(ops.mul(out, ops.tensor(fx.gradOutput.data, fx.gradOutput.shape))));
      const grads: Record<string, Tensor | null> = {};
      for (const name of Object.keys(fx.grads)) {
        const m = module as SCModule | null;
        const i = Number(name.slice(1));
        if (!m || name === "x") grads[name] = xs[name].grad;
        else grads[name] = (name[0] === "w" ? m.weights[i] : m.biases[i]).grad;
      }
      return { out, grads };
    });
    try {
      const outErr = relativeError(await out.data(), fx.output.data);
      assert.ok(outErr <= TOLERANCE, `${fx.name}: forward error ${outErr}`);
      for (const [name, want] of Object.entries(fx.grads)) {
        const got = grads[name];
        assert.ok(got, `${fx.name}: no gradient for ${name}`);
        const err = relativeError(await got.data(), want.data);
        assert.ok(err <= TOLERANCE, `${fx.name}: gradient of ${name} error ${err}`);
      }
    } finally {
      ops.dispose([out, grads, mask]);
      sites.dispose();
      if (module) ops.dispose((module as SCModule).parameters());
    }
  });
}

// ---- SPAIR.md invariants as properties ----

const bitsOf = (a: Float32Array) => new Uint32Array(a.buffer, a.byteOffset, a.length);

/** Asserts bit-identical arrays; the message names the first mismatches (deepEqual's diff of large arrays
 * takes minutes). */
function assertSameBits(a: Float32Array, b: Float32Array, what: string): void {
  assert.equal(a.length, b.length, `${what}: lengths`);
  const ua = bitsOf(a), ub = bitsOf(b);
  const bad: string[] = [];
  let count = 0;
  for (let i = 0; i < ua.length; i++) {
    if (ua[i] !== ub[i] && count++ < 3) bad.push(`[${i}] ${a[i]} != ${b[i]}`);
  }
  assert.equal(count, 0, `${what}: ${count} values differ: ${bad.join(", ")}`);
}

/** A copy of x [n, c, hw] whose clean sites (all of them, or only site `only`) hold wild values. */
function perturbClean(
  x: Float32Array,
  mask: Float32Array,
  dims: { n: number; c: number; hw: number },
  seed: number,
  only?: number,
): Float32Array {
  const noise = randomArray(x.length, seed, -1e3, 1e3);
  const wild = [Infinity, -Infinity, NaN, 3e38];
  const out = x.slice();
  for (let b = 0; b < dims.n; b++) {
    for (let ch = 0; ch < dims.c; ch++) {
      for (let p = 0; p < dims.hw; p++) {
        const site = b * dims.hw + p, i = (b * dims.c + ch) * dims.hw + p;
        if (mask[site] !== 0 || (only !== undefined && site !== only)) continue;
        out[i] = i % 5 === 0 ? wild[i % 4] : noise[i];
      }
    }
  }
  return out;
}

/** A clean site with an active 8-neighbour (where a leak through the stencil would show first). */
function cleanNextToActive(mask: Float32Array, n: number, h: number, w: number): number {
  for (let s = 0; s < n * h * w; s++) {
    if (mask[s] !== 0) continue;
    const b = Math.floor(s / (h * w)), y = Math.floor((s % (h * w)) / w), x = s % w;
    for (let dy = -1; dy <= 1; dy++) {
      for (let dx = -1; dx <= 1; dx++) {
        const yy = y + dy, xx = x + dx;
        if (yy >= 0 && yy < h && xx >= 0 && xx < w && mask[b * h * w + yy * w + xx] === 1) return s;
      }
    }
  }
  throw new Error("no clean site next to an active one");
}

Deno.test("invariants: sparseConv2d is 0 at clean sites and ignores every clean site's input", async () => {
  const n = 2, cin = 6, cout = 5, h = 11, w = 14, hw = h * w;
  const maskData = randomMask(n, h, w, [0.3, 0.6], 31);
  const xData = randomArray(n * cin * hw, 32);
  const mask = ops.tensor(maskData, [n, 1, h, w]);
  const sites = compactMask(mask);
  const dims = { n, c: cin, hw };
  const variants = [
    xData,
    perturbClean(xData, maskData, dims, 33),
    perturbClean(xData, maskData, dims, 34, cleanNextToActive(maskData, n, h, w)),
  ];
  for (const k of [3, 1]) {
    const weight = ops.tensor(randomArray(cout * cin * k * k, 35 + k), [cout, cin, k, k]);
    const bias = ops.tensor(randomArray(cout, 36 + k), [cout]);
    const outs: Float32Array[] = [];
    for (const data of variants) {
      const x = ops.tensor(data, [n, cin, h, w]);
      const y = sparseConv2d(x, sites, weight, bias);
      outs.push(await y.data());
      ops.dispose([x, y]);
    }
    for (let i = 0; i < outs[0].length; i++) {
      const site = Math.floor(i / (cout * hw)) * hw + (i % hw);
      if (maskData[site] === 0) {
        assert.equal(bitsOf(outs[0])[i], 0, `k=${k}: output ${i} at a clean site is not +0`);
      }
    }
    assert.deepEqual(
      bitsOf(outs[1]),
      bitsOf(outs[0]),
      `k=${k}: perturbing all clean sites changed the output`,
    );
    assert.deepEqual(
      bitsOf(outs[2]),
      bitsOf(outs[0]),
      `k=${k}: perturbing one clean site changed the output`,
    );
    ops.dispose([weight, bias]);
  }
  ops.dispose(mask);
  sites.dispose();
});

Deno.test("invariants: SCModule keeps clean sites bit-identical and its degraded outputs ignore clean inputs", async () => {
  const n = 2, c = 4, h = 12, w = 13, hw = h * w;
  const maskData = randomMask(n, h, w, [0.25, 0.7], 41);
  // Include -0.0 and tiny values at clean sites: x + 0 would turn -0.0 into +0.0.
  const xData = randomArray(n * c * hw, 42).map((v, i) => (i % 11 === 0 ? -0 : i % 13 === 0 ? 1e-40 : v));
  const mask = ops.tensor(maskData, [n, 1, h, w]);
  const sites = compactMask(mask);
  const module = new SCModule(c, 3, new ops.Rng(43));
  const dims = { n, c, hw };
  const variants = [
    xData,
    perturbClean(xData, maskData, dims, 44),
    perturbClean(xData, maskData, dims, 45, cleanNextToActive(maskData, n, h, w)),
  ];
  const outs: Float32Array[] = [];
  for (const data of variants) {
    const x = ops.tensor(data, [n, c, h, w]);
    const y = ops.noGrad(() => module.forward(x, sites));
    outs.push(await y.data());
    ops.dispose([x, y]);
  }
  const [o, all, one] = outs.map(bitsOf);
  const xb = bitsOf(xData);
  let degraded = 0;
  for (let i = 0; i < o.length; i++) {
    const site = Math.floor(i / (c * hw)) * hw + (i % hw);
    if (maskData[site] === 0) {
      assert.equal(o[i], xb[i], `clean output ${i} is not bit-identical to the input`);
    } else {
      degraded++;
      assert.equal(all[i], o[i], `degraded output ${i} changed when all clean inputs changed`);
      assert.equal(one[i], o[i], `degraded output ${i} changed when one clean input changed`);
    }
  }
  assert.ok(degraded > 0);
  ops.dispose([mask, module.parameters()]);
  sites.dispose();
});

Deno.test("SCModule: parameter names, shapes and PyTorch-default init bounds", async () => {
  const c = 6, g = 4;
  const module = new SCModule(c, g, new ops.Rng(3));
  const named = module.namedParameters();
  const expected: [string, number[]][] = [];
  for (let i = 0; i < SC_LAYERS; i++) {
    expected.push([`conv${i}.weight`, [g, c + i * g, 3, 3]], [`conv${i}.bias`, [g]]);
  }
  expected.push(["fuse.weight", [c, c + SC_LAYERS * g, 1, 1]], ["fuse.bias", [c]]);
  assert.deepEqual([...named.keys()], expected.map(([n]) => n));
  for (const [name, shape] of expected) {
    const p = named.get(name)!;
    assert.deepEqual([...p.shape], shape, name);
    assert.ok(p.requiresGrad, `${name} requires grad`);
    const fanIn = name.startsWith("fuse") ? c + SC_LAYERS * g : (c + Number(name[4]) * g) * 9;
    const data = await p.data();
    const bound = 1 / Math.sqrt(fanIn);
    assert.ok(data.every((v) => Math.abs(v) <= bound), `${name} within 1/sqrt(${fanIn})`);
    assert.ok(Math.max(...data.map(Math.abs)) > bound / 2, `${name} uses its range`);
  }
  ops.dispose(module.parameters());
});

// ---- llvmpipe's loop cap: the weight gradient sums over 90,000 sites ----

Deno.test("weight gradient over 90,000 active sites (1x8x300x300, 100%): chunked reduction is exact", async () => {
  const n = 1, c = 8, h = 300, w = 300;
  const inputs = convCase(n, c, c, h, w, 3, true);
  const mask = { shape: [n, 1, h, w], data: new Float32Array(n * h * w).fill(1) };
  const c3 = await compare(inputs, mask, sparseFn, denseFn, 71);
  assertClose("k=3", c3);
  // Many short chunks: 5,625 chunks take two reduce passes (WGRAD_MAX_SPLITS = 4096), still exact.
  const maskT = ops.tensor(mask.data, mask.shape);
  const sites = compactMask(maskT);
  const x = ops.tensor(inputs.x.data, inputs.x.shape);
  const dy = ops.tensor(randomArray(n * c * h * w, 72), [n, c, h, w]);
  const nbits = ops.Tensor.empty([n * h * w]);
  const dw = ops.Tensor.empty([c, c, 3, 3]);
  const db = ops.Tensor.empty([c]);
  testEngine.runPlan({ outSize: 0, scratch: {}, steps: [neighbourBitsStep({ N: n, H: h, W: w })] }, {
    counts: sites.counts.buffer,
    indices: sites.indices.buffer,
    rank: sites.rank.buffer,
    out: nbits.buffer,
  });
  const plan = sparseWeightGradPlan({
    N: n,
    H: h,
    W: w,
    k: 3,
    Cin: c,
    Cout: c,
    x: { channels: c, offset: 0 },
    dy: { channels: c, offset: 0 },
    bias: true,
    chunk: 16,
  });
  assert.equal(plan.steps.length, 4, "expected two passes of (partials, reduce)");
  testEngine.runPlan(plan, {
    counts: sites.counts.buffer,
    indices: sites.indices.buffer,
    nbits: nbits.buffer,
    x: x.buffer,
    dy: dy.buffer,
    out: dw.buffer,
    dbias: db.buffer,
  });
  const want = ops.tidy(() => {
    const wt = ops.tensor(inputs.w.data, inputs.w.shape);
    wt.requiresGrad = true;
    const xr = ops.tensor(inputs.x.data, inputs.x.shape);
    ops.backward(ops.sum(ops.mul(ops.conv2d(xr, wt, null, { padding: 1 }), dy)));
    return wt.grad!;
  });
  const dbWant = ops.sum(dy, [0, 2, 3]);
  try {
    assert.ok(relativeError(await dw.data(), await want.data()) <= TOLERANCE, "multi-pass weight gradient");
    assert.ok(relativeError(await db.data(), await dbWant.data()) <= TOLERANCE, "multi-pass bias gradient");
  } finally {
    ops.dispose([maskT, x, dy, nbits, dw, db, want, dbWant]);
    sites.dispose();
  }
});

// ---- finite differences through the whole SC module ----

Deno.test("SCModule gradients match central finite differences (tiny input)", async () => {
  const n = 1, c = 2, g = 2, h = 5, w = 6;
  const inputs = moduleCase(n, c, g, h, w, 500);
  const maskData = randomMask(n, h, w, [0.5], 501);
  const mask = ops.tensor(maskData, [n, 1, h, w]);
  const sites = compactMask(mask);
  const r = ops.tensor(randomArray(n * c * h * w, 502), [n, c, h, w]);
  const names = Object.keys(inputs);
  const upload = (over: Record<string, Float32Array> = {}) => {
    const xs: Record<string, Tensor> = {};
    for (const k of names) xs[k] = ops.tensor(over[k] ?? inputs[k].data, inputs[k].shape);
    return xs;
  };
  const loss = (xs: Record<string, Tensor>) =>
    ops.sum(ops.mul(scModule(xs.x, sites, params(xs, "w"), params(xs, "b")), r));
  const analytic = ops.tidy(() => {
    const xs = upload();
    for (const k of names) xs[k].requiresGrad = true;
    ops.backward(loss(xs));
    return names.map((k) => xs[k].grad!);
  });
  const EPS = 1e-3;
  const plan: { name: string; index: number }[] = [];
  const losses = ops.noGrad(() =>
    ops.tidy(() => {
      const list: Tensor[] = [];
      for (const [gi, name] of names.entries()) {
        const data = inputs[name].data;
        const picks = new Set<number>();
        const u = randomArray(6, 600 + gi, 0, 1);
        for (const v of u) picks.add(Math.floor(v * data.length));
        for (const index of picks) {
          plan.push({ name, index });
          for (const sign of [1, -1]) {
            const d = data.slice();
            d[index] += sign * EPS;
            list.push(ops.tidy(() => ops.reshape(loss(upload({ [name]: d })), [1])));
          }
        }
      }
      return ops.concat(list, 0);
    })
  );
  try {
    const values = await losses.data();
    const grads = await Promise.all(analytic.map((t) => t.data()));
    const bad: string[] = [];
    let nonzero = 0;
    plan.forEach((p, k) => {
      const num = (values[2 * k] - values[2 * k + 1]) / (2 * EPS);
      const ana = grads[names.indexOf(p.name)][p.index];
      if (Math.abs(ana) > 1e-3) nonzero++;
      if (!(Math.abs(num - ana) <= 1e-2 * Math.max(1, Math.abs(ana)))) {
        bad.push(`${p.name}[${p.index}]: ${ana} vs ${num}`);
      }
    });
    assert.equal(bad.length, 0, `finite-difference mismatches:\n${bad.join("\n")}`);
    assert.ok(plan.length > 40 && nonzero > plan.length / 2, `${plan.length} samples, ${nonzero} nonzero`);
  } finally {
    ops.dispose([analytic, losses, mask, r]);
    sites.dispose();
  }
});

Deno.test("fixture and reference runs leave no live buffers behind", async () => {
  await testEngine.sync();
  assert.equal(testEngine.memory().liveBuffers, 0);
});

/**
 * Runs an SC module and a 3x3 sparseConv2d on the same input and mask, forward and backward
 * (loss = sum(y^2) + sum(z^2)), and returns the sites' capacity and [y, z, every gradient] on the CPU.
 * `prepare` may change the sites first (fitCapacity).
 */
async function scAndConvRun(
  module: SCModule,
  conv: Tensor,
  bias: Tensor,
  maskData: Float32Array,
  xData: Float32Array,
  [n, c, h, w]: number[],
  prepare?: (sites: ActiveSites) => Promise<unknown>,
): Promise<{ capacity: number; data: Float32Array[] }> {
  const mask = ops.tensor(maskData, [n, 1, h, w]);
  const sites = compactMask(mask);
  if (prepare) await prepare(sites);
  const x = ops.tensor(xData, [n, c, h, w]);
  x.requiresGrad = true;
  const y = module.forward(x, sites);
  const z = sparseConv2d(x, sites, conv, bias);
  const loss = ops.add(ops.sum(ops.mul(y, y)), ops.sum(ops.mul(z, z)));
  ops.backward(loss);
  const grads = [x, ...module.parameters(), conv, bias].map((t) => t.grad!);
  const data = await Promise.all([y, z, ...grads].map((t) => t.data()));
  const capacity = sites.capacity;
  ops.dispose([mask, x, y, z, loss, grads]);
  for (const p of [...module.parameters(), conv, bias]) p.grad = null;
  sites.dispose();
  return { capacity, data };
}

// fitCapacity shrinks the list the kernels walk and the SC block's rows to the active count (rounded up to
// 256); the module and sparseConv2d must give the same bits, forward and backward, as at full capacity.
Deno.test("SCModule and sparseConv2d after ActiveSites.fitCapacity equal the full-capacity run", async () => {
  const n = 2, c = 5, h = 31, w = 29;
  const maskData = randomMask(n, h, w, [0.03, 0.3], 61);
  const xData = randomArray(n * c * h * w, 62);
  const module = new SCModule(c, 4, new ops.Rng(63));
  const conv = ops.tensor(randomArray(3 * c * 9, 64), [3, c, 3, 3]);
  const bias = ops.tensor(randomArray(3, 65), [3]);
  for (const p of [...module.parameters(), conv, bias]) p.requiresGrad = true;
  const run = (fit: boolean) =>
    scAndConvRun(module, conv, bias, maskData, xData, [n, c, h, w], fit ? (s) => s.fitCapacity() : undefined);
  const full = await run(false);
  const fitted = await run(true);
  const active = maskData.reduce((a, v) => a + v, 0);
  assert.equal(full.capacity, n * h * w);
  assert.equal(fitted.capacity, Math.ceil(active / 256) * 256);
  assert.ok(fitted.capacity < full.capacity / 3);
  fitted.data.forEach((d, i) => assertSameBits(d, full.data[i], `output ${i}`));
  ops.dispose([module.parameters(), conv, bias]);
});

// CPU adapters run the site kernels in rounds (an invocation takes several logical invocations of the grid);
// GPUs one round. Both must give the same bits, on lists long enough that the CPU grid really folds.
Deno.test("site kernels in rounds (CPU adapters) equal one round per invocation (GPUs), bit for bit", async () => {
  const n = 2, c = 8, h = 96, w = 96;
  const maskData = randomMask(n, h, w, [0.6, 0.9], 71);
  const xData = randomArray(n * c * h * w, 72);
  const module = new SCModule(c, 4, new ops.Rng(73));
  const conv = ops.tensor(randomArray(4 * c * 9, 74), [4, c, 3, 3]);
  const bias = ops.tensor(randomArray(4, 75), [4]);
  for (const p of [...module.parameters(), conv, bias]) p.requiresGrad = true;
  // The grid of the forward's 3x3 site GEMM at full capacity (2 x 96 x 96 sites, 16 per invocation).
  const workgroups = Math.ceil((n * h * w) / 16 / 8);
  assert.ok(siteRounds(workgroups, 9 * (c + 1), true) >= 3, "the CPU grid folds");
  assert.equal(siteRounds(workgroups, 9 * (c + 1), false), 1);
  async function run(cpu: boolean, fused: boolean): Promise<Float32Array[]> {
    const before = testEngine.readsViaTextures;
    testEngine.readsViaTextures = cpu;
    // Unfused, the SC module's backward also runs the ReLU gate kernel.
    const fusedBefore = ops.setFusion(fused);
    try {
      return (await scAndConvRun(module, conv, bias, maskData, xData, [n, c, h, w])).data;
    } finally {
      testEngine.readsViaTextures = before;
      ops.setFusion(fusedBefore);
    }
  }
  for (const fused of [true, false]) {
    const gpu = await run(false, fused);
    const cpu = await run(true, fused);
    cpu.forEach((d, i) => assertSameBits(d, gpu[i], `output ${i} (fused ${fused})`));
  }
  ops.dispose([module.parameters(), conv, bias]);
});

Deno.test("siteRounds keeps every invocation within llvmpipe's loop cap and folds the grid to about 64 workgroups", () => {
  for (const perRound of [1, 10, 513, 8192 + 16 * 17]) {
    for (const workgroups of [1, 63, 64, 65, 1000, 100000]) {
      const r = siteRounds(workgroups, perRound, true);
      assert.ok(
        r >= 1 && r * (perRound + 1) <= SITE_ROUND_BUDGET,
        `${workgroups} x ${perRound}: ${r} rounds`,
      );
      assert.ok(SITE_ROUND_BUDGET < 65535);
      if (r * (perRound + 1) * 2 <= SITE_ROUND_BUDGET) assert.ok(Math.ceil(workgroups / r) <= 64);
    }
  }
});
