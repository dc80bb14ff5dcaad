// SFM against PyTorch fixtures and a float64 CPU reference, and SPAIR.md's SFM invariants.
import assert from "node:assert/strict";
import { randomArray, relativeError } from "./_setup.ts";
import { loadOpFixtures } from "./fixtures/load.ts";
import * as ops from "../mod.ts";
import { sfm } from "../layers/sparse/sfm.ts";

/** The fused kernels reading through textures or storage, and the composed ops. */
const FUSED_PATHS = [
  { name: "fused, textures", fused: true, textures: true },
  { name: "fused, storage", fused: true, textures: false },
  { name: "composed", fused: false, textures: false },
].map((p) => ({
  name: p.name,
  async run(fn: () => Promise<void>) {
    const e = ops.engine();
    const textures = e.readsViaTextures;
    const fused = ops.setFusion(p.fused);
    e.readsViaTextures = p.textures;
    try {
      await fn();
    } finally {
      e.readsViaTextures = textures;
      ops.setFusion(fused);
    }
  },
}));

for (const fx of loadOpFixtures("sfm.json")) {
  for (const path of FUSED_PATHS) {
    Deno.test(`sfm matches PyTorch (${path.name}): ${fx.name}`, () => path.run(() => checkFixture(fx)));
  }
}

Deno.test("fused sfm equals the composed ops at 2x16x64x48, forward and gradient, both read paths", async () => {
  const [n, c, h, w] = [2, 16, 64, 48];
  const fData = randomArray(n * c * h * w, 11, -2, 3).map((v, i) => v * (1 + (i % 3)));
  const mData = randomArray(n * h * w, 12, 0, 1).map((v, i) => (v < (i < h * w ? 0.1 : 0.7) ? 1 : 0));
  const goData = randomArray(n * c * h * w, 13);
  const results: Float32Array[][] = [];
  for (const path of FUSED_PATHS) {
    await path.run(async () => {
      const f = ops.tensor(fData, [n, c, h, w]);
      const mask = ops.tensor(mData, [n, 1, h, w]);
      f.requiresGrad = true;
      const out = ops.tidy(() => {
        const out = sfm(f, mask);
        ops.backward(ops.sum(ops.mul(out, ops.tensor(goData, out.shape))));
        return out;
      });
      results.push([await out.data(), await f.grad!.data()]);
      ops.dispose([f, mask, out, f.grad]);
    });
  }
  const [composedOut, composedGrad] = results[2];
  for (const [out, grad] of results.slice(0, 2)) {
    assert.ok(relativeError(out, composedOut) <= 1e-5, `forward ${relativeError(out, composedOut)}`);
    assert.ok(relativeError(grad, composedGrad) <= 1e-5, `gradient ${relativeError(grad, composedGrad)}`);
  }
});

async function checkFixture(fx: ReturnType<typeof loadOpFixtures>[number]): Promise<void> {
  const f = ops.tensor(fx.inputs.f.data, fx.inputs.f.shape);
  const mask = ops.tensor(fx.inputs.mask.data, fx.inputs.mask.shape);
  f.requiresGrad = true;
  const { out } = ops.tidy(() => {
    const out = sfm(f, mask);
    ops.backward(ops.sum(ops.mul(out, ops.tensor(fx.gradOutput.data, fx.gradOutput.shape))));
    return { out };
  });
  const outErr = relativeError(await out.data(), fx.output.data);
  const gradErr = relativeError(await f.grad!.data(), fx.grads.f.data);
  ops.dispose([f, mask, out, f.grad]);
  assert.ok(outErr <= 1e-4, `forward error ${outErr}`);
  assert.ok(gradErr <= 1e-4, `gradient error ${gradErr}`);
}

Deno.test("sfm invariants: clean sites bit-identical; degraded stats match clean stats; empty region = identity", async () => {
  const n = 3, c = 4, h = 19, w = 23, plane = h * w;
  const fData = randomArray(n * c * plane, 7, -2, 3).map((v, i) => v * (1 + (i % 5)));
  const densities = [0.3, 0, 1];
  const mData = randomArray(n * plane, 8, 0, 1).map((v, i) => (v < densities[Math.floor(i / plane)] ? 1 : 0));
  const f = ops.tensor(fData, [n, c, h, w]);
  const mask = ops.tensor(mData, [n, 1, h, w]);
  const out = sfm(f, mask);
  const o = await out.data();
  const fBits = new Uint32Array(fData.buffer);
  const oBits = new Uint32Array(o.buffer);
  for (let b = 0; b < n; b++) {
    for (let ch = 0; ch < c; ch++) {
      const stats = { clean: [] as number[], degraded: [] as number[] };
      for (let s = 0; s < plane; s++) {
        const i = (b * c + ch) * plane + s;
        const degraded = mData[b * plane + s] === 1;
        // Images 1 (no degraded site) and 2 (no clean site) are unchanged; clean sites always are.
        if (!degraded || b > 0) assert.equal(oBits[i], fBits[i], `site ${i} changed`);
        (degraded ? stats.degraded : stats.clean).push(degraded ? o[i] : fData[i]);
      }
      if (b === 0) {
        const mean = (xs: number[]) => xs.reduce((a, v) => a + v, 0) / xs.length;
        const std = (xs: number[]) => Math.sqrt(mean(xs.map((v) => (v - mean(xs)) ** 2)));
        assert.ok(
          Math.abs(mean(stats.degraded) - mean(stats.clean)) < 1e-4 * (1 + Math.abs(mean(stats.clean))),
        );
        assert.ok(Math.abs(std(stats.degraded) - std(stats.clean)) < 1e-4 * std(stats.clean));
      }
    }
  }
  ops.dispose([f, mask, out]);
});

Deno.test("sfmWithStatistics with the image's own float64 statistics equals sfm; valid = 0 is the identity", async () => {
  const n = 2, c = 3, h = 11, w = 13, plane = h * w;
  const fData = randomArray(n * c * plane, 9, -1, 2).map((v, i) => v * (1 + (i % 3)));
  const mData = randomArray(n * plane, 10, 0, 1).map((v) => (v < 0.25 ? 1 : 0));
  // Host statistics per image and channel: mean and sqrt(biased variance + eps) of each region.
  const stats = { degradedMean: [], degradedStd: [], cleanMean: [], cleanStd: [] } as Record<
    string,
    number[]
  >;
  for (let b = 0; b < n; b++) {
    for (let ch = 0; ch < c; ch++) {
      for (const [region, isDegraded] of [["degraded", 1], ["clean", 0]] as const) {
        const xs: number[] = [];
        for (let s = 0; s < plane; s++) {
          if (mData[b * plane + s] === isDegraded) xs.push(fData[(b * c + ch) * plane + s]);
        }
        const mean = xs.reduce((a, v) => a + v, 0) / xs.length;
        const variance = xs.reduce((a, v) => a + (v - mean) ** 2, 0) / xs.length;
        stats[`${region}Mean`].push(mean);
        stats[`${region}Std`].push(Math.sqrt(variance + 1e-5));
      }
    }
  }
  const f = ops.tensor(fData, [n, c, h, w]);
  const mask = ops.tensor(mData, [n, 1, h, w]);
  const live: ops.Tensor[] = [f, mask];
  const given = (valid: number[]) => {
    const s = {
      degradedMean: ops.tensor(stats.degradedMean, [n, c, 1, 1]),
      degradedStd: ops.tensor(stats.degradedStd, [n, c, 1, 1]),
      cleanMean: ops.tensor(stats.cleanMean, [n, c, 1, 1]),
      cleanStd: ops.tensor(stats.cleanStd, [n, c, 1, 1]),
      valid: ops.tensor(valid, [n, 1, 1, 1]),
    };
    live.push(...Object.values(s));
    return s;
  };
  const run = async (t: ops.Tensor) => (live.push(t), await t.data());
  const measured = await run(sfm(f, mask));
  const withStats = await run(ops.sfmWithStatistics(f, mask, given([1, 1])));
  assert.ok(relativeError(withStats, measured) <= 1e-5, `error ${relativeError(withStats, measured)}`);
  // Image 1 marked invalid: passes through unchanged, image 0 is still modulated.
  const half = await run(ops.sfmWithStatistics(f, mask, given([1, 0])));
  assert.deepEqual(half.subarray(c * plane), fData.subarray(c * plane));
  assert.ok(relativeError(half.subarray(0, c * plane), measured.subarray(0, c * plane)) <= 1e-5);
  assert.notDeepEqual(measured.subarray(0, c * plane), fData.subarray(0, c * plane));
  ops.dispose(live);
});
