// train/metrics.ts against scikit-image 0.19 reference values (tests/fixtures/gen_metric_fixtures.py).
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import {
  labRmse,
  psnr,
  psnrRgb,
  psnrY,
  quantize8,
  resizeBilinear,
  rgbToLab,
  rgbToY,
  ssim,
  ssimRgb,
  ssimY,
} from "../train/metrics.ts";

interface MetricCase {
  name: string;
  width: number;
  height: number;
  a: string;
  b: string;
  mask: string;
  psnrY: number;
  ssimY: number;
  psnrRgb: number;
  ssimRgb: number;
  ssimRgb01: number;
  lab: { shadow: number | null; nonShadow: number | null; all: number };
  labFirst8: number[];
}

const fixtures: { cases: MetricCase[] } = JSON.parse(
  Deno.readTextFileSync(new URL("./fixtures/metrics.json", import.meta.url)),
);

function decode8(b64: string): Float32Array {
  const bytes = Buffer.from(b64, "base64");
  return Float32Array.from(bytes, (v) => v / 255);
}

// Largest deviations seen, printed once at the end so the report can quote them.
const maxErr = { psnr: 0, ssim: 0, lab: 0, labPixel: 0 };
function close(actual: number, expected: number, tol: number, what: string, kind: keyof typeof maxErr) {
  const err = Math.abs(actual - expected);
  maxErr[kind] = Math.max(maxErr[kind], err);
  assert.ok(err <= tol, `${what}: got ${actual}, expected ${expected} (|diff| ${err} > ${tol})`);
}

for (const c of fixtures.cases) {
  Deno.test(`metrics match skimage: ${c.name}`, () => {
    const a = decode8(c.a);
    const b = decode8(c.b);
    const mask = decode8(c.mask);
    const { width: w, height: h } = c;
    close(psnrY(a, b, w, h), c.psnrY, 1e-3, "psnrY", "psnr");
    close(ssimY(a, b, w, h), c.ssimY, 1e-4, "ssimY", "ssim");
    close(psnrRgb(a, b, w, h), c.psnrRgb, 1e-3, "psnrRgb", "psnr");
    close(ssimRgb(a, b, w, h), c.ssimRgb, 1e-4, "ssimRgb", "ssim");
    close(ssim(a, b, w, h, 3, 1), c.ssimRgb01, 1e-4, "ssim data range 1", "ssim");
    const lab = labRmse(a, b, mask, w, h);
    close(lab.all, c.lab.all, 1e-3, "lab all", "lab");
    close(lab.shadow, c.lab.shadow ?? NaN, 1e-3, "lab shadow", "lab");
    close(lab.nonShadow, c.lab.nonShadow ?? NaN, 1e-3, "lab nonShadow", "lab");
    // Pixel-level rgb2lab check on the first 8 pixels (fixture is [L x8, a x8, b x8]).
    const full = rgbToLab(a, w, h);
    const n = w * h;
    for (let ch = 0; ch < 3; ch++) {
      for (let i = 0; i < 8; i++) {
        close(full[ch * n + i], c.labFirst8[ch * 8 + i], 1e-4, "rgbToLab", "labPixel");
      }
    }
  });
}

Deno.test("metrics: fixture error summary", () => {
  console.log(`max |error| vs skimage: ${JSON.stringify(maxErr)}`);
  assert.ok(maxErr.psnr < 1e-3 && maxErr.ssim < 1e-4 && maxErr.lab < 1e-3);
});

Deno.test("psnr: identical images give Infinity, known MSE gives the formula", () => {
  const x = new Float32Array([0.1, 0.2, 0.3, 0.4]);
  assert.equal(psnr(x, x, 1), Infinity);
  // Every element off by 0.1 -> MSE 0.01 -> 20 dB at peak 1.
  const y = x.map((v) => v + 0.1);
  assert.ok(Math.abs(psnr(x, y, 1) - 20) < 1e-5);
  assert.throws(() => psnr(x, new Float32Array(3), 1), /lengths differ/);
});

Deno.test("ssim: identical images give exactly 1; too-small images are rejected", () => {
  const w = 13, h = 12;
  const x = Float32Array.from({ length: 3 * w * h }, (_, i) => (i * 37 % 101) / 100);
  assert.equal(ssimRgb(x, x, w, h), 1);
  assert.equal(ssimY(x, x, w, h), 1);
  assert.throws(
    () => ssim(new Float32Array(100), new Float32Array(100), 10, 10, 1, 1),
    /smaller than the 11x11/,
  );
});

Deno.test("rgbToY: white, black and a primary", () => {
  // [3, 1, 3] planar: white, black, pure red.
  const y = rgbToY(new Float32Array([1, 0, 1, 1, 0, 0, 1, 0, 0]), 3, 1);
  assert.ok(Math.abs(y[0] - 235) < 1e-3);
  assert.equal(y[1], 16);
  assert.ok(Math.abs(y[2] - (16 + 65.481)) < 1e-4);
});

Deno.test("resizeBilinear: half-pixel centres, edge clamp", () => {
  // 2 -> 4 along x: sources at -0.25, 0.25, 0.75, 1.25 -> clamped/interpolated.
  const out = resizeBilinear(new Float32Array([0, 1]), 2, 1, 1, 4, 1);
  assert.deepEqual(Array.from(out), [0, 0.25, 0.75, 1]);
  // 4 -> 2 averages neighbour pairs (source coordinates 0.5 and 2.5).
  const down = resizeBilinear(new Float32Array([0, 1, 2, 3]), 4, 1, 1, 2, 1);
  assert.deepEqual(Array.from(down), [0.5, 2.5]);
});

Deno.test("labRmse: identical images give zero error; empty mask gives NaN shadow", () => {
  const w = 5, h = 4;
  const x = Float32Array.from({ length: 3 * w * h }, (_, i) => (i % 7) / 7);
  const r = labRmse(x, x, new Float32Array(w * h), w, h);
  assert.equal(r.all, 0);
  assert.equal(r.nonShadow, 0);
  assert.ok(Number.isNaN(r.shadow));
  assert.equal(r.sums.nonShadowPixels, 256 * 256);
  // White vs black differs by L = 100 everywhere (a, b ~ 0).
  const white = new Float32Array(3 * w * h).fill(1);
  const e = labRmse(white, new Float32Array(3 * w * h), new Float32Array(w * h).fill(1), w, h);
  assert.ok(Math.abs(e.shadow - 100) < 0.01, `${e.shadow}`);
  assert.ok(Number.isNaN(e.nonShadow));
});

Deno.test("quantize8: rounds and clamps to 8-bit levels", () => {
  const q = quantize8(new Float32Array([-0.2, 0.5, 0.1, 1.7]));
  assert.deepEqual(Array.from(q), [0, 128 / 255, 26 / 255, 1].map(Math.fround));
});
