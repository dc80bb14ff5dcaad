/**
 * The switch between fused kernels and the composed ops they replace. Fused paths compute the same values
 * (tests compare them); the composed path stays selectable so a fixed-seed training run can be checked
 * against it and a suspected fused-kernel bug can be ruled out.
 *
 * @module
 */

let fused = true;

/** Whether layers use their fused kernels (default true). */
export function fusionEnabled(): boolean {
  return fused;
}

/** Turns fused kernels on or off; returns the previous setting. */
export function setFusion(on: boolean): boolean {
  const previous = fused;
  fused = on;
  return previous;
}

/** Runs `fn` with fused kernels on or off, restoring the previous setting afterwards. */
export function withFusion<T>(on: boolean, fn: () => T): T {
  const previous = setFusion(on);
  try {
    return fn();
  } finally {
    setFusion(previous);
  }
}
