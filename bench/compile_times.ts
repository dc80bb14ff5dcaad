/**
 * Per-pipeline compile times of one restore (bundled rain model, 384x256), one pipeline at a time on this
 * thread (no helpers), slowest first, with each kernel's WGSL size. Run it on an empty shader cache to see
 * cold costs: `MESA_SHADER_CACHE_DIR=$(mktemp -d) deno run -A bench/compile_times.ts [threads]`; with a
 * thread count it compiles the batch as `deno task restore` does and prints only the total.
 *
 * @module
 */

import * as ops from "../mod.ts";

const e = await ops.initEngine();
const threads = Deno.args[0] ? Number(Deno.args[0]) : 1;
const { model } = ops.loadModel(
  Deno.readFileSync(new URL("../weights/rain.safetensors", import.meta.url)),
  "rain",
);
const [W, H] = [384, 256];
const requests = e.collectPipelines(() =>
  ops.noGrad(() =>
    ops.tidy(() => {
      const x = ops.tensor(new Float32Array(3 * H * W), [1, 3, H, W]);
      model.netR.forward(x, model.guidance(x));
    })
  )
);
const size = new Map(requests.map((r) => [r.kernel.key, r.kernel.code.length]));
const rows: { key: string; ms: number }[] = [];
e.onPipelineCompile = ({ key, ms }) => rows.push({ key, ms });
e.compileThreads = threads;
const start = performance.now();
if (threads > 1) await e.compilePipelines(requests);
else for (const r of requests) await e.compilePipelines([r]);
const total = performance.now() - start;
console.log(
  `${e.adapterDescription}: ${requests.length} pipelines in ${
    (total / 1000).toFixed(1)
  } s on ${threads} thread(s)`,
);
if (threads === 1) {
  console.log("    ms  WGSL chars  kernel|bindings");
  for (const { key, ms } of rows.sort((a, b) => b.ms - a.ms)) {
    console.log(
      `${ms.toFixed(0).padStart(6)}  ${String(size.get(key.split("|")[0]) ?? "?").padStart(10)}  ${key}`,
    );
  }
}
