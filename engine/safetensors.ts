/**
 * The safetensors file format (8-byte little-endian header length, JSON header, raw little-endian data),
 * so weights interoperate with the PyTorch ecosystem. Reads F32, F16, BF16 and F64 (converted to float32);
 * writes F32.
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

/** Serializes named tensors (and optional string metadata) to safetensors bytes. */
export function encodeSafetensors(
  tensors: Record<string, HostTensor>,
  metadata: Record<string, string> = {},
): Uint8Array {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length > 0) header.__metadata__ = metadata;
  let offset = 0;
  const names = Object.keys(tensors).sort();
  for (const name of names) {
    const t = tensors[name];
    const expected = t.shape.reduce((p, d) => p * d, 1);
    if (expected !== t.data.length) {
      throw new Error(`safetensors: ${name} has ${t.data.length} values for [${t.shape}]`);
    }
    header[name] = { dtype: "F32", shape: t.shape, data_offsets: [offset, offset + t.data.byteLength] };
    offset += t.data.byteLength;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - ((json.length + 8) % 8)) % 8);
  const headerBytes = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + headerBytes.length + offset);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, BigInt(headerBytes.length), true);
  out.set(headerBytes, 8);
  let at = 8 + headerBytes.length;
  for (const name of names) {
    const d = tensors[name].data;
    out.set(new Uint8Array(d.buffer, d.byteOffset, d.byteLength), at);
    at += d.byteLength;
  }
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

/** Parses safetensors bytes. Throws a one-line error describing what is wrong with a malformed file. */
export function decodeSafetensors(bytes: Uint8Array): {
  tensors: Record<string, HostTensor>;
  metadata: Record<string, string>;
} {
  if (bytes.length < 8) throw new Error("not a safetensors file (shorter than 8 bytes)");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLength = Number(view.getBigUint64(0, true));
  if (headerLength > bytes.length - 8 || headerLength > 100_000_000) {
    throw new Error("not a safetensors file (header length out of range)");
  }
  let header: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  try {
    header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLength)));
  } catch {
    throw new Error("not a safetensors file (header is not JSON)");
  }
  const base = 8 + headerLength;
  const tensors: Record<string, HostTensor> = {};
  let metadata: Record<string, string> = {};
  for (const [name, entry] of Object.entries(header)) {
    if (name === "__metadata__") {
      metadata = entry as unknown as Record<string, string>;
      continue;
    }
    const [begin, end] = entry.data_offsets;
    const count = entry.shape.reduce((p, d) => p * d, 1);
    const width = { F32: 4, F16: 2, BF16: 2, F64: 8 }[entry.dtype];
    if (!width) throw new Error(`safetensors: tensor ${name} has unsupported dtype ${entry.dtype}`);
    if (end - begin !== count * width || base + end > bytes.length || begin < 0) {
      throw new Error(`safetensors: tensor ${name} is truncated or its offsets do not match its shape`);
    }
    const data = new Float32Array(count);
    const at = bytes.byteOffset + base + begin;
    const dv = new DataView(bytes.buffer, at, end - begin);
    for (let i = 0; i < count; i++) {
      data[i] = entry.dtype === "F32"
        ? dv.getFloat32(i * 4, true)
        : entry.dtype === "F64"
        ? dv.getFloat64(i * 8, true)
        : entry.dtype === "F16"
        ? f16ToF32(dv.getUint16(i * 2, true))
        : new Float32Array(new Uint32Array([dv.getUint16(i * 2, true) << 16]).buffer)[0];
    }
    tensors[name] = { shape: entry.shape, data };
  }
  return { tensors, metadata };
}
