/**
 * Where a warm `deno task restore samples/rain.png` spends its time: the phases of one restore (engine,
 * weights, image, pipeline creation, first and second run), each with its wall time and the page faults it
 * took (from /proc/self/stat, Linux only), then the pipeline creation split into `createShaderModule` and
 * `createComputePipelineAsync`. Run it twice: the first run may fill the shader cache.
 *
 * Usage: deno run -A bench/restore_phases.ts
 *
 * @module
 */

import * as ops from "../mod.ts";
import { precompileRestore } from "../restore/restore.ts";
import { readImage, toPlanarRgb } from "../train/image_io.ts";

const faults = (): number => {
  try {
    return Number(Deno.readTextFileSync("/proc/self/stat").split(") ")[1].split(" ")[7]);
  } catch {
    return NaN;
  }
};
const start = performance.now();
let last = { ms: start, faults: faults() };
const lap = (phase: string) => {
  const now = { ms: performance.now(), faults: faults() };
  const f = now.faults - last.faults;
  console.log(
    `${phase.padEnd(22)} ${(now.ms - last.ms).toFixed(0).padStart(6)} ms  ${
      String(f).padStart(7)
    } page faults` +
      ` (${(f * 4 / 1024).toFixed(0)} MB of 4 KB pages)`,
  );
  last = now;
};

const e = await ops.initEngine();
lap("engine");
const root = new URL("..", import.meta.url).pathname;
const { model } = ops.loadModel(Deno.readFileSync(`${root}weights/rain.safetensors`), "rain");
lap("weights");
const image = await readImage(`${root}samples/rain.png`);
const planar = toPlanarRgb(image);
const [W, H] = [image.width, image.height];
lap("image");

// The pipelines precompileRestore asks for, kept for the split below.
let requests: ops.PipelineRequest[] = [];
const compile = e.compilePipelines.bind(e);
e.compilePipelines = (list, onProgress) => compile(requests = list, onProgress);
await precompileRestore(model, W, H);
lap("precompileRestore");
for (const run of ["first run", "second run"]) {
  await ops.restorePlanar(model, planar, W, H);
  lap(run);
}

// The same pipelines created again, timed per WebGPU call (after the restores: not to change what they see).

let moduleMs = 0, pipelineMs = 0, codeBytes = 0;
for (const { kernel } of requests) {
  codeBytes += kernel.code.length;
  const t0 = performance.now();
  const module = e.device.createShaderModule({ code: kernel.code });
  const t1 = performance.now();
  await e.device.createComputePipelineAsync({ layout: "auto", compute: { module, entryPoint: "main" } });
  moduleMs += t1 - t0;
  pipelineMs += performance.now() - t1;
}
lap("pipelines again");
console.log(
  `${e.adapterDescription}: ${requests.length} pipelines, ${(codeBytes / 1024).toFixed(0)} KB of WGSL; ` +
    `createShaderModule ${moduleMs.toFixed(0)} ms, createComputePipelineAsync ${pipelineMs.toFixed(0)} ms ` +
    `(created again, after the restores)`,
);
console.log(`total ${((performance.now() - start) / 1000).toFixed(2)} s`);
