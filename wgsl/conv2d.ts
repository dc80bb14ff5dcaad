/**
 * 2-D convolution (NCHW, weights [Cout, Cin, kh, kw], groups = 1) as implicit GEMM.
 *
 * Stride-1 forward over rows of whole texels (W % 4 == 0): a texture GEMM that reads the NCHW activations
 * directly (see directConvPlan), with only the small weight repack.
 *
 * Main path otherwise (texture GEMM of `gemm.ts`): activations are first repacked into zero-padded NHWC scratch
 * (channels rounded up to 4, so one rgba32f texel = 4 channels of one pixel and the GEMM needs no bounds
 * checks), weights into [out, tap, in4]; both are then read as textures, 4 useful floats per fetch:
 * - forward: rows = output pixels, columns = Cout, k = (tap, ci)
 * - input grad: the same kernel on zero-inserted, padded dy with the flipped, transposed kernel (stride-1
 *   convolution), so strides, dilation, padding and transposed-conv sizes all reduce to it
 * - weight grad: rows = (tap, ci), columns = Cout, k = output pixels (split + reduced)
 *
 * Fallback (operands too large for a texture): the storage-load register-blocked body, where the uniform
 * GEMM operand (A, one address per workgroup) is the spatially gathered tensor and lanes own channels:
 * - forward: rows = output positions (N*Hout*Wout), columns = Cout, k = (Cin, kh, kw)
 * - input grad: rows = input positions (N*H*W), columns = Cin, k = (Cout, kh, kw)
 * - weight grad: rows = (Cin, kh, kw), columns = Cout, k = output positions (split + reduced)
 *
 * Kernel taps are compile-time (unrolled) in the fallback; every other size travels in the uniforms.
 *
 * @module
 */

import {
  gemmBaseUniforms,
  type GemmExtent,
  type GemmHooks,
  gemmKernelCode,
  gemmSchedule,
  type GemmTile,
  MAX_TEXTURE_FLOATS,
  packI32,
  reduceSplitsStep,
  texBaseUniforms,
  texGemmCode,
  type TexGemmSpec,
  texSchedule,
  type TexTile,
  texWorkgroups,
  tileKey,
} from "./gemm.ts";
import { batchedEntry, foldWorkgroups, type KernelPlan, type KernelStep, slotSwitch } from "./plan.ts";

/** Convolution geometry. For the input-gradient plan H and W are the input size to produce. */
export interface Conv2dShape {
  N: number;
  Cin: number;
  H: number;
  W: number;
  Cout: number;
  kh: number;
  kw: number;
  strideH: number;
  strideW: number;
  padH: number;
  padW: number;
  dilH: number;
  dilW: number;
  Hout: number;
  Wout: number;
}

const CONV_PARAMS = [
  "N",
  "Cin",
  "H",
  "W",
  "Cout",
  "Hout",
  "Wout",
  "strideH",
  "strideW",
  "padH",
  "padW",
  "dilH",
  "dilW",
];

function convUniforms(s: Conv2dShape): number[] {
  return [s.N, s.Cin, s.H, s.W, s.Cout, s.Hout, s.Wout, s.strideH, s.strideW, s.padH, s.padW, s.dilH, s.dilW];
}

/**
 * Tile for a conv GEMM whose lanes own `channels` columns. Every load on llvmpipe costs about the same per
 * lane and component, so the register block is large (many FMAs per load) while keeping >= 8 lanes busy.
 */
export function convTile(channels: number, ku: number): GemmTile {
  const tn = Math.max(1, Math.min(8, Math.ceil(channels / 8)));
  let wg = 8;
  while (wg < 64 && wg * tn < channels) wg *= 2;
  return { tm: 32, tn, wg, ku };
}

const range = (n: number) => Array.from({ length: n }, (_, i) => i);

function forwardHooks(s: Conv2dShape, t: GemmTile, hasBias: boolean): GemmHooks {
  const taps = s.kh * s.kw;
  const setup: string[] = ["  let HWout = u.Hout * u.Wout;", "  let HWin = u.H * u.W;"];
  for (const i of range(t.tm)) {
    setup.push(`  let n_${i} = rowc_${i} / HWout;
  let hw_${i} = rowc_${i} % HWout;
  let ihb_${i} = (hw_${i} / u.Wout) * u.strideH - u.padH;
  let iwb_${i} = (hw_${i} % u.Wout) * u.strideW - u.padW;
  let xb_${i} = n_${i} * u.Cin * HWin;`);
    for (const tap of range(taps)) {
      const r = Math.floor(tap / s.kw), q = tap % s.kw;
      setup.push(`  let ih_${i}_${tap} = ihb_${i} + ${r} * u.dilH;
  let iw_${i}_${tap} = iwb_${i} + ${q} * u.dilW;
  let ok_${i}_${tap} = u32(ih_${i}_${tap}) < u32(u.H) && u32(iw_${i}_${tap}) < u32(u.W);
  let off_${i}_${tap} = select(xb_${i}, xb_${i} + ih_${i}_${tap} * u.W + iw_${i}_${tap}, ok_${i}_${tap});`);
    }
  }
  for (const j of range(t.tn)) setup.push(`  let wb_${j} = colc_${j} * u.kLen;`);
  return {
    params: CONV_PARAMS,
    inputs: hasBias ? [{ name: "x" }, { name: "w" }, { name: "bias" }] : [{ name: "x" }, { name: "w" }],
    setup: setup.join("\n"),
    noRemainder: true,
    // k = ci * taps + tap, and the loop runs over ci with taps unrolled, so the tap is compile-time.
    loadA: (i, _st, tap) => `select(0.0, x[off_${i}_${tap} + ko * HWin], ok_${i}_${tap})`,
    loadB: (j, st) => `w[wb_${j} + k_${st}]`,
    outIndex: (i, j) => `(n_${i} * u.Cout + col_${j}) * HWout + hw_${i}`,
    epilogue: hasBias ? (v, _i, j) => `${v} + bias[colc_${j}]` : undefined,
  };
}

function inputGradHooks(s: Conv2dShape, t: GemmTile): GemmHooks {
  const taps = s.kh * s.kw;
  const setup: string[] = ["  let HWout = u.Hout * u.Wout;", "  let HWin = u.H * u.W;"];
  for (const i of range(t.tm)) {
    setup.push(`  let n_${i} = rowc_${i} / HWin;
  let hw_${i} = rowc_${i} % HWin;
  let thb_${i} = hw_${i} / u.W + u.padH;
  let twb_${i} = hw_${i} % u.W + u.padW;
  let yb_${i} = n_${i} * u.Cout * HWout;`);
    for (const tap of range(taps)) {
      const r = Math.floor(tap / s.kw), q = tap % s.kw;
      // Output position (oh, ow) feeding input (ih, iw) through tap (r, q): oh * stride = ih + pad - r * dil.
      setup.push(`  let th_${i}_${tap} = thb_${i} - ${r} * u.dilH;
  let tw_${i}_${tap} = twb_${i} - ${q} * u.dilW;
  let oh_${i}_${tap} = th_${i}_${tap} / u.strideH;
  let ow_${i}_${tap} = tw_${i}_${tap} / u.strideW;
  let ok_${i}_${tap} = th_${i}_${tap} >= 0 && tw_${i}_${tap} >= 0 && oh_${i}_${tap} * u.strideH == th_${i}_${tap} &&
    ow_${i}_${tap} * u.strideW == tw_${i}_${tap} && oh_${i}_${tap} < u.Hout && ow_${i}_${tap} < u.Wout;
  let off_${i}_${tap} = select(yb_${i}, yb_${i} + oh_${i}_${tap} * u.Wout + ow_${i}_${tap}, ok_${i}_${tap});`);
    }
  }
  for (const j of range(t.tn)) setup.push(`  let wb_${j} = colc_${j} * ${taps};`);
  return {
    params: CONV_PARAMS,
    inputs: [{ name: "dy" }, { name: "w" }],
    setup: setup.join("\n"),
    noRemainder: true,
    // k = co * taps + tap; the loop runs over co with taps unrolled.
    loadA: (i, _st, tap) => `select(0.0, dy[off_${i}_${tap} + ko * HWout], ok_${i}_${tap})`,
    loadB: (j, _st, tap) => `w[ko * u.Cin * ${taps} + wb_${j} + ${tap}]`,
    outIndex: (i, j) => `(n_${i} * u.Cin + col_${j}) * HWin + hw_${i}`,
  };
}

function weightGradHooks(s: Conv2dShape, t: GemmTile): GemmHooks {
  const taps = s.kh * s.kw;
  const setup: string[] = ["  let HWout = u.Hout * u.Wout;", "  let HWin = u.H * u.W;"];
  for (const i of range(t.tm)) {
    setup.push(`  let ci_${i} = rowc_${i} / ${taps};
  let tap_${i} = rowc_${i} % ${taps};
  let rdh_${i} = (tap_${i} / ${s.kw}) * u.dilH - u.padH;
  let qdw_${i} = (tap_${i} % ${s.kw}) * u.dilW - u.padW;
  let xc_${i} = ci_${i} * HWin;`);
  }
  for (const j of range(t.tn)) setup.push(`  let yc_${j} = colc_${j} * HWout;`);
  return {
    params: CONV_PARAMS,
    inputs: [{ name: "x" }, { name: "dy" }],
    setup: setup.join("\n"),
    // k = output position; its decomposition is uniform, hence scalar on SIMD backends.
    step: (st) =>
      `    let n_${st} = k_${st} / HWout;
    let hw_${st} = k_${st} % HWout;
    let ohs_${st} = (hw_${st} / u.Wout) * u.strideH;
    let ows_${st} = (hw_${st} % u.Wout) * u.strideW;
    let xn_${st} = n_${st} * u.Cin * HWin;
    let yn_${st} = n_${st} * u.Cout * HWout + hw_${st};` +
      range(t.tm).map((i) => `
    let ih_${st}_${i} = ohs_${st} + rdh_${i};
    let iw_${st}_${i} = ows_${st} + qdw_${i};
    let ok_${st}_${i} = (u32(ih_${st}_${i}) < u32(u.H)) & (u32(iw_${st}_${i}) < u32(u.W));`).join(""),
    loadA: (i, st) =>
      `select(0.0, x[select(0, xn_${st} + xc_${i} + ih_${st}_${i} * u.W + iw_${st}_${i}, ok_${st}_${i})], ok_${st}_${i})`,
    loadB: (j, st) => `dy[yn_${st} + yc_${j}]`,
    outIndex: (i, j) => `col_${j} * u.rows + row_${i}`,
  };
}

function convGemmPlan(
  name: string,
  s: Conv2dShape,
  extent: GemmExtent,
  tile: GemmTile,
  hooks: GemmHooks,
  outSize: number,
  bias?: { inner: number; len: number },
): KernelPlan {
  if (outSize === 0) return { outSize, scratch: {}, steps: [] };
  const sched = gemmSchedule(extent, tile);
  const split = sched.splits > 1;
  const code = gemmKernelCode(tile, hooks, split);
  const inputs = hooks.inputs.map((b) => b.name);
  const step: KernelStep = {
    kernel: { key: `conv2d-${name}-k${s.kh}x${s.kw}-${tileKey(tile)}${split ? "-split" : ""}`, code },
    uniforms: packI32([...gemmBaseUniforms(extent, sched, outSize), ...convUniforms(s)]),
    buffers: [...(split && bias ? inputs.filter((b) => b !== "bias") : inputs), split ? "partials" : "out"],
    writes: [split ? "partials" : "out"],
    workgroups: foldWorkgroups(sched.workgroups),
  };
  if (split && bias) {
    // The partials must not include the bias; drop its binding from the GEMM kernel.
    step.kernel = {
      key: step.kernel.key + "-nobias",
      code: gemmKernelCode(tile, { ...hooks, inputs: hooks.inputs.filter((b) => b.name !== "bias") }, true),
    };
  }
  if (!split) return { outSize, scratch: {}, steps: [step] };
  return {
    outSize,
    scratch: { partials: sched.splits * outSize },
    steps: [step, reduceSplitsStep(outSize, sched.splits, bias ? { name: "bias", ...bias } : undefined)],
  };
}

// ---------------------------------------------------------------------------------------------------------
// Texture path. Activations are repacked into zero-padded NHWC with channels rounded up to 4 (one texel =
// 4 channels of one pixel, no bounds checks in the GEMM), weights into [out, tap, in4]. All three kernels
// then read 4 useful floats per texel fetch (see texGemmCode).

/** Register block of the conv texture GEMMs; B (weights / dy) is the lane-uniform side. */
export const CONV_TEX_TILE: TexTile = { tm: 16, tn: 32, wg: 64 };

const ceil4 = (n: number) => Math.ceil(n / 4) * 4;

/**
 * dst[n][h][w][c] (h < Hp, w < Wp, c < Cp) = src[n][c][(h - P0) / sH][(w - Q0) / sW] where that is an
 * integer position inside [Hs, Ws] and c < C, else 0. sH/sW > 1 inserts zeros (transposed convolution).
 * One invocation writes one texel (4 channels) and the dispatch is 3-D (x: w and c4, y: h, z: n): integer
 * division is scalarised on SIMD CPUs, so little of it runs per value.
 */
function packNhwcStep(
  src: string,
  dst: string,
  N: number,
  C: number,
  Hs: number,
  Ws: number,
  Hp: number,
  Wp: number,
  P0: number,
  Q0: number,
  sH: number,
  sW: number,
): KernelStep | null {
  const C4 = ceil4(C) / 4;
  const strided = sH > 1 || sW > 1;
  const row = Wp * C4;
  const code =
    `struct Params { row: i32, C: i32, C4: i32, Hs: i32, Ws: i32, P0: i32, Q0: i32, sH: i32, sW: i32,
  Hp: i32, }
@group(0) @binding(0) var<uniform> u: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec4f>;
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lane: u32) {
  let x = i32(wid.x * 64u + lane);
  if (x >= u.row) { return; }
  let h = i32(wid.y);
  let n = i32(wid.z);
  let c = (x % u.C4) * 4;
  let w = x / u.C4;
  let th = h - u.P0;
  let tw = w - u.Q0;
  ${
      strided
        ? `let sh = th / u.sH;
  let sw = tw / u.sW;
  let ok = th >= 0 && tw >= 0 && sh * u.sH == th && sw * u.sW == tw && sh < u.Hs && sw < u.Ws;`
        : `let sh = th;
  let sw = tw;
  let ok = u32(th) < u32(u.Hs) && u32(tw) < u32(u.Ws);`
    }
  let plane = u.Hs * u.Ws;
  let base = select(0, ((n * u.C + c) * u.Hs + sh) * u.Ws + sw, ok);
  var v = vec4f(0.0);
  if (ok) {
    v.x = src[base];
    if (c + 1 < u.C) { v.y = src[base + plane]; }
    if (c + 2 < u.C) { v.z = src[base + 2 * plane]; }
    if (c + 3 < u.C) { v.w = src[base + 3 * plane]; }
  }
  dst[(n * u.Hp + h) * u.row + x] = v;
}`;
  const wx = Math.ceil(row / 64);
  if (wx > 65535 || Hp > 65535 || N > 65535) return null; // the caller falls back to storage loads
  return {
    kernel: { key: `conv-pack-nhwc4${strided ? "-strided" : ""}`, code },
    uniforms: packI32([row, C, C4, Hs, Ws, P0, Q0, sH, sW, Hp]),
    buffers: [src, dst],
    writes: [dst],
    workgroups: [Math.max(1, wx), Math.max(1, Hp), Math.max(1, N)],
  };
}

/** Key of the weight-packing kernel ({@link packWeightStep}); `engine/ops/conv.ts` finds the step by it to keep
 * packed weights between calls. */
export const PACK_WEIGHT_KEY = "conv-pack-weight";

/** WGSL of where packed element `i` comes from, for the pack parameters `p` (n, C, Cp, taps, oS, cS, flip):
 * `ok` (a real channel, not padding) and `at` (its index in the source), shared by both pack kernels. */
const packSource = (p: string) =>
  `  let c = i % ${p}.Cp;
  let t = (i / ${p}.Cp) % ${p}.taps;
  let o = i / (${p}.Cp * ${p}.taps);
  let st = select(t, ${p}.taps - 1 - t, ${p}.flip != 0);
  let ok = c < ${p}.C;
  let at = o * ${p}.oS + c * ${p}.cS + st;`;

/** dst[o][t][c] (c < Cp, C rounded up to a multiple of `padTo`) = w[o * oS + c * cS + (flip ? taps - 1 - t : t)]
 * for c < C, else 0 (buffers `w` and `dst`). The convolutions' weight layouts, and the sparse ones'. */
export function packWeightStep(
  dst: string,
  O: number,
  C: number,
  taps: number,
  oS: number,
  cS: number,
  flip: boolean,
  padTo = 4,
): KernelStep {
  const Cp = Math.ceil(C / padTo) * padTo;
  const n = O * taps * Cp;
  const code = `struct Params { n: i32, C: i32, Cp: i32, taps: i32, oS: i32, cS: i32, flip: i32, }
@group(0) @binding(0) var<uniform> u: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lane: u32) {
  let i = i32((wid.x + wid.y * nwg.x) * 64u + lane);
  if (i >= u.n) { return; }
${packSource("u")}
  dst[i] = select(0.0, src[select(0, at, ok)], ok);
}`;
  return {
    kernel: { key: PACK_WEIGHT_KEY, code },
    uniforms: packI32([n, C, Cp, taps, oS, cS, flip ? 1 : 0]),
    buffers: ["w", dst],
    writes: [dst],
    workgroups: foldWorkgroups(Math.ceil(n / 64)),
  };
}

/**
 * Several {@link packWeightStep}s as one dispatch (bindings: their sources `src0..`, then their targets
 * `dst0..`): the packs of a network's weights after an optimizer step. Up to 8 (the uniform block holds 8
 * packs' parameters).
 */
export function packWeightBatch(steps: KernelStep[]): Pick<KernelStep, "kernel" | "uniforms" | "workgroups"> {
  const k = steps.length;
  if (k < 1 || k > 8 || steps.some((st) => st.kernel.key !== PACK_WEIGHT_KEY)) {
    throw new Error("packWeightBatch: 1 to 8 weight-packing steps");
  }
  const params = new Int32Array(8 * k);
  let start = 0;
  steps.forEach((st, j) => {
    const [n, C, Cp, taps, oS, cS, flip] = new Int32Array(st.uniforms);
    params.set([start, n, C, Cp, taps, oS, cS, flip], 8 * j);
    start += n;
  });
  const code = `struct Pack { start: i32, n: i32, C: i32, Cp: i32, taps: i32, oS: i32, cS: i32, flip: i32, }
struct Params { p: array<Pack, ${k}>, }
@group(0) @binding(0) var<uniform> u: Params;
${steps.map((_, j) => `@group(0) @binding(${j + 1}) var<storage, read> src${j}: array<f32>;`).join("\n")}
${
    steps.map((_, j) => `@group(0) @binding(${k + j + 1}) var<storage, read_write> dst${j}: array<f32>;`)
      .join("\n")
  }
${batchedEntry(k, 64, "u.p", "p")}
${packSource("p")}
${slotSwitch(k, (j) => `      dst${j}[i] = select(0.0, src${j}[select(0, at, ok)], ok);`)}
}`;
  return {
    kernel: { key: `${PACK_WEIGHT_KEY}-batch${k}`, code },
    uniforms: params.buffer,
    workgroups: foldWorkgroups(Math.ceil(start / 64)),
  };
}

/** Geometry of the stride-free core: out[n][o][oh][ow] = sum_{tap, c} xp[n][oh*sH + r*dH][ow*sW + q*dW][c] *
 * wp[o][tap][c] over a padded NHWC `xp`. */
interface CoreGeom {
  N: number;
  C: number;
  Hp: number;
  Wp: number;
  O: number;
  Hout: number;
  Wout: number;
  sH: number;
  sW: number;
  dH: number;
  dW: number;
  kh: number;
  kw: number;
}

/** Texture GEMM of the conv core: rows = output pixels (per lane), columns = output channels (uniform). */
function convCoreStep(
  g: CoreGeom,
  bias: boolean,
  split: boolean,
  sched: ReturnType<typeof texSchedule>,
  tile: TexTile,
  relu = false,
) {
  const { tm, tn, wg } = tile;
  const C4 = ceil4(g.C) / 4;
  const setup: string[] = ["  let HWout = u.Hout * u.Wout;", "  let wRow = u.taps * u.C4;"];
  for (let i = 0; i < tm; i++) {
    setup.push(`  let n_${i} = rowc_${i} / HWout;
  let hw_${i} = rowc_${i} % HWout;
  let xb_${i} = ((n_${i} * u.Hp + (hw_${i} / u.Wout) * u.sH) * u.Wp + (hw_${i} % u.Wout) * u.sW) * u.C4;`);
  }
  for (let j = 0; j < tn; j++) setup.push(`  let wb_${j} = colc_${j} * wRow;`);
  // k = tap * C4 + c4, walked with counters so no division runs per iteration.
  setup.push(`  var c4 = stepBegin % u.C4;
  var tap = stepBegin / u.C4;
  var tapOff = ((tap / u.kw) * u.dH * u.Wp + (tap % u.kw) * u.dW) * u.C4;`);
  const spec: TexGemmSpec = {
    tm,
    tn,
    wg,
    kSub: 4,
    a: { layout: "k", texel: (i) => `xb_${i} + tapOff + c4` },
    b: { layout: "k", texel: (j) => `wb_${j} + ks` },
    params: [
      "C4",
      "taps",
      "Hp",
      "Wp",
      "Hout",
      "Wout",
      "sH",
      "sW",
      "dH",
      "dW",
      "kw",
      ...(split ? [] : EPILOGUE_PARAMS),
    ],
    inputs: [
      { name: "xp", texture: true },
      { name: "wp", texture: true },
      ...(split ? [] : [{ name: "bias" }]),
    ],
    setup: setup.join("\n"),
    postStep: `    c4++;
    if (c4 == u.C4) {
      c4 = 0;
      tap++;
      tapOff = ((tap / u.kw) * u.dH * u.Wp + (tap % u.kw) * u.dW) * u.C4;
    }`,
    outIndex: (i, j) => `(n_${i} * u.cols + col0 + ${j}) * HWout + hw_${i}`,
    decls: split ? undefined : EPILOGUE_DECLS,
    epilogue: (v, _i, j) => `act(${v} + bias_${j})`,
    epilogueSetup: biasLoads(tn),
  };
  const rows = g.N * g.Hout * g.Wout, taps = g.kh * g.kw;
  const outSize = rows * g.O;
  const inputs = spec.inputs.map((b) => b.name);
  const step: KernelStep = {
    kernel: {
      key: `conv-tex-${tm}x${tn}-wg${wg}${split ? "-split" : ""}`,
      code: texGemmCode(spec, split),
    },
    uniforms: packI32([
      ...texBaseUniforms(rows, g.O, taps * C4, 1, sched, outSize),
      C4,
      taps,
      g.Hp,
      g.Wp,
      g.Hout,
      g.Wout,
      g.sH,
      g.sW,
      g.dH,
      g.dW,
      g.kw,
      ...(split ? [] : [bias ? 1 : 0, relu ? 1 : 0]),
    ]),
    buffers: [...inputs, split ? "partials" : "out"],
    textures: ["xp", "wp"],
    writes: [split ? "partials" : "out"],
    workgroups: texWorkgroups(sched, wg),
  };
  return step;
}

/** Plan of the core GEMM after the given pack steps; null when an operand is too big for a texture. */
function convCorePlan(
  g: CoreGeom,
  packX: KernelStep | null,
  packW: KernelStep,
  hasBias: boolean,
  tile: TexTile,
  relu = false,
): KernelPlan | null {
  if (!packX) return null;
  const { tm, tn } = tile;
  const taps = g.kh * g.kw, Cp = ceil4(g.C);
  const xFloats = g.N * g.Hp * g.Wp * Cp, wFloats = g.O * taps * Cp;
  if (xFloats > MAX_TEXTURE_FLOATS || wFloats > MAX_TEXTURE_FLOATS) return null;
  const rows = g.N * g.Hout * g.Wout;
  const outSize = rows * g.O;
  const sched = texSchedule(rows, g.O, taps * Cp / 4, 1, tm, tn);
  const split = sched.splits > 1;
  const steps = [packX, packW, convCoreStep(g, hasBias && !split, split, sched, tile, relu)];
  const scratch: Record<string, number> = { xp: xFloats, wp: wFloats };
  if (!split && !hasBias) scratch.bias = NO_BIAS_FLOATS;
  if (split) {
    scratch.partials = sched.splits * outSize;
    steps.push(
      reduceSplitsStep(
        outSize,
        sched.splits,
        hasBias ? { name: "bias", inner: g.Hout * g.Wout, len: g.O } : undefined,
      ),
    );
  }
  return { outSize, scratch, steps, appliesRelu: relu && !split };
}

/** Register block of the direct (NCHW) conv GEMM: `tm` neighbouring output pixels of one row per invocation. */
export const CONV_DIRECT_TILE: TexTile = { tm: 16, tn: 16, wg: 64 };

/** Geometry of a stride-1 convolution read straight from NCHW: out[n][o][oh][ow] = sum_{c, r, q}
 * src[n][c][oh + r * dH - P0][ow + q * dW - Q0] * wp[o][r * kw + q][c], zero outside src. */
interface DirectGeom {
  N: number;
  C: number;
  Hs: number;
  Ws: number;
  O: number;
  Hout: number;
  Wout: number;
  kh: number;
  kw: number;
  P0: number;
  Q0: number;
  dH: number;
  dW: number;
  /** Strides (default 1). */
  sH?: number;
  sW?: number;
}

/**
 * Convolution at stride 1 or 2 as a texture GEMM reading the NCHW source directly (no repack): one texel is 4
 * neighbouring pixels of one channel row, so an invocation owning `tm` neighbouring output pixels loads the
 * row window they share (tm * stride pixels wide) once per (4 channels, kernel row) and takes all `kw` taps
 * from it in registers (4 * kw k values per iteration). Needs source rows of whole texels (Ws % 4 == 0);
 * returns null otherwise. With `up` (a 1x1 convolution to C * kh * kw columns), the output write scatters
 * the columns to kh x kw pixels: a transposed convolution whose kernel equals its stride.
 */
function directConvPlan(
  g: DirectGeom,
  src: string,
  packW: KernelStep,
  hasBias: boolean,
  tile: TexTile,
  relu = false,
  up?: { kh: number; kw: number },
  residual = false,
  gate?: string,
): KernelPlan | null {
  const { tm, tn, wg } = tile;
  const kk = up ? up.kh * up.kw : 1;
  if (up && (residual || gate)) return null;
  if (up && (g.kh !== 1 || g.kw !== 1 || tn % kk !== 0 || g.O % kk !== 0)) return null;
  const C4 = ceil4(g.C) / 4, taps = g.kh * g.kw;
  const srcFloats = g.N * g.C * g.Hs * g.Ws, wFloats = g.O * taps * C4 * 4;
  // tn a multiple of 4: the stores are texGemmCode's vector stores (convTileFor's blocks all are).
  if (
    g.Ws % 4 !== 0 || tm % 4 !== 0 || tn % 4 !== 0 || srcFloats > MAX_TEXTURE_FLOATS ||
    wFloats > MAX_TEXTURE_FLOATS
  ) {
    return null;
  }
  // Window of the block's first pixel: texel shift and offset inside the texel (compile-time: the kernel
  // is keyed on Q0 mod 4 and dW).
  const off = ((-g.Q0 % 4) + 4) % 4;
  const sH = g.sH ?? 1, sW = g.sW ?? 1;
  const texels = Math.ceil((off + (tm - 1) * sW + 1 + (g.kw - 1) * g.dW) / 4);
  const rowBlocksPerLine = Math.ceil(g.Wout / tm);
  const rows = g.N * g.Hout * rowBlocksPerLine * tm;
  const outSize = g.N * g.O * g.Hout * g.Wout;
  const steps = C4 * g.kh;
  const sched = texSchedule(rows, g.O, steps, 1, tm, tn);
  const split = sched.splits > 1;
  if (up && split) return null; // the split-K reduction writes the plain layout
  // Kernels that write the plain layout themselves always bind a residual, with a uniform saying whether it
  // is one (as for the bias): with and without a residual they are one pipeline, not two (a restore then
  // creates 28 pipelines, not 31).
  const resBound = !split && !up;
  const setup: string[] = [`  let lineBlock = rowBlock % u.lineBlocks;
  let nh = rowBlock / u.lineBlocks;
  let oh = nh % u.Hout;
  let n = nh / u.Hout;
  let ow0 = lineBlock * ${tm};
  let W4 = u.Ws >> 2u;
  let t0 = (ow0${sW === 1 ? "" : ` * ${sW}`} - ${off} - u.Q0) >> 2u;`];
  for (let t = 0; t < texels; t++) setup.push(`  let colOk_${t} = u32(t0 + ${t}) < u32(W4);`);
  for (let j = 0; j < tn; j++) setup.push(`  let wb_${j} = colc_${j} * ${taps} * u.C4;`);
  // k = (c4, kernel row r), r fastest, walked with counters.
  setup.push(`  var c4 = stepBegin / ${g.kh};
  var r = stepBegin % ${g.kh};`);
  const preStep = [`    let ih = oh${sH === 1 ? "" : ` * ${sH}`} + r * u.dH - u.P0;
    let rowOk = u32(ih) < u32(u.Hs);
    let wOff = r * ${g.kw} * u.C4 + c4;`];
  for (let cs = 0; cs < 4; cs++) {
    preStep.push(`    let ok_${cs} = rowOk & (c4 * 4 + ${cs} < u.C);
    let aRow_${cs} = ((n * u.C + c4 * 4 + ${cs}) * u.Hs + ih) * W4 + t0;`);
  }
  const aLoads = [], bLoads = [];
  for (let cs = 0; cs < 4; cs++) {
    for (let t = 0; t < texels; t++) {
      aLoads.push({ name: `ta_${cs}_${t}`, texel: `aRow_${cs} + ${t}`, mask: `ok_${cs} & colOk_${t}`, gate });
    }
  }
  for (let j = 0; j < tn; j++) {
    for (let q = 0; q < g.kw; q++) {
      bLoads.push({ name: `tb_${j}_${q}`, texel: `wb_${j} + wOff + ${q} * u.C4` });
    }
  }
  const comp = ["x", "y", "z", "w"];
  // k sub-step s = q * 4 + channel: pixel i of tap q is window position off + i * sW + q * dW.
  const aValue = (i: number, s: number) => {
    const p = off + i * sW + (s >> 2) * g.dW;
    return `ta_${s & 3}_${p >> 2}.${comp[p & 3]}`;
  };
  const spec: TexGemmSpec = {
    tm,
    tn,
    wg,
    kSub: 4 * g.kw,
    a: { layout: "custom", loads: aLoads, value: aValue },
    b: { layout: "custom", loads: bLoads, value: (j, s) => `tb_${j}_${s >> 2}.${comp[s & 3]}` },
    params: [
      "C",
      "C4",
      "Hs",
      "Ws",
      "Hout",
      "Wout",
      "P0",
      "Q0",
      "dH",
      "lineBlocks",
      ...(split ? [] : EPILOGUE_PARAMS),
      ...(resBound ? ["hasRes"] : []),
    ],
    inputs: [
      { name: src, texture: true },
      { name: "wp", texture: true },
      ...(split ? [] : [{ name: "bias" }]),
      ...(resBound ? [{ name: "res" }] : []),
      ...(gate ? [{ name: gate, texture: true }] : []),
    ],
    setup: setup.join("\n"),
    preStep: preStep.join("\n"),
    postStep: `    r++;
    if (r == ${g.kh}) {
      r = 0;
      c4++;
    }`,
    // With `up`, column (c, r, q) of pixel (oh, ow) lands at (oh * kh + r, ow * kw + q) of channel c (a
    // transposed convolution whose kernel equals its stride, as a 1x1 convolution to C * kh * kw columns).
    outIndex: up
      ? (i, j) =>
        `(((n * u.cols + col0 + ${j}) / ${kk}) * u.Hout * ${up.kh} + oh * ${up.kh} + ${
          Math.floor(j / up.kw) % up.kh
        }) * u.Wout * ${up.kw} + (ow0 + ${i}) * ${up.kw} + ${j % up.kw}`
      : (i, j) => `((n * u.cols + col0 + ${j}) * u.Hout + oh) * u.Wout + ow0 + ${i}`,
    // Each group of 4 columns' output row, once: 256 full index expressions made a third of a 16x16 block's
    // source.
    storeSetup: up ? upStoreBases(tn, up, kk) : Array.from(
      { length: tn / 4 },
      (_, q) => `  let outRow_${q} = ((n * u.cols + ${clampedColumns(q)}) * u.Hout + oh) * u.Wout + ow0;`,
    ).join("\n"),
    vectorStore: {
      index: up ? (i, q) => `upBase_${q} + (ow0 + ${i}) * ${up.kw}` : (i, q) => `outRow_${q} + ${i}`,
      lastRow: "u.Wout - 1 - ow0",
      epilogue: (v, _i, q) => `act4(${v} + biasv_${q})`,
      add: resBound
        ? {
          when: "u.hasRes != 0",
          value: (at) => `vec4f(${[0, 1, 2, 3].map((e) => `res[${at}.${"xyzw"[e]}]`).join(", ")})`,
        }
        : undefined,
    },
    outGuard: (i) => `ow0 + ${i} < u.Wout`,
    decls: split ? undefined : `${EPILOGUE_DECLS}\n${EPILOGUE_DECLS_4}`,
    // What each output gets (the vector stores above apply it, then add the residual).
    epilogue: (v, _i, j) => `act(${v} + bias_${j})`,
    epilogueSetup: `${biasLoads(tn, kk)}\n${biasVectors(tn)}`,
  };
  const inputs = spec.inputs.map((b) => b.name);
  const gemm: KernelStep = {
    kernel: {
      key: `conv-direct-k${g.kh}x${g.kw}-d${g.dW}-o${off}${
        sH === 1 && sW === 1 ? "" : `-s${sH}x${sW}`
      }-${tm}x${tn}-wg${wg}${split ? "-split" : ""}${up ? `-up${up.kh}x${up.kw}` : ""}${
        resBound ? "-res" : ""
      }${gate ? "-gate" : ""}`,
      code: texGemmCode(spec, split),
    },
    uniforms: packI32([
      ...texBaseUniforms(rows, g.O, steps, 1, sched, outSize),
      g.C,
      C4,
      g.Hs,
      g.Ws,
      g.Hout,
      g.Wout,
      g.P0,
      g.Q0,
      g.dH,
      rowBlocksPerLine,
      ...(split ? [] : [hasBias ? 1 : 0, relu ? 1 : 0]),
      ...(resBound ? [residual ? 1 : 0] : []),
    ]),
    buffers: [...inputs, split ? "partials" : "out"],
    textures: gate ? [src, "wp", gate] : [src, "wp"],
    writes: [split ? "partials" : "out"],
    workgroups: texWorkgroups(sched, wg),
  };
  const scratch: Record<string, number> = { wp: wFloats };
  if (!split && !hasBias) scratch.bias = NO_BIAS_FLOATS;
  if (resBound && !residual) scratch.res = NO_BIAS_FLOATS;
  const stepsOut = [packW, gemm];
  if (split) {
    scratch.partials = sched.splits * outSize;
    const biasSum = hasBias ? { name: "bias", inner: g.Hout * g.Wout, len: g.O } : undefined;
    stepsOut.push(reduceSplitsStep(outSize, sched.splits, biasSum));
  }
  return {
    outSize,
    scratch,
    steps: stepsOut,
    appliesRelu: relu && !split,
    ...(residual ? { appliesResidual: !split } : {}),
    ...(gate ? { appliesGate: true } : {}),
  };
}

/**
 * The bias of each of a register block's `tn` columns, loaded once after the loop (a load per store made
 * LLVM take 4x as long to compile: 13 s for a 16x32 block). The texture kernels always bind a bias, and
 * the `hasBias` uniform says whether it is one: with and without a bias they are one pipeline, not two.
 * Without one, the binding is a small scratch buffer whose contents `select` ignores (robust access keeps
 * its reads in bounds).
 */
const biasLoads = (tn: number, columnsPerBias = 1) =>
  Array.from({ length: tn }, (_, j) => {
    const index = columnsPerBias === 1 ? `colc_${j}` : `colc_${j} / ${columnsPerBias}`;
    return `  let bias_${j} = select(0.0, bias[${index}], u.hasBias != 0);`;
  }).join("\n");
/** The output index of columns 4q..4q+3 (clamped) of an `up` kernel's pixel ow0 = 0 (its outIndex as
 * vectors; add (ow0 + i) * kw for pixel i). */
const upStoreBases = (tn: number, up: { kh: number; kw: number }, kk: number) =>
  Array.from({ length: tn / 4 }, (_, q) => {
    const J = clampedColumns(q); // absolute columns: col0 is a multiple of kh * kw
    return `  let upBase_${q} = (((n * u.cols + ${J}) / ${kk}) * u.Hout * ${up.kh} + oh * ${up.kh} + (${J} / ${up.kw}) % ${up.kh}) * u.Wout * ${up.kw} + ${J} % ${up.kw};`;
  }).join("\n");
/** Columns 4q..4q+3 of a texture GEMM's block, those past the end clamped to the last (WGSL vec4i). */
const clampedColumns = (q: number) => `min(col0 + ${4 * q} + vec4i(0, 1, 2, 3), vec4i(u.cols - 1))`;
/** The bias loads as vectors of 4 neighbouring columns, for the vector stores. */
const biasVectors = (tn: number) =>
  Array.from({ length: tn / 4 }, (_, q) => {
    const j = 4 * q;
    return `  let biasv_${q} = vec4f(bias_${j}, bias_${j + 1}, bias_${j + 2}, bias_${j + 3});`;
  }).join("\n");
/** Floats of the stand-in bias binding of a convolution without bias. */
const NO_BIAS_FLOATS = 4;
/** Uniform flags of the texture kernels' epilogue: add the bias, then ReLU (both uniforms, one pipeline). */
const EPILOGUE_PARAMS = ["hasBias", "relu"];
const EPILOGUE_DECLS = "fn act(v: f32) -> f32 { return select(v, max(v, 0.0), u.relu != 0); }";
const EPILOGUE_DECLS_4 = "fn act4(v: vec4f) -> vec4f { return select(v, max(v, vec4f(0.0)), u.relu != 0); }";

/** Largest stride the direct kernel takes (its row window grows with the stride). */
const DIRECT_MAX_STRIDE = 2;

/** Padded extent an axis needs: the last output reads (out - 1) * stride + (k - 1) * dil. */
const span = (out: number, stride: number, k: number, dil: number) => (out - 1) * stride + (k - 1) * dil + 1;

function forwardTexPlan(
  s: Conv2dShape,
  hasBias: boolean,
  tile: TexTile,
  directTile: TexTile | null,
  relu: boolean,
  residual: boolean,
): KernelPlan | null {
  const taps = s.kh * s.kw;
  if (directTile && s.strideH <= DIRECT_MAX_STRIDE && s.strideW <= DIRECT_MAX_STRIDE) {
    const direct = directConvPlan(
      {
        N: s.N,
        C: s.Cin,
        Hs: s.H,
        Ws: s.W,
        O: s.Cout,
        Hout: s.Hout,
        Wout: s.Wout,
        kh: s.kh,
        kw: s.kw,
        P0: s.padH,
        Q0: s.padW,
        dH: s.dilH,
        dW: s.dilW,
        sH: s.strideH,
        sW: s.strideW,
      },
      "x",
      packWeightStep("wp", s.Cout, s.Cin, taps, s.Cin * taps, taps, false),
      hasBias,
      directTile,
      relu,
      undefined,
      residual,
    );
    if (direct) return direct;
  }
  const Hp = span(s.Hout, s.strideH, s.kh, s.dilH), Wp = span(s.Wout, s.strideW, s.kw, s.dilW);
  const g: CoreGeom = {
    N: s.N,
    C: s.Cin,
    Hp,
    Wp,
    O: s.Cout,
    Hout: s.Hout,
    Wout: s.Wout,
    sH: s.strideH,
    sW: s.strideW,
    dH: s.dilH,
    dW: s.dilW,
    kh: s.kh,
    kw: s.kw,
  };
  const core = convCorePlan(
    g,
    packNhwcStep("x", "xp", s.N, s.Cin, s.H, s.W, Hp, Wp, s.padH, s.padW, 1, 1),
    packWeightStep("wp", s.Cout, s.Cin, taps, s.Cin * taps, taps, false),
    hasBias,
    tile,
    relu,
  );
  return core && residual ? { ...core, appliesResidual: false } : core;
}

/**
 * Input gradient as a stride-1 convolution of zero-inserted, padded dy with the flipped, transposed kernel:
 * dx[ih] = sum_r' P[ih + r' * dil] * w[kh - 1 - r'] with P[h] = dy[(h - P0) / stride], P0 = (kh-1)*dil - pad.
 */
function inputGradTexPlan(
  s: Conv2dShape,
  tile: TexTile,
  directTile: TexTile | null,
  hasBias: boolean,
  residual: boolean,
  gate: boolean,
): KernelPlan | null {
  const taps = s.kh * s.kw;
  const P0 = (s.kh - 1) * s.dilH - s.padH, Q0 = (s.kw - 1) * s.dilW - s.padW;
  const nonOverlapping = s.strideH === s.kh && s.strideW === s.kw && s.padH === 0 && s.padW === 0 &&
    s.H === s.Hout * s.kh && s.W === s.Wout * s.kw && taps > 1;
  if (directTile && nonOverlapping) {
    // Kernel = stride (the U-Net's 2x2 upsampling): every output pixel gets exactly one tap, so this is a 1x1
    // convolution of dy to Cin * taps columns scattered to their pixels, not a convolution of zero-inserted
    // dy (three quarters zeros at stride 2).
    const cols = s.Cin * taps;
    const up = directConvPlan(
      {
        N: s.N,
        C: s.Cout,
        Hs: s.Hout,
        Ws: s.Wout,
        O: cols,
        Hout: s.Hout,
        Wout: s.Wout,
        kh: 1,
        kw: 1,
        P0: 0,
        Q0: 0,
        dH: 1,
        dW: 1,
      },
      "dy",
      packWeightStep("wp", cols, s.Cout, 1, 1, cols, false),
      hasBias,
      convTileFor(cols, CONV_DIRECT_TILE.tn),
      false,
      { kh: s.kh, kw: s.kw },
    );
    if (up) return residual || gate ? { ...up, appliesResidual: false, appliesGate: false } : up;
  }
  if (directTile && s.strideH === 1 && s.strideW === 1) {
    // Stride 1: no zeros to insert, so the direct kernel reads dy where it is (no repack of dy).
    const direct = directConvPlan(
      {
        N: s.N,
        C: s.Cout,
        Hs: s.Hout,
        Ws: s.Wout,
        O: s.Cin,
        Hout: s.H,
        Wout: s.W,
        kh: s.kh,
        kw: s.kw,
        P0,
        Q0,
        dH: s.dilH,
        dW: s.dilW,
      },
      "dy",
      packWeightStep("wp", s.Cin, s.Cout, taps, taps, s.Cin * taps, true),
      hasBias,
      directTile,
      false,
      undefined,
      residual,
      gate ? "y" : undefined,
    );
    if (direct) return direct;
  }
  const Hp = span(s.H, 1, s.kh, s.dilH), Wp = span(s.W, 1, s.kw, s.dilW);
  const g: CoreGeom = {
    N: s.N,
    C: s.Cout,
    Hp,
    Wp,
    O: s.Cin,
    Hout: s.H,
    Wout: s.W,
    sH: 1,
    sW: 1,
    dH: s.dilH,
    dW: s.dilW,
    kh: s.kh,
    kw: s.kw,
  };
  const core = convCorePlan(
    g,
    packNhwcStep("dy", "xp", s.N, s.Cout, s.Hout, s.Wout, Hp, Wp, P0, Q0, s.strideH, s.strideW),
    packWeightStep("wp", s.Cin, s.Cout, taps, taps, s.Cin * taps, true),
    hasBias,
    tile,
  );
  return core && (residual || gate) ? { ...core, appliesResidual: false, appliesGate: false } : core;
}

/**
 * Weight gradient at stride 1 or 2 reading x and dy in place (NCHW rows of whole texels; no repacks): rows =
 * (ci, kernel row r, tap column q) in the weight's own order, columns = Cout, k = (n, oh, 4 output pixels).
 * One dy texel is 4 neighbouring output pixels of one channel row; the x values they meet at the kw taps of
 * one (ci, r) lie in one row window of a few texels (4 * stride pixels wide), loaded once per iteration for
 * the kw rows of the block that share it, so `tm` is a multiple of kw. Needs W and Wout multiples of 4; the
 * caller checks the stride (at most DIRECT_MAX_STRIDE).
 */
function weightGradDirectPlan(
  s: Conv2dShape,
  tile: TexTile,
  biasGrad: boolean,
  gate: boolean,
): KernelPlan | null {
  const { tn, wg } = tile;
  const taps = s.kh * s.kw;
  const tm = Math.max(s.kw, Math.floor(tile.tm / s.kw) * s.kw);
  const xFloats = s.N * s.Cin * s.H * s.W, dyFloats = s.N * s.Cout * s.Hout * s.Wout;
  if (s.W % 4 !== 0 || s.Wout % 4 !== 0 || xFloats > MAX_TEXTURE_FLOATS || dyFloats > MAX_TEXTURE_FLOATS) {
    return null;
  }
  const groups = tm / s.kw;
  // Window of the 4 output pixels' taps in x: texel shift and offset inside the texel (compile-time).
  const off = ((-s.padW % 4) + 4) % 4;
  const sH = s.strideH, sW = s.strideW;
  const texels = Math.ceil((off + 3 * sW + 1 + (s.kw - 1) * s.dilW) / 4);
  const rows = s.Cin * taps, cols = s.Cout, steps = s.N * s.Hout * (s.Wout / 4);
  const outSize = cols * rows;
  const sched = texSchedule(rows, cols, steps, 1, tm, tn);
  const split = sched.splits > 1;
  const setup: string[] = [`  let W4 = u.W >> 2u;
  let Wo4 = u.Wout >> 2u;
  let grp0 = row0 / ${s.kw};`];
  for (let g = 0; g < groups; g++) {
    setup.push(`  let ci_${g} = (grp0 + ${g}) / ${s.kh};
  let r_${g} = (grp0 + ${g}) % ${s.kh};
  let ciOk_${g} = ci_${g} < u.Cin;`);
  }
  for (let j = 0; j < tn; j++) setup.push(`  let dyc_${j} = colc_${j} * u.Hout * Wo4;`);
  setup.push(`  var ow4 = stepBegin % Wo4;
  var oh = (stepBegin / Wo4) % u.Hout;
  var n = stepBegin / (Wo4 * u.Hout);`);
  const preStep = [`    let t0 = (ow4 * ${4 * sW} - ${off} - u.Q0) >> 2u;
    let dyb = (n * u.Cout * u.Hout + oh) * Wo4 + ow4;`];
  for (let t = 0; t < texels; t++) preStep.push(`    let colOk_${t} = u32(t0 + ${t}) < u32(W4);`);
  for (let g = 0; g < groups; g++) {
    preStep.push(`    let ih_${g} = oh${sH === 1 ? "" : ` * ${sH}`} + r_${g} * u.dH - u.P0;
    let ok_${g} = ciOk_${g} & (u32(ih_${g}) < u32(u.H));
    let xRow_${g} = ((n * u.Cin + ci_${g}) * u.H + ih_${g}) * W4 + t0;`);
  }
  const aLoads = [];
  for (let g = 0; g < groups; g++) {
    for (let t = 0; t < texels; t++) {
      aLoads.push({ name: `ta_${g}_${t}`, texel: `xRow_${g} + ${t}`, mask: `ok_${g} & colOk_${t}` });
    }
  }
  const comp = ["x", "y", "z", "w"];
  // Row i is tap column q = i % kw of group i / kw; pixel s of the 4 meets window position
  // off + s * sW + q * dW.
  const aValue = (i: number, st: number) => {
    const p = off + st * sW + (i % s.kw) * s.dilW;
    return `ta_${Math.floor(i / s.kw)}_${p >> 2}.${comp[p & 3]}`;
  };
  const spec: TexGemmSpec = {
    tm,
    tn,
    wg,
    kSub: 4,
    a: { layout: "custom", loads: aLoads, value: aValue },
    b: {
      layout: "custom",
      loads: Array.from({ length: tn }, (_, j) => ({
        name: `tb_${j}`,
        texel: `dyb + dyc_${j}`,
        gate: gate ? "y" : undefined,
      })),
      value: (j, st) => `tb_${j}.${comp[st]}`,
    },
    params: ["Cin", "Cout", "H", "W", "Hout", "Wout", "P0", "Q0", "dH"],
    inputs: [
      { name: "x", texture: true },
      { name: "dy", texture: true },
      ...(gate ? [{ name: "y", texture: true }] : []),
    ],
    setup: setup.join("\n"),
    preStep: preStep.join("\n"),
    postStep: `    ow4++;
    if (ow4 == Wo4) {
      ow4 = 0;
      oh++;
      if (oh == u.Hout) {
        oh = 0;
        n++;
      }
    }`,
    outIndex: (i, j) => `(col0 + ${j}) * u.rows + row0 + ${i}`,
    columnSums: biasGrad,
  };
  const elems = outSize + (biasGrad ? cols : 0);
  const gemm: KernelStep = {
    kernel: {
      key: `conv-dwd-k${s.kh}x${s.kw}-d${s.dilW}-o${off}${
        sH === 1 && sW === 1 ? "" : `-s${sH}x${sW}`
      }-${tm}x${tn}-wg${wg}${split ? "-split" : ""}${biasGrad ? "-db" : ""}${gate ? "-gate" : ""}`,
      code: texGemmCode(spec, split),
    },
    uniforms: packI32([
      ...texBaseUniforms(rows, cols, steps, 1, sched, elems),
      s.Cin,
      s.Cout,
      s.H,
      s.W,
      s.Hout,
      s.Wout,
      s.padH,
      s.padW,
      s.dilH,
    ]),
    buffers: ["x", "dy", ...(gate ? ["y"] : []), ...outputs(split, biasGrad)],
    textures: gate ? ["x", "dy", "y"] : ["x", "dy"],
    writes: outputs(split, biasGrad),
    workgroups: texWorkgroups(sched, wg),
  };
  const plan = splitWeightGrad(gemm, outSize, elems, sched.splits, {}, biasGrad);
  return gate ? { ...plan, appliesGate: true } : plan;
}

/** Bindings a weight-gradient GEMM writes: the output (and with `biasGrad` the bias gradient `db`), or the
 * partials of a split. */
const outputs = (split: boolean, biasGrad: boolean) =>
  split ? ["partials"] : biasGrad ? ["out", "db"] : ["out"];

/** A weight-gradient plan from its GEMM step (after `before`): with a split, the partials of `elems` floats
 * each (the weights, then with `biasGrad` the bias gradient) are summed into `out` and `db`. */
function splitWeightGrad(
  gemm: KernelStep,
  outSize: number,
  elems: number,
  splits: number,
  scratch: Record<string, number>,
  biasGrad: boolean,
  before: KernelStep[] = [],
): KernelPlan {
  const plan: KernelPlan = {
    outSize,
    scratch,
    steps: [...before, gemm],
    ...(biasGrad ? { appliesBias: true } : {}),
  };
  if (splits === 1) return plan;
  const tail = biasGrad ? { name: "db", from: outSize } : undefined;
  return {
    ...plan,
    scratch: { ...scratch, partials: splits * elems },
    steps: [...plan.steps, reduceSplitsStep(elems, splits, undefined, tail, true)],
  };
}

/**
 * Weight gradient: rows = (tap, ci) with ci padded to 4, columns = Cout, k = output pixels (4 per loop
 * iteration, split across invocations). Both operands are NHWC texels (4 channels at one pixel).
 */
function weightGradTexPlan(s: Conv2dShape, tile: TexTile, biasGrad: boolean): KernelPlan | null {
  const { tm, tn, wg } = tile;
  const taps = s.kh * s.kw;
  const Cin4 = ceil4(s.Cin) / 4, Cout4 = ceil4(s.Cout) / 4;
  const Wq = ceil4(s.Wout);
  // xp is wide enough for the padding pixels too (ow < Wq): every read stays inside data the pack wrote
  // (a pooled scratch buffer may hold NaNs past it, and NaN * 0 would leak into the sums).
  const Hp = span(s.Hout, s.strideH, s.kh, s.dilH), Wp = span(Wq, s.strideW, s.kw, s.dilW);
  const xFloats = s.N * Hp * Wp * Cin4 * 4, dyFloats = s.N * s.Hout * Wq * Cout4 * 4;
  if (xFloats > MAX_TEXTURE_FLOATS || dyFloats > MAX_TEXTURE_FLOATS) return null;
  const rows = taps * Cin4 * 4, cols = s.Cout, steps = s.N * s.Hout * Wq / 4;
  const outSize = s.Cout * s.Cin * taps;
  const sched = texSchedule(rows, cols, steps, 1, tm, tn);
  const split = sched.splits > 1;
  const setup: string[] = ["  let Cinp = u.C4 * 4;"];
  for (let g = 0; g < tm / 4; g++) {
    setup.push(`  let rg_${g} = min(row0 + ${4 * g}, u.rows - 4);
  let tap_${g} = rg_${g} / Cinp;
  let aOff_${g} = ((tap_${g} / u.kw) * u.dH * u.Wp + (tap_${g} % u.kw) * u.dW) * u.C4 + (rg_${g} % Cinp) / 4;`);
  }
  for (let g = 0; g < tn / 4; g++) setup.push(`  let bOff_${g} = min((col0 >> 2u) + ${g}, u.Cout4 - 1);`);
  for (let i = 0; i < tm; i++) {
    setup.push(`  let ci_${i} = (row0 + ${i}) % Cinp;
  let tp_${i} = (row0 + ${i}) / Cinp;`);
  }
  // k = (n, oh, ow) with ow padded to Wq = ceil4(Wout): one iteration takes 4 pixels of one output row (each
  // spilled accumulator then takes 4 FMAs per reload). Padding pixels read dy zeros (dyp is packed Wq wide)
  // against x zeros. Walked with counters, so no division per iteration.
  setup.push(`  let Wq4 = (u.Wout + 3) / 4;
  var ow4 = stepBegin % Wq4;
  var oh = (stepBegin / Wq4) % u.Hout;
  var n = stepBegin / (Wq4 * u.Hout);
  var xb = ((n * u.Hp + oh * u.sH) * u.Wp + ow4 * 4 * u.sW) * u.C4;
  let xStep = u.sW * u.C4;`);
  const spec: TexGemmSpec = {
    tm,
    tn,
    wg,
    kSub: 4,
    a: { layout: "free", texel: (g, st) => `xb + ${st} * xStep + aOff_${g}` },
    b: { layout: "free", texel: (g, st) => `(ks * 4 + ${st}) * u.Cout4 + bOff_${g}` },
    params: ["C4", "Cout4", "Cin", "taps", "Hp", "Wp", "Hout", "Wout", "sH", "sW", "dH", "dW", "kw", "N"],
    inputs: [{ name: "xp", texture: true }, { name: "dyp", texture: true }],
    setup: setup.join("\n"),
    postStep: `    ow4++;
    xb += 4 * xStep;
    if (ow4 == Wq4) {
      ow4 = 0;
      oh++;
      if (oh == u.Hout) {
        oh = 0;
        n++;
      }
      xb = (n * u.Hp + oh * u.sH) * u.Wp * u.C4;
    }`,
    outIndex: (i, j) => `((col0 + ${j}) * u.Cin + ci_${i}) * u.taps + tp_${i}`,
    outGuard: (i) => `ci_${i} < u.Cin`,
    columnSums: biasGrad,
  };
  const inputs = ["xp", "dyp"];
  const elems = outSize + (biasGrad ? cols : 0);
  const gemm: KernelStep = {
    kernel: {
      key: `conv-dwq-tex-${tm}x${tn}-wg${wg}${split ? "-split" : ""}${biasGrad ? "-db" : ""}`,
      code: texGemmCode(spec, split),
    },
    uniforms: packI32([
      ...texBaseUniforms(rows, cols, steps, 1, sched, elems),
      Cin4,
      Cout4,
      s.Cin,
      taps,
      Hp,
      Wp,
      s.Hout,
      s.Wout,
      s.strideH,
      s.strideW,
      s.dilH,
      s.dilW,
      s.kw,
      s.N,
    ]),
    buffers: [...inputs, ...outputs(split, biasGrad)],
    textures: inputs,
    writes: outputs(split, biasGrad),
    workgroups: texWorkgroups(sched, wg),
  };
  const packX = packNhwcStep("x", "xp", s.N, s.Cin, s.H, s.W, Hp, Wp, s.padH, s.padW, 1, 1);
  const packDy = packNhwcStep("dy", "dyp", s.N, s.Cout, s.Hout, s.Wout, s.Hout, Wq, 0, 0, 1, 1);
  if (!packX || !packDy) return null;
  const scratch = { xp: xFloats, dyp: dyFloats };
  return splitWeightGrad(gemm, outSize, elems, sched.splits, scratch, biasGrad, [packX, packDy]);
}

/**
 * The register block for a GEMM with `cols` output columns, by a cost rule rather than a list of shapes:
 * columns past `cols` in the last block are wasted FMAs, and a narrow block reloads the A operand for every
 * few columns, so `tn` minimizes padded columns x (1 + 8 / tn) over 4, 8, 16 (and 32 up to `maxTn`). A
 * narrow block takes more rows (`tm` 32) to keep its loads amortized. The large layers keep their 16- or
 * 32-wide blocks. Measurements: bench/results/llvmpipe-dev-harness-2026-12-04.txt (per shape and tile;
 * weight gradients of 8-channel convs 2-7x faster) and the profile before/after (the 256 px forward's conv
 * time halved).
 */
export function convTileFor(cols: number, maxTn: number, wg = 64): TexTile {
  let best = 16, bestCost = Infinity;
  for (const tn of [4, 8, 16, 32]) {
    if (tn > maxTn) break;
    const cost = Math.ceil(cols / tn) * tn * (1 + 8 / tn);
    if (cost < bestCost) [best, bestCost] = [tn, cost];
  }
  return { tm: best <= 8 ? 32 : 16, tn: best, wg };
}

/** Forward convolution: inputs `x` [N,Cin,H,W], `w` [Cout,Cin,kh,kw], optional `bias` [Cout]; with
 * `residual`, also `res` [N,Cout,Hout,Wout], added after the activation where the plan can
 * (`appliesResidual` says whether). */
export function conv2dForwardPlan(
  s: Conv2dShape,
  hasBias: boolean,
  tileOverride?: GemmTile,
  texTile: TexTile = convTileFor(s.Cout, CONV_TEX_TILE.tn),
  directTile: TexTile | null = convTileFor(s.Cout, CONV_DIRECT_TILE.tn),
  relu = false,
  residual = false,
): KernelPlan {
  if (!tileOverride && s.N * s.Cout * s.Hout * s.Wout > 0) {
    const tex = forwardTexPlan(s, hasBias, texTile, directTile, relu, residual);
    if (tex) return tex;
  }
  const taps = s.kh * s.kw;
  const tile = tileOverride ?? convTile(s.Cout, taps);
  const extent = { rows: s.N * s.Hout * s.Wout, cols: s.Cout, kLen: s.Cin * taps, batches: 1 };
  const outSize = s.N * s.Cout * s.Hout * s.Wout;
  const hooks = forwardHooks(s, tile, hasBias);
  const bias = hasBias ? { inner: s.Hout * s.Wout, len: s.Cout } : undefined;
  const plan = convGemmPlan(`fwd${hasBias ? "-bias" : ""}`, s, extent, tile, hooks, outSize, bias);
  return residual ? { ...plan, appliesResidual: false } : plan;
}

/** Input gradient (also transposed convolution): inputs `dy` [N,Cout,Hout,Wout], `w` and, with `hasBias`,
 * `bias` [Cin] (added in the output write; `appliesBias` says whether the plan could); with `residual`, also
 * `res` [N,Cin,H,W] added to the output (a gradient accumulated in place of a separate add; `appliesResidual`
 * says whether the plan could). Out [N,Cin,H,W]. */
export function conv2dInputGradPlan(
  s: Conv2dShape,
  texTile: TexTile = convTileFor(s.Cin, CONV_TEX_TILE.tn),
  directTile: TexTile | null = convTileFor(s.Cin, CONV_DIRECT_TILE.tn),
  hasBias = false,
  residual = false,
  gate = false,
): KernelPlan {
  if (s.N * s.Cin * s.H * s.W > 0) {
    const tex = inputGradTexPlan(s, texTile, directTile, hasBias, residual, gate);
    if (tex) return hasBias ? { ...tex, appliesBias: true } : tex;
  }
  const taps = s.kh * s.kw;
  const tile = convTile(s.Cin, taps);
  const extent = { rows: s.N * s.H * s.W, cols: s.Cin, kLen: s.Cout * taps, batches: 1 };
  const plan = convGemmPlan("dx", s, extent, tile, inputGradHooks(s, tile), s.N * s.Cin * s.H * s.W);
  return {
    ...plan,
    ...(hasBias ? { appliesBias: false } : {}),
    ...(residual ? { appliesResidual: false } : {}),
    ...(gate ? { appliesGate: false } : {}),
  };
}

/** Weight gradient: inputs `x` [N,Cin,H,W], `dy` [N,Cout,Hout,Wout]; out [Cout,Cin,kh,kw]. With
 * `biasGrad`, also the bias gradient `db` [Cout] where the plan can (`appliesBias` says whether). */
export function conv2dWeightGradPlan(
  s: Conv2dShape,
  texTile: TexTile = convTileFor(s.Cout, CONV_TEX_TILE.tn),
  directTile: TexTile | null = texTile,
  biasGrad = false,
  gate = false,
): KernelPlan {
  const taps = s.kh * s.kw;
  const tile = { ...convTile(s.Cout, 4) };
  const extent = { rows: s.Cin * taps, cols: s.Cout, kLen: s.N * s.Hout * s.Wout, batches: 1 };
  const outSize = s.Cout * s.Cin * taps;
  if (extent.kLen === 0) throw new Error("conv2dWeightGradPlan: empty output positions");
  if (outSize > 0 && directTile && s.strideH <= DIRECT_MAX_STRIDE && s.strideW <= DIRECT_MAX_STRIDE) {
    const direct = weightGradDirectPlan(s, directTile, biasGrad, gate);
    if (direct) return direct;
  }
  if (outSize > 0) {
    const tex = weightGradTexPlan(s, texTile, biasGrad);
    if (tex) return gate ? { ...tex, appliesGate: false } : tex;
  }
  const plan = convGemmPlan("dw", s, extent, tile, weightGradHooks(s, tile), outSize);
  return { ...plan, ...(biasGrad ? { appliesBias: false } : {}), ...(gate ? { appliesGate: false } : {}) };
}
