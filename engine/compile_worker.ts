/**
 * A helper thread of {@link Engine.compilePipelines} on drivers that compile at first dispatch (llvmpipe): it
 * opens its own device on the same adapter and compiles the pipelines it is sent, one at a time. The machine
 * code lands in the driver's on-disk shader cache, where the main thread's own compile of the same pipeline
 * then finds it, so N threads compile a cold batch about N times faster (LLVM is single-threaded per shader).
 *
 * Messages in: `{ type: "init", powerPreference }`, then `{ type: "compile", request }` one at a time.
 * Messages out: `{ type: "ready", adapter }`, `{ type: "done" }`, `{ type: "error", message }`.
 *
 * @module
 */

import { Engine } from "./device.ts";

const port = self as unknown as Worker;
let engine: Engine | null = null;

port.onmessage = async (event: MessageEvent) => {
  const message = event.data;
  try {
    if (message.type === "init") {
      engine = await Engine.create({ powerPreference: message.powerPreference });
      engine.compileThreads = 1; // this thread compiles alone
      port.postMessage({ type: "ready", adapter: engine.adapterDescription });
    } else if (message.type === "compile") {
      await engine!.compilePipelines([message.request]);
      port.postMessage({ type: "done" });
    }
  } catch (e) {
    port.postMessage({ type: "error", message: e instanceof Error ? e.message : String(e) });
  }
};
