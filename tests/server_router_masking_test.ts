/**
 * The router_masking request extension reaches the GPU runtime in the engine worker: a served
 * GpuModel with an expert budget creates masked sessions for requests that ask, exact ones
 * otherwise (counted in the worker, read from the engine's stats()).
 */
import assert from "node:assert/strict";
import { DEFAULT_MODEL_DIR } from "../src/model_dir.ts";
import { loadTokenizer } from "../src/tokenizer.ts";
import { startTestServer, testModelSpec } from "./_test_model.ts";

Deno.test("router_masking in a request selects masked sessions; a non-boolean is a 400", async () => {
  const server = await startTestServer({
    spec: testModelSpec("openCountingRuntime", {
      flags: { "expert-slots": "40", "max-context": "256" },
      defaultContext: 256,
    }),
    tokenizer: await loadTokenizer(DEFAULT_MODEL_DIR),
    modelId: "default",
  });
  try {
    const ask = (extra: Record<string, unknown>) =>
      fetch(`${server.url}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model: "default", prompt: "In the", max_tokens: 3, ...extra }),
      });
    const made: [number, number][] = [];
    for (const masking of [true, false]) {
      const r = await ask({ router_masking: masking, temperature: 0 });
      assert.equal(r.status, 200, await r.clone().text());
      const body = await r.json();
      assert.equal(body.usage.completion_tokens, 3);
      made.push([server.stats().maskedSessions, server.stats().exactSessions]);
    }
    assert.deepEqual(made, [[1, 0], [1, 1]]); // masked first, then exact
    assert.equal(server.stats().expertSlots, 40);
    // 40 of 96 slots: experts were loaded, through the staging buffers (pool buffers) or
    // writeTexture (pool textures, llvmpipe's default), and /metrics says so
    const stats = server.stats();
    const uploads = stats.stagedUploads + stats.writeTextureUploads;
    assert.ok(uploads > 0, `staged or texture uploads: ${uploads}`);
    assert.ok(stats.bytesUploaded > 0);
    const text = await (await fetch(`${server.url}/metrics`)).text();
    for (
      const [path, n] of [["staging", stats.stagedUploads], [
        "write_texture",
        stats.writeTextureUploads,
      ]]
    ) {
      assert.match(text, new RegExp(`qwen_moe_expert_uploads_total\\{path="${path}"\\} ${n}\n`));
    }
    assert.match(text, /qwen_moe_expert_uploads_total\{path="write_buffer"\} \d+\n/);
    assert.match(text, /qwen_moe_expert_read_aheads_total \d+\n/);
    const bad = await ask({ router_masking: "yes" });
    assert.equal(bad.status, 400);
    assert.equal((await bad.json()).error.param, "router_masking");
  } finally {
    await server.close();
  }
});
