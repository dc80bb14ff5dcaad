/**
 * The base class of every error meant for the user as-is: bad input, a missing file, a wrong flag. The CLI
 * prints such errors as one line (`spair-gpu <command>: <message>`), never with a stack trace; any other
 * error is a bug.
 *
 * @module
 */

/** An error whose message is meant for the user as-is (the CLI prints it as one line). */
export class UserError extends Error {
  /** Creates the error; `name` defaults to the subclass's name. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** Levenshtein distance between two short strings (for "did you mean" suggestions). */
export function editDistance(a: string, b: string): number {
  let row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const next = [i];
    for (let j = 1; j <= b.length; j++) {
      next[j] = Math.min(row[j] + 1, next[j - 1] + 1, row[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    row = next;
  }
  return row[b.length];
}
