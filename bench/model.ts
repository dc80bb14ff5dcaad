/**
 * SPAIR forward latency per preset (NetL + mask compaction + NetR, inference mode) at a given size.
 *
 * @module
 */

import * as ops from "../mod.ts";
import { type Preset, SpairModel } from "../layers/spair.ts";
import type { BenchRecord } from "./peers.ts";

/** Median forward latency of each preset at `size` x `size` (after one warm-up run that compiles kernels). */
export async function benchModel(
  presets: Preset[] = ["tiny", "small", "base"],
  size = 512,
  repeats = 3,
  log?: (r: BenchRecord) => void,
): Promise<BenchRecord[]> {
  const out: BenchRecord[] = [];
  for (const preset of presets) {
    const model = new SpairModel({ preset, variant: "SPAIR" }, 1);
    const x = ops.tensor(new ops.Rng(2).uniformArray(3 * size * size), [1, 3, size, size]);
    const times: number[] = [];
    let density = 0;
    for (let i = 0; i <= repeats; i++) {
      const t0 = performance.now();
      const r = ops.noGrad(() => model.forward(x));
      await ops.engine().sync();
      if (i > 0) times.push(performance.now() - t0);
      else density = (await r.mask.data()).reduce((s, v) => s + v, 0) / (size * size);
      ops.dispose([r.restored, r.mask, r.logits]);
    }
    times.sort((a, b) => a - b);
    const record: BenchRecord = {
      suite: "model",
      engine: "spair-gpu",
      adapter: ops.engine().adapterDescription,
      op: `spair_${preset}_forward`,
      shape: `1x3x${size}x${size}`,
      medianMs: +times[times.length >> 1].toFixed(1),
      minMs: +times[0].toFixed(1),
      maxMs: +times[times.length - 1].toFixed(1),
      gflops: NaN,
      correct: true,
      maxRelError: 0,
      note:
        `untrained weights; mask density ${
          (density * 100).toFixed(1)
        }%; params NetL ${model.netL.parameterCount()} ` +
        `NetR ${model.netR.parameterCount()}`,
    };
    log?.(record);
    out.push(record);
    ops.dispose([x, model.parameters()]);
  }
  return out;
}
