// Bundled models on photos they never saw: a real motion-blurred photo (no ground truth) and the samples
// (validation photos degraded with generator seeds never used in training). Where the predicted mask says
// "clean", restoration must leave the photo alone: mean change below 2/255.
import assert from "node:assert/strict";
import "./_setup.ts";
import { restorePlanar, type Task } from "../mod.ts";
import { readImage, toPlanarRgb } from "../train/image_io.ts";
import { bundledWeights, loadWeightsFile } from "../restore/cli.ts";

const root = new URL("../", import.meta.url).pathname;

/** A centre crop of planar RGB (keeps the test's llvmpipe time bounded on the larger real photo). */
function centreCrop(planar: Float32Array, w: number, h: number, cw: number, ch: number): Float32Array {
  const out = new Float32Array(3 * cw * ch);
  const x0 = Math.floor((w - cw) / 2), y0 = Math.floor((h - ch) / 2);
  for (let c = 0; c < 3; c++) {
    for (let y = 0; y < ch; y++) {
      out.set(planar.subarray((c * h + y0 + y) * w + x0, (c * h + y0 + y) * w + x0 + cw), (c * ch + y) * cw);
    }
  }
  return out;
}

const cases: [string, Task][] = [
  ["samples/real/clock_motion.png", "blur"],
  ["samples/rain.png", "rain"],
  ["samples/raindrop.png", "raindrop"],
  ["samples/shadow.png", "shadow"],
  ["samples/blur.png", "blur"],
];

for (const [file, task] of cases) {
  Deno.test(`${task} model leaves clean regions of ${file.split("/").pop()} unchanged (< 2/255 mean)`, async () => {
    const image = await readImage(root + file);
    let planar = toPlanarRgb(image);
    let [w, h] = [image.width, image.height];
    if (w * h > 400 * 300) {
      planar = centreCrop(planar, w, h, 384, 256);
      [w, h] = [384, 256];
    }
    const { model } = await loadWeightsFile(bundledWeights(task));
    try {
      const { restored, mask } = await restorePlanar(model, planar, w, h);
      assert.ok(mask, "the bundled SPAIR models predict a mask");
      const plane = w * h;
      let clean = 0, change = 0, degradedChange = 0;
      for (let i = 0; i < plane; i++) {
        let d = 0;
        for (let c = 0; c < 3; c++) d += Math.abs(restored[c * plane + i] - planar[c * plane + i]) / 3;
        if (mask[i] === 0) {
          clean++;
          change += d;
        } else degradedChange += d;
      }
      const meanClean = change / clean;
      console.log(
        `${file}: ${(100 * (1 - clean / plane)).toFixed(1)}% predicted degraded; mean change clean ` +
          `${(meanClean * 255).toFixed(3)}/255, degraded ${
            (degradedChange / Math.max(1, plane - clean) * 255).toFixed(3)
          }/255`,
      );
      for (let i = 0; i < restored.length; i++) assert.ok(restored[i] >= 0 && restored[i] <= 1);
      if (clean < 100) {
        // Camera shake blurs the whole frame: nothing is left to call clean, which is the right answer.
        assert.equal(task, "blur", `the ${task} model calls only ${clean} of ${plane} pixels clean`);
        return;
      }
      assert.ok(
        meanClean < 2 / 255,
        `clean pixels changed by ${(meanClean * 255).toFixed(3)}/255 on average`,
      );
    } finally {
      for (const p of model.parameters()) p.dispose();
    }
  });
}
