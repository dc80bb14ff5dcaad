/**
 * Seeded synthetic degradations for training pairs: rain streaks, lens raindrops, cast shadows and spatially
 * varying motion blur, on planar [3,H,W] RGB in [0,1], pure TypeScript on the CPU. Every random parameter
 * comes from one {@link Rng} seeded by the caller, so a (task, image, seed) triple always gives the same
 * pair. Lengths are in pixels of a 540-pixel-high image and scale with `min(width, height)`, so a
 * downscaled photo gets the same look. See docs/synth.md.
 *
 * @module
 */

import { Rng } from "../engine/random.ts";
import { type Task, TASKS } from "../layers/vocabulary.ts";

/** The four degradations SPAIR restores (the project's {@link Task}s). */
export type SynthTask = Task;

/** All tasks, in a fixed order (the project's `TASKS`). */
export const SYNTH_TASKS: readonly SynthTask[] = TASKS;

/**
 * Threshold tau of the ground-truth mask rule `mean_over_RGB(|degraded - clean|) > tau` (SPAIR.md section 2)
 * per task: only severe distortions count. Shadow pairs use their geometric shadow mask instead (as ISTD
 * ships masks); its tau is what the rule would use for shadow data without masks.
 */
export const SYNTH_TAU: Record<SynthTask, number> = { rain: 0.05, raindrop: 0.05, shadow: 0.05, blur: 0.03 };

/**
 * Parameter ranges of the generator. `standard` is the original, narrower one (the bundled models' data
 * until 2026-12); `wide` widens every knob for training, so that models see more than one look of each
 * degradation; `outside` draws each knob beyond the `wide` range (longer, wider, steeper streaks; bigger,
 * stronger drops; longer shake; darker, warmer or harder shadows), for validation pairs that test
 * generalization (rain keeps its brightness and density inside the wide range there). `standard` reproduces
 * earlier pairs bit for bit.
 */
export type SynthRanges = "standard" | "wide" | "outside";

/** All range profiles, in a fixed order. */
export const SYNTH_RANGES: readonly SynthRanges[] = ["standard", "wide", "outside"];

/** A closed interval [lo, hi] that a parameter is drawn from (uniformly unless noted). */
type Span = readonly [number, number];

interface RainRanges {
  /** Spread (standard deviation) and limit of the dominant fall angle, degrees from vertical. */
  angleSd: number;
  angleMax: number;
  /** Fall angle magnitude drawn uniformly from this span instead (with a random sign), when set. */
  angleOut?: Span;
  layersMax: number;
  length: Span;
  /** Factor on the streak width. */
  width: Span;
  intensity: Span;
  perMegapixel: Span;
}

interface RaindropRanges {
  /** Gaussian sigma of the refracted (out-of-focus) view inside drops. */
  insideBlur: Span;
  coverage: Span;
  rMin: Span;
  rMax: Span;
  /** Magnification of the inverted view (refraction strength). */
  mag: Span;
  maxDrops: number;
}

interface ShadowRanges {
  area: Span;
  piecesMax: number;
  elongation: Span;
  penumbra: Span;
  /** Fraction of light kept in the shadow (darkening). */
  keep: Span;
  /** Per-channel tint of the shadowed light, R, G, B. */
  tint: readonly [Span, Span, Span];
}

interface BlurRanges {
  /** Length of the global camera-shake trajectory. */
  shake: Span;
  /** Turn of the trajectory per segment (radians, normal sd): 0 is a straight line. */
  curve: Span;
  moverLength: Span;
  moversMax: number;
}

const RAIN_RANGES: Record<SynthRanges, RainRanges> = {
  standard: {
    angleSd: 14,
    angleMax: 35,
    layersMax: 3,
    length: [12, 28],
    width: [1, 1],
    intensity: [0.35, 0.7],
    perMegapixel: [700, 2800],
  },
  wide: {
    angleSd: 20,
    angleMax: 50,
    layersMax: 4,
    length: [6, 42],
    width: [0.6, 1.8],
    intensity: [0.2, 0.85],
    perMegapixel: [300, 4200],
  },
  outside: {
    angleSd: 0,
    angleMax: 65,
    angleOut: [52, 62],
    layersMax: 4,
    length: [46, 60],
    width: [1.9, 2.3],
    // Geometry outside the wide range; brightness and density inside it, or the scene would vanish.
    intensity: [0.5, 0.8],
    perMegapixel: [600, 1800],
  },
};

const RAINDROP_RANGES: Record<SynthRanges, RaindropRanges> = {
  standard: {
    insideBlur: [1.5, 4],
    coverage: [0.07, 0.3],
    rMin: [5, 10],
    rMax: [25, 55],
    mag: [1.3, 2.6],
    maxDrops: 600,
  },
  wide: {
    insideBlur: [0.8, 6],
    coverage: [0.04, 0.42],
    rMin: [3, 12],
    rMax: [16, 75],
    mag: [1, 3.2],
    maxDrops: 900,
  },
  outside: {
    insideBlur: [7, 10],
    coverage: [0.45, 0.55],
    rMin: [13, 20],
    rMax: [85, 110],
    mag: [3.4, 4.2],
    maxDrops: 900,
  },
};

const SHADOW_RANGES: Record<SynthRanges, ShadowRanges> = {
  standard: {
    area: [0.12, 0.45],
    piecesMax: 3,
    elongation: [1, 3],
    penumbra: [1.5, 9],
    keep: [0.3, 0.68],
    tint: [[0.78, 0.95], [0.92, 1.0], [1.05, 1.3]],
  },
  wide: {
    area: [0.06, 0.5],
    piecesMax: 5,
    elongation: [1, 5],
    penumbra: [0.6, 16],
    keep: [0.22, 0.78],
    // From a strong blue cast to a slightly warm one (shade under foliage or an evening sky).
    tint: [[0.72, 1.08], [0.9, 1.04], [0.9, 1.38]],
  },
  outside: {
    area: [0.52, 0.62],
    piecesMax: 5,
    elongation: [5.5, 8],
    penumbra: [18, 26],
    keep: [0.12, 0.2],
    // A warm cast outside the wide range: red kept more than blue.
    tint: [[1.12, 1.25], [1.0, 1.08], [0.75, 0.85]],
  },
};

const BLUR_RANGES: Record<SynthRanges, BlurRanges> = {
  standard: { shake: [3, 14], curve: [0.7, 0.7], moverLength: [15, 45], moversMax: 2 },
  wide: { shake: [2, 22], curve: [0, 1.2], moverLength: [8, 60], moversMax: 3 },
  outside: { shake: [25, 34], curve: [1.4, 1.8], moverLength: [65, 85], moversMax: 3 },
};

/** The parameter spans of every task under a profile (for docs and tests). */
export function synthRanges(profile: SynthRanges): {
  rain: RainRanges;
  raindrop: RaindropRanges;
  shadow: ShadowRanges;
  blur: BlurRanges;
} {
  return {
    rain: RAIN_RANGES[profile],
    raindrop: RAINDROP_RANGES[profile],
    shadow: SHADOW_RANGES[profile],
    blur: BLUR_RANGES[profile],
  };
}

/** A synthesized pair: the degraded planar [3,H,W] image and its binary [H*W] mask (1 = degraded). */
export interface SynthResult {
  degraded: Float32Array;
  mask: Float32Array;
}

/** `mean_over_RGB(|degraded - clean|) > tau` as a {0,1} [H*W] mask. */
export function diffMask(degraded: Float32Array, clean: Float32Array, n: number, tau: number): Float32Array {
  const mask = new Float32Array(n);
  for (let p = 0; p < n; p++) {
    const d = Math.abs(degraded[p] - clean[p]) + Math.abs(degraded[n + p] - clean[n + p]) +
      Math.abs(degraded[2 * n + p] - clean[2 * n + p]);
    mask[p] = d / 3 > tau ? 1 : 0;
  }
  return mask;
}

/**
 * Degrades a clean planar [3,H,W] image in [0,1] with the given task and seed. The mask is the tau rule of
 * {@link SYNTH_TAU} for rain, raindrop and blur, and the geometric shadow region for shadow.
 */
export function synthesize(
  task: SynthTask,
  clean: Float32Array,
  width: number,
  height: number,
  seed: number,
  ranges: SynthRanges = "standard",
): SynthResult {
  if (clean.length !== 3 * width * height) {
    throw new Error(
      `synthesize: expected ${3 * width * height} values for ${width}x${height}, got ${clean.length}`,
    );
  }
  if (!SYNTH_RANGES.includes(ranges)) throw new Error(`synthesize: unknown ranges ${ranges}`);
  const rng = new Rng(seed);
  const n = width * height;
  let degraded: Float32Array;
  switch (task) {
    case "rain":
      degraded = rain(clean, width, height, rng, RAIN_RANGES[ranges]);
      break;
    case "raindrop":
      degraded = raindrop(clean, width, height, rng, RAINDROP_RANGES[ranges]);
      break;
    case "blur":
      degraded = motionBlur(clean, width, height, rng, BLUR_RANGES[ranges]);
      break;
    case "shadow": {
      const r = shadow(clean, width, height, rng, SHADOW_RANGES[ranges]);
      clamp01(r.degraded);
      return r;
    }
    default:
      throw new Error(`synthesize: unknown task ${task}`);
  }
  clamp01(degraded);
  return { degraded, mask: diffMask(degraded, clean, n, SYNTH_TAU[task]) };
}

// ---------------------------------------------------------------------------------------------------------
// Shared helpers

function clamp01(a: Float32Array): void {
  for (let i = 0; i < a.length; i++) a[i] = a[i] < 0 ? 0 : a[i] > 1 ? 1 : a[i];
}

function smoothstep(e0: number, e1: number, x: number): number {
  const t = Math.min(1, Math.max(0, (x - e0) / (e1 - e0)));
  return t * t * (3 - 2 * t);
}

/** One box-filter pass of radius r along rows (horizontal) or columns, clamped edges, running sums. */
function boxPass(
  src: Float32Array,
  dst: Float32Array,
  w: number,
  h: number,
  r: number,
  horizontal: boolean,
): void {
  const len = horizontal ? w : h;
  const lines = horizontal ? h : w;
  const stride = horizontal ? 1 : w;
  const inv = 1 / (2 * r + 1);
  for (let l = 0; l < lines; l++) {
    const base = horizontal ? l * w : l;
    let acc = 0;
    for (let k = -r; k <= r; k++) acc += src[base + Math.min(len - 1, Math.max(0, k)) * stride];
    for (let i = 0; i < len; i++) {
      dst[base + i * stride] = acc * inv;
      const add = Math.min(len - 1, i + r + 1);
      const sub = Math.max(0, i - r);
      acc += src[base + add * stride] - src[base + sub * stride];
    }
  }
}

/** Gaussian blur of one [H*W] channel approximated by three box passes per axis (cost independent of sigma). */
export function gaussianBlur(src: Float32Array, w: number, h: number, sigma: number): Float32Array {
  if (sigma < 0.3) return Float32Array.from(src);
  // Box radius whose three-fold convolution has variance sigma^2: 3 * ((2r+1)^2 - 1) / 12 = sigma^2.
  const r = Math.max(1, Math.round((Math.sqrt(4 * sigma * sigma + 1) - 1) / 2));
  const a = Float32Array.from(src);
  const b = new Float32Array(src.length);
  for (let k = 0; k < 3; k++) {
    boxPass(a, b, w, h, r, true);
    boxPass(b, a, w, h, r, false);
  }
  return a;
}

function blurPlanar(img: Float32Array, w: number, h: number, sigma: number): Float32Array {
  const n = w * h;
  const out = new Float32Array(3 * n);
  for (let c = 0; c < 3; c++) out.set(gaussianBlur(img.subarray(c * n, (c + 1) * n), w, h, sigma), c * n);
  return out;
}

/** Bilinear sample of one channel (offset `off` into a planar buffer) at (x, y), clamped to the border. */
function sample(img: Float32Array, off: number, w: number, h: number, x: number, y: number): number {
  x = x < 0 ? 0 : x > w - 1 ? w - 1 : x;
  y = y < 0 ? 0 : y > h - 1 ? h - 1 : y;
  const x0 = Math.floor(x), y0 = Math.floor(y);
  const x1 = x0 + 1 < w ? x0 + 1 : x0, y1 = y0 + 1 < h ? y0 + 1 : y0;
  const fx = x - x0, fy = y - y0;
  const a = img[off + y0 * w + x0], b = img[off + y0 * w + x1];
  const c = img[off + y1 * w + x0], d = img[off + y1 * w + x1];
  return (a + (b - a) * fx) * (1 - fy) + (c + (d - c) * fx) * fy;
}

/** Adds `v` at (x, y) into an [H*W] layer with bilinear weights (sub-pixel accurate line drawing). */
function splat(layer: Float32Array, w: number, h: number, x: number, y: number, v: number): void {
  const x0 = Math.floor(x), y0 = Math.floor(y);
  const fx = x - x0, fy = y - y0;
  if (x0 >= 0 && x0 < w) {
    if (y0 >= 0 && y0 < h) layer[y0 * w + x0] += v * (1 - fx) * (1 - fy);
    if (y0 + 1 >= 0 && y0 + 1 < h) layer[(y0 + 1) * w + x0] += v * (1 - fx) * fy;
  }
  if (x0 + 1 >= 0 && x0 + 1 < w) {
    if (y0 >= 0 && y0 < h) layer[y0 * w + x0 + 1] += v * fx * (1 - fy);
    if (y0 + 1 >= 0 && y0 + 1 < h) layer[(y0 + 1) * w + x0 + 1] += v * fx * fy;
  }
}

/** Clamped normal deviate, for parameters that should cluster around a typical value. */
function normalIn(rng: Rng, mean: number, sd: number, lo: number, hi: number): number {
  return Math.min(hi, Math.max(lo, mean + sd * rng.normal()));
}

/** A random closed blob: radius as a function of angle, 1 + low-order harmonics (irregular, smooth). */
class Blob {
  readonly a2: number;
  readonly a3: number;
  readonly p2: number;
  readonly p3: number;
  constructor(rng: Rng, irregularity: number) {
    this.a2 = rng.uniform(0, irregularity);
    this.a3 = rng.uniform(0, irregularity * 0.6);
    this.p2 = rng.uniform(0, 2 * Math.PI);
    this.p3 = rng.uniform(0, 2 * Math.PI);
  }
  /** Boundary radius (relative) in direction phi. */
  radius(phi: number): number {
    return 1 + this.a2 * Math.cos(2 * phi + this.p2) + this.a3 * Math.cos(3 * phi + this.p3);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Rain streaks

function rain(clean: Float32Array, w: number, h: number, rng: Rng, R: RainRanges): Float32Array {
  const n = w * h;
  const s = Math.min(w, h) / 540;
  // One dominant fall direction per image (degrees from vertical), mostly near vertical.
  const theta0 = R.angleOut
    ? rng.uniform(...R.angleOut) * (rng.next() < 0.5 ? -1 : 1)
    : normalIn(rng, 0, R.angleSd, -R.angleMax, R.angleMax);
  const layers = 1 + rng.int(R.layersMax);
  const heavy = rng.uniform(0, 1); // 0 light drizzle .. 1 downpour: scales density and intensity together
  const streaks = new Float32Array(n); // screen-combined streak opacity
  const acc = new Float32Array(n);
  for (let l = 0; l < layers; l++) {
    // Layer l = 0 is farthest: short, thin, faint, dense; nearer layers are longer, wider, brighter, sparser.
    const depth = layers === 1 ? rng.uniform(0, 1) : l / (layers - 1);
    const theta = ((theta0 + rng.uniform(-4, 4)) * Math.PI) / 180;
    const length = s * rng.uniform(...R.length) * (1 + 1.6 * depth);
    const widthGain = R.width[0] === R.width[1] ? R.width[0] : rng.uniform(...R.width);
    const width = s * (0.35 + 0.9 * depth * rng.uniform(0.6, 1.2)) * widthGain;
    const intensity = rng.uniform(...R.intensity) * (0.75 + 0.5 * heavy) * (0.8 + 0.3 * depth);
    const perMegapixel = rng.uniform(...R.perMegapixel) * (0.4 + 1.0 * heavy) / (1 + 1.5 * depth);
    const count = Math.round(perMegapixel * (w + length) * (h + length) / 1e6);
    acc.fill(0);
    for (let k = 0; k < count; k++) {
      const cx = rng.uniform(-length / 2, w + length / 2);
      const cy = rng.uniform(-length / 2, h + length / 2);
      const t = theta + ((rng.uniform(-1.5, 1.5)) * Math.PI) / 180;
      const dx = Math.sin(t), dy = Math.cos(t);
      const li = length * rng.uniform(0.6, 1.4);
      const ai = intensity * rng.uniform(0.45, 1);
      const steps = Math.max(2, Math.ceil(li / 0.6));
      const step = li / steps;
      for (let j = 0; j <= steps; j++) {
        const u = j / steps; // 0..1 along the streak
        // Motion-blurred drop: bright in the middle, fading at both ends.
        const taper = Math.sin(Math.PI * u) ** 0.6;
        const off = (u - 0.5) * li;
        splat(acc, w, h, cx + off * dx, cy + off * dy, ai * taper * step);
      }
    }
    // A line of unit linear density blurred by a Gaussian of sigma peaks at 1/(sqrt(2 pi) sigma): rescale so
    // the streak core reaches its intensity whatever its width.
    const sigma = Math.sqrt(width * width + 0.3);
    const blurred = gaussianBlur(acc, w, h, sigma);
    const gain = Math.sqrt(2 * Math.PI) * sigma;
    for (let p = 0; p < n; p++) {
      const a = Math.min(1, blurred[p] * gain);
      streaks[p] = 1 - (1 - streaks[p]) * (1 - a);
    }
  }
  // Rain is lit by the sky: near white with a slight cool tint; a faint veil for heavy rain.
  const tint = [rng.uniform(0.85, 0.95), rng.uniform(0.9, 0.97), rng.uniform(0.95, 1)];
  const veil = heavy * rng.uniform(0, 0.025);
  const out = new Float32Array(3 * n);
  for (let c = 0; c < 3; c++) {
    const o = c * n;
    for (let p = 0; p < n; p++) {
      const v = clean[o + p] * (1 - veil) + veil * tint[c];
      // Screen blend: streaks brighten dark areas strongly and bright areas little, like real rain.
      out[o + p] = 1 - (1 - v) * (1 - streaks[p] * tint[c]);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// Raindrops on the lens

function raindrop(clean: Float32Array, w: number, h: number, rng: Rng, R: RaindropRanges): Float32Array {
  const n = w * h;
  const s = Math.min(w, h) / 540;
  // The camera focuses on the scene, so drops (on the glass) are out of focus: their refracted view is
  // sampled from a blurred copy.
  const inside = blurPlanar(clean, w, h, s * rng.uniform(...R.insideBlur));
  const near = blurPlanar(clean, w, h, s * rng.uniform(1, 2.5));
  const coverage = rng.uniform(...R.coverage);
  const rMin = s * rng.uniform(...R.rMin);
  const rMax = s * rng.uniform(...R.rMax);
  interface Drop {
    x: number;
    y: number;
    r: number;
    aspect: number;
    rot: number;
    blob: Blob;
    mag: number;
    ox: number;
    oy: number;
    soft: number;
    rim: number;
    gain: number;
    spec: number;
  }
  const drops: Drop[] = [];
  let area = 0;
  while (area < coverage * n && drops.length < R.maxDrops) {
    // Log-uniform radii: many small drops, a few big ones.
    const r = Math.exp(rng.uniform(Math.log(rMin), Math.log(rMax)));
    const aspect = rng.uniform(0.8, 1.35); // > 1: taller, drops sag under gravity
    drops.push({
      x: rng.uniform(0, w),
      y: rng.uniform(0, h),
      r,
      aspect,
      rot: rng.uniform(-0.35, 0.35),
      blob: new Blob(rng, 0.12),
      mag: rng.uniform(...R.mag),
      ox: rng.uniform(-0.4, 0.4) * r,
      oy: rng.uniform(-0.8, 0.1) * r,
      soft: rng.uniform(0.12, 0.3),
      rim: rng.uniform(0.05, 0.3),
      gain: rng.uniform(0.95, 1.15),
      spec: rng.next() < 0.5 ? rng.uniform(0.15, 0.5) : 0,
    });
    area += Math.PI * r * r * aspect;
  }
  // Halo: the glass around drops is smeared (water film), so the background near drops is slightly blurred.
  const cover = new Float32Array(n);
  const alphaOf = (d: Drop, x: number, y: number): { q: number; a: number; lx: number; ly: number } => {
    const dx = x - d.x, dy = y - d.y;
    const cs = Math.cos(d.rot), sn = Math.sin(d.rot);
    const lx = (cs * dx + sn * dy) / d.r;
    const ly = (-sn * dx + cs * dy) / (d.r * d.aspect);
    const q = Math.hypot(lx, ly) / d.blob.radius(Math.atan2(ly, lx));
    return { q, a: 1 - smoothstep(1 - d.soft, 1, q), lx, ly };
  };
  const bbox = (d: Drop, grow: number) => {
    const e = d.r * Math.max(1, d.aspect) * 1.35 * grow;
    return [
      Math.max(0, Math.floor(d.x - e)),
      Math.min(w - 1, Math.ceil(d.x + e)),
      Math.max(0, Math.floor(d.y - e)),
      Math.min(h - 1, Math.ceil(d.y + e)),
    ];
  };
  for (const d of drops) {
    const [x0, x1, y0, y1] = bbox(d, 1);
    for (let y = y0; y <= y1; y++) {
      for (let x = x0; x <= x1; x++) {
        const { a } = alphaOf(d, x, y);
        if (a > cover[y * w + x]) cover[y * w + x] = a;
      }
    }
  }
  const halo = gaussianBlur(cover, w, h, s * rng.uniform(6, 14));
  const haloGain = rng.uniform(0.8, 1.6);
  const out = new Float32Array(3 * n);
  for (let p = 0; p < n; p++) {
    const g = Math.min(1, halo[p] * haloGain);
    for (let c = 0; c < 3; c++) out[c * n + p] = clean[c * n + p] * (1 - g) + near[c * n + p] * g;
  }
  for (const d of drops) {
    const [x0, x1, y0, y1] = bbox(d, 1);
    for (let y = y0; y <= y1; y++) {
      for (let x = x0; x <= x1; x++) {
        const { q, a, lx, ly } = alphaOf(d, x, y);
        if (a <= 0) continue;
        // A drop is a tiny fish-eye lens: it shows an inverted, wider view of the scene behind it, more
        // compressed towards its edge.
        const k = d.mag * (1 + 0.7 * q * q);
        const sx = d.x + d.ox - (x - d.x) * k;
        const sy = d.y + d.oy - (y - d.y) * k;
        const shade = d.gain * (1 - d.rim * smoothstep(0.55, 1, q));
        const hx = lx + 0.3, hy = ly + 0.4;
        const spec = d.spec * Math.exp(-(hx * hx + hy * hy) / 0.02);
        const p = y * w + x;
        for (let c = 0; c < 3; c++) {
          const v = sample(inside, c * n, w, h, sx, sy) * shade + spec;
          out[c * n + p] = out[c * n + p] * (1 - a) + v * a;
        }
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// Cast shadows

/** Even-odd scanline fill of a polygon into an [H*W] {0,1} layer (OR with what is there). */
function fillPolygon(layer: Float32Array, w: number, h: number, xs: number[], ys: number[]): void {
  const m = xs.length;
  const cross: number[] = [];
  for (let y = 0; y < h; y++) {
    const yc = y + 0.5;
    cross.length = 0;
    for (let i = 0, j = m - 1; i < m; j = i++) {
      if ((ys[i] > yc) !== (ys[j] > yc)) {
        cross.push(xs[j] + ((yc - ys[j]) * (xs[i] - xs[j])) / (ys[i] - ys[j]));
      }
    }
    cross.sort((a, b) => a - b);
    for (let k = 0; k + 1 < cross.length; k += 2) {
      const a = Math.max(0, Math.ceil(cross[k] - 0.5));
      const b = Math.min(w - 1, Math.floor(cross[k + 1] - 0.5));
      for (let x = a; x <= b; x++) layer[y * w + x] = 1;
    }
  }
}

function shadow(clean: Float32Array, w: number, h: number, rng: Rng, R: ShadowRanges): SynthResult {
  const n = w * h;
  const s = Math.min(w, h) / 540;
  const hard = new Float32Array(n);
  const target = rng.uniform(...R.area); // intended shadow area fraction
  const pieces = 1 + rng.int(R.piecesMax);
  for (let k = 0; k < pieces; k++) {
    // Shadows of buildings, poles, people: elongated random polygons, often entering from an edge.
    const area = (target * n) / pieces;
    const elong = rng.uniform(...R.elongation);
    const base = Math.sqrt(area / Math.PI);
    const rx = base * Math.sqrt(elong), ry = base / Math.sqrt(elong);
    const rot = rng.uniform(0, Math.PI);
    const fromEdge = rng.next() < 0.6;
    const cx = fromEdge
      ? (rng.next() < 0.5 ? rng.uniform(-0.1, 0.15) : rng.uniform(0.85, 1.1)) * w
      : rng.uniform(0.2, 0.8) * w;
    const cy = rng.uniform(0.1, 0.95) * h;
    const verts = 5 + rng.int(6);
    const xs: number[] = [], ys: number[] = [];
    for (let i = 0; i < verts; i++) {
      const phi = ((i + rng.uniform(-0.3, 0.3)) / verts) * 2 * Math.PI;
      const r = rng.uniform(0.55, 1.35);
      const px = Math.cos(phi) * rx * r, py = Math.sin(phi) * ry * r;
      xs.push(cx + px * Math.cos(rot) - py * Math.sin(rot));
      ys.push(cy + px * Math.sin(rot) + py * Math.cos(rot));
    }
    fillPolygon(hard, w, h, xs, ys);
  }
  // Round the polygon corners (blur, re-threshold): the geometric shadow region, which is the mask.
  const rounded = gaussianBlur(hard, w, h, s * rng.uniform(4, 16));
  const mask = new Float32Array(n);
  for (let p = 0; p < n; p++) mask[p] = rounded[p] > 0.5 ? 1 : 0;
  // Penumbra: the soft transition of a shadow cast by an extended light source; its width varies.
  const alpha = gaussianBlur(mask, w, h, s * rng.uniform(...R.penumbra));
  // Shadowed surfaces are lit by the blue sky only: darker, with red attenuated more than blue.
  const k = rng.uniform(...R.keep);
  const tint = R.tint.map((t) => rng.uniform(...t));
  const keep = tint.map((t) => Math.min(0.95, k * t));
  const degraded = new Float32Array(3 * n);
  for (let c = 0; c < 3; c++) {
    for (let p = 0; p < n; p++) degraded[c * n + p] = clean[c * n + p] * (1 - alpha[p] * (1 - keep[c]));
  }
  return { degraded, mask };
}

// ---------------------------------------------------------------------------------------------------------
// Spatially varying motion blur

/** A sparse blur kernel: integer offsets and weights summing to 1. */
interface Taps {
  dx: Int32Array;
  dy: Int32Array;
  wt: Float32Array;
}

/** Camera shake: a random smooth 2D trajectory, splatted into a kernel centred on its centroid (no shift). */
function shakeKernel(rng: Rng, length: number, curve: number): Taps {
  const pts: [number, number][] = [[0, 0]];
  let ang = rng.uniform(0, 2 * Math.PI);
  const segs = 6 + rng.int(5);
  for (let i = 0; i < segs; i++) {
    ang += rng.normal() * curve;
    const [px, py] = pts[pts.length - 1];
    const step = (length / segs) * rng.uniform(0.5, 1.5);
    pts.push([px + Math.cos(ang) * step, py + Math.sin(ang) * step]);
  }
  // Dense samples along the path; the camera dwells longer where it moves slowly, so weight is uniform in time.
  const samples: [number, number][] = [];
  for (let i = 0; i + 1 < pts.length; i++) {
    for (let t = 0; t < 16; t++) {
      const u = t / 16;
      samples.push([
        pts[i][0] + (pts[i + 1][0] - pts[i][0]) * u,
        pts[i][1] + (pts[i + 1][1] - pts[i][1]) * u,
      ]);
    }
  }
  const mx = samples.reduce((a, p) => a + p[0], 0) / samples.length;
  const my = samples.reduce((a, p) => a + p[1], 0) / samples.length;
  const map = new Map<number, number>();
  const add = (x: number, y: number, v: number) => {
    const key = (y + 512) * 1024 + (x + 512);
    map.set(key, (map.get(key) ?? 0) + v);
  };
  for (const [px, py] of samples) {
    const x = px - mx, y = py - my;
    const x0 = Math.floor(x), y0 = Math.floor(y);
    const fx = x - x0, fy = y - y0;
    add(x0, y0, (1 - fx) * (1 - fy));
    add(x0 + 1, y0, fx * (1 - fy));
    add(x0, y0 + 1, (1 - fx) * fy);
    add(x0 + 1, y0 + 1, fx * fy);
  }
  const keys = [...map.keys()].sort((a, b) => a - b);
  const total = keys.reduce((a, k) => a + map.get(k)!, 0);
  return {
    dx: Int32Array.from(keys, (k) => (k % 1024) - 512),
    dy: Int32Array.from(keys, (k) => Math.floor(k / 1024) - 512),
    wt: Float32Array.from(keys, (k) => map.get(k)! / total),
  };
}

/** Applies a sparse kernel to a planar image (clamped borders): cost = taps x pixels, no dense 2D kernel. */
function applyTaps(img: Float32Array, w: number, h: number, taps: Taps): Float32Array {
  const n = w * h;
  const out = new Float32Array(3 * n);
  const xi = new Int32Array(w);
  for (let t = 0; t < taps.wt.length; t++) {
    const dx = taps.dx[t], dy = taps.dy[t], wt = taps.wt[t];
    for (let x = 0; x < w; x++) xi[x] = Math.min(w - 1, Math.max(0, x + dx));
    for (let c = 0; c < 3; c++) {
      const o = c * n;
      for (let y = 0; y < h; y++) {
        const row = o + Math.min(h - 1, Math.max(0, y + dy)) * w;
        const orow = o + y * w;
        for (let x = 0; x < w; x++) out[orow + x] += wt * img[row + xi[x]];
      }
    }
  }
  return out;
}

/** Box motion blur of length `len` along (cx, cy) of `chans` planar channels, inside a bounding box only. */
function lineBlur(
  img: Float32Array,
  chans: number,
  w: number,
  h: number,
  len: number,
  cx: number,
  cy: number,
  box: number[],
): Float32Array {
  const n = w * h;
  const out = new Float32Array(chans * n);
  const steps = Math.max(1, Math.ceil(len));
  const [x0, x1, y0, y1] = box;
  for (let c = 0; c < chans; c++) {
    for (let y = y0; y <= y1; y++) {
      for (let x = x0; x <= x1; x++) {
        let acc = 0;
        for (let j = 0; j <= steps; j++) {
          const t = (j / steps - 0.5) * len;
          acc += sample(img, c * n, w, h, x + t * cx, y + t * cy);
        }
        out[c * n + y * w + x] = acc / (steps + 1);
      }
    }
  }
  return out;
}

function motionBlur(clean: Float32Array, w: number, h: number, rng: Rng, R: BlurRanges): Float32Array {
  const n = w * h;
  const s = Math.min(w, h) / 540;
  // Global camera shake, short (a few pixels) so that only textured regions are severely hit; its path is
  // a straight line (curve 0) or bends by a random turn per segment.
  const shake = s * rng.uniform(...R.shake);
  const curve = R.curve[0] === R.curve[1] ? R.curve[0] : rng.uniform(...R.curve);
  const base = applyTaps(clean, w, h, shakeKernel(rng, shake, curve));
  const movers = 1 + rng.int(R.moversMax);
  for (let k = 0; k < movers; k++) {
    // A moving object: a soft irregular region blurred by a longer linear motion; composited as the
    // time-average of the object sliding over the (shaken) background: mb(c * m) + (1 - mb(m)) * base.
    const r = s * rng.uniform(60, 170);
    const aspect = rng.uniform(0.6, 1.6);
    const blob = new Blob(rng, 0.2);
    const ox = rng.uniform(0.15, 0.85) * w, oy = rng.uniform(0.15, 0.85) * h;
    const len = s * rng.uniform(...R.moverLength);
    const ang = normalIn(rng, 0, 0.5, -Math.PI / 2, Math.PI / 2) + (rng.next() < 0.5 ? Math.PI : 0);
    const cx = Math.cos(ang), cy = Math.sin(ang);
    const reach = r * Math.max(aspect, 1) * 1.3 + len;
    const box = [
      Math.max(0, Math.floor(ox - reach)),
      Math.min(w - 1, Math.ceil(ox + reach)),
      Math.max(0, Math.floor(oy - reach)),
      Math.min(h - 1, Math.ceil(oy + reach)),
    ];
    const objMask = new Float32Array(n);
    const obj = new Float32Array(4 * n); // c * m in channels 0..2, m in channel 3
    for (let y = box[2]; y <= box[3]; y++) {
      for (let x = box[0]; x <= box[1]; x++) {
        const dx = (x - ox) / r, dy = (y - oy) / (r * aspect);
        const q = Math.hypot(dx, dy) / blob.radius(Math.atan2(dy, dx));
        const m = 1 - smoothstep(0.85, 1.05, q);
        objMask[y * w + x] = m;
      }
    }
    for (let c = 0; c < 3; c++) for (let p = 0; p < n; p++) obj[c * n + p] = clean[c * n + p] * objMask[p];
    obj.set(objMask, 3 * n);
    const mb = lineBlur(obj, 4, w, h, len, cx, cy, box);
    for (let y = box[2]; y <= box[3]; y++) {
      for (let x = box[0]; x <= box[1]; x++) {
        const p = y * w + x;
        const m = mb[3 * n + p];
        for (let c = 0; c < 3; c++) base[c * n + p] = mb[c * n + p] + (1 - m) * base[c * n + p];
      }
    }
  }
  return base;
}
