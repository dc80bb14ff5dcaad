/**
 * 2-D pooling ops (NCHW, no padding, floor mode) and their backward rules. Kernel: `wgsl/pool2d.ts`.
 *
 * @module
 */

import { engine } from "../device.ts";
import { record } from "../graph.ts";
import { Tensor } from "../tensor.ts";
import { pool2dBackwardStep, pool2dForwardStep, type Pool2dShape } from "../../wgsl/pool2d.ts";

function geometry(x: Tensor, kernel: number, stride: number, op: string): Pool2dShape {
  if (x.rank !== 4) throw new Error(`${op}: expected an NCHW tensor, got [${x.shape}]`);
  const [n, c, H, W] = x.shape;
  const Hout = Math.floor((H - kernel) / stride) + 1;
  const Wout = Math.floor((W - kernel) / stride) + 1;
  if (Hout < 1 || Wout < 1) throw new Error(`${op}: input [${x.shape}] smaller than kernel ${kernel}`);
  return { planes: n * c, H, W, Hout, Wout, kernel, stride };
}

function pool(mode: "max" | "avg", x: Tensor, kernel: number, stride: number): Tensor {
  const name = mode === "max" ? "maxPool2d" : "avgPool2d";
  const p = geometry(x, kernel, stride, name);
  const e = engine();
  const y = e.op(name, () => {
    const out = Tensor.empty([x.shape[0], x.shape[1], p.Hout, p.Wout]);
    e.runPlan({ outSize: out.size, scratch: {}, steps: [pool2dForwardStep(mode, p)] }, {
      x: x.buffer,
      out: out.buffer,
    });
    return out;
  });
  return record(name, [x], y, (g, saved) =>
    e.op(`${name} backward`, () => {
      const dx = Tensor.empty(x.shape);
      const buffers: Record<string, GPUBuffer> = { dy: g.buffer, out: dx.buffer };
      if (mode === "max") buffers.x = saved[0].buffer;
      e.runPlan({ outSize: dx.size, scratch: {}, steps: [pool2dBackwardStep(mode, p)] }, buffers);
      return [dx];
    }), mode === "max" ? [x] : []);
}

/** Max pooling with a square window (default 2x2, stride = kernel). */
export function maxPool2d(x: Tensor, kernel = 2, stride = kernel): Tensor {
  return pool("max", x, kernel, stride);
}

/** Average pooling with a square window (default 2x2, stride = kernel). */
export function avgPool2d(x: Tensor, kernel = 2, stride = kernel): Tensor {
  return pool("avg", x, kernel, stride);
}
