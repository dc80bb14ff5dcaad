/**
 * Submanifold sparse convolution (SPAIR's SC, paper eq. 2) over the compacted active-site list of a mask:
 * `out_p = M_p * (b + sum_t K_t F_{p+d_t} M_{p+d_t})` for kernel 3x3 (padding 1, dilation 1, stride 1) or
 * 1x1. Feature maps are dense NCHW or compact (rows of list entries, see {@link ChannelSlice}); only
 * active sites are read, computed and written (the caller clears a dense output first). Site lists come from
 * `wgsl/compact.ts` (`counts`, `indices`). Counts stay on the GPU: every kernel is dispatched over the
 * list's capacity (N*H*W) and an invocation whose list range starts at or past `counts[0]` returns at once,
 * so the work done follows the number of active sites. On CPU adapters every site kernel folds that grid
 * into rounds ({@link siteRounds}): llvmpipe pays for every workgroup of these large
 * kernels about as much as for a busy one, so a capacity-sized grid cost 70-90 ms per SC module at any
 * density.
 *
 * Cost model (llvmpipe, Mesa 22.3, the adapter these kernels are tuned for): a storage-buffer load costs the
 * same per lane whether or not its address is uniform across the workgroup (no scalar fast path inside
 * control flow), vec4 storage loads cost four scalar ones, and any load costs far more than an FMA; a texel
 * load (4 floats) costs about a third of a storage load. So every invocation owns a register block of list
 * entries x output channels, weights are read as texels (the engine binds them as a texture view), and the
 * kernels maximize FMAs per load; lanes simply own different blocks. Dense feature maps stay storage
 * buffers (one value per texel of their texture view would be no cheaper). The SC module's compact block can
 * be laid out in channel quads ({@link ChannelSlice.quad}, CPU adapters): a texel of its texture view then
 * holds 4 channels of one entry, and the site GEMM and weight gradient read it so (4 channels for a third of
 * one storage load); its steps declare the rows they write (`writeRanges`), so the plan's texture copy of the
 * block is refreshed by those rows only. No workgroup memory, no barriers, no float atomics.
 *
 * Kernels:
 * - {@link neighbourBitsStep}: per list entry, a u32 whose bit t says that tap t's neighbour is inside the
 *   image and active (one load instead of eight mask loads per site in the conv kernels);
 *   {@link neighbourEntriesStep}: per list entry and tap, the neighbour's list entry (for compact sources).
 * - {@link siteGemmPlan}: forward and input gradient. An invocation owns 16 consecutive list entries and
 *   `tn` (4, 8 or 16) output channels; the loops run over taps (outer) and reduction channels (inner).
 * - {@link sparseWeightGradPlan}: weight and bias gradients, a reduction over the active list. The list is
 *   cut into chunks of {@link WGRAD_CHUNK} entries; an invocation sums one chunk for a block of
 *   `channelBlock` input channels x all taps x `tn` output channels into scratch partials, and a second pass
 *   adds the partials of the chunks that hold active sites in chunk order (deterministic).
 * - {@link reluGateStep}: in place `g = select(0, g, y > 0)` at active sites (ReLU backward inside the SC
 *   module's fused backward); {@link siteCopyStep}: channel-slice copies (or zeroing) at active sites.
 *
 * Channel ranges travel as (channels per image, channel offset, layout) slices, so kernels can read and write
 * channel slices of one dense-block buffer in place. The compact layout keeps the active sites' features
 * together: at low density a dense map puts every active site in its own cache line, which made a site
 * cost about 1.5 times more at 10% density than at 100%.
 *
 * Site kernels run on a grid whose workgroups are interleaved ({@link siteWorkgroups}), so the active
 * prefix of the list is shared by all of a CPU driver's threads.
 *
 * Uniforms that bound loops go through `opaqueUniform` (lavapipe would otherwise specialize and recompile
 * the shader per bind).
 *
 * Loop iterations per invocation (llvmpipe silently stops an invocation after 65,535):
 * - forward / input gradient: taps x (reduction channels + 1) <= {@link SPARSE_MAX_LOOP};
 * - weight gradient: {@link WGRAD_CHUNK} list entries; its reduce pass <= {@link WGRAD_MAX_SPLITS} chunks;
 * - neighbour bits and entries: none; ReLU gate and site copies: their channel count
 *   (<= {@link SPARSE_MAX_LOOP}).
 *
 * @module
 */

import {
  batchedEntry,
  type DeferredBatch,
  foldWorkgroups,
  type KernelPlan,
  type KernelStep,
  slotSwitch,
  texelCoords,
} from "./plan.ts";

/** Bound on any loop's trip count per invocation in these kernels (llvmpipe stops at 65,535). */
export const SPARSE_MAX_LOOP = 8192;
/** Active-list entries per weight-gradient chunk (the weight-gradient loop's trip count). */
export const WGRAD_CHUNK = 512;
/** Most chunks reduced in one pass (the reduce loop's trip count); more chunks take several passes. */
export const WGRAD_MAX_SPLITS = 4096;
/** Scratch budget (f32 elements) for one pass of weight-gradient partials. */
export const WGRAD_MAX_PARTIALS = 1 << 23;

const WG = 8;

/** Geometry shared by the sparse kernels: batch, image size and kernel size (1 or 3). */
export interface SparseGeometry {
  N: number;
  H: number;
  W: number;
  /** Kernel size: 3 (padding 1) or 1. */
  k: 1 | 3;
  /** List capacity (default N*H*W): entries dispatched over, and the row length of compact slices. */
  cap?: number;
}

/** Site-list geometry of the kernels that need no kernel size. */
export type SiteGeometry = {
  N: number;
  H: number;
  W: number;
  cap?: number;
  /** Several rounds of the grid per invocation ({@link siteRounds}): for CPU adapters. */
  serial?: boolean;
};

/** The list capacity of a geometry: its `cap`, or every site. */
export function capacityOf(g: SiteGeometry): number {
  return g.cap ?? g.N * g.H * g.W;
}

/**
 * A channel slice of a feature buffer: `channels` per image in the buffer, slice starts at `offset`. The
 * buffer is dense NCHW, or with `compact`, rows of list entries: channel c of list entry e at
 * `c * capacity + e` (capacity = N*H*W), so the features of active sites sit together whatever the density
 * (the SC module's dense block); only the first `counts[0]` entries of a row are used. With `quad` as well
 * (compact only; `offset` a multiple of 4), channels go in quads: channel c of entry e at
 * `((c >> 2) * capacity + e) * 4 + (c & 3)`, so a texel of the buffer's texture view holds 4 channels of one
 * entry and channels [0, 4k) fill the buffer's first 4k x capacity values. The site GEMM and the weight
 * gradient read a quad source through that texture view, texel `((offset + c) >> 2) * capacity + e` for
 * channels c..c+3: on llvmpipe one texel load (4 floats) costs about a third of one storage load.
 */
export interface ChannelSlice {
  channels: number;
  offset: number;
  compact?: boolean;
  quad?: boolean;
}

/** WGSL index of channel 0 of `slice` in image `n` (dense) or of row `offset` (compact), from uniform
 * fields `${prefix}C` and `${prefix}Off`; add {@link slicePos} and {@link sliceChan} for channel c. */
function sliceBase(slice: ChannelSlice, prefix: string, n: string): string {
  if (slice.quad) return `(u.${prefix}Off >> 2) * 4 * u.cap`;
  return slice.compact ? `u.${prefix}Off * u.cap` : `(${n} * u.${prefix}C + u.${prefix}Off) * u.HW`;
}

/** WGSL position of a site in a slice: its in-image index `hw` (dense) or its list entry `e` (compact). */
function slicePos(slice: ChannelSlice, hw: string, e: string): string {
  if (slice.quad) return `4 * (${e})`;
  return slice.compact ? e : hw;
}

/** WGSL offset of channel `c` (a WGSL i32 expression, counted from the slice's offset) from channel 0. */
function sliceChan(slice: ChannelSlice, c: string): string {
  if (slice.quad) return `(((${c}) >> 2) * 4 * u.cap + ((${c}) & 3))`;
  return `(${c}) * ${slice.compact ? "u.cap" : "u.HW"}`;
}

/** `writeRanges` of a step writing `channels` channels from the start of compact slice `dst` (its rows are
 * contiguous: rows [offset, offset + channels), rounded up to whole quads): none for dense slices. */
function compactWrites(dst: ChannelSlice, channels: number, cap: number): Pick<KernelStep, "writeRanges"> {
  if (!dst.compact) return {};
  const end = dst.offset + (dst.quad ? Math.ceil(channels / 4) * 4 : channels);
  return { writeRanges: { out: [dst.offset * cap, end * cap] } };
}

function checkQuad(slice: ChannelSlice, what: string): void {
  if (slice.quad && (!slice.compact || slice.offset % 4 !== 0)) {
    throw new Error(`${what}: a quad slice must be compact and start at a multiple of 4 channels`);
  }
}

const layoutKey = (slice: ChannelSlice | null) => (slice?.quad ? "q" : slice?.compact ? "c" : "d");

/** Register block of {@link siteGemmPlan}: list entries (`tm`) and output channels (`tn`) per invocation. */
export interface SiteTile {
  tm: number;
  tn: number;
}

/** Forward / input-gradient GEMM over active sites. */
export interface SiteGemmSpec extends SparseGeometry {
  /** Reduction channels read from `src` (Cin forward, Cout for the input gradient). */
  K: number;
  /** Output channels written (Cout forward, Cin for the input gradient). */
  cols: number;
  src: ChannelSlice;
  dst: ChannelSlice;
  /**
   * Weight taps mirrored (the input gradient). The weight buffer `wt` is laid out
   * `[K][taps][weightCols(cols)]` (forward: permute(w, [1,2,3,0]); input gradient: permute(w, [0,2,3,1]);
   * the last axis zero-padded to a multiple of 4). It is bound as a texture.
   */
  flip: boolean;
  /** Adds `bias[col]` (buffer `bias`). */
  bias: boolean;
  /** Applies max(., 0) after the bias. */
  relu: boolean;
  /** Adds into `out` instead of overwriting it (read-modify-write; each element has one writer). */
  accumulate: boolean;
  /** Reads the source from the `out` binding (a disjoint channel range of the same buffer). */
  srcIsOut: boolean;
  /**
   * Then zeroes the output columns in [lo, hi) where buffer `gate` (laid out as `out`) is not positive: the
   * ReLU backward of the layer that owns those channels, done by the input gradient that writes them last
   * instead of a pass of its own. A loop after the stores, in the column blocks that meet [lo, hi) only (a
   * condition in the stores themselves made the kernel twice as slow). Compact destinations only; a pipeline
   * of its own (`-gate`).
   */
  gate?: { lo: number; hi: number };
  /** Several rounds of the grid per invocation ({@link siteRounds}): for CPU adapters. */
  serial?: boolean;
}

const range = (n: number) => Array.from({ length: n }, (_, i) => i);

function i32Uniforms(values: number[]): ArrayBuffer {
  if (values.length > 64) throw new Error("uniform block over 256 bytes");
  const buf = new ArrayBuffer(Math.max(16, Math.ceil(values.length / 4) * 16));
  const view = new Int32Array(buf);
  values.forEach((v, i) => {
    if (!Number.isInteger(v) || v < -0x80000000 || v > 0x7fffffff) throw new Error(`bad uniform value ${v}`);
    view[i] = v;
  });
  return buf;
}

function header(fields: string[], list: { name: string; type: string; write: boolean }[]): string {
  const params = `struct Params {\n${fields.map((f) => `  ${f}: i32,`).join("\n")}\n}
@group(0) @binding(0) var<uniform> u: Params;`;
  const decls = list.map((b, i) => {
    if (b.type !== "texture") {
      const access = b.write ? "read_write" : "read";
      return `@group(0) @binding(${i + 1}) var<storage, ${access}> ${b.name}: array<${b.type}>;`;
    }
    return `@group(0) @binding(${i + 1}) var ${b.name}: texture_2d<f32>;
fn ld_${b.name}(t: i32) -> vec4f {
  return textureLoad(${b.name}, ${texelCoords("t", "i32")}, 0);
}`;
  });
  return [params, ...decls].join("\n");
}

/**
 * Workgroups a site kernel's grid is interleaved over (see {@link siteWorkgroups}): a multiple of any likely
 * thread count of a CPU driver.
 */
const SPREAD = 64;

/**
 * Grid for `count` workgroups of a kernel whose work sits in its first workgroups (the active list's prefix):
 * padded to a multiple of {@link SPREAD} and folded over x and y with x a multiple of SPREAD, so the grid
 * size divides into SPREAD equal parts. llvmpipe hands each of its threads one contiguous part of the grid
 * (Mesa's lp_cs_tpool splits the iterations statically), so without interleaving, a list shorter than half
 * of its capacity would run on one thread; {@link ENTRY} maps grid part j, position i to logical workgroup
 * i * SPREAD + j, so every thread gets an equal share of the active prefix.
 */
function siteWorkgroups(count: number): [number, number, number] {
  const padded = Math.max(1, Math.ceil(count / SPREAD)) * SPREAD;
  const maxX = Math.floor(65535 / SPREAD) * SPREAD;
  const y = Math.ceil(padded / maxX);
  if (y > 65535) throw new Error(`dispatch of ${count} workgroups is too large`);
  return [Math.ceil(padded / y / SPREAD) * SPREAD, y, 1];
}

/** Entry of the site kernels (dispatched with {@link siteWorkgroups}): `inv` is the logical invocation. */
const ENTRY = `@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lane: u32) {
  let gridPart = nwg.x * nwg.y / ${SPREAD}u;
  let slot = wid.x + wid.y * nwg.x;
  let inv = i32(((slot % gridPart) * ${SPREAD}u + slot / gridPart) * ${WG}u + lane);`;

/**
 * Loop budget of one invocation of a kernel that runs several rounds ({@link siteRounds}); under llvmpipe's
 * 65,535 iterations per invocation.
 */
export const SITE_ROUND_BUDGET = 60000;

/**
 * Rounds per invocation of a site kernel (CPU adapters, `serial`): invocation i takes logical invocations i,
 * i + G, i + 2G, ... (G the grid's invocations) in a loop that stops at the first one past the active list,
 * so the grid shrinks to about {@link SPREAD} workgroups whatever the list's capacity. On llvmpipe every
 * workgroup of these large kernels costs about as much as a busy one even when all its invocations return at
 * once (the whole body runs masked), and most of a capacity-sized grid is past the active list: the SC
 * module's forward + backward (1x32x256x256) took 141-146 ms at a 0.01% mask and 368-410 ms at 10% with one
 * round, 54-57 and 213-323 ms with 8. `perRound` is the loop iterations one round may run; GPUs keep one
 * round (parallelism).
 */
export function siteRounds(workgroups: number, perRound: number, serial: boolean): number {
  if (!serial) return 1;
  const byBudget = Math.floor(SITE_ROUND_BUDGET / (perRound + 1));
  return Math.max(1, Math.min(byBudget, Math.ceil(workgroups / SPREAD)));
}

/** {@link ENTRY} for a kernel that runs `u.rounds` rounds: opens the loop that declares `inv` (the body must
 * `break` where a one-round kernel would return, and close the loop). */
const ROUND_ENTRY = `${ENTRY.replace("let inv =", "let inv0 =")}
  let gridInv = i32(nwg.x * nwg.y * ${WG}u);
  for (var round = 0; round < u.rounds; round++) {
  let inv = inv0 + round * gridInv;`;

/**
 * Declares `name` = `value` (a uniform) in a way that lavapipe cannot constant-fold. Mesa's lavapipe inlines
 * uniforms that decide loop exits or branches (nir_inline_uniforms) and then re-creates and recompiles the
 * shader whenever the pipeline is bound with new values: up to tens of milliseconds per dispatch for these
 * large kernels. Mixing in the (never negative) active count, a storage-buffer value, prevents that.
 * Requires `cnt` (the active count) in scope.
 */
function opaqueUniform(name: string, value: string): string {
  return `let ${name} = select(${value}, 0, cnt < 0);`;
}

const ro = (name: string, type = "f32") => ({ name, type, write: false });
const rw = (name: string, type = "f32") => ({ name, type, write: true });

function checkGeometry(g: SparseGeometry, what: string): void {
  if (g.k !== 1 && g.k !== 3) throw new Error(`${what}: kernel size must be 1 or 3, got ${g.k}`);
  if (g.N * g.H * g.W > 0x3fffffff) throw new Error(`${what}: too many sites`);
}

/**
 * A per-list-entry kernel over the 3x3 neighbourhood of each active site: `tap(t, inside, r)` is the WGSL for
 * tap t (t = 3 * (dy + 1) + (dx + 1)) of a neighbour at (dy, dx) != (0, 0), given the WGSL expressions for
 * "inside the image" and its `rank` entry; `centre` handles t = 4. Buffers: `counts`, `indices`, `rank`
 * (u32), `out` (u32).
 */
function neighbourStep(
  key: string,
  g: SiteGeometry,
  prologue: string,
  centre: string,
  tap: (t: number, inside: string, r: string) => string,
  epilogue: string,
): KernelStep {
  const cap = capacityOf(g);
  const rounds = siteRounds(Math.ceil(cap / WG), 1, !!g.serial);
  const taps = range(9).map((t) => {
    const dy = Math.floor(t / 3) - 1, dx = (t % 3) - 1;
    if (dy === 0 && dx === 0) return centre;
    return `  { let yy = y + ${dy}; let xx = x + ${dx};
    let inside = u32(yy) < u32(u.H) && u32(xx) < u32(u.W);
    let r = rank[nb + select(hw, yy * u.W + xx, inside)];
    ${tap(t, "inside", "r")} }`;
  });
  return {
    kernel: {
      key,
      code: `${
        header(["HW", "H", "W", "cap", "rounds"], [
          ro("counts", "u32"),
          ro("indices", "u32"),
          ro("rank", "u32"),
          rw("out", "u32"),
        ])
      }
${ROUND_ENTRY}
  if (inv >= i32(counts[0])) { break; }
  let s = i32(indices[inv]);
  let n = s / u.HW;
  let hw = s - n * u.HW;
  let nb = n * u.HW;
  let y = hw / u.W;
  let x = hw - y * u.W;
${prologue}
${taps.join("\n")}
${epilogue}
  }
}`,
    },
    uniforms: i32Uniforms([g.H * g.W, g.H, g.W, cap, rounds]),
    buffers: ["counts", "indices", "rank", "out"],
    writes: ["out"],
    workgroups: siteWorkgroups(Math.ceil(cap / WG / rounds)),
  };
}

/**
 * Neighbour bits of every list entry (k = 3): bit t (t = 3 * (dy + 1) + (dx + 1)) is set when the site at
 * offset (dy, dx) is inside the image and active (`rank` != 0xffffffff). Buffers: `counts`, `indices`,
 * `rank` (u32), `out` (u32, capacity entries).
 */
export function neighbourBitsStep(g: SiteGeometry): KernelStep {
  return neighbourStep(
    "sparse-conv-neighbour-bits",
    g,
    "  var bits = 0u;",
    "  bits = bits | 16u;",
    (t, inside, r) => `bits = bits | select(0u, ${1 << t}u, ${inside} && ${r} != 0xffffffffu);`,
    "  out[inv] = bits;",
  );
}

/**
 * Neighbour entries of every list entry (k = 3), for kernels reading compact slices: `out[t * cap + e]` is
 * the list entry of tap t's neighbour of entry e (t = 3 * (dy + 1) + (dx + 1)), or 0xffffffff when it is
 * outside the image or clean. Buffers: `counts`, `indices`, `rank` (u32), `out` (u32, 9 x capacity).
 */
export function neighbourEntriesStep(g: SiteGeometry): KernelStep {
  return neighbourStep(
    "sparse-conv-neighbour-entries",
    g,
    "",
    "  out[4 * u.cap + inv] = u32(inv);",
    (t, inside, r) => `out[${t} * u.cap + inv] = select(0xffffffffu, ${r}, ${inside});`,
    "",
  );
}

/** Row length of the site GEMM's weight layout `[K][taps][weightCols(cols)]`: cols rounded up to a multiple of
 * the channel tile (4, 8 or 16), so every texel holds 4 output channels of one (k, tap) and no invocation
 * reads past its row. */
export function weightCols(cols: number): number {
  const tn = channelTile(cols);
  return Math.ceil(cols / tn) * tn;
}

/** Rows (list entries) per invocation of {@link siteGemmPlan}. */
const SITE_TM = 16;

/**
 * Output channels per invocation: 4, 8 or 16, whichever makes the loads per site cheapest for `cols`
 * channels: ceil(cols / tn) blocks, each loading SITE_TM storage values and tn / 4 weight texels (about a third
 * of a storage load each) per reduction step. Ties go to the larger. Three sizes only, so few pipeline variants
 * get compiled (32 would save ~15% on wide layers but triples llvmpipe's compile time).
 */
export function channelTile(cols: number): number {
  const cost = (tn: number) => Math.ceil(cols / tn) * (SITE_TM + tn / 12);
  let best = 16;
  for (const tn of [8, 4]) if (cost(tn) < cost(best)) best = tn;
  return best;
}

/** Default register block of {@link siteGemmPlan}. */
export function siteTile(cols: number): SiteTile {
  return { tm: SITE_TM, tn: channelTile(cols) };
}

// Epilogue and tap-order options of the site GEMM travel as uniform flags (select, not branches), so one
// pipeline per kernel size, tile and binding layout serves forward, input gradient, ReLU and accumulation.
const FLAG_BIAS = 1;
const FLAG_RELU = 2;
const FLAG_ACCUMULATE = 4;
const FLAG_FLIP = 8;

function siteGemmCode(s: SiteGemmSpec, t: SiteTile): string {
  const T = s.k * s.k;
  // A quad source is read through the texture view bound as `src` (for `srcIsOut`, a copy of `out`).
  const quad = !!s.src.quad;
  const src = s.srcIsOut ? "out" : "src";
  const list = [
    ro("counts", "u32"),
    ro("indices", "u32"),
    ...(s.k > 1 ? [ro(s.src.compact ? "nbr" : "nbits", "u32")] : []),
    ...(quad ? [ro("src", "texture")] : s.srcIsOut ? [] : [ro("src")]),
    ro("wt", "texture"),
    ro("bias"),
    ...(s.gate ? [ro("gate")] : []),
    rw("out"),
  ];
  const L: string[] = [];
  const fields = ["HW", "H", "W", "K", "cols", "srcC", "srcOff", "dstC", "dstOff", "rowBlocks", "colBlocks"];
  L.push(
    header([...fields, "flags", "colsPad", "cap", "rounds", ...(s.gate ? ["gateLo", "gateHi"] : [])], list),
  );
  // One output per in-range channel: ReLU, then add what is there when accumulating.
  const put = range(4).map((e) => {
    const c = "xyzw"[e];
    return `  if (ok.${c}) { out[at.${c}] = select(v.${c}, max(v.${c}, 0.0), relu) + select(0.0, out[at.${c}], accumulate); }`;
  });
  L.push(`fn put4(ok: vec4<bool>, at: vec4i, v: vec4f) {
  let relu = (u.flags & ${FLAG_RELU}) != 0;
  let accumulate = (u.flags & ${FLAG_ACCUMULATE}) != 0;
${put.join("\n")}
}`);
  L.push(`${ROUND_ENTRY}
  if (inv >= u.rowBlocks * u.colBlocks) { break; }
  let col0 = (inv % u.colBlocks) * ${t.tn};
  let row0 = (inv / u.colBlocks) * ${t.tm};
  let cnt = i32(counts[0]);
  if (row0 >= cnt) { break; }
  ${opaqueUniform("kEnd", quad ? "u.K >> 2" : "u.K")}
  let hasBias = (u.flags & ${FLAG_BIAS}) != 0;
  let flip = (u.flags & ${FLAG_FLIP}) != 0;`);
  for (const j of range(t.tn)) L.push(`  let colc_${j} = min(col0 + ${j}, u.cols - 1);`);
  for (const i of range(t.tm)) {
    L.push(`  let e_${i} = min(row0 + ${i}, cnt - 1);
  let s_${i} = i32(indices[e_${i}]);
  let n_${i} = s_${i} / u.HW;
  let hw_${i} = s_${i} - n_${i} * u.HW;
  let sb_${i} = ${sliceBase(s.src, "src", `n_${i}`)};
  let sp_${i} = ${slicePos(s.src, `hw_${i}`, `e_${i}`)};`);
    if (s.k > 1 && !s.src.compact) L.push(`  let bits_${i} = nbits[e_${i}];`);
  }
  // Accumulators are vectors of 4 neighbouring channels (tn is 4, 8 or 16): the same FMAs, a quarter of the
  // source, whose length drives pipeline creation on llvmpipe.
  const groups = t.tn / 4;
  for (const i of range(t.tm)) for (const g of range(groups)) L.push(`  var c_${i}_${g} = vec4f(0.0);`);
  // Weights come from a texture ([K][taps][cols rounded up to 4], 4 channels per texel): tn / 4 texel loads
  // per step instead of tn storage loads.
  const inner = (tw: string) => {
    if (quad) {
      // Channel quads: one texel holds 4 reduction channels of an entry (o_i is its list entry), and the
      // FMAs run in the same order as one channel at a time.
      const body: string[] = [`    for (var kq = 0; kq < kEnd; kq++) {
      let kb = (qb + kq) * u.cap;`];
      for (const j of range(4)) {
        body.push(`      let wb_${j} = (((kq * 4 + ${j}) * ${T} + ${tw}) * u.colsPad + col0) >> 2u;`);
        for (const g of range(groups)) body.push(`      let tb_${j}_${g} = ld_wt(wb_${j} + ${g});`);
      }
      for (const i of range(t.tm)) {
        const load = `ld_src(kb + o_${i})`;
        body.push(`      let a_${i} = ${T > 1 ? `select(vec4f(0.0), ${load}, ok_${i})` : load};`);
        for (const j of range(4)) {
          for (const g of range(groups)) {
            body.push(`      c_${i}_${g} = fma(vec4f(a_${i}.${"xyzw"[j]}), tb_${j}_${g}, c_${i}_${g});`);
          }
        }
      }
      body.push("    }");
      return body.join("\n");
    }
    const body: string[] = [`    for (var kk = 0; kk < kEnd; kk++) {
      let kb = ${sliceChan(s.src, "kk")};
      let wb = ((kk * ${T} + ${tw}) * u.colsPad + col0) >> 2u;`];
    for (const g of range(t.tn / 4)) body.push(`      let tb_${g} = ld_wt(wb + ${g});`);
    for (const i of range(t.tm)) {
      const load = `${src}[o_${i} + kb]`;
      body.push(`      let a_${i} = vec4f(${T > 1 ? `select(0.0, ${load}, ok_${i})` : load});`);
      for (const g of range(groups)) body.push(`      c_${i}_${g} = fma(a_${i}, tb_${g}, c_${i}_${g});`);
    }
    body.push("    }");
    return body.join("\n");
  };
  if (quad) L.push("  let qb = u.srcOff >> 2;");
  if (T === 1) {
    for (const i of range(t.tm)) L.push(`  let o_${i} = ${quad ? `e_${i}` : `sb_${i} + sp_${i}`};`);
    L.push("  {", inner("0"), "  }");
  } else {
    L.push(`  for (var t = 0; t < ${T}; t++) {
    let dy = t / ${s.k} - ${(s.k - 1) / 2};
    let dx = t % ${s.k} - ${(s.k - 1) / 2};
    let delta = dy * u.W + dx;`);
    for (const i of range(t.tm)) {
      if (s.src.compact) {
        L.push(`    let nb_${i} = nbr[t * u.cap + e_${i}];
    let ok_${i} = nb_${i} != 0xffffffffu;
    let o_${i} = ${quad ? "" : `sb_${i} + `}select(e_${i}, i32(nb_${i}), ok_${i});`);
      } else {
        L.push(`    let ok_${i} = ((bits_${i} >> u32(t)) & 1u) != 0u;
    let o_${i} = sb_${i} + select(hw_${i}, hw_${i} + delta, ok_${i});`);
      }
    }
    L.push(`    let tw = select(t, ${T - 1} - t, flip);`, inner("tw"), "  }");
  }
  for (const g of range(groups)) {
    const bias = range(4).map((c) => `select(0.0, bias[colc_${4 * g + c}], hasBias)`);
    L.push(`  let bias_${g} = vec4f(${bias.join(", ")});
  let colOk_${g} = col0 + ${4 * g} + vec4i(0, 1, 2, 3) < vec4i(u.cols);
  let colOff_${g} = ${
      s.dst.quad
        ? `vec4i(${sliceChan(s.dst, `col0 + ${4 * g}`)}) + vec4i(0, 1, 2, 3)`
        : `(col0 + ${4 * g} + vec4i(0, 1, 2, 3)) * ${s.dst.compact ? "u.cap" : "u.HW"}`
    };`);
  }
  for (const i of range(t.tm)) {
    const dst = `${sliceBase(s.dst, "dst", `n_${i}`)} + ${slicePos(s.dst, `hw_${i}`, `e_${i}`)}`;
    L.push(`  if (row0 + ${i} < cnt) {\n    let d_${i} = ${dst};`);
    for (const g of range(groups)) {
      L.push(`    put4(colOk_${g}, d_${i} + colOff_${g}, c_${i}_${g} + bias_${g});`);
    }
    L.push("  }");
  }
  if (s.gate) {
    if (!s.dst.compact) throw new Error("siteGemmPlan: a gate needs a compact destination");
    L.push(`  if ((col0 < u.gateHi) & (col0 + ${t.tn} > u.gateLo)) {
    let colEnd = min(min(col0 + ${t.tn}, u.gateHi), u.cols);
    let rowEnd = min(row0 + ${t.tm}, cnt);
    for (var col = max(col0, u.gateLo); col < colEnd; col++) {
      for (var e = row0; e < rowEnd; e++) {
        let at = ${sliceBase(s.dst, "dst", "0")} + ${slicePos(s.dst, "e", "e")} + ${sliceChan(s.dst, "col")};
        if (gate[at] <= 0.0) { out[at] = 0.0; }
      }
    }
  }`);
  }
  L.push("  }", "}");
  return L.join("\n");
}

/**
 * Forward (or input-gradient) plan. Buffers: `counts`, `indices` (u32), for k = 3 `nbits` (u32, from
 * {@link neighbourBitsStep}; dense source) or `nbr` (u32, from {@link neighbourEntriesStep}; compact source),
 * `src` (unless `srcIsOut`), `wt`, `bias` (if `bias`), `out`. Writes the active sites of `out`'s destination
 * slice only. The options other than `k`, `srcIsOut`, the slices' layouts and the tile are uniform flags, so
 * they share one compiled pipeline.
 */
export function siteGemmPlan(s: SiteGemmSpec): KernelPlan {
  checkGeometry(s, "siteGemmPlan");
  checkQuad(s.src, "siteGemmPlan");
  checkQuad(s.dst, "siteGemmPlan");
  if (s.src.quad && s.K % 4 !== 0) {
    throw new Error("siteGemmPlan: a quad source needs a multiple of 4 channels");
  }
  const T = s.k * s.k;
  if (T * (s.K + 1) > SPARSE_MAX_LOOP) {
    throw new Error(`sparse conv: ${s.K} reduction channels exceed the loop bound ${SPARSE_MAX_LOOP}`);
  }
  const t = siteTile(s.cols);
  const cap = capacityOf(s);
  const outSize = s.N * s.dst.channels * s.H * s.W;
  if (cap === 0 || s.cols === 0) return { outSize, scratch: {}, steps: [] };
  const rowBlocks = Math.ceil(cap / t.tm);
  const colBlocks = Math.ceil(s.cols / t.tn);
  const workgroups = Math.ceil(rowBlocks * colBlocks / WG);
  // Loop iterations of one round: taps x (reduction channels + 1) and the gate's tn x (tm + 1).
  const rounds = siteRounds(workgroups, T * (s.K + 1) + (s.gate ? t.tn * (t.tm + 1) : 0), !!s.serial);
  const layouts = layoutKey(s.src) + layoutKey(s.dst);
  const key = `sparse-conv-gemm-k${s.k}-tm${t.tm}-tn${t.tn}-${layouts}${s.srcIsOut ? "-inplace" : ""}${
    s.gate ? "-gate" : ""
  }`;
  const flags = (s.bias ? FLAG_BIAS : 0) | (s.relu ? FLAG_RELU : 0) | (s.accumulate ? FLAG_ACCUMULATE : 0) |
    (s.flip ? FLAG_FLIP : 0);
  const step: KernelStep = {
    kernel: { key, code: siteGemmCode(s, t) },
    uniforms: i32Uniforms([
      s.H * s.W,
      s.H,
      s.W,
      s.K,
      s.cols,
      s.src.channels,
      s.src.offset,
      s.dst.channels,
      s.dst.offset,
      rowBlocks,
      colBlocks,
      flags,
      weightCols(s.cols),
      cap,
      rounds,
      ...(s.gate ? [s.gate.lo, s.gate.hi] : []),
    ]),
    buffers: [
      "counts",
      "indices",
      ...(s.k > 1 ? [s.src.compact ? "nbr" : "nbits"] : []),
      ...(s.srcIsOut && !s.src.quad ? [] : ["src"]),
      "wt",
      // Without a bias any storage buffer fills the slot (its values are never used).
      s.bias ? "bias" : "indices",
      ...(s.gate ? ["gate"] : []),
      "out",
    ],
    writes: ["out"],
    workgroups: siteWorkgroups(Math.ceil(workgroups / rounds)),
    textures: s.src.quad ? ["src", "wt"] : ["wt"],
    ...compactWrites(s.dst, s.cols, cap),
  };
  return { outSize, scratch: {}, steps: [step] };
}

/** Weight-gradient problem: dW[co, ci, t] = sum over active p of dy[co, p] * x[ci, p + d_t] * M_{p+d_t}. */
export interface WeightGradSpec extends SparseGeometry {
  Cin: number;
  Cout: number;
  /** Where the Cin input channels sit in buffer `x`. */
  x: ChannelSlice;
  /** Where the Cout output-gradient channels sit in buffer `dy`. */
  dy: ChannelSlice;
  /** Also sum dy into the bias gradient (buffer `dbias`). */
  bias: boolean;
  /** Input channels per invocation (rows = that many channels x all taps); default 4 (k = 3) or 16 (k = 1). */
  channelBlock?: number;
  /** Output channels per invocation; default {@link channelTile}(Cout). */
  tn?: number;
  /** List entries per chunk; default {@link WGRAD_CHUNK}. */
  chunk?: number;
  /** Several rounds of the grid per invocation ({@link siteRounds}): for CPU adapters. */
  serial?: boolean;
}

function weightGradCode(s: WeightGradSpec, cb: number, tn: number): string {
  const T = s.k * s.k;
  const L: string[] = [];
  const fields = [
    "HW",
    "W",
    "Cin",
    "Cout",
    "xC",
    "xOff",
    "dyC",
    "dyOff",
    "chunk",
    "splitBase",
    "splits",
    "ciBlocks",
  ];
  L.push(header([...fields, "colBlocks", "outElems", "partStride", "cap", "rounds"], [
    ro("counts", "u32"),
    ro("indices", "u32"),
    ...(T > 1 ? [ro(s.x.compact ? "nbr" : "nbits", "u32")] : []),
    ro("x", s.x.quad ? "texture" : "f32"),
    ro("dy", s.dy.quad ? "texture" : "f32"),
    rw("part"),
  ]));
  L.push(`${ROUND_ENTRY}
  if (inv >= u.colBlocks * u.ciBlocks * u.splits) { break; }
  let col0 = (inv % u.colBlocks) * ${tn};
  let rest = inv / u.colBlocks;
  let ci0 = (rest % u.ciBlocks) * ${cb};
  let split = rest / u.ciBlocks;
  let cnt = i32(counts[0]);
  let start = (u.splitBase + split) * u.chunk;
  if (start >= cnt) { break; }
  let stop = min(start + u.chunk, cnt);`);
  // Quad slices: texel indices of channel quads (clamped to the last quad; results past Cin / Cout are
  // dropped at the store).
  for (const j of range(tn)) {
    if (s.dy.quad) {
      if (j % 4 === 0) {
        L.push(`  let dyq_${j / 4} = (u.dyOff >> 2) + min((col0 + ${j}) >> 2, (u.Cout >> 2) - 1);`);
      }
    } else L.push(`  let dyc_${j} = ${sliceChan(s.dy, `min(col0 + ${j}, u.Cout - 1)`)};`);
    L.push(`  var g_${j} = 0.0;`);
  }
  for (const c of range(cb)) {
    if (s.x.quad) {
      if (c % 4 === 0) {
        L.push(`  let xq_${c / 4} = (u.xOff >> 2) + min((ci0 + ${c}) >> 2, (u.Cin >> 2) - 1);`);
      }
    } else L.push(`  let xc_${c} = ${sliceChan(s.x, `min(ci0 + ${c}, u.Cin - 1)`)};`);
    for (const tap of range(T)) for (const j of range(tn)) L.push(`  var c_${c}_${tap}_${j} = 0.0;`);
  }
  L.push(`  for (var e = start; e < stop; e++) {
    let s = i32(indices[e]);
    let n = s / u.HW;
    let hw = s - n * u.HW;
    let xb = ${sliceBase(s.x, "x", "n")};
    let xp = ${slicePos(s.x, "hw", "e")};
    let yb = ${sliceBase(s.dy, "dy", "n")} + ${slicePos(s.dy, "hw", "e")};`);
  if (T > 1 && s.x.compact) {
    for (const tap of range(T)) {
      L.push(`    let nb_${tap} = nbr[${tap} * u.cap + e];
    let ok_${tap} = nb_${tap} != 0xffffffffu;
    let nh_${tap} = select(e, i32(nb_${tap}), ok_${tap});`);
    }
  } else if (T > 1) {
    L.push("    let bits = nbits[e];");
    for (const tap of range(T)) {
      const dy = Math.floor(tap / s.k) - 1, dx = (tap % s.k) - 1;
      L.push(`    let ok_${tap} = (bits & ${1 << tap}u) != 0u;
    let nh_${tap} = select(hw, hw + (${dy}) * u.W + (${dx}), ok_${tap});`);
    }
  }
  for (const j of range(tn)) {
    if (!s.dy.quad) L.push(`    let b_${j} = dy[yb + dyc_${j}];`);
    else if (j % 4 === 0) {
      L.push(`    let bq_${j / 4} = ld_dy(dyq_${j / 4} * u.cap + e);`);
      for (const k of range(Math.min(4, tn - j))) L.push(`    let b_${j + k} = bq_${j / 4}.${"xyzw"[k]};`);
    }
  }
  if (s.bias) { for (const j of range(tn)) L.push(`    g_${j} += b_${j};`); }
  const entryOf = (tap: number) => (T > 1 ? `nh_${tap}` : "e");
  for (const c of range(cb)) {
    for (const tap of range(T)) {
      let a: string;
      if (s.x.quad) {
        if (c % 4 === 0) {
          const texel = `ld_x(xq_${c / 4} * u.cap + ${entryOf(tap)})`;
          L.push(
            `    let aq_${c / 4}_${tap} = ${T > 1 ? `select(vec4f(0.0), ${texel}, ok_${tap})` : texel};`,
          );
        }
        a = `aq_${c >> 2}_${tap}.${"xyzw"[c & 3]}`;
      } else {
        a = T > 1 ? `select(0.0, x[xb + xc_${c} + nh_${tap}], ok_${tap})` : `x[xb + xc_${c} + xp]`;
      }
      L.push(`    let a_${c}_${tap} = ${a};`);
      for (const j of range(tn)) {
        L.push(`    c_${c}_${tap}_${j} = fma(a_${c}_${tap}, b_${j}, c_${c}_${tap}_${j});`);
      }
    }
  }
  L.push("  }");
  L.push("  let pb = split * u.partStride;");
  for (const j of range(tn)) {
    L.push(`  if (col0 + ${j} < u.Cout) {`);
    for (const c of range(cb)) {
      L.push(
        `    if (ci0 + ${c} < u.Cin) {\n      let w_${c}_${j} = pb + ((col0 + ${j}) * u.Cin + ci0 + ${c}) * ${T};`,
      );
      for (const tap of range(T)) L.push(`      part[w_${c}_${j} + ${tap}] = c_${c}_${tap}_${j};`);
      L.push("    }");
    }
    if (s.bias) L.push(`    if (ci0 == 0) { part[pb + u.outElems + col0 + ${j}] = g_${j}; }`);
    L.push("  }");
  }
  L.push("  }", "}");
  return L.join("\n");
}

const REDUCE_WG = 64;

function reduceCode(bias: boolean, accumulate: boolean): string {
  const list = [ro("counts", "u32"), ro("part"), rw("out"), ...(bias ? [rw("dbias")] : [])];
  const acc = (target: string) => `${target} = ${accumulate ? `${target} + ` : ""}acc;`;
  return `${header(["n", "outElems", "partStride", "chunk", "splitBase", "splits"], list)}
@compute @workgroup_size(${REDUCE_WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lane: u32) {
  let i = i32((wid.x + wid.y * nwg.x) * ${REDUCE_WG}u + lane);
  if (i >= u.n) { return; }
  let cnt = i32(counts[0]);
  let used = clamp((cnt + u.chunk - 1) / u.chunk - u.splitBase, 0, u.splits);
  var acc = 0.0;
  for (var s = 0; s < used; s++) { acc += part[s * u.partStride + i]; }
  ${
    bias
      ? `if (i < u.outElems) { ${acc("out[i]")} } else { ${acc("dbias[i - u.outElems]")} }`
      : acc("out[i]")
  }
}`;
}

/**
 * Weight (and bias) gradient plan. Buffers: `counts`, `indices`, for k = 3 `nbits` (dense `x`) or `nbr`
 * (compact `x`; see {@link siteGemmPlan}), `x`, `dy`, `out` (dW,
 * [Cout, Cin, k, k]) and, with `bias`, `dbias` ([Cout], an extra output bound by the caller). Both outputs
 * are fully written (zeros when no site is active). Chunks of the active list are reduced in passes of at
 * most {@link WGRAD_MAX_SPLITS} chunks and {@link WGRAD_MAX_PARTIALS} scratch floats; each pass adds its
 * sum to the previous ones in chunk order, so the result is deterministic.
 */
export function sparseWeightGradPlan(s: WeightGradSpec): KernelPlan {
  checkGeometry(s, "sparseWeightGradPlan");
  const T = s.k * s.k;
  const outElems = s.Cout * s.Cin * T;
  const cap = capacityOf(s);
  const chunk = s.chunk ?? WGRAD_CHUNK;
  if (chunk > SPARSE_MAX_LOOP) throw new Error(`sparse conv weight gradient: chunk ${chunk} too long`);
  const cb = s.channelBlock ?? (s.k === 3 ? 4 : 16);
  const tn = s.tn ?? channelTile(s.Cout);
  checkQuad(s.x, "sparseWeightGradPlan");
  checkQuad(s.dy, "sparseWeightGradPlan");
  if ((s.x.quad && (cb % 4 !== 0 || s.Cin % 4 !== 0)) || (s.dy.quad && (tn % 4 !== 0 || s.Cout % 4 !== 0))) {
    throw new Error("sparseWeightGradPlan: quad slices need channel counts and blocks in multiples of 4");
  }
  const quadTextures = [...(s.x.quad ? ["x"] : []), ...(s.dy.quad ? ["dy"] : [])];
  const partStride = outElems + (s.bias ? s.Cout : 0);
  const totalSplits = Math.max(1, Math.ceil(cap / chunk));
  const byMemory = Math.floor(WGRAD_MAX_PARTIALS / partStride);
  const perPass = Math.max(1, Math.min(totalSplits, WGRAD_MAX_SPLITS, byMemory));
  const passes = Math.ceil(totalSplits / perPass);
  const ciBlocks = Math.ceil(s.Cin / cb);
  const colBlocks = Math.ceil(s.Cout / tn);
  const gemmKernel = {
    key: `sparse-conv-wgrad-k${s.k}-cb${cb}-tn${tn}-${layoutKey(s.x)}${layoutKey(s.dy)}${
      s.bias ? "-bias" : ""
    }`,
    code: weightGradCode(s, cb, tn),
  };
  const steps: KernelStep[] = [];
  for (let p = 0; p < passes; p++) {
    const splitBase = p * perPass;
    const splits = Math.min(perPass, totalSplits - splitBase);
    // One round walks a chunk of list entries.
    const rounds = siteRounds(Math.ceil(colBlocks * ciBlocks * splits / WG), chunk, !!s.serial);
    steps.push({
      kernel: gemmKernel,
      uniforms: i32Uniforms([
        s.H * s.W,
        s.W,
        s.Cin,
        s.Cout,
        s.x.channels,
        s.x.offset,
        s.dy.channels,
        s.dy.offset,
        chunk,
        splitBase,
        splits,
        ciBlocks,
        colBlocks,
        outElems,
        partStride,
        cap,
        rounds,
      ]),
      buffers: [
        "counts",
        "indices",
        ...(T > 1 ? [s.x.compact ? "nbr" : "nbits"] : []),
        "x",
        "dy",
        "partials",
      ],
      writes: ["partials"],
      workgroups: siteWorkgroups(Math.ceil(colBlocks * ciBlocks * splits / WG / rounds)),
      ...(quadTextures.length ? { textures: quadTextures } : {}),
    });
    const accumulate = p > 0;
    steps.push({
      kernel: {
        key: `sparse-conv-wgrad-reduce${s.bias ? "-bias" : ""}${accumulate ? "-acc" : ""}`,
        code: reduceCode(s.bias, accumulate),
      },
      uniforms: i32Uniforms([partStride, outElems, partStride, chunk, splitBase, splits]),
      buffers: ["counts", "partials", "out", ...(s.bias ? ["dbias"] : [])],
      writes: ["out", ...(s.bias ? ["dbias"] : [])],
      workgroups: foldWorkgroups(Math.ceil(partStride / REDUCE_WG)),
      // A single pass with the bias: nothing reads dW and db before the optimizer, so a backward pass's
      // reductions run a few per dispatch.
      ...(s.bias && passes === 1 ? { defer: WGRAD_REDUCE_BATCH } : {}),
    });
  }
  return { outSize: outElems, scratch: { partials: perPass * partStride }, steps };
}

/** Most reductions one batched dispatch takes (its uniform block holds 7 numbers per reduction). */
const MAX_WGRAD_REDUCE_BATCH = 8;

/** Batched single-pass weight-gradient reductions with the bias ({@link sparseWeightGradPlan}'s reduce step):
 * slot j binds `counts{j}`, `part{j}`, `out{j}`, `dbias{j}`; invocations are numbered across the slots. */
const WGRAD_REDUCE_BATCH: DeferredBatch = {
  key: "sparse-conv-wgrad-reduce-bias",
  size: (storageBindings) => Math.max(1, Math.min(MAX_WGRAD_REDUCE_BATCH, Math.floor(storageBindings / 4))),
  batch: (steps, size) => {
    if (steps.length < 1 || steps.length > size) throw new Error(`wgrad reduce batch: 1 to ${size} steps`);
    const params = new Int32Array(8 * size);
    let start = 0;
    steps.forEach((st, j) => {
      const [n, outElems, partStride, chunk, splitBase, splits] = new Int32Array(st.uniforms);
      params.set([start, n, outElems, partStride, chunk, splitBase, splits, 0], 8 * j);
      start += n;
    });
    for (let j = steps.length; j < size; j++) params.set([start, 0, 0, 0, 1, 0, 0, 0], 8 * j);
    const slots = range(size);
    const code = `struct Job { start: i32, n: i32, outElems: i32, partStride: i32, chunk: i32, splitBase: i32,
  splits: i32, pad: i32, }
struct Params { job: array<Job, ${size}>, }
@group(0) @binding(0) var<uniform> u: Params;
${
      slots.map((j) =>
        `@group(0) @binding(${4 * j + 1}) var<storage, read> counts${j}: array<u32>;
@group(0) @binding(${4 * j + 2}) var<storage, read> part${j}: array<f32>;
@group(0) @binding(${4 * j + 3}) var<storage, read_write> out${j}: array<f32>;
@group(0) @binding(${4 * j + 4}) var<storage, read_write> dbias${j}: array<f32>;`
      ).join("\n")
    }
${batchedEntry(size, REDUCE_WG, "u.job", "job")}
  var acc = 0.0;
${
      slotSwitch(size, (j) =>
        `      let used = clamp((i32(counts${j}[0]) + job.chunk - 1) / job.chunk - job.splitBase, 0, job.splits);
      for (var s = 0; s < used; s++) { acc += part${j}[s * job.partStride + i]; }
      if (i < job.outElems) { out${j}[i] = acc; } else { dbias${j}[i - job.outElems] = acc; }`)
    }
}`;
    return {
      kernel: { key: `sparse-conv-wgrad-reduce-bias-batch${size}`, code },
      uniforms: params.buffer,
      workgroups: foldWorkgroups(Math.max(1, Math.ceil(start / REDUCE_WG))),
    };
  },
};

/**
 * ReLU backward in place at active sites: `out[c] = select(0, out[c], y[c] > 0)` for `channels` channels
 * starting at `slice.offset` of images with `slice.channels` channels (`y` and `out` share the slice's
 * layout). Buffers: `counts`, `indices`, `y`, `out`. One invocation per list entry, looping over the
 * channels.
 */
export function reluGateStep(
  g: SiteGeometry,
  slice: ChannelSlice,
  channels: number,
): KernelStep {
  if (channels > SPARSE_MAX_LOOP) {
    throw new Error(`reluGateStep: ${channels} channels exceed ${SPARSE_MAX_LOOP}`);
  }
  const cap = capacityOf(g);
  const rounds = siteRounds(Math.ceil(cap / WG), channels, !!g.serial);
  return {
    kernel: {
      key: `sparse-relu-gate-${layoutKey(slice)}`,
      code: `${
        header(["HW", "C", "Off", "channels", "cap", "rounds"], [
          ro("counts", "u32"),
          ro("indices", "u32"),
          ro("y"),
          rw("out"),
        ])
      }
${ROUND_ENTRY}
  let cnt = i32(counts[0]);
  if (inv >= cnt) { break; }
  ${opaqueUniform("channels", "u.channels")}
  let s = i32(indices[inv]);
  let n = s / u.HW;
  let base = ${sliceBase(slice, "", "n")} + ${slicePos(slice, "s - n * u.HW", "inv")};
  for (var c = 0; c < channels; c++) {
    let i = base + ${sliceChan(slice, "c")};
    out[i] = select(0.0, out[i], y[i] > 0.0);
  }
  }
}`,
    },
    uniforms: i32Uniforms([g.H * g.W, slice.channels, slice.offset, channels, cap, rounds]),
    buffers: ["counts", "indices", "y", "out"],
    writes: ["out"],
    workgroups: siteWorkgroups(Math.ceil(cap / WG / rounds)),
    ...compactWrites(slice, channels, cap),
  };
}

/**
 * Copies `channels` channels between channel slices at active sites only (or, without `src`, writes zeros
 * there): `out[(n, dst.offset + c), site] = src[(n, src.offset + c), site]`; with `zeros`, then writes zeros
 * to the next `zeros` channels of `dst` (one pass where a copy and a fill of the following channels would take
 * two). Buffers: `counts`, `indices`, `src` (unless zeroing), `out`. One invocation per list entry, looping
 * over the channels.
 */
export function siteCopyStep(
  g: SiteGeometry,
  src: ChannelSlice | null,
  dst: ChannelSlice,
  channels: number,
  zeros = 0,
): KernelStep {
  if (channels + zeros > SPARSE_MAX_LOOP) {
    throw new Error(`siteCopyStep: ${channels + zeros} channels exceed ${SPARSE_MAX_LOOP}`);
  }
  const cap = capacityOf(g);
  const rounds = siteRounds(Math.ceil(cap / WG), channels + zeros, !!g.serial);
  const list = [ro("counts", "u32"), ro("indices", "u32"), ...(src ? [ro("src")] : []), rw("out")];
  const fill = src && zeros > 0;
  return {
    kernel: {
      key: `sparse-site-${src ? "copy" : "zero"}-${layoutKey(src)}${layoutKey(dst)}${fill ? "-fill" : ""}`,
      code: `${
        header(
          ["HW", "srcC", "srcOff", "dstC", "dstOff", "channels", "cap", "rounds", ...(fill ? ["zeros"] : [])],
          list,
        )
      }
${ROUND_ENTRY}
  let cnt = i32(counts[0]);
  if (inv >= cnt) { break; }
  ${opaqueUniform("channels", "u.channels")}
  let s = i32(indices[inv]);
  let n = s / u.HW;
  let hw = s - n * u.HW;
  let srcAt = ${src ? `${sliceBase(src, "src", "n")} + ${slicePos(src, "hw", "inv")}` : "0"};
  let dstAt = ${sliceBase(dst, "dst", "n")} + ${slicePos(dst, "hw", "inv")};
  for (var c = 0; c < channels; c++) {
    out[dstAt + ${sliceChan(dst, "c")}] = ${src ? `src[srcAt + ${sliceChan(src, "c")}]` : "0.0"};
  }${
        fill
          ? `
  for (var c = channels; c < channels + u.zeros; c++) {
    out[dstAt + ${sliceChan(dst, "c")}] = 0.0;
  }`
          : ""
      }
  }
}`,
    },
    uniforms: i32Uniforms([
      g.H * g.W,
      src?.channels ?? 0,
      src?.offset ?? 0,
      dst.channels,
      dst.offset,
      src ? channels : channels + zeros,
      cap,
      rounds,
      ...(fill ? [zeros] : []),
    ]),
    buffers: ["counts", "indices", ...(src ? ["src"] : []), "out"],
    writes: ["out"],
    workgroups: siteWorkgroups(Math.ceil(cap / WG / rounds)),
    ...compactWrites(dst, channels + zeros, cap),
  };
}
