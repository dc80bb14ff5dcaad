/**
 * Kernels of the SNL step (SPAIR's sparse non-local attention, paper eq. 3-5; SPAIR.md section 2), forward
 * and backward, as kernel plans. The layer that drives them is `layers/sparse/snl.ts`.
 *
 * Notation. F is the feature map [N, C, H, W] (NCHW, read in place, never transposed), E the fusion logits
 * [N, 4, H, W], directions d = 0 left, 1 right, 2 up, 3 down. A *query* is a degraded site (sparse mode) or
 * every site (dense mode); its *keys* in direction d are the clean sites (sparse) or all other sites (dense)
 * strictly on that side of it in its row (d < 2) or column (d >= 2). `s_pq = <f_p, f_q> / sqrt(C)`,
 * `a_pq = exp(s_pq - lse_d(p))`, `g_d(p) = sum_q a_pq f_q`, `w(p) = softmax(E_p)` over the non-empty
 * directions, `F'_p = F_p + sum_d w_d g_d(p)`.
 *
 * Work decomposition. Every pass runs per *line* (a row: directions left/right; a column: up/down). A
 * workgroup of {@link SNL_WORKGROUP} = 8 invocations (one SIMD batch of llvmpipe's 256-bit vectors) takes
 * 8 lines, T queries of each line per invocation ({@link snlBlock}: 8 for C <= 64; the `lanes` layout),
 * and every invocation walks its line's key list once. It keeps its T query vectors and its accumulators in
 * registers (C and T are compiled into the kernel; channel math is unrolled straight-line code, no channel
 * loops), so each key feature it loads serves T (query, key) pairs. Measured on llvmpipe (Mesa 22.3) a
 * storage load costs ~6-10 ns per active invocation whatever its address (no uniform-load fast path;
 * vec4 loads cost four loads; workgroup memory and barriers are slower still) while FMAs are nearly free,
 * so loads per pair, C / T, are the figure of merit. The key-gradient pass mirrors this: T keys per
 * invocation walk the line's queries, the workgroup's 8 invocations taking 8 consecutive chunks of T keys
 * of one line (the `all` layout; keys are many, so its lanes are busy). Lines come from per-row/column
 * lists built once per step from the mask ({@link snlListsPlan}): queries are visited only where they
 * exist, keys only where they are clean, and an invocation or workgroup whose chunk of the line is empty,
 * or whose line has no key (no query, for the key pass), exits at once. The work is therefore (queries x clean keys in their lines) x C / T loads plus
 * O(queries x C) per pass, and a 100%-degraded mask costs next to nothing.
 *
 * Lines with few queries. At low density most lines hold a handful of queries (about 2.5 per 256-site
 * line at 1%). The query passes first gave each workgroup 8 consecutive T-query chunks of one line (as the
 * key pass does), which ran one active invocation for such a line; one line per invocation (`lanes`) keeps
 * all 8 busy, 30% faster on 64x64 and 128x128 batches at 10% and 10-25% at 256 and 512. Still, each line
 * costs about as much as a line of T queries. On lines of at least 256 sites the query passes therefore
 * also run (GPU path) a `few` variant for the lines with at most 2T queries (the `lanes` one skips them; on shorter
 * lines its fixed reduction costs more than it saves), one workgroup per T queries
 * of such a line: every invocation holds the same T queries, the invocations split the keys (key i
 * to invocation i mod 8), so each vector instruction serves 8 keys, and a workgroup-memory reduction
 * merges the 8 partial results per query (WG * T * C floats at most, within WebGPU's guaranteed
 * 16 KiB). The key pass already has its lanes busy at low density (T keys each, walking the few queries).
 *
 * Texture path ({@link SnlShape.textures}, CPU adapters only, {@link snlUsesTextures}). The plans copy F
 * (forward; kept for the backward) and dOut (backward) into channels-last order, and the passes read every
 * feature vector they need from texture views of those copies, their own items' and the other side's: C / 4
 * texel loads per site instead of C storage loads. The key pass also reads its queries' stats and D as
 * texels. With {@link SnlShape.serialChunks} (CPU adapters) a `lanes` invocation walks every chunk of T
 * queries of its line, so the grid is not mostly made of invocations that exit at once, and the `few`
 * variant is not used (there it only cost time).
 *
 * Passes (R = row lines, C = column lines), each one dispatch (on long lines the query passes `stats`,
 * `accum`, `dgdot`, `dq` two: lines with many queries, then few-query lines, which touch disjoint queries):
 * - forward: `stats` R, C (per query and direction: streaming max and sum of exp over the keys), `finalize`
 *   per query (logsumexp per direction and the fusion softmax over the non-empty directions), `accum` R, C
 *   (`out_p += sum_q w_d a_pq f_q`; `out` starts as a copy of F and a query without keys is not written,
 *   so clean sites and such queries stay bit-identical).
 * - backward: `dgdot` R, C (`D_d = sum_q a_pq <dh_p, f_q>` = `<dh_p, g_d>`), `dlogits` per site (dE, zero
 *   at clean sites; scales D by w_d), `dq` R, C (query-side gradient `tau sum_q ds_pq f_q` into dF_p), `dk`
 *   R, C per key (key/value gradient `sum_p (tau ds_pq f_p + a_pq w_d dh_p)` gathered over the queries of
 *   its row and column that see it), with `ds_pq = a_pq (w_d <dh_p, f_q> - w_d D_d)`. `accum`, `dq` and
 *   `dk` read-modify-write their output at the invocation's own sites, once per pass, after summing in
 *   registers; passes are ordered dispatches: no atomics, deterministic. On the texture path `dq` and `dk`
 *   add into a channels-last dF (see {@link GRAD_CL}), which the plan's last step writes to `dF`.
 *
 * Memory. No attention row and no channel-sized scratch is ever stored: g_d is never materialized (the
 * forward's second pass re-scores the keys; the backward recomputes scores from the saved logsumexp).
 * Besides inputs and outputs a step holds, per site, 8 words of `stats` (per direction: running max and
 * sum, then logsumexp and w_d; saved for the backward) and 2 of `lists` (sparse mode only; plus one word per
 * line), and the backward 4 words of `D`. They are indexed by site, so they are sized by N*H*W (the live
 * count of active sites stays on the GPU): 14 words per site against the input's C. The texture path adds
 * its channels-last copies and their textures (2 C words per site per copied tensor: F in the forward; F,
 * dOut and the channels-last dF in the backward).
 *
 * llvmpipe loop cap (65,535 iterations per invocation in total): the attention kernels' only loops walk a
 * line's keys (or queries), one iteration per key, plus T-iteration prologue/epilogue loops (and, in the
 * `few` variant, 8-iteration reduction loops), so an invocation runs at most max(H, W) + 2T + 8
 * iterations per chunk of T items; with {@link SnlShape.serialChunks} a `lanes` invocation walks
 * floor(16,000 / (len + 2T + 1)) chunks at most; the list builder walks a line twice (2 max(H, W)).
 * Lines are therefore limited to {@link SNL_MAX_LINE} = 7,996 sites, which keeps every invocation under
 * 16,000 iterations.
 *
 * @module
 */

import {
  defineKernel,
  foldWorkgroups,
  type KernelPlan,
  type KernelSource,
  type KernelStep,
  texelCoords,
} from "./plan.ts";

/** Bound on the loop iterations of one invocation (llvmpipe stops loops after 65,535). */
export const SNL_LOOP_BUDGET = 16000;
/** Invocations per workgroup: one SIMD batch of llvmpipe (8 f32 lanes). */
export const SNL_WORKGROUP = 8;
const WG = SNL_WORKGROUP;
/** Longest supported line (the list builder walks each line twice). */
export const SNL_MAX_LINE = Math.floor((SNL_LOOP_BUDGET - 8) / 2);

/** Geometry and mode of one SNL step. */
export interface SnlShape {
  N: number;
  C: number;
  H: number;
  W: number;
  /** Dense (criss-cross) mode: every site is a query and a key. */
  dense: boolean;
  /**
   * The line passes read the other side's features (keys for the query passes, queries for `dk`) as texels
   * of channels-last copies of F and dOut ([N, H, W, C], plan scratch `Fcl` and `Hcl` made by the plan's
   * first steps, bound as textures): C / 4 texel loads per visited site instead of C storage loads. Needs
   * C % 4 == 0 and H * W % 4 == 0. See {@link snlUsesTextures}.
   */
  textures?: boolean;
  /**
   * An invocation of the query passes' `lanes` layout walks every chunk of T queries of its line (up to the
   * loop budget) instead of one, so the grid has one workgroup column per line instead of one per possible
   * chunk, and the `few` variant is not used. For CPU adapters, where an invocation that exits at once still
   * costs about 0.25 us and most chunks of a sparse line are empty; GPUs keep one chunk per invocation
   * (parallelism) and the `few` variant for lines with few queries.
   */
  serialChunks?: boolean;
}

/**
 * Largest channels-last copy (floats) the texture path makes: 64 MiB (64 channels at 512x512). A copy and
 * its texture cost 2 C words per site (F's copy is kept from the forward to the backward, which adds dOut's
 * and dF's: 6 C words there) where the storage path keeps its scratch at 14 words per site; larger steps read
 * storage. The path halves the time
 * of big steps (one forward step at 1x32x512x512, 10% block mask: 170 against 346-370 ms of GPU time on
 * llvmpipe), so it is worth that memory up to here.
 */
export const SNL_TEXTURE_MAX_FLOATS = 1 << 24;

/**
 * Shortest longest line (max(H, W)) that takes the texture path. The copies cost O(sites x C) and a dispatch
 * each (2 per step forward and backward: F's in the forward, dOut's in the backward), the attention work O(sites x line length x density): measured on
 * llvmpipe (snlStep forward + backward, GPU time, 10% mask), the path saved 25-35% on 128x192 and 256x256
 * maps, 10-25% on 8x16x64x64 and 8x32x32x32 batches (2-6 ms) and cost 7% on 8x16x64x64 at 30%; below 128
 * sites the training step's 8 extra dispatches are not worth it.
 */
export const SNL_TEXTURE_MIN_LINE = 128;

/**
 * Whether an SNL step of this shape reads through textures: where the engine prefers texture reads (CPU
 * rasterizers, which gather storage loads lane by lane: about 12 ns per float against 2-4 ns per 4-float
 * texel on llvmpipe), C and H * W are multiples of 4, lines are long enough ({@link SNL_TEXTURE_MIN_LINE})
 * and the copy is at most {@link SNL_TEXTURE_MAX_FLOATS}.
 */
export function snlUsesTextures(shape: SnlShape, readsViaTextures: boolean): boolean {
  const { N, C, H, W } = shape;
  return readsViaTextures && C % 4 === 0 && (H * W) % 4 === 0 && Math.max(H, W) >= SNL_TEXTURE_MIN_LINE &&
    N * C * H * W <= SNL_TEXTURE_MAX_FLOATS;
}

/**
 * A copy between NCHW and channels-last [N, H, W, C] (C and H * W multiples of 4) of `src` (read through its
 * texture view) into each of `dsts`: an invocation moves 4 channels of 4 neighbouring sites, 4 texel loads and
 * 4 vec4 stores per destination. Invocations run (image and channel quad) outer, site quad inner, so
 * neighbouring lanes touch neighbouring NCHW texels.
 */
function quadCopyKernel(key: string, toChannelsLast: boolean, dsts: string[]) {
  // Where a quad of 4 sites x 4 channels lies in each layout: first vec4 index, and the stride between its 4.
  const nchw = ["nchw", "siteQuads"], last = ["cl", "u.C4"];
  const [from, to] = toChannelsLast ? [nchw, last] : [last, nchw];
  const at = ([base, stride]: string[], k: number) => (k === 0 ? base : `${base} + ${k}u * ${stride}`);
  return defineKernel({
    key,
    uniforms: { C4: "u32", HW: "u32", quads: "u32" },
    bindings: [
      { name: "src", kind: "t" },
      ...dsts.map((name) => ({ name, kind: "w" as const, type: "vec4<f32>" })),
    ],
    body: `@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let id = (wg.x + wg.y * nwg.x) * 64u + lid;
  if (id >= u.quads) { return; }
  let siteQuads = u.HW >> 2u;
  let bc = id / siteQuads;
  let pq = id - bc * siteQuads;
  let b = bc / u.C4;
  let cq = bc - b * u.C4;
  let nchw = (b * u.C4 + cq) * 4u * siteQuads + pq;
  let cl = (b * u.HW + pq * 4u) * u.C4 + cq;
${[0, 1, 2, 3].map((k) => `  let t${k} = textureLoad(src, ${texelCoords(at(from, k))}, 0);`).join("\n")}
${
      dsts.flatMap((dst) =>
        [..."xyzw"].map((c, k) => `  ${dst}[${at(to, k)}] = vec4<f32>(t0.${c}, t1.${c}, t2.${c}, t3.${c});`)
      ).join("\n")
    }
}`,
  });
}

/** NCHW `src` into channels-last `dst`. */
const CHANNELS_LAST = quadCopyKernel("snl:channels-last", true, ["dst"]);
/** NCHW `src` into channels-last `dst` and `dst2`. */
const CHANNELS_LAST_TWICE = quadCopyKernel("snl:channels-last-twice", true, ["dst", "dst2"]);
/** Channels-last `src` into NCHW `dst` (the inverse of {@link CHANNELS_LAST}). */
const CHANNELS_FIRST = quadCopyKernel("snl:channels-first", false, ["dst"]);

/** Checks the limits of the kernels: lines up to {@link SNL_MAX_LINE} sites, batch and lines per image up
 * to 65,535 (workgroup grid dimensions). */
export function checkShape(s: SnlShape): void {
  const line = Math.max(s.H, s.W);
  if (line > SNL_MAX_LINE) throw new Error(`snl: lines of ${line} sites exceed ${SNL_MAX_LINE}`);
  if (s.N > 65535) throw new Error(`snl: batch ${s.N} exceeds 65,535`);
}

/** Number of u32 values of the `lists` buffer. */
export function snlListsSize(N: number, H: number, W: number): number {
  return 2 * N * H * W + N * H + N * W;
}

function uniforms(s: SnlShape, row = false, chunks = 1): ArrayBuffer {
  const buffer = new ArrayBuffer(48);
  const u = new Uint32Array(buffer);
  u.set([s.N, s.C, s.H, s.W, s.H * s.W, s.dense ? 1 : 0, row ? 1 : 0, s.N * s.H * s.W]);
  new Float32Array(buffer)[8] = 1 / Math.sqrt(s.C);
  u[9] = chunks;
  return buffer;
}

const PARAMS = `struct Params {
  N: u32, C: u32, H: u32, W: u32, HW: u32, dense: u32, row: u32, sites: u32, tau: f32, chunks: u32, p1: u32,
  p2: u32
}
@group(0) @binding(0) var<uniform> u: Params;
const NONE = 0xffffffffu;`;

/** A binding: storage of f32/u32 (read or read-write), or an rgba32float texture view of a buffer. */
type Binding = [name: string, type: "f32" | "u32" | "vec4" | "texture", write: boolean];

function bindings(list: Binding[]): string {
  return list.map(([name, type, write], i) =>
    type === "texture"
      ? `@group(0) @binding(${i + 1}) var ${name}: texture_2d<f32>;`
      : `@group(0) @binding(${i + 1}) var<storage, ${write ? "read_write" : "read"}> ${name}: array<${
        type === "vec4" ? "vec4<f32>" : type
      }>;`
  ).join("\n");
}

/** Address of channel c of a site whose channel-0 offset is `base`. */
const ch = (base: string, c: number) => (c === 0 ? base : `${base} + ${c}u * u.HW`);

// ---- list builder ----

const LISTS: KernelSource = {
  key: "snl:lists",
  code: `${PARAMS}
${bindings([["rank", "u32", false], ["lists", "u32", true]])}
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let id = wg.x * 64u + lid + wg.y * 64u * 65535u;
  let rows = u.N * u.H;
  var len = 0u;
  var first = 0u;
  var step = 1u;
  var list = 0u;
  var count = 0u;
  if (id < rows) {
    len = u.W;
    first = (id / u.H) * u.HW + (id % u.H) * u.W;
    list = id * u.W;
    count = 2u * u.sites + id;
  } else if (id < rows + u.N * u.W) {
    let line = id - rows;
    len = u.H;
    step = u.W;
    first = (line / u.W) * u.HW + line % u.W;
    list = u.sites + line * u.H;
    count = 2u * u.sites + rows + line;
  } else {
    return;
  }
  // Clean positions ascending, then degraded positions ascending.
  var n = 0u;
  for (var t = 0u; t < len; t++) {
    if (rank[first + t * step] == NONE) { lists[list + n] = t; n++; }
  }
  lists[count] = n;
  for (var t = 0u; t < len; t++) {
    if (rank[first + t * step] != NONE) { lists[list + n] = t; n++; }
  }
}`,
};

/**
 * Plan writing `out` = the line lists (sparse mode) from the compaction's `rank` map: for every row (N*H
 * lists of W) then every column (N*W lists of H) the positions along the line of its clean sites ascending,
 * then of its degraded sites ascending; then the clean count of every row, then of every column.
 */
export function snlListsPlan(N: number, H: number, W: number): KernelPlan {
  checkShape({ N, C: 1, H, W, dense: false });
  const groups = Math.ceil((N * H + N * W) / 64);
  return {
    outSize: snlListsSize(N, H, W),
    scratch: {},
    steps: [{
      kernel: LISTS,
      uniforms: uniforms({ N, C: 1, H, W, dense: false }),
      buffers: ["rank", "lists"],
      writes: ["lists"],
      workgroups: [Math.min(groups, 65535), Math.ceil(groups / 65535), 1],
    }],
  };
}

// ---- line passes ----

type Pass = "stats" | "accum" | "dgdot" | "dq" | "dk";

const read = (name: string, type: "f32" | "u32" = "f32"): Binding => [name, type, false];
const written = (name: string): Binding => [name, "f32", true];
const PASS_BINDINGS: Record<Pass, Binding[]> = {
  stats: [read("F"), read("lists", "u32"), written("stats")],
  accum: [read("F"), read("stats"), read("lists", "u32"), written("out")],
  dgdot: [read("F"), read("dOut"), read("stats"), read("lists", "u32"), written("D")],
  dq: [read("F"), read("dOut"), read("stats"), read("D"), read("lists", "u32"), written("dF")],
  dk: [read("F"), read("dOut"), read("stats"), read("D"), read("lists", "u32"), written("dF")],
};

/** Channels-last copies of F and dOut, read as textures (see {@link SnlShape.textures}). */
const TEXTURE_OF = { F: "Fcl", dOut: "Hcl" } as const;
/**
 * Channels-last dF of the texture path's backward: starts as a copy of dOut (written by the step that makes
 * dOut's channels-last copy), the query and key passes add to it (4 channels per vec4 access, where NCHW
 * takes one access per channel: the key pass's read-modify-writes at every clean site cost it about a third of
 * its time), and the plan's last step writes it to `dF` in NCHW. (The forward's `accum` adds at queries only:
 * there the extra copy and transposition cost what the vec4 accesses save.)
 */
const GRAD_CL = "dFcl";

/** A pass's bindings (names are the plan's buffer names): its storage buffers, then the texture views the
 * `tex` kernels read the other side from; the `tex` key pass also reads the queries' stats and D as texels. */
function passBindings(pass: Pass, tex: boolean): Binding[] {
  if (!tex) return PASS_BINDINGS[pass];
  const withGradCl = (list: Binding[]) =>
    list.map((b): Binding => b[0] === "dF" ? [GRAD_CL, "vec4", true] : b);
  if (pass === "dgdot" || pass === "dq") {
    return [
      ...withGradCl(PASS_BINDINGS[pass]),
      [TEXTURE_OF.F, "texture", false],
      [TEXTURE_OF.dOut, "texture", false],
    ];
  }
  if (pass !== "dk") return [...PASS_BINDINGS[pass], [TEXTURE_OF.F, "texture", false]];
  return [
    ...withGradCl(PASS_BINDINGS.dk.filter(([name]) => name !== "stats" && name !== "D")),
    ...(["stats", "D", TEXTURE_OF.F, TEXTURE_OF.dOut].map((name): Binding => [name, "texture", false])),
  ];
}

/**
 * Items (queries, or keys for the key-gradient pass) each invocation holds in registers. Every storage
 * load of the other side's features then serves T pairs; on llvmpipe a load costs the same per active
 * invocation whatever its address, so this divides the dominant cost by T. T * C is kept at most 512
 * values to bound register pressure and compile time.
 */
export function snlBlock(C: number): number {
  return Math.max(1, Math.min(8, Math.floor(512 / C)));
}

/** Line geometry (uniform per workgroup): workgroup (chunk, line, image); `u.row` selects rows or columns.
 * Keys are list positions [0, nK), queries [0, nQ) of the query part. */
const LINE_PROLOGUE = `  let chunk = wg.x;
  let L = wg.y;
  let b = wg.z;
  var len = u.H;
  var lineBase = L;
  var step = u.W;
  var listBase = u.sites + (b * u.W + L) * u.H;
  var countAt = 2u * u.sites + u.N * u.H + b * u.W + L;
  var dBefore = 2u;
  if (u.row != 0u) {
    len = u.W;
    lineBase = L * u.W;
    step = 1u;
    listBase = (b * u.H + L) * u.W;
    countAt = 2u * u.sites + b * u.H + L;
    dBefore = 0u;
  }
  var nK = len;
  var nQ = len;
  if (u.dense == 0u) {
    nK = lists[countAt];
    nQ = len - nK;
  }
  let fb = b * u.C * u.HW;`;

/** {@link LINE_PROLOGUE} for the `lanes` variant: invocation `lid` of workgroup row `wg.y` takes line
 * `wg.y * WG + lid` (lanes past the last line return). */
const LANES_PROLOGUE = LINE_PROLOGUE.replace("  let chunk = wg.x;\n", "").replace(
  "let L = wg.y;",
  `let L = wg.y * ${WG}u + lid;
  if (L >= select(u.W, u.H, u.row != 0u)) { return; }`,
);

/** Position along the line of key `i` / query `i` of a line (identity in dense mode). */
const ENTRY_FN = `fn keyAt(listBase: u32, i: u32) -> u32 {
  if (u.dense != 0u) { return i; }
  return lists[listBase + i];
}
fn queryAt(listBase: u32, nK: u32, i: u32) -> u32 {
  if (u.dense != 0u) { return i; }
  return lists[listBase + nK + i];
}`;

/** Per query: logsumexp per direction and the fusion softmax over the non-empty directions (l > 0). */
const FINALIZE: KernelSource = {
  key: "snl:finalize",
  code: `${PARAMS}
${bindings([["E", "f32", false], ["rank", "u32", false], ["stats", "f32", true]])}
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let g = (wg.x + wg.y * 65535u) * 64u + lid;
  if (g >= u.sites) { return; }
  if (u.dense == 0u && rank[g] == NONE) { return; }
  let b = g / u.HW;
  let s = g % u.HW;
  var lse = vec4<f32>(0.0);
  var w = vec4<f32>(0.0);
  var e = vec4<f32>(0.0);
  var emax = -3.0e38;
  for (var d = 0u; d < 4u; d++) {
    let l = stats[(g * 4u + d) * 2u + 1u];
    e[d] = E[(b * 4u + d) * u.HW + s];
    if (l > 0.0) {
      lse[d] = stats[(g * 4u + d) * 2u] + log(l);
      emax = max(emax, e[d]);
    }
  }
  for (var d = 0u; d < 4u; d++) {
    if (stats[(g * 4u + d) * 2u + 1u] > 0.0) { w[d] = exp(e[d] - emax); }
  }
  let total = w.x + w.y + w.z + w.w;
  if (total > 0.0) { w = w / total; }
  for (var d = 0u; d < 4u; d++) {
    stats[(g * 4u + d) * 2u] = lse[d];
    stats[(g * 4u + d) * 2u + 1u] = w[d];
  }
}`,
};

/** Code repeated for item q = 0..T-1 (and channel c = 0..C-1). */
function perQ(T: number, line: (q: number) => string, indent = "    "): string {
  return Array.from({ length: T }, (_, q) => line(q).split("\n").map((l) => indent + l).join("\n")).join(
    "\n",
  );
}
function perC(C: number, line: (c: number) => string, sep = " "): string {
  return Array.from({ length: C }, (_, c) => line(c)).join(sep);
}
/** `sum_c a_c * b_c` as one expression (kept short per line by chunks of 8 terms). */
function dotExpr(C: number, a: (c: number) => string, b: (c: number) => string): string {
  const terms = Array.from({ length: C }, (_, c) => `${a(c)} * ${b(c)}`);
  const chunks: string[] = [];
  for (let i = 0; i < terms.length; i += 8) chunks.push(`(${terms.slice(i, i + 8).join(" + ")})`);
  return chunks.join("\n      + ");
}

/**
 * Lines with at most FEW_GROUPS * T queries take the `few` variant, one workgroup per T of them. Measured at
 * 256x256, C = 32, against the layout of 8 chunks of one line per workgroup: it halved the query passes at 1%
 * (about 2.5 queries per line) and helped at 5% (about 13); at 10% (about 26) it was no faster.
 */
const FEW_GROUPS = 2;
/**
 * Layouts of a line pass's kernel: `all` (the WG invocations of a workgroup take consecutive T-item chunks
 * of one line: the key pass), `lanes` (each invocation takes T queries of its own line, so lines with a
 * handful of queries still keep every SIMD lane busy), `lanes-many` (the same, skipping the lines the `few`
 * variant takes) and `few` (see {@link lineKernel}).
 */
type LineVariant = "all" | "few" | "lanes" | "lanes-many";
/**
 * Shortest line (keys and queries) whose query passes take the `few` variant. The variant pays a fixed
 * cross-lane reduction per T queries to spread the line's keys over the lanes, so it wins only where a line
 * has many keys: snlStep forward + backward with block masks (llvmpipe, 2 cores) ran 20-25% faster without
 * it on 64- and 32-site lines (N8 C16 64x64 at 10%: 41 vs 47-50 ms; at 2%: 26 vs 33 ms; N8 C32 32x32: 23 vs
 * 30 ms), the same at 128 and 512 sites (10%), and 20% slower without it at 256x256, 1% (91 vs 71-80 ms).
 */
const FEW_MIN_LINE = 256;
/**
 * Whether the query passes (all but `dk`) over lines of `len` sites get a {@link lineKernel} `few` variant:
 * long lines only ({@link FEW_MIN_LINE}), and its cross-lane reduction keeps WG * T * C partial sums in
 * workgroup memory, which WebGPU guarantees up to 16 KiB.
 */
function hasFewVariant(C: number, T: number, len: number): boolean {
  return len >= FEW_MIN_LINE && WG * T * C * 4 <= 16384;
}

/**
 * WGSL of one line pass in one of the {@link LineVariant} layouts. `few` is for lines with at most
 * FEW_GROUPS * T queries (query passes only): there a `lanes` invocation walks every key of its line for a
 * handful of queries, paying the whole line's loads and T query slots of math per key, so a sparse mask
 * costs nearly as much per line as a dense one. The `few` workgroup takes T queries of such a
 * line: all its invocations hold the same queries and split the keys between them (key i to invocation
 * i mod WG), so each vector instruction serves WG keys; a workgroup-memory reduction then merges the WG
 * partial results per query (streaming max/sum for `stats`, plain sums otherwise), and invocation q writes
 * query q. The `lanes-many` variant then skips those lines.
 */
function lineKernel(pass: Pass, C: number, T: number, variant: LineVariant, tex: boolean): KernelSource {
  const keysPass = pass === "dk";
  const few = variant === "few";
  const lanes = variant === "lanes" || variant === "lanes-many";
  const splitLines = !keysPass && variant === "lanes-many";
  const items = keysPass ? "nK" : "nQ";
  const ownAt = (i: string) => (keysPass ? `keyAt(listBase, ${i})` : `queryAt(listBase, nK, ${i})`);
  const otherAt = keysPass ? "queryAt(listBase, nK, i)" : "keyAt(listBase, i)";
  const others = keysPass ? "nQ" : "nK";
  // Own items: positions t_q, sites s_q, flat sites g_q (items past the end repeat the last one).
  // A line without keys (or, for dk, without queries) has no pair: nothing to do (stats start zeroed).
  const own = `${
    few
      ? `  if (chunk * ${T}u >= nQ || nQ > ${FEW_GROUPS * T}u || nK == 0u) { return; }
  let start = chunk * ${T}u;`
      : lanes
      ? `  if (chunk * ${T}u >= ${items} || ${others} == 0u${
        splitLines ? ` || nQ <= ${FEW_GROUPS * T}u` : ""
      }) { break; }
  let start = chunk * ${T}u;`
      : `  if (chunk * ${WG * T}u >= ${items} || ${others} == 0u) { return; }
  let start = chunk * ${WG * T}u + lid * ${T}u;
  if (start >= ${items}) { return; }`
  }
${
    perQ(T, (q) =>
      `let t${q} = ${ownAt(`min(start + ${q}u, ${items} - 1u)`)};
let s${q} = lineBase + t${q} * step;
let g${q} = b * u.HW + s${q};`, "  ")
  }`;
  // Own feature vectors, loaded in a loop over the items (a switch moves them into registers), so the
  // kernel has C load sites per vector instead of T * C (llvmpipe expands each site into a per-lane loop).
  const loadOwn = (names: [string, "F" | "dOut"][]) =>
    `${perQ(T, (q) => names.map(([n]) => perC(C, (c) => `var ${n}${q}_${c} = 0.0;`)).join("\n"), "  ")}
  for (var q = 0u; q < ${few ? `min(nQ - start, ${T}u)` : `${T}u`}; q++) {
    let ownPos = lineBase + ${ownAt(`min(start + q, ${items} - 1u)`)} * step;
    let o = fb + ownPos;
${
      names.map(([n, src]) =>
        // The channels-last copy, on the texture path: C / 4 texels instead of C storage loads.
        tex
          ? [
            `    let ${n}At = (b * u.HW + ownPos) * ${C / 4}u;`,
            ...Array.from(
              { length: C / 4 },
              (_, j) =>
                `    let ${n}v${j} = textureLoad(${TEXTURE_OF[src]}, ${texelCoords(`${n}At + ${j}u`)}, 0);`,
            ),
            "    " + perC(C, (c) => `let ${n}_${c} = ${n}v${c >> 2}.${"xyzw"[c & 3]};`),
          ].join("\n")
          : "    " + perC(C, (c) => `let ${n}_${c} = ${src}[${ch("o", c)}];`, "\n    ")
      ).join("\n")
    }
    switch q {
${
      perQ(T, (q) =>
        `${q === T - 1 ? "default" : `case ${q}u`}: { ${
          names.map(([n]) =>
            perC(C, (c) => `${n}${q}_${c} = ${n}_${c};`)
          ).join(" ")
        } }`, "      ")
    }
    }
  }`;
  // Adds y0..y{C-1} into output dst at site `site` of image b: NCHW, or for dF on the texture path its
  // channels-last stand-in, C / 4 vec4 accesses.
  const addOwn = (dst: "out" | "dF", site: string) =>
    tex && dst === "dF"
      ? `      let o4 = (b * u.HW + ${site}) * ${C / 4}u;
${
        Array.from({ length: C / 4 }, (_, j) =>
          `      ${GRAD_CL}[o4 + ${j}u] += vec4<f32>(${
            [0, 1, 2, 3].map((k) => `y${4 * j + k}`).join(", ")
          });`).join("\n")
      }`
      : `      let o = fb + ${site};
${perC(C, (c) => `${dst}[${ch("o", c)}] += y${c};`, "\n").replace(/^/gm, "      ")}`;
  // Adds acc{q}_c into dst at every active item q for which cond(q) holds (one loop, C store sites).
  const storeOwn = (dst: "out" | "dF", cond: (q: number) => string) =>
    `  for (var q = 0u; q < ${T}u; q++) {
    if (start + q >= ${items}) { break; }
${perC(C, (c) => `var y${c} = 0.0;`, "\n").replace(/^/gm, "    ")}
    var ok = false;
    switch q {
${
      perQ(T, (q) =>
        `${q === T - 1 ? "default" : `case ${q}u`}: { ok = ${cond(q)}; ${
          perC(C, (c) => `y${c} = acc${q}_${c};`)
        } }`, "      ")
    }
    }
    if (ok) {
${addOwn(dst, `lineBase + ${ownAt("start + q")} * step`)}
    }
  }`;
  const zeroAcc = perQ(T, (q) => perC(C, (c) => `var acc${q}_${c} = 0.0;`), "  ");
  // The other side's features: C storage loads per site, or (tex) C / 4 texels of its channels-last copy.
  const loadOther = (name: string, src: "F" | "dOut") =>
    tex
      ? [
        `let ${name}At = (b * u.HW + lineBase + t * step) * ${C / 4}u;`,
        ...Array.from(
          { length: C / 4 },
          (_, j) =>
            `let ${name}v${j} = textureLoad(${TEXTURE_OF[src]}, ${texelCoords(`${name}At + ${j}u`)}, 0);`,
        ),
        perC(C, (c) => `let ${name}${c} = ${name}v${c >> 2}.${"xyzw"[c & 3]};`),
      ].join("\n    ")
      : perC(C, (c) => `let ${name}${c} = ${src}[${ch("x0", c)}];`, "\n    ");
  const sideStats = (what: "lse" | "w" | "D") =>
    perQ(T, (q) => {
      const at = (d: string) =>
        what === "D"
          ? `D[g${q} * 4u + ${d}]`
          : `stats[(g${q} * 4u + ${d}) * 2u${what === "w" ? " + 1u" : ""}]`;
      return `let ${what}B${q} = ${at("dBefore")};\nlet ${what}A${q} = ${at("dBefore + 1u")};`;
    }, "  ");
  const loopHead = `  for (var i = ${few ? "lid" : "0u"}; i < ${others}; i += ${few ? WG : 1}u) {
    let t = ${otherAt};
    let x0 = fb + lineBase + t * step;`;
  // Partial results per query slot of a `few` invocation, as WGSL expressions of slot q.
  const partials = (p: Pass, q: number): string[] =>
    p === "stats"
      ? [`mB${q}`, `lB${q}`, `mA${q}`, `lA${q}`]
      : p === "dgdot"
      ? [`DB${q}`, `DA${q}`]
      : Array.from({ length: C }, (_, c) => `acc${q}_${c}`);
  // Stores every invocation's partials (slots of real queries only), then invocation q merges slot q over
  // the workgroup and writes query q.
  const fewEpilogue = (p: Pass) => {
    const K = partials(p, 0).length;
    const ys = Array.from({ length: K }, (_, k) => `y${k}`);
    let merge: string;
    if (p === "stats") {
      merge = `    var mB = -3.0e38;
    var lB = 0.0;
    var mA = -3.0e38;
    var lA = 0.0;
    for (var j = 0u; j < ${WG}u; j++) {
      let at = (j * ${T}u + lid) * 4u;
      let mB2 = part[at];
      let mA2 = part[at + 2u];
      let mBn = max(mB, mB2);
      let mAn = max(mA, mA2);
      lB = lB * exp(mB - mBn) + part[at + 1u] * exp(mB2 - mBn);
      lA = lA * exp(mA - mAn) + part[at + 3u] * exp(mA2 - mAn);
      mB = mBn;
      mA = mAn;
    }
    stats[(gq * 4u + dBefore) * 2u] = mB;
    stats[(gq * 4u + dBefore) * 2u + 1u] = lB;
    stats[(gq * 4u + dBefore + 1u) * 2u] = mA;
    stats[(gq * 4u + dBefore + 1u) * 2u + 1u] = lA;`;
    } else {
      const sums = `${ys.map((y) => `    var ${y} = 0.0;`).join("\n")}
    for (var j = 0u; j < ${WG}u; j++) {
      let at = (j * ${T}u + lid) * ${K}u;
${ys.map((y, k) => `      ${y} += part[at + ${k}u];`).join("\n")}
    }`;
      if (p === "dgdot") {
        merge = `${sums}
    D[gq * 4u + dBefore] = y0;
    D[gq * 4u + dBefore + 1u] = y1;`;
      } else {
        const dst = p === "accum" ? "out" : "dF";
        merge = `    let wB = stats[(gq * 4u + dBefore) * 2u + 1u];
    let wA = stats[(gq * 4u + dBefore + 1u) * 2u + 1u];
    if (wB != 0.0 || wA != 0.0) {
${sums.replace(/^/gm, "  ")}
${addOwn(dst, "sq")}
    }`;
      }
    }
    return `  for (var q = 0u; q < min(nQ - start, ${T}u); q++) {
${ys.map((y) => `    var ${y} = 0.0;`).join("\n")}
    switch q {
${
      perQ(T, (q) =>
        `${q === T - 1 ? "default" : `case ${q}u`}: { ${
          partials(p, q).map((v, k) =>
            `y${k} = ${v};`
          ).join(" ")
        } }`, "      ")
    }
    }
    let at = (lid * ${T}u + q) * ${K}u;
${ys.map((y, k) => `    part[at + ${k}u] = ${y};`).join("\n")}
  }
  workgroupBarrier();
  if (start + lid < nQ) {
    let sq = lineBase + queryAt(listBase, nK, start + lid) * step;
    let gq = b * u.HW + sq;
${merge}
  }`;
  };
  let body: string;
  switch (pass) {
    case "stats":
      body = `${loadOwn([["v", "F"]])}
${perQ(T, (q) => `var mB${q} = -3.0e38;\nvar lB${q} = 0.0;\nvar mA${q} = -3.0e38;\nvar lA${q} = 0.0;`, "  ")}
${loopHead}
    ${loadOther("k", "F")}
${
        perQ(T, (q) =>
          `{
  let sc = (${dotExpr(C, (c) => `v${q}_${c}`, (c) => `k${c}`)}) * u.tau;
  let before = t < t${q};
  let valid = t != t${q};
  let m = select(mA${q}, mB${q}, before);
  let mn = max(m, sc);
  let ln = select(lA${q}, lB${q}, before) * exp(m - mn) + exp(sc - mn);
  mB${q} = select(mB${q}, mn, before && valid);
  lB${q} = select(lB${q}, ln, before && valid);
  mA${q} = select(mA${q}, mn, !before && valid);
  lA${q} = select(lA${q}, ln, !before && valid);
}`)
      }
  }
${
        few ? fewEpilogue("stats") : `  for (var q = 0u; q < ${T}u; q++) {
    if (start + q >= nQ) { break; }
    var st = vec4<f32>(0.0);
    switch q {
${
          perQ(
            T,
            (q) =>
              `${
                q === T - 1 ? "default" : `case ${q}u`
              }: { st = vec4<f32>(mB${q}, lB${q}, mA${q}, lA${q}); }`,
            "      ",
          )
        }
    }
    let s = lineBase + ${ownAt("start + q")} * step;
    let g = b * u.HW + s;
    stats[(g * 4u + dBefore) * 2u] = st.x;
    stats[(g * 4u + dBefore) * 2u + 1u] = st.y;
    stats[(g * 4u + dBefore + 1u) * 2u] = st.z;
    stats[(g * 4u + dBefore + 1u) * 2u + 1u] = st.w;
  }`
      }`;
      break;
    case "accum":
      body = `${loadOwn([["v", "F"]])}
${zeroAcc}
${sideStats("lse")}
${sideStats("w")}
${loopHead}
    ${loadOther("k", "F")}
${
        perQ(T, (q) =>
          `{
  let before = t < t${q};
  let sc = (${dotExpr(C, (c) => `v${q}_${c}`, (c) => `k${c}`)}) * u.tau;
  let coef = select(0.0, select(wA${q}, wB${q}, before) * exp(sc - select(lseA${q}, lseB${q}, before)), t != t${q});
  ${perC(C, (c) => `acc${q}_${c} += coef * k${c};`)}
}`)
      }
  }
${few ? fewEpilogue("accum") : storeOwn("out", (q) => `wB${q} != 0.0 || wA${q} != 0.0`)}`;
      break;
    case "dgdot":
      body = `${loadOwn([["v", "F"], ["h", "dOut"]])}
${sideStats("lse")}
${perQ(T, (q) => `var DB${q} = 0.0;\nvar DA${q} = 0.0;`, "  ")}
${loopHead}
    ${loadOther("k", "F")}
${
        perQ(T, (q) =>
          `{
  let before = t < t${q};
  let sdot = ${dotExpr(C, (c) => `v${q}_${c}`, (c) => `k${c}`)};
  let tdot = ${dotExpr(C, (c) => `h${q}_${c}`, (c) => `k${c}`)};
  let term = exp(sdot * u.tau - select(lseA${q}, lseB${q}, before)) * tdot;
  DB${q} += select(0.0, term, before);
  DA${q} += select(0.0, term, t > t${q});
}`)
      }
  }
${
        few ? fewEpilogue("dgdot") : perQ(
          T,
          (q) =>
            `if (start + ${q}u < nQ) {\n  D[g${q} * 4u + dBefore] = DB${q};\n  D[g${q} * 4u + dBefore + 1u] = DA${q};\n}`,
          "  ",
        )
      }`;
      break;
    case "dq":
      body = `${loadOwn([["v", "F"], ["h", "dOut"]])}
${zeroAcc}
${sideStats("lse")}
${sideStats("w")}
${sideStats("D")}
${loopHead}
    ${loadOther("k", "F")}
${
        perQ(T, (q) =>
          `{
  let before = t < t${q};
  let sdot = ${dotExpr(C, (c) => `v${q}_${c}`, (c) => `k${c}`)};
  let tdot = ${dotExpr(C, (c) => `h${q}_${c}`, (c) => `k${c}`)};
  let a = exp(sdot * u.tau - select(lseA${q}, lseB${q}, before));
  let coef = select(0.0, u.tau * a * (select(wA${q}, wB${q}, before) * tdot - select(DA${q}, DB${q}, before)), t != t${q});
  ${perC(C, (c) => `acc${q}_${c} += coef * k${c};`)}
}`)
      }
  }
${few ? fewEpilogue("dq") : storeOwn("dF", (q) => `wB${q} != 0.0 || wA${q} != 0.0`)}`;
      break;
    case "dk":
      body = `${loadOwn([["v", "F"]])}
${zeroAcc}
${loopHead}
    ${loadOther("f", "F")}
    ${loadOther("h", "dOut")}
    let gq = b * u.HW + lineBase + t * step;
${
        tex
          ? `    // One texel of stats holds (lse, w) of both directions of the line, one of D all four directions.
    let st = textureLoad(stats, ${texelCoords("gq * 2u + (dBefore >> 1u)")}, 0);
    let Dv = textureLoad(D, ${texelCoords("gq")}, 0);
    let DBA = select(Dv.zw, Dv.xy, u.row != 0u);
    let lseB = st.x;
    let wB = st.y;
    let DB = DBA.x;
    let lseA = st.z;
    let wA = st.w;
    let DA = DBA.y;`
          : `    let lseB = stats[(gq * 4u + dBefore) * 2u];
    let wB = stats[(gq * 4u + dBefore) * 2u + 1u];
    let DB = D[gq * 4u + dBefore];
    let lseA = stats[(gq * 4u + dBefore + 1u) * 2u];
    let wA = stats[(gq * 4u + dBefore + 1u) * 2u + 1u];
    let DA = D[gq * 4u + dBefore + 1u];`
      }
${
        perQ(T, (q) =>
          `{
  // The query looks 'before' (left/up) at this key when the key lies before it.
  let before = t${q} < t;
  let sdot = ${dotExpr(C, (c) => `v${q}_${c}`, (c) => `f${c}`)};
  let tdot = ${dotExpr(C, (c) => `v${q}_${c}`, (c) => `h${c}`)};
  let w = select(wA, wB, before);
  let a = select(0.0, exp(sdot * u.tau - select(lseA, lseB, before)), t != t${q});
  let cf = u.tau * a * (w * tdot - select(DA, DB, before));
  let cd = a * w;
  ${perC(C, (c) => `acc${q}_${c} += cf * f${c} + cd * h${c};`)}
}`)
      }
  }
${storeOwn("dF", () => "true")}`;
      break;
  }
  const partCount = WG * T * (pass === "stats" ? 4 : pass === "dgdot" ? 2 : C);
  const code = `${PARAMS}
${bindings(passBindings(pass, tex))}
${few ? `var<workgroup> part: array<f32, ${partCount}>;` : ""}
${ENTRY_FN}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
${
    lanes
      ? `${LANES_PROLOGUE}
  // u.chunks chunks of T queries per invocation, in a loop: a grid over every possible chunk of a line ran
  // mostly invocations that exit at once (a line at 10% has a few chunks of queries), at about 0.25 us each.
  for (var chunk = wg.x * u.chunks; chunk < (wg.x + 1u) * u.chunks; chunk++) {
${own}
${body}
  }`
      : `${LINE_PROLOGUE}
${own}
${body}`
  }
}
`;
  return {
    key: `snl:${pass}${variant === "all" ? "" : `-${variant}`}:c${C}:t${T}${tex ? ":tex" : ""}`,
    code,
  };
}

const cache = new Map<string, KernelSource>();
function kernel(pass: Pass, C: number, T: number, variant: LineVariant, tex: boolean): KernelSource {
  const key = `${pass}:${C}:${T}:${variant}:${tex}`;
  let k = cache.get(key);
  if (!k) cache.set(key, k = lineKernel(pass, C, T, variant, tex));
  return k;
}

/** Steps of one line pass: rows, then columns. The key pass takes `all`, the query passes `lanes`, and over
 * lines of at least {@link FEW_MIN_LINE} sites `lanes-many` plus `few` (a workgroup per T queries) for the
 * lines with at most FEW_GROUPS * T queries. */
function linePass(pass: Pass, s: SnlShape): KernelStep[] {
  checkShape(s);
  const T = snlBlock(s.C);
  const tex = !!s.textures;
  if (tex && (s.C % 4 !== 0 || (s.H * s.W) % 4 !== 0)) {
    throw new Error(
      `snl: texture reads need C and H * W multiples of 4, got C = ${s.C}, H * W = ${s.H * s.W}`,
    );
  }
  const bound = passBindings(pass, tex);
  const buffers = bound.map(([name]) => name);
  const writes = bound.filter(([, , write]) => write).map(([name]) => name);
  const textures = bound.filter(([, type]) => type === "texture").map(([name]) => name);
  return [true, false].flatMap((row) => {
    const [len, lines] = row ? [s.W, s.H] : [s.H, s.W];
    // `lanes` chunks of T queries per invocation (see SnlShape.serialChunks), within the loop budget.
    const lineChunks = Math.ceil(len / T);
    const chunks = s.serialChunks ? Math.min(lineChunks, Math.floor(SNL_LOOP_BUDGET / (len + 2 * T + 1))) : 1;
    const step = (variant: LineVariant): KernelStep => ({
      kernel: kernel(pass, s.C, T, variant, tex),
      uniforms: uniforms(s, row, chunks),
      buffers,
      writes,
      ...(tex ? { textures } : {}),
      workgroups: variant === "few"
        ? [FEW_GROUPS, lines, s.N]
        : variant === "lanes" || variant === "lanes-many"
        ? [Math.ceil(lineChunks / chunks), Math.ceil(lines / WG), s.N]
        : [Math.ceil(len / (WG * T)), lines, s.N],
    });
    if (pass === "dk") return [step("all")];
    // With chunked lanes (CPU adapters) the `few` variant only costs: SNL module forward + backward at
    // 1x32x256x256 took 194-222 / 255-259 / 308-329 ms at 1% / 5% / 10% without it, 255-289 / 394-419 /
    // 352-410 with it (two alternated runs).
    // (The texture path is for CPU adapters too: it never takes `few`.)
    const few = hasFewVariant(s.C, T, len) && !s.serialChunks && !tex;
    return few ? [step("lanes-many"), step("few")] : [step("lanes")];
  });
}

/** With {@link SnlShape.textures}: the steps writing the channels-last copies of `names` into their scratch;
 * with `grad`, dOut's also into {@link GRAD_CL}. */
function channelsLastSteps(s: SnlShape, names: ("F" | "dOut")[], grad = false): KernelStep[] {
  if (!s.textures) return [];
  const quads = (s.N * s.C * s.H * s.W) / 16;
  const u = { C4: s.C / 4, HW: s.H * s.W, quads };
  const grid = foldWorkgroups(Math.ceil(quads / 64));
  return names.map((name) =>
    grad && name === "dOut"
      ? CHANNELS_LAST_TWICE.step(u, grid, { src: name, dst: TEXTURE_OF[name], dst2: GRAD_CL })
      : CHANNELS_LAST.step(u, grid, { src: name, dst: TEXTURE_OF[name] })
  );
}

/** Grid of the per-site kernels (64 sites per workgroup, folded over y past 65,535 workgroups). */
function siteGrid(s: SnlShape): [number, number, number] {
  const groups = Math.ceil((s.N * s.H * s.W) / 64);
  return [Math.min(groups, 65535), Math.ceil(groups / 65535), 1];
}

/** Plan buffer of the channels-last copy of F ({@link SnlShape.textures}), which the forward plan writes and
 * the backward plan may take instead of copying again. */
export const SNL_CHANNELS_LAST_F = TEXTURE_OF.F;

/**
 * Forward plan of one SNL step. Inputs: `F`, `E`, `lists` and `rank` (sparse mode; in dense mode any
 * buffers). Outputs: `stats` [N*H*W, 4, 2], which must start zeroed and is kept for the backward, and
 * `out`, which must already hold a copy of F: the plan adds `h_p` at the queries that have keys and touches
 * nothing else. With `textures`, also {@link SNL_CHANNELS_LAST_F} (N*H*W*C floats): the plan writes F's
 * channels-last copy there, which the caller may keep for the backward.
 */
export function snlForwardPlan(s: SnlShape): KernelPlan {
  return {
    outSize: s.N * s.C * s.H * s.W,
    scratch: {},
    steps: [
      ...channelsLastSteps(s, ["F"]),
      ...linePass("stats", s),
      {
        kernel: FINALIZE,
        uniforms: uniforms(s),
        buffers: ["E", "rank", "stats"],
        writes: ["stats"],
        workgroups: siteGrid(s),
      },
      ...linePass("accum", s),
    ],
  };
}

// ---- backward ----

const DLOGITS: KernelSource = {
  key: "snl:dlogits",
  code: `${PARAMS}
${bindings([["stats", "f32", false], ["rank", "u32", false], ["D", "f32", true], ["dE", "f32", true]])}
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let g = (wg.x + wg.y * 65535u) * 64u + lid;
  if (g >= u.sites) { return; }
  let b = g / u.HW;
  let s = g % u.HW;
  if (u.dense == 0u && rank[g] == NONE) {
    for (var d = 0u; d < 4u; d++) { dE[(b * 4u + d) * u.HW + s] = 0.0; }
    return;
  }
  var w = vec4<f32>(0.0);
  var gd = vec4<f32>(0.0);
  for (var d = 0u; d < 4u; d++) {
    w[d] = stats[(g * 4u + d) * 2u + 1u];
    gd[d] = D[g * 4u + d];
  }
  // w_d = 0 for an empty direction, whose D is never written: mask it (it may hold anything).
  gd = select(vec4<f32>(0.0), gd, w != vec4<f32>(0.0));
  let de = w * (gd - dot(w, gd));
  for (var d = 0u; d < 4u; d++) {
    dE[(b * 4u + d) * u.HW + s] = de[d];
    D[g * 4u + d] = w[d] * gd[d];
  }
}`,
};

/**
 * Backward plan of one SNL step. Inputs: `F`, `dOut` (dL/dF'), `stats` from the forward, `lists`, `rank`
 * (dense mode: any buffers), and with `textures` and `keptCopy` the forward's {@link SNL_CHANNELS_LAST_F}
 * (else the plan copies F again). Outputs: `out` = dE [N, 4, H, W] (every element written) and, when
 * `withInput`, `dF`: the caller initializes it with a copy of `dOut`, except with `textures`, where the plan
 * writes all of it. Scratch: `D` [N*H*W, 4] (and the texture path's copies).
 */
export function snlBackwardPlan(s: SnlShape, withInput: boolean, keptCopy = false): KernelPlan {
  const sites = s.N * s.H * s.W;
  const copied: ("F" | "dOut")[] = [...(keptCopy ? [] : ["F" as const]), "dOut"];
  const steps: KernelStep[] = [
    ...channelsLastSteps(s, copied, withInput),
    ...linePass("dgdot", s),
    {
      kernel: DLOGITS,
      uniforms: uniforms(s),
      buffers: ["stats", "rank", "D", "out"],
      writes: ["D", "out"],
      workgroups: siteGrid(s),
    },
  ];
  if (withInput) {
    steps.push(...linePass("dq", s));
    steps.push(...linePass("dk", s));
    if (s.textures) {
      const quads = (s.N * s.C * s.H * s.W) / 16;
      steps.push(CHANNELS_FIRST.step(
        { C4: s.C / 4, HW: s.H * s.W, quads },
        foldWorkgroups(Math.ceil(quads / 64)),
        { src: GRAD_CL, dst: "dF" },
      ));
    }
  }
  const scratch: Record<string, number> = { D: sites * 4 };
  if (s.textures) { for (const name of copied) scratch[TEXTURE_OF[name]] = sites * s.C; }
  if (s.textures && withInput) scratch[GRAD_CL] = sites * s.C;
  return { outSize: s.N * 4 * s.H * s.W, scratch, steps };
}
