/**
 * Distortion masks and their active-site lists, shared by every sparse op (SFM, SC, SNL).
 *
 * A mask is an N x 1 x H x W float tensor of 0/1 (1 = degraded). {@link ActiveSites} holds its compacted
 * form, computed on the GPU without readback: the sorted flat site indices (`b*H*W + y*W + x`), per-image
 * counts and offsets, and a dense map from site to list position. Counts stay on the GPU, so sparse kernels
 * are dispatched over the list's capacity (N*H*W) and each invocation first checks its index against the
 * count in `counts[0]`: cost follows the number of active sites, and nothing waits on a readback.
 *
 * @module
 */

import { engine } from "../../engine/device.ts";
import { Tensor } from "../../engine/tensor.ts";
import { map } from "../../engine/ops/elementwise.ts";
import { maxPool2d } from "../../engine/ops/pool.ts";
import { noGrad } from "../../engine/autograd.ts";
import { compactPlan } from "../../wgsl/compact.ts";

/** The compacted active sites of a mask. Buffers hold u32 values; dispose when done. */
export class ActiveSites {
  /** @internal Use {@link compactMask}. */
  constructor(
    /** The mask these sites come from ([N, 1, H, W], values 0/1). */
    readonly mask: Tensor,
    /** u32 [N*H*W]: sorted flat indices of active sites; entries past `counts[0]` are undefined. */
    readonly indices: Tensor,
    /** u32 [N*H*W]: position of each site in `indices`, or 0xffffffff for clean sites. */
    readonly rank: Tensor,
    /** u32 [1 + 2N]: total active sites, then the count of each image, then each image's offset. */
    readonly counts: Tensor,
  ) {}

  /** Batch size. */
  get n(): number {
    return this.mask.shape[0];
  }
  /** Height. */
  get h(): number {
    return this.mask.shape[2];
  }
  /** Width. */
  get w(): number {
    return this.mask.shape[3];
  }
  #capacity: number | null = null;

  /** Upper bound of the number of active sites: sparse kernels dispatch over this, and the SC module's
   * compact dense block holds this many entries per channel. N*H*W until {@link fitCapacity}. */
  get capacity(): number {
    return this.#capacity ?? this.mask.size;
  }

  /**
   * Reads the active-site count back (one GPU round trip) and lowers {@link capacity} to it, rounded up to a
   * multiple of 256: sparse kernels then dispatch over, and the SC block holds, only the active sites. For
   * images whose full-capacity SC block would not fit one storage binding (the `base` preset at 512 px on
   * llvmpipe). Returns the new capacity.
   */
  async fitCapacity(): Promise<number> {
    const { total } = await this.readCounts();
    this.#capacity = Math.min(this.mask.size, Math.max(256, Math.ceil(total / 256) * 256));
    return this.#capacity;
  }

  /** Reads the counts back (for tests and reporting): total, per-image counts and offsets. */
  async readCounts(): Promise<{ total: number; perImage: number[]; offsets: number[] }> {
    const raw = new Uint32Array((await this.counts.data()).buffer);
    const n = this.n;
    return {
      total: raw[0],
      perImage: [...raw.subarray(1, 1 + n)],
      offsets: [...raw.subarray(1 + n, 1 + 2 * n)],
    };
  }

  /** Reads the active site indices back (for tests). */
  async readIndices(): Promise<number[]> {
    const { total } = await this.readCounts();
    return [...new Uint32Array((await this.indices.data()).buffer).subarray(0, total)];
  }

  /** Releases the site buffers (and this object's handle to the mask). */
  dispose(): void {
    for (const t of [this.mask, this.indices, this.rank, this.counts]) t.dispose();
  }
}

/** Compacts a 0/1 mask [N, 1, H, W] into its active-site list (values > 0.5 are active). */
export function compactMask(mask: Tensor): ActiveSites {
  if (mask.rank !== 4 || mask.shape[1] !== 1) {
    throw new Error(`compactMask: expected [N, 1, H, W], got [${mask.shape}]`);
  }
  const [n, , h, w] = mask.shape;
  const e = engine();
  return e.op("compactMask", () => {
    const indices = Tensor.empty([n * h * w]);
    const rank = Tensor.empty([n * h * w]);
    const counts = Tensor.empty([1 + 2 * n]);
    e.runPlan(compactPlan(n, h * w), {
      mask: mask.buffer,
      indices: indices.buffer,
      rank: rank.buffer,
      out: counts.buffer,
    });
    return new ActiveSites(mask.view(mask.shape), indices, rank, counts);
  });
}

/** SPAIR's mask from NetL's logits: sigmoid(logit) > 0.5, i.e. logit > 0 (no gradient). */
export function binarizeMask(logits: Tensor): Tensor {
  return noGrad(() => map("select(0.0, 1.0, a > 0.0)", [logits]));
}

/** SPAIR's mask pyramid: level 0 is `mask`, level l+1 = maxpool2x2(level l) (a coarse site is degraded if any
 * of its children is). Returns `levels` masks; level 0 is a new handle to `mask`. */
export function maskPyramid(mask: Tensor, levels: number): Tensor[] {
  return noGrad(() => {
    const out = [mask.view(mask.shape)];
    for (let l = 1; l < levels; l++) out.push(maxPool2d(out[l - 1]));
    return out;
  });
}
