/**
 * 1-D resampling along one axis of a tensor viewed as [outer, len, inner] (nearest or linear, PyTorch
 * coordinate conventions). 2-D nearest/bilinear upsampling applies it along W then H (both are separable).
 * The backward kernel gathers, for each input site, the few output sites whose taps touch it.
 *
 * @module
 */

import { foldWorkgroups, type KernelStep } from "./plan.ts";

const WORKGROUP = 256;

/** Geometry of one 1-D resampling pass. */
export interface Resample1d {
  outer: number;
  inner: number;
  lenIn: number;
  lenOut: number;
  mode: "nearest" | "linear";
  alignCorners: boolean;
  /** Source step per output step (PyTorch: 1/scale_factor when given, else lenIn/lenOut). */
  ratio: number;
}

function uniforms(r: Resample1d, size: number): ArrayBuffer {
  const buffer = new ArrayBuffer(32);
  const u32 = new Uint32Array(buffer);
  u32.set([size, r.outer, r.inner, r.lenIn, r.lenOut]);
  const ratio = r.alignCorners ? (r.lenOut > 1 ? (r.lenIn - 1) / (r.lenOut - 1) : 0) : r.ratio;
  new Float32Array(buffer)[5] = ratio;
  return buffer;
}

function taps(r: Resample1d): string {
  // Returns the two source taps and the weight of the second for output position j.
  const src = r.mode === "nearest"
    ? "let s = min(u32(floor(f32(j) * u.ratio)), u.lenIn - 1u); return Taps(s, s, 0.0);"
    : `let f = ${r.alignCorners ? "f32(j) * u.ratio" : "max((f32(j) + 0.5) * u.ratio - 0.5, 0.0)"};
  let i0 = min(u32(floor(f)), u.lenIn - 1u);
  let i1 = min(i0 + 1u, u.lenIn - 1u);
  return Taps(i0, i1, f - f32(i0));`;
  return `struct Taps { i0: u32, i1: u32, w1: f32 }
fn taps(j: u32) -> Taps {
  ${src}
}`;
}

const HEADER =
  `struct Params { size: u32, outer: u32, inner: u32, lenIn: u32, lenOut: u32, ratio: f32, p0: u32, p1: u32 }
@group(0) @binding(0) var<uniform> u: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;`;

const ENTRY = `@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let id = (wg.x + wg.y * nwg.x) * ${WORKGROUP}u + lid;
  if (id >= u.size) { return; }`;

/** Forward step: `src` [outer, lenIn, inner] to `out` [outer, lenOut, inner]. */
export function resampleForwardStep(r: Resample1d): KernelStep {
  const size = r.outer * r.lenOut * r.inner;
  return {
    kernel: {
      key: `resample:${r.mode}:${r.alignCorners}:fwd`,
      code: `${HEADER}
${taps(r)}
${ENTRY}
  let i = id % u.inner;
  let j = (id / u.inner) % u.lenOut;
  let o = id / (u.inner * u.lenOut);
  let t = taps(j);
  let base = o * u.lenIn * u.inner + i;
  out[id] = src[base + t.i0 * u.inner] * (1.0 - t.w1) + src[base + t.i1 * u.inner] * t.w1;
}
`,
    },
    uniforms: uniforms(r, size),
    buffers: ["src", "out"],
    writes: ["out"],
    workgroups: foldWorkgroups(Math.ceil(size / WORKGROUP)),
  };
}

/** Backward step: `src` = output gradient [outer, lenOut, inner] to `out` = input gradient. */
export function resampleBackwardStep(r: Resample1d): KernelStep {
  const size = r.outer * r.lenIn * r.inner;
  return {
    kernel: {
      key: `resample:${r.mode}:${r.alignCorners}:bwd`,
      code: `${HEADER}
${taps(r)}
${ENTRY}
  let i = id % u.inner;
  let s = (id / u.inner) % u.lenIn;
  let o = id / (u.inner * u.lenIn);
  // Output sites whose taps can reach s lie within about 1/ratio + 2 of s / ratio.
  let center = f32(s) / max(u.ratio, 1e-6);
  let reach = 1.0 / max(u.ratio, 1e-6) + 2.0;
  let j0 = u32(max(center - reach, 0.0));
  let j1 = min(u32(max(center + reach, 0.0)) + 1u, u.lenOut);
  var acc = 0.0;
  let base = o * u.lenOut * u.inner + i;
  for (var j = j0; j < j1; j++) {
    let t = taps(j);
    let g = src[base + j * u.inner];
    if (t.i0 == s) { acc += g * (1.0 - t.w1); }
    if (t.i1 == s) { acc += g * t.w1; }
  }
  out[id] = acc;
}
`,
    },
    uniforms: uniforms(r, size),
    buffers: ["src", "out"],
    writes: ["out"],
    workgroups: foldWorkgroups(Math.ceil(size / WORKGROUP)),
  };
}
