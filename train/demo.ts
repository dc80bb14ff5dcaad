/**
 * Engine demo and smoke test: a tiny conv net (conv, relu, pool, upsample, skip concat, conv) fits a fixed
 * small batch with Adam. Used by `deno run -A cli.ts demo` and by the training smoke test.
 *
 * @module
 */

import {
  Adam,
  backward,
  concat,
  conv2d,
  maxPool2d,
  Module,
  mseLoss,
  relu,
  Rng,
  type Tensor,
  tensor,
  tidy,
  uniformInit,
  upsampleNearest,
} from "../mod.ts";

/** conv3x3 -> relu -> maxpool -> conv3x3 -> relu -> upsample -> concat(skip) -> conv3x3. */
export class TinyNet extends Module {
  readonly w1: Tensor;
  readonly b1: Tensor;
  readonly w2: Tensor;
  readonly b2: Tensor;
  readonly w3: Tensor;
  readonly b3: Tensor;

  constructor(rng: Rng, width = 8) {
    super();
    this.w1 = this.param("w1", uniformInit([width, 3, 3, 3], 27, rng));
    this.b1 = this.param("b1", uniformInit([width], 27, rng));
    this.w2 = this.param("w2", uniformInit([width, width, 3, 3], width * 9, rng));
    this.b2 = this.param("b2", uniformInit([width], width * 9, rng));
    this.w3 = this.param("w3", uniformInit([3, 2 * width, 3, 3], 2 * width * 9, rng));
    this.b3 = this.param("b3", uniformInit([3], 2 * width * 9, rng));
  }

  /** Forward pass on an N x 3 x H x W batch (H, W even). */
  forward(x: Tensor): Tensor {
    const skip = relu(conv2d(x, this.w1, this.b1, { padding: 1 }));
    const deep = relu(conv2d(maxPool2d(skip), this.w2, this.b2, { padding: 1 }));
    return conv2d(concat([skip, upsampleNearest(deep)], 1), this.w3, this.b3, { padding: 1 });
  }
}

/** Progress of {@link fitDemo}. */
export interface DemoProgress {
  step: number;
  steps: number;
  loss: number;
  elapsedMs: number;
}

/** Fits TinyNet to a fixed random batch (target: a smooth function of the input). Returns the first and
 * last loss. */
export async function fitDemo(
  options: { steps?: number; size?: number; seed?: number; onProgress?: (p: DemoProgress) => void } = {},
): Promise<{ firstLoss: number; lastLoss: number; steps: number }> {
  const steps = options.steps ?? 150;
  const size = options.size ?? 16;
  const rng = new Rng(options.seed ?? 1);
  const n = 2 * 3 * size * size;
  const inputData = rng.uniformArray(n, -1, 1);
  // Target: a fixed per-pixel channel mix of the input, which the net can represent.
  const targetData = new Float32Array(n);
  const plane = size * size;
  for (let b = 0; b < 2; b++) {
    for (let i = 0; i < plane; i++) {
      const [r, g, bl] = [0, 1, 2].map((c) => inputData[(b * 3 + c) * plane + i]);
      targetData[(b * 3) * plane + i] = 0.5 * r - 0.25 * g;
      targetData[(b * 3 + 1) * plane + i] = 0.3 * g + 0.2 * bl;
      targetData[(b * 3 + 2) * plane + i] = -0.4 * bl + 0.1;
    }
  }
  const x = tensor(inputData, [2, 3, size, size]);
  const y = tensor(targetData, [2, 3, size, size]);
  const net = new TinyNet(rng);
  const optimizer = new Adam(net.parameters(), { lr: 1e-2 });
  const start = performance.now();
  let firstLoss = NaN;
  let lastLoss = NaN;
  for (let step = 1; step <= steps; step++) {
    const loss = tidy(() => {
      optimizer.zeroGrad();
      const l = mseLoss(net.forward(x), y);
      backward(l);
      optimizer.step();
      return l;
    });
    if (step === 1 || step === steps || step % 10 === 0) {
      const value = await loss.item();
      if (step === 1) firstLoss = value;
      lastLoss = value;
      options.onProgress?.({ step, steps, loss: value, elapsedMs: performance.now() - start });
    }
    loss.dispose();
  }
  optimizer.dispose();
  optimizer.zeroGrad();
  for (const p of net.parameters()) p.dispose();
  x.dispose();
  y.dispose();
  return { firstLoss, lastLoss, steps };
}
