// End-to-end test of the browser demo: build the site with esbuild, serve it on 127.0.0.1 and drive it in
// headless Chromium (WebGPU on SwiftShader when there is no GPU), as a visitor would: restore a picked image
// (compared with the same model restoring the same pixels in this Deno process), click a bundled sample,
// check the layout at phone, tablet and desktop widths (screenshots go to docs/img/web-*.png when
// SPAIR_SCREENSHOTS=1, else to a temporary folder), and check
// that the page asks for nothing but its own files.
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
/** The picked-image step restores with seeded weights served as this task's; the sample step then loads the
 * real rain weights on the same page (same GPU device: the kernels compiled by the first run are reused). */
const SEEDED_TASK = "blur";
/** Viewport widths of the layout checks and screenshots: phone, tablet, desktop. */
const VIEWPORT_WIDTHS = [360, 768, 1280];
/** Where screenshots go: docs/img with SPAIR_SCREENSHOTS=1 (to update the committed ones), else a temporary
 * folder, so a test run leaves the work tree unchanged. */
const SCREENSHOTS = Deno.env.get("SPAIR_SCREENSHOTS") === "1"
  ? new URL("../docs/img/", import.meta.url)
  : new URL(`file://${Deno.makeTempDirSync({ prefix: "spair-web-" })}/`);

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
  const weights = await model.saveSafetensors({ preset: "tiny", variant: "SPAIR", task: SEEDED_TASK });
  for (const p of model.parameters()) p.dispose();
  return { weights, margin: (sorted[at + 1] - sorted[at]) / 2 };
}

/** Page-side check of the layout: the controls and views (elements marked `data-box`) that are displayed
 * must not overlap one another nor stick out of the viewport, and nothing may scroll sideways. Returns the
 * problems found and the boxes, by label. */
function layoutCheck(): { problems: string[]; boxes: Record<string, DOMRect> } {
  const boxes: Record<string, DOMRect> = {};
  const shown: [string, DOMRect][] = [];
  document.querySelectorAll<HTMLElement>("[data-box]").forEach((e, i) => {
    const label = `${e.tagName.toLowerCase()}#${e.id || i}${e.dataset.sample ? `(${e.dataset.sample})` : ""}`;
    const r = e.getBoundingClientRect();
    boxes[label] = r;
    if (r.width > 0 && r.height > 0 && getComputedStyle(e).visibility !== "hidden") shown.push([label, r]);
  });
  const problems: string[] = [];
  const width = document.documentElement.clientWidth;
  if (document.documentElement.scrollWidth > width) {
    problems.push(`page scrolls sideways: ${document.documentElement.scrollWidth} px wide in ${width}`);
  }
  for (const [label, r] of shown) {
    if (r.left < -0.5 || r.right > width + 0.5) {
      problems.push(`${label} [${r.left}, ${r.right}] leaves the viewport`);
    }
  }
  for (let i = 0; i < shown.length; i++) {
    for (let j = i + 1; j < shown.length; j++) {
      const [[la, a], [lb, b]] = [shown[i], shown[j]];
      const dx = Math.min(a.right, b.right) - Math.max(a.left, b.left);
      const dy = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
      if (dx > 0.5 && dy > 0.5) {
        problems.push(`${la} and ${lb} overlap by ${dx.toFixed(1)}x${dy.toFixed(1)} px`);
      }
    }
  }
  return { problems, boxes: JSON.parse(JSON.stringify(boxes)) };
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
  name: "web demo: samples, stages, layout and results in headless Chromium (like Deno within 2/255)",
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
    const build = await buildWeb({ outdir: site });
    assert(build.bundleBytes > 10_000, `bundle of ${build.bundleBytes} bytes`);
    assert.deepEqual(build.samples, ["blur.png", "rain.png", "raindrop.png", "shadow.png"]);
    assert(build.weights.includes("rain.safetensors"), `weights copied: ${build.weights}`);
    const server = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen() {} },
      staticHandler(site, { [`/weights/${SEEDED_TASK}.safetensors`]: weights }),
    );
    const origin = `http://127.0.0.1:${server.addr.port}`;
    const context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      args: CHROMIUM_ARGS,
      headless: true,
      timeout: 60_000,
    });
    // The page must be servable by any static host: every request it makes goes to the site itself.
    const offSite: string[] = [];
    await context.route("**/*", (route) => {
      const url = new URL(route.request().url());
      if (url.hostname === "127.0.0.1") return route.continue();
      offSite.push(url.href);
      return route.abort("blockedbyclient");
    });
    const log: string[] = [];
    try {
      const page = context.pages()[0] ?? await context.newPage();
      await page.setViewportSize({ width: 1280, height: 900 });
      page.on("console", (m) => log.push(`${m.type()}: ${m.text()}`));
      page.on("pageerror", (e) => log.push(`pageerror: ${e.message}`));
      const state = () => page.evaluate(() => document.body.dataset.state ?? "");
      type Demo = {
        error?: string;
        adapter?: string;
        stages: string[];
        last?: {
          task: string;
          source: string;
          width: number;
          height: number;
          restored: Float32Array;
          mask: Float32Array;
          compiled: number;
        };
      };
      const waitForResult = async () => {
        await page.waitForFunction(
          () => ["done", "error"].includes(document.body.dataset.state ?? ""),
          null,
          {
            timeout: 480_000,
          },
        );
        const s = await state();
        const error = await page.evaluate(() =>
          (globalThis as unknown as { spairDemo: Demo }).spairDemo.error
        );
        assert(s === "done", `page state ${s}: ${error}\n${log.join("\n")}`);
      };

      await t.step("page finds a WebGPU adapter", async () => {
        await page.goto(`${origin}/?task=${SEEDED_TASK}`);
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

      await t.step("restores a picked image like Deno does, showing its stages and the time", async () => {
        const t0 = performance.now();
        await page.setInputFiles("#file", {
          name: "streaks.png",
          mimeType: "image/png",
          buffer: Buffer.from(pngBytes),
        });
        // While the kernels compile (the first run's longest stage) the status counts them and a clock ticks.
        const compiling = await page.waitForFunction(
          () => {
            const status = document.getElementById("status")!.textContent ?? "";
            const clock = document.getElementById("elapsed")!;
            return /^Compiling GPU kernels \d+\/\d+ \(first run only\)/.test(status) &&
              /^\d+\.\d s$/.test(clock.textContent ?? "") && clock.getBoundingClientRect().width > 0 &&
              [status, clock.textContent];
          },
          null,
          { timeout: 120_000 },
        );
        const [compileStatus, clockText] = await compiling.jsonValue() as string[];
        await waitForResult();
        const got = await page.evaluate(() => {
          const demo = (globalThis as unknown as { spairDemo: Demo }).spairDemo;
          const after = document.getElementById("after") as HTMLCanvasElement;
          const pixels = after.getContext("2d")!.getImageData(0, 0, after.width, after.height).data;
          return {
            width: demo.last?.width,
            height: demo.last?.height,
            compiled: demo.last?.compiled,
            stages: demo.stages,
            status: document.getElementById("status")!.textContent,
            restored: Array.from(demo.last?.restored ?? []),
            mask: Array.from(demo.last?.mask ?? []),
            pixels: Array.from(pixels),
          };
        });
        assert(got.width === WIDTH && got.height === HEIGHT, `page restored ${got.width}x${got.height}`);
        // Stages in order: the model, the kernels (counted up to all of them), the tiles.
        const stageAt = (re: RegExp) => got.stages.findIndex((s) => re.test(s));
        const [loading, compiled, restoring] = [
          stageAt(/^Loading model \(blur weights\)/),
          stageAt(new RegExp(`^Compiling GPU kernels ${got.compiled}/${got.compiled} \\(first run only\\)`)),
          stageAt(/^Restoring tile 1\/1 /),
        ];
        assert(
          loading >= 0 && compiled > loading && restoring > compiled && got.compiled! > 0,
          `stages ${JSON.stringify(got.stages)}`,
        );
        assert.match(got.status ?? "", /^Restored 64×48 \(blur\) in \d+\.\d s \(\d+ GPU kernels compiled/);
        const diff = maxAbsDiff(got.restored, want.restored);
        let maskMismatch = 0;
        for (let i = 0; i < plane; i++) maskMismatch += got.mask[i] !== want.mask![i] ? 1 : 0;
        const drawn = new Float32Array(3 * plane);
        for (let i = 0; i < plane; i++) {
          for (let c = 0; c < 3; c++) drawn[c * plane + i] = got.pixels[4 * i + c] / 255;
        }
        const drawnDiff = maxAbsDiff(drawn, want.restored);
        const masked = want.mask!.reduce((s, m) => s + m, 0);
        // Values clamped to 0 or 1 would agree trivially: most must lie inside.
        const inside = want.restored.filter((v) => v > 0 && v < 1).length / want.restored.length;
        console.log(
          `  seen "${compileStatus}" at ${clockText}; "${got.status}"\n` +
            `  browser vs Deno: max |Δ| ${(diff * 255).toFixed(4)}/255, drawn canvas ${
              (drawnDiff * 255).toFixed(2)
            }/255, ${(100 * inside).toFixed(0)}% of values inside (0, 1), mask ${masked}/${plane} px set ` +
            `(logit margin ${margin.toExponential(1)}), ${maskMismatch} differ; browser run ${
              ((performance.now() - t0) / 1000).toFixed(1)
            } s`,
        );
        assert(masked > 0 && masked < plane, `test weights should mask part of the image, masked ${masked}`);
        assert(inside > 0.5, `only ${inside} of the reference values are unclamped`);
        assert(diff <= TOLERANCE, `browser result differs from Deno by ${diff * 255}/255 (> 2/255)`);
        assert(maskMismatch === 0, `${maskMismatch} mask pixels differ`);
        // The canvas holds 8-bit values: allow the rounding on top of the tolerance.
        assert(drawnDiff <= TOLERANCE + 0.5 / 255 + 1e-6, `drawn result differs by ${drawnDiff * 255}/255`);
      });

      await t.step("one click on a sample restores it with its task's weights", async () => {
        const t0 = performance.now();
        const thumbnails = await page.evaluate(() =>
          [...document.querySelectorAll<HTMLImageElement>("button.sample img")].map((img) => img.naturalWidth)
        );
        assert.deepEqual(thumbnails, [384, 384, 384, 384], "sample thumbnails load from the site");
        await page.click('button.sample[data-sample="rain"]');
        assert.equal(await page.inputValue("#task"), "rain", "the sample selects its task");
        await waitForResult();
        // The output the visitor sees must differ from the input where NetL found rain: mean |Δ| per pixel,
        // over the canvases (summed in the page: the arrays are too large to ship quickly).
        const got = await page.evaluate(() => {
          const demo = (globalThis as unknown as { spairDemo: Demo }).spairDemo;
          const pixels = (id: string) => {
            const canvas = document.getElementById(id) as HTMLCanvasElement;
            return canvas.getContext("2d")!.getImageData(0, 0, canvas.width, canvas.height).data;
          };
          const [input, output, mask] = [pixels("input"), pixels("output"), demo.last?.mask ?? []];
          let [masked, changedMasked, changedClean] = [0, 0, 0];
          for (let i = 0; i < mask.length; i++) {
            let d = 0;
            for (let c = 0; c < 3; c++) d += Math.abs(output[4 * i + c] - input[4 * i + c]) / 255 / 3;
            if (mask[i]) {
              masked++;
              changedMasked += d;
            } else changedClean += d;
          }
          const download = document.getElementById("download") as HTMLButtonElement;
          return {
            task: demo.last?.task,
            source: demo.last?.source,
            width: demo.last?.width,
            height: demo.last?.height,
            stages: demo.stages,
            masked,
            changedMasked,
            changedClean,
            sizes: [input.length, output.length, 4 * mask.length],
            status: document.getElementById("status")!.textContent,
            download: { text: download.textContent, disabled: download.disabled },
          };
        });
        assert(got.task === "rain" && got.source === "rain", `restored ${got.source} as ${got.task}`);
        assert(got.width === 384 && got.height === 256, `sample restored at ${got.width}x${got.height}`);
        assert.deepEqual(got.sizes, [4 * 384 * 256, 4 * 384 * 256, 4 * 384 * 256], "canvas and mask sizes");
        assert(got.stages.some((s) => s.startsWith("Loading model (rain weights)")), `${got.stages}`);
        assert(got.stages.some((s) => s.startsWith("Restoring tile 1/1 ")), `${got.stages}`);
        assert(
          !got.download.disabled && got.download.text === "Download rain-restored.png",
          got.download.text!,
        );
        const n = got.width * got.height;
        const { masked, changedMasked, changedClean } = got;
        const [inMask, outside] = [changedMasked / masked, changedClean / (n - masked)];
        console.log(
          `  rain sample: stages ${
            got.stages.map((s) => s.replace(/ \(.*/, "")).join(" → ")
          }; "${got.status}"\n` +
            `  mask ${(100 * masked / n).toFixed(1)}% of pixels, mean |output - input| ${
              (inMask * 255).toFixed(2)
            }/255 inside the mask, ${(outside * 255).toFixed(2)}/255 outside; ${
              ((performance.now() - t0) / 1000).toFixed(1)
            } s`,
        );
        assert(masked > 0.01 * n && masked < 0.9 * n, `mask covers ${masked} of ${n} pixels`);
        // Rain streaks are faint: the change is a few levels on average, several times that outside the mask.
        assert(
          inMask > 1.5 / 255 && inMask > 3 * outside,
          `output hardly differs from the input inside the mask: ${inMask * 255}/255 (outside ${
            outside * 255
          })`,
        );
      });

      await t.step("layout holds at 360, 768 and 1280 px (screenshots in docs/img)", async () => {
        for (const width of VIEWPORT_WIDTHS) {
          await page.setViewportSize({ width, height: 900 });
          await page.evaluate(() =>
            new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))
          );
          const { problems, boxes } = await page.evaluate(layoutCheck);
          const box = (label: string) => boxes[label];
          const views = ["figure#inputview", "figure#maskview", "figure#outputview"].map(box);
          // input | mask | output in a row on wide screens, stacked on phones.
          const row = views.every((v) => Math.abs(v.top - views[0].top) < 1 && v.left > 0);
          const stacked = views.every((v, i) => i === 0 || v.top >= views[i - 1].bottom);
          console.log(
            `  ${width} px: ${Object.keys(boxes).length} boxes, views ${row ? "in a row" : ""}${
              stacked ? "stacked" : ""
            }, page ${await page.evaluate(() => document.documentElement.scrollHeight)} px tall`,
          );
          assert(Object.keys(boxes).length >= 12, `boxes found: ${Object.keys(boxes)}`);
          assert.deepEqual(problems, [], `layout at ${width} px`);
          assert(width < 600 ? stacked : row, `views at ${width} px: ${JSON.stringify(views)}`);
          await page.screenshot({ path: new URL(`web-${width}.png`, SCREENSHOTS).pathname, fullPage: true });
        }
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
        assert(
          message.visible && message.text.includes("no WebGPU") &&
            message.text.includes("chrome://flags/#enable-unsafe-webgpu") &&
            message.text.includes("Safari 26"),
          `message: ${message.text}`,
        );
        await bare.close();
      });

      await t.step("asks for nothing outside the site", () => {
        assert.deepEqual(offSite, [], "requests to other hosts");
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
