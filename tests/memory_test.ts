// Memory management and engine robustness: tidy, release of saved activations, buffer pool reuse, pipeline
// caching, peak accounting, tensors larger than one storage binding, dispatches over 65,535 workgroups, GPU
// error attribution and use-after-dispose.
import assert from "node:assert/strict";
import { randomArray, relativeError, testEngine } from "./_setup.ts";
import * as ops from "../mod.ts";
import type { Tensor } from "../mod.ts";
import { bucketSize, BufferPool } from "../engine/pool.ts";

const mem = () => testEngine.memory();

/** Reads a tensor and disposes it. */
async function take(t: Tensor): Promise<Float32Array> {
  try {
    return await t.data();
  } finally {
    t.dispose();
  }
}

/** Every element equal (-0 equals 0); reports the first mismatches without diffing huge arrays. */
function assertEach(name: string, got: Float32Array, want: (i: number) => number, relTol = 0): void {
  let count = 0;
  const bad: string[] = [];
  for (let i = 0; i < got.length; i++) {
    const w = want(i);
    const ok = relTol === 0 ? got[i] === w : Math.abs(got[i] - w) <= relTol * Math.max(1, Math.abs(w));
    if (!ok && count++ < 4) bad.push(`[${i}] got ${got[i]} want ${w}`);
  }
  assert.equal(count, 0, `${name}: ${count} of ${got.length} elements wrong: ${bad.join(", ")}`);
}

/** Naive conv2d (stride 1, padding 1, 3x3) in float64. */
function conv3x3Ref(x: Float32Array, [N, C, H, W]: number[], w: Float32Array, b: Float32Array, Co: number) {
  const y = new Float64Array(N * Co * H * W);
  for (let n = 0; n < N; n++) {
    for (let co = 0; co < Co; co++) {
      for (let h = 0; h < H; h++) {
        for (let x0 = 0; x0 < W; x0++) {
          let acc = b[co];
          for (let ci = 0; ci < C; ci++) {
            for (let r = 0; r < 3; r++) {
              for (let q = 0; q < 3; q++) {
                const ih = h + r - 1, iw = x0 + q - 1;
                if (ih >= 0 && ih < H && iw >= 0 && iw < W) {
                  acc += w[((co * C + ci) * 3 + r) * 3 + q] * x[((n * C + ci) * H + ih) * W + iw];
                }
              }
            }
          }
          y[((n * Co + co) * H + h) * W + x0] = acc;
        }
      }
    }
  }
  return y;
}

// ---- (a) tidy ----

Deno.test("tidy disposes intermediates; disposing its result restores liveBytes", async () => {
  await testEngine.sync();
  const before = mem();
  const a = randomArray(1000, 1);
  const b = randomArray(1000, 2);
  const y = ops.tidy(() => {
    const ta = ops.tensor(a);
    const tb = ops.tensor(b);
    return ops.add(ops.mul(ta, tb), ops.exp(ta));
  });
  const inside = mem();
  // Only the result survives: two inputs and two intermediates were released.
  assert.equal(inside.liveBuffers, before.liveBuffers + 1);
  assert.ok(inside.liveBytes - before.liveBytes >= 4000 && inside.liveBytes - before.liveBytes <= 8192);
  const got = await take(y);
  assert.ok(relativeError(got, a.map((v, i) => v * b[i] + Math.exp(v))) < 1e-6);
  assert.equal(mem().liveBytes, before.liveBytes);
  assert.equal(mem().liveBuffers, before.liveBuffers);
});

Deno.test("nested tidy moves results outward; a throwing tidy disposes what it created", async () => {
  const before = mem();
  const outer = ops.tidy(() => {
    const inner = ops.tidy(() => {
      const t = ops.tensor([1, 2, 3]);
      return { kept: ops.scale(t, 2), dropped: 0 };
    }).kept;
    ops.tensor([9, 9, 9]); // released by the outer tidy
    return ops.addScalar(inner, 1);
  });
  assert.equal(mem().liveBuffers, before.liveBuffers + 1);
  assert.deepEqual([...await take(outer)], [3, 5, 7]);
  assert.throws(
    () =>
      ops.tidy(() => {
        ops.add(ops.tensor([1, 2]), ops.tensor([3, 4]));
        throw new Error("boom");
      }),
    /boom/,
  );
  assert.equal(mem().liveBuffers, before.liveBuffers);
  assert.equal(mem().liveBytes, before.liveBytes);
});

// ---- (b) backward releases saved activations ----

Deno.test("backward releases saved activations; only leaf gradients remain", async () => {
  await testEngine.sync();
  const base = mem().liveBuffers;
  const x = ops.tensor(randomArray(2 * 2 * 8 * 8, 3), [2, 2, 8, 8]);
  const target = ops.tensor(randomArray(2 * 2 * 8 * 8, 4), [2, 2, 8, 8]);
  const w1 = ops.tensor(randomArray(4 * 2 * 9, 5, -0.5, 0.5), [4, 2, 3, 3]);
  const b1 = ops.tensor(randomArray(4, 6, -0.1, 0.1), [4]);
  const w2 = ops.tensor(randomArray(2 * 4 * 9, 7, -0.5, 0.5), [2, 4, 3, 3]);
  const params = [w1, b1, w2];
  for (const p of params) p.requiresGrad = true;
  const afterLeaves = mem().liveBuffers;
  assert.equal(afterLeaves, base + 5);

  const forward = () => {
    const z1 = ops.conv2d(x, w1, b1, { padding: 1 });
    const a1 = ops.relu(z1);
    const pooled = ops.maxPool2d(a1);
    const up = ops.upsampleNearest(pooled);
    const z2 = ops.conv2d(up, w2, null, { padding: 1 });
    const loss = ops.mseLoss(z2, target);
    ops.dispose([z1, a1, pooled, up, z2]);
    return loss;
  };

  // Inference: nothing is saved, so only the loss is live once the intermediates' handles are gone.
  const inferred = ops.noGrad(forward);
  // The engine keeps the two weights' packed layouts (until the weights change).
  assert.equal(mem().derivedBuffers, 2);
  assert.equal(mem().liveBuffers, afterLeaves + 1 + mem().derivedBuffers);
  const inferredLoss = await take(inferred);

  // Training: the graph keeps activations alive after their handles are disposed.
  const loss = forward();
  assert.ok(loss.gradFn, "loss should be recorded");
  assert.ok(
    mem().liveBuffers >= afterLeaves + 1 + 3,
    `saved activations should be held (${mem().liveBuffers - afterLeaves - 1} extra buffers)`,
  );
  ops.backward(loss);
  assert.equal(loss.gradFn, null);
  assert.deepEqual([...await take(loss)], [...inferredLoss]);
  assert.equal(
    mem().liveBuffers - mem().derivedBuffers,
    afterLeaves + params.length,
    "only the three leaf gradients remain",
  );
  for (const p of params) {
    const g = await p.grad!.data();
    assert.deepEqual([...p.grad!.shape], [...p.shape]);
    assert.ok(g.every(Number.isFinite) && g.some((v) => v !== 0), "gradient should be finite and nonzero");
  }
  assert.equal(x.grad, null);
  ops.dispose(params.map((p) => p.grad));
  assert.equal(mem().liveBuffers - mem().derivedBuffers, afterLeaves);
  ops.dispose([x, target, ...params]);
  assert.equal(mem().derivedBuffers, 0, "disposing the weights releases their packed layouts");
  assert.equal(mem().liveBuffers, base);
});

// ---- (c) buffer pool reuse ----

Deno.test("running the same computation twice creates no new GPU buffers", async () => {
  const x = randomArray(2 * 3 * 10 * 10, 8);
  const w = randomArray(4 * 3 * 9, 9);
  const b = randomArray(4, 10);
  const run = async () => {
    const out = ops.tidy(() => {
      const xt = ops.tensor(x, [2, 3, 10, 10]);
      const wt = ops.tensor(w, [4, 3, 3, 3]);
      wt.requiresGrad = true;
      const y = ops.sum(ops.square(ops.relu(ops.conv2d(xt, wt, ops.tensor(b), { padding: 1 }))), [1, 2, 3]);
      const total = ops.add(ops.sum(y), ops.mean(y));
      ops.backward(total);
      return [y, wt.grad!];
    });
    return [await take(out[0]), await take(out[1])];
  };
  const first = await run();
  const created = mem().created;
  const live = mem().liveBuffers;
  const second = await run();
  assert.equal(mem().created, created, "second run should be served from the pool");
  assert.equal(mem().liveBuffers, live);
  assert.deepEqual(second, first);
  assert.ok(first[0].every((v) => v > 0) && first[1].some((v) => v !== 0));
});

// ---- (d) pipeline cache ----

Deno.test("conv2d and add on new shapes reuse the compiled pipelines", async () => {
  const Co = 8;
  const w = randomArray(Co * 4 * 9, 11);
  const b = randomArray(Co, 12);
  const shift = randomArray(Co, 13);
  // The first round compiles each path (rows of whole texels read directly, others repacked); the second
  // round's new sizes must reuse those pipelines, since sizes travel in uniforms.
  const rounds = [
    [[1, 4, 8, 8], [2, 4, 12, 10], [1, 4, 5, 17], [3, 4, 7, 3]],
    [[2, 4, 12, 16], [1, 4, 9, 14], [3, 4, 6, 21], [1, 4, 11, 5]],
  ];
  let compiled = -1;
  for (const [round, shapes] of rounds.entries()) {
    for (const [k, shape] of shapes.entries()) {
      const x = randomArray(shape.reduce((p, d) => p * d, 1), 20 + k);
      const y = ops.tidy(() => {
        const conv = ops.conv2d(ops.tensor(x, shape), ops.tensor(w, [Co, 4, 3, 3]), ops.tensor(b), {
          padding: 1,
        });
        const shifted = ops.add(conv, ops.tensor(shift, [1, Co, 1, 1])); // broadcast (strided) add
        return ops.add(shifted, shifted); // same-shape (flat) add
      });
      const got = await take(y);
      if (round === 1) {
        assert.equal(testEngine.pipelineCount, compiled, `shape [${shape}] compiled a new pipeline`);
      }
      const ref = conv3x3Ref(x, shape, w, b, Co);
      const plane = shape[2] * shape[3];
      const want = ref.map((v, i) => 2 * (v + shift[Math.floor(i / plane) % Co]));
      assert.ok(relativeError(got, want) < 1e-5, `shape [${shape}]: wrong values`);
    }
    compiled = testEngine.pipelineCount;
  }
});

// ---- (e) peak bytes ----

Deno.test("peakBytes covers tensors live at once and stays bounded when buffers are recycled", async () => {
  await testEngine.sync();
  const n = 100_000;
  const a0 = randomArray(n, 30);
  const b0 = randomArray(n, 31);
  const base = mem().liveBytes;
  testEngine.pool.resetPeak();
  assert.equal(mem().peakBytes, base);
  const a = ops.tensor(a0);
  const unit = mem().liveBytes - base;
  assert.ok(unit >= 4 * n && unit <= 5 * n + 256, `one ${4 * n}-byte tensor took ${unit} bytes`);
  const b = ops.tensor(b0);
  const c = ops.add(a, b);
  const d = ops.mul(c, a); // a, b, c, d live at once
  c.dispose();
  const e = ops.exp(d); // may reuse c's buffer
  const peak = mem().peakBytes - base;
  assert.ok(peak >= 4 * unit, `peak ${peak} below the ${4 * unit} bytes live at once`);
  assert.ok(peak <= 5 * unit, `peak ${peak} above 5 tensors`);
  const got = await take(e);
  assertEach("exp((a + b) * a)", got, (i) => Math.exp(Math.fround(Math.fround(a0[i] + b0[i]) * a0[i])), 2e-6);
  ops.dispose([a, b, d]);

  // A long chain inside tidy-per-step keeps at most a few buffers alive at a time.
  testEngine.pool.resetPeak();
  let x = ops.tensor(a0);
  for (let k = 0; k < 20; k++) {
    const next = ops.tidy(() => ops.tanh(ops.addScalar(x, 0.1)));
    x.dispose();
    x = next;
  }
  const chainPeak = mem().peakBytes - base;
  assert.ok(chainPeak >= 2 * unit && chainPeak <= 3 * unit, `chain peak ${chainPeak} (unit ${unit})`);
  const chain = await take(x);
  const want = Array.from(a0, (v) => {
    for (let k = 0; k < 20; k++) v = Math.tanh(v + 0.1);
    return v;
  });
  assert.ok(relativeError(chain, want) < 1e-5);
  assert.equal(mem().liveBytes, base);
});

// ---- (f) tensors larger than one storage binding ----

const SMALL_BINDING = 1 << 20;

/** Runs `fn` on a fresh engine whose storage bindings hold at most `bytes`, then restores the test engine. */
async function onSmallEngine<T>(bytes: number, fn: (small: ops.Engine) => Promise<T>): Promise<T> {
  const small = await ops.Engine.create({ limits: { maxStorageBufferBindingSize: bytes } });
  const previous = ops.setEngine(small);
  try {
    return await fn(small);
  } finally {
    ops.setEngine(previous);
    small.destroy();
  }
}

Deno.test("the buffer pool serves a request from a free buffer up to four buckets larger, not beyond", () => {
  const pool = new BufferPool(testEngine.device);
  const big = pool.acquire(1_000_000);
  pool.release(big);
  assert.equal(pool.acquire(700_000), big, "a free buffer at most twice the request is reused");
  pool.release(big);
  const small = pool.acquire(400_000); // 1 MB is more than four buckets above 400 KB
  assert.notEqual(small, big);
  assert.equal(pool.stats().created, 2);
  pool.release(small);
  assert.equal(pool.acquire(400_000), small, "its own bucket comes first");
  assert.equal(pool.stats().liveBytes, bucketSize(400_000));
  pool.trim();
});

Deno.test("operand textures of a smaller GEMM reuse the pooled ones of a larger GEMM", async () => {
  await onSmallEngine(1 << 27, async (fresh) => {
    const a = ops.tensor(randomArray(300 * 700, 3), [300, 700]);
    const b = ops.tensor(randomArray(700 * 500, 4), [700, 500]);
    await take(ops.matmul(a, b));
    const bytes = fresh.memory().textureBytes;
    // 280 x 650 and 650 x 480: 23 and 39 rows, within twice the pooled 28- and 48-row textures.
    const a2 = ops.tensor(randomArray(280 * 650, 5), [280, 650]);
    const b2 = ops.tensor(randomArray(650 * 480, 6), [650, 480]);
    const got = await take(ops.matmul(a2, b2));
    assert.equal(fresh.memory().textureBytes, bytes, "the smaller GEMM made textures");
    const as = await a2.data(), bs = await b2.data();
    for (const [i, j] of [[0, 0], [279, 479], [137, 251]]) {
      let v = 0;
      for (let k = 0; k < 650; k++) v += as[i * 650 + k] * bs[k * 480 + j];
      assert.ok(Math.abs(got[i * 480 + j] - v) < 1e-3, `(${i}, ${j}): ${got[i * 480 + j]} vs ${v}`);
    }
    ops.dispose([a, b, a2, b2]);
  });
});

Deno.test("memory().textureBytes counts the GEMM operand textures, which later GEMMs reuse", async () => {
  await onSmallEngine(1 << 27, async (fresh) => {
    assert.equal(fresh.memory().textureBytes, 0);
    const a = ops.tensor(randomArray(300 * 700, 3), [300, 700]);
    const b = ops.tensor(randomArray(700 * 500, 4), [700, 500]);
    // One 2,048-texel (32 KiB) row per 8,192 floats: A takes 26 rows, B 43, in textures rounded up to a
    // quarter of their power of two: 28 and 48 rows.
    const operandBytes = (28 + 48) * 32768;
    await take(ops.matmul(a, b));
    assert.equal(fresh.memory().textureBytes, operandBytes);
    await take(ops.matmul(a, b));
    assert.equal(fresh.memory().textureBytes, operandBytes, "the second matmul reuses the pooled textures");
    a.dispose();
    b.dispose();
  });
});

// WebGPU raises requested limits below the spec default up to it; the engine must honour the smaller request.
Deno.test({
  name: "Engine.create honours a small maxStorageBufferBindingSize",
  fn: async () => {
    const small = await ops.Engine.create({ limits: { maxStorageBufferBindingSize: SMALL_BINDING } });
    try {
      assert.equal(small.maxBindingBytes, SMALL_BINDING);
    } finally {
      small.destroy();
    }
  },
});

Deno.test("element-wise ops and full walk 4 MB tensors in 1 MiB binding chunks", async () => {
  const small = await ops.Engine.create({ limits: { maxStorageBufferBindingSize: SMALL_BINDING } });
  assert.equal(small.maxBindingBytes, SMALL_BINDING);
  const previous = ops.setEngine(small);
  const n = 1_000_000; // 4 MB: three full 1 MiB chunks and a partial one
  const a0 = randomArray(n, 40);
  const b0 = randomArray(n, 41);
  const live: Tensor[] = [];
  try {
    const a = ops.tensor(a0);
    const b = ops.tensor(b0);
    live.push(a, b);
    const dispatches = small.dispatchCount;
    const sum = ops.add(a, b);
    assert.equal(
      small.dispatchCount - dispatches,
      Math.ceil((4 * n) / SMALL_BINDING),
      "add should run in chunks",
    );
    const product = ops.mul(a, b);
    const e = ops.exp(a);
    const three = ops.tensor([3], [1]);
    const scaled = ops.mul(a, three); // single-element operand bound whole in every chunk
    const filled = ops.full([n], 3.25);
    const shifted = ops.addScalar(b, -0.5);
    live.push(sum, product, e, three, scaled, filled, shifted);
    assertEach("add", await sum.data(), (i) => Math.fround(a0[i] + b0[i]));
    assertEach("mul", await product.data(), (i) => Math.fround(a0[i] * b0[i]));
    assertEach("exp", await e.data(), (i) => Math.exp(a0[i]), 2e-6);
    assertEach("mul by [1]-tensor", await scaled.data(), (i) => Math.fround(a0[i] * 3));
    assertEach("full", await filled.data(), () => 3.25);
    assertEach("addScalar", await shifted.data(), (i) => Math.fround(b0[i] - 0.5));
    // Broadcasting (strided) kernels walk the output and its full-shape inputs in chunks too, binding the
    // broadcast operand whole; one that is itself over the limit must be refused, not read out of range.
    const column = ops.tensor(Float32Array.from({ length: 1000 }, (_, i) => i), [1000, 1]);
    const before = small.dispatchCount;
    const square = a.view([1000, 1000]);
    const rows = ops.add(square, column);
    assert.equal(small.dispatchCount - before, Math.ceil((4 * n) / SMALL_BINDING), "broadcast add chunks");
    live.push(column, square, rows);
    assertEach("broadcast add", await rows.data(), (i) => Math.fround(a0[i] + Math.floor(i / 1000)));
    assert.throws(
      () => ops.tidy(() => ops.add(a.view([1, 1000, 1000]), ops.tensor([1, 2], [2, 1, 1]))),
      /not supported/,
    );
    await small.sync();
  } finally {
    ops.dispose(live);
    ops.setEngine(previous);
  }
  const leftover = small.memory().liveBuffers;
  small.destroy();
  assert.equal(leftover, 0, `every small-engine tensor should be released (${leftover} left)`);
  assert.equal(ops.engine(), testEngine);
});

// ---- (g) more than 65,535 workgroups ----

Deno.test("element-wise ops over 70,000 * 256 + 5 elements (more than 65,535 workgroups)", async () => {
  const n = 70_000 * 256 + 5; // 17,920,005 = 5 * 3,584,001
  const a0 = randomArray(n, 50);
  const col0 = new Float32Array([10, 20, 30, 40, 50]);
  const [square, shifted] = ops.tidy(() => {
    const a = ops.tensor(a0);
    return [ops.mul(a, a), ops.add(ops.reshape(a, [5, n / 5]), ops.tensor(col0, [5, 1]))];
  });
  const sq = await take(square);
  const sh = await take(shifted);
  assert.equal(sq.length, n);
  for (const i of [0, 1, 255, 256, Math.floor(n / 2), n - 6, n - 1]) {
    assert.equal(sq[i], Math.fround(a0[i] * a0[i]), `square at ${i}`);
    assert.equal(sh[i], Math.fround(a0[i] + col0[Math.floor(i / (n / 5))]), `broadcast add at ${i}`);
  }
  assertEach("square", sq, (i) => Math.fround(a0[i] * a0[i]));
  assertEach("broadcast add", sh, (i) => Math.fround(a0[i] + col0[Math.floor(i / (n / 5))]));
});

// ---- (h) GPU errors name the op ----

Deno.test("a GPU validation error is reported as a GpuOpError naming the op", async () => {
  const a = ops.tensor([1, 2, 3]);
  const b = ops.tensor([4, 5, 6]);
  await testEngine.sync();
  const bad = ops.map("a +* b", [a, b]);
  const error = await testEngine.sync().then(() => null, (e) => e);
  assert.ok(error instanceof ops.GpuOpError, `expected a GpuOpError, got ${error}`);
  assert.equal(error.op, "map(a +* b)");
  assert.equal(error.kind, "validation");
  assert.match(error.message, /map\(a \+\* b\)/);
  // The error is reported once, and the engine keeps working.
  await testEngine.sync();
  const good = ops.add(a, b);
  assert.deepEqual([...await take(good)], [5, 7, 9]);
  ops.dispose([a, b, bad]);
});

// ---- (i) use after dispose ----

Deno.test("using a disposed tensor throws a clear error", async () => {
  const t = ops.tensor([1, 2, 3]);
  t.name = "weights";
  const v = t.view([3, 1]);
  t.dispose();
  assert.equal(t.disposed, true);
  const before = mem().liveBuffers;
  assert.throws(() => ops.tidy(() => ops.add(t, t)), /weights \[3\] used after dispose/);
  assert.throws(() => ops.tidy(() => ops.relu(t)), /used after dispose/);
  assert.throws(() => t.view([1, 3]), /used after dispose/);
  await assert.rejects(t.data(), /weights \[3\] used after dispose/);
  t.dispose(); // a second dispose is a no-op
  assert.equal(mem().liveBuffers, before);
  // Another handle to the same storage is unaffected.
  assert.deepEqual([...await take(v)], [1, 2, 3]);
});

// An op that throws part-way (here: a disposed input, read after the output was allocated) leaks nothing.
Deno.test({
  name: "an op that throws leaks no buffers",
  fn: () => {
    const t = ops.tensor([1, 2, 3]);
    t.dispose();
    const before = mem().liveBuffers;
    assert.throws(() => ops.add(t, t), /used after dispose/);
    assert.equal(mem().liveBuffers, before);
  },
});

Deno.test("memory tests leave no live buffers behind", async () => {
  await testEngine.sync();
  assert.equal(mem().liveBuffers, 0);
});

Deno.test("conv2d too large for one storage binding runs in row bands and matches the unsplit result", async () => {
  const x = ops.tensor(randomArray(2 * 5 * 23 * 19, 91), [2, 5, 23, 19]);
  const w = ops.tensor(randomArray(6 * 5 * 3 * 3, 92), [6, 5, 3, 3]);
  const b = ops.tensor(randomArray(6, 93), [6]);
  const options = { stride: 2, padding: 1, dilation: 2 } as const;
  x.requiresGrad = w.requiresGrad = true;
  const before = testEngine.dispatchCount;
  const reference = ops.conv2d(x, w, b, options);
  const unsplitDispatches = testEngine.dispatchCount - before;
  ops.backward(ops.sum(reference));
  const want = [await reference.data(), await x.grad!.data(), await w.grad!.data()];
  const inputs = [await x.data(), await w.data(), await b.data()];
  ops.dispose([reference, x.grad, w.grad]);
  x.grad = w.grad = null;
  // 32 KiB bindings: the tensors fit but the conv plans' repacked scratch (10,800 floats) does not.
  const small = await ops.Engine.create({ limits: { maxStorageBufferBindingSize: 32768 } });
  const previous = ops.setEngine(small);
  try {
    const xs = ops.tensor(inputs[0], x.shape);
    const ws = ops.tensor(inputs[1], w.shape);
    const bs = ops.tensor(inputs[2], b.shape);
    xs.requiresGrad = ws.requiresGrad = true;
    const start = small.dispatchCount;
    const y = ops.conv2d(xs, ws, bs, options);
    // Band slicing and concatenation add dispatches: proof that the split path ran.
    assert.ok(small.dispatchCount - start > 2 * unsplitDispatches, "conv2d did not split into bands");
    ops.backward(ops.sum(y));
    const got = [await y.data(), await xs.grad!.data(), await ws.grad!.data()];
    got.forEach((g, i) => assert.ok(relativeError(g, want[i]) < 1e-5, `output ${i}`));
  } finally {
    ops.setEngine(previous);
    small.destroy();
  }
  ops.dispose([x, w, b]);
});

// pad, slice and concat of tensors over one storage binding move contiguous runs with buffer copies; a dense
// block (concat growing past the binding, 1x1 fusion in bands) must then equal the unsplit computation.
Deno.test("pad, concat and a dense block over one storage binding equal the unsplit results", async () => {
  const rng = () => new ops.Rng(7);
  const x0 = randomArray(2 * 6 * 21 * 17, 95);
  const shape = [2, 6, 21, 17];
  const pads: [number, number][] = [[0, 0], [-1, 2], [3, -4], [0, 0]]; // padded: [2, 7, 20, 17]
  async function run(): Promise<Float32Array[]> {
    const block = new ops.DenseBlock(6, 5, rng());
    for (const p of block.parameters()) p.requiresGrad = true;
    const x = ops.tensor(x0, shape);
    x.requiresGrad = true;
    const padded = ops.pad(x, pads);
    const joined = ops.concat([padded, padded], 3);
    const y = block.forward(x);
    const square = ops.mul(y, y);
    const loss = ops.sum(square);
    ops.backward(loss);
    ops.dispose([square, loss]);
    const got = [padded, joined, y, x.grad!, block.fuse.weight.grad!, block.convs[3].weight.grad!];
    const data = await Promise.all(got.map((t) => t.data()));
    ops.dispose([...got.slice(0, 4), x]);
    for (const p of block.parameters()) ops.dispose([p, p.grad]);
    return data;
  }
  const want = await run();
  // 4 KiB bindings: x (8.6 KiB) and every concat are over the limit; convolutions run in row bands.
  const got = await onSmallEngine(4096, async (small) => {
    const data = await run();
    await small.sync();
    assert.equal(small.memory().liveBuffers, 0);
    return data;
  });
  assertEach("pad", got[0], (i) => want[0][i]);
  assertEach("concat", got[1], (i) => want[1][i]);
  ["dense block", "input grad", "fuse weight grad", "conv3 weight grad"].forEach((name, k) =>
    assert.ok(relativeError(got[k + 2], want[k + 2]) < 1e-5, name)
  );
});

Deno.test("convTranspose2d too large for one storage binding runs in input-row bands and matches", async () => {
  // Overlapping bands (3x3 kernel, stride 2) with padding and output padding, and the 2x2 stride-2 upsampling.
  const cases = [
    { x: [2, 6, 13, 11], w: [6, 5, 3, 3], options: { stride: 2, padding: 1, outputPadding: 1 } },
    { x: [1, 8, 12, 10], w: [8, 4, 2, 2], options: { stride: 2 } },
  ] as const;
  for (const [k, c] of cases.entries()) {
    const count = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);
    const inputs = [randomArray(count(c.x), 96 + k), randomArray(count(c.w), 97)];
    const bias0 = randomArray(c.w[1], 98);
    const run = async (): Promise<Float32Array[]> => {
      const x = ops.tensor(inputs[0], [...c.x]);
      const w = ops.tensor(inputs[1], [...c.w]);
      const b = ops.tensor(bias0, [c.w[1]]);
      x.requiresGrad = w.requiresGrad = b.requiresGrad = true;
      const y = ops.convTranspose2d(x, w, b, c.options);
      const weights = ops.tensor(randomArray(y.size, 99), y.shape);
      const loss = ops.sum(ops.mul(y, weights));
      ops.backward(loss);
      const out = [y, x.grad!, w.grad!, b.grad!];
      const data = await Promise.all(out.map((t) => t.data()));
      ops.dispose([...out, x, w, b, weights, loss]);
      return data;
    };
    const want = await run();
    // 2 KiB bindings: every input and output here is larger.
    const got = await onSmallEngine(2048, async (small) => {
      const start = small.dispatchCount;
      const data = await run();
      assert.ok(small.dispatchCount - start > 20, "convTranspose2d did not split into bands");
      return data;
    });
    ["output", "input grad", "weight grad", "bias grad"].forEach((name, i) =>
      assert.ok(relativeError(got[i], want[i]) < 1e-5, `case ${k}: ${name} ${relativeError(got[i], want[i])}`)
    );
  }
});

Deno.test("memory-bound ops read through textures give the storage path's values", async () => {
  await onSmallEngine(1 << 27, async (fresh) => {
    // Sizes that are not multiples of 4 (a partial last texel), one that spans texture rows, and one value.
    for (const size of [1, 6, 1027, 2048 * 4 * 3 + 5]) {
      const a = ops.tensor(randomArray(size, 1), [size]);
      const b = ops.tensor(randomArray(size, 2), [size]);
      const c = ops.tensor(randomArray(size, 3), [size]);
      const one = ops.tensor(randomArray(1, 4), [1]);
      const run = () =>
        Promise.all([
          take(ops.map("select(c, b, a > 0.0)", [a, b, c])),
          take(ops.map("a * k.x + b", [a, b], [0.5])),
          take(ops.map("max(a, 0.0) - b * b", [a, one], [], [size])), // b: a single value, kept in storage
          take(ops.map("exp(-abs(a))", [a])),
          // Strided copies: gather (permute, pad, slice) and scatter (concat).
          take(ops.permute(ops.reshape(a, [1, size, 1]), [2, 1, 0])),
          take(ops.pad(ops.reshape(b, [1, size]), [[1, 0], [2, 3]], 0.5)),
          take(ops.slice(c, [Math.floor(size / 3)], [size])),
          take(ops.concat([ops.reshape(a, [size, 1]), ops.reshape(c, [size, 1])], 1)),
        ]);
      fresh.readsViaTextures = false;
      const before = fresh.memory().textureBytes;
      const viaStorage = await run();
      assert.equal(fresh.memory().textureBytes, before, "the storage path made textures");
      fresh.readsViaTextures = true;
      const viaTextures = await run();
      // Pooled textures serve later sizes of the same row count; the 4-row size needs new ones.
      if (size > 2048 * 4) assert.ok(fresh.memory().textureBytes > before, "the texture path made none");
      viaTextures.forEach((got, i) => assert.deepEqual(got, viaStorage[i], `size ${size}, expression ${i}`));
      ops.dispose([a, b, c, one]);
    }
  });
});

Deno.test("strided copies divide exactly up to 2^22 elements (f32 reciprocals) and beyond (integers)", async () => {
  // Walked shapes with awkward axis lengths: the first three just under 2^22 values (the f32 path's limit, where
  // its quotients have the least headroom), the last just over it (integer division).
  for (const [rows, cols] of [[599186, 7], [7, 599186], [3, 1398101], [1398102, 3]]) {
    const n = rows * cols;
    const x = new Float32Array(n);
    for (let i = 0; i < n; i++) x[i] = i;
    const got = await take(ops.permute(ops.tensor(x, [rows, cols]), [1, 0]));
    let bad = 0;
    for (let c = 0; c < cols; c++) {
      for (let r = 0; r < rows; r++) if (got[c * rows + r] !== r * cols + c) bad++;
    }
    assert.equal(bad, 0, `permute of [${rows}, ${cols}]: ${bad} misplaced values`);
  }
});
