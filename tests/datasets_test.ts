// Dataset layout discovery (train/datasets.ts) on tiny folder trees of empty files, and its errors.
import assert from "node:assert/strict";
import { dirname, join } from "node:path";
import { PNG } from "pngjs";
import {
  checkPairSizes,
  DatasetError,
  detectLayout,
  type Layout,
  listPairs,
  readPair,
} from "../train/datasets.ts";

const roots: string[] = [];
globalThis.addEventListener("unload", () => {
  for (const r of roots) Deno.removeSync(r, { recursive: true });
});

/** Creates empty files (and their folders) under a fresh temp dir (removed at exit); returns the dir. */
async function tree(files: string[]): Promise<string> {
  const root = await Deno.makeTempDir({ prefix: "spair_ds_" });
  roots.push(root);
  for (const f of files) {
    await Deno.mkdir(dirname(join(root, f)), { recursive: true });
    await Deno.writeFile(join(root, f), new Uint8Array());
  }
  return root;
}

/** Pairs as [name, input, target, mask?] relative to `root`, for compact assertions. */
function rel(root: string, pairs: { name: string; input: string; target: string; mask?: string }[]) {
  const r = (p?: string) => (p === undefined ? undefined : p.slice(root.length + 1));
  return pairs.map((p) => [p.name, r(p.input), r(p.target), r(p.mask)]);
}

async function rejects(p: Promise<unknown>, message: string) {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof DatasetError, `not a DatasetError: ${e}`);
    assert.equal(e.message, message);
    assert.ok(!e.message.includes("\n"));
    return true;
  });
}

Deno.test("pairs layout: stems match across extensions, masks attach, natural sort, junk ignored", async () => {
  const root = await tree([
    "input/10.png",
    "input/2.jpg",
    "input/.DS_Store",
    "input/notes.txt",
    "target/10.png",
    "target/2.png",
    "mask/10.png",
  ]);
  for (const layout of ["pairs", "auto", undefined] as (Layout | undefined)[]) {
    assert.deepEqual(rel(root, await listPairs(root, layout)), [
      ["2", "input/2.jpg", "target/2.png", undefined],
      ["10", "input/10.png", "target/10.png", "mask/10.png"],
    ]);
  }
  assert.equal(await detectLayout(root), "pairs");
  // A trailing slash on the folder is accepted.
  assert.equal((await listPairs(root + "/")).length, 2);
});

Deno.test("rain13k layout: input/target and Rain100 rainy/norain", async () => {
  const a = await tree(["input/1.jpg", "target/1.jpg"]);
  assert.deepEqual(rel(a, await listPairs(a, "rain13k")), [["1", "input/1.jpg", "target/1.jpg", undefined]]);
  const b = await tree([
    "rainy/rain-001.png",
    "rainy/rain-002.png",
    "norain/norain-001.png",
    "norain/norain-002.png",
  ]);
  assert.equal(await detectLayout(b), "rain13k");
  assert.deepEqual(rel(b, await listPairs(b)), [
    ["001", "rainy/rain-001.png", "norain/norain-001.png", undefined],
    ["002", "rainy/rain-002.png", "norain/norain-002.png", undefined],
  ]);
});

Deno.test("agan layout: data/*_rain + gt/*_clean", async () => {
  const root = await tree(["data/0_rain.png", "data/1_rain.jpg", "gt/0_clean.png", "gt/1_clean.png"]);
  assert.equal(await detectLayout(root), "agan");
  assert.deepEqual(rel(root, await listPairs(root)), [
    ["0", "data/0_rain.png", "gt/0_clean.png", undefined],
    ["1", "data/1_rain.jpg", "gt/1_clean.png", undefined],
  ]);
  const bad = await tree(["data/0_rain.png", "gt/0_clean.png", "gt/5_clean.png"]);
  await rejects(listPairs(bad, "agan"), `${bad}/gt/5_clean.png has no matching input in ${bad}/data/`);
});

Deno.test("istd layout: A/B/C and train_A/train_B/train_C", async () => {
  const a = await tree(["A/90-1.png", "B/90-1.png", "C/90-1.png"]);
  assert.equal(await detectLayout(a), "istd");
  assert.deepEqual(rel(a, await listPairs(a)), [["90-1", "A/90-1.png", "C/90-1.png", "B/90-1.png"]]);
  const b = await tree([
    "train_A/1-1.png",
    "train_B/1-1.png",
    "train_C/1-1.png",
    "train_C/1-2.png",
    "train_A/1-2.png",
  ]);
  assert.deepEqual(rel(b, await listPairs(b, "istd")), [
    ["1-1", "train_A/1-1.png", "train_C/1-1.png", "train_B/1-1.png"],
    ["1-2", "train_A/1-2.png", "train_C/1-2.png", undefined],
  ]);
  // Without B/ the pairs have no mask (evaluation then derives one).
  const c = await tree(["test_A/x.png", "test_C/x.png"]);
  assert.deepEqual(rel(c, await listPairs(c)), [["x", "test_A/x.png", "test_C/x.png", undefined]]);
  const two = await tree(["train_A/x.png", "train_C/x.png", "test_A/x.png", "test_C/x.png"]);
  await rejects(
    listPairs(two, "istd"),
    `${two}: several ISTD splits (test_A/, train_A/); pass the folder of one split`,
  );
});

Deno.test("gopro layout: per-sequence blur/ and sharp/", async () => {
  const root = await tree([
    "GOPR0384_11_00/blur/000001.png",
    "GOPR0384_11_00/sharp/000001.png",
    "GOPR0384_11_00/blur_gamma/000001.png",
    "GOPR0385_11_01/blur/003011.png",
    "GOPR0385_11_01/sharp/003011.png",
  ]);
  assert.equal(await detectLayout(root), "gopro");
  assert.deepEqual(rel(root, await listPairs(root)), [
    ["GOPR0384_11_00/000001", "GOPR0384_11_00/blur/000001.png", "GOPR0384_11_00/sharp/000001.png", undefined],
    ["GOPR0385_11_01/003011", "GOPR0385_11_01/blur/003011.png", "GOPR0385_11_01/sharp/003011.png", undefined],
  ]);
});

Deno.test("realblur layout: list file relative to its folder, as file or folder argument", async () => {
  const root = await tree(["RealBlur-J/scene1/gt/gt_1.png", "RealBlur-J/scene1/blur/blur_1.png"]);
  const list = join(root, "RealBlur_J_test_list.txt");
  await Deno.writeTextFile(list, "RealBlur-J/scene1/gt/gt_1.png RealBlur-J/scene1/blur/blur_1.png\n\n");
  const expected = [[
    "RealBlur-J/scene1/blur/blur_1",
    "RealBlur-J/scene1/blur/blur_1.png",
    "RealBlur-J/scene1/gt/gt_1.png",
    undefined,
  ]];
  assert.equal(await detectLayout(list), "realblur");
  assert.equal(await detectLayout(root), "realblur");
  assert.deepEqual(rel(root, await listPairs(list)), expected);
  assert.deepEqual(rel(root, await listPairs(root, "realblur")), expected);
  await Deno.writeTextFile(list, "RealBlur-J/scene1/gt/gt_1.png RealBlur-J/scene1/blur/blur_9.png\n");
  await rejects(listPairs(list), `${list}:1: ${root}/RealBlur-J/scene1/blur/blur_9.png does not exist`);
  await Deno.writeTextFile(list, "only_one_path.png\n");
  await rejects(listPairs(list), `${list}:1: expected "gt_path blur_path", got "only_one_path.png"`);
  await Deno.writeTextFile(join(root, "RealBlur_J_train_list.txt"), "");
  await rejects(
    listPairs(root, "realblur"),
    `${root}: several list files (RealBlur_J_test_list.txt, RealBlur_J_train_list.txt); pass one of them as the dataset`,
  );
});

Deno.test("errors: missing folder, empty folder, unmatched files, duplicates, unknown layout", async () => {
  const root = await tree([]);
  await rejects(listPairs(join(root, "nope")), `${join(root, "nope")}: no such folder`);
  await rejects(
    listPairs(root, "pairs"),
    `${root}: no image pairs found (layout pairs expects input/ and target/)`,
  );
  await Deno.mkdir(join(root, "input"));
  await Deno.mkdir(join(root, "target"));
  await rejects(listPairs(root), `${root}: no image pairs found (layout pairs expects input/ and target/)`);
  await rejects(
    listPairs(root, "agan"),
    `${root}: no image pairs found (layout agan expects data/*_rain and gt/*_clean)`,
  );
  const odd = await tree(["stuff/y.png"]);
  await rejects(
    listPairs(odd),
    `${odd}: cannot detect the dataset layout (expected input/+target/, rainy/+norain/, data/+gt/, A/+C/, ` +
      `SEQ/blur/+SEQ/sharp/ or a RealBlur list file)`,
  );
  const lonely = await tree(["input/x.png", "input/y.png", "target/y.png"]);
  await rejects(listPairs(lonely), `${lonely}/input/x.png has no matching target in ${lonely}/target/`);
  const orphan = await tree(["input/y.png", "target/y.png", "target/z.png"]);
  await rejects(listPairs(orphan), `${orphan}/target/z.png has no matching input in ${orphan}/input/`);
  const dup = await tree(["input/y.png", "input/y.jpg", "target/y.png"]);
  await rejects(listPairs(dup), `${dup}/input: y.jpg and y.png have the same name`);
  await rejects(
    listPairs(root, "coco" as Layout),
    `unknown dataset layout "coco" (expected one of auto, pairs, rain13k, agan, istd, gopro, realblur)`,
  );
});

Deno.test("checkPairSizes and readPair: size mismatch names both files", async () => {
  const pair = { name: "a", input: "/d/input/a.png", target: "/d/target/a.png" };
  checkPairSizes(pair, { width: 4, height: 3 }, { width: 4, height: 3 });
  assert.throws(
    () => checkPairSizes(pair, { width: 4, height: 3 }, { width: 3, height: 4 }),
    (e: unknown) =>
      e instanceof DatasetError && e.message === "/d/input/a.png is 4x3 but /d/target/a.png is 3x4",
  );
  const root = await tree([]);
  const png = (w: number, h: number, v: number) => {
    const p = new PNG({ width: w, height: h });
    p.data.fill(v);
    return new Uint8Array(PNG.sync.write(p));
  };
  for (const d of ["input", "target", "mask"]) await Deno.mkdir(join(root, d));
  await Deno.writeFile(join(root, "input/a.png"), png(4, 3, 51));
  await Deno.writeFile(join(root, "target/a.png"), png(4, 3, 102));
  await Deno.writeFile(join(root, "mask/a.png"), png(4, 3, 255));
  const [p] = await listPairs(root);
  const img = await readPair(p);
  assert.equal(img.width, 4);
  assert.equal(img.height, 3);
  assert.equal(img.input.length, 36);
  assert.ok(Math.abs(img.input[0] - 0.2) < 1e-6 && Math.abs(img.target[35] - 0.4) < 1e-6);
  assert.deepEqual(Array.from(img.mask!), new Array(12).fill(1));
  await Deno.writeFile(join(root, "target/a.png"), png(3, 3, 0));
  await rejects(readPair(p), `${root}/input/a.png is 4x3 but ${root}/target/a.png is 3x3`);
});
