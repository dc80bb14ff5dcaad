// Robustness under bad input and interruptions (issue 17): nothing lost, nothing silently wrong. Each test
// reproduces a failure that once went unnoticed: NaN weights kept as a "good" checkpoint, checkpoint bytes
// damaged in place, ignored flags, short PNG data, header-only pixel bombs, concurrent writers, stub run
// folders, duplicated log lines, stale temp files, an un-synced rename.
import assert from "node:assert/strict";
import { deflateSync } from "node:zlib";
import "./_setup.ts";
import { assignData, decodeSafetensors, encodeSafetensors, Rng, type Tensor } from "../mod.ts";
import { sha256Hex } from "../engine/safetensors.ts";
import {
  decodeImage,
  encodeImage,
  type Image,
  writeFileAtomic,
  writeImageAtomic,
} from "../train/image_io.ts";
import {
  createRun,
  defaultConfig,
  lockRun,
  readConfigFile,
  runFiles,
  train,
  type TrainConfig,
  TrainError,
} from "../train/train.ts";

const rgb = (width: number, height: number, data: Float32Array): Image => ({
  width,
  height,
  channels: 3,
  bitDepth: 8,
  format: "png",
  data,
});

/** Pairs of smooth images with bright streaks on the degraded one, in the pairs layout. */
async function writePairs(dir: string, count: number, size = 24): Promise<void> {
  const rng = new Rng(3);
  for (const sub of ["input", "target"]) await Deno.mkdir(`${dir}/${sub}`, { recursive: true });
  for (let k = 0; k < count; k++) {
    const clean = new Float32Array(size * size * 3);
    const phase = rng.uniform(0, 6);
    for (let i = 0; i < size * size; i++) {
      for (let c = 0; c < 3; c++) clean[i * 3 + c] = 0.4 + 0.3 * Math.sin(phase + 0.2 * (i % size) + c);
    }
    const degraded = clean.map((v, i) => (Math.floor(i / 3) % 7 === k % 7 ? Math.min(1, v + 0.5) : v));
    await writeImageAtomic(`${dir}/input/p${k}.png`, rgb(size, size, degraded));
    await writeImageAtomic(`${dir}/target/p${k}.png`, rgb(size, size, clean));
  }
}

function tinyConfig(data: string): TrainConfig {
  return {
    ...defaultConfig("rain"),
    data,
    layout: "pairs",
    crop: 16,
    batch: 2,
    stepsL: 2,
    stepsR: 4,
    lr: 1e-3,
    checkpointEvery: 1,
    logEvery: 1,
    seed: 5,
  };
}

async function withRoot(fn: (root: string) => Promise<void>): Promise<void> {
  const root = await Deno.makeTempDir({ prefix: "spair-robust-" });
  try {
    await writePairs(`${root}/data`, 2);
    await fn(root);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
}

async function checkpointOf(dir: string) {
  const { tensors, metadata } = decodeSafetensors(await Deno.readFile(runFiles(dir).checkpoint));
  return { tensors, position: JSON.parse(metadata.checkpoint).position };
}

const logSteps = async (dir: string) =>
  (await Deno.readTextFile(runFiles(dir).log)).trim().split("\n").map((l) => JSON.parse(l))
    .filter((l) => l.loss !== undefined).map((l) => `${l.stage}.${l.step}`);

const rejectsWith = (promise: Promise<unknown>, pattern: RegExp) =>
  assert.rejects(promise, (e: Error) => {
    assert.ok(e instanceof TrainError, `not a TrainError: ${e}`);
    assert.match(e.message, pattern);
    assert.ok(!e.message.includes("\n"), "one line");
    return true;
  });

Deno.test("NaN gradients stop the run before the update: the last checkpoint stays finite; resume with a lower --lr", () =>
  withRoot(async (root) => {
    const dir = `${root}/run`;
    const poison = (stage: number, step: number, params: Tensor[]) => {
      if (stage === 2 && step === 3) {
        const g = params[0].grad!;
        assignData(g, new Float32Array(g.size).fill(NaN));
      }
    };
    // The loss of step 3 is finite (the poison is in its gradient), so a guard that only looked at the
    // loss after the update would have written NaN weights into the step-3 checkpoint.
    await rejectsWith(
      train(dir, { config: tinyConfig(`${root}/data`), inspectGradients: poison }),
      /gradient norm became NaN at stage 2 step 3; stopped before the update.*--resume .*run --lr 0\.00025/,
    );
    const { tensors, position } = await checkpointOf(dir); // decoding refuses non-finite values
    assert.deepEqual(position, { stage: 2, step: 2 });
    assert.ok(Object.values(tensors).every((t) => t.data.every(Number.isFinite)));
    // The advice can be followed: resume with a lower learning rate (and more steps); both are recorded.
    const result = await train(dir, { changes: { lr: 2.5e-4, stepsR: 5 } });
    assert.ok(result.finished);
    assert.deepEqual(result.position, { stage: 2, step: 5 });
    const saved = JSON.parse(await Deno.readTextFile(runFiles(dir).config));
    assert.equal(saved.lr, 2.5e-4);
    assert.equal(saved.stepsR, 5);
    assert.equal(saved.history.length, 1);
    assert.deepEqual(saved.history[0].changed, {
      lr: { from: 1e-3, to: 2.5e-4 },
      stepsR: { from: 4, to: 5 },
    });
    assert.deepEqual([saved.history[0].stage, saved.history[0].step], [2, 2]);
    assert.deepEqual(await logSteps(dir), ["1.1", "1.2", "2.1", "2.2", "2.3", "2.4", "2.5"]);
    // Settings that change what the checkpoint means are refused, naming the ones that may change.
    await rejectsWith(
      train(dir, { changes: { crop: 12 } }),
      /crop cannot change when resuming \(a resume may change data, val, jitter, stepsL, stepsR, lr,/,
    );
    await rejectsWith(train(dir, { changes: { stepsL: 5 } }), /stepsL cannot change: stage 1 .* is finished/);
    await rejectsWith(train(dir, { changes: { stepsR: 3 } }), /stepsR 3 is below the 5 steps stage 2/);
  }));

Deno.test("checkpoints carry a SHA-256: bytes damaged in place and garbled metadata are refused with the file name", () =>
  withRoot(async (root) => {
    const dir = `${root}/run`;
    await train(dir, { config: { ...tinyConfig(`${root}/data`), stepsL: 1, stepsR: 1 }, maxStepsThisRun: 1 });
    const path = runFiles(dir).checkpoint;
    const good = await Deno.readFile(path);
    const damaged = good.slice();
    damaged[damaged.length - 100] ^= 0x10; // same length, different bits in some weight
    await Deno.writeFile(path, damaged);
    await rejectsWith(train(dir), /checkpoint\.safetensors: corrupt checkpoint \(checksum mismatch/);
    const { metadata, tensors } = decodeSafetensors(good);
    await Deno.writeFile(path, encodeSafetensors(tensors, { ...metadata, checkpoint: '{"position":{}}' }));
    await rejectsWith(
      train(dir),
      /checkpoint\.safetensors: corrupt checkpoint \(its position metadata is garbled\)/,
    );
    await Deno.writeFile(path, encodeSafetensors(tensors, { ...metadata, checkpoint: "{not json" }));
    await rejectsWith(
      train(dir),
      /checkpoint\.safetensors: corrupt checkpoint \(its position metadata is garbled\)/,
    );
    // The untouched checkpoint still resumes.
    await Deno.writeFile(path, good);
    assert.ok((await train(dir)).finished);
  }));

Deno.test("safetensors: SHA-256 matches the standard, damage is detected, non-finite values are refused", () => {
  assert.equal(
    sha256Hex(new TextEncoder().encode("abc")),
    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
  );
  assert.equal(
    sha256Hex(new TextEncoder().encode("a".repeat(1000))),
    "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3",
  );
  const bytes = encodeSafetensors({ w: { shape: [2, 2], data: new Float32Array([1, 2, 3, 4]) } }, { a: "b" });
  const decoded = decodeSafetensors(bytes);
  assert.deepEqual(decoded.metadata, { a: "b" }, "the checksum is not part of the returned metadata");
  const flipped = bytes.slice();
  flipped[flipped.length - 1] ^= 1;
  assert.throws(() => decodeSafetensors(flipped), /checksum mismatch/);
  // Files from elsewhere carry no checksum and still load.
  const header = JSON.stringify({ w: { dtype: "F32", shape: [1], data_offsets: [0, 4] } });
  const foreign = new Uint8Array(8 + header.length + 4);
  new DataView(foreign.buffer).setBigUint64(0, BigInt(header.length), true);
  foreign.set(new TextEncoder().encode(header), 8);
  foreign.set(new Uint8Array(new Float32Array([7]).buffer), 8 + header.length);
  assert.deepEqual(decodeSafetensors(foreign).tensors.w.data, new Float32Array([7]));
  for (const bad of [NaN, Infinity, -Infinity]) {
    const b = encodeSafetensors({ w: { shape: [3], data: new Float32Array([0, bad, 1]) } });
    assert.throws(() => decodeSafetensors(b), new RegExp(`tensor w holds ${bad} at index 1`));
    assert.ok(Object.is(decodeSafetensors(b, { allowNonFinite: true }).tensors.w.data[1], Math.fround(bad)));
  }
  const garbled = new TextEncoder().encode(JSON.stringify({ w: { dtype: "F32", shape: "x" } }));
  const file = new Uint8Array(8 + garbled.length);
  new DataView(file.buffer).setBigUint64(0, BigInt(garbled.length), true);
  file.set(garbled, 8);
  assert.throws(() => decodeSafetensors(file), /tensor w has a malformed header entry/);
});

Deno.test("resume: a second writer is refused while the folder is locked; a dead holder's lock does not block", () =>
  withRoot(async (root) => {
    const dir = `${root}/run`;
    await train(dir, { config: { ...tinyConfig(`${root}/data`), stepsR: 0 }, maxStepsThisRun: 1 });
    const held = await lockRun(dir);
    try {
      await rejectsWith(train(dir), /run is in use by another training process \(pid \d+ since .*\)/);
    } finally {
      held.release();
    }
    // A lock file left by a killed process (no OS lock held on it any more) is taken over.
    await Deno.writeTextFile(`${dir}/lock`, "pid 999999 since 2020-01-01T00:00:00.000Z\n");
    const result = await train(dir, { maxStepsThisRun: 1 });
    assert.deepEqual(result.position, { stage: 1, step: 2 });
    await assert.rejects(Deno.stat(`${dir}/lock`), "the lock file goes when the run stops");
  }));

Deno.test("a second process resuming the same run folder is refused with one line", () =>
  withRoot(async (root) => {
    const dir = `${root}/run`;
    await createRun(dir, tinyConfig(`${root}/data`));
    const held = await lockRun(dir);
    try {
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", new URL("../cli.ts", import.meta.url).pathname, "train", "--resume", dir],
      }).output();
      const stderr = new TextDecoder().decode(out.stderr).trim();
      assert.equal(out.code, 1, stderr);
      assert.match(
        stderr,
        new RegExp(`^spair-gpu train: .*run is in use by another training process \\(pid ${Deno.pid} `),
      );
    } finally {
      held.release();
    }
  }));

Deno.test("run folders: a crop too large leaves no folder; the log restarts with the run; stale temps go", () =>
  withRoot(async (root) => {
    await rejectsWith(
      train(`${root}/big-crop`, { config: { ...tinyConfig(`${root}/data`), crop: 32 } }),
      /data: p0 is 24x24, smaller than the 32x32 crop/,
    );
    await assert.rejects(Deno.stat(`${root}/big-crop`), "no stub folder that blocks the name");
    // A run killed before its first checkpoint left log lines; its resume starts over and so does its log.
    const dir = `${root}/run`;
    await createRun(dir, { ...tinyConfig(`${root}/data`), stepsR: 1 });
    await Deno.writeTextFile(
      runFiles(dir).log,
      ['{"stage":1,"step":1,"epoch":1,"loss":0.5}', '{"stage":1,"step":2,"epoch":1,"loss":0.4}', ""].join(
        "\n",
      ),
    );
    const temps = [
      `${dir}/checkpoint.safetensors.tmp-0123abcd`,
      `${dir}/previews/stage2-step000001.png.tmp-89abcdef`,
    ];
    const foreign = [`${dir}/notes.txt.tmp-01234567`, `${dir}/checkpoint.safetensors.tmp-mine`];
    await Deno.mkdir(`${dir}/previews`);
    for (const f of [...temps, ...foreign]) await Deno.writeTextFile(f, "x");
    assert.ok((await train(dir)).finished);
    assert.deepEqual(await logSteps(dir), ["1.1", "1.2", "2.1"]);
    for (const f of temps) await assert.rejects(Deno.stat(f), `${f} should be gone`);
    for (const f of foreign) await Deno.stat(f); // not of our naming: kept
  }));

Deno.test("config files: unknown keys are refused with the nearest valid key; numbers must be finite", async () => {
  const dir = await Deno.makeTempDir({ prefix: "spair-robust-config-" });
  try {
    const path = `${dir}/c.json`;
    await Deno.writeTextFile(path, JSON.stringify({ task: "rain", batchSize: 4 }));
    await rejectsWith(readConfigFile(path), /c\.json: unknown key 'batchSize' \(did you mean 'batch'\?\)/);
    await Deno.writeTextFile(path, JSON.stringify({ stepsr: 4 }));
    await rejectsWith(readConfigFile(path), /unknown key 'stepsr' \(did you mean 'stepsR'\?\)/);
    await Deno.writeTextFile(path, "[1]");
    await rejectsWith(readConfigFile(path), /c\.json: a config file holds one JSON object/);
    // A run's own config.json (with its history) is a valid config file.
    await Deno.writeTextFile(path, JSON.stringify({ ...tinyConfig("d"), history: [] }));
    assert.equal((await readConfigFile(path)).batch, 2);
    await rejectsWith(
      train(`${dir}/r`, { config: { ...tinyConfig("d"), lr: Infinity } }),
      /lr must be a finite number/,
    );
    await rejectsWith(
      train(`${dir}/r`, { config: { ...tinyConfig("d"), batch: "4" as unknown as number } }),
      /batch must be a finite number, got "4"/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("atomic writes flush the temp file to disk before the rename", async () => {
  const dir = await Deno.makeTempDir({ prefix: "spair-robust-sync-" });
  const events: string[] = [];
  const sync = Deno.FsFile.prototype.sync;
  const rename = Deno.rename;
  Deno.FsFile.prototype.sync = function (this: Deno.FsFile) {
    events.push("sync");
    return sync.call(this);
  };
  Deno.rename = (from, to) => (events.push("rename"), rename(from, to));
  try {
    await writeFileAtomic(`${dir}/a.txt`, "hello");
    assert.deepEqual(events, ["sync", "rename"]);
    assert.equal(await Deno.readTextFile(`${dir}/a.txt`), "hello");
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["a.txt"]);
  } finally {
    Deno.FsFile.prototype.sync = sync;
    Deno.rename = rename;
    await Deno.remove(dir, { recursive: true });
  }
});

// --- images: short data, truncated streams, pixel limits ---

function crc32(b: Uint8Array): number {
  let c = 0xffffffff;
  for (const v of b) {
    c ^= v;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  }
  return (c ^ 0xffffffff) >>> 0;
}

/** A PNG (8-bit RGB) with the given IHDR size and IDAT payload; chunks and CRCs are valid. */
function pngFile(width: number, height: number, idat: Uint8Array, interlace = 0): Uint8Array {
  const chunk = (type: string, data: Uint8Array) => {
    const out = new Uint8Array(12 + data.length);
    const v = new DataView(out.buffer);
    v.setUint32(0, data.length);
    out.set(new TextEncoder().encode(type), 4);
    out.set(data, 8);
    v.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
    return out;
  };
  const ihdr = new Uint8Array(13);
  new DataView(ihdr.buffer).setUint32(0, width);
  new DataView(ihdr.buffer).setUint32(4, height);
  ihdr.set([8, 2, 0, 0, interlace], 8);
  const parts = [
    new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", ihdr),
    chunk("IDAT", idat),
    chunk("IEND", new Uint8Array()),
  ];
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  parts.reduce((at, p) => (out.set(p, at), at + p.length), 0);
  return out;
}

/** Filtered scanlines (filter 0) of a w x h RGB image with a gradient. */
function scanlines(w: number, h: number): Uint8Array {
  const raw = new Uint8Array(h * (1 + 3 * w));
  for (let y = 0; y < h; y++) {
    for (let i = 1; i <= 3 * w; i++) raw[y * (1 + 3 * w) + i] = (i * 7 + y * 13) & 255;
  }
  return raw;
}

Deno.test("PNG: short image data and a truncated zlib stream are corrupt, not black rows", () => {
  const [w, h] = [16, 12];
  const raw = scanlines(w, h);
  const full = decodeImage(pngFile(w, h, new Uint8Array(deflateSync(raw))), "ok.png");
  assert.equal(full.data[full.data.length - 1], Math.fround(raw[raw.length - 1] / 255));
  assert.throws(
    () =>
      decodeImage(pngFile(w, h, new Uint8Array(deflateSync(raw.subarray(0, 5 * (1 + 3 * w))))), "short.png"),
    /^Error: short\.png: corrupt PNG \(image data is short: 245 of 588 bytes\)$|short\.png: corrupt PNG \(image data is short: 245 of 588 bytes\)/,
  );
  const stream = new Uint8Array(deflateSync(raw));
  assert.throws(
    () => decodeImage(pngFile(w, h, stream.subarray(0, stream.length - 20)), "cut.png"),
    /cut\.png: corrupt PNG \(image data does not inflate: unexpected end of file\)/,
  );
  // Interlaced images inflate to the seven Adam7 passes' scanlines: still accepted.
  const passes = [[0, 0, 8, 8], [4, 0, 8, 8], [0, 4, 4, 8], [2, 0, 4, 4], [0, 2, 2, 4], [1, 0, 2, 2], [
    0,
    1,
    1,
    2,
  ]];
  const [iw, ih] = [13, 7];
  const chunks: number[] = [];
  for (const [x0, y0, dx, dy] of passes) {
    const pw = Math.ceil((iw - x0) / dx), ph = Math.ceil((ih - y0) / dy);
    if (pw <= 0 || ph <= 0) continue;
    for (let y = 0; y < ph; y++) {
      chunks.push(0);
      for (let x = 0; x < pw; x++) chunks.push(x0 + x * dx, y0 + y * dy, 9);
    }
  }
  const il = decodeImage(pngFile(iw, ih, new Uint8Array(deflateSync(new Uint8Array(chunks))), 1), "il.png");
  const at = (x: number, y: number) => [0, 1, 2].map((c) => Math.round(il.data[(y * iw + x) * 3 + c] * 255));
  assert.deepEqual([at(12, 6), at(5, 3)], [[12, 6, 9], [5, 3, 9]]);
});

Deno.test("pixel limit: a small file claiming a huge image is refused from its header, before decoding", () => {
  const started = performance.now();
  // 20000x20000 claimed by a few bytes of data: refused at once, nothing allocated.
  const bomb = pngFile(20000, 20000, new Uint8Array(deflateSync(new Uint8Array(1000))));
  assert.throws(
    () => decodeImage(bomb, "bomb.png"),
    /bomb\.png: 20000x20000 is 400\.0 megapixels, over the limit of 50\.0 \(raise it with --max-pixels/,
  );
  // The same for a JPEG's frame header (SOF0 claiming 20000x20000).
  const img = rgb(8, 8, new Float32Array(8 * 8 * 3).fill(0.5));
  const jpeg = encodeImage(img, "jpeg");
  const sof = jpeg.findIndex((v, i) => v === 0xff && jpeg[i + 1] === 0xc0);
  const big = jpeg.slice();
  big.set([20000 >> 8, 20000 & 255, 20000 >> 8, 20000 & 255], sof + 5);
  assert.throws(
    () => decodeImage(big, "bomb.jpg"),
    /bomb\.jpg: 20000x20000 is 400\.0 megapixels, over the limit/,
  );
  assert.ok(performance.now() - started < 2000, "refused without decoding");
  // The limit is an option: exactly at it passes, one pixel over does not.
  const png = encodeImage(img, "png");
  assert.equal(decodeImage(png, "a.png", { maxPixels: 64 }).width, 8);
  assert.throws(() => decodeImage(png, "a.png", { maxPixels: 63 }), /a\.png: 8x8 is 0\.0 megapixels/);
  assert.throws(() => decodeImage(jpeg, "a.jpg", { maxPixels: 63 }), /a\.jpg: 8x8 is 0\.0 megapixels/);
});

Deno.test("cli: Ctrl-C exits 130 after a checkpoint; --resume applies --steps-r and --lr and refuses --crop", () =>
  withRoot(async (root) => {
    const dir = `${root}/run`;
    const cli = (args: string[]) =>
      new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", new URL("../cli.ts", import.meta.url).pathname, "train", ...args],
        stdout: "null",
        stderr: "piped",
      });
    await Deno.writeTextFile(`${root}/c.json`, JSON.stringify({ ...tinyConfig(`${root}/data`), stepsR: 50 }));
    const child = cli(["--config", `${root}/c.json`, "--run", dir]).spawn();
    for (const deadline = Date.now() + 240_000;;) {
      if ((await Deno.readTextFile(runFiles(dir).log).catch(() => "")).includes('"stage":2,"step":1,')) break;
      assert.ok(Date.now() < deadline, "the run never reached stage 2");
      await new Promise((r) => setTimeout(r, 100));
    }
    child.kill("SIGINT");
    const out = await child.output();
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 130, stderr);
    assert.match(stderr, /stopped after stage 2 step \d+; continue with deno task train --resume /);
    const { position } = await checkpointOf(dir);
    assert.equal(position.stage, 2);
    // The resume applies the allowed changes (recorded in config.json) instead of ignoring them.
    const resumed = await cli(["--resume", dir, "--steps-r", String(position.step + 1), "--lr", "5e-4"])
      .output();
    const resumedErr = new TextDecoder().decode(resumed.stderr);
    assert.equal(resumed.code, 0, resumedErr);
    assert.match(resumedErr, /changed stepsR 50 -> \d+, lr 0\.001 -> 0\.0005/);
    assert.deepEqual((await checkpointOf(dir)).position, { stage: 2, step: position.step + 1 });
    const saved = JSON.parse(await Deno.readTextFile(runFiles(dir).config));
    assert.deepEqual([saved.stepsR, saved.lr, saved.history.length], [position.step + 1, 5e-4, 1]);
    const refused = await cli(["--resume", dir, "--crop", "8"]).output();
    assert.equal(refused.code, 1);
    assert.match(
      new TextDecoder().decode(refused.stderr).trim(),
      /^spair-gpu train: crop cannot change when resuming \(a resume may change data, val, jitter, stepsL, stepsR, lr, /,
    );
  }));

// --- restore: outputs never replace inputs or each other; bad files do not stop a folder ---

const runCli = async (args: string[]) => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("../cli.ts", import.meta.url).pathname, ...args],
  }).output();
  return { code: out.code, stderr: new TextDecoder().decode(out.stderr).trim() };
};

const smallImage = (seed: number) =>
  rgb(16, 12, new Float32Array(16 * 12 * 3).map((_, i) => 0.3 + 0.4 * Math.abs(Math.sin(seed + i * 0.37))));

Deno.test("restore refuses, before any work, outputs that replace an input or collide with each other", async () => {
  const root = await Deno.makeTempDir({ prefix: "spair-robust-restore-" });
  try {
    for (const d of ["a", "b", "same"]) await Deno.mkdir(`${root}/${d}`);
    for (const p of ["a/x.png", "b/x.png", "same/p.png", "same/p.jpg"]) {
      await writeImageAtomic(`${root}/${p}`, smallImage(p.length));
    }
    const original = await Deno.readFile(`${root}/a/x.png`);
    const cases: [string[], RegExp][] = [
      [
        [`${root}/a/x.png`, "-o", `${root}/a/x.png`],
        /a\/x\.png would replace the input .*a\/x\.png; .*--overwrite/,
      ],
      [[`${root}/a`, "-o", `${root}/a/`], /a\/x\.png would replace the input .*a\/x\.png/],
      [[`${root}/a/x.png`, "-o", `${root}/a/../a/x.png`], /would replace the input/],
      [
        [`${root}/a/x.png`, `${root}/b/x.png`, "-o", `${root}/out`],
        /a\/x\.png and .*b\/x\.png would both be written to .*out\/x\.png/,
      ],
      [
        [`${root}/same`, "-o", `${root}/out`, "--mask", `${root}/m`],
        /same\/p\.jpg and .*same\/p\.png would both be written to .*m\/p_mask\.png/,
      ],
    ];
    for (const [args, pattern] of cases) {
      const { code, stderr } = await runCli(["restore", ...args]);
      assert.equal(code, 1, stderr);
      assert.equal(stderr.split("\n").length, 1, stderr);
      assert.match(stderr, pattern);
    }
    assert.deepEqual(await Deno.readFile(`${root}/a/x.png`), original, "the input is untouched");
    await assert.rejects(Deno.stat(`${root}/out`), "nothing was written");
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("restore goes on past bad files, lists them and exits 1; images over --max-pixels are refused", async () => {
  const root = await Deno.makeTempDir({ prefix: "spair-robust-folder-" });
  try {
    await Deno.mkdir(`${root}/in`);
    await writeImageAtomic(`${root}/in/a.png`, smallImage(1));
    await Deno.writeFile(
      `${root}/in/b.png`,
      pngFile(16, 12, new Uint8Array(deflateSync(new Uint8Array(40)))),
    );
    await writeImageAtomic(`${root}/in/c.png`, rgb(40, 40, new Float32Array(40 * 40 * 3).fill(0.5)));
    await writeImageAtomic(`${root}/in/d.png`, smallImage(2));
    const { code, stderr } = await runCli([
      "restore",
      `${root}/in`,
      "-o",
      `${root}/out`,
      "--max-pixels",
      "1000",
    ]);
    assert.equal(code, 1, stderr);
    const lines = stderr.split("\n");
    const summary = lines.indexOf("2 of 4 images failed:");
    assert.ok(summary >= 0, stderr);
    assert.match(lines[summary + 1], /^ {2}.*in\/b\.png: corrupt PNG \(image data is short/);
    assert.match(lines[summary + 2], /^ {2}.*in\/c\.png: 40x40 is 0\.0 megapixels, over the limit of 0\.0/);
    assert.match(lines.at(-1)!, /^spair-gpu restore: 2 of 4 images failed \(listed above\)/);
    const written = [...Deno.readDirSync(`${root}/out`)].map((e) => e.name).sort();
    assert.deepEqual(written, ["a.png", "d.png"], "the good files after a bad one are restored");
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("weights with NaN or Inf are refused at load; restorePlanar validates its numbers and pixels", async () => {
  const { loadModel, restorePlanar } = await import("../mod.ts");
  const bytes = await Deno.readFile(new URL("../weights/rain.safetensors", import.meta.url));
  const { tensors, metadata } = decodeSafetensors(bytes);
  const name = Object.keys(tensors)[3];
  tensors[name].data[5] = NaN;
  assert.throws(
    () => loadModel(encodeSafetensors(tensors, metadata), "nan.safetensors"),
    new RegExp(
      `^Error: nan\\.safetensors: .*tensor ${
        name.replace(/\./g, "\\.")
      } holds NaN at index 5|nan\\.safetensors: .*holds NaN`,
    ),
  );
  const { model } = loadModel(bytes, "rain.safetensors");
  try {
    const [w, h] = [8, 8];
    const planar = new Float32Array(3 * w * h).fill(0.5);
    const cases: [() => Promise<unknown>, RegExp][] = [
      [() => restorePlanar(model, planar, w, h, { tile: NaN }), /tile must be a positive integer, got NaN/],
      [
        () => restorePlanar(model, planar, w, h, { overlap: NaN }),
        /overlap must be a non-negative integer, got NaN/,
      ],
      [() => restorePlanar(model, planar, 1.5, h), /width must be a positive integer, got 1\.5/],
      [() => restorePlanar(model, new Float32Array(0), 0, 0), /width must be a positive integer, got 0/],
      [() => restorePlanar(model, planar, w, 7), /expected 168 values for a 8x7 RGB image, got 192/],
      [() => {
        const bad = planar.slice();
        bad[w * h + 2 * w + 3] = NaN;
        return restorePlanar(model, bad, w, h);
      }, /input holds NaN at pixel \(3, 2\) channel 1/],
    ];
    for (const [call, pattern] of cases) await assert.rejects(call(), pattern);
  } finally {
    for (const p of model.parameters()) p.dispose();
  }
});
