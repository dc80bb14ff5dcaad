// The README's code examples run as printed: the engine example's loss falls, the library example restores.
import assert from "node:assert/strict";

const root = new URL("../", import.meta.url);
const readme = await Deno.readTextFile(new URL("README.md", root));
const blocks = [...readme.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]);

async function runExample(code: string): Promise<string> {
  const file = await Deno.makeTempFile({ suffix: ".ts" });
  const modUrl = JSON.stringify(new URL("mod.ts", root).href);
  await Deno.writeTextFile(file, code.replace('"./mod.ts"', modUrl).replace('"@spair/spair-gpu"', modUrl));
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", file],
    cwd: root.pathname,
    env: { XDG_RUNTIME_DIR: "/tmp" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  await Deno.remove(file);
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  return new TextDecoder().decode(out.stdout).trim();
}

Deno.test("README engine example runs and its loss decreases every step", async () => {
  const code = blocks.find((b) => b.includes("mseLoss"));
  assert.ok(code, "README has no engine example");
  const losses = (await runExample(code)).split("\n").map(Number);
  assert.equal(losses.length, 10);
  for (let i = 1; i < losses.length; i++) assert.ok(losses[i] < losses[i - 1], `loss rose: ${losses}`);
});

Deno.test("README library example restores an image with the bundled weights", async () => {
  const code = blocks.find((b) => b.includes("restorePlanar"));
  assert.ok(code, "README has no library example");
  const [length, maskCount] = (await runExample(code)).split(" ").map(Number);
  assert.equal(length, 3 * 64 * 48);
  assert.ok(Number.isInteger(maskCount) && maskCount >= 0 && maskCount <= 64 * 48);
});
