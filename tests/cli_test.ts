// The CLI's user-facing behaviour: one-line errors and exit codes, and the engine demo.
import assert from "node:assert/strict";

const CLI = new URL("../cli.ts", import.meta.url).pathname;

async function run(args: string[], env: Record<string, string> = {}) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, ...args],
    env: { XDG_RUNTIME_DIR: "/tmp", NO_COLOR: "1", ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  return {
    code: out.code,
    stdout: new TextDecoder().decode(out.stdout),
    stderr: new TextDecoder().decode(out.stderr),
  };
}

Deno.test("cli: no GPU adapter gives one line naming the install command, exit 1", async () => {
  // Point Vulkan at no driver and forbid other backends: requestAdapter() then finds nothing.
  const r = await run(["demo"], {
    VK_DRIVER_FILES: "/nonexistent.json",
    VK_ICD_FILENAMES: "/nonexistent.json",
    DENO_WEBGPU_BACKEND: "vulkan",
  });
  assert.equal(r.code, 1);
  const lines = r.stderr.trim().split("\n");
  assert.equal(lines.length, 1, r.stderr);
  assert.match(lines[0], /no WebGPU adapter found/);
  assert.match(lines[0], /apt-get install -y mesa-vulkan-drivers libvulkan1/);
});

Deno.test("cli: unknown command and bad flags give one-line errors", async () => {
  const unknown = await run(["frobnicate"]);
  assert.equal(unknown.code, 2);
  assert.match(unknown.stderr.trim(), /^spair-gpu: unknown command 'frobnicate'; commands: demo, doctor/);
  const bad = await run(["demo", "--steps", "x"]);
  assert.equal(bad.code, 1);
  assert.equal(bad.stderr.trim(), "spair-gpu demo: --steps must be a positive integer, got x");
});

Deno.test("cli: demo prints progress lines and a falling loss", async () => {
  // An empty XDG_RUNTIME_DIR would make Mesa warn; the CLI must supply a valid one.
  const r = await run(["demo", "--steps", "20"], { XDG_RUNTIME_DIR: "" });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /step +10\/20 +loss/);
  const m = r.stdout.match(/loss ([\d.e+-]+) -> ([\d.e+-]+)/);
  assert.ok(m, r.stdout);
  assert.ok(Number(m[2]) < Number(m[1]) / 2, r.stdout);
  assert.doesNotMatch(r.stderr, /XDG_RUNTIME_DIR/);
});
