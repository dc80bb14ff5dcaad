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

/** Adam/AdamW step over `param`, `m`, `v` (written) from `grad`. `stepSize` already folds in bias
 * correction: lr * sqrt(1 - beta2^t) / (1 - beta1^t); `epsHat` = eps * sqrt(1 - beta2^t); `l2` is Adam's
 * weight decay, `decay` AdamW's lr * weight decay. */
export function adamStep(
  size: number,
  h: { beta1: number; beta2: number; stepSize: number; epsHat: number; l2: number; decay: number },
): KernelStep {
  const buffer = new ArrayBuffer(32);
  new Uint32Array(buffer)[0] = size;
  new Float32Array(buffer).set([h.beta1, h.beta2, h.stepSize, h.epsHat, h.l2, h.decay], 1);
  return {
    kernel: {
      key: "optim:adam",
      code:
        `struct Params { size: u32, beta1: f32, beta2: f32, stepSize: f32, epsHat: f32, l2: f32, decay: f32, pad: u32 }
@group(0) @binding(0) var<uniform> u: Params;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> param: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;
${ENTRY}
  var p = param[i];
  // L2 penalty folded into the gradient (Adam) and/or decoupled decay lr * wd on the weight (AdamW).
  let g = grad[i] + u.l2 * p;
  p = p * (1.0 - u.decay);
  let mi = u.beta1 * m[i] + (1.0 - u.beta1) * g;
  let vi = u.beta2 * v[i] + (1.0 - u.beta2) * g * g;
  m[i] = mi;
  v[i] = vi;
  param[i] = p - u.stepSize * mi / (sqrt(vi) + u.epsHat);
}
`,
    },
    uniforms: buffer,
    buffers: ["grad", "param", "m", "v"],
    writes: ["param", "m", "v"],
    workgroups: foldWorkgroups(Math.ceil(size / WORKGROUP)),
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
