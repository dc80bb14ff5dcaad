// SFM against PyTorch fixtures and a float64 CPU reference, and SPAIR.md's SFM invariants.
import assert from "node:assert/strict";
import { randomArray, relativeError } from "./_setup.ts";
import { loadOpFixtures } from "./fixtures/load.ts";
import * as ops from "../mod.ts";
import { sfm } from "../layers/sparse/sfm.ts";

for (const fx of loadOpFixtures("sfm.json")) {
  Deno.test(`sfm matches PyTorch: ${fx.name}`, async () => {
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
  });
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
