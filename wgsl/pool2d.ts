/**
 * 2-D max/average pooling (no padding, floor mode) and their gradients as gather kernels: the backward
 * kernel visits every input site once and sums over the few windows that contain it, so no atomics.
 *
 * @module
 */

import { foldWorkgroups, type KernelStep } from "./plan.ts";

const WORKGROUP = 256;

/** Pooling geometry over planes of an NCHW tensor. */
export interface Pool2dShape {
  planes: number;
  H: number;
  W: number;
  Hout: number;
  Wout: number;
  kernel: number;
  stride: number;
}

const PARAMS = `struct Params { size: u32, H: u32, W: u32, Hout: u32, Wout: u32, k: u32, s: u32, pad: u32 }
@group(0) @binding(0) var<uniform> u: Params;`;

function uniforms(p: Pool2dShape, size: number): ArrayBuffer {
  return new Uint32Array([size, p.H, p.W, p.Hout, p.Wout, p.kernel, p.stride, 0]).buffer;
}

const ENTRY = `@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = (wg.x + wg.y * nwg.x) * ${WORKGROUP}u + lid;
  if (i >= u.size) { return; }`;

// Index of the first maximum of window (oy, ox) in plane `base` (row-major scan, like PyTorch).
const ARGMAX = `fn window_argmax(base: u32, oy: u32, ox: u32) -> u32 {
  var best = -3.402823e38;
  var where_ = 0u;
  for (var dy = 0u; dy < u.k; dy++) {
    for (var dx = 0u; dx < u.k; dx++) {
      let idx = (oy * u.s + dy) * u.W + ox * u.s + dx;
      let v = x[base + idx];
      if (v > best) { best = v; where_ = idx; }
    }
  }
  return where_;
}`;

/** Forward pooling step: input `x`, output `out`. */
export function pool2dForwardStep(mode: "max" | "avg", p: Pool2dShape): KernelStep {
  const size = p.planes * p.Hout * p.Wout;
  const body = mode === "max" ? `  out[i] = x[base + window_argmax(base, oy, ox)];` : `  var acc = 0.0;
  for (var dy = 0u; dy < u.k; dy++) {
    for (var dx = 0u; dx < u.k; dx++) { acc += x[base + (oy * u.s + dy) * u.W + ox * u.s + dx]; }
  }
  out[i] = acc / f32(u.k * u.k);`;
  return {
    kernel: {
      key: `pool2d:${mode}:fwd`,
      code: `${PARAMS}
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
${mode === "max" ? ARGMAX : ""}
${ENTRY}
  let ox = i % u.Wout;
  let oy = (i / u.Wout) % u.Hout;
  let base = (i / (u.Wout * u.Hout)) * u.H * u.W;
${body}
}
`,
    },
    uniforms: uniforms(p, size),
    buffers: ["x", "out"],
    writes: ["out"],
    workgroups: foldWorkgroups(Math.ceil(size / WORKGROUP)),
  };
}

/** Backward pooling step: inputs `x` (max only) and `dy`, output `out` = dx. */
export function pool2dBackwardStep(mode: "max" | "avg", p: Pool2dShape): KernelStep {
  const size = p.planes * p.H * p.W;
  const contribution = mode === "max"
    ? `if (window_argmax(base, oy, ox) == iy * u.W + ix) { acc += dy[obase + oy * u.Wout + ox]; }`
    : `acc += dy[obase + oy * u.Wout + ox];`;
  return {
    kernel: {
      key: `pool2d:${mode}:bwd`,
      code: `${PARAMS}
${mode === "max" ? "@group(0) @binding(1) var<storage, read> x: array<f32>;" : ""}
@group(0) @binding(${mode === "max" ? 2 : 1}) var<storage, read> dy: array<f32>;
@group(0) @binding(${mode === "max" ? 3 : 2}) var<storage, read_write> out: array<f32>;
${mode === "max" ? ARGMAX : ""}
${ENTRY}
  let ix = i % u.W;
  let iy = (i / u.W) % u.H;
  let plane = i / (u.W * u.H);
  let base = plane * u.H * u.W;
  let obase = plane * u.Hout * u.Wout;
  // Windows oy with oy*s <= iy < oy*s + k.
  let oy0 = select(0u, (iy - u.k + u.s) / u.s, iy + u.s >= u.k);
  let ox0 = select(0u, (ix - u.k + u.s) / u.s, ix + u.s >= u.k);
  let oy1 = min(iy / u.s, u.Hout - 1u);
  let ox1 = min(ix / u.s, u.Wout - 1u);
  var acc = 0.0;
  for (var oy = oy0; oy <= oy1; oy++) {
    for (var ox = ox0; ox <= ox1; ox++) { ${contribution} }
  }
  out[i] = ${mode === "max" ? "acc" : "acc / f32(u.k * u.k)"};
}
`,
    },
    uniforms: uniforms(p, size),
    buffers: mode === "max" ? ["x", "dy", "out"] : ["dy", "out"],
    writes: ["out"],
    workgroups: foldWorkgroups(Math.ceil(size / WORKGROUP)),
  };
}
