/**
 * Serving many users with the GPU runtime in the engine worker (as `main.ts serve` runs it):
 * concurrent requests are decoded together and each reply equals the one it gets alone; a full
 * queue answers 503 with Retry-After at once; a second chat turn reuses the first turn's KV rows
 * (prompt-prefix reuse) and replies exactly as without it.
 */
import assert from "node:assert/strict";
import { DEFAULT_MODEL_DIR } from "../src/model_dir.ts";
import { loadTokenizer } from "../src/tokenizer.ts";
import { serve } from "../src/server/app.ts";
import { type EngineSpec, WorkerEngine } from "../src/engine/worker_engine.ts";

async function serveSpec(spec: EngineSpec) {
  const abort = new AbortController();
  const engine = WorkerEngine.start(spec);
  const { server, url } = serve({
    engine,
    tokenizer: await loadTokenizer(DEFAULT_MODEL_DIR),
    modelId: "default",
    port: 0,
    signal: abort.signal,
  });
  const ready = await engine;
  return {
    url,
    engine: ready,
    close: async () => {
      abort.abort();
      await server.finished;
      await ready.close();
    },
  };
}

function complete(url: string, body: Record<string, unknown>): Promise<Response> {
  return fetch(`${url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: "default", temperature: 0, ...body }),
  });
}

const PROMPTS = [
  "In the beginning God created",
  "A hacker is",
  "And the LORD said unto Moses,",
  "The Jargon File",
  "Blessed are the",
];

Deno.test("server: concurrent completions are batched and each equals its reply alone", async () => {
  const s = await serveSpec({
    kind: "runtime",
    flags: { "max-batch": "4", "max-context": "256" },
    defaultContext: 256,
  });
  try {
    const alone: string[] = [];
    for (const prompt of PROMPTS) {
      const r = await complete(s.url, { prompt, max_tokens: 24, seed: 3, temperature: 0.8 });
      alone.push((await r.json()).choices[0].text);
    }
    const before = s.engine.stats();
    const together = await Promise.all(
      PROMPTS.map(async (prompt) => {
        const r = await complete(s.url, { prompt, max_tokens: 24, seed: 3, temperature: 0.8 });
        assert.equal(r.status, 200);
        return (await r.json()).choices[0].text as string;
      }),
    );
    assert.deepEqual(together, alone);
    await new Promise((r) => setTimeout(r, 300)); // the worker's stats push
    const after = s.engine.stats();
    const steps = after.gpuDecodeSteps - before.gpuDecodeSteps;
    const seqSteps = after.gpuSequenceSteps - before.gpuSequenceSteps;
    console.error(`  ${steps} decode steps for ${seqSteps} sequence-steps`);
    assert.ok(seqSteps / steps > 1.5, `mean batch ${seqSteps / steps}`);
  } finally {
    await s.close();
  }
});

Deno.test("server: a full queue answers 503 with Retry-After at once, streamed or not, and keeps serving", async () => {
  const s = await serveSpec({
    kind: "runtime",
    flags: { "max-batch": "1", "max-context": "1024" },
    defaultContext: 1024,
    maxQueue: 0,
  });
  try {
    const long = complete(s.url, { prompt: "In the", max_tokens: 400, stream: true });
    const first = await long; // headers: the generation holds the only place
    for (const stream of [false, true]) {
      const r = await complete(s.url, { prompt: "A hacker", max_tokens: 4, stream });
      assert.equal(r.status, 503);
      assert.equal(r.headers.get("retry-after"), "1");
      const body = await r.json();
      assert.equal(body.error.code, "server_busy");
    }
    await first.body?.cancel();
    // the place is free again
    let ok = 0;
    for (let i = 0; i < 50 && ok === 0; i++) {
      const r = await complete(s.url, { prompt: "A hacker", max_tokens: 4 });
      if (r.status === 200) ok++;
      else await r.body?.cancel();
      await new Promise((res) => setTimeout(res, 50));
    }
    assert.equal(ok, 1);
  } finally {
    await s.close();
  }
});

Deno.test("server: a second chat turn reuses the first turn's KV rows and replies as without reuse", async () => {
  const chat = (url: string, messages: unknown[]) =>
    fetch(`${url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "default", messages, max_tokens: 20, temperature: 0 }),
    }).then((r) => r.json());
  const turn1 = [{ role: "user", content: "Who was Moses?" }];
  const replies: string[] = [];
  const cached: number[] = [];
  for (const slabs of ["2", "1"]) {
    const s = await serveSpec({
      kind: "runtime",
      flags: { "max-batch": slabs, "max-context": "512" },
      defaultContext: 512,
    });
    try {
      const a = await chat(s.url, turn1);
      // with one slab, an unrelated request in between overwrites the cached conversation
      if (slabs === "1") await chat(s.url, [{ role: "user", content: "Hello" }]);
      const before = s.engine.stats().prefixCachedTokens;
      const turn2 = [
        ...turn1,
        { role: "assistant", content: a.choices[0].message.content },
        { role: "user", content: "And Aaron?" },
      ];
      const b = await chat(s.url, turn2);
      replies.push(b.choices[0].message.content);
      await new Promise((r) => setTimeout(r, 300));
      cached.push(s.engine.stats().prefixCachedTokens - before);
    } finally {
      await s.close();
    }
  }
  console.error(`  turn 2 reused ${cached[0]} prompt tokens (${cached[1]} after an eviction)`);
  assert.ok(cached[0] > 10, `reused ${cached[0]}`);
  assert.equal(replies[0], replies[1]);
});
