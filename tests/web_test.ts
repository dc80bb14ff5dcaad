// End-to-end test of the browser demo: build the site with esbuild, serve it on 127.0.0.1, restore a small
// image in headless Chromium (WebGPU on SwiftShader when there is no GPU) and compare with the same model
// restoring the same pixels in this Deno process.
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { chromium } from "playwright-core";
import { PNG } from "pngjs";
import { testEngine } from "./_setup.ts";
import { loadModel, noGrad, restorePlanar, SpairModel, tensor, tidy } from "../mod.ts";
import { buildWeb, staticHandler } from "../web/build.ts";

const CHROMIUM = Deno.env.get("SPAIR_CHROMIUM") ?? "/usr/bin/chromium";
const WIDTH = 64;
const HEIGHT = 48;
const TOLERANCE = 2 / 255;

/** Flags for a headless Chromium with WebGPU that stays off the network. */
const CHROMIUM_ARGS = [
  "--headless=new",
  "--no-sandbox",
  "--enable-unsafe-webgpu",
  // Dawn's built-in CPU Vulkan implementation: the same adapter on every machine, GPU or not.
  "--use-webgpu-adapter=swiftshader",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
  "--disable-quic",
];

/** A smooth colour ramp crossed by bright diagonal streaks, as RGBA bytes. */
function testImage(): Uint8Array {
  const rgba = new Uint8Array(WIDTH * HEIGHT * 4);
  for (let y = 0; y < HEIGHT; y++) {
    for (let x = 0; x < WIDTH; x++) {
      const o = 4 * (y * WIDTH + x);
      const streak = (x + 2 * y) % 11 === 0 ? 90 : 0;
      rgba[o] = Math.min(255, 40 + 3 * x + streak);
      rgba[o + 1] = Math.min(255, 60 + 4 * y + streak);
      rgba[o + 2] = Math.min(255, 120 + ((x * y) % 50) + streak);
      rgba[o + 3] = 255;
    }
  }
  return rgba;
}

/** Seeded untrained weights whose NetL tail bias is shifted so that about a third of the test image is
 * masked (untrained, the mask is empty and the sparse path would go untested), with the threshold in the
 * widest gap between logits so that float differences between GPUs cannot flip a pixel. */
async function maskingWeights(planar: Float32Array): Promise<{ weights: Uint8Array; margin: number }> {
  const model = new SpairModel({ preset: "tiny", variant: "SPAIR" }, 11);
  const logits = noGrad(() => tidy(() => model.netL.forward(tensor(planar, [1, 3, HEIGHT, WIDTH])).logits));
  const sorted = (await logits.data()).sort();
  logits.dispose();
  let at = Math.floor(sorted.length * 0.6);
  for (let i = at; i < Math.floor(sorted.length * 0.75); i++) {
    if (sorted[i + 1] - sorted[i] > sorted[at + 1] - sorted[at]) at = i;
  }
  const threshold = (sorted[at] + sorted[at + 1]) / 2;
  const state = await model.stateDict();
  state["netL.tail.bias"].data[0] -= threshold;
  model.loadStateDict(state);
  const weights = await model.saveSafetensors({ preset: "tiny", variant: "SPAIR", task: "rain" });
  for (const p of model.parameters()) p.dispose();
  return { weights, margin: (sorted[at + 1] - sorted[at]) / 2 };
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert(a.length === b.length, `length ${a.length} != ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    m = Number.isNaN(d) ? Infinity : Math.max(m, d);
  }
  return m;
}

Deno.test({
  name: "web demo: headless Chromium restores like Deno (within 2/255)",
  // Playwright keeps pipes and timers of the browser process it manages.
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    try {
      await Deno.stat(CHROMIUM);
    } catch {
      throw new Error(
        `${CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium, or ` +
          "`deno run -A cli.ts doctor --install`), or point SPAIR_CHROMIUM at a Chromium binary",
      );
    }
    assert(testEngine, "engine");
    const started = performance.now();

    // Weights and the reference result, computed here with the library as the page uses it.
    const rgba = testImage();
    const plane = WIDTH * HEIGHT;
    const planar = new Float32Array(3 * plane);
    for (let i = 0; i < plane; i++) for (let c = 0; c < 3; c++) planar[c * plane + i] = rgba[4 * i + c] / 255;
    const { weights, margin } = await maskingWeights(planar);
    const { model } = loadModel(weights, "test weights");
    const want = await restorePlanar(model, planar, WIDTH, HEIGHT);
    for (const p of model.parameters()) p.dispose();
    const png = new PNG({ width: WIDTH, height: HEIGHT });
    png.data.set(rgba);
    const pngBytes = PNG.sync.write(png);

    const site = await Deno.makeTempDir({ prefix: "spair-web-" });
    const profile = await Deno.makeTempDir({ prefix: "spair-chromium-" });
    const build = await buildWeb({ outdir: site, copyWeights: false });
    assert(build.bundleBytes > 10_000, `bundle of ${build.bundleBytes} bytes`);
    const server = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen() {} },
      staticHandler(site, { "/weights/rain.safetensors": weights }),
    );
    const origin = `http://127.0.0.1:${server.addr.port}`;
    const context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      args: CHROMIUM_ARGS,
      headless: true,
      timeout: 60_000,
    });
    const log: string[] = [];
    try {
      const page = context.pages()[0] ?? await context.newPage();
      page.on("console", (m) => log.push(`${m.type()}: ${m.text()}`));
      page.on("pageerror", (e) => log.push(`pageerror: ${e.message}`));
      const state = () => page.evaluate(() => document.body.dataset.state ?? "");

      await t.step("page finds a WebGPU adapter", async () => {
        await page.goto(`${origin}/?task=rain`);
        await page.waitForFunction(() => document.body.dataset.state !== "loading", null, {
          timeout: 60_000,
        });
        const s = await state();
        const detail = await page.evaluate(() =>
          JSON.stringify(
            (globalThis as unknown as { spairDemo: { adapter?: string; error?: string } }).spairDemo,
          )
        );
        assert(s === "ready", `page state ${s}: ${detail}\n${log.join("\n")}`);
        console.log(`  browser adapter: ${JSON.parse(detail).adapter}`);
      });

      await t.step("restores a picked image like Deno does", async () => {
        const t0 = performance.now();
        await page.setInputFiles("#file", {
          name: "streaks.png",
          mimeType: "image/png",
          buffer: Buffer.from(pngBytes),
        });
        await page.waitForFunction(
          () => ["done", "error"].includes(document.body.dataset.state ?? ""),
          null,
          {
            timeout: 480_000,
          },
        );
        const got = await page.evaluate(() => {
          const demo = (globalThis as unknown as {
            spairDemo: {
              error?: string;
              last?: { width: number; height: number; restored: Float32Array; mask: Float32Array };
            };
          }).spairDemo;
          const after = document.getElementById("after") as HTMLCanvasElement;
          const pixels = after.getContext("2d")!.getImageData(0, 0, after.width, after.height).data;
          return {
            state: document.body.dataset.state,
            error: demo.error,
            width: demo.last?.width,
            height: demo.last?.height,
            restored: Array.from(demo.last?.restored ?? []),
            mask: Array.from(demo.last?.mask ?? []),
            pixels: Array.from(pixels),
          };
        });
        assert(got.state === "done", `page state ${got.state}: ${got.error}\n${log.join("\n")}`);
        assert(got.width === WIDTH && got.height === HEIGHT, `page restored ${got.width}x${got.height}`);
        const diff = maxAbsDiff(got.restored, want.restored);
        let maskMismatch = 0;
        for (let i = 0; i < plane; i++) maskMismatch += got.mask[i] !== want.mask[i] ? 1 : 0;
        const drawn = new Float32Array(3 * plane);
        for (let i = 0; i < plane; i++) {
          for (let c = 0; c < 3; c++) drawn[c * plane + i] = got.pixels[4 * i + c] / 255;
        }
        const drawnDiff = maxAbsDiff(drawn, want.restored);
        const masked = want.mask.reduce((s, m) => s + m, 0);
        // Values clamped to 0 or 1 would agree trivially: most must lie inside.
        const inside = want.restored.filter((v) => v > 0 && v < 1).length / want.restored.length;
        console.log(
          `  browser vs Deno: max |Δ| ${(diff * 255).toFixed(4)}/255, drawn canvas ${
            (drawnDiff * 255).toFixed(2)
          }/255, ` +
            `${
              (100 * inside).toFixed(0)
            }% of values inside (0, 1), mask ${masked}/${plane} px set (logit margin ${
              margin.toExponential(1)
            }), ${maskMismatch} differ; browser restore ${((performance.now() - t0) / 1000).toFixed(1)} s`,
        );
        assert(masked > 0 && masked < plane, `test weights should mask part of the image, masked ${masked}`);
        assert(inside > 0.5, `only ${inside} of the reference values are unclamped`);
        assert(diff <= TOLERANCE, `browser result differs from Deno by ${diff * 255}/255 (> 2/255)`);
        assert(maskMismatch === 0, `${maskMismatch} mask pixels differ`);
        // The canvas holds 8-bit values: allow the rounding on top of the tolerance.
        assert(drawnDiff <= TOLERANCE + 0.5 / 255 + 1e-6, `drawn result differs by ${drawnDiff * 255}/255`);
      });

      await t.step("says so clearly when the browser has no WebGPU", async () => {
        const bare = await context.newPage();
        // WebIDL attributes are configurable: removing it looks like a browser without WebGPU.
        await bare.addInitScript(() => delete (Navigator.prototype as unknown as { gpu?: unknown }).gpu);
        await bare.goto(`${origin}/`);
        await bare.waitForFunction(() => document.body.dataset.state !== "loading", null, {
          timeout: 30_000,
        });
        const message = await bare.evaluate(() => ({
          state: document.body.dataset.state,
          text: document.getElementById("nogpu")!.textContent ?? "",
          visible: getComputedStyle(document.getElementById("nogpu")!).display !== "none",
        }));
        assert(message.state === "no-webgpu", `state ${message.state}`);
        assert(message.visible && message.text.includes("no WebGPU"), `message: ${message.text}`);
        await bare.close();
      });
    } finally {
      await context.close();
      await server.shutdown();
      await Deno.remove(site, { recursive: true });
      await Deno.remove(profile, { recursive: true }).catch(() => {});
      console.log(`  web test wall time ${((performance.now() - started) / 1000).toFixed(1)} s`);
    }
  },
});
