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
