/**
 * Modules: named trainable parameters organised in a tree, with state dicts that save to and load from
 * safetensors.
 *
 * @module
 */

import { keep, type Shape, type Tensor, tensor } from "./tensor.ts";
import type { Rng } from "./random.ts";
import { decodeSafetensors, encodeSafetensors, type HostTensor } from "./safetensors.ts";
import { engine } from "./device.ts";

/** Base class of layers and networks: holds parameters and child modules under names. */
export class Module {
  #params = new Map<string, Tensor>();
  #children = new Map<string, Module>();

  /** Registers a trainable parameter (requires grad, kept out of tidy scopes). */
  protected param(name: string, t: Tensor): Tensor {
    t.requiresGrad = true;
    keep(t);
    this.#params.set(name, t);
    return t;
  }

  /** Registers a child module. */
  protected child<M extends Module>(name: string, m: M): M {
    this.#children.set(name, m);
    return m;
  }

  /** All parameters by dotted name (e.g. `enc.0.conv.weight`), in registration order. */
  namedParameters(prefix = ""): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    for (const [n, p] of this.#params) {
      p.name = prefix + n;
      out.set(prefix + n, p);
    }
    for (const [n, c] of this.#children) {
      for (const [k, p] of c.namedParameters(`${prefix}${n}.`)) out.set(k, p);
    }
    return out;
  }

  /** All parameters. */
  parameters(): Tensor[] {
    return [...this.namedParameters().values()];
  }

  /** Total number of parameter elements. */
  parameterCount(): number {
    return this.parameters().reduce((s, p) => s + p.size, 0);
  }

  /** Reads every parameter back to the CPU. */
  async stateDict(): Promise<Record<string, HostTensor>> {
    const out: Record<string, HostTensor> = {};
    for (const [name, p] of this.namedParameters()) out[name] = { shape: [...p.shape], data: await p.data() };
    return out;
  }

  /** Loads parameters by name; names and shapes must match exactly (the error lists what differs). */
  loadStateDict(dict: Record<string, HostTensor>, source = "state dict"): void {
    const params = this.namedParameters();
    const missing = [...params.keys()].filter((k) => !(k in dict));
    const unexpected = Object.keys(dict).filter((k) => !params.has(k));
    if (missing.length || unexpected.length) {
      const parts = [];
      if (missing.length) {
        parts.push(`missing ${missing.slice(0, 3).join(", ")}${missing.length > 3 ? ", ..." : ""}`);
      }
      if (unexpected.length) {
        parts.push(`unexpected ${unexpected.slice(0, 3).join(", ")}${unexpected.length > 3 ? ", ..." : ""}`);
      }
      throw new Error(`${source} does not fit this model: ${parts.join("; ")}`);
    }
    for (const [name, p] of params) {
      const t = dict[name];
      if (t.shape.length !== p.shape.length || t.shape.some((d, i) => d !== p.shape[i])) {
        throw new Error(
          `${source} does not fit this model: ${name} is [${t.shape}], model expects [${p.shape}]`,
        );
      }
      engine().write(p.buffer, 0, t.data);
    }
  }

  /** Saves parameters as safetensors bytes. */
  async saveSafetensors(metadata: Record<string, string> = {}): Promise<Uint8Array> {
    return encodeSafetensors(await this.stateDict(), metadata);
  }

  /** Loads parameters from safetensors bytes; returns the file's metadata. */
  loadSafetensors(bytes: Uint8Array, source = "weights"): Record<string, string> {
    const { tensors, metadata } = decodeSafetensors(bytes);
    this.loadStateDict(tensors, source);
    return metadata;
  }
}

/** PyTorch's default initialization for conv/linear weights and biases: U(-1/sqrt(fanIn), 1/sqrt(fanIn)). */
export function uniformInit(shape: Shape, fanIn: number, rng: Rng): Tensor {
  const bound = 1 / Math.sqrt(fanIn);
  const n = shape.reduce((p, d) => p * d, 1);
  return tensor(rng.uniformArray(n, -bound, bound), shape);
}
