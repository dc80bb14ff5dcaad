/**
 * The `profile` suite: where one NetR training step and one NetL + NetR forward spend their GPU time, by
 * kernel family (conv, gemm, element-wise, copy, sparse, SNL, SFM, optimizer, other). Every dispatch runs in
 * its own timestamped compute pass ({@link ops.Engine.startProfile}), so the totals are GPU time, and the
 * dispatch counts are exact. The step is the train suite's (tiny preset, batch 8, 64x64, NetL frozen, L1,
 * Adam); the forward runs at 256x256 with a 10% block mask.
 *
 * @module
 */

import * as ops from "../mod.ts";
import type { Preset } from "../layers/spair.ts";
import { blockMask, syntheticGuidance } from "./model.ts";
import { randomUniform } from "./reference.ts";

/** Kernel families of the profile, in print order. */
export const FAMILIES = [
  "conv",
  "gemm",
  "element-wise",
  "copy",
  "sparse",
  "SNL",
  "SFM",
  "optimizer",
  "other",
] as const;
/** A kernel family. */
export type Family = typeof FAMILIES[number];

/** The family of a kernel, from its cache key's prefix. */
export function kernelFamily(key: string): Family {
  if (/^(conv|conv2d)-/.test(key)) return "conv";
  if (/^(gemm|matmul|pack-k)/.test(key)) return "gemm";
  if (/^sfm/.test(key)) return "SFM";
  if (/^snl/.test(key)) return "SNL";
  if (/^(sparse|compact)/.test(key)) return "sparse";
  if (/^optim/.test(key)) return "optimizer";
  if (/^(ew|reduce|fill)/.test(key)) return "element-wise";
  if (/^(gather|scatter)/.test(key)) return "copy";
  return "other";
}

/** One family's share of a profiled run. */
export interface FamilyProfile {
  family: Family;
  dispatches: number;
  gpuMs: number;
}

/** A profiled piece of work: its families, totals and the slowest kernels. */
export interface ProfileResult {
  name: string;
  families: FamilyProfile[];
  dispatches: number;
  gpuMs: number;
  wallMs: number;
  /** The kernels with the most GPU time: key, dispatches, ms. */
  top: { key: string; dispatches: number; gpuMs: number }[];
}

async function profileRun(name: string, fn: () => void | Promise<void>): Promise<ProfileResult> {
  const e = ops.engine();
  await fn(); // compile and warm up
  await e.sync();
  if (!e.startProfile()) throw new Error(`${e.adapterDescription} has no timestamp queries`);
  const start = performance.now();
  await fn();
  await e.sync();
  const wallMs = performance.now() - start;
  const dispatches = await e.stopProfile();
  const byFamily = new Map<Family, FamilyProfile>(
    FAMILIES.map((family) => [family, { family, dispatches: 0, gpuMs: 0 }]),
  );
  const byKey = new Map<string, { key: string; dispatches: number; gpuMs: number }>();
  for (const d of dispatches) {
    const f = byFamily.get(kernelFamily(d.key))!;
    f.dispatches++;
    f.gpuMs += d.ms;
    const k = byKey.get(d.key) ?? { key: d.key, dispatches: 0, gpuMs: 0 };
    k.dispatches++;
    k.gpuMs += d.ms;
    byKey.set(d.key, k);
  }
  const families = [...byFamily.values()];
  return {
    name,
    families,
    dispatches: dispatches.length,
    gpuMs: families.reduce((s, f) => s + f.gpuMs, 0),
    wallMs,
    top: [...byKey.values()].sort((a, b) => b.gpuMs - a.gpuMs).slice(0, 12),
  };
}

/** Options of {@link benchProfile}. */
export interface ProfileOptions {
  preset?: Preset;
  /** Training step: batch and crop size (default 8 and 64). */
  batch?: number;
  size?: number;
  /** Forward image size (default 256). */
  forwardSize?: number;
}

/** Profiles one NetR training step and one NetL + NetR forward. */
export async function benchProfile(opts: ProfileOptions = {}): Promise<ProfileResult[]> {
  const preset = opts.preset ?? "tiny";
  const batch = opts.batch ?? 8, size = opts.size ?? 64, fsize = opts.forwardSize ?? 256;
  const model = new ops.SpairModel({ preset, variant: "SPAIR" }, 1);
  const results: ProfileResult[] = [];
  {
    const x = ops.keep(ops.tensor(randomUniform(3, batch * 3 * size * size, 0, 1), [batch, 3, size, size]));
    const target = ops.keep(ops.tensor(randomUniform(4, batch * 3 * size * size, 0, 1), x.shape));
    const mask = blockMask(batch, size, size, 0.1);
    const optimizer = new ops.Adam(model.netR.parameters(), { lr: 1e-4 });
    const step = () => {
      ops.tidy(() => {
        const g = syntheticGuidance(model, x, mask);
        optimizer.zeroGrad();
        const l = ops.l1Loss(model.netR.forward(x, g), target);
        ops.backward(l);
        optimizer.step();
        ops.disposeGuidance(g);
      });
    };
    results.push(await profileRun(`NetR training step (${preset}, ${batch}x3x${size}x${size})`, step));
    optimizer.zeroGrad();
    optimizer.dispose();
    ops.dispose([x, target]);
  }
  {
    const x = ops.keep(ops.tensor(randomUniform(2, 3 * fsize * fsize, 0, 1), [1, 3, fsize, fsize]));
    const mask = blockMask(1, fsize, fsize, 0.1);
    const forward = () => {
      ops.tidy(() =>
        ops.noGrad(() => {
          const g = syntheticGuidance(model, x, mask);
          model.netR.forward(x, g);
          ops.disposeGuidance(g);
        })
      );
    };
    results.push(
      await profileRun(`NetL + NetR forward (${preset}, 1x3x${fsize}x${fsize}, 10% mask)`, forward),
    );
    x.dispose();
  }
  ops.dispose(model.parameters());
  return results;
}

/** Markdown tables of profile results. */
export function profileMarkdown(results: ProfileResult[]): string {
  const lines: string[] = [];
  for (const r of results) {
    lines.push(`### ${r.name}`, "");
    lines.push(
      `wall ${r.wallMs.toFixed(0)} ms (profiled: one pass per dispatch); GPU ${
        r.gpuMs.toFixed(1)
      } ms; ${r.dispatches} dispatches`,
      "",
    );
    lines.push("| family | dispatches | GPU ms | share |", "| --- | ---: | ---: | ---: |");
    for (const f of r.families) {
      if (f.dispatches === 0) continue;
      lines.push(
        `| ${f.family} | ${f.dispatches} | ${f.gpuMs.toFixed(1)} | ${
          (100 * f.gpuMs / r.gpuMs).toFixed(1)
        }% |`,
      );
    }
    lines.push("", "| kernel | dispatches | GPU ms |", "| --- | ---: | ---: |");
    for (const k of r.top) lines.push(`| \`${k.key}\` | ${k.dispatches} | ${k.gpuMs.toFixed(1)} |`);
    lines.push("");
  }
  return lines.join("\n");
}
