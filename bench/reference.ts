/**
 * Float64 CPU reference helpers for benchmark correctness checks.
 *
 * Full float64 references of a 64→64 channel 3x3 convolution at 256x256 take far too long in JS
 * (the weight gradient alone is 2.4 GFLOP), so every check here is *sampled*: pick a few dozen flat
 * output indices with a seeded PRNG ({@link sampleIndices}), compute exactly those elements in float64
 * ({@link conv2dForwardRef}, {@link conv2dInputGradRef}, {@link conv2dWeightGradRef},
 * {@link matmulRef}), gather the same elements from the device result and compare them with
 * {@link sampledMaxRelError} against {@link DEFAULT_REL_TOLERANCE}.
 *
 * Layout conventions (all tensors are flat row-major arrays):
 * - input `x`: NCHW `[n, cin, h, w]`
 * - weight `w`: OIHW `[cout, cin, kh, kw]` (cross-correlation, no kernel flip, as in PyTorch/XLA)
 * - output `y` and its cotangent `dy`: NCHW `[n, cout, hOut, wOut]`
 * - matmul: `a` is `[m, k]`, `b` is `[k, n]`, `c = a @ b` is `[m, n]`
 *
 * Everything is deterministic: inputs come from {@link mulberry32} via {@link randomUniform}, so other
 * benchmarks (e.g. the engine's own) can regenerate bit-identical inputs from the same seeds.
 *
 * @module
 */

/**
 * Default tolerance for {@link sampledMaxRelError} on float32 results.
 *
 * With the metric's default floor (0.1 x RMS of the references) this leaves room for float32
 * accumulation-order noise on long reductions: tfjs-webgpu's 255x255 weight gradient (65,025-term sums
 * accumulated sequentially) has max absolute error 2.4e-3 at reference RMS ~82 and scores 2.5e-5 (at most
 * ~3e-4 even for a reference near zero); forward conv, input gradient and 1024³ matmul of correct
 * libraries score ~1e-6..3e-5. Broken reductions score far higher (the wrong 256x256 weight gradients of
 * tfjs-webgpu and jax-js: 0.7 and 9.9), and a single dropped term of a 576-term forward sum (~3e-2) or
 * of a 1024-term matmul dot (~2e-2) is still caught. Anything coarser than float32 accumulation (fp16,
 * TF32-style) is meant to fail.
 */
export const DEFAULT_REL_TOLERANCE = 1e-3;

/**
 * Mulberry32: a tiny, fast, deterministic 32-bit PRNG.
 *
 * @param seed Any 32-bit integer seed.
 * @returns A function returning uniformly distributed floats in `[0, 1)`; the same seed always yields
 * the same sequence on every JS engine.
 */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Fill a new Float32Array with seeded uniform values in `[lo, hi)`.
 *
 * @param seed Seed for {@link mulberry32}.
 * @param size Number of elements.
 * @param lo Lower bound (inclusive), default -1.
 * @param hi Upper bound (exclusive), default 1.
 */
export function randomUniform(seed: number, size: number, lo = -1, hi = 1): Float32Array<ArrayBuffer> {
  const rng = mulberry32(seed);
  const out = new Float32Array(size);
  const span = hi - lo;
  for (let i = 0; i < size; i++) out[i] = lo + span * rng();
  return out;
}

/**
 * Choose `count` distinct flat indices in `[0, size)` with a seeded PRNG, returned in ascending order.
 * The first and last index are always included (they exercise padding borders / tail tiles).
 *
 * @param seed Seed for {@link mulberry32}.
 * @param size Number of elements of the tensor being sampled.
 * @param count Number of indices wanted (clamped to `size`).
 */
export function sampleIndices(seed: number, size: number, count: number): number[] {
  const n = Math.min(count, size);
  const rng = mulberry32(seed);
  const chosen = new Set<number>();
  if (n > 0) chosen.add(0);
  if (n > 1) chosen.add(size - 1);
  while (chosen.size < n) chosen.add(Math.floor(rng() * size));
  return [...chosen].sort((p, q) => p - q);
}

/**
 * Gather `values[map(i)]` for every sampled index `i` (e.g. to read NCHW sample positions out of an
 * NHWC device result).
 *
 * @param values Full flat result read back from a device.
 * @param at Flat indices in the reference layout.
 * @param map Optional index remapping from the reference layout to the layout of `values`.
 */
export function gather(
  values: ArrayLike<number>,
  at: readonly number[],
  map?: (i: number) => number,
): Float64Array {
  const out = new Float64Array(at.length);
  for (let s = 0; s < at.length; s++) out[s] = values[map ? map(at[s]) : at[s]];
  return out;
}

/** Geometry of a 2-D convolution; square stride/padding, no dilation, no groups. */
export interface Conv2dShape {
  /** Batch size. */
  n: number;
  /** Input channels. */
  cin: number;
  /** Input height. */
  h: number;
  /** Input width. */
  w: number;
  /** Output channels. */
  cout: number;
  /** Kernel height. */
  kh: number;
  /** Kernel width. */
  kw: number;
  /** Stride (both spatial dims). */
  stride: number;
  /** Zero padding on every side (both spatial dims). */
  pad: number;
}

/**
 * Output spatial size of a convolution.
 *
 * @returns `[hOut, wOut]` with `hOut = floor((h + 2*pad - kh) / stride) + 1` (same for width).
 */
export function conv2dOutSize(s: Conv2dShape): [number, number] {
  return [
    Math.floor((s.h + 2 * s.pad - s.kh) / s.stride) + 1,
    Math.floor((s.w + 2 * s.pad - s.kw) / s.stride) + 1,
  ];
}

/**
 * Element counts of every tensor involved in a convolution.
 *
 * @returns Sizes of `x` (NCHW), `w` (OIHW) and `y`/`dy` (NCHW).
 */
export function conv2dSizes(s: Conv2dShape): { x: number; w: number; y: number } {
  const [ho, wo] = conv2dOutSize(s);
  return { x: s.n * s.cin * s.h * s.w, w: s.cout * s.cin * s.kh * s.kw, y: s.n * s.cout * ho * wo };
}

/**
 * Forward-convolution FLOPs, counting a multiply-add as 2: `2 * n * cout * hOut * wOut * cin * kh * kw`.
 * A forward + input-gradient + weight-gradient step is 3x this.
 */
export function conv2dFlops(s: Conv2dShape): number {
  const [ho, wo] = conv2dOutSize(s);
  return 2 * s.n * s.cout * ho * wo * s.cin * s.kh * s.kw;
}

/**
 * Float64 reference of the forward convolution `y = conv2d(x, w)` at sampled output positions.
 *
 * `y[n,co,oh,ow] = Σ_{ci,i,j} x[n, ci, oh*stride - pad + i, ow*stride - pad + j] * w[co, ci, i, j]`
 * (out-of-range input positions are zero padding).
 *
 * @param x Input, NCHW.
 * @param w Weight, OIHW.
 * @param s Convolution geometry.
 * @param at Flat NCHW indices into `y` to compute.
 * @returns The reference values, one per entry of `at`.
 */
export function conv2dForwardRef(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  s: Conv2dShape,
  at: readonly number[],
): Float64Array {
  const [ho, wo] = conv2dOutSize(s);
  const out = new Float64Array(at.length);
  for (let q = 0; q < at.length; q++) {
    let r = at[q];
    const ow = r % wo;
    r = (r - ow) / wo;
    const oh = r % ho;
    r = (r - oh) / ho;
    const co = r % s.cout;
    const n = (r - co) / s.cout;
    let acc = 0;
    for (let ci = 0; ci < s.cin; ci++) {
      const xBase = (n * s.cin + ci) * s.h;
      const wBase = (co * s.cin + ci) * s.kh;
      for (let i = 0; i < s.kh; i++) {
        const ih = oh * s.stride - s.pad + i;
        if (ih < 0 || ih >= s.h) continue;
        for (let j = 0; j < s.kw; j++) {
          const iw = ow * s.stride - s.pad + j;
          if (iw < 0 || iw >= s.w) continue;
          acc += x[(xBase + ih) * s.w + iw] * w[(wBase + i) * s.kw + j];
        }
      }
    }
    out[q] = acc;
  }
  return out;
}

/**
 * Float64 reference of the input gradient `dx = ∂(Σ y·dy)/∂x` at sampled input positions
 * (a.k.a. transposed convolution of `dy` with `w`).
 *
 * `dx[n,ci,ih,iw] = Σ_{co,i,j : oh = (ih + pad - i)/stride ∈ ℕ, ow likewise, in range} dy[n,co,oh,ow] * w[co,ci,i,j]`
 *
 * @param dy Output cotangent, NCHW `[n, cout, hOut, wOut]`.
 * @param w Weight, OIHW.
 * @param s Convolution geometry.
 * @param at Flat NCHW indices into `dx` (shape of `x`) to compute.
 * @returns The reference values, one per entry of `at`.
 */
export function conv2dInputGradRef(
  dy: ArrayLike<number>,
  w: ArrayLike<number>,
  s: Conv2dShape,
  at: readonly number[],
): Float64Array {
  const [ho, wo] = conv2dOutSize(s);
  const out = new Float64Array(at.length);
  for (let q = 0; q < at.length; q++) {
    let r = at[q];
    const iw = r % s.w;
    r = (r - iw) / s.w;
    const ih = r % s.h;
    r = (r - ih) / s.h;
    const ci = r % s.cin;
    const n = (r - ci) / s.cin;
    let acc = 0;
    for (let co = 0; co < s.cout; co++) {
      const dyBase = (n * s.cout + co) * ho;
      const wBase = (co * s.cin + ci) * s.kh;
      for (let i = 0; i < s.kh; i++) {
        const th = ih + s.pad - i;
        if (th < 0 || th % s.stride !== 0) continue;
        const oh = th / s.stride;
        if (oh >= ho) continue;
        for (let j = 0; j < s.kw; j++) {
          const tw = iw + s.pad - j;
          if (tw < 0 || tw % s.stride !== 0) continue;
          const ow = tw / s.stride;
          if (ow >= wo) continue;
          acc += dy[(dyBase + oh) * wo + ow] * w[(wBase + i) * s.kw + j];
        }
      }
    }
    out[q] = acc;
  }
  return out;
}

/**
 * Float64 reference of the weight gradient `dw = ∂(Σ y·dy)/∂w` at sampled weight positions.
 *
 * `dw[co,ci,i,j] = Σ_{n,oh,ow} dy[n,co,oh,ow] * x[n, ci, oh*stride - pad + i, ow*stride - pad + j]`
 * — each element is a reduction over `n * hOut * wOut` terms (65,536 at 256x256), so keep `at` short.
 *
 * @param x Input, NCHW.
 * @param dy Output cotangent, NCHW `[n, cout, hOut, wOut]`.
 * @param s Convolution geometry.
 * @param at Flat OIHW indices into `dw` (shape of `w`) to compute.
 * @returns The reference values, one per entry of `at`.
 */
export function conv2dWeightGradRef(
  x: ArrayLike<number>,
  dy: ArrayLike<number>,
  s: Conv2dShape,
  at: readonly number[],
): Float64Array {
  const [ho, wo] = conv2dOutSize(s);
  const out = new Float64Array(at.length);
  for (let q = 0; q < at.length; q++) {
    let r = at[q];
    const j = r % s.kw;
    r = (r - j) / s.kw;
    const i = r % s.kh;
    r = (r - i) / s.kh;
    const ci = r % s.cin;
    const co = (r - ci) / s.cin;
    let acc = 0;
    for (let n = 0; n < s.n; n++) {
      const xBase = (n * s.cin + ci) * s.h;
      const dyBase = (n * s.cout + co) * ho;
      for (let oh = 0; oh < ho; oh++) {
        const ih = oh * s.stride - s.pad + i;
        if (ih < 0 || ih >= s.h) continue;
        const xRow = (xBase + ih) * s.w;
        const dyRow = (dyBase + oh) * wo;
        for (let ow = 0; ow < wo; ow++) {
          const iw = ow * s.stride - s.pad + j;
          if (iw < 0 || iw >= s.w) continue;
          acc += dy[dyRow + ow] * x[xRow + iw];
        }
      }
    }
    out[q] = acc;
  }
  return out;
}

/** Which convolution quantity {@link conv2dRef} computes. */
export type Conv2dRefKind = "forward" | "inputGrad" | "weightGrad";

/**
 * Convenience dispatcher over the three sampled convolution references.
 *
 * @param kind `"forward"`: `a = x`, `b = w`, `at` indexes `y` (NCHW).
 *   `"inputGrad"`: `a = dy`, `b = w`, `at` indexes `dx` (NCHW).
 *   `"weightGrad"`: `a = x`, `b = dy`, `at` indexes `dw` (OIHW).
 * @param a First operand (see `kind`).
 * @param b Second operand (see `kind`).
 * @param s Convolution geometry.
 * @param at Flat indices to compute.
 */
export function conv2dRef(
  kind: Conv2dRefKind,
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  s: Conv2dShape,
  at: readonly number[],
): Float64Array {
  switch (kind) {
    case "forward":
      return conv2dForwardRef(a, b, s, at);
    case "inputGrad":
      return conv2dInputGradRef(a, b, s, at);
    case "weightGrad":
      return conv2dWeightGradRef(a, b, s, at);
  }
}

/**
 * Float64 reference of `c = a @ b` at sampled positions.
 *
 * @param a Left operand, row-major `[m, k]`.
 * @param b Right operand, row-major `[k, n]`.
 * @param m Rows of `a` / `c`.
 * @param n Columns of `b` / `c`.
 * @param k Shared (reduction) dimension.
 * @param at Flat row-major indices into `c` (`row * n + col`).
 * @returns The reference values, one per entry of `at`.
 */
export function matmulRef(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  m: number,
  n: number,
  k: number,
  at: readonly number[],
): Float64Array {
  const out = new Float64Array(at.length);
  for (let q = 0; q < at.length; q++) {
    const col = at[q] % n;
    const row = (at[q] - col) / n;
    if (row >= m) throw new RangeError(`matmulRef: index ${at[q]} out of range for [${m}, ${n}]`);
    let acc = 0;
    for (let p = 0; p < k; p++) acc += a[row * k + p] * b[p * n + col];
    out[q] = acc;
  }
  return out;
}

/** Options of {@link sampledMaxRelError}. */
export interface RelErrorOptions {
  /**
   * Typical magnitude of the result that the absolute floor is relative to; defaults to the RMS of
   * `ref`. Pass a known scale (e.g. the RMS of a full output) when the samples are unrepresentative.
   */
  scale?: number;
  /** Absolute floor as a fraction of `scale` (default 0.1). */
  floor?: number;
}

/**
 * Robust maximum relative error between sampled device values and float64 references:
 *
 * `max_i |got_i - ref_i| / (|ref_i| + floor * scale)`, with `scale = rms_i(ref_i)` and `floor = 0.1`
 * by default.
 *
 * For typical elements this is the plain relative error. The floor keeps references that happen to be
 * near zero (random ±1 inputs make long sums cancel) from turning ordinary float32 rounding noise into
 * huge relative errors, while any error that is large compared with the typical magnitude of the
 * result is still flagged. Non-finite `got` values (NaN/Inf) and length mismatches yield `Infinity`.
 * Compare the result with {@link DEFAULT_REL_TOLERANCE} (1e-3) for float32.
 *
 * @param got Device values at the sample positions (see {@link gather}).
 * @param ref Float64 reference values at the same positions.
 */
export function sampledMaxRelError(
  got: ArrayLike<number>,
  ref: ArrayLike<number>,
  opts: RelErrorOptions = {},
): number {
  if (got.length !== ref.length) return Infinity;
  let scale = opts.scale;
  if (scale === undefined) {
    let ss = 0;
    for (let i = 0; i < ref.length; i++) ss += ref[i] * ref[i];
    scale = ref.length ? Math.sqrt(ss / ref.length) : 0;
  }
  const floor = (opts.floor ?? 0.1) * scale || Number.MIN_VALUE;
  let worst = 0;
  for (let i = 0; i < got.length; i++) {
    const g = got[i];
    if (!Number.isFinite(g)) return Infinity;
    const e = Math.abs(g - ref[i]) / (Math.abs(ref[i]) + floor);
    if (e > worst) worst = e;
  }
  return worst;
}

/**
 * Full-tensor adjoint (dot-product) check of a gradient, complementing the sampled checks.
 *
 * A convolution is bilinear, `y = conv(x, w)`, so for any cotangent `dy` the exact gradients satisfy
 * `⟨dy, y⟩ = ⟨dx, x⟩ = ⟨dw, w⟩`. This returns `|⟨grad, primal⟩ - ⟨dy, y⟩| / sqrt(Σ_i (dy_i y_i)²)`,
 * accumulated in float64 over whole tensors; the denominator is the natural size of a sum of
 * random-sign terms, so correct float32 gradients score ~1e-6 while a gradient that is wrong in many
 * places scores ≥1e-2 (the wrong 256x256 weight gradients of tfjs-webgpu and jax-js: 0.08 and 0.48). Compare with
 * {@link DEFAULT_REL_TOLERANCE}. `dy`/`y` and `grad`/`primal` must each share one layout (any layout).
 * Non-finite inputs or length mismatches yield `Infinity`.
 *
 * @param dy Output cotangent.
 * @param y Forward output (e.g. the device's, already checked by sampling).
 * @param grad Gradient under test (`dx` or `dw`).
 * @param primal The matching primal (`x` or `w`).
 */
export function adjointRelError(
  dy: ArrayLike<number>,
  y: ArrayLike<number>,
  grad: ArrayLike<number>,
  primal: ArrayLike<number>,
): number {
  if (dy.length !== y.length || grad.length !== primal.length) return Infinity;
  let lhs = 0;
  let ss = 0;
  for (let i = 0; i < y.length; i++) {
    const p = dy[i] * y[i];
    lhs += p;
    ss += p * p;
  }
  let rhs = 0;
  for (let i = 0; i < grad.length; i++) rhs += grad[i] * primal[i];
  const e = Math.abs(rhs - lhs) / (Math.sqrt(ss) || Number.MIN_VALUE);
  return Number.isFinite(e) ? e : Infinity;
}

/**
 * Transpose an NCHW tensor to NHWC (e.g. for TensorFlow.js, whose WebGPU convolutions are NHWC-only).
 *
 * @param a Flat NCHW data `[n, c, h, w]`.
 * @returns A new flat NHWC array `[n, h, w, c]`.
 */
export function nchwToNhwc(
  a: Float32Array,
  n: number,
  c: number,
  h: number,
  w: number,
): Float32Array<ArrayBuffer> {
  const out = new Float32Array(a.length);
  const hw = h * w;
  for (let b = 0; b < n; b++) {
    for (let ch = 0; ch < c; ch++) {
      const src = (b * c + ch) * hw;
      const dst = b * hw * c + ch;
      for (let p = 0; p < hw; p++) out[dst + p * c] = a[src + p];
    }
  }
  return out;
}

/**
 * Transpose an OIHW convolution weight to HWIO (TensorFlow's filter layout).
 *
 * @param a Flat OIHW data `[o, i, kh, kw]`.
 * @returns A new flat HWIO array `[kh, kw, i, o]`.
 */
export function oihwToHwio(
  a: Float32Array,
  o: number,
  i: number,
  kh: number,
  kw: number,
): Float32Array<ArrayBuffer> {
  const out = new Float32Array(a.length);
  for (let p = 0; p < o; p++) {
    for (let q = 0; q < i; q++) {
      for (let r = 0; r < kh * kw; r++) out[(r * i + q) * o + p] = a[(p * i + q) * kh * kw + r];
    }
  }
  return out;
}

/**
 * Index mapper from flat NCHW positions to flat NHWC positions of the same tensor (for {@link gather}).
 */
export function nchwIndexToNhwc(c: number, h: number, w: number): (i: number) => number {
  return (i) => {
    const x = i % w;
    let r = (i - x) / w;
    const y = r % h;
    r = (r - y) / h;
    const ch = r % c;
    const b = (r - ch) / c;
    return ((b * h + y) * w + x) * c + ch;
  };
}

/**
 * Index mapper from flat OIHW weight positions to flat HWIO positions (for {@link gather}).
 */
export function oihwIndexToHwio(o: number, i: number, kh: number, kw: number): (idx: number) => number {
  return (idx) => {
    const r = idx % (kh * kw);
    const rest = (idx - r) / (kh * kw);
    const q = rest % i;
    const p = (rest - q) / i;
    return (r * i + q) * o + p;
  };
}

// ---------------------------------------------------------------------------------------------------
// Shared workload definitions, so every benchmark (peers and the engine's own) uses identical inputs.

/** The benchmark convolution: N=1, 64→64 channels, 256x256, 3x3, stride 1, pad 1 (NCHW / OIHW). */
export const BENCH_CONV: Readonly<Conv2dShape> = Object.freeze({
  n: 1,
  cin: 64,
  h: 256,
  w: 256,
  cout: 64,
  kh: 3,
  kw: 3,
  stride: 1,
  pad: 1,
});

/** Shape of a matmul `c[m, n] = a[m, k] @ b[k, n]`. */
export interface MatmulShape {
  m: number;
  n: number;
  k: number;
}

/** The benchmark matmul: 1024 x 1024 x 1024 float32. */
export const BENCH_MATMUL: Readonly<MatmulShape> = Object.freeze({ m: 1024, n: 1024, k: 1024 });

/** Seeds of the shared benchmark inputs and sample positions. */
export const BENCH_SEEDS = Object.freeze({
  x: 1,
  w: 2,
  dy: 3,
  a: 4,
  b: 5,
  sampleY: 11,
  sampleDx: 12,
  sampleDw: 13,
  sampleC: 14,
});

/** Default number of sampled elements checked per output tensor. */
export const DEFAULT_SAMPLES = 64;

/** Seeded convolution inputs plus sampled float64 references for `y`, `dx` and `dw`. */
export interface ConvCase {
  shape: Conv2dShape;
  /** Input, NCHW, uniform in [-1, 1). */
  x: Float32Array<ArrayBuffer>;
  /** Weight, OIHW, uniform in [-1, 1). */
  w: Float32Array<ArrayBuffer>;
  /** Output cotangent used for the backward pass, NCHW, uniform in [-1, 1). */
  dy: Float32Array<ArrayBuffer>;
  /** Sampled flat NCHW indices into `y` and the float64 forward references there. */
  y: { at: number[]; ref: Float64Array };
  /** Sampled flat NCHW indices into `dx` and the float64 input-gradient references there. */
  dx: { at: number[]; ref: Float64Array };
  /** Sampled flat OIHW indices into `dw` and the float64 weight-gradient references there. */
  dw: { at: number[]; ref: Float64Array };
}

/**
 * Build the deterministic convolution benchmark case (inputs from {@link BENCH_SEEDS}, `samples`
 * reference points per output tensor). Takes ~50 ms for {@link BENCH_CONV}.
 */
export function makeConvCase(shape: Conv2dShape = BENCH_CONV, samples = DEFAULT_SAMPLES): ConvCase {
  const sz = conv2dSizes(shape);
  const x = randomUniform(BENCH_SEEDS.x, sz.x);
  const w = randomUniform(BENCH_SEEDS.w, sz.w);
  const dy = randomUniform(BENCH_SEEDS.dy, sz.y);
  const atY = sampleIndices(BENCH_SEEDS.sampleY, sz.y, samples);
  const atDx = sampleIndices(BENCH_SEEDS.sampleDx, sz.x, samples);
  const atDw = sampleIndices(BENCH_SEEDS.sampleDw, sz.w, samples);
  return {
    shape: { ...shape },
    x,
    w,
    dy,
    y: { at: atY, ref: conv2dForwardRef(x, w, shape, atY) },
    dx: { at: atDx, ref: conv2dInputGradRef(dy, w, shape, atDx) },
    dw: { at: atDw, ref: conv2dWeightGradRef(x, dy, shape, atDw) },
  };
}

/** Seeded matmul inputs plus sampled float64 references for `c`. */
export interface MatmulCase {
  shape: MatmulShape;
  /** Left operand `[m, k]`, uniform in [-1, 1). */
  a: Float32Array<ArrayBuffer>;
  /** Right operand `[k, n]`, uniform in [-1, 1). */
  b: Float32Array<ArrayBuffer>;
  /** Sampled flat row-major indices into `c` and the float64 references there. */
  c: { at: number[]; ref: Float64Array };
}

/** Build the deterministic matmul benchmark case (inputs from {@link BENCH_SEEDS}). */
export function makeMatmulCase(shape: MatmulShape = BENCH_MATMUL, samples = DEFAULT_SAMPLES): MatmulCase {
  const a = randomUniform(BENCH_SEEDS.a, shape.m * shape.k);
  const b = randomUniform(BENCH_SEEDS.b, shape.k * shape.n);
  const at = sampleIndices(BENCH_SEEDS.sampleC, shape.m * shape.n, samples);
  return { shape: { ...shape }, a, b, c: { at, ref: matmulRef(a, b, shape.m, shape.n, shape.k, at) } };
}
