/**
 * The server on the CPU reference model over the TINY fixture checkpoint (with the byte-level
 * tokenizer writeByteTokenizer() adds), opened in the engine worker: greedy completions through
 * the openai client give the same tokens as the reference's own greedy decoding in this thread.
 */
import assert from "node:assert/strict";
import OpenAI from "openai";
import { TINY, writeFixture } from "../weights/fixture.ts";
import { greedy, openReferenceModel } from "../src/reference/model.ts";
import { loadTokenizer, writeByteTokenizer } from "../src/tokenizer.ts";
import { serve } from "../src/server/app.ts";
import { WorkerEngine } from "../src/engine/worker_engine.ts";
import { testModelSpec } from "./_test_model.ts";

/** Enough tokens to see the model's own continuation; the TINY reference decodes in ms each. */
const STEPS = 12;

Deno.test("server on the reference TINY fixture matches greedy() token for token", async () => {
  const dir = await Deno.makeTempDir({ prefix: "server_reference_" });
  const abort = new AbortController();
  await writeFixture(dir, TINY);
  await writeByteTokenizer(dir, TINY.vocab);
  const model = await openReferenceModel(dir, { maxContext: 128 });
  const tokenizer = await loadTokenizer(dir);
  const engine = await WorkerEngine.start(
    testModelSpec("openReferenceEngineModel", { dir, maxContext: 128 }),
  );
  const { server, url } = serve({
    engine,
    tokenizer,
    modelId: "tiny",
    port: 0,
    signal: abort.signal,
  });
  try {
    const prompt = [72, 105, 33, 10]; // "Hi!\n" in byte ids
    const expected = await greedy(model, prompt, STEPS);
    const eos = new Set([...model.config.eosTokenIds, tokenizer.eosTokenId!]);
    const end = expected.findIndex((id) => eos.has(id));
    const kept = end < 0 ? expected : expected.slice(0, end + 1);
    const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: "x", maxRetries: 0 });
    const r = await client.completions.create({
      model: "tiny",
      prompt,
      max_tokens: STEPS,
      temperature: 0,
    });
    assert.equal(r.usage?.prompt_tokens, prompt.length);
    assert.equal(r.usage?.completion_tokens, kept.length);
    assert.equal(r.choices[0].finish_reason, end < 0 ? "length" : "stop");
    const text = tokenizer.decode(kept.filter((id) => !eos.has(id)), { skipSpecial: true });
    assert.equal(r.choices[0].text, text);
  } finally {
    abort.abort();
    await server.finished;
    await engine.close();
    model.close();
    await Deno.remove(dir, { recursive: true });
  }
});
