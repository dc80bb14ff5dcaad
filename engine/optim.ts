/**
 * Optimizers (Adam/AdamW, SGD with momentum) with parameter groups, a step learning-rate schedule and
 * serializable state. Updates run as one fused kernel per parameter (`wgsl/optim.ts`), in place.
 *
 * @module
 */

import { engine } from "./device.ts";
import { keep, Tensor } from "./tensor.ts";
import { full } from "./ops/elementwise.ts";
import { adamStep, sgdStep } from "../wgsl/optim.ts";

/** A set of parameters sharing hyper-parameters. */
export interface ParamGroup {
  params: Tensor[];
  lr?: number;
  weightDecay?: number;
}

/** Serializable optimizer state: JSON-able metadata plus named state tensors. */
export interface OptimizerState {
  meta: { kind: string; step: number; lrs: number[]; [key: string]: unknown };
  tensors: Record<string, Tensor>;
}

function normalizeGroups(params: Tensor[] | ParamGroup[]): ParamGroup[] {
  if (params.length === 0) return [];
  return params[0] instanceof Tensor ? [{ params: params as Tensor[] }] : (params as ParamGroup[]);
}

function paramName(p: Tensor, group: number, index: number): string {
  return p.name ?? `group${group}.param${index}`;
}

/** Shared machinery of the optimizers. */
abstract class Optimizer {
  readonly groups: (ParamGroup & { lr: number; weightDecay: number })[];
  /** Steps taken so far. */
  stepCount = 0;
  protected state: Map<Tensor, Tensor[]> = new Map();

  constructor(params: Tensor[] | ParamGroup[], lr: number, weightDecay: number) {
    this.groups = normalizeGroups(params).map((g) => ({
      ...g,
      lr: g.lr ?? lr,
      weightDecay: g.weightDecay ?? weightDecay,
    }));
  }

  /** Number of state tensors per parameter. */
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
        for (const p of group.params) {
          if (!p.grad) continue;
          this.update(p, p.grad, this.slotsOf(p), group);
        }
      });
    });
  }

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
  lr?: number;
  betas?: [number, number];
  eps?: number;
  weightDecay?: number;
  /** AdamW: decay weights directly instead of adding an L2 term to the gradient. */
  decoupled?: boolean;
}

/** Adam (Kingma & Ba), matching `torch.optim.Adam` / `AdamW`. */
export class Adam extends Optimizer {
  protected readonly slots = ["exp_avg", "exp_avg_sq"];
  readonly betas: [number, number];
  readonly eps: number;
  readonly decoupled: boolean;

  constructor(params: Tensor[] | ParamGroup[], options: AdamOptions = {}) {
    super(params, options.lr ?? 1e-3, options.weightDecay ?? 0);
    this.betas = options.betas ?? [0.9, 0.999];
    this.eps = options.eps ?? 1e-8;
    this.decoupled = options.decoupled ?? false;
  }

  protected update(
    p: Tensor,
    grad: Tensor,
    [m, v]: Tensor[],
    group: { lr: number; weightDecay: number },
  ): void {
    const [b1, b2] = this.betas;
    const t = this.stepCount;
    const c2 = Math.sqrt(1 - b2 ** t);
    const step = adamStep(p.size, {
      beta1: b1,
      beta2: b2,
      stepSize: (group.lr * c2) / (1 - b1 ** t),
      epsHat: this.eps * c2,
      l2: this.decoupled ? 0 : group.weightDecay,
      decay: this.decoupled ? group.lr * group.weightDecay : 0,
    });
    engine().runPlan({ outSize: p.size, scratch: {}, steps: [step] }, {
      grad: grad.buffer,
      param: p.buffer,
      m: m.buffer,
      v: v.buffer,
    });
  }
}

/** Options of {@link SGD}. */
export interface SgdOptions {
  lr?: number;
  momentum?: number;
  weightDecay?: number;
  nesterov?: boolean;
}

/** Stochastic gradient descent with momentum, matching `torch.optim.SGD` (dampening 0). */
export class SGD extends Optimizer {
  protected readonly slots = ["momentum_buffer"];
  readonly momentum: number;
  readonly nesterov: boolean;

  constructor(params: Tensor[] | ParamGroup[], options: SgdOptions = {}) {
    super(params, options.lr ?? 1e-2, options.weightDecay ?? 0);
    this.momentum = options.momentum ?? 0;
    this.nesterov = options.nesterov ?? false;
  }

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
