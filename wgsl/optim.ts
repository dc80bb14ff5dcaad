/**
 * Fused optimizer update kernels: one dispatch updates a parameter and its state in place.
 *
 * @module
 */

import { foldWorkgroups, type KernelStep } from "./plan.ts";

const WORKGROUP = 256;

const ENTRY = `@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = (wg.x + wg.y * nwg.x) * ${WORKGROUP}u + lid;
  if (i >= u.size) { return; }`;

/** Hyper-parameters of {@link adamStep}. */
export interface AdamHyper {
  beta1: number;
  beta2: number;
  stepSize: number;
  epsHat: number;
  l2: number;
  decay: number;
}

/** Most parameters one {@link adamStep} updates (4 storage bindings each). */
export const ADAM_MAX_SEGMENTS = 8;

/**
 * Adam/AdamW step over `sizes.length` parameters at once (one dispatch instead of one each): `param{i}`,
 * `m{i}`, `v{i}` (written) from `grad{i}`. Invocation `i` of the dispatch updates element `i - end{s-1}` of
 * the segment `s` whose range holds it. `stepSize` already folds in bias correction: lr * sqrt(1 - beta2^t)
 * / (1 - beta1^t); `epsHat` = eps * sqrt(1 - beta2^t); `l2` is Adam's weight decay, `decay` AdamW's lr *
 * weight decay.
 */
export function adamStep(sizes: readonly number[], h: AdamHyper): KernelStep {
  const k = sizes.length;
  if (k < 1 || k > ADAM_MAX_SEGMENTS) throw new Error(`adamStep: 1 to ${ADAM_MAX_SEGMENTS} parameters`);
  const buffer = new ArrayBuffer(64);
  new Float32Array(buffer).set([h.beta1, h.beta2, h.stepSize, h.epsHat, h.l2, h.decay], 0);
  let total = 0;
  const ends = sizes.map((n) => (total += n));
  new Uint32Array(buffer).set(ends, 8);
  const end = (s: number) => `u.ends[${s >> 2}][${s & 3}]`;
  const segment = (s: number) => {
    const j = s === 0 ? "i" : `i - ${end(s - 1)}`;
    return `{
    let j = ${j};
    var p = param${s}[j];
    // L2 penalty folded into the gradient (Adam) and/or decoupled decay lr * wd on the weight (AdamW).
    let g = grad${s}[j] + u.l2 * p;
    p = p * (1.0 - u.decay);
    let mi = u.beta1 * m${s}[j] + (1.0 - u.beta1) * g;
    let vi = u.beta2 * v${s}[j] + (1.0 - u.beta2) * g * g;
    m${s}[j] = mi;
    v${s}[j] = vi;
    param${s}[j] = p - u.stepSize * mi / (sqrt(vi) + u.epsHat);
  }`;
  };
  const names = (s: number) => [`grad${s}`, `param${s}`, `m${s}`, `v${s}`];
  const decls = sizes.map((_, s) =>
    names(s).map((name, b) =>
      `@group(0) @binding(${4 * s + b + 1}) var<storage, ${
        b === 0 ? "read" : "read_write"
      }> ${name}: array<f32>;`
    ).join("\n")
  ).join("\n");
  const body = sizes.map((_, s) => `if (i < ${end(s)}) ${segment(s)}`).join(" else ");
  return {
    kernel: {
      key: `optim:adam:${k}`,
      code: `struct Params { beta1: f32, beta2: f32, stepSize: f32, epsHat: f32, l2: f32, decay: f32,
  ends: array<vec4<u32>, 2> }
@group(0) @binding(0) var<uniform> u: Params;
${decls}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = (wg.x + wg.y * nwg.x) * ${WORKGROUP}u + lid;
  ${body}
}
`,
    },
    uniforms: buffer,
    buffers: sizes.flatMap((_, s) => names(s)),
    writes: sizes.flatMap((_, s) => names(s).slice(1)),
    workgroups: foldWorkgroups(Math.ceil(total / WORKGROUP)),
  };
}

/** SGD step with momentum (PyTorch convention: the buffer starts as the first gradient). */
export function sgdStep(
  size: number,
  h: { lr: number; momentum: number; weightDecay: number; first: boolean; nesterov: boolean },
): KernelStep {
  const buffer = new ArrayBuffer(32);
  const u32 = new Uint32Array(buffer);
  u32[0] = size;
  new Float32Array(buffer).set([h.lr, h.momentum, h.weightDecay], 1);
  u32[4] = h.first ? 1 : 0;
  u32[5] = h.nesterov ? 1 : 0;
  return {
    kernel: {
      key: "optim:sgd",
      code:
        `struct Params { size: u32, lr: f32, momentum: f32, wd: f32, first: u32, nesterov: u32, p0: u32, p1: u32 }
@group(0) @binding(0) var<uniform> u: Params;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> param: array<f32>;
@group(0) @binding(3) var<storage, read_write> buf: array<f32>;
${ENTRY}
  let p = param[i];
  let g = grad[i] + u.wd * p;
  let b = select(u.momentum * buf[i] + g, g, u.first == 1u);
  buf[i] = b;
  let d = select(b, g + u.momentum * b, u.nesterov == 1u);
  param[i] = p - u.lr * d;
}
`,
    },
    uniforms: buffer,
    buffers: ["grad", "param", "buf"],
    writes: ["param", "buf"],
    workgroups: foldWorkgroups(Math.ceil(size / WORKGROUP)),
  };
}
