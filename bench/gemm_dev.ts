/// <reference types="@webgpu/types" />
/**
 * Dev harness for the GEMM / implicit-GEMM conv kernel plans: runs plans on raw WebGPU (no engine), checks
 * them against float64 CPU references (odd shapes exhaustively, big shapes by sampling), and times them.
 *
 * Usage: deno run -A --unstable-webgpu bench/gemm_dev.ts [--check] [--bench] [--quick]
 * Prints one JSON object per line.
 *
 * @module
 */

import type { KernelPlan } from "../wgsl/plan.ts";
import { matmulPlan, type MatmulShape } from "../wgsl/matmul.ts";
import {
  conv2dForwardPlan,
  conv2dInputGradPlan,
  type Conv2dShape,
  conv2dWeightGradPlan,
} from "../wgsl/conv2d.ts";

const adapter = await navigator.gpu.requestAdapter();
if (!adapter) throw new Error("no WebGPU adapter");
const device = await adapter.requestDevice({
  requiredLimits: {
    maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize,
    maxBufferSize: adapter.limits.maxBufferSize,
    maxTextureDimension2D: adapter.limits.maxTextureDimension2D,
  },
});
device.addEventListener("uncapturederror", (e) => {
  console.error("WebGPU error:", (e as GPUUncapturedErrorEvent).error.message);
  Deno.exit(1);
});

const pipelines = new Map<string, { pipeline: GPUComputePipeline; layout: GPUBindGroupLayout }>();

function pipelineFor(step: KernelPlan["steps"][number]) {
  const cacheKey = `${step.kernel.key}|${
    step.buffers.map((b) => step.textures?.includes(b) ? "t" : step.writes.includes(b) ? "w" : "r").join("")
  }`;
  let entry = pipelines.get(cacheKey);
  if (!entry) {
    const layout = device.createBindGroupLayout({
      entries: [
        {
          binding: 0,
          visibility: GPUShaderStage.COMPUTE,
          buffer: { type: "uniform", hasDynamicOffset: true },
        },
        ...step.buffers.map((name, i) =>
          step.textures?.includes(name)
            ? {
              binding: i + 1,
              visibility: GPUShaderStage.COMPUTE,
              texture: { sampleType: "unfilterable-float" } as GPUTextureBindingLayout,
            }
            : {
              binding: i + 1,
              visibility: GPUShaderStage.COMPUTE,
              buffer: {
                type: step.writes.includes(name) ? "storage" : "read-only-storage",
              } as GPUBufferBindingLayout,
            }
        ),
      ],
    });
    const module = device.createShaderModule({ code: step.kernel.code });
    const pipeline = device.createComputePipeline({
      layout: device.createPipelineLayout({ bindGroupLayouts: [layout] }),
      compute: { module, entryPoint: "main" },
    });
    entry = { pipeline, layout };
    pipelines.set(cacheKey, entry);
  }
  return entry;
}

function storageBuffer(elems: number): GPUBuffer {
  return device.createBuffer({
    size: Math.max(16, Math.ceil(elems * 4 / 16) * 16),
    usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
  });
}

/** A plan bound to concrete buffers, ready to encode any number of times. */
interface BoundPlan {
  encode(enc: GPUCommandEncoder): void;
  out: GPUBuffer;
  destroy(): void;
}

const TEXTURE_WIDTH = 2048;

/** An rgba32float texture laid out like the engine's (value i at texel i / 4 of 2,048-texel rows), with the
 * copy that fills it from `buffer`. */
function textureFor(buffer: GPUBuffer, floats: number) {
  const texels = Math.max(1, Math.ceil(floats / 4));
  const rows = Math.ceil(texels / TEXTURE_WIDTH);
  const texture = device.createTexture({
    size: [TEXTURE_WIDTH, rows],
    format: "rgba32float",
    usage: GPUTextureUsage.TEXTURE_BINDING | GPUTextureUsage.COPY_DST,
  });
  const fullRows = Math.floor(texels / TEXTURE_WIDTH);
  const rest = texels - fullRows * TEXTURE_WIDTH;
  const rowBytes = TEXTURE_WIDTH * 16;
  return {
    texture,
    copy(enc: GPUCommandEncoder) {
      if (fullRows > 0) {
        enc.copyBufferToTexture({ buffer, bytesPerRow: rowBytes }, { texture }, [TEXTURE_WIDTH, fullRows]);
      }
      if (rest > 0) {
        enc.copyBufferToTexture(
          { buffer, offset: fullRows * rowBytes, bytesPerRow: rowBytes },
          { texture, origin: [0, fullRows] },
          [rest, 1],
        );
      }
    },
  };
}

function bindPlan(
  plan: KernelPlan,
  inputs: Record<string, GPUBuffer>,
  sizes: Record<string, number> = {},
): BoundPlan {
  const owned: GPUBuffer[] = [];
  const textures: GPUTexture[] = [];
  const buffers: Record<string, GPUBuffer> = { ...inputs };
  buffers.out = storageBuffer(plan.outSize);
  owned.push(buffers.out);
  for (const [name, elems] of Object.entries(plan.scratch)) {
    buffers[name] = storageBuffer(elems);
    owned.push(buffers[name]);
  }
  const floats: Record<string, number> = { ...sizes, ...plan.scratch, out: plan.outSize };
  const passes = plan.steps.map((step) => {
    const copies = (step.textures ?? []).map((name) => {
      if (!buffers[name]) throw new Error(`plan names unknown buffer ${name}`);
      const t = textureFor(buffers[name], floats[name] ?? buffers[name].size / 4);
      textures.push(t.texture);
      return { name, ...t };
    });
    const { pipeline, layout } = pipelineFor(step);
    const ubuf = device.createBuffer({ size: 256, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
    device.queue.writeBuffer(ubuf, 0, step.uniforms);
    owned.push(ubuf);
    const bindGroup = device.createBindGroup({
      layout,
      entries: [
        { binding: 0, resource: { buffer: ubuf, size: 256 } },
        ...step.buffers.map((name, i) => {
          if (!buffers[name]) throw new Error(`plan names unknown buffer ${name}`);
          const tex = copies.find((c) => c.name === name);
          return { binding: i + 1, resource: tex ? tex.texture.createView() : { buffer: buffers[name] } };
        }),
      ],
    });
    return { pipeline, bindGroup, workgroups: step.workgroups, copies };
  });
  return {
    out: buffers.out,
    encode(enc) {
      for (const p of passes) {
        for (const c of p.copies) c.copy(enc);
        const pass = enc.beginComputePass();
        pass.setPipeline(p.pipeline);
        pass.setBindGroup(0, p.bindGroup, [0]);
        pass.dispatchWorkgroups(...p.workgroups);
        pass.end();
      }
    },
    destroy() {
      for (const b of owned) b.destroy();
      for (const t of textures) t.destroy();
    },
  };
}

function upload(data: Float32Array): GPUBuffer {
  const buf = storageBuffer(data.length);
  if (data.length) device.queue.writeBuffer(buf, 0, data); // Deno panics on empty writes
  return buf;
}

async function readback(buf: GPUBuffer, elems: number): Promise<Float32Array> {
  const staging = device.createBuffer({
    size: Math.max(16, Math.ceil(elems * 4 / 16) * 16),
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  const enc = device.createCommandEncoder();
  enc.copyBufferToBuffer(buf, 0, staging, 0, staging.size);
  device.queue.submit([enc.finish()]);
  await staging.mapAsync(GPUMapMode.READ);
  const out = new Float32Array(staging.getMappedRange().slice(0, elems * 4));
  staging.unmap();
  staging.destroy();
  return out;
}

/** Runs a plan once on host data; the output is pre-filled with NaN so unwritten elements show. */
export async function runPlan(plan: KernelPlan, inputs: Record<string, Float32Array>): Promise<Float32Array> {
  const gpuInputs: Record<string, GPUBuffer> = {};
  const sizes: Record<string, number> = {};
  for (const [name, data] of Object.entries(inputs)) {
    gpuInputs[name] = upload(data);
    sizes[name] = data.length;
  }
  const bound = bindPlan(plan, gpuInputs, sizes);
  device.queue.writeBuffer(bound.out, 0, new Float32Array(plan.outSize).fill(NaN));
  const enc = device.createCommandEncoder();
  bound.encode(enc);
  device.queue.submit([enc.finish()]);
  const out = await readback(bound.out, plan.outSize);
  bound.destroy();
  for (const b of Object.values(gpuInputs)) b.destroy();
  return out;
}

/** Median seconds per plan execution, `reps` executions per submit. */
export async function timePlan(
  plan: KernelPlan,
  inputs: Record<string, Float32Array>,
  reps: number,
  runs: number,
): Promise<number> {
  const gpuInputs: Record<string, GPUBuffer> = {};
  const sizes: Record<string, number> = {};
  for (const [name, data] of Object.entries(inputs)) {
    gpuInputs[name] = upload(data);
    sizes[name] = data.length;
  }
  const bound = bindPlan(plan, gpuInputs, sizes);
  const once = async () => {
    const enc = device.createCommandEncoder();
    for (let r = 0; r < reps; r++) bound.encode(enc);
    const t0 = performance.now();
    device.queue.submit([enc.finish()]);
    await device.queue.onSubmittedWorkDone();
    return (performance.now() - t0) / 1000 / reps;
  };
  await once(); // warm-up: compiles and faults in memory
  const times: number[] = [];
  for (let r = 0; r < runs; r++) times.push(await once());
  bound.destroy();
  for (const b of Object.values(gpuInputs)) b.destroy();
  times.sort((x, y) => x - y);
  return times[Math.floor(times.length / 2)];
}

// ---------------------------------------------------------------------------------------------------------
// Deterministic data and float64 references.

export function randomData(n: number, seed: number): Float32Array {
  let s = (seed * 2654435761) >>> 0 || 1;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    out[i] = (s / 4294967296) * 2 - 1;
  }
  return out;
}

function matmulRef(p: MatmulShape, a: Float32Array, b: Float32Array, index: number): number {
  const { M, N, K } = p;
  const bi = Math.floor(index / (M * N)), m = Math.floor(index / N) % M, n = index % N;
  const aOff = p.broadcastA ? 0 : bi * M * K, bOff = p.broadcastB ? 0 : bi * K * N;
  let acc = 0;
  for (let k = 0; k < K; k++) {
    const av = p.transA ? a[aOff + k * M + m] : a[aOff + m * K + k];
    const bv = p.transB ? b[bOff + n * K + k] : b[bOff + k * N + n];
    acc += av * bv;
  }
  return acc;
}

function convForwardRef(
  s: Conv2dShape,
  x: Float32Array,
  w: Float32Array,
  bias: Float32Array | undefined,
  index: number,
): number {
  const ow = index % s.Wout, oh = Math.floor(index / s.Wout) % s.Hout;
  const co = Math.floor(index / (s.Wout * s.Hout)) % s.Cout,
    n = Math.floor(index / (s.Wout * s.Hout * s.Cout));
  let acc = bias ? bias[co] : 0;
  for (let ci = 0; ci < s.Cin; ci++) {
    for (let r = 0; r < s.kh; r++) {
      for (let q = 0; q < s.kw; q++) {
        const ih = oh * s.strideH - s.padH + r * s.dilH, iw = ow * s.strideW - s.padW + q * s.dilW;
        if (ih < 0 || ih >= s.H || iw < 0 || iw >= s.W) continue;
        acc += x[((n * s.Cin + ci) * s.H + ih) * s.W + iw] * w[((co * s.Cin + ci) * s.kh + r) * s.kw + q];
      }
    }
  }
  return acc;
}

function convInputGradRef(s: Conv2dShape, dy: Float32Array, w: Float32Array, index: number): number {
  const iw = index % s.W, ih = Math.floor(index / s.W) % s.H;
  const ci = Math.floor(index / (s.W * s.H)) % s.Cin, n = Math.floor(index / (s.W * s.H * s.Cin));
  let acc = 0;
  for (let co = 0; co < s.Cout; co++) {
    for (let r = 0; r < s.kh; r++) {
      for (let q = 0; q < s.kw; q++) {
        const th = ih + s.padH - r * s.dilH, tw = iw + s.padW - q * s.dilW;
        if (th < 0 || tw < 0 || th % s.strideH || tw % s.strideW) continue;
        const oh = th / s.strideH, ow = tw / s.strideW;
        if (oh >= s.Hout || ow >= s.Wout) continue;
        acc += dy[((n * s.Cout + co) * s.Hout + oh) * s.Wout + ow] *
          w[((co * s.Cin + ci) * s.kh + r) * s.kw + q];
      }
    }
  }
  return acc;
}

function convWeightGradRef(s: Conv2dShape, x: Float32Array, dy: Float32Array, index: number): number {
  const q = index % s.kw, r = Math.floor(index / s.kw) % s.kh;
  const ci = Math.floor(index / (s.kw * s.kh)) % s.Cin, co = Math.floor(index / (s.kw * s.kh * s.Cin));
  let acc = 0;
  for (let n = 0; n < s.N; n++) {
    for (let oh = 0; oh < s.Hout; oh++) {
      const ih = oh * s.strideH - s.padH + r * s.dilH;
      if (ih < 0 || ih >= s.H) continue;
      for (let ow = 0; ow < s.Wout; ow++) {
        const iw = ow * s.strideW - s.padW + q * s.dilW;
        if (iw < 0 || iw >= s.W) continue;
        acc += x[((n * s.Cin + ci) * s.H + ih) * s.W + iw] *
          dy[((n * s.Cout + co) * s.Hout + oh) * s.Wout + ow];
      }
    }
  }
  return acc;
}

/** Compares GPU output to the reference at `indices` (all when undefined); tolerance scales with |terms|. */
function compare(
  name: string,
  got: Float32Array,
  ref: (i: number) => number,
  kLen: number,
  indices?: number[],
): boolean {
  const idx = indices ?? Array.from({ length: got.length }, (_, i) => i);
  let maxErr = 0, worst = -1;
  const tol = 1e-5 * Math.max(1, Math.sqrt(kLen)) * 4 + 1e-6 * kLen;
  for (const i of idx) {
    const want = ref(i);
    const err = Math.abs(got[i] - want);
    if (!(err <= tol) && (worst < 0 || !(err <= maxErr))) {
      maxErr = Number.isNaN(err) ? Infinity : err;
      worst = i;
    } else if (err > maxErr) maxErr = err;
  }
  const ok = worst < 0;
  console.log(JSON.stringify({ check: name, ok, checked: idx.length, maxErr, tol, worst }));
  return ok;
}

function sampleIndices(n: number, count: number, seed: number): number[] {
  const r = randomData(count, seed);
  const out = [0, n - 1];
  for (let i = 0; i < count; i++) out.push(Math.min(n - 1, Math.floor((r[i] * 0.5 + 0.5) * n)));
  return out;
}

export function convShape(
  N: number,
  Cin: number,
  H: number,
  W: number,
  Cout: number,
  kh: number,
  kw: number,
  stride: number,
  pad: number,
  dil: number,
): Conv2dShape {
  const Hout = Math.floor((H + 2 * pad - dil * (kh - 1) - 1) / stride) + 1;
  const Wout = Math.floor((W + 2 * pad - dil * (kw - 1) - 1) / stride) + 1;
  return {
    N,
    Cin,
    H,
    W,
    Cout,
    kh,
    kw,
    strideH: stride,
    strideW: stride,
    padH: pad,
    padW: pad,
    dilH: dil,
    dilW: dil,
    Hout,
    Wout,
  };
}

async function checkMatmul(p: MatmulShape, sample?: number): Promise<boolean> {
  const aLen = (p.broadcastA ? 1 : p.batch) * p.M * p.K, bLen = (p.broadcastB ? 1 : p.batch) * p.K * p.N;
  const a = randomData(aLen, 1), b = randomData(bLen, 2);
  const plan = matmulPlan(p);
  const got = await runPlan(plan, { a, b });
  const idx = sample ? sampleIndices(plan.outSize, sample, 3) : undefined;
  return compare(
    `matmul ${JSON.stringify(p)} steps=${plan.steps.length}`,
    got,
    (i) => matmulRef(p, a, b, i),
    p.K,
    idx,
  );
}

async function checkConv(s: Conv2dShape, sample?: number): Promise<boolean> {
  const x = randomData(s.N * s.Cin * s.H * s.W, 4);
  const w = randomData(s.Cout * s.Cin * s.kh * s.kw, 5);
  const dy = randomData(s.N * s.Cout * s.Hout * s.Wout, 6);
  const bias = randomData(s.Cout, 7);
  const tag = `N${s.N} Cin${s.Cin} ${s.H}x${s.W} Cout${s.Cout} k${s.kh}x${s.kw} s${s.strideH},${s.strideW} ` +
    `p${s.padH},${s.padW} d${s.dilH},${s.dilW} out${s.Hout}x${s.Wout}`;
  let ok = true;
  for (const hasBias of [false, true]) {
    const plan = conv2dForwardPlan(s, hasBias);
    const got = await runPlan(plan, hasBias ? { x, w, bias } : { x, w });
    const idx = sample ? sampleIndices(plan.outSize, sample, 8) : undefined;
    ok = compare(
      `conv fwd${hasBias ? "+bias" : ""} ${tag} steps=${plan.steps.length}`,
      got,
      (i) => convForwardRef(s, x, w, hasBias ? bias : undefined, i),
      s.Cin * s.kh * s.kw,
      idx,
    ) && ok;
  }
  {
    const plan = conv2dInputGradPlan(s);
    const got = await runPlan(plan, { dy, w });
    const idx = sample ? sampleIndices(plan.outSize, sample, 9) : undefined;
    ok = compare(
      `conv dx ${tag} steps=${plan.steps.length}`,
      got,
      (i) => convInputGradRef(s, dy, w, i),
      s.Cout * s.kh * s.kw,
      idx,
    ) && ok;
  }
  {
    const plan = conv2dWeightGradPlan(s);
    const got = await runPlan(plan, { x, dy });
    const idx = sample ? sampleIndices(plan.outSize, sample, 10) : undefined;
    ok = compare(
      `conv dw ${tag} steps=${plan.steps.length}`,
      got,
      (i) => convWeightGradRef(s, x, dy, i),
      s.N * s.Hout * s.Wout,
      idx,
    ) && ok;
  }
  return ok;
}

async function checkAll(quick: boolean): Promise<boolean> {
  let ok = true;
  const mm: MatmulShape[] = [
    { batch: 1, M: 33, N: 65, K: 17 },
    { batch: 1, M: 1, N: 1, K: 1 },
    { batch: 1, M: 7, N: 3, K: 0 },
    { batch: 3, M: 33, N: 65, K: 17, transA: true },
    { batch: 3, M: 33, N: 65, K: 17, transB: true },
    { batch: 2, M: 17, N: 9, K: 31, transA: true, transB: true },
    { batch: 4, M: 5, N: 70, K: 13, broadcastA: true },
    { batch: 4, M: 19, N: 6, K: 11, broadcastB: true, transB: true },
    { batch: 1, M: 3, N: 5, K: 70001 }, // long k: split-K + reduce
    { batch: 2, M: 4, N: 300, K: 20000, transA: true }, // crosses the loop cap without splitting
  ];
  for (const p of mm) ok = (await checkMatmul(p)) && ok;
  const conv: Conv2dShape[] = [
    convShape(2, 3, 9, 11, 5, 3, 3, 2, 1, 2),
    convShape(2, 3, 9, 11, 5, 3, 3, 2, 0, 2),
    convShape(2, 3, 9, 11, 5, 5, 5, 1, 2, 1),
    convShape(2, 3, 9, 11, 5, 1, 1, 1, 0, 1),
    convShape(2, 3, 9, 11, 5, 1, 1, 2, 0, 1),
    convShape(2, 3, 10, 12, 5, 3, 3, 2, 1, 1), // stride 2 loses a row/column
    convShape(1, 4, 8, 8, 2, 2, 3, 1, 0, 1),
    { ...convShape(2, 3, 7, 7, 4, 3, 3, 2, 1, 1), H: 8, W: 8 }, // transposed conv with output_padding 1
  ];
  for (const s of conv) ok = (await checkConv(s)) && ok;
  if (!quick) {
    ok = (await checkMatmul({ batch: 1, M: 1024, N: 1024, K: 1024 }, 200)) && ok;
    ok = (await checkConv(convShape(1, 64, 256, 256, 64, 3, 3, 1, 1, 1), 200)) && ok;
    ok = (await checkConv(convShape(2, 16, 128, 96, 8, 5, 5, 1, 2, 1), 100)) && ok;
  }
  console.log(JSON.stringify({ checkAll: ok }));
  return ok;
}

async function benchAll(what: Set<string>): Promise<void> {
  const mmShapes: MatmulShape[] = [
    { batch: 1, M: 1024, N: 1024, K: 1024 },
    { batch: 1, M: 1024, N: 1024, K: 1024, transA: true },
    { batch: 1, M: 1024, N: 1024, K: 1024, transB: true },
  ];
  for (const p of what.has("--conv-only") ? [] : mmShapes) {
    const a = randomData(p.M * p.K, 1), b = randomData(p.K * p.N, 2);
    const sec = await timePlan(matmulPlan(p), { a, b }, 4, 5);
    const gflop = 2 * p.M * p.N * p.K / 1e9;
    console.log(JSON.stringify({ bench: `matmul ${JSON.stringify(p)}`, ms: sec * 1e3, gflops: gflop / sec }));
  }
  if (what.has("--mm-only")) return;
  const s = convShape(1, 64, 256, 256, 64, 3, 3, 1, 1, 1);
  const x = randomData(s.N * s.Cin * s.H * s.W, 4);
  const w = randomData(s.Cout * s.Cin * s.kh * s.kw, 5);
  const dy = randomData(s.N * s.Cout * s.Hout * s.Wout, 6);
  const bias = randomData(s.Cout, 7);
  const gflop = 2 * s.N * s.Cout * s.Hout * s.Wout * s.Cin * s.kh * s.kw / 1e9;
  let total = 0;
  const cases: [string, KernelPlan, Record<string, Float32Array>][] = [
    ["conv fwd+bias", conv2dForwardPlan(s, true), { x, w, bias }],
    ["conv dx", conv2dInputGradPlan(s), { dy, w }],
    ["conv dw", conv2dWeightGradPlan(s), { x, dy }],
  ];
  for (const [name, plan, inputs] of cases) {
    const sec = await timePlan(plan, inputs, 2, 5);
    total += sec;
    console.log(
      JSON.stringify({ bench: `${name} 1x64x256x256 3x3 ->64`, ms: sec * 1e3, gflops: gflop / sec }),
    );
  }
  console.log(JSON.stringify({ bench: "conv fwd+dx+dw total", ms: total * 1e3 }));
}

if (import.meta.main) {
  const args = new Set(Deno.args);
  const doCheck = args.has("--check") || !args.has("--bench");
  const doBench = args.has("--bench") || !args.has("--check");
  let ok = true;
  if (doCheck) ok = await checkAll(args.has("--quick"));
  if (doBench) await benchAll(args);
  if (!ok) Deno.exit(1);
}
