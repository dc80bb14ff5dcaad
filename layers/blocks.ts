/**
 * Dense building blocks of SPAIR's backbone (SPAIR.md section 3): convolution modules, the dense block and
 * the 3-level U-Net skeleton shared by NetL and NetR.
 *
 * @module
 */

import { Module, uniformInit } from "../engine/module.ts";
import type { Rng } from "../engine/random.ts";
import type { Tensor } from "../engine/tensor.ts";
import { conv2d, type Conv2dOptions, convTranspose2d } from "../engine/ops/conv.ts";
import { add, relu as reluOp } from "../engine/ops/elementwise.ts";
import { fusionEnabled } from "../engine/fusion.ts";
import { concat } from "../engine/ops/shape.ts";

/** A 2-D convolution layer with bias (parameters `weight` [Cout, Cin, k, k] and `bias` [Cout]). */
export class Conv2d extends Module {
  /** Kernel weights [outChannels, inChannels, kernel, kernel]. */
  readonly weight: Tensor;
  /** Per-output-channel bias [outChannels]. */
  readonly bias: Tensor;

  /** PyTorch-default initialization from `rng`. */
  constructor(
    readonly inChannels: number,
    readonly outChannels: number,
    readonly kernel: number,
    rng: Rng,
    readonly options: Conv2dOptions = { padding: (kernel - 1) >> 1 },
  ) {
    super();
    const fanIn = inChannels * kernel * kernel;
    this.weight = this.param("weight", uniformInit([outChannels, inChannels, kernel, kernel], fanIn, rng));
    this.bias = this.param("bias", uniformInit([outChannels], fanIn, rng));
  }

  /** Applies the convolution, then ReLU when `relu`, or adds `residual` (both fused into the
   * convolution's output write unless `setFusion(false)` selects the composed ops). */
  forward(x: Tensor, relu = false, residual?: Tensor): Tensor {
    if ((relu || residual) && !fusionEnabled()) {
      const c = conv2d(x, this.weight, this.bias, this.options);
      const y = relu ? reluOp(c) : add(c, residual!);
      c.dispose();
      return y;
    }
    if (residual) return conv2d(x, this.weight, this.bias, { ...this.options, residual });
    return conv2d(x, this.weight, this.bias, relu ? { ...this.options, relu } : this.options);
  }
}

/** A 2x2 stride-2 transposed convolution (U-Net upsampling), weight [Cin, Cout, 2, 2]. */
export class Upsample2x extends Module {
  /** Transposed-convolution weights [inChannels, outChannels, 2, 2]. */
  readonly weight: Tensor;
  /** Per-output-channel bias [outChannels]. */
  readonly bias: Tensor;

  /** PyTorch-default `ConvTranspose2d` initialization from `rng`. */
  constructor(inChannels: number, outChannels: number, rng: Rng) {
    super();
    // PyTorch's ConvTranspose2d fan-in is weight.size(1) * k * k.
    const fanIn = outChannels * 4;
    this.weight = this.param("weight", uniformInit([inChannels, outChannels, 2, 2], fanIn, rng));
    this.bias = this.param("bias", uniformInit([outChannels], fanIn, rng));
  }

  /** Doubles height and width. */
  forward(x: Tensor): Tensor {
    return convTranspose2d(x, this.weight, this.bias, { stride: 2 });
  }
}

/** Dense block: `layers` conv3x3+ReLU of growth `growth`, each seeing all previous outputs, then a 1x1
 * back to `channels`, plus the input (local residual). */
export class DenseBlock extends Module {
  /** The 3x3 convolutions; conv `i` maps `channels + i * growth` channels to `growth`. */
  readonly convs: Conv2d[] = [];
  /** The 1x1 convolution from all concatenated features back to `channels`. */
  readonly fuse: Conv2d;

  /**
   * Creates the convolutions with PyTorch-default initialization.
   *
   * @param channels input and output channels
   * @param growth channels added by each 3x3 convolution
   * @param rng initialization randomness
   * @param layers number of 3x3 convolutions
   */
  constructor(readonly channels: number, readonly growth: number, rng: Rng, layers = 4) {
    super();
    for (let i = 0; i < layers; i++) {
      this.convs.push(this.child(`conv${i}`, new Conv2d(channels + i * growth, growth, 3, rng)));
    }
    this.fuse = this.child("fuse", new Conv2d(channels + layers * growth, channels, 1, rng));
  }

  /** Applies the block. */
  forward(x: Tensor): Tensor {
    let features = x;
    for (const conv of this.convs) {
      const y = conv.forward(features, true);
      const next = concat([features, y], 1);
      if (features !== x) features.dispose();
      y.dispose();
      features = next;
    }
    const out = this.fuse.forward(features, false, x);
    features.dispose();
    return out;
  }
}
