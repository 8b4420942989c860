/**
 * The embedded default model (trained, packed in weights/default/) against the torch float64
 * evaluation stored at export time (tools/train/reference_outputs.json): held-out perplexity
 * within 1e-6 relative (the README reports 2.5e-9) and greedy continuations token for token.
 */
import assert from "node:assert/strict";
import { DEFAULT_MODEL_DIR, openModel } from "../src/model_dir.ts";
import { GpuModel } from "../src/gpu/model.ts";
import { perplexity } from "../src/perplexity.ts";
import { greedyToken } from "../src/greedy.ts";

const TRAIN = new URL("../tools/train/", import.meta.url);

interface ReferenceOutputs {
  heldout: { ids_file: string; scored_tokens: number; perplexity: number; mean_nll: number };
  greedy: {
    new_tokens: number;
    cases: { prompt: string; prompt_ids: number[]; greedy_ids: number[] }[];
  };
}

const reference: ReferenceOutputs = JSON.parse(
  await Deno.readTextFile(new URL("reference_outputs.json", TRAIN)),
);

/** Relative perplexity difference allowed: far above the 2.5e-9 measured, far below any bug. */
const PERPLEXITY_TOLERANCE = 1e-6;

Deno.test("default model: held-out perplexity matches torch within 1e-6 relative", async () => {
  const { windows } = JSON.parse(
    await Deno.readTextFile(new URL("heldout_eval_ids.json", TRAIN)),
  ) as { windows: number[][] };
  const opened = await openModel(DEFAULT_MODEL_DIR);
  const model = await GpuModel.open(opened.weights, {
    maxContext: windows[0].length,
    expertSource: opened.experts,
  });
  try {
    const r = await perplexity(model, windows);
    const rel = Math.abs(r.perplexity - reference.heldout.perplexity) /
      reference.heldout.perplexity;
    console.error(
      `  runtime ppl ${r.perplexity.toFixed(4)} vs torch ${
        reference.heldout.perplexity.toFixed(4)
      } (relative ${rel.toExponential(2)}) over ${r.scoredTokens} tokens`,
    );
    assert.equal(r.scoredTokens, reference.heldout.scored_tokens);
    assert.ok(rel <= PERPLEXITY_TOLERANCE, `relative difference ${rel}`);
  } finally {
    model.destroy();
    opened.close();
  }
});

Deno.test("default model: greedy continuations equal torch's token for token", async () => {
  const opened = await openModel(DEFAULT_MODEL_DIR);
  const model = await GpuModel.open(opened.weights, {
    maxContext: 128,
    expertSource: opened.experts,
  });
  try {
    for (const c of reference.greedy.cases) {
      // the reference does not stop at EOS: neither does this loop
      const s = model.newSession();
      const out: number[] = [];
      let [logits] = await s.forward(c.prompt_ids, { lastOnly: true });
      while (out.length < c.greedy_ids.length) {
        out.push(greedyToken(logits));
        [logits] = await s.forward([out[out.length - 1]], { lastOnly: true });
      }
      s.free();
      assert.deepEqual(out, c.greedy_ids, `prompt ${JSON.stringify(c.prompt)}`);
    }
  } finally {
    model.destroy();
    opened.close();
  }
});
