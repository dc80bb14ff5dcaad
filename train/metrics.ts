/**
 * Image-quality metrics of the SPAIR benchmarks (SPAIR.md section 4), in plain TypeScript on typed arrays
 * so that they run unchanged in Deno and in browsers.
 *
 * Images are planar RGB `[3, H, W]` with values in [0, 1]; width and height are passed explicitly. All
 * arithmetic is done in float64, like the scikit-image reference (`tests/fixtures/gen_metric_fixtures.py`)
 * that `tests/metrics_test.ts` checks against.
 *
 * @module
 */

/** Any numeric array accepted as an image plane or stack of planes. */
export type Pixels = ArrayLike<number>;

/**
 * Luma of planar RGB as in MATLAB's `rgb2ycbcr` (BT.601, studio range):
 * `Y = 16 + 65.481 R + 128.553 G + 24.966 B` with R, G, B in [0, 1], so Y is on the [0, 255] scale
 * (16..235). Y is not rounded to integers.
 */
export function rgbToY(planar: Pixels, w: number, h: number): Float32Array {
  return Float32Array.from(rgbToY64(planar, w, h));
}

function rgbToY64(planar: Pixels, w: number, h: number): Float64Array {
  const n = w * h;
  checkLength(planar, 3 * n, "rgbToY");
  const y = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    y[i] = 16 + 65.481 * planar[i] + 128.553 * planar[n + i] + 24.966 * planar[2 * n + i];
  }
  return y;
}

/**
 * Peak signal-to-noise ratio `10 log10(peak^2 / MSE)` in dB over all elements (skimage
 * `peak_signal_noise_ratio` with `data_range = peak`). Identical inputs give `Infinity`.
 */
export function psnr(a: Pixels, b: Pixels, peak: number): number {
  if (a.length !== b.length) throw new Error(`psnr: lengths differ (${a.length} vs ${b.length})`);
  if (a.length === 0) throw new Error("psnr: empty input");
  let se = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i] - b[i];
    se += d * d;
  }
  const mse = se / a.length;
  return mse === 0 ? Infinity : 10 * Math.log10((peak * peak) / mse);
}

/** SSIM's Gaussian window: sigma 1.5, truncated at 3.5 sigma (radius 5, i.e. 11x11) as skimage does. */
const SSIM_SIGMA = 1.5;
const SSIM_RADIUS = Math.trunc(3.5 * SSIM_SIGMA + 0.5);
/** SSIM's 11-tap Gaussian window (one axis; normalized), shared with the SSIM training loss. */
export const SSIM_KERNEL: Float64Array = (() => {
  const k = new Float64Array(2 * SSIM_RADIUS + 1);
  let sum = 0;
  for (let i = -SSIM_RADIUS; i <= SSIM_RADIUS; i++) {
    k[i + SSIM_RADIUS] = Math.exp((-0.5 * i * i) / (SSIM_SIGMA * SSIM_SIGMA));
    sum += k[i + SSIM_RADIUS];
  }
  for (let i = 0; i < k.length; i++) k[i] /= sum;
  return k;
})();

/** scipy.ndimage "reflect" boundary (half-sample symmetric: d c b a | a b c d | d c b a). */
function reflectIndex(i: number, n: number): number {
  if (n === 1) return 0;
  const period = 2 * n;
  let j = i % period;
  if (j < 0) j += period;
  return j < n ? j : period - 1 - j;
}

/** Separable Gaussian blur of one plane with reflect padding (scipy `gaussian_filter`, mode "reflect"). */
function gaussianBlur(src: Float64Array, w: number, h: number): Float64Array {
  const r = SSIM_RADIUS;
  const k = SSIM_KERNEL;
  const tmp = new Float64Array(w * h);
  const out = new Float64Array(w * h);
  // Precomputed reflected offsets keep the inner loops branch-free.
  const colIdx = new Int32Array(w * (2 * r + 1));
  for (let x = 0; x < w; x++) {
    for (let t = -r; t <= r; t++) colIdx[x * (2 * r + 1) + t + r] = reflectIndex(x + t, w);
  }
  const rowIdx = new Int32Array(h * (2 * r + 1));
  for (let y = 0; y < h; y++) {
    for (let t = -r; t <= r; t++) rowIdx[y * (2 * r + 1) + t + r] = reflectIndex(y + t, h);
  }
  for (let y = 0; y < h; y++) {
    const row = y * w;
    for (let x = 0; x < w; x++) {
      let s = 0;
      const base = x * (2 * r + 1);
      for (let t = 0; t <= 2 * r; t++) s += k[t] * src[row + colIdx[base + t]];
      tmp[row + x] = s;
    }
  }
  for (let y = 0; y < h; y++) {
    const base = y * (2 * r + 1);
    for (let x = 0; x < w; x++) {
      let s = 0;
      for (let t = 0; t <= 2 * r; t++) s += k[t] * tmp[rowIdx[base + t] * w + x];
      out[y * w + x] = s;
    }
  }
  return out;
}

/** Mean SSIM of one plane (skimage algorithm, population covariance). */
function ssimPlane(a: Pixels, b: Pixels, offset: number, w: number, h: number, dataRange: number): number {
  const n = w * h;
  const x = new Float64Array(n);
  const y = new Float64Array(n);
  const xx = new Float64Array(n);
  const yy = new Float64Array(n);
  const xy = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const p = a[offset + i];
    const q = b[offset + i];
    x[i] = p;
    y[i] = q;
    xx[i] = p * p;
    yy[i] = q * q;
    xy[i] = p * q;
  }
  const ux = gaussianBlur(x, w, h);
  const uy = gaussianBlur(y, w, h);
  const uxx = gaussianBlur(xx, w, h);
  const uyy = gaussianBlur(yy, w, h);
  const uxy = gaussianBlur(xy, w, h);
  const c1 = (0.01 * dataRange) ** 2;
  const c2 = (0.03 * dataRange) ** 2;
  // skimage averages only the pixels whose window lies fully inside the image.
  const pad = SSIM_RADIUS;
  let sum = 0;
  let count = 0;
  for (let j = pad; j < h - pad; j++) {
    for (let i = pad; i < w - pad; i++) {
      const p = j * w + i;
      const mx = ux[p];
      const my = uy[p];
      const vx = uxx[p] - mx * mx;
      const vy = uyy[p] - my * my;
      const vxy = uxy[p] - mx * my;
      sum += ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2));
      count++;
    }
  }
  return sum / count;
}

/**
 * Mean structural similarity, matching skimage `structural_similarity(a, b, gaussian_weights=True,
 * sigma=1.5, use_sample_covariance=False, data_range=dataRange, channel_axis=...)`: Gaussian 11x11 window
 * (sigma 1.5), K1 = 0.01, K2 = 0.03, reflect padding in the filter, a 5-pixel border cropped before
 * averaging, and the mean over channels for multi-channel input. Inputs are planar `[channels, H, W]`.
 * Both sides need at least 11 pixels (as in skimage).
 */
export function ssim(
  a: Pixels,
  b: Pixels,
  w: number,
  h: number,
  channels: number,
  dataRange: number,
): number {
  checkLength(a, channels * w * h, "ssim");
  checkLength(b, channels * w * h, "ssim");
  if (w < 2 * SSIM_RADIUS + 1 || h < 2 * SSIM_RADIUS + 1) {
    throw new Error(`ssim: image is ${w}x${h}, smaller than the 11x11 window`);
  }
  let total = 0;
  for (let c = 0; c < channels; c++) total += ssimPlane(a, b, c * w * h, w, h, dataRange);
  return total / channels;
}

/** PSNR on the Y channel (rain-streak convention): Y on the [0, 255] scale, peak 255, no border crop. */
export function psnrY(a: Pixels, b: Pixels, w: number, h: number): number {
  return psnr(rgbToY64(a, w, h), rgbToY64(b, w, h), 255);
}

/** SSIM on the Y channel (rain-streak convention): Y on the [0, 255] scale, data range 255. */
export function ssimY(a: Pixels, b: Pixels, w: number, h: number): number {
  return ssim(rgbToY64(a, w, h), rgbToY64(b, w, h), w, h, 1, 255);
}

/**
 * PSNR over the three RGB channels on the [0, 255] scale with peak 255 (raindrop / deblurring
 * convention). Equal to PSNR on [0, 1] with peak 1. The paper evaluates 8-bit images; inputs read from
 * PNG already are, and `quantize8` turns a float network output into the values its saved PNG would hold.
 */
export function psnrRgb(a: Pixels, b: Pixels, w: number, h: number): number {
  checkLength(a, 3 * w * h, "psnrRgb");
  return psnr(a, b, 1);
}

/**
 * SSIM over RGB (mean over the three channels) of [0, 255]-scale values with data range 255; scale
 * invariance makes this identical to SSIM of the [0, 1] values with data range 1, which is what runs.
 */
export function ssimRgb(a: Pixels, b: Pixels, w: number, h: number): number {
  return ssim(a, b, w, h, 3, 1);
}

/** Rounds [0, 1] values to the nearest 8-bit level (clamped), as saving to an 8-bit PNG would. */
export function quantize8(x: Pixels): Float32Array {
  const out = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = Math.round(Math.min(1, Math.max(0, x[i])) * 255) / 255;
  return out;
}

// sRGB (D65) -> XYZ matrix and D65 2-degree white point used by skimage.color.rgb2lab.
const XYZ_FROM_RGB = [
  [0.412453, 0.35758, 0.180423],
  [0.212671, 0.71516, 0.072169],
  [0.019334, 0.119193, 0.950227],
];
const WHITE_D65 = [0.95047, 1.0, 1.08883];

function srgbToLinear(v: number): number {
  return v > 0.04045 ? Math.pow((v + 0.055) / 1.055, 2.4) : v / 12.92;
}

function labF(t: number): number {
  return t > 0.008856 ? Math.cbrt(t) : 7.787 * t + 16 / 116;
}

/**
 * CIE L*a*b* of planar sRGB in [0, 1] (D65 white, 2-degree observer), same formulas and constants as
 * `skimage.color.rgb2lab`. Returns planar `[3, H, W]` float64: L in [0, 100], a and b roughly [-128, 127].
 */
export function rgbToLab(planar: Pixels, w: number, h: number): Float64Array {
  const n = w * h;
  checkLength(planar, 3 * n, "rgbToLab");
  const out = new Float64Array(3 * n);
  const [m0, m1, m2] = XYZ_FROM_RGB;
  for (let i = 0; i < n; i++) {
    const r = srgbToLinear(planar[i]);
    const g = srgbToLinear(planar[n + i]);
    const b = srgbToLinear(planar[2 * n + i]);
    const fx = labF((m0[0] * r + m0[1] * g + m0[2] * b) / WHITE_D65[0]);
    const fy = labF((m1[0] * r + m1[1] * g + m1[2] * b) / WHITE_D65[1]);
    const fz = labF((m2[0] * r + m2[1] * g + m2[2] * b) / WHITE_D65[2]);
    out[i] = 116 * fy - 16;
    out[n + i] = 500 * (fx - fy);
    out[2 * n + i] = 200 * (fy - fz);
  }
  return out;
}

/**
 * Bilinear resize of planar `[channels, H, W]` data with half-pixel centres and edge clamping, without
 * anti-aliasing: source coordinate `(o + 0.5) * in / out - 0.5`. Same as skimage
 * `resize(order=1, mode="edge", anti_aliasing=False)`, PyTorch `interpolate(mode="bilinear",
 * align_corners=False)` and OpenCV `INTER_LINEAR`.
 */
export function resizeBilinear(
  src: Pixels,
  w: number,
  h: number,
  channels: number,
  outW: number,
  outH: number,
): Float64Array {
  checkLength(src, channels * w * h, "resizeBilinear");
  const axis = (outN: number, inN: number) => {
    const i0 = new Int32Array(outN);
    const i1 = new Int32Array(outN);
    const f = new Float64Array(outN);
    for (let o = 0; o < outN; o++) {
      const s = Math.min(Math.max((o + 0.5) * (inN / outN) - 0.5, 0), inN - 1);
      const lo = Math.floor(s);
      i0[o] = lo;
      i1[o] = Math.min(lo + 1, inN - 1);
      f[o] = s - lo;
    }
    return { i0, i1, f };
  };
  const ax = axis(outW, w);
  const ay = axis(outH, h);
  const out = new Float64Array(channels * outW * outH);
  for (let c = 0; c < channels; c++) {
    const si = c * w * h;
    const so = c * outW * outH;
    for (let y = 0; y < outH; y++) {
      const r0 = si + ay.i0[y] * w;
      const r1 = si + ay.i1[y] * w;
      const fy = ay.f[y];
      for (let x = 0; x < outW; x++) {
        const x0 = ax.i0[x];
        const x1 = ax.i1[x];
        const fx = ax.f[x];
        const top = src[r0 + x0] * (1 - fx) + src[r0 + x1] * fx;
        const bot = src[r1 + x0] * (1 - fx) + src[r1 + x1] * fx;
        out[so + y * outW + x] = top * (1 - fy) + bot * fy;
      }
    }
  }
  return out;
}

/** Result of {@link labRmse}: per-region errors plus the sums that pool them over a dataset. */
export interface LabError {
  /** Mean Lab error over shadow pixels (NaN when the mask marks none). */
  shadow: number;
  /** Mean Lab error over non-shadow pixels (NaN when every pixel is shadow). */
  nonShadow: number;
  /** Mean Lab error over all pixels. */
  all: number;
  /** Summed per-pixel errors and pixel counts per region, for dataset-level ("per pixel") pooling. */
  sums: { shadow: number; nonShadow: number; shadowPixels: number; nonShadowPixels: number };
}

/** Side of the square the ISTD protocol resizes images and masks to before measuring. */
export const ISTD_SIZE = 256;

/**
 * ISTD shadow-removal error in CIE Lab, following the benchmark's evaluation script (which the literature
 * calls "RMSE" although it is an absolute error):
 * 1. restored, target (planar RGB in [0, 1]) and the shadow mask (`[H, W]`, values in [0, 1]) are resized
 *    to 256x256 with {@link resizeBilinear} (the MATLAB script uses bicubic `imresize`; bilinear without
 *    anti-aliasing is chosen here for portability and is what the fixtures reproduce);
 * 2. both images are converted with {@link rgbToLab};
 * 3. the per-pixel error is `|dL| + |da| + |db|` (the sum over channels);
 * 4. a resized mask value > 0.5 marks a shadow pixel; each region's result is its mean per-pixel error.
 */
export function labRmse(
  restored: Pixels,
  target: Pixels,
  shadowMask: Pixels,
  w: number,
  h: number,
): LabError {
  checkLength(shadowMask, w * h, "labRmse mask");
  const s = ISTD_SIZE;
  const n = s * s;
  const la = rgbToLab(resizeBilinear(restored, w, h, 3, s, s), s, s);
  const lb = rgbToLab(resizeBilinear(target, w, h, 3, s, s), s, s);
  const m = resizeBilinear(shadowMask, w, h, 1, s, s);
  let shadow = 0;
  let nonShadow = 0;
  let shadowPixels = 0;
  for (let i = 0; i < n; i++) {
    const e = Math.abs(la[i] - lb[i]) + Math.abs(la[n + i] - lb[n + i]) +
      Math.abs(la[2 * n + i] - lb[2 * n + i]);
    if (m[i] > 0.5) {
      shadow += e;
      shadowPixels++;
    } else {
      nonShadow += e;
    }
  }
  const nonShadowPixels = n - shadowPixels;
  return {
    shadow: shadowPixels > 0 ? shadow / shadowPixels : NaN,
    nonShadow: nonShadowPixels > 0 ? nonShadow / nonShadowPixels : NaN,
    all: (shadow + nonShadow) / n,
    sums: { shadow, nonShadow, shadowPixels, nonShadowPixels },
  };
}

function checkLength(x: Pixels, expected: number, where: string): void {
  if (x.length !== expected) throw new Error(`${where}: expected ${expected} values, got ${x.length}`);
}
