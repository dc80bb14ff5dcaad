/**
 * Side-by-side figures for the docs: images of equal height joined left to right (gray images are
 * replicated to RGB), written as PNG.
 *
 * Usage: deno run -A bench/figures.ts OUT.png IMAGE...
 *
 * @module
 */

import { readImage, writeImageAtomic } from "../train/image_io.ts";

const [out, ...files] = Deno.args;
const images = await Promise.all(files.map((f) => readImage(f)));
const height = images[0].height;
const gap = 4;
const width = images.reduce((s, im) => s + im.width, 0) + gap * (images.length - 1);
const data = new Float32Array(width * height * 3).fill(1);
let x0 = 0;
for (const [k, im] of images.entries()) {
  if (im.height !== height) throw new Error(`${files[k]} is ${im.height} px high, expected ${height}`);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < im.width; x++) {
      for (let c = 0; c < 3; c++) {
        data[(y * width + x0 + x) * 3 + c] =
          im.data[(y * im.width + x) * im.channels + (im.channels < 3 ? 0 : c)];
      }
    }
  }
  x0 += im.width + gap;
}
await writeImageAtomic(out, { width, height, channels: 3, bitDepth: 8, format: "png", data });
