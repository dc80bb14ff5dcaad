// How NetL's mask would score against a paired set's ground-truth masks at other logit thresholds than
// SPAIR's 0 (p > 0.5, SPAIR.md section 2): pooled IoU per threshold. A calibration probe, not a setting: it
// tells whether a low IoU is a shifted threshold (the BCE positive weight, or a training set with denser
// degradations than the test set) or a mask NetL cannot draw.
// Usage: deno run -A bench/mask_calibration.ts WEIGHTS PAIRS_DIR   (PAIRS_DIR holds input/ and mask/)
import { initEngine, loadModel, noGrad, tensor } from "../mod.ts";
import { readImage, toPlanarRgb } from "../train/image_io.ts";

const [weights, dir] = Deno.args;
if (!weights || !dir) {
  console.error("usage: deno run -A bench/mask_calibration.ts WEIGHTS PAIRS_DIR");
  Deno.exit(2);
}
await initEngine();
const { model } = loadModel(await Deno.readFile(weights), weights);
const thresholds = [-3, -2, -1, -0.5, 0, 0.5, 1, 1.5, 2, 3];
const inter = thresholds.map(() => 0), union = thresholds.map(() => 0);
let positives = 0, pixels = 0;
for (const entry of [...Deno.readDirSync(`${dir}/input`)].sort((a, b) => a.name < b.name ? -1 : 1)) {
  const image = await readImage(`${dir}/input/${entry.name}`);
  const truth = await readImage(`${dir}/mask/${entry.name}`);
  const [w, h] = [image.width, image.height];
  // NetL needs sides divisible by 4: score the top-left part that is.
  const [pw, ph] = [w - (w % 4), h - (h % 4)];
  const planar = toPlanarRgb(image);
  const crop = new Float32Array(3 * ph * pw);
  for (let c = 0; c < 3; c++) {
    for (let y = 0; y < ph; y++) {
      crop.set(planar.subarray((c * h + y) * w, (c * h + y) * w + pw), (c * ph + y) * pw);
    }
  }
  const logits = await noGrad(() => model.guidance(tensor(crop, [1, 3, ph, pw])).logits).data();
  for (let y = 0; y < ph; y++) {
    for (let x = 0; x < pw; x++) {
      const t = truth.data[(y * w + x) * truth.channels] > 0.5;
      const l = logits[y * pw + x];
      positives += t ? 1 : 0;
      pixels++;
      thresholds.forEach((th, i) => {
        const p = l > th;
        if (p && t) inter[i]++;
        if (p || t) union[i]++;
      });
    }
  }
}
console.log(`${weights} on ${dir}: ground truth covers ${(100 * positives / pixels).toFixed(1)}% of pixels`);
thresholds.forEach((th, i) =>
  console.log(
    `logit > ${th} (p > ${(1 / (1 + Math.exp(-th))).toFixed(3)})${th === 0 ? " [SPAIR]" : ""}: IoU ${
      (inter[i] / union[i]).toFixed(3)
    }`,
  )
);
