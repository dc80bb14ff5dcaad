/**
 * Nearest and bilinear 2-D resampling (PyTorch `interpolate` conventions), built from a separable 1-D
 * resampling op with its own backward rule. Kernel: `wgsl/resample.ts`.
 *
 * @module
 */

import { engine } from "../device.ts";
import { record } from "../graph.ts";
import { sizeOf, Tensor } from "../tensor.ts";
import { type Resample1d, resampleBackwardStep, resampleForwardStep } from "../../wgsl/resample.ts";

function resample1d(x: Tensor, axis: number, r: Omit<Resample1d, "outer" | "inner" | "lenIn">): Tensor {
  const geometry: Resample1d = {
    ...r,
    outer: sizeOf(x.shape.slice(0, axis)),
    inner: sizeOf(x.shape.slice(axis + 1)),
    lenIn: x.shape[axis],
  };
  const outShape = x.shape.map((d, i) => (i === axis ? r.lenOut : d));
  const e = engine();
  const y = e.op("resample", () => {
    const out = Tensor.empty(outShape);
    e.runPlan({ outSize: out.size, scratch: {}, steps: [resampleForwardStep(geometry)] }, {
      src: x.buffer,
      out: out.buffer,
    });
    return out;
  });
  return record("resample", [x], y, (g) =>
    e.op("resample backward", () => {
      const dx = Tensor.empty(x.shape);
      e.runPlan({ outSize: dx.size, scratch: {}, steps: [resampleBackwardStep(geometry)] }, {
        src: g.buffer,
        out: dx.buffer,
      });
      return [dx];
    }));
}

/** Target size: an integer `scale` factor or an explicit `[height, width]`. */
export interface ResizeOptions {
  /** Scale factor for both axes (default 2; output sizes are floored); ignored when `size` is given. */
  scale?: number;
  /** Output `[height, width]` in pixels. */
  size?: readonly [number, number];
  /** Bilinear only: PyTorch's `align_corners` (default false). */
  alignCorners?: boolean;
}

function resize2d(x: Tensor, mode: "nearest" | "linear", o: ResizeOptions): Tensor {
  if (x.rank !== 4) throw new Error(`upsample: expected an NCHW tensor, got [${x.shape}]`);
  const [, , H, W] = x.shape;
  const [Ho, Wo] = o.size ?? [Math.floor(H * (o.scale ?? 2)), Math.floor(W * (o.scale ?? 2))];
  const alignCorners = mode === "linear" && (o.alignCorners ?? false);
  const ratioW = o.size ? W / Wo : 1 / (o.scale ?? 2);
  const ratioH = o.size ? H / Ho : 1 / (o.scale ?? 2);
  const alongW = resample1d(x, 3, { lenOut: Wo, mode, alignCorners, ratio: ratioW });
  const out = resample1d(alongW, 2, { lenOut: Ho, mode, alignCorners, ratio: ratioH });
  alongW.dispose();
  return out;
}

/** Nearest-neighbour upsampling of an NCHW tensor (default scale 2). */
export function upsampleNearest(x: Tensor, options: ResizeOptions = {}): Tensor {
  return resize2d(x, "nearest", options);
}

/** Bilinear resampling of an NCHW tensor (default scale 2, align_corners false). */
export function upsampleBilinear(x: Tensor, options: ResizeOptions = {}): Tensor {
  return resize2d(x, "linear", options);
}
