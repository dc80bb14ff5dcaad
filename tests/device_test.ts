// Engine plumbing: texture-bound plan inputs and batching.
import assert from "node:assert/strict";
import { randomArray, relativeError, testEngine } from "./_setup.ts";
import * as ops from "../mod.ts";
import { TEXTURE_WIDTH } from "../engine/device.ts";
import { foldWorkgroups } from "../wgsl/plan.ts";
import { UserError } from "../engine/errors.ts";

Deno.test("a plan input bound as a texture reads the same values as the buffer (partial last row)", async () => {
  const n = TEXTURE_WIDTH * 4 * 3 + 4 * 37 + 2; // three full texture rows, a partial row, a partial texel
  const data = randomArray(n, 5);
  const x = ops.tensor(data, [n]);
  const out = ops.Tensor.empty([n]);
  const code = `struct P { n: u32 }
@group(0) @binding(0) var<uniform> u: P;
@group(0) @binding(1) var src: texture_2d<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = (wg.x + wg.y * nwg.x) * 64u + lid;
  if (i >= u.n) { return; }
  let texel = i / 4u;
  dst[i] = textureLoad(src, vec2<u32>(texel % ${TEXTURE_WIDTH}u, texel / ${TEXTURE_WIDTH}u), 0)[i % 4u];
}`;
  testEngine.runPlan(
    {
      outSize: n,
      scratch: {},
      steps: [{
        kernel: { key: "test:texture-copy", code },
        uniforms: new Uint32Array([n, 0, 0, 0]).buffer,
        buffers: ["x", "out"],
        writes: ["out"],
        textures: ["x"],
        workgroups: foldWorkgroups(Math.ceil(n / 64)),
      }],
    },
    { x: x.buffer, out: out.buffer },
    { x: n },
  );
  assert.deepEqual(await out.data(), data);
  ops.dispose([x, out]);
});

Deno.test("a plan copies a buffer into a texture once for the steps that read it, and again after a step writes it", async () => {
  const n = TEXTURE_WIDTH * 4 * 2 + 12; // two full texture rows and a partial one
  const xs = randomArray(n, 7), ys = randomArray(n, 8);
  const [x, y] = [ops.tensor(xs, [n]), ops.tensor(ys, [n])];
  const outs = [0, 1, 2, 3].map(() => ops.Tensor.empty([n]));
  const header = `struct P { n: u32 }
@group(0) @binding(0) var<uniform> u: P;`;
  const index = `let i = (wg.x + wg.y * nwg.x) * 64u + lid;
  if (i >= u.n) { return; }`;
  const entry =
    "@compute @workgroup_size(64)\nfn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32)";
  const read = {
    key: "test:texture-read",
    code: `${header}
@group(0) @binding(1) var src: texture_2d<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
${entry} {
  ${index}
  let texel = i / 4u;
  dst[i] = textureLoad(src, vec2<u32>(texel % ${TEXTURE_WIDTH}u, texel / ${TEXTURE_WIDTH}u), 0)[i % 4u];
}`,
  };
  const double = {
    key: "test:double-in-place",
    code: `${header}
@group(0) @binding(1) var<storage, read_write> v: array<f32>;
${entry} {
  ${index}
  v[i] = 2.0 * v[i];
}`,
  };
  const grid = foldWorkgroups(Math.ceil(n / 64));
  const uniforms = new Uint32Array([n, 0, 0, 0]).buffer;
  const readStep = (src: string, dst: string) => ({
    kernel: read,
    uniforms,
    buffers: [src, dst],
    writes: [dst],
    textures: [src],
    workgroups: grid,
  });
  testEngine.runPlan(
    {
      outSize: n,
      scratch: {},
      steps: [
        readStep("x", "o0"),
        { kernel: double, uniforms, buffers: ["x"], writes: ["x"], workgroups: grid },
        readStep("x", "o1"), // must see the doubled x: the first copy is stale
        readStep("y", "o2"), // a second texture, while x's copy is still held
        readStep("x", "o3"), // x's copy again: not overwritten by y's
      ],
    },
    { x: x.buffer, y: y.buffer, ...Object.fromEntries(outs.map((o, i) => [`o${i}`, o.buffer])) },
    { x: n, y: n },
  );
  const doubled = xs.map((v) => 2 * v);
  const got = await Promise.all(outs.map((o) => o.data()));
  const mismatches = (a: Float32Array, b: Float32Array) => a.reduce((k, v, i) => k + (v === b[i] ? 0 : 1), 0);
  assert.equal(mismatches(got[0], xs), 0, "first read");
  assert.equal(mismatches(got[1], doubled), 0, "read after the write");
  assert.equal(mismatches(got[2], ys), 0, "second buffer");
  assert.equal(mismatches(got[3], doubled), 0, "first buffer again");
  ops.dispose([x, y, ...outs]);
});

// Steps that declare the range they write (KernelStep.writeRanges) leave a held texture copy valid elsewhere:
// later reads copy only the stale ranges, and reads further into the buffer extend the copy. A step that
// writes outside its declared range shows it: its change stays invisible to later texture reads.
Deno.test("a held texture copy is refreshed only in the ranges steps declare they write, and grows with longer reads", async () => {
  const n = TEXTURE_WIDTH * 4 * 3 + 40; // three full texture rows and a partial one
  const m = TEXTURE_WIDTH * 4 + 20; // the first read stops inside the second row
  const xs = randomArray(n, 17), ys = randomArray(n, 18);
  const [x, y] = [ops.tensor(xs, [n]), ops.tensor(ys, [n])];
  const outs = [0, 1, 2, 3].map(() => ops.zeros([n]));
  const header = `struct P { n: u32, a: u32, b: u32, pad: u32 }
@group(0) @binding(0) var<uniform> u: P;`;
  const entry =
    "@compute @workgroup_size(64)\nfn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32)";
  const index = `let i = (wg.x + wg.y * nwg.x) * 64u + lid;
  if (i < u.a || i >= u.b) { return; }`;
  const read = {
    key: "test:texture-read-range",
    code: `${header}
@group(0) @binding(1) var src: texture_2d<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
${entry} {
  ${index}
  let texel = i / 4u;
  dst[i] = textureLoad(src, vec2<u32>(texel % ${TEXTURE_WIDTH}u, texel / ${TEXTURE_WIDTH}u), 0)[i % 4u];
}`,
  };
  const addOne = {
    key: "test:add-one-range",
    code: `${header}
@group(0) @binding(1) var<storage, read_write> v: array<f32>;
${entry} {
  ${index}
  v[i] = v[i] + 1.0;
}`,
  };
  const grid = foldWorkgroups(Math.ceil(n / 64));
  const u = (a: number, b: number) => new Uint32Array([n, a, b, 0]).buffer;
  const readStep = (src: string, dst: string, a: number, b: number) => ({
    kernel: read,
    uniforms: u(a, b),
    buffers: [src, dst],
    writes: [dst],
    textures: [src],
    workgroups: grid,
  });
  const addStep = (a: number, b: number, declared: [number, number]) => ({
    kernel: addOne,
    uniforms: u(a, b),
    buffers: ["x"],
    writes: ["x"],
    writeRanges: { x: declared },
    workgroups: grid,
  });
  const [w0, w1] = [TEXTURE_WIDTH * 4 - 6, TEXTURE_WIDTH * 4 + 9]; // across a row boundary, unaligned
  const [s0, s1] = [TEXTURE_WIDTH * 8 + 3, TEXTURE_WIDTH * 8 + 50];
  testEngine.runPlan(
    {
      outSize: n,
      scratch: {},
      steps: [
        readStep("x", "o0", 0, m),
        addStep(w0, w1, [w0, w1]),
        readStep("x1", "o1", 0, n), // the same buffer under another name: longer, after a declared write
        addStep(s0, s1, [0, 4]), // writes outside what it declares
        readStep("x1", "o2", 0, n),
        readStep("y", "o3", 100, 200), // a read of a range only (a single reader: not held)
      ],
    },
    {
      x: x.buffer,
      x1: x.buffer,
      y: y.buffer,
      ...Object.fromEntries(outs.map((o, i) => [`o${i}`, o.buffer])),
    },
    { x: m, x1: n, y: [100, 200] },
  );
  const got = await Promise.all(outs.map((o) => o.data()));
  const added = xs.map((v, i) => (i >= w0 && i < w1 ? v + 1 : v));
  const bad = (a: Float32Array, b: Float32Array, from: number, to: number) => {
    let k = 0;
    for (let i = from; i < to; i++) if (a[i] !== b[i]) k++;
    return k;
  };
  assert.equal(bad(got[0], xs, 0, m), 0, "first read");
  assert.equal(bad(got[1], added, 0, n), 0, "after a declared write, extended to the whole buffer");
  assert.equal(bad(got[2], added, 0, n), 0, "an undeclared write is not copied again");
  assert.equal(bad(got[3], ys, 100, 200), 0, "a range read");
  const now = await x.data();
  assert.equal(bad(now, added, s0, s1), s1 - s0, "the buffer itself did change");
  ops.dispose([x, y, ...outs]);
});

Deno.test("collectPipelines lists a forward's new pipelines without running it; compilePipelines builds them", async () => {
  const e = testEngine;
  // A conv shape no other test uses (odd channel counts give their own register blocks).
  const x = ops.tensor(randomArray(2 * 5 * 12 * 16, 41), [2, 5, 12, 16]);
  const w = ops.tensor(randomArray(3 * 5 * 9, 42), [3, 5, 3, 3]);
  const b = ops.tensor(randomArray(3, 43), [3]);
  const run = () => ops.relu(ops.conv2d(x, w, b, { padding: 1 }));
  const before = e.pipelineStats().pipelines;
  const dispatches = e.dispatchCount;
  const requests = e.collectPipelines(() => ops.tidy(() => run().dispose()));
  assert.ok(requests.length > 0, "nothing to compile: the test would prove nothing");
  assert.equal(e.dispatchCount, dispatches, "collecting recorded dispatches");
  assert.equal(e.pipelineStats().pipelines, before, "collecting created pipelines");
  const progress: number[] = [];
  const batches: string[] = [];
  const previous = e.onPipelineCompile;
  e.onPipelineCompile = (info) => info.batch && batches.push(`${info.batch.done}/${info.batch.total}`);
  try {
    await e.compilePipelines(requests, (done) => progress.push(done));
  } finally {
    e.onPipelineCompile = previous;
  }
  assert.equal(e.pipelineStats().pipelines, before + requests.length);
  assert.deepEqual(progress, [...Array(requests.length + 1).keys()]);
  assert.equal(batches.length, requests.length);
  // The real run needs nothing more, and computes the right values.
  const y = run();
  assert.equal(e.pipelineStats().pipelines, before + requests.length, "the run compiled a pipeline");
  const got = await y.data();
  const xs = await x.data(), ws = await w.data(), bs = await b.data();
  const [n, o, h, c] = [1, 2, 5, 3]; // one sampled output
  let want = bs[o];
  for (let ci = 0; ci < 5; ci++) {
    for (let r = 0; r < 3; r++) {
      for (let q = 0; q < 3; q++) {
        const ih = h + r - 1, iw = c + q - 1;
        if (ih < 0 || ih >= 12 || iw < 0 || iw >= 16) continue;
        want += xs[((n * 5 + ci) * 12 + ih) * 16 + iw] * ws[((o * 5 + ci) * 3 + r) * 3 + q];
      }
    }
  }
  assert.ok(Math.abs(got[((n * 3 + o) * 12 + h) * 16 + c] - Math.max(0, want)) < 1e-5);
  ops.dispose([x, w, b, y]);
});

Deno.test("compilePipelines clears the dry run's new buffers only while free: never one a tensor took since", async () => {
  const e = testEngine;
  const n = 150_001; // a buffer bucket (640 KiB) no other test of this file allocates
  const x = ops.tensor(randomArray(n, 61), [n]);
  const run = () => ops.map("a * 0.75 + 0.03125", [x]); // an expression of this test only: a new pipeline
  const created = e.pool.stats().created;
  const requests = e.collectPipelines(() => ops.tidy(() => run().dispose()));
  assert.ok(requests.length > 0, "nothing to compile: the test would prove nothing");
  assert.ok(e.pool.stats().created > created, "the dry run created no buffer: the test would prove nothing");
  // The dry run's output buffer is free again, and a tensor of its size takes it before the pipelines are built.
  const data = randomArray(n, 62);
  const before = e.pool.stats().created;
  const held = ops.tensor(data, [n]);
  assert.equal(e.pool.stats().created, before, "the tensor got a new buffer: the test would prove nothing");
  await e.compilePipelines(requests);
  const got = await held.data();
  assert.equal(got.findIndex((v, i) => v !== data[i]), -1, "a held tensor's buffer was cleared");
  const y = run();
  const [xs, ys] = [await x.data(), await y.data()];
  assert.ok(ys.every((v, i) => Math.abs(v - (xs[i] * 0.75 + 0.03125)) < 1e-6));
  ops.dispose([x, held, y]);
});

Deno.test("the dry run takes the operand textures the real run will; compilePipelines leaves their use right", async () => {
  const e = testEngine;
  // A convolution of this test's own shape: its input texture (27 rows) a size no other test of this file pools.
  const [C, O, H, W] = [9, 8, 150, 160];
  const xs = randomArray(C * H * W, 63), ws = randomArray(O * C * 9, 64);
  const x = ops.tensor(xs, [1, C, H, W]), w = ops.tensor(ws, [O, C, 3, 3]);
  const run = () => ops.conv2d(x, w, null, { padding: 1 });
  const before = e.memory().textureBytes;
  const requests = e.collectPipelines(() => ops.tidy(() => run().dispose()));
  assert.ok(requests.length > 0, "nothing to compile: the test would prove nothing");
  const taken = e.memory().textureBytes;
  assert.ok(taken > before, "the dry run created no operand texture");
  await e.compilePipelines(requests);
  const y = run();
  assert.equal(e.memory().textureBytes, taken, "the real run created textures the dry run did not");
  const got = await y.data();
  const want = new Float32Array(O * H * W);
  for (let o = 0; o < O; o++) {
    for (let i = 0; i < H; i++) {
      for (let j = 0; j < W; j++) {
        let acc = 0;
        for (let c = 0; c < C; c++) {
          for (let r = 0; r < 3; r++) {
            for (let q = 0; q < 3; q++) {
              const [ii, jj] = [i + r - 1, j + q - 1];
              if (ii >= 0 && ii < H && jj >= 0 && jj < W) {
                acc += xs[(c * H + ii) * W + jj] * ws[((o * C + c) * 3 + r) * 3 + q];
              }
            }
          }
        }
        want[(o * H + i) * W + j] = acc;
      }
    }
  }
  assert.ok(relativeError(got, want) < 1e-5, `relative error ${relativeError(got, want)}`);
  ops.dispose([x, w, y]);
});

Deno.test("compilePipelines shares a batch with helper threads on lazily compiling drivers; values stay right", async () => {
  const e = testEngine;
  // Convolutions no other test compiles (their own channel counts), so the batch is new to this process.
  const x = ops.tensor(randomArray(1 * 7 * 8 * 16, 51), [1, 7, 8, 16]);
  const w = ops.tensor(randomArray(6 * 7 * 9, 52), [6, 7, 3, 3]);
  const w1 = ops.tensor(randomArray(5 * 6, 53), [5, 6, 1, 1]);
  // Element-wise expressions of this test only: more new pipelines than helpers.
  const run = () =>
    ops.map("a * 0.5 - 0.0625", [
      ops.conv2d(ops.map("max(a, 0.0) * 1.5 + 0.125", [ops.conv2d(x, w, null, { padding: 1 })]), w1),
    ]);
  // Enough further new pipelines (distinct expressions) that this thread is still busy when a helper thread
  // is up (about a second): otherwise it can finish the batch alone, and the helper check would be a race.
  // A constant of this run's own keeps them out of the shader cache: hits take this thread 10-30 ms each.
  const nonce = 1 + (Date.now() % 1_000_000) / 2 ** 21;
  const extra = () => {
    for (let i = 1; i <= 64; i++) ops.map(`a * ${1 + i / 1024} + ${nonce + i / 4096}`, [x]).dispose();
  };
  const requests = e.collectPipelines(() => ops.tidy(() => (run().dispose(), extra())));
  assert.ok(requests.length >= 64, `only ${requests.length} new pipelines: the test would prove little`);
  const threads = e.compileThreads, missMs = e.cacheMissMs;
  const before = e.pipelineStats();
  e.compileThreads = e.compilesAtFirstDispatch ? 3 : 1;
  e.cacheMissMs = 0; // every first dispatch counts as a cache miss: helpers start after the first pipeline
  const progress: number[] = [];
  try {
    await e.compilePipelines(requests, (done) => progress.push(done));
  } finally {
    e.compileThreads = threads;
    e.cacheMissMs = missMs;
  }
  const after = e.pipelineStats();
  assert.equal(after.pipelines, before.pipelines + requests.length);
  assert.deepEqual(progress, [...Array(requests.length + 1).keys()]);
  if (e.compilesAtFirstDispatch) {
    assert.ok(after.helperCompiled > before.helperCompiled, "no pipeline came from a helper thread");
  }
  const y = run();
  assert.equal(e.pipelineStats().pipelines, after.pipelines, "the run compiled a pipeline");
  // Dense reference of the two convolutions.
  const xs = await x.data(), ws = await w.data(), w1s = await w1.data(), got = await y.data();
  const hidden = new Float32Array(6 * 8 * 16);
  for (let o = 0; o < 6; o++) {
    for (let h = 0; h < 8; h++) {
      for (let c = 0; c < 16; c++) {
        let v = 0;
        for (let ci = 0; ci < 7; ci++) {
          for (let r = 0; r < 3; r++) {
            for (let q = 0; q < 3; q++) {
              const ih = h + r - 1, iw = c + q - 1;
              if (ih >= 0 && ih < 8 && iw >= 0 && iw < 16) {
                v += xs[(ci * 8 + ih) * 16 + iw] * ws[((o * 7 + ci) * 3 + r) * 3 + q];
              }
            }
          }
        }
        hidden[(o * 8 + h) * 16 + c] = Math.max(0, v) * 1.5 + 0.125;
      }
    }
  }
  let worst = 0;
  for (let o = 0; o < 5; o++) {
    for (let p = 0; p < 8 * 16; p++) {
      let v = 0;
      for (let ci = 0; ci < 6; ci++) v += hidden[ci * 128 + p] * w1s[o * 6 + ci];
      worst = Math.max(worst, Math.abs(got[o * 128 + p] - (v * 0.5 - 0.0625)));
    }
  }
  assert.ok(worst < 1e-4, `max error ${worst}`);
  ops.dispose([x, w, w1, y]);
});

Deno.test("compilePipelines starts no helper thread while first dispatches are shader-cache hits", async () => {
  const e = testEngine;
  const x = ops.tensor(randomArray(64, 57), [64]);
  const requests = e.collectPipelines(() =>
    ops.tidy(() => {
      for (let i = 1; i <= 16; i++) ops.map(`a * ${2 + i / 1024} - ${i / 4096}`, [x]);
    })
  );
  assert.equal(requests.length, 16);
  const threads = e.compileThreads, missMs = e.cacheMissMs;
  const before = e.pipelineStats();
  e.compileThreads = e.compilesAtFirstDispatch ? 3 : 1;
  e.cacheMissMs = Infinity; // no first dispatch counts as a miss
  try {
    await e.compilePipelines(requests);
  } finally {
    e.compileThreads = threads;
    e.cacheMissMs = missMs;
  }
  const after = e.pipelineStats();
  assert.equal(after.pipelines, before.pipelines + 16);
  assert.equal(after.helperCompiled, before.helperCompiled, "a helper thread compiled");
  const y = ops.map("a * 2.0009765625 - 0.000244140625", [x]);
  assert.equal(e.pipelineStats().pipelines, after.pipelines, "the run compiled a pipeline");
  const xs = await x.data(), got = await y.data();
  for (let i = 0; i < 64; i++) assert.ok(Math.abs(got[i] - (xs[i] * 2.0009765625 - 0.000244140625)) < 1e-6);
  ops.dispose([x, y]);
});

Deno.test("packed convolution weights are reused until the weights change (write, copy, dispatch, dispose)", async () => {
  const x = ops.tensor(randomArray(2 * 5 * 8 * 12, 31), [2, 5, 8, 12]);
  const w = ops.tensor(randomArray(6 * 5 * 9, 32, -0.5, 0.5), [6, 5, 3, 3]);
  const convOf = (weight: ops.Tensor) => ops.noGrad(() => ops.conv2d(x, weight, null, { padding: 1 }));
  const expectConvOf = async (data: Float32Array, why: string) => {
    const fresh = ops.tensor(data, w.shape);
    const [got, want] = [convOf(w), convOf(fresh)];
    assert.deepEqual(await got.data(), await want.data(), why);
    ops.dispose([got, want, fresh]);
  };
  ops.dispose([convOf(w)]);
  const derived = testEngine.memory().derivedBuffers;
  assert.ok(derived >= 1, "the forward's packed weights are kept");
  const before = testEngine.dispatchCount;
  ops.dispose([convOf(w)]);
  const again = testEngine.dispatchCount - before;
  const fresh = ops.tensor(await w.data(), w.shape);
  const before2 = testEngine.dispatchCount;
  ops.dispose([convOf(fresh), fresh]);
  assert.equal(again, testEngine.dispatchCount - before2 - 1, "a second call does not pack again");

  // Written by an upload: the next call packs the new values.
  const uploaded = randomArray(w.size, 33, -0.5, 0.5);
  testEngine.write(w.buffer, 0, uploaded);
  await expectConvOf(uploaded, "after an upload");
  // Written by a copy.
  const copied = randomArray(w.size, 34, -0.5, 0.5);
  const source = ops.tensor(copied, w.shape);
  testEngine.copy(source.buffer, 0, w.buffer, 0, w.size * 4);
  source.dispose();
  await expectConvOf(copied, "after a copy");
  // Written by a dispatch (an optimizer step).
  w.requiresGrad = true;
  const sgd = new ops.SGD([w], { lr: 0.5 });
  const grad = randomArray(w.size, 35);
  w.grad = ops.tensor(grad, w.shape);
  sgd.step();
  const stepped = await w.data();
  stepped.forEach((v, i) => assert.ok(Math.abs(v - (copied[i] - 0.5 * grad[i])) < 1e-6));
  await expectConvOf(stepped, "after an optimizer step");
  sgd.zeroGrad();
  w.dispose();
  x.dispose();
  assert.equal(
    testEngine.memory().derivedBuffers,
    0,
    "disposing the weights releases what was derived from them",
  );
});

Deno.test("after an optimizer step, packed weights are refilled in batches of up to 8 dispatches; values stay right", async () => {
  const x = ops.tensor(randomArray(2 * 5 * 8 * 12, 61), [2, 5, 8, 12]);
  // Ten weights of two shapes: a batch of 8 and one of 2.
  const ws = Array.from({ length: 10 }, (_, i) => {
    const w = ops.tensor(randomArray(6 * 5 * (i % 2 ? 1 : 9), 62 + i, -0.5, 0.5), [
      6,
      5,
      i % 2 ? 1 : 3,
      i % 2 ? 1 : 3,
    ]);
    w.requiresGrad = true;
    return w;
  });
  const convOf = (w: ops.Tensor) => ops.noGrad(() => ops.conv2d(x, w, null, { padding: w.shape[2] >> 1 }));
  const forward = () => {
    const before = testEngine.dispatchCount;
    ops.dispose(ws.map(convOf));
    return testEngine.dispatchCount - before;
  };
  const first = forward(); // packs each weight on its own
  assert.equal(forward(), first - 10, "a second forward packs nothing");
  const sgd = new ops.SGD(ws, { lr: 0.25 });
  for (const [i, w] of ws.entries()) w.grad = ops.tensor(randomArray(w.size, 80 + i), w.shape);
  sgd.step();
  assert.equal(forward(), first - 10 + 2, "the ten packs run as two dispatches");
  for (const w of ws) {
    const fresh = ops.tensor(await w.data(), w.shape);
    const [got, want] = [convOf(w), convOf(fresh)];
    assert.deepEqual(await got.data(), await want.data());
    ops.dispose([got, want, fresh]);
  }
  sgd.zeroGrad();
  ops.dispose([x, ...ws]);
  assert.equal(
    testEngine.memory().derivedBuffers,
    0,
    "disposed weights leave no packed copies, stale or not",
  );
});

Deno.test("bind groups are reused for the same bindings, and dispatches still read the buffers' new values", async () => {
  const kernel = {
    key: "test-double",
    code: `@group(0) @binding(0) var<uniform> u: vec4u;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3u) {
  if (id.x < u.x) { dst[id.x] = 2.0 * src[id.x]; }
}`,
  };
  const dev = testEngine.device;
  const create = dev.createBindGroup.bind(dev);
  let created = 0;
  dev.createBindGroup = (d: GPUBindGroupDescriptor) => (created++, create(d));
  try {
    const src = ops.tensor(randomArray(256, 51), [256]);
    const dst = ops.zeros([256]);
    const run = () =>
      testEngine.dispatch(
        kernel,
        new Uint32Array([256, 0, 0, 0]).buffer,
        [{ buffer: src.buffer }, {
          buffer: dst.buffer,
        }],
        ["r", "w"],
        [4, 1, 1],
      );
    run();
    assert.equal(created, 1);
    const values = randomArray(256, 52);
    testEngine.write(src.buffer, 0, values);
    run();
    assert.equal(created, 1, "the same bindings reuse the bind group");
    (await dst.data()).forEach((v, i) => assert.equal(v, 2 * values[i]));
    ops.dispose([src, dst]);
  } finally {
    dev.createBindGroup = create;
  }
});

Deno.test("after a GPU error, packed weights whose packing was in the failed submission are packed again", async () => {
  const x = ops.tensor(randomArray(2 * 5 * 8 * 12, 54), [2, 5, 8, 12]);
  const w = ops.tensor(randomArray(6 * 5 * 9, 55, -0.5, 0.5), [6, 5, 3, 3]);
  const convOf = (weight: ops.Tensor) => ops.noGrad(() => ops.conv2d(x, weight, null, { padding: 1 }));
  await testEngine.sync();
  const bad = ops.map("a +* b", [x, x]); // invalid WGSL: the whole submission fails
  const lost = convOf(w); // packs w in the same submission
  await assert.rejects(testEngine.sync());
  const fresh = ops.tensor(await w.data(), w.shape);
  const [got, want] = [convOf(w), convOf(fresh)];
  assert.deepEqual(await got.data(), await want.data());
  ops.dispose([bad, lost, got, want, fresh, x, w]);
});

Deno.test("NoAdapterError is a user error (one line from the CLI) that says how to get an adapter", () => {
  const e = new ops.NoAdapterError("navigator.gpu is not available in this runtime");
  assert.ok(e instanceof UserError);
  assert.equal(e.name, "NoAdapterError");
  assert.match(e.message, /^no WebGPU adapter found \(navigator\.gpu is not available in this runtime\): /);
  assert.match(e.message, /apt-get install -y mesa-vulkan-drivers libvulkan1/);
  assert.ok(!e.message.includes("\n"));
});

Deno.test("weight-gradient reductions wait for their first use and run batched; values, writes and releases stay right", async () => {
  const x = ops.tensor(randomArray(2 * 5 * 32 * 32, 91), [2, 5, 32, 32]);
  const r = ops.tensor(randomArray(2 * 4 * 32 * 32, 92), [2, 4, 32, 32]);
  const params = Array.from({ length: 12 }, (_, i) => {
    const w = ops.tensor(randomArray(4 * 5 * 9, 93 + i, -0.5, 0.5), [4, 5, 3, 3]);
    const b = ops.tensor(randomArray(4, 120 + i), [4]);
    w.requiresGrad = b.requiresGrad = true;
    return { w, b };
  });
  const all = params.flatMap((p) => [p.w, p.b]);
  const backward = () =>
    ops.tidy(() => {
      let loss = ops.tensor([0], [1]);
      for (const { w, b } of params) {
        loss = ops.add(loss, ops.sum(ops.mul(ops.conv2d(x, w, b, { padding: 1 }), r)));
      }
      ops.backward(ops.sum(loss));
    });
  const clear = () => {
    for (const p of all) {
      p.grad?.dispose();
      p.grad = null;
    }
  };
  const read = () => Promise.all(all.map((p) => p.grad!.data()));
  // Reference: the unfused path, whose reductions run at once (no bias gradient in the weight gradient).
  ops.setFusion(false);
  backward();
  const want = await read();
  clear();
  ops.setFusion(true);

  backward();
  const before = testEngine.dispatchCount;
  const got = await read(); // the first read runs all twelve reductions
  const size = Math.min(16, Math.floor(testEngine.device.limits.maxStorageBuffersPerShaderStage / 3));
  assert.equal(testEngine.dispatchCount - before, Math.ceil(12 / size), "twelve reductions, batched");
  for (const [i, g] of got.entries()) {
    const err = relativeError(g, want[i]);
    assert.ok(err <= 1e-5, `gradient ${i}: relative error ${err}`);
  }
  clear();

  // A write to a pending gradient runs the reductions first, so they do not overwrite it afterwards.
  backward();
  const ones = ops.tensor(new Float32Array(4 * 5 * 9).fill(1), [4, 5, 3, 3]);
  testEngine.copy(ones.buffer, 0, params[3].w.grad!.buffer, 0, ones.size * 4);
  assert.deepEqual([...await params[3].w.grad!.data()], [...await ones.data()]);
  assert.ok(relativeError(await params[4].w.grad!.data(), want[8]) <= 1e-5, "the others are right");
  clear();

  // Releasing pending gradients unread runs (or drops) their reductions and returns their scratch.
  await testEngine.sync();
  const live = testEngine.memory().liveBuffers;
  backward();
  clear();
  await testEngine.sync();
  assert.equal(testEngine.memory().liveBuffers, live, "no scratch left behind");
  ops.dispose([x, r, ones, ...all]);
});
