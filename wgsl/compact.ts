/**
 * Mask compaction: turns an N x 1 x H x W mask into the sorted list of its active (degraded) sites with a
 * deterministic GPU prefix sum, plus per-image counts and a dense site -> list-position map.
 *
 * Four passes, every invocation looping at most {@link COMPACT_BLOCK} times (llvmpipe's loop cap):
 * 1. count active sites per block of COMPACT_BLOCK sites;
 * 2. exclusive scan of block counts within groups of COMPACT_BLOCK blocks, plus each group's total;
 * 3. exclusive scan of group totals (one invocation; up to COMPACT_BLOCK groups = 2^30 sites);
 * 4. write the list, the rank map and the per-image counts/offsets.
 * Up to COMPACT_BLOCK^2 sites (one group), passes 2 and 3 are one.
 *
 * Buffers (u32): `mask` (f32 in), `indices` [capacity = N*H*W], `rank` [N*H*W] (list position or
 * 0xffffffff), `counts` [1 + 2N]: total, then count per image, then offset per image.
 *
 * @module
 */

import { foldWorkgroups, type KernelPlan } from "./plan.ts";

/** Sites per block and blocks per group. */
export const COMPACT_BLOCK = 1024;
const WG = 64;

const HEADER =
  `struct Params { sites: u32, blocks: u32, groups: u32, images: u32, perImage: u32, p0: u32, p1: u32, p2: u32 }
@group(0) @binding(0) var<uniform> u: Params;
fn invocation(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 { return (wg.x + wg.y * nwg.x) * ${WG}u + lid; }`;
const ENTRY = `@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let id = invocation(wg, nwg, lid);`;

const COUNT = `${HEADER}
@group(0) @binding(1) var<storage, read> mask: array<f32>;
@group(0) @binding(2) var<storage, read_write> blockCounts: array<u32>;
${ENTRY}
  if (id >= u.blocks) { return; }
  let start = id * ${COMPACT_BLOCK}u;
  let stop = min(start + ${COMPACT_BLOCK}u, u.sites);
  var n = 0u;
  for (var s = start; s < stop; s++) { n += select(0u, 1u, mask[s] > 0.5); }
  blockCounts[id] = n;
}`;

const SCAN_GROUPS = `${HEADER}
@group(0) @binding(1) var<storage, read_write> blockCounts: array<u32>;
@group(0) @binding(2) var<storage, read_write> groupTotals: array<u32>;
${ENTRY}
  if (id >= u.groups) { return; }
  let start = id * ${COMPACT_BLOCK}u;
  let stop = min(start + ${COMPACT_BLOCK}u, u.blocks);
  var run = 0u;
  for (var b = start; b < stop; b++) { let c = blockCounts[b]; blockCounts[b] = run; run += c; }
  groupTotals[id] = run;
}`;

const SCAN_TOTALS = `${HEADER}
@group(0) @binding(1) var<storage, read_write> groupTotals: array<u32>;
@group(0) @binding(2) var<storage, read_write> counts: array<u32>;
${ENTRY}
  if (id != 0u) { return; }
  var run = 0u;
  for (var g = 0u; g < u.groups; g++) { let c = groupTotals[g]; groupTotals[g] = run; run += c; }
  counts[0] = run;
}`;

// Passes 2 and 3 in one when there is one group (up to COMPACT_BLOCK^2 sites): scan the block counts, the
// group's offset is 0.
const SCAN_ONE_GROUP = `${HEADER}
@group(0) @binding(1) var<storage, read_write> blockCounts: array<u32>;
@group(0) @binding(2) var<storage, read_write> groupTotals: array<u32>;
@group(0) @binding(3) var<storage, read_write> counts: array<u32>;
${ENTRY}
  if (id != 0u) { return; }
  var run = 0u;
  for (var b = 0u; b < u.blocks; b++) { let c = blockCounts[b]; blockCounts[b] = run; run += c; }
  groupTotals[0] = 0u;
  counts[0] = run;
}`;

const WRITE = `${HEADER}
@group(0) @binding(1) var<storage, read> mask: array<f32>;
@group(0) @binding(2) var<storage, read> blockCounts: array<u32>;
@group(0) @binding(3) var<storage, read> groupTotals: array<u32>;
@group(0) @binding(4) var<storage, read_write> indices: array<u32>;
@group(0) @binding(5) var<storage, read_write> rank: array<u32>;
@group(0) @binding(6) var<storage, read_write> counts: array<u32>;
// Number of active sites before \`site\` (site must be a block start or lie in block \`site / BLOCK\`).
fn prefix(site: u32) -> u32 {
  let block = site / ${COMPACT_BLOCK}u;
  if (block >= u.blocks) { return counts[0]; }
  var n = blockCounts[block] + groupTotals[block / ${COMPACT_BLOCK}u];
  for (var s = block * ${COMPACT_BLOCK}u; s < site; s++) { n += select(0u, 1u, mask[s] > 0.5); }
  return n;
}
${ENTRY}
  if (id < u.blocks) {
    var at = blockCounts[id] + groupTotals[id / ${COMPACT_BLOCK}u];
    let start = id * ${COMPACT_BLOCK}u;
    let stop = min(start + ${COMPACT_BLOCK}u, u.sites);
    for (var s = start; s < stop; s++) {
      if (mask[s] > 0.5) { indices[at] = s; rank[s] = at; at++; } else { rank[s] = 0xffffffffu; }
    }
  }
  if (id < u.images) {
    let first = prefix(id * u.perImage);
    let last = prefix((id + 1u) * u.perImage);
    counts[1u + id] = last - first;
    counts[1u + u.images + id] = first;
  }
}`;

/** Plan compacting `mask` (N images of `perImage` sites) into `indices`, `rank` and `counts`. The plan's
 * `out` is `counts`; `indices` and `rank` are extra outputs bound by the caller. */
export function compactPlan(images: number, perImage: number): KernelPlan {
  const sites = images * perImage;
  const blocks = Math.ceil(sites / COMPACT_BLOCK);
  const groups = Math.ceil(blocks / COMPACT_BLOCK);
  if (groups > COMPACT_BLOCK) throw new Error(`compaction supports at most ${COMPACT_BLOCK ** 3} sites`);
  const uniforms = new Uint32Array([sites, blocks, groups, images, perImage, 0, 0, 0]).buffer;
  const over = (n: number) => foldWorkgroups(Math.ceil(n / WG));
  return {
    outSize: 1 + 2 * images,
    scratch: { blockCounts: blocks, groupTotals: groups },
    steps: [
      {
        kernel: { key: "compact:count", code: COUNT },
        uniforms,
        buffers: ["mask", "blockCounts"],
        writes: ["blockCounts"],
        workgroups: over(blocks),
      },
      ...(groups === 1
        ? [{
          kernel: { key: "compact:scanOneGroup", code: SCAN_ONE_GROUP },
          uniforms,
          buffers: ["blockCounts", "groupTotals", "out"],
          writes: ["blockCounts", "groupTotals", "out"],
          workgroups: [1, 1, 1] as [number, number, number],
        }]
        : [
          {
            kernel: { key: "compact:scanGroups", code: SCAN_GROUPS },
            uniforms,
            buffers: ["blockCounts", "groupTotals"],
            writes: ["blockCounts", "groupTotals"],
            workgroups: over(groups),
          },
          {
            kernel: { key: "compact:scanTotals", code: SCAN_TOTALS },
            uniforms,
            buffers: ["groupTotals", "out"],
            writes: ["groupTotals", "out"],
            workgroups: [1, 1, 1] as [number, number, number],
          },
        ]),
      {
        kernel: { key: "compact:write", code: WRITE },
        uniforms,
        buffers: ["mask", "blockCounts", "groupTotals", "indices", "rank", "out"],
        writes: ["indices", "rank", "out"],
        workgroups: over(Math.max(blocks, images)),
      },
    ],
  };
}
