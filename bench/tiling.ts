/**
 * Tiled SPAIR restoration, exact image-wide layers against per-tile ones: time and largest difference from
 * the untiled result, on the bundled rain sample with the bundled rain model.
 *
 * Usage: deno run -A bench/tiling.ts [--tile 256] [--overlap 96]
 *
 * @module
 */

import { parseArgs } from "node:util";
import { engine, initEngine, loadModel, restorePlanar } from "../mod.ts";
import { readImage, toPlanarRgb } from "../train/image_io.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { tile: { type: "string", default: "256" }, overlap: { type: "string", default: "96" } },
});
await initEngine();
const root = new URL("..", import.meta.url).pathname;
const image = await readImage(`${root}samples/rain.png`);
const planar = toPlanarRgb(image);
const { width: w, height: h } = image;
const { model } = loadModel(await Deno.readFile(`${root}weights/rain.safetensors`), "rain.safetensors");
console.log(`${engine().adapterDescription}; samples/rain.png ${w}x${h}, weights/rain.safetensors`);
let started = performance.now();
const whole = await restorePlanar(model, planar, w, h, { tile: Math.max(w, h) });
console.log(`untiled (includes shader compilation): ${((performance.now() - started) / 1000).toFixed(1)} s`);
for (const globalLayers of ["exact", "per-tile"] as const) {
  let tiles = 0;
  started = performance.now();
  const tiled = await restorePlanar(model, planar, w, h, {
    tile: Number(values.tile),
    overlap: Number(values.overlap),
    globalLayers,
    onTile: (_, total) => (tiles = total),
  });
  const seconds = (performance.now() - started) / 1000;
  let max = 0;
  for (let i = 0; i < planar.length; i++) {
    max = Math.max(max, Math.abs(whole.restored[i] - tiled.restored[i]));
  }
  console.log(
    `${globalLayers}: ${seconds.toFixed(1)} s, ${tiles} tile runs, max |tiled - untiled| ${
      max.toExponential(2)
    }`,
  );
}
