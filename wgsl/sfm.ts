/**
 * SFM's fused kernels (layers/sparse/sfm.ts): per image and channel plane, one workgroup measures the
 * degraded and clean regions' means and standard deviations (two loops over the plane: means, then centred
 * second moments, as the composed ops do), and one element-wise pass modulates. The backward pass is the
 * same shape: one reduction of the two sums the gradient needs per plane, then one element-wise pass.
 *
 * Planes are read 4 sites at a time (H*W must be a multiple of 4), through textures where the adapter
 * prefers them (`Engine.readsViaTextures`), else as vec4 storage.
 *
 * @module
 */

import {
  type DefinedKernel,
  defineKernel,
  type KernelBinding,
  type KernelPlan,
  texelCoords,
} from "./plan.ts";

/** Floats per plane in the statistics buffer: degraded mean, std, clean mean, std, valid, counts, 0. */
export const SFM_STATS_STRIDE = 8;
/** Lanes of the per-plane reduction workgroups. */
const REDUCE_LANES = 64;
/** Lanes of the element-wise workgroups (each lane handles 4 sites). */
const MAP_LANES = 256;
/** Largest plane (sites) the kernels take: the reduction loops stay under llvmpipe's 65,535 iterations. */
export const SFM_MAX_PLANE = REDUCE_LANES * 4 * 65535;

/** Geometry of one SFM call. */
export interface SfmGeometry {
  /** Images N. */
  batch: number;
  /** Channels C. */
  channels: number;
  /** Sites per plane, H * W (a multiple of 4). */
  plane: number;
  /** Whether plane-sized inputs are read as textures. */
  textures: boolean;
}

function loader(name: string, textures: boolean): string {
  return textures
    ? `fn load_${name}(t: u32) -> vec4<f32> { return textureLoad(${name}, ${texelCoords("t")}, 0); }`
    : `fn load_${name}(t: u32) -> vec4<f32> { return ${name}[t]; }`;
}

function planeInput(name: string, textures: boolean) {
  return { name, kind: textures ? "t" as const : "r" as const, type: "vec4<f32>" };
}

const REDUCE = `var<workgroup> partial: array<vec4<f32>, ${REDUCE_LANES}>;
fn workgroup_sum(lid: u32, v: vec4<f32>) -> vec4<f32> {
  partial[lid] = v;
  workgroupBarrier();
  for (var s = ${REDUCE_LANES / 2}u; s > 0u; s = s >> 1u) {
    if (lid < s) { partial[lid] = partial[lid] + partial[lid + s]; }
    workgroupBarrier();
  }
  let total = partial[0];
  workgroupBarrier();
  return total;
}`;

/** Start of the per-plane reductions: one workgroup per (image, channel) plane; `f0`, `m0` are the first
 * texels of the plane and of its image's mask. */
const REDUCE_MAIN = `@compute @workgroup_size(${REDUCE_LANES})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let plane = wg.x + wg.y * nwg.x;
  if (plane >= u.planes) { return; }
  let f0 = plane * u.plane_texels;
  let m0 = (plane / u.channels) * u.plane_texels;`;

/** Start of the element-wise passes: workgroup row `y` is the plane, `t` the texel (4 sites). */
const MAP_MAIN = `@compute @workgroup_size(${MAP_LANES})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
  let plane = wg.y;
  let within = gid.x;
  if (within >= u.plane_texels) { return; }
  let t = plane * u.plane_texels + within;`;

const kernels = new Map<string, DefinedKernel>();
function cached(key: string, make: () => DefinedKernel): DefinedKernel {
  let k = kernels.get(key);
  if (!k) kernels.set(key, k = make());
  return k;
}

const planeUniforms = { planes: "u32", channels: "u32", plane_texels: "u32", eps: "f32" } as const;

/** One SFM kernel (per plane-texel uniforms), keyed by name and read path, built once. */
function sfmKernel(name: string, textures: boolean, bindings: KernelBinding[], body: string): DefinedKernel {
  const key = `sfm-${name}${textures ? "-tex" : ""}`;
  return cached(key, () => defineKernel({ key, uniforms: planeUniforms, bindings, body }));
}

function statsKernel(textures: boolean): DefinedKernel {
  return sfmKernel(
    "stats",
    textures,
    [planeInput("f", textures), planeInput("mask", textures), { name: "stats", kind: "w" }],
    `${loader("f", textures)}
${loader("mask", textures)}
${REDUCE}
${REDUCE_MAIN}
  var sums = vec4<f32>(0.0);
  for (var t = lid; t < u.plane_texels; t = t + ${REDUCE_LANES}u) {
    let f = load_f(f0 + t);
    let m = load_mask(m0 + t);
    sums = sums + vec4<f32>(dot(f, m), dot(f, 1.0 - m), dot(m, vec4<f32>(1.0)), 0.0);
  }
  let s = workgroup_sum(lid, sums);
  let degraded = s.z;
  let clean = f32(u.plane_texels * 4u) - degraded;
  let nd = max(degraded, 1.0);
  let nc = max(clean, 1.0);
  let md = s.x / nd;
  let mc = s.y / nc;
  var squares = vec4<f32>(0.0);
  for (var t = lid; t < u.plane_texels; t = t + ${REDUCE_LANES}u) {
    let f = load_f(f0 + t);
    let m = load_mask(m0 + t);
    let dd = (f - md) * m;
    let dc = (f - mc) * (1.0 - m);
    squares = squares + vec4<f32>(dot(dd, dd), dot(dc, dc), 0.0, 0.0);
  }
  let q = workgroup_sum(lid, squares);
  if (lid == 0u) {
    let o = plane * ${SFM_STATS_STRIDE}u;
    stats[o] = md;
    stats[o + 1u] = sqrt(q.x / nd + u.eps);
    stats[o + 2u] = mc;
    stats[o + 3u] = sqrt(q.y / nc + u.eps);
    stats[o + 4u] = select(0.0, 1.0, degraded > 0.5 && clean > 0.5);
    stats[o + 5u] = nd;
    stats[o + 6u] = nc;
    stats[o + 7u] = 0.0;
  }
}`,
  );
}

function modulateKernel(textures: boolean): DefinedKernel {
  return sfmKernel(
    "modulate",
    textures,
    [
      planeInput("f", textures),
      planeInput("mask", textures),
      { name: "stats", kind: "r" },
      { name: "out", kind: "w", type: "vec4<f32>" },
    ],
    `${loader("f", textures)}
${loader("mask", textures)}
${MAP_MAIN}
  let f = load_f(t);
  let m = load_mask((plane / u.channels) * u.plane_texels + within);
  let o = plane * ${SFM_STATS_STRIDE}u;
  let modulated = (f - stats[o]) * stats[o + 3u] / stats[o + 1u] + stats[o + 2u];
  out[t] = select(f, modulated, m * stats[o + 4u] != vec4<f32>(0.0));
}`,
  );
}

function gradSumsKernel(textures: boolean): DefinedKernel {
  return sfmKernel(
    "grad-sums",
    textures,
    [
      planeInput("g", textures),
      planeInput("f", textures),
      planeInput("mask", textures),
      { name: "stats", kind: "r" },
      { name: "sums", kind: "w" },
    ],
    `${loader("g", textures)}
${loader("f", textures)}
${loader("mask", textures)}
${REDUCE}
${REDUCE_MAIN}
  let o = plane * ${SFM_STATS_STRIDE}u;
  let md = stats[o];
  let sd = stats[o + 1u];
  var acc = vec4<f32>(0.0);
  for (var t = lid; t < u.plane_texels; t = t + ${REDUCE_LANES}u) {
    let gm = load_g(f0 + t) * load_mask(m0 + t);
    let xhat = (load_f(f0 + t) - md) / sd;
    acc = acc + vec4<f32>(dot(gm, vec4<f32>(1.0)), dot(gm, xhat), 0.0, 0.0);
  }
  let s = workgroup_sum(lid, acc);
  if (lid == 0u) {
    sums[plane * 2u] = s.x;
    sums[plane * 2u + 1u] = s.y;
  }
}`,
  );
}

function gradKernel(textures: boolean): DefinedKernel {
  return sfmKernel(
    "grad",
    textures,
    [
      planeInput("g", textures),
      planeInput("f", textures),
      planeInput("mask", textures),
      { name: "stats", kind: "r" },
      { name: "sums", kind: "r" },
      { name: "out", kind: "w", type: "vec4<f32>" },
    ],
    `${loader("g", textures)}
${loader("f", textures)}
${loader("mask", textures)}
${MAP_MAIN}
  let g = load_g(t);
  let o = plane * ${SFM_STATS_STRIDE}u;
  if (stats[o + 4u] == 0.0) {
    out[t] = g;
    return;
  }
  let f = load_f(t);
  let m = load_mask((plane / u.channels) * u.plane_texels + within);
  let md = stats[o];
  let sd = stats[o + 1u];
  let mc = stats[o + 2u];
  let sc = stats[o + 3u];
  let nd = stats[o + 5u];
  let nc = stats[o + 6u];
  let s0 = sums[plane * 2u];
  let s1 = sums[plane * 2u + 1u];
  // Degraded sites: batch-norm backward of the renormalization; clean sites: identity plus the paths
  // through the clean mean and standard deviation that every degraded output uses.
  let degraded = (sc / sd) * (g - s0 / nd - ((f - md) / sd) * (s1 / nd));
  let clean = g + s0 / nc + (f - mc) * (s1 / (nc * sc));
  out[t] = select(clean, degraded, m != vec4<f32>(0.0));
}`,
  );
}

function uniforms(g: SfmGeometry, eps: number) {
  return { planes: g.batch * g.channels, channels: g.channels, plane_texels: g.plane / 4, eps };
}

function planeGrid(planes: number): [number, number, number] {
  return planes <= 65535 ? [planes, 1, 1] : [65535, Math.ceil(planes / 65535), 1];
}

function mapGrid(g: SfmGeometry): [number, number, number] {
  return [Math.ceil(g.plane / 4 / MAP_LANES), g.batch * g.channels, 1];
}

/** Measures the statistics (`stats`: {@link SFM_STATS_STRIDE} floats per plane) of `f` under `mask`. */
export function sfmStatsPlan(g: SfmGeometry, eps: number): KernelPlan {
  return {
    outSize: g.batch * g.channels * SFM_STATS_STRIDE,
    scratch: {},
    steps: [
      statsKernel(g.textures).step(uniforms(g, eps), planeGrid(g.batch * g.channels), { stats: "out" }),
    ],
  };
}

/** Modulates `f` with measured or given `stats` into `out`. */
export function sfmModulatePlan(g: SfmGeometry): KernelPlan {
  return {
    outSize: g.batch * g.channels * g.plane,
    scratch: {},
    steps: [modulateKernel(g.textures).step(uniforms(g, 0), mapGrid(g))],
  };
}

/** The gradient with respect to `f` from the output gradient `g`, `f`, `mask` and the forward's `stats`. */
export function sfmBackwardPlan(geo: SfmGeometry): KernelPlan {
  return {
    outSize: geo.batch * geo.channels * geo.plane,
    scratch: { sums: geo.batch * geo.channels * 2 },
    steps: [
      gradSumsKernel(geo.textures).step(uniforms(geo, 0), planeGrid(geo.batch * geo.channels)),
      gradKernel(geo.textures).step(uniforms(geo, 0), mapGrid(geo)),
    ],
  };
}
