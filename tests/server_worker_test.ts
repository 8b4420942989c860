/**
 * The server with the GPU runtime in the engine worker (as `main.ts serve` runs it): /health and
 * /metrics answer promptly while the embedded default model generates a long streamed reply, and
 * a model that fails to load turns /health to "error" (the load error in the log, not the body).
 */
import assert from "node:assert/strict";
import { DEFAULT_MODEL_DIR } from "../src/model_dir.ts";
import { loadTokenizer } from "../src/tokenizer.ts";
import { serve } from "../src/server/app.ts";
import { type EngineSpec, WorkerEngine } from "../src/engine/worker_engine.ts";

/** A long generation: at ~50 tokens/s on llvmpipe, several seconds of GPU work in the worker. */
const LONG_REPLY_TOKENS = 300;
/** The sampled reply may end at EOS first; this many tokens still make seconds of GPU work. */
const MIN_TOKENS = 100;
/** How often the client asks /health while the reply streams (as a load balancer would, faster). */
const POLL_MS = 20;
/** The bound asserted; the point is "well under 100 ms", the slack is for loaded CI machines. */
const HEALTH_LIMIT_MS = 1000;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** Serves `engine` on a free port; the returned close() stops the server. */
async function serveEngine(engine: Promise<WorkerEngine>) {
  const abort = new AbortController();
  const { server, url } = serve({
    engine,
    tokenizer: await loadTokenizer(DEFAULT_MODEL_DIR),
    modelId: "default",
    port: 0,
    signal: abort.signal,
  });
  return {
    url,
    close: async () => {
      abort.abort();
      await server.finished;
    },
  };
}

/** GETs `path` and returns its status and how long the answer took. */
async function timedGet(url: string): Promise<{ status: number; ms: number }> {
  const t0 = performance.now();
  const res = await fetch(url);
  await res.arrayBuffer();
  return { status: res.status, ms: performance.now() - t0 };
}

Deno.test("/health and /metrics answer in well under 100 ms while the default model generates in the worker", async () => {
  const spec: EngineSpec = { kind: "runtime", flags: {}, defaultContext: 1024 };
  const engine = WorkerEngine.start(spec);
  const server = await serveEngine(engine);
  try {
    await engine;
    const res = await fetch(`${server.url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        model: "default",
        prompt: "In the beginning",
        max_tokens: LONG_REPLY_TOKENS,
        temperature: 1,
        seed: 1,
        stream: true,
        stream_options: { include_usage: true },
      }),
    });
    assert.equal(res.status, 200);
    let events = 0;
    let usage: Record<string, number> | null = null;
    let streaming = true;
    const reading = (async () => {
      const decoder = new TextDecoder();
      let buf = "";
      for await (const chunk of res.body!) {
        buf += decoder.decode(chunk, { stream: true });
        let end;
        while ((end = buf.indexOf("\n\n")) >= 0) {
          const data = buf.slice(6, end); // "data: ..."
          buf = buf.slice(end + 2);
          if (data === "[DONE]") continue;
          events++;
          usage = JSON.parse(data).usage ?? usage;
        }
      }
      streaming = false;
    })();
    const health: number[] = [];
    const metrics: number[] = [];
    while (streaming) {
      const h = await timedGet(`${server.url}/health`);
      assert.equal(h.status, 200);
      health.push(h.ms);
      const m = await timedGet(`${server.url}/metrics`);
      assert.equal(m.status, 200);
      metrics.push(m.ms);
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
    await reading;
    const tokens = usage!.completion_tokens;
    console.log(
      `${tokens} tokens streamed in ${events} events; /health over ${health.length} requests: ` +
        `median ${median(health).toFixed(2)} ms, max ${Math.max(...health).toFixed(2)} ms; ` +
        `/metrics median ${median(metrics).toFixed(2)} ms, max ${
          Math.max(...metrics).toFixed(2)
        } ms`,
    );
    assert.ok(tokens >= MIN_TOKENS, `only ${tokens} tokens before EOS`);
    assert.ok(health.length >= 10, `only ${health.length} /health requests during the reply`);
    assert.ok(Math.max(...health) < HEALTH_LIMIT_MS, `/health max ${Math.max(...health)} ms`);
    assert.ok(Math.max(...metrics) < HEALTH_LIMIT_MS, `/metrics max ${Math.max(...metrics)} ms`);
  } finally {
    await server.close();
    await (await engine.catch(() => null))?.close();
  }
});

Deno.test("a model directory that does not open: /health says error and requests get 500, the path only in the log", async () => {
  const missing = await Deno.makeTempDir({ prefix: "server_worker_missing_" });
  await Deno.remove(missing);
  const engine = WorkerEngine.start({
    kind: "runtime",
    flags: { model: missing },
    defaultContext: 64,
  });
  const server = await serveEngine(engine);
  try {
    const error = await engine.then(() => null, (e: Error) => e);
    assert.ok(error, "the engine should not have started");
    assert.match(error.message, new RegExp(missing));
    const health = await fetch(`${server.url}/health`);
    assert.equal(health.status, 500);
    const h = await health.json();
    assert.equal(h.status, "error");
    assert.match(h.error, /the model failed to load \(the server's log says why\)/);
    assert.ok(!h.error.includes(missing), "no file path in the body");
    const r = await fetch(`${server.url}/v1/completions`, {
      method: "POST",
      body: JSON.stringify({ prompt: "x", max_tokens: 1 }),
    });
    assert.equal(r.status, 500);
    const body = await r.json();
    assert.equal(body.error.code, "model_load_failed");
    assert.ok(!body.error.message.includes(missing), body.error.message);
  } finally {
    await server.close();
  }
});
