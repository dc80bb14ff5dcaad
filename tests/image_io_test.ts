import nodeAssert from "node:assert/strict";
import { deflateSync } from "node:zlib";
import {
  decodeImage,
  encodeImage,
  fromPlanarRgb,
  type Image,
  ImageError,
  maskToImage,
  readImage,
  toPlanarRgb,
  writeImageAtomic,
} from "../train/image_io.ts";

function assert(cond: unknown, msg?: string): asserts cond {
  nodeAssert.ok(cond, msg);
}
function assertEquals<T>(a: T, b: T, msg?: string): void {
  nodeAssert.deepStrictEqual(a, b, msg);
}
function assertAlmostEquals(a: number, b: number, tol: number): void {
  assert(Math.abs(a - b) <= tol, `${a} != ${b} (tolerance ${tol})`);
}
function assertThrows(fn: () => unknown): Error {
  try {
    fn();
  } catch (e) {
    return e as Error;
  }
  throw new Error("expected a throw");
}
async function assertRejects(fn: () => Promise<unknown>, cls?: new (...a: never[]) => Error): Promise<Error> {
  try {
    await fn();
  } catch (e) {
    if (cls) assert(e instanceof cls, `expected ${cls.name}, got ${e}`);
    return e as Error;
  }
  throw new Error("expected a rejection");
}

/** An image whose samples are exact multiples of 1/max, so that a PNG round trip must be bit-exact. */
function gridImage(w: number, h: number, channels: Image["channels"], bitDepth: 8 | 16): Image {
  const max = bitDepth === 16 ? 65535 : 255;
  const data = new Float32Array(w * h * channels);
  for (let i = 0; i < data.length; i++) data[i] = ((i * 7919 + 13) % (max + 1)) / max;
  return { width: w, height: h, channels, bitDepth, format: "png", data };
}

function crc32(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of bytes) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  }
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type: string, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  out.set(new TextEncoder().encode(type), 4);
  out.set(data, 8);
  view.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
  return out;
}

/** A hand-built 3x2 palette PNG (8-bit indices), optionally with a tRNS chunk. */
function palettePng(withAlpha: boolean): Uint8Array {
  const ihdr = new Uint8Array(13);
  const v = new DataView(ihdr.buffer);
  v.setUint32(0, 3);
  v.setUint32(4, 2);
  ihdr.set([8, 3, 0, 0, 0], 8);
  const plte = new Uint8Array([255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30]);
  const raw = new Uint8Array([0, 0, 1, 2, 0, 3, 2, 1]); // filter byte 0 then indices, per row
  const parts = [
    new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", ihdr),
    chunk("PLTE", plte),
    ...(withAlpha ? [chunk("tRNS", new Uint8Array([255, 128, 0, 255]))] : []),
    chunk("IDAT", new Uint8Array(deflateSync(raw))),
    chunk("IEND", new Uint8Array(0)),
  ];
  const out = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/**
 * A hand-built one-component (grayscale) baseline JPEG, 8x8, uniform value 192: DC quantizer 8 so the DC
 * coefficient is 64 (category 7), single-symbol Huffman tables (code "0"), then EOB.
 */
function grayJpeg(): Uint8Array {
  const dqt = [0xff, 0xdb, 0, 67, 0x00, 8, ...new Array(63).fill(1)];
  const sof = [0xff, 0xc0, 0, 11, 8, 0, 8, 0, 8, 1, 1, 0x11, 0];
  const dhtDc = [0xff, 0xc4, 0, 20, 0x00, 1, ...new Array(15).fill(0), 7];
  const dhtAc = [0xff, 0xc4, 0, 20, 0x10, 1, ...new Array(15).fill(0), 0x00];
  const sos = [0xff, 0xda, 0, 8, 1, 1, 0x00, 0, 63, 0];
  // Bits: DC symbol 7 -> "0", value 64 -> "1000000", AC EOB -> "0", padded with ones.
  return new Uint8Array([0xff, 0xd8, ...dqt, ...sof, ...dhtDc, ...dhtAc, ...sos, 0x40, 0x7f, 0xff, 0xd9]);
}

function assertOneLine(e: Error, prefix: string, problem: RegExp): void {
  assert(e instanceof ImageError, `expected ImageError, got ${e}`);
  assert(!e.message.includes("\n"), `message is not one line: ${e.message}`);
  assert(e.message.startsWith(`${prefix}: `), `message does not start with the file name: ${e.message}`);
  assert(problem.test(e.message), `unexpected message: ${e.message}`);
}

for (const [channels, bitDepth] of [[3, 8], [4, 8], [1, 8], [2, 8], [3, 16], [1, 16], [4, 16]] as const) {
  Deno.test(`PNG round trip is exact: ${channels} channel(s), ${bitDepth}-bit`, () => {
    const img = gridImage(5, 3, channels, bitDepth);
    const back = decodeImage(encodeImage(img, "png"), "x.png");
    assertEquals([back.width, back.height, back.channels, back.bitDepth, back.format], [
      5,
      3,
      channels,
      bitDepth,
      "png",
    ]);
    const max = bitDepth === 16 ? 65535 : 255;
    for (let i = 0; i < img.data.length; i++) {
      assertEquals(Math.round(back.data[i] * max), Math.round(img.data[i] * max), `sample ${i}`);
    }
    // 16-bit keeps resolution beyond 8 bits: at least one value that 8 bits cannot represent.
    if (bitDepth === 16) assert(back.data.some((x) => Math.abs(x * 255 - Math.round(x * 255)) > 0.01));
  });
}

Deno.test("palette PNG decodes to RGB, and to RGBA with a tRNS chunk", () => {
  const rgb = decodeImage(palettePng(false), "pal.png");
  assertEquals([rgb.channels, rgb.bitDepth, rgb.width, rgb.height], [3, 8, 3, 2]);
  // Row 0: indices 0,1,2 (red, green, blue); row 1: 3,2,1.
  assertEquals(Array.from(rgb.data.subarray(0, 9), (x) => Math.round(x * 255)), [
    255,
    0,
    0,
    0,
    255,
    0,
    0,
    0,
    255,
  ]);
  assertEquals(Array.from(rgb.data.subarray(9, 12), (x) => Math.round(x * 255)), [10, 20, 30]);
  const rgba = decodeImage(palettePng(true), "pal.png");
  assertEquals(rgba.channels, 4);
  assertEquals(Array.from({ length: 6 }, (_, p) => Math.round(rgba.data[p * 4 + 3] * 255)), [
    255,
    128,
    0,
    255,
    0,
    128,
  ]);
});

Deno.test("JPEG round trip is close; gray JPEG decodes as one channel; alpha is dropped", () => {
  const w = 32, h = 24;
  const data = new Float32Array(w * h * 4);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const o = (y * w + x) * 4;
      data.set([x / w, y / h, 0.5 + 0.3 * Math.sin(x / 5), 0.25], o);
    }
  }
  const img: Image = { width: w, height: h, channels: 4, bitDepth: 8, format: "png", data };
  const back = decodeImage(encodeImage(img, "jpeg", 95), "x.jpg");
  assertEquals([back.channels, back.format, back.width, back.height], [3, "jpeg", w, h]);
  let err = 0;
  for (let p = 0; p < w * h; p++) {
    for (let c = 0; c < 3; c++) err += Math.abs(back.data[p * 3 + c] - data[p * 4 + c]);
  }
  assert(err / (w * h * 3) < 0.02, `mean abs error ${err / (w * h * 3)}`);
  // jpeg-js always writes three components, so gray input comes back as RGB with equal channels.
  const g3 = decodeImage(encodeImage(gridImage(16, 16, 1, 8), "jpeg", 90), "g.jpg");
  assertEquals(g3.channels, 3);
  assertAlmostEquals(g3.data[0], g3.data[1], 0.02);
  const gray = decodeImage(grayJpeg(), "gray.jpg");
  assertEquals([gray.channels, gray.width, gray.height], [1, 8, 8]);
  for (const v of gray.data) assertAlmostEquals(v * 255, 192, 1);
});

Deno.test("corrupt, truncated, foreign, empty and missing files throw one-line ImageErrors", async () => {
  const png = encodeImage(gridImage(40, 30, 3, 8), "png");
  const flipped = png.slice();
  const idat = new TextDecoder().decode(png).indexOf("IDAT");
  flipped[idat + 10] ^= 0xff;
  assertOneLine(
    assertThrows(() => decodeImage(flipped, "photo.png")),
    "photo.png",
    /corrupt PNG \(bad CRC in IDAT chunk\)$/,
  );
  assertOneLine(
    assertThrows(() => decodeImage(png.slice(0, png.length - 20), "t.png")),
    "t.png",
    /truncated PNG/,
  );
  assertOneLine(assertThrows(() => decodeImage(png.slice(0, 8), "t.png")), "t.png", /truncated PNG/);
  const jpg = encodeImage(gridImage(64, 64, 3, 8), "jpeg", 90);
  for (const cut of [2, 40, Math.floor(jpg.length / 2)]) {
    assertOneLine(
      assertThrows(() => decodeImage(jpg.slice(0, jpg.length - cut), "x.jpg")),
      "x.jpg",
      /truncated JPEG$/,
    );
  }
  const bmp = new Uint8Array([0x42, 0x4d, 1, 2, 3, 4, 5, 6, 7, 8]);
  assertOneLine(
    assertThrows(() => decodeImage(bmp, "x.bmp")),
    "x.bmp",
    /unsupported image format \(expected PNG or JPEG\)$/,
  );
  assertOneLine(assertThrows(() => decodeImage(new Uint8Array(0), "e.png")), "e.png", /empty file$/);
  const dir = await Deno.makeTempDir();
  try {
    const missing = `${dir}/nope.png`;
    assertOneLine(await assertRejects(() => readImage(missing)), missing, /file not found$/);
    const text = `${dir}/notes.png`;
    await Deno.writeTextFile(text, "hello, not a PNG\n");
    assertOneLine(await assertRejects(() => readImage(text)), text, /unsupported image format/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("writeImageAtomic writes by extension and leaves no temp file; a failed encode writes nothing", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const img = gridImage(6, 4, 3, 16);
    await writeImageAtomic(`${dir}/a.png`, img);
    await writeImageAtomic(`${dir}/b.jpg`, img);
    const a = await readImage(`${dir}/a.png`);
    assertEquals([a.format, a.bitDepth, a.channels], ["png", 16, 3]);
    assertEquals((await readImage(`${dir}/b.jpg`)).format, "jpeg");
    const bad: Image = { ...img, data: new Float32Array(5) }; // wrong sample count: encoding must fail
    assertOneLine(
      await assertRejects(() => writeImageAtomic(`${dir}/c.png`, bad)),
      `${dir}/c.png`,
      /cannot encode/,
    );
    assertOneLine(
      await assertRejects(() => writeImageAtomic(`${dir}/d.bmp`, img)),
      `${dir}/d.bmp`,
      /unsupported output/,
    );
    // Writing into a missing folder fails at the temp file: nothing is left behind either.
    await assertRejects(() => writeImageAtomic(`${dir}/nodir/e.png`, img), ImageError);
    const names = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
    assertEquals(names, ["a.png", "b.jpg"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("planar helpers: gray replicates and averages back, alpha is carried, masks become 8-bit gray", () => {
  const ga: Image = {
    width: 2,
    height: 1,
    channels: 2,
    bitDepth: 16,
    format: "png",
    data: new Float32Array([0.2, 0.9, 0.6, 0.3]),
  };
  const planar = toPlanarRgb(ga);
  assertEquals(Array.from(planar), Array.from(new Float32Array([0.2, 0.6, 0.2, 0.6, 0.2, 0.6])));
  planar.set([0.1, 0.2, 0.4, 0.5, 0.7, 0.8]);
  const back = fromPlanarRgb(planar, ga);
  assertEquals([back.channels, back.bitDepth], [2, 16]);
  assertAlmostEquals(back.data[0], (0.1 + 0.4 + 0.7) / 3, 1e-6);
  assertAlmostEquals(back.data[2], (0.2 + 0.5 + 0.8) / 3, 1e-6);
  assertEquals([back.data[1], back.data[3]], [ga.data[1], ga.data[3]]);
  const rgba: Image = {
    width: 1,
    height: 2,
    channels: 4,
    bitDepth: 8,
    format: "png",
    data: new Float32Array([1, 0, 0.5, 0.25, 0, 1, 0.5, 0.75]),
  };
  const p2 = toPlanarRgb(rgba);
  assertEquals(Array.from(p2), [1, 0, 0, 1, 0.5, 0.5]);
  assertEquals(Array.from(fromPlanarRgb(p2, rgba).data), Array.from(rgba.data));
  const m = maskToImage(new Float32Array([0, 1, 1, 0]), 2, 2);
  const dec = decodeImage(encodeImage(m), "m.png");
  assertEquals([dec.channels, dec.bitDepth], [1, 8]);
  assertEquals(Array.from(dec.data), [0, 1, 1, 0]);
});
