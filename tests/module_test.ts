// Named parameters, state dicts and the safetensors format.
import assert from "node:assert/strict";
import "./_setup.ts";
import * as ops from "../mod.ts";
import { TinyNet } from "../train/demo.ts";

Deno.test("safetensors: byte layout follows the spec (u64 header length, 8-aligned JSON header, F32 data)", async () => {
  const bytes = ops.encodeSafetensors({
    b: { shape: [2], data: new Float32Array([1.5, -2]) },
    a: { shape: [1, 1], data: new Float32Array([3]) },
  }, { format: "pt" });
  const view = new DataView(bytes.buffer);
  const n = Number(view.getBigUint64(0, true));
  assert.equal((8 + n) % 8, 0);
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n)));
  assert.deepEqual(header.a, { dtype: "F32", shape: [1, 1], data_offsets: [0, 4] });
  assert.deepEqual(header.b, { dtype: "F32", shape: [2], data_offsets: [4, 12] });
  // The data section's SHA-256 travels in the metadata (checked on load).
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes.slice(8 + n)));
  const hex = [...digest].map((v) => v.toString(16).padStart(2, "0")).join("");
  assert.deepEqual(header.__metadata__, { format: "pt", data_sha256: hex });
  assert.equal(bytes.length, 8 + n + 12);
  assert.equal(view.getFloat32(8 + n, true), 3);
  assert.equal(view.getFloat32(8 + n + 8, true), -2);
});

Deno.test("safetensors: decodes F16, BF16 and F64 tensors written by other tools", () => {
  const header = JSON.stringify({
    h: { dtype: "F16", shape: [3], data_offsets: [0, 6] },
    bf: { dtype: "BF16", shape: [2], data_offsets: [6, 10] },
    d: { dtype: "F64", shape: [1], data_offsets: [10, 18] },
  });
  const hb = new TextEncoder().encode(header);
  const bytes = new Uint8Array(8 + hb.length + 18);
  const view = new DataView(bytes.buffer);
  view.setBigUint64(0, BigInt(hb.length), true);
  bytes.set(hb, 8);
  const base = 8 + hb.length;
  [0x3c00, 0xc000, 0x3555].forEach((v, i) => view.setUint16(base + 2 * i, v, true)); // 1, -2, ~0.33325
  [0x3f80, 0x4049].forEach((v, i) => view.setUint16(base + 6 + 2 * i, v, true)); // 1, ~3.140625
  view.setFloat64(base + 10, 0.1, true);
  const { tensors } = ops.decodeSafetensors(bytes);
  assert.deepEqual([...tensors.h.data].map((v) => +v.toFixed(5)), [1, -2, 0.33325]);
  assert.deepEqual([...tensors.bf.data], [1, 3.140625]);
  assert.equal(tensors.d.data[0], Math.fround(0.1));
});

Deno.test("safetensors: malformed files give one-line errors", () => {
  assert.throws(() => ops.decodeSafetensors(new Uint8Array(3)), /shorter than 8 bytes/);
  const good = ops.encodeSafetensors({ a: { shape: [4], data: new Float32Array(4) } });
  assert.throws(() => ops.decodeSafetensors(good.subarray(0, good.length - 2)), /a is truncated/);
  const garbage = new Uint8Array(16);
  new DataView(garbage.buffer).setBigUint64(0, 4n, true);
  assert.throws(() => ops.decodeSafetensors(garbage), /header is not JSON/);
});

Deno.test("module: save and load round-trip parameters by name; mismatches are reported by name", async () => {
  const a = new TinyNet(new ops.Rng(1));
  const b = new TinyNet(new ops.Rng(2));
  assert.deepEqual([...a.namedParameters().keys()], ["w1", "b1", "w2", "b2", "w3", "b3"]);
  assert.equal(a.parameterCount(), 8 * 27 + 8 + 8 * 72 + 8 + 3 * 144 + 3);
  assert.notDeepEqual(await b.w2.data(), await a.w2.data());
  const meta = b.loadSafetensors(await a.saveSafetensors({ preset: "tiny" }));
  assert.equal(meta.preset, "tiny");
  for (const [name, p] of a.namedParameters()) {
    assert.deepEqual(await b.namedParameters().get(name)!.data(), await p.data(), name);
  }
  const wide = new TinyNet(new ops.Rng(3), 4);
  assert.throws(
    () => wide.loadSafetensors(ops.encodeSafetensors({}), "x.safetensors"),
    /x.safetensors does not fit this model: missing w1, b1, w2, \.\.\./,
  );
  const bytes = await a.saveSafetensors();
  assert.throws(
    () => wide.loadSafetensors(bytes, "a.safetensors"),
    /w1 is \[8,3,3,3\], model expects \[4,3,3,3\]/,
  );
  for (const net of [a, b, wide]) ops.dispose(net.parameters());
});
