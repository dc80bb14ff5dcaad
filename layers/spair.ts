/**
 * SPAIR's networks: NetL (distortion localization) and NetR (restoration), with presets and the ablation
 * variants of the paper's table 6 (SPAIR.md sections 2 and 3; choices beyond them in
 * docs/architecture.md).
 *
 * Both nets are 3-level U-Nets (widths C, 2C, 4C; dense blocks; stride-2 conv down, 2x2 transposed conv
 * up, skip concatenation and a 1x1 fusion). NetL (width C/2) outputs one logit channel; the mask is
 * `logit > 0`. NetR applies SFM to `F_R + P(F_L)` at the input of each strided convolution and, in the
 * decoder, replaces the dense blocks by SC modules (Net3) followed by SNL modules (SPAIR) or dense
 * non-local blocks (Net4).
 *
 * @module
 */

import { Module } from "../engine/module.ts";
import { Rng } from "../engine/random.ts";
import type { Tensor } from "../engine/tensor.ts";
import { noGrad } from "../engine/autograd.ts";
import { concat } from "../engine/ops/shape.ts";
import { Conv2d, DenseBlock, Upsample2x } from "./blocks.ts";
import { type ActiveSites, binarizeMask, compactMask, maskPyramid } from "./sparse/active.ts";
import { sfm } from "./sparse/sfm.ts";
import { SCModule } from "./sparse/sparse_conv.ts";
import { SNLModule } from "./sparse/snl.ts";
import { UserError } from "../engine/errors.ts";
import {
  isKeyOf,
  namesOf,
  type Preset,
  PRESETS,
  type Variant,
  type VariantFeatures,
  VARIANTS,
} from "./vocabulary.ts";

export { type Preset, PRESETS, type Variant, type VariantFeatures, VARIANTS } from "./vocabulary.ts";

/** Architecture of a SPAIR model. */
export interface SpairConfig {
  /** Model size (width and growth, see {@link PRESETS}). */
  preset: Preset;
  /** Ablation variant; `SPAIR` is the full model. */
  variant: Variant;
}

/** Which modules a variant uses (see {@link VARIANTS}). */
export function variantFeatures(variant: Variant): VariantFeatures {
  if (!isKeyOf(VARIANTS, variant)) {
    throw new UserError(`unknown variant '${variant}' (expected ${namesOf(VARIANTS)})`);
  }
  const { sfm, sc, nonLocal } = VARIANTS[variant];
  return { sfm, sc, nonLocal };
}

function checkInput(x: Tensor, net: string): void {
  if (x.rank !== 4 || x.shape[1] !== 3) {
    throw new Error(`${net}: expected an N x 3 x H x W image batch, got [${x.shape}]`);
  }
  if (x.shape[2] % 4 || x.shape[3] % 4) {
    throw new Error(
      `${net}: height and width must be multiples of 4 (got ${x.shape[2]}x${x.shape[3]}); pad the image`,
    );
  }
}

function dispose(...ts: Tensor[]): void {
  for (const t of ts) t.dispose();
}

/** Encoder of the 3-level U-Net (widths c, 2c, 4c); its owner runs the layers in order, keeping the level-0
 * and level-1 features for the skips. */
export class Encoder extends Module {
  /** 3x3 convolution from RGB to c channels. */
  readonly head: Conv2d;
  /** Dense block at full resolution (c channels). */
  readonly block0: DenseBlock;
  /** Stride-2 3x3 convolution to half resolution, c to 2c channels. */
  readonly down0: Conv2d;
  /** Dense block at half resolution (2c channels). */
  readonly block1: DenseBlock;
  /** Stride-2 3x3 convolution to quarter resolution, 2c to 4c channels. */
  readonly down1: Conv2d;
  /** Dense block at the bottleneck (4c channels). */
  readonly block2: DenseBlock;

  /**
   * Creates the layers with PyTorch-default initialization.
   *
   * @param c width of the first level
   * @param g dense-block growth
   * @param rng initialization randomness
   */
  constructor(c: number, g: number, rng: Rng) {
    super();
    this.head = this.child("head", new Conv2d(3, c, 3, rng));
    this.block0 = this.child("block0", new DenseBlock(c, g, rng));
    this.down0 = this.child("down0", new Conv2d(c, 2 * c, 3, rng, { stride: 2, padding: 1 }));
    this.block1 = this.child("block1", new DenseBlock(2 * c, g, rng));
    this.down1 = this.child("down1", new Conv2d(2 * c, 4 * c, 3, rng, { stride: 2, padding: 1 }));
    this.block2 = this.child("block2", new DenseBlock(4 * c, g, rng));
  }
}

/** Upsampling + skip concatenation + 1x1 fusion of one decoder level. */
export class DecoderJoin extends Module {
  /** 2x transposed-convolution upsampling, inChannels to outChannels. */
  readonly up: Upsample2x;
  /** 1x1 convolution of the concatenation [upsampled, skip] (2 * outChannels) to outChannels. */
  readonly fuse: Conv2d;

  /**
   * Creates the upsampling and fusion layers.
   *
   * @param inChannels channels of the deeper level; the skip and the output have `outChannels`
   */
  constructor(inChannels: number, outChannels: number, rng: Rng) {
    super();
    this.up = this.child("up", new Upsample2x(inChannels, outChannels, rng));
    this.fuse = this.child("fuse", new Conv2d(2 * outChannels, outChannels, 1, rng));
  }

  /** Joins `deep` [N, inChannels, H/2, W/2] with `skip` [N, outChannels, H, W]; returns [N, outChannels, H, W]. */
  forward(deep: Tensor, skip: Tensor): Tensor {
    const up = this.up.forward(deep);
    const joined = concat([up, skip], 1);
    const out = this.fuse.forward(joined);
    dispose(up, joined);
    return out;
  }
}

/** NetL's outputs: mask logits and the encoder features that guide NetR. */
export interface NetLOutput {
  /** [N, 1, H, W] logits; the mask is `logit > 0`. */
  logits: Tensor;
  /** Encoder features at full and half resolution (widths C/2 and C). */
  features: [Tensor, Tensor];
}

/** The localization network NetL: a dense U-Net of width C/2 with one output logit. */
export class NetL extends Module {
  /** U-Net encoder of width C/2 (parameters `enc.*`). */
  readonly encoder: Encoder;
  /** Decoder join from the bottleneck to half resolution. */
  readonly join1: DecoderJoin;
  /** Dense block of the half-resolution decoder level (parameters `dec1.*`). */
  readonly block1: DenseBlock;
  /** Decoder join from half to full resolution. */
  readonly join0: DecoderJoin;
  /** Dense block of the full-resolution decoder level (parameters `dec0.*`). */
  readonly block0: DenseBlock;
  /** 3x3 convolution to the single logit channel. */
  readonly tail: Conv2d;

  /**
   * Creates the layers with PyTorch-default initialization.
   *
   * @param preset model size; NetL uses half its width and growth
   */
  constructor(readonly preset: Preset, rng: Rng) {
    super();
    const { width, growth } = PRESETS[preset];
    const c = width / 2;
    const g = growth / 2;
    this.encoder = this.child("enc", new Encoder(c, g, rng));
    this.join1 = this.child("join1", new DecoderJoin(4 * c, 2 * c, rng));
    this.block1 = this.child("dec1", new DenseBlock(2 * c, g, rng));
    this.join0 = this.child("join0", new DecoderJoin(2 * c, c, rng));
    this.block0 = this.child("dec0", new DenseBlock(c, g, rng));
    this.tail = this.child("tail", new Conv2d(c, 1, 3, rng));
  }

  /** Predicts mask logits and the guidance features. */
  forward(x: Tensor): NetLOutput {
    checkInput(x, "NetL");
    const e = this.encoder;
    const h = e.head.forward(x);
    const e0 = e.block0.forward(h);
    const d0 = e.down0.forward(e0);
    const e1 = e.block1.forward(d0);
    const d1 = e.down1.forward(e1);
    const b = e.block2.forward(d1);
    const j1 = this.join1.forward(b, e1);
    const u1 = this.block1.forward(j1);
    const j0 = this.join0.forward(u1, e0);
    const u0 = this.block0.forward(j0);
    const logits = this.tail.forward(u0);
    dispose(h, d0, d1, b, j1, u1, j0, u0);
    return { logits, features: [e0, e1] };
  }
}

/** Guidance NetR receives from the (frozen) NetL. */
export interface Guidance {
  /** Masks at full and half resolution ([N, 1, H, W] and [N, 1, H/2, W/2], values 0/1). */
  masks: [Tensor, Tensor];
  /** Active sites of those masks. */
  sites: [ActiveSites, ActiveSites];
  /** NetL's encoder features at the same resolutions. */
  features: [Tensor, Tensor];
}

/**
 * Replacements for NetR's image-wide layers, SFM (per-image statistics) and the non-local modules (whole
 * rows and columns). Tiled restoration uses them to give every tile the whole image's statistics and
 * attention.
 */
export interface GlobalLayerHooks {
  /** Replaces `sfm(features, mask)` at `level` (0 full resolution, 1 half). */
  sfm?(level: 0 | 1, features: Tensor, mask: Tensor): Tensor;
  /** Replaces `module.forward(features, sites)` at `level`; `mask` is the level's mask. */
  nonLocal?(level: 0 | 1, features: Tensor, mask: Tensor, module: SNLModule): Tensor;
}

/** One of NetR's image-wide layers: SFM or a non-local module, at level 0 (full) or 1 (half resolution). */
export interface GlobalLayer {
  /** SFM or a non-local module (SNL, or dense for Net4). */
  kind: "sfm" | "nonLocal";
  /** 0 at full resolution, 1 at half. */
  level: 0 | 1;
}

/** Options of {@link NetR.forward}. */
export interface NetRForwardOptions {
  /** Replacements for the image-wide layers. */
  hooks?: GlobalLayerHooks;
  /** Stop at this image-wide layer and return its input instead of the restored batch. */
  stopAt?: GlobalLayer;
}

/** What {@link NetR.forward} returns with `stopAt`: the layer's input features and its level's mask. */
export interface GlobalLayerInput {
  /** [N, C, H, W] features the layer would have received. */
  features: Tensor;
  /** [N, 1, H, W] mask of the layer's level (a view; dispose it too). */
  mask: Tensor;
}

/** The restoration network NetR (variant-dependent). */
export class NetR extends Module {
  /** U-Net encoder of width C. */
  readonly encoder: Encoder;
  /** 1x1 projection P of NetL's full-resolution features (C/2 to C channels); null without SFM (Net1). */
  readonly guide0: Conv2d | null = null;
  /** 1x1 projection P of NetL's half-resolution features (C to 2C channels); null without SFM (Net1). */
  readonly guide1: Conv2d | null = null;
  /** Decoder join from the bottleneck to half resolution. */
  readonly join1: DecoderJoin;
  /** Decoder join from half to full resolution. */
  readonly join0: DecoderJoin;
  /** Half-resolution decoder block: an {@link SCModule} (Net3 and up) or a dense block. */
  readonly dec1: Module & { forward(x: Tensor, sites: ActiveSites): Tensor };
  /** Full-resolution decoder block: an {@link SCModule} (Net3 and up) or a dense block. */
  readonly dec0: Module & { forward(x: Tensor, sites: ActiveSites): Tensor };
  /** Non-local module after `dec1` (sparse for SPAIR, dense for Net4); null otherwise. */
  readonly nonLocal1: SNLModule | null = null;
  /** Non-local module after `dec0` (sparse for SPAIR, dense for Net4); null otherwise. */
  readonly nonLocal0: SNLModule | null = null;
  /** 3x3 convolution to the RGB residual added to the input. */
  readonly tail: Conv2d;
  /** The modules this variant uses. */
  readonly features: VariantFeatures;

  /**
   * Creates the layers the variant uses, with PyTorch-default initialization.
   *
   * @param config preset and variant
   */
  constructor(readonly config: SpairConfig, rng: Rng) {
    super();
    const { width: c, growth: g } = PRESETS[config.preset];
    this.features = variantFeatures(config.variant);
    this.encoder = this.child("enc", new Encoder(c, g, rng));
    if (this.features.sfm) {
      // P: 1x1 projections of NetL's features (widths C/2, C) to NetR's (C, 2C).
      this.guide0 = this.child("guide0", new Conv2d(c / 2, c, 1, rng));
      this.guide1 = this.child("guide1", new Conv2d(c, 2 * c, 1, rng));
    }
    this.join1 = this.child("join1", new DecoderJoin(4 * c, 2 * c, rng));
    this.join0 = this.child("join0", new DecoderJoin(2 * c, c, rng));
    const block = (channels: number, name: string) =>
      this.child(
        name,
        this.features.sc ? new SCModule(channels, g, rng) : new DenseLevel(channels, g, rng),
      ) as Module & { forward(x: Tensor, sites: ActiveSites): Tensor };
    this.dec1 = block(2 * c, "dec1");
    this.dec0 = block(c, "dec0");
    if (this.features.nonLocal !== "none") {
      const mode = this.features.nonLocal;
      this.nonLocal1 = this.child("snl1", new SNLModule(2 * c, rng, mode));
      this.nonLocal0 = this.child("snl0", new SNLModule(c, rng, mode));
    }
    this.tail = this.child("tail", new Conv2d(c, 3, 3, rng));
  }

  /** Whether this variant reads NetL's guidance (mask, sites, features): every variant but the Net1 dense
   * baseline, whose NetL is then neither trained nor run. */
  get usesGuidance(): boolean {
    const { sfm, sc, nonLocal } = this.features;
    return sfm || sc || nonLocal !== "none";
  }

  /** The image-wide layers this variant has, in forward order. */
  get globalLayers(): GlobalLayer[] {
    const layers: GlobalLayer[] = [];
    if (this.features.sfm) layers.push({ kind: "sfm", level: 0 }, { kind: "sfm", level: 1 });
    if (this.features.nonLocal !== "none") {
      layers.push({ kind: "nonLocal", level: 1 }, { kind: "nonLocal", level: 0 });
    }
    return layers;
  }

  /** Restores a batch (values in [0, 1]); `guidance` is required for every variant but Net1.
   * `options.hooks` replace the image-wide layers (see {@link GlobalLayerHooks}); with `options.stopAt`
   * the pass ends at that layer and returns its input (see {@link GlobalLayerInput}). */
  forward(x: Tensor, guidance?: Guidance, options?: NetRForwardOptions & { stopAt?: undefined }): Tensor;
  /** Runs NetR up to the image-wide layer `options.stopAt` and returns that layer's input and mask. */
  forward(
    x: Tensor,
    guidance: Guidance,
    options: NetRForwardOptions & { stopAt: GlobalLayer },
  ): GlobalLayerInput;
  forward(x: Tensor, guidance?: Guidance, options: NetRForwardOptions = {}): Tensor | GlobalLayerInput {
    checkInput(x, "NetR");
    if (this.features.sfm && !guidance) throw new Error(`NetR ${this.config.variant} needs NetL's guidance`);
    const { hooks, stopAt } = options;
    if (
      stopAt && !this.globalLayers.some((l) => l.kind === stopAt.kind && l.level === stopAt.level)
    ) {
      throw new Error(`NetR ${this.config.variant} has no ${stopAt.kind} layer at level ${stopAt.level}`);
    }
    const stopsAt = (kind: GlobalLayer["kind"], level: 0 | 1) =>
      stopAt?.kind === kind && stopAt.level === level;
    /** Ends the pass: disposes what was computed so far and hands over the layer's input. */
    const stop = (features: Tensor, level: 0 | 1, ...done: Tensor[]): GlobalLayerInput => {
      dispose(...done);
      const mask = guidance!.masks[level];
      return { features, mask: mask.view(mask.shape) };
    };
    const e = this.encoder;
    const h = e.head.forward(x);
    const e0 = e.block0.forward(h);
    // SFM on F_R + P(F_L) before each strided convolution (Net2 and up); F_R alone for Net1.
    const guided0 = this.#guidedInput(0, e0, this.guide0, guidance);
    if (guided0 && stopsAt("sfm", 0)) return stop(guided0, 0, h, e0);
    const s0 = guided0 ? this.#sfm(0, guided0, guidance!, hooks) : e0.view(e0.shape);
    const d0 = e.down0.forward(s0);
    const e1 = e.block1.forward(d0);
    const guided1 = this.#guidedInput(1, e1, this.guide1, guidance);
    if (guided1 && stopsAt("sfm", 1)) return stop(guided1, 1, h, e0, s0, d0, e1);
    const s1 = guided1 ? this.#sfm(1, guided1, guidance!, hooks) : e1.view(e1.shape);
    const d1 = e.down1.forward(s1);
    const b = e.block2.forward(d1);
    const j1 = this.join1.forward(b, e1);
    let u1 = this.dec1.forward(j1, guidance?.sites[1] as ActiveSites);
    if (this.nonLocal1) {
      if (stopsAt("nonLocal", 1)) return stop(u1, 1, h, e0, s0, d0, e1, s1, d1, b, j1);
      const n1 = this.#nonLocal(1, this.nonLocal1, u1, guidance!, hooks);
      u1.dispose();
      u1 = n1;
    }
    const j0 = this.join0.forward(u1, e0);
    let u0 = this.dec0.forward(j0, guidance?.sites[0] as ActiveSites);
    if (this.nonLocal0) {
      if (stopsAt("nonLocal", 0)) return stop(u0, 0, h, e0, s0, d0, e1, s1, d1, b, j1, u1, j0);
      const n0 = this.#nonLocal(0, this.nonLocal0, u0, guidance!, hooks);
      u0.dispose();
      u0 = n0;
    }
    const out = this.tail.forward(u0, false, x); // the global residual, added in the convolution's write
    dispose(h, e0, s0, d0, e1, s1, d1, b, j1, u1, j0, u0);
    return out;
  }

  /** SFM's input F_R + P(F_L) at `level`, or null without SFM (Net1) or guidance. */
  #guidedInput(level: 0 | 1, fr: Tensor, proj: Conv2d | null, guidance: Guidance | undefined): Tensor | null {
    if (!proj || !guidance) return null;
    return proj.forward(guidance.features[level], false, fr); // F_R added in the convolution's write
  }

  /** SFM (or the hook that replaces it) on `input`; consumes `input`. */
  #sfm(level: 0 | 1, input: Tensor, guidance: Guidance, hooks: GlobalLayerHooks | undefined): Tensor {
    const mask = guidance.masks[level];
    const out = hooks?.sfm ? hooks.sfm(level, input, mask) : sfm(input, mask);
    input.dispose();
    return out;
  }

  /** Applies non-local module `module` at `level`, or the hook that replaces it. */
  #nonLocal(
    level: 0 | 1,
    module: SNLModule,
    u: Tensor,
    guidance: Guidance,
    hooks: GlobalLayerHooks | undefined,
  ): Tensor {
    if (hooks?.nonLocal) return hooks.nonLocal(level, u, guidance.masks[level], module);
    return module.forward(u, guidance.sites[level]);
  }
}

/** A dense block with the decoder-level signature (the sites are ignored): Net1/Net2 decoders. */
class DenseLevel extends DenseBlock {
  override forward(x: Tensor, _sites?: ActiveSites): Tensor {
    return super.forward(x);
  }
}

/**
 * NetL + NetR with the mask plumbing between them.
 *
 * ```ts
 * import { initEngine, noGrad, SpairModel, tensor } from "@spair/spair-gpu";
 * await initEngine();
 * const model = new SpairModel({ preset: "tiny", variant: "SPAIR" }, 42); // random weights
 * const x = tensor(new Float32Array(1 * 3 * 64 * 64).fill(0.5), [1, 3, 64, 64]);
 * const { restored, mask, logits } = noGrad(() => model.forward(x));
 * console.log(restored.shape, mask.shape); // [1, 3, 64, 64] [1, 1, 64, 64]
 * for (const t of [x, restored, mask, logits]) t.dispose();
 * ```
 */
export class SpairModel extends Module {
  /** The localization network (parameters `netL.*`). */
  readonly netL: NetL;
  /** The restoration network (parameters `netR.*`). */
  readonly netR: NetR;

  /**
   * Creates both networks with randomly initialized parameters (load trained ones with `loadModel`
   * or `loadStateDict`).
   *
   * @param config preset and variant
   * @param seed seed of the parameter initialization
   */
  constructor(readonly config: SpairConfig, seed = 0) {
    super();
    const rng = new Rng(seed);
    this.netL = this.child("netL", new NetL(config.preset, rng));
    this.netR = this.child("netR", new NetR(config, rng));
  }

  /** Runs the frozen NetL (no gradient) and prepares NetR's guidance. Dispose it with
   * {@link disposeGuidance}. */
  guidance(x: Tensor): Guidance & { logits: Tensor } {
    return noGrad(() => {
      const { logits, features } = this.netL.forward(x);
      return this.guidanceFrom(logits, features);
    });
  }

  /** NetR's guidance from NetL's outputs (mask logits, encoder features at full and half resolution),
   * for example ones kept from an earlier run on the same input. Takes ownership of the tensors. */
  guidanceFrom(logits: Tensor, features: [Tensor, Tensor]): Guidance & { logits: Tensor } {
    return noGrad(() => {
      const mask = binarizeMask(logits);
      const [m0, m1] = maskPyramid(mask, 2);
      mask.dispose();
      return {
        logits,
        masks: [m0, m1],
        sites: [compactMask(m0), compactMask(m1)],
        features,
      };
    });
  }

  /** Restores `x` [N, 3, H, W] in [0, 1]; returns the restored batch and the full-resolution mask. */
  forward(x: Tensor): { restored: Tensor; mask: Tensor; logits: Tensor } {
    const g = this.guidance(x);
    const restored = this.netR.forward(x, g);
    const mask = g.masks[0].view(g.masks[0].shape);
    const logits = g.logits;
    disposeGuidance(g, false);
    return { restored, mask, logits };
  }
}

/** Releases the guidance tensors and site lists; the logits too unless `includeLogits` is false. */
export function disposeGuidance(g: Guidance & { logits?: Tensor }, includeLogits = true): void {
  for (const t of [...g.masks, ...g.features]) t.dispose();
  for (const s of g.sites) s.dispose();
  if (includeLogits) g.logits?.dispose();
}
