// Training smoke test: a tiny conv net fits a fixed batch on the available adapter (llvmpipe in CI).
import assert from "node:assert/strict";
import { testEngine } from "./_setup.ts";
import { fitDemo } from "../train/demo.ts";

Deno.test("tiny conv net fits a fixed batch: loss falls by more than 10x", async () => {
  const before = testEngine.memory().liveBuffers;
  const { firstLoss, lastLoss } = await fitDemo({ steps: 150 });
  assert.ok(Number.isFinite(lastLoss), `loss is ${lastLoss}`);
  assert.ok(firstLoss / lastLoss > 10, `loss fell only from ${firstLoss} to ${lastLoss}`);
  await testEngine.sync();
  assert.equal(testEngine.memory().liveBuffers, before, "training leaked GPU buffers");
});
