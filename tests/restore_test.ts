// Restoration: tile layout and blending, formats kept through the CLI, and one-line errors for bad input.
import assert from "node:assert/strict";
import "./_setup.ts";
import {
  loadModel,
  maxTileForBinding,
  RECEPTIVE_RADIUS,
  restorePlanar,
  Rng,
  SpairModel,
  tileSpans,
} from "../mod.ts";
import { type Image, readImage, writeImageAtomic } from "../train/image_io.ts";

const CLI = new URL("../cli.ts", import.meta.url).pathname;

async function randomWeights(preset: "tiny" = "tiny", seed = 3): Promise<Uint8Array> {
  const model = new SpairModel({ preset, variant: "SPAIR" }, seed);
  const bytes = await model.saveSafetensors({ preset, variant: "SPAIR", task: "rain" });
  for (const p of model.parameters()) p.dispose();
  return bytes;
}

function smoothImage(w: number, h: number, channels: 1 | 2 | 3 | 4, bitDepth: 8 | 16 = 8): Image {
  const data = new Float32Array(w * h * channels);
  const levels = bitDepth === 16 ? 65535 : 255;
  for (let i = 0; i < w * h; i++) {
    for (let c = 0; c < channels; c++) {
      const v = 0.5 + 0.4 * Math.sin(0.3 * (i % w) + 0.2 * Math.floor(i / w) + 1.7 * c);
      data[i * channels + c] = Math.round(v * levels) / levels;
    }
  }
  return { width: w, height: h, channels, bitDepth, format: "png", data };
}

async function cli(args: string[]): Promise<{ code: number; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), { args: ["run", "-A", CLI, ...args] }).output();
  return { code: out.code, stderr: new TextDecoder().decode(out.stderr) };
}

Deno.test("tile spans: aligned to 4, cover the axis, overlap as asked", () => {
  assert.deepEqual(tileSpans(100, 128, 16), [[0, 100]]);
  for (
    const [size, tile, overlap] of [[1000, 256, 32], [513, 256, 96], [4000, 512, 96], [300, 100, 50], [
      3000,
      512,
      96,
    ]]
  ) {
    const spans = tileSpans(size, tile, overlap);
    assert.equal(spans[0][0], 0);
    assert.equal(spans.at(-1)![1], size, `last tile ends at the edge (${size})`);
    for (const [i, [s, e]] of spans.entries()) {
      assert.equal(s % 4, 0, `start ${s} on the 4-pixel grid`);
      assert.ok(e - s <= tile + 3, `tile ${s}-${e} too long`);
      if (i > 0) {
        assert.ok(
          spans[i - 1][1] - s >= overlap,
          `overlap ${JSON.stringify(spans)} for ${size}/${tile}/${overlap}`,
        );
      }
    }
  }
});

Deno.test("tiles shrink so the widest activation fits one storage binding", () => {
  const MiB = 1024 * 1024;
  // base SPAIR: C + 6g = 64 + 192 channels; 360^2 * 256 * 4 B fits in 128 MiB, 364^2 does not.
  assert.equal(maxTileForBinding({ preset: "base", variant: "SPAIR" }, 128 * MiB), 360);
  assert.ok(364 ** 2 * 256 * 4 > 128 * MiB && 360 ** 2 * 256 * 4 <= 128 * MiB);
  // Dense decoders (Net1) hold C + 4g: 192 channels.
  assert.equal(maxTileForBinding({ preset: "base", variant: "Net1" }, 128 * MiB), 416);
  // tiny and small run 512 px tiles within llvmpipe's 128 MiB.
  assert.ok(maxTileForBinding({ preset: "tiny", variant: "SPAIR" }, 128 * MiB) >= 512);
  assert.ok(maxTileForBinding({ preset: "small", variant: "SPAIR" }, 128 * MiB) >= 512);
});

Deno.test("tiled restoration of a dense model (Net1) equals the whole-image result", async () => {
  const model = new SpairModel({ preset: "tiny", variant: "Net1" }, 4);
  const w = 200, h = 136;
  const planar = new Rng(5).uniformArray(3 * w * h, 0.2, 0.8);
  const whole = await restorePlanar(model, planar, w, h, { tile: 512 });
  const tiled = await restorePlanar(model, planar, w, h, {
    tile: 128,
    overlap: 2 * RECEPTIVE_RADIUS + 8,
    globalLayers: "per-tile",
  });
  // Net1 has no image-wide layer: one pass, exact whatever the mode.
  assert.equal(tiled.exactGlobalLayers, true);
  let maxDiff = 0, maxChange = 0;
  for (let i = 0; i < planar.length; i++) {
    maxDiff = Math.max(maxDiff, Math.abs(whole.restored[i] - tiled.restored[i]));
    maxChange = Math.max(maxChange, Math.abs(whole.restored[i] - planar[i]));
  }
  assert.ok(maxChange > 0.01, "the random model must change the image for the comparison to mean anything");
  assert.ok(maxDiff <= 1e-4, `tiled differs from whole by ${maxDiff}`);
  for (const p of model.parameters()) p.dispose();
});

Deno.test("an identity model comes back unchanged through any tiling (tile copies, edge padding, blend weights)", async () => {
  // An identity model (zero output conv) must come back unchanged through any tiling: checks the tile
  // copies, the edge padding to a multiple of 4 and the blend weights.
  const model = new SpairModel({ preset: "tiny", variant: "Net1" }, 1);
  const zeros = (n: number) => new Float32Array(n);
  const { assignData } = await import("../mod.ts");
  assignData(model.netR.tail.weight, zeros(model.netR.tail.weight.size));
  assignData(model.netR.tail.bias, zeros(model.netR.tail.bias.size));
  const w = 70, h = 45;
  const planar = new Rng(2).uniformArray(3 * w * h, 0, 1);
  const whole = await restorePlanar(model, planar, w, h, { tile: 512 });
  const tiled = await restorePlanar(model, planar, w, h, { tile: 32, overlap: 8 });
  let maxWhole = 0, maxTiled = 0;
  for (let i = 0; i < planar.length; i++) {
    maxWhole = Math.max(maxWhole, Math.abs(whole.restored[i] - planar[i]));
    maxTiled = Math.max(maxTiled, Math.abs(tiled.restored[i] - planar[i]));
  }
  assert.ok(maxWhole < 1e-6 && maxTiled < 1e-6, `identity changed the image: ${maxWhole}, ${maxTiled}`);
  assert.equal(whole.mask, null, "Net1 uses no mask, so restore returns none");
  for (const p of model.parameters()) p.dispose();
});

Deno.test("restore keeps format, channels, bit depth and alpha; writes the mask", async () => {
  const dir = await Deno.makeTempDir({ prefix: "spair-restore-" });
  try {
    await Deno.writeFile(`${dir}/w.safetensors`, await randomWeights());
    const cases: [string, Image][] = [
      ["gray.png", smoothImage(20, 12, 1)],
      ["graya.png", smoothImage(20, 12, 2)],
      ["rgba.png", smoothImage(21, 13, 4)],
      ["deep.png", smoothImage(16, 16, 3, 16)],
      ["photo.jpg", { ...smoothImage(24, 16, 3), format: "jpeg" }],
    ];
    await Deno.mkdir(`${dir}/in`);
    for (const [name, img] of cases) await writeImageAtomic(`${dir}/in/${name}`, img);
    const { code, stderr } = await cli([
      "restore",
      `${dir}/in`,
      "-o",
      `${dir}/out`,
      "--weights",
      `${dir}/w.safetensors`,
      "--mask",
      `${dir}/masks`,
    ]);
    assert.equal(code, 0, stderr);
    for (const [name, img] of cases) {
      const out = await readImage(`${dir}/out/${name}`);
      assert.equal(out.format, img.format, name);
      assert.equal(out.width, img.width, name);
      assert.equal(out.height, img.height, name);
      assert.equal(out.bitDepth, img.bitDepth, name);
      if (img.format === "png") assert.equal(out.channels, img.channels, name);
      if (img.channels === 2 || img.channels === 4) {
        for (let i = 0; i < img.width * img.height; i++) {
          const a: number = img.channels - 1;
          assert.equal(out.data[i * img.channels + a], img.data[i * img.channels + a], `${name}: alpha kept`);
        }
      }
      const mask = await readImage(`${dir}/masks/${name.replace(/\.\w+$/, "")}_mask.png`);
      assert.equal(mask.channels, 1);
      assert.ok(mask.data.every((v) => v === 0 || v === 1), `${name}: binary mask`);
    }
    const leftovers = [...Deno.readDirSync(`${dir}/out`)].filter((e) => e.name.includes(".tmp"));
    assert.deepEqual(leftovers, []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("restore errors: one line, nonzero exit, nothing written", async () => {
  const dir = await Deno.makeTempDir({ prefix: "spair-restore-bad-" });
  try {
    await Deno.writeFile(`${dir}/w.safetensors`, await randomWeights());
    await writeImageAtomic(`${dir}/ok.png`, smoothImage(16, 16, 3));
    const corrupt = await Deno.readFile(`${dir}/ok.png`);
    corrupt.fill(3, 40, 70);
    await Deno.writeFile(`${dir}/corrupt.png`, corrupt);
    await Deno.writeTextFile(`${dir}/junk.safetensors`, "definitely not weights");
    // Metadata claims `small`, tensors are tiny: the file does not fit the model it names.
    const tiny = loadModel(await Deno.readFile(`${dir}/w.safetensors`)).model;
    await Deno.writeFile(
      `${dir}/lying.safetensors`,
      await tiny.saveSafetensors({ preset: "small", variant: "SPAIR" }),
    );
    for (const p of tiny.parameters()) p.dispose();
    const net1 = new SpairModel({ preset: "tiny", variant: "Net1" }, 3);
    await Deno.writeFile(
      `${dir}/net1.safetensors`,
      await net1.saveSafetensors({ preset: "tiny", variant: "Net1" }),
    );
    for (const p of net1.parameters()) p.dispose();
    await Deno.writeTextFile(`${dir}/file`, "a file, not a folder");
    const w = ["--weights", `${dir}/w.safetensors`];
    const net1Weights = ["--weights", `${dir}/net1.safetensors`];
    const cases: [string, string[], RegExp][] = [
      [
        "unknown task",
        ["restore", `${dir}/ok.png`, "--task", "snow", "-o", `${dir}/o1`],
        /--task must be one of rain, raindrop, shadow or blur, got snow/,
      ],
      ["missing weights", [
        "restore",
        `${dir}/ok.png`,
        "--weights",
        `${dir}/nope.safetensors`,
        "-o",
        `${dir}/o2`,
      ], /nope\.safetensors: weights file not found/],
      ["corrupt weights", [
        "restore",
        `${dir}/ok.png`,
        "--weights",
        `${dir}/junk.safetensors`,
        "-o",
        `${dir}/o3`,
      ], /junk\.safetensors: not a safetensors weights file/],
      [
        "wrong preset",
        ["restore", `${dir}/ok.png`, ...w, "--preset", "small", "-o", `${dir}/o4`],
        /weights are for preset tiny, expected small/,
      ],
      ["weights not fitting", [
        "restore",
        `${dir}/ok.png`,
        "--weights",
        `${dir}/lying.safetensors`,
        "-o",
        `${dir}/o5`,
      ], /lying\.safetensors does not fit this model/],
      [
        "corrupt input",
        ["restore", `${dir}/corrupt.png`, ...w, "-o", `${dir}/o6`],
        /corrupt\.png: corrupt PNG/,
      ],
      ["missing input", ["restore", `${dir}/none.png`, ...w, "-o", `${dir}/o7`], /none\.png: file not found/],
      [
        "unwritable output",
        ["restore", `${dir}/ok.png`, ...w, "-o", `${dir}/file/sub`],
        /file\/sub: cannot create the output folder/,
      ],
      [
        "mask of a Net1 model",
        ["restore", `${dir}/ok.png`, ...net1Weights, "--mask", `${dir}/o8`, "-o", `${dir}/o9`],
        /--mask: .*net1\.safetensors is a Net1 model \(the dense baseline\), which predicts no mask/,
      ],
    ];
    for (const [name, args, pattern] of cases) {
      const { code, stderr } = await cli(args);
      assert.notEqual(code, 0, name);
      const lines = stderr.trim().split("\n").filter((l) => !l.startsWith("restoring "));
      assert.equal(lines.length, 1, `${name}: ${stderr}`);
      assert.match(lines[0], pattern, name);
    }
    const names = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
    assert.deepEqual(
      names.filter((n) => /^o\d$/.test(n) && [...Deno.readDirSync(`${dir}/${n}`)].length > 0),
      [],
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("tiled SPAIR equals the whole-image result on 512x512 (image-wide layers over the whole image)", async () => {
  const { readImage: read, toPlanarRgb } = await import("../train/image_io.ts");
  // 512x512 from the 384x256 rain sample, mirrored at its right and bottom edges.
  const image = await read(new URL("../samples/rain.png", import.meta.url).pathname);
  const small = toPlanarRgb(image);
  const [w, h] = [512, 512];
  const mirror = (i: number, n: number) => (i < n ? i : 2 * n - 1 - i);
  const planar = new Float32Array(3 * w * h);
  for (let c = 0; c < 3; c++) {
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const sy = mirror(y, image.height), sx = mirror(x, image.width);
        planar[(c * h + y) * w + x] = small[(c * image.height + sy) * image.width + sx];
      }
    }
  }
  const { model } = loadModel(await Deno.readFile(new URL("../weights/rain.safetensors", import.meta.url)));
  const whole = await restorePlanar(model, planar, w, h, { tile: 512 });
  let passes = 0;
  const tiled = await restorePlanar(model, planar, w, h, {
    tile: 320,
    overlap: 96,
    onTile: (_, total) => (passes = total / 4),
  });
  assert.equal(tiled.exactGlobalLayers, true);
  assert.equal(passes, 5, "SPAIR: 2 SFM + 2 SNL measuring passes and the final pass over 4 tiles");
  let max = 0;
  for (let i = 0; i < planar.length; i++) {
    max = Math.max(max, Math.abs(whole.restored[i] - tiled.restored[i]));
  }
  const degraded = whole.mask!.reduce((a, b) => a + b, 0) / whole.mask!.length;
  console.log(`tiled vs whole: max ${max.toExponential(2)}, ${(100 * degraded).toFixed(1)}% degraded`);
  assert.ok(degraded > 0.02, "the image has degraded sites, so SFM and SNL act");
  assert.deepEqual(tiled.mask, whole.mask);
  assert.ok(max <= 1e-3, `max difference ${max}`);
  for (const p of model.parameters()) p.dispose();
});

// An adapter with small storage bindings: restorePlanar caps the tile (maxTileForBinding) and every op falls
// back to its large-tensor path where needed; the result must equal the same tiling on the default engine.
Deno.test("restore on an adapter with small storage bindings caps the tile and matches the same tiling", async () => {
  const { Engine, engine, setEngine } = await import("../mod.ts");
  const { toPlanarRgb } = await import("../train/image_io.ts");
  const image = await readImage(new URL("../samples/rain.png", import.meta.url).pathname);
  const full = toPlanarRgb(image);
  const [w, h] = [96, 80];
  const planar = new Float32Array(3 * w * h);
  for (let c = 0; c < 3; c++) {
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        planar[(c * h + y) * w + x] = full[(c * image.height + y) * image.width + x];
      }
    }
  }
  const weights = await Deno.readFile(new URL("../weights/rain.safetensors", import.meta.url));
  const binding = 512 * 1024;
  const tile = maxTileForBinding({ preset: "tiny", variant: "SPAIR" }, binding);
  assert.equal(tile, 44, "tiny SPAIR's SC block (64 channels) fits 44 px tiles in 512 KiB");
  const count = (options: { tile?: number }) => {
    let tiles = 0;
    return {
      ...options,
      overlap: 24,
      globalLayers: "per-tile" as const, // one pass: the tiling, not the image-wide layers, is under test
      onTile: (_: number, total: number) => (tiles = total),
      tiles: () => tiles,
    };
  };
  const { model } = loadModel(weights);
  const reference = count({ tile });
  const want = await restorePlanar(model, planar, w, h, reference);
  for (const p of model.parameters()) p.dispose();
  const small = await Engine.create({ limits: { maxStorageBufferBindingSize: binding } });
  const previous = setEngine(small);
  try {
    const { model: smallModel } = loadModel(weights);
    const capped = count({}); // default tile 512, capped to 44 by the binding limit
    const got = await restorePlanar(smallModel, planar, w, h, capped);
    assert.equal(capped.tiles(), reference.tiles(), "the capped run uses the same tiles");
    let max = 0;
    for (let i = 0; i < planar.length; i++) max = Math.max(max, Math.abs(got.restored[i] - want.restored[i]));
    assert.ok(max <= 1e-5, `small-binding restore differs by ${max}`);
    assert.deepEqual(got.mask, want.mask);
    assert.ok(want.mask!.some((v) => v > 0) && want.mask!.some((v) => v === 0), "mask has both regions");
    for (const p of smallModel.parameters()) p.dispose();
  } finally {
    setEngine(previous);
    small.destroy();
  }
  assert.equal(engine(), previous);
});
