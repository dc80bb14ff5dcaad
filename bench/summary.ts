/**
 * Markdown summary of one benchmark run: the engine against the peer libraries on the shared workloads
 * (same process, same adapter), then the kernels, model and train tables.
 *
 * @module
 */

import type { BenchRecord } from "./peers.ts";
import type { EnvRecord } from "./env.ts";

/** Header of the engine-vs-peers table (tests look for it). */
export const COMPARISON_HEADER = "| workload | spair-gpu |";

const WORKLOADS: [string, string][] = [
  ["conv2d_fwd", "conv2d forward"],
  ["conv2d_fwd_bwd", "conv2d forward + input grad + weight grad"],
  ["matmul", "matmul"],
];

/** `1,234 ms` / `12.3 ms` / `0.123 ms`. */
export function formatMs(ms: number | undefined | null): string {
  if (ms === undefined || ms === null || !Number.isFinite(ms)) return "-";
  if (ms >= 100) return `${Math.round(ms).toLocaleString("en-US")} ms`;
  if (ms >= 1) return `${ms.toFixed(1)} ms`;
  return `${ms.toFixed(3)} ms`;
}

function gflops(r: BenchRecord): string {
  return Number.isFinite(r.gflops)
    ? `${r.gflops < 1 ? r.gflops.toFixed(2) : r.gflops.toFixed(1)} GFLOP/s`
    : "";
}

function spread(r: BenchRecord): string {
  if (!Number.isFinite(r.minMs)) return "-";
  const iqr = r.q1Ms !== undefined && (r.runs ?? 0) >= 4
    ? `, IQR ${formatMs(r.q1Ms)}-${formatMs(r.q3Ms)}`
    : "";
  return `${formatMs(r.minMs)}-${formatMs(r.maxMs)}${iqr} (${r.runs ?? "?"} runs)`;
}

function shortSkip(reason: string): string {
  const est = reason.match(/estimated ([\d.]+ s)/);
  if (reason.startsWith("failed")) return `failed`;
  return est ? `skipped (est. ${est[1]})` : "skipped";
}

function cell(r: BenchRecord | undefined): string {
  if (!r) return "not run";
  if (r.skipped) return shortSkip(r.skipped);
  if (!Number.isFinite(r.medianMs)) return `failed: ${(r.note ?? "").slice(0, 80)}`;
  const g = gflops(r);
  return `${formatMs(r.medianMs)}${g ? `, ${g}` : ""}, ${r.correct ? "correct" : "**wrong**"}`;
}

function table(header: string[], rows: string[][]): string {
  const esc = (s: string) => s.replace(/\|/g, "\\|");
  return [
    `| ${header.join(" | ")} |`,
    `| ${header.map(() => "---").join(" | ")} |`,
    ...rows.map((r) => `| ${r.map(esc).join(" | ")} |`),
  ].join("\n");
}

/** The summary of a run's records (the first, `env`, names the adapter). */
export function markdownSummary(env: EnvRecord, records: BenchRecord[], wallSeconds?: number): string {
  const out: string[] = [];
  out.push(`# spair-gpu benchmark: ${env.adapter}`);
  out.push("");
  out.push(
    [
      `- date ${env.date}; Deno ${env.deno} (V8 ${env.v8}); ${env.os} ${env.osRelease} ${env.arch}; ` +
      `${env.cpus} CPUs${env.cpuModel ? ` (${env.cpuModel})` : ""}; load ${env.loadAverage ?? "?"} at start`,
      `- adapter: vendor ${env.vendor || "?"}, architecture ${env.architecture || "?"}, device ${
        env.device || "?"
      }, driver ${env.driver || "?"}; power preference ${env.powerPreference}`,
      `- timing: wall clock per run including GPU completion (median, min-max)${
        env.timestampQuery ? "; GPU timestamp queries in the `GPU ms` column" : "; no timestamp queries"
      }`,
      `- command: \`deno task bench ${env.args.join(" ")}\`${
        wallSeconds !== undefined ? `; run took ${(wallSeconds / 60).toFixed(1)} min` : ""
      }`,
    ].join("\n"),
  );

  // Engine vs peers: only the engine's own cases on the same shapes as the peers' cases.
  const peers = records.filter((r) => r.suite === "peers");
  const engines = [...new Set(peers.map((r) => r.engine))];
  const mine = records.filter((r) => r.engine === "spair-gpu" && r.suite === "kernels");
  out.push("", "## spair-gpu vs peer WebGPU libraries (same process, same adapter)", "");
  const rows = WORKLOADS.map(([op, label]) => {
    const engineRec = mine.find((r) => r.op === op);
    const shape = engineRec?.shape ?? peers.find((r) => r.op === op)?.shape ?? "";
    return [
      shape ? `${label} (${shape})` : label,
      cell(engineRec),
      ...engines.map((e) => cell(peers.find((r) => r.engine === e && r.op === op && r.shape === shape))),
    ];
  });
  out.push(table(["workload", "spair-gpu", ...engines], rows));
  if (engines.length === 0) out.push("", "(peers not run: add `--suite peers`)");

  const kernels = records.filter((r) => r.suite === "kernels");
  if (kernels.length) {
    out.push("", "## Kernels", "");
    out.push(table(
      ["op", "shape", "median", "spread", "GPU ms", "GFLOP/s", "correct"],
      kernels.map((r) => [
        r.op,
        r.shape,
        formatMs(r.medianMs),
        spread(r),
        formatMs(r.gpuMedianMs),
        Number.isFinite(r.gflops) ? r.gflops.toFixed(2) : "-",
        r.correct ? "yes" : "**no**",
      ]),
    ));
  }

  const model = records.filter((r) => r.suite === "model");
  if (model.length) {
    const sizes = [...new Set(model.map((r) => r.shape))];
    const ops = [...new Set(model.map((r) => r.op))];
    out.push(
      "",
      "## Model forward (batch 1; median, GFLOP/s from the layer shapes (`spairForwardFlops`), share of the " +
        "conv 64->64 forward kernel's GFLOP/s in this run; first run with compilation in parentheses)",
      "",
    );
    out.push(table(
      ["net / preset", ...sizes],
      ops.map((op) => [
        op.replace(/_forward$/, ""),
        ...sizes.map((s) => {
          const r = model.find((m) => m.op === op && m.shape === s);
          if (!r) return "-";
          if (r.skipped) return shortSkip(r.skipped);
          const rate = Number.isFinite(r.gflops) ? `, ${r.gflops.toFixed(2)} GFLOP/s` : "";
          const share = r.convUtilization ? `, ${(100 * r.convUtilization).toFixed(1)}% of conv` : "";
          return `${formatMs(r.medianMs)}${rate}${share} (${formatMs(r.firstRunMs)})${
            r.correct ? "" : " **non-finite**"
          }`;
        }),
      ]),
    ));
  }

  const train = records.filter((r) => r.suite === "train");
  if (train.length) {
    out.push("", "## Training step (Adam)", "");
    out.push(table(
      ["step", "batch", "median", "steps/s", "images/s", "spread", "first run", "finite loss"],
      train.map((r) =>
        r.skipped ? [r.op, r.shape, shortSkip(r.skipped), "-", "-", "-", "-", "-"] : [
          r.op,
          r.shape,
          formatMs(r.medianMs),
          r.stepsPerSecond?.toFixed(2) ?? "-",
          r.imagesPerSecond?.toFixed(2) ?? "-",
          spread(r),
          formatMs(r.firstRunMs),
          r.correct ? "yes" : "**no**",
        ]
      ),
    ));
  }

  const skipped = records.filter((r) => r.skipped);
  if (skipped.length) {
    out.push("", "Skipped cases:", "");
    for (const r of skipped) out.push(`- ${r.op} ${r.shape}: ${r.skipped}`);
  }
  return out.join("\n") + "\n";
}
