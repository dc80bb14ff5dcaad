/**
 * Element-wise kernels: one WGSL expression over up to three broadcast inputs.
 *
 * The expression reads inputs as `a`, `b`, `c` and four f32 constants as `k.x`..`k.w` (constants travel in
 * the uniform block, so e.g. every leaky-ReLU slope shares one pipeline). Two variants: `flat` when every
 * input has the output's size or is a single value (no index arithmetic; also used to walk huge tensors
 * chunk by chunk), and `strided` for general broadcasting up to rank 8 (index math unrolled per rank).
 *
 * @module
 */

import { DIVMOD_WGSL, foldWorkgroups, type KernelStep, texelCoords } from "./plan.ts";

/** Invocations per workgroup of element-wise kernels. */
export const ELEMENTWISE_WORKGROUP = 256;
/** Largest rank of strided element-wise kernels. */
export const MAX_RANK = 8;

const INPUT_NAMES = ["a", "b", "c"];

function header(numInputs: number): string {
  const bindings = INPUT_NAMES.slice(0, numInputs)
    .map((name, i) => `@group(0) @binding(${i + 1}) var<storage, read> in_${name}: array<f32>;`)
    .join("\n");
  return `struct Params {
  size: u32, base: u32, rank: u32, pad: u32,
  k: vec4<f32>,
  shape: array<vec4<u32>, 2>,
  strides: array<vec4<u32>, 6>,
  origin: vec4<u32>,
  recip: array<vec4<f32>, 2>,
}
@group(0) @binding(0) var<uniform> u: Params;
${bindings}
@group(0) @binding(${numInputs + 1}) var<storage, read_write> out: array<f32>;
fn dim(d: u32) -> u32 { return u.shape[d / 4u][d % 4u]; }
fn stride(input: u32, d: u32) -> u32 { let i = input * 8u + d; return u.strides[i / 4u][i % 4u]; }
fn recip(d: u32) -> f32 { return u.recip[d / 4u][d % 4u]; }
${DIVMOD_WGSL}
`;
}

/**
 * The flat kernel reading its full-size inputs as rgba32float textures (see `Engine.readsViaTextures`):
 * each invocation takes one texel of every such input and writes 4 outputs; single-value inputs stay storage.
 */
function texturedFlatKernel(expr: string, numInputs: number, scalarInputs: boolean[]): string {
  const names = INPUT_NAMES.slice(0, numInputs);
  const bindings = names.map((name, i) =>
    scalarInputs[i]
      ? `@group(0) @binding(${i + 1}) var<storage, read> in_${name}: array<f32>;`
      : `@group(0) @binding(${i + 1}) var in_${name}: texture_2d<f32>;`
  );
  const loads = names.map((name, i) =>
    scalarInputs[i]
      ? `  let ${name} = in_${name}[0u];`
      : `  let ${name}4 = textureLoad(in_${name}, texel, 0);`
  );
  const stores = ["x", "y", "z", "w"].map((comp, j) => {
    // Inputs are the single names a, b, c; constants are k.x..k.w, never matched (k is not an input name).
    const e = expr.replace(
      /(?<!\.)\b([abc])\b/g,
      (m) => scalarInputs[INPUT_NAMES.indexOf(m)] ? m : `${m}4.${comp}`,
    );
    return `  if (e + ${j}u < u.size) { out[e + ${j}u] = ${e}; }`;
  });
  return `struct Params { size: u32, base: u32, rank: u32, pad: u32, k: vec4<f32>, }
@group(0) @binding(0) var<uniform> u: Params;
${bindings.join("\n")}
@group(0) @binding(${numInputs + 1}) var<storage, read_write> out: array<f32>;
@compute @workgroup_size(${ELEMENTWISE_WORKGROUP})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let t = (wg.x + wg.y * nwg.x) * ${ELEMENTWISE_WORKGROUP}u + lid;
  let e = t * 4u;
  if (e >= u.size) { return; }
  let texel = ${texelCoords("t")};
  let k = u.k;
${loads.join("\n")}
${stores.join("\n")}
}
`;
}

/**
 * Builds the kernel source; `scalarInputs[i]` marks inputs read at index 0 in the flat variants. The
 * `flat-texture` variant reads the other inputs as textures and covers 4 elements per invocation (dispatch
 * it with {@link elementwiseStep}'s `perInvocation` = 4 and those inputs in the step's `textures`).
 */
export function elementwiseKernel(
  expr: string,
  numInputs: number,
  variant: "flat" | "flat-texture" | "strided",
  rank: number,
  scalarInputs: boolean[],
  floatDivision = false,
): { key: string; code: string } {
  if (variant === "flat-texture") {
    const key = `ew:flat-texture:${scalarInputs.map(Number).join("")}:${numInputs}:${expr}`;
    return { key, code: texturedFlatKernel(expr, numInputs, scalarInputs) };
  }
  let body: string;
  if (variant === "flat") {
    body = INPUT_NAMES.slice(0, numInputs)
      .map((name, i) => `  let ${name} = in_${name}[${scalarInputs[i] ? "0u" : "i"}];`)
      .join("\n");
  } else {
    const lines = ["  var rem = i + u.base;"];
    for (let j = 0; j < numInputs; j++) lines.push(`  var off_${INPUT_NAMES[j]} = 0u;`);
    for (let d = rank - 1; d >= 0; d--) {
      // The outermost coordinate is what remains.
      if (d === 0) lines.push("  { let coord = rem;");
      else if (floatDivision) {
        lines.push(`  { let qr = divmod(rem, dim(${d}u), recip(${d}u)); let coord = qr.y; rem = qr.x;`);
      } else lines.push(`  { let coord = rem % dim(${d}u); rem = rem / dim(${d}u);`);
      for (let j = 0; j < numInputs; j++) {
        lines.push(`    off_${INPUT_NAMES[j]} += coord * stride(${j}u, ${d}u);`);
      }
      lines.push("  }");
    }
    for (let j = 0; j < numInputs; j++) {
      // origin: the first element of the input's bound range (huge inputs are bound chunk by chunk).
      lines.push(`  let ${INPUT_NAMES[j]} = in_${INPUT_NAMES[j]}[off_${INPUT_NAMES[j]} - u.origin[${j}]];`);
    }
    body = lines.join("\n");
  }
  const code = `${header(numInputs)}
@compute @workgroup_size(${ELEMENTWISE_WORKGROUP})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = (wg.x + wg.y * nwg.x) * ${ELEMENTWISE_WORKGROUP}u + lid;
  if (i >= u.size) { return; }
  let k = u.k;
${body}
  out[i] = ${expr};
}
`;
  const fdiv = variant === "strided" && floatDivision ? ":fdiv" : "";
  const key = `ew:${variant}:${rank}${fdiv}:${scalarInputs.map(Number).join("")}:${numInputs}:${expr}`;
  return { key, code };
}

/**
 * Merges neighbouring axes that every input walks as one (both broadcast, or contiguous: the outer stride is
 * the inner stride times the inner length) and drops axes of length 1, so a channel mask [N,1,H,W] against
 * [N,C,H,W] walks [N, C, H*W]: fewer index divisions per element.
 */
export function collapseAxes(
  shape: readonly number[],
  strides: readonly (readonly number[])[],
): { shape: number[]; strides: number[][] } {
  const outShape: number[] = [];
  const outStrides: number[][] = strides.map(() => []);
  for (let d = 0; d < shape.length; d++) {
    if (shape[d] === 1) continue;
    const last = outShape.length - 1;
    if (last >= 0 && strides.every((s, j) => outStrides[j][last] === s[d] * shape[d])) {
      outShape[last] *= shape[d];
      strides.forEach((s, j) => (outStrides[j][last] = s[d]));
    } else {
      outShape.push(shape[d]);
      strides.forEach((s, j) => outStrides[j].push(s[d]));
    }
  }
  if (outShape.length === 0) return { shape: [1], strides: strides.map(() => [0]) };
  return { shape: outShape, strides: outStrides };
}

/**
 * Packs the uniform block of an element-wise kernel. `base` is the first output element of the dispatch (the
 * strided variant's coordinates count from it); `origins[j]` is the element at which input j's binding starts.
 */
export function elementwiseUniforms(
  size: number,
  base: number,
  constants: readonly number[],
  shape: readonly number[],
  inputStrides: readonly (readonly number[])[],
  origins: readonly number[] = [],
): ArrayBuffer {
  const buffer = new ArrayBuffer(16 + 16 + 32 + 96 + 16 + 32);
  const u32 = new Uint32Array(buffer);
  const f32 = new Float32Array(buffer);
  u32[0] = size;
  u32[1] = base;
  u32[2] = shape.length;
  for (let i = 0; i < 4; i++) f32[4 + i] = constants[i] ?? 0;
  shape.forEach((d, i) => (u32[8 + i] = d));
  inputStrides.forEach((strides, j) => strides.forEach((s, d) => (u32[16 + j * 8 + d] = s)));
  origins.forEach((o, j) => (u32[40 + j] = o));
  shape.forEach((d, i) => (f32[44 + i] = 1 / d));
  return buffer;
}

/** One dispatch step covering `count` output elements, `perInvocation` of them per invocation. */
export function elementwiseStep(
  kernel: { key: string; code: string },
  uniforms: ArrayBuffer,
  buffers: string[],
  count: number,
  ranges?: Record<string, [number, number]>,
  textures?: string[],
  perInvocation = 1,
): KernelStep {
  return {
    kernel,
    uniforms,
    buffers,
    writes: ["out"],
    workgroups: foldWorkgroups(Math.ceil(count / perInvocation / ELEMENTWISE_WORKGROUP)),
    ranges,
    textures,
  };
}
