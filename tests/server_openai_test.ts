/**
 * The server through the official `openai` npm client: chat and completions, streaming and not,
 * usage, stop conditions, seeds. The model is the bigram test model in the engine worker, whose
 * greedy continuation of any prompt ending in "\n" is "abcdef...".
 */
import assert from "node:assert/strict";
import OpenAI from "openai";
import { startTestServer, TEST_MODEL_ID, type TestServer } from "./_test_model.ts";

/** "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n": 5 specials/newlines + 16 bytes. */
const HI_PROMPT_TOKENS = 1 + "user\nhi".length + 1 + 1 + 1 + "assistant\n".length;

function client(server: TestServer, apiKey = "unused"): OpenAI {
  return new OpenAI({ baseURL: `${server.url}/v1`, apiKey, maxRetries: 0 });
}

Deno.test("chat.completions.create() returns the greedy reply with exact usage", async () => {
  const server = await startTestServer();
  try {
    const r = await client(server).chat.completions.create({
      model: TEST_MODEL_ID,
      messages: [{ role: "user", content: "hi" }],
      max_tokens: 5,
      temperature: 0,
    });
    assert.equal(r.object, "chat.completion");
    assert.equal(r.model, TEST_MODEL_ID);
    assert.match(r.id, /^chatcmpl-/);
    assert.equal(r.choices.length, 1);
    assert.equal(r.choices[0].message.role, "assistant");
    assert.equal(r.choices[0].message.content, "abcde");
    assert.equal(r.choices[0].finish_reason, "length");
    assert.deepEqual(r.usage, {
      prompt_tokens: HI_PROMPT_TOKENS,
      completion_tokens: 5,
      total_tokens: HI_PROMPT_TOKENS + 5,
    });
    assert.equal(server.stats().liveSessions, 0); // the worker freed the session
    assert.equal(server.stats().bigramLiveSessions, 0);
  } finally {
    await server.close();
  }
});

Deno.test("chat.completions.create() stops at EOS with finish_reason stop, EOS counted", async () => {
  const server = await startTestServer({ eosAfter: "e" });
  try {
    const r = await client(server).chat.completions.create({
      model: TEST_MODEL_ID,
      messages: [{ role: "user", content: "hi" }],
      max_tokens: 20,
      temperature: 0,
    });
    assert.equal(r.choices[0].message.content, "abcde");
    assert.equal(r.choices[0].finish_reason, "stop");
    assert.equal(r.usage?.completion_tokens, 6);
  } finally {
    await server.close();
  }
});

Deno.test("chat.completions.create() streams OpenAI chunks with a usage chunk last", async () => {
  const server = await startTestServer();
  try {
    const stream = await client(server).chat.completions.create({
      model: TEST_MODEL_ID,
      messages: [{ role: "user", content: "hi" }],
      max_tokens: 8,
      temperature: 0,
      stop: ["fg"],
      stream: true,
      stream_options: { include_usage: true },
    });
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);
    const ids = new Set(chunks.map((c) => c.id));
    assert.equal(ids.size, 1);
    assert.ok(chunks.every((c) => c.object === "chat.completion.chunk"));
    assert.deepEqual(chunks[0].choices[0].delta, { role: "assistant", content: "" });
    const text = chunks.map((c) => c.choices[0]?.delta?.content ?? "").join("");
    assert.equal(text, "abcde"); // "fg" is the stop string: neither emitted nor held text lost
    const finish = chunks.at(-2)!;
    assert.equal(finish.choices[0].finish_reason, "stop");
    assert.deepEqual(finish.choices[0].delta, {});
    const last = chunks.at(-1)!;
    assert.deepEqual(last.choices, []);
    assert.deepEqual(last.usage, {
      prompt_tokens: HI_PROMPT_TOKENS,
      completion_tokens: 7, // a b c d e f g
      total_tokens: HI_PROMPT_TOKENS + 7,
    });
    assert.ok(chunks.slice(0, -1).every((c) => c.usage === null));
  } finally {
    await server.close();
  }
});

Deno.test("completions.create() continues raw text, streaming and not, same text", async () => {
  const server = await startTestServer();
  try {
    const openai = client(server);
    const r = await openai.completions.create({
      model: TEST_MODEL_ID,
      prompt: "xyz",
      max_tokens: 4,
      temperature: 0,
    });
    assert.equal(r.object, "text_completion");
    assert.equal(r.choices[0].text, " abc");
    assert.equal(r.choices[0].finish_reason, "length");
    assert.deepEqual(r.usage, { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 });
    const stream = await openai.completions.create({
      model: TEST_MODEL_ID,
      prompt: "xyz",
      max_tokens: 4,
      temperature: 0,
      stream: true,
    });
    let text = "";
    let finish = null;
    for await (const c of stream) {
      assert.equal(c.usage, undefined); // no include_usage: no usage field at all
      text += c.choices[0].text;
      finish = c.choices[0].finish_reason ?? finish;
    }
    assert.equal(text, " abc");
    assert.equal(finish, "length");
  } finally {
    await server.close();
  }
});

Deno.test("chat.completions.create() with the same seed samples the same text", async () => {
  const server = await startTestServer();
  try {
    const openai = client(server);
    const ask = async (seed: number) =>
      (await openai.chat.completions.create({
        model: TEST_MODEL_ID,
        messages: [{ role: "user", content: "hi" }],
        max_tokens: 40,
        temperature: 1.5,
        seed,
      })).choices[0].message.content;
    const a = await ask(7);
    assert.equal(await ask(7), a);
    const others = await Promise.all([1, 2, 3].map(ask));
    assert.ok(others.some((o) => o !== a), "different seeds should sample different texts");
  } finally {
    await server.close();
  }
});

Deno.test("models.list() lists the served model id", async () => {
  const server = await startTestServer();
  try {
    const page = await client(server).models.list();
    assert.deepEqual(page.data.map((m) => m.id), [TEST_MODEL_ID]);
  } finally {
    await server.close();
  }
});
