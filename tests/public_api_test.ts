// The package as a JSR user sees it: imported by its name, restoring through the public API only, with the
// same result as `deno task restore`.
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { PNG } from "pngjs";
import { initEngine, loadModel, restorePlanar, TASKS } from "@spair/spair-gpu";

const root = new URL("../", import.meta.url).pathname;

Deno.test("public API: bundled rain weights restore the sample like the CLI does", async () => {
  await initEngine();
  assert.deepEqual([...TASKS], ["rain", "raindrop", "shadow", "blur"]);
  // A user decodes pixels their own way (here pngjs) and hands planar RGB in [0, 1] to the model.
  const png = PNG.sync.read(Buffer.from(await Deno.readFile(`${root}samples/rain.png`)));
  const { width, height, data } = png;
  const plane = width * height;
  const planar = new Float32Array(3 * plane);
  for (let i = 0; i < plane; i++) for (let c = 0; c < 3; c++) planar[c * plane + i] = data[i * 4 + c] / 255;
  const { model, info } = loadModel(
    await Deno.readFile(`${root}weights/rain.safetensors`),
    "rain.safetensors",
  );
  assert.equal(info.task, "rain");
  assert.equal(info.preset, "tiny");
  const { restored, mask } = await restorePlanar(model, planar, width, height);
  assert.equal(restored.length, 3 * plane);
  assert.ok(mask !== null, "SPAIR predicts a mask");
  assert.ok(mask.every((v) => v === 0 || v === 1));
  const density = mask.reduce((a, b) => a + b, 0) / plane;
  assert.ok(density > 0 && density < 0.5, `mask density ${density}`);

  const out = await Deno.makeTempDir({ prefix: "spair-api-" });
  try {
    const cli = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", `${root}cli.ts`, "restore", `${root}samples/rain.png`, "-o", `${out}/rain.png`],
    }).output();
    assert.equal(cli.code, 0, new TextDecoder().decode(cli.stderr));
    const viaCli = PNG.sync.read(Buffer.from(await Deno.readFile(`${out}/rain.png`)));
    let maxDiff = 0;
    let changed = 0;
    for (let i = 0; i < plane; i++) {
      for (let c = 0; c < 3; c++) {
        const api = Math.round(restored[c * plane + i] * 255);
        maxDiff = Math.max(maxDiff, Math.abs(api - viaCli.data[i * 4 + c]));
        if (api !== data[i * 4 + c]) changed++;
      }
    }
    assert.ok(maxDiff <= 1, `API and CLI differ by ${maxDiff}/255`);
    assert.ok(changed > 0, "restoration changed nothing");
  } finally {
    await Deno.remove(out, { recursive: true });
    for (const p of model.parameters()) p.dispose();
  }
});
