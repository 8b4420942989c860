import assert from "node:assert/strict";
import { formatAudit } from "../src/audit.ts";
import { type Checkpoint, CheckpointError, openCheckpoint } from "../src/checkpoint.ts";
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16, toFloat64 } from "../src/dtype.ts";
import { openSafetensors } from "../src/safetensors.ts";
import type { ModelWeights, TensorView } from "../src/types.ts";
import { loadWeights, WeightError } from "../src/weights.ts";
import { type FixtureOptions, TINY, writeFixture } from "../weights/fixture.ts";

const { layers: L, experts: E } = TINY;
/** Tensors per layer besides experts: q, k, v, o, q_norm, k_norm, two layer norms, router. */
const LAYER_TENSORS = 9;

async function withFixture(
  opts: Partial<FixtureOptions>,
  fn: (dir: string) => Promise<void> | void,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "weights_test_" });
  try {
    await writeFixture(dir, { ...TINY, ...opts });
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function load(
  dir: string,
): { ckpt: Checkpoint; weights: ModelWeights; close(): void } & ReturnType<typeof loadWeights> {
  const ckpt = openCheckpoint(dir);
  try {
    return { ckpt, ...loadWeights(ckpt), close: () => ckpt.close() };
  } catch (e) {
    ckpt.close();
    throw e;
  }
}

/** Every weight of a model as [name-in-model, values], for comparing fixtures. */
function values(w: ModelWeights): Map<string, Float64Array> {
  const out = new Map<string, Float64Array>();
  const add = (k: string, t: TensorView) => out.set(k, toFloat64(t));
  add("embed", w.embed);
  add("finalNorm", w.finalNorm);
  add("lmHead", w.lmHead);
  w.layers.forEach((l, i) => {
    for (
      const k of [
        "inputNorm",
        "q",
        "k",
        "v",
        "o",
        "qNorm",
        "kNorm",
        "postAttentionNorm",
        "router",
      ] as const
    ) {
      add(`${i}.${k}`, l[k]);
    }
    for (let e = 0; e < E; e++) {
      const x = l.expert(e);
      add(`${i}.${e}.gate`, x.gate);
      add(`${i}.${e}.up`, x.up);
      add(`${i}.${e}.down`, x.down);
    }
  });
  return out;
}

/** Rewrites a single-file checkpoint through edit(), writing the header raw (any dtype). */
async function rewrite(
  dir: string,
  edit: (ts: { name: string; dtype: string; shape: number[]; data: Uint8Array }[]) => void,
): Promise<void> {
  const path = `${dir}/model.safetensors`;
  const f = openSafetensors(path);
  const ts = f.entries.map((e) => ({
    name: e.name,
    dtype: e.dtype,
    shape: e.shape,
    data: f.file.bytes.slice(f.dataStart + e.begin, f.dataStart + e.end),
  }));
  f.close();
  edit(ts);
  const header: Record<string, unknown> = {};
  let off = 0;
  for (const t of ts) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [off, off + t.data.length] };
    off += t.data.length;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + off);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  let at = 8 + json.length;
  for (const t of ts) {
    out.set(t.data, at);
    at += t.data.length;
  }
  await Deno.writeFile(path, out);
}

function throwsWeightError(dir: string, ...res: RegExp[]): void {
  assert.throws(() => load(dir), (e: Error) => {
    assert.ok(e instanceof WeightError, `${e}`);
    for (const re of res) assert.match(e.message, re);
    return true;
  });
}

Deno.test("loadWeights() loads a TINY F32 fixture: every tensor used, zero copy, nothing skipped", async () => {
  await withFixture({}, (dir) => {
    const m = load(dir);
    try {
      const c = m.weights.config;
      assert.equal(m.weights.layers.length, L);
      assert.deepEqual(m.weights.layers[1].q.shape, [c.numHeads * c.headDim, c.hiddenSize]);
      assert.deepEqual(m.weights.layers[1].o.shape, [c.hiddenSize, c.numHeads * c.headDim]);
      assert.deepEqual(m.weights.layers[0].expert(E - 1).down.shape, [
        c.hiddenSize,
        c.moeIntermediateSize,
      ]);
      assert.equal(m.audit.used.length, 3 + L * (LAYER_TENSORS + 3 * E));
      assert.equal(m.audit.skipped.length, 0);
      assert.equal(m.audit.totalBytes, m.ckpt.files[0].file.size - m.ckpt.files[0].dataStart);
      const mapped = m.ckpt.files[0].file.bytes.buffer;
      assert.equal(m.weights.embed.bytes.buffer, mapped);
      assert.equal(m.weights.layers[1].expert(3).up.bytes.buffer, mapped);
      assert.throws(() => m.weights.layers[0].expert(E), RangeError);
    } finally {
      m.close();
    }
  });
});

Deno.test("loadWeights() gives BF16 and F16 fixtures the F32 fixture's values rounded to the dtype", async () => {
  let f32: Map<string, Float64Array> | undefined;
  await withFixture({}, (dir) => {
    const m = load(dir);
    f32 = values(m.weights);
    m.close();
  });
  const round = {
    BF16: (x: number) => bf16ToF32(f32ToBf16(x)),
    F16: (x: number) => f16ToF32(f32ToF16(x)),
  };
  for (const dtype of ["BF16", "F16"] as const) {
    await withFixture({ dtype }, (dir) => {
      const m = load(dir);
      try {
        assert.equal(m.weights.layers[0].q.dtype, dtype);
        for (const [k, v] of values(m.weights)) {
          const want = f32!.get(k)!.map(round[dtype]);
          assert.deepEqual(v, want, `${dtype} ${k}`);
        }
      } finally {
        m.close();
      }
    });
  }
});

Deno.test("loadWeights() reads sharded, Omni and fused fixtures as the same model", async () => {
  let base: Map<string, Float64Array> | undefined;
  await withFixture({}, (dir) => {
    const m = load(dir);
    base = values(m.weights);
    m.close();
  });
  const variants: Partial<FixtureOptions>[] = [
    { shards: 3 },
    { omni: true },
    { fusedExperts: true },
    { omni: true, fusedExperts: true, shards: 2 },
  ];
  for (const v of variants) {
    await withFixture(v, (dir) => {
      const m = load(dir);
      try {
        assert.equal(m.ckpt.files.length, v.shards ?? 1, JSON.stringify(v));
        assert.deepEqual(values(m.weights), base, JSON.stringify(v));
      } finally {
        m.close();
      }
    });
  }
});

Deno.test("loadWeights() exposes fused experts as zero-copy row ranges [gate; up] of gate_up_proj", async () => {
  await withFixture({ fusedExperts: true }, (dir) => {
    const m = load(dir);
    try {
      const c = m.weights.config;
      const I = c.moeIntermediateSize, D = c.hiddenSize;
      const gateUp = m.ckpt.tensors.get("model.layers.1.mlp.experts.gate_up_proj")!;
      const x = m.weights.layers[1].expert(5);
      assert.deepEqual(x.gate.shape, [I, D]);
      assert.equal(x.gate.offset, gateUp.offset + 5 * 2 * I * D * 4);
      assert.equal(x.up.offset, x.gate.offset + I * D * 4);
      assert.equal(x.gate.bytes.buffer, gateUp.bytes.buffer);
      const names = m.audit.used.map((u) => u.name);
      assert.ok(names.includes("model.layers.1.mlp.experts.down_proj"));
      assert.equal(m.audit.used.length, 3 + L * (LAYER_TENSORS + 2));
    } finally {
      m.close();
    }
  });
});

Deno.test("loadWeights() reports the Omni audio, vision and talker tensors as skipped", async () => {
  await withFixture({ omni: true, shards: 2 }, (dir) => {
    const m = load(dir);
    try {
      assert.equal(m.weights.config.tensorPrefix, "thinker.");
      assert.equal(m.weights.lmHead.name, "thinker.lm_head.weight");
      assert.deepEqual(m.audit.skipped.map((s) => s.name).sort(), [
        "code2wav.pre_transformer.layers.0.mlp.up_proj.weight",
        "talker.model.embed_tokens.weight",
        "thinker.audio_tower.conv2d1.weight",
        "thinker.audio_tower.layers.0.self_attn.q_proj.weight",
        "thinker.visual.patch_embed.proj.weight",
      ]);
      assert.ok(m.audit.skipped.every((s) => s.role === "not part of the text model"));
      assert.equal(m.audit.totalBytes, m.audit.usedBytes + m.audit.skippedBytes);
      const text = formatAudit(m.audit);
      for (const e of [...m.audit.used, ...m.audit.skipped]) {
        assert.ok(text.includes(e.name), e.name);
      }
      const used = 3 + L * (LAYER_TENSORS + 3 * E);
      assert.match(text, new RegExp(`total: ${used} used tensors .*, 5 skipped`));
    } finally {
      m.close();
    }
  });
});

Deno.test("loadWeights() uses the embedding as lm_head when tied, and skips a present lm_head", async () => {
  await withFixture({ tieEmbeddings: true }, async (dir) => {
    const m = load(dir);
    try {
      assert.equal(m.weights.lmHead, m.weights.embed);
      assert.ok(!m.audit.used.some((u) => u.role === "lm_head"));
    } finally {
      m.close();
    }
    await rewrite(dir, (ts) => {
      const embed = ts.find((t) => t.name === "model.embed_tokens.weight")!;
      ts.push({ ...embed, name: "lm_head.weight" });
    });
    const m2 = load(dir);
    try {
      assert.deepEqual(m2.audit.skipped.map((s) => [s.name, s.role]), [
        ["lm_head.weight", "lm_head unused: tie_word_embeddings is true"],
      ]);
    } finally {
      m2.close();
    }
  });
});

Deno.test("loadWeights() throws WeightError naming a missing tensor", async () => {
  await withFixture({}, async (dir) => {
    await rewrite(dir, (ts) => {
      ts.splice(ts.findIndex((t) => t.name === "model.layers.1.self_attn.k_norm.weight"), 1);
    });
    throwsWeightError(
      dir,
      /missing tensor model\.layers\.1\.self_attn\.k_norm\.weight \(layer\.k_norm, expected \[Dh\] = \[24\]\)/,
    );
  });
});

Deno.test("loadWeights() throws WeightError naming a tensor of the wrong shape", async () => {
  await withFixture({}, async (dir) => {
    await rewrite(dir, (ts) => {
      ts.find((t) => t.name === "model.layers.0.mlp.experts.3.up_proj.weight")!.shape = [64, 32];
    });
    throwsWeightError(
      dir,
      /tensor model\.layers\.0\.mlp\.experts\.3\.up_proj\.weight has shape \[64,32\] but \[I, D\] = \[32,64\] was expected/,
    );
  });
});

Deno.test("loadWeights() throws WeightError naming a tensor of an unsupported dtype (I32)", async () => {
  await withFixture({}, async (dir) => {
    await rewrite(dir, (ts) => {
      ts.find((t) => t.name === "model.norm.weight")!.dtype = "I32"; // same 4 bytes per element
    });
    throwsWeightError(dir, /tensor model\.norm\.weight has dtype I32; supported: F32, BF16, F16/);
  });
});

Deno.test("loadWeights() refuses unknown text-model tensors and skips rotary inv_freq buffers", async () => {
  await withFixture({}, async (dir) => {
    await rewrite(dir, (ts) => {
      ts.push({
        name: "model.layers.0.self_attn.rotary_emb.inv_freq",
        dtype: "F32",
        shape: [12],
        data: new Uint8Array(48),
      });
    });
    const m = load(dir);
    assert.deepEqual(m.audit.skipped.map((s) => s.role), [
      "RoPE buffer (recomputed from rope_theta)",
    ]);
    m.close();
    await rewrite(dir, (ts) => {
      ts.push({
        name: "model.layers.0.self_attn.q_proj.bias",
        dtype: "F32",
        shape: [96],
        data: new Uint8Array(384),
      });
    });
    throwsWeightError(
      dir,
      /tensor model\.layers\.0\.self_attn\.q_proj\.bias belongs to the text model/,
    );
  });
});

Deno.test("openCheckpoint() names a missing shard, a missing model file and an index mismatch", async () => {
  await withFixture({ shards: 2 }, async (dir) => {
    const index = JSON.parse(await Deno.readTextFile(`${dir}/model.safetensors.index.json`));
    index.weight_map["model.norm.weight"] = "model-00001-of-00002.safetensors";
    index.weight_map["model.embed_tokens.weight"] = "model-00002-of-00002.safetensors";
    await Deno.writeTextFile(`${dir}/model.safetensors.index.json`, JSON.stringify(index));
    assert.throws(
      () => openCheckpoint(dir),
      (e: Error) => e instanceof CheckpointError && /index does not match/.test(e.message),
    );
    await Deno.remove(`${dir}/model-00002-of-00002.safetensors`);
    assert.throws(() => openCheckpoint(dir), /model-00002-of-00002\.safetensors is missing/);
    await Deno.remove(`${dir}/model.safetensors.index.json`);
    assert.throws(
      () => openCheckpoint(dir),
      /has neither model\.safetensors nor model\.safetensors\.index\.json/,
    );
  });
});

Deno.test("openCheckpoint() refuses index shard names that leave the directory, naming the tensor", async () => {
  await withFixture({ shards: 2 }, async (dir) => {
    // a real shard reachable through ../: joined unchecked, it would be read from outside dir
    const outside = `${dir}_outside.safetensors`;
    await Deno.copyFile(`${dir}/model-00002-of-00002.safetensors`, outside);
    const path = `${dir}/model.safetensors.index.json`;
    const original = await Deno.readTextFile(path);
    try {
      for (const shard of [`../${outside.split("/").pop()}`, outside, "sub/x.safetensors", ".."]) {
        const index = JSON.parse(original);
        for (const [name, file] of Object.entries(index.weight_map)) {
          if (file === "model-00002-of-00002.safetensors") index.weight_map[name] = shard;
        }
        await Deno.writeTextFile(path, JSON.stringify(index));
        assert.throws(
          () => openCheckpoint(dir),
          (e: Error) =>
            e instanceof CheckpointError &&
            /model\.safetensors\.index\.json: weight_map maps tensor \S+ to .* which is not a file name/
              .test(e.message),
          shard,
        );
      }
    } finally {
      await Deno.remove(outside);
    }
  });
});
