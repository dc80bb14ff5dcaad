/**
 * Standalone runner for the peer benchmarks (TensorFlow.js WebGPU and jax-js WebGPU):
 *
 * ```sh
 * deno run -A bench/peers_main.ts [--repeats N] [--warmup N] [--engines tfjs,jax-js]
 *   [--ops conv2d_fwd,conv2d_fwd_bwd,matmul] [--quick]
 * ```
 *
 * stdout carries exactly one JSON line per {@link BenchRecord}; the libraries' console output and the
 * final timing summary go to stderr. `--quick` shrinks the problems (conv 32x32, matmul 256³) for a
 * fast smoke test.
 *
 * @module
 */

import {
  type BenchRecord,
  PEER_ENGINES,
  PEER_OPS,
  type PeerBenchOptions,
  type PeerEngine,
  type PeerOp,
  runPeerBenchmarks,
} from "./peers.ts";
import { BENCH_CONV } from "./reference.ts";

function parseArgs(args: string[]): PeerBenchOptions {
  const opts: PeerBenchOptions = {};
  const value = (i: number): string => {
    const v = args[i + 1];
    if (v === undefined) throw new Error(`missing value for ${args[i]}`);
    return v;
  };
  const list = <T extends string>(v: string, allowed: readonly T[], what: string): T[] =>
    v.split(",").map((s) => {
      if (!(allowed as readonly string[]).includes(s)) {
        throw new Error(`unknown ${what} '${s}' (expected ${allowed})`);
      }
      return s as T;
    });
  for (let i = 0; i < args.length; i++) {
    switch (args[i]) {
      case "--repeats":
        opts.repeats = Number(value(i++));
        break;
      case "--warmup":
        opts.warmup = Number(value(i++));
        break;
      case "--engines":
        opts.engines = list<PeerEngine>(value(i++), PEER_ENGINES, "engine");
        break;
      case "--ops":
        opts.ops = list<PeerOp>(value(i++), PEER_OPS, "op");
        break;
      case "--quick":
        opts.conv = { ...BENCH_CONV, h: 32, w: 32 };
        opts.matmul = { m: 256, n: 256, k: 256 };
        break;
      default:
        throw new Error(`unknown argument '${args[i]}'`);
    }
  }
  return opts;
}

if (import.meta.main) {
  const encoder = new TextEncoder();
  const t0 = performance.now();
  const records: BenchRecord[] = await runPeerBenchmarks({
    ...parseArgs(Deno.args),
    log: (rec) => {
      const bytes = encoder.encode(JSON.stringify(rec) + "\n");
      for (let off = 0; off < bytes.length;) off += Deno.stdout.writeSync(bytes.subarray(off));
    },
  });
  const secs = ((performance.now() - t0) / 1000).toFixed(1);
  console.error(
    `peers: ${records.length} records, ${records.filter((r) => r.correct).length} correct, ${secs} s`,
  );
  // WebGPU devices held by the libraries can keep the event loop alive.
  Deno.exit(0);
}
