/**
 * The server on the real GpuModel of the TINY fixture (byte tokenizer), in the engine worker:
 * greedy /v1/completions equals the float64 reference's greedy ids; a GPU validation error fails
 * its request (500, gpu_error) and the model is reopened; a lost device answers 503, /health says
 * unavailable while the worker reopens the model on a new device, then the same greedy reply.
 */
import assert from "node:assert/strict";
import { TINY, writeFixture } from "../weights/fixture.ts";
import { greedy, openReferenceModel } from "../src/reference/model.ts";
import { loadTokenizer, type Tokenizer, writeByteTokenizer } from "../src/tokenizer.ts";
import { serve } from "../src/server/app.ts";
import { WorkerEngine } from "../src/engine/worker_engine.ts";
import { type GpuFaults, testModelSpec } from "./_test_model.ts";

const MAX_CONTEXT = 64;
/** Enough tokens to see the model's own continuation. */
const STEPS = 12;
const PROMPT = [72, 105, 33, 10]; // "Hi!\n" in byte ids

interface Fixture {
  dir: string;
  tokenizer: Tokenizer;
  /** The reference's greedy ids, cut after the first EOS (as the server stops there). */
  expected: number[];
  eos: Set<number>;
}

async function fixture(): Promise<Fixture> {
  const dir = await Deno.makeTempDir({ prefix: "server_gpu_" });
  await writeFixture(dir, TINY);
  await writeByteTokenizer(dir, TINY.vocab);
  const tokenizer = await loadTokenizer(dir);
  const ref = await openReferenceModel(dir, { maxContext: MAX_CONTEXT });
  try {
    const want = await greedy(ref, PROMPT, STEPS);
    const eos = new Set([...ref.config.eosTokenIds, tokenizer.eosTokenId!]);
    const end = want.findIndex((id) => eos.has(id));
    return { dir, tokenizer, eos, expected: end < 0 ? want : want.slice(0, end + 1) };
  } finally {
    ref.close();
  }
}

async function serveFixture(f: Fixture, faults: GpuFaults = {}, reopenDelaysMs?: number[]) {
  const engine = await WorkerEngine.start({
    ...testModelSpec("openFixtureGpuModel", { dir: f.dir, maxContext: MAX_CONTEXT, faults }),
    reopenDelaysMs,
  });
  const abort = new AbortController();
  const { server, url } = serve({
    engine,
    tokenizer: f.tokenizer,
    modelId: "tiny",
    port: 0,
    signal: abort.signal,
  });
  return {
    url,
    engine,
    close: async () => {
      abort.abort();
      await server.finished;
      await engine.close();
    },
  };
}

async function complete(url: string) {
  const res = await fetch(`${url}/v1/completions`, {
    method: "POST",
    body: JSON.stringify({ model: "tiny", prompt: PROMPT, max_tokens: STEPS, temperature: 0 }),
  });
  return { status: res.status, json: await res.json() };
}

/** The reply's text and usage equal the reference's greedy ids (decoded the same way). */
function assertGreedy(f: Fixture, json: Record<string, never>): void {
  const r = json as unknown as {
    choices: { text: string; finish_reason: string }[];
    usage: { prompt_tokens: number; completion_tokens: number };
  };
  const stopped = f.eos.has(f.expected.at(-1)!);
  assert.equal(r.usage.prompt_tokens, PROMPT.length);
  assert.equal(r.usage.completion_tokens, f.expected.length);
  assert.equal(r.choices[0].finish_reason, stopped ? "stop" : "length");
  const text = f.tokenizer.decode(f.expected.filter((id) => !f.eos.has(id)), { skipSpecial: true });
  assert.equal(r.choices[0].text, text);
}

async function health(url: string): Promise<{ status: number; body: Record<string, string> }> {
  const res = await fetch(`${url}/health`);
  return { status: res.status, body: await res.json() };
}

/** Polls /health until it is 200, returning every status seen on the way. */
async function untilHealthy(url: string): Promise<number[]> {
  const POLL_LIMIT = 1000; // 1000 * 20 ms: far above a TINY model's reopen
  const seen: number[] = [];
  for (let i = 0; i < POLL_LIMIT; i++) {
    const h = await health(url);
    seen.push(h.status);
    if (h.status === 200) return seen;
    await new Promise((r) => setTimeout(r, 20));
  }
  assert.fail(`/health never became ok: ${seen.slice(-5)}`);
}

Deno.test("server on the GpuModel of the TINY fixture: greedy /v1/completions equals the float64 reference's greedy ids", async () => {
  const f = await fixture();
  const server = await serveFixture(f);
  try {
    const r = await complete(server.url);
    assert.equal(r.status, 200, JSON.stringify(r.json));
    assertGreedy(f, r.json);
    if (f.expected.every((id) => id < 128 || f.eos.has(id))) { // ASCII: the ids come back exactly
      const ids = f.tokenizer.encode(r.json.choices[0].text);
      assert.deepEqual(ids, f.expected.filter((id) => !f.eos.has(id)));
    }
  } finally {
    await server.close();
    await Deno.remove(f.dir, { recursive: true });
  }
});

Deno.test("a lost GPU device: the request gets 503, /health says unavailable, the worker reopens the model and the next reply is right", async () => {
  const f = await fixture();
  const server = await serveFixture(f, { loseDeviceOnSession: 2 });
  try {
    assertGreedy(f, (await complete(server.url)).json);
    const lost = await complete(server.url); // its session destroys the device first
    assert.equal(lost.status, 503, JSON.stringify(lost.json));
    assert.equal(lost.json.error.code, "model_unavailable");
    assert.match(lost.json.error.message, /GPU device was lost.*retry when GET \/health says ok/);
    const during = await health(server.url);
    if (during.status !== 200) { // the reopen of a TINY model may already be done
      assert.equal(during.status, 503);
      assert.equal(during.body.status, "unavailable");
      assert.match(during.body.error, /the GPU device was lost; reloading/);
      const refused = await complete(server.url);
      assert.equal(refused.status, 503);
      assert.equal(refused.json.error.code, "model_unavailable");
    }
    await untilHealthy(server.url);
    const again = await complete(server.url);
    assert.equal(again.status, 200, JSON.stringify(again.json));
    assertGreedy(f, again.json);
    assert.equal(server.engine.stats().fixtureModelsOpened, 2);
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    assert.match(metrics, /qwen_moe_generations_total\{outcome="failed"\} 1\n/);
  } finally {
    await server.close();
    await Deno.remove(f.dir, { recursive: true });
  }
});

Deno.test("a GPU validation error during a generation fails that request (500 gpu_error, no text) and the model is reopened", async () => {
  const f = await fixture();
  const server = await serveFixture(f, { validationErrorOnSession: 1 });
  try {
    const bad = await complete(server.url);
    assert.equal(bad.status, 500, JSON.stringify(bad.json));
    assert.equal(bad.json.error.code, "gpu_error");
    assert.match(bad.json.error.message, /GPU reported an error.*error id/);
    assert.doesNotMatch(bad.json.error.message, /GpuError|MAP_READ/); // details in the log only
    await untilHealthy(server.url);
    const again = await complete(server.url);
    assert.equal(again.status, 200, JSON.stringify(again.json));
    assertGreedy(f, again.json);
    assert.equal(server.engine.stats().fixtureModelsOpened, 2);
  } finally {
    await server.close();
    await Deno.remove(f.dir, { recursive: true });
  }
});

Deno.test("a lost device whose model does not reopen: after the bounded attempts /health says error and requests get 500", async () => {
  const f = await fixture();
  const server = await serveFixture(f, { loseDeviceOnSession: 1, failOpenAfter: 1 }, [0, 10, 10]);
  try {
    const lost = await complete(server.url);
    assert.equal(lost.status, 503, JSON.stringify(lost.json));
    let h = await health(server.url);
    for (let i = 0; i < 500 && h.status === 503; i++) {
      await new Promise((r) => setTimeout(r, 10));
      h = await health(server.url);
    }
    assert.equal(h.status, 500);
    assert.equal(h.body.status, "error");
    assert.match(h.body.error, /could not be reloaded/);
    const r = await complete(server.url);
    assert.equal(r.status, 500);
    assert.equal(r.json.error.code, "model_load_failed");
  } finally {
    await server.close();
    await Deno.remove(f.dir, { recursive: true });
  }
});
