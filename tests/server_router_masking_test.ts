/**
 * The router_masking request extension reaches the GPU runtime: a served GpuModel with an expert
 * budget creates masked sessions for requests that ask, exact ones otherwise.
 */
import assert from "node:assert/strict";
import { DEFAULT_MODEL_DIR, openModel } from "../src/model_dir.ts";
import { GpuModel, type GpuSession } from "../src/gpu/model.ts";
import { startTestServer } from "./_test_model.ts";
import type { SessionOptions } from "../src/types.ts";

Deno.test("router_masking in a request selects masked sessions; a non-boolean is a 400", async () => {
  const opened = await openModel(DEFAULT_MODEL_DIR);
  const model = await GpuModel.open(opened.weights, {
    maxContext: 256,
    expertSource: opened.experts,
    expertSlots: 40,
  });
  const made: boolean[] = [];
  const newSession = model.newSession.bind(model);
  model.newSession = (opts?: SessionOptions): GpuSession => {
    const s = newSession(opts);
    made.push(s.routerMasking);
    return s;
  };
  const server = await startTestServer({ model, modelId: "default" });
  try {
    const ask = (extra: Record<string, unknown>) =>
      fetch(`${server.url}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model: "default", prompt: "In the", max_tokens: 3, ...extra }),
      });
    for (const masking of [true, false]) {
      const r = await ask({ router_masking: masking, temperature: 0 });
      assert.equal(r.status, 200, await r.clone().text());
      const body = await r.json();
      assert.equal(body.usage.completion_tokens, 3);
    }
    assert.deepEqual(made, [true, false]);
    const bad = await ask({ router_masking: "yes" });
    assert.equal(bad.status, 400);
    assert.equal((await bad.json()).error.param, "router_masking");
  } finally {
    await server.close();
    model.destroy();
    opened.close();
  }
});
