/**
 * GGUF models end to end: a GGUF written from a fixture (tests/_gguf_writer.ts: stacked experts,
 * GGUF names and metadata, a gpt2 tokenizer) opened with openModel() as `--model file.gguf` does
 * (packed once into the cache), on the GPU. A uniform Q8_0 file gives bit for bit the logits of
 * the same weights packed from the HF checkpoint with `--quant q8_0 --quant-base q8_0`; a file
 * mixing types by layer as Q4_K_M files do matches the float64 reference on its dequantized
 * weights and is budget-invariant.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { type FixtureOptions, TINY, writeFixture } from "../weights/fixture.ts";
import { hfToGguf } from "./_gguf_writer.ts";
import { pack } from "../src/pack/pack.ts";
import { openModel } from "../src/model_dir.ts";
import { GpuModel } from "../src/gpu/model.ts";
import { openReferenceModel } from "../src/reference/model.ts";
import { loadTokenizer, writeByteTokenizer } from "../src/tokenizer.ts";
import type { QuantType } from "../src/quant/formats.ts";
import { writeDequantized } from "./_dequantized.ts";

/** Max |logit - float64 reference on the dequantized weights| for the mixed GGUF: measured
 * 2.2e-6 on this untied fixture (the bar is 1e-4). */
const LOGIT_TOLERANCE = 1e-5;

/** Whole Q4_K/Q6_K super-blocks in every expert row (hidden 256, inter 256). */
const FIX: FixtureOptions = {
  ...TINY,
  hidden: 256,
  headDim: 32,
  inter: 256,
  experts: 4,
  topK: 2,
  vocab: 320,
  tieEmbeddings: false,
};

const IDS = [5, 17, 300, 2, 99, 64, 7];

async function withDirs(fn: (root: string, hf: string) => Promise<void>): Promise<void> {
  const root = await Deno.makeTempDir({ prefix: "gguf_model_" });
  const cache = Deno.env.get("MOE_PACK_CACHE");
  Deno.env.set("MOE_PACK_CACHE", join(root, "cache"));
  try {
    const hf = join(root, "hf");
    await writeFixture(hf, FIX);
    await fn(root, hf);
  } finally {
    if (cache === undefined) Deno.env.delete("MOE_PACK_CACHE");
    else Deno.env.set("MOE_PACK_CACHE", cache);
    await Deno.remove(root, { recursive: true });
  }
}

async function logitsOf(dir: string, expertSlots?: number): Promise<Float32Array[]> {
  const opened = await openModel(dir);
  const model = await GpuModel.open(opened.weights, {
    maxContext: 32,
    expertSource: opened.experts,
    expertSlots,
  });
  try {
    return await model.newSession().forward(IDS);
  } finally {
    model.destroy();
    opened.close();
  }
}

Deno.test("a Q8_0 GGUF (2 splits) gives bit for bit the logits of the HF checkpoint packed with --quant q8_0 --quant-base q8_0", async () => {
  await withDirs(async (root, hf) => {
    const q8 = (name: string): QuantType | undefined =>
      /attn_(q|k|v|output)\.|_exps\.|^output\.weight/.test(name) ? "Q8_0" : undefined;
    await writeByteTokenizer(hf, FIX.vocab);
    await Deno.mkdir(join(root, "gguf"));
    const paths = await hfToGguf(hf, join(root, "gguf", "model.gguf"), { quant: q8, splits: 2 });
    assert.equal(paths.length, 2);
    const packed = join(root, "packed");
    await pack(hf, packed, { quant: { experts: "Q8_0", base: "Q8_0" } });
    const fromGguf = await logitsOf(paths[0]);
    const fromHf = await logitsOf(packed);
    assert.deepEqual(fromGguf, fromHf);
    // the tokenizer was rebuilt from the GGUF metadata into the packed cache copy
    const cached = [...Deno.readDirSync(join(root, "cache"))].map((e) => e.name);
    assert.equal(cached.length, 1);
    const tok = await loadTokenizer(join(root, "cache", cached[0]));
    const want = await loadTokenizer(hf);
    for (const text of ["hello world", "héllo\n\tworld!"]) {
      assert.deepEqual(tok.encode(text), want.encode(text), text);
    }
  });
});

Deno.test("a GGUF mixing types by layer (Q4_K, Q6_K down in layer 0, Q5_0 o_proj, Q8_0 output) matches the float64 reference on its dequantized weights; budget-invariant", async () => {
  await withDirs(async (root, hf) => {
    const mixed = (name: string): QuantType | undefined => {
      if (name === "blk.0.ffn_down_exps.weight") return "Q6_K"; // use_more_bits layers
      if (/_exps\.|attn_(q|k|v)\./.test(name)) return "Q4_K";
      if (name.includes("attn_output")) return "Q5_0"; // rows of 128: not whole Q4_K blocks
      if (name === "output.weight") return "Q8_0";
      return undefined; // norms, routers, token_embd stay float
    };
    const [file] = await hfToGguf(hf, join(root, "model.gguf"), { quant: mixed });
    const opened = await openModel(file);
    const m = JSON.parse(await Deno.readTextFile(join(opened.dir, "manifest.json")));
    opened.close();
    assert.equal(m.experts.layerParts[0].down.dtype, "Q6_K");
    assert.equal(m.experts.layerParts[1].down.dtype, "Q4_K");
    const full = await logitsOf(file);
    const tight = await logitsOf(file, FIX.topK);
    assert.deepEqual(tight, full, "smallest budget = all resident, bit for bit");
    const reopened = await openModel(file);
    const deq = join(root, "dequantized");
    await writeDequantized(reopened.weights, hf, deq);
    reopened.close();
    const ref = await openReferenceModel(deq);
    try {
      const want = ref.newSession().forward64(IDS);
      let worst = 0;
      want.forEach((row, t) => {
        for (let i = 0; i < row.length; i++) {
          worst = Math.max(worst, Math.abs(row[i] - full[t][i]));
        }
      });
      console.error(`  mixed GGUF: max |gpu - ref| = ${worst.toExponential(2)}`);
      assert.ok(worst <= LOGIT_TOLERANCE, `max abs diff ${worst}`);
    } finally {
      ref.close();
    }
  });
});
