// The SPAIR networks: variants build and run, parameter counts are as documented, weights round-trip as
// safetensors, and finite differences confirm the gradient through a full tiny SPAIR (NetL frozen).
import assert from "node:assert/strict";
import { randomArray } from "./_setup.ts";
import * as ops from "../mod.ts";
import { disposeGuidance, SpairModel, type Variant } from "../layers/spair.ts";

/** NetR / NetL parameter counts of the tiny preset (docs/architecture.md, README). */
const TINY_COUNTS: Record<Variant, number> = {
  Net1: 112371,
  Net2: 113059,
  Net3: 131139,
  Net4: 135939,
  SPAIR: 135939,
};

Deno.test("tiny SPAIR variants have the documented parameter counts and round-trip as safetensors", async () => {
  for (const variant of Object.keys(TINY_COUNTS) as Variant[]) {
    const model = new SpairModel({ preset: "tiny", variant }, 1);
    assert.equal(model.netR.parameterCount(), TINY_COUNTS[variant], variant);
    assert.equal(model.netL.parameterCount(), 28297);
    if (variant === "SPAIR") {
      const copy = new SpairModel({ preset: "tiny", variant }, 2);
      copy.loadSafetensors(await model.saveSafetensors());
      const name = "netR.snl0.e1.weight";
      assert.ok(model.namedParameters().has(name), [...model.namedParameters().keys()].join(","));
      assert.deepEqual(
        await copy.namedParameters().get(name)!.data(),
        await model.namedParameters().get(name)!.data(),
      );
      ops.dispose(copy.parameters());
    }
    ops.dispose(model.parameters());
  }
});

Deno.test("finite differences match backward through a full tiny SPAIR (NetL frozen, NetR trained), 32x32", async () => {
  const model = new SpairModel({ preset: "tiny", variant: "SPAIR" }, 3);
  const x = ops.tensor(randomArray(3 * 32 * 32, 4, 0, 1), [1, 3, 32, 32]);
  // Shift NetL's output bias so that about 30% of sites are degraded (a random NetL may flag none or all).
  const logits = ops.noGrad(() => model.netL.forward(x));
  const values = [...await logits.logits.data()].sort((a, b) => a - b);
  const bias = model.netL.tail.bias;
  const b0 = (await bias.data())[0];
  ops.assignData(bias, [b0 - values[Math.floor(values.length * 0.7)]]);
  ops.dispose([logits.logits, ...logits.features]);
  const guidance = model.guidance(x);
  const density = (await guidance.masks[0].data()).reduce((s, v) => s + v, 0) / (32 * 32);
  assert.ok(density > 0.15 && density < 0.45, `mask density ${density}`);

  const r = ops.tensor(randomArray(3 * 32 * 32, 5), [1, 3, 32, 32]);
  const loss = () => ops.tidy(() => ops.sum(ops.mul(model.netR.forward(x, guidance), r)));
  const l = loss();
  ops.backward(l);
  l.dispose();
  const params = model.netR.namedParameters();
  const checked = [
    "dec0.conv0.weight",
    "dec1.fuse.weight",
    "snl0.e1.weight",
    "snl1.mid.weight",
    "guide0.weight",
    "enc.block0.conv1.weight",
    "tail.bias",
  ];
  const eps = 1e-2;
  let compared = 0;
  for (const name of checked) {
    const p = params.get(name);
    assert.ok(p, `no parameter ${name}; have ${[...params.keys()].join(", ")}`);
    const data = await p.data();
    const grad = await p.grad!.data();
    // The two largest-gradient coordinates of each parameter: well above float32 noise.
    const order = [...grad.keys()].sort((a, b) => Math.abs(grad[b]) - Math.abs(grad[a])).slice(0, 2);
    for (const i of order) {
      const at = (v: number) => {
        const copy = data.slice();
        copy[i] = v;
        ops.assignData(p, copy);
      };
      at(data[i] + eps);
      const up = loss();
      at(data[i] - eps);
      const down = loss();
      at(data[i]);
      const numeric = ((await up.item()) - (await down.item())) / (2 * eps);
      ops.dispose([up, down]);
      const analytic = grad[i];
      assert.ok(
        Math.abs(numeric - analytic) <= 3e-2 * Math.max(1, Math.abs(analytic)),
        `${name}[${i}]: numeric ${numeric} vs analytic ${analytic}`,
      );
      compared++;
    }
  }
  assert.equal(compared, checked.length * 2);
  disposeGuidance(guidance);
  for (const p of model.parameters()) p.grad?.dispose();
  ops.dispose([x, r, model.parameters()]);
});
