/**
 * Logprobs through the server and the official `openai` npm client: chat logprobs/top_logprobs
 * (streamed and not), completions logprobs with echo (lm-evaluation-harness's loglikelihood
 * request included: max_tokens 0 or 1, echo, logprobs 1, prompt [[ids]]), the 400s of bad
 * combinations. Values are checked against the bigram test model's own rows exactly, and on the
 * TINY fixture's GpuModel against the float64 reference within 1e-4.
 */
import assert from "node:assert/strict";
import OpenAI from "openai";
import {
  BigramTestModel,
  IM_END,
  startTestServer,
  TEST_MODEL_ID,
  testModelSpec,
  type TestServer,
} from "./_test_model.ts";
import { logSoftmax } from "../src/logprobs.ts";
import { TINY, writeFixture } from "../weights/fixture.ts";
import { greedy, openReferenceModel } from "../src/reference/model.ts";
import { loadTokenizer, writeByteTokenizer } from "../src/tokenizer.ts";
import { serve } from "../src/server/app.ts";
import { WorkerEngine } from "../src/engine/worker_engine.ts";
import { chatTemplateFromConfig } from "../src/chat_template.ts";

function client(url: string): OpenAI {
  return new OpenAI({ baseURL: `${url}/v1`, apiKey: "unused", maxRetries: 0 });
}

/** The bigram model's log-softmax of the row after `prev`, as the server computes it. */
const bigram = new BigramTestModel({ eosAfter: "e" });
const plainBigram = new BigramTestModel();
const logprobOf = (prev: number, next: number, model = plainBigram) =>
  logSoftmax(model.row(prev))[next];

const code = (ch: string) => ch.charCodeAt(0);

/** "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n" ends in "\n" (id 10). */
const HI = [{ role: "user" as const, content: "hi" }];

Deno.test("chat.completions.create() with logprobs and top_logprobs: one entry per token with its bytes and sorted top list, the bigram model's log-softmax", async () => {
  const server = await startTestServer();
  try {
    const r = await client(server.url).chat.completions.create({
      model: TEST_MODEL_ID,
      messages: HI,
      max_tokens: 5,
      temperature: 0,
      logprobs: true,
      top_logprobs: 3,
    });
    const choice = r.choices[0];
    assert.equal(choice.message.content, "abcde");
    assert.equal(choice.logprobs?.refusal, null);
    const content = choice.logprobs!.content!;
    assert.deepEqual(content.map((e) => e.token), ["a", "b", "c", "d", "e"]);
    content.forEach((e, i) => {
      const prev = i === 0 ? 10 : code("abcde"[i - 1]);
      assert.deepEqual(e.bytes, [code(e.token)]);
      assert.ok(Math.abs(e.logprob - logprobOf(prev, code(e.token))) < 1e-12);
      assert.equal(e.top_logprobs.length, 3);
      assert.deepEqual(e.top_logprobs[0], { token: e.token, logprob: e.logprob, bytes: e.bytes });
      const row = logSoftmax(plainBigram.row(prev));
      const want = [...row.keys()].sort((a, b) => row[b] - row[a] || a - b).slice(0, 3);
      e.top_logprobs.forEach((t, k) => assert.ok(Math.abs(t.logprob - row[want[k]]) < 1e-12));
    });
    // top_logprobs absent: the entries' top lists are empty
    const bare = await client(server.url).chat.completions.create({
      model: TEST_MODEL_ID,
      messages: HI,
      max_tokens: 2,
      temperature: 0,
      logprobs: true,
    });
    assert.deepEqual(bare.choices[0].logprobs!.content!.map((e) => e.top_logprobs), [[], []]);
    // without logprobs: null, as before
    const none = await client(server.url).chat.completions.create({
      model: TEST_MODEL_ID,
      messages: HI,
      max_tokens: 2,
      temperature: 0,
    });
    assert.equal(none.choices[0].logprobs, null);
    assert.equal(server.stats().liveSessions, 0);
  } finally {
    await server.close();
  }
});

Deno.test("chat.completions.create() streamed with logprobs: each chunk carries its tokens' entries, the EOS's rides on the finish chunk", async () => {
  const server = await startTestServer({ eosAfter: "e" });
  try {
    const stream = await client(server.url).chat.completions.create({
      model: TEST_MODEL_ID,
      messages: HI,
      max_tokens: 20,
      temperature: 0,
      logprobs: true,
      top_logprobs: 2,
      stream: true,
    });
    const chunks = [];
    for await (const c of stream) chunks.push(c);
    const entries = chunks.flatMap((c) => c.choices[0]?.logprobs?.content ?? []);
    const text = chunks.map((c) => c.choices[0]?.delta?.content ?? "").join("");
    assert.equal(text, "abcde");
    assert.deepEqual(entries.map((e) => e.token), ["a", "b", "c", "d", "e", "<|im_end|>"]);
    for (const c of chunks.filter((c) => c.choices[0]?.delta?.content)) {
      assert.equal(c.choices[0].logprobs!.content!.length, 1); // one token, one chunk
      assert.equal(c.choices[0].logprobs!.content![0].token, c.choices[0].delta.content);
    }
    const finish = chunks.at(-1)!;
    assert.equal(finish.choices[0].finish_reason, "stop");
    assert.deepEqual(finish.choices[0].logprobs!.content!.map((e) => e.token), ["<|im_end|>"]);
    const eos = entries.at(-1)!;
    assert.ok(Math.abs(eos.logprob - logprobOf(code("e"), IM_END, bigram)) < 1e-12);
    assert.equal(eos.top_logprobs.length, 2);
  } finally {
    await server.close();
  }
});

Deno.test("completions.create() with echo and logprobs: the prompt's tokens first (the first null), text offsets, top maps holding the token", async () => {
  const server = await startTestServer();
  try {
    const r = await client(server.url).completions.create({
      model: TEST_MODEL_ID,
      prompt: "xyz",
      max_tokens: 3,
      temperature: 0,
      logprobs: 2,
      echo: true,
    });
    const c = r.choices[0];
    assert.equal(c.text, "xyz ab");
    const lp = c.logprobs!;
    assert.deepEqual(lp.tokens, ["x", "y", "z", " ", "a", "b"]);
    assert.deepEqual(lp.text_offset, [0, 1, 2, 3, 4, 5]);
    assert.equal(lp.token_logprobs![0], null);
    assert.equal(lp.top_logprobs![0], null);
    const ids = [..."xyz ab"].map(code);
    for (let i = 1; i < ids.length; i++) {
      const want = logprobOf(ids[i - 1], ids[i]);
      assert.ok(Math.abs(lp.token_logprobs![i] - want) < 1e-12, `token ${i}`);
      const top = lp.top_logprobs![i];
      assert.equal(top[lp.tokens![i]], lp.token_logprobs![i]); // the token itself is always there
      assert.ok(Object.keys(top).length >= 2 && Object.keys(top).length <= 3);
      const best = Math.max(...logSoftmax(plainBigram.row(ids[i - 1])));
      assert.ok(Math.abs(Math.max(...Object.values(top)) - best) < 1e-12);
    }
    assert.deepEqual(r.usage, { prompt_tokens: 3, completion_tokens: 3, total_tokens: 6 });
    // logprobs without echo: the completion's tokens only, offsets from 0
    const plain = await client(server.url).completions.create({
      model: TEST_MODEL_ID,
      prompt: "xyz",
      max_tokens: 3,
      temperature: 0,
      logprobs: 0,
    });
    assert.equal(plain.choices[0].text, " ab");
    assert.deepEqual(plain.choices[0].logprobs!.tokens, [" ", "a", "b"]);
    assert.deepEqual(plain.choices[0].logprobs!.text_offset, [0, 1, 2]);
    assert.deepEqual(plain.choices[0].logprobs!.top_logprobs!.map((t) => Object.keys(t)), [
      [" "],
      ["a"],
      ["b"],
    ]);
  } finally {
    await server.close();
  }
});

Deno.test("lm-evaluation-harness loglikelihood requests: max_tokens 0 or 1 with echo and logprobs 1 on [[ids]] return the prompt's logprobs", async () => {
  const server = await startTestServer();
  try {
    const ids = [..."hello"].map(code);
    const zero = await client(server.url).completions.create({
      model: TEST_MODEL_ID,
      prompt: [ids],
      max_tokens: 0,
      temperature: 0,
      logprobs: 1,
      echo: true,
    });
    const c = zero.choices[0];
    assert.equal(c.text, "hello");
    assert.deepEqual(c.logprobs!.tokens, ["h", "e", "l", "l", "o"]);
    assert.equal(c.finish_reason, "length");
    assert.deepEqual(zero.usage, { prompt_tokens: 5, completion_tokens: 0, total_tokens: 5 });
    const sum = c.logprobs!.token_logprobs!.slice(1).reduce((s, v) => s + v, 0);
    let want = 0;
    for (let i = 1; i < ids.length; i++) want += logprobOf(ids[i - 1], ids[i]);
    assert.ok(Math.abs(sum - want) < 1e-9);
    // as lm-eval asks (max_tokens 1) and reads it: token_logprobs[ctxlen:-1], greedy check
    const one = await client(server.url).completions.create({
      model: TEST_MODEL_ID,
      prompt: [ids],
      max_tokens: 1,
      temperature: 0,
      logprobs: 1,
      echo: true,
      seed: 1234,
    });
    const lp = one.choices[0].logprobs!;
    assert.equal(lp.tokens!.length, ids.length + 1);
    const ctxlen = 2; // "he" | "llo"
    const cont = lp.token_logprobs!.slice(ctxlen, -1);
    const tops = lp.top_logprobs!.slice(ctxlen, -1);
    assert.deepEqual(cont, c.logprobs!.token_logprobs!.slice(ctxlen));
    // "l" after "e", "l" after "l", "o" after "l": none is the bigram's greedy choice
    assert.ok(cont.every((v, i) => v < Math.max(...Object.values(tops[i]))));
    assert.equal(server.stats().liveSessions, 0);
  } finally {
    await server.close();
  }
});

Deno.test("completions streamed: logprobs ride on the chunks; echo without logprobs prepends the prompt", async () => {
  const server = await startTestServer();
  try {
    const stream = await client(server.url).completions.create({
      model: TEST_MODEL_ID,
      prompt: "xyz",
      max_tokens: 3,
      temperature: 0,
      logprobs: 1,
      stream: true,
    });
    const tokens: string[] = [];
    const offsets: number[] = [];
    for await (const c of stream) {
      tokens.push(...c.choices[0].logprobs?.tokens ?? []);
      offsets.push(...c.choices[0].logprobs?.text_offset ?? []);
    }
    assert.deepEqual(tokens, [" ", "a", "b"]);
    assert.deepEqual(offsets, [0, 1, 2]);
    const echo = await client(server.url).completions.create({
      model: TEST_MODEL_ID,
      prompt: "xyz",
      max_tokens: 2,
      temperature: 0,
      echo: true,
      stream: true,
    });
    let text = "";
    for await (const c of echo) text += c.choices[0]?.text ?? "";
    assert.equal(text, "xyz a");
  } finally {
    await server.close();
  }
});

async function post(server: TestServer, path: string, body: object) {
  const res = await fetch(`${server.url}${path}`, { method: "POST", body: JSON.stringify(body) });
  return { status: res.status, json: await res.json() };
}

/** [case, path, body, param, code] */
// deno-fmt-ignore
const BAD: [string, string, object, string, string][] = [
  ["top_logprobs without logprobs", "/v1/chat/completions", { messages: HI, top_logprobs: 2 },                  "top_logprobs", "invalid_value"],
  ["top_logprobs, logprobs false",  "/v1/chat/completions", { messages: HI, logprobs: false, top_logprobs: 0 }, "top_logprobs", "invalid_value"],
  ["top_logprobs 21",               "/v1/chat/completions", { messages: HI, logprobs: true, top_logprobs: 21 }, "top_logprobs", "invalid_value"],
  ["top_logprobs 1.5",              "/v1/chat/completions", { messages: HI, logprobs: true, top_logprobs: 1.5 }, "top_logprobs", "invalid_value"],
  ["chat logprobs a number",        "/v1/chat/completions", { messages: HI, logprobs: 3 },                      "logprobs", "invalid_value"],
  ["chat max_tokens 0",             "/v1/chat/completions", { messages: HI, max_tokens: 0 },                    "max_tokens", "invalid_value"],
  ["chat echo",                     "/v1/chat/completions", { messages: HI, echo: true },                       "echo", "unsupported_parameter"],
  ["completions logprobs 6",        "/v1/completions",      { prompt: "x", logprobs: 6 },                       "logprobs", "invalid_value"],
  ["completions logprobs true",     "/v1/completions",      { prompt: "x", logprobs: true },                    "logprobs", "invalid_value"],
  ["completions logprobs -1",       "/v1/completions",      { prompt: "x", logprobs: -1 },                      "logprobs", "invalid_value"],
  ["echo a string",                 "/v1/completions",      { prompt: "x", echo: "yes" },                       "echo", "invalid_value"],
  ["max_tokens 0 without echo",     "/v1/completions",      { prompt: "x", max_tokens: 0, logprobs: 1 },        "max_tokens", "invalid_value"],
  ["stream with echo and logprobs", "/v1/completions",      { prompt: "x", echo: true, logprobs: 1, stream: true }, "echo", "unsupported_parameter"],
  ["a batch of two id lists",       "/v1/completions",      { prompt: [[1], [2]], echo: true },                 "prompt", "unsupported_parameter"],
];

Deno.test("bad logprobs/echo combinations answer 400 naming the parameter", async () => {
  const server = await startTestServer();
  try {
    for (const [name, path, body, param, code] of BAD) {
      const r = await post(server, path, { model: TEST_MODEL_ID, ...body });
      assert.equal(r.status, 400, `${name}: ${JSON.stringify(r.json)}`);
      assert.equal(r.json.error.param, param, name);
      assert.equal(r.json.error.code, code, name);
    }
    assert.equal(server.stats().sessionsCreated ?? 0, 0); // refused before any generation
  } finally {
    await server.close();
  }
});

// ---------------------------------------------------------------------------------------------
// The TINY fixture's GpuModel in the engine worker against the float64 reference

const MAX_CONTEXT = 64;
const STEPS = 8;
/** The brief's bound on |logprob - the float64 reference's|. */
const TOLERANCE = 1e-4;

Deno.test({
  name:
    "server on the GpuModel of the TINY fixture: chat and completions (echo) logprobs within 1e-4 of the float64 reference's log-softmax",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "server_logprobs_" });
    await writeFixture(dir, TINY);
    await writeByteTokenizer(dir, TINY.vocab);
    const tokenizer = await loadTokenizer(dir);
    const ref = await openReferenceModel(dir, { maxContext: MAX_CONTEXT });
    const engine = await WorkerEngine.start(
      testModelSpec("openFixtureGpuModel", { dir, maxContext: MAX_CONTEXT }),
    );
    const abort = new AbortController();
    const { server, url } = serve({
      engine,
      tokenizer,
      modelId: "tiny",
      port: 0,
      signal: abort.signal,
    });
    /** The reference's log-softmax rows over prompt + its greedy continuation, and that. */
    const reference = async (prompt: number[]) => {
      const ids = await greedy(ref, prompt, STEPS);
      const s = ref.newSession();
      const rows = s.forward64([...prompt, ...ids]).map((row) => logSoftmax(row));
      s.free();
      return { ids, rows };
    };
    let worst = 0;
    const check = (got: number, want: number) => worst = Math.max(worst, Math.abs(got - want));
    try {
      const openai = client(url);
      // completions with echo on ids: every prompt and generated token
      const prompt = [72, 105, 33, 10, 7, 250];
      const want = await reference(prompt);
      const eos = new Set([...ref.config.eosTokenIds, tokenizer.eosTokenId!]);
      const end = want.ids.findIndex((id) => eos.has(id));
      const kept = end < 0 ? want.ids : want.ids.slice(0, end + 1);
      const r = await openai.completions.create({
        model: "tiny",
        prompt,
        max_tokens: STEPS,
        temperature: 0,
        logprobs: 3,
        echo: true,
      });
      const lp = r.choices[0].logprobs!;
      assert.equal(lp.token_logprobs!.length, prompt.length + kept.length);
      assert.equal(lp.token_logprobs![0], null);
      const all = [...prompt, ...kept];
      for (let i = 1; i < all.length; i++) {
        check(lp.token_logprobs![i], want.rows[i - 1][all[i]]);
        check(Math.max(...Object.values(lp.top_logprobs![i])), Math.max(...want.rows[i - 1]));
      }
      // chat: the generated tokens' entries
      const chatIds = tokenizer.encode(
        chatTemplateFromConfig(tokenizer.config, tokenizer).render(HI),
      );
      const chatWant = await reference(chatIds);
      const c = await openai.chat.completions.create({
        model: "tiny",
        messages: HI,
        max_tokens: STEPS,
        temperature: 0,
        logprobs: true,
        top_logprobs: 4,
      });
      const content = c.choices[0].logprobs!.content!;
      const chatEnd = chatWant.ids.findIndex((id) => eos.has(id));
      assert.equal(content.length, chatEnd < 0 ? STEPS : chatEnd + 1);
      content.forEach((e, i) => {
        const row = chatWant.rows[chatIds.length - 1 + i];
        check(e.logprob, row[chatWant.ids[i]]);
        const top = [...row].sort((a, b) => b - a);
        e.top_logprobs.forEach((t, k) => check(t.logprob, top[k]));
      });
      console.log(`max |logprob - float64 reference| = ${worst.toExponential(2)}`);
      assert.ok(worst < TOLERANCE, `max error ${worst}`);
    } finally {
      abort.abort();
      await server.finished;
      await engine.close();
      ref.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
