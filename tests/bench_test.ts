// The benchmark CLI's output format, on tiny cases (`--quick`, dense kernels only, so it stays fast on
// llvmpipe): JSON lines with an environment record first, timing statistics and a correctness flag per
// record, and a markdown summary with the engine-vs-peers table.
import assert from "node:assert/strict";
import { COMPARISON_HEADER } from "../bench/summary.ts";
import { parseBenchArgs } from "../bench/main.ts";
import { measure } from "../bench/timing.ts";
import { testEngine } from "./_setup.ts";

const MAIN = new URL("../bench/main.ts", import.meta.url).pathname;

Deno.test("bench: --quick writes JSON lines (environment first) and a markdown summary", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const json = `${dir}/run.jsonl`, summary = `${dir}/run.md`;
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        MAIN,
        "--suite",
        "engine",
        "--quick",
        "--repeats",
        "1",
        "--json",
        json,
        "--summary",
        summary,
      ],
      env: { XDG_RUNTIME_DIR: "/tmp", NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 0, stderr);
    const lines = (await Deno.readTextFile(json)).trim().split("\n").map((l) => JSON.parse(l));
    const [env, ...records] = lines;
    assert.equal(env.suite, "info");
    for (
      const key of [
        "adapter",
        "vendor",
        "architecture",
        "device",
        "description",
        "driver",
        "deno",
        "os",
        "date",
      ]
    ) {
      assert.equal(typeof env[key], "string", key);
    }
    assert.equal(typeof env.cpus, "number");
    assert.equal(typeof env.timestampQuery, "boolean");
    assert.ok(Array.isArray(env.features));
    assert.equal(typeof env.limits.maxStorageBufferBindingSize, "number");
    assert.deepEqual(records.map((r) => r.op), ["conv2d_fwd", "conv2d_fwd_bwd", "matmul"]);
    for (const r of records) {
      assert.equal(r.suite, "kernels");
      for (const key of ["medianMs", "minMs", "maxMs", "firstRunMs"]) assert.ok(Number.isFinite(r[key]), key);
      assert.ok(r.minMs <= r.medianMs && r.medianMs <= r.maxMs);
      assert.equal(r.correct, true, r.note);
      if (env.timestampQuery) assert.ok(r.gpuMedianMs === undefined || Number.isFinite(r.gpuMedianMs));
    }
    // stdout carries the same JSON lines, then the summary.
    const stdout = new TextDecoder().decode(out.stdout);
    assert.equal(stdout.split("\n")[0], JSON.stringify(env));
    const md = await Deno.readTextFile(summary);
    assert.ok(md.includes(COMPARISON_HEADER), md);
    assert.ok(stdout.includes(COMPARISON_HEADER));
    assert.match(
      md,
      /\| conv2d forward \(N1 C8->8 32x32 k3x3 s1 p1\) \| [\d.]+ ms, [\d.]+ GFLOP\/s, correct \|/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("bench: suite names, aliases and bad arguments", () => {
  assert.deepEqual([...parseBenchArgs(["--suite", "engine,sparse"]).parts], ["dense", "sparse"]);
  assert.deepEqual([...parseBenchArgs([]).parts].sort(), ["dense", "model", "peers", "sparse", "train"]);
  assert.equal(parseBenchArgs([]).timeLimitMin, 14);
  assert.equal(parseBenchArgs(["--suite", "model"]).timeLimitMin, Infinity);
  assert.throws(() => parseBenchArgs(["--suite", "gpu"]), /unknown suite 'gpu'/);
  assert.throws(() => parseBenchArgs(["--adapter", "fast"]), /low-power or high-performance/);
  assert.throws(() => parseBenchArgs(["--repeats", "0"]), /positive/);
  assert.throws(() => parseBenchArgs(["--sizes", "30"]), /multiple of 4/);
});

Deno.test("bench: the batch is sized from a run after the compiling first one", async () => {
  void testEngine; // measure() flushes and waits on the shared engine's queue
  // The first run stands in for pipeline compilation (slow); later runs are fast, so a sample should batch
  // many of them. Sized from the first run, the batch would be 1 and each sample would time one submit.
  let calls = 0;
  const m = await measure(async () => {
    calls++;
    await new Promise((r) => setTimeout(r, calls === 1 ? 300 : 2));
  }, { repeats: 2, batchTargetMs: 100 });
  assert.ok(m.firstRunMs >= 250, `first run ${m.firstRunMs} ms`);
  assert.ok(m.batch >= 3, `batch ${m.batch}`); // a 2 ms run plus one queue wait (~10 ms on llvmpipe)
  assert.equal(calls, 2 + 2 * m.batch);
});
