// Imports run one way: no runtime import cycle among the project's modules (type-only imports are erased, so
// they may point back). The engine's old cycle (autograd <-> elementwise <-> reduce) is the case this guards.
import assert from "node:assert/strict";

const root = new URL("../", import.meta.url);
const SKIP = new Set([".git", ".scratch", ".deno", ".gl", "node_modules", "tests"]);

async function modules(dir: URL, out: string[] = []): Promise<string[]> {
  for await (const entry of Deno.readDir(dir)) {
    if (SKIP.has(entry.name)) continue;
    const url = new URL(entry.name + (entry.isDirectory ? "/" : ""), dir);
    if (entry.isDirectory) await modules(url, out);
    else if (entry.name.endsWith(".ts")) out.push(url.pathname);
  }
  return out;
}

/** Relative modules `path` imports or re-exports at run time. */
export function runtimeImports(path: string, source: string): string[] {
  const deps: string[] = [];
  const pattern = /^(?:import|export)\s+(type\s+)?([^;]*?)\s+from\s+"(\.[^"]+)";/gms;
  for (const [, typeOnly, names, spec] of source.matchAll(pattern)) {
    if (typeOnly) continue;
    const list = names.trim();
    // `{ type A, type B }` brings in nothing at run time.
    if (
      list.startsWith("{") && list.slice(1, -1).split(",").every((n) => !n.trim() || /^type\s/.test(n.trim()))
    ) {
      continue;
    }
    deps.push(new URL(spec, "file://" + path).pathname);
  }
  return deps;
}

/** Every cycle found by a depth-first walk, as paths from its first module back to it. */
export function importCycles(graph: Map<string, string[]>): string[][] {
  const state = new Map<string, "open" | "done">();
  const cycles: string[][] = [];
  const stack: string[] = [];
  const visit = (m: string) => {
    state.set(m, "open");
    stack.push(m);
    for (const d of graph.get(m) ?? []) {
      if (state.get(d) === "open") cycles.push([...stack.slice(stack.indexOf(d)), d]);
      else if (!state.has(d)) visit(d);
    }
    stack.pop();
    state.set(m, "done");
  };
  for (const m of graph.keys()) if (!state.has(m)) visit(m);
  return cycles;
}

Deno.test("the project's modules import each other without cycles", async () => {
  const graph = new Map<string, string[]>();
  for (const path of await modules(root)) {
    graph.set(path, runtimeImports(path, await Deno.readTextFile(path)));
  }
  assert.ok(graph.size > 50, `found only ${graph.size} modules`);
  const cycles = importCycles(graph).map((c) => c.map((p) => p.slice(root.pathname.length)).join(" -> "));
  assert.deepEqual(cycles, []);
});

Deno.test("the cycle check finds a cycle, and ignores type-only imports", () => {
  const a = "/p/a.ts", b = "/p/b.ts", c = "/p/c.ts";
  assert.deepEqual(runtimeImports(a, `import { x } from "./b.ts";\nimport type { Y } from "./c.ts";`), [b]);
  assert.deepEqual(
    runtimeImports(a, `import { type Y, type Z } from "./c.ts";\nexport { w } from "./c.ts";`),
    [c],
  );
  assert.deepEqual(importCycles(new Map([[a, [b]], [b, [c]], [c, [a]]])), [[a, b, c, a]]);
  assert.deepEqual(importCycles(new Map([[a, [b]], [b, [c]], [c, []]])), []);
});
