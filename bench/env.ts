/**
 * The environment record that opens every benchmark run: adapter, limits, features, runtime, OS, CPU
 * count, driver version and date, so that a results file says what produced it.
 *
 * @module
 */

import * as ops from "../mod.ts";

/** First JSON line of a run (`suite: "info"`). */
export interface EnvRecord {
  suite: "info";
  /** `GPUAdapterInfo.description` (or vendor), as in every record's `adapter`. */
  adapter: string;
  vendor: string;
  architecture: string;
  device: string;
  description: string;
  /** Requested power preference, or "default". */
  powerPreference: string;
  /** Whether GPU timestamp queries are used for the `gpu*` fields of records. */
  timestampQuery: boolean;
  /** Device features in force. */
  features: string[];
  /** Device limits in force (numeric ones). */
  limits: Record<string, number>;
  /** Driver version if found (Mesa version from the description or dpkg), else "". */
  driver: string;
  deno: string;
  v8: string;
  typescript: string;
  os: string;
  arch: string;
  /** Kernel release, where available. */
  osRelease: string;
  cpus: number;
  /** CPU model name, where available (Linux /proc/cpuinfo). */
  cpuModel: string;
  /** 1-minute load average at the start (other work on the machine skews timings). */
  loadAverage: number | null;
  /** Command-line arguments of the run. */
  args: string[];
  date: string;
}

async function commandOutput(cmd: string, args: string[]): Promise<string> {
  try {
    const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "null" }).output();
    return out.success ? new TextDecoder().decode(out.stdout).trim() : "";
  } catch {
    return "";
  }
}

/** Best-effort driver version: Mesa's version from the description, else the installed Mesa package. */
async function driverVersion(description: string): Promise<string> {
  const mesa = description.match(/Mesa\s+([\w.-]+)/i);
  if (mesa) return `Mesa ${mesa[1]}`;
  if (Deno.build.os !== "linux") return "";
  for (const pkg of ["mesa-vulkan-drivers", "libgl1-mesa-dri"]) {
    const v = await commandOutput("dpkg-query", ["-W", "-f", "${Version}", pkg]);
    if (v) return `${pkg} ${v}`;
  }
  const nvidia = await commandOutput("nvidia-smi", ["--query-gpu=driver_version", "--format=csv,noheader"]);
  return nvidia ? `NVIDIA ${nvidia.split("\n")[0]}` : "";
}

async function cpuModel(): Promise<string> {
  try {
    const info = await Deno.readTextFile("/proc/cpuinfo");
    return info.match(/^model name\s*:\s*(.+)$/m)?.[1] ?? "";
  } catch {
    return "";
  }
}

/** Collects the environment record for the initialized engine. */
export async function environmentRecord(powerPreference: string, args: string[]): Promise<EnvRecord> {
  const e = ops.engine();
  const info = e.adapterInfo;
  const limits: Record<string, number> = {};
  const l = e.device.limits as unknown as Record<string, unknown>;
  // GPUSupportedLimits exposes its values as prototype getters, so walk the prototype.
  for (const key in l) if (typeof l[key] === "number") limits[key] = l[key] as number;
  let osRelease = "";
  let load: number | null = null;
  try {
    osRelease = Deno.osRelease();
    load = +Deno.loadavg()[0].toFixed(2);
  } catch {
    // not available on every OS
  }
  return {
    suite: "info",
    adapter: e.adapterDescription,
    vendor: info?.vendor ?? "",
    architecture: info?.architecture ?? "",
    device: info?.device ?? "",
    description: info?.description ?? "",
    powerPreference,
    timestampQuery: e.device.features.has("timestamp-query"),
    features: [...e.device.features].sort(),
    limits,
    driver: await driverVersion(info?.description ?? ""),
    deno: Deno.version.deno,
    v8: Deno.version.v8,
    typescript: Deno.version.typescript,
    os: Deno.build.os,
    arch: Deno.build.arch,
    osRelease,
    cpus: navigator.hardwareConcurrency,
    cpuModel: await cpuModel(),
    loadAverage: load,
    args,
    date: new Date().toISOString(),
  };
}

/** A file-name slug for the adapter, e.g. `llvmpipe-llvm-15-0-6-256-bits`. */
export function adapterSlug(adapter: string): string {
  return adapter.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 60) || "adapter";
}
