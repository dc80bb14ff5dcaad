// SNL (sparse non-local) step and module: against a dense masked reference built from engine ops (its
// gradients by the engine's autodiff), against PyTorch fixtures (tests/fixtures/gen_snl_fixtures.py), the
// binding invariants of SPAIR.md section 2 as properties, memory and scale at 1x64x512x512 against a float64
// CPU reference at sampled sites, and finite-difference gradients of SNLModule.
import assert from "node:assert/strict";
import { randomArray, relativeError, testEngine } from "./_setup.ts";
import * as ops from "../mod.ts";
import type { Tensor } from "../mod.ts";
import { type ActiveSites, compactMask } from "../layers/sparse/active.ts";
import { DenseNonLocal, SNLModule, snlStep } from "../layers/sparse/snl.ts";
import { snlForwardRefAt, snlGradRefAt, type SnlProblem } from "../bench/snl.ts";
import { snlForwardPlan, snlUsesTextures } from "../wgsl/snl.ts";

/** Scale-relative tolerance (max |error| / max |reference| per tensor). */
const TOL = 1e-4;

const prod = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);

/** 0/1 mask [N,1,H,W] with a per-image density. */
function randomMask(n: number, h: number, w: number, densities: number[], seed: number): Float32Array {
  const r = randomArray(n * h * w, seed, 0, 1);
  return r.map((v, i) => (v < densities[Math.floor(i / (h * w))] ? 1 : 0));
}

function close(name: string, got: ArrayLike<number>, want: ArrayLike<number>, tol = TOL): void {
  const err = relativeError(got, want);
  assert.ok(err <= tol, `${name}: scale-relative error ${err} > ${tol}`);
}

/** Bit-level equality of two float arrays at the given indices (reports the first mismatches). */
function sameBits(name: string, a: Float32Array, b: Float32Array, indices: Iterable<number>): void {
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  const bad: string[] = [];
  let count = 0;
  for (const i of indices) {
    if (ua[i] !== ub[i] && count++ < 4) bad.push(`[${i}] ${a[i]} != ${b[i]}`);
  }
  assert.equal(count, 0, `${name}: ${count} values differ: ${bad.join(", ")}`);
}

/**
 * The dense masked reference, composed from engine ops (autodiff gives its gradients): full row and column
 * score matrices, per-direction key masks, masked softmax, fusion softmax over the non-empty directions.
 */
function referenceStep(f: Tensor, e: Tensor, mask: Float32Array, dense: boolean): Tensor {
  const [N, C, H, W] = f.shape;
  const key = (n: number, y: number, x: number) => dense || mask[(n * H + y) * W + x] < 0.5;
  const rowKeep = [new Float32Array(N * H * W * W), new Float32Array(N * H * W * W)];
  const colKeep = [new Float32Array(N * W * H * H), new Float32Array(N * W * H * H)];
  const valid = new Float32Array(N * 4 * H * W);
  for (let n = 0; n < N; n++) {
    for (let y = 0; y < H; y++) {
      for (let x = 0; x < W; x++) {
        for (let k = 0; k < W; k++) {
          if (!key(n, y, k) || k === x) continue;
          rowKeep[k < x ? 0 : 1][((n * H + y) * W + x) * W + k] = 1;
          valid[((n * 4 + (k < x ? 0 : 1)) * H + y) * W + x] = 1;
        }
        for (let k = 0; k < H; k++) {
          if (!key(n, k, x) || k === y) continue;
          colKeep[k < y ? 0 : 1][((n * W + x) * H + y) * H + k] = 1;
          valid[((n * 4 + (k < y ? 2 : 3)) * H + y) * W + x] = 1;
        }
      }
    }
  }
  const query = dense ? new Float32Array(N * H * W).fill(1) : mask;
  return ops.tidy(() => {
    const neg = ops.full([1], -1e30);
    const attend = (scores: Tensor, keep: Float32Array, values: Tensor) => {
      const k = ops.tensor(keep, scores.shape);
      const rows = ops.tensor(
        Float32Array.from({ length: scores.size / scores.shape[3] }, (_, i) => {
          for (let j = 0; j < scores.shape[3]; j++) if (keep[i * scores.shape[3] + j]) return 1;
          return 0;
        }),
        [...scores.shape.slice(0, 3), 1],
      );
      const a = ops.mul(ops.softmax(ops.where(k, scores, neg), -1), rows);
      return ops.matmul(a, values);
    };
    const tau = 1 / Math.sqrt(C);
    const fr = ops.permute(f, [0, 2, 3, 1]); // N,H,W,C
    const sRow = ops.scale(ops.matmul(fr, ops.permute(f, [0, 2, 1, 3])), tau); // N,H,W,W
    const fc = ops.permute(f, [0, 3, 2, 1]); // N,W,H,C
    const sCol = ops.scale(ops.matmul(fc, ops.permute(f, [0, 3, 1, 2])), tau); // N,W,H,H
    const g = [
      ops.permute(attend(sRow, rowKeep[0], fr), [0, 3, 1, 2]),
      ops.permute(attend(sRow, rowKeep[1], fr), [0, 3, 1, 2]),
      ops.permute(attend(sCol, colKeep[0], fc), [0, 3, 2, 1]),
      ops.permute(attend(sCol, colKeep[1], fc), [0, 3, 2, 1]),
    ];
    const v = ops.tensor(valid, [N, 4, H, W]);
    const w = ops.mul(ops.softmax(ops.where(v, e, neg), 1), v);
    let h = ops.mul(ops.slice(w, [0, 0, 0, 0], [N, 1, H, W]), g[0]);
    for (let d = 1; d < 4; d++) h = ops.add(h, ops.mul(ops.slice(w, [0, d, 0, 0], [N, d + 1, H, W]), g[d]));
    return ops.where(ops.tensor(query, [N, 1, H, W]), ops.add(f, h), f);
  });
}

interface StepResult {
  out: Float32Array;
  df: Float32Array;
  de: Float32Array;
}

/** Output and gradients of loss = sum(run(f, e) * g) (f, e, g float32 data). */
async function stepAndGrads(
  run: (f: Tensor, e: Tensor) => Tensor,
  shape: number[],
  fData: Float32Array,
  eData: Float32Array,
  gData: Float32Array,
): Promise<StepResult> {
  const [N, , H, W] = shape;
  const ts = ops.tidy(() => {
    const f = ops.tensor(fData, shape);
    const e = ops.tensor(eData, [N, 4, H, W]);
    f.requiresGrad = true;
    e.requiresGrad = true;
    const y = run(f, e);
    ops.backward(ops.sum(ops.mul(y, ops.tensor(gData, shape))));
    return [y, f.grad!, e.grad!];
  });
  try {
    return { out: await ts[0].data(), df: await ts[1].data(), de: await ts[2].data() };
  } finally {
    ops.dispose(ts);
  }
}

/** Runs snlStep with a freshly compacted mask (disposed afterwards). */
function withSites<T>(mask: Float32Array, shape: number[], fn: (sites: ActiveSites) => T): T {
  const [N, , H, W] = shape;
  const m = ops.tensor(mask, [N, 1, H, W]);
  const sites = compactMask(m);
  try {
    return fn(sites);
  } finally {
    sites.dispose();
    m.dispose();
  }
}

interface Case {
  name: string;
  shape: [number, number, number, number];
  densities: number[];
  dense?: boolean;
}

const CASES: Case[] = [
  { name: "0% (no queries)", shape: [1, 8, 11, 13], densities: [0] },
  { name: "~3%, odd 11x13", shape: [1, 8, 11, 13], densities: [0.03] },
  { name: "~30%, odd 11x13", shape: [1, 5, 11, 13], densities: [0.3] },
  { name: "100% (no keys: identity)", shape: [1, 16, 9, 7], densities: [1] },
  { name: "batch 3, densities 3/30/60%", shape: [3, 4, 6, 10], densities: [0.03, 0.3, 0.6] },
  { name: "batch 2, 0% and 100%", shape: [2, 3, 5, 4], densities: [0, 1] },
  { name: "C=40, 2 images", shape: [2, 40, 9, 10], densities: [0.5, 0.1] },
  // C and H * W multiples of 4, lines of 128: these (and the long-line cases below) also run the texture path.
  { name: "C=8, 4x128, batch 2, 5% and 30%", shape: [2, 8, 4, 128], densities: [0.05, 0.3] },
  { name: "C=12, 128x3, dense mode", shape: [1, 12, 128, 3], densities: [0.3], dense: true },
  { name: "dense mode", shape: [2, 6, 7, 9], densities: [0.3, 0.6], dense: true },
  // Lines of at least 256 sites: the query passes also run the few-query variant (rows here, columns next).
  { name: "rows of 300 sites, 3% and 30%", shape: [2, 8, 3, 300], densities: [0.03, 0.3] },
  { name: "columns of 270 sites, C=16, 4%", shape: [1, 16, 270, 4], densities: [0.04] },
];

Deno.test("the query passes run the few-query variant on lines of at least 256 sites only, and not on CPU adapters", () => {
  const keys = (H: number, W: number) =>
    snlForwardPlan({ N: 1, C: 8, H, W, dense: false }).steps.map((st) => st.kernel.key);
  assert.deepEqual(keys(64, 64).filter((k) => k.includes("few")), []);
  // Rows of 300: one line per invocation for lines with many queries, then the few-query kernel; columns of
  // 3: one line per invocation.
  assert.deepEqual(keys(3, 300).filter((k) => k.startsWith("snl:stats")), [
    "snl:stats-lanes-many:c8:t8",
    "snl:stats-few:c8:t8",
    "snl:stats-lanes:c8:t8",
  ]);
  // CPU adapters (chunked lanes) never take it.
  const serial = snlForwardPlan({ N: 1, C: 8, H: 3, W: 300, dense: false, serialChunks: true }).steps.map((
    st,
  ) => st.kernel.key);
  assert.deepEqual(serial.filter((k) => k.startsWith("snl:stats")), [
    "snl:stats-lanes:c8:t8",
    "snl:stats-lanes:c8:t8",
  ]);
});

/**
 * The engine's two settings: GPU-style (storage reads, one chunk of queries per invocation) and CPU-style
 * (texels of channels-last copies where the shape allows, see `snlUsesTextures`, else storage; every chunk
 * of a line per invocation). Tests run both, whichever the adapter prefers.
 */
const READ_PATHS = [{ textures: false, name: "GPU path" }, { textures: true, name: "CPU path" }];

/** Runs `fn` with the engine's texture preference set to `textures` (restored afterwards). */
async function withReads<T>(textures: boolean, fn: () => Promise<T>): Promise<T> {
  const before = testEngine.readsViaTextures;
  testEngine.readsViaTextures = textures;
  try {
    return await fn();
  } finally {
    testEngine.readsViaTextures = before;
  }
}

/** Whether snlStep on this shape takes the texture path when the engine prefers textures. */
const texturable = ([N, C, H, W]: readonly number[]) => snlUsesTextures({ N, C, H, W, dense: false }, true);

Deno.test("the texture path is taken exactly where C and H * W are multiples of 4, lines reach 128 sites and the copy is small", () => {
  assert.equal(texturable([2, 8, 4, 128]), true);
  assert.equal(texturable([1, 32, 256, 256]), true);
  assert.equal(texturable([2, 40, 9, 10]), false, "H * W = 90");
  assert.equal(texturable([1, 6, 8, 128]), false, "C = 6");
  assert.equal(texturable([8, 16, 64, 64]), false, "lines of 64");
  assert.equal(texturable([1, 64, 512, 512]), true, "a 64 MiB copy");
  assert.equal(texturable([1, 64, 1024, 512]), false, "a 128 MiB copy");
  assert.equal(
    snlUsesTextures({ N: 2, C: 8, H: 4, W: 128, dense: false }, false),
    false,
    "storage preferred",
  );
  const keys = snlForwardPlan({ N: 2, C: 8, H: 4, W: 128, dense: false, textures: true }).steps.map((st) =>
    st.kernel.key
  );
  assert.deepEqual(keys, [
    "snl:channels-last",
    "snl:stats-lanes:c8:t8:tex",
    "snl:stats-lanes:c8:t8:tex",
    "snl:finalize",
    "snl:accum-lanes:c8:t8:tex",
    "snl:accum-lanes:c8:t8:tex",
  ]);
});

for (const c of CASES) {
  for (const path of READ_PATHS) {
    Deno.test(`snlStep equals the dense masked reference: ${c.name} (${path.name})`, () =>
      withReads(path.textures, async () => {
        const [N, C, H, W] = c.shape;
        const n = N * C * H * W;
        const seed = 100 + CASES.indexOf(c) * 7;
        const f = randomArray(n, seed, -1.5, 1.5);
        const e = randomArray(N * 4 * H * W, seed + 1);
        const g = randomArray(n, seed + 2);
        const mask = randomMask(N, H, W, c.densities, seed + 3);
        const mode = c.dense ? "dense" : "sparse";
        const got = await withSites(
          mask,
          c.shape,
          (sites) => stepAndGrads((x, le) => snlStep(x, le, sites, mode), c.shape, f, e, g),
        );
        const want = await stepAndGrads((x, le) => referenceStep(x, le, mask, !!c.dense), c.shape, f, e, g);
        close("forward", got.out, want.out);
        close("grad f", got.df, want.df);
        close("grad E", got.de, want.de);
        if (!c.dense && c.densities.every((d) => d === 1 || d === 0)) {
          // No (query, clean key) pair at all: the step is the identity and E gets no gradient.
          sameBits("identity", got.out, f, got.out.keys());
          assert.ok(got.de.every((v) => v === 0), "grad E is zero");
        }
      }));
  }
}

// ---- (b) PyTorch fixtures ----

interface RawTensor {
  shape: number[];
  data: string;
}

function decode(raw: RawTensor): Float32Array {
  const bin = atob(raw.data);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  const out = new Float32Array(bytes.buffer);
  assert.equal(out.length, prod(raw.shape), "fixture size");
  return out;
}

Deno.test("snlStep matches PyTorch fixtures (dense masked formula, float64): forward, grad f, grad E, both read paths", async () => {
  const file = JSON.parse(Deno.readTextFileSync(new URL("./fixtures/snl.json", import.meta.url)));
  assert.ok(file.cases.length >= 5);
  let textured = 0;
  for (const fx of file.cases) {
    for (const path of READ_PATHS) {
      const shape = fx.inputs.f.shape as number[];
      if (path.textures && texturable(shape)) textured++;
      await withReads(path.textures, async () => {
        const mask = decode(fx.inputs.mask);
        const got = await withSites(mask, shape, (sites) =>
          stepAndGrads(
            (x, le) => snlStep(x, le, sites, fx.params.mode),
            shape,
            decode(fx.inputs.f),
            decode(fx.inputs.e),
            decode(fx.gradOutput),
          ));
        close(`${fx.name} forward (${path.name})`, got.out, decode(fx.output));
        close(`${fx.name} grad f (${path.name})`, got.df, decode(fx.grads.f));
        close(`${fx.name} grad E (${path.name})`, got.de, decode(fx.grads.e));
      });
    }
  }
  assert.ok(textured >= 2, `${textured} fixture cases ran the texture path`);
});

// ---- (c) invariants ----

async function stepOut(f: Float32Array, e: Float32Array, mask: Float32Array, shape: number[]) {
  const [N, , H, W] = shape;
  return await withSites(mask, shape, async (sites) => {
    const x = ops.tensor(f, shape);
    const le = ops.tensor(e, [N, 4, H, W]);
    const y = snlStep(x, le, sites);
    try {
      return await y.data();
    } finally {
      ops.dispose([x, le, y]);
    }
  });
}

Deno.test("SNL invariants: clean sites bit-identical; a degraded site ignores other degraded sites and clean sites off its row and column", async () => {
  const shape = [2, 6, 12, 10];
  const [N, C, H, W] = shape;
  const HW = H * W;
  const f = randomArray(N * C * HW, 31, -1.5, 1.5);
  const e = randomArray(N * 4 * HW, 32);
  const mask = randomMask(N, H, W, [0.3, 0.5], 33);
  const out = await stepOut(f, e, mask, shape);
  const clean: number[] = [];
  for (let b = 0; b < N; b++) {
    for (let s = 0; s < HW; s++) {
      if (mask[b * HW + s] === 0) { for (let c = 0; c < C; c++) clean.push((b * C + c) * HW + s); }
    }
  }
  sameBits("clean sites", out, f, clean);

  // For a few degraded sites p: perturb every other degraded site's features, every clean site off p's row
  // and column, and E everywhere but p: F'_p must not change (bit for bit).
  const degraded = [...mask.keys()].filter((i) => mask[i] === 1);
  const noise = randomArray(f.length, 34, -2, 2);
  for (const g of [degraded[0], degraded[Math.floor(degraded.length / 2)], degraded[degraded.length - 1]]) {
    const b = Math.floor(g / HW), s = g % HW, y = Math.floor(s / W), x = s % W;
    const f2 = f.slice();
    for (let bb = 0; bb < N; bb++) {
      for (let t = 0; t < HW; t++) {
        const yy = Math.floor(t / W), xx = t % W;
        const isP = bb === b && t === s;
        const inLine = bb === b && (yy === y || xx === x);
        const isClean = mask[bb * HW + t] === 0;
        if (isP || (isClean && inLine)) continue;
        for (let c = 0; c < C; c++) f2[(bb * C + c) * HW + t] = noise[(bb * C + c) * HW + t];
      }
    }
    const e2 = e.map((v, i) => (i % HW === s && Math.floor(i / (4 * HW)) === b ? v : -v + 0.25));
    const out2 = await stepOut(f2, e2, mask, shape);
    const at = Array.from({ length: C }, (_, c) => (b * C + c) * HW + s);
    sameBits(`site ${g} after perturbing unrelated sites`, out2, out, at);
    // Sanity: a clean site in p's row or column does matter.
    const f3 = f.slice();
    let k = -1;
    for (let t = 0; t < HW && k < 0; t++) {
      if (mask[b * HW + t] === 0 && (Math.floor(t / W) === y || t % W === x)) k = t;
    }
    if (k >= 0) {
      for (let c = 0; c < C; c++) f3[(b * C + c) * HW + k] += 0.5;
      const out3 = await stepOut(f3, e, mask, shape);
      assert.ok(at.some((i) => out3[i] !== out[i]), `site ${g} depends on its row/column clean site ${k}`);
    }
  }
});

Deno.test("SNLModule: clean sites pass through bit-identical; dense mode (DenseNonLocal) changes every site", async () => {
  const shape = [1, 8, 9, 11];
  const [N, C, H, W] = shape;
  const f = randomArray(N * C * H * W, 41, -1, 1);
  const mask = randomMask(N, H, W, [0.35], 42);
  const sparse = new SNLModule(C, new ops.Rng(3));
  const dense = new DenseNonLocal(C, new ops.Rng(3));
  assert.deepEqual(
    [...sparse.namedParameters().keys()],
    ["e1.weight", "e1.bias", "mid.weight", "mid.bias", "e2.weight", "e2.bias"],
  );
  const [a, d] = await withSites(mask, shape, async (sites) => {
    const x = ops.tensor(f, shape);
    const ys = [sparse.forward(x, sites), dense.forward(x, null)];
    try {
      return [await ys[0].data(), await ys[1].data()];
    } finally {
      ops.dispose([x, ...ys]);
    }
  });
  const clean: number[] = [];
  for (let s = 0; s < H * W; s++) {
    if (mask[s] === 0) {
      for (let c = 0; c < C; c++) clean.push(c * H * W + s);
    }
  }
  sameBits("module clean sites", a, f, clean);
  assert.ok(a.some((v, i) => mask[i % (H * W)] === 1 && v !== f[i]), "degraded sites change");
  assert.ok(clean.every((i) => d[i] !== f[i]), "dense mode changes clean sites too");
  ops.dispose([...sparse.parameters(), ...dense.parameters()]);
});

// ---- (d) memory and scale ----

/** A random sparse SNL problem of `shape`: F in [-1, 1], E and the output gradient g in [0, 1), a mask of the
 * given density (seeds seed .. seed + 3). */
function randomProblem(
  [N, C, H, W]: number[],
  seed: number,
  density: number,
): { p: SnlProblem; g: Float32Array } {
  const f = randomArray(N * C * H * W, seed, -1, 1);
  const e = randomArray(N * 4 * H * W, seed + 1);
  const g = randomArray(N * C * H * W, seed + 2);
  const mask = randomMask(N, H, W, [density], seed + 3);
  return { p: { N, C, H, W, f, e, mask, dense: false }, g };
}

/** Checks image 0's output, grad f and grad E at `sites` against the float64 CPU reference (grad E is 0 at
 * clean sites). */
function checkSampled(
  p: SnlProblem,
  g: Float32Array,
  got: { out: Float32Array; df: Float32Array; de: Float32Array },
  sites: number[],
  label: string,
): void {
  const HW = p.H * p.W;
  const want: number[] = [], gotv: number[] = [];
  const wantG: number[] = [], gotG: number[] = [];
  const wantE: number[] = [], gotE: number[] = [];
  for (const s of sites) {
    const o = snlForwardRefAt(p, 0, s);
    const gr = snlGradRefAt(p, g, 0, s);
    for (let c = 0; c < p.C; c++) {
      want.push(o[c]);
      gotv.push(got.out[c * HW + s]);
      wantG.push(gr.dF[c]);
      gotG.push(got.df[c * HW + s]);
    }
    for (let d = 0; d < 4; d++) {
      if (p.mask[s] === 1) {
        wantE.push(gr.dE[d]);
        gotE.push(got.de[d * HW + s]);
      } else {
        assert.equal(got.de[d * HW + s], 0, `${label}: grad E is 0 at clean sites`);
      }
    }
  }
  close(`${label}: sampled forward`, gotv, want);
  close(`${label}: sampled grad f`, gotG, wantG);
  close(`${label}: sampled grad E`, gotE, wantE);
}

for (const path of READ_PATHS) {
  Deno.test(`snlStep at 1x64x512x512, 30% density (${path.name}): sampled float64 check, memory beyond inputs/outputs O(sites) (GPU path) or O(sites x C) (texture path)`, () =>
    withReads(path.textures, async () => {
      const [N, C, H, W] = [1, 64, 512, 512];
      const shape = [N, C, H, W];
      const { p, g } = randomProblem(shape, 51, 0.3);
      const { f, e, mask } = p;
      const m = ops.tensor(mask, [N, 1, H, W]);
      const sites = compactMask(m);
      const x = ops.tensor(f, shape);
      const le = ops.tensor(e, [N, 4, H, W]);
      const gt = ops.tensor(g, shape);
      x.requiresGrad = true;
      le.requiresGrad = true;
      await testEngine.sync();
      const inputBytes = x.size * 4;
      const live0 = testEngine.memory().liveBytes;
      testEngine.pool.resetPeak();
      const t0 = performance.now();
      const y = snlStep(x, le, sites);
      ops.backward(y, gt);
      await testEngine.sync();
      const seconds = (performance.now() - t0) / 1000;
      const peak = testEngine.memory().peakBytes - live0;
      // Outputs: F' and the two gradients. Everything else the step allocated is its scratch.
      const outputs = y.size * 4 + x.grad!.size * 4 + le.grad!.size * 4;
      const scratch = peak - outputs;
      const active = mask.reduce((a, v) => a + v, 0);
      const attentionMatrix = active * (H + W) * 4;
      console.log(
        `512x512x64 @30% (${path.name}): forward+backward ${seconds.toFixed(1)} s; peak beyond inputs ${
          (peak / 2 ** 20).toFixed(1)
        } MiB ` +
          `(outputs ${(outputs / 2 ** 20).toFixed(1)} MiB, scratch ${
            (scratch / 2 ** 20).toFixed(1)
          } MiB); input ` +
          `${(inputBytes / 2 ** 20).toFixed(0)} MiB; an attention matrix would be ${
            (attentionMatrix / 2 ** 20).toFixed(0)
          } MiB`,
      );
      if (path.textures) {
        // Channels-last copies of F, dOut and dF (3 C words per site) beside the storage path's 14 words per
        // site.
        assert.ok(texturable(shape), "the CPU path reads textures at this size");
        assert.ok(
          scratch < 3.5 * inputBytes,
          `scratch ${scratch} >= 3.5x input (should be ~3 C + 16 words per site)`,
        );
      } else {
        assert.ok(peak < 4 * inputBytes, `peak ${peak} >= 4x input ${inputBytes}`);
        assert.ok(
          scratch < 0.5 * inputBytes,
          `scratch ${scratch} >= input / 2 (should be ~16 words per site)`,
        );
        assert.ok(scratch < attentionMatrix / 10, "scratch far below an attention matrix");
      }

      const [out, dx, de] = [await y.data(), await x.grad!.data(), await le.grad!.data()];
      ops.dispose([m, x, le, gt, y, x.grad, le.grad]);
      sites.dispose();
      // 48 sampled degraded (query) sites, 8 clean (key) sites.
      const degraded = [...mask.keys()].filter((i) => mask[i] === 1);
      const clean = [...mask.keys()].filter((i) => mask[i] === 0);
      const pick = (list: number[], k: number, seed: number) =>
        Array.from(randomArray(k, seed, 0, list.length), (v) => list[Math.floor(v)]);
      checkSampled(p, g, { out, df: dx, de }, [...pick(degraded, 48, 55), ...pick(clean, 8, 56)], path.name);
    }));
}

// ---- (e) finite differences ----

async function moduleGradcheck(dense: boolean): Promise<void> {
  // H * W and C multiples of 4, lines of 128: the texture path where the adapter prefers it (both paths run).
  const shape = [1, 4, 3, 128];
  const [N, C, H, W] = shape;
  const f = randomArray(N * C * H * W, 61, -1, 1);
  const r = randomArray(N * C * H * W, 62);
  const mask = randomMask(N, H, W, [0.4], 63);
  const module = new SNLModule(C, new ops.Rng(7), dense ? "dense" : "sparse");
  const EPS = 1e-2;
  const m = ops.tensor(mask, [N, 1, H, W]);
  const sites = compactMask(m);
  const x = ops.tensor(f, shape);
  const rt = ops.tensor(r, shape);
  const loss = () => ops.tidy(() => ops.sum(ops.mul(module.forward(x, sites), rt)));
  x.requiresGrad = true;
  const l0 = loss();
  ops.backward(l0);
  l0.dispose();
  const targets: [string, Tensor][] = [["f", x], ...module.namedParameters()];
  const failures: string[] = [];
  for (const [name, t] of targets) {
    const analytic = await t.grad!.data();
    const data = await t.data();
    const coords = [...new Set(Array.from(randomArray(8, name.length * 13 + 1, 0, t.size), Math.floor))];
    const losses: Tensor[] = [];
    ops.noGrad(() => {
      for (const i of coords) {
        for (const sign of [1, -1]) {
          const d = data.slice();
          d[i] += sign * EPS;
          testEngine.write(t.buffer, 0, d);
          losses.push(loss());
        }
      }
      testEngine.write(t.buffer, 0, data);
    });
    const values: number[] = [];
    for (const l of losses) values.push(await l.item());
    ops.dispose(losses);
    coords.forEach((i, j) => {
      const numeric = (values[2 * j] - values[2 * j + 1]) / (2 * EPS);
      if (Math.abs(numeric - analytic[i]) > 1e-2 * Math.max(1, Math.abs(analytic[i]))) {
        failures.push(`${name}[${i}]: numeric ${numeric} analytic ${analytic[i]}`);
      }
    });
    t.grad!.dispose();
    t.grad = null;
  }
  ops.dispose([m, x, rt, ...module.parameters()]);
  sites.dispose();
  assert.deepEqual(failures, []);
}

for (const path of READ_PATHS) {
  Deno.test(`SNLModule gradients match finite differences (sparse, ${path.name})`, () =>
    withReads(path.textures, () => moduleGradcheck(false)));
  Deno.test(`SNLModule gradients match finite differences (dense / DenseNonLocal, ${path.name})`, () =>
    withReads(path.textures, () => moduleGradcheck(true)));
}

Deno.test("a line of 2,000 sites at 30%: each invocation's chunks of queries stay within the loop budget (sampled float64 check, both paths)", async () => {
  const shape = [1, 8, 1, 2000];
  const { p, g } = randomProblem(shape, 71, 0.3);
  const { f, e, mask } = p;
  const degraded = [...mask.keys()].filter((i) => mask[i] === 1);
  const clean = [...mask.keys()].filter((i) => mask[i] === 0);
  // The line's last queries: an invocation that walked every chunk of the line would stop at the cap before.
  const sites = [...degraded.slice(0, 4), ...degraded.slice(-8), ...clean.slice(-4)];
  for (const path of READ_PATHS) {
    const got = await withReads(
      path.textures,
      () => withSites(mask, shape, (s) => stepAndGrads((x, le) => snlStep(x, le, s), shape, f, e, g)),
    );
    checkSampled(p, g, got, sites, path.name);
  }
});
