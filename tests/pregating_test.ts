/**
 * Pre-gating (src/gpu/pregating.ts): predictions leave the forward untouched (logits bit-identical
 * with it on and off), and they are the routers of later layers applied to layer l's output: in a
 * model whose later layers' attention adds nothing (o_proj zeroed), the router input of layer l+1
 * IS layer l's output, so every next-layer prediction equals the actual routing exactly.
 */
import assert from "node:assert/strict";
import { SMALL, writeFixture } from "../weights/fixture.ts";
import { openModelDir } from "../src/model_dir.ts";
import { GpuModel } from "../src/gpu/model.ts";
import { openGpu } from "../src/gpu/device.ts";
import { overlap, PREGATING_DISTANCES } from "../src/gpu/pregating.ts";
import type { LayerWeights, ModelWeights } from "../src/types.ts";

const PROMPT = Array.from({ length: 12 }, (_, i) => (i * 37 + 5) % SMALL.vocab);

/** The weights with o_proj of the given layers replaced by zeros (a heap copy of those only). */
function zeroAttentionOutput(w: ModelWeights, layers: number[]): ModelWeights {
  const patched = w.layers.map((lw, l): LayerWeights => {
    if (!layers.includes(l)) return lw;
    return {
      ...lw,
      o: { ...lw.o, bytes: new Uint8Array(lw.o.bytes.byteLength) },
      expert: (e: number) => lw.expert(e),
    };
  });
  return { ...w, layers: patched };
}

Deno.test("pre-gating predicts the next layer's routing exactly when attention adds nothing, and changes no logit", async () => {
  const dir = await Deno.makeTempDir({ prefix: "pregating_" });
  const gpu = await openGpu();
  try {
    await writeFixture(dir, { ...SMALL, dtype: "BF16" });
    const opened = openModelDir(dir);
    try {
      const { numLayers: L, topK: K } = opened.weights.config;
      // on and off: the same logits, bit for bit
      const rows: Float32Array[][] = [];
      for (const pregating of [false, true]) {
        const model = await GpuModel.open(opened.weights, { gpu, maxContext: 64, pregating });
        const s = model.newSession();
        rows.push(await s.forward(PROMPT));
        s.free();
        model.destroy();
      }
      assert.deepEqual(rows[1], rows[0]);

      const w = zeroAttentionOutput(opened.weights, [1, 2]);
      const model = await GpuModel.open(w, { gpu, maxContext: 64, pregating: true });
      const routed: Uint32Array[] = [];
      model.onRouting = (l, experts) => (routed[l] = experts);
      const s = model.newSession();
      await s.forward(PROMPT);
      const predicted = await model.pregating!.read(PROMPT.length);
      assert.equal(predicted.length, L);
      for (let l = 0; l < L; l++) {
        assert.equal(predicted[l].length, Math.min(PREGATING_DISTANCES, L - 1 - l), `layer ${l}`);
      }
      let farHits = 0;
      for (let l = 0; l + 1 < L; l++) {
        // distance 1: exactly the next layer's routing, token by token, in the same order
        assert.deepEqual(predicted[l][0], routed[l + 1], `layer ${l} -> ${l + 1}`);
      }
      // distance 2 skips layer 1's experts: a prediction, not the routing itself
      for (let t = 0; t < PROMPT.length; t++) {
        const at = (a: Uint32Array) => a.subarray(t * K, (t + 1) * K);
        farHits += overlap(at(predicted[0][1]), at(routed[2]));
      }
      assert.ok(farHits < PROMPT.length * K, "two layers on is not the routing itself");
      s.free();
      model.destroy();

      // wider predictions (pregatingTopK): each token's first K are the top-K prediction, then
      // K + 2 distinct experts in all
      const wide = await GpuModel.open(w, {
        gpu,
        maxContext: 64,
        pregating: true,
        pregatingTopK: K + 2,
      });
      const ws = wide.newSession();
      await ws.forward(PROMPT);
      const wider = await wide.pregating!.read(PROMPT.length);
      for (let l = 0; l + 1 < L; l++) {
        for (let t = 0; t < PROMPT.length; t++) {
          const row = wider[l][0].subarray(t * (K + 2), (t + 1) * (K + 2));
          assert.deepEqual(row.subarray(0, K), predicted[l][0].subarray(t * K, (t + 1) * K));
          assert.equal(new Set(row).size, K + 2, `layer ${l} token ${t}: distinct experts`);
        }
      }
      ws.free();
      wide.destroy();
      await assert.rejects(
        () => GpuModel.open(w, { gpu, maxContext: 64, pregating: true, pregatingTopK: K - 1 }),
        RangeError,
      );
    } finally {
      opened.close();
    }
  } finally {
    gpu.device.destroy();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("overlap() counts the experts two lists share", () => {
  assert.equal(overlap([1, 2, 3], [3, 4, 1]), 2);
  assert.equal(overlap([], [1]), 0);
});
