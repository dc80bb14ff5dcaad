/**
 * Strided copy kernels behind permute, slice, pad and concat.
 *
 * `gather`: walks the contiguous output; output coordinate c maps to source coordinate c + start (per
 * axis, in the source's axis order given by strides), and reads `value` where that falls outside the
 * source (padding). `scatter`: walks a contiguous source and writes it into a strided region of the
 * output (one concat operand). Index math is unrolled for the tensor's rank.
 *
 * @module
 */

import { DIVMOD_WGSL, FLOAT_DIVISION_LIMIT, foldWorkgroups, type KernelStep, texelCoords } from "./plan.ts";

const WORKGROUP = 256;
/** Largest supported rank. */
export const GATHER_MAX_RANK = 8;

function kernel(
  kind: "gather" | "scatter",
  rank: number,
  viaTexture: boolean,
  floatDivision: boolean,
): { key: string; code: string } {
  const lines = ["  var rem = i;", "  var off = u.base;", "  var inside = true;"];
  for (let d = rank - 1; d >= 0; d--) {
    // The outermost coordinate is what remains; inner ones split rem by the axis length.
    if (d === 0) lines.push("  { let c = rem;");
    else if (floatDivision) {
      lines.push(
        `  { let qr = divmod(rem, at(0u, ${d}u), bitcast<f32>(at(4u, ${d}u))); let c = qr.y; rem = qr.x;`,
      );
    } else lines.push(`  { let c = rem % at(0u, ${d}u); rem = rem / at(0u, ${d}u);`);
    if (kind === "gather") {
      lines.push(`    let s = i32(c) + bitcast<i32>(at(3u, ${d}u));`);
      lines.push(`    inside = inside && s >= 0 && s < i32(at(2u, ${d}u));`);
      lines.push(`    off += u32(clamp(s, 0, i32(at(2u, ${d}u)) - 1)) * at(1u, ${d}u); }`);
    } else {
      lines.push(`    off += c * at(1u, ${d}u); }`);
    }
  }
  const store = kind === "gather" ? "  dst[i] = select(u.value, ld(off), inside);" : "  dst[off] = ld(i);";
  // Source value i: a storage load, or component i % 4 of texel i / 4.
  const source = viaTexture
    ? `@group(0) @binding(1) var src: texture_2d<f32>;
fn ld(i: u32) -> f32 { return textureLoad(src, ${texelCoords("i >> 2u")}, 0)[i & 3u]; }`
    : `@group(0) @binding(1) var<storage, read> src: array<f32>;
fn ld(i: u32) -> f32 { return src[i]; }`;
  return {
    key: `${kind}:${rank}${viaTexture ? ":texture" : ""}${floatDivision ? ":fdiv" : ""}`,
    code: `struct Params { size: u32, base: u32, value: f32, pad: u32, table: array<vec4<u32>, 10> }
@group(0) @binding(0) var<uniform> u: Params;
${source}
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
// table rows of 8 entries: 0 walked shape, 1 strides of the strided side, 2 source extent, 3 start offset,
// 4 f32 reciprocals of the walked shape.
fn at(row: u32, d: u32) -> u32 { let k = row * 8u + d; return u.table[k / 4u][k % 4u]; }
${DIVMOD_WGSL}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = (wg.x + wg.y * nwg.x) * ${WORKGROUP}u + lid;
  if (i >= u.size) { return; }
${lines.join("\n")}
${store}
}
`,
  };
}

/** Description of one strided copy; arrays are indexed by the walked (contiguous side's) axes. */
export interface StridedCopy {
  kind: "gather" | "scatter";
  /** Shape of the contiguous side (the output for gather, the source for scatter). */
  shape: readonly number[];
  /** Element strides of the strided side for each walked axis. */
  strides: readonly number[];
  /** Gather: source extent along each walked axis (reads outside give `value`). */
  extent?: readonly number[];
  /** Gather: offset added to each coordinate (negative for leading padding). */
  start?: readonly number[];
  /** Element offset added on the strided side. */
  base?: number;
  value?: number;
}

/** One step performing a strided copy from buffer `src` (bound as a texture when `viaTexture`) to `out`. */
export function stridedCopyStep(copy: StridedCopy, viaTexture = false): KernelStep {
  const rank = copy.shape.length;
  if (rank > GATHER_MAX_RANK) throw new Error(`strided copies support rank <= ${GATHER_MAX_RANK}`);
  const size = copy.shape.reduce((p, d) => p * d, 1);
  const buffer = new ArrayBuffer(16 + 160);
  const u32 = new Uint32Array(buffer);
  const i32 = new Int32Array(buffer);
  const f32 = new Float32Array(buffer);
  u32[0] = size;
  u32[1] = copy.base ?? 0;
  f32[2] = copy.value ?? 0;
  for (let d = 0; d < rank; d++) {
    u32[4 + d] = copy.shape[d];
    u32[4 + 8 + d] = copy.strides[d];
    u32[4 + 16 + d] = copy.extent?.[d] ?? copy.shape[d];
    i32[4 + 24 + d] = copy.start?.[d] ?? 0;
    f32[4 + 32 + d] = 1 / copy.shape[d];
  }
  return {
    kernel: kernel(copy.kind, rank, viaTexture, size <= FLOAT_DIVISION_LIMIT),
    uniforms: buffer,
    buffers: ["src", "out"],
    writes: ["out"],
    textures: viaTexture ? ["src"] : undefined,
    workgroups: foldWorkgroups(Math.ceil(size / WORKGROUP)),
  };
}
