// What a model restores when NetL's mask is replaced by the dataset's ground-truth mask (an oracle):
// evaluates the same pairs twice, with the predicted and with the true mask, so that the gap tells how much
// of a task's error is NetL's (the mask) and how much NetR's. NetR keeps NetL's features either way; only
// the mask (SFM's region split, the sparse sites, SNL's queries) changes. Images must fit one tile (sides
// divisible by 4, as the 384x256 evaluation pairs are).
// Usage: deno run -A bench/oracle_mask.ts TASK WEIGHTS PAIRS_DIR
import { disposeGuidance, initEngine, loadModel, noGrad, type Task, tensor, tidy } from "../mod.ts";
import { evaluate, formatSummary } from "../restore/eval.ts";
import { listPairs, type PairImages, readPair } from "../train/datasets.ts";

const [task, weights, dir] = Deno.args as [Task, string, string];
if (!task || !weights || !dir) {
  console.error("usage: deno run -A bench/oracle_mask.ts TASK WEIGHTS PAIRS_DIR");
  Deno.exit(2);
}
await initEngine();
const { model } = loadModel(await Deno.readFile(weights), weights);
const pairs = await listPairs(dir, "auto");
for (const oracle of [false, true]) {
  let current: PairImages | undefined;
  const report = await evaluate({
    task,
    pairs,
    readPair: async (p) => (current = await readPair(p)),
    restore: async (planar, w, h) => {
      if (w % 4 || h % 4) throw new Error(`${w}x${h}: sides must be multiples of 4`);
      const truth = current?.mask;
      if (oracle && !truth) throw new Error("the pairs have no mask/ folder");
      const [restored, mask] = noGrad(() =>
        tidy(() => {
          const x = tensor(planar, [1, 3, h, w]);
          const { logits, features } = model.netL.forward(x);
          // Logits of +-10 binarize to the true mask (SPAIR.md section 2: mask = sigmoid(logit) > 0.5).
          const g = oracle
            ? model.guidanceFrom(tensor(truth!.map((m) => m > 0.5 ? 10 : -10), [1, 1, h, w]), features)
            : model.guidanceFrom(logits, features);
          const out = [model.netR.forward(x, g), g.masks[0].view(g.masks[0].shape)];
          disposeGuidance(g, false);
          return out;
        })
      );
      const [r, m] = await Promise.all([restored.data(), mask.data()]);
      restored.dispose();
      mask.dispose();
      return { restored: r, mask: m };
    },
  });
  console.log(`\n## ${oracle ? "ground-truth mask (oracle)" : "NetL's mask"}: ${weights} on ${dir}\n`);
  console.log(formatSummary(report));
}
