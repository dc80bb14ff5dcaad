// Mask compaction (GPU prefix sum), binarization and the mask pyramid against CPU references.
import assert from "node:assert/strict";
import { randomArray } from "./_setup.ts";
import * as ops from "../mod.ts";
import { binarizeMask, compactMask, maskPyramid } from "../layers/sparse/active.ts";

function randomMask(n: number, h: number, w: number, densities: number[], seed: number): Float32Array {
  const r = randomArray(n * h * w, seed, 0, 1);
  return r.map((v, i) => (v < densities[Math.floor(i / (h * w))] ? 1 : 0));
}

async function checkCompaction(n: number, h: number, w: number, densities: number[], seed: number) {
  const data = randomMask(n, h, w, densities, seed);
  const mask = ops.tensor(data, [n, 1, h, w]);
  const sites = compactMask(mask);
  const expected = [...data.keys()].filter((i) => data[i] === 1);
  const perImage = densities.map((_, b) => expected.filter((s) => Math.floor(s / (h * w)) === b).length);
  const counts = await sites.readCounts();
  assert.equal(counts.total, expected.length);
  assert.deepEqual(counts.perImage, perImage);
  assert.deepEqual(counts.offsets, perImage.map((_, b) => perImage.slice(0, b).reduce((a, c) => a + c, 0)));
  assert.deepEqual(await sites.readIndices(), expected);
  const rank = new Uint32Array((await sites.rank.data()).buffer);
  for (let s = 0; s < data.length; s++) {
    assert.equal(rank[s], data[s] ? expected.indexOf(s) : 0xffffffff, `rank of site ${s}`);
  }
  sites.dispose();
  mask.dispose();
}

Deno.test("compactMask: sorted active list, per-image counts/offsets, rank map (densities 0, 3%, 30%, 100%)", async () => {
  await checkCompaction(4, 13, 17, [0, 0.03, 0.3, 1], 1);
  await checkCompaction(1, 1, 1, [1], 2);
  await checkCompaction(2, 5, 3, [0, 0], 3);
});

Deno.test("compactMask: more than 1024 blocks (2-level scan) and loop counts under llvmpipe's cap", async () => {
  // 2 x 1 x 700 x 900 = 1.26M sites = 1,231 blocks: crosses a group boundary of the scan.
  const n = 2, h = 700, w = 900;
  const data = randomMask(n, h, w, [0.1, 0.6], 4);
  const mask = ops.tensor(data, [n, 1, h, w]);
  const sites = compactMask(mask);
  const counts = await sites.readCounts();
  let total = 0, first = 0;
  for (let i = 0; i < data.length; i++) total += data[i];
  for (let i = 0; i < h * w; i++) first += data[i];
  assert.equal(counts.total, total);
  assert.deepEqual(counts.perImage, [first, total - first]);
  const indices = await sites.readIndices();
  for (let k = 0; k < indices.length; k += 997) {
    assert.equal(data[indices[k]], 1);
    if (k > 0) assert.ok(indices[k] > indices[k - 1]);
  }
  let expectedLast = data.length - 1;
  while (data[expectedLast] === 0) expectedLast--;
  assert.equal(indices[indices.length - 1], expectedLast);
  sites.dispose();
  mask.dispose();
});

Deno.test("binarizeMask thresholds sigmoid(logit) > 0.5; maskPyramid max-pools", async () => {
  const logits = ops.tensor([-2, -0.01, 0.01, 3], [1, 1, 2, 2]);
  const m = binarizeMask(logits);
  assert.deepEqual([...await m.data()], [0, 0, 1, 1]);
  const fine = ops.tensor([0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], [1, 1, 4, 4]);
  const [l0, l1, l2] = maskPyramid(fine, 3);
  assert.deepEqual([...await l0.data()], [...await fine.data()]);
  assert.deepEqual([...await l1.data()], [1, 0, 0, 0]);
  assert.deepEqual([...await l2.data()], [1]);
  ops.dispose([logits, m, fine, l0, l1, l2]);
});
