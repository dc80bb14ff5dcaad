/**
 * The browser demo: click a bundled sample (or pick or drop an image), choose the task, and see the input,
 * SPAIR's predicted mask, the output and a before/after slider, restored on the visitor's GPU with the
 * site's `weights/<task>.safetensors`. The status line names the stage (loading model, compiling GPU
 * kernels, restoring tile k/n) and the elapsed time.
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
  precompileRestore,
  restorePlanar,
  restoreTileCount,
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
  /** Status lines shown during the current (or last) run, in order. */
  stages: string[];
  /** The last restoration. */
  last?: {
    task: Task;
    info: ModelInfo;
    /** Name the image came under (sample name or file name without extension). */
    source: string;
    width: number;
    height: number;
    /** Planar RGB [3, H, W] in [0, 1]. */
    restored: Float32Array;
    /** [H, W], 1 where NetL found a degradation. */
    mask: Float32Array | null;
    /** Whole run (model loading, kernel compilation and restoration). */
    ms: number;
    /** Pipelines compiled up front for this run (0 once they are all compiled) and the time it took. */
    compiled: number;
    compileMs: number;
    /** Restoration alone. */
    restoreMs: number;
  };
}

const params = new URLSearchParams(location.search);
const TILE = Number(params.get("tile") ?? 512);
const MAX_SIDE = Number(params.get("max") ?? 1024);

const demo: DemoState = { state: "loading", stages: [] };
(globalThis as unknown as { spairDemo: DemoState }).spairDemo = demo;

function el<T extends HTMLElement>(id: string): T {
  return document.getElementById(id) as T;
}
const taskSelect = el<HTMLSelectElement>("task");
const fileInput = el<HTMLInputElement>("file");
const drop = el<HTMLLabelElement>("drop");
const statusLine = el<HTMLParagraphElement>("status");
const elapsed = el<HTMLSpanElement>("elapsed");
const bar = el<HTMLProgressElement>("bar");
const views = el<HTMLDivElement>("views");
const inputCanvas = el<HTMLCanvasElement>("input");
const maskCanvas = el<HTMLCanvasElement>("mask");
const outputCanvas = el<HTMLCanvasElement>("output");
const before = el<HTMLCanvasElement>("before");
const after = el<HTMLCanvasElement>("after");
const maskCaption = el<HTMLElement>("maskcaption");
const slider = el<HTMLInputElement>("slider");
const divider = el<HTMLDivElement>("divider");
const download = el<HTMLButtonElement>("download");
const sampleButtons = [...document.querySelectorAll<HTMLButtonElement>("button.sample")];

function setState(state: string, message?: string): void {
  demo.state = state;
  document.body.dataset.state = state;
  if (message !== undefined) statusLine.textContent = message;
}

// Elapsed time of the current run, ticking while it is busy.
let clockStart = 0;
let clockTimer: ReturnType<typeof setInterval> | undefined;
function tick(): void {
  elapsed.textContent = `${((performance.now() - clockStart) / 1000).toFixed(1)} s`;
}
function startClock(): void {
  clockStart = performance.now();
  clearInterval(clockTimer);
  clockTimer = setInterval(tick, 100);
  tick();
}
function stopClock(): void {
  clearInterval(clockTimer);
  clockTimer = undefined;
}

/** Shows a stage of the run; `fraction` fills the progress bar (indeterminate without it). */
function stage(text: string, fraction?: number): void {
  statusLine.textContent = text;
  demo.stages.push(text);
  if (fraction === undefined) bar.removeAttribute("value");
  else bar.value = fraction;
}

function fail(e: unknown): void {
  stopClock();
  demo.error = e instanceof Error ? e.message : String(e);
  console.error(e);
  setState("error", `Error: ${demo.error}`);
}

function showNoWebGpu(reason: string): void {
  const box = el<HTMLDivElement>("nogpu");
  box.textContent = "";
  const title = document.createElement("strong");
  title.textContent = "This browser cannot run the demo: no WebGPU. ";
  const list = document.createElement("ul");
  for (
    const line of [
      "Chrome or Edge 113 or newer (Windows, macOS, ChromeOS; Android 121+). On Linux, enable " +
      "chrome://flags/#enable-unsafe-webgpu and restart the browser.",
      "Safari 26 or newer (macOS, iOS, iPadOS).",
      "Firefox 141 or newer on Windows; elsewhere set dom.webgpu.enabled in about:config.",
      "Open the page over https:// or from localhost: WebGPU needs a secure page.",
    ]
  ) {
    const item = document.createElement("li");
    item.textContent = line;
    list.append(item);
  }
  box.append(title, reason, " To try it, use one of these:", list);
  document.body.classList.add("no-webgpu");
  demo.error = reason;
  setState("no-webgpu", "");
}

/** Decoded image as planar RGB [3, H, W] in [0, 1], plus its RGBA pixels for drawing. */
interface Picture {
  name: string;
  width: number;
  height: number;
  planar: Float32Array;
  rgba: ImageData;
}

/** Decodes an image file through the browser, with no colour management or alpha premultiplication so
 * that pixel values match what other decoders (and the Deno CLI) read from the same file. */
async function decode(blob: Blob, name: string): Promise<Picture> {
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
  return { name, width, height, planar, rgba };
}

/** Planar RGB in [0, 1] (or a one-channel plane as grey) as RGBA pixels. */
function toImageData(planar: Float32Array, width: number, height: number): ImageData {
  const plane = width * height;
  const channels = planar.length / plane;
  const image = new ImageData(width, height);
  for (let i = 0; i < plane; i++) {
    for (let c = 0; c < 3; c++) {
      image.data[4 * i + c] = Math.round(planar[(channels === 3 ? c * plane : 0) + i] * 255);
    }
    image.data[4 * i + 3] = 255;
  }
  return image;
}

function paint(canvas: HTMLCanvasElement, image: ImageData): void {
  canvas.width = image.width;
  canvas.height = image.height;
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
  stage(`Loading model (${task} weights)…`);
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

/**
 * Creates the pipelines a restoration of this image needs, all at once with `createComputePipelineAsync`:
 * browsers compile them in parallel, where compiling them one by one during the first forward pass would
 * take several times longer. Returns how many were compiled (0 once the first run has compiled them).
 */
async function precompile(model: SpairModel, pic: Picture): Promise<number> {
  try {
    return await precompileRestore(model, pic.width, pic.height, { tile: TILE }, (done, total) => {
      stage(`Compiling GPU kernels ${done}/${total} (first run only)…`, total ? done / total : 1);
    });
  } catch (e) {
    // The restoration compiles whatever is missing on its own, only more slowly.
    console.warn("precompiling GPU kernels skipped:", e);
    return 0;
  }
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
      demo.stages = [];
      setState("busy");
      startClock();
      const { model, info } = await modelFor(task);
      const c0 = performance.now();
      const compiled = await precompile(model, pic);
      const compileMs = performance.now() - c0;
      // Tiled runs add passes for the image-wide layers: the total is known from the first tile on.
      const tiles = restoreTileCount(model, pic.width, pic.height, { tile: TILE }) === 1 ? "1" : "…";
      stage(`Restoring tile 1/${tiles} (${pic.width}×${pic.height}, ${task})…`, 0);
      const t0 = performance.now();
      const { restored, mask } = await restorePlanar(model, pic.planar, pic.width, pic.height, {
        tile: TILE,
        onTile: (done, total) => {
          if (done < total) {
            stage(`Restoring tile ${done + 1}/${total} (${pic.width}×${pic.height}, ${task})…`, done / total);
          }
        },
      });
      const restoreMs = performance.now() - t0;
      const ms = performance.now() - clockStart;
      stopClock();
      const output = toImageData(restored, pic.width, pic.height);
      paint(outputCanvas, output);
      paint(after, output);
      if (mask) {
        paint(maskCanvas, toImageData(mask, pic.width, pic.height));
        let masked = 0;
        for (const m of mask) masked += m;
        maskCaption.textContent = `Predicted degradation mask (white: degraded, ${
          (100 * masked / mask.length).toFixed(1)
        }% of pixels)`;
      } else {
        maskCanvas.getContext("2d")?.clearRect(0, 0, maskCanvas.width, maskCanvas.height);
        maskCaption.textContent = `No mask: ${info.variant} weights (the dense baseline predicts none)`;
      }
      demo.last = {
        task,
        info,
        source: pic.name,
        width: pic.width,
        height: pic.height,
        restored,
        mask,
        ms,
        compiled,
        compileMs,
        restoreMs,
      };
      download.disabled = false;
      download.textContent = `Download ${downloadName()}`;
      const weightsTask = info.task && info.task !== task ? `, weights trained for ${info.task}` : "";
      const kernels = compiled > 0
        ? ` (${compiled} GPU kernels compiled in ${(compileMs / 1000).toFixed(1)} s, first run only)`
        : "";
      setState(
        "done",
        `Restored ${pic.width}×${pic.height} (${task}${weightsTask}) in ${
          (ms / 1000).toFixed(1)
        } s${kernels}.`,
      );
    } catch (e) {
      fail(e);
    }
  });
}

/** `rain-restored.png` for the rain sample, `photo-restored-blur.png` for photo.jpg restored as blur. */
function downloadName(): string {
  const source = demo.last?.source ?? "image";
  const task = demo.last?.task ?? taskSelect.value;
  return `${source}-restored${source === task ? "" : `-${task}`}.png`;
}

async function openFile(file: Blob, name: string): Promise<void> {
  try {
    const pic = await decode(file, name);
    picture = pic;
    paint(inputCanvas, pic.rgba);
    paint(before, pic.rgba);
    // Until the restoration arrives, the output views show the input so the slider never reveals a blank.
    paint(outputCanvas, pic.rgba);
    paint(after, pic.rgba);
    maskCanvas.width = pic.width;
    maskCanvas.height = pic.height;
    maskCaption.textContent = "Predicted degradation mask (white: degraded)";
    views.classList.remove("hidden");
    download.disabled = true;
    download.textContent = "Download restored image";
    restore();
  } catch (e) {
    fail(new Error(`could not decode ${name} (${e instanceof Error ? e.message : e})`));
  }
}

async function openSample(button: HTMLButtonElement): Promise<void> {
  const name = button.dataset.sample!;
  if (demo.state === "no-webgpu") return;
  for (const b of sampleButtons) b.setAttribute("aria-pressed", String(b === button));
  taskSelect.value = button.dataset.task!;
  setState("busy", `Loading the ${name} sample…`);
  startClock();
  try {
    const response = await fetch(`samples/${name}.png`);
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    await openFile(await response.blob(), name);
  } catch (e) {
    fail(new Error(`could not load the ${name} sample (${e instanceof Error ? e.message : e})`));
  }
}

function openUserFile(file: File): void {
  for (const b of sampleButtons) b.setAttribute("aria-pressed", "false");
  openFile(file, file.name.replace(/\.[^.]*$/, "") || "image");
}

async function main(): Promise<void> {
  const initial = params.get("task");
  if (initial && (TASKS as readonly string[]).includes(initial)) taskSelect.value = initial;
  updateSlider();
  slider.addEventListener("input", updateSlider);
  taskSelect.addEventListener("change", restore);
  for (const button of sampleButtons) button.addEventListener("click", () => openSample(button));
  fileInput.addEventListener("change", () => {
    const file = fileInput.files?.[0];
    if (file) openUserFile(file);
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
    if (file) openUserFile(file);
  });
  download.addEventListener("click", () => {
    const name = downloadName();
    outputCanvas.toBlob((blob) => {
      if (!blob) return;
      const a = document.createElement("a");
      a.href = URL.createObjectURL(blob);
      a.download = name;
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
  setState("ready", `WebGPU ready (${demo.adapter}). Click a sample or pick an image.`);
}

main().catch(fail);
