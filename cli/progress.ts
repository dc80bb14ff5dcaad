/**
 * Progress on stderr: on a terminal one live line, rewritten in place; without one (logs, pipes, CI) plain
 * lines, at most one every few seconds, so a log stays readable.
 *
 * @module
 */

import { engine } from "../engine/device.ts";

/** Seconds as `42 s` or `3.5 min`. */
export function formatSeconds(seconds: number): string {
  if (!Number.isFinite(seconds)) return "?";
  return seconds >= 60 ? `${(seconds / 60).toFixed(1)} min` : `${seconds.toFixed(0)} s`;
}

/** A live status line on a terminal, plain lines otherwise. */
export class StatusLine {
  readonly tty: boolean;
  #live = false;
  #lastPlain = performance.now();
  readonly #encoder = new TextEncoder();

  /**
   * @param stream where lines go (stderr by default)
   * @param plainEveryMs least time between plain lines of {@link update} without a terminal
   */
  constructor(
    readonly stream: { writeSync(p: Uint8Array): number; isTerminal(): boolean } = Deno.stderr,
    readonly plainEveryMs = 10_000,
  ) {
    this.tty = stream.isTerminal();
  }

  #write(text: string): void {
    this.stream.writeSync(this.#encoder.encode(text));
  }

  /** Shows `text` as the current status: rewrites the live line, or prints it as a plain line when
   * `force` is set or enough time passed since the last one. */
  update(text: string, force = false): void {
    if (this.tty) {
      this.#write(`\r\x1b[K${text}`);
      this.#live = true;
    } else if (force || performance.now() - this.#lastPlain >= this.plainEveryMs) {
      this.#lastPlain = performance.now();
      this.#write(`${text}\n`);
    }
  }

  /** Prints a permanent line (above the live line on a terminal). */
  print(text: string): void {
    this.clear();
    this.#write(`${text}\n`);
  }

  /** Removes the live line. */
  clear(): void {
    if (this.#live) this.#write("\r\x1b[K");
    this.#live = false;
  }
}

/** Counts done / total with the elapsed time and an estimate of the time left. */
export class Progress {
  readonly #start = performance.now();
  #done = 0;
  constructor(readonly total: number) {}

  /** Records that `done` of `total` are finished, and `partial` (0 to 1) of the next one; returns e.g.
   * `3/10 images, 12 s, about 28 s left` (the estimate once anything is done). */
  report(done: number, unit: string, partial = 0): string {
    this.#done = done;
    const elapsed = (performance.now() - this.#start) / 1000;
    const progress = done + partial;
    const left = progress > 0 ? (elapsed / progress) * (this.total - progress) : NaN;
    const eta = done >= this.total || progress === 0 ? "" : `, about ${formatSeconds(left)} left`;
    return `${done}/${this.total} ${unit}, ${formatSeconds(elapsed)}${eta}`;
  }

  /** Finished count so far. */
  get done(): number {
    return this.#done;
  }
}

/** Creating a pipeline slower than this counts as compiling (with a warm Mesa cache it takes ~1 ms). */
const SLOW_COMPILE_MS = 50;

/**
 * Shows "compiling GPU kernels N (first run only)" on `status` while the engine creates pipelines slowly
 * (a cold shader cache: minutes on llvmpipe), through `engine().onPipelineCompile`. Returns a function that
 * removes the listener and prints a summary line when compiling took noticeable time. Times are wall clock
 * from the first slow pipeline: helper threads compile in parallel (`Engine.compileThreads`), so the sum of
 * per-pipeline times would miss their work.
 */
export function showKernelCompiles(status: StatusLine): () => void {
  const e = engine();
  let created = 0;
  let slow = false;
  let start = 0;
  let end = 0;
  const previous = e.onPipelineCompile;
  e.onPipelineCompile = (info) => {
    previous?.(info);
    created++;
    const now = performance.now();
    if (!slow && info.ms < SLOW_COMPILE_MS) return;
    if (!slow) start = now - info.ms;
    slow = true;
    end = now;
    // Inside a batch compiled up front (restore does this) the total is known.
    const count = info.batch ? `${info.batch.done}/${info.batch.total}` : `${created}`;
    status.update(
      `compiling GPU kernels ${count} (first run only; ${formatSeconds((end - start) / 1000)} so far)`,
    );
  };
  return () => {
    e.onPipelineCompile = previous;
    if (slow) {
      status.print(
        `compiled ${created} GPU kernels in ${formatSeconds((end - start) / 1000)} (cached for later runs)`,
      );
    }
  };
}
