/**
 * The browser demo: pick or drop an image, choose the task, and see SPAIR's predicted mask and a
 * before/after slider, restored on the visitor's GPU with the site's `weights/<task>.safetensors`.
 *
 * Query parameters: `task=rain|raindrop|shadow|blur` (initial task), `weights=URL` (weights file used for
 * every task instead of the site's), `tile=N` (tile side, default 512), `max=N` (longest side; larger
 * images are downscaled first, default 1024).
 *
 * @module
 */

import {
  initEngine,
  loadModel,
  type ModelInfo,
  restorePlanar,
  type SpairModel,
  type Task,
  TASKS,
} from "../mod.ts";

/** What the page exposes as `globalThis.spairDemo` (tests and the console read it). */
export interface DemoState {
  /** `loading`, `ready`, `busy`, `done`, `error` or `no-webgpu` (also in `document.body.dataset.state`). */
  state: string;
  /** The last error message, if any. */
  error?: string;
  /** The GPU adapter in use, as the browser describes it. */
  adapter?: string;
  /** The last restoration. */
  last?: {
    task: Task;
    info: ModelInfo;
    width: number;
    height: number;
    /** Planar RGB [3, H, W] in [0, 1]. */
    restored: Float32Array;
    /** [H, W], 1 where NetL found a degradation. */
    mask: Float32Array;
    ms: number;
  };
}

const params = new URLSearchParams(location.search);
const TILE = Number(params.get("tile") ?? 512);
const MAX_SIDE = Number(params.get("max") ?? 1024);

const demo: DemoState = { state: "loading" };
(globalThis as unknown as { spairDemo: DemoState }).spairDemo = demo;

function el<T extends HTMLElement>(id: string): T {
  return document.getElementById(id) as T;
}
const taskSelect = el<HTMLSelectElement>("task");
const fileInput = el<HTMLInputElement>("file");
const drop = el<HTMLLabelElement>("drop");
const statusLine = el<HTMLParagraphElement>("status");
const views = el<HTMLDivElement>("views");
const before = el<HTMLCanvasElement>("before");
const after = el<HTMLCanvasElement>("after");
const maskCanvas = el<HTMLCanvasElement>("mask");
const maskCaption = el<HTMLElement>("maskcaption");
const slider = el<HTMLInputElement>("slider");
const divider = el<HTMLDivElement>("divider");
const download = el<HTMLButtonElement>("download");

function setState(state: string, message?: string): void {
  demo.state = state;
  document.body.dataset.state = state;
  if (message !== undefined) statusLine.textContent = message;
}

function fail(e: unknown): void {
  demo.error = e instanceof Error ? e.message : String(e);
  console.error(e);
  setState("error", `Error: ${demo.error}`);
}

function showNoWebGpu(reason: string): void {
  const box = el<HTMLDivElement>("nogpu");
  box.textContent = "";
  const title = document.createElement("strong");
  title.textContent = "This browser cannot run the demo: no WebGPU. ";
  box.append(
    title,
    reason,
    document.createElement("br"),
    "WebGPU is in Chrome and Edge 113+ (on Linux behind chrome://flags/#enable-unsafe-webgpu), Safari 26+ " +
      "and Firefox 141+ on Windows; it needs a secure page (https:// or localhost).",
  );
  document.body.classList.add("no-webgpu");
  demo.error = reason;
  setState("no-webgpu", "");
}

/** Decoded image as planar RGB [3, H, W] in [0, 1], plus its RGBA pixels for drawing. */
interface Picture {
  width: number;
  height: number;
  planar: Float32Array;
  rgba: ImageData;
}

/** Decodes an image file through the browser, with no colour management or alpha premultiplication so
 * that pixel values match what other decoders (and the Deno CLI) read from the same file. */
async function decode(blob: Blob): Promise<Picture> {
  const bitmap = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const scale = Math.min(1, MAX_SIDE / Math.max(bitmap.width, bitmap.height));
  const width = Math.max(1, Math.round(bitmap.width * scale));
  const height = Math.max(1, Math.round(bitmap.height * scale));
  const canvas = new OffscreenCanvas(width, height);
  const ctx = canvas.getContext("2d", { willReadFrequently: true })!;
  // Transparent parts are shown over white, as most viewers do.
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, width, height);
  ctx.drawImage(bitmap, 0, 0, width, height);
  bitmap.close();
  const rgba = ctx.getImageData(0, 0, width, height);
  const plane = width * height;
  const planar = new Float32Array(3 * plane);
  for (let i = 0; i < plane; i++) {
    for (let c = 0; c < 3; c++) planar[c * plane + i] = rgba.data[4 * i + c] / 255;
  }
  return { width, height, planar, rgba };
}

/** Draws planar RGB in [0, 1] (or a one-channel plane as grey) onto a canvas. */
function draw(canvas: HTMLCanvasElement, planar: Float32Array, width: number, height: number): void {
  canvas.width = width;
  canvas.height = height;
  const plane = width * height;
  const channels = planar.length / plane;
  const image = new ImageData(width, height);
  for (let i = 0; i < plane; i++) {
    for (let c = 0; c < 3; c++) {
      image.data[4 * i + c] = Math.round(planar[(channels === 3 ? c * plane : 0) + i] * 255);
    }
    image.data[4 * i + 3] = 255;
  }
  canvas.getContext("2d")!.putImageData(image, 0, 0);
}

function updateSlider(): void {
  const split = Number(slider.value);
  after.style.clipPath = `inset(0 0 0 ${split}%)`;
  divider.style.left = `${split}%`;
}

// One model at a time: weights are loaded on first use of a task and the previous task's are freed.
let current: { url: string; model: SpairModel; info: ModelInfo } | null = null;

async function modelFor(task: Task): Promise<{ model: SpairModel; info: ModelInfo }> {
  const url = params.get("weights") ?? `weights/${task}.safetensors`;
  if (current?.url === url) return current;
  setState("busy", `Loading ${task} weights…`);
  const response = await fetch(url);
  if (!response.ok) {
    throw new Error(
      `no weights for ${task} (${url}: HTTP ${response.status}); train them or pass ?weights=URL`,
    );
  }
  const loaded = loadModel(new Uint8Array(await response.arrayBuffer()), url);
  if (current) { for (const p of current.model.parameters()) p.dispose(); }
  current = { url, ...loaded };
  return current;
}

let picture: Picture | null = null;
// Runs are chained so a task change during a restoration waits for it instead of interleaving GPU work.
let queue: Promise<void> = Promise.resolve();

function restore(): void {
  if (!picture || demo.state === "no-webgpu") return;
  const pic = picture;
  const task = taskSelect.value as Task;
  queue = queue.then(async () => {
    if (pic !== picture || task !== taskSelect.value) return; // superseded while waiting
    try {
      const { model, info } = await modelFor(task);
      setState("busy", `Restoring ${pic.width}×${pic.height} (${task})…`);
      const t0 = performance.now();
      const { restored, mask } = await restorePlanar(model, pic.planar, pic.width, pic.height, {
        tile: TILE,
        onTile: (done, total) => {
          if (total > 1) {
            statusLine.textContent = `Restoring ${pic.width}×${pic.height} (${task}): tile ${done}/${total}`;
          }
        },
      });
      const ms = performance.now() - t0;
      draw(after, restored, pic.width, pic.height);
      draw(maskCanvas, mask, pic.width, pic.height);
      let masked = 0;
      for (const m of mask) masked += m;
      maskCaption.textContent = `Predicted degradation mask (white: degraded, ${
        (100 * masked / mask.length).toFixed(1)
      }% of pixels).`;
      demo.last = { task, info, width: pic.width, height: pic.height, restored, mask, ms };
      download.disabled = false;
      const weightsTask = info.task && info.task !== task ? ` (weights trained for ${info.task})` : "";
      setState("done", `Restored ${pic.width}×${pic.height} in ${(ms / 1000).toFixed(2)} s${weightsTask}.`);
    } catch (e) {
      fail(e);
    }
  });
}

async function openFile(file: Blob): Promise<void> {
  try {
    const pic = await decode(file);
    picture = pic;
    before.width = pic.width;
    before.height = pic.height;
    before.getContext("2d")!.putImageData(pic.rgba, 0, 0);
    // Until the restoration arrives, "after" shows the input so the slider never reveals a blank canvas.
    after.width = pic.width;
    after.height = pic.height;
    after.getContext("2d")!.putImageData(pic.rgba, 0, 0);
    maskCanvas.width = pic.width;
    maskCanvas.height = pic.height;
    views.classList.remove("hidden");
    download.disabled = true;
    restore();
  } catch (e) {
    fail(new Error(`could not decode the image (${e instanceof Error ? e.message : e})`));
  }
}

async function main(): Promise<void> {
  const initial = params.get("task");
  if (initial && (TASKS as readonly string[]).includes(initial)) taskSelect.value = initial;
  updateSlider();
  slider.addEventListener("input", updateSlider);
  taskSelect.addEventListener("change", restore);
  fileInput.addEventListener("change", () => {
    const file = fileInput.files?.[0];
    if (file) openFile(file);
  });
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const file = e.dataTransfer?.files[0];
    if (file) openFile(file);
  });
  download.addEventListener("click", () => {
    after.toBlob((blob) => {
      if (!blob) return;
      const a = document.createElement("a");
      a.href = URL.createObjectURL(blob);
      a.download = `restored-${taskSelect.value}.png`;
      a.click();
      setTimeout(() => URL.revokeObjectURL(a.href), 1000);
    }, "image/png");
  });

  if (!("gpu" in navigator)) {
    showNoWebGpu(
      isSecureContext
        ? "navigator.gpu is missing."
        : "navigator.gpu is missing because this page is not a secure context (serve it over https or localhost).",
    );
    return;
  }
  try {
    const engine = await initEngine();
    const info = engine.adapterInfo;
    demo.adapter = info
      ? [info.vendor, info.architecture, info.description].filter(Boolean).join(" ")
      : "unknown";
  } catch (e) {
    // NoAdapterError and device-creation failures alike leave nothing to run on.
    showNoWebGpu(`No usable GPU adapter: ${e instanceof Error ? e.message : e}.`);
    return;
  }
  setState("ready", `WebGPU ready (${demo.adapter}). Pick an image.`);
}

main().catch(fail);
