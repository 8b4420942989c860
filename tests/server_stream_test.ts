/**
 * Streaming under load and disconnects, through the engine worker: 16 concurrent streaming
 * clients each get their complete reply with exact usage; a client that aborts mid-stream frees
 * its session in the worker and the next request runs; /metrics and /stats count what was served.
 */
import assert from "node:assert/strict";
import { startTestServer, TEST_MODEL_ID, type TestServer } from "./_test_model.ts";

/** Parses an SSE body into its JSON events (without the final [DONE]) and checks [DONE] came. */
async function readEvents(res: Response): Promise<Record<string, unknown>[]> {
  const text = await res.text();
  const data = text.split("\n\n").filter((e) => e.startsWith("data: ")).map((e) => e.slice(6));
  assert.equal(data.at(-1), "[DONE]");
  return data.slice(0, -1).map((d) => JSON.parse(d));
}

function streamChat(server: TestServer, content: string, maxTokens: number, signal?: AbortSignal) {
  return fetch(`${server.url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      model: TEST_MODEL_ID,
      messages: [{ role: "user", content }],
      max_tokens: maxTokens,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    }),
    signal,
  });
}

/** Polls `check` every few ms until it holds; fails after POLL_LIMIT tries. */
async function eventually(check: () => boolean, what: string): Promise<void> {
  const POLL_LIMIT = 500; // 500 * 10 ms: far above the few ms a freed session takes
  for (let i = 0; i < POLL_LIMIT; i++) {
    if (check()) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  assert.fail(`never happened: ${what}`);
}

Deno.test("server completes 16 concurrent streaming clients one at a time, each with exact usage", async () => {
  const server = await startTestServer();
  try {
    const CLIENTS = 16;
    const replies = await Promise.all(
      Array.from({ length: CLIENTS }, async (_, i) => {
        const user = "q".repeat(i + 1); // distinct prompt lengths: usage must match each
        const events = await readEvents(await streamChat(server, user, 10 + i));
        const text = events.map((e) =>
          (e.choices as { delta?: { content?: string } }[])[0]?.delta?.content ?? ""
        ).join("");
        return { i, text, usage: events.at(-1)!.usage as Record<string, number> };
      }),
    );
    const alphabet = "abcdefghijklmnopqrstuvwxyz";
    for (const { i, text, usage } of replies) {
      assert.equal(text, alphabet.slice(0, 10 + i));
      const promptTokens = 20 + i; // the 21-token "hi" prompt with i + 1 user bytes, not 2
      assert.deepEqual(usage, {
        prompt_tokens: promptTokens,
        completion_tokens: 10 + i,
        total_tokens: promptTokens + 10 + i,
      });
    }
    const stats = server.stats();
    assert.equal(stats.sessionsCreated, CLIENTS);
    assert.equal(stats.bigramSessionsCreated, CLIENTS);
    assert.equal(stats.bigramMaxLiveSessions, 1); // queued: one generation at a time
    assert.equal(stats.liveSessions, 0);
    assert.equal(stats.bigramLiveSessions, 0);
    assert.equal(stats.queueWaiting, 0);
    assert.equal(stats.queueBusy, 0);
  } finally {
    await server.close();
  }
});

Deno.test("server frees the session in the worker of a client that disconnects mid-stream, then serves the next", async () => {
  // 5 ms a step: the 50,000 tokens asked for would take minutes; the abort must end them
  const server = await startTestServer({ maxContext: 100_000, stepDelayMs: 5 });
  try {
    const abort = new AbortController();
    const res = await streamChat(server, "hi", 50_000, abort.signal);
    const reader = res.body!.getReader();
    const first = await reader.read(); // the stream is live: a session is generating
    assert.ok(!first.done);
    assert.equal(server.stats().liveSessions, 1);
    assert.equal(server.stats().bigramLiveSessions, 1);
    abort.abort();
    await reader.cancel().catch(() => {});
    await eventually(() => server.stats().liveSessions === 0, "the aborted session was freed");
    assert.equal(server.stats().bigramLiveSessions, 0);
    assert.equal(server.stats().queueBusy, 0);
    const next = await readEvents(await streamChat(server, "hi", 3));
    const usage = next.at(-1)!.usage as Record<string, number>;
    assert.equal(usage.completion_tokens, 3);
    assert.equal(server.stats().liveSessions, 0);
    assert.equal(server.stats().bigramSessionsCreated, 2);
  } finally {
    await server.close();
  }
});

Deno.test("/metrics and /stats report requests, tokens and the expert cache figures", async () => {
  const server = await startTestServer({
    cacheFigures: { hits: 30, misses: 10, evictions: 4, bytesUploaded: 2048 }, // from the worker
  });
  try {
    await readEvents(await streamChat(server, "hi", 5));
    const bad = await fetch(`${server.url}/v1/chat/completions`, { method: "POST", body: "{" });
    assert.equal(bad.status, 400);
    await bad.body?.cancel();
    const text = await (await fetch(`${server.url}/metrics`)).text();
    const value = (line: string) => {
      const found = text.split("\n").find((l) => l.startsWith(line + " "));
      assert.ok(found, `metric line ${line} in\n${text}`);
      return Number(found.slice(line.length + 1));
    };
    assert.equal(value('qwen_moe_requests_total{route="/v1/chat/completions",status="200"}'), 1);
    assert.equal(value('qwen_moe_requests_total{route="/v1/chat/completions",status="400"}'), 1);
    assert.equal(value("qwen_moe_prompt_tokens_total"), 21);
    assert.equal(value("qwen_moe_completion_tokens_total"), 5);
    assert.equal(value("qwen_moe_time_to_first_token_seconds_count"), 1);
    assert.ok(value("qwen_moe_time_to_first_token_seconds_sum") > 0);
    assert.equal(value('qwen_moe_generations_total{outcome="completed"}'), 1);
    assert.equal(value("qwen_moe_expert_cache_hits_total"), 30);
    assert.equal(value("qwen_moe_expert_cache_uploaded_bytes_total"), 2048);
    assert.equal(value("qwen_moe_expert_cache_hit_rate"), 0.75);
    assert.equal(value("qwen_moe_live_sessions"), 0);
    assert.equal(value("qwen_moe_queue_busy"), 0);
    const stats = await (await fetch(`${server.url}/stats`)).json();
    assert.equal(stats.completionTokens, 5);
    assert.equal(stats.cache.hitRate, 0.75);
    assert.deepEqual(stats.sessions, { live: 0, created: 1 });
    assert.deepEqual(stats.queue, { waiting: 0, busy: false });
    assert.ok(stats.tokensPerSecond > 0);
  } finally {
    await server.close();
  }
});
