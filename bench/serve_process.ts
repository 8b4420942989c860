/**
 * `main.ts serve` as a subprocess for the benches: started on a free port with the given flags,
 * ready once /health says ok, stopped with SIGINT (SIGKILL after SERVER_STOP_LIMIT_MS). Its stderr
 * is drained (an unread pipe would block it) and its tail kept to explain a failure.
 */

export const ROOT = new URL("../", import.meta.url).pathname;
export const SERVE_ARGS = [
  "run",
  "-A",
  "--unstable-webgpu",
  "--unstable-no-legacy-abort",
  "main.ts",
];
/** How long a server may take to say ok (the default model opens in well under a second). */
const SERVER_START_LIMIT_MS = 180_000;
/** How long SIGINT may take before SIGKILL. */
const SERVER_STOP_LIMIT_MS = 10_000;
/** Characters of the server's stderr kept. */
const LOG_TAIL = 8000;

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A port nothing listens on now (the OS picks it; closed again at once). */
export function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** GET url as JSON, or null while the server does not answer. */
export async function getJson(url: string): Promise<{ status: number; body: unknown } | null> {
  try {
    const res = await fetch(url);
    return { status: res.status, body: await res.json() };
  } catch {
    return null;
  }
}

export interface ServeProcess {
  url: string;
  port: number;
  /** The id GET /v1/models lists. */
  modelId: string;
  /** Seconds from spawn to /health ok. */
  readyS: number;
  /** The tail of the server's stderr. */
  log(): string;
  stop(): Promise<void>;
}

/** Starts `bin/deno run ... main.ts serve --port P ...flags` and waits for /health ok. */
export async function startServe(flags: string[] = []): Promise<ServeProcess> {
  const port = freePort();
  const url = `http://127.0.0.1:${port}`;
  const child = new Deno.Command(`${ROOT}bin/deno`, {
    args: [...SERVE_ARGS, "serve", "--port", String(port), ...flags],
    cwd: ROOT,
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let log = "";
  const draining = (async () => {
    const dec = new TextDecoder();
    for await (const chunk of child.stderr) log = (log + dec.decode(chunk)).slice(-LOG_TAIL);
  })();
  let exited = false;
  const status = child.status.then((s) => {
    exited = true;
    return s;
  });
  const stop = async () => {
    if (!exited) {
      try {
        child.kill("SIGINT");
      } catch { /* it exited meanwhile */ }
    }
    const stopped = await Promise.race([status, sleep(SERVER_STOP_LIMIT_MS).then(() => null)]);
    if (stopped === null) {
      child.kill("SIGKILL");
      await status;
    }
    await draining;
  };
  try {
    const t0 = performance.now();
    for (;;) {
      if (exited) throw new Error(`main.ts serve exited before /health said ok:\n${log}`);
      if (performance.now() - t0 > SERVER_START_LIMIT_MS) {
        throw new Error(`main.ts serve: /health not ok after ${SERVER_START_LIMIT_MS} ms`);
      }
      const h = await getJson(`${url}/health`);
      if (h?.status === 200) break;
      await sleep(200);
    }
    const readyS = (performance.now() - t0) / 1000;
    const models = await getJson(`${url}/v1/models`);
    const modelId = (models?.body as { data: { id: string }[] }).data[0].id;
    return { url, port, modelId, readyS, log: () => log, stop };
  } catch (e) {
    await stop();
    throw e;
  }
}

/** What the benches read of a streamed chunk. */
export interface SseData {
  usage?: { prompt_tokens: number; completion_tokens: number };
  choices?: { delta?: { content?: string }; text?: string }[];
  error?: unknown;
}

/** The JSON data of each server-sent event of a streamed response ([DONE] ends it; an error
 * event throws, naming `what`). */
export async function* sseEvents(res: Response, what: string): AsyncGenerator<SseData> {
  if (!res.ok || !res.body) throw new Error(`${what}: HTTP ${res.status}: ${await res.text()}`);
  let buf = "";
  const dec = new TextDecoder();
  for await (const chunk of res.body) {
    buf += dec.decode(chunk, { stream: true });
    let nl;
    while ((nl = buf.indexOf("\n\n")) >= 0) {
      const event = buf.slice(0, nl);
      buf = buf.slice(nl + 2);
      if (!event.startsWith("data: ") || event === "data: [DONE]") continue;
      const data = JSON.parse(event.slice(6)) as SseData;
      if (data.error) throw new Error(`${what}: the stream ended in an error: ${event.slice(6)}`);
      yield data;
    }
  }
}
