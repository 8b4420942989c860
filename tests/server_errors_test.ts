/**
 * The server's error matrix over raw fetch, with the model in the engine worker: each failure
 * answers OpenAI-style JSON with the right status, type, param and code, and the server keeps
 * serving afterwards; errors raised in the worker keep their class across the boundary.
 */
import assert from "node:assert/strict";
import { startTestServer, TEST_MODEL_ID, testModelSpec, type TestServer } from "./_test_model.ts";
import type { Engine } from "../src/engine/engine.ts";
import { GenerationAbortedError } from "../src/generate.ts";
import { QueueAbortedError } from "../src/server/queue.ts";
import { ContextOverflowError } from "../src/gpu/session.ts";
import { ApiError, ContextLengthError, internalError } from "../src/server/errors.ts";
import { fromWire, toWire, WorkerEngine } from "../src/engine/worker_engine.ts";

interface ErrorJson {
  error: { message: string; type: string; param: string | null; code: string | null };
}

async function post(
  server: TestServer,
  path: string,
  body: string | object,
  headers: Record<string, string> = {},
): Promise<{ status: number; json: ErrorJson }> {
  const res = await fetch(`${server.url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
  return { status: res.status, json: await res.json() };
}

const chat = (extra: object) => ({
  model: TEST_MODEL_ID,
  messages: [{ role: "user", content: "hi" }],
  max_tokens: 2,
  ...extra,
});

/** [case, path, body, status, param, code] */
// deno-fmt-ignore
const CASES: [string, string, string | object, number, string | null, string][] = [
  ["malformed JSON",        "/v1/chat/completions", "{\"model\": ",                          400, null, "invalid_json"],
  ["JSON array body",       "/v1/chat/completions", "[1, 2]",                                400, null, "invalid_json"],
  ["temperature a string",  "/v1/chat/completions", chat({ temperature: "hot" }),            400, "temperature", "invalid_value"],
  ["messages a string",     "/v1/chat/completions", chat({ messages: "hi" }),                400, "messages", "invalid_value"],
  ["stream a number",       "/v1/chat/completions", chat({ stream: 1 }),                     400, "stream", "invalid_value"],
  ["unknown model",         "/v1/chat/completions", chat({ model: "gpt-9" }),                404, "model", "model_not_found"],
  ["empty messages",        "/v1/chat/completions", chat({ messages: [] }),                  400, "messages", "invalid_value"],
  ["missing messages",      "/v1/chat/completions", { model: TEST_MODEL_ID },                400, "messages", "missing_required_parameter"],
  ["bad role",              "/v1/chat/completions", chat({ messages: [{ role: "bot", content: "x" }] }), 400, "messages[0].role", "invalid_value"],
  ["prompt over context",   "/v1/chat/completions", chat({ messages: [{ role: "user", content: "x".repeat(300) }] }), 400, "messages", "context_length_exceeded"],
  ["max_tokens 0",          "/v1/chat/completions", chat({ max_tokens: 0 }),                 400, "max_tokens", "invalid_value"],
  ["max_tokens 1.5",        "/v1/chat/completions", chat({ max_tokens: 1.5 }),               400, "max_tokens", "invalid_value"],
  ["max_tokens past ctx",   "/v1/chat/completions", chat({ max_tokens: 1000 }),              400, "max_tokens", "context_length_exceeded"],
  ["n = 2",                 "/v1/chat/completions", chat({ n: 2 }),                          400, "n", "unsupported_parameter"],
  ["tools",                 "/v1/chat/completions", chat({ tools: [{ type: "function", function: { name: "f" } }] }), 400, "tools", "unsupported_parameter"],
  ["top_logprobs alone",    "/v1/chat/completions", chat({ top_logprobs: 2 }),               400, "top_logprobs", "invalid_value"],
  ["unknown parameter",     "/v1/chat/completions", chat({ best_friend: 1 }),                400, "best_friend", "unsupported_parameter"],
  ["top_p 0",               "/v1/chat/completions", chat({ top_p: 0 }),                      400, "top_p", "invalid_value"],
  ["temperature 3",         "/v1/chat/completions", chat({ temperature: 3 }),                400, "temperature", "invalid_value"],
  ["five stop strings",     "/v1/chat/completions", chat({ stop: ["a", "b", "c", "d", "e"] }), 400, "stop", "invalid_value"],
  ["completion no prompt",  "/v1/completions",      { model: TEST_MODEL_ID },                400, "prompt", "missing_required_parameter"],
  ["completion logprobs 6", "/v1/completions",      { prompt: "x", logprobs: 6 },            400, "logprobs", "invalid_value"],
  ["streamed echo+logprobs","/v1/completions",      { prompt: "x", echo: true, logprobs: 1, stream: true }, 400, "echo", "unsupported_parameter"],
  ["completion id >= V",    "/v1/completions",      { prompt: [1, 99999] },                  400, "prompt", "invalid_value"],
  ["body over the limit",   "/v1/chat/completions", chat({ messages: [{ role: "user", content: "x".repeat(70_000) }] }), 413, null, "request_too_large"],
  ["unknown route",         "/v1/embeddings",       { input: "x" },                          404, null, "unknown_url"],
];

Deno.test("server answers each bad request with its OpenAI error and keeps serving", async () => {
  const server = await startTestServer();
  try {
    for (const [name, path, body, status, param, code] of CASES) {
      const r = await post(server, path, body);
      assert.equal(r.status, status, `${name}: status (${JSON.stringify(r.json)})`);
      assert.equal(r.json.error.param, param, `${name}: param`);
      assert.equal(r.json.error.code, code, `${name}: code`);
      assert.equal(typeof r.json.error.message, "string", `${name}: message`);
      assert.equal(r.json.error.type, "invalid_request_error", `${name}: type`);
    }
    const ok = await fetch(`${server.url}/v1/chat/completions`, {
      method: "POST",
      body: JSON.stringify(chat({ temperature: 0 })),
    });
    assert.equal(ok.status, 200);
    assert.equal((await ok.json()).choices[0].message.content, "ab");
    assert.equal(server.stats().liveSessions, 0);
  } finally {
    await server.close();
  }
});

Deno.test("server with apiKey answers 401 to a missing or wrong Bearer key, 200 to the key", async () => {
  const server = await startTestServer({ apiKey: "sekret" });
  try {
    const none = await post(server, "/v1/chat/completions", chat({}));
    assert.equal(none.status, 401);
    assert.equal(none.json.error.code, "invalid_api_key");
    const wrong = await post(server, "/v1/chat/completions", chat({}), {
      authorization: "Bearer nope",
    });
    assert.equal(wrong.status, 401);
    const models = await fetch(`${server.url}/v1/models`);
    assert.equal(models.status, 401);
    await models.body?.cancel();
    const right = await post(server, "/v1/chat/completions", chat({}), {
      authorization: "Bearer sekret",
    });
    assert.equal(right.status, 200);
    const health = await fetch(`${server.url}/health`);
    assert.equal(health.status, 200); // health stays open for load balancers
    await health.body?.cancel();
  } finally {
    await server.close();
  }
});

Deno.test("server checks the key with hono's bearerAuth (constant time): 401s carry WWW-Authenticate, every wrong key is refused", async () => {
  const server = await startTestServer({ apiKey: "sekret" });
  try {
    // same length, a prefix, longer, another scheme, a malformed header: all 401 OpenAI errors
    const wrong = ["Bearer sekreT", "Bearer sekre", "Bearer sekret2", "Basic sekret", "Bearer a b"];
    for (const authorization of wrong) {
      const r = await fetch(`${server.url}/v1/models`, { headers: { authorization } });
      assert.equal(r.status, 401, authorization);
      assert.match(r.headers.get("www-authenticate") ?? "", /^Bearer /, authorization);
      assert.equal((await r.json()).error.code, "invalid_api_key", authorization);
    }
    const none = await fetch(`${server.url}/v1/models`);
    assert.equal(none.status, 401);
    assert.match(none.headers.get("www-authenticate") ?? "", /^Bearer realm=/);
    assert.match((await none.json()).error.message, /no API key given/);
    const right = await fetch(`${server.url}/v1/models`, {
      headers: { authorization: "Bearer sekret" },
    });
    assert.equal(right.status, 200);
    await right.body?.cancel();
    // without --api-key-all, /metrics and /stats stay open
    for (const path of ["/metrics", "/stats"]) {
      const r = await fetch(`${server.url}${path}`);
      assert.equal(r.status, 200, path);
      await r.body?.cancel();
    }
  } finally {
    await server.close();
  }
});

Deno.test("server with apiKeyAll requires the key on /metrics and /stats; /health and the chat page stay open", async () => {
  const server = await startTestServer({ apiKey: "sekret", apiKeyAll: true });
  try {
    for (const path of ["/metrics", "/stats", "/v1/models"]) {
      const r = await fetch(`${server.url}${path}`);
      assert.equal(r.status, 401, path);
      assert.equal((await r.json()).error.code, "invalid_api_key");
      const ok = await fetch(`${server.url}${path}`, {
        headers: { authorization: "Bearer sekret" },
      });
      assert.equal(ok.status, 200, path);
      await ok.body?.cancel();
    }
    for (const path of ["/health", "/"]) {
      const r = await fetch(`${server.url}${path}`);
      assert.equal(r.status, 200, path);
      await r.body?.cancel();
    }
  } finally {
    await server.close();
  }
});

Deno.test("server turns an exception inside the model (in the worker) into a 500 JSON error naming only an error id, and keeps serving", async () => {
  const server = await startTestServer({ failSessions: 1, failMessage: "cannot open /secret/dir" });
  try {
    const r = await post(server, "/v1/chat/completions", chat({}));
    assert.equal(r.status, 500);
    assert.equal(r.json.error.type, "server_error");
    assert.equal(r.json.error.code, "internal_error");
    assert.match(
      r.json.error.message,
      /^internal server error \(error id [\w-]+\); the server's log/,
    );
    assert.doesNotMatch(r.json.error.message, /secret|Error\b/); // the details go to the log
    const again = await post(server, "/v1/chat/completions", chat({}));
    assert.equal(again.status, 200);
    assert.equal(server.stats().liveSessions, 0);
  } finally {
    await server.close();
  }
});

Deno.test("/health answers 503 loading while the engine promise is pending, then ok", async () => {
  let resolve!: (e: Engine) => void;
  const pending = new Promise<Engine>((r) => resolve = r);
  const server = await startTestServer({ engine: pending });
  const engine = await WorkerEngine.start(testModelSpec("openBigramEngineModel", {}));
  try {
    const loading = await fetch(`${server.url}/health`);
    assert.equal(loading.status, 503);
    assert.deepEqual(await loading.json(), { status: "loading" });
    const early = await post(server, "/v1/chat/completions", chat({}));
    assert.equal(early.status, 503);
    assert.equal(early.json.error.code, "model_loading");
    resolve(engine);
    await pending;
    const ok = await fetch(`${server.url}/health`);
    assert.equal(ok.status, 200);
    assert.deepEqual(await ok.json(), { status: "ok" });
  } finally {
    await server.close();
    await engine.close();
  }
});

Deno.test("WorkerEngine.start() rejects with the load error; /health says error and requests get 500 without the cause", async () => {
  const spec = testModelSpec("openBigramEngineModel", { loadError: "weights are corrupt" });
  await assert.rejects(WorkerEngine.start(spec), { name: "Error", message: "weights are corrupt" });
  const server = await startTestServer({ engine: WorkerEngine.start(spec) });
  try {
    let health = await fetch(`${server.url}/health`);
    for (let i = 0; i < 500 && health.status === 503; i++) { // loading until the worker answers
      await health.body?.cancel();
      await new Promise((r) => setTimeout(r, 10));
      health = await fetch(`${server.url}/health`);
    }
    assert.equal(health.status, 500);
    const body = await health.json();
    assert.equal(body.status, "error");
    assert.match(body.error, /the model failed to load \(the server's log says why\)/);
    const r = await post(server, "/v1/chat/completions", chat({}));
    assert.equal(r.status, 500);
    assert.equal(r.json.error.code, "model_load_failed");
    assert.doesNotMatch(r.json.error.message, /corrupt/); // the cause is logged, not sent
    const stats = await (await fetch(`${server.url}/stats`)).json();
    assert.equal(stats.status, "error");
  } finally {
    await server.close();
  }
});

Deno.test("fromWire(toWire(e)) keeps the class, name, message and ApiError fields", () => {
  const cases: Error[] = [
    new GenerationAbortedError(),
    new QueueAbortedError(),
    new ContextOverflowError("position 300 past the KV cache of 256"),
    new ContextLengthError("too long", "max_tokens"),
    internalError("id-1"),
    new RangeError("out of range"),
  ];
  for (const e of cases) {
    const back = fromWire(structuredClone(toWire(e)));
    assert.equal(Object.getPrototypeOf(back), Object.getPrototypeOf(e), e.name);
    assert.equal(back.name, e.name);
    assert.equal(back.message, e.message);
    if (e instanceof ApiError) {
      assert.ok(back instanceof ApiError);
      assert.deepEqual(back.toJSON(), e.toJSON());
      assert.equal(back.status, e.status);
    }
  }
});
