// Engine plumbing: texture-bound plan inputs and batching.
import assert from "node:assert/strict";
import { randomArray, testEngine } from "./_setup.ts";
import * as ops from "../mod.ts";
import { TEXTURE_WIDTH } from "../engine/device.ts";
import { foldWorkgroups } from "../wgsl/plan.ts";

Deno.test("a plan input bound as a texture reads the same values as the buffer (partial last row)", async () => {
  const n = TEXTURE_WIDTH * 4 * 3 + 4 * 37 + 2; // three full texture rows, a partial row, a partial texel
  const data = randomArray(n, 5);
  const x = ops.tensor(data, [n]);
  const out = ops.Tensor.empty([n]);
  const code = `struct P { n: u32 }
@group(0) @binding(0) var<uniform> u: P;
@group(0) @binding(1) var src: texture_2d<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = (wg.x + wg.y * nwg.x) * 64u + lid;
  if (i >= u.n) { return; }
  let texel = i / 4u;
  dst[i] = textureLoad(src, vec2<u32>(texel % ${TEXTURE_WIDTH}u, texel / ${TEXTURE_WIDTH}u), 0)[i % 4u];
}`;
  testEngine.runPlan(
    {
      outSize: n,
      scratch: {},
      steps: [{
        kernel: { key: "test:texture-copy", code },
        uniforms: new Uint32Array([n, 0, 0, 0]).buffer,
        buffers: ["x", "out"],
        writes: ["out"],
        textures: ["x"],
        workgroups: foldWorkgroups(Math.ceil(n / 64)),
      }],
    },
    { x: x.buffer, out: out.buffer },
    { x: n },
  );
  assert.deepEqual(await out.data(), data);
  ops.dispose([x, out]);
});
