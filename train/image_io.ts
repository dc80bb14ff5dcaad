/**
 * Deno-side image IO: PNG (8/16-bit gray, gray+alpha, RGB, RGBA, palette) and baseline JPEG, decoded to
 * interleaved float32 in [0,1], with one-line errors that name the file, atomic writes, and the planar
 * [3,H,W] conversions the model consumes.
 *
 * @module
 */

import { Buffer } from "node:buffer";
import { inflateSync } from "node:zlib";
import { PNG } from "pngjs";
import * as jpeg from "jpeg-js";
import { UserError } from "../engine/errors.ts";

/** A decoded image: interleaved HWC float32 samples in [0,1], plus what is needed to write it back alike. */
export interface Image {
  width: number;
  height: number;
  /** 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA. */
  channels: 1 | 2 | 3 | 4;
  /** Sample depth of the source (PNG below 8 bits and palettes report 8). */
  bitDepth: 8 | 16;
  format: "png" | "jpeg";
  /** Interleaved HWC, length width * height * channels, values in [0,1]. */
  data: Float32Array;
}

/** An image could not be read or written; the message is one line: `"<path>: <problem>"`. */
export class ImageError extends UserError {
  constructor(path: string, problem: string) {
    super(`${path}: ${problem.replace(/\s+/g, " ").trim()}`);
    this.name = "ImageError";
  }
}

const PNG_SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function crc32(bytes: Uint8Array, start: number, end: number): number {
  let c = 0xffffffff;
  for (let i = start; i < end; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function isPng(b: Uint8Array): boolean {
  return b.length >= 8 && PNG_SIGNATURE.every((v, i) => b[i] === v);
}

function isJpeg(b: Uint8Array): boolean {
  return b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff;
}

/**
 * Largest image decoded by default, in pixels (width x height): 50 megapixels, e.g. 8660x5773. Restoring
 * one holds about 220 bytes per pixel on the host with the bundled tiny models, about 11 GB (an estimate
 * from the buffers kept: the decoded image, its planar copy, NetL's per-tile features, the blended output;
 * tiles keep GPU memory bounded), so it fits a 24 GB machine. The header's size is checked before anything
 * is decoded, so a small file claiming a huge image costs nothing.
 */
export const DEFAULT_MAX_PIXELS = 50_000_000;

/** Options of {@link decodeImage} and {@link readImage}. */
export interface DecodeImageOptions {
  /** Refuse images with more pixels than this (default {@link DEFAULT_MAX_PIXELS}). */
  maxPixels?: number;
}

function checkPixels(name: string, format: string, width: number, height: number, maxPixels: number): void {
  if (width === 0 || height === 0) {
    throw new ImageError(name, `corrupt ${format} (image size ${width}x${height})`);
  }
  if (width * height > maxPixels) {
    throw new ImageError(
      name,
      `${width}x${height} is ${(width * height / 1e6).toFixed(1)} megapixels, over the limit of ` +
        `${(maxPixels / 1e6).toFixed(1)} (raise it with --max-pixels if the machine has the memory)`,
    );
  }
}

/** Bytes of filtered scanlines a PNG of this header decompresses to (Adam7 passes when interlaced). */
function pngDataBytes(width: number, height: number, bitsPerPixel: number, interlaced: boolean): number {
  const rows = (w: number, h: number) => (w > 0 && h > 0 ? h * (1 + Math.ceil((w * bitsPerPixel) / 8)) : 0);
  if (!interlaced) return rows(width, height);
  const passes = [[0, 0, 8, 8], [4, 0, 8, 8], [0, 4, 4, 8], [2, 0, 4, 4], [0, 2, 2, 4], [1, 0, 2, 2], [
    0,
    1,
    1,
    2,
  ]];
  return passes.reduce(
    (sum, [x0, y0, dx, dy]) => sum + rows(Math.ceil((width - x0) / dx), Math.ceil((height - y0) / dy)),
    0,
  );
}

/** Walks the PNG chunks so that truncation and bad CRCs get precise messages (pngjs reports them vaguely),
 * checks the header's size against `maxPixels` before any decoding, and checks that the image data
 * inflates completely to the size the header implies (pngjs fills short data with black rows). */
function checkPngChunks(b: Uint8Array, name: string, maxPixels: number): void {
  const view = new DataView(b.buffer, b.byteOffset, b.byteLength);
  let pos = 8;
  const idat: Uint8Array[] = [];
  let header: { width: number; height: number; bitsPerPixel: number; interlaced: boolean } | undefined;
  while (true) {
    if (pos + 12 > b.length) throw new ImageError(name, "truncated PNG (no IEND chunk)");
    const len = view.getUint32(pos);
    const type = String.fromCharCode(b[pos + 4], b[pos + 5], b[pos + 6], b[pos + 7]);
    if (!/^[A-Za-z]{4}$/.test(type)) throw new ImageError(name, `corrupt PNG (invalid chunk at byte ${pos})`);
    const end = pos + 8 + len;
    if (end + 4 > b.length) throw new ImageError(name, `truncated PNG (inside ${type} chunk)`);
    if (crc32(b, pos + 4, end) !== view.getUint32(end)) {
      throw new ImageError(name, `corrupt PNG (bad CRC in ${type} chunk)`);
    }
    if (pos === 8) {
      if (type !== "IHDR" || len !== 13) throw new ImageError(name, "corrupt PNG (no IHDR chunk first)");
      const [width, height, depth, colorType] = [view.getUint32(16), view.getUint32(20), b[24], b[25]];
      const samples = ({ 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 } as Record<number, number>)[colorType];
      if (samples === undefined) throw new ImageError(name, `corrupt PNG (colour type ${colorType})`);
      checkPixels(name, "PNG", width, height, maxPixels);
      header = { width, height, bitsPerPixel: samples * depth, interlaced: b[28] === 1 };
    }
    if (type === "IDAT") idat.push(b.subarray(pos + 8, end));
    if (type === "IEND") break;
    pos = end + 4;
  }
  const expected = pngDataBytes(header!.width, header!.height, header!.bitsPerPixel, header!.interlaced);
  const joined = new Uint8Array(idat.reduce((n, c) => n + c.length, 0));
  idat.reduce((at, c) => (joined.set(c, at), at + c.length), 0);
  let inflated: number;
  try {
    inflated = inflateSync(joined, { maxOutputLength: expected + 1 }).length;
  } catch (e) {
    const message = (e as Error).message;
    if (/buffer|maxOutputLength|larger than/i.test(message)) return; // more data than needed: pngjs ignores it
    throw new ImageError(name, `corrupt PNG (image data does not inflate: ${message})`);
  }
  if (inflated < expected) {
    throw new ImageError(name, `corrupt PNG (image data is short: ${inflated} of ${expected} bytes)`);
  }
}

interface PngMeta {
  width: number;
  height: number;
  depth: number;
  colorType: number;
  alpha: boolean;
  data: Uint8Array | Uint16Array;
}

function decodePng(bytes: Uint8Array, name: string, maxPixels: number): Image {
  checkPngChunks(bytes, name, maxPixels);
  let meta: PngMeta;
  try {
    // skipRescale keeps 16-bit samples (Uint16Array) and sub-byte gray levels unscaled; pngjs always
    // expands to RGBA, so the true channel count comes from the header's colour type.
    meta = PNG.sync.read(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength), {
      skipRescale: true,
    } as never) as unknown as PngMeta;
  } catch (e) {
    throw new ImageError(name, `corrupt PNG (${(e as Error).message})`);
  }
  const { width, height, depth, colorType } = meta;
  const base = ({ 0: 1, 2: 3, 3: 3, 4: 2, 6: 4 } as Record<number, number>)[colorType];
  if (base === undefined) throw new ImageError(name, `corrupt PNG (colour type ${colorType})`);
  // A tRNS chunk (palette alpha or colour key) adds an alpha channel to types without one.
  const channels = (base === 1 || base === 3) && meta.alpha ? base + 1 : base;
  const max = colorType === 3 ? 255 : 2 ** depth - 1;
  const src = meta.data;
  const n = width * height;
  const out = new Float32Array(n * channels);
  const inv = 1 / max;
  for (let p = 0; p < n; p++) {
    const s = p * 4;
    const o = p * channels;
    if (channels === 1) out[o] = src[s] * inv;
    else if (channels === 2) {
      out[o] = src[s] * inv;
      out[o + 1] = src[s + 3] * inv;
    } else {
      for (let c = 0; c < channels; c++) out[o + c] = src[s + c] * inv;
    }
  }
  return {
    width,
    height,
    channels: channels as Image["channels"],
    bitDepth: depth === 16 ? 16 : 8,
    format: "png",
    data: out,
  };
}

/** Number of components and size of the first frame header (SOFn; 0 when none is found), and the
 * position of the last scan. */
function jpegComponents(
  b: Uint8Array,
): { components: number; width: number; height: number; lastSos: number } {
  let components = 0, width = 0, height = 0;
  let lastSos = -1;
  let pos = 2;
  while (pos + 4 <= b.length) {
    if (b[pos] !== 0xff) {
      pos++;
      continue;
    }
    const m = b[pos + 1];
    if (m === 0xff || m === 0x00 || (m >= 0xd0 && m <= 0xd7) || m === 0x01) {
      pos += m === 0xff ? 1 : 2;
      continue;
    }
    if (m === 0xd9) break;
    const len = (b[pos + 2] << 8) | b[pos + 3];
    const isSof = m >= 0xc0 && m <= 0xcf && m !== 0xc4 && m !== 0xc8 && m !== 0xcc;
    if (isSof && components === 0 && pos + 9 < b.length) {
      components = b[pos + 9];
      height = (b[pos + 5] << 8) | b[pos + 6];
      width = (b[pos + 7] << 8) | b[pos + 8];
    }
    if (m === 0xda) {
      lastSos = pos;
      // Entropy-coded data follows: skip to the next real marker (0xFF not followed by 0x00 or RSTn).
      pos += 2 + len;
      while (
        pos + 1 < b.length &&
        !(b[pos] === 0xff && b[pos + 1] !== 0x00 && (b[pos + 1] < 0xd0 || b[pos + 1] > 0xd7))
      ) {
        pos++;
      }
      continue;
    }
    pos += 2 + len;
  }
  return { components, width, height, lastSos };
}

function hasEoiAfter(b: Uint8Array, from: number): boolean {
  for (let i = b.length - 2; i > from; i--) if (b[i] === 0xff && b[i + 1] === 0xd9) return true;
  return false;
}

function decodeJpeg(bytes: Uint8Array, name: string, maxPixels: number): Image {
  const { components, lastSos, width: w, height: h } = jpegComponents(bytes);
  // jpeg-js decodes a cut-off scan silently (grey blocks), so a missing EOI after the last scan is checked here.
  if (lastSos < 0 || !hasEoiAfter(bytes, lastSos)) throw new ImageError(name, "truncated JPEG");
  checkPixels(name, "JPEG", w, h, maxPixels);
  let decoded: { width: number; height: number; data: Uint8Array };
  try {
    // jpeg-js has its own limits (100 MP, 512 MB); ours above replaces them.
    decoded = jpeg.decode(bytes, {
      useTArray: true,
      formatAsRGBA: false,
      maxResolutionInMP: maxPixels / 1e6 + 1,
      maxMemoryUsageInMB: Math.ceil((maxPixels * 16) / 2 ** 20) + 512,
    });
  } catch (e) {
    throw new ImageError(name, `corrupt JPEG (${(e as Error).message})`);
  }
  const { width, height, data } = decoded;
  const n = width * height;
  const channels = components === 1 ? 1 : 3;
  const out = new Float32Array(n * channels);
  if (channels === 1) { for (let p = 0; p < n; p++) out[p] = data[p * 3] / 255; }
  else for (let i = 0; i < n * 3; i++) out[i] = data[i] / 255;
  return { width, height, channels, bitDepth: 8, format: "jpeg", data: out };
}

/** Decodes PNG or JPEG bytes, detecting the format by its magic bytes; `name` prefixes error messages.
 * Images over `options.maxPixels` (default {@link DEFAULT_MAX_PIXELS}) are refused before decoding. */
export function decodeImage(bytes: Uint8Array, name: string, options: DecodeImageOptions = {}): Image {
  const maxPixels = options.maxPixels ?? DEFAULT_MAX_PIXELS;
  if (isPng(bytes)) return decodePng(bytes, name, maxPixels);
  if (isJpeg(bytes)) return decodeJpeg(bytes, name, maxPixels);
  if (bytes.length === 0) throw new ImageError(name, "empty file");
  throw new ImageError(name, "unsupported image format (expected PNG or JPEG)");
}

/** Reads and decodes a PNG or JPEG file. Throws {@link ImageError} (one line naming `path`) on any failure,
 * including an image over `options.maxPixels` (checked before decoding). */
export async function readImage(path: string, options: DecodeImageOptions = {}): Promise<Image> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new ImageError(path, "file not found");
    if (e instanceof Deno.errors.IsADirectory) throw new ImageError(path, "is a directory");
    throw new ImageError(path, `cannot read (${(e as Error).message})`);
  }
  return decodeImage(bytes, path, options);
}

function checkImage(img: Image): void {
  const { width, height, channels, data } = img;
  if (!(Number.isInteger(width) && Number.isInteger(height) && width > 0 && height > 0)) {
    throw new Error(`bad image size ${width}x${height}`);
  }
  if (![1, 2, 3, 4].includes(channels)) throw new Error(`bad channel count ${channels}`);
  if (data.length !== width * height * channels) {
    throw new Error(`image data has ${data.length} samples, expected ${width * height * channels}`);
  }
}

function quantize(v: number, max: number): number {
  // NaN becomes 0 rather than poisoning the file; values are clamped to [0,1] first.
  const x = v > 0 ? (v < 1 ? v : 1) : 0;
  return Math.round(x * max);
}

/**
 * Encodes an image as PNG (keeps its channels and 8/16-bit depth) or JPEG (8-bit, alpha dropped, gray
 * written as RGB). Samples are clamped to [0,1]. `format` defaults to the image's own format.
 */
export function encodeImage(img: Image, format: "png" | "jpeg" = img.format, quality = 95): Uint8Array {
  checkImage(img);
  const { width, height, channels, data } = img;
  const n = width * height;
  if (format === "jpeg") {
    const rgba = new Uint8Array(n * 4);
    for (let p = 0; p < n; p++) {
      const o = p * channels;
      for (let c = 0; c < 3; c++) rgba[p * 4 + c] = quantize(data[o + (channels < 3 ? 0 : c)], 255);
      rgba[p * 4 + 3] = 255;
    }
    return new Uint8Array(jpeg.encode({ width, height, data: rgba }, quality).data);
  }
  const colorType = ({ 1: 0, 2: 4, 3: 2, 4: 6 } as const)[channels];
  const sixteen = img.bitDepth === 16;
  const max = sixteen ? 65535 : 255;
  const samples = sixteen ? new Uint16Array(data.length) : new Uint8Array(data.length);
  for (let i = 0; i < data.length; i++) samples[i] = quantize(data[i], max);
  const png = new PNG({ width, height });
  png.data = Buffer.from(samples.buffer, samples.byteOffset, samples.byteLength);
  const out = PNG.sync.write(png, {
    colorType,
    inputColorType: colorType,
    inputHasAlpha: channels === 2 || channels === 4,
    bitDepth: sixteen ? 16 : 8,
  } as never);
  return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
}

/** The format implied by a file name's extension, or an {@link ImageError} for any other extension. */
export function formatFromPath(path: string): "png" | "jpeg" {
  const ext = path.toLowerCase().match(/\.([a-z0-9]+)$/)?.[1];
  if (ext === "png") return "png";
  if (ext === "jpg" || ext === "jpeg") return "jpeg";
  throw new ImageError(
    path,
    `unsupported output extension${ext ? ` .${ext}` : ""} (expected .png, .jpg or .jpeg)`,
  );
}

/**
 * Encodes and writes an image atomically (see {@link writeFileAtomic}): the bytes go to `path.tmp-<random>`,
 * are flushed to disk and then renamed over `path`, so readers never see a half-written file. The temp file is removed on failure. `format` defaults
 * to the one implied by the extension.
 */
export async function writeImageAtomic(
  path: string,
  img: Image,
  format?: "png" | "jpeg",
  quality = 95,
): Promise<void> {
  const fmt = format ?? formatFromPath(path);
  let bytes: Uint8Array;
  try {
    bytes = encodeImage(img, fmt, quality);
  } catch (e) {
    if (e instanceof ImageError) throw e;
    throw new ImageError(path, `cannot encode (${(e as Error).message})`);
  }
  try {
    await writeFileAtomic(path, bytes);
  } catch (e) {
    throw new ImageError(path, `cannot write (${(e as Error).message})`);
  }
}

/** Temp files of {@link writeFileAtomic} are named `<target>.tmp-<8 hex digits>`. */
export const TEMP_FILE_PATTERN: RegExp = /\.tmp-[0-9a-f]{8}$/;

/**
 * Writes bytes or text to `path` atomically and durably: a temp file in the same folder
 * (`path.tmp-<8 hex digits>`), flushed to disk with fsync, then renamed over `path`, so neither a crash
 * nor a power loss leaves a half-written or empty file under the final name. The temp file is removed
 * on failure.
 */
export async function writeFileAtomic(path: string, data: Uint8Array | string): Promise<void> {
  const tmp = `${path}.tmp-${crypto.randomUUID().slice(0, 8)}`;
  try {
    const file = await Deno.open(tmp, { write: true, createNew: true });
    try {
      const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
      for (let at = 0; at < bytes.length;) at += await file.write(bytes.subarray(at));
      await file.sync();
    } finally {
      file.close();
    }
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}

/** Planar [3,H,W] RGB in [0,1]: gray is replicated to three channels and alpha is dropped. */
export function toPlanarRgb(img: Image): Float32Array {
  const { width, height, channels, data } = img;
  const n = width * height;
  const out = new Float32Array(3 * n);
  for (let p = 0; p < n; p++) {
    const o = p * channels;
    if (channels < 3) {
      out[p] = out[n + p] = out[2 * n + p] = data[o];
    } else {
      out[p] = data[o];
      out[n + p] = data[o + 1];
      out[2 * n + p] = data[o + 2];
    }
  }
  return out;
}

/**
 * Back from planar [3,H,W] RGB to an image shaped like `like` (channels, depth, format): a gray output is
 * the plain mean of R, G, B (no luminance weights, so a replicated gray round-trips exactly), and alpha is
 * copied from `like`.
 */
export function fromPlanarRgb(planar: Float32Array, like: Image): Image {
  const { width, height, channels } = like;
  const n = width * height;
  if (planar.length !== 3 * n) {
    throw new Error(`fromPlanarRgb: expected ${3 * n} values, got ${planar.length}`);
  }
  const out = new Float32Array(n * channels);
  for (let p = 0; p < n; p++) {
    const o = p * channels;
    if (channels < 3) out[o] = (planar[p] + planar[n + p] + planar[2 * n + p]) / 3;
    else {
      out[o] = planar[p];
      out[o + 1] = planar[n + p];
      out[o + 2] = planar[2 * n + p];
    }
    if (channels === 2 || channels === 4) out[o + channels - 1] = like.data[o + channels - 1];
  }
  return { width, height, channels, bitDepth: like.bitDepth, format: like.format, data: out };
}

/** An 8-bit gray PNG image of a [H*W] mask in [0,1] (a binary mask becomes 0/255). */
export function maskToImage(mask: Float32Array, width: number, height: number): Image {
  if (mask.length !== width * height) {
    throw new Error(`maskToImage: expected ${width * height} values, got ${mask.length}`);
  }
  return { width, height, channels: 1, bitDepth: 8, format: "png", data: Float32Array.from(mask) };
}
