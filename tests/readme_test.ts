// The README's engine example runs as printed and its loss falls.
import assert from "node:assert/strict";

Deno.test("README engine example runs and its loss decreases every step", async () => {
  const readme = await Deno.readTextFile(new URL("../README.md", import.meta.url));
  const code = readme.match(/```ts\n([\s\S]*?)```/)?.[1];
  assert.ok(code, "README has no ts example");
  const file = await Deno.makeTempFile({ suffix: ".ts" });
  await Deno.writeTextFile(
    file,
    code.replace('"./mod.ts"', JSON.stringify(new URL("../mod.ts", import.meta.url).href)),
  );
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", file],
    env: { XDG_RUNTIME_DIR: "/tmp" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  await Deno.remove(file);
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  const losses = new TextDecoder().decode(out.stdout).trim().split("\n").map(Number);
  assert.equal(losses.length, 10);
  for (let i = 1; i < losses.length; i++) assert.ok(losses[i] < losses[i - 1], `loss rose: ${losses}`);
});
