// Training loop: SIGKILL mid-run + resume reaches the uninterrupted run's parameters; batches depend only on
// (seed, stage, step); bad inputs stop a run with one line and leave nothing behind.
import assert from "node:assert/strict";
import "./_setup.ts";
import { decodeSafetensors, encodeSafetensors, loadModel, Rng, SpairModel } from "../mod.ts";
import { writeImageAtomic } from "../train/image_io.ts";
import {
  defaultConfig,
  learningRate,
  type LoadedPair,
  loadPairs,
  runFiles,
  sampleBatch,
  train,
  type TrainConfig,
  TrainError,
  validateConfig,
} from "../train/train.ts";

const CLI = new URL("../cli.ts", import.meta.url).pathname;

/** Writes `count` small pairs (smooth clean image, bright streaks on the degraded one) in the pairs layout. */
async function writePairs(dir: string, count: number, size = 24, seed = 1): Promise<void> {
  const rng = new Rng(seed);
  for (const sub of ["input", "target"]) await Deno.mkdir(`${dir}/${sub}`, { recursive: true });
  for (let k = 0; k < count; k++) {
    const clean = new Float32Array(size * size * 3);
    const phase = rng.uniform(0, 6);
    for (let i = 0; i < size * size; i++) {
      const x = i % size, y = Math.floor(i / size);
      for (let c = 0; c < 3; c++) clean[i * 3 + c] = 0.4 + 0.3 * Math.sin(phase + 0.2 * x + 0.1 * y + c);
    }
    const degraded = clean.slice();
    for (let s = 0; s < 6; s++) {
      const x0 = rng.int(size), y0 = rng.int(size - 8);
      for (let t = 0; t < 8; t++) {
        const i = (y0 + t) * size + Math.min(size - 1, x0 + (t >> 2));
        for (let c = 0; c < 3; c++) degraded[i * 3 + c] = Math.min(1, degraded[i * 3 + c] + 0.5);
      }
    }
    const image = (data: Float32Array) => ({
      width: size,
      height: size,
      channels: 3 as const,
      bitDepth: 8 as const,
      format: "png" as const,
      data,
    });
    await writeImageAtomic(`${dir}/input/p${k}.png`, image(degraded));
    await writeImageAtomic(`${dir}/target/p${k}.png`, image(clean));
  }
}

function tinyConfig(data: string): TrainConfig {
  return {
    ...defaultConfig("rain"),
    data,
    layout: "pairs",
    crop: 16,
    batch: 2,
    stepsL: 3,
    stepsR: 5,
    lr: 1e-3,
    checkpointEvery: 1,
    logEvery: 1,
    seed: 5,
  };
}

/** Runs `fn` in a fresh temporary folder holding `pairs` training pairs in `data/`, then removes it. */
async function withPairs(prefix: string, pairs: number, fn: (root: string) => Promise<void>): Promise<void> {
  const root = await Deno.makeTempDir({ prefix });
  try {
    await writePairs(`${root}/data`, pairs);
    await fn(root);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
}

async function readWeights(path: string) {
  return decodeSafetensors(await Deno.readFile(path)).tensors;
}

async function lsTree(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    out.push(e.name);
    if (e.isDirectory) { for (const f of await lsTree(`${dir}/${e.name}`)) out.push(`${e.name}/${f}`); }
  }
  return out.sort();
}

Deno.test("a run killed with SIGKILL and resumed ends with the uninterrupted run's parameters", async () => {
  const root = await Deno.makeTempDir({ prefix: "spair-train-" });
  try {
    await writePairs(`${root}/data`, 3);
    const config = tinyConfig(`${root}/data`);
    await Deno.writeTextFile(`${root}/config.json`, JSON.stringify(config));
    // Run A in a child process, killed without warning once stage 2 has logged step 2.
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", CLI, "train", "--config", `${root}/config.json`, "--run", `${root}/a`],
      stdout: "null",
      stderr: "null",
    }).spawn();
    const log = runFiles(`${root}/a`).log;
    const deadline = Date.now() + 240_000;
    for (;;) {
      const text = await Deno.readTextFile(log).catch(() => "");
      if (text.includes('"stage":2,"step":2,')) break;
      assert.ok(Date.now() < deadline, "run A never reached stage 2 step 2");
      await new Promise((r) => setTimeout(r, 100));
    }
    child.kill("SIGKILL");
    const status = await child.status;
    assert.equal(status.signal, "SIGKILL");
    const checkpoint = decodeSafetensors(await Deno.readFile(runFiles(`${root}/a`).checkpoint));
    const killedAt = JSON.parse(checkpoint.metadata.checkpoint).position;
    assert.equal(killedAt.stage, 2);
    assert.ok(killedAt.step >= 1 && killedAt.step < 5, `killed at ${JSON.stringify(killedAt)}`);
    await assert.rejects(Deno.stat(runFiles(`${root}/a`).model), "killed run must not have final weights");

    const resumed = await train(`${root}/a`);
    assert.ok(resumed.finished);
    const uninterrupted = await train(`${root}/b`, { config });
    assert.ok(uninterrupted.finished);

    const a = await readWeights(runFiles(`${root}/a`).model);
    const b = await readWeights(runFiles(`${root}/b`).model);
    assert.deepEqual(Object.keys(a).sort(), Object.keys(b).sort());
    let maxDiff = 0;
    let changed = 0;
    const fresh = await readWeights(runFiles(`${root}/b`).checkpoint);
    for (const name of Object.keys(a)) {
      for (let i = 0; i < a[name].data.length; i++) {
        maxDiff = Math.max(maxDiff, Math.abs(a[name].data[i] - b[name].data[i]));
      }
      if (fresh[`model.${name}`] === undefined) throw new Error(`checkpoint lacks ${name}`);
    }
    for (const name of Object.keys(a)) {
      if (a[name].data.some((v, i) => v !== fresh[`model.${name}`].data[i])) changed++;
    }
    assert.equal(changed, 0, "final checkpoint and final weights differ");
    assert.ok(maxDiff <= 1e-5, `resumed run differs from the uninterrupted one by ${maxDiff}`);
    // Training moved the weights: the test would notice a resume that restarted from scratch or skipped.
    const lines = (await Deno.readTextFile(runFiles(`${root}/a`).log)).trim().split("\n").map((l) =>
      JSON.parse(l)
    );
    const steps = lines.filter((l) => l.loss !== undefined).map((l) => `${l.stage}.${l.step}`);
    assert.deepEqual(
      steps,
      ["1.1", "1.2", "1.3", "2.1", "2.2", "2.3", "2.4", "2.5"],
      "log has each step once",
    );
    const logB = (await Deno.readTextFile(runFiles(`${root}/b`).log)).trim().split("\n").map((l) =>
      JSON.parse(l)
    );
    assert.deepEqual(
      lines.filter((l) => l.loss !== undefined).map((l) => l.loss),
      logB.filter((l) => l.loss !== undefined).map((l) => l.loss),
      "resumed losses equal the uninterrupted run's",
    );
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("batches are a function of (seed, stage, step); crops and flips stay inside the image", () => {
  const w = 10, h = 7;
  const pairs: LoadedPair[] = [0, 1, 2].map((k) => {
    const input = new Float32Array(3 * w * h).map((_, i) => k * 1000 + i);
    return {
      name: `p${k}`,
      width: w,
      height: h,
      input,
      target: input.map((v) => -v),
      mask: new Float32Array(w * h),
    };
  });
  const config = { seed: 3, batch: 2, crop: 4 };
  const a = sampleBatch(pairs, config, 2, 7);
  const b = sampleBatch(pairs, config, 2, 7);
  assert.deepEqual(a.input, b.input);
  assert.notDeepEqual(a.input, sampleBatch(pairs, config, 2, 8).input);
  for (let i = 0; i < a.input.length; i++) assert.equal(a.target[i], -a.input[i]);
  // Each crop row is a run of 4 consecutive pixels (forwards or mirrored) of one source row.
  for (let r = 0; r < a.input.length / 4; r++) {
    const row = a.input.slice(r * 4, r * 4 + 4);
    const step = row[1] - row[0];
    assert.ok(step === 1 || step === -1, `row ${row}`);
    for (let k = 1; k < 4; k++) assert.equal(row[k] - row[k - 1], step);
  }
  // One epoch (2 steps of 2 over 3 pairs) visits every pair.
  const seen = new Set<number>();
  for (const step of [1, 2]) {
    const batch = sampleBatch(pairs, config, 1, step);
    for (let k = 0; k < 2; k++) seen.add(Math.floor(batch.input[k * 3 * 16] / 1000));
  }
  assert.deepEqual([...seen].sort(), [0, 1, 2]);
});

Deno.test("focused crops: the most evenly degraded of cropFocus candidates wins; 1 = uniform crops", () => {
  // A 64x64 pair whose only degradation is a 12x12 square: uniform 16x16 crops mostly miss it.
  const w = 64, h = 64;
  const mask = new Float32Array(w * h);
  for (let y = 40; y < 52; y++) for (let x = 8; x < 20; x++) mask[y * w + x] = 1;
  const input = new Float32Array(3 * w * h);
  const pairs: LoadedPair[] = [{ name: "p", width: w, height: h, input, target: input, mask }];
  const meanBalance = (cropFocus: number) => {
    let total = 0;
    for (let step = 1; step <= 40; step++) {
      const b = sampleBatch(pairs, { seed: 5, batch: 1, crop: 16, cropFocus }, 2, step);
      const d = b.mask.reduce((a, v) => a + v, 0) / b.mask.length;
      total += Math.min(d, 1 - d);
    }
    return total / 40;
  };
  const uniform = meanBalance(1);
  const focused = meanBalance(8);
  console.log(`mean min(d, 1-d): uniform ${uniform.toFixed(3)}, focused ${focused.toFixed(3)}`);
  assert.ok(uniform < 0.05, `uniform crops hit the square rarely (${uniform})`);
  assert.ok(focused > 3 * uniform && focused > 0.1, `focused crops find it (${focused})`);
  // Still a pure function of (seed, stage, step).
  const config = { seed: 5, batch: 1, crop: 16, cropFocus: 8 };
  assert.deepEqual(sampleBatch(pairs, config, 2, 3).mask, sampleBatch(pairs, config, 2, 3).mask);
});

Deno.test("jitter: one brightness and gamma per crop, on input and target alike; 0 keeps the batches", () => {
  const w = 12, h = 10;
  const pairs: LoadedPair[] = [0, 1].map((k) => {
    const input = new Float32Array(3 * w * h).map((_, i) => 0.05 + 0.9 * (((i * 37 + k * 11) % 97) / 97));
    return { name: `p${k}`, width: w, height: h, input, target: input.map((v) => v * 0.9), mask: input };
  });
  const plain = sampleBatch(pairs, { seed: 4, batch: 3, crop: 8 }, 2, 5);
  assert.deepEqual(sampleBatch(pairs, { seed: 4, batch: 3, crop: 8, jitter: 0 }, 2, 5), plain);
  const j = 0.3;
  const jittered = sampleBatch(pairs, { seed: 4, batch: 3, crop: 8, jitter: j }, 2, 5);
  assert.deepEqual(jittered.mask, plain.mask, "the mask is not jittered");
  const n = 3 * 8 * 8;
  const fits: [number, number][] = [];
  for (let b = 0; b < 3; b++) {
    // Fit log(out) = log(gain) + gamma * log(in) on the input; the target must follow the same map.
    const xs: number[] = [], ys: number[] = [];
    for (let i = b * n; i < (b + 1) * n; i++) {
      if (jittered.input[i] < 1) [xs.push(Math.log(plain.input[i])), ys.push(Math.log(jittered.input[i]))];
    }
    const mx = xs.reduce((a, v) => a + v) / xs.length, my = ys.reduce((a, v) => a + v) / ys.length;
    let sxy = 0, sxx = 0;
    for (let k = 0; k < xs.length; k++) {
      [sxy, sxx] = [sxy + (xs[k] - mx) * (ys[k] - my), sxx + (xs[k] - mx) ** 2];
    }
    const gamma = sxy / sxx, gain = Math.exp(my - gamma * mx);
    assert.ok(gamma >= Math.exp(-j) - 1e-4 && gamma <= Math.exp(j) + 1e-4, `gamma ${gamma}`);
    assert.ok(gain >= 1 - j - 1e-4 && gain <= 1 + j + 1e-4, `gain ${gain}`);
    for (let i = b * n; i < (b + 1) * n; i++) {
      const map = (v: number) => Math.min(1, gain * v ** gamma);
      assert.ok(Math.abs(jittered.input[i] - map(plain.input[i])) < 1e-4, `input ${i}`);
      assert.ok(Math.abs(jittered.target[i] - map(plain.target[i])) < 1e-4, `target ${i}`);
    }
    fits.push([gain, gamma]);
  }
  assert.ok(fits.some(([g, y]) => Math.abs(g - fits[0][0]) > 1e-3 || Math.abs(y - fits[0][1]) > 1e-3));
});

Deno.test("learning rate halves every lrHalveEpochs epochs", () => {
  const config = { ...defaultConfig("rain"), batch: 4, lr: 2e-4, lrHalveEpochs: 2 };
  // 8 pairs, batch 4: 2 steps per epoch, so steps 1-4 are epochs 0-1, steps 5-8 epochs 2-3.
  assert.equal(learningRate(config, 1, 8), 2e-4);
  assert.equal(learningRate(config, 4, 8), 2e-4);
  assert.equal(learningRate(config, 5, 8), 1e-4);
  assert.equal(learningRate(config, 9, 8), 5e-5);
});

async function cliTrain(args: string[]): Promise<{ code: number; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), { args: ["run", "-A", CLI, "train", ...args] })
    .output();
  return { code: out.code, stderr: new TextDecoder().decode(out.stderr) };
}

Deno.test("bad training inputs: one line naming the problem, nonzero exit, no run folder written", async () => {
  const root = await Deno.makeTempDir({ prefix: "spair-train-bad-" });
  try {
    await writePairs(`${root}/good`, 2);
    const cases: [string, () => Promise<void>, RegExp][] = [
      ["corrupt", async () => {
        await writePairs(`${root}/corrupt`, 2);
        const bytes = await Deno.readFile(`${root}/corrupt/input/p1.png`);
        bytes.fill(7, 40, 60);
        await Deno.writeFile(`${root}/corrupt/input/p1.png`, bytes);
      }, /corrupt\/input\/p1\.png: .*(corrupt|CRC|invalid)/i],
      ["truncated", async () => {
        await writePairs(`${root}/truncated`, 2);
        const jpeg = new Uint8Array([
          0xff,
          0xd8,
          0xff,
          0xe0,
          0,
          16,
          74,
          70,
          73,
          70,
          0,
          1,
          1,
          0,
          0,
          1,
          0,
          1,
          0,
          0,
        ]);
        await Deno.remove(`${root}/truncated/input/p0.png`);
        await Deno.writeFile(`${root}/truncated/input/p0.jpg`, jpeg);
      }, /truncated\/input\/p0\.jpg: .*(truncated|corrupt)/i],
      ["mismatch", async () => {
        await writePairs(`${root}/mismatch`, 2);
        await writePairs(`${root}/other`, 1, 20);
        await Deno.copyFile(`${root}/other/target/p0.png`, `${root}/mismatch/target/p0.png`);
      }, /mismatch\/input\/p0\.png is 24x24 but .*mismatch\/target\/p0\.png is 20x20/],
      ["empty", async () => {
        await Deno.mkdir(`${root}/empty`);
      }, /empty: (cannot detect the dataset layout|no image pairs)/],
      ["unpaired", async () => {
        await writePairs(`${root}/unpaired`, 2);
        await Deno.remove(`${root}/unpaired/target/p1.png`);
      }, /unpaired\/input\/p1\.png has no matching target/],
    ];
    for (const [name, make, pattern] of cases) {
      await make();
      const run = `${root}/run-${name}`;
      const { code, stderr } = await cliTrain(["--data", `${root}/${name}`, "--run", run, "--crop", "16"]);
      assert.notEqual(code, 0, name);
      const lines = stderr.trim().split("\n");
      assert.equal(lines.length, 1, `${name}: ${stderr}`);
      assert.match(lines[0], pattern, name);
      await assert.rejects(Deno.stat(run), `${name}: run folder must not exist`);
    }
    const missing = await cliTrain(["--resume", `${root}/nothing-here`]);
    assert.notEqual(missing.code, 0);
    assert.match(missing.stderr.trim(), /^spair-gpu train: .*nothing-here: no training run to resume/);
    const corruptCheckpoint = `${root}/corrupt-ckpt`;
    await Deno.mkdir(corruptCheckpoint);
    await Deno.writeTextFile(`${corruptCheckpoint}/config.json`, JSON.stringify(tinyConfig(`${root}/good`)));
    await Deno.writeTextFile(`${corruptCheckpoint}/checkpoint.safetensors`, "not a checkpoint");
    const bad = await cliTrain(["--resume", corruptCheckpoint]);
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr.trim(), /checkpoint\.safetensors: corrupt checkpoint/);
    assert.deepEqual(await lsTree(corruptCheckpoint), ["checkpoint.safetensors", "config.json"]);
    await assert.rejects(
      train(`${root}/run-bad-crop`, { config: { ...tinyConfig(`${root}/good`), crop: 30 } }),
      (e: Error) => e instanceof TrainError && /multiple of 4/.test(e.message),
    );
    await assert.rejects(
      train(`${root}/run-bad-clip`, { config: { ...tinyConfig(`${root}/good`), clipGradNorm: -1 } }),
      (e: Error) => e instanceof TrainError && /clipGradNorm must be 0/.test(e.message),
    );
    await assert.rejects(
      train(`${root}/run-bad-init`, {
        config: { ...tinyConfig(`${root}/good`), outputInit: "random" as unknown as "zero" },
      }),
      (e: Error) => e instanceof TrainError && /outputInit must be zero or default/.test(e.message),
    );
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("weighted BCE: equals plain BCE at weight 1 and the PyTorch pos_weight formula otherwise", async () => {
  const { bceWithLogits, tensor } = await import("../mod.ts");
  const { weightedBceWithLogits, balancedPosWeight } = await import("../train/losses.ts");
  const rng = new Rng(9);
  const n = 257;
  const x = rng.uniformArray(n, -30, 30); // large logits check the stable softplus
  const y = Float32Array.from({ length: n }, () => (rng.next() < 0.2 ? 1 : 0));
  const [xt, yt] = [tensor(x, [n]), tensor(y, [n])];
  const plain = await bceWithLogits(xt, yt).item();
  const weighted1 = await weightedBceWithLogits(xt, yt, 1).item();
  assert.ok(Math.abs(plain - weighted1) <= 1e-5 * Math.abs(plain), `${plain} vs ${weighted1}`);
  // torch: loss = (1 - y) x + (1 + (w - 1) y) log(1 + exp(-x)), in float64 here.
  let want = 0;
  for (let i = 0; i < n; i++) {
    const softplusNeg = Math.max(-x[i], 0) + Math.log1p(Math.exp(-Math.abs(x[i])));
    want += (1 - y[i]) * x[i] + (1 + 2 * y[i]) * softplusNeg;
  }
  want /= n;
  const got = await weightedBceWithLogits(xt, yt, 3).item();
  assert.ok(Math.abs(got - want) <= 1e-5 * Math.abs(want), `${got} vs ${want}`);
  assert.equal(balancedPosWeight(0.1), 9);
  assert.equal(balancedPosWeight(0.01), 10);
  assert.equal(balancedPosWeight(0.6), 1);
  assert.equal(balancedPosWeight(0), 1);
});

Deno.test("SSIM loss: 1 - the evaluation's SSIM per image, averaged; its gradient matches central differences of the metric", async () => {
  const { backward, tensor } = await import("../mod.ts");
  const { ssimLoss } = await import("../train/losses.ts");
  const { ssimRgb } = await import("../train/metrics.ts");
  const rng = new Rng(21);
  const [N, C, H, W] = [2, 3, 17, 14];
  const plane = C * H * W;
  // Image 0 dark and of low contrast (its means and variances are of the order of the constants c1 and c2, so
  // both matter), image 1 of full contrast; the output is the target plus structured noise.
  const target = rng.uniformArray(N * plane, 0, 1).map((v, i) => i < plane ? 0.01 + 0.03 * v : v);
  const y = target.map((v, i) => v + (i < plane ? 0.01 : 0.4) * Math.sin(i * 0.37));
  const metric = (img: Float32Array | Float64Array, b: number) =>
    ssimRgb(img.subarray(b * plane, (b + 1) * plane), target.subarray(b * plane, (b + 1) * plane), W, H);
  const want = 1 - (metric(y, 0) + metric(y, 1)) / 2;
  const yt = tensor(y, [N, C, H, W]);
  yt.requiresGrad = true;
  const loss = ssimLoss(yt, tensor(target, [N, C, H, W]));
  const got = await loss.item();
  assert.ok(Math.abs(got - want) <= 1e-5, `loss ${got} vs 1 - ssim ${want}`);
  backward(loss);
  const grad = await yt.grad!.data();
  // Central differences of the float64 metric at sampled pixels, border and interior.
  const h = 1e-3;
  for (const i of [0, 5, 3 * W + 7, plane + 8 * W + 6, 2 * plane - 1, plane + H * W + 4 * W + 9]) {
    const b = Math.floor(i / plane);
    const yp = Float64Array.from(y), ym = Float64Array.from(y);
    yp[i] += h;
    ym[i] -= h;
    const numerical = -(metric(yp, b) - metric(ym, b)) / (2 * h) / N;
    assert.ok(
      Math.abs(grad[i] - numerical) <= 1e-3 * Math.max(Math.abs(numerical), 1e-2),
      `d loss / d y[${i}]: ${grad[i]} vs ${numerical}`,
    );
  }
  assert.throws(
    () =>
      ssimLoss(tensor(new Float32Array(300), [1, 3, 10, 10]), tensor(new Float32Array(300), [1, 3, 10, 10])),
    /smaller than the 11x11 window/,
  );
});

Deno.test("outputInit: zero starts NetR as the identity; default keeps PyTorch's initialization", () =>
  withPairs("spair-train-init-", 2, async (root) => {
    const tailAfterOneStep = async (outputInit: "zero" | "default") => {
      const config = { ...tinyConfig(`${root}/data`), variant: "Net1" as const, stepsR: 1, outputInit };
      await train(`${root}/run-${outputInit}`, { config });
      return (await readWeights(`${root}/run-${outputInit}/model.safetensors`))["netR.tail.weight"].data;
    };
    const zero = await tailAfterOneStep("zero");
    const random = await tailAfterOneStep("default");
    // One Adam step moves each weight by at most about lr (1e-3) from its start.
    assert.ok(Math.max(...zero.map(Math.abs)) <= 1.01e-3, "zero init: the tail starts at 0");
    const rms = Math.sqrt(random.reduce((s, v) => s + v * v, 0) / random.length);
    assert.ok(rms > 0.01, `default init: tail rms ${rms}`);
  }));

Deno.test("loss: NetR's first-step loss is the identity's L1, MSE, L1 + w MSE or L1 + w (1 - SSIM) on the step's batch", () =>
  withPairs("spair-train-loss-", 3, async (root) => {
    const firstLoss = async (loss: TrainConfig["loss"], weight = 1) => {
      const config = {
        ...tinyConfig(`${root}/data`),
        variant: "Net1" as const,
        stepsR: 1,
        loss,
        mseWeight: weight,
        ssimWeight: weight,
      };
      let value = NaN;
      await train(`${root}/run-${loss}-${weight}`, { config, onProgress: (p) => (value = p.loss) });
      return value;
    };
    // The zero-initialized tail makes step 1's output the input itself.
    const config = tinyConfig(`${root}/data`);
    const batch = sampleBatch(await loadPairs(`${root}/data`, "pairs", config.tau), config, 2, 1);
    let abs = 0, sq = 0;
    for (let i = 0; i < batch.input.length; i++) {
      const d = batch.input[i] - batch.target[i];
      abs += Math.abs(d);
      sq += d * d;
    }
    const n = batch.input.length;
    const [l1, mse, both] = [await firstLoss("l1"), await firstLoss("mse"), await firstLoss("l1+mse", 20)];
    assert.ok(Math.abs(l1 - abs / n) <= 1e-5, `l1 ${l1} vs ${abs / n}`);
    assert.ok(Math.abs(mse - sq / n) <= 1e-6, `mse ${mse} vs ${sq / n}`);
    assert.ok(Math.abs(both - (abs + 20 * sq) / n) <= 1e-5, `l1+mse ${both} vs ${(abs + 20 * sq) / n}`);
    assert.ok(sq / n < 0.5 * (abs / n), "the two losses must differ on this data");
    const { ssimRgb } = await import("../train/metrics.ts");
    const images = batch.input.length / (3 * config.crop * config.crop);
    const per = batch.input.length / images;
    let ssimSum = 0;
    for (let b = 0; b < images; b++) {
      const part = (a: Float32Array) => a.subarray(b * per, (b + 1) * per);
      ssimSum += ssimRgb(part(batch.input), part(batch.target), config.crop, config.crop);
    }
    const withSsim = await firstLoss("l1+ssim", 2);
    const wantSsim = abs / n + 2 * (1 - ssimSum / images);
    assert.ok(Math.abs(withSsim - wantSsim) <= 1e-4, `l1+ssim ${withSsim} vs ${wantSsim}`);
    const all = await firstLoss("l1+mse+ssim", 3);
    const wantAll = (abs + 3 * sq) / n + 3 * (1 - ssimSum / images);
    assert.ok(Math.abs(all - wantAll) <= 1e-4, `l1+mse+ssim ${all} vs ${wantAll}`);
    await assert.rejects(
      train(`${root}/run-bad`, { config: { ...config, loss: "huber" as unknown as "l1" } }),
      (e: Error) =>
        e instanceof TrainError && /loss must be l1, mse, l1\+mse, l1\+ssim or l1\+mse\+ssim/.test(e.message),
    );
    await assert.rejects(
      train(`${root}/run-bad-crop`, { config: { ...config, loss: "l1+ssim", crop: 8 } }),
      (e: Error) =>
        e instanceof TrainError && /loss l1\+ssim needs crops of at least 11 pixels, got 8/.test(e.message),
    );
    await assert.rejects(
      train(`${root}/run-bad-weight`, { config: { ...config, loss: "mse", mseWeight: 0 } }),
      (e: Error) => e instanceof TrainError && /mseWeight must be positive/.test(e.message),
    );
  }));

Deno.test("resuming at the end of stage 1 validates NetL once: the log keeps one line for it", () =>
  withPairs("spair-train-val-", 2, async (root) => {
    const config = { ...tinyConfig(`${root}/data`), val: `${root}/data`, stepsR: 0, validateEvery: 2 };
    await train(`${root}/run`, { config });
    // More NetR steps, as weights/train_bundled.sh does: the run resumes from the end of stage 1.
    const path = `${root}/run/config.json`;
    await Deno.writeTextFile(
      path,
      JSON.stringify({ ...JSON.parse(await Deno.readTextFile(path)), stepsR: 2 }),
    );
    await Deno.remove(`${root}/run/model.safetensors`);
    await train(`${root}/run`);
    const vals = (await Deno.readTextFile(runFiles(`${root}/run`).log)).trim().split("\n").map((l) =>
      JSON.parse(l)
    )
      .filter((l) => l.val !== undefined).map((l) => `${l.stage}.${l.step}`);
    assert.deepEqual(vals, ["1.2", "1.3", "2.2"]);
  }));

Deno.test("a config written before the later options gets their defaults; bad choices name the options", () => {
  const old: Partial<TrainConfig> = { ...defaultConfig("raindrop"), data: "d" };
  for (
    const key of [
      "cropFocus",
      "clipGradNorm",
      "outputInit",
      "loss",
      "mseWeight",
      "ssimWeight",
      "posWeight",
    ] as const
  ) {
    delete old[key];
  }
  const c = validateConfig(old as TrainConfig);
  assert.deepEqual(
    [c.cropFocus, c.clipGradNorm, c.outputInit, c.loss, c.mseWeight, c.ssimWeight, c.posWeight],
    [1, 0, "zero", "l1", 1, 1, 0],
  );
  assert.throws(
    () => validateConfig({ ...c, loss: "l2" as "l1" }),
    (e: Error) =>
      e instanceof TrainError && e.message === "loss must be l1, mse, l1+mse, l1+ssim or l1+mse+ssim, got l2",
  );
  assert.throws(
    () => validateConfig({ ...c, outputInit: "ones" as "zero" }),
    (e: Error) => e instanceof TrainError && e.message === "outputInit must be zero or default, got ones",
  );
});

Deno.test("a run's checkpoint loads as a model (restore, eval) and as --init; an unnamed one is refused", () =>
  withPairs("spair-train-ckpt-model-", 2, async (root) => {
    const base = tinyConfig(`${root}/data`);
    // Stopped in stage 2, so the checkpoint also holds Adam state that the model must ignore.
    await train(`${root}/a`, { config: base, maxStepsThisRun: base.stepsL + 1 });
    const path = runFiles(`${root}/a`).checkpoint;
    const bytes = await Deno.readFile(path);
    const decoded = decodeSafetensors(bytes);
    assert.ok(Object.keys(decoded.tensors).some((k) => k.startsWith("optim.")), "no optimizer state");
    const { model, info } = loadModel(bytes, path, { variant: "SPAIR" });
    assert.equal(info.task, base.task);
    assert.equal(info.metadata.step, "1");
    const loaded = await model.stateDict();
    assert.deepEqual(
      Object.keys(loaded).sort(),
      Object.keys(await new SpairModel({ preset: base.preset, variant: base.variant }).stateDict()).sort(),
    );
    for (const [name, t] of Object.entries(loaded)) {
      assert.deepEqual(t.data, decoded.tensors[`model.${name}`].data);
    }
    for (const p of model.parameters()) p.dispose();
    // --init from it: with no steps, the new run's weights are the checkpoint's model tensors.
    await train(`${root}/b`, { config: { ...base, init: path, stepsL: 0, stepsR: 0 } });
    const b = await readWeights(runFiles(`${root}/b`).model);
    for (const [name, t] of Object.entries(b)) {
      assert.deepEqual(t.data, decoded.tensors[`model.${name}`].data);
    }
    // A checkpoint written before checkpoints named their model gets a message that says what to do.
    const { preset: _p, variant: _v, ...old } = decoded.metadata;
    const unnamed = encodeSafetensors(decoded.tensors, old);
    assert.throws(
      () => loadModel(unnamed, "old.safetensors"),
      /old\.safetensors: a training checkpoint that does not name/,
    );
  }));

Deno.test("init: a new run starts from a weights file of its preset and variant; others are refused", () =>
  withPairs("spair-train-init-", 2, async (root) => {
    const base = tinyConfig(`${root}/data`);
    await train(`${root}/a`, { config: base });
    const source = runFiles(`${root}/a`).model;
    // No steps: the run's weights are the init file's, bit for bit (NetR's output conv is not zeroed).
    await train(`${root}/b`, { config: { ...base, init: source, stepsL: 0, stepsR: 0 } });
    const a = await readWeights(source);
    const b = await readWeights(runFiles(`${root}/b`).model);
    for (const name of Object.keys(a)) assert.deepEqual(b[name].data, a[name].data, name);
    // Training on from it moves NetR away from the init weights, and NetL stays (no stage 1 steps).
    await train(`${root}/c`, { config: { ...base, init: source, stepsL: 0, stepsR: 2 } });
    const c = await readWeights(runFiles(`${root}/c`).model);
    for (const name of Object.keys(a).filter((k) => k.startsWith("netL."))) {
      assert.deepEqual(c[name].data, a[name].data, name);
    }
    assert.notDeepEqual(c["netR.tail.weight"].data, a["netR.tail.weight"].data);
    // Wrong files stop the run before its folder is written.
    const net1 = await Deno.makeTempFile({ dir: root, suffix: ".safetensors" });
    await Deno.writeFile(
      net1,
      await new SpairModel({ preset: "tiny", variant: "Net1" }, 1).saveSafetensors({
        preset: "tiny",
        variant: "Net1",
      }),
    );
    for (
      const [init, message] of [
        [`${root}/nothing.safetensors`, /nothing\.safetensors: init weights not found/],
        [net1, /holds tiny Net1 weights; this run trains tiny SPAIR/],
        [`${root}/data/input/p0.png`, /p0\.png: not readable safetensors weights/],
      ] as const
    ) {
      await assert.rejects(train(`${root}/bad`, { config: { ...base, init } }), message);
      await assert.rejects(Deno.stat(`${root}/bad`), `a refused init left ${root}/bad behind`);
    }
  }));
