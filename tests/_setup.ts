// Shared test setup: a WebGPU engine on whatever adapter exists (llvmpipe in CI) and comparison helpers.
import { initEngine } from "../engine/device.ts";
import type { Engine } from "../engine/device.ts";
import { randomUniform } from "../bench/reference.ts";

if (!Deno.env.get("XDG_RUNTIME_DIR")) Deno.env.set("XDG_RUNTIME_DIR", "/tmp");

/** The engine shared by all tests in the process. */
export const testEngine: Engine = await initEngine();

/** max |got - want| / max |want| (error relative to the tensor's scale; 0 when both are zero). */
export function relativeError(got: ArrayLike<number>, want: ArrayLike<number>): number {
  if (got.length !== want.length) throw new Error(`length ${got.length} != ${want.length}`);
  let err = 0;
  let scale = 0;
  for (let i = 0; i < want.length; i++) {
    err = Math.max(err, Math.abs(got[i] - want[i]));
    scale = Math.max(scale, Math.abs(want[i]));
  }
  if (Number.isNaN(err) || [...Array.from(got)].some((v) => !Number.isFinite(v))) return Infinity;
  return scale === 0 ? err : err / scale;
}

/** Seeded uniform random numbers in [lo, hi) (the benchmarks' mulberry32 stream). */
export function randomArray(n: number, seed: number, lo = -1, hi = 1): Float32Array {
  return randomUniform(seed, n, lo, hi);
}
