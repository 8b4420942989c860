/**
 * Who may reach the server and what they are told, over raw HTTP/1.1 (a browser's Host and Origin
 * headers cannot be forged through fetch): the Host check against DNS rebinding, the CORS policy
 * (off by default, preflights answered), the exposure warning, GET /v1/models/{id}, a body cut
 * short, and bodies that never carry file paths or class names.
 */
import assert from "node:assert/strict";
import OpenAI from "openai";
import { startTestServer, type TestServer } from "./_test_model.ts";
import { exposureWarning, isLoopback, servedHostNames } from "../src/server/app.ts";

interface RawResponse {
  status: number;
  headers: Record<string, string>;
  body: string;
}

/** Sends `head` (request line and headers, without the blank line) and `body` on a fresh
 * connection; `halfClose` ends the write side after them (a client that gave up mid-body). */
async function raw(
  server: TestServer,
  head: string[],
  body = "",
  halfClose = false,
): Promise<RawResponse> {
  const { port } = new URL(server.url);
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: Number(port) });
  try {
    const text = [...head, "Connection: close", "", body].join("\r\n");
    await conn.write(new TextEncoder().encode(text));
    if (halfClose) await conn.closeWrite();
    const bytes = new Uint8Array(await new Response(conn.readable).arrayBuffer());
    const reply = new TextDecoder().decode(bytes);
    const [top, ...rest] = reply.split("\r\n\r\n");
    const [statusLine, ...lines] = top.split("\r\n");
    const headers: Record<string, string> = {};
    for (const l of lines) {
      const i = l.indexOf(":");
      headers[l.slice(0, i).toLowerCase()] = l.slice(i + 1).trim();
    }
    return { status: Number(statusLine.split(" ")[1]), headers, body: rest.join("\r\n\r\n") };
  } finally {
    try {
      conn.close();
    } catch {
      // the server closed it (Connection: close)
    }
  }
}

function hostOf(server: TestServer): string {
  return new URL(server.url).host;
}

const COMPLETION = JSON.stringify({ prompt: "xyz", max_tokens: 2, temperature: 0 });

function post(host: string, extra: string[] = [], body = COMPLETION): [string[], string] {
  return [[
    "POST /v1/completions HTTP/1.1",
    `Host: ${host}`,
    "Content-Type: text/plain", // a "simple" cross-origin request: no preflight in a browser
    `Content-Length: ${new TextEncoder().encode(body).length}`,
    ...extra,
  ], body];
}

Deno.test("server refuses a Host it does not serve (DNS rebinding) with 403, before any generation", async () => {
  const server = await startTestServer();
  try {
    const port = new URL(server.url).port;
    for (const host of [`evil.example:${port}`, "evil.example", `127.0.0.1:${Number(port) + 1}`]) {
      const r = await raw(server, ...post(host, ["Origin: http://evil.example"]));
      assert.equal(r.status, 403, host);
      assert.equal(JSON.parse(r.body).error.code, "host_not_allowed", host);
    }
    const noHost = await raw(server, ["GET /health HTTP/1.0"]);
    assert.equal(noHost.status, 403);
    assert.equal(server.stats().sessionsCreated ?? 0, 0); // nothing ran
    for (const host of [`127.0.0.1:${port}`, `localhost:${port}`, `LOCALHOST:${port}`]) {
      const r = await raw(server, ...post(host));
      assert.equal(r.status, 200, host);
      assert.equal(JSON.parse(r.body).choices[0].text, " a");
    }
  } finally {
    await server.close();
  }
});

Deno.test("server accepts --allowed-host names on any port, and any Host with *", async () => {
  const server = await startTestServer({ allowedHosts: ["proxy.example"] });
  const open = await startTestServer({ allowedHosts: ["*"] });
  try {
    for (const host of ["proxy.example", "proxy.example:443", "PROXY.example:8080"]) {
      const r = await raw(server, [`GET /health HTTP/1.1`, `Host: ${host}`]);
      assert.equal(r.status, 200, host);
    }
    assert.equal((await raw(server, ["GET /health HTTP/1.1", "Host: other.example"])).status, 403);
    assert.equal((await raw(open, ["GET /health HTTP/1.1", "Host: other.example"])).status, 200);
  } finally {
    await server.close();
    await open.close();
  }
});

Deno.test("server refuses cross-origin requests by default (403, OPTIONS answered without CORS headers) and allows --cors-origin", async () => {
  const server = await startTestServer();
  const cors = await startTestServer({ corsOrigins: ["https://app.example"] });
  try {
    const foreign = await raw(server, ...post(hostOf(server), ["Origin: https://evil.example"]));
    assert.equal(foreign.status, 403);
    assert.equal(JSON.parse(foreign.body).error.code, "origin_not_allowed");
    assert.equal(server.stats().sessionsCreated ?? 0, 0);
    const preflight = [
      "OPTIONS /v1/chat/completions HTTP/1.1",
      `Host: ${hostOf(server)}`,
      "Access-Control-Request-Method: POST",
      "Access-Control-Request-Headers: authorization, content-type",
    ];
    const refused = await raw(server, [...preflight, "Origin: https://evil.example"]);
    assert.equal(refused.status, 403);
    assert.equal(refused.headers["access-control-allow-origin"], undefined);
    // same origin (the chat page) and no Origin at all (curl, SDKs) are served
    const same = await raw(server, ...post(hostOf(server), [`Origin: ${server.url}`]));
    assert.equal(same.status, 200);
    const options = await raw(server, [
      "OPTIONS /v1/completions HTTP/1.1",
      `Host: ${hostOf(server)}`,
    ]);
    assert.equal(options.status, 204);
    assert.equal(options.headers.allow, "GET, POST, OPTIONS");

    const allowed = await raw(cors, [
      ...preflight.map((l) => l.replace(hostOf(server), hostOf(cors))),
      "Origin: https://app.example",
    ]);
    assert.equal(allowed.status, 204);
    assert.equal(allowed.headers["access-control-allow-origin"], "https://app.example");
    assert.match(allowed.headers["access-control-allow-headers"], /authorization/);
    assert.match(allowed.headers["access-control-allow-methods"], /POST/);
    const r = await raw(cors, ...post(hostOf(cors), ["Origin: https://app.example"]));
    assert.equal(r.status, 200);
    assert.equal(r.headers["access-control-allow-origin"], "https://app.example");
    const other = await raw(cors, ...post(hostOf(cors), ["Origin: https://evil.example"]));
    assert.equal(other.status, 403);
  } finally {
    await server.close();
    await cors.close();
  }
});

Deno.test("exposureWarning() warns when listening beyond loopback without a key; servedHostNames() lists the loopback names", () => {
  assert.equal(exposureWarning("127.0.0.1", undefined), null);
  assert.equal(exposureWarning("::1", undefined), null);
  assert.equal(exposureWarning("0.0.0.0", "k"), null);
  assert.match(exposureWarning("0.0.0.0", undefined)!, /without an API key.*--api-key/);
  assert.match(exposureWarning("192.168.1.5", undefined)!, /192\.168\.1\.5/);
  assert.ok(isLoopback("127.0.0.2") && isLoopback("[::1]") && !isLoopback("10.0.0.1"));
  assert.deepEqual(servedHostNames("10.0.0.1"), ["10.0.0.1"]);
  for (const name of ["localhost", "127.0.0.1", "[::1]"]) {
    assert.ok(servedHostNames("0.0.0.0").includes(name), name);
  }
});

Deno.test("models.retrieve() returns the served model; an unknown id is an OpenAI 404", async () => {
  const server = await startTestServer({ modelId: "org/model-v1" });
  try {
    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "x", maxRetries: 0 });
    const m = await client.models.retrieve("org/model-v1");
    assert.equal(m.id, "org/model-v1");
    assert.equal(m.object, "model");
    await assert.rejects(
      client.models.retrieve("gpt-9"),
      (e: InstanceType<typeof OpenAI.APIError>) => {
        assert.equal(e.status, 404);
        assert.equal((e.error as { code: string }).code, "model_not_found");
        return true;
      },
    );
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    assert.match(metrics, /route="\/v1\/models\/\{id\}",status="200"/); // one label, not one per id
  } finally {
    await server.close();
  }
});

Deno.test("a body shorter than its Content-Length, then a half-close, answers 400 (not 500)", async () => {
  const server = await startTestServer();
  try {
    const r = await raw(
      server,
      [
        "POST /v1/completions HTTP/1.1",
        `Host: ${hostOf(server)}`,
        "Content-Type: application/json",
        "Content-Length: 100",
      ],
      '{"prompt": "xy',
      true,
    );
    assert.equal(r.status, 400);
    assert.equal(JSON.parse(r.body).error.code, "incomplete_body");
    const ok = await raw(server, ...post(hostOf(server)));
    assert.equal(ok.status, 200);
  } finally {
    await server.close();
  }
});
