/**
 * The safetensors file format (8-byte little-endian header length, JSON header, raw little-endian data),
 * so weights interoperate with the PyTorch ecosystem. Reads F32, F16, BF16 and F64 (converted to float32);
 * writes F32.
 *
 * Integrity: files written here carry the SHA-256 of their tensor data in the metadata (key
 * {@link CHECKSUM_KEY}); reading checks it when present (files from elsewhere have none) and refuses
 * non-finite values (NaN or Inf weights restore black images), so damage is caught at load, not at use.
 *
 * @module
 */

/** A CPU-side tensor: shape and float32 data. */
export interface HostTensor {
  /** Dimensions, outermost first. */
  shape: number[];
  /** Row-major values; length is the product of `shape`. */
  data: Float32Array;
}

/** Metadata key holding the hex SHA-256 of a file's tensor data (everything after the header). */
export const CHECKSUM_KEY = "data_sha256";

const SHA256_K = new Uint32Array([
  0x428a2f98,
  0x71374491,
  0xb5c0fbcf,
  0xe9b5dba5,
  0x3956c25b,
  0x59f111f1,
  0x923f82a4,
  0xab1c5ed5,
  0xd807aa98,
  0x12835b01,
  0x243185be,
  0x550c7dc3,
  0x72be5d74,
  0x80deb1fe,
  0x9bdc06a7,
  0xc19bf174,
  0xe49b69c1,
  0xefbe4786,
  0x0fc19dc6,
  0x240ca1cc,
  0x2de92c6f,
  0x4a7484aa,
  0x5cb0a9dc,
  0x76f988da,
  0x983e5152,
  0xa831c66d,
  0xb00327c8,
  0xbf597fc7,
  0xc6e00bf3,
  0xd5a79147,
  0x06ca6351,
  0x14292967,
  0x27b70a85,
  0x2e1b2138,
  0x4d2c6dfc,
  0x53380d13,
  0x650a7354,
  0x766a0abb,
  0x81c2c92e,
  0x92722c85,
  0xa2bfe8a1,
  0xa81a664b,
  0xc24b8b70,
  0xc76c51a3,
  0xd192e819,
  0xd6990624,
  0xf40e3585,
  0x106aa070,
  0x19a4c116,
  0x1e376c08,
  0x2748774c,
  0x34b0bcb5,
  0x391c0cb3,
  0x4ed8aa4a,
  0x5b9cca4f,
  0x682e6ff3,
  0x748f82ee,
  0x78a5636f,
  0x84c87814,
  0x8cc70208,
  0x90befffa,
  0xa4506ceb,
  0xbef9a3f7,
  0xc67178f2,
]);

/** SHA-256 of `bytes` as 64 hex digits (synchronous, so that encode and decode stay synchronous and run
 * in the browser as well). */
export function sha256Hex(bytes: Uint8Array): string {
  const h = new Uint32Array([
    0x6a09e667,
    0xbb67ae85,
    0x3c6ef372,
    0xa54ff53a,
    0x510e527f,
    0x9b05688c,
    0x1f83d9ab,
    0x5be0cd19,
  ]);
  const w = new Uint32Array(64);
  const full = bytes.length - (bytes.length % 64);
  // The tail: the last partial block, the 0x80 marker and the bit length, padded to whole blocks.
  const tail = new Uint8Array((bytes.length % 64) + 9 <= 64 ? 64 : 128);
  tail.set(bytes.subarray(full));
  tail[bytes.length - full] = 0x80;
  const tailView = new DataView(tail.buffer);
  tailView.setUint32(tail.length - 8, Math.floor(bytes.length / 0x20000000));
  tailView.setUint32(tail.length - 4, (bytes.length * 8) >>> 0);
  const block = (src: Uint8Array, at: number) => {
    for (let i = 0; i < 16; i++) {
      const o = at + i * 4;
      w[i] = (src[o] << 24) | (src[o + 1] << 16) | (src[o + 2] << 8) | src[o + 3];
    }
    for (let i = 16; i < 64; i++) {
      const a = w[i - 15], b = w[i - 2];
      const s0 = ((a >>> 7) | (a << 25)) ^ ((a >>> 18) | (a << 14)) ^ (a >>> 3);
      const s1 = ((b >>> 17) | (b << 15)) ^ ((b >>> 19) | (b << 13)) ^ (b >>> 10);
      w[i] = (w[i - 16] + s0 + w[i - 7] + s1) | 0;
    }
    let a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (let i = 0; i < 64; i++) {
      const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
      const t1 = (k + S1 + ((e & f) ^ (~e & g)) + SHA256_K[i] + w[i]) | 0;
      const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
      const t2 = (S0 + ((a & b) ^ (a & c) ^ (b & c))) | 0;
      k = g, g = f, f = e, e = (d + t1) | 0, d = c, c = b, b = a, a = (t1 + t2) | 0;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += k;
  };
  for (let at = 0; at < full; at += 64) block(bytes, at);
  for (let at = 0; at < tail.length; at += 64) block(tail, at);
  return [...h].map((v) => v.toString(16).padStart(8, "0")).join("");
}

/** Serializes named tensors (and optional string metadata) to safetensors bytes; the metadata gains the
 * SHA-256 of the tensor data under {@link CHECKSUM_KEY}. */
export function encodeSafetensors(
  tensors: Record<string, HostTensor>,
  metadata: Record<string, string> = {},
): Uint8Array {
  let offset = 0;
  const names = Object.keys(tensors).sort();
  const entries: Record<string, unknown> = {};
  for (const name of names) {
    const t = tensors[name];
    const expected = t.shape.reduce((p, d) => p * d, 1);
    if (expected !== t.data.length) {
      throw new Error(`safetensors: ${name} has ${t.data.length} values for [${t.shape}]`);
    }
    entries[name] = { dtype: "F32", shape: t.shape, data_offsets: [offset, offset + t.data.byteLength] };
    offset += t.data.byteLength;
  }
  const data = new Uint8Array(offset);
  let at = 0;
  for (const name of names) {
    const d = tensors[name].data;
    data.set(new Uint8Array(d.buffer, d.byteOffset, d.byteLength), at);
    at += d.byteLength;
  }
  const header = { __metadata__: { ...metadata, [CHECKSUM_KEY]: sha256Hex(data) }, ...entries };
  let json = JSON.stringify(header);
  json += " ".repeat((8 - ((json.length + 8) % 8)) % 8);
  const headerBytes = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + headerBytes.length + offset);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, BigInt(headerBytes.length), true);
  out.set(headerBytes, 8);
  out.set(data, 8 + headerBytes.length);
  return out;
}

function f16ToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >> 10) & 0x1f;
  const fraction = h & 0x3ff;
  if (exponent === 0) return sign * 2 ** -14 * (fraction / 1024);
  if (exponent === 31) return fraction ? NaN : sign * Infinity;
  return sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
}

/** Options of {@link decodeSafetensors}. */
export interface DecodeOptions {
  /** Accept NaN and Inf values (default false: a tensor holding one is an error). */
  allowNonFinite?: boolean;
}

/** Parses safetensors bytes. Throws a one-line error describing what is wrong with a malformed file: bad
 * structure, a checksum that does not match the data (see {@link CHECKSUM_KEY}), or a non-finite value.
 * The returned metadata omits the checksum. */
export function decodeSafetensors(bytes: Uint8Array, options: DecodeOptions = {}): {
  tensors: Record<string, HostTensor>;
  metadata: Record<string, string>;
} {
  if (bytes.length < 8) throw new Error("not a safetensors file (shorter than 8 bytes)");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLength = Number(view.getBigUint64(0, true));
  if (headerLength > bytes.length - 8 || headerLength > 100_000_000) {
    throw new Error("not a safetensors file (header length out of range)");
  }
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLength)));
  } catch {
    throw new Error("not a safetensors file (header is not JSON)");
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) {
    throw new Error("not a safetensors file (header is not a JSON object)");
  }
  const base = 8 + headerLength;
  const tensors: Record<string, HostTensor> = {};
  let metadata: Record<string, string> = {};
  const raw = header.__metadata__;
  if (raw !== undefined) {
    if (typeof raw !== "object" || raw === null || Object.values(raw).some((v) => typeof v !== "string")) {
      throw new Error("safetensors: __metadata__ is not a map of strings");
    }
    metadata = { ...(raw as Record<string, string>) };
  }
  const checksum = metadata[CHECKSUM_KEY];
  delete metadata[CHECKSUM_KEY];
  // Errors in order of how much they explain: a malformed or truncated entry, then damaged data (checksum),
  // then non-finite values (which damage could also cause).
  let nonFinite: string | null = null;
  for (const [name, value] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const entry = value as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    const shape = entry?.shape, offsets = entry?.data_offsets;
    const isCount = (v: unknown) => Number.isSafeInteger(v) && (v as number) >= 0;
    if (
      !Array.isArray(shape) || !shape.every(isCount) || !Array.isArray(offsets) || offsets.length !== 2 ||
      !offsets.every(isCount)
    ) {
      throw new Error(`safetensors: tensor ${name} has a malformed header entry`);
    }
    const [begin, end] = offsets as [number, number];
    const count = (shape as number[]).reduce((p, d) => p * d, 1);
    const dtype = entry.dtype as string;
    const width = ({ F32: 4, F16: 2, BF16: 2, F64: 8 } as Record<string, number>)[dtype];
    if (!width) throw new Error(`safetensors: tensor ${name} has unsupported dtype ${dtype}`);
    if (end - begin !== count * width || base + end > bytes.length || begin < 0) {
      throw new Error(`safetensors: tensor ${name} is truncated or its offsets do not match its shape`);
    }
    const data = new Float32Array(count);
    const at = bytes.byteOffset + base + begin;
    const dv = new DataView(bytes.buffer, at, end - begin);
    for (let i = 0; i < count; i++) {
      data[i] = dtype === "F32"
        ? dv.getFloat32(i * 4, true)
        : dtype === "F64"
        ? dv.getFloat64(i * 8, true)
        : dtype === "F16"
        ? f16ToF32(dv.getUint16(i * 2, true))
        : new Float32Array(new Uint32Array([dv.getUint16(i * 2, true) << 16]).buffer)[0];
    }
    if (!options.allowNonFinite && nonFinite === null) {
      const bad = data.findIndex((v) => !Number.isFinite(v));
      if (bad >= 0) {
        nonFinite = `safetensors: tensor ${name} holds ${data[bad]} at index ${bad} (weights must be finite)`;
      }
    }
    tensors[name] = { shape: shape as number[], data };
  }
  if (checksum !== undefined && sha256Hex(bytes.subarray(base)) !== checksum) {
    throw new Error("checksum mismatch: the tensor data is damaged (SHA-256 differs from the one stored)");
  }
  if (nonFinite) throw new Error(nonFinite);
  return { tensors, metadata };
}
