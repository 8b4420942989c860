/**
 * Quantized models end to end: `pack --quant/--quant-base` on fixture checkpoints, the packed
 * model on the GPU against the float64 reference run on the very weights the GPU holds
 * (dequantized exactly, written as an F32 checkpoint), budget invariance, the manifest's record of
 * types and fallbacks, and what an expert cache of the same MiB holds.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { type FixtureOptions, TINY, writeFixture } from "../weights/fixture.ts";
import { pack } from "../src/pack/pack.ts";
import { openModel } from "../src/model_dir.ts";
import { GpuModel } from "../src/gpu/model.ts";
import { openReferenceModel } from "../src/reference/model.ts";
import { writeDequantized } from "./_dequantized.ts";
import type { QuantOptions } from "../src/pack/quantize.ts";
import { modelExpertLayouts } from "../src/gpu/expert_pool.ts";
import type { WeightRef } from "../src/gpu/ops_api.ts";

/** Max |logit - float64 reference on the dequantized weights|: the bar. The GPU computes
 * in f32 as for float weights; on this fixture (logits of larger scale than TINY's) the
 * unquantized F32 pack measures 3.8e-5 and the quantized ones 1.7e-5 to 5.8e-5 (llvmpipe). */
const LOGIT_TOLERANCE = 1e-4;

/** hidden 256 (whole Q4_K super-blocks for gate/up/q/k/v/lm_head), inter 64 and o_proj's
 * 4 x 32 = 128 columns (not whole Q4_K blocks: they fall back to Q5_0 as llama-quantize does). */
const QFIX: FixtureOptions = {
  ...TINY,
  hidden: 256,
  headDim: 32,
  inter: 64,
  experts: 8,
  topK: 2,
  vocab: 320,
  tieEmbeddings: true,
};

function prompt(n: number, vocab: number): number[] {
  return Array.from({ length: n }, (_, i) => (i * 7919 + 13) % vocab);
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

async function withPacked(
  fixture: FixtureOptions,
  quant: QuantOptions,
  fn: (packed: string, hf: string, root: string) => Promise<void>,
): Promise<void> {
  const root = await Deno.makeTempDir({ prefix: "quant_model_" });
  try {
    const hf = join(root, "hf");
    await writeFixture(hf, fixture);
    const packed = join(root, "packed");
    await pack(hf, packed, { quant });
    await fn(packed, hf, root);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
}

const CASES: [string, QuantOptions][] = [
  ["f32, not quantized (the baseline)", {}],
  ["q8_0 experts and base", { experts: "Q8_0", base: "Q8_0" }],
  ["q4_0 experts and base", { experts: "Q4_0", base: "Q4_0" }],
  ["q4_k experts and base (o_proj falls back to q5_0)", { experts: "Q4_K", base: "Q4_K" }],
  ["q6_k experts, q8_0 base", { experts: "Q6_K", base: "Q8_0" }],
  ["q4_0 experts only", { experts: "Q4_0" }],
];

for (const [name, quant] of CASES) {
  Deno.test(`quantized model (${name}): GPU logits = float64 reference on the dequantized weights within ${LOGIT_TOLERANCE}; every budget bit-identical`, async () => {
    await withPacked(QFIX, quant, async (packed, hf, root) => {
      const opened = await openModel(packed);
      const ref64 = join(root, "dequantized");
      await writeDequantized(opened.weights, hf, ref64);
      const ref = await openReferenceModel(ref64);
      const full = await GpuModel.open(opened.weights, { maxContext: 64 });
      const tight = await GpuModel.open(opened.weights, {
        maxContext: 64,
        expertSlots: QFIX.topK,
        expertSource: opened.experts,
      });
      try {
        for (const n of [1, 9]) {
          const ids = prompt(n, QFIX.vocab);
          const got = await full.newSession().forward(ids);
          const want = ref.newSession().forward64(ids);
          const budget = await tight.newSession().forward(ids);
          let worst = 0;
          for (let t = 0; t < n; t++) {
            worst = Math.max(worst, maxAbsDiff(got[t], want[t]));
            assert.deepEqual(budget[t], got[t], `budget ${QFIX.topK} slots, position ${t}`);
          }
          console.error(`  ${name}, ${n} tokens: max |gpu - ref| = ${worst.toExponential(2)}`);
          assert.ok(worst <= LOGIT_TOLERANCE, `max abs diff ${worst}`);
        }
      } finally {
        full.destroy();
        tight.destroy();
        ref.close();
        opened.close();
      }
    });
  });
}

/** Base types matmul reads repacked in 8-row blocks, with what the experts are packed in. */
const ROWS8_BASES: [string, QuantOptions][] = [
  ["q8_0", { experts: "Q8_0", base: "Q8_0" }],
  ["q6_k", { experts: "Q8_0", base: "Q6_K" }],
  ["q4_k", { experts: "Q8_0", base: "Q4_K" }],
  ["q4_0", { experts: "Q8_0", base: "Q4_0" }],
];

for (const [type, quant] of ROWS8_BASES) {
  Deno.test(`${type} base: resident matrices repacked in 8-row blocks (the default) give the logits of GGML's row-major blocks bit for bit, an untied lm_head too`, async () => {
    await withPacked(
      { ...QFIX, tieEmbeddings: false },
      quant,
      async (packed) => {
        const opened = await openModel(packed);
        const [rows, rows8] = [false, true].map((rows8Weights) =>
          GpuModel.open(opened.weights, { maxContext: 64, rows8Weights })
        );
        const models = [await rows, await rows8];
        try {
          // (what each model holds: the q/k/v matrix and the lm_head's chunks, of the type in both)
          const held = (m: GpuModel) => {
            const g = m as unknown as {
              layers: { attnIn: { qkv: WeightRef } }[];
              vocab: { lmHead: { w: WeightRef }[] };
            };
            return [g.layers[0].attnIn.qkv, ...g.vocab.lmHead.map((c) => c.w)].map((w) =>
              `${w.dtype} ${w.layout}`
            );
          };
          assert.deepEqual(held(models[0]), [`${type} rows`, `${type} rows`]);
          assert.deepEqual(held(models[1]), [`${type} rows8`, `${type} rows8`]);
          for (const n of [1, 9, 40]) {
            const ids = prompt(n, QFIX.vocab);
            const [a, b] = [
              await models[0].newSession().forward(ids),
              await models[1].newSession().forward(ids),
            ];
            for (let t = 0; t < n; t++) assert.deepEqual(b[t], a[t], `${n} tokens, position ${t}`);
          }
        } finally {
          for (const m of models) m.destroy();
          opened.close();
        }
      },
    );
  });
}

Deno.test("pack --quant q4_k records each tensor's type and every fallback (o_proj: q5_0)", async () => {
  await withPacked(QFIX, { experts: "Q4_K", base: "Q4_K" }, async (packed) => {
    const m = JSON.parse(await Deno.readTextFile(join(packed, "manifest.json")));
    assert.equal(m.experts.parts.gate.dtype, "Q4_K");
    assert.equal(m.experts.parts.up.dtype, "Q4_K");
    assert.equal(m.experts.parts.down.dtype, "Q5_0"); // rows of I = 64: not whole 256-blocks
    const t = m.base.tensors;
    assert.equal(t["model.layers.0.self_attn.q_proj.weight"].dtype, "Q4_K");
    assert.equal(t["model.layers.0.self_attn.o_proj.weight"].dtype, "Q5_0");
    assert.equal(t["model.embed_tokens.weight"].dtype, "Q4_K"); // tied: it is lm_head
    assert.equal(t["model.layers.0.mlp.gate.weight"].dtype, "F32"); // routers stay float
    assert.equal(t["model.layers.0.input_layernorm.weight"].dtype, "F32");
    assert.equal(m.quantization.experts, "Q4_K");
    const fell = m.quantization.fallbacks.map((f: { tensor: string; used: string }) =>
      `${f.tensor}:${f.used}`
    );
    assert.ok(
      fell.some((f: string) => f.includes("down_proj") && f.endsWith(":Q5_0")),
      fell.join(),
    );
    assert.ok(fell.some((f: string) => f.includes("o_proj") && f.endsWith(":Q5_0")), fell.join());
  });
});

Deno.test("pack --quant q8_0 refuses a tensor whose rows are not whole blocks, naming it", async () => {
  const root = await Deno.makeTempDir({ prefix: "quant_refuse_" });
  try {
    const hf = join(root, "hf");
    await writeFixture(hf, { ...TINY, inter: 48 }); // down rows of 48: not whole 32-blocks
    const err = await pack(hf, join(root, "packed"), { quant: { experts: "Q8_0" } }).catch((e) =>
      e
    );
    assert.ok(err instanceof Error, "pack must fail");
    assert.match(err.message, /down_proj.*48.*Q8_0/);
    assert.equal((await Array.fromAsync(Deno.readDir(root))).length, 1, "nothing left behind");
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("an expert cache of the same MiB holds 1.88x (q8_0) and 3.55x (q4_0) the bf16 experts", async () => {
  const fixture: FixtureOptions = { ...QFIX, dtype: "BF16", hidden: 512, inter: 256 };
  const slot: Record<string, number> = {};
  for (
    const [name, quant] of [["bf16", {}], ["q8_0", { experts: "Q8_0" }], ["q4_0", {
      experts: "Q4_0",
    }]] as const
  ) {
    await withPacked(fixture, quant, async (packed) => {
      const opened = await openModel(packed);
      slot[name] = modelExpertLayouts(opened.weights)[0].slotBytes;
      opened.close();
    });
  }
  // bf16: 2 bytes a value; q8_0: 34 per 32; q4_0: 18 per 32 (slots round up to 256 B and blocks)
  assert.ok(Math.abs(slot.bf16 / slot.q8_0 - 32 / 17) < 0.01, `${slot.bf16 / slot.q8_0}`);
  assert.ok(Math.abs(slot.bf16 / slot.q4_0 - 32 / 9) < 0.01, `${slot.bf16 / slot.q4_0}`);
});
