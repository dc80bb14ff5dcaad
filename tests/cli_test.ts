// The CLI's user-facing behaviour: one-line errors and exit codes, --help from the flag tables, progress
// lines, and the engine demo.
import assert from "node:assert/strict";
import { COMMAND_SPECS, generalHelp } from "../cli.ts";
import { BENCH_SPEC } from "../bench/main.ts";
import { allFlags, type Flag, FlagError, helpText, kebab, parseFlags } from "../cli/flags.ts";
import { Progress, StatusLine } from "../cli/progress.ts";
import { defaultConfig } from "../train/train.ts";

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
  assert.match(
    unknown.stderr.trim(),
    /^spair-gpu: unknown command 'frobnicate'; commands: restore, train, eval, synth, bench, demo, doctor/,
  );
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

/** A value the flag's kind accepts. */
function sampleValue(flag: Flag): string | undefined {
  if (flag.kind === "boolean") return undefined;
  if (flag.kind === "choice") return flag.choices![0];
  return flag.kind === "string" ? "a" : "4";
}

Deno.test("cli: every flag the parser accepts appears in its command's help, and only those parse", () => {
  const specs = [...COMMAND_SPECS, BENCH_SPEC];
  assert.deepEqual(specs.map((s) => s.name).sort(), [
    "bench",
    "demo",
    "doctor",
    "eval",
    "restore",
    "synth",
    "train",
  ]);
  for (const spec of specs) {
    const help = helpText(spec);
    assert.match(help, /^\S+: .+\n\nusage:\n/, spec.name);
    assert.match(
      help,
      /\nexamples:\n {2}deno .+\n {6}\S.*\n {2}deno .+\n {6}\S/,
      `${spec.name}: two examples`,
    );
    for (const flag of allFlags(spec)) {
      // Accepted by the parser...
      const value = sampleValue(flag);
      const args = value === undefined ? [`--${flag.name}`] : [`--${flag.name}`, value];
      const parsed = parseFlags(
        spec,
        flag.name === "help" ? args : [...args, ...(spec.positionals ? ["x"] : [])],
      );
      if (flag.name !== "help") {
        assert.ok(!parsed.help && parsed.values[flag.name] !== undefined, `${spec.name} --${flag.name}`);
      }
      // ...and in the help, on a line of its own with its meaning and default.
      const line = help.split("\n").find((l) => new RegExp(`--${flag.name}(\\s|$)`).test(l));
      assert.ok(line, `${spec.name} --help lacks --${flag.name}`);
      const shown = flag.defaultText ?? (flag.kind === "boolean" ? undefined : flag.default);
      if (shown !== undefined) {
        assert.ok(
          help.replace(/\s+/g, " ").includes(`(default: ${shown})`),
          `${spec.name} --${flag.name} default`,
        );
      }
      if (flag.short) assert.match(line, new RegExp(`-${flag.short}, --${flag.name}`));
    }
    assert.throws(() => parseFlags(spec, ["--no-such-flag"]), FlagError);
  }
  // The train flags are the run config's keys, not a hand-written list.
  const train = COMMAND_SPECS.find((s) => s.name === "train")!;
  for (const key of Object.keys(defaultConfig("rain"))) {
    assert.ok(train.flags.some((f) => f.name === kebab(key)), `train --${kebab(key)}`);
  }
});

Deno.test("cli: --help, -h and help print usage, flags with defaults, examples; exit 0", async () => {
  for (const command of ["restore", "train", "eval", "synth", "demo", "doctor"]) {
    for (const flag of ["--help", "-h"]) {
      const r = await run([command, flag]);
      assert.equal(r.code, 0, `${command} ${flag}: ${r.stderr}`);
      assert.match(r.stdout, new RegExp(`^${command}: .+\\n\\nusage:\\n`), `${command} ${flag}`);
      assert.match(r.stdout, /examples:/);
    }
  }
  const restore = await run(["help", "restore"]);
  assert.equal(restore.code, 0);
  assert.match(restore.stdout, /--tile N +largest tile side in pixels \(default: 512\)/);
  for (const args of [["help"], ["--help"], ["-h"]]) {
    const r = await run(args);
    assert.equal(r.code, 0, args.join(" "));
    assert.equal(r.stdout.trim(), generalHelp());
    for (const c of ["restore", "train", "eval", "synth", "bench", "demo", "doctor"]) {
      assert.match(r.stdout, new RegExp(`\\n  ${c} +\\S`));
    }
  }
});

Deno.test("cli: negative numbers say 'must be positive', not 'ambiguous'", async () => {
  const cases: [string[], RegExp][] = [
    [
      ["restore", "samples/rain.png", "--tile", "-5"],
      /^spair-gpu restore: --tile must be a positive integer, got -5$/,
    ],
    [["restore", "samples/rain.png", "--overlap=-1"], /--overlap must be a positive integer, got -1$/],
    [["demo", "--steps", "-3"], /^spair-gpu demo: --steps must be a positive integer, got -3$/],
    [
      ["eval", "--task", "rain", "--data", "x", "--tile", "-.5"],
      /--tile must be a positive integer, got -\.5$/,
    ],
    [["restore", "samples/rain.png", "--tile"], /--tile needs a value/],
    [["restore", "samples/rain.png", "--tiel", "5"], /unknown option '--tiel' \(did you mean --tile\?\)/],
    [
      ["restore", "samples/rain.png", "--task", "snow"],
      /--task must be one of rain, raindrop, shadow or blur, got snow$/,
    ],
  ];
  for (const [args, pattern] of cases) {
    const r = await run(args);
    assert.equal(r.code, 1, args.join(" "));
    const lines = r.stderr.trim().split("\n");
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0], pattern);
  }
});

Deno.test("cli: train derives config flags from defaultConfig and checks them in one line", async () => {
  const r = await run(["train", "--data", "nowhere", "--crop", "-8", "--run", "/nonexistent/x"]);
  assert.equal(r.code, 1);
  assert.equal(r.stderr.trim(), "spair-gpu train: crop must be a positive integer");
  const both = await run(["train", "--resume", "r", "--config", "c.json"]);
  assert.equal(both.code, 1);
  assert.match(both.stderr.trim(), /--config and --run start a new run/);
});

Deno.test("progress: one live line on a terminal, rate-limited plain lines without one", () => {
  const sink = (tty: boolean) => {
    const chunks: string[] = [];
    const stream = {
      isTerminal: () => tty,
      writeSync: (p: Uint8Array) => (chunks.push(new TextDecoder().decode(p)), p.length),
    };
    return { chunks, stream };
  };
  const live = sink(true);
  const s = new StatusLine(live.stream);
  s.update("1/3 images");
  s.update("2/3 images");
  s.print("done a.png");
  assert.deepEqual(live.chunks, ["\r\x1b[K1/3 images", "\r\x1b[K2/3 images", "\r\x1b[K", "done a.png\n"]);
  const plain = sink(false);
  const p = new StatusLine(plain.stream, 60_000);
  p.update("tile 1/9");
  p.update("tile 2/9", true);
  p.print("done");
  assert.deepEqual(plain.chunks, ["tile 2/9\n", "done\n"]);
  const progress = new Progress(4);
  assert.match(progress.report(0, "images"), /^0\/4 images, 0 s$/);
  assert.match(progress.report(2, "images"), /^2\/4 images, \d+ s, about \d+ s left$/);
  assert.match(progress.report(4, "images"), /^4\/4 images, \d+ s$/);
  // Within an image, its finished tiles give the estimate.
  assert.match(new Progress(1).report(0, "images", 0.5), /^0\/1 images, \d+ s, about \d+ s left$/);
});
