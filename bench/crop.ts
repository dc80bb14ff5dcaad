/**
 * Centre crop of an image to a PNG (the real-photo figure of the README).
 *
 * Usage: deno run -A bench/crop.ts IN OUT.png WIDTH HEIGHT
 *
 * @module
 */

import { encodeImage, readImage } from "../train/image_io.ts";

const [src, out, w, h] = Deno.args;
const image = await readImage(src);
const width = Number(w), height = Number(h), channels = image.channels;
if (!(width > 0 && height > 0 && width <= image.width && height <= image.height)) {
  console.error(`bench/crop.ts: ${src} is ${image.width}x${image.height}; cannot crop ${width}x${height}`);
  Deno.exit(2);
}
const x0 = (image.width - width) >> 1, y0 = (image.height - height) >> 1;
const data = new Float32Array(width * height * channels);
for (let y = 0; y < height; y++) {
  const from = ((y + y0) * image.width + x0) * channels;
  data.set(image.data.subarray(from, from + width * channels), y * width * channels);
}
await Deno.writeFile(out, encodeImage({ ...image, width, height, data }, "png"));
