/**
 * The project's vocabulary, defined once: the tasks SPAIR restores, the model presets and the ablation
 * variants. Networks, restoration, training, the CLI's flags and help, and the browser demo all read their
 * lists from here.
 *
 * @module
 */

/** The degradations SPAIR restores, each with a one-line description (the CLI's help shows it). */
export const TASK_INFO = {
  rain: "rain streaks",
  raindrop: "raindrops on a window or lens",
  shadow: "cast shadows",
  blur: "motion blur",
} as const satisfies Record<string, string>;

/** The four degradations SPAIR restores. */
export type Task = keyof typeof TASK_INFO;

/** The tasks, in a fixed order. */
export const TASKS: readonly Task[] = Object.keys(TASK_INFO) as Task[];

/** Model sizes: `tiny` (CPU-trainable demo), `small`, `base` (paper scale). */
export type Preset = "tiny" | "small" | "base";

/** Width C and dense-block growth g of each preset. */
export const PRESETS: Record<Preset, { width: number; growth: number }> = {
  tiny: { width: 16, growth: 8 },
  small: { width: 32, growth: 16 },
  base: { width: 64, growth: 32 },
};

/** Which modules a variant uses. */
export interface VariantFeatures {
  /** SFM at the input of NetR's strided convolutions, guided by NetL. */
  sfm: boolean;
  /** Sparse-convolution (SC) modules in NetR's decoder instead of dense blocks. */
  sc: boolean;
  /** Non-local module after each decoder level: none, sparse (SNL) or dense. */
  nonLocal: "none" | "sparse" | "dense";
}

/** The ablations of the paper's table 6, each with its modules and a one-line description. */
export const VARIANTS = {
  Net1: { sfm: false, sc: false, nonLocal: "none", description: "dense U-Net backbone" },
  Net2: { sfm: true, sc: false, nonLocal: "none", description: "Net1 + SFM" },
  Net3: { sfm: true, sc: true, nonLocal: "none", description: "Net2 + sparse convolution" },
  Net4: { sfm: true, sc: true, nonLocal: "dense", description: "Net3 + dense non-local" },
  SPAIR: { sfm: true, sc: true, nonLocal: "sparse", description: "Net3 + sparse non-local (full model)" },
} as const satisfies Record<string, VariantFeatures & { description: string }>;

/** Ablations of the paper's table 6: Net1 dense backbone; Net2 +SFM; Net3 +SC; Net4 Net3 + dense non-local;
 * SPAIR Net3 + SNL. */
export type Variant = keyof typeof VARIANTS;

/** The names of `record`'s keys joined as `a|b|c`, for messages. */
export function namesOf(record: Record<string, unknown> | readonly string[]): string {
  return (Array.isArray(record) ? record : Object.keys(record)).join("|");
}

/** Whether `value` is one of `record`'s keys. */
export function isKeyOf<K extends string>(record: Record<K, unknown>, value: unknown): value is K {
  return typeof value === "string" && Object.hasOwn(record, value);
}
