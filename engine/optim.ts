/**
 * Optimizers (Adam/AdamW, SGD with momentum) with parameter groups, a step learning-rate schedule and
 * serializable state. Updates run as one fused kernel per parameter (`wgsl/optim.ts`), in place.
 *
 * @module
 */

import { engine } from "./device.ts";
import { keep, Tensor, tidy } from "./tensor.ts";
import { noGrad } from "./graph.ts";
import { add, full, map, mul } from "./ops/elementwise.ts";
import { sum } from "./ops/reduce.ts";
import { ADAM_MAX_SEGMENTS, adamStep, sgdStep } from "../wgsl/optim.ts";

/** A set of parameters sharing hyper-parameters. */
export interface ParamGroup {
  /** Parameters of the group (updated in place). */
  params: Tensor[];
  /** Learning rate of the group; defaults to the optimizer's. */
  lr?: number;
  /** Weight decay of the group; defaults to the optimizer's. */
  weightDecay?: number;
}

/** Serializable optimizer state: JSON-able metadata plus named state tensors. */
export interface OptimizerState {
  /** Optimizer class name (`Adam`, `SGD`), steps taken, and each group's current learning rate. */
  meta: { kind: string; step: number; lrs: number[]; [key: string]: unknown };
  /** State tensors keyed `<slot>.<parameter name>`, e.g. `exp_avg.netL.tail.weight`. */
  tensors: Record<string, Tensor>;
}

function normalizeGroups(params: Tensor[] | ParamGroup[]): ParamGroup[] {
  if (params.length === 0) return [];
  return params[0] instanceof Tensor ? [{ params: params as Tensor[] }] : (params as ParamGroup[]);
}

function paramName(p: Tensor, group: number, index: number): string {
  return p.name ?? `group${group}.param${index}`;
}

/** A parameter to update, its gradient and its state tensors. */
export interface UpdateItem {
  /** The parameter, updated in place. */
  p: Tensor;
  /** Its gradient. */
  grad: Tensor;
  /** Its optimizer state tensors, one per slot (Adam: `exp_avg`, `exp_avg_sq`). */
  slots: Tensor[];
}

/** Shared machinery of the optimizers. */
abstract class Optimizer {
  /** Parameter groups, with `lr` and `weightDecay` resolved against the optimizer's defaults. */
  readonly groups: (ParamGroup & { lr: number; weightDecay: number })[];
  /** Steps taken so far. */
  stepCount = 0;
  /** Per-parameter state tensors, one per entry of {@link slots}, created on first update. */
  protected state: Map<Tensor, Tensor[]> = new Map();

  /**
   * Resolves the parameter groups; state is created lazily on the first {@link step}.
   *
   * @param params parameters, or parameter groups with their own hyper-parameters
   * @param lr default learning rate
   * @param weightDecay default weight decay
   */
  constructor(params: Tensor[] | ParamGroup[], lr: number, weightDecay: number) {
    this.groups = normalizeGroups(params).map((g) => ({
      ...g,
      lr: g.lr ?? lr,
      weightDecay: g.weightDecay ?? weightDecay,
    }));
  }

  /** Names of the per-parameter state tensors (PyTorch's state keys, e.g. `exp_avg`). */
  protected abstract readonly slots: string[];

  /** Sets the learning rate of every group (or of group `index`). */
  setLr(lr: number, index?: number): void {
    this.groups.forEach((g, i) => {
      if (index === undefined || index === i) g.lr = lr;
    });
  }

  /** Disposes every parameter's gradient. */
  zeroGrad(): void {
    for (const g of this.groups) {
      for (const p of g.params) {
        p.grad?.dispose();
        p.grad = null;
      }
    }
  }

  /** The state tensors of `p`, created (zero-filled, kept out of tidy scopes) on first use. */
  protected slotsOf(p: Tensor): Tensor[] {
    let s = this.state.get(p);
    if (!s) {
      // Optimizer state outlives any tidy scope the step runs in.
      s = keep(this.slots.map(() => full(p.shape, 0)));
      this.state.set(p, s);
    }
    return s;
  }

  /** Applies one update to every parameter that has a gradient. */
  step(): void {
    this.stepCount++;
    const e = engine();
    e.op(`${this.constructor.name}.step`, () => {
      this.groups.forEach((group) => {
        const items = group.params.flatMap((p) =>
          p.grad ? [{ p, grad: p.grad, slots: this.slotsOf(p) }] : []
        );
        this.updateAll(items, group);
      });
    });
  }

  /** Records the updates of a group's parameters that have gradients (one {@link update} each, unless an
   * optimizer updates several in one dispatch). */
  protected updateAll(items: UpdateItem[], group: { lr: number; weightDecay: number }): void {
    for (const { p, grad, slots } of items) this.update(p, grad, slots, group);
  }

  /** Records the in-place update of `p` from `grad` and its state `slots`, with the group's hyper-parameters. */
  protected abstract update(
    p: Tensor,
    grad: Tensor,
    slots: Tensor[],
    group: { lr: number; weightDecay: number },
  ): void;

  /** The optimizer state; tensors are named `<slot>.<parameter name>`. */
  stateDict(): OptimizerState {
    const tensors: Record<string, Tensor> = {};
    this.groups.forEach((g, gi) =>
      g.params.forEach((p, pi) => {
        const s = this.state.get(p);
        if (s) this.slots.forEach((slot, k) => (tensors[`${slot}.${paramName(p, gi, pi)}`] = s[k]));
      })
    );
    return {
      meta: { kind: this.constructor.name, step: this.stepCount, lrs: this.groups.map((g) => g.lr) },
      tensors,
    };
  }

  /** Restores state from {@link stateDict} (tensor data is copied). */
  loadStateDict(state: OptimizerState): void {
    if (state.meta.kind !== this.constructor.name) {
      throw new Error(`optimizer state is for ${state.meta.kind}, not ${this.constructor.name}`);
    }
    this.stepCount = state.meta.step;
    state.meta.lrs.forEach((lr, i) => this.groups[i] && (this.groups[i].lr = lr));
    const e = engine();
    this.groups.forEach((g, gi) =>
      g.params.forEach((p, pi) => {
        const slots = this.slots.map((slot) => state.tensors[`${slot}.${paramName(p, gi, pi)}`]);
        if (slots.some((t) => !t)) return;
        const own = this.slotsOf(p);
        slots.forEach((t, k) => {
          if (t.size !== p.size) {
            throw new Error(`optimizer state for ${paramName(p, gi, pi)} has the wrong size`);
          }
          e.copy(t.buffer, 0, own[k].buffer, 0, p.size * 4);
        });
      })
    );
  }

  /** Releases the state tensors. */
  dispose(): void {
    for (const s of this.state.values()) for (const t of s) t.dispose();
    this.state.clear();
  }
}

/** Options of {@link Adam}. */
export interface AdamOptions {
  /** Learning rate (default 1e-3). */
  lr?: number;
  /** Decay rates of the first and second moment estimates (default `[0.9, 0.999]`). */
  betas?: [number, number];
  /** Term added to the denominator for numerical stability (default 1e-8). */
  eps?: number;
  /** Weight decay: an L2 term, or decoupled decay with `decoupled` (default 0). */
  weightDecay?: number;
  /** AdamW: decay weights directly instead of adding an L2 term to the gradient. */
  decoupled?: boolean;
}

/**
 * Adam (Kingma & Ba), matching `torch.optim.Adam` / `AdamW`.
 *
 * ```ts
 * import { Adam, backward, initEngine, mean, square, sub, tensor } from "@spair/spair-gpu";
 * await initEngine();
 * const w = tensor(new Float32Array([0, 0]), [2]);
 * w.requiresGrad = true;
 * const target = tensor(new Float32Array([1, -1]), [2]);
 * const opt = new Adam([w], { lr: 0.1 });
 * for (let i = 0; i < 100; i++) {
 *   opt.zeroGrad();
 *   const loss = mean(square(sub(w, target)));
 *   backward(loss);
 *   loss.dispose();
 *   opt.step();
 * }
 * console.log(await w.data()); // close to [1, -1]
 * ```
 */
export class Adam extends Optimizer {
  /** First and second moment estimates. */
  protected readonly slots = ["exp_avg", "exp_avg_sq"];
  /** Decay rates of the first and second moment estimates. */
  readonly betas: [number, number];
  /** Denominator term for numerical stability. */
  readonly eps: number;
  /** Whether weight decay is decoupled (AdamW). */
  readonly decoupled: boolean;

  /**
   * Creates the optimizer (defaults: lr 1e-3, betas [0.9, 0.999], eps 1e-8, no weight decay).
   *
   * @param params parameters, or parameter groups with their own `lr` / `weightDecay`
   */
  constructor(params: Tensor[] | ParamGroup[], options: AdamOptions = {}) {
    super(params, options.lr ?? 1e-3, options.weightDecay ?? 0);
    this.betas = options.betas ?? [0.9, 0.999];
    this.eps = options.eps ?? 1e-8;
    this.decoupled = options.decoupled ?? false;
  }

  /** Records the fused Adam update of `p` and its moments `m`, `v`. */
  protected update(
    p: Tensor,
    grad: Tensor,
    slots: Tensor[],
    group: { lr: number; weightDecay: number },
  ): void {
    this.updateAll([{ p, grad, slots }], group);
  }

  /** Records the updates of up to {@link ADAM_MAX_SEGMENTS} parameters per dispatch (as many as the adapter's
   * storage bindings allow): llvmpipe spends about 0.1 ms per dispatch however small, and a model has ~90
   * parameter tensors. */
  protected override updateAll(items: UpdateItem[], group: { lr: number; weightDecay: number }): void {
    const [b1, b2] = this.betas;
    const t = this.stepCount;
    const c2 = Math.sqrt(1 - b2 ** t);
    const hyper = {
      beta1: b1,
      beta2: b2,
      stepSize: (group.lr * c2) / (1 - b1 ** t),
      epsHat: this.eps * c2,
      l2: this.decoupled ? 0 : group.weightDecay,
      decay: this.decoupled ? group.lr * group.weightDecay : 0,
    };
    const e = engine();
    const perDispatch = Math.max(
      1,
      Math.min(ADAM_MAX_SEGMENTS, Math.floor(e.device.limits.maxStorageBuffersPerShaderStage / 4)),
    );
    for (let first = 0; first < items.length; first += perDispatch) {
      const batch = items.slice(first, first + perDispatch);
      const step = adamStep(batch.map(({ p }) => p.size), hyper);
      const buffers: Record<string, GPUBuffer> = {};
      batch.forEach(({ p, grad, slots: [m, v] }, s) => {
        buffers[`grad${s}`] = grad.buffer;
        buffers[`param${s}`] = p.buffer;
        buffers[`m${s}`] = m.buffer;
        buffers[`v${s}`] = v.buffer;
      });
      e.runPlan({ outSize: 0, scratch: {}, steps: [step] }, buffers);
    }
  }
}

/** Options of {@link SGD}. */
export interface SgdOptions {
  /** Learning rate (default 1e-2). */
  lr?: number;
  /** Momentum factor (default 0: plain SGD). */
  momentum?: number;
  /** L2 penalty added to the gradient (default 0). */
  weightDecay?: number;
  /** Use Nesterov momentum (default false). */
  nesterov?: boolean;
}

/** Stochastic gradient descent with momentum, matching `torch.optim.SGD` (dampening 0). */
export class SGD extends Optimizer {
  /** The momentum buffer. */
  protected readonly slots = ["momentum_buffer"];
  /** Momentum factor. */
  readonly momentum: number;
  /** Whether Nesterov momentum is used. */
  readonly nesterov: boolean;

  /**
   * Creates the optimizer (defaults: lr 1e-2, no momentum, no weight decay).
   *
   * @param params parameters, or parameter groups with their own `lr` / `weightDecay`
   */
  constructor(params: Tensor[] | ParamGroup[], options: SgdOptions = {}) {
    super(params, options.lr ?? 1e-2, options.weightDecay ?? 0);
    this.momentum = options.momentum ?? 0;
    this.nesterov = options.nesterov ?? false;
  }

  /** Records the fused SGD update of `p` and its momentum buffer. */
  protected update(
    p: Tensor,
    grad: Tensor,
    [buf]: Tensor[],
    group: { lr: number; weightDecay: number },
  ): void {
    const step = sgdStep(p.size, {
      lr: group.lr,
      momentum: this.momentum,
      weightDecay: group.weightDecay,
      first: this.stepCount === 1 || this.momentum === 0,
      nesterov: this.nesterov,
    });
    engine().runPlan({ outSize: p.size, scratch: {}, steps: [step] }, {
      grad: grad.buffer,
      param: p.buffer,
      buf: buf.buffer,
    });
  }
}

/** The paper's schedule: `baseLr` multiplied by `gamma` (default 0.5, halving) every `everyEpochs` epochs. */
export function stepLr(baseLr: number, epoch: number, everyEpochs: number, gamma = 0.5): number {
  return baseLr * gamma ** Math.floor(epoch / everyEpochs);
}

export type { Optimizer };

/**
 * Scales the gradients of `params` in place so that their global L2 norm is at most `maxNorm`, like
 * `torch.nn.utils.clip_grad_norm_`: each gradient is multiplied by min(1, maxNorm / (norm + 1e-6)). Runs on
 * the GPU without a readback. Returns the norm before clipping as a one-element tensor (dispose it).
 */
export function clipGradNorm(params: readonly Tensor[], maxNorm: number): Tensor {
  if (!(maxNorm > 0)) throw new Error(`clipGradNorm: maxNorm must be positive, got ${maxNorm}`);
  return noGrad(() => {
    const grads = params.map((p) => p.grad).filter((g): g is Tensor => g !== null);
    const norm = tidy(() => {
      let total: Tensor = full([1], 0);
      for (const g of grads) total = add(total, sum(mul(g, g)).view([1]));
      return map("sqrt(a)", [total]);
    });
    tidy(() => {
      const scale = map("min(1.0, k.x / (a + 1e-6))", [norm], [maxNorm]);
      // Two gradients may share one buffer (a gradient an addition passes through unchanged is a view of
      // its output's gradient): scale each buffer once.
      const scaled = new Set<GPUBuffer>();
      for (const g of grads) {
        if (scaled.has(g.buffer)) continue;
        scaled.add(g.buffer);
        const s = mul(g, scale);
        engine().copy(s.buffer, 0, g.buffer, 0, g.size * 4);
      }
    });
    return norm;
  });
}
