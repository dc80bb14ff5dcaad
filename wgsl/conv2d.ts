/**
 * 2-D convolution (NCHW, weights [Cout, Cin, kh, kw], groups = 1) as implicit GEMM on the shared
 * register-blocked body of `gemm.ts`; no im2col buffer is materialised.
 *
 * In all three kernels the uniform GEMM operand (A, one scalar load per workgroup) is the spatially gathered
 * tensor, so the padding / stride bounds checks are uniform too, and lanes own channels:
 * - forward: rows = output positions (N*Hout*Wout), columns = Cout, k = (Cin, kh, kw)
 * - input grad: rows = input positions (N*H*W), columns = Cin, k = (Cout, kh, kw)
 * - weight grad: rows = (Cin, kh, kw), columns = Cout, k = output positions (split + reduced)
 *
 * Kernel taps are compile-time (unrolled); every other size travels in the uniforms.
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
  packI32,
  reduceSplitsStep,
  tileKey,
} from "./gemm.ts";
import { foldWorkgroups, type KernelPlan, type KernelStep } from "./plan.ts";

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
    let ok_${st}_${i} = u32(ih_${st}_${i}) < u32(u.H) && u32(iw_${st}_${i}) < u32(u.W);`).join(""),
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

/** Forward convolution: inputs `x` [N,Cin,H,W], `w` [Cout,Cin,kh,kw], optional `bias` [Cout]. */
export function conv2dForwardPlan(s: Conv2dShape, hasBias: boolean, tileOverride?: GemmTile): KernelPlan {
  const taps = s.kh * s.kw;
  const tile = tileOverride ?? convTile(s.Cout, taps);
  const extent = { rows: s.N * s.Hout * s.Wout, cols: s.Cout, kLen: s.Cin * taps, batches: 1 };
  const outSize = s.N * s.Cout * s.Hout * s.Wout;
  const hooks = forwardHooks(s, tile, hasBias);
  const bias = hasBias ? { inner: s.Hout * s.Wout, len: s.Cout } : undefined;
  return convGemmPlan(`fwd${hasBias ? "-bias" : ""}`, s, extent, tile, hooks, outSize, bias);
}

/** Input gradient (also transposed convolution): inputs `dy` [N,Cout,Hout,Wout], `w`; out [N,Cin,H,W]. */
export function conv2dInputGradPlan(s: Conv2dShape): KernelPlan {
  const taps = s.kh * s.kw;
  const tile = convTile(s.Cin, taps);
  const extent = { rows: s.N * s.H * s.W, cols: s.Cin, kLen: s.Cout * taps, batches: 1 };
  return convGemmPlan("dx", s, extent, tile, inputGradHooks(s, tile), s.N * s.Cin * s.H * s.W);
}

/** Weight gradient: inputs `x` [N,Cin,H,W], `dy` [N,Cout,Hout,Wout]; out [Cout,Cin,kh,kw]. */
export function conv2dWeightGradPlan(s: Conv2dShape): KernelPlan {
  const taps = s.kh * s.kw;
  const tile = { ...convTile(s.Cout, 4) };
  const extent = { rows: s.Cin * taps, cols: s.Cout, kLen: s.N * s.Hout * s.Wout, batches: 1 };
  const outSize = s.Cout * s.Cin * taps;
  if (extent.kLen === 0) throw new Error("conv2dWeightGradPlan: empty output positions");
  return convGemmPlan("dw", s, extent, tile, weightGradHooks(s, tile), outSize);
}
