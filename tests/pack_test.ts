import assert from "node:assert/strict";
import { openCheckpoint } from "../src/checkpoint.ts";
import { openPacked } from "../src/packed_weights.ts";
import { BASE_ALIGN, RECORD_ALIGN } from "../src/pack/format.ts";
import { isPackedDir, readManifest } from "../src/pack/manifest.ts";
import { pack, PackError, runPackCommand } from "../src/pack/pack.ts";
import { formatProgress, type PackProgress } from "../src/pack/progress.ts";
import { openSafetensors, writeSafetensors } from "../src/safetensors.ts";
import type { ModelWeights, TensorView } from "../src/types.ts";
import { loadWeights, WeightError } from "../src/weights.ts";
import { type FixtureOptions, TINY, writeFixture } from "../weights/fixture.ts";

async function fixture(opts: Partial<FixtureOptions>): Promise<{ root: string; hf: string }> {
  const root = await Deno.makeTempDir({ prefix: "pack_test_" });
  const hf = `${root}/hf`;
  await writeFixture(hf, { ...TINY, ...opts });
  return { root, hf };
}

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Every tensor the runtime uses, by a label, from a ModelWeights. */
function allViews(w: ModelWeights): Map<string, TensorView> {
  const out = new Map<string, TensorView>([
    ["embed", w.embed],
    ["finalNorm", w.finalNorm],
    ["lmHead", w.lmHead],
  ]);
  w.layers.forEach((layer, l) => {
    for (const [k, v] of Object.entries(layer)) {
      if (typeof v !== "function") out.set(`${l}.${k}`, v as TensorView);
    }
    for (let e = 0; e < w.config.numExperts; e++) {
      const x = layer.expert(e);
      out.set(`${l}.${e}.gate`, x.gate);
      out.set(`${l}.${e}.up`, x.up);
      out.set(`${l}.${e}.down`, x.down);
    }
  });
  return out;
}

async function assertPackMatches(opts: Partial<FixtureOptions>): Promise<void> {
  const { root, hf } = await fixture(opts);
  const out = `${root}/packed`;
  const seen: PackProgress[] = [];
  await pack(hf, out, { onProgress: (p) => seen.push(p) });
  assert.ok(isPackedDir(out));
  const last = seen[seen.length - 1];
  assert.equal(last.doneBytes, last.totalBytes);

  const ckpt = openCheckpoint(hf);
  const packed = await openPacked(out);
  try {
    const want = allViews(loadWeights(ckpt).weights);
    const got = allViews(packed.weights);
    assert.equal(got.size, want.size);
    for (const [label, w] of want) {
      const g = got.get(label)!;
      assert.deepEqual(g.shape, w.shape, label);
      assert.equal(g.dtype, w.dtype, label);
      assert.ok(bytesEqual(g.bytes, w.bytes), `bytes of ${label} differ`);
    }
    assert.deepEqual(packed.config, ckpt.config);
    const m = packed.manifest;
    for (const [name, t] of Object.entries(m.base.tensors)) {
      assert.equal(t.offset % BASE_ALIGN, 0, `${name} offset ${t.offset}`);
    }
    for (const r of m.experts.records) assert.equal(r.offset % RECORD_ALIGN, 0);
    assert.equal(m.experts.bytes % RECORD_ALIGN, 0);
    assert.equal(Deno.statSync(`${out}/experts.bin`).size, m.experts.bytes);
    // Record l*E+e is gate | up | down of that expert, contiguous.
    const x = packed.weights.layers[1].expert(5);
    const rec = packed.experts.record(1, 5);
    assert.ok(bytesEqual(rec, concat([x.gate.bytes, x.up.bytes, x.down.bytes])));
    assert.equal(packed.audit.usedBytes, loadWeights(ckpt).audit.usedBytes);
    assert.deepEqual(
      packed.audit.skipped.map((s) => s.name).sort(),
      loadWeights(ckpt).audit.skipped.map((s) => s.name).sort(),
    );
  } finally {
    packed.close();
    ckpt.close();
    await Deno.remove(root, { recursive: true });
  }
}

Deno.test("pack() of an F32 3-shard checkpoint: every tensor's bytes equal the original", async () => {
  await assertPackMatches({ dtype: "F32", shards: 3 });
});

Deno.test("pack() of a BF16 Omni checkpoint with fused experts and tied embeddings", async () => {
  await assertPackMatches({
    dtype: "BF16",
    shards: 2,
    omni: true,
    fusedExperts: true,
    tieEmbeddings: true,
  });
});

Deno.test("pack() copies tokenizer files; force replaces only a packed outDir", async () => {
  const { root, hf } = await fixture({});
  const out = `${root}/packed`;
  await Deno.writeTextFile(`${hf}/tokenizer.json`, '{"model":{}}');
  await pack(hf, out);
  assert.equal(await Deno.readTextFile(`${out}/tokenizer.json`), '{"model":{}}');
  assert.deepEqual((await readManifest(out)).copied.map((c) => c.name), ["tokenizer.json"]);
  await assert.rejects(
    pack(hf, out),
    (e: Error) => e instanceof PackError && /--force/.test(e.message),
  );
  await pack(hf, out, { force: true });
  assert.ok(isPackedDir(out));
  await Deno.mkdir(`${root}/mine`);
  await Deno.writeTextFile(`${root}/mine/notes.txt`, "keep");
  await assert.rejects(
    pack(hf, `${root}/mine`, { force: true }),
    (e: Error) => e instanceof PackError && /not a packed model/.test(e.message),
  );
  assert.equal(await Deno.readTextFile(`${root}/mine/notes.txt`), "keep");
  await Deno.remove(`${root}/mine`, { recursive: true });
  assert.deepEqual([...Deno.readDirSync(root)].map((e) => e.name).sort(), ["hf", "packed"]);
  await Deno.remove(root, { recursive: true });
});

Deno.test("pack() interrupted midway leaves no outDir, no temp dir, nothing that loads", async () => {
  const { root, hf } = await fixture({});
  const out = `${root}/packed`;
  let calls = 0;
  const onProgress = (p: PackProgress) => {
    if (p.phase === "experts" && ++calls === 5) throw new Error("interrupted by test");
  };
  await assert.rejects(pack(hf, out, { onProgress }), /interrupted by test/);
  assert.equal(calls, 5);
  assert.ok(!isPackedDir(out));
  assert.deepEqual([...Deno.readDirSync(root)].map((e) => e.name), ["hf"]);
  await assert.rejects(openPacked(out));
  await Deno.remove(root, { recursive: true });
});

Deno.test("pack() removes a stale temp dir of a dead earlier pack", async () => {
  const { root, hf } = await fixture({});
  const stale = `${root}/.packed.packing-999999999`; // no such pid
  await Deno.mkdir(stale);
  await Deno.writeTextFile(`${stale}/base.bin`, "partial");
  await pack(hf, `${root}/packed`);
  assert.deepEqual([...Deno.readDirSync(root)].map((e) => e.name).sort(), ["hf", "packed"]);
  await Deno.remove(root, { recursive: true });
});

Deno.test("pack() refuses a checkpoint with a missing and a misshaped tensor, naming both", async () => {
  const { root, hf } = await fixture({});
  const f = openSafetensors(`${hf}/model.safetensors`);
  const missing = "model.layers.1.self_attn.k_norm.weight";
  const misshaped = "model.layers.0.mlp.experts.3.up_proj.weight";
  const tensors = f.entries.filter((e) => e.name !== missing).map((e) => {
    const v = f.view(e.name);
    const shape = e.name === misshaped ? [v.shape[1], v.shape[0]] : v.shape;
    return { name: e.name, dtype: v.dtype, shape, data: v.bytes.slice() };
  });
  f.close();
  await writeSafetensors(`${hf}/model.safetensors`, tensors);
  const err = await pack(hf, `${root}/packed`).catch((e) => e);
  assert.ok(err instanceof WeightError);
  assert.match(err.message, new RegExp(`missing tensor ${missing.replaceAll(".", "\\.")}`));
  assert.match(err.message, new RegExp(`tensor ${misshaped.replaceAll(".", "\\.")} has shape`));
  assert.deepEqual([...Deno.readDirSync(root)].map((e) => e.name), ["hf"]);
  await Deno.remove(root, { recursive: true });
});

Deno.test("formatProgress() shows MB done of total, percent and MB/s", () => {
  const line = formatProgress({ phase: "experts", doneBytes: 50e6, totalBytes: 200e6 }, 2000);
  assert.equal(line, "experts 50.0/200.0 MB (25.0%) 25.0 MB/s");
});

Deno.test("runPackCommand() packs into a new nested directory and reports the sizes", async () => {
  const { root, hf } = await fixture({});
  const out = `${root}/nested/dir/packed`;
  const r = await runPackCommand({ in: hf, out });
  assert.ok(isPackedDir(out));
  const { layers: L, experts: E, inter: I, hidden: D } = TINY;
  assert.equal(r.expertBytes, L * E * 3 * I * D * 4);
  assert.equal(r.manifest.experts.records.length, L * E);
  await Deno.remove(root, { recursive: true });
});

Deno.test("pack() --force replaces a packed outDir whose manifest.json is damaged", async () => {
  const { root, hf } = await fixture({});
  const out = `${root}/packed`;
  await pack(hf, out);
  await Deno.writeTextFile(`${out}/manifest.json`, "{ not json");
  assert.ok(!isPackedDir(out));
  await pack(hf, out, { force: true });
  assert.ok(isPackedDir(out));
  (await openPacked(out)).close();
  await Deno.remove(root, { recursive: true });
});
