/**
 * The command line's flag tables: each command declares its flags once, with their kinds, defaults and
 * meanings, and the same table parses the arguments and prints `--help`. Every command accepts `-h` and
 * `--help`.
 *
 * Values may start with `-` when they look like numbers (`--tile -5` reaches the check that says "must be a
 * positive integer", not an "ambiguous option" error).
 *
 * @module
 */

import { editDistance, UserError } from "../engine/errors.ts";

/** A mistake on the command line: unknown flag, missing or malformed value. */
export class FlagError extends UserError {}

/** What a flag's value must be; the parser checks it and converts numbers. */
export type FlagKind =
  | "string"
  | "boolean"
  | "number"
  | "positive"
  | "positive-int"
  | "non-negative-int"
  | "choice";

/** One flag of a command. */
export interface Flag {
  /** Long name without the dashes (`out` for `--out`). */
  name: string;
  /** One-letter alias without the dash (`o` for `-o`). */
  short?: string;
  kind: FlagKind;
  /** The allowed values of a `choice` flag. */
  choices?: readonly string[];
  /** Value used when the flag is absent (shown in the help). */
  default?: string | number | boolean;
  /** What the help shows as the default when it is not a fixed value (e.g. "per task"). */
  defaultText?: string;
  /** Placeholder of the value in the help, e.g. `DIR` (default: derived from the kind). */
  value?: string;
  /** One-line meaning. */
  help: string;
}

/** A command's table: usage, flags, positionals and examples. */
export interface CommandSpec {
  /** Name after `cli.ts` (`restore`). */
  name: string;
  /** One-line summary (the first line of the help and the command list). */
  summary: string;
  /** Usage lines, without the `deno task <name>` prefix. */
  usage: string[];
  /** Name of the positional arguments in the help (e.g. `IMAGE_OR_FOLDER...`); none accepted without it. */
  positionals?: string;
  flags: Flag[];
  /** Example command lines (after `deno task`), each with what it does. */
  examples: { command: string; does: string }[];
  /** Lines of notes after the flags. */
  notes?: string[];
}

/** Parsed values by flag name: strings, numbers (numeric kinds), booleans, or undefined when absent. */
export type FlagValues = Record<string, string | number | boolean | undefined>;

/** The parse of a command line: the help was asked for, or the values and positionals. */
export type Parsed =
  | { help: true }
  | { help: false; values: FlagValues; positionals: string[] };

const HELP_FLAG: Flag = { name: "help", short: "h", kind: "boolean", help: "show this help and exit" };

/** A list as `a, b or c`. */
export function orList(items: readonly string[]): string {
  return items.length > 1 ? `${items.slice(0, -1).join(", ")} or ${items.at(-1)}` : items[0] ?? "";
}

/** The spec's flags plus `--help`. */
export function allFlags(spec: CommandSpec): Flag[] {
  return [...spec.flags, HELP_FLAG];
}

function convert(flag: Flag, text: string, fail: (message: string) => Error): string | number | boolean {
  const name = `--${flag.name}`;
  const n = Number(text);
  const numeric = text.trim() !== "" && Number.isFinite(n);
  switch (flag.kind) {
    case "string":
      return text;
    case "boolean":
      return true;
    case "choice":
      if (!flag.choices!.includes(text)) {
        throw fail(`${name} must be one of ${orList(flag.choices!)}, got ${text}`);
      }
      return text;
    case "number":
      if (!numeric) throw fail(`${name} must be a number, got ${text}`);
      return n;
    case "positive":
      if (!numeric || n <= 0) throw fail(`${name} must be a positive number, got ${text}`);
      return n;
    case "positive-int":
      if (!numeric || !Number.isInteger(n) || n < 1) {
        throw fail(`${name} must be a positive integer, got ${text}`);
      }
      return n;
    case "non-negative-int":
      if (!numeric || !Number.isInteger(n) || n < 0) {
        throw fail(`${name} must be a non-negative integer, got ${text}`);
      }
      return n;
  }
}

/** Whether `arg` is a value rather than a flag: anything not starting with `-`, `-` alone, or a number. */
function looksLikeValue(arg: string): boolean {
  return !arg.startsWith("-") || arg === "-" || /^-\.?\d/.test(arg);
}

/** The table entry closest to an unknown name (for "did you mean"), if any is close. */
function nearest(name: string, flags: Flag[]): string | undefined {
  let best: [number, string] | undefined;
  for (const f of flags) {
    const d = editDistance(name, f.name);
    if (d <= Math.max(2, Math.floor(name.length / 3)) && (!best || d < best[0])) best = [d, f.name];
  }
  return best?.[1];
}

/**
 * Parses `args` by `spec`: `--name value`, `--name=value`, `-x value`, booleans as bare flags, `--` ends the
 * flags. Absent flags get their defaults. `--help` or `-h` anywhere returns `{ help: true }`. Mistakes throw
 * `fail(message)` (a {@link FlagError} by default) with a one-line message.
 */
export function parseFlags(
  spec: CommandSpec,
  args: string[],
  fail: (message: string) => Error = (m) => new FlagError(m),
): Parsed {
  const flags = allFlags(spec);
  const byName = new Map(flags.map((f) => [f.name, f]));
  const byShort = new Map(flags.filter((f) => f.short).map((f) => [f.short!, f]));
  if (args.some((a) => a === "--help" || a === "-h")) return { help: true };
  const values: FlagValues = {};
  const positionals: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === "--") {
      positionals.push(...args.slice(i + 1));
      break;
    }
    if (looksLikeValue(arg)) {
      positionals.push(arg);
      continue;
    }
    const long = arg.startsWith("--");
    const eq = long ? arg.indexOf("=") : -1;
    const key = long ? arg.slice(2, eq < 0 ? undefined : eq) : arg.slice(1);
    const flag = long ? byName.get(key) : byShort.get(key);
    if (!flag) {
      const guess = long ? nearest(key, flags) : undefined;
      throw fail(
        `unknown option '${arg.split("=")[0]}'${guess ? ` (did you mean --${guess}?)` : ""}; ` +
          `see \`${spec.name} --help\``,
      );
    }
    let text: string;
    if (flag.kind === "boolean") {
      if (eq >= 0) throw fail(`--${flag.name} takes no value`);
      text = "";
    } else if (eq >= 0) {
      text = arg.slice(eq + 1);
    } else if (i + 1 < args.length && looksLikeValue(args[i + 1])) {
      text = args[++i];
    } else {
      throw fail(`--${flag.name} needs a value (${placeholder(flag)})`);
    }
    values[flag.name] = convert(flag, text, fail);
  }
  if (positionals.length > 0 && !spec.positionals) {
    throw fail(`unexpected argument '${positionals[0]}'; see \`${spec.name} --help\``);
  }
  for (const f of spec.flags) {
    if (values[f.name] === undefined && f.default !== undefined) values[f.name] = f.default;
  }
  return { help: false, values, positionals };
}

function placeholder(flag: Flag): string {
  if (flag.value) return flag.value;
  if (flag.kind === "choice") return flag.choices!.join("|");
  if (flag.kind === "string") return "TEXT";
  return flag.kind === "number" || flag.kind === "positive" ? "X" : "N";
}

/** The `--help` text of a command: summary, usage, every flag with its default and meaning, examples. */
export function helpText(spec: CommandSpec, prefix = "deno task"): string {
  const lines = [`${spec.name}: ${spec.summary}`, "", "usage:"];
  for (const u of spec.usage) lines.push(`  ${prefix} ${spec.name}${u ? ` ${u}` : ""}`);
  lines.push("", "flags:");
  const rows = allFlags(spec).map((f) => {
    const head = `${f.short ? `-${f.short}, ` : "    "}--${f.name}${
      f.kind === "boolean" ? "" : ` ${placeholder(f)}`
    }`;
    const shown = f.defaultText ??
      (f.default === undefined || f.kind === "boolean" ? undefined : String(f.default));
    return [head, `${f.help}${shown === undefined ? "" : ` (default: ${shown})`}`];
  });
  const width = Math.min(30, Math.max(...rows.map(([h]) => h.length)) + 2);
  const indent = " ".repeat(width + 2);
  for (const [head, meaning] of rows) {
    const wrapped = wrap(meaning, HELP_WIDTH - indent.length);
    if (head.length + 2 > width) lines.push(`  ${head}`);
    else wrapped[0] = `${head.padEnd(width)}${wrapped[0]}`.trimEnd();
    lines.push(...wrapped.map((l, i) => i === 0 && head.length + 2 <= width ? `  ${l}` : `${indent}${l}`));
  }
  if (spec.notes?.length) lines.push("", ...spec.notes);
  lines.push("", "examples:");
  for (const e of spec.examples) lines.push(`  ${prefix} ${e.command}`, `      ${e.does}`);
  return lines.join("\n");
}

/** Width the help wraps its meanings to. */
const HELP_WIDTH = 100;

/** `text` in lines of at most `width` characters, broken at spaces. */
function wrap(text: string, width: number): string[] {
  const lines = [""];
  for (const word of text.split(" ")) {
    const last = lines[lines.length - 1];
    if (last && last.length + 1 + word.length > width) lines.push(word);
    else lines[lines.length - 1] = last ? `${last} ${word}` : word;
  }
  return lines;
}

/** Kebab-case flag name of a camelCase key: `stepsR` -> `steps-r`. */
export function kebab(key: string): string {
  return key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
}
