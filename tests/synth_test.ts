import nodeAssert from "node:assert/strict";
import {
  diffMask,
  SYNTH_RANGES,
  SYNTH_TASKS,
  SYNTH_TAU,
  synthesize,
  synthRanges,
  type SynthTask,
} from "../train/synth.ts";
import { downscale, listImages, runSynth, SynthUsageError } from "../train/synth_cli.ts";
import { decodeImage, type Image, readImage, toPlanarRgb, writeImageAtomic } from "../train/image_io.ts";

function assert(cond: unknown, msg?: string): asserts cond {
  nodeAssert.ok(cond, msg);
}

// The six validation photos of ../shared/data/clean/val at 480 px wide (the size the bands were set at),
// copied into the repository so CI needs nothing outside it (licences: tests/fixtures/photos/SOURCES.md).
const VAL = new URL("./fixtures/photos/", import.meta.url).pathname;

/**
 * Plausible mean mask densities over the six validation photos at half resolution (docs/synth.md gives the
 * measured values): sparse streaks, a few dozen drops, one to three cast shadows, blur hitting textured areas.
 */
const BANDS: Record<SynthTask, [number, number]> = {
  rain: [0.04, 0.3],
  raindrop: [0.05, 0.35],
  shadow: [0.08, 0.45],
  blur: [0.15, 0.7],
};

interface Photo {
  name: string;
  planar: Float32Array;
  w: number;
  h: number;
}

let photos: Photo[] | undefined;
async function valPhotos(): Promise<Photo[]> {
  if (!photos) {
    photos = [];
    for (const f of await listImages(VAL.replace(/\/$/, ""))) {
      const img = downscale(await readImage(f), 480);
      photos.push({ name: f, planar: toPlanarRgb(img), w: img.width, h: img.height });
    }
  }
  return photos;
}

function mean(a: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i];
  return s / a.length;
}

Deno.test("synthesize is deterministic per seed, differs across seeds, and keeps values in [0,1]", async () => {
  const p = (await valPhotos())[0];
  for (const task of SYNTH_TASKS) {
    const a = synthesize(task, p.planar, p.w, p.h, 42);
    const b = synthesize(task, p.planar, p.w, p.h, 42);
    const c = synthesize(task, p.planar, p.w, p.h, 43);
    nodeAssert.deepStrictEqual(a.degraded, b.degraded, `${task}: same seed, different image`);
    nodeAssert.deepStrictEqual(a.mask, b.mask, `${task}: same seed, different mask`);
    let diff = 0;
    for (let i = 0; i < a.degraded.length; i++) diff += Math.abs(a.degraded[i] - c.degraded[i]);
    assert(diff / a.degraded.length > 1e-3, `${task}: seeds 42 and 43 give nearly the same image`);
    assert(a.degraded.every((v) => v >= 0 && v <= 1), `${task}: values outside [0,1]`);
    assert(a.mask.every((v) => v === 0 || v === 1), `${task}: mask is not binary`);
    assert(a.mask.length === p.w * p.h);
  }
});

Deno.test("rain, raindrop and blur masks are the tau rule; shadow uses its geometric region", async () => {
  const p = (await valPhotos())[1];
  const n = p.w * p.h;
  for (const task of ["rain", "raindrop", "blur"] as const) {
    const r = synthesize(task, p.planar, p.w, p.h, 5);
    nodeAssert.deepStrictEqual(r.mask, diffMask(r.degraded, p.planar, n, SYNTH_TAU[task]), task);
  }
  const s = synthesize("shadow", p.planar, p.w, p.h, 5);
  // The geometric mask is one region, not per-pixel noise: most mask pixels have all 4 neighbours inside.
  let inner = 0, total = 0;
  for (let y = 1; y < p.h - 1; y++) {
    for (let x = 1; x < p.w - 1; x++) {
      const q = y * p.w + x;
      if (!s.mask[q]) continue;
      total++;
      if (s.mask[q - 1] && s.mask[q + 1] && s.mask[q - p.w] && s.mask[q + p.w]) inner++;
    }
  }
  assert(total > 0 && inner / total > 0.95, `shadow mask is fragmented: ${inner}/${total}`);
});

Deno.test("mean mask density over the validation photos lies in each task's band", async () => {
  const ps = await valPhotos();
  for (const task of SYNTH_TASKS) {
    const d = ps.map((p, i) => mean(synthesize(task, p.planar, p.w, p.h, 1000 + i).mask));
    const m = mean(d);
    const [lo, hi] = BANDS[task];
    assert(m >= lo && m <= hi, `${task}: mean mask density ${m.toFixed(3)} outside [${lo}, ${hi}]`);
    // Every photo gets some degradation, and none is degraded everywhere.
    assert(
      d.every((x) => x > 0.005 && x < 0.95),
      `${task}: per-photo densities ${d.map((x) => x.toFixed(3))}`,
    );
  }
});

Deno.test("rain and raindrops leave pixels outside the mask nearly untouched", async () => {
  for (const [i, p] of (await valPhotos()).entries()) {
    const n = p.w * p.h;
    for (const task of ["rain", "raindrop"] as const) {
      const r = synthesize(task, p.planar, p.w, p.h, 77 + i);
      let outside = 0, cnt = 0;
      for (let q = 0; q < n; q++) {
        if (r.mask[q]) continue;
        for (let c = 0; c < 3; c++) outside += Math.abs(r.degraded[c * n + q] - p.planar[c * n + q]);
        cnt += 3;
      }
      assert(outside / cnt < 0.02, `${task} on ${p.name}: mean |change| outside the mask ${outside / cnt}`);
    }
  }
});

Deno.test("shadows darken the masked region with a blue cast; the rest stays; blur removes detail", async () => {
  for (const [i, p] of (await valPhotos()).entries()) {
    const n = p.w * p.h;
    const r = synthesize("shadow", p.planar, p.w, p.h, 300 + i);
    const sums = { inD: [0, 0, 0], inC: [0, 0, 0], outD: 0, outC: 0 };
    for (let q = 0; q < n; q++) {
      for (let c = 0; c < 3; c++) {
        if (r.mask[q]) {
          sums.inD[c] += r.degraded[c * n + q];
          sums.inC[c] += p.planar[c * n + q];
        } else {
          sums.outD += r.degraded[c * n + q];
          sums.outC += p.planar[c * n + q];
        }
      }
    }
    const lum = (v: number[]) => 0.299 * v[0] + 0.587 * v[1] + 0.114 * v[2];
    const ratio = lum(sums.inD) / lum(sums.inC);
    assert(ratio < 0.75 && ratio > 0.2, `${p.name}: shadow luminance ratio ${ratio}`);
    // Blue keeps more of its light than red (sky-lit shadow).
    assert(sums.inD[2] / sums.inC[2] > sums.inD[0] / sums.inC[0], `${p.name}: no blue cast`);
    assert(
      sums.outD / sums.outC > 0.97,
      `${p.name}: outside the shadow darkened to ${sums.outD / sums.outC}`,
    );

    // Motion blur lowers the gradient energy where the mask says the image is degraded.
    const b = synthesize("blur", p.planar, p.w, p.h, 500 + i);
    let gD = 0, gC = 0;
    for (let q = 1; q < n; q++) {
      if (!b.mask[q] || q % p.w === 0) continue;
      for (let c = 0; c < 3; c++) {
        gD += Math.abs(b.degraded[c * n + q] - b.degraded[c * n + q - 1]);
        gC += Math.abs(p.planar[c * n + q] - p.planar[c * n + q - 1]);
      }
    }
    assert(gD < 0.8 * gC, `${p.name}: blur kept gradient energy ${gD / gC} inside its mask`);
  }
});

async function writeCrop(src: string, dst: string, w: number, h: number): Promise<Image> {
  const img = await readImage(src);
  const data = new Float32Array(w * h * 3);
  for (let y = 0; y < h; y++) {
    data.set(img.data.subarray(y * img.width * 3, (y * img.width + w) * 3), y * w * 3);
  }
  const crop: Image = { ...img, width: w, height: h, data };
  await writeImageAtomic(dst, crop);
  return crop;
}

Deno.test("runSynth writes input/target/mask triples reproducibly, and reports bad input in one line", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const files = await listImages(VAL.replace(/\/$/, ""));
    await Deno.mkdir(`${dir}/in`);
    await Deno.mkdir(`${dir}/empty`);
    const a = await writeCrop(files[0], `${dir}/in/b_photo.png`, 96, 64);
    await writeCrop(files[1], `${dir}/in/a_photo.jpg`, 80, 72);
    await Deno.writeTextFile(`${dir}/in/notes.txt`, "not an image");
    const args = ["--task", "rain", "--in", `${dir}/in`, "--seed", "7", "--per-image", "2"];
    await runSynth([...args, "--out", `${dir}/out1`]);
    await runSynth([...args, "--out", `${dir}/out2`]);
    for (const sub of ["input", "target", "mask"]) {
      const names = [...Deno.readDirSync(`${dir}/out1/${sub}`)].map((e) => e.name).sort();
      nodeAssert.deepStrictEqual(names, ["a_photo_0.png", "a_photo_1.png", "b_photo_0.png", "b_photo_1.png"]);
      for (const name of names) {
        nodeAssert.deepStrictEqual(
          await Deno.readFile(`${dir}/out1/${sub}/${name}`),
          await Deno.readFile(`${dir}/out2/${sub}/${name}`),
          `${sub}/${name} differs between two runs with the same seed`,
        );
      }
    }
    const target = decodeImage(await Deno.readFile(`${dir}/out1/target/b_photo_0.png`), "t");
    nodeAssert.deepStrictEqual([target.width, target.height, target.channels], [96, 64, 3]);
    nodeAssert.deepStrictEqual(target.data, a.data); // the clean target is the source, untouched
    const mask = decodeImage(await Deno.readFile(`${dir}/out1/mask/b_photo_0.png`), "m");
    nodeAssert.deepStrictEqual([mask.channels, mask.bitDepth], [1, 8]);
    assert(
      mask.data.every((v) => v === 0 || v === 1) && mean(mask.data) > 0,
      "mask is not a non-empty 0/255 image",
    );
    const v0 = await Deno.readFile(`${dir}/out1/input/b_photo_0.png`);
    const v1 = await Deno.readFile(`${dir}/out1/input/b_photo_1.png`);
    assert(
      v0.length !== v1.length || v0.some((x, i) => x !== v1[i]),
      "the two variants of one photo are identical",
    );
    // A crop larger than the image keeps the image size; a smaller one is applied.
    await runSynth(["--task", "blur", "--in", `${dir}/in`, "--out", `${dir}/out3`, "--crop", "40x30"]);
    const cropped = decodeImage(await Deno.readFile(`${dir}/out3/input/a_photo_0.png`), "c");
    nodeAssert.deepStrictEqual([cropped.width, cropped.height], [40, 30]);
    // --scale downscales (area average) before cropping: the 96x64 photo becomes 48x32, its target the
    // 2x2 means of the source.
    await runSynth(["--task", "rain", "--in", `${dir}/in`, "--out", `${dir}/out4`, "--scale", "0.5"]);
    const half = decodeImage(await Deno.readFile(`${dir}/out4/target/b_photo_0.png`), "h");
    nodeAssert.deepStrictEqual([half.width, half.height], [48, 32]);
    for (const [x, y, c] of [[0, 0, 0], [17, 9, 1], [47, 31, 2]]) {
      let m = 0;
      for (let dy = 0; dy < 2; dy++) {
        for (let dx = 0; dx < 2; dx++) m += a.data[((2 * y + dy) * 96 + 2 * x + dx) * 3 + c] / 4;
      }
      assert(
        Math.abs(half.data[(y * 48 + x) * 3 + c] - m) <= 0.5 / 255 + 1e-6,
        `scaled pixel ${x},${y},${c}`,
      );
    }
    assert(
      ![...Deno.readDirSync(`${dir}/out1/input`)].some((e) => e.name.includes(".tmp-")),
      "temp file left",
    );

    const oneLine = async (argv: string[], re: RegExp) => {
      let e: unknown;
      try {
        await runSynth(argv);
      } catch (x) {
        e = x;
      }
      assert(e instanceof SynthUsageError, `expected SynthUsageError for ${argv.join(" ")}, got ${e}`);
      assert(!e.message.includes("\n") && re.test(e.message), `unexpected message: ${e.message}`);
    };
    await oneLine(
      ["--task", "rain", "--in", `${dir}/empty`, "--out", `${dir}/o`],
      /empty.* has no PNG or JPEG images$/,
    );
    await oneLine(
      ["--task", "rain", "--in", `${dir}/missing`, "--out", `${dir}/o`],
      /missing does not exist$/,
    );
    await oneLine(["--task", "snow", "--in", `${dir}/in`, "--out", `${dir}/o`], /--task must be one of/);
    await oneLine(
      ["--task", "rain", "--in", `${dir}/in`, "--out", `${dir}/o`, "--per-image", "0"],
      /--per-image/,
    );
    await oneLine(["--task", "rain", "--in", `${dir}/in`, "--out", `${dir}/o`, "--crop", "big"], /--crop/);
    await oneLine(["--task", "rain", "--in", `${dir}/in`, "--out", `${dir}/o`, "--scale", "2"], /--scale/);
    await oneLine(["--task", "rain", "--in", `${dir}/in`, "--bogus"], /bogus/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** FNV-1a of a float array's bytes, as 8 hex digits: a fingerprint of a synthesized image. */
function fingerprint(a: Float32Array): string {
  const bytes = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  let h = 0x811c9dc5;
  for (const b of bytes) h = Math.imul(h ^ b, 0x01000193) >>> 0;
  return h.toString(16).padStart(8, "0");
}

Deno.test("range profiles: standard is the default and keeps its pairs bit for bit", async () => {
  const p = (await valPhotos())[3];
  const img = downscale({ ...(await readImage(p.name)) }, 160);
  const planar = toPlanarRgb(img);
  const got: Record<string, string> = {};
  for (const task of SYNTH_TASKS) {
    const a = synthesize(task, planar, img.width, img.height, 11);
    const b = synthesize(task, planar, img.width, img.height, 11, "standard");
    nodeAssert.deepStrictEqual(a.degraded, b.degraded, `${task}: standard is not the default`);
    got[task] = fingerprint(a.degraded) + fingerprint(a.mask);
  }
  // Recorded from the generator before the profiles existed (its pairs are the bundled models' data).
  nodeAssert.deepStrictEqual(got, STANDARD_FINGERPRINTS);
});

const STANDARD_FINGERPRINTS: Record<SynthTask, string> = {
  rain: "799d41c637f1abd8",
  raindrop: "c48dd4d40dca58b8",
  shadow: "546397263bf5c7f8",
  blur: "126ae5664e0c80e5",
};

Deno.test("range profiles: wide contains standard; outside lies beyond wide on its knobs", () => {
  type Spans = Record<string, unknown>;
  const [standard, wide, outside] = SYNTH_RANGES.map((r) =>
    synthRanges(r) as unknown as Record<string, Spans>
  );
  const isSpan = (v: unknown): v is [number, number] =>
    Array.isArray(v) && v.length === 2 && typeof v[0] === "number";
  for (const task of SYNTH_TASKS) {
    for (const [key, span] of Object.entries(standard[task])) {
      const w = wide[task][key];
      if (isSpan(span) && isSpan(w)) {
        assert(w[0] <= span[0] && w[1] >= span[1], `${task}.${key}: wide ${w} does not contain ${span}`);
      } else if (typeof span === "number") {
        assert((w as number) >= span, `${task}.${key}: wide ${w} below standard ${span}`);
      }
    }
  }
  const beyond = (task: SynthTask, key: string, o: [number, number], w: [number, number]) =>
    assert(o[0] > w[1] || o[1] < w[0], `${task}.${key}: outside ${o} overlaps wide ${w}`);
  const knobs: Record<SynthTask, string[]> = {
    rain: ["length", "width"],
    raindrop: ["insideBlur", "coverage", "rMin", "rMax", "mag"],
    shadow: ["area", "elongation", "penumbra", "keep"],
    blur: ["shake", "curve", "moverLength"],
  };
  for (const task of SYNTH_TASKS) {
    for (const key of knobs[task]) {
      beyond(task, key, outside[task][key] as [number, number], wide[task][key] as [number, number]);
    }
  }
  const o = outside.rain.angleOut as [number, number];
  assert(o[0] > (wide.rain.angleMax as number), "rain: outside angles overlap wide ones");
  const ot = outside.shadow.tint as [number, number][], wt = wide.shadow.tint as [number, number][];
  beyond("shadow", "tint red", ot[0], wt[0]);
  beyond("shadow", "tint blue", ot[2], wt[2]);
});

Deno.test("range profiles: outside degrades more than wide, and wide varies more than standard", async () => {
  const all = await valPhotos();
  for (const task of SYNTH_TASKS) {
    const stats: Record<string, number[]> = {};
    for (const ranges of SYNTH_RANGES) {
      stats[ranges] = [];
      for (let i = 0; i < all.length; i++) {
        const p = all[i];
        for (let k = 0; k < 2; k++) {
          const r = synthesize(task, p.planar, p.w, p.h, 100 + 7 * i + k, ranges);
          let d = 0;
          for (let j = 0; j < r.degraded.length; j++) d += Math.abs(r.degraded[j] - p.planar[j]);
          stats[ranges].push(d / r.degraded.length);
        }
      }
    }
    const m = (r: string) => mean(stats[r]);
    const spread = (r: string) => Math.max(...stats[r]) / Math.min(...stats[r]);
    console.log(
      `${task}: mean |degraded - clean| standard ${m("standard").toFixed(4)} wide ${m("wide").toFixed(4)} ` +
        `outside ${m("outside").toFixed(4)}; max/min standard ${spread("standard").toFixed(1)} ` +
        `wide ${spread("wide").toFixed(1)}`,
    );
    assert(m("outside") > 1.3 * m("wide"), `${task}: outside is not stronger than wide`);
    assert(spread("wide") > spread("standard"), `${task}: wide does not vary more than standard`);
  }
});
