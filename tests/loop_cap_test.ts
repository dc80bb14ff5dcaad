// Sizes that cross llvmpipe's silent cap of 65,535 loop iterations per shader invocation (work past the cap
// is dropped without an error): every result is compared with a float64 CPU reference, element by element.
// The GEMM kernels unroll 4 (matmul, weight gradient) or kh*kw (conv forward / input gradient) k steps per
// loop iteration, so besides the sizes at the 65,536 boundary some cases use reductions long enough to cross
// the cap even counted in unrolled iterations (they fail when the engine stops splitting long reductions).
import assert from "node:assert/strict";
import { randomArray, relativeError, testEngine } from "./_setup.ts";
import * as ops from "../mod.ts";
import type { Tensor } from "../mod.ts";

/** Scale-relative tolerance for float32 sums of up to ~70,000 terms (observed errors are ~1e-6). */
const TOL = 1e-4;

function close(name: string, got: Float32Array, want: ArrayLike<number>, tol = TOL): void {
  assert.equal(got.length, want.length, `${name}: length`);
  const err = relativeError(got, want);
  assert.ok(err <= tol, `${name}: relative error ${err} > ${tol}`);
}

/** Element-wise equality (-0 equals 0); reports the first mismatches instead of diffing huge arrays. */
function exact(name: string, got: Float32Array, want: ArrayLike<number>): void {
  assert.equal(got.length, want.length, `${name}: length`);
  const bad: string[] = [];
  let count = 0;
  for (let i = 0; i < want.length; i++) {
    if (got[i] !== want[i]) {
      if (count++ < 4) bad.push(`[${i}] ${got[i]} != ${want[i]}`);
    }
  }
  assert.equal(count, 0, `${name}: ${count} elements differ: ${bad.join(", ")}`);
}

/** Reads tensors, then disposes them. */
async function readAll(ts: Tensor[]): Promise<Float32Array[]> {
  try {
    const out: Float32Array[] = [];
    for (const t of ts) out.push(await t.data());
    return out;
  } finally {
    ops.dispose(ts);
  }
}

/** Forward output and gradients of loss = sum(f(inputs) * r) for leaves marked in `grad`. */
async function forwardBackward(
  inputs: { data: Float32Array; shape: number[]; grad: boolean }[],
  f: (xs: Tensor[]) => Tensor,
  r: Float32Array,
): Promise<Float32Array[]> {
  const out = ops.tidy(() => {
    const xs = inputs.map((i) => {
      const t = ops.tensor(i.data, i.shape);
      t.requiresGrad = i.grad;
      return t;
    });
    const y = f(xs);
    ops.backward(ops.sum(ops.mul(y, ops.tensor(r, y.shape))));
    return [y, ...xs.filter((x) => x.requiresGrad).map((x) => x.grad!)];
  });
  return await readAll(out);
}

// ---- float64 CPU references ----

interface ConvGeom {
  N: number;
  Cin: number;
  H: number;
  W: number;
  Cout: number;
  kh: number;
  kw: number;
  stride: number;
  pad: number;
  dil: number;
}

function outSize(g: ConvGeom): [number, number] {
  return [
    Math.floor((g.H + 2 * g.pad - g.dil * (g.kh - 1) - 1) / g.stride) + 1,
    Math.floor((g.W + 2 * g.pad - g.dil * (g.kw - 1) - 1) / g.stride) + 1,
  ];
}

/** Visits every (output position, weight tap, input position) triple of a convolution. */
function forEachTap(
  g: ConvGeom,
  visit: (yIndex: number, wIndex: number, xIndex: number) => void,
): void {
  const [Ho, Wo] = outSize(g);
  for (let n = 0; n < g.N; n++) {
    for (let co = 0; co < g.Cout; co++) {
      for (let oh = 0; oh < Ho; oh++) {
        for (let ow = 0; ow < Wo; ow++) {
          const yIndex = ((n * g.Cout + co) * Ho + oh) * Wo + ow;
          for (let ci = 0; ci < g.Cin; ci++) {
            for (let r = 0; r < g.kh; r++) {
              const ih = oh * g.stride - g.pad + r * g.dil;
              if (ih < 0 || ih >= g.H) continue;
              for (let q = 0; q < g.kw; q++) {
                const iw = ow * g.stride - g.pad + q * g.dil;
                if (iw < 0 || iw >= g.W) continue;
                visit(
                  yIndex,
                  ((co * g.Cin + ci) * g.kh + r) * g.kw + q,
                  ((n * g.Cin + ci) * g.H + ih) * g.W + iw,
                );
              }
            }
          }
        }
      }
    }
  }
}

function convRef(g: ConvGeom, x: Float32Array, w: Float32Array, dy: Float32Array) {
  const [Ho, Wo] = outSize(g);
  const y = new Float64Array(g.N * g.Cout * Ho * Wo);
  const dx = new Float64Array(x.length);
  const dw = new Float64Array(w.length);
  forEachTap(g, (yi, wi, xi) => {
    y[yi] += w[wi] * x[xi];
    dx[xi] += w[wi] * dy[yi];
    dw[wi] += dy[yi] * x[xi];
  });
  return { y, dx, dw };
}

async function checkConv(name: string, g: ConvGeom, seed: number): Promise<void> {
  const [Ho, Wo] = outSize(g);
  const x = randomArray(g.N * g.Cin * g.H * g.W, seed);
  const w = randomArray(g.Cout * g.Cin * g.kh * g.kw, seed + 1);
  const r = randomArray(g.N * g.Cout * Ho * Wo, seed + 2);
  const [y, dx, dw] = await forwardBackward(
    [
      { data: x, shape: [g.N, g.Cin, g.H, g.W], grad: true },
      { data: w, shape: [g.Cout, g.Cin, g.kh, g.kw], grad: true },
    ],
    ([xt, wt]) => ops.conv2d(xt, wt, null, { stride: g.stride, padding: g.pad, dilation: g.dil }),
    r,
  );
  const ref = convRef(g, x, w, r);
  close(`${name} forward`, y, ref.y);
  close(`${name} input gradient`, dx, ref.dx);
  close(`${name} weight gradient`, dw, ref.dw);
}

// ---- (a) conv2d weight gradient reducing over 65,536 output positions ----

Deno.test("conv2d weight gradient over 256x256 positions (reduction length 65,536)", async () => {
  const g: ConvGeom = { N: 1, Cin: 8, H: 256, W: 256, Cout: 8, kh: 3, kw: 3, stride: 1, pad: 1, dil: 1 };
  const x = randomArray(8 * 256 * 256, 11);
  const w = randomArray(8 * 8 * 9, 12);
  const r = randomArray(8 * 256 * 256, 13);
  const [, dw] = await forwardBackward(
    [{ data: x, shape: [1, 8, 256, 256], grad: false }, { data: w, shape: [8, 8, 3, 3], grad: true }],
    ([xt, wt]) => ops.conv2d(xt, wt, null, { padding: 1 }),
    r,
  );
  // dw[co, ci, p, q] = sum over (oh, ow) of r[co, oh, ow] * x[ci, oh + p - 1, ow + q - 1].
  const want = new Float64Array(576);
  for (let co = 0; co < 8; co++) {
    for (let ci = 0; ci < 8; ci++) {
      for (let p = 0; p < 3; p++) {
        for (let q = 0; q < 3; q++) {
          let acc = 0;
          for (let oh = Math.max(0, 1 - p); oh < Math.min(256, 257 - p); oh++) {
            const rRow = (co * 256 + oh) * 256;
            const xRow = (ci * 256 + oh + p - 1) * 256 + q - 1;
            for (let ow = Math.max(0, 1 - q); ow < Math.min(256, 257 - q); ow++) {
              acc += r[rRow + ow] * x[xRow + ow];
            }
          }
          want[((co * 8 + ci) * 3 + p) * 3 + q] = acc;
        }
      }
    }
  }
  assert.equal(g.H * g.W, 65536);
  close("dw", dw, want);
});

Deno.test("conv2d weight gradient over 2x368x368 positions (past 4 x 65,535 unrolled steps)", async () => {
  // GEMM kernels unroll 4 k steps per loop iteration, so only k > 262,140 crosses the cap without splitting.
  const g: ConvGeom = { N: 2, Cin: 2, H: 368, W: 368, Cout: 2, kh: 3, kw: 3, stride: 1, pad: 1, dil: 1 };
  assert.ok(g.N * g.H * g.W > 4 * 65535);
  const x = randomArray(2 * 2 * 368 * 368, 14);
  const w = randomArray(2 * 2 * 9, 15);
  const r = randomArray(2 * 2 * 368 * 368, 16);
  const [, dw] = await forwardBackward(
    [{ data: x, shape: [2, 2, 368, 368], grad: false }, { data: w, shape: [2, 2, 3, 3], grad: true }],
    ([xt, wt]) => ops.conv2d(xt, wt, null, { padding: 1 }),
    r,
  );
  close("dw", dw, convRef(g, x, w, r).dw);
});

// The bias gradient comes from the weight-gradient kernels' column sums (split partials, then the reduction's
// tail): checked on both kernel paths (stride 1 reads x and dy in place; stride 2 packs them).
for (const stride of [1, 2]) {
  Deno.test(`conv2d bias gradient from the weight-gradient kernel, 65,536 positions, stride ${stride}`, async () => {
    const H = 256 * stride;
    const g: ConvGeom = { N: 1, Cin: 3, H, W: H, Cout: 6, kh: 3, kw: 3, stride, pad: 1, dil: 1 };
    const [Ho, Wo] = outSize(g);
    assert.equal(Ho * Wo, 65536);
    const x = randomArray(3 * H * H, 21 + stride);
    const w = randomArray(6 * 3 * 9, 23);
    const b = randomArray(6, 24);
    const r = randomArray(6 * Ho * Wo, 25);
    const [, dw, db] = await forwardBackward(
      [
        { data: x, shape: [1, 3, H, H], grad: false },
        { data: w, shape: [6, 3, 3, 3], grad: true },
        { data: b, shape: [6], grad: true },
      ],
      ([xt, wt, bt]) => ops.conv2d(xt, wt, bt, { stride, padding: 1 }),
      r,
    );
    const wantDb = new Float64Array(6);
    for (let i = 0; i < r.length; i++) wantDb[Math.floor(i / (Ho * Wo))] += r[i];
    close("dw", dw, convRef(g, x, w, r).dw);
    close("db", db, wantDb);
  });
}

// ---- (b) reductions over 300,000 and 600,000 elements ----

Deno.test("sum, mean, max and max gradient over an axis of length 300,000", async () => {
  const L = 300_000;
  const x = randomArray(2 * L, 21);
  // Unique maxima far past the first 65,535 elements of each row.
  x[L - 1] = 3;
  x[L + 150_001] = 2.5;
  const r = randomArray(2, 22);
  const [m, dx] = await forwardBackward([{ data: x, shape: [2, L], grad: true }], ([t]) => ops.max(t, 1), r);
  const [s, mn] = await readAll(ops.tidy(() => {
    const t = ops.tensor(x, [2, L]);
    return [ops.sum(t, 1), ops.mean(t, -1)];
  }));
  const sums = [0, 1].map((row) => x.subarray(row * L, (row + 1) * L).reduce((a, v) => a + v, 0));
  close("sum", s, sums, 1e-5);
  close("mean", mn, sums.map((v) => v / L), 1e-5);
  assert.deepEqual([...m], [3, 2.5]);
  const wantDx = new Float32Array(2 * L);
  wantDx[L - 1] = r[0];
  wantDx[L + 150_001] = r[1];
  exact("max gradient", dx, wantDx);
});

Deno.test("sum and max over a leading axis of length 300,000 (inner size 2)", async () => {
  const L = 300_000;
  const x = randomArray(2 * L, 23, 0, 1);
  x[2 * 299_990 + 1] = 7;
  x[2 * 70_000] = 4;
  const [s, m] = await readAll(ops.tidy(() => {
    const t = ops.tensor(x, [L, 2]);
    return [ops.sum(t, 0), ops.max(t, 0)];
  }));
  const want = [0, 0];
  for (let i = 0; i < 2 * L; i++) want[i % 2] += x[i];
  close("sum", s, want, 1e-5);
  assert.deepEqual([...m], [4, 7]);
});

Deno.test("sum, mean and max over a whole [3, 200000] tensor", async () => {
  const x = randomArray(600_000, 24, 0, 1);
  x[599_999] = 9;
  const [s, mn, m] = await readAll(ops.tidy(() => {
    const t = ops.tensor(x, [3, 200_000]);
    return [ops.sum(t), ops.mean(t), ops.max(t)];
  }));
  const total = x.reduce((a, v) => a + v, 0);
  close("sum", s, [total], 1e-5);
  close("mean", mn, [total / 600_000], 1e-5);
  assert.deepEqual([...m], [9]);
});

// ---- (c) matmul with long reductions ----

function matmulRef(a: Float32Array, b: Float32Array, M: number, K: number, N: number): Float64Array {
  const out = new Float64Array(M * N);
  for (let i = 0; i < M; i++) {
    for (let k = 0; k < K; k++) {
      const av = a[i * K + k];
      for (let j = 0; j < N; j++) out[i * N + j] += av * b[k * N + j];
    }
  }
  return out;
}

function transpose2d(a: ArrayLike<number>, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) out[j * rows + i] = a[i * cols + j];
  return out;
}

Deno.test("matmul [4,70000] @ [70000,3] (K = 70,000) with gradients", async () => {
  const [M, K, N] = [4, 70_000, 3];
  const a = randomArray(M * K, 31);
  const b = randomArray(K * N, 32);
  const r = randomArray(M * N, 33);
  const [y, da, db] = await forwardBackward(
    [{ data: a, shape: [M, K], grad: true }, { data: b, shape: [K, N], grad: true }],
    ([at, bt]) => ops.matmul(at, bt),
    r,
  );
  close("forward", y, matmulRef(a, b, M, K, N));
  close("dA = r @ B^T", da, matmulRef(r, transpose2d(b, K, N), M, N, K));
  close("dB = A^T @ r", db, matmulRef(transpose2d(a, M, K), r, K, M, N));
});

Deno.test("matmul [2,280000] @ [280000,2] (past 4 x 65,535 unrolled steps) with gradients", async () => {
  const [M, K, N] = [2, 280_000, 2];
  const a = randomArray(M * K, 61);
  const b = randomArray(K * N, 62);
  const r = randomArray(M * N, 63);
  const [y, da, db] = await forwardBackward(
    [{ data: a, shape: [M, K], grad: true }, { data: b, shape: [K, N], grad: true }],
    ([at, bt]) => ops.matmul(at, bt),
    r,
  );
  close("forward", y, matmulRef(a, b, M, K, N));
  close("dA = r @ B^T", da, matmulRef(r, transpose2d(b, K, N), M, N, K));
  close("dB = A^T @ r", db, matmulRef(transpose2d(a, M, K), r, K, M, N));
});

Deno.test("matmul weight gradient over 70,000 rows and over a folded batch of 2 x 40,000", async () => {
  {
    const [M, K, N] = [70_000, 4, 3];
    const a = randomArray(M * K, 34);
    const b = randomArray(K * N, 35);
    const r = randomArray(M * N, 36);
    const [y, db] = await forwardBackward(
      [{ data: a, shape: [M, K], grad: false }, { data: b, shape: [K, N], grad: true }],
      ([at, bt]) => ops.matmul(at, bt),
      r,
    );
    close("forward", y, matmulRef(a, b, M, K, N));
    close("dB over 70,000 rows", db, matmulRef(transpose2d(a, M, K), r, K, M, N));
  }
  {
    // Shared B: dB = sum over the batch of A_b^T r_b = A'^T r' with A' the batch folded into rows.
    const [B, M, K, N] = [2, 40_000, 4, 3];
    const a = randomArray(B * M * K, 37);
    const b = randomArray(K * N, 38);
    const r = randomArray(B * M * N, 39);
    const [y, db] = await forwardBackward(
      [{ data: a, shape: [B, M, K], grad: false }, { data: b, shape: [K, N], grad: true }],
      ([at, bt]) => ops.matmul(at, bt),
      r,
    );
    close("batched forward", y, matmulRef(a, b, B * M, K, N));
    close("dB over 80,000 folded rows", db, matmulRef(transpose2d(a, B * M, K), r, K, B * M, N));
  }
});

// ---- (d) convolutions with long channel reductions ----

Deno.test("conv2d forward, input and weight gradients with Cin = 8192, 3x3 (k = 73,728)", async () => {
  await checkConv("Cin 8192", {
    N: 1,
    Cin: 8192,
    H: 4,
    W: 4,
    Cout: 4,
    kh: 3,
    kw: 3,
    stride: 1,
    pad: 1,
    dil: 1,
  }, 41);
});

Deno.test("conv2d input gradient with Cout = 8192, 3x3 (k = 73,728)", async () => {
  await checkConv("Cout 8192", {
    N: 1,
    Cin: 2,
    H: 4,
    W: 4,
    Cout: 8192,
    kh: 3,
    kw: 3,
    stride: 1,
    pad: 1,
    dil: 1,
  }, 42);
});

Deno.test("conv2d 1x1 with Cin = 70,000 (70,000 reduction steps) and Cout = 70,000", async () => {
  await checkConv("Cin 70000", {
    N: 1,
    Cin: 70_000,
    H: 3,
    W: 3,
    Cout: 2,
    kh: 1,
    kw: 1,
    stride: 1,
    pad: 0,
    dil: 1,
  }, 43);
  await checkConv("Cout 70000", {
    N: 1,
    Cin: 2,
    H: 3,
    W: 3,
    Cout: 70_000,
    kh: 1,
    kw: 1,
    stride: 1,
    pad: 0,
    dil: 1,
  }, 44);
});

Deno.test("conv2d Cin = 512, 3x3, stride 2, dilation 2 on 9x9", async () => {
  await checkConv(
    "Cin 512",
    { N: 2, Cin: 512, H: 9, W: 9, Cout: 3, kh: 3, kw: 3, stride: 2, pad: 2, dil: 2 },
    45,
  );
});

// ---- (e) resampling along an axis of 70,000 ----

/** Taps of 1-D resampling with PyTorch's conventions, source coordinates computed in float32 like the GPU. */
function taps1d(lenIn: number, lenOut: number, mode: "nearest" | "linear", alignCorners: boolean) {
  const f = Math.fround;
  const ratio = f(alignCorners ? (lenOut > 1 ? (lenIn - 1) / (lenOut - 1) : 0) : lenIn / lenOut);
  const i0 = new Int32Array(lenOut);
  const i1 = new Int32Array(lenOut);
  const w1 = new Float64Array(lenOut);
  for (let j = 0; j < lenOut; j++) {
    if (mode === "nearest") {
      i0[j] = i1[j] = Math.min(Math.floor(f(j * ratio)), lenIn - 1);
      continue;
    }
    const src = alignCorners ? f(j * ratio) : Math.max(f(f((j + 0.5) * ratio) - 0.5), 0);
    i0[j] = Math.min(Math.floor(src), lenIn - 1);
    i1[j] = Math.min(i0[j] + 1, lenIn - 1);
    w1[j] = src - i0[j];
  }
  return { i0, i1, w1 };
}

/** Forward y and adjoint dx of separable 2-D resampling of a [H, W] plane, in float64. */
function resampleRef(
  x: Float32Array,
  g: Float32Array,
  [H, W]: [number, number],
  [Ho, Wo]: [number, number],
  mode: "nearest" | "linear",
  alignCorners: boolean,
) {
  const tw = taps1d(W, Wo, mode, alignCorners);
  const th = taps1d(H, Ho, mode, alignCorners);
  const y = new Float64Array(Ho * Wo);
  const dx = new Float64Array(H * W);
  for (let oh = 0; oh < Ho; oh++) {
    const rows = [th.i0[oh], th.i1[oh]];
    const rw = [1 - th.w1[oh], th.w1[oh]];
    for (let ow = 0; ow < Wo; ow++) {
      const cols = [tw.i0[ow], tw.i1[ow]];
      const cw = [1 - tw.w1[ow], tw.w1[ow]];
      for (let a = 0; a < 2; a++) {
        for (let b = 0; b < 2; b++) {
          const weight = rw[a] * cw[b];
          y[oh * Wo + ow] += weight * x[rows[a] * W + cols[b]];
          dx[rows[a] * W + cols[b]] += weight * g[oh * Wo + ow];
        }
      }
    }
  }
  return { y, dx };
}

for (const [mode, alignCorners] of [["linear", false], ["linear", true], ["nearest", false]] as const) {
  const label = mode === "linear" ? `bilinear (alignCorners ${alignCorners})` : "nearest";
  Deno.test(`upsample ${label} of 1x1x4x70000 and its gradient`, async () => {
    const [H, W] = [4, 70_000];
    const x = randomArray(H * W, 51);
    const r = randomArray(2 * H * 2 * W, 52);
    const [y, dx] = await forwardBackward(
      [{ data: x, shape: [1, 1, H, W], grad: true }],
      ([t]) =>
        mode === "linear" ? ops.upsampleBilinear(t, { alignCorners }) : ops.upsampleNearest(t, { scale: 2 }),
      r,
    );
    const ref = resampleRef(x, r, [H, W], [2 * H, 2 * W], mode, alignCorners);
    close("forward", y, ref.y, 1e-5);
    close("input gradient", dx, ref.dx, 1e-5);
  });
}

Deno.test("bilinear resize of 1x1x3x70001 to [5, 99991] and its gradient", async () => {
  const [H, W, Ho, Wo] = [3, 70_001, 5, 99_991];
  const x = randomArray(H * W, 53);
  const r = randomArray(Ho * Wo, 54);
  const [y, dx] = await forwardBackward(
    [{ data: x, shape: [1, 1, H, W], grad: true }],
    ([t]) => ops.upsampleBilinear(t, { size: [Ho, Wo] }),
    r,
  );
  const ref = resampleRef(x, r, [H, W], [Ho, Wo], "linear", false);
  close("forward", y, ref.y, 1e-3);
  close("input gradient", dx, ref.dx, 1e-3);
});

Deno.test("loop-cap tests leave no live buffers behind", async () => {
  await testEngine.sync();
  assert.equal(testEngine.memory().liveBuffers, 0);
});
